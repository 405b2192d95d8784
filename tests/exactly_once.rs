//! Exactly once into Parquet and VAST (issue 23): the offsets land with the rows, so kills, restarts
//! and rebalances leave each good record's rows in the table once, with no de-duplication
//! step. Kafka commits are made rare on purpose (`commit_interval_ms` of ten minutes), so
//! every kill lands after rows landed and before Kafka heard of them: the window where at
//! least once duplicates. The same run with `delivery = "at-least-once"` shows those
//! duplicates, so the checks can fail.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;
use vast_processor::model::Table;
use vast_processor::sink::vast::sigv4::Credentials;
use vast_processor_tests::*;
use vast_sim::{SimOptions, Simulator};

const VP: &str = env!("CARGO_BIN_EXE_vp-test");

fn config(broker: &Broker, group: &str, delivery: &str) -> String {
    test_config(
        broker,
        group,
        &["raw-logs"],
        &format!("delivery = \"{delivery}\""),
    )
    .replace("commit_interval_ms = 200", "commit_interval_ms = 600000")
    .replace("max_rows = 5000", "max_rows = 100")
}

/// What landed: rows, distinct ids, distinct source offsets, dead-lettered offsets.
struct Landed {
    rows: usize,
    ids: usize,
    offsets: HashSet<(i64, i64)>,
    dead: HashSet<(i64, i64)>,
}

/// Where the rows go: the Parquet files under the data directory, or the VAST simulator.
#[derive(Clone, Copy)]
enum Out<'a> {
    Parquet,
    Vast(&'a Simulator),
}

impl Out<'_> {
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Out::Parquet => Vec::new(),
            Out::Vast(sim) => vec![
                ("VAST_ENDPOINT", sim.endpoint()),
                ("VAST_ACCESS_KEY", "AK".into()),
                ("VAST_SECRET_KEY", "e2e-once-secret".into()),
                ("VAST_BUCKET", "vastdb".into()),
                ("VAST_SCHEMA", "observability".into()),
            ],
        }
    }

    fn rows(&self, data: &Path) -> Vec<serde_json::Value> {
        match self {
            Out::Parquet => rows(data, Table::Events),
            Out::Vast(sim) => vast_processor::cli::commands::batches_to_json(&sim.rows(
                "vastdb",
                "observability",
                "events",
            ))
            .unwrap(),
        }
    }
}

fn vast_sim() -> Simulator {
    Simulator::start(
        "127.0.0.1:0",
        SimOptions::new(
            Credentials::new("AK", "e2e-once-secret"),
            vec!["vastdb".into()],
        ),
    )
    .unwrap()
}

fn landed(out: Out<'_>, data: &Path, broker: &Broker, produced: &[Produced]) -> Landed {
    let all = out.rows(data);
    let ids: HashSet<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let offsets: HashSet<(i64, i64)> = all
        .iter()
        .map(|r| {
            (
                r["source_partition"].as_i64().unwrap(),
                r["source_offset"].as_i64().unwrap(),
            )
        })
        .collect();
    let letters = read_topic(
        &broker.addr,
        "raw-logs-dlq",
        1,
        produced.len() / 25,
        Duration::from_secs(30),
    );
    let dead = letters
        .iter()
        .map(|l| {
            (
                l.headers["x-vast-source-partition"].parse().unwrap(),
                l.headers["x-vast-source-offset"].parse().unwrap(),
            )
        })
        .collect();
    Landed {
        rows: all.len(),
        ids: ids.len(),
        offsets,
        dead,
    }
}

