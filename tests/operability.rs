//! Operability end to end: the admin server's /metrics, /readyz and /healthz, and JSON logs,
//! through a real broker and the processor run as its own process.

use serde_json::Value;
use std::time::Duration;
use vast_processor_tests::*;

const VP: &str = env!("CARGO_BIN_EXE_vp-test");

fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))
        })
        .collect()
}

#[test]
fn metrics_move_by_exactly_the_produced_amounts_and_readyz_tracks_join_and_sink() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 2);
    broker.create_topic("raw-logs-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = test_config(&broker, "e2e-ops", &["raw-logs"], "");
    let mut p = Processor::start(VP, dir.path(), &config, &data, &["--log-format", "json"]);

    // The admin address (port 0 in the config) comes from the JSON startup log.
    let mut addr = String::new();
    wait_until(Duration::from_secs(60), "the admin server", || {
        let found = json_lines(&p.log_text()).into_iter().find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("admin server listening"))
        });
        if let Some(l) = found {
            addr = l["addr"].as_str().unwrap().to_string();
        }
        !addr.is_empty()
    });
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    // The group join takes seconds with this broker: not ready yet.
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("has not joined group `e2e-ops`"), "{body}");
    wait_until(Duration::from_secs(60), "readiness", || {
        http_get(&addr, "/readyz").0 == 200
    });

    let series = |name: &str, extra: &str| {
        format!("{name}{{pipeline=\"raw-logs\",topic=\"raw-logs\"{extra}}}")
    };
    let before = http_get(&addr, "/metrics").1;
    assert_eq!(
        metric(&before, &series("vast_messages_in_total", "")),
        0.0,
        "{before}"
    );

    let produced = produce(
        &broker.addr,
        "raw-logs",
        &generated("raw-logs", 100, 10, 21),
    );
    wait_until(Duration::from_secs(60), "all rows flushed", || {
        let m = http_get(&addr, "/metrics").1;
        metric(&m, &series("vast_rows_out_total", ",table=\"events\"")) >= 90.0
    });
    let after = http_get(&addr, "/metrics").1;
    assert_eq!(
        metric(&after, &series("vast_messages_in_total", "")),
        100.0,
        "{after}"
    );
    assert_eq!(
        metric(&after, &series("vast_rows_out_total", ",table=\"events\"")),
        90.0
    );
    assert_eq!(
        metric(&after, &series("vast_rows_out_total", ",table=\"metrics\"")),
        0.0
    );
    assert_eq!(
        metric(
            &after,
            &series("vast_dead_letters_total", ",reason=\"fail\"")
        ),
        10.0
    );
    assert_eq!(
        metric(&after, &series("vast_transform_errors_total", "")),
        10.0
    );
    assert_eq!(
        metric(
            &after,
            &series("vast_dead_letters_total", ",reason=\"trap\"")
        ),
        0.0
    );
    assert!(metric(&after, &series("vast_transform_invocations_total", "")) >= 1.0);
    assert!(metric(&after, &series("vast_transform_batch_seconds_count", "")) >= 1.0);
    assert!(metric(&after, &series("vast_transform_cpu_seconds_total", "")) > 0.0);
    assert!(
        metric(
            &after,
            &series("vast_transform_memory_high_water_bytes", "")
        ) > 0.0
    );
    assert!(
        metric(&after, &series("vast_flushes_total", ",reason=\"age\"")) >= 1.0,
        "{after}"
    );
    assert!(metric(&after, &series("vast_sink_write_seconds_count", "")) >= 1.0);
    assert_eq!(metric(&after, &series("vast_batch_rows_sum", "")), 90.0);
    assert!(after.contains("# TYPE vast_consumer_lag gauge"), "{after}");
    assert!(after.contains("vast_paused_partitions 0"), "{after}");
    // Committed offsets reach the end of each partition.
    wait_until(Duration::from_secs(30), "committed offsets", || {
        let m = http_get(&addr, "/metrics").1;
        end_offsets(&produced).iter().all(|(part, end)| {
            metric(
                &m,
                &format!("vast_committed_offset{{topic=\"raw-logs\",partition=\"{part}\"}}"),
            ) == *end as f64
        })
    });

    // Sink down: the data directory becomes a file. Not ready, with the reason; then back.
    std::fs::rename(&data, dir.path().join("data.moved")).unwrap();
    std::fs::write(&data, b"not a directory").unwrap();
    // Readiness is computed in the background (every 0.5 s), so it follows within seconds.
    let mut last = (0, String::new());
    wait_until(Duration::from_secs(10), "not ready", || {
        last = http_get(&addr, "/readyz");
        last.0 == 503
    });
    assert!(last.1.contains("not writable"), "{}", last.1);
    std::fs::remove_file(&data).unwrap();
    std::fs::rename(dir.path().join("data.moved"), &data).unwrap();
    wait_until(Duration::from_secs(10), "ready again", || {
        http_get(&addr, "/readyz").0 == 200
    });
    assert_eq!(http_get(&addr, "/nope").0, 404);

    p.signal(15);
    assert!(
        p.wait(Duration::from_secs(30)).success(),
        "{}",
        p.log_text()
    );
    // Every log line is one JSON object; lines about a record carry where it came from.
    let lines = json_lines(&p.log_text());
    let rejected: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("record rejected"))
        })
        .collect();
    // One DEBUG line per record; at INFO only the first of the burst (the rest are in the
    // summary, at the latest at shutdown).
    let (debug, info): (Vec<&Value>, Vec<&Value>) =
        rejected.into_iter().partition(|l| l["level"] == "DEBUG");
    assert_eq!(debug.len(), 10);
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0]["level"], "INFO");
    let summaries: u64 = lines
        .iter()
        .filter(|l| l["message"] == "records dead-lettered")
        .map(|l| l["dead_letters"].as_u64().unwrap())
        .sum();
    assert_eq!(summaries, 9, "the other nine in summaries");
    for l in debug.into_iter().chain(info) {
        assert_eq!(l["pipeline"], "raw-logs");
        assert_eq!(l["topic"], "raw-logs");
        assert!(l["partition"].is_i64() && l["offset"].is_i64(), "{l}");
        assert!(
            l["transform"].as_str().unwrap().starts_with("raw-logs@"),
            "{l}"
        );
    }
}

