//! The delivered offsets: per (topic, partition), the next offset after the contiguous
//! prefix whose rows are in the sink and whose dead letters are acknowledged. Workers advance
//! it after each flush; the [`Committer`](super::Committer) commits it.

use std::collections::HashMap;
use std::sync::Mutex;

/// Offsets whose records are durably delivered (rows in the sink, dead letters acknowledged):
/// the next offset to consume per (topic, partition). Workers advance it after each flush;
/// the consumer commits it.
#[derive(Default)]
pub struct DeliveredOffsets {
    inner: Mutex<HashMap<(String, i32), i64>>,
}

impl DeliveredOffsets {
    /// Record that everything before `next` in (topic, partition) is delivered.
    pub fn advance(&self, topic: &str, partition: i32, next: i64) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry((topic.to_string(), partition)).or_insert(next);
        *e = (*e).max(next);
    }

    /// A copy of the current positions.
    pub fn snapshot(&self) -> HashMap<(String, i32), i64> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forget partitions (after they were revoked and committed).
    pub fn remove(&self, partitions: &[(String, i32)]) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for tp in partitions {
            m.remove(tp);
        }
    }
}
