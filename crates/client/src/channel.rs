//! [`Channel`]: the handle every AMQP operation goes through. Synchronous methods
//! (declare, bind, qos, consume, get, close, ...) send a request to the connection task
//! and wait for their `-ok`, in order per channel; publishes and acknowledgements only
//! wait until the connection task has queued them for the socket.

use std::borrow::Borrow;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use minimq_protocol::frame::encode_publish_head;
use minimq_protocol::{
    BasicCancel, BasicConsume, BasicGet, BasicProperties, BasicQos, BasicRecover, ChannelClose,
    ConfirmSelect, ExchangeBind, ExchangeDeclare, ExchangeDelete, ExchangeUnbind, FieldTable,
    Method, QueueBind, QueueDeclare, QueueDelete, QueuePurge, QueueUnbind, TxCommit, TxRollback,
    TxSelect,
};
use tokio::sync::{mpsc, oneshot};

use crate::acker::Acker;
use crate::confirm::PublisherConfirm;
use crate::consumer::Consumer;
use crate::error::{Error, Result};
use crate::handle::{ChannelCore, ConsumerSink, Request, Settlement};
use crate::message::{Delivery, GetMessage};
use crate::options::{
    BasicConsumeOptions, DeclaredQueue, ExchangeDeclareOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use crate::returned::ReturnedMessages;

/// An AMQP channel. Cheap to clone; clones share the channel.
///
/// A channel error from the server (`channel.close`, e.g. 404 for a missing queue)
/// fails the call that caused it, every other pending call on the channel and every
/// later call, all with [`Error::ChannelClosed`] carrying the server's code and text.
/// The connection and its other channels carry on.
///
/// Dropping every handle does not close the channel (its consumers keep it alive);
/// call [`Channel::close`], or it closes with the connection.
#[derive(Debug, Clone)]
pub struct Channel {
    core: ChannelCore,
}

/// Checks a `shortstr` argument: the wire format allows at most 255 octets.
fn short(value: &str, what: &str) -> Result<String> {
    check_short(value, what)?;
    Ok(value.to_string())
}

/// Refuses what does not fit an AMQP short string (255 octets).
fn check_short(value: &str, what: &str) -> Result<()> {
    if value.len() > 255 {
        return Err(Error::InvalidArgument(format!(
            "{what} is {} octets long; the limit is 255",
            value.len()
        )));
    }
    Ok(())
}

fn unexpected(method: Method) -> Error {
    Error::Protocol(format!("unexpected reply {}", method.name()))
}

impl Channel {
    pub(crate) fn new(core: ChannelCore) -> Channel {
        Channel { core }
    }

    /// The channel number.
    pub fn id(&self) -> u16 {
        self.core.id()
    }

    /// Whether the channel (and its connection) is still usable.
    pub fn is_open(&self) -> bool {
        self.core.check_open().is_ok()
    }

    /// Why the channel ended, once it has.
    pub fn close_reason(&self) -> Option<Error> {
        self.core.check_open().err()
    }

    /// Closes the channel: `channel.close` (200), then waits for `close-ok`. Consumers on
    /// it end. Closing a channel this client already closed is `Ok`; one the server
    /// closed returns why.
    pub async fn close(&self) -> Result<()> {
        let close = Method::ChannelClose(ChannelClose {
            reply_code: 200,
            reply_text: "Goodbye".into(),
            class_id: 0,
            method_id: 0,
        });
        match self.core.call(close, None).await {
            Ok(_) | Err(Error::ChannelClosed { code: 200, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `exchange.declare`. `kind` is `direct`, `fanout`, `topic`, `headers` or a plugin's.
    pub async fn exchange_declare(
        &self,
        exchange: &str,
        kind: &str,
        options: ExchangeDeclareOptions,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = Method::ExchangeDeclare(ExchangeDeclare {
            exchange: short(exchange, "exchange name")?,
            type_: short(kind, "exchange type")?,
            passive: options.passive,
            durable: options.durable,
            auto_delete: options.auto_delete,
            internal: options.internal,
            no_wait: false,
            arguments,
        });
        self.core.call(method, None).await.map(drop)
    }

    /// `exchange.delete`; with `if_unused` only if it has no bindings.
    pub async fn exchange_delete(&self, exchange: &str, if_unused: bool) -> Result<()> {
        let method = Method::ExchangeDelete(ExchangeDelete {
            exchange: short(exchange, "exchange name")?,
            if_unused,
            no_wait: false,
        });
        self.core.call(method, None).await.map(drop)
    }

    /// `exchange.bind` (RabbitMQ extension): routes from `source` to `destination`.
    pub async fn exchange_bind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = Method::ExchangeBind(ExchangeBind {
            destination: short(destination, "exchange name")?,
            source: short(source, "exchange name")?,
            routing_key: short(routing_key, "routing key")?,
            no_wait: false,
            arguments,
        });
        self.core.call(method, None).await.map(drop)
    }

    /// `exchange.unbind` (RabbitMQ extension).
    pub async fn exchange_unbind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = Method::ExchangeUnbind(ExchangeUnbind {
            destination: short(destination, "exchange name")?,
            source: short(source, "exchange name")?,
            routing_key: short(routing_key, "routing key")?,
            no_wait: false,
            arguments,
        });
        self.core.call(method, None).await.map(drop)
    }

    /// `queue.declare`. An empty `queue` asks the broker for a generated name, returned
    /// in [`DeclaredQueue::name`] with the queue's message and consumer counts.
    pub async fn queue_declare(
        &self,
        queue: &str,
        options: QueueDeclareOptions,
        arguments: FieldTable,
    ) -> Result<DeclaredQueue> {
        let method = Method::QueueDeclare(QueueDeclare {
            queue: short(queue, "queue name")?,
            passive: options.passive,
            durable: options.durable,
            exclusive: options.exclusive,
            auto_delete: options.auto_delete,
            no_wait: false,
            arguments,
        });
        match self.core.call(method, None).await?.method {
            Method::QueueDeclareOk(ok) => Ok(DeclaredQueue {
                name: ok.queue,
                message_count: ok.message_count,
                consumer_count: ok.consumer_count,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// `queue.bind`: routes messages from `exchange` with `routing_key` to `queue`.
    pub async fn queue_bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = Method::QueueBind(QueueBind {
            queue: short(queue, "queue name")?,
            exchange: short(exchange, "exchange name")?,
            routing_key: short(routing_key, "routing key")?,
            no_wait: false,
            arguments,
        });
        self.core.call(method, None).await.map(drop)
    }

    /// `queue.unbind`.
    pub async fn queue_unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = Method::QueueUnbind(QueueUnbind {
            queue: short(queue, "queue name")?,
            exchange: short(exchange, "exchange name")?,
            routing_key: short(routing_key, "routing key")?,
            arguments,
        });
        self.core.call(method, None).await.map(drop)
    }

    /// `queue.purge`: drops the ready messages; returns how many.
    pub async fn queue_purge(&self, queue: &str) -> Result<u32> {
        let method = Method::QueuePurge(QueuePurge {
            queue: short(queue, "queue name")?,
            no_wait: false,
        });
        match self.core.call(method, None).await?.method {
            Method::QueuePurgeOk(ok) => Ok(ok.message_count),
            other => Err(unexpected(other)),
        }
    }

    /// `queue.delete`; returns how many messages went with it.
    pub async fn queue_delete(&self, queue: &str, options: QueueDeleteOptions) -> Result<u32> {
        let method = Method::QueueDelete(QueueDelete {
            queue: short(queue, "queue name")?,
            if_unused: options.if_unused,
            if_empty: options.if_empty,
            no_wait: false,
        });
        match self.core.call(method, None).await?.method {
            Method::QueueDeleteOk(ok) => Ok(ok.message_count),
            other => Err(unexpected(other)),
        }
    }

    /// `basic.qos`: at most `prefetch_count` unacknowledged deliveries (0 = no limit)
    /// per consumer, or, with `global`, shared by the channel (RabbitMQ's reading).
    pub async fn basic_qos(&self, prefetch_count: u16, global: bool) -> Result<()> {
        let method = Method::BasicQos(BasicQos {
            prefetch_size: 0,
            prefetch_count,
            global,
        });
        self.core.call(method, None).await.map(drop)
    }

    /// `basic.consume`: subscribes to `queue`. An empty `consumer_tag` lets the broker
    /// pick one ([`Consumer::tag`]). Deliveries arrive on the returned stream.
    pub async fn basic_consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        options: BasicConsumeOptions,
        arguments: FieldTable,
    ) -> Result<Consumer> {
        let method = Method::BasicConsume(BasicConsume {
            queue: short(queue, "queue name")?,
            consumer_tag: short(consumer_tag, "consumer tag")?,
            no_local: options.no_local,
            no_ack: options.no_ack,
            exclusive: options.exclusive,
            no_wait: false,
            arguments,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = ConsumerSink {
            tx,
            no_ack: options.no_ack,
        };
        match self.core.call(method, Some(sink)).await?.method {
            Method::BasicConsumeOk(ok) => Ok(Consumer::new(ok.consumer_tag, rx, self.core.clone())),
            other => Err(unexpected(other)),
        }
    }

    /// `basic.cancel`: ends a consumer. Deliveries already on their way still reach the
    /// stream, which then ends.
    pub async fn basic_cancel(&self, consumer_tag: &str) -> Result<()> {
        let method = Method::BasicCancel(BasicCancel {
            consumer_tag: short(consumer_tag, "consumer tag")?,
            no_wait: false,
        });
        self.core.call(method, None).await.map(drop)
    }

    /// `basic.get`: fetches one message, or `None` if the queue is empty.
    pub async fn basic_get(&self, queue: &str, no_ack: bool) -> Result<Option<GetMessage>> {
        let method = Method::BasicGet(BasicGet {
            queue: short(queue, "queue name")?,
            no_ack,
        });
        let reply = self.core.call(method, None).await?;
        match reply.method {
            Method::BasicGetEmpty(_) => Ok(None),
            Method::BasicGetOk(ok) => {
                let content = reply.content.unwrap_or_default();
                Ok(Some(GetMessage {
                    delivery: Delivery {
                        delivery_tag: ok.delivery_tag,
                        redelivered: ok.redelivered,
                        exchange: ok.exchange.into(),
                        routing_key: ok.routing_key.into(),
                        consumer_tag: "".into(),
                        properties: content.properties,
                        body: content.body,
                        acker: if no_ack {
                            Acker::no_ack(ok.delivery_tag)
                        } else {
                            Acker::new(self.core.clone(), ok.delivery_tag)
                        },
                    },
                    message_count: ok.message_count,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    /// `basic.publish`. The body is split into frames of the negotiated `frame_max`.
    ///
    /// Returns once the message is queued for the connection, with a
    /// [`PublisherConfirm`]: in confirm mode ([`Channel::confirm_select`]) it resolves to
    /// the broker's ack or nack, otherwise at once to
    /// [`crate::Confirmation::NotRequested`]. With `mandatory`, an unroutable message
    /// comes back on [`Channel::returned_messages`]. `properties` may be borrowed
    /// (`&props`): a publisher sending the same ones every time need not clone them.
    pub async fn basic_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        properties: impl Borrow<BasicProperties>,
        body: impl Into<Bytes>,
    ) -> Result<PublisherConfirm> {
        check_short(exchange, "exchange name")?;
        check_short(routing_key, "routing key")?;
        self.core.check_open()?;
        let body = body.into();
        // Encoded here, from the borrowed strings: nothing of the publish but these bytes
        // and the body travels to the connection task.
        let mut head = BytesMut::with_capacity(64 + exchange.len() + routing_key.len());
        encode_publish_head(
            &mut head,
            self.core.shared.id,
            exchange,
            routing_key,
            mandatory,
            properties.borrow(),
            body.len() as u64,
        );
        // Outside confirm mode there is nothing to wait for: no oneshot to make.
        let (confirm, waiting) = if self.core.shared.confirming.load(Ordering::Acquire) {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some((rx, self.core.clone())))
        } else {
            (None, None)
        };
        self.core
            .conn
            .send(Request::Publish {
                channel: self.core.shared.clone(),
                head: head.freeze(),
                body,
                confirm,
            })
            .await?;
        Ok(PublisherConfirm::new(waiting))
    }

    /// `basic.ack` of `delivery_tag`, or with `multiple` of every tag up to it.
    pub async fn basic_ack(&self, delivery_tag: u64, multiple: bool) -> Result<()> {
        self.core
            .cast(Settlement::Ack {
                delivery_tag,
                multiple,
            })
            .await
    }

    /// `basic.nack` of `delivery_tag` (or every tag up to it, with `multiple`).
    pub async fn basic_nack(&self, delivery_tag: u64, multiple: bool, requeue: bool) -> Result<()> {
        self.core
            .cast(Settlement::Nack {
                delivery_tag,
                multiple,
                requeue,
            })
            .await
    }

    /// `basic.reject` of `delivery_tag`.
    pub async fn basic_reject(&self, delivery_tag: u64, requeue: bool) -> Result<()> {
        self.core
            .cast(Settlement::Reject {
                delivery_tag,
                requeue,
            })
            .await
    }

    /// `basic.recover`: redeliver every unacknowledged message of the channel
    /// (RabbitMQ only supports `requeue = true`).
    pub async fn basic_recover(&self, requeue: bool) -> Result<()> {
        self.core
            .call(Method::BasicRecover(BasicRecover { requeue }), None)
            .await
            .map(drop)
    }

    /// `confirm.select`: puts the channel in confirm mode. From then on every publish's
    /// [`PublisherConfirm`] resolves to the broker's ack or nack.
    pub async fn confirm_select(&self) -> Result<()> {
        self.core
            .call(Method::ConfirmSelect(ConfirmSelect { nowait: false }), None)
            .await
            .map(drop)
    }

    /// `tx.select`: makes the channel transactional. Publishes and acks / nacks / rejects
    /// are then held by the broker until [`Channel::tx_commit`], and dropped by
    /// [`Channel::tx_rollback`]. A channel is transactional or in confirm mode, not both.
    pub async fn tx_select(&self) -> Result<()> {
        self.core
            .call(Method::TxSelect(TxSelect), None)
            .await
            .map(drop)
    }

    /// `tx.commit`: applies everything held since the last commit or rollback; the broker
    /// answers once persistent messages to durable queues are on disk.
    pub async fn tx_commit(&self) -> Result<()> {
        self.core
            .call(Method::TxCommit(TxCommit), None)
            .await
            .map(drop)
    }

    /// `tx.rollback`: drops everything held since the last commit or rollback (deliveries
    /// stay unacknowledged).
    pub async fn tx_rollback(&self) -> Result<()> {
        self.core
            .call(Method::TxRollback(TxRollback), None)
            .await
            .map(drop)
    }

    /// Waits until every publish so far is confirmed. `true` if all of them since the
    /// previous call were acked, `false` if any was nacked. Fails with
    /// [`Error::InvalidState`] on a channel not in confirm mode.
    pub async fn wait_for_confirms(&self) -> Result<bool> {
        self.core.check_open()?;
        let (reply, rx) = oneshot::channel();
        self.core
            .conn
            .send(Request::WaitForConfirms {
                channel: self.core.shared.clone(),
                reply,
            })
            .await?;
        rx.await.map_err(|_| self.core.closed_error())?
    }

    /// Subscribes to the messages the broker returns (`basic.return`): mandatory
    /// publishes it could not route. Subscribe before publishing; one subscriber per
    /// channel (a new subscription replaces the old one).
    pub fn returned_messages(&self) -> ReturnedMessages {
        ReturnedMessages::new(self.core.shared.subscribe_returns(), self.core.clone())
    }
}
