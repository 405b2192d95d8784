//! `vast-sim`: the VAST Database simulator the tests use, as a server for trying the VAST
//! sink locally. It is its own binary so the product never carries it.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use vast_processor::sink::vast::sigv4::Credentials;
use vast_sim::{SimOptions, Simulator, tls_config};

/// Run the VAST simulator until SIGTERM/SIGINT.
#[derive(Debug, Parser)]
#[command(name = "vast-sim", version)]
struct Args {
    /// Listen address (loopback).
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: String,
    /// The access key clients must sign with.
    #[arg(long, env = "VAST_ACCESS_KEY")]
    access_key: String,
    /// The secret key clients must sign with.
    #[arg(long, env = "VAST_SECRET_KEY", hide_env_values = true)]
    secret_key: String,
    /// Buckets that exist (repeatable).
    #[arg(long = "bucket", env = "VAST_BUCKET", required = true)]
    buckets: Vec<String>,
    /// The version the server reports.
    #[arg(long, default_value = "vast 5.3.0.1")]
    server: String,
    /// Serve https with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key).map_err(anyhow::Error::msg)?),
        _ => None,
    };
    let sim = Simulator::start(
        &args.listen,
        SimOptions {
            server: args.server.clone(),
            tls,
            ..SimOptions::new(
                Credentials::new(args.access_key.clone(), args.secret_key.clone()),
                args.buckets.clone(),
            )
        },
    )
    .with_context(|| format!("cannot listen on {}", args.listen))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    eprintln!(
        "VAST simulator on {} (buckets: {})",
        sim.endpoint(),
        args.buckets.join(", ")
    );
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
