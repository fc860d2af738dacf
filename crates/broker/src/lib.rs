//! minimq-server: an AMQP 0-9-1 broker for work queues, usable as a library.
//!
//! # Layout
//! - [`server`]: accept loop, [`Broker`] / [`BrokerBuilder`] (embed a broker in tests).
//! - [`config`]: settings behind the command-line flags.
//! - `connection`: one task per client connection (handshake, intake of frames, method
//!   handlers, deliveries, closing, writer).
//! - [`channel`]: channel state and its own rules (delivery tags, consumers, qos, content
//!   assembly, confirms, transactions); [`channel::confirms`] decides when a publish is
//!   confirmed.
//! - [`vhost`]: one vhost's queues, exchanges, bindings, policies and limits;
//!   [`vhosts`]: the vhosts by name, created and deleted durably.
//! - [`exchange`]: exchange types and routing.
//! - [`queue`]: one task per queue owning its messages, consumers and credit; a stream
//!   queue's task ([`queue::stream`]) owns its own log instead.
//! - [`policy`]: policies (validation, choice by priority, merge with arguments).
//! - [`message`]: the shared, immutable published message.
//! - [`store`]: durable queues and persistent messages on disk (log, group commit, recovery),
//!   and each stream's log ([`store::stream`]).
//! - [`auth`]: users, password hashes, tags and permissions (RabbitMQ's model).
//! - [`alarm`]: the memory and disk alarms that block publishers.
//! - [`trace`]: firehose tracing (copies of publishes and deliveries to `amq.rabbitmq.trace`).
//! - [`error`]: AMQP errors with RabbitMQ's reply texts.
//! - [`admin`]: the management HTTP API (RabbitMQ's paths and JSON); [`registry`]: the
//!   live connections, channels and consumers it lists.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod alarm;
pub mod auth;
pub mod channel;
pub mod config;
pub mod connection;
pub mod error;
pub mod exchange;
pub mod message;
pub mod policy;
pub mod queue;
pub mod registry;
pub mod server;
pub mod store;
pub mod tls;
pub mod trace;
pub mod vhost;
pub mod vhosts;

pub use config::Config;
pub use server::{Broker, BrokerBuilder, ShutdownHandle};
