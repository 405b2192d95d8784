//! The command line (wiring: errors are `anyhow` here). `main` is shared by the
//! `vast-processor` binary and the test harness's copy of it.

pub mod commands;
pub mod scaffold;
pub mod transform_admin;
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
    /// Check the config, load every transform, and report the sink's state.
    Check(commands::CheckArgs),
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
    #[command(flatten)]
    Admin(transform_admin::AdminCommand),
}

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (not exported by libmimalloc-sys).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Process-wide tuning every binary that runs pipelines applies first (the product and the
/// bench, so the bench measures the product's setup). Call before any thread starts.
pub fn tune_process() {
    // Return freed memory to the OS after 5 ms instead of mimalloc's 10: each flush frees
    // tens of MiB, and holding them 10 ms raised the peak RSS of `run`; 0 (at once) made
    // every batch and every Parquet page fault its memory back in (twice the page faults
    // of 5 ms, at the same peak RSS; BENCHMARKS.md). `MIMALLOC_PURGE_DELAY` in the
    // environment wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: options may be set at any time; this one only changes when pages are purged.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 5) };
    }
    // No transparent huge pages for this process: mimalloc asks for them on its arenas, and
    // as it returns freed memory to the OS and takes it back (every batch and Parquet page),
    // each re-fault zeroed a whole 2 MiB page instead of 4 KiB. Without them a `bench`
    // full-path run spent 0.28-0.33 s in the kernel instead of 0.57-0.81 s, at 136 instead
    // of 157 MiB peak RSS (BENCHMARKS.md). `MIMALLOC_ALLOW_THP=1` keeps them.
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none_or(|v| v != "1") {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and only affects later page faults.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
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
    if let Err(e) = load_dotenv() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let cache = if cli.no_cache {
        None
    } else {
        cli.cache_dir
            .clone()
            .or_else(crate::transform::wasm::default_cache_dir)
    };
    let result = match &cli.command {
        Command::Run(a) => commands::run(a, cache),
        Command::Replay(a) => commands::replay(a, cache),
        Command::Generate(a) => commands::generate(a),
        Command::Data(d) => commands::data(d),
        Command::Check(a) => commands::check(a, cache),
        Command::Transform(TransformCommand::New(args)) => scaffold::create(args)
            .map_err(anyhow::Error::from)
            .map(|root| {
                println!("created {}", root.display());
                println!("next: cd {} && cat README.md", root.display());
                ExitCode::SUCCESS
            }),
        Command::Transform(TransformCommand::Admin(cmd)) => transform_admin::run(cmd),
        Command::Transform(TransformCommand::Test(args)) => (|| {
            let engine = crate::transform::wasm::TransformEngine::new(cache)?;
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
            eprintln!("error: {}", chain(&e));
            ExitCode::from(2)
        }
    }
}

/// Read `./.env` (variables already set win). A missing file is fine; a malformed one is an
/// error naming its line, never a silent fallback (it used to drop the VAST settings in it,
/// so the processor quietly started with the Parquet sink). The line's text is not shown: it
/// may hold a secret.
fn load_dotenv() -> Result<(), String> {
    match dotenvy::dotenv() {
        Ok(_) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        Err(dotenvy::Error::LineParse(line, _)) => {
            let text = std::fs::read_to_string(".env").unwrap_or_default();
            // The parser's "line" may run over several (an unclosed quote): where it starts.
            let start = line.lines().next().unwrap_or_default().trim();
            let number = text
                .lines()
                .position(|l| !start.is_empty() && l.trim() == start)
                .map_or_else(|| "a line".to_string(), |i| format!("line {}", i + 1));
            Err(format!(
                ".env: {number} is not KEY=VALUE (quote values with spaces or special characters); nothing was loaded from it"
            ))
        }
        Err(e) => Err(format!(".env: {e}")),
    }
}

/// The error and its causes, joined by ": ", leaving out a cause whose text the message so
/// far already holds (typed errors say their source in their own message, as logs show only
/// that; `{e:#}` would print it twice).
pub fn chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_error_chain_says_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("inner {0}")]
        struct Inner(u8);
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Outer(#[source] Inner);
        let e = anyhow::Error::new(Outer(Inner(7))).context("while starting");
        assert_eq!(super::chain(&e), "while starting: outer: inner 7");
        let plain = anyhow::anyhow!("a").context("b");
        assert_eq!(super::chain(&plain), "b: a");
    }
}
