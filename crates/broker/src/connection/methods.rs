//! Methods by class: the connection class once open, the channel life cycle, and the
//! channel, exchange and queue classes; the basic class is in [`super::basic`] and
//! [`super::publish`], confirm and tx in [`super::confirms`]. A method on a channel runs
//! only once the channel is open and no publish waits for its content.

use minimq_protocol::*;
use tokio::sync::oneshot;

#[cfg(test)]
use super::tests;
use super::{Conn, Flow};
use crate::auth::Perm;
use crate::channel::Channel;
use crate::error::{AmqpError, AmqpResult};
use crate::queue::QueueCommand;
use crate::vhost::{generate_name, QueueSpec};

impl Conn {
    /// A method on channel 0 of the open connection.
    pub(super) async fn on_connection_method(&mut self, m: Method) -> Result<Flow, AmqpError> {
        let (class_id, method_id) = (m.class_id(), m.method_id());
        match m {
            Method::ConnectionClose(c) => {
                tracing::debug!(conn = self.id, code = c.reply_code, text = %c.reply_text, "client closed connection");
                self.release_all().await;
                // As in RabbitMQ, exclusive queues are gone by the time the client has
                // its close-ok.
                self.delete_exclusive_queues().await;
                // Unlisted before the client hears close-ok.
                self.unregister();
                self.send_method(0, ConnectionCloseOk.into());
                self.client_closed = true;
                Ok(Flow::Stop)
            }
            Method::ConnectionCloseOk(_) => Ok(Flow::Stop),
            Method::ConnectionUpdateSecret(_) => {
                self.send_method(0, minimq_protocol::ConnectionUpdateSecretOk.into());
                Ok(Flow::Continue)
            }
            Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_) => Ok(Flow::Continue),
            // RabbitMQ's answer to any other method on channel 0.
            _ => Err(AmqpError::new(
                ReplyCode::ChannelError,
                "unexpected method in connection state running",
            )
            .on(class_id, method_id)),
        }
    }

    /// As RabbitMQ does, `channel_max` limits how many channels are open at once, not
    /// their numbers: a frame for a new channel is refused once that many are open.
    pub(super) fn check_channel_id(&self, ch: u16) -> Result<(), AmqpError> {
        let open = self.channels.len();
        if !self.channels.contains_key(&ch) && open >= usize::from(self.channel_max) {
            return Err(AmqpError::new(
                ReplyCode::NotAllowed,
                format!(
                    "number of channels opened ({open}) has reached the negotiated channel_max ({})",
                    self.channel_max
                ),
            ));
        }
        Ok(())
    }

    /// Routes a method to its channel, enforcing the channel life cycle.
    pub(super) async fn on_channel_frame(&mut self, ch: u16, m: Method) -> AmqpResult<()> {
        let Some(channel) = self.channels.get(&ch) else {
            let Method::ChannelOpen(_) = m else {
                return Err(AmqpError::new(
                    ReplyCode::ChannelError,
                    "expected 'channel.open'",
                ));
            };
            self.channels
                .insert(ch, Channel::open(ch, self.info.as_ref()));
            self.send_method(ch, ChannelOpenOk.into());
            return Ok(());
        };
        if !channel.is_open() {
            match m {
                Method::ChannelCloseOk(_) => {
                    self.channels.remove(&ch);
                }
                // The client's close crossed ours. As RabbitMQ does, it is answered and
                // the channel keeps waiting for the close-ok of our close, which the
                // client sends once it reads it: forgetting the channel here would make
                // that close-ok a frame on a channel that is not open (504 for the
                // connection).
                Method::ChannelClose(_) => self.send_method(ch, ChannelCloseOk.into()),
                _ => {}
            }
            return Ok(());
        }
        if let Some(e) = channel.interrupted_publish() {
            return Err(e);
        }
        self.on_channel_method(ch, m).await
    }

    /// Runs a method on an open channel with no publish in progress.
    pub(super) async fn on_channel_method(&mut self, ch: u16, m: Method) -> AmqpResult<()> {
        match m {
            Method::ChannelOpen(_) => Err(AmqpError::new(
                ReplyCode::ChannelError,
                "second 'channel.open' seen",
            )),
            Method::ChannelClose(_) => {
                self.release_channel(ch, true).await;
                self.send_method(ch, ChannelCloseOk.into());
                Ok(())
            }
            Method::ChannelCloseOk(_) => Ok(()),
            Method::ChannelFlow(f) => {
                if !f.active {
                    return Err(AmqpError::new(ReplyCode::NotImplemented, "active=false"));
                }
                self.send_method(ch, ChannelFlowOk { active: true }.into());
                Ok(())
            }
            Method::ChannelFlowOk(_) => Ok(()),
            Method::QueueDeclare(d) => self.queue_declare(ch, d).await,
            Method::QueueBind(b) => {
                self.authorize(Perm::Write, "queue", &b.queue)?;
                self.authorize(Perm::Read, "exchange", &b.exchange)?;
                self.vhost
                    .bind(&b.queue, &b.exchange, &b.routing_key, b.arguments, self.id)
                    .await?;
                if !b.no_wait {
                    self.send_method(ch, QueueBindOk.into());
                }
                Ok(())
            }
            Method::QueueUnbind(u) => {
                self.authorize(Perm::Write, "queue", &u.queue)?;
                self.authorize(Perm::Read, "exchange", &u.exchange)?;
                self.vhost
                    .unbind(&u.queue, &u.exchange, &u.routing_key, &u.arguments, self.id)
                    .await?;
                self.send_method(ch, QueueUnbindOk.into());
                Ok(())
            }
            Method::QueuePurge(p) => {
                self.authorize(Perm::Read, "queue", &p.queue)?;
                let q = self.vhost.queue_for(&p.queue, self.id)?;
                crate::queue::stream::refuse(&q, "queue.purge")?;
                let (reply, rx) = oneshot::channel();
                let n = if q.send(QueueCommand::Purge { reply }).await {
                    rx.await.unwrap_or(0)
                } else {
                    0
                };
                if !p.no_wait {
                    self.send_method(ch, QueuePurgeOk { message_count: n }.into());
                }
                Ok(())
            }
            Method::QueueDelete(d) => {
                self.authorize(Perm::Configure, "queue", &d.queue)?;
                let n = self
                    .vhost
                    .delete_queue(&d.queue, self.id, d.if_unused, d.if_empty)
                    .await?;
                self.exclusive_queues.retain(|q| **q.name() != *d.queue);
                if !d.no_wait {
                    self.send_method(ch, QueueDeleteOk { message_count: n }.into());
                }
                Ok(())
            }
            Method::ExchangeDeclare(d) => {
                if d.exchange.is_empty() {
                    return Err(AmqpError::new(
                        ReplyCode::AccessRefused,
                        "operation not permitted on the default exchange",
                    ));
                }
                if d.passive {
                    self.vhost
                        .exchange(&d.exchange)
                        .ok_or_else(|| AmqpError::no_exchange(&d.exchange, self.vhost.name()))?;
                } else {
                    self.authorize(Perm::Configure, "exchange", &d.exchange)?;
                    self.vhost
                        .declare_exchange(
                            &d.exchange,
                            &d.type_,
                            d.durable,
                            d.auto_delete,
                            d.internal,
                            d.arguments,
                        )
                        .await?;
                }
                if !d.no_wait {
                    self.send_method(ch, ExchangeDeclareOk.into());
                }
                Ok(())
            }
            Method::ExchangeDelete(d) => {
                // The default and `amq.*` exchanges are refused first, as in RabbitMQ.
                if !d.exchange.is_empty() && !d.exchange.starts_with("amq.") {
                    self.authorize(Perm::Configure, "exchange", &d.exchange)?;
                }
                self.vhost.delete_exchange(&d.exchange, d.if_unused).await?;
                if !d.no_wait {
                    self.send_method(ch, ExchangeDeleteOk.into());
                }
                Ok(())
            }
            Method::ExchangeBind(b) => {
                self.authorize(Perm::Write, "exchange", &b.destination)?;
                self.authorize(Perm::Read, "exchange", &b.source)?;
                self.vhost
                    .bind_exchange(&b.destination, &b.source, &b.routing_key, b.arguments)
                    .await?;
                if !b.no_wait {
                    self.send_method(ch, ExchangeBindOk.into());
                }
                Ok(())
            }
            Method::ExchangeUnbind(u) => {
                self.authorize(Perm::Write, "exchange", &u.destination)?;
                self.authorize(Perm::Read, "exchange", &u.source)?;
                self.vhost
                    .unbind_exchange(&u.destination, &u.source, &u.routing_key, &u.arguments)
                    .await?;
                if !u.no_wait {
                    self.send_method(ch, ExchangeUnbindOk.into());
                }
                Ok(())
            }
            Method::BasicQos(q) => self.basic_qos(ch, q).await,
            Method::BasicConsume(c) => self.basic_consume(ch, c).await,
            Method::BasicCancel(c) => self.basic_cancel(ch, c).await,
            Method::BasicPublish(p) => {
                if p.immediate {
                    return Err(AmqpError::new(ReplyCode::NotImplemented, "immediate=true"));
                }
                self.channel(ch).start_publish(p);
                Ok(())
            }
            Method::BasicGet(g) => self.basic_get(ch, g).await,
            Method::BasicAck(a) => {
                self.settle(ch, a.delivery_tag, a.multiple, false, true)
                    .await
            }
            Method::BasicNack(n) => {
                self.settle(ch, n.delivery_tag, n.multiple, n.requeue, false)
                    .await
            }
            Method::BasicReject(r) => {
                self.settle(ch, r.delivery_tag, false, r.requeue, false)
                    .await
            }
            Method::BasicRecover(r) => {
                self.recover(ch, r.requeue).await?;
                self.send_method(ch, BasicRecoverOk.into());
                Ok(())
            }
            // As in RabbitMQ 3.10: `basic.recover` without the answer.
            Method::BasicRecoverAsync(r) => self.recover(ch, r.requeue).await,
            Method::ConfirmSelect(c) => {
                self.channel(ch).select_confirms()?;
                if !c.nowait {
                    self.send_method(ch, ConfirmSelectOk.into());
                }
                Ok(())
            }
            Method::TxSelect(_) => {
                let limit = self.state.config.max_tx_size;
                self.channel(ch).select_tx(limit)?;
                self.send_method(ch, TxSelectOk.into());
                Ok(())
            }
            Method::TxCommit(_) => self.tx_commit(ch).await,
            Method::TxRollback(_) => {
                self.channel(ch).rollback()?;
                self.send_method(ch, TxRollbackOk.into());
                Ok(())
            }
            other => Err(AmqpError::new(
                ReplyCode::CommandInvalid,
                format!(
                    "method '{}' is not valid from a client on a channel",
                    other.name()
                ),
            )),
        }
    }

    /// `queue.declare`, active or passive.
    pub(super) async fn queue_declare(&mut self, ch: u16, d: QueueDeclare) -> AmqpResult<()> {
        // Test hook: a connection task that panics (see `connection/tests.rs`).
        #[cfg(test)]
        if d.queue == tests::PANIC_QUEUE {
            panic!("connection task made to panic by a test");
        }
        let vhost = self.vhost.clone();
        let queue = if d.passive {
            vhost.queue_for(&d.queue, self.id)?
        } else {
            let name = if d.queue.is_empty() {
                generate_name("amq.gen-")
            } else {
                d.queue.clone()
            };
            if name.starts_with("amq.") && !d.queue.is_empty() {
                return Err(AmqpError::new(
                    ReplyCode::AccessRefused,
                    format!("queue name '{name}' contains reserved prefix 'amq.*'"),
                ));
            }
            let mut spec = QueueSpec {
                name,
                durable: d.durable,
                exclusive: d.exclusive,
                auto_delete: d.auto_delete,
                arguments: d.arguments,
            };
            vhost.apply_default_queue_type(&mut spec);
            if d.queue.is_empty() {
                crate::queue::args::refuse_server_named(&spec.arguments)?;
            }
            self.authorize(Perm::Configure, "queue", &spec.name)?;
            let (q, created) = vhost.declare_queue(spec, self.id).await?;
            if created && d.exclusive {
                self.exclusive_queues.push(q.clone());
            }
            q
        };
        if !d.no_wait {
            let counts = queue.counts().await.unwrap_or_default();
            self.send_method(
                ch,
                QueueDeclareOk {
                    queue: queue.name().to_string(),
                    message_count: counts.ready,
                    consumer_count: counts.consumers,
                }
                .into(),
            );
        }
        Ok(())
    }
}
