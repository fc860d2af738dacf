//! [`Completion`]: how the store tells a caller that something it asked for is done — a
//! record is durable, everything handed over before is written or synced, the writer has
//! stopped.
//!
//! The store's own type, so that the store knows nothing of who waits: a queue turns a
//! publisher's confirm into a completion that sends the confirm event, `Store::sync`
//! into one that answers a oneshot, the writer's own waits into one that answers a
//! channel. The caller owns a completion until it hands it over with its request; from
//! then on only the writer and the syncer hold it, and they finish it.

/// A promise the store keeps exactly once: finished with `true` when what was asked is
/// done (for an append, durable as far as the fsync mode makes it), with `false` when the
/// store failed. One dropped unfinished — held by a writer or syncer thread that died —
/// finishes with `false`: nobody waits forever, and nothing is reported durable that the
/// store did not make so.
pub struct Completion {
    /// Taken when it is finished, so `Drop` answers only a completion left unfinished.
    notify: Option<Box<dyn FnOnce(bool) + Send>>,
}

impl Completion {
    /// A completion that calls `notify` with the outcome. `notify` runs on the store's
    /// writer or syncer thread: it must not block.
    pub fn new(notify: impl FnOnce(bool) + Send + 'static) -> Completion {
        Completion {
            notify: Some(Box::new(notify)),
        }
    }

    /// A completion answered on a std channel, for a thread that waits for it.
    pub fn channel() -> (Completion, std::sync::mpsc::Receiver<bool>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let done = Completion::new(move |ok| {
            let _ = tx.send(ok);
        });
        (done, rx)
    }

    /// A completion answered on a oneshot, for a task that awaits it.
    pub fn oneshot() -> (Completion, tokio::sync::oneshot::Receiver<bool>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = Completion::new(move |ok| {
            let _ = tx.send(ok);
        });
        (done, rx)
    }

    /// Reports the outcome.
    pub fn finish(mut self, ok: bool) {
        if let Some(notify) = self.notify.take() {
            notify(ok);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(notify) = self.notify.take() {
            notify(false);
        }
    }
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion")
            .field("finished", &self.notify.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reports_the_outcome_once() {
        let (done, rx) = Completion::channel();
        done.finish(true);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![true]);
    }

    #[test]
    fn a_completion_dropped_unfinished_reports_failure() {
        let (done, rx) = Completion::channel();
        drop(done);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![false]);
    }
}
