//! The benchmark of vast-processor's bundled transforms, from the sandbox alone to the full
//! path through a broker. Prints a table (medians of several runs, with the spread) and the
//! peak RSS. Run it from a release build. Not part of the product: its own crate and binary.

mod cli;

pub use cli::main;
mod stall;

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vast_processor::config::{BatchConfig, Config};
use vast_processor::generate::messages;
use vast_processor::model::Message;
use vast_processor::model::Table;
use vast_processor::pipeline::{
    DeliveredOffsets, FlushReason, PipelineSpec, RunStats, Worker, WorkerEnv,
};
use vast_processor::sink::deadletter::DeadLetterWriter;
use vast_processor::sink::{Sink, SinkError, SinkFailure};
use vast_processor::transform::wasm::{
    InstanceSettings, MessageResult, Processed, TransformEngine, TransformInstance,
};

/// Options of a run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub topics: Vec<String>,
    /// Messages per measurement.
    pub messages: usize,
    /// Repetitions (the median is reported).
    pub runs: usize,
    /// Workers for the multi-worker path.
    pub workers: usize,
    /// A broker for the end-to-end measurement (skipped when `None`).
    pub bootstrap: Option<String>,
    /// Scenarios to measure, by letter (`a`, `b`, `c`, `d`, `e`); empty means all.
    pub scenarios: Vec<char>,
    /// Batch sizes for scenario a; empty means 1, 100, 1000 and 10000.
    pub batches: Vec<usize>,
    /// CPU deadline per transform call instead of the default (under valgrind a call runs
    /// ~50x slower and would hit it, making counts depend on timing).
    pub deadline_ms: Option<u64>,
    /// The `vast-processor` binary whose `run` the end-to-end measurement watches for RSS.
    pub processor: std::path::PathBuf,
}

impl BenchOptions {
    /// Instance settings for a measurement: the defaults, with the deadline override.
    fn settings(&self) -> InstanceSettings {
        let mut s = InstanceSettings::default();
        if let Some(ms) = self.deadline_ms {
            s.limits.deadline_ms = ms;
        }
        s
    }

    /// Whether scenario `letter` is selected.
    pub fn wants(&self, letter: char) -> bool {
        self.scenarios.is_empty() || self.scenarios.contains(&letter)
    }
}

/// One measured scenario.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub topic: String,
    pub scenario: String,
    pub msgs_per_s: f64,
    pub rows_per_s: f64,
    pub mb_per_s: f64,
    /// (max - min) / median of msgs/s over the runs, in percent.
    pub spread_pct: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn summarize(
    topic: &str,
    scenario: String,
    runs: Vec<(Duration, usize, usize, usize)>,
) -> Measurement {
    let mut msgs: Vec<f64> = runs
        .iter()
        .map(|(d, m, _, _)| *m as f64 / d.as_secs_f64())
        .collect();
    let mut rows: Vec<f64> = runs
        .iter()
        .map(|(d, _, r, _)| *r as f64 / d.as_secs_f64())
        .collect();
    let mut mb: Vec<f64> = runs
        .iter()
        .map(|(d, _, _, b)| *b as f64 / 1e6 / d.as_secs_f64())
        .collect();
    let (lo, hi) = msgs
        .iter()
        .fold((f64::MAX, 0f64), |(l, h), v| (l.min(*v), h.max(*v)));
    let m = median(&mut msgs);
    Measurement {
        topic: topic.into(),
        scenario,
        msgs_per_s: m,
        rows_per_s: median(&mut rows),
        mb_per_s: median(&mut mb),
        spread_pct: if m > 0.0 { (hi - lo) / m * 100.0 } else { 0.0 },
    }
}

fn count_rows(p: &Processed) -> usize {
    p.results()
        .iter()
        .map(|r| match r {
            MessageResult::Rows(span) => span.len(),
            _ => 0,
        })
        .sum()
}

/// A sink that encodes Parquet (zstd) in memory: the CPU cost of the sink without disk I/O.
pub struct EncodeOnlySink {
    pub bytes: AtomicU64,
}

