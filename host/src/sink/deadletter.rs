//! Dead letters: records a transform rejected (or the host could not process), written with
//! the original key, value and headers plus headers saying why, which transform version, and
//! where the record came from. To the pipeline's dead-letter topic, or to files under
//! `<data_dir>/dead_letter/` when it has none. Never dropped.

use crate::config::KafkaConfig;
use crate::model::Header;
use crate::sink::RetryHint;
use crate::sink::parquet::{sync_dir, unique_name, utc_date_today};
use base64::Engine as _;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{DeliveryResult, Header as KHeader, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Header names added to every dead letter.
pub const H_ERROR: &str = "x-vast-error";
pub const H_ERROR_CLASS: &str = "x-vast-error-class";
pub const H_TRANSFORM: &str = "x-vast-transform";
pub const H_VERSION: &str = "x-vast-transform-version";
pub const H_TOPIC: &str = "x-vast-source-topic";
pub const H_PARTITION: &str = "x-vast-source-partition";
pub const H_OFFSET: &str = "x-vast-source-offset";

/// One rejected record.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Destination topic; `None` means the dead-letter files.
    pub dlq_topic: Option<String>,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<Header>,
    pub timestamp_ms: Option<i64>,
    pub error: String,
    /// `fail` (the transform rejected it), `trap`, or `contract` (host-side checks).
    pub error_class: &'static str,
    pub transform: String,
    pub version: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Header on a dead-letter record whose value was cut to fit the topic: the original size.
pub const H_TRUNCATED: &str = "x-vast-truncated-value-bytes";
/// Header on such a record: where the whole letter is (the dead-letter files).
pub const H_FULL_LETTER: &str = "x-vast-full-letter";
/// librdkafka's default `message.max.bytes`, the producer's limit unless configured.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Most bytes of the error text in a header (a guest's `fail` reason can be megabytes).
const MAX_ERROR_HEADER: usize = 8 * 1024;

impl DeadLetter {
    /// About the bytes the record takes against `message.max.bytes`.
    fn record_bytes(&self) -> usize {
        // The original headers plus ours (as `all_headers` makes them), without copying them.
        let original: usize = self
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, Vec::len) + 16)
            .sum();
        let ours = self.error.len()
            + self.error_class.len()
            + self.transform.len()
            + self.version.len()
            + self.topic.len()
            + 24
            + 7 * 40;
        let headers = original + ours;
        self.value.len() + self.key.as_ref().map_or(0, Vec::len) + headers + 512
    }

    /// A copy that fits in `max` bytes: the error text cut to [`MAX_ERROR_HEADER`], the value
    /// cut to what is left, with headers saying so. `None` when it fits as it is.
    fn fitted(&self, max: usize) -> Option<DeadLetter> {
        if self.record_bytes() <= max && self.error.len() <= MAX_ERROR_HEADER {
            return None;
        }
        let mut l = self.clone();
        crate::model::cut_with_marker(&mut l.error, MAX_ERROR_HEADER);
        let original = l.value.len();
        l.headers.push(Header {
            key: H_TRUNCATED.into(),
            value: Some(original.to_string().into_bytes()),
        });
        l.headers.push(Header {
            key: H_FULL_LETTER.into(),
            value: Some(b"dead-letter files".to_vec()),
        });
        let overhead = l.record_bytes() - original;
        l.value.truncate(max.saturating_sub(overhead));
        if l.value.len() == original {
            // Only the error text was cut: no value header needed.
            l.headers.truncate(l.headers.len() - 2);
        }
        Some(l)
    }

    /// The headers of the dead-letter record: the original ones, then ours.
    pub fn all_headers(&self) -> Vec<(String, Vec<u8>)> {
        let mut h: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .filter_map(|h| h.value.clone().map(|v| (h.key.clone(), v)))
            .collect();
        h.push((H_ERROR.into(), self.error.as_bytes().to_vec()));
        h.push((H_ERROR_CLASS.into(), self.error_class.as_bytes().to_vec()));
        h.push((H_TRANSFORM.into(), self.transform.as_bytes().to_vec()));
        h.push((H_VERSION.into(), self.version.as_bytes().to_vec()));
        h.push((H_TOPIC.into(), self.topic.as_bytes().to_vec()));
        h.push((H_PARTITION.into(), self.partition.to_string().into_bytes()));
        h.push((H_OFFSET.into(), self.offset.to_string().into_bytes()));
        h
    }
}

