//! The methods of the channel, exchange, queue, basic, confirm and tx classes, as the
//! connection task runs them against its channel state, the vhost and the queues.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use minimq_protocol::frame::{
    body_frame_start, encode_body_frames, encode_content, encode_deliver_head, max_body_payload,
    FRAME_END,
};
use minimq_protocol::*;
use tokio::sync::oneshot;

use super::confirms::Confirm;
use super::tx::{Outcome, Tx, TxPublish, TxSettle};
use super::{group_by_queue, BodyParts, ChannelConsumer, Outstanding, PendingPublish};
use crate::connection::Conn;
use crate::error::{AmqpError, AmqpResult};
use crate::message::Message;
use crate::queue::{ConfirmTicket, ConsumerSpec, Delivery, Publish, QueueCommand, QueueHandle};
use crate::vhost::{generate_name, QueueSpec};

static NEXT_CONSUMER_ID: AtomicU64 = AtomicU64::new(1);

impl Conn {
    // Every caller runs on a channel the frame dispatch found open, and nothing between
    // that check and this call removes a channel: a miss is a bug in this file, not input.
    #[allow(clippy::expect_used)]
    fn channel(&mut self, ch: u16) -> &mut super::Channel {
        self.channels
            .get_mut(&ch)
            .expect("channel checked open by the caller")
    }

