//! The basic class but publishing (see [`super::publish`]): qos, consume, cancel, get,
//! and settling — ack, nack, reject, recover. A plain ack the fast path takes is held for
//! its queue with the rest of the read; every other settlement is sent at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use minimq_protocol::frame::encode_content;
use minimq_protocol::*;
use tokio::sync::oneshot;

use super::deliver::fitting_properties;
use super::Conn;
use crate::channel::{group_by_queue, Outstanding};
use crate::error::{AmqpError, AmqpResult};
use crate::queue::{ConsumerSpec, QueueCommand};
use crate::vhost::generate_name;

static NEXT_CONSUMER_ID: AtomicU64 = AtomicU64::new(1);

impl Conn {
    /// `basic.qos`. A channel-wide limit can free room at once: every queue a consumer
    /// of the channel reads from is told to look again.
    pub(super) async fn basic_qos(&mut self, ch: u16, q: BasicQos) -> AmqpResult<()> {
        if q.prefetch_size != 0 {
            return Err(AmqpError::new(
                ReplyCode::NotImplemented,
                format!("prefetch_size!=0 ({})", q.prefetch_size),
            ));
        }
        let channel = self.channel(ch);
        channel.set_qos(q.prefetch_count, q.global);
        if q.global {
            for queue in channel.consumer_queues() {
                queue.send(QueueCommand::CreditAvailable).await;
            }
        }
        self.send_method(ch, BasicQosOk.into());
        Ok(())
    }

