//! The bench's command line.

use crate::BenchOptions;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use vast_processor::transform::wasm::{TransformEngine, default_cache_dir};
use vast_transform_sdk::transforms::BUNDLED;

/// Arguments of the bench.
#[derive(Debug, Parser)]
#[command(name = "vast-processor-bench", version)]
struct BenchArgs {
    /// Directory for compiled transforms (default: $VAST_PROCESSOR_CACHE_DIR or ~/.cache/vast-processor).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Do not cache compiled transforms on disk.
    #[arg(long)]
    no_cache: bool,
    /// Topics to measure (default: all four bundled ones).
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Messages per measurement.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Workers for the multi-worker measurement (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// A Kafka broker for the end-to-end measurement (skipped without it).
    #[arg(long)]
    bootstrap: Option<String>,
    /// Measure only these scenarios (a to h; repeatable or comma-separated; default: all but
    /// f). f (with --bootstrap) is the in-flight footprint of a `run` whose sink stalls; g
    /// the Parquet sink with exactly-once against at-least-once delivery; h the Parquet
    /// start-up recovery of a directory of 10,000 files.
    #[arg(long = "scenario", value_delimiter = ',', value_parser = parse_scenario)]
    scenarios: Vec<char>,
    /// Batch sizes for scenario a (repeatable or comma-separated; default: 1,100,1000,10000).
    #[arg(long = "batch", value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    batches: Vec<u64>,
    /// CPU deadline per transform call, in milliseconds (default: the pipeline default).
    /// For running under valgrind, which slows calls down ~50x.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    deadline_ms: Option<u64>,
    /// The `vast-processor` binary for the end-to-end RSS measurement (default: the one next
    /// to this binary).
    #[arg(long, env = "VAST_PROCESSOR_BIN")]
    processor: Option<PathBuf>,
}

fn parse_scenario(s: &str) -> Result<char, String> {
    match s.trim() {
        one @ ("a" | "b" | "c" | "d" | "e" | "f" | "g" | "h") => Ok(char::from(one.as_bytes()[0])),
        other => Err(format!(
            "unknown scenario `{other}`: expected one of a, b, c, d, e, f, g, h"
        )),
    }
}

/// The bench's entry point (the `vast-processor-bench` binary and the tests' copy of it).
pub fn main() -> ExitCode {
    let args = BenchArgs::parse();
    // Quiet by default: the table is the output (RUST_LOG still turns logs on).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let cache = if args.no_cache {
        None
    } else {
        args.cache_dir.clone().or_else(default_cache_dir)
    };
    let engine = TransformEngine::new(cache)?;
    let topics = if args.topics.is_empty() {
        BUNDLED.iter().map(|s| s.to_string()).collect()
    } else {
        args.topics.clone()
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; figures are meaningless (use cargo run --release -p vast-processor-bench)"
        );
    }
    let opts = BenchOptions {
        topics,
        messages: args.messages.max(1),
        runs: args.runs.max(1),
        workers: args
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        bootstrap: args.bootstrap.clone(),
        scenarios: args.scenarios.clone(),
        batches: args.batches.iter().map(|&b| b as usize).collect(),
        deadline_ms: args.deadline_ms,
        processor: match &args.processor {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("vast-processor"),
        },
    };
    crate::run(&opts, &engine)?;
    Ok(())
}