/// Why dead letters could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// A produce or flush to the dead-letter topic failed.
    #[error("dead-letter topic {topic}: {what}: {source}")]
    Kafka {
        topic: String,
        what: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The broker did not acknowledge some letters.
    #[error("dead-letter topic {topic}: {count} record(s) not delivered, first: {first}")]
    Undelivered {
        topic: String,
        count: usize,
        first: String,
    },
    #[error("dead-letter file {}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a dead-letter topic is configured but Kafka is not available (replay mode)")]
    NoKafka,
    #[error("dead-letter producer: {0}")]
    Producer(#[source] rdkafka::error::KafkaError),
}

impl DeadLetterError {
    /// Whether writing the letters again can help: a producer that cannot be set up cannot.
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            DeadLetterError::NoKafka | DeadLetterError::Producer(_) => RetryHint::Stop,
            _ => RetryHint::Retry,
        }
    }
}

/// Records delivery failures by the index passed as the message opaque.
#[derive(Default)]
pub struct DeliveryTracker {
    failures: Mutex<Vec<(usize, Option<RDKafkaErrorCode>, String)>>,
}

impl DeliveryTracker {
    fn fail(&self, idx: usize, e: &rdkafka::error::KafkaError) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((idx, e.rdkafka_error_code(), e.to_string()));
    }
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = Box<usize>;
    fn delivery(&self, result: &DeliveryResult<'_>, idx: Self::DeliveryOpaque) {
        if let Err((e, _)) = result {
            self.fail(*idx, e);
        }
    }
}

/// Writes dead letters to Kafka topics and files.
pub struct DeadLetterWriter {
    producer: Option<BaseProducer<DeliveryTracker>>,
    kafka: Option<KafkaConfig>,
    dir: PathBuf,
    seq: AtomicU64,
    timeout: Duration,
    /// The producer's `message.max.bytes`: a larger letter is fitted (see `write`).
    max_message_bytes: usize,
}

