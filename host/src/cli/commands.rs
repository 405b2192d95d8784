//! `run`, `replay`, `generate` and `data`.

use crate::config::{Config, SinkConfig};
use crate::model::Table;
use crate::pipeline::{self, RunStats};
use crate::sink::Sink;
use crate::sink::parquet::{ParquetSink, read_table};
use crate::sink::vast::Connection;
use crate::source::file::Format;
use crate::source::kafka::{self, RunOptions};
use crate::transform::wasm::TransformEngine;
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Pipelines config file.
    #[arg(long, default_value = "pipelines.toml")]
    pub config: PathBuf,
    /// Parquet output directory (overrides `sink.data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Stop gracefully after this many seconds without a new record (once partitions are
    /// assigned): for scripts, backfills and the quickstart.
    #[arg(long, value_name = "SECONDS")]
    pub stop_after_idle: Option<f64>,
    /// Admin HTTP address for /metrics, /healthz, /readyz (overrides `admin.addr`).
    #[arg(long)]
    pub admin_addr: Option<String>,
}

/// Load the config file (if present), apply the environment, and validate.
pub fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let mut config = Config::load(path)?;
    config.apply_env(std::env::vars())?;
    config.validate_runtime()?;
    Ok(config)
}

fn make_sink(config: &Config, data_dir: &std::path::Path) -> anyhow::Result<Arc<dyn Sink>> {
    Ok(crate::sink::build(
        &config.sink,
        &config.base_dir,
        data_dir,
        config.runtime.lineage,
    )?)
}

