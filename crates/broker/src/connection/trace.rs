//! Firehose tracing from a connection's side: the trace of each publish and delivery
//! made on it while its vhost traces (`crate::trace` builds them, the vhost routes
//! them). Callers check [`crate::vhost::VHost::is_tracing`] first, one relaxed load, so
//! a vhost that does not trace pays nothing more.

use std::sync::Arc;

use super::Conn;
use crate::message::Message;
use crate::queue::QueueHandle;
use crate::trace::{self, Tap};

impl Conn {
    /// Who traced publishes and deliveries on channel `ch` are made by.
    fn tap(&self, ch: u16) -> Tap<'_> {
        Tap {
            vhost: self.vhost.name(),
            connection: self.info.as_ref().map_or("", |i| i.name.as_str()),
            channel: ch,
            user: &self.user,
        }
    }

    /// Traces `message`, published on `ch` and routed to `queues`. Cold and out of line:
    /// the publish path it is called from stays as small as without tracing.
    #[cold]
    #[inline(never)]
    pub(super) fn trace_publish(&self, ch: u16, message: &Message, queues: &[QueueHandle]) {
        if let Some(t) = trace::published(message, queues, self.tap(ch)) {
            self.vhost.publish_trace(t);
        }
    }

    /// Traces `message`, delivered on `ch` from queue `queue` (to a consumer or a get).
    /// Cold and out of line, as [`Conn::trace_publish`].
    #[cold]
    #[inline(never)]
    pub(super) fn trace_delivery(
        &self,
        ch: u16,
        queue: &Arc<str>,
        message: &Message,
        redelivered: bool,
    ) {
        if let Some(t) = trace::delivered(message, queue, redelivered, self.tap(ch)) {
            self.vhost.publish_trace(t);
        }
    }
}
