//! Closing: a channel closed by an error, the connection closed by an error, by the
//! client or by the socket, and what either gives back — every unacked message to its
//! queue, every consumer removed, deliveries in flight handed back, exclusive queues
//! deleted — before the client hears `close-ok`.

use std::time::Duration;

use futures::StreamExt;
use minimq_protocol::{ChannelClose, ConnectionClose, Frame, Method};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Conn, Reader, CLOSE_TIMEOUT};
use crate::channel::group_by_queue;
use crate::error::AmqpError;
use crate::queue::{QueueCommand, QueueEvent, QueueHandle};

/// Lets the writer task send what is left for at most [`CLOSE_TIMEOUT`], so a client
/// that stopped reading holds neither its connection nor a shutdown open. Past it, the
/// socket is reset (`SO_LINGER` 0, as RabbitMQ closes sockets) and what the client did not
/// read is discarded: the messages in it were handed back to their queues already.
pub(super) async fn finish_writes(closing: super::writer::Closing, socket: &std::os::fd::OwnedFd) {
    if !closing.finish(CLOSE_TIMEOUT).await {
        tracing::debug!("client not reading: connection reset");
        // Linger 0 makes the close an immediate reset; it cannot block.
        let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
    }
}

impl Conn {
    /// Sends `connection.close` with `e`.
    pub(super) fn send_connection_close(&mut self, e: &AmqpError) {
        tracing::info!(conn = self.id, peer = %self.peer, code = e.code.code(), text = %e.text, "closing connection");
        self.send_method(
            0,
            ConnectionClose {
                reply_code: e.code.code(),
                reply_text: e.text.clone(),
                class_id: e.class_id,
                method_id: e.method_id,
            }
            .into(),
        );
    }

    /// A frame on channel `ch` failed with `e`: a channel error closes the channel, a
    /// connection error the connection.
    pub(super) async fn on_frame_error(&mut self, ch: u16, e: AmqpError, deadline: &mut Instant) {
        if e.is_hard() {
            self.fail_connection(e, deadline).await;
        } else {
            self.fail_channel(ch, e).await;
        }
    }

    /// Closes the connection with `e`: everything its channels hold goes back, the
    /// client is sent `connection.close`, and has [`CLOSE_TIMEOUT`] to answer.
    pub(super) async fn fail_connection(&mut self, e: AmqpError, deadline: &mut Instant) {
        if self.closing {
            return;
        }
        self.release_all().await;
        self.send_connection_close(&e);
        self.closing = true;
        *deadline = Instant::now() + CLOSE_TIMEOUT;
    }

    /// Waits (at most [`CLOSE_TIMEOUT`]) for the client's answer to `connection.close`.
    pub(super) async fn await_close_ok(&mut self, reader: &mut Reader) {
        let wait = async {
            while let Some(Ok(frame)) = reader.next().await {
                if let Frame::Method(0, Method::ConnectionCloseOk(_) | Method::ConnectionClose(_)) =
                    frame
                {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, wait).await;
    }

    /// Discards whatever the client still sends until it closes the socket (bounded by
    /// [`CLOSE_TIMEOUT`]).
    pub(super) async fn await_client_eof(&mut self, reader: &mut Reader) {
        let drain = async { while let Some(Ok(_)) = reader.next().await {} };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
    }

    /// Closes a channel with an error: its unacked messages are requeued, its consumers
    /// removed, and the client is sent `channel.close`.
    pub(super) async fn fail_channel(&mut self, channel: u16, e: AmqpError) {
        tracing::debug!(conn = self.id, channel, code = e.code.code(), text = %e.text, "channel error");
        self.release_channel(channel, false).await;
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.start_closing();
        }
        self.send_method(
            channel,
            ChannelClose {
                reply_code: e.code.code(),
                reply_text: e.text,
                class_id: e.class_id,
                method_id: e.method_id,
            }
            .into(),
        );
    }

    /// Requeues everything every channel holds and removes their consumers.
    pub(super) async fn release_all(&mut self) {
        debug_assert!(
            self.held.is_empty(),
            "held work is sent before anything else"
        );
        // Two phases: first every consumer of this connection goes, then the unacked
        // messages are requeued. Requeueing channel by channel would let a queue hand a
        // message from a closed channel to a consumer on another channel of this same,
        // closing connection.
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        let mut outstanding = Vec::new();
        for ch in &ids {
            let Some(channel) = self.channels.get_mut(ch) else {
                continue;
            };
            outstanding.extend(channel.take_unsettled());
        }
        for ch in ids {
            for q in self.release_channel(ch, true).await {
                if !self.released.iter().any(|x| x.same(&q)) {
                    self.released.push(q);
                }
            }
        }
        for (queue, ids, _) in group_by_queue(outstanding) {
            queue
                .send(QueueCommand::Settle {
                    ids,
                    requeue: true,
                    rejected: false,
                })
                .await;
            if !self.released.iter().any(|x| x.same(&queue)) {
                self.released.push(queue);
            }
        }
    }

    /// Returns a channel's unacked messages to their queues and removes its consumers.
    /// With `remove`, the channel itself is forgotten.
    /// Answers the queues it told.
    pub(super) async fn release_channel(&mut self, ch: u16, remove: bool) -> Vec<QueueHandle> {
        let mut notified = Vec::new();
        let Some(channel) = self.channels.get_mut(&ch) else {
            return notified;
        };
        let queues = channel.release();
        if remove {
            self.channels.remove(&ch);
        }
        for (q, requeue) in queues {
            q.send(QueueCommand::ChannelClosed {
                conn_id: self.id,
                channel: ch,
                requeue: requeue.into_boxed_slice(),
            })
            .await;
            notified.push(q);
        }
        notified
    }

    /// Hands back deliveries that queues sent but this connection never wrote (e.g. a
    /// message requeued from one closing channel and dispatched to another channel of
    /// this connection). The receiver is closed first, so once every released queue has
    /// answered a round trip no queue can add one: its send fails and it keeps the
    /// message. Then what is left in the receiver goes back.
    pub(super) async fn hand_back_in_flight(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<QueueEvent>,
    ) {
        self.release_all().await;
        events.close();
        for q in std::mem::take(&mut self.released) {
            let _ = q.counts().await;
        }
        while let Ok(ev) = events.try_recv() {
            if let QueueEvent::Deliver(d) = ev {
                // A no-ack delivery has no queue to go back to: it left the queue.
                if let Some(queue) = d.queue {
                    queue
                        .send(QueueCommand::Settle {
                            ids: vec![d.msg_id],
                            requeue: true,
                            rejected: false,
                        })
                        .await;
                }
            }
        }
    }

    /// Final cleanup: requeue, drop consumers, delete exclusive queues.
    pub(super) async fn cleanup(&mut self) {
        self.release_all().await;
        self.delete_exclusive_queues().await;
        self.flush();
    }

    /// Deletes the queues this connection declared exclusive.
    pub(super) async fn delete_exclusive_queues(&mut self) {
        for q in std::mem::take(&mut self.exclusive_queues) {
            // Deleted meanwhile (e.g. through the management API), perhaps re-declared
            // by someone else under the same name: not ours to delete.
            if !self.vhost.queue(q.name()).is_some_and(|x| x.same(&q)) {
                continue;
            }
            let _ = self
                .vhost
                .delete_queue(q.name(), self.id, false, false)
                .await;
        }
    }
}
