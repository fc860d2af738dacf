//! An async AMQP 0-9-1 client for minimq and RabbitMQ, on tokio.
//!
//! # Shape
//! - [`Connection`] ([`connection`]): URL or [`ConnectionConfig`] in, handshake, channels out.
//!   A background task (module `io_loop`) owns the socket; every other type is a handle that
//!   sends it requests and waits for answers, so nothing here shares a lock with the
//!   network.
//! - [`Channel`] ([`channel`]): declare, bind, publish, consume, get, qos, confirms.
//! - [`Consumer`] ([`consumer`]): a `Stream` of [`Delivery`] ([`message`]), each with an
//!   [`Acker`] ([`acker`]).
//! - [`PublisherConfirm`] / [`Confirmation`] ([`confirm`]): per-publish broker verdicts.
//! - [`ReturnedMessages`] ([`returned`]): unroutable mandatory publishes.
//! - [`transport`]: plain TCP or TLS (`amqps://`, rustls), and the TLS client
//!   configuration ([`transport::client_config`]) the CLIs share.
//! - [`Error`] ([`error`]): server closes surface as [`Error::ChannelClosed`] /
//!   [`Error::ConnectionClosed`] with the reply code, and fail every pending call.
//!
//! Inside, two private modules:
//! - `handle`: the handle protocol and shared state: the requests handles send the
//!   connection task and its replies, the state both sides share (end reasons, blocked
//!   state, negotiated limits), and what every handle holds to reach the task. It imports
//!   only `error`, `message` and `returned`.
//! - `io_loop/`: the connection task. `mod.rs` has the select loop and the connection's
//!   life (heartbeats, close, end), `incoming.rs` dispatches what the server sends,
//!   `deliver.rs` takes whole deliveries straight from the read buffer, `requests.rs`
//!   encodes what handles ask, `slot.rs` holds a channel's protocol state and
//!   `confirms.rs` its publisher-confirm bookkeeping.
//!
//! Imports go one way: `io_loop` and the handle types (`channel`, `acker`, `confirm`,
//! `consumer`, `returned`) import `handle`, not each other; only `connection` imports
//! `io_loop` (to spawn it) and `channel` (to make channels).
//!
//! # Example
//! ```no_run
//! use futures::StreamExt;
//! use minimq_client::{BasicConsumeOptions, BasicProperties, Connection, FieldTable, QueueDeclareOptions};
//!
//! # async fn demo() -> minimq_client::Result<()> {
//! let conn = Connection::connect("amqp://localhost").await?;
//! let ch = conn.open_channel().await?;
//! ch.queue_declare("hello", QueueDeclareOptions::default(), FieldTable::new()).await?;
//! ch.basic_publish("", "hello", false, BasicProperties::default(), "hi").await?;
//! let mut consumer = ch
//!     .basic_consume("hello", "", BasicConsumeOptions::default(), FieldTable::new())
//!     .await?;
//! if let Some(delivery) = consumer.next().await {
//!     let delivery = delivery?;
//!     println!("got {:?}", delivery.body);
//!     delivery.ack().await?;
//! }
//! conn.close().await
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod acker;
pub mod channel;
pub mod config;
pub mod confirm;
pub mod connection;
pub mod consumer;
pub mod error;
mod handle;
mod io_loop;
pub mod message;
pub mod options;
pub mod returned;
pub mod transport;

pub use acker::Acker;
pub use channel::Channel;
pub use config::ConnectionConfig;
pub use confirm::{Confirmation, PublisherConfirm};
pub use connection::{BlockedState, Connection, TuneParams};
pub use consumer::Consumer;
pub use error::{Error, Result};
pub use message::{Delivery, GetMessage};
pub use options::{
    BasicConsumeOptions, DeclaredQueue, ExchangeDeclareOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
pub use returned::{ReturnedMessage, ReturnedMessages};

/// The protocol crate, for the types the API speaks in.
pub use minimq_protocol as protocol;
pub use minimq_protocol::{BasicProperties, FieldTable, FieldValue};
