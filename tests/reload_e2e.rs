//! Hot reload under continuous load through a real broker: a pipeline's `.wasm` file is
//! replaced 20 times with valid versions, invalid bytes, a component of another world, a
//! module whose `init` fails, one that traps on every message and one that fails half of
//! them, using every way tools write files. Nothing is lost or duplicated, every row comes
//! from exactly one version, and no broken candidate ever processes a live message.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use vast_processor_tests::*;

const VP: &str = env!("CARGO_BIN_EXE_vp-test");

#[derive(Clone, Copy, Debug)]
enum Pattern {
    InPlace,
    TruncateThenWrite,
    TempThenRename,
    DeleteThenCreate,
}

fn write(path: &Path, bytes: &[u8], how: Pattern) {
    match how {
        Pattern::InPlace => {
            let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.write_all(bytes).unwrap();
            f.set_len(bytes.len() as u64).unwrap();
        }
        Pattern::TruncateThenWrite => {
            let mut f = std::fs::File::create(path).unwrap();
            let half = bytes.len() / 2;
            f.write_all(&bytes[..half]).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(50));
            f.write_all(&bytes[half..]).unwrap();
        }
        Pattern::TempThenRename => {
            let tmp = path.with_extension("wasm.tmp");
            std::fs::write(&tmp, bytes).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        Pattern::DeleteThenCreate => {
            std::fs::remove_file(path).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(path, bytes).unwrap();
        }
    }
}

