//! `task`'s progress bar for bulk sends, drawn by `indicatif` on stderr only when stderr
//! is a terminal (`std::io::IsTerminal`), redrawn at most ten times a second:
//! `[#####-----] 500/1000 sent, 480 confirmed, 250 msg/s` (the bar fills with confirms),
//! or `500 sent, 480 confirmed, 250 msg/s` when the total is unknown (reading stdin).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Width of the bar, in characters.
const WIDTH: u64 = 30;

/// Progress of a bulk send: messages sent and confirmed, out of an optional total.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    total: Option<u64>,
    start: Instant,
}

impl Progress {
    /// A bar for `total` messages (`None`: unknown, e.g. reading stdin); drawn only on a
    /// terminal.
    pub fn new(total: Option<u64>) -> Progress {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress::with_target(total, target)
    }

    /// A bar drawn to `target`.
    pub fn with_target(total: Option<u64>, target: ProgressDrawTarget) -> Progress {
        let total = total.filter(|&t| t > 0);
        let template = match total {
            Some(_) => format!("[{{bar:{WIDTH}}}] {{msg}}"),
            None => "{msg}".to_string(),
        };
        // The template is a constant of this module; should it ever fail to parse, the
        // default style still shows the counts.
        let style = ProgressStyle::with_template(&template)
            .map(|s| s.progress_chars("#-"))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = ProgressBar::with_draw_target(total, target).with_style(style);
        Progress {
            bar,
            total,
            start: Instant::now(),
        }
    }

    /// Shows the new counts (indicatif limits how often they are drawn).
    pub fn update(&mut self, sent: u64, confirmed: u64) {
        self.set(sent, confirmed, self.start.elapsed());
    }

    /// Draws the final state and ends the line.
    pub fn finish(&mut self, sent: u64, confirmed: u64) {
        self.set(sent, confirmed, self.start.elapsed());
        // `abandon`, not `finish`: the last state stays as it was (finish would fill the bar).
        self.bar.abandon();
    }

    fn set(&self, sent: u64, confirmed: u64, elapsed: Duration) {
        if self.bar.is_hidden() {
            return;
        }
        if let Some(total) = self.total {
            self.bar.set_position(confirmed.min(total));
        }
        self.bar
            .set_message(message(self.total, sent, confirmed, elapsed));
    }
}

/// The counts beside the bar: `500/1000 sent, 480 confirmed, 250 msg/s`.
fn message(total: Option<u64>, sent: u64, confirmed: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { sent as f64 / secs } else { 0.0 };
    match total {
        Some(total) => format!("{sent}/{total} sent, {confirmed} confirmed, {rate:.0} msg/s"),
        None => format!("{sent} sent, {confirmed} confirmed, {rate:.0} msg/s"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use indicatif::TermLike;

    use super::*;

    /// A terminal that keeps the last line drawn.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<String>>);

    impl Screen {
        fn line(&self) -> String {
            self.0.lock().unwrap().clone()
        }
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            200
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            // indicatif pads with spaces to clear what was there before.
            if !s.trim().is_empty() {
                *self.0.lock().unwrap() = s.trim_end().to_string();
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn drawn(total: Option<u64>, sent: u64, confirmed: u64, elapsed: Duration) -> String {
        let screen = Screen::default();
        let p = Progress::with_target(
            total,
            ProgressDrawTarget::term_like(Box::new(screen.clone())),
        );
        p.set(sent, confirmed, elapsed);
        p.bar.abandon();
        screen.line()
    }

    #[test]
    fn renders_a_bar() {
        let s = drawn(Some(100), 50, 50, Duration::from_secs(1));
        assert_eq!(
            s,
            "[###############---------------] 50/100 sent, 50 confirmed, 50 msg/s"
        );
        let s = drawn(None, 7, 3, Duration::from_secs(0));
        assert_eq!(s, "7 sent, 3 confirmed, 0 msg/s");
    }

    #[test]
    fn hidden_off_a_terminal() {
        let p = Progress::with_target(Some(10), ProgressDrawTarget::hidden());
        assert!(p.bar.is_hidden());
    }
}