impl Sink for EncodeOnlySink {
    fn write(
        &self,
        batches: &[(Table, RecordBatch)],
        _: Option<&vast_processor::sink::Landing>,
    ) -> Result<(), SinkError> {
        let props = vast_processor::sink::parquet::writer_properties();
        let fail = |e: parquet::errors::ParquetError| {
            SinkError::stop(
                "bench",
                SinkFailure::Parquet {
                    path: "memory".into(),
                    source: e,
                },
            )
        };
        for (_, b) in batches {
            let mut out = Vec::new();
            let mut w =
                ArrowWriter::try_new(&mut out, b.schema(), Some(props.clone())).map_err(fail)?;
            w.write(b).map_err(fail)?;
            w.close().map_err(fail)?;
            self.bytes.fetch_add(out.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }
    fn name(&self) -> &'static str {
        "encode-only"
    }
}

/// Create `topic` with `partitions` partitions, as a production topic has at least one per
/// consumer, instead of leaving the count to the broker's auto-creation default.
fn create_topic(addr: &str, topic: &str, partitions: usize) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()?;
    let new = NewTopic::new(
        topic,
        i32::try_from(partitions.max(1))?,
        TopicReplication::Fixed(1),
    );
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = tokio::runtime::Builder::new_current_thread()
        .build()?
        .block_on(admin.create_topics([&new], &options))?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("cannot create topic {t}: {e}"))?;
    }
    Ok(())
}

/// Read `n` records of `topic` from the beginning with a bare consumer (no processing).
fn broker_read(addr: &str, topic: &str, n: usize, bytes: usize) -> anyhow::Result<Measurement> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", format!("{topic}-read"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let meta = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in meta.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)?;
        }
    }
    c.assign(&tpl)?;
    let mut seen = 0usize;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < n && Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                started.get_or_insert_with(Instant::now);
                seen += 1;
            }
            Some(Err(e)) => anyhow::bail!("reading {topic}: {e}"),
            None => {}
        }
    }
    anyhow::ensure!(seen == n, "read {seen} of {n} records of {topic}");
    let elapsed = started.map_or(Duration::from_millis(1), |t| t.elapsed());
    Ok(summarize(
        "raw-logs",
        "e0. broker read only".into(),
        vec![(elapsed, n, 0, bytes)],
    ))
}

/// Peak resident set size of this process, in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(vm_hwm_kib)
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The `VmHWM` line of a `/proc/<pid>/status` text, in KiB.
fn vm_hwm_kib(status: &str) -> Option<f64> {
    status_kib(status, "VmHWM:")
}