/// `bench --bootstrap` measures the broker read rate (e0), the end-to-end path (e) and the
/// peak RSS of a separate `run` process over the same records.
#[test]
fn bench_end_to_end_reports_broker_rate_and_processor_rss() {
    let broker = Broker::start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vp-bench"))
        .args([
            "--cache-dir",
            scratch().join("wasm-cache").to_str().unwrap(),
            "--processor",
            VP,
            "--topic",
            "raw-logs",
            "--messages",
            "2000",
            "--runs",
            "1",
            "--bootstrap",
            &broker.addr,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |what: &str| {
        stdout
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} line in\n{stdout}"))
            .to_string()
    };
    // The figure just before `unit` on a report line.
    let figure = |l: &str, unit: &str| -> f64 {
        l.split(unit)
            .next()
            .and_then(|head| head.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {unit} figure in {l:?}"))
    };
    assert!(figure(&line("e0. broker read only"), "msgs/s") > 0.0);
    let e = line("e. end to end (broker)");
    assert!(figure(&e, "msgs/s") > 0.0, "{e}");
    // Every record became a row: rows/s equals msgs/s on the end-to-end line.
    assert_eq!(figure(&e, "rows/s"), figure(&e, "msgs/s"), "{e}");
    let rss: f64 = line("processor peak RSS")
        .split("records): ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("an RSS figure");
    assert!(rss > 10.0, "implausible RSS {rss} MiB");
}

/// Out of descriptors, the old admin server's accept loop exited for good: /healthz,
/// /readyz and /metrics stayed refused after every client left, until a restart. The
/// processor's descriptor limit is lowered to a few above what it holds, clients hold
/// connections until accept fails (EMFILE), and once they leave the admin server answers
/// and the pipeline still delivers.
#[test]
fn the_admin_server_outlives_running_out_of_descriptors() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 1);
    broker.create_topic("raw-logs-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = test_config(&broker, "e2e-emfile", &["raw-logs"], "");
    let mut p = Processor::start(VP, dir.path(), &config, &data, &[]);
    let mut addr = String::new();
    wait_until(Duration::from_secs(60), "the admin server", || {
        addr = admin_addr(&p.log_text()).unwrap_or_default();
        !addr.is_empty()
    });
    wait_until(Duration::from_secs(60), "readiness", || {
        http_get(&addr, "/readyz").0 == 200
    });

    let pid = p.pid().to_string();
    // The soft limit only: raising it back needs no privilege.
    let limit = |n: usize| {
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={n}:")])
            .status()
            .unwrap();
        assert!(status.success(), "prlimit --nofile={n}:");
    };
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    limit(open + 8);
    let mut held = Vec::new();
    for _ in 0..64 {
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            use std::io::Write;
            let _ = s.write_all(b"GET /metr");
            held.push(s);
        }
    }
    wait_until(
        Duration::from_secs(30),
        "an accept failing for descriptors",
        || p.log_text().contains("Too many open files"),
    );
    assert!(p.still_running(), "{}", p.log_text());
    drop(held);
    wait_until(Duration::from_secs(30), "/healthz answering again", || {
        try_http_get(&addr, "/healthz").is_ok_and(|(s, _)| s == 200)
    });
    let metrics = http_get(&addr, "/metrics").1;
    assert!(metrics.contains("vast_messages_in_total"), "{metrics}");

    // The pipeline went on too: records produced now arrive.
    limit(4096);
    produce(&broker.addr, "raw-logs", &generated("raw-logs", 20, 0, 5));
    wait_until(Duration::from_secs(60), "the records delivered", || {
        let m = http_get(&addr, "/metrics").1;
        metric(
            &m,
            "vast_rows_out_total{pipeline=\"raw-logs\",topic=\"raw-logs\",table=\"events\"}",
        ) >= 20.0
    });
    p.signal(15);
    assert!(
        p.wait(Duration::from_secs(30)).success(),
        "{}",
        p.log_text()
    );
}
