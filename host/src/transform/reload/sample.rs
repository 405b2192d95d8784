//! The shadow sample: recent messages of a pipeline, kept for the check a candidate must
//! pass. Spread over the partitions: a busy partition used to fill it alone, so a candidate
//! was judged on one partition's records. Bounded in messages and bytes.

use crate::model::Message;
use std::collections::{BTreeMap, VecDeque};

/// Recent messages by (topic, partition), each partition kept to about its share.
#[derive(Default)]
pub struct Sample {
    by_partition: BTreeMap<(String, i32), VecDeque<Message>>,
    messages: usize,
    bytes: usize,
}

impl Sample {
    /// Add `m` (of `size` footprint bytes), keeping at most `max` messages and `max_bytes`:
    /// what goes first is the oldest message of the partition holding the most.
    pub fn push(&mut self, m: &Message, size: usize, max: usize, max_bytes: usize) {
        if max == 0 || size > max_bytes {
            return;
        }
        while self.messages >= max || self.bytes + size > max_bytes {
            let Some(q) = self.by_partition.values_mut().max_by_key(|q| q.len()) else {
                break;
            };
            let Some(old) = q.pop_front() else { break };
            self.messages -= 1;
            self.bytes -= old.footprint();
        }
        self.by_partition.retain(|_, q| !q.is_empty());
        self.by_partition
            .entry((m.topic.clone(), m.partition))
            .or_default()
            .push_back(m.clone());
        self.messages += 1;
        self.bytes += size;
    }

    /// Messages and footprint bytes held.
    pub fn size(&self) -> (usize, usize) {
        (self.messages, self.bytes)
    }

    /// The sample, partitions interleaved (the first of each, then the second, ...), each in
    /// offset order.
    pub fn messages(&self) -> Vec<Message> {
        let mut out = Vec::with_capacity(self.messages);
        let longest = self
            .by_partition
            .values()
            .map(VecDeque::len)
            .max()
            .unwrap_or(0);
        for i in 0..longest {
            out.extend(self.by_partition.values().filter_map(|q| q.get(i)).cloned());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(partition: i32, offset: i64) -> Message {
        Message {
            topic: "t".into(),
            partition,
            offset,
            timestamp_ms: None,
            key: None,
            headers: vec![],
            payload: vec![0; 10],
        }
    }

    #[test]
    fn a_busy_partition_does_not_crowd_out_the_others() {
        let mut s = Sample::default();
        let size = msg(0, 0).footprint();
        for o in 0..5 {
            s.push(&msg(1, o), size, 20, usize::MAX);
        }
        for o in 0..1000 {
            s.push(&msg(0, o), size, 20, usize::MAX);
        }
        assert_eq!(s.size(), (20, 20 * size));
        let m = s.messages();
        let quiet: Vec<i64> = m
            .iter()
            .filter(|m| m.partition == 1)
            .map(|m| m.offset)
            .collect();
        assert_eq!(
            quiet,
            [0, 1, 2, 3, 4],
            "the quiet partition keeps its records"
        );
        let busy: Vec<i64> = m
            .iter()
            .filter(|m| m.partition == 0)
            .map(|m| m.offset)
            .collect();
        assert_eq!(
            busy,
            (985..1000).collect::<Vec<_>>(),
            "the busy one its latest"
        );
        assert_eq!((m[0].partition, m[1].partition), (0, 1), "interleaved");
    }

    #[test]
    fn bytes_are_bounded_and_oversized_messages_left_out() {
        let mut s = Sample::default();
        let size = msg(0, 0).footprint();
        for o in 0..10 {
            s.push(&msg(o as i32 % 3, o), size, 100, 4 * size);
        }
        assert_eq!(s.size(), (4, 4 * size));
        s.push(&msg(0, 99), 5 * size, 100, 4 * size);
        assert_eq!(s.size(), (4, 4 * size), "too big for the sample: not kept");
    }
}