fn hash12(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether the version label `v` (`name@<module>.<config and tables>`) names the module
/// `bytes`.
fn runs(v: &str, bytes: &[u8]) -> bool {
    v.contains(&format!("@{}.", hash12(bytes)))
}

/// A raw-logs pipeline whose transform is `transform_line`, watched for changes (200 ms
/// debounce) and shadow-checked on `shadow` messages before a swap.
fn reload_config(broker: &Broker, group: &str, transform_line: &str, shadow: u32) -> String {
    test_config(broker, group, &["raw-logs"], "")
        .replace("transform = \"raw-logs\"", transform_line)
        .replace(
            "[runtime]",
            &format!("[reload]\ndebounce_ms = 200\nshadow_messages = {shadow}\n[runtime]"),
        )
}

fn transforms(addr: &str) -> Value {
    serde_json::from_str(&http_get(addr, "/transforms").1).unwrap()
}

#[test]
fn twenty_replacements_under_load_lose_nothing_and_let_nothing_broken_in() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 2);
    broker.create_topic("raw-logs-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("transforms")).unwrap();
    let wasm = dir.path().join("transforms/raw-logs.wasm");
    let raw_logs = vast_guest_artifacts::RAW_LOGS.to_vec();
    std::fs::write(&wasm, &raw_logs).unwrap();
    let cfg = reload_config(
        &broker,
        "e2e-reload",
        "transform = \"transforms/raw-logs.wasm\"",
        100,
    );
    let data = dir.path().join("data");
    let mut p = Processor::start(VP, dir.path(), &cfg, &data, &[]);
    p.wait_joined("group join");
    let addr = admin_addr(&p.log_text()).expect("admin address in the log");

    // Continuous load.
    let load = Load::start(
        &broker.addr,
        "raw-logs",
        40,
        0,
        1,
        Duration::from_millis(100),
    );
    wait_until(Duration::from_secs(30), "traffic", || {
        rows(&data, vast_processor::model::Table::Events).len() > 100
    });

    let team = std::fs::read(vast_test_guests::TEAM_ENRICH_PATH).unwrap();
    let init_fails = std::fs::read(vast_test_guests::INIT_FAILS_PATH).unwrap();
    let traps = std::fs::read(vast_test_guests::TRAPS_ALWAYS_PATH).unwrap();
    let half = std::fs::read(vast_test_guests::FAILS_HALF_PATH).unwrap();
    let garbage = b"this is not a wasm component at all".to_vec();
    let other_world = b"\0asm\x0d\0\x01\0".to_vec();
    use Pattern::*;
    // (bytes, how, accepted?)
    let steps: Vec<(&Vec<u8>, Pattern, bool)> = vec![
        (&team, TempThenRename, true),
        (&garbage, InPlace, false),
        (&other_world, TruncateThenWrite, false),
        (&init_fails, DeleteThenCreate, false),
        (&traps, TempThenRename, false),
        (&half, InPlace, false),
        (&raw_logs, TruncateThenWrite, true),
        (&garbage, DeleteThenCreate, false),
        (&team, InPlace, true),
        (&traps, TruncateThenWrite, false),
        (&other_world, TempThenRename, false),
        (&raw_logs, DeleteThenCreate, true),
        (&half, TempThenRename, false),
        (&init_fails, InPlace, false),
        (&team, TruncateThenWrite, true),
        (&garbage, TempThenRename, false),
        (&traps, DeleteThenCreate, false),
        (&half, TruncateThenWrite, false),
        (&other_world, DeleteThenCreate, false),
        (&raw_logs, TempThenRename, true),
    ];
    let broken = [&init_fails, &traps, &half];
    let mut accepted = 0;
    for (i, (bytes, how, ok)) in steps.iter().enumerate() {
        let before = transforms(&addr)[0]["last_reload"]["at_unix_ms"]
            .as_u64()
            .unwrap();
        write(&wasm, bytes, *how);
        wait_until(
            Duration::from_secs(20),
            &format!("step {i} ({how:?}) to be decided"),
            || {
                transforms(&addr)[0]["last_reload"]["at_unix_ms"]
                    .as_u64()
                    .unwrap()
                    > before
            },
        );
        let t = transforms(&addr);
        let result = t[0]["last_reload"]["result"].as_str().unwrap().to_string();
        assert_eq!(
            result == "accepted",
            *ok,
            "step {i} ({how:?}): {t}\n{}",
            p.log_text()
                .lines()
                .filter(|l| l.contains("reload")
                    || l.contains("swapped")
                    || l.contains("rejected")
                    || l.contains("deleted"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        if *ok {
            accepted += 1;
            assert!(
                runs(t[0]["running_version"].as_str().unwrap(), bytes),
                "{t}"
            );
        }
        // Let traffic flow through whatever runs now.
        std::thread::sleep(Duration::from_millis(400));
    }
    let produced = load.finish();
    let t = transforms(&addr);
    assert_eq!(t[0]["accepted"].as_u64(), Some(accepted), "{t}");
    assert_eq!(
        t[0]["rejected"].as_u64(),
        Some(steps.len() as u64 - accepted),
        "{t}"
    );
    let metrics = http_get(&addr, "/metrics").1;
    assert_eq!(
        metric(
            &metrics,
            "vast_reloads_total{pipeline=\"raw-logs\",result=\"accepted\"}"
        ),
        accepted as f64
    );
    assert!(
        metric(
            &metrics,
            "vast_reload_swap_pause_seconds_count{pipeline=\"raw-logs\",topic=\"raw-logs\"}"
        ) >= 1.0
    );

    // The pipeline never stopped: everything lands, then a clean stop.
    let want = produced.len();
    wait_until(Duration::from_secs(90), "every record to land", || {
        let offs: HashSet<(i64, i64)> = rows(&data, vast_processor::model::Table::Events)
            .iter()
            .map(|r| {
                (
                    r["source_partition"].as_i64().unwrap(),
                    r["source_offset"].as_i64().unwrap(),
                )
            })
            .collect();
        offs.len() >= want
    });
    assert_eq!(http_get(&addr, "/readyz").0, 200);
    p.signal(15);
    assert!(
        p.wait(Duration::from_secs(30)).success(),
        "{}",
        p.log_text()
    );

    let all = rows(&data, vast_processor::model::Table::Events);
    let mut versions: HashMap<(i64, i64), HashSet<String>> = HashMap::new();
    let mut ids = HashSet::new();
    for r in &all {
        let key = (
            r["source_partition"].as_i64().unwrap(),
            r["source_offset"].as_i64().unwrap(),
        );
        let v = r["transform_version"].as_str().unwrap().to_string();
        assert!(
            !broken.iter().any(|b| runs(&v, b)),
            "a broken candidate processed a live message: {v}"
        );
        versions.entry(key).or_default().insert(v);
        ids.insert(r["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), all.len(), "duplicated rows");
    for p in &produced {
        let v = versions
            .get(&(p.partition as i64, p.offset))
            .unwrap_or_else(|| panic!("offset {}/{} lost", p.partition, p.offset));
        assert_eq!(
            v.len(),
            1,
            "offset {}/{} produced by several versions: {v:?}",
            p.partition,
            p.offset
        );
    }
    let seen: HashSet<&String> = versions.values().flatten().collect();
    assert!(
        seen.iter().any(|v| runs(v, &team)),
        "the new version never ran: {seen:?}"
    );
    assert_eq!(
        committed(&broker.addr, "e2e-reload", "raw-logs", 2),
        end_offsets(&produced)
    );
}

/// The team each `pg-1` row got, in source-offset order (one partition).
fn pg1_teams(data: &Path) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = rows(data, vast_processor::model::Table::Events)
        .iter()
        .filter(|r| r["entity_id"] == "pg-1")
        .map(|r| {
            let tags: Value = serde_json::from_str(r["tags"].as_str().unwrap()).unwrap();
            (
                r["source_offset"].as_i64().unwrap(),
                tags["team"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Once `team` appears for pg-1, no later offset has another team: the switch happened at a
/// batch boundary and stayed.
fn switched_for_good(teams: &[(i64, String)], team: &str) -> bool {
    match teams.iter().position(|(_, t)| t == team) {
        Some(i) => teams[i..].iter().all(|(_, t)| t == team),
        None => false,
    }
}

fn replace_file(path: &Path, text: &str) {
    // Editors and config tools write a temp file and rename it over the original.
    let tmp = path.with_extension("edit.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Editing the enrichment table and then the pipeline's config on disk, while records flow,
/// swaps them in (the watcher picks the edits up by itself); an edit that needs a restart is
/// refused and changes nothing; nothing is lost or duplicated.
#[test]
fn enrichment_and_config_edits_on_disk_are_swapped_under_load() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 1);
    broker.create_topic("raw-logs-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("transforms")).unwrap();
    std::fs::write(
        dir.path().join("transforms/team.wasm"),
        std::fs::read(vast_test_guests::TEAM_ENRICH_PATH).unwrap(),
    )
    .unwrap();
    let csv = |team: &str| format!("entity_id,team,owner\npg-1,{team},ann@example.com\n");
    std::fs::write(dir.path().join("teams.csv"), csv("alpha")).unwrap();
    std::fs::write(dir.path().join("teams2.csv"), csv("gamma")).unwrap();
    let cfg = reload_config(
        &broker,
        "e2e-reload-config",
        "transform = \"transforms/team.wasm\"\nconfig = { table = \"teams\" }",
        50,
    ) + "[pipelines.enrichment.teams]\npath = \"teams.csv\"\nkey = \"entity_id\"\n";
    let data = dir.path().join("data");
    let mut p = Processor::start(VP, dir.path(), &cfg, &data, &[]);
    p.wait_joined("group join");
    let load = Load::start(
        &broker.addr,
        "raw-logs",
        30,
        0,
        7,
        Duration::from_millis(100),
    );
    wait_until(Duration::from_secs(30), "alpha rows", || {
        pg1_teams(&data).iter().any(|(_, t)| t == "alpha")
    });

    // 1. The enrichment file changes: new rows carry the new team.
    replace_file(&dir.path().join("teams.csv"), &csv("beta"));
    wait_until(Duration::from_secs(30), "beta rows", || {
        switched_for_good(&pg1_teams(&data), "beta")
    });

    // 2. A change that needs a restart is refused; records keep flowing on the old config.
    let cfg_path = dir.path().join("pipelines.toml");
    replace_file(
        &cfg_path,
        &cfg.replace("commit_interval_ms = 200", "commit_interval_ms = 300"),
    );
    wait_until(Duration::from_secs(30), "the refusal", || {
        p.log_text().contains("needs a restart")
    });
    // Config-level refusals are in /transforms too, not only in the log.
    let addr = admin_addr(&p.log_text()).expect("admin address in the log");
    let last = &transforms(&addr)[0]["last_reload"];
    assert_eq!(last["result"], "config_refused", "{last}");
    assert!(
        last["detail"]
            .as_str()
            .unwrap()
            .contains("needs a restart ([runtime] changed)"),
        "{last}"
    );
    let seen = pg1_teams(&data).len();
    wait_until(
        Duration::from_secs(30),
        "more rows after the refusal",
        || pg1_teams(&data).len() > seen + 5,
    );
    assert!(switched_for_good(&pg1_teams(&data), "beta"));

    // 3. The pipeline's config and enrichment tables change together: the transform now looks
    // its teams up in another table.
    replace_file(
        &cfg_path,
        &cfg.replace("table = \"teams\"", "table = \"teams2\"")
            .replace(
                "[pipelines.enrichment.teams]",
                "[pipelines.enrichment.teams2]",
            )
            .replace("teams.csv", "teams2.csv"),
    );
    wait_until(Duration::from_secs(30), "gamma rows", || {
        switched_for_good(&pg1_teams(&data), "gamma")
    });

    let produced = load.finish();
    wait_until(Duration::from_secs(60), "every record to land", || {
        rows(&data, vast_processor::model::Table::Events).len() >= produced.len()
    });
    p.signal(15);
    assert!(
        p.wait(Duration::from_secs(30)).success(),
        "{}",
        p.log_text()
    );
    let all = rows(&data, vast_processor::model::Table::Events);
    let offsets: HashSet<i64> = all
        .iter()
        .map(|r| r["source_offset"].as_i64().unwrap())
        .collect();
    assert_eq!(all.len(), produced.len(), "no duplicates");
    for pr in &produced {
        assert!(offsets.contains(&pr.offset), "offset {} lost", pr.offset);
    }
    let teams = pg1_teams(&data);
    assert!(switched_for_good(&teams, "gamma"));
    assert!(teams.iter().any(|(_, t)| t == "alpha") && teams.iter().any(|(_, t)| t == "beta"));

    // Lineage names the whole version: the same module under three tables is three versions
    // in the rows, each team written under exactly one of them.
    let module = std::fs::read(vast_test_guests::TEAM_ENRICH_PATH).unwrap();
    let mut by_team: HashMap<String, HashSet<String>> = HashMap::new();
    for r in all.iter().filter(|r| r["entity_id"] == "pg-1") {
        let tags: Value = serde_json::from_str(r["tags"].as_str().unwrap()).unwrap();
        let v = r["transform_version"].as_str().unwrap().to_string();
        assert!(runs(&v, &module), "{v}");
        by_team
            .entry(tags["team"].as_str().unwrap_or("").to_string())
            .or_default()
            .insert(v);
    }
    let labels: HashSet<&String> = by_team.values().flatten().collect();
    assert_eq!(labels.len(), 3, "{by_team:?}");
    assert!(by_team.values().all(|v| v.len() == 1), "{by_team:?}");
    let swaps: Vec<String> = p
        .log_text()
        .lines()
        .filter(|l| l.contains("transform swapped"))
        .map(str::to_string)
        .collect();
    assert_eq!(swaps.len(), 2, "{swaps:?}");
    let field = |l: &str, k: &str| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_string)
    };
    for l in &swaps {
        let (from, to) = (field(l, "from="), field(l, "to="));
        assert!(
            from.is_some() && from != to,
            "a swap names two versions: {l}"
        );
    }
}

/// The rows of the events table and the dead letters of the process behind `addr`.
fn delivered(addr: &str) -> (f64, f64) {
    let m = http_get(addr, "/metrics").1;
    let rows = metric(
        &m,
        "vast_rows_out_total{pipeline=\"raw-logs\",topic=\"raw-logs\",table=\"events\"}",
    );
    let letters: f64 = m
        .lines()
        .filter(|l| l.starts_with("vast_dead_letters_total{pipeline=\"raw-logs\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    (rows, letters)
}

/// A candidate rejected while running stays on disk; a restart used to run it (34 of 40
/// valid records became trap dead letters). Now the deployment record keeps it out: the last
/// accepted version runs, `/transforms` names the refused file, and removing the state
/// directory returns to running the file.
#[test]
fn a_restart_does_not_bring_a_rejected_module_back() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 1);
    broker.create_topic("raw-logs-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("transforms")).unwrap();
    let wasm = dir.path().join("transforms/raw-logs.wasm");
    let good = vast_guest_artifacts::RAW_LOGS.to_vec();
    let traps = std::fs::read(vast_test_guests::TRAPS_ALWAYS_PATH).unwrap();
    std::fs::write(&wasm, &good).unwrap();
    let cfg = reload_config(
        &broker,
        "e2e-restart-rejected",
        "transform = \"transforms/raw-logs.wasm\"",
        50,
    );
    let data = dir.path().join("data");
    let start = || {
        let p = Processor::start(VP, dir.path(), &cfg, &data, &[]);
        let mut addr = String::new();
        wait_until(Duration::from_secs(60), "the admin server", || {
            addr = admin_addr(&p.log_text()).unwrap_or_default();
            !addr.is_empty()
        });
        (p, addr)
    };
    let stop = |mut p: Processor| {
        p.signal(15);
        assert!(
            p.wait(Duration::from_secs(30)).success(),
            "{}",
            p.log_text()
        );
    };

    let (p, addr) = start();
    p.wait_joined("group join");
    produce(&broker.addr, "raw-logs", &generated("raw-logs", 40, 0, 81));
    wait_until(Duration::from_secs(60), "the first rows", || {
        delivered(&addr).0 >= 40.0
    });
    write(&wasm, &traps, Pattern::TempThenRename);
    wait_until(Duration::from_secs(30), "the candidate rejected", || {
        transforms(&addr)[0]["last_reload"]["result"] == "rejected"
    });
    stop(p);

    // The trap module is still the file; the restart runs the last accepted version.
    let (p, addr) = start();
    p.wait_joined("group join after the restart");
    let t = transforms(&addr);
    assert!(
        runs(t[0]["running_version"].as_str().unwrap(), &good),
        "{t}"
    );
    assert_eq!(t[0]["last_reload"]["result"], "refused_at_start", "{t}");
    let refused = &t[0]["refused_file"];
    assert!(
        refused["file"].as_str().unwrap().ends_with("raw-logs.wasm"),
        "{t}"
    );
    assert!(
        refused["reason"].as_str().unwrap().contains("rejected"),
        "{t}"
    );
    assert!(p.log_text().contains("transform file refused at start"));
    produce(&broker.addr, "raw-logs", &generated("raw-logs", 40, 0, 82));
    wait_until(Duration::from_secs(60), "the valid records as rows", || {
        delivered(&addr).0 >= 40.0
    });
    assert_eq!(
        delivered(&addr),
        (40.0, 0.0),
        "no dead letters: the traps did not run"
    );
    stop(p);

    // Without the state directory the file is the truth again.
    std::fs::remove_dir_all(data.join(".state")).unwrap();
    let (p, addr) = start();
    let t = transforms(&addr);
    assert!(
        runs(t[0]["running_version"].as_str().unwrap(), &traps),
        "{t}"
    );
    stop(p);
}

/// `vast-processor transform ...` against a running processor.
fn vp(dir: &Path, args: &[&str], token: Option<&str>) -> (i32, String, String) {
    let mut c = std::process::Command::new(VP);
    c.current_dir(dir)
        .args(args)
        .env_remove("VAST_PROCESSOR_ADMIN_TOKEN");
    if let Some(t) = token {
        c.env("VAST_PROCESSOR_ADMIN_TOKEN", t);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// No way to ask "deploy this and tell me the decision", to roll back or pin by hand, or to
/// lift a ban; `previous_version` was null after a rollback. Now the CLI drives all of it
/// through the admin address, write endpoints behind the token, under load.
#[test]
fn deployments_are_driven_from_the_command_line() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 1);
    broker.create_topic("raw-logs-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("transforms")).unwrap();
    let wasm = d.join("transforms/raw-logs.wasm");
    let good = vast_guest_artifacts::RAW_LOGS.to_vec();
    let team = std::fs::read(vast_test_guests::TEAM_ENRICH_PATH).unwrap();
    let traps = std::fs::read(vast_test_guests::TRAPS_ALWAYS_PATH).unwrap();
    std::fs::write(&wasm, &good).unwrap();
    std::fs::write(d.join("team.wasm"), &team).unwrap();
    std::fs::write(d.join("traps.wasm"), &traps).unwrap();
    std::fs::write(d.join("garbage.wasm"), b"not a component").unwrap();
    // No shadow sample: a trapping version gets through to its probation, which must catch it.
    let cfg = reload_config(
        &broker,
        "e2e-cli",
        "transform = \"transforms/raw-logs.wasm\"",
        0,
    )
    .replace(
        "[reload]\n",
        "[reload]\nprobation_batches = 2\nprobation_records = 60\nprobation_seconds = 2\n",
    );
    let token = "tok-9f3a61";
    let data = d.join("data");
    let mut p = Processor::start_with_env(
        VP,
        d,
        &cfg,
        &data,
        &[],
        &[("VAST_PROCESSOR_ADMIN_TOKEN", token.to_string())],
    );
    p.wait_joined("group join");
    let addr = admin_addr(&p.log_text()).expect("admin address in the log");
    let load = Load::start(
        &broker.addr,
        "raw-logs",
        40,
        0,
        3,
        Duration::from_millis(100),
    );
    wait_until(Duration::from_secs(30), "traffic", || {
        rows(&data, vast_processor::model::Table::Events).len() > 40
    });
    let admin = ["--admin", addr.as_str()];
    let run = |args: &[&str], tok: Option<&str>| {
        let all: Vec<&str> = args.iter().copied().chain(admin).collect();
        vp(d, &all, tok)
    };

    let (code, out, _) = run(&["transform", "status"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("raw-logs: running raw-logs@{}.", hash12(&good))),
        "{out}"
    );

    // Writes need the token.
    let (code, _, err) = run(
        &["transform", "deploy", "--pipeline", "raw-logs", "team.wasm"],
        None,
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refused (403)"), "{err}");
    assert_eq!(std::fs::read(&wasm).unwrap(), good, "nothing was installed");

    // A good version, waited for through its probation.
    let (code, out, err) = run(
        &[
            "transform",
            "deploy",
            "--pipeline",
            "raw-logs",
            "team.wasm",
            "--wait",
        ],
        Some(token),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("raw-logs: accepted") && out.contains("passed its probation"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&wasm).unwrap(),
        team,
        "installed where the pipeline reads it"
    );

    // Not a component: rejected at once, exit 1 with the reason.
    let (code, out, _) = run(
        &[
            "transform",
            "deploy",
            "--pipeline",
            "raw-logs",
            "garbage.wasm",
        ],
        Some(token),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("raw-logs: rejected:"), "{out}");

    // A version that traps in production: rolled back in its probation.
    let (code, out, err) = run(
        &[
            "transform",
            "deploy",
            "--pipeline",
            "raw-logs",
            "traps.wasm",
            "--wait",
        ],
        Some(token),
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("rolled back"), "{out}");
    let t = &transforms(&addr)[0];
    assert!(runs(t["running_version"].as_str().unwrap(), &team), "{t}");
    assert!(runs(t["previous_version"].as_str().unwrap(), &traps), "{t}");
    let (_, out, _) = run(&["transform", "status"], None);
    assert!(
        out.contains(&format!("banned {}: rolled_back", hash12(&traps))),
        "{out}"
    );

    // A manual rollback to what ran before team: the good module.
    let (code, out, _) = run(&["transform", "rollback", "raw-logs"], Some(token));
    assert_eq!(code, 0, "{out}");
    let t = &transforms(&addr)[0];
    assert!(runs(t["previous_version"].as_str().unwrap(), &team), "{t}");

    // Pin the good module; a file written meanwhile is not deployed; unpin judges it.
    let (code, out, _) = run(
        &[
            "transform",
            "pin",
            "raw-logs",
            &format!("raw-logs@{}", hash12(&good)),
        ],
        Some(token),
    );
    assert_eq!(code, 0, "{out}");
    assert!(runs(
        transforms(&addr)[0]["running_version"].as_str().unwrap(),
        &good
    ));
    let (code, _, err) = run(
        &["transform", "deploy", "--pipeline", "raw-logs", "team.wasm"],
        Some(token),
    );
    assert_eq!(code, 1);
    assert!(err.contains("pinned"), "{err}");
    // team was rolled back by hand, so it is banned: unban it, then unpin to deploy the file.
    std::fs::write(&wasm, &team).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(runs(
        transforms(&addr)[0]["running_version"].as_str().unwrap(),
        &good
    ));
    let (code, out, _) = run(
        &["transform", "unban", "raw-logs", &hash12(&team)],
        Some(token),
    );
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = run(&["transform", "unpin", "raw-logs"], Some(token));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("then the transform file: accepted"), "{out}");
    assert!(runs(
        transforms(&addr)[0]["running_version"].as_str().unwrap(),
        &team
    ));

    let produced = load.finish();
    wait_until(Duration::from_secs(60), "every record to land", || {
        let (rows, letters) = delivered(&addr);
        rows + letters >= produced.len() as f64
    });
    p.signal(15);
    assert!(
        p.wait(Duration::from_secs(30)).success(),
        "{}",
        p.log_text()
    );
    assert!(
        !p.log_text().contains(token),
        "the token never appears in the log"
    );
    let all = rows(&data, vast_processor::model::Table::Events);
    let ids: HashSet<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "no duplicates");
}

/// A looping candidate held every reload for six minutes (one deadline per shadow record),
/// and a SIGTERM meanwhile logged `stopped` without exiting. Now a check is visible while
/// it runs, a newer file cancels it, and a shutdown cancels it too: here the CPU deadline is
/// 60 s, so without cancelling, neither the fix nor the exit could come before it.
#[test]
fn a_check_in_progress_is_cancelled_by_a_newer_file_and_by_shutdown() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 1);
    broker.create_topic("raw-logs-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("transforms")).unwrap();
    let wasm = dir.path().join("transforms/raw-logs.wasm");
    std::fs::write(&wasm, vast_guest_artifacts::RAW_LOGS).unwrap();
    let hostile = std::fs::read(vast_test_guests::HOSTILE_PATH).unwrap();
    let team = std::fs::read(vast_test_guests::TEAM_ENRICH_PATH).unwrap();
    // The check's own budget out of the way too: only cancelling can end the check early.
    let cfg = reload_config(
        &broker,
        "e2e-cancel",
        "transform = \"transforms/raw-logs.wasm\"",
        50,
    )
    .replace("[reload]\n", "[reload]\ncheck_budget_ms = 600000\n")
        + "[pipelines.limits]\ndeadline_ms = 60000\n";
    let data = dir.path().join("data");
    let mut p = Processor::start(VP, dir.path(), &cfg, &data, &[]);
    p.wait_joined("group join");
    let addr = admin_addr(&p.log_text()).expect("admin address in the log");
    // Records the hostile candidate loops on, in the shadow sample.
    let mut records = generated("raw-logs", 20, 0, 5);
    records.extend((0..5).map(|_| (None, b"loop".to_vec())));
    produce(&broker.addr, "raw-logs", &records);
    wait_until(Duration::from_secs(30), "the records delivered", || {
        let (rows, letters) = delivered(&addr);
        rows + letters >= 25.0
    });
    let checking = |what: &str| {
        wait_until(Duration::from_secs(30), what, || {
            !transforms(&addr)[0]["checking"].is_null()
        })
    };

    std::fs::write(&wasm, &hostile).unwrap();
    checking("the looping candidate's check to show");
    let t = transforms(&addr);
    assert!(
        runs(t[0]["checking"]["candidate"].as_str().unwrap(), &hostile),
        "{t}"
    );
    std::fs::write(&wasm, &team).unwrap();
    wait_until(Duration::from_secs(30), "the fix running", || {
        runs(
            transforms(&addr)[0]["running_version"].as_str().unwrap(),
            &team,
        )
    });
    assert!(
        p.log_text()
            .contains("was cancelled (a newer transform file was written)"),
        "{}",
        p.log_text()
    );

    // The looping candidate again, and a SIGTERM while it is checked.
    std::fs::write(&wasm, &hostile).unwrap();
    checking("the second check to show");
    p.signal(15);
    assert!(
        p.wait(Duration::from_secs(30)).success(),
        "{}",
        p.log_text()
    );
    assert!(
        p.log_text()
            .contains("cancelled (the processor is shutting down)")
    );
}

/// The loop a team runs after fixing a transform bug: the records a failing version
/// dead-lettered are redriven through the fixed version into the sink, their rows with the
/// ids they would have had; a second redrive adds nothing.
#[test]
fn dead_letters_are_redriven_through_the_fix_once() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 2);
    broker.create_topic("raw-logs-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("transforms")).unwrap();
    let wasm = d.join("transforms/raw-logs.wasm");
    let half = std::fs::read(vast_test_guests::FAILS_HALF_PATH).unwrap();
    let good = vast_guest_artifacts::RAW_LOGS.to_vec();
    std::fs::write(&wasm, &half).unwrap();
    let cfg = reload_config(
        &broker,
        "e2e-redrive",
        "transform = \"transforms/raw-logs.wasm\"",
        50,
    );
    let data = d.join("data");
    let mut p = Processor::start(VP, d, &cfg, &data, &[]);
    p.wait_joined("group join");
    let addr = admin_addr(&p.log_text()).expect("admin address in the log");
    let produced = produce(&broker.addr, "raw-logs", &generated("raw-logs", 60, 0, 21));
    wait_until(Duration::from_secs(60), "every record delivered", || {
        let (rows, letters) = delivered(&addr);
        rows + letters >= 60.0
    });
    let odd = produced.iter().filter(|r| r.offset % 2 == 1).count();
    assert_eq!(
        delivered(&addr).1,
        odd as f64,
        "the odd offsets were dead-lettered"
    );

    // The fix, deployed while the processor runs.
    std::fs::write(&wasm, &good).unwrap();
    wait_until(Duration::from_secs(30), "the fix running", || {
        runs(
            transforms(&addr)[0]["running_version"].as_str().unwrap(),
            &good,
        )
    });
    let redrive = || {
        let out = std::process::Command::new(VP)
            .current_dir(d)
            .args([
                "replay",
                "--from-dead-letters",
                "raw-logs-dlq",
                "--data-dir",
                "data",
            ])
            .env("VAST_PROCESSOR_CACHE_DIR", scratch().join("wasm-cache"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        err
    };
    let said = redrive();
    assert!(
        said.contains(&format!(
            "redrove {odd} of {odd} dead letter(s) from raw-logs-dlq through raw-logs@{}",
            hash12(&good)
        )),
        "{said}"
    );
    let all = rows(&data, vast_processor::model::Table::Events);
    let mut by_offset: HashMap<(i64, i64), Vec<&Value>> = HashMap::new();
    for r in &all {
        let key = (
            r["source_partition"].as_i64().unwrap(),
            r["source_offset"].as_i64().unwrap(),
        );
        by_offset.entry(key).or_default().push(r);
    }
    for pr in &produced {
        let rs = by_offset
            .get(&(pr.partition as i64, pr.offset))
            .unwrap_or_else(|| panic!("offset {}/{} has no row", pr.partition, pr.offset));
        assert_eq!(
            rs.len(),
            1,
            "offset {}/{} landed {} times",
            pr.partition,
            pr.offset,
            rs.len()
        );
        assert_eq!(
            rs[0]["id"],
            vast_processor::model::row_id("raw-logs", pr.partition, pr.offset, 0),
            "the id it would have had"
        );
        if pr.offset % 2 == 1 {
            assert!(runs(rs[0]["transform_version"].as_str().unwrap(), &good));
        }
    }

    // Again: nothing new to redrive, nothing added.
    let said = redrive();
    assert!(said.contains("redrove 0 of 0 dead letter(s)"), "{said}");
    assert_eq!(
        rows(&data, vast_processor::model::Table::Events).len(),
        all.len()
    );
    p.signal(15);
    assert!(p.wait(Duration::from_secs(30)).success());
}

/// Microseconds since the epoch of a `created_at` as the rows render it (a number, or
/// `YYYY-MM-DDTHH:MM:SS[.ffffff]` in UTC).
fn micros(v: &Value) -> i64 {
    if let Some(n) = v.as_i64() {
        return n;
    }
    let s = v.as_str().unwrap_or_else(|| panic!("created_at {v}"));
    let num = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (num(0, 4), num(5, 7), num(8, 10));
    let secs = num(11, 13) * 3600 + num(14, 16) * 60 + num(17, 19);
    let frac = s[19..].trim_start_matches('.').trim_end_matches('Z');
    let us = format!("{frac:0<6}")[..6].parse::<i64>().unwrap_or(0);
    // Days from the civil date (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + secs) * 1_000_000 + us
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// What runs, sampled every 100 ms: (time, running version, the previous version while the
/// running one is on probation, which still handles what the candidate fails).
type Seen = Vec<(i64, String, Option<String>)>;

struct Timeline {
    addr: std::sync::Arc<std::sync::Mutex<String>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Timeline {
    fn start(addr: &str) -> Timeline {
        use std::sync::{Arc, Mutex, atomic::AtomicBool};
        let (addr, stop, seen) = (
            Arc::new(Mutex::new(addr.to_string())),
            Arc::new(AtomicBool::new(false)),
            Arc::new(Mutex::new(Vec::new())),
        );
        let (a, s, v) = (addr.clone(), stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let at = a.lock().unwrap().clone();
                if let Ok((200, body)) = try_http_get(&at, "/transforms")
                    && let Ok(t) = serde_json::from_str::<Value>(&body)
                {
                    let running = t[0]["running_version"].as_str().unwrap_or("").to_string();
                    let previous = t[0]["probation"]
                        .is_object()
                        .then(|| t[0]["previous_version"].as_str().map(str::to_string))
                        .flatten();
                    v.lock().unwrap().push((now_us(), running, previous));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Timeline {
            addr,
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn set_addr(&self, addr: &str) {
        *self.addr.lock().unwrap() = addr.to_string();
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.seen.lock().unwrap().clone()
    }
}

/// A scripted day of 30 deployment actions under load, through the CLI and the files, with the
/// default relative config path: valid versions, a config edit and enrichment edits that change
/// output, a looping candidate followed 2 s later by its fix, a version that traps on 1% of
/// records, a burst of bad input after a good deploy, a restart after a rejection, a manual
/// rollback, a pin and an unpin, `deploy --wait` for each candidate. Afterwards every offset is
/// in a row or a dead letter, no id is duplicated, each row was written by a version running
/// (or, on probation, still warm) at that time, no good version was rolled back, the fix ran
/// within 10 s of its write, and each decision logged a handful of lines.
#[test]
fn a_day_of_thirty_deployments_keeps_every_record_and_only_accepted_versions_write() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 2);
    broker.create_topic("raw-logs-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("transforms")).unwrap();
    let wasm = d.join("transforms/raw-logs.wasm");
    let read = |p: &str| std::fs::read(p).unwrap();
    let good = vast_guest_artifacts::RAW_LOGS.to_vec();
    let team = read(vast_test_guests::TEAM_ENRICH_PATH);
    let rare = read(vast_test_guests::TRAPS_RARELY_PATH);
    let looping = read(vast_test_guests::LOOPS_ALWAYS_PATH);
    let half = read(vast_test_guests::FAILS_HALF_PATH);
    let traps = read(vast_test_guests::TRAPS_ALWAYS_PATH);
    for (name, bytes) in [
        ("good.wasm", &good),
        ("team.wasm", &team),
        ("rare.wasm", &rare),
        ("loop.wasm", &looping),
        ("half.wasm", &half),
        ("traps.wasm", &traps),
    ] {
        std::fs::write(d.join(name), bytes).unwrap();
    }
    std::fs::write(d.join("garbage.wasm"), b"not a component").unwrap();
    std::fs::write(&wasm, &good).unwrap();
    let csv = |team: &str| format!("entity_id,team,owner\npg-1,{team},ann@example.com\n");
    std::fs::write(d.join("teams.csv"), csv("alpha")).unwrap();
    std::fs::write(d.join("teams2.csv"), csv("gamma")).unwrap();
    let cfg = reload_config(
        &broker,
        "e2e-day",
        "transform = \"transforms/raw-logs.wasm\"",
        100,
    )
    .replace(
        "[reload]\n",
        "[reload]\nprobation_batches = 2\nprobation_records = 400\nprobation_seconds = 2\n",
    ) + "[pipelines.enrichment.teams]\npath = \"teams.csv\"\nkey = \"entity_id\"\n";
    let data = d.join("data");
    let start = |cfg: &str| {
        let p = Processor::start(VP, d, cfg, &data, &[]);
        let mut addr = String::new();
        wait_until(Duration::from_secs(60), "the admin server", || {
            addr = admin_addr(&p.log_text()).unwrap_or_default();
            !addr.is_empty()
        });
        (p, addr)
    };
    let (mut p, mut addr) = start(&cfg);
    let timeline = Timeline::start(&addr);
    p.wait_joined("group join");
    let load = Load::start(
        &broker.addr,
        "raw-logs",
        20,
        0,
        11,
        Duration::from_millis(150),
    );
    wait_until(Duration::from_secs(30), "traffic", || {
        delivered(&addr).0 > 100.0
    });

    // A CLI command in the background: (exit code, stdout and stderr).
    let cli = |addr: &str, args: &[&str]| {
        let (dir, mut all) = (d.to_path_buf(), Vec::new());
        all.extend(args.iter().map(|a| a.to_string()));
        all.extend(["--admin".to_string(), addr.to_string()]);
        std::thread::spawn(move || {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            let (code, out, err) = vp(&dir, &args, None);
            (code, format!("{out}{err}"))
        })
    };
    let deploy_bg = |addr: &str, file: &str| {
        cli(
            addr,
            &[
                "transform",
                "deploy",
                "--pipeline",
                "raw-logs",
                file,
                "--wait",
                "--timeout",
                "60",
            ],
        )
    };
    let expect = |(code, out): (i32, String), want: i32, what: &str| {
        assert_eq!(code, want, "{what}: {out}");
        out
    };
    let deploy = |addr: &str, file: &str, want: i32| {
        expect(deploy_bg(addr, file).join().unwrap(), want, file)
    };
    let command = |addr: &str, args: &[&str], want: i32| {
        expect(cli(addr, args).join().unwrap(), want, &args.join(" "))
    };
    let last_at = |addr: &str| {
        transforms(addr)[0]["last_reload"]["at_unix_ms"]
            .as_u64()
            .unwrap_or(0)
    };
    let decided_after = |addr: &str, before: u64, what: &str| {
        wait_until(Duration::from_secs(30), what, || last_at(addr) > before);
        transforms(addr)[0]["last_reload"].clone()
    };
    let running = |addr: &str| {
        transforms(addr)[0]["running_version"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // The log lines about reloading at INFO and above.
    let reload_lines = |log: &str| -> usize {
        log.lines()
            .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
            .filter(|l| {
                [
                    "reload",
                    "candidate",
                    "shadow",
                    "probation",
                    "swapped",
                    "rolled back",
                ]
                .iter()
                .any(|w| l.contains(w))
            })
            .count()
    };

    let mut cfg_now = cfg.clone();
    let mut extra: Vec<Produced> = Vec::new();
    let mut noise: Vec<(usize, &str, usize)> = Vec::new();
    let mut fix_live_after = Duration::ZERO;
    for step in 1..=30 {
        let lines_before = reload_lines(&p.log_text());
        let what = match step {
            1 | 4 | 15 | 23 | 27 | 30 => {
                let out = deploy(&addr, "team.wasm", 0);
                assert!(out.contains("passed its probation"), "{out}");
                "deploy team-enrich"
            }
            2 | 7 | 21 | 25 | 29 => {
                let out = deploy(&addr, "good.wasm", 0);
                assert!(out.contains("passed its probation"), "{out}");
                "deploy raw-logs"
            }
            3 | 24 => {
                let out = deploy(&addr, "garbage.wasm", 1);
                assert!(out.contains("rejected"), "{out}");
                "deploy garbage"
            }
            6 | 22 => {
                // Rejected by the shadow check, or (right after the restart, when the sample
                // may still be empty) rolled back in its probation.
                let out = deploy(&addr, "half.wasm", 1);
                assert!(
                    out.contains("rejected") || out.contains("rolled back"),
                    "{out}"
                );
                "deploy fails-half"
            }
            8 | 28 => {
                // Caught by the shadow check or in its probation, depending on the sample;
                // the second time it is refused as rolled back before, if it was.
                let before = running(&addr);
                let out = deploy(&addr, "rare.wasm", 1);
                assert!(
                    out.contains("rejected") || out.contains("rolled back"),
                    "{out}"
                );
                assert_eq!(running(&addr), before, "what ran before runs again");
                "deploy traps-rarely"
            }
            5 | 26 => {
                // An enrichment edit: team-enrich's output changes (5); raw-logs ignores the
                // table, but its rows get a new version label (26).
                let before = last_at(&addr);
                let (file, team) = if step == 5 {
                    ("teams.csv", "beta")
                } else {
                    ("teams2.csv", "delta")
                };
                let label = running(&addr);
                replace_file(&d.join(file), &csv(team));
                let last = decided_after(&addr, before, "the enrichment edit decided");
                assert_eq!(last["result"], "accepted", "{last}");
                if step == 5 {
                    assert!(
                        last["output_diff"]["changed"].as_u64().unwrap_or(0) > 0,
                        "the changed output is reported: {last}"
                    );
                }
                assert_ne!(running(&addr), label, "a new version label");
                "edit the enrichment table"
            }
            9 => {
                // A good deploy, then a burst of bad input during its probation: input the
                // previous version rejects too must not roll it back.
                let waiting = deploy_bg(&addr, "team.wasm");
                wait_until(Duration::from_secs(30), "team on probation", || {
                    let t = transforms(&addr);
                    runs(t[0]["running_version"].as_str().unwrap(), &team)
                        && t[0]["probation"].is_object()
                });
                let burst: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..100)
                    .map(|i| (None, format!("{{\"broken\": {i}").into_bytes()))
                    .collect();
                extra.extend(produce(&broker.addr, "raw-logs", &burst));
                let out = expect(waiting.join().unwrap(), 0, "team after the burst");
                assert!(out.contains("passed its probation"), "{out}");
                "deploy team-enrich, then bad input"
            }
            10 => {
                // A config edit: the table now comes from another file (output changes).
                let before = last_at(&addr);
                cfg_now = cfg.replace("path = \"teams.csv\"", "path = \"teams2.csv\"");
                replace_file(&d.join("pipelines.toml"), &cfg_now);
                let last = decided_after(&addr, before, "the config edit decided");
                assert_eq!(last["result"], "accepted", "{last}");
                "edit pipelines.toml"
            }
            11 => {
                // A looping candidate, and its fix 2 s later.
                let looping_deploy = deploy_bg(&addr, "loop.wasm");
                std::thread::sleep(Duration::from_secs(2));
                let written = std::time::Instant::now();
                let fix = deploy_bg(&addr, "good.wasm");
                wait_until(Duration::from_secs(30), "the fix running", || {
                    runs(&running(&addr), &good)
                });
                fix_live_after = written.elapsed();
                let out = expect(looping_deploy.join().unwrap(), 1, "the looping candidate");
                assert!(!out.contains("passed"), "{out}");
                expect(fix.join().unwrap(), 0, "the fix");
                "deploy a looping candidate, then the fix"
            }
            12 => {
                let before = running(&addr);
                let out = deploy(&addr, "traps.wasm", 1);
                assert!(out.contains("rejected"), "{out}");
                assert_eq!(running(&addr), before);
                "deploy traps-always"
            }
            13 => {
                // A restart after the rejection: the rejected file is still on disk.
                p.signal(15);
                assert!(
                    p.wait(Duration::from_secs(30)).success(),
                    "{}",
                    p.log_text()
                );
                (p, addr) = start(&cfg_now);
                timeline.set_addr(&addr);
                p.wait_joined("group join after the restart");
                let t = transforms(&addr);
                assert!(
                    runs(t[0]["running_version"].as_str().unwrap(), &good),
                    "{t}"
                );
                assert!(
                    t[0]["refused_file"]["reason"]
                        .as_str()
                        .unwrap_or("")
                        .contains("rejected"),
                    "{t}"
                );
                continue;
            }
            14 => {
                // A candidate judged after the restart, against what was running before it.
                // Rejected by the shadow check, or (right after the restart, when the sample
                // may still be empty) rolled back in its probation.
                let out = deploy(&addr, "half.wasm", 1);
                assert!(
                    out.contains("rejected") || out.contains("rolled back"),
                    "{out}"
                );
                "deploy fails-half"
            }
            16 => {
                let out = command(&addr, &["transform", "rollback", "raw-logs"], 0);
                assert!(runs(&running(&addr), &good), "{out}");
                "roll back by hand"
            }
            17 => {
                let v = format!("raw-logs@{}", hash12(&good));
                command(&addr, &["transform", "pin", "raw-logs", &v], 0);
                "pin"
            }
            18 => {
                let out = deploy(&addr, "team.wasm", 1);
                assert!(out.contains("pinned"), "{out}");
                assert!(runs(&running(&addr), &good));
                "deploy while pinned"
            }
            19 => {
                command(
                    &addr,
                    &["transform", "unban", "raw-logs", &hash12(&team)],
                    0,
                );
                "unban team-enrich"
            }
            20 => {
                let out = command(&addr, &["transform", "unpin", "raw-logs"], 0);
                assert!(out.contains("then the transform file: accepted"), "{out}");
                assert!(runs(&running(&addr), &team), "{out}");
                "unpin"
            }
            _ => unreachable!("step {step}"),
        };
        noise.push((step, what, reload_lines(&p.log_text()) - lines_before));
    }
    assert!(
        fix_live_after <= Duration::from_secs(10),
        "the fix ran {fix_live_after:?} after its write"
    );
    let mut produced = load.finish();
    produced.extend(extra);

    // Everything lands: each offset in a row or a dead letter.
    let offset_of = |r: &Value| {
        (
            r["source_partition"].as_i64().unwrap() as i32,
            r["source_offset"].as_i64().unwrap(),
        )
    };
    let letter_at = |l: &Letter| {
        (
            l.headers["x-vast-source-partition"].parse::<i32>().unwrap(),
            l.headers["x-vast-source-offset"].parse::<i64>().unwrap(),
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut dlq = TopicReader::new(&broker.addr, "raw-logs-dlq", 1);
    let (all, letters) = loop {
        let all = rows(&data, vast_processor::model::Table::Events);
        let letters = dlq.read_for(Duration::from_secs(1)).to_vec();
        let mut done: HashSet<(i32, i64)> = all.iter().map(offset_of).collect();
        done.extend(letters.iter().map(letter_at));
        let missing: Vec<_> = produced
            .iter()
            .filter(|r| !done.contains(&(r.partition, r.offset)))
            .map(|r| (r.partition, r.offset))
            .collect();
        if missing.is_empty() {
            break (all, letters);
        }
        if std::time::Instant::now() >= deadline {
            // Keep the logs for a look after the temporary directory is gone.
            let keep = scratch().join(format!("day-of-deployments-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&keep);
            for e in std::fs::read_dir(d).unwrap().flatten() {
                if e.file_name().to_string_lossy().ends_with(".log") {
                    let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
                }
            }
            let first = produced
                .iter()
                .find(|r| (r.partition, r.offset) == missing[0])
                .map(|r| String::from_utf8_lossy(&r.payload).into_owned());
            panic!(
                "{} records lost, e.g. {:?} (first: {first:?}); {} rows and {} dead letters read; logs in {}",
                missing.len(),
                &missing[..missing.len().min(5)],
                all.len(),
                letters.len(),
                keep.display()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    p.signal(15);
    assert!(
        p.wait(Duration::from_secs(30)).success(),
        "{}",
        p.log_text()
    );
    let seen = timeline.finish();

    let ids: HashSet<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "duplicated rows");
    assert!(
        letters.iter().all(|l| {
            let v = l.headers["x-vast-transform-version"].as_str();
            ![&looping, &half, &traps].iter().any(|b| runs(v, b))
        }),
        "no rejected candidate handled a live record"
    );
    // Each row's version ran (or stayed warm on a probation) within a second and a half of
    // the row's processing time.
    const SLACK_US: i64 = 1_500_000;
    let mut versions: HashSet<&str> = HashSet::new();
    for r in &all {
        let v = r["transform_version"].as_str().unwrap();
        versions.insert(v);
        assert!(
            ![&looping, &half, &traps].iter().any(|b| runs(v, b)),
            "a rejected candidate wrote a row: {v}"
        );
        let at = micros(&r["created_at"]);
        let lo = seen.partition_point(|s| s.0 < at - SLACK_US);
        let hi = seen.partition_point(|s| s.0 <= at + SLACK_US);
        assert!(
            seen[lo..hi]
                .iter()
                .any(|(_, run, prev)| run == v || prev.as_deref() == Some(v)),
            "row at offset {:?} by {v} at {at}, when {:?} ran",
            offset_of(r),
            &seen[lo..hi]
                .iter()
                .map(|s| (&s.1, &s.2))
                .collect::<HashSet<_>>()
        );
    }
    // Two modules under three tables contents and two configs: more than two labels.
    assert!(versions.len() >= 4, "{versions:?}");
    // One decision, a handful of lines.
    for (step, what, lines) in &noise {
        assert!(
            *lines <= 6,
            "step {step} ({what}) logged {lines} reload lines: {noise:?}"
        );
    }
    eprintln!(
        "day of deployments: fix live after {fix_live_after:?}; log lines per action {noise:?}"
    );
}
