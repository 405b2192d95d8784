//! End-to-end tests through a real Kafka-compatible broker (tansu, started by each test on a
//! free loopback port) and the processor run as its own process.

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use vast_processor::config::Config;
use vast_processor::model::Message;
use vast_processor::model::Table;
use vast_processor::pipeline::{self, RunStats};
use vast_processor::sink::parquet::ParquetSink;
use vast_processor::sink::{Sink, SinkError};
use vast_processor::source::kafka::{self, RunOptions};
use vast_processor::transform::wasm::{MessageResult, TransformEngine, TransformInstance};
use vast_processor_tests::*;

const VP: &str = env!("CARGO_BIN_EXE_vp-test");
const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;

fn engine() -> TransformEngine {
    TransformEngine::new(Some(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-cache"),
    ))
    .unwrap()
}

/// What the pipeline must produce for `produced`, computed by running the same bundled
/// transform in-process: rows keyed by id, and the offsets that must be dead-lettered.
struct Expected {
    rows: HashMap<String, Value>,
    dead: HashSet<(String, i32, i64)>,
}

fn expected(engine: &TransformEngine, produced: &[Produced]) -> Expected {
    let mut rows = HashMap::new();
    let mut dead = HashSet::new();
    let mut by_topic: HashMap<&str, Vec<&Produced>> = HashMap::new();
    for p in produced {
        by_topic.entry(&p.topic).or_default().push(p);
    }
    for (topic, recs) in by_topic {
        let bytes = vast_processor::transform::loader::bundled_bytes(topic).unwrap();
        let module = engine.load(topic, bytes).unwrap();
        let mut inst = TransformInstance::new(module.clone(), Default::default()).unwrap();
        let msgs: Vec<Message> = recs
            .iter()
            .map(|p| Message {
                topic: p.topic.clone(),
                partition: p.partition,
                offset: p.offset,
                timestamp_ms: None,
                key: p.key.clone(),
                headers: vec![],
                payload: p.payload.clone(),
            })
            .collect();
        let lineage = inst.lineage().to_string();
        for (m, r) in msgs.iter().zip(inst.process(&msgs, 0)) {
            match r {
                MessageResult::Rows(rs) => {
                    for row in rs {
                        let mut v = vast_processor::model::to_json(&row);
                        let obj = v.as_object_mut().unwrap();
                        obj.insert("source_topic".into(), m.topic.clone().into());
                        obj.insert("source_partition".into(), m.partition.into());
                        obj.insert("source_offset".into(), m.offset.into());
                        obj.insert("transform_version".into(), lineage.clone().into());
                        let id = obj["id"].as_str().unwrap().to_string();
                        rows.insert(id, v);
                    }
                }
                MessageResult::Fail(_) | MessageResult::Error(_) => {
                    dead.insert((m.topic.clone(), m.partition, m.offset));
                }
                MessageResult::Skip(_) => {}
            }
        }
    }
    Expected { rows, dead }
}

/// Compare a row read from Parquet with the expected one (the columns a transform decides,
/// plus lineage; `created_at` is processing time).
fn assert_row_matches(actual: &Value, expected: &Value) {
    let parse = |v: &Value| match v {
        Value::String(s) => serde_json::from_str::<Value>(s).unwrap(),
        other => other.clone(),
    };
    for k in [
        "entity_id",
        "event_type",
        "source",
        "environment",
        "message",
        "trace_id",
        "metric_name",
        "metric_type",
        "unit",
        "source_topic",
        "source_partition",
        "source_offset",
        "transform_version",
    ] {
        let a = actual.get(k).cloned().unwrap_or(Value::Null);
        let e = expected.get(k).cloned().unwrap_or(Value::Null);
        assert_eq!(a, e, "column {k} of row {}", expected["id"]);
    }
    for k in ["tags", "attributes", "metadata"] {
        if let Some(e) = expected.get(k) {
            assert_eq!(
                parse(&actual[k]),
                *e,
                "column {k} of row {}",
                expected["id"]
            );
        }
    }
    if let Some(e) = expected.get("metric_value").and_then(Value::as_f64) {
        // Parquet holds the exact f64; the JSON rendering used to read it back here is not
        // always shortest-round-trip, so allow for the last digit.
        let a = actual["metric_value"].as_f64().unwrap();
        assert!((a - e).abs() <= e.abs() * 1e-14, "metric_value {a} != {e}");
    }
}