/// A `/proc/<pid>/status` line (`field` with its colon) in KiB.
fn status_kib(status: &str, field: &str) -> Option<f64> {
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn spec(
    engine: &TransformEngine,
    topic: &str,
    opts: &BenchOptions,
) -> anyhow::Result<PipelineSpec> {
    let module = engine.load(
        topic,
        vast_processor::transform::loader::bundled_bytes(topic)
            .ok_or_else(|| anyhow::anyhow!("no bundled transform {topic}"))?,
    )?;
    Ok(PipelineSpec::new(
        topic,
        topic,
        module,
        opts.settings(),
        None,
        BatchConfig::default(),
        Default::default(),
    ))
}

/// The full in-process path for `msgs` on one worker: wasm, Arrow, Parquet encode.
fn full_path(
    spec: &PipelineSpec,
    msgs: &[Message],
    dir: &std::path::Path,
) -> anyhow::Result<(Duration, usize)> {
    let sink = Arc::new(EncodeOnlySink {
        bytes: AtomicU64::new(0),
    });
    full_path_into(spec, msgs, dir, sink, None)
}

/// The full in-process path into `sink`, storing offsets for `group` when given.
fn full_path_into(
    spec: &PipelineSpec,
    msgs: &[Message],
    dir: &std::path::Path,
    sink: Arc<dyn Sink>,
    group: Option<Arc<str>>,
) -> anyhow::Result<(Duration, usize)> {
    let stats = Arc::new(RunStats::default());
    let env = WorkerEnv {
        sink,
        delivered: Arc::new(DeliveredOffsets::default()),
        stats: stats.clone(),
        abort: Arc::new(AtomicBool::new(false)),
        lineage: true,
        metrics: Arc::new(vast_processor::metrics::Metrics::new([(
            spec.name.as_str(),
            spec.topic.as_str(),
        )])),
        inflight_bytes: vast_processor::config::RuntimeConfig::default().queue_bytes,
        discard: Arc::default(),
        group,
    };
    let mut w = Worker::new(
        0,
        Arc::new(vec![spec.clone()]),
        env,
        DeadLetterWriter::new(None, dir.to_path_buf()),
    );
    let t = Instant::now();
    for chunk in msgs.chunks(1024) {
        w.handle(0, chunk)?;
    }
    w.flush_all(FlushReason::Shutdown)?;
    let rows = RunStats::get(&stats.rows_events) + RunStats::get(&stats.rows_metrics);
    Ok((t.elapsed(), rows as usize))
}

/// Run the benchmark and return the measurements (also printed as they complete).
pub fn run(opts: &BenchOptions, engine: &TransformEngine) -> anyhow::Result<Vec<Measurement>> {
    let mut out = Vec::new();
    let dir = tempfile_dir()?;
    for topic in &opts.topics {
        let msgs = messages(topic, opts.messages);
        let bytes: usize = msgs.iter().map(|m| m.payload.len()).sum();
        let s = spec(engine, topic, opts)?;
        // (a) transform only, through wasm, by batch size.
        let batches = match (opts.wants('a'), opts.batches.is_empty()) {
            (false, _) => Vec::new(),
            (true, true) => vec![1usize, 100, 1000, 10_000],
            (true, false) => opts.batches.clone(),
        };
        for batch in batches {
            let n = if batch == 1 {
                msgs.len().min(20_000)
            } else {
                msgs.len()
            };
            let part = &msgs[..n];
            let part_bytes: usize = part.iter().map(|m| m.payload.len()).sum();
            // The worker never sends more than 1024 messages per call; 10,000 raw-host-logs
            // messages need ~100 MiB of guest memory, over the default 64 MiB limit.
            let mut settings = opts.settings();
            settings.limits.memory_mib = 256;
            let mut inst = TransformInstance::new(s.live.current().module.clone(), settings)?;
            inst.process_batch(&part[..batch.min(n)], 0);
            let runs = (0..opts.runs)
                .map(|_| {
                    let t = Instant::now();
                    let rows: usize = part
                        .chunks(batch)
                        .map(|c| count_rows(&inst.process_batch(c, 0)))
                        .sum();
                    (t.elapsed(), n, rows, part_bytes)
                })
                .collect();
            out.push(report(summarize(
                topic,
                format!("a. wasm, batch {batch}"),
                runs,
            )));
        }
        // (b) the same logic compiled natively.
        if opts.wants('b') {
            let f = vast_transform_sdk::transforms::by_name(topic)
                .ok_or_else(|| anyhow::anyhow!("no native {topic}"))?;
            let native: Vec<vast_transform_sdk::Message> = msgs
                .iter()
                .map(|m| vast_transform_sdk::message(topic, m.offset, m.payload.clone()))
                .collect();
            let runs = (0..opts.runs)
                .map(|_| {
                    let t = Instant::now();
                    let mut stats = vast_transform_sdk::Stats::default();
                    let rows: usize = native
                        .iter()
                        .map(|m| match f(m, &mut stats) {
                            vast_transform_sdk::Outcome::Rows(r) => r.len(),
                            _ => 0,
                        })
                        .sum();
                    (t.elapsed(), native.len(), rows, bytes)
                })
                .collect();
            out.push(report(summarize(topic, "b. native".into(), runs)));
        }
        // (c) full in-process path, one worker.
        if opts.wants('c') {
            let mut runs = Vec::new();
            for _ in 0..opts.runs {
                let (d, rows) = full_path(&s, &msgs, &dir)?;
                runs.push((d, msgs.len(), rows, bytes));
            }
            out.push(report(summarize(
                topic,
                "c. full path, 1 worker".into(),
                runs,
            )));
        }
        // (d) the same on every worker, each with its own share.
        if opts.wants('d') {
            let mut runs = Vec::new();
            for _ in 0..opts.runs {
                let t = Instant::now();
                let rows: usize = std::thread::scope(|sc| {
                    let handles: Vec<_> = (0..opts.workers)
                        .map(|_| sc.spawn(|| full_path(&s, &msgs, &dir).map(|(_, r)| r)))
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().expect("bench worker panicked").unwrap_or(0))
                        .sum()
                });
                runs.push((
                    t.elapsed(),
                    msgs.len() * opts.workers,
                    rows,
                    bytes * opts.workers,
                ));
            }
            out.push(report(summarize(
                topic,
                format!("d. full path, {} workers", opts.workers),
                runs,
            )));
        }
        // (g) into real Parquet files (fsynced), at least once against exactly once (the
        // offsets journal), runs interleaved so both see the same machine.
        if opts.wants('g') {
            let (mut alo, mut eo) = (Vec::new(), Vec::new());
            for run in 0..opts.runs {
                for once in [false, true] {
                    let data = dir.join(format!("g-{topic}-{run}-{once}"));
                    let sink = Arc::new(vast_processor::sink::parquet::ParquetSink::open(&data));
                    let group = once.then(|| Arc::<str>::from("bench"));
                    let (d, rows) = full_path_into(&s, &msgs, &dir, sink, group)?;
                    let _ = std::fs::remove_dir_all(&data);
                    let runs = if once { &mut eo } else { &mut alo };
                    runs.push((d, msgs.len(), rows, bytes));
                }
            }
            let a = report(summarize(topic, "g. parquet, at least once".into(), alo));
            let e = report(summarize(topic, "g. parquet, exactly once".into(), eo));
            println!(
                "{:<14} g. parquet exactly once / at least once: {:.3}",
                topic,
                e.msgs_per_s / a.msgs_per_s.max(1e-9)
            );
            out.push(a);
            out.push(e);
            // The same into the VAST simulator over loopback HTTP (a fresh one per run, so
            // its in-memory tables do not pile up): one transaction per flush, plus the
            // offsets table's read and update with exactly once.
            let (mut alo, mut eo) = (Vec::new(), Vec::new());
            for _ in 0..opts.runs {
                for once in [false, true] {
                    let sim = vast_sim::Simulator::start(
                        "127.0.0.1:0",
                        vast_sim::SimOptions::new(
                            vast_processor::sink::vast::sigv4::Credentials::new("AK", "bench"),
                            vec!["vastdb".into()],
                        ),
                    )?;
                    let sink = vast_processor::sink::vast::VastSink::connect(
                        &vast_processor::sink::vast::client::VastConfig {
                            endpoint: sim.endpoint(),
                            credentials: vast_processor::sink::vast::sigv4::Credentials::new(
                                "AK", "bench",
                            ),
                            ca_file: None,
                            connect_timeout: Duration::from_secs(2),
                            request_timeout: Duration::from_secs(60),
                        },
                        "vastdb",
                        "bench",
                        true,
                    )?;
                    sink.bootstrap()?;
                    let group = once.then(|| Arc::<str>::from("bench"));
                    let (d, rows) = full_path_into(&s, &msgs, &dir, Arc::new(sink), group)?;
                    let runs = if once { &mut eo } else { &mut alo };
                    runs.push((d, msgs.len(), rows, bytes));
                }
            }
            let a = report(summarize(topic, "g. vast sim, at least once".into(), alo));
            let e = report(summarize(topic, "g. vast sim, exactly once".into(), eo));
            println!(
                "{:<14} g. vast exactly once / at least once: {:.3}",
                topic,
                e.msgs_per_s / a.msgs_per_s.max(1e-9)
            );
            out.push(a);
            out.push(e);
        }
    }
    if opts.wants('h') {
        recovery_of_many_files(10_000)?;
    }
    if let Some(addr) = opts.bootstrap.as_ref().filter(|_| opts.wants('e')) {
        out.push(report(end_to_end(addr, engine, opts)?));
    }
    // Only when asked for: it sends 500 MB through the broker.
    if let Some(addr) = opts
        .bootstrap
        .as_ref()
        .filter(|_| opts.scenarios.contains(&'f'))
    {
        stall::stalled_sink(addr, &opts.processor)?;
    }
    println!(
        "peak RSS of the bench process (inputs included): {:.0} MiB",
        peak_rss_mib()
    );
    Ok(out)
}

