//! Sink and broker faults end to end: a Parquet directory that becomes unwritable mid-run, and
//! a full disk (clear error, no commit past what landed, recovery when fixed), and a broker
//! that goes away and comes back (the processor reconnects by itself).

use std::collections::HashSet;
use std::time::Duration;
use vast_processor::model::Table;
use vast_processor_tests::*;

const VP: &str = env!("CARGO_BIN_EXE_vp-test");

fn landed(data: &std::path::Path) -> HashSet<(i64, i64)> {
    rows(data, Table::Events)
        .iter()
        .map(|r| {
            (
                r["source_partition"].as_i64().unwrap(),
                r["source_offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Stop the processor gracefully, then: every produced record landed once (by id) and the
/// group's committed offsets are the end offsets.
fn stop_and_check_exactly_once(
    p: &mut Processor,
    broker: &Broker,
    group: &str,
    data: &std::path::Path,
    produced: &[Produced],
) {
    p.signal(15);
    assert!(
        p.wait(Duration::from_secs(30)).success(),
        "{}",
        p.log_text()
    );
    let all = rows(data, Table::Events);
    let ids: HashSet<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), produced.len());
    assert_eq!(
        committed(&broker.addr, group, "raw-logs", 2),
        end_offsets(produced)
    );
}

/// A Parquet directory made unwritable by putting a file in its place (tests run as root,
/// which chmod does not stop); `restore` puts the directory back.
struct Stalled {
    data: std::path::PathBuf,
    moved: std::path::PathBuf,
}

impl Stalled {
    fn stall(data: &std::path::Path) -> Stalled {
        let moved = data.with_extension("moved");
        std::fs::rename(data, &moved).unwrap();
        std::fs::write(data, b"not a directory").unwrap();
        Stalled {
            data: data.to_path_buf(),
            moved,
        }
    }

    fn moved(&self) -> &std::path::Path {
        &self.moved
    }

    fn restore(self) {
        std::fs::remove_file(&self.data).unwrap();
        std::fs::rename(&self.moved, &self.data).unwrap();
    }
}

#[test]
fn an_unwritable_parquet_directory_holds_commits_back_and_recovers() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 2);
    broker.create_topic("raw-logs-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = test_config(&broker, "e2e-disk", &["raw-logs"], "")
        .replace("max_rows = 5000", "max_rows = 100");
    let mut p = Processor::start(VP, dir.path(), &cfg, &data, &[]);
    p.wait_joined("group join");
    let mut produced = produce(&broker.addr, "raw-logs", &generated("raw-logs", 300, 0, 31));
    wait_until(Duration::from_secs(60), "first records", || {
        landed(&data).len() == 300
    });

    // The data directory becomes a file: every write fails.
    let stalled = Stalled::stall(&data);
    produced.extend(produce(
        &broker.addr,
        "raw-logs",
        &generated("raw-logs", 300, 0, 32),
    ));
    wait_until(
        Duration::from_secs(30),
        "the failure to be reported",
        || {
            p.log_text().contains("the sink failed; retrying")
                || p.log_text().contains("will retry")
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let before = landed(stalled.moved());
    for (part, next) in committed(&broker.addr, "e2e-disk", "raw-logs", 2) {
        for off in 0..next {
            assert!(
                before.contains(&(part as i64, off)),
                "offset {part}/{off} committed while the disk was failing"
            );
        }
    }
    assert_eq!(
        before.len(),
        300,
        "nothing new can land while the directory is broken"
    );

    // Fixed: everything lands, once.
    stalled.restore();
    wait_until(Duration::from_secs(60), "recovery", || {
        landed(&data).len() == produced.len()
    });
    stop_and_check_exactly_once(&mut p, &broker, "e2e-disk", &data, &produced);
    assert!(
        p.log_text().contains("cannot create"),
        "the error names the failing path"
    );
}

/// Set the soft file-size limit of process `pid` (bytes; `None` = unlimited).
fn limit_file_size(pid: u32, bytes: Option<u64>) {
    let lim = libc::rlimit {
        rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit reads `lim` and writes nothing (old limit pointer is null).
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// A full disk: the processor's file-size limit is cut to 4 KiB, so every Parquet file it
/// writes fails part-way (EFBIG, as a full filesystem fails with ENOSPC). Works for any user,
/// unlike mounting a small tmpfs.
#[test]
fn a_full_disk_holds_commits_back_and_recovers() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 2);
    broker.create_topic("raw-logs-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = test_config(&broker, "e2e-full", &["raw-logs"], "")
        .replace("max_rows = 5000", "max_rows = 100");
    let mut p = Processor::start(VP, dir.path(), &cfg, &data, &[]);
    p.wait_joined("group join");
    let admin = admin_addr(&p.log_text()).expect("admin address in the log");
    let mut produced = produce(&broker.addr, "raw-logs", &generated("raw-logs", 300, 0, 41));
    wait_until(Duration::from_secs(60), "first records", || {
        landed(&data).len() == 300
    });

    // The disk is full. (The log file is past 4 KiB too, so the processor's own log lines
    // fail from here on: the failure is read from /metrics.)
    limit_file_size(p.pid(), Some(4096));
    produced.extend(produce(
        &broker.addr,
        "raw-logs",
        &generated("raw-logs", 300, 0, 42),
    ));
    let failures = || {
        let (_, text) = http_get(&admin, "/metrics");
        let labels = "{pipeline=\"raw-logs\",topic=\"raw-logs\"}";
        metric(&text, &format!("vast_sink_failures_total{labels}"))
    };
    wait_until(Duration::from_secs(30), "the write failures", || {
        failures() >= 2.0
    });
    assert!(p.still_running(), "a full disk must not stop the process");
    let before = landed(&data);
    assert_eq!(before.len(), 300, "nothing new can land on a full disk");
    for (part, next) in committed(&broker.addr, "e2e-full", "raw-logs", 2) {
        for off in 0..next {
            assert!(
                before.contains(&(part as i64, off)),
                "offset {part}/{off} committed while the disk was full"
            );
        }
    }

    // Space again: everything lands, once, and no partial file is left behind.
    limit_file_size(p.pid(), None);
    wait_until(Duration::from_secs(60), "recovery", || {
        landed(&data).len() == produced.len()
    });
    stop_and_check_exactly_once(&mut p, &broker, "e2e-full", &data, &produced);
    let mut leftovers = Vec::new();
    let mut stack = vec![data.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy().ends_with(".tmp") {
                leftovers.push(e.path());
            }
        }
    }
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
}

#[test]
fn the_processor_reconnects_after_the_broker_restarts() {
    let mut broker = Broker::start();
    broker.create_topic("raw-logs", 1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = test_config(&broker, "e2e-restart", &["raw-logs"], "")
        .replace("dead_letter_topic = \"raw-logs-dlq\"\n", "");
    let mut p = Processor::start(VP, dir.path(), &cfg, &data, &[]);
    p.wait_joined("group join");
    produce(&broker.addr, "raw-logs", &generated("raw-logs", 100, 0, 41));
    wait_until(Duration::from_secs(60), "first records", || {
        rows(&data, Table::Events).len() == 100
    });

    // The broker goes away (its in-memory log with it) and comes back on the same address.
    broker.restart();
    assert!(
        p.still_running(),
        "the processor exited when the broker went away:\n{}",
        p.log_text()
    );
    broker.create_topic("raw-logs", 1);
    produce(&broker.addr, "raw-logs", &generated("raw-logs", 100, 0, 42));
    wait_until(
        Duration::from_secs(120),
        "records after the restart",
        || rows(&data, Table::Events).len() == 200,
    );
    p.signal(15);
    assert!(
        p.wait(Duration::from_secs(30)).success(),
        "{}",
        p.log_text()
    );
}

/// A dead letter over the producer's `message.max.bytes` (a 999,910-byte malformed record
/// plus the error headers) was retried as temporary forever: lag stayed 100/100, the good
/// rows were written but never committed. It is fitted instead: the whole letter in the
/// dead-letter files, a copy with its value cut (and headers saying so) on the topic, and
/// the partition moves on.
#[test]
fn a_dead_letter_too_large_for_the_topic_is_cut_to_fit_and_kept_whole_in_files() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 1);
    broker.create_topic("raw-logs-dlq", 1);
    let mut records = generated("raw-logs", 99, 0, 41);
    let mut big = b"{\"not json".to_vec();
    big.resize(999_910, b'x');
    records.insert(40, (None, big));
    let produced = produce(&broker.addr, "raw-logs", &records);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = test_config(&broker, "e2e-big-letter", &["raw-logs"], "");
    let mut p = Processor::start(VP, dir.path(), &cfg, &data, &["--stop-after-idle", "3"]);
    assert!(
        p.wait(Duration::from_secs(120)).success(),
        "{}",
        p.log_text()
    );
    assert_eq!(rows(&data, Table::Events).len(), 99);
    assert_eq!(
        committed(&broker.addr, "e2e-big-letter", "raw-logs", 1),
        end_offsets(&produced)
    );
    let letters = read_topic(&broker.addr, "raw-logs-dlq", 1, 1, Duration::from_secs(20));
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(l.headers["x-vast-truncated-value-bytes"], "999910");
    assert_eq!(l.headers["x-vast-source-offset"], "40");
    assert!(l.payload.len() < 999_910 && l.payload.starts_with(b"{\"not json"));
    let files = vast_processor::sink::deadletter::read_dead_letter_files(&data);
    assert_eq!(files.len(), 1, "{files:?}");
    let whole = files[0]["value_base64"].as_str().unwrap();
    assert_eq!(
        whole.len(),
        999_910_usize.div_ceil(3) * 4,
        "the whole value, base64"
    );
    assert_eq!(files[0]["source_offset"], 40);
}

/// With the sink failing, SIGTERM took 20.2 s at `shutdown_timeout_s = 10`: the shutdown
/// flush timed out, then the revoke at consumer close flushed and timed out again. The whole
/// stop, revoke included, keeps to the bound; what was not delivered is not committed.
#[test]
fn a_stop_while_the_sink_fails_keeps_to_the_shutdown_timeout() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 2);
    broker.create_topic("raw-logs-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = test_config(&broker, "e2e-stop-failing", &["raw-logs"], "")
        .replace("shutdown_timeout_s = 20", "shutdown_timeout_s = 5")
        .replace("max_rows = 5000", "max_rows = 100");
    let mut p = Processor::start(VP, dir.path(), &cfg, &data, &[]);
    p.wait_joined("group join");
    let first = produce(&broker.addr, "raw-logs", &generated("raw-logs", 200, 0, 51));
    wait_until(Duration::from_secs(60), "first records", || {
        landed(&data).len() == first.len()
    });
    let stalled = Stalled::stall(&data);
    produce(&broker.addr, "raw-logs", &generated("raw-logs", 300, 0, 52));
    wait_until(
        Duration::from_secs(30),
        "the failure to be reported",
        || p.log_text().contains("will retry"),
    );
    p.signal(15);
    p.wait(Duration::from_secs(60));
    // One wait for the shutdown flush; the revoke at consumer close no longer waits a second
    // timeout: it finds the stop's deadline passed and gives up at once.
    let log = p.log_text();
    assert!(log.contains("shutdown did not finish within 5s"), "{log}");
    assert!(log.contains("the stop's deadline has passed"), "{log}");
    assert!(!log.contains("workers did not flush within"), "{log}");
    // Nothing past what landed was committed.
    let landed = landed(stalled.moved());
    for (part, next) in committed(&broker.addr, "e2e-stop-failing", "raw-logs", 2) {
        for off in 0..next {
            assert!(landed.contains(&(part as i64, off)), "{part}/{off}");
        }
    }
}

/// Raw-logs records of about `kib` KiB each (a long `payload.text`).
fn big_raw_logs(n: usize, kib: usize) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let text = "A".repeat(kib * 1024);
    (0..n)
        .map(|i| {
            let v = serde_json::json!({
                "timestamp": "2025-10-14T16:01:47Z", "source": "postgresql", "data_type": "log",
                "host": format!("pg-{i}"), "payload": {"event_type": "dump", "text": text},
            });
            (None, serde_json::to_vec(&v).unwrap())
        })
        .collect()
}

const RETRIES: &str = "vast_sink_retries_total{pipeline=\"raw-logs\",topic=\"raw-logs\"}";

#[test]
fn a_stalled_sink_holds_big_records_within_the_in_flight_bound() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 1);
    broker.create_topic("raw-logs-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bound = 8usize << 20;
    let cfg = test_config(
        &broker,
        "e2e-inflight",
        &["raw-logs"],
        &format!("workers = 1\nqueue_bytes = {bound}"),
    );
    let mut p = Processor::start(VP, dir.path(), &cfg, &data, &[]);
    p.wait_joined("group join");
    let first = produce(&broker.addr, "raw-logs", &generated("raw-logs", 20, 0, 61));
    wait_until(Duration::from_secs(60), "first records", || {
        landed(&data).len() == first.len()
    });
    let stalled = Stalled::stall(&data);
    // 100 MB of records against an 8 MiB bound: before, the worker took every record the
    // queue offered (up to 1,024 at once, uncounted once taken) and held all of them.
    let big = produce(&broker.addr, "raw-logs", &big_raw_logs(200, 500));
    let admin = admin_addr(&p.log_text()).expect("admin address");
    let scrape = || http_get(&admin, "/metrics").1;
    wait_until(Duration::from_secs(60), "the source to hold back", || {
        let m = scrape();
        metric(&m, "vast_paused_partitions") >= 1.0 && metric(&m, RETRIES) >= 2.0
    });
    // Wait out a few more retries: nothing more may be taken meanwhile.
    let retries = metric(&scrape(), RETRIES);
    wait_until(Duration::from_secs(60), "more retries", || {
        metric(&scrape(), RETRIES) >= retries + 2.0
    });
    let m = scrape();
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap();
    let rss: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .collect();
    println!(
        "processor while the sink stalls: {rss:?}, in flight max {} B",
        metric(&m, "vast_inflight_bytes_max")
    );
    let limit = metric(&m, "vast_inflight_limit_bytes");
    let max = metric(&m, "vast_inflight_bytes_max");
    assert_eq!(limit, bound as f64, "{m}");
    // The bound is checked before a record is taken; one transform call's group (a quarter
    // of the bound) and its rows may be counted twice while it runs.
    assert!(max <= 2.0 * bound as f64, "in flight at most {max} B: {m}");
    assert!(
        max >= bound as f64 / 2.0,
        "the bound was not reached: {max} B"
    );
    assert!(
        metric(&m, "vast_inflight_bytes") <= 2.0 * bound as f64,
        "{m}"
    );
    // Fixed: everything lands and is committed, once.
    stalled.restore();
    let end = end_offsets(&[first, big].concat());
    wait_until(
        Duration::from_secs(120),
        "the backlog to be committed",
        || committed(&broker.addr, "e2e-inflight", "raw-logs", 1) == end,
    );
    p.signal(15);
    assert!(
        p.wait(Duration::from_secs(30)).success(),
        "{}",
        p.log_text()
    );
    assert_eq!(landed(&data).len(), 220);
}

