//! Dead letters in the log: each record at DEBUG; at INFO, the first letter after a quiet
//! spell with its error, then at most one summary per interval (counts by reason, the first
//! error and where it came from). A burst of bad input is a few lines, not a line per record.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a pipeline's dead letters are summarized at most.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// One pipeline's dead-letter log, shared by its workers.
#[derive(Debug, Default)]
pub struct LetterLog {
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// When the current window began (the last INFO line about letters).
    since: Option<Instant>,
    /// Letters since then, by reason.
    counts: BTreeMap<&'static str, u64>,
    /// The first of them: `topic/partition/offset` and its error.
    first: Option<(String, String)>,
}

/// What to write at INFO, if anything.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The first letter after a quiet spell.
    First,
    /// The letters of a window: total, counts by reason, the first one's place and error.
    Summary {
        total: u64,
        by_reason: String,
        first_at: String,
        first_error: String,
        seconds: u64,
    },
}

impl LetterLog {
    /// Record a letter of `reason` at `at` with `error`: `Some(Line::First)` when it is the
    /// first after a quiet spell (log it at INFO), else it joins the window.
    pub fn note(
        &self,
        reason: &'static str,
        at: impl FnOnce() -> String,
        error: &str,
    ) -> Option<Line> {
        self.note_at(Instant::now(), reason, at, error)
    }

    fn note_at(
        &self,
        now: Instant,
        reason: &'static str,
        at: impl FnOnce() -> String,
        error: &str,
    ) -> Option<Line> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let quiet = w.counts.is_empty() && w.since.is_none_or(|s| now - s >= SUMMARY_EVERY);
        if quiet {
            w.since = Some(now);
            return Some(Line::First);
        }
        *w.counts.entry(reason).or_default() += 1;
        if w.first.is_none() {
            w.first = Some((at(), error.chars().take(300).collect()));
        }
        None
    }

    /// The summary of the window once it is `SUMMARY_EVERY` old (or now, with `force`).
    pub fn due(&self, force: bool) -> Option<Line> {
        self.due_at(Instant::now(), force)
    }

    fn due_at(&self, now: Instant, force: bool) -> Option<Line> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.counts.is_empty() {
            return None;
        }
        let since = w.since.unwrap_or(now);
        if !force && now - since < SUMMARY_EVERY {
            return None;
        }
        let counts = std::mem::take(&mut w.counts);
        let (first_at, first_error) = w.first.take().unwrap_or_default();
        w.since = Some(now);
        Some(Line::Summary {
            total: counts.values().sum(),
            by_reason: counts
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            first_at,
            first_error,
            seconds: (now - since).as_secs().max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_one_line_then_one_summary_per_interval() {
        let log = LetterLog::default();
        let t0 = Instant::now();
        let at = |o: i64| move || format!("raw-logs/0/{o}");
        assert_eq!(
            log.note_at(t0, "fail", at(1), "bad json"),
            Some(Line::First)
        );
        for o in 2..100 {
            let reason = if o % 10 == 0 { "trap" } else { "fail" };
            assert_eq!(log.note_at(t0, reason, at(o), "e"), None);
        }
        assert_eq!(log.due_at(t0 + Duration::from_secs(1), false), None);
        match log.due_at(t0 + SUMMARY_EVERY, false) {
            Some(Line::Summary {
                total,
                by_reason,
                first_at,
                ..
            }) => {
                assert_eq!(total, 98);
                assert_eq!(by_reason, "fail 89, trap 9");
                assert_eq!(first_at, "raw-logs/0/2");
            }
            other => panic!("{other:?}"),
        }
        // Nothing more until new letters; right after a summary a letter joins a window.
        assert_eq!(log.due_at(t0 + SUMMARY_EVERY * 3, false), None);
        assert_eq!(log.note_at(t0 + SUMMARY_EVERY, "fail", at(200), "e"), None);
        assert!(log.due_at(t0 + SUMMARY_EVERY, true).is_some());
        // After a quiet spell the next letter is logged at once again.
        assert_eq!(
            log.note_at(t0 + SUMMARY_EVERY * 5, "fail", at(300), "e"),
            Some(Line::First)
        );
    }
}
