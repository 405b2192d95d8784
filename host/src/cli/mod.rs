//! The command line (wiring: errors are `anyhow` here). `main` is shared by the
//! `vast-processor` binary and the test harness's copy of it.

pub mod commands;
pub mod scaffold;
pub mod transform_test;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "vast-processor",
    version,
    about = "Kafka telemetry -> sandboxed WebAssembly transforms -> VAST Database / Parquet"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Directory for compiled transforms (default: $VAST_PROCESSOR_CACHE_DIR or ~/.cache/vast-processor).
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    /// Do not cache compiled transforms on disk.
    #[arg(long, global = true)]
    no_cache: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipelines: consume Kafka, transform, write to the sink, commit.
    Run(commands::RunArgs),
    /// Run a topic's pipeline (transform, batch, sink) on records read from files.
    Replay(commands::ReplayArgs),
    /// Produce realistic sample telemetry to a Kafka topic.
    Generate(commands::GenerateArgs),
    /// Measure throughput (run from a release build): see BENCHMARKS.md.
    Bench(commands::BenchArgs),
    /// Check the config, load every transform, and report the sink's state.
    Check(commands::CheckArgs),
    /// Run the VAST Database simulator (for tests and local runs).
    VastSim(commands::SimArgs),
    /// Inspect what landed in a Parquet data directory.
    #[command(subcommand)]
    Data(commands::DataCommand),
    /// Develop and check transforms.
    #[command(subcommand)]
    Transform(TransformCommand),
}

#[derive(Subcommand)]
enum TransformCommand {
    /// Run a transform on messages read from files, as the pipeline would.
    Test(transform_test::TestArgs),
    /// Create a new transform crate (with a golden test) to build into a .wasm.
    New(scaffold::NewArgs),
}

fn init_logging(format: LogFormat) {
    // An unset or empty RUST_LOG means `info` (an empty filter would silence everything).
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(v)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        _ => tracing_subscriber::EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The process entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // Like the Python processor: a .env file in the working directory sets variables that
    // are not already set.
    let _ = dotenvy::dotenv();
    let cache = if cli.no_cache {
        None
    } else {
        cli.cache_dir
            .clone()
            .or_else(crate::wasm::default_cache_dir)
    };
    let result = match &cli.command {
        Command::Run(a) => commands::run(a, cache),
        Command::Replay(a) => commands::replay(a, cache),
        Command::Generate(a) => commands::generate(a),
        Command::Data(d) => commands::data(d),
        Command::Check(a) => commands::check(a, cache),
        Command::Bench(a) => commands::bench(a, cache),
        Command::VastSim(a) => commands::vast_sim(a),
        Command::Transform(TransformCommand::New(args)) => scaffold::create(args)
            .map_err(anyhow::Error::from)
            .map(|root| {
                println!("created {}", root.display());
                println!("next: cd {} && cat README.md", root.display());
                ExitCode::SUCCESS
            }),
        Command::Transform(TransformCommand::Test(args)) => (|| {
            let engine = crate::wasm::TransformEngine::new(cache)?;
            let outcome = transform_test::run(
                args,
                &engine,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            )?;
            Ok(if outcome.matched {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        })(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
