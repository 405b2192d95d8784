//! Redrive: read a dead-letter topic back as the records it holds — each with the topic,
//! partition and offset it came from (its `x-vast-source-*` headers), so its rows get the ids
//! they would have had — for a replay through the pipeline's current version. What was read
//! is committed under its own consumer group once delivered: a second redrive reads only
//! letters written since.

use crate::config::Config;
use crate::model::{Header, Message};
use crate::sink::deadletter::{H_OFFSET, H_PARTITION, H_TOPIC, H_TRUNCATED};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Why the dead-letter topic could not be read or committed.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("dead-letter topic {topic}: {what}: {source}")]
    Kafka {
        topic: String,
        what: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("dead-letter topic {0} does not exist or has no partitions")]
    NoTopic(String),
}

impl RedriveError {
    /// Worth running again later (the broker is down), as opposed to a wrong topic.
    pub fn is_retriable(&self) -> bool {
        matches!(self, RedriveError::Kafka { .. })
    }
}

/// Letters that are not redriven, and why.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Skipped {
    /// No (or unreadable) `x-vast-source-*` headers: not a dead letter of this processor.
    pub no_origin: u64,
    /// From another topic than the pipeline's.
    pub other_topic: u64,
    /// The value was cut to fit the topic; the whole record is in the dead-letter files.
    pub truncated: u64,
}

/// The dead letters read, and the positions to commit once they are delivered.
pub struct DeadLetters {
    pub records: Vec<Message>,
    pub skipped: Skipped,
    /// Letters read in all (redriven or skipped).
    pub letters: usize,
    consumer: BaseConsumer,
    topic: String,
    next: BTreeMap<i32, i64>,
}

/// The consumer group that remembers what was redriven from `topic`.
pub fn redrive_group(config: &Config, topic: &str) -> String {
    format!("{}.redrive.{topic}", config.kafka.group_id)
}

fn header<'a>(m: &'a rdkafka::message::BorrowedMessage<'_>, key: &str) -> Option<&'a [u8]> {
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
}

/// Read `topic` from where the last redrive stopped to its end (no new letter for `quiet`),
/// keeping the letters of `source_topic`.
pub fn read(
    config: &Config,
    topic: &str,
    source_topic: &str,
    quiet: Duration,
) -> Result<DeadLetters, RedriveError> {
    let kafka = |what: &'static str| {
        let topic = topic.to_string();
        move |source| RedriveError::Kafka {
            topic,
            what,
            source,
        }
    };
    let mut cc = crate::source::kafka::consumer_config(config);
    cc.set("group.id", redrive_group(config, topic));
    let consumer: BaseConsumer = cc.create().map_err(kafka("create the consumer"))?;
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(kafka("read its metadata"))?;
    let partitions: Vec<i32> = meta
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(RedriveError::NoTopic(topic.to_string()));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    // Assigned, not subscribed: no group join, and a start where the last redrive committed.
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(kafka("read the redrive group's offsets"))?;
    let mut start = TopicPartitionList::new();
    for e in committed.elements() {
        let at = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        start
            .add_partition_offset(topic, e.partition(), at)
            .map_err(kafka("set the start"))?;
    }
    consumer.assign(&start).map_err(kafka("assign"))?;
    let (mut records, mut skipped, mut next) = (Vec::new(), Skipped::default(), BTreeMap::new());
    let mut last = Instant::now();
    let mut letters = 0;
    while last.elapsed() < quiet {
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = polled.map_err(kafka("read"))?;
        last = Instant::now();
        letters += 1;
        next.insert(m.partition(), m.offset() + 1);
        let text = |key| header(&m, key).and_then(|v| std::str::from_utf8(v).ok());
        let origin = (
            text(H_TOPIC),
            text(H_PARTITION).and_then(|p| p.parse::<i32>().ok()),
            text(H_OFFSET).and_then(|o| o.parse::<i64>().ok()),
        );
        let (Some(src), Some(partition), Some(offset)) = origin else {
            skipped.no_origin += 1;
            continue;
        };
        if src != source_topic {
            skipped.other_topic += 1;
            continue;
        }
        if header(&m, H_TRUNCATED).is_some() {
            skipped.truncated += 1;
            continue;
        }
        // The record's own headers: ours (x-vast-*) were added to the letter.
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .filter(|h| !h.key.starts_with("x-vast-"))
                    .map(|h| Header {
                        key: h.key.to_string(),
                        value: h.value.map(<[u8]>::to_vec),
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(Message {
            topic: src.to_string(),
            partition,
            offset,
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            headers,
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        });
    }
    Ok(DeadLetters {
        records,
        skipped,
        letters,
        consumer,
        topic: topic.to_string(),
        next,
    })
}

impl DeadLetters {
    /// Record that every letter read is delivered: the next redrive starts after them.
    pub fn commit(&self) -> Result<(), RedriveError> {
        if self.next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &self.next {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))
                .map_err(|source| RedriveError::Kafka {
                    topic: self.topic.clone(),
                    what: "set the commit",
                    source,
                })?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|source| RedriveError::Kafka {
                topic: self.topic.clone(),
                what: "commit what was redriven",
                source,
            })
    }
}