impl DeadLetterWriter {
    /// A writer; `kafka` is needed only when some pipeline has a dead-letter topic (the
    /// producer is created on first use).
    pub fn new(kafka: Option<KafkaConfig>, data_dir: PathBuf) -> Self {
        let max_message_bytes = kafka
            .as_ref()
            .and_then(|k| k.properties.get("message.max.bytes"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        DeadLetterWriter {
            max_message_bytes,
            producer: None,
            kafka,
            dir: data_dir.join("dead_letter"),
            seq: AtomicU64::new(0),
            timeout: Duration::from_secs(30),
        }
    }

    fn producer(&mut self) -> Result<&BaseProducer<DeliveryTracker>, DeadLetterError> {
        if self.producer.is_none() {
            let k = self.kafka.as_ref().ok_or(DeadLetterError::NoKafka)?;
            let p = producer_config(k)
                .create_with_context(DeliveryTracker::default())
                .map_err(DeadLetterError::Producer)?;
            self.producer = Some(p);
        }
        Ok(self.producer.as_ref().expect("just created"))
    }

    /// Write all `letters`; returns only when every one is acknowledged (Kafka) or fsynced
    /// (files). On error nothing may be assumed written: the caller retries the whole call.
    ///
    /// A letter over the producer's `message.max.bytes` (a huge record, a huge `fail` reason)
    /// would be refused by the broker on every retry and hold its partition forever: it is
    /// written whole to the dead-letter files, and to the topic with its value cut to fit
    /// (headers [`H_TRUNCATED`] and [`H_FULL_LETTER`]). A letter the broker still refuses as
    /// too large (a topic with a lower limit) goes to the files alone.
    pub fn write(&mut self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        let (to_kafka, mut to_file): (Vec<_>, Vec<_>) =
            letters.iter().partition(|l| l.dlq_topic.is_some());
        let fitted: Vec<Option<DeadLetter>> = to_kafka
            .iter()
            .map(|l| l.fitted(self.max_message_bytes))
            .collect();
        let mut kafka: Vec<&DeadLetter> = Vec::with_capacity(to_kafka.len());
        for (l, f) in to_kafka.iter().zip(&fitted) {
            match f {
                Some(f) => {
                    tracing::warn!(topic = %l.topic, partition = l.partition, offset = l.offset, bytes = l.value.len(), limit = self.max_message_bytes, "dead letter over message.max.bytes: the whole letter goes to the dead-letter files, a cut copy to the topic");
                    to_file.push(l);
                    kafka.push(f);
                }
                None => kafka.push(l),
            }
        }
        if !to_file.is_empty() {
            self.write_files(&to_file)?;
        }
        if !kafka.is_empty() {
            let too_large = self.write_kafka(&kafka)?;
            if !too_large.is_empty() {
                let refused: Vec<&DeadLetter> = too_large.iter().map(|&i| kafka[i]).collect();
                tracing::warn!(
                    letters = refused.len(),
                    "the broker refused dead letters as too large: they go to the dead-letter files"
                );
                self.write_files(&refused)?;
            }
        }
        Ok(())
    }

    /// Produce `letters`; `Ok` holds the indices the broker refused as too large (the only
    /// failure that retrying cannot fix).
    fn write_kafka(&mut self, letters: &[&DeadLetter]) -> Result<Vec<usize>, DeadLetterError> {
        let timeout = self.timeout;
        let producer = self.producer()?;
        producer
            .context()
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        for (idx, l) in letters.iter().enumerate() {
            let topic = l.dlq_topic.as_deref().expect("partitioned on dlq_topic");
            let mut headers = OwnedHeaders::new_with_capacity(l.headers.len() + 7);
            for (k, v) in l.all_headers() {
                headers = headers.insert(KHeader {
                    key: &k,
                    value: Some(&v),
                });
            }
            let mut record = BaseRecord::with_opaque_to(topic, Box::new(idx))
                .payload(&l.value)
                .headers(headers);
            if let Some(k) = &l.key {
                record = record.key(k);
            }
            if let Some(ts) = l.timestamp_ms {
                record = record.timestamp(ts);
            }
            // The local queue may be full: serve delivery reports until there is room.
            let mut record = record;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, r)) => {
                        if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::QueueFull)) {
                            producer.poll(Duration::from_millis(50));
                            record = r;
                        } else if e.rdkafka_error_code()
                            == Some(RDKafkaErrorCode::MessageSizeTooLarge)
                        {
                            // Refused locally: the same as the broker refusing it.
                            producer.context().fail(idx, &e);
                            break;
                        } else {
                            return Err(DeadLetterError::Kafka {
                                topic: topic.into(),
                                what: "cannot produce",
                                source: e,
                            });
                        }
                    }
                }
            }
        }
        producer
            .flush(timeout)
            .map_err(|source| DeadLetterError::Kafka {
                topic: "(all)".into(),
                what: "not acknowledged",
                source,
            })?;
        let failures = std::mem::take(
            &mut *producer
                .context()
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let (too_large, failures): (Vec<_>, Vec<_>) = failures
            .into_iter()
            .partition(|(_, code, _)| *code == Some(RDKafkaErrorCode::MessageSizeTooLarge));
        if let Some((idx, _, msg)) = failures.first() {
            return Err(DeadLetterError::Undelivered {
                topic: letters[*idx].dlq_topic.clone().unwrap_or_default(),
                count: failures.len(),
                first: msg.clone(),
            });
        }
        Ok(too_large.into_iter().map(|(i, _, _)| i).collect())
    }

    fn write_files(&self, letters: &[&DeadLetter]) -> Result<(), DeadLetterError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let dir = self.dir.join(format!("date={}", utc_date_today()));
        std::fs::create_dir_all(&dir).map_err(|source| DeadLetterError::File {
            path: dir.clone(),
            source,
        })?;
        let mut text = String::new();
        for l in letters {
            let line = serde_json::json!({
                "error": l.error,
                "error_class": l.error_class,
                "transform": l.transform,
                "transform_version": l.version,
                "source_topic": l.topic,
                "source_partition": l.partition,
                "source_offset": l.offset,
                "timestamp_ms": l.timestamp_ms,
                "key_base64": l.key.as_ref().map(|k| b64.encode(k)),
                "value_base64": b64.encode(&l.value),
                "headers": l.headers.iter().map(|h| serde_json::json!({
                    "key": h.key,
                    "value_base64": h.value.as_ref().map(|v| b64.encode(v)),
                })).collect::<Vec<_>>(),
            });
            text.push_str(&line.to_string());
            text.push('\n');
        }
        let name = unique_name("jsonl", self.seq.fetch_add(1, Ordering::Relaxed));
        let tmp = dir.join(format!(".{name}.tmp"));
        let fin = dir.join(&name);
        let res = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &fin)?;
            sync_dir(&dir);
            Ok(())
        })();
        res.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            DeadLetterError::File {
                path: fin.clone(),
                source: e,
            }
        })
    }
}