/// (h) The Parquet sink's start-up with `files` files already in its directory (a few
/// flushes interrupted before and after their commit point among them): the recovery, then
/// the stored offsets of 64 partitions as an assignment asks for them.
fn recovery_of_many_files(files: usize) -> anyhow::Result<()> {
    use vast_processor::sink::Landing;
    use vast_processor::sink::parquet::ParquetSink;
    let data = tempfile_dir()?.join("h-recovery");
    let _ = std::fs::remove_dir_all(&data);
    let day = data.join("events").join("date=2026-01-01");
    std::fs::create_dir_all(&day)?;
    for i in 0..files {
        std::fs::write(day.join(format!("{i:020}-1-{i:06}.parquet")), b"PAR1")?;
    }
    // Interrupted flushes of a writer that is gone (pid 0 is never a user process): stray
    // temp files, and (below) committed intents that were not applied.
    for i in 0..10 {
        std::fs::write(day.join(format!(".{i}-0-{i:06}.parquet.tmp")), b"PAR1")?;
    }
    let journal = vast_processor::sink::parquet::journal::Journal::new(&data);
    for i in 0..10 {
        let tmp = format!("events/date=2026-01-01/.{i}-0-{:06}.parquet.tmp", 100 + i);
        std::fs::write(data.join(&tmp), b"PAR1")?;
        journal.begin(&vast_processor::sink::parquet::journal::Intent {
            group: "bench".into(),
            topic: "raw-logs".into(),
            pid: 0,
            files: vec![(
                tmp,
                format!("events/date=2026-01-01/{i}-0-{:06}.parquet", 100 + i),
            )],
            offsets: vec![(i, 200)],
        })?;
    }
    let writer = ParquetSink::new(&data);
    let batches: Vec<(Table, RecordBatch)> = Vec::new();
    for p in 0..64 {
        let landing = Landing {
            group: "bench".into(),
            topic: "raw-logs".into(),
            partitions: vec![(p, 0, 100)],
        };
        writer.write(&batches, Some(&landing))?;
    }
    let t = Instant::now();
    let sink = ParquetSink::open(&data);
    let recovered = t.elapsed();
    let asked: Vec<(String, i32)> = (0..64).map(|p| ("raw-logs".to_string(), p)).collect();
    let t = Instant::now();
    let landed = sink.landed("bench", &asked)?;
    let read = t.elapsed();
    let left = std::fs::read_dir(&day)?.count();
    println!(
        "{:<14} h. parquet start-up, {files} files: recovery {:.1} ms, stored offsets of {} partitions {:.1} ms ({} files left)",
        "raw-logs",
        recovered.as_secs_f64() * 1e3,
        landed.len(),
        read.as_secs_f64() * 1e3,
        left
    );
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("vast-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn report(m: Measurement) -> Measurement {
    println!(
        "{:<14} {:<28} {:>12.0} msgs/s {:>12.0} rows/s {:>8.1} MB/s  (spread {:.0}%)",
        m.topic, m.scenario, m.msgs_per_s, m.rows_per_s, m.mb_per_s, m.spread_pct
    );
    m
}

/// Send `payloads` to `topic` round-robin over `partitions`, waiting out a full producer
/// queue, and flush.
fn send_all<'a>(
    p: &rdkafka::producer::BaseProducer,
    topic: &str,
    partitions: usize,
    payloads: impl Iterator<Item = std::borrow::Cow<'a, [u8]>>,
) -> anyhow::Result<()> {
    use rdkafka::producer::{BaseRecord, Producer};
    for (i, payload) in payloads.enumerate() {
        let mut rec = BaseRecord::<[u8], [u8]>::to(topic)
            .payload(&payload[..])
            .partition(i32::try_from(i % partitions)?);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    p.poll(Duration::from_millis(5));
                    rec = back;
                }
            }
        }
    }
    p.flush(Duration::from_secs(120))?;
    Ok(())
}

