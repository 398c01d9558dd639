//! Log lines that peers can trigger, rate-limited per kind: at most
//! `limit` lines of a kind per window; the rest are counted and summed up
//! in one line when the window ends.

use std::time::{Duration, Instant};

/// What a line is about (each kind has its own budget).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A host did not prove the key, or sent a malformed handshake.
    AuthFailed,
    /// A handshake refused for its version or mode.
    Refused,
    /// No handshake within the deadline.
    Timeout,
    /// Closed before completing a handshake.
    Closed,
    /// Dropped for a newer connection (too many pending).
    Evicted,
    /// Refused: another host's session runs.
    Busy,
    /// Refused: the address is backing off.
    Backoff,
    /// `accept` failed (e.g. out of file descriptors).
    Accept,
}

const KINDS: [Kind; 8] = [
    Kind::AuthFailed,
    Kind::Refused,
    Kind::Timeout,
    Kind::Closed,
    Kind::Evicted,
    Kind::Busy,
    Kind::Backoff,
    Kind::Accept,
];

impl Kind {
    fn index(self) -> usize {
        KINDS.iter().position(|k| *k == self).unwrap_or(0)
    }

    /// How the summary line names the kind.
    pub fn label(self) -> &'static str {
        match self {
            Kind::AuthFailed => "failed authentication",
            Kind::Refused => "refused handshake",
            Kind::Timeout => "handshake timeout",
            Kind::Closed => "closed connection",
            Kind::Evicted => "evicted connection",
            Kind::Busy => "busy refusal",
            Kind::Backoff => "backoff refusal",
            Kind::Accept => "accept failure",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Start of the current window (none: no line of this kind yet).
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// The per-kind budgets.
#[derive(Debug)]
pub struct RateLog {
    limit: u32,
    window: Duration,
    slots: [Slot; KINDS.len()],
}

impl RateLog {
    /// At most `limit` lines per kind per `window` (`limit` 0: unlimited).
    pub fn new(limit: u32, window: Duration) -> RateLog {
        RateLog { limit, window, slots: [Slot::default(); KINDS.len()] }
    }

    /// The lines to print for an event of `kind` now: the summary of this
    /// kind's last window if it just ended, then `message` unless the
    /// budget is spent.
    pub fn event(&mut self, kind: Kind, now: Instant, message: impl FnOnce() -> String) -> Vec<String> {
        let mut lines = self.close_window(kind, now);
        if self.limit == 0 {
            lines.push(message());
            return lines;
        }
        let slot = &mut self.slots[kind.index()];
        slot.start.get_or_insert(now);
        if slot.logged < self.limit {
            slot.logged += 1;
            lines.push(message());
        } else {
            slot.suppressed += 1;
        }
        lines
    }

    /// Summaries of the windows that ended by now (call it now and then).
    pub fn tick(&mut self, now: Instant) -> Vec<String> {
        KINDS.iter().flat_map(|k| self.close_window(*k, now)).collect()
    }

    fn close_window(&mut self, kind: Kind, now: Instant) -> Vec<String> {
        let (limit, window) = (self.limit, self.window);
        let slot = &mut self.slots[kind.index()];
        match slot.start {
            Some(start) if now.duration_since(start) >= window => {
                let n = slot.suppressed;
                *slot = Slot::default();
                if n > 0 {
                    return vec![format!(
                        "... {n} more {} lines suppressed (at most {limit} per {} s)",
                        kind.label(),
                        window.as_secs_f64()
                    )];
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_beyond_the_budget_are_counted_and_summed_up_once() {
        let mut log = RateLog::new(3, Duration::from_secs(60));
        let t = Instant::now();
        let mut printed = Vec::new();
        for i in 0..10 {
            printed.extend(log.event(Kind::AuthFailed, t, || format!("failure {i}")));
        }
        // Another kind has its own budget.
        printed.extend(log.event(Kind::Busy, t, || "busy".into()));
        assert_eq!(printed, ["failure 0", "failure 1", "failure 2", "busy"]);
        assert!(log.tick(t + Duration::from_secs(59)).is_empty());
        let summary = log.tick(t + Duration::from_secs(60));
        assert_eq!(summary, ["... 7 more failed authentication lines suppressed (at most 3 per 60 s)"]);
        assert!(log.tick(t + Duration::from_secs(200)).is_empty(), "said once");
        // A new window: the budget is back.
        let later = t + Duration::from_secs(300);
        assert_eq!(log.event(Kind::AuthFailed, later, || "again".into()), ["again"]);
        // An event after the window ended brings its summary along.
        for _ in 0..5 {
            log.event(Kind::AuthFailed, later, || "x".into());
        }
        let lines = log.event(Kind::AuthFailed, later + Duration::from_secs(61), || "next".into());
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("3 more failed authentication lines suppressed"), "{lines:?}");
        assert_eq!(lines[1], "next");
        // Unlimited.
        let mut all = RateLog::new(0, Duration::from_secs(60));
        assert_eq!((0..100).flat_map(|_| all.event(Kind::Closed, t, || "c".into())).count(), 100);
    }
}