/// Read dead-letter files back (for tests and the `data` command): one JSON object per letter.
pub fn read_dead_letter_files(data_dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut files = Vec::new();
    let root = data_dir.join("dead_letter");
    for part in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(part.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "jsonl")
                && !f.file_name().to_string_lossy().starts_with('.')
            {
                files.push(p);
            }
        }
    }
    files.sort();
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// librdkafka's consumer-only properties (the `C` rows of its CONFIGURATION.md, 2.12):
/// `[kafka.properties]` serves the consumer and the dead-letter producer, and a producer
/// given one of these warns (`CONFWARN ... is a consumer property and will be ignored`).
pub const CONSUMER_ONLY: &[&str] = &[
    "auto.commit.enable",
    "auto.commit.interval.ms",
    "auto.offset.reset",
    "check.crcs",
    "consume.callback.max.messages",
    "consume_cb",
    "coordinator.query.interval.ms",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "fetch.error.backoff.ms",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "fetch.min.bytes",
    "fetch.queue.backoff.ms",
    "fetch.wait.max.ms",
    "group.id",
    "group.instance.id",
    "group.protocol",
    "group.protocol.type",
    "group.remote.assignor",
    "heartbeat.interval.ms",
    "isolation.level",
    "max.partition.fetch.bytes",
    "max.poll.interval.ms",
    "offset.store.method",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "offset_commit_cb",
    "partition.assignment.strategy",
    "queued.max.messages.kbytes",
    "queued.min.messages",
    "rebalance_cb",
    "session.timeout.ms",
];