/// `vast-processor run`.
pub fn run(args: &RunArgs, cache: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| config.base_dir.join(config.sink.data_dir()));
    let engine = Arc::new(TransformEngine::new(cache)?);
    let specs = pipeline::load_pipelines_with_state(
        &config,
        &engine,
        Some(&state_dir(&config, &data_dir)),
    )?;
    let sink = make_sink(&config, &data_dir)?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let live: Vec<_> = specs.iter().map(|s| s.live.clone()).collect();
    let checks = live.clone();
    let reload_stop = Arc::new(AtomicBool::new(false));
    let watched: Vec<_> = specs
        .iter()
        .filter_map(|s| s.file.clone().map(|f| (s.live.clone(), f)))
        .collect();
    let watcher = config.reload.enabled.then(|| {
        crate::transform::reload::watch(
            crate::transform::reload::Watched {
                transforms: watched,
                config: Some((
                    config
                        .base_dir
                        .join(args.config.file_name().unwrap_or_default()),
                    config.clone(),
                )),
                pipelines: live.clone(),
            },
            engine.clone(),
            config.reload.clone(),
            reload_stop.clone(),
        )
    });
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.clone())
            .context("cannot install signal handlers")?;
    }
    // A file-size limit (ulimit -f, a quota) must be a failed write the sink retries, not
    // SIGXFSZ killing the process mid-batch.
    // SAFETY: setting a signal's disposition to "ignore" has no handler to race with.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let stats = Arc::new(RunStats::default());
    let metrics = Arc::new(crate::metrics::Metrics::new(
        specs.iter().map(|s| (s.name.as_str(), s.topic.as_str())),
    ));
    let admin_addr = args
        .admin_addr
        .clone()
        .unwrap_or_else(|| config.admin.addr.clone());
    let _admin = crate::admin::AdminServer::start(
        &admin_addr,
        crate::admin::AdminState {
            metrics: metrics.clone(),
            stats: stats.clone(),
            sink: sink.clone(),
            group: config.kafka.group_id.clone(),
            live,
            control: Some(Arc::new(crate::admin::control::Control {
                engine: engine.clone(),
                token: config.admin.token.clone().filter(|t| !t.is_empty()),
            })),
        },
    )?;
    let opts = RunOptions {
        stop_after_idle: args.stop_after_idle.map(Duration::from_secs_f64),
        shutdown,
        data_dir: data_dir.clone(),
        metrics,
    };
    tracing::info!(sink = sink.name(), data_dir = %data_dir.display(), "starting");
    let result = kafka::run(&config, specs, sink, stats, opts);
    reload_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in &checks {
        l.cancel_check("the processor is shutting down");
    }
    if let Some(w) = watcher {
        // A check stops within an epoch tick once cancelled; a compile cannot be stopped,
        // and the process must still exit within its shutdown timeout: wait a little only.
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while !w.is_finished() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        if w.is_finished() {
            let _ = w.join();
        } else {
            tracing::warn!(
                "the reload thread is still busy (compiling a candidate); exiting without it"
            );
        }
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The topic whose pipeline (transform, batch settings) to use (with
    /// --from-dead-letters: the default is the pipeline whose dead-letter topic it is).
    #[arg(long, required_unless_present = "from_dead_letters")]
    pub topic: Option<String>,
    /// Input files (or directories, with --format raw).
    #[arg(long, num_args = 1.., required_unless_present = "from_dead_letters", conflicts_with = "from_dead_letters")]
    pub input: Vec<PathBuf>,
    /// How to split inputs into messages.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
    /// Redrive a dead-letter topic: its records, with the topic, partition and offset they
    /// came from, through the pipeline's current version into the sink (rows get the ids they
    /// would have had). What was redriven is committed; running it again adds nothing.
    #[arg(long, value_name = "TOPIC")]
    pub from_dead_letters: Option<String>,
    /// With --from-dead-letters: stop after this long without a new letter (seconds).
    #[arg(long, default_value_t = 3.0)]
    pub quiet_s: f64,
    /// Pipelines config file.
    #[arg(long, default_value = "pipelines.toml")]
    pub config: PathBuf,
    /// Parquet output directory (overrides `sink.data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// The deployment records of a config: `runtime.state_dir`, else `.state` in the data dir.
fn state_dir(config: &Config, data_dir: &std::path::Path) -> PathBuf {
    config
        .runtime
        .state_dir
        .as_ref()
        .map_or_else(|| data_dir.join(".state"), |d| config.base_dir.join(d))
}

/// `vast-processor replay`.
pub fn replay(args: &ReplayArgs, cache: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(&args.config)?;
    config.apply_env(std::env::vars().filter(|(k, _)| k != "KAFKA_TOPICS"))?;
    let p = match (&args.topic, &args.from_dead_letters) {
        (Some(t), _) => config.pipeline_for_topic(t).cloned().with_context(|| {
            format!("no pipeline for topic `{t}` in {}", args.config.display())
        })?,
        (None, Some(dlq)) => config
            .pipelines
            .iter()
            .find(|p| p.dead_letter_topic.as_deref() == Some(dlq.as_str()))
            .cloned()
            .with_context(|| {
                format!(
                    "no pipeline has dead_letter_topic = `{dlq}` in {}; name its pipeline with --topic",
                    args.config.display()
                )
            })?,
        (None, None) => bail!("give --topic"),
    };
    config.pipelines = vec![p];
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| config.base_dir.join(config.sink.data_dir()));
    let engine = TransformEngine::new(cache)?;
    let sink = make_sink(&config, &data_dir)?;
    let stats = Arc::new(RunStats::default());
    let started = Instant::now();
    let bar = progress(0, "records");
    let mut show = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let options = pipeline::RuntimeOptions::from_config(&config.runtime);
    if let Some(dlq) = &args.from_dead_letters {
        // The version the processor runs now (the deployment record's), read only.
        let spec =
            pipeline::load_pipelines_read_only(&config, &engine, &state_dir(&config, &data_dir))?
                .remove(0);
        let version = spec.live.current().label().to_string();
        let letters = crate::source::redrive::read(
            &config,
            dlq,
            &spec.topic,
            Duration::from_secs_f64(args.quiet_s.max(0.1)),
        )?;
        let redriven = letters.records.len();
        let result = crate::source::file::replay_messages(
            spec,
            letters.records.clone(),
            sink,
            &data_dir,
            options,
            stats.clone(),
            &mut show,
        );
        bar.finish_and_clear();
        result?;
        // Only once every row is in the sink: a failed redrive is redriven again in full.
        letters.commit()?;
        let s = &letters.skipped;
        eprintln!(
            "redrove {redriven} of {} dead letter(s) from {dlq} through {version} in {:.2}s: {}; skipped {} without origin headers, {} of other topics, {} with a truncated value (the whole record is in the dead-letter files)",
            letters.letters,
            started.elapsed().as_secs_f64(),
            stats.summary(),
            s.no_origin,
            s.other_topic,
            s.truncated
        );
        return Ok(ExitCode::SUCCESS);
    }
    let spec = pipeline::load_pipelines(&config, &engine)?.remove(0);
    let result = crate::source::file::replay(
        spec,
        &args.input,
        args.format,
        sink,
        &data_dir,
        options,
        stats.clone(),
        &mut show,
    );
    bar.finish_and_clear();
    result?;
    eprintln!(
        "replayed in {:.2}s: {}",
        started.elapsed().as_secs_f64(),
        stats.summary()
    );
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Topic to produce to (raw-logs, raw-queries, raw-host-logs, otel-metrics).
    #[arg(long)]
    pub topic: String,
    /// Number of records.
    #[arg(long)]
    pub count: u64,
    /// Records per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,
    /// Make every Nth record malformed (0: none), to exercise dead letters.
    #[arg(long, default_value_t = 0)]
    pub invalid_every: u64,
    /// Random seed (same seed, same data).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `vast-processor generate`.
pub fn generate(args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    use crate::generate::{Rng, malformed, record};
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let mut rng = Rng::new(args.seed);
    if record(&args.topic, &mut Rng::new(1), 0).is_none() {
        bail!(
            "no generator for topic `{}` (known: {})",
            args.topic,
            crate::config::BUNDLED.join(", ")
        );
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("linger.ms", "20")
        .set("message.timeout.ms", "30000")
        .create()
        .context("cannot create the Kafka producer")?;
    let started = Instant::now();
    let now_us = crate::model::now_micros();
    let bar = progress(args.count, "records");
    for i in 0..args.count {
        bar.inc(1);
        let r = if args.invalid_every > 0 && (i + 1) % args.invalid_every == 0 {
            malformed(&args.topic, &mut rng)
        } else {
            record(&args.topic, &mut rng, now_us + i as i64).expect("topic checked")
        };
        let mut rec = BaseRecord::<[u8], [u8]>::to(&args.topic).payload(&r.payload);
        if let Some(k) = &r.key {
            rec = rec.key(k);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((e, back)) => {
                    if matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ) {
                        producer.poll(Duration::from_millis(20));
                        rec = back;
                    } else {
                        bail!("cannot produce to {}: {e}", args.topic);
                    }
                }
            }
        }
        producer.poll(Duration::ZERO);
        if let Some(rate) = args.rate {
            let due = started + Duration::from_secs_f64((i + 1) as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .context("not every record was acknowledged")?;
    eprintln!(
        "produced {} record(s) to {} in {:.2}s",
        args.count,
        args.topic,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr, drawn only when stderr is a terminal (quiet in pipes and logs).
pub fn progress(len: u64, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})"
    ))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Arguments of `check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Pipelines config file.
    #[arg(long, default_value = "pipelines.toml")]
    pub config: PathBuf,
}

/// Exactly once: the offsets stored with the rows per partition, next to Kafka's committed
/// offsets (informational: a broker that cannot be reached does not fail the check).
fn print_delivery(
    config: &Config,
    stored: impl FnOnce(&str) -> Result<Vec<(String, i32, i64)>, String>,
) {
    if config.runtime.delivery != crate::config::Delivery::ExactlyOnce {
        println!("delivery: at least once (runtime.delivery)");
        return;
    }
    let group = &config.kafka.group_id;
    let stored = match stored(group) {
        Ok(s) => s,
        Err(e) => {
            println!("delivery: exactly once (group {group}): ERROR reading stored offsets: {e}");
            return;
        }
    };
    if stored.is_empty() {
        println!("delivery: exactly once (group {group}): no offsets stored with the rows yet");
        return;
    }
    println!("delivery: exactly once (group {group}): offsets stored with the rows");
    let tps: Vec<(String, i32)> = stored.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
    let kafka = kafka::committed_offsets(config, &tps, std::time::Duration::from_secs(5));
    for (t, p, next) in &stored {
        let k = match &kafka {
            Ok(c) => c
                .get(&(t.clone(), *p))
                .map_or("none".to_string(), |o| o.to_string()),
            Err(e) => format!("unavailable ({e})"),
        };
        println!("  {t}/{p}: stored next {next}, Kafka committed {k}");
    }
}

/// `vast-processor check`: validate the config, load every transform, and report the sink.
pub fn check(args: &CheckArgs, cache: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    println!(
        "config {}: ok ({} pipeline(s))",
        args.config.display(),
        config.pipelines.len()
    );
    let engine = TransformEngine::new(cache)?;
    let mut ok = true;
    for p in &config.pipelines {
        match pipeline::load_pipelines(
            &Config {
                pipelines: vec![p.clone()],
                ..config.clone()
            },
            &engine,
        ) {
            Ok(specs) => println!(
                "pipeline {}: transform {} loads and accepts its config",
                p.name(),
                specs[0].live.current().label()
            ),
            Err(e) => {
                ok = false;
                println!("pipeline {}: ERROR {e}", p.name());
            }
        }
    }
    match &config.sink {
        SinkConfig::Parquet(p) => {
            let dir = config.base_dir.join(&p.data_dir);
            let sink = ParquetSink::new(&dir);
            match sink.check() {
                Ok(()) => println!("sink parquet: {} is writable", dir.display()),
                Err(e) => {
                    ok = false;
                    println!("sink parquet: ERROR {e}");
                }
            }
            print_delivery(&config, |g| {
                sink.stored_offsets(g).map_err(|e| e.to_string())
            });
        }
        SinkConfig::Vast(v) => {
            let conn = Connection::from_config(v, &config.base_dir)?;
            let (endpoint, bucket, schema) = (&conn.config.endpoint, &conn.bucket, &conn.schema);
            match conn.connect(config.runtime.lineage) {
                Err(e) => {
                    ok = false;
                    println!("sink vast {endpoint}: ERROR {e}");
                }
                Ok(sink) => {
                    let v = sink.client().version();
                    println!(
                        "sink vast {endpoint}: VAST {}.{}.{}.{}, bucket `{bucket}` exists",
                        v[0], v[1], v[2], v[3]
                    );
                    match sink.inspect() {
                        Err(e) => {
                            ok = false;
                            println!("  ERROR {e}");
                        }
                        Ok((schema_exists, tables)) => {
                            println!(
                                "  schema `{schema}`: {}",
                                if schema_exists {
                                    "exists"
                                } else {
                                    "missing (will be created)"
                                }
                            );
                            for t in tables {
                                if !t.exists {
                                    println!("  table {}: missing (will be created)", t.table);
                                    continue;
                                }
                                println!("  table {}: exists", t.table);
                                if !t.missing_columns.is_empty() {
                                    println!(
                                        "    missing columns (will be added): {}",
                                        t.missing_columns.join(", ")
                                    );
                                }
                                if !t.mismatched_columns.is_empty() {
                                    ok = false;
                                    println!(
                                        "    ERROR columns of another type: {}",
                                        t.mismatched_columns.join(", ")
                                    );
                                }
                            }
                        }
                    }
                    print_delivery(&config, |g| {
                        sink.stored_offsets(g).map_err(|e| e.to_string())
                    });
                }
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `data` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Rows per table, a few rows of each, and the dead-letter count.
    Summary {
        /// The Parquet data directory.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Rows to show per table.
        #[arg(long, default_value_t = 3)]
        rows: usize,
    },
}

/// Rows of `table` under `dir` as JSON objects (one per row).
pub fn table_rows(dir: &std::path::Path, table: Table) -> anyhow::Result<Vec<serde_json::Value>> {
    let batches = read_table(dir, table).map_err(anyhow::Error::msg)?;
    batches_to_json(&batches)
}

/// Record batches as JSON objects, one per row.
pub fn batches_to_json(
    batches: &[arrow_array::RecordBatch],
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for b in batches {
        let mut buf = Vec::new();
        let mut w = arrow_json_writer(&mut buf);
        w.write(b)?;
        w.finish()?;
        drop(w);
        for line in String::from_utf8_lossy(&buf).lines() {
            out.push(serde_json::from_str(line)?);
        }
    }
    Ok(out)
}

fn arrow_json_writer(buf: &mut Vec<u8>) -> arrow_json::LineDelimitedWriter<&mut Vec<u8>> {
    arrow_json::LineDelimitedWriter::new(buf)
}

/// `vast-processor data ...`.
pub fn data(cmd: &DataCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DataCommand::Summary { data_dir, rows } => {
            for table in Table::ALL {
                let all = table_rows(data_dir, table)?;
                println!("{}: {} row(s)", table.name(), all.len());
                for r in all.iter().take(*rows) {
                    println!("  {r}");
                }
            }
            let dead = crate::sink::deadletter::read_dead_letter_files(data_dir);
            println!(
                "dead-letter files: {} (pipelines with a dead_letter_topic send theirs to Kafka)",
                dead.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