    /// Runs a method on an open channel with no publish in progress.
    pub(crate) async fn on_channel_method(&mut self, ch: u16, m: Method) -> AmqpResult<()> {
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
                self.state
                    .vhost
                    .bind(&b.queue, &b.exchange, &b.routing_key, b.arguments, self.id)
                    .await?;
                if !b.no_wait {
                    self.send_method(ch, QueueBindOk.into());
                }
                Ok(())
            }
            Method::QueueUnbind(u) => {
                self.state
                    .vhost
                    .unbind(&u.queue, &u.exchange, &u.routing_key, &u.arguments, self.id)
                    .await?;
                self.send_method(ch, QueueUnbindOk.into());
                Ok(())
            }
            Method::QueuePurge(p) => {
                let q = self.state.vhost.queue_for(&p.queue, self.id)?;
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
                let n = self
                    .state
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
                    self.state
                        .vhost
                        .exchange(&d.exchange)
                        .ok_or_else(|| AmqpError::no_exchange(&d.exchange))?;
                } else {
                    self.state
                        .vhost
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
                self.state
                    .vhost
                    .delete_exchange(&d.exchange, d.if_unused)
                    .await?;
                if !d.no_wait {
                    self.send_method(ch, ExchangeDeleteOk.into());
                }
                Ok(())
            }
            Method::ExchangeBind(b) => {
                self.state
                    .vhost
                    .bind_exchange(&b.destination, &b.source, &b.routing_key, b.arguments)
                    .await?;
                if !b.no_wait {
                    self.send_method(ch, ExchangeBindOk.into());
                }
                Ok(())
            }
            Method::ExchangeUnbind(u) => {
                self.state
                    .vhost
                    .unbind_exchange(&u.destination, &u.source, &u.routing_key, &u.arguments)
                    .await?;
                if !u.no_wait {
                    self.send_method(ch, ExchangeUnbindOk.into());
                }
                Ok(())
            }
            Method::BasicQos(q) => {
                if q.prefetch_size != 0 {
                    return Err(AmqpError::new(
                        ReplyCode::NotImplemented,
                        format!("prefetch_size!=0 ({})", q.prefetch_size),
                    ));
                }
                let channel = self.channel(ch);
                if q.global {
                    channel.global_qos = true;
                    channel.credit.set_limit(u32::from(q.prefetch_count));
                    let info = &channel.info.global_prefetch;
                    info.store(u32::from(q.prefetch_count), Ordering::Relaxed);
                    let queues: Vec<QueueHandle> = channel
                        .consumers
                        .values()
                        .map(|c| c.queue.clone())
                        .collect();
                    for queue in queues {
                        queue.send(QueueCommand::CreditAvailable).await;
                    }
                } else {
                    channel.prefetch = u32::from(q.prefetch_count);
                    let info = &channel.info.prefetch;
                    info.store(u32::from(q.prefetch_count), Ordering::Relaxed);
                }
                self.send_method(ch, BasicQosOk.into());
                Ok(())
            }
            Method::BasicConsume(c) => self.basic_consume(ch, c).await,
            Method::BasicCancel(c) => {
                let consumer = self.channel(ch).consumers.remove(c.consumer_tag.as_str());
                if let Some(consumer) = consumer {
                    let (reply, rx) = oneshot::channel();
                    if consumer
                        .queue
                        .send(QueueCommand::Cancel {
                            consumer_id: consumer.id,
                            reply: Some(reply),
                        })
                        .await
                    {
                        let _ = rx.await;
                    }
                }
                if !c.no_wait {
                    self.send_method(
                        ch,
                        BasicCancelOk {
                            consumer_tag: c.consumer_tag,
                        }
                        .into(),
                    );
                }
                Ok(())
            }
            Method::BasicPublish(p) => {
                if p.immediate {
                    return Err(AmqpError::new(ReplyCode::NotImplemented, "immediate=true"));
                }
                self.start_publish(ch, p);
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
                let channel = self.channel(ch);
                if channel.tx.is_some() {
                    return Err(AmqpError::precondition(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if channel.confirms.is_none() {
                    channel.confirms = Some(super::confirms::Confirms::new());
                }
                channel.info.confirm.store(true, Ordering::Relaxed);
                if !c.nowait {
                    self.send_method(ch, ConfirmSelectOk.into());
                }
                Ok(())
            }
            Method::TxSelect(_) => {
                let limit = self.state.config.max_tx_size;
                let channel = self.channel(ch);
                if channel.confirms.is_some() {
                    return Err(AmqpError::precondition(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                // A second select keeps the transaction as it is (as RabbitMQ).
                if channel.tx.is_none() {
                    channel.tx = Some(Box::new(Tx::new(limit)));
                    channel.info.transactional.store(true, Ordering::Relaxed);
                }
                self.send_method(ch, TxSelectOk.into());
                Ok(())
            }
            Method::TxCommit(_) => self.tx_commit(ch).await,
            Method::TxRollback(_) => {
                let channel = self.channel(ch);
                let Some(tx) = channel.tx.as_mut() else {
                    return Err(not_transactional());
                };
                tx.rollback(&mut channel.outstanding);
                channel.info.set_unacked(channel.outstanding.len());
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

    /// `basic.recover` / `basic.recover-async`: every unacked delivery of the channel goes
    /// back to its queue. Only `requeue=true`, as in RabbitMQ.
    /// In a transaction too it acts at once, on the deliveries the transaction does not
    /// hold (as RabbitMQ).
    async fn recover(&mut self, ch: u16, requeue: bool) -> AmqpResult<()> {
        if !requeue {
            return Err(AmqpError::new(ReplyCode::NotImplemented, "requeue=false"));
        }
        let taken = self.channel(ch).take_outstanding(0, true)?;
        self.apply_settle(ch, taken, true, false).await;
        Ok(())
    }

    /// `tx.commit`: the held publishes go to their queues (an unroutable mandatory one is
    /// returned), then the held settlements; `tx.commit-ok` follows once the queues have
    /// answered every publish (see [`Conn::emit_confirms`]).
    async fn tx_commit(&mut self, ch: u16) -> AmqpResult<()> {
        let Some(tx) = self.channel(ch).tx.as_mut() else {
            return Err(not_transactional());
        };
        let (publishes, settlements) = tx.take_held();
        for p in publishes {
            if p.queues.is_empty() {
                if p.mandatory {
                    self.send_return(ch, &p.message);
                }
                continue;
            }
            let Some(tx) = self.channel(ch).tx.as_mut() else {
                break;
            };
            let seq = tx.confirms.publish(p.queues.len() as u32);
            for q in p.queues {
                let confirm = Some(ConfirmTicket {
                    sink: self.events.clone(),
                    channel: ch,
                    seq,
                });
                let message = p.message.clone();
                self.hold_publish(q, Publish { message, confirm });
            }
        }
        if let Some(tx) = self.channel(ch).tx.as_mut() {
            tx.commit_sent();
        }
        // The whole transaction reaches each queue as one batch: one group commit.
        self.flush_publishes().await;
        // Durable queues whose messages the transaction settles: commit-ok must not go out
        // before those settle records are on disk, or a crash right after it brings the
        // acked messages back (the publishes are covered by their confirms).
        let mut logged: Vec<QueueHandle> = Vec::new();
        for s in settlements {
            for (_, o) in &s.taken {
                let info = o.queue.info();
                if info.store_id.is_some() && !logged.iter().any(|q| q.same(&o.queue)) {
                    logged.push(o.queue.clone());
                }
            }
            let taken = s.taken.into_iter().map(|(_, o)| o).collect();
            self.apply_settle(ch, taken, s.requeue, s.ack).await;
        }
        if !logged.is_empty() {
            self.flush_acks();
            if !self.settles_logged(logged).await {
                self.tx_failed.push(ch);
            }
        }
        self.emit_confirms(ch);
        self.fail_transactions().await;
        Ok(())
    }

    /// Waits until each queue has handled what this connection sent it (a queue logs its
    /// settle records before it answers `Counts`), then until the store has synced them.
    async fn settles_logged(&mut self, queues: Vec<QueueHandle>) -> bool {
        for q in queues {
            let (reply, counts) = oneshot::channel();
            if q.send(QueueCommand::Counts { reply }).await {
                let _ = counts.await;
            }
        }
        match &self.state.store {
            Some(store) => store.sync().await,
            None => true,
        }
    }

    /// Closes the channels whose commit a queue refused (see [`Conn::emit_confirms`]),
    /// with RabbitMQ's error.
    pub(crate) async fn fail_transactions(&mut self) {
        for ch in std::mem::take(&mut self.tx_failed) {
            let open = self
                .channels
                .get(&ch)
                .is_some_and(|c| c.status == super::ChannelStatus::Open);
            if open {
                let e = AmqpError::precondition("partial tx completion").on(90, 20);
                self.fail_channel(ch, e).await;
            }
        }
    }

    /// Sends `basic.return` of an unroutable mandatory message.
    fn send_return(&mut self, ch: u16, message: &Message) {
        let ret = Method::BasicReturn(BasicReturn {
            reply_code: ReplyCode::NoRoute.code(),
            reply_text: "NO_ROUTE".into(),
            exchange: message.exchange.to_string(),
            routing_key: message.routing_key.to_string(),
        });
        encode_content(
            &mut self.out,
            ch,
            &ret,
            &message.properties,
            &message.body,
            self.frame_max,
        );
    }

    async fn queue_declare(&mut self, ch: u16, d: QueueDeclare) -> AmqpResult<()> {
        let vhost = self.state.vhost.clone();
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
            let spec = QueueSpec {
                name,
                durable: d.durable,
                exclusive: d.exclusive,
                auto_delete: d.auto_delete,
                arguments: d.arguments,
            };
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

    async fn basic_consume(&mut self, ch: u16, c: BasicConsume) -> AmqpResult<()> {
        let queue = self.state.vhost.queue_for(&c.queue, self.id)?;
        let tag: Arc<str> = if c.consumer_tag.is_empty() {
            generate_name("amq.ctag-").into()
        } else {
            c.consumer_tag.as_str().into()
        };
        let (conn_id, sink) = (self.id, self.events.clone());
        let channel = self.channel(ch);
        if channel.consumers.contains_key(&tag) {
            return Err(AmqpError::new(
                ReplyCode::NotAllowed,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let id = NEXT_CONSUMER_ID.fetch_add(1, Ordering::Relaxed);
        let listed = crate::registry::ConsumerInfo {
            id,
            tag: tag.clone(),
            queue: queue.name().clone(),
            ack_required: !c.no_ack,
            exclusive: c.exclusive,
            prefetch: channel.prefetch,
        };
        let spec = ConsumerSpec {
            id,
            tag: tag.clone(),
            conn_id,
            channel: ch,
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch: channel.prefetch,
            priority: c
                .arguments
                .get("x-priority")
                .and_then(|v| v.as_i64())
                .map_or(0, |p| {
                    p.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
                }),
            channel_credit: channel.global_qos.then(|| channel.credit.clone()),
            sink,
        };
        let (reply, rx) = oneshot::channel();
        if !queue
            .send(QueueCommand::Consume {
                consumer: spec,
                reply,
            })
            .await
        {
            return Err(AmqpError::no_queue(&c.queue));
        }
        rx.await
            .unwrap_or_else(|_| Err(AmqpError::no_queue(&c.queue)))?;
        let channel = self.channel(ch);
        let registration = Some(channel.info.register_consumer(listed));
        channel.consumers.insert(
            tag.clone(),
            ChannelConsumer {
                id,
                queue,
                registration,
            },
        );
        if !c.no_wait {
            self.send_method(
                ch,
                BasicConsumeOk {
                    consumer_tag: tag.to_string(),
                }
                .into(),
            );
        }
        Ok(())
    }

    async fn basic_get(&mut self, ch: u16, g: BasicGet) -> AmqpResult<()> {
        let queue = self.state.vhost.queue_for(&g.queue, self.id)?;
        let (reply, rx) = oneshot::channel();
        let got = if queue
            .send(QueueCommand::Get {
                no_ack: g.no_ack,
                reply,
            })
            .await
        {
            rx.await.ok().flatten()
        } else {
            None
        };
        let Some(got) = got else {
            self.send_method(ch, BasicGetEmpty.into());
            return Ok(());
        };
        let channel = self.channel(ch);
        let tag = channel.next_tag;
        channel.next_tag += 1;
        if !g.no_ack {
            channel.outstanding.insert(
                tag,
                Outstanding {
                    queue,
                    msg_id: got.msg_id,
                    charged: false,
                },
            );
            channel.info.set_unacked(channel.outstanding.len());
        }
        let m = &got.message;
        let method = Method::BasicGetOk(BasicGetOk {
            delivery_tag: tag,
            redelivered: got.redelivered,
            exchange: m.exchange.to_string(),
            routing_key: m.routing_key.to_string(),
            message_count: got.remaining,
        });
        let properties = fitting_properties(&m.properties, self.frame_max);
        encode_content(
            &mut self.out,
            ch,
            &method,
            &properties,
            &m.body,
            self.frame_max,
        );
        Ok(())
    }

    /// `basic.publish` on `ch`: its header and body come next.
    pub(crate) fn start_publish(&mut self, ch: u16, method: BasicPublish) {
        self.channel(ch).publish = Some(PendingPublish {
            method,
            header: None,
            body: BodyParts::Empty,
        });
    }

    /// `basic.ack` on a channel without channel-wide credit (`basic.qos global`): no
    /// delivery took any, so every ack is plain and held for its queue (see
    /// [`Conn::hold_ack`]).
    pub(crate) fn plain_ack(&mut self, ch: u16, tag: u64, multiple: bool) -> AmqpResult<()> {
        if !multiple {
            let o = self.channel(ch).take_one(tag)?;
            self.hold_ack(o.queue, o.msg_id);
            return Ok(());
        }
        for o in self.channel(ch).take_outstanding(tag, multiple)? {
            self.hold_ack(o.queue, o.msg_id);
        }
        Ok(())
    }

    /// Ack (`ack = true`), or reject / nack with or without requeue.
    async fn settle(
        &mut self,
        ch: u16,
        tag: u64,
        multiple: bool,
        requeue: bool,
        ack: bool,
    ) -> AmqpResult<()> {
        let channel = self.channel(ch);
        if channel.tx.is_some() {
            // Taken now (an unknown tag fails now), applied at commit.
            let taken = channel.take_tagged(tag, multiple)?;
            if let Some(tx) = channel.tx.as_mut() {
                tx.hold_settle(TxSettle {
                    ack,
                    requeue,
                    taken,
                });
            }
            return Ok(());
        }
        let taken = channel.take_outstanding(tag, multiple)?;
        self.apply_settle(ch, taken, requeue, ack).await;
        Ok(())
    }

    /// Settles deliveries taken from `ch`: acks them, or rejects them with or without
    /// requeue; gives back the channel-wide credit they took.
    async fn apply_settle(&mut self, ch: u16, taken: Vec<Outstanding>, requeue: bool, ack: bool) {
        if ack && taken.iter().all(|o| !o.charged) {
            // A plain ack: sent with the others of this read (see `Conn::hold_ack`).
            for o in taken {
                self.hold_ack(o.queue, o.msg_id);
            }
            return;
        }
        self.flush_acks();
        let mut released = 0;
        for (queue, ids, charged) in group_by_queue(taken) {
            released += charged;
            queue
                .send(QueueCommand::Settle {
                    ids,
                    requeue: requeue && !ack,
                    rejected: !ack,
                })
                .await;
        }
        if released > 0 {
            // Channel-wide credit came back: every queue this channel consumes from may
            // deliver again.
            let channel = self.channel(ch);
            channel.credit.release(released);
            let consumer_queues: Vec<QueueHandle> = channel
                .consumers
                .values()
                .map(|c| c.queue.clone())
                .collect();
            for q in consumer_queues {
                q.send(QueueCommand::CreditAvailable).await;
            }
        }
    }

    /// A content header arrived on `ch`.
    pub(crate) fn on_header(&mut self, ch: u16, header: ContentHeader) -> AmqpResult<()> {
        let max = self.state.config.max_message_size;
        let expecting = self
            .channels
            .get(&ch)
            .map(|c| (c.status, c.publish.as_ref().map(|p| p.header.is_some())));
        match expecting {
            Some((super::ChannelStatus::Closing, _)) => return Ok(()),
            Some((_, Some(false))) => {}
            Some((_, Some(true))) => {
                return Err(AmqpError::new(
                    ReplyCode::UnexpectedFrame,
                    "expected content body, got non content body frame instead",
                )
                .on(60, 40))
            }
            // No channel, or no publish on it: RabbitMQ's answer in both cases.
            _ => {
                return Err(AmqpError::new(
                    ReplyCode::UnexpectedFrame,
                    "expected method frame, got non method frame instead",
                ))
            }
        }
        if header.class_id != 60 {
            return Err(AmqpError::new(
                ReplyCode::UnexpectedFrame,
                format!(
                    "expected content header for class 60, got one for class {} instead",
                    header.class_id
                ),
            )
            .on(60, 40));
        }
        if header.body_size > max {
            self.channel(ch).publish = None;
            return Err(AmqpError::precondition(format!(
                "message size {} is larger than configured max size {max}",
                header.body_size
            )));
        }
        let size = header.body_size;
        let Some(publish) = self.channel(ch).publish.as_mut() else {
            return Err(AmqpError::new(
                ReplyCode::UnexpectedFrame,
                "content header without a basic.publish",
            ));
        };
        publish.header = Some((header.properties, size));
        if size == 0 {
            self.complete_publish(ch)?;
        }
        Ok(())
    }

    /// A body frame arrived on `ch`.
    pub(crate) fn on_body(&mut self, ch: u16, body: Bytes) -> AmqpResult<()> {
        let no_method = || {
            AmqpError::new(
                ReplyCode::UnexpectedFrame,
                "expected method frame, got non method frame instead",
            )
        };
        let Some(channel) = self.channels.get_mut(&ch) else {
            return Err(no_method());
        };
        if channel.status == super::ChannelStatus::Closing {
            return Ok(());
        }
        if channel.publish.as_ref().is_some_and(|p| p.header.is_none()) {
            return Err(AmqpError::new(
                ReplyCode::UnexpectedFrame,
                "expected content header for class 60, got non content header frame instead",
            )
            .on(60, 40));
        }
        let Some(PendingPublish {
            header: Some((_, size)),
            body: parts,
            ..
        }) = channel.publish.as_mut()
        else {
            return Err(no_method());
        };
        let size = *size;
        if parts.len() + body.len() as u64 > size {
            return Err(AmqpError::new(
                ReplyCode::FrameError,
                format!("content body exceeds the declared size of {size} octets"),
            ));
        }
        parts.push(body);
        if parts.len() == size {
            self.complete_publish(ch)?;
        }
        Ok(())
    }

    /// The publish on `ch` is complete: route it, hold it for its queues (see
    /// [`Conn::hold_publish`]), arrange its confirm and its return.
    fn complete_publish(&mut self, ch: u16) -> AmqpResult<()> {
        let channel = self.channel(ch);
        let Some(PendingPublish {
            method,
            header: Some((properties, _)),
            body,
        }) = channel.publish.take()
        else {
            return Ok(());
        };
        let route = channel
            .last
            .route_str(&method.exchange, &method.routing_key);
        let properties = channel.last.properties(properties);
        self.publish_message(ch, route, method.mandatory, properties, body.into_bytes())
    }

    /// Routes a whole message published on `ch` (by [`Conn::complete_publish`], or taken
    /// whole from the read buffer), holds it for its queues (see [`Conn::hold_publish`]),
    /// and arranges its confirm and its return.
    pub(crate) fn publish_message(
        &mut self,
        ch: u16,
        (exchange, routing_key): (Arc<str>, Arc<str>),
        mandatory: bool,
        properties: Arc<BasicProperties>,
        body: Bytes,
    ) -> AmqpResult<()> {
        if let Some(uid) = properties.user_id.as_deref() {
            if uid != self.user {
                return Err(AmqpError::precondition(format!(
                    "user_id property set to '{uid}' but authenticated user was '{}'",
                    self.user
                ))
                .on(60, 40));
            }
        }
        if let Some(expiration) = properties.expiration.as_deref() {
            crate::queue::args::parse_expiration(expiration).map_err(|e| e.on(60, 40))?;
        }
        let mut queues = Vec::new();
        if exchange.is_empty() {
            // The channel is open (see `Conn::channel`); the fields are borrowed apart.
            #[allow(clippy::expect_used)]
            let cache = &mut self
                .channels
                .get_mut(&ch)
                .expect("channel checked open by the caller")
                .default_route;
            queues.extend(self.state.vhost.route_default(&routing_key, cache));
        } else {
            self.state
                .vhost
                .route(
                    &exchange,
                    &routing_key,
                    properties.headers.as_ref(),
                    &mut queues,
                )
                .map_err(|e| e.on(60, 40))?;
        }
        let store_failed = self.state.store.as_ref().is_some_and(|s| s.is_poisoned());
        if properties.is_persistent()
            && store_failed
            && queues.iter().any(|q| q.info().store_id.is_some())
        {
            return Err(AmqpError::precondition(
                "the message store failed (see the broker log); persistent messages to durable queues are refused",
            )
            .on(60, 40));
        }
        let message = Arc::new(Message::new(exchange, routing_key, properties, body));
        let channel = self.channel(ch);
        if let Some(tx) = channel.tx.as_mut() {
            // Routed now, delivered (or returned) at commit.
            let held = TxPublish {
                message,
                queues,
                mandatory,
            };
            return tx.hold_publish(held).map_err(|e| e.on(60, 40));
        }
        let seq = channel
            .confirms
            .as_mut()
            .map(|c| c.publish(queues.len() as u32));
        if queues.is_empty() && mandatory {
            self.send_return(ch, &message);
        }
        for q in queues {
            let confirm = seq.map(|seq| ConfirmTicket {
                sink: self.events.clone(),
                channel: ch,
                seq,
            });
            self.hold_publish(
                q,
                Publish {
                    message: message.clone(),
                    confirm,
                },
            );
        }
        if seq.is_some() {
            self.emit_confirms(ch);
        }
        Ok(())
    }

    /// Sends the confirms that have become due on `ch`.
    /// On a channel in tx mode: the `tx.commit-ok`s that have become due, and the
    /// commits that failed (closed by [`Conn::fail_transactions`]).
    pub(crate) fn emit_confirms(&mut self, ch: u16) {
        let mut due = Vec::new();
        let Some(channel) = self.channels.get_mut(&ch) else {
            return;
        };
        if let Some(c) = channel.confirms.as_mut() {
            c.drain(&mut due);
        } else if let Some(tx) = channel.tx.as_mut() {
            let mut outcomes = Vec::new();
            tx.settled(&mut outcomes);
            for outcome in outcomes {
                match outcome {
                    Outcome::Committed => self.send_method(ch, TxCommitOk.into()),
                    Outcome::Failed => {
                        // The channel closes: no later commit-ok may follow.
                        if !self.tx_failed.contains(&ch) {
                            self.tx_failed.push(ch);
                        }
                        break;
                    }
                }
            }
            return;
        }
        for confirm in due {
            let m = match confirm {
                Confirm::Ack(tag, multiple) => BasicAck {
                    delivery_tag: tag,
                    multiple,
                }
                .into(),
                Confirm::Nack(tag) => BasicNack {
                    delivery_tag: tag,
                    multiple: false,
                    requeue: false,
                }
                .into(),
            };
            self.send_method(ch, m);
        }
    }

    /// Writes a delivery from a queue, or hands it back if its consumer is gone.
    pub(crate) fn deliver(&mut self, d: Delivery) {
        let frame_max = self.frame_max;
        let live = self.channels.get_mut(&d.channel).filter(|c| {
            c.status == super::ChannelStatus::Open
                && c.consumers
                    .get(&d.consumer_tag)
                    .is_some_and(|x| x.id == d.consumer_id)
        });
        let Some(channel) = live else {
            if !d.no_ack {
                d.queue.send_now(QueueCommand::Settle {
                    ids: vec![d.msg_id],
                    requeue: true,
                    rejected: false,
                });
            }
            if d.charged {
                if let Some(c) = self.channels.get(&d.channel) {
                    c.credit.release(1);
                }
            }
            return;
        };
        let tag = channel.next_tag;
        channel.next_tag += 1;
        if !d.no_ack {
            channel.outstanding.insert(
                tag,
                Outstanding {
                    queue: d.queue,
                    msg_id: d.msg_id,
                    charged: d.charged,
                },
            );
            channel.info.set_unacked(channel.outstanding.len());
        }
        let m = &d.message;
        encode_deliver_head(
            &mut self.out,
            d.channel,
            &d.consumer_tag,
            tag,
            d.redelivered,
            &m.exchange,
            &m.routing_key,
            &fitting_properties(&m.properties, frame_max),
            m.body.len() as u64,
        );
        if m.body.len() < ZERO_COPY_BODY {
            encode_body_frames(&mut self.out, d.channel, &m.body, frame_max);
            return;
        }
        // A large body goes to the socket as it is, between the frame headers and ends.
        let max = max_body_payload(frame_max);
        let mut at = 0;
        while at < m.body.len() {
            let end = m.body.len().min(at.saturating_add(max));
            body_frame_start(&mut self.out, d.channel, end - at);
            self.send_bytes(m.body.slice(at..end));
            self.out.extend_from_slice(&[FRAME_END]);
            at = end;
        }
    }
}

/// Bodies from this size on are written to the socket from the message's own `Bytes`
/// instead of being copied into the connection's output buffer.
const ZERO_COPY_BODY: usize = 16 * 1024;

/// A content header frame cannot be split. Headers the broker added (`x-delivery-count` on a
/// redelivery, a growing `x-death` on a dead letter) can push a header that fit the
/// publisher's frame_max over a consumer's: drop what the broker added, until it fits.
fn fitting_properties(
    p: &BasicProperties,
    frame_max: u32,
) -> std::borrow::Cow<'_, BasicProperties> {
    use std::borrow::Cow;
    // Frame header and end (8), class, weight and body size (12).
    let limit = (frame_max as usize).saturating_sub(20);
    let size = |p: &BasicProperties| {
        let mut scratch = bytes::BytesMut::new();
        p.encode(&mut scratch);
        scratch.len()
    };
    // Only what the broker added is dropped: without it there is nothing to fit, and no
    // need to encode the properties an extra time to measure them (every delivery).
    let added = p
        .headers
        .as_ref()
        .is_some_and(|h| h.get("x-delivery-count").is_some() || h.get("x-death").is_some());
    if frame_max == 0 || !added || size(p) <= limit {
        return Cow::Borrowed(p);
    }
    let mut fitted = p.clone();
    if let Some(h) = fitted.headers.as_mut() {
        h.remove("x-delivery-count");
    }
    if size(&fitted) > limit {
        if let Some(h) = fitted.headers.as_mut() {
            if let Some(FieldValue::Array(mut deaths)) = h.remove("x-death") {
                deaths.truncate(1);
                h.insert("x-death", FieldValue::Array(deaths));
            }
        }
    }
    Cow::Owned(fitted)
}

/// `tx.commit` / `tx.rollback` outside tx mode.
fn not_transactional() -> AmqpError {
    AmqpError::precondition("channel is not transactional")
}