/// Kill the processor with SIGKILL `kills` times at pseudo-random moments under load,
/// restarting it each time, then let a last run drain the topic.
fn kills_under_load(
    out: Out<'_>,
    group: &str,
    delivery: &str,
    kills: u32,
) -> (Landed, Vec<Produced>, Broker, tempfile::TempDir) {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 2);
    broker.create_topic("raw-logs-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&broker, group, delivery);
    let data = dir.path().join("data");
    let load = Load::start(
        &broker.addr,
        "raw-logs",
        30,
        25,
        700,
        Duration::from_millis(60),
    );
    let mut rng = vast_processor::generate::Rng::new(23);
    for _ in 0..kills {
        let mut p = Processor::start_with_env(VP, dir.path(), &cfg, &data, &[], &out.env());
        p.wait_joined("group join");
        std::thread::sleep(Duration::from_millis(300 + rng.below(1500)));
        p.signal(9);
        p.wait(Duration::from_secs(10));
    }
    let produced = load.finish();
    let mut last = Processor::start_with_env(
        VP,
        dir.path(),
        &cfg,
        &data,
        &["--stop-after-idle", "3"],
        &out.env(),
    );
    assert!(
        last.wait(Duration::from_secs(120)).success(),
        "{}",
        last.log_text()
    );
    let logs: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    // The restarts started past what had landed (the Kafka commits were ten minutes away).
    let seeks: usize = logs
        .iter()
        .map(|l| {
            l.matches("starting after the rows already landed in the sink")
                .count()
        })
        .sum();
    // Quiet logs: hundreds of dead letters are a few INFO lines per run (the first, then a
    // summary per 10 s), and the dead-letter producer gets no consumer-only property.
    let letter_lines = logs
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| !l.contains(" DEBUG ") && l.contains("dead-lettered"))
        .count();
    let letters = produced.len() / 25;
    assert!(
        letter_lines <= 4 * logs.len() && letter_lines < letters / 10,
        "{letter_lines} log lines for {letters} dead letters in {} runs",
        logs.len()
    );
    assert!(
        logs.iter().all(|l| !l.contains("CONFWARN")),
        "a librdkafka configuration warning"
    );
    if delivery == "exactly-once" {
        assert!(seeks >= kills as usize, "{seeks} seeks past landed rows");
    } else {
        assert_eq!(seeks, 0, "at least once seeks by Kafka's commits only");
    }
    (
        landed(out, &data, &broker, &produced),
        produced,
        broker,
        dir,
    )
}

fn assert_complete(l: &Landed, produced: &[Produced]) {
    for p in produced {
        let key = (p.partition as i64, p.offset);
        assert!(
            l.offsets.contains(&key) || l.dead.contains(&key),
            "offset {}/{} lost",
            p.partition,
            p.offset
        );
    }
    assert_eq!(
        l.offsets.len() + l.dead.len(),
        produced.len(),
        "rows from {} offsets + {} dead letters",
        l.offsets.len(),
        l.dead.len()
    );
}

#[test]
fn ten_kills_between_the_sink_and_the_kafka_commit_leave_each_row_once() {
    let (l, produced, broker, dir) =
        kills_under_load(Out::Parquet, "e2e-once-kills", "exactly-once", 10);
    let dir = dir.path();
    assert_complete(&l, &produced);
    // Each valid record is one row: counted as a dashboard counts, no DISTINCT.
    assert_eq!(l.rows, l.ids, "duplicated rows");
    assert_eq!(l.rows, l.offsets.len(), "rows per record");
    let ends = end_offsets(&produced);
    assert_eq!(
        committed(&broker.addr, "e2e-once-kills", "raw-logs", 2),
        ends
    );
    // `check` shows the stored offsets next to Kafka's: both at the end now.
    let out = std::process::Command::new(VP)
        .current_dir(dir)
        .args(["check", "--config", "pipelines.toml"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "delivery: exactly once (group e2e-once-kills): offsets stored with the rows"
        ),
        "{text}"
    );
    for (p, end) in ends {
        let line = format!("raw-logs/{p}: stored next {end}, Kafka committed {end}");
        assert!(text.contains(&line), "{line} in:\n{text}");
    }
}

#[test]
fn at_least_once_duplicates_in_the_same_window() {
    let (l, produced, _broker, _dir) =
        kills_under_load(Out::Parquet, "e2e-once-control", "at-least-once", 3);
    assert_complete(&l, &produced);
    assert!(
        l.rows > l.ids,
        "kills after rows landed and before the Kafka commit re-land rows: {} rows, {} ids",
        l.rows,
        l.ids
    );
}