/// The dead-letter producer's configuration: `[kafka.properties]` without the consumer-only
/// ones (security settings and the rest carry over), then its own delivery settings.
pub fn producer_config(k: &KafkaConfig) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    for (key, v) in &k.properties {
        if !CONSUMER_ONLY.contains(&key.as_str()) {
            cfg.set(key, v);
        }
    }
    cfg.set("bootstrap.servers", &k.bootstrap_servers)
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "5");
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_producer_gets_no_consumer_only_property() {
        let mut k = KafkaConfig::default();
        for (key, v) in [
            ("fetch.wait.max.ms", "100"),
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
            ("auto.offset.reset", "earliest"),
            ("queued.max.messages.kbytes", "16384"),
            ("security.protocol", "plaintext"),
            ("message.max.bytes", "2000000"),
        ] {
            k.properties.insert(key.into(), v.into());
        }
        let cfg = producer_config(&k);
        for key in CONSUMER_ONLY {
            assert_eq!(cfg.get(key), None, "{key}");
        }
        assert_eq!(cfg.get("security.protocol"), Some("plaintext"));
        assert_eq!(cfg.get("message.max.bytes"), Some("2000000"));
        assert_eq!(cfg.get("acks"), Some("all"));
    }

    fn letter() -> DeadLetter {
        DeadLetter {
            dlq_topic: None,
            key: Some(b"k".to_vec()),
            value: b"\xffbad".to_vec(),
            headers: vec![Header {
                key: "h".into(),
                value: Some(b"v".to_vec()),
            }],
            timestamp_ms: Some(5),
            error: "invalid JSON".into(),
            error_class: "fail",
            transform: "raw-logs".into(),
            version: "raw-logs@abc".into(),
            topic: "raw-logs".into(),
            partition: 2,
            offset: 9,
        }
    }

    /// A 2 MiB `fail` reason, or a value near the limit, is fitted under `message.max.bytes`
    /// with headers saying what was cut; a small letter is left as it is.
    #[test]
    fn letters_over_the_message_limit_are_fitted() {
        let small = letter();
        assert!(small.fitted(DEFAULT_MESSAGE_MAX_BYTES).is_none());
        let mut huge_reason = letter();
        huge_reason.error = "é".repeat(1 << 20);
        let f = huge_reason.fitted(DEFAULT_MESSAGE_MAX_BYTES).unwrap();
        assert!(f.error.len() < MAX_ERROR_HEADER + 64 && f.error.ends_with("bytes cut]"));
        assert_eq!(f.value, huge_reason.value, "the value fitted already");
        assert!(f.record_bytes() <= DEFAULT_MESSAGE_MAX_BYTES);
        let mut huge_value = letter();
        huge_value.value = vec![b'x'; 999_910];
        let f = huge_value.fitted(DEFAULT_MESSAGE_MAX_BYTES).unwrap();
        assert!(f.record_bytes() <= DEFAULT_MESSAGE_MAX_BYTES);
        assert!(!f.value.is_empty() && f.value.len() < 999_910);
        let h: Vec<_> = f.all_headers();
        assert!(
            h.contains(&(H_TRUNCATED.into(), b"999910".to_vec())),
            "{h:?}"
        );
        assert!(h.iter().any(|(k, _)| k == H_FULL_LETTER));
    }

    #[test]
    fn headers_carry_the_reason_and_origin() {
        let h = letter().all_headers();
        let get = |k: &str| {
            h.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(get("h").as_deref(), Some("v"));
        assert_eq!(get(H_ERROR).as_deref(), Some("invalid JSON"));
        assert_eq!(get(H_VERSION).as_deref(), Some("raw-logs@abc"));
        assert_eq!(get(H_PARTITION).as_deref(), Some("2"));
        assert_eq!(get(H_OFFSET).as_deref(), Some("9"));
    }

    #[test]
    fn files_keep_the_original_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = DeadLetterWriter::new(None, dir.path().to_path_buf());
        w.write(&[letter(), letter()]).unwrap();
        let back = read_dead_letter_files(dir.path());
        assert_eq!(back.len(), 2);
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(
            b64.decode(back[0]["value_base64"].as_str().unwrap())
                .unwrap(),
            b"\xffbad"
        );
        assert_eq!(back[0]["source_offset"], 9);
        assert_eq!(back[0]["transform_version"], "raw-logs@abc");
    }

    #[test]
    fn a_dead_letter_topic_without_kafka_is_an_error_not_a_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = DeadLetterWriter::new(None, dir.path().to_path_buf());
        let mut l = letter();
        l.dlq_topic = Some("x-dlq".into());
        assert!(matches!(w.write(&[l]), Err(DeadLetterError::NoKafka)));
    }
}