fn all_rows(data: &Path) -> Vec<Value> {
    let mut v = rows(data, Table::Events);
    v.extend(rows(data, Table::Metrics));
    v
}

/// Every row has an expected id, every expected id is present, and (after de-duplication by
/// id) each appears exactly once with the expected content.
fn assert_exactly_once_after_dedupe(actual: &[Value], exp: &Expected) {
    let mut seen: HashMap<String, &Value> = HashMap::new();
    for r in actual {
        let id = r["id"].as_str().unwrap().to_string();
        let e = exp
            .rows
            .get(&id)
            .unwrap_or_else(|| panic!("unexpected row {r}"));
        assert_row_matches(r, e);
        seen.insert(id, r);
    }
    let missing: Vec<_> = exp
        .rows
        .keys()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} expected row(s) missing, e.g. {:?}",
        missing.len(),
        exp.rows[missing[0]]
    );
}

fn dead_offsets(letters: &[Letter]) -> HashSet<(String, i32, i64)> {
    letters
        .iter()
        .map(|l| {
            (
                l.headers["x-vast-source-topic"].clone(),
                l.headers["x-vast-source-partition"].parse().unwrap(),
                l.headers["x-vast-source-offset"].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_topic_lands_exactly_and_bad_records_are_dead_lettered() {
    let broker = Broker::start();
    let topics = ["raw-logs", "raw-queries", "raw-host-logs", "otel-metrics"];
    let mut produced = Vec::new();
    for t in topics {
        broker.create_topic(t, 2);
        broker.create_topic(&format!("{t}-dlq"), 1);
        produced.extend(produce(&broker.addr, t, &generated(t, 120, 40, 11)));
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = test_config(&broker, "e2e-all", &topics, "");
    let mut p = Processor::start(VP, dir.path(), &config, &data, &["--stop-after-idle", "3"]);
    let status = p.wait(Duration::from_secs(120));
    assert!(status.success(), "{}", p.log_text());

    let exp = expected(&engine(), &produced);
    assert_eq!(exp.dead.len(), 12, "3 malformed records per topic");
    let actual = all_rows(&data);
    assert_eq!(
        actual.len(),
        exp.rows.len(),
        "a clean run writes each row once"
    );
    assert_exactly_once_after_dedupe(&actual, &exp);
    // Each table holds exactly its topics' rows.
    assert!(
        rows(&data, Table::Metrics)
            .iter()
            .all(|r| r["source_topic"] == "otel-metrics")
    );

    // Malformed records are in <topic>-dlq with their original bytes and the why/where headers.
    for t in topics {
        let letters = read_topic(
            &broker.addr,
            &format!("{t}-dlq"),
            1,
            3,
            Duration::from_secs(20),
        );
        assert_eq!(letters.len(), 3, "{t}-dlq");
        for l in &letters {
            assert!(!l.headers["x-vast-error"].is_empty(), "{:?}", l.headers);
            assert_eq!(l.headers["x-vast-transform"], t);
            assert!(l.headers["x-vast-transform-version"].starts_with(&format!("{t}@")));
            let off: i64 = l.headers["x-vast-source-offset"].parse().unwrap();
            let part: i32 = l.headers["x-vast-source-partition"].parse().unwrap();
            let orig = produced
                .iter()
                .find(|p| p.topic == t && p.partition == part && p.offset == off)
                .unwrap();
            assert_eq!(l.payload, orig.payload);
            assert_eq!(l.key, orig.key);
        }
        let got: HashSet<_> = dead_offsets(&letters);
        let want: HashSet<_> = exp.dead.iter().filter(|d| d.0 == t).cloned().collect();
        assert_eq!(got, want, "{t}");
        // Everything is committed: the partition kept flowing past the bad records.
        let mine: Vec<_> = produced.iter().filter(|p| p.topic == t).cloned().collect();
        assert_eq!(
            committed(&broker.addr, "e2e-all", t, 2),
            end_offsets(&mine),
            "{t}; processor log:\n{}",
            p.log_text()
        );
    }
}

#[test]
fn sigterm_flushes_commits_and_nothing_is_replayed() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 2);
    broker.create_topic("raw-logs-dlq", 1);
    let produced = produce(&broker.addr, "raw-logs", &generated("raw-logs", 300, 0, 5));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Batches that never fill or age during the test: only the shutdown flush writes them.
    let config = test_config(&broker, "e2e-term", &["raw-logs"], "")
        .replace("max_age_ms = 300", "max_age_ms = 600000");
    let mut p = Processor::start(VP, dir.path(), &config, &data, &[]);
    wait_until(Duration::from_secs(60), "all records processed", || {
        p.log_text().contains("messages_in=300")
    });
    assert!(
        all_rows(&data).is_empty(),
        "nothing is flushed before the stop"
    );
    p.signal(SIGTERM);
    let status = p.wait(Duration::from_secs(30));
    assert!(status.success(), "{}", p.log_text());
    let exp = expected(&engine(), &produced);
    assert_eq!(all_rows(&data).len(), exp.rows.len());
    assert_exactly_once_after_dedupe(&all_rows(&data), &exp);
    assert_eq!(
        committed(&broker.addr, "e2e-term", "raw-logs", 2),
        end_offsets(&produced)
    );

    // A restart reads nothing again.
    let data2 = dir.path().join("data2");
    let mut p2 = Processor::start(VP, dir.path(), &config, &data2, &["--stop-after-idle", "2"]);
    assert!(
        p2.wait(Duration::from_secs(60)).success(),
        "{}",
        p2.log_text()
    );
    assert!(
        all_rows(&data2).is_empty(),
        "records were replayed after a clean stop"
    );
}

#[test]
fn kill_9_mid_stream_loses_nothing() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 2);
    broker.create_topic("raw-logs-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = test_config(&broker, "e2e-kill", &["raw-logs"], "")
        .replace("max_rows = 5000", "max_rows = 200");
    let mut p = Processor::start(VP, dir.path(), &config, &data, &[]);
    p.wait_joined("group join");
    // Produce in paced chunks while the processor runs, and kill it mid-stream.
    let records = generated("raw-logs", 6000, 500, 9);
    let mut produced = Vec::new();
    let mut killed = false;
    for chunk in records.chunks(300) {
        produced.extend(produce(&broker.addr, "raw-logs", chunk));
        std::thread::sleep(Duration::from_millis(150));
        if !killed && !all_rows(&data).is_empty() && produced.len() >= 1500 {
            p.signal(SIGKILL);
            p.wait(Duration::from_secs(10));
            killed = true;
        }
    }
    assert!(
        killed,
        "the processor never wrote anything before the producer finished"
    );
    let mut p2 = Processor::start(VP, dir.path(), &config, &data, &["--stop-after-idle", "3"]);
    assert!(
        p2.wait(Duration::from_secs(120)).success(),
        "{}",
        p2.log_text()
    );

    let exp = expected(&engine(), &produced);
    let actual = all_rows(&data);
    assert_exactly_once_after_dedupe(&actual, &exp);
    // Every input offset is in the rows or the dead letters (at least once).
    let in_rows: HashSet<(i32, i64)> = actual
        .iter()
        .map(|r| {
            (
                r["source_partition"].as_i64().unwrap() as i32,
                r["source_offset"].as_i64().unwrap(),
            )
        })
        .collect();
    let letters = read_topic(
        &broker.addr,
        "raw-logs-dlq",
        1,
        exp.dead.len(),
        Duration::from_secs(20),
    );
    let dead = dead_offsets(&letters);
    for p in &produced {
        let key = (p.topic.clone(), p.partition, p.offset);
        assert!(
            in_rows.contains(&(p.partition, p.offset)) || dead.contains(&key),
            "offset {}/{} lost",
            p.partition,
            p.offset
        );
    }
    assert_eq!(
        committed(&broker.addr, "e2e-kill", "raw-logs", 2),
        end_offsets(&produced)
    );
}

#[test]
fn two_instances_share_partitions_and_a_rebalance_loses_nothing() {
    let broker = Broker::start();
    broker.create_topic("raw-queries", 4);
    broker.create_topic("raw-queries-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = test_config(&broker, "e2e-two", &["raw-queries"], "");
    let mut a = Processor::start(VP, dir.path(), &config, &data, &[]);
    a.wait_joined("first instance joins");
    let records = generated("raw-queries", 2000, 0, 3);
    let mut produced = Vec::new();
    let mut b = None;
    for chunk in records.chunks(100) {
        produced.extend(produce(&broker.addr, "raw-queries", chunk));
        std::thread::sleep(Duration::from_millis(100));
        if b.is_none() && produced.len() >= 500 {
            b = Some(Processor::start(VP, dir.path(), &config, &data, &[]));
        }
    }
    let mut b = b.unwrap();
    b.wait_joined("second instance gets partitions");
    let exp = expected(&engine(), &produced);
    wait_until(Duration::from_secs(90), "every row to land", || {
        let ids: HashSet<String> = all_rows(&data)
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        exp.rows.keys().all(|id| ids.contains(id))
    });
    a.signal(SIGTERM);
    b.signal(SIGTERM);
    assert!(
        a.wait(Duration::from_secs(30)).success(),
        "{}",
        a.log_text()
    );
    assert!(
        b.wait(Duration::from_secs(30)).success(),
        "{}",
        b.log_text()
    );
    assert!(
        a.log_text().contains("partitions revoked"),
        "the first instance gave partitions up"
    );
    assert_exactly_once_after_dedupe(&all_rows(&data), &exp);
    assert_eq!(
        committed(&broker.addr, "e2e-two", "raw-queries", 4),
        end_offsets(&produced)
    );
}

/// A sink that is slow on purpose, counting what it wrote.
struct SlowSink {
    inner: ParquetSink,
    delay: Duration,
    rows: AtomicUsize,
}

impl Sink for SlowSink {
    fn write(
        &self,
        batches: &[(Table, arrow_array::RecordBatch)],
        landing: Option<&vast_processor::sink::Landing>,
    ) -> Result<(), SinkError> {
        std::thread::sleep(self.delay);
        self.inner.write(batches, landing)?;
        let n: usize = batches.iter().map(|(_, b)| b.num_rows()).sum();
        self.rows.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
    fn name(&self) -> &'static str {
        "slow"
    }
}

/// Runs the consumer on its own thread into `sink` until `shutdown` is set.
fn spawn_consumer(
    config: Config,
    specs: Vec<pipeline::PipelineSpec>,
    sink: Arc<SlowSink>,
    dir: &Path,
) -> (
    Arc<RunStats>,
    Arc<AtomicBool>,
    std::thread::JoinHandle<Result<(), kafka::RunError>>,
) {
    let stats = Arc::new(RunStats::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let data_dir = dir.join("data");
    let metrics = Arc::new(vast_processor::metrics::Metrics::new(
        specs.iter().map(|s| (s.name.as_str(), s.topic.as_str())),
    ));
    let run = {
        let (stats, shutdown) = (stats.clone(), shutdown.clone());
        std::thread::spawn(move || {
            let opts = RunOptions {
                stop_after_idle: None,
                shutdown,
                data_dir,
                metrics,
            };
            kafka::run(&config, specs, sink, stats, opts)
        })
    };
    (stats, shutdown, run)
}

/// `records` raw-logs records over `partitions` partitions through two workers with
/// 64-message queues and a sink that takes `delay` per write of at most 100 rows; the run's
/// stats once every row is written. The queues stay bounded and every row lands exactly once.
fn slow_sink_run(partitions: u32, records: usize, delay: Duration) -> Arc<RunStats> {
    let broker = Broker::start();
    broker.create_topic("raw-logs", partitions);
    let produced = produce(
        &broker.addr,
        "raw-logs",
        &generated("raw-logs", records, 0, 4),
    );
    let dir = tempfile::tempdir().unwrap();
    let text = test_config(
        &broker,
        "e2e-slow",
        &["raw-logs"],
        "workers = 2\nqueue_messages = 64",
    )
    .replace("max_rows = 5000", "max_rows = 100")
    .replace("dead_letter_topic = \"raw-logs-dlq\"\n", "");
    let config = Config::parse(&text, Path::new("test.toml"), dir.path().to_path_buf()).unwrap();
    let specs = pipeline::load_pipelines(&config, &engine()).unwrap();
    let sink = Arc::new(SlowSink {
        inner: ParquetSink::new(dir.path().join("data")),
        delay,
        rows: AtomicUsize::new(0),
    });
    let (stats, shutdown, run) = spawn_consumer(config, specs, sink.clone(), dir.path());
    wait_until(Duration::from_secs(120), "all rows written", || {
        sink.rows.load(Ordering::Relaxed) >= produced.len()
    });
    shutdown.store(true, Ordering::Relaxed);
    run.join().unwrap().unwrap();
    let max_queued = stats.queued_max.load(Ordering::Relaxed);
    assert!(
        max_queued <= 2 * 64,
        "queues grew to {max_queued} messages past the 2 x 64 bound"
    );
    assert_eq!(
        stats.paused.load(Ordering::Relaxed),
        0,
        "every paused partition was resumed"
    );
    assert_eq!(sink.rows.load(Ordering::Relaxed), produced.len());
    stats
}

#[test]
fn a_slow_sink_pauses_partitions_instead_of_growing_queues() {
    let stats = slow_sink_run(2, 3000, Duration::from_millis(40));
    assert!(
        RunStats::get(&stats.pauses) > 0,
        "the consumer never paused a partition"
    );
}

/// With one partition, pausing it would leave librdkafka nothing to fetch, and it noticed
/// the resume only up to a second later; the consumer waits for room instead, and the
/// queues stay bounded all the same. A sink stuck for longer than that wait still gets the
/// partition paused, so the consumer keeps polling (and its group membership).
#[test]
fn the_last_fetchable_partition_waits_for_room_before_it_is_paused() {
    let stats = slow_sink_run(1, 3000, Duration::from_millis(40));
    assert_eq!(
        RunStats::get(&stats.pauses),
        0,
        "the only partition was paused"
    );
    let stats = slow_sink_run(1, 300, Duration::from_millis(1500));
    assert!(
        RunStats::get(&stats.pauses) > 0,
        "a stuck sink never got the partition paused"
    );
}

/// The consumer sends records to workers in chunks; a trickle far smaller than a chunk must
/// still reach the sink while the consumer runs (on the empty poll after it), not only when
/// a chunk fills or at shutdown.
#[test]
fn a_trickle_of_records_is_written_without_waiting_for_a_full_chunk() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 2);
    let dir = tempfile::tempdir().unwrap();
    let text = test_config(&broker, "e2e-trickle", &["raw-logs"], "workers = 2")
        .replace("dead_letter_topic = \"raw-logs-dlq\"\n", "");
    let config = Config::parse(&text, Path::new("test.toml"), dir.path().to_path_buf()).unwrap();
    let specs = pipeline::load_pipelines(&config, &engine()).unwrap();
    let sink = Arc::new(SlowSink {
        inner: ParquetSink::new(dir.path().join("data")),
        delay: Duration::ZERO,
        rows: AtomicUsize::new(0),
    });
    let (_stats, shutdown, run) = spawn_consumer(config, specs, sink.clone(), dir.path());
    let mut sent = 0;
    for n in [3, 2] {
        sent += produce(
            &broker.addr,
            "raw-logs",
            &generated("raw-logs", n, 0, 4 + sent as u64),
        )
        .len();
        // Far longer than a group join plus a flush (max_age_ms = 300), far shorter than
        // never: records stuck in an unsent chunk would only be written at shutdown.
        wait_until(Duration::from_secs(60), "the trickle written", || {
            sink.rows.load(Ordering::Relaxed) >= sent
        });
    }
    shutdown.store(true, Ordering::Relaxed);
    run.join().unwrap().unwrap();
    assert_eq!(sink.rows.load(Ordering::Relaxed), 5);
}
