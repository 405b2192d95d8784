//! (f) The in-flight footprint while the sink stalls: a `run` process (default settings) is
//! given big records while its Parquet directory cannot be written, and its resident set is
//! read once the source has held back; then the sink comes back and everything must land.

use crate::{send_all, status_kib, vm_hwm_kib};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Records and their size for line f (the adversarial run's case).
const RECORDS: usize = 1000;
const RECORD_KIB: usize = 500;

/// The sum of every series of `name` (any labels) in a Prometheus text.
fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.1 200").then_some(body)
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let until = Instant::now() + timeout;
    while !f() {
        anyhow::ensure!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Run line f against the broker at `addr` with the `vast-processor` at `processor`.
pub fn stalled_sink(addr: &str, processor: &std::path::Path) -> anyhow::Result<()> {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::BaseProducer;
    let topic = format!("bench-stall-{}", std::process::id());
    crate::create_topic(addr, &topic, 2)?;
    let dir = crate::tempfile_dir()?.join("stall");
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.to_string()
    };
    std::fs::write(
        dir.join("stall.toml"),
        format!(
            "[kafka]\nbootstrap_servers = \"{addr}\"\ngroup_id = \"{topic}\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"fetch.wait.max.ms\" = \"10\"\n[admin]\naddr = \"{admin}\"\n[[pipelines]]\ntopic = \"{topic}\"\ntransform = \"raw-logs\"\n"
        ),
    )?;
    let mut child = std::process::Command::new(processor)
        .arg("run")
        .arg("--config")
        .arg(dir.join("stall.toml"))
        .arg("--data-dir")
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let status_file = format!("/proc/{}/status", child.id());
    let result = (|| {
        wait("the processor to be ready", Duration::from_secs(60), || {
            http_get(&admin, "/readyz").is_some()
        })?;
        let idle = std::fs::read_to_string(&status_file)
            .ok()
            .as_deref()
            .and_then(|t| status_kib(t, "VmRSS:"))
            .unwrap_or(0.0)
            / 1024.0;
        // The sink fails from here on: its directory is a file.
        let moved = dir.join("data.moved");
        std::fs::rename(&data, &moved)?;
        std::fs::write(&data, b"not a directory")?;
        let text = "A".repeat(RECORD_KIB * 1024);
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", addr)
            .set("message.max.bytes", "1000000")
            .create()?;
        let payloads = (0..RECORDS).map(|i| {
            std::borrow::Cow::Owned(format!(
                "{{\"timestamp\": \"2025-10-14T16:01:47Z\", \"source\": \"postgresql\", \"data_type\": \"log\", \"host\": \"pg-{i}\", \"payload\": {{\"event_type\": \"dump\", \"text\": \"{text}\"}}}}"
            ).into_bytes())
        });
        send_all(&p, &topic, 2, payloads)?;
        let metrics = || http_get(&admin, "/metrics").unwrap_or_default();
        // Held back: partitions paused and the in-flight figure steady over 3 s of retries.
        let mut last = (-1.0, Instant::now());
        wait("the source to hold back", Duration::from_secs(120), || {
            let m = metrics();
            let now = sum_metric(&m, "vast_inflight_bytes");
            if now != last.0 {
                last = (now, Instant::now());
            }
            sum_metric(&m, "vast_paused_partitions") >= 1.0
                && last.1.elapsed() >= Duration::from_secs(3)
        })?;
        let status = std::fs::read_to_string(&status_file)?;
        let held = status_kib(&status, "VmRSS:").unwrap_or(0.0) / 1024.0;
        let m = metrics();
        let inflight = sum_metric(&m, "vast_inflight_bytes_max") / 1048576.0;
        let limit = sum_metric(&m, "vast_inflight_limit_bytes") / 1048576.0;
        let taken = sum_metric(&m, "vast_messages_in_total");
        // The sink comes back: everything must land.
        let back = Instant::now();
        std::fs::remove_file(&data)?;
        std::fs::rename(&moved, &data)?;
        wait("every record to land", Duration::from_secs(300), || {
            sum_metric(&metrics(), "vast_rows_out_total") >= RECORDS as f64
        })?;
        let drained = back.elapsed();
        let peak = std::fs::read_to_string(&status_file)
            .ok()
            .as_deref()
            .and_then(vm_hwm_kib)
            .unwrap_or(0.0)
            / 1024.0;
        println!(
            "f. stalled sink, {RECORDS} records of {RECORD_KIB} KiB: RSS idle {idle:.0} MiB, while held back {held:.0} MiB, \
             peak {peak:.0} MiB; in flight at most {inflight:.1} MiB of a {limit:.0} MiB bound \
             ({taken} records transformed meanwhile); all landed {:.1} s after the sink came back",
            drained.as_secs_f64()
        );
        anyhow::Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