    /// `basic.cancel`: answered once the queue has dropped the consumer, so no delivery
    /// for it follows the `cancel-ok`.
    pub(super) async fn basic_cancel(&mut self, ch: u16, c: BasicCancel) -> AmqpResult<()> {
        let consumer = self.channel(ch).remove_consumer(c.consumer_tag.as_str());
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

    /// `basic.consume`: the queue takes the consumer first, then the channel lists it.
    pub(super) async fn basic_consume(&mut self, ch: u16, c: BasicConsume) -> AmqpResult<()> {
        self.authorize(crate::auth::Perm::Read, "queue", &c.queue)?;
        let queue = self.vhost.queue_for(&c.queue, self.id)?;
        let tag: Arc<str> = if c.consumer_tag.is_empty() {
            generate_name("amq.ctag-").into()
        } else {
            c.consumer_tag.as_str().into()
        };
        let own_timeout = Self::own_consumer_timeout(&c.arguments)?;
        let (conn_id, sink, room) = (self.id, self.events.clone(), self.room.clone());
        let channel = self.channel(ch);
        if channel.has_consumer(&tag) {
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
            prefetch: channel.consumer_prefetch(),
            arguments: c.arguments.clone(),
        };
        let spec = ConsumerSpec {
            id,
            tag: tag.clone(),
            conn_id,
            channel: ch,
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch: channel.consumer_prefetch(),
            priority: c
                .arguments
                .get("x-priority")
                .and_then(|v| v.as_i64())
                .map_or(0, |p| {
                    p.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
                }),
            channel_credit: channel.consumer_credit(),
            arguments: c.arguments.clone(),
            sink,
            room: room.clone(),
        };
        let (reply, rx) = oneshot::channel();
        if !queue
            .send(QueueCommand::Consume {
                consumer: Box::new(spec),
                reply,
            })
            .await
        {
            return Err(AmqpError::no_queue(&c.queue, self.vhost.name()));
        }
        rx.await
            .unwrap_or_else(|_| Err(AmqpError::no_queue(&c.queue, self.vhost.name())))?;
        self.channel(ch)
            .add_consumer(tag.clone(), queue, listed, own_timeout);
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

    /// `basic.get`: one message, tagged like a delivery, or `get-empty`.
    pub(super) async fn basic_get(&mut self, ch: u16, g: BasicGet) -> AmqpResult<()> {
        self.authorize(crate::auth::Perm::Read, "queue", &g.queue)?;
        let queue = self.vhost.queue_for(&g.queue, self.id)?;
        crate::queue::stream::refuse(&queue, "basic.get")?;
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
        if self.vhost.is_tracing() {
            self.trace_delivery(ch, queue.name(), &got.message, got.redelivered);
        }
        let timeout = self.get_timeout(&queue);
        let now = self.clock.deadline_ms(Instant::now());
        let deadline = timeout.map(|t| crate::channel::AckDeadline::after(now, t));
        self.deadlines_armed |= deadline.is_some() && !g.no_ack;
        let unsettled = (!g.no_ack).then(|| Outstanding {
            queue,
            msg_id: got.msg_id,
            charged: false,
            deadline,
        });
        let tag = self.channel(ch).tag_delivery(unsettled);
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

    /// `basic.ack` on a channel without channel-wide credit (`basic.qos global`), taken
    /// by the fast path: no delivery took any, so every ack is plain and held for its
    /// queue with the others of this read (see [`Conn::intake`]).
    pub(super) fn plain_ack(&mut self, ch: u16, tag: u64, multiple: bool) -> AmqpResult<()> {
        if !multiple {
            let o = self.channel(ch).take_one(tag)?;
            self.held.ack(o.queue, o.msg_id);
            return Ok(());
        }
        for o in self.channel(ch).take_outstanding(tag, multiple)? {
            self.held.ack(o.queue, o.msg_id);
        }
        Ok(())
    }

    /// Ack (`ack = true`), or reject / nack with or without requeue, on the slow path
    /// (in a transaction, or with channel-wide credit, or any ack the fast path did not
    /// take).
    pub(super) async fn settle(
        &mut self,
        ch: u16,
        tag: u64,
        multiple: bool,
        requeue: bool,
        ack: bool,
    ) -> AmqpResult<()> {
        if let Some(taken) = self.channel(ch).take_settled(tag, multiple, requeue, ack)? {
            self.apply_settle(ch, taken, requeue, ack).await?;
        }
        Ok(())
    }

    /// Settles deliveries taken from `ch` at once: acks them, or rejects them with or
    /// without requeue; gives back the channel-wide credit they took. A reject of a
    /// stream's delivery is refused (540) before anything is settled.
    pub(super) async fn apply_settle(
        &mut self,
        ch: u16,
        taken: Vec<Outstanding>,
        requeue: bool,
        ack: bool,
    ) -> AmqpResult<()> {
        if !ack {
            // A stream takes acks only (RabbitMQ 3.10's 540 for reject, nack, recover).
            crate::queue::stream::refuse_reject(taken.iter().map(|o| &o.queue))?;
        }
        if ack && taken.iter().all(|o| !o.charged) {
            // Plain acks: in the lane the queue takes first, as the fast path's.
            for (queue, ids, _) in group_by_queue(taken) {
                queue.send_acks(ids);
            }
            return Ok(());
        }
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
            channel.release_credit(released);
            for q in channel.consumer_queues() {
                q.send(QueueCommand::CreditAvailable).await;
            }
        }
        Ok(())
    }

    /// `basic.recover` / `basic.recover-async`: every unacked delivery of the channel goes
    /// back to its queue. Only `requeue=true`, as in RabbitMQ.
    /// In a transaction too it acts at once, on the deliveries the transaction does not
    /// hold (as RabbitMQ).
    pub(super) async fn recover(&mut self, ch: u16, requeue: bool) -> AmqpResult<()> {
        if !requeue {
            return Err(AmqpError::new(ReplyCode::NotImplemented, "requeue=false"));
        }
        let taken = self.channel(ch).take_outstanding(0, true)?;
        self.apply_settle(ch, taken, true, false).await
    }
}

impl Conn {
    /// A consumer's own `x-consumer-timeout` (RabbitMQ 4's argument), checked: it
    /// overrides its queue's and the broker's for every delivery to it. `None` when not
    /// given; zero disables the timeout. The effective timeout is worked out at each
    /// delivery ([`crate::channel::Channel::delivery_timeout`]).
    pub(super) fn own_consumer_timeout(arguments: &FieldTable) -> AmqpResult<Option<Duration>> {
        match arguments.get("x-consumer-timeout") {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(ms) if ms >= 0 => Ok(Some(Duration::from_millis(ms as u64))),
                _ => Err(AmqpError::precondition(format!(
                    "invalid arg 'x-consumer-timeout' for consumer: {{unacceptable_value,{}}}",
                    v.type_name()
                ))),
            },
        }
    }

    /// How long a `basic.get` delivery from `queue` may stay unacknowledged: the
    /// queue's timeout (argument or policy), else the broker's `--consumer-timeout`.
    /// Zero disables it, as `--consumer-timeout 0` does.
    fn get_timeout(&self, queue: &crate::queue::QueueHandle) -> Option<Duration> {
        queue
            .info()
            .consumer_timeout()
            .or(self.state.config.consumer_timeout)
            .filter(|t| !t.is_zero())
    }
}
