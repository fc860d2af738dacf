//! A one-line progress bar on stderr, drawn only when stderr is a terminal
//! (`std::io::IsTerminal`), redrawn at most ten times a second.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Progress of a bulk send: messages sent and confirmed, out of an optional total.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    total: Option<u64>,
    start: Instant,
    last_draw: Option<Instant>,
}

impl Progress {
    /// A bar for `total` messages (`None`: unknown, e.g. reading stdin); drawn only on a
    /// terminal.
    pub fn new(total: Option<u64>) -> Progress {
        Progress {
            enabled: std::io::stderr().is_terminal(),
            total,
            start: Instant::now(),
            last_draw: None,
        }
    }

    /// Redraws if enough time passed since the last draw.
    pub fn update(&mut self, sent: u64, confirmed: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .last_draw
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(100))
        {
            return;
        }
        self.last_draw = Some(now);
        self.draw(sent, confirmed);
    }

    /// Draws the final state and ends the line.
    pub fn finish(&mut self, sent: u64, confirmed: u64) {
        if !self.enabled {
            return;
        }
        self.draw(sent, confirmed);
        eprintln!();
    }

    fn draw(&self, sent: u64, confirmed: u64) {
        let line = render(self.total, sent, confirmed, self.start.elapsed());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
    }
}

/// The text of the bar: `[#####-----]  500/1000 sent, 480 confirmed, 250 msg/s`.
pub fn render(total: Option<u64>, sent: u64, confirmed: u64, elapsed: Duration) -> String {
    const WIDTH: u64 = 30;
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { sent as f64 / secs } else { 0.0 };
    match total {
        Some(total) if total > 0 => {
            let filled = (confirmed.min(total) * WIDTH / total) as usize;
            format!(
                "[{}{}] {sent}/{total} sent, {confirmed} confirmed, {rate:.0} msg/s",
                "#".repeat(filled),
                "-".repeat(WIDTH as usize - filled)
            )
        }
        _ => format!("{sent} sent, {confirmed} confirmed, {rate:.0} msg/s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_bar() {
        let s = render(Some(100), 50, 50, Duration::from_secs(1));
        assert_eq!(
            s,
            "[###############---------------] 50/100 sent, 50 confirmed, 50 msg/s"
        );
        let s = render(None, 7, 3, Duration::from_secs(0));
        assert_eq!(s, "7 sent, 3 confirmed, 0 msg/s");
    }
}
