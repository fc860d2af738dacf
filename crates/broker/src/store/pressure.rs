//! The memory pressure signal: whether queues should page their backlogs out to the log.
//!
//! Owned by the store (paging needs a log to page to: a broker without a data directory
//! has no signal and never pages), set by the memory monitor (`alarm.rs`) at every
//! sample, read by the queue tasks: [`Pressure::on`] is one atomic load, on every
//! message a queue takes; [`Pressure::subscribe`] tells a queue when it turns on, so a
//! backlog already in memory is paged out then, not only the messages that come after.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// Whether memory is under pressure (see the module docs).
#[derive(Debug)]
pub struct Pressure {
    on: AtomicBool,
    changes: watch::Sender<bool>,
}

impl Default for Pressure {
    fn default() -> Self {
        Pressure {
            on: AtomicBool::new(false),
            changes: watch::channel(false).0,
        }
    }
}

impl Pressure {
    /// Whether queues should keep what they can on disk. One relaxed load.
    #[inline]
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Turns the signal on or off; a change is announced to [`Pressure::subscribe`]rs.
    pub fn set(&self, on: bool) {
        if self.on.swap(on, Ordering::Relaxed) != on {
            if on {
                tracing::info!(
                    "memory over the paging threshold: queues page messages out to disk"
                );
            } else {
                tracing::info!("memory back under the paging threshold");
            }
            self.changes.send_replace(on);
        }
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.changes.subscribe()
    }
}
