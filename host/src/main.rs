//! The `vast-processor` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vast_processor::cli::transform_test;
use vast_processor::wasm::{TransformEngine, default_cache_dir};

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
    /// Develop and check transforms.
    #[command(subcommand)]
    Transform(TransformCommand),
}

#[derive(Subcommand)]
enum TransformCommand {
    /// Run a transform on messages read from files, as the pipeline would.
    Test(transform_test::TestArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let cache = if cli.no_cache {
        None
    } else {
        cli.cache_dir.clone().or_else(default_cache_dir)
    };
    let result = (|| -> anyhow::Result<ExitCode> {
        let engine = TransformEngine::new(cache)?;
        match &cli.command {
            Command::Transform(TransformCommand::Test(args)) => {
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
            }
        }
    })();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