/// Two and three members of one group writing into one data directory (or one VAST
/// schema), members joining, leaving (SIGTERM) and dying (SIGKILL) while records keep
/// arriving.
fn members_joining_leaving_and_dying(out: Out<'_>, group: &str) {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 4);
    broker.create_topic("raw-logs-dlq", 1);
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let cfg = config(&broker, group, "exactly-once");
    let dirs: Vec<_> = (0..3)
        .map(|i| {
            let d = root.path().join(format!("member-{i}"));
            std::fs::create_dir(&d).unwrap();
            d
        })
        .collect();
    let env = out.env();
    let start = |i: usize| Processor::start_with_env(VP, &dirs[i], &cfg, &data, &[], &env);
    let load = Load::start(
        &broker.addr,
        "raw-logs",
        40,
        25,
        900,
        Duration::from_millis(50),
    );
    let pause = |ms| std::thread::sleep(Duration::from_millis(ms));
    let mut a = start(0);
    a.wait_joined("a joins");
    pause(1500);
    let mut b = start(1);
    b.wait_joined("b joins");
    pause(1500);
    let mut c = start(2);
    c.wait_joined("c joins");
    pause(2000);
    // b leaves cleanly, c dies, b comes back, a dies.
    b.signal(15);
    assert!(
        b.wait(Duration::from_secs(30)).success(),
        "{}",
        b.log_text()
    );
    pause(1000);
    c.signal(9);
    c.wait(Duration::from_secs(10));
    pause(1000);
    let mut b = start(1);
    b.wait_joined("b joins again");
    pause(1500);
    a.signal(9);
    a.wait(Duration::from_secs(10));
    pause(1500);
    let produced = load.finish();
    b.signal(15);
    assert!(
        b.wait(Duration::from_secs(30)).success(),
        "{}",
        b.log_text()
    );
    let mut last =
        Processor::start_with_env(VP, &dirs[0], &cfg, &data, &["--stop-after-idle", "3"], &env);
    assert!(
        last.wait(Duration::from_secs(120)).success(),
        "{}",
        last.log_text()
    );
    let l = landed(out, &data, &broker, &produced);
    assert_complete(&l, &produced);
    assert_eq!(l.rows, l.ids, "duplicated rows");
    assert_eq!(l.rows, l.offsets.len(), "rows per record");
    let per_partition: HashMap<i32, i64> = end_offsets(&produced);
    assert_eq!(committed(&broker.addr, group, "raw-logs", 4), per_partition);
}

#[test]
fn members_joining_leaving_and_dying_leave_each_row_once_in_parquet() {
    members_joining_leaving_and_dying(Out::Parquet, "e2e-once-members");
}

#[test]
fn members_joining_leaving_and_dying_leave_each_row_once_in_vast() {
    let sim = vast_sim();
    members_joining_leaving_and_dying(Out::Vast(&sim), "e2e-once-members-vast");
}

/// The same ten kills into VAST: the offsets row is written in the rows' transaction, so
/// the table holds each record's rows once; `check` shows the table's offsets.
#[test]
fn ten_kills_into_vast_leave_each_row_once() {
    let sim = vast_sim();
    let out = Out::Vast(&sim);
    let (l, produced, broker, dir) = kills_under_load(out, "e2e-once-vast", "exactly-once", 10);
    assert_complete(&l, &produced);
    assert_eq!(l.rows, l.ids, "duplicated rows");
    assert_eq!(l.rows, l.offsets.len(), "rows per record");
    let ends = end_offsets(&produced);
    assert_eq!(
        committed(&broker.addr, "e2e-once-vast", "raw-logs", 2),
        ends
    );
    let out_text = std::process::Command::new(VP)
        .current_dir(dir.path())
        .args(["check", "--config", "pipelines.toml"])
        .envs(out.env())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out_text.stdout);
    for (p, end) in ends {
        let line = format!("raw-logs/{p}: stored next {end}, Kafka committed {end}");
        assert!(text.contains(&line), "{line} in:\n{text}");
    }
}

/// At least once into VAST in the same window duplicates (the check above can fail).
#[test]
fn at_least_once_into_vast_duplicates_in_the_same_window() {
    let sim = vast_sim();
    let (l, produced, _broker, _dir) =
        kills_under_load(Out::Vast(&sim), "e2e-once-vast-control", "at-least-once", 3);
    assert_complete(&l, &produced);
    assert!(l.rows > l.ids, "{} rows, {} ids", l.rows, l.ids);
}