/// (e) raw-logs through the broker into Parquet with at-least-once commits: produce first,
/// then time the consumer from its first record to the last flush. `fetch.wait.max.ms` is
/// lowered because tansu, the local broker, holds a fetch for that long once a partition
/// has been paused and resumed even when records are waiting (22k msgs/s with the default
/// 500 ms); Kafka answers as soon as `fetch.min.bytes` is there.
fn end_to_end(
    addr: &str,
    engine: &TransformEngine,
    opts: &BenchOptions,
) -> anyhow::Result<Measurement> {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::BaseProducer;
    let topic = format!("bench-raw-logs-{}", std::process::id());
    let partitions = 2 * opts.workers;
    create_topic(addr, &topic, partitions)?;
    let msgs = messages("raw-logs", opts.messages);
    let bytes: usize = msgs.iter().map(|m| m.payload.len()).sum();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("linger.ms", "20")
        .create()?;
    // Records go round-robin over the partitions: a partition keeps its worker, so with
    // librdkafka's sticky partitioner (keyless records, one random partition per linger
    // window) one worker got 64% of the records and ran alone for the last third of the
    // run, which measured the partitioner's luck rather than the processor.
    send_all(
        &p,
        &topic,
        partitions,
        msgs.iter()
            .map(|m| std::borrow::Cow::Borrowed(&m.payload[..])),
    )?;
    // What the broker alone can serve: the same records read by a bare consumer that does
    // nothing with them. Line (e) cannot beat this.
    report(broker_read(addr, &topic, msgs.len(), bytes)?);
    let dir = tempfile_dir()?;
    let text = format!(
        "[kafka]\nbootstrap_servers = \"{addr}\"\ngroup_id = \"{topic}\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"fetch.wait.max.ms\" = \"10\"\n[admin]\naddr = \"127.0.0.1:0\"\n[[pipelines]]\ntopic = \"{topic}\"\ntransform = \"raw-logs\"\n"
    );
    let config = Config::parse(&text, std::path::Path::new("bench.toml"), dir.clone())?;
    let specs = vast_processor::pipeline::load_pipelines(&config, engine)?;
    let stats = Arc::new(RunStats::default());
    let metrics = Arc::new(vast_processor::metrics::Metrics::new(
        specs.iter().map(|s| (s.name.as_str(), s.topic.as_str())),
    ));
    let opts_run = vast_processor::source::kafka::RunOptions {
        stop_after_idle: Some(Duration::from_secs(2)),
        shutdown: Arc::new(AtomicBool::new(false)),
        data_dir: dir.join("data"),
        metrics,
    };
    let sink = Arc::new(vast_processor::sink::parquet::ParquetSink::new(
        dir.join("data"),
    ));
    let st = stats.clone();
    let first = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let f2 = first.clone();
    let watcher = std::thread::spawn(move || {
        while RunStats::get(&st.messages_in) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        *f2.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    });
    vast_processor::source::kafka::run(&config, specs, sink, stats.clone(), opts_run)?;
    let _ = watcher.join();
    // The idle wait at the end is not processing time.
    let started = first
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or_else(Instant::now);
    let elapsed = started
        .elapsed()
        .saturating_sub(Duration::from_secs(2))
        .max(Duration::from_millis(1));
    let rows = (RunStats::get(&stats.rows_events) + RunStats::get(&stats.rows_metrics)) as usize;
    let m = summarize(
        "raw-logs",
        "e. end to end (broker)".into(),
        vec![(elapsed, msgs.len(), rows, bytes)],
    );
    // The footprint of the processor alone: the same topic consumed again by a separate
    // `run` process (default batch settings), whose peak RSS the kernel reports at exit.
    std::fs::write(
        dir.join("rss.toml"),
        text.replace(
            &format!("group_id = \"{topic}\""),
            &format!("group_id = \"{topic}-rss\""),
        ),
    )?;
    let mut child = std::process::Command::new(&opts.processor)
        .arg("run")
        .arg("--config")
        .arg(dir.join("rss.toml"))
        .arg("--data-dir")
        .arg(dir.join("rss-data"))
        .args(["--stop-after-idle", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // VmHWM only grows, so its last reading before exit is the peak (within one poll). The
    // rusage of children is no use here: Linux carries the parent's high-water mark across
    // fork and exec.
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0.0f64;
    let status = loop {
        if let Some(kib) = std::fs::read_to_string(&status_file)
            .ok()
            .as_deref()
            .and_then(vm_hwm_kib)
        {
            peak = peak.max(kib / 1024.0);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    anyhow::ensure!(status.success(), "the `run` child exited with {status}");
    println!(
        "processor peak RSS (separate `run` over the same {} records): {peak:.0} MiB",
        msgs.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(m)
}
