//! Counters shared by the consumer and the workers (exported as metrics by the admin server).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Process-wide counters. Relaxed atomics: they are statistics, not synchronisation.
#[derive(Default, Debug)]
pub struct RunStats {
    pub messages_in: AtomicU64,
    pub rows_events: AtomicU64,
    pub rows_metrics: AtomicU64,
    pub skipped: AtomicU64,
    pub dead_letters: AtomicU64,
    pub flushes: AtomicU64,
    pub sink_retries: AtomicU64,
    /// Messages queued for workers right now, and the most ever seen.
    pub queued: AtomicUsize,
    pub queued_max: AtomicUsize,
    pub queued_bytes: AtomicUsize,
    pub queued_bytes_max: AtomicUsize,
    /// What workers hold beyond their queues (rows being batched, dead letters, transform
    /// memory); the most ever in flight (queued + held); the bound (`queue_bytes` x workers).
    pub held_bytes: AtomicUsize,
    pub inflight_max: AtomicUsize,
    pub inflight_limit: AtomicUsize,
    /// Partitions paused for backpressure right now, and pauses so far.
    pub paused: AtomicUsize,
    pub pauses: AtomicU64,
    /// Offsets committed to Kafka so far (commit calls that succeeded).
    pub commits: AtomicU64,
}

impl RunStats {
    /// Add `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Current value of a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Account for `n` messages of `bytes` in all entering a worker queue.
    pub fn enqueue(&self, n: usize, bytes: usize) {
        let q = self.queued.fetch_add(n, Ordering::Relaxed) + n;
        self.queued_max.fetch_max(q, Ordering::Relaxed);
        let b = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.queued_bytes_max.fetch_max(b, Ordering::Relaxed);
        self.inflight_max.fetch_max(
            b + self.held_bytes.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    /// A worker now holds `after` bytes beyond its queue instead of `before`.
    pub fn hold(&self, before: usize, after: usize) {
        let held = if after >= before {
            self.held_bytes.fetch_add(after - before, Ordering::Relaxed) + (after - before)
        } else {
            self.held_bytes.fetch_sub(before - after, Ordering::Relaxed) - (before - after)
        };
        self.inflight_max.fetch_max(
            held + self.queued_bytes.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    /// Bytes in flight in all workers right now (queued + held).
    pub fn inflight(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed) + self.held_bytes.load(Ordering::Relaxed)
    }

    /// Account for `n` messages of `bytes` in all leaving a worker queue.
    pub fn dequeue(&self, n: usize, bytes: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// A one-line summary for logs.
    pub fn summary(&self) -> String {
        format!(
            "messages={} events={} metrics={} skipped={} dead_letters={} flushes={} commits={}",
            Self::get(&self.messages_in),
            Self::get(&self.rows_events),
            Self::get(&self.rows_metrics),
            Self::get(&self.skipped),
            Self::get(&self.dead_letters),
            Self::get(&self.flushes),
            Self::get(&self.commits),
        )
    }
}