#[test]
fn a_rebalance_while_the_sink_fails_releases_the_partitions_and_the_group_goes_on() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 4);
    broker.create_topic("raw-logs-dlq", 1);
    let group = "e2e-rebalance-failing";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = test_config(&broker, group, &["raw-logs"], "")
        .replace("shutdown_timeout_s = 20", "shutdown_timeout_s = 5")
        .replace("max_rows = 5000", "max_rows = 100");
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let mut a = Processor::start(VP, &dir_a, &cfg, &data, &[]);
    a.wait_joined("first member");
    let mut produced = produce(&broker.addr, "raw-logs", &generated("raw-logs", 200, 0, 71));
    wait_until(Duration::from_secs(60), "first records", || {
        landed(&data).len() == produced.len()
    });
    let stalled = Stalled::stall(&data);
    produced.extend(produce(
        &broker.addr,
        "raw-logs",
        &generated("raw-logs", 300, 0, 72),
    ));
    wait_until(Duration::from_secs(30), "the sink failure", || {
        a.log_text().contains("retrying")
    });
    // A second member joins while every write fails: the first one's revoke cannot flush.
    let mut b = Processor::start(VP, &dir_b, &cfg, &data, &[]);
    wait_until(Duration::from_secs(90), "both members assigned", || {
        a.log_text().matches("partitions assigned").count() >= 2
            && b.log_text().contains("partitions assigned")
    });
    // Before, the first member exited here ("flush on revoke failed"), and every rebalance
    // of the outage was a restart; now it let go of what it held and stays in the group.
    assert!(a.still_running(), "{}", a.log_text());
    assert!(b.still_running(), "{}", b.log_text());
    assert!(
        a.log_text().contains("dropped what was held"),
        "{}",
        a.log_text()
    );
    // The sink comes back: the group commits everything, and every record landed.
    stalled.restore();
    let end = end_offsets(&produced);
    wait_until(Duration::from_secs(120), "everything committed", || {
        committed(&broker.addr, group, "raw-logs", 4) == end
    });
    let landed = landed(&data);
    for r in &produced {
        assert!(
            landed.contains(&(r.partition as i64, r.offset)),
            "{}/{}",
            r.partition,
            r.offset
        );
    }
    for p in [&mut a, &mut b] {
        p.signal(15);
        assert!(
            p.wait(Duration::from_secs(30)).success(),
            "{}",
            p.log_text()
        );
    }
}
