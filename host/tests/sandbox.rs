//! Sandbox tests: a deliberately hostile guest (guest-transforms/test-guests/hostile), run
//! through the real wasmtime host. Every misbehaviour is contained, reported precisely, and
//! the next batch runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use vast_processor::config::Limits;
use vast_processor::config::TableSpec;
use vast_processor::model::{Message, Row};
use vast_processor::transform::enrichment::Enrichment;
use vast_processor::transform::wasm::{
    ErrorKind, InstanceSettings, MessageResult, TransformEngine, TransformError, TransformInstance,
    TransformModule,
};

fn engine() -> &'static TransformEngine {
    static ENGINE: OnceLock<TransformEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        TransformEngine::new(Some(
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wasm-cache"),
        ))
        .unwrap()
    })
}

fn hostile() -> Arc<TransformModule> {
    let bytes = std::fs::read(vast_test_guests::HOSTILE_PATH).unwrap();
    engine().load("hostile", &bytes).unwrap()
}

fn instance(limits: Limits) -> TransformInstance {
    TransformInstance::new(
        hostile(),
        InstanceSettings {
            limits,
            ..Default::default()
        },
    )
    .unwrap()
}

fn fast_limits() -> Limits {
    Limits {
        deadline_ms: 300,
        ..Limits::default()
    }
}

fn msgs(payloads: &[&str]) -> Vec<Message> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| Message {
            topic: "t".into(),
            partition: 0,
            offset: i as i64,
            timestamp_ms: None,
            key: None,
            headers: vec![],
            payload: p.as_bytes().to_vec(),
        })
        .collect()
}

fn echoed(r: &MessageResult) -> Option<String> {
    match r {
        MessageResult::Rows(rows) => match rows.first() {
            Some(Row::Event(e)) => Some(e.message.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// After any failure the same instance must go on processing normally.
fn assert_recovers(inst: &mut TransformInstance) {
    let out = inst.process(&msgs(&["after"]), 0);
    assert_eq!(echoed(&out[0]).as_deref(), Some("after"), "{out:?}");
}

#[test]
fn infinite_loop_hits_the_deadline() {
    let mut inst = instance(fast_limits());
    let out = inst.process(&msgs(&["loop"]), 0);
    let MessageResult::Error(err) = &out[0] else {
        panic!("{out:?}")
    };
    assert!(
        matches!(
            err,
            TransformError {
                kind: ErrorKind::Deadline { deadline_ms: 300 },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("CPU deadline of 300 ms"), "{err}");
    assert_recovers(&mut inst);
}

#[test]
fn allocating_a_gibibyte_hits_the_memory_cap() {
    let mut inst = instance(Limits::default());
    let out = inst.process(&msgs(&["alloc"]), 0);
    let MessageResult::Error(TransformError {
        kind: ErrorKind::Memory {
            limit_mib,
            asked_mib,
        },
        ..
    }) = &out[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!(*limit_mib, 64);
    assert!(*asked_mib >= 1024, "{asked_mib}");
    assert_recovers(&mut inst);
}

#[test]
fn deep_recursion_overflows_the_stack_cleanly() {
    let mut inst = instance(fast_limits());
    let out = inst.process(&msgs(&["recurse"]), 0);
    assert!(
        matches!(
            &out[0],
            MessageResult::Error(TransformError {
                kind: ErrorKind::StackOverflow,
                ..
            })
        ),
        "{out:?}"
    );
    assert_recovers(&mut inst);
}

#[test]
fn a_panic_traps_with_its_message() {
    let mut inst = instance(fast_limits());
    let out = inst.process(&msgs(&["panic"]), 0);
    let MessageResult::Error(TransformError {
        kind: ErrorKind::Trap(reason),
        ..
    }) = &out[0]
    else {
        panic!("{out:?}")
    };
    assert!(
        reason.contains("hostile guest panics on purpose"),
        "{reason}"
    );
    assert_recovers(&mut inst);
}

#[test]
fn files_env_and_sockets_are_denied() {
    let mut inst = instance(fast_limits());
    let out = inst.process(&msgs(&["file", "env", "socket"]), 0);
    for (what, r) in ["file", "env", "socket"].iter().zip(&out) {
        let MessageResult::Fail(why) = r else {
            panic!("{what}: the guest got access: {r:?}")
        };
        assert!(why.starts_with(&format!("{what} denied")), "{why}");
    }
}

#[test]
fn poison_message_fails_alone() {
    let mut inst = instance(fast_limits());
    let out = inst.process(&msgs(&["a", "b", "panic", "c", "loop", "d"]), 0);
    assert_eq!(out.len(), 6);
    let texts: Vec<_> = out.iter().map(echoed).collect();
    assert_eq!(texts[0].as_deref(), Some("a"));
    assert_eq!(texts[1].as_deref(), Some("b"));
    assert_eq!(texts[3].as_deref(), Some("c"));
    assert_eq!(texts[5].as_deref(), Some("d"));
    assert!(
        matches!(
            &out[2],
            MessageResult::Error(TransformError {
                kind: ErrorKind::Trap(_),
                ..
            })
        ),
        "{:?}",
        out[2]
    );
    assert!(
        matches!(
            &out[4],
            MessageResult::Error(TransformError {
                kind: ErrorKind::Deadline { .. },
                ..
            })
        ),
        "{:?}",
        out[4]
    );
    // Rows of isolated messages keep the ids of their own offsets.
    let MessageResult::Rows(rows) = &out[3] else {
        unreachable!()
    };
    let Row::Event(e) = &rows[0] else {
        unreachable!()
    };
    assert_eq!(
        e.id.as_deref(),
        Some(vast_processor::model::row_id("t", 0, 3, 0).as_str())
    );
    assert!(inst.stats().traps >= 3, "{:?}", inst.stats());
}

#[test]
fn wrong_outcome_count_is_isolated_per_message() {
    let mut inst = instance(fast_limits());
    let out = inst.process(&msgs(&["a", "drop-one", "b"]), 0);
    assert_eq!(echoed(&out[0]).as_deref(), Some("a"));
    assert!(
        matches!(
            &out[1],
            MessageResult::Error(TransformError {
                kind: ErrorKind::Contract(_),
                ..
            })
        ),
        "{:?}",
        out[1]
    );
    assert_eq!(echoed(&out[2]).as_deref(), Some("b"));
}

#[test]
fn too_many_rows_for_one_message_is_an_error() {
    let mut inst = instance(Limits {
        max_rows_per_message: 100,
        ..fast_limits()
    });
    let out = inst.process(&msgs(&["rows:100", "rows:101"]), 0);
    assert!(matches!(&out[0], MessageResult::Rows(r) if r.len() == 100));
    let MessageResult::Error(TransformError {
        kind: ErrorKind::Contract(reason),
        ..
    }) = &out[1]
    else {
        panic!("{:?}", out[1])
    };
    assert!(
        reason.contains("101 rows") && reason.contains("max_rows_per_message"),
        "{reason}"
    );
}

#[test]
fn skip_fail_and_empty_rows_pass_through() {
    let mut inst = instance(fast_limits());
    let out = inst.process(&msgs(&["skip", "fail", "short"]), 0);
    assert_eq!(out[0], MessageResult::Skip("skipping on purpose".into()));
    assert_eq!(out[1], MessageResult::Fail("failing on purpose".into()));
    assert_eq!(out[2], MessageResult::Rows(vec![]));
}

#[test]
fn stdout_is_captured_and_log_flood_is_rate_limited() {
    let mut inst = instance(fast_limits());
    let out = inst.process(&msgs(&["stdout", "log"]), 0);
    assert_eq!(echoed(&out[0]).as_deref(), Some("printed"));
    assert_eq!(echoed(&out[1]).as_deref(), Some("logged"));
    let suppressed = inst.stats().logs_suppressed;
    assert!(
        (800..=900).contains(&suppressed),
        "1000 lines, burst of 100: {suppressed} suppressed"
    );
}

/// The log budget counted lines, not bytes (300 lines of 5 MiB wrote 1.5 GB of stderr), and
/// counter names had no length limit (40 names of 20 MiB made an 839 MB /metrics body). Lines
/// and names are cut with a marker, the bytes logged per instance are budgeted, and both
/// are counted.
#[test]
fn huge_log_lines_and_counter_names_are_cut_and_budgeted() {
    let mut inst = instance(fast_limits());
    let out = inst.process(&msgs(&["biglog", "bignames"]), 0);
    assert_eq!(echoed(&out[0]).as_deref(), Some("logged big"));
    assert_eq!(echoed(&out[1]).as_deref(), Some("named big"));
    let stats = inst.stats().clone();
    assert!(
        stats.log_bytes <= 256 * 1024,
        "{} bytes logged",
        stats.log_bytes
    );
    assert!(stats.log_bytes > 0, "some of it is logged");
    assert!(stats.truncated >= 20 + 40, "{stats:?}");
    let counters = inst.take_counters();
    assert_eq!(
        counters.len(),
        40,
        "distinct after the cut (the index comes first)"
    );
    assert!(counters.keys().all(|k| k.len() < 200), "names are cut");
}

#[test]
fn guest_counters_and_lookups_reach_the_host() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("teams.csv"), "host,team\npg-1,dba\n").unwrap();
    let mut specs = BTreeMap::new();
    specs.insert(
        "teams".to_string(),
        TableSpec {
            path: "teams.csv".into(),
            key: None,
        },
    );
    let settings = InstanceSettings {
        enrichment: Arc::new(Enrichment::load(&specs, dir.path()).unwrap()),
        ..Default::default()
    };
    let mut inst = TransformInstance::new(hostile(), settings).unwrap();
    let out = inst.process(&msgs(&["counter", "counter", "lookup"]), 0);
    assert_eq!(inst.take_counters().get("hostile_things"), Some(&6));
    assert_eq!(
        echoed(&out[2]).as_deref(),
        Some(r#"Some("{\"host\":\"pg-1\",\"team\":\"dba\"}")"#)
    );
}

#[test]
fn init_errors_reject_the_module() {
    let settings = InstanceSettings {
        config: vec![("fail_init".into(), "true".into())],
        ..Default::default()
    };
    let err = TransformInstance::new(hostile(), settings)
        .err()
        .expect("init must fail");
    assert!(
        matches!(&err, TransformError { kind: ErrorKind::InitRejected(reason), .. } if reason.contains("fail_init=true")),
        "{err}"
    );
    // The bundled transforms refuse config keys they do not know.
    let bytes = vast_processor::transform::loader::bundled_bytes("raw-logs").unwrap();
    let m = engine().load("raw-logs", bytes).unwrap();
    let settings = InstanceSettings {
        config: vec![("colour".into(), "red".into())],
        ..Default::default()
    };
    let err = TransformInstance::new(m, settings)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("unknown config key `colour`"), "{err}");
}

#[test]
fn invalid_files_and_wrong_worlds_are_rejected() {
    let err = engine().load("junk", b"definitely not wasm").err().unwrap();
    assert!(
        matches!(
            err,
            TransformError {
                kind: ErrorKind::Compile(_),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("magic bytes"), "{err}");
    // A core module (not a component).
    let err = engine().load("core", b"\0asm\x01\0\0\0").err().unwrap();
    assert!(
        matches!(
            err,
            TransformError {
                kind: ErrorKind::Compile(_),
                ..
            }
        ),
        "{err}"
    );
    // A valid, empty component: it exports nothing of the transform world.
    let err = engine().load("empty", b"\0asm\x0d\0\x01\0").err().unwrap();
    assert!(
        matches!(
            err,
            TransformError {
                kind: ErrorKind::WrongWorld(_),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn compiled_components_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TransformEngine::new(Some(dir.path().to_path_buf())).unwrap();
    let bytes = std::fs::read(vast_test_guests::HOSTILE_PATH).unwrap();
    let first = engine.load("hostile", &bytes).unwrap();
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(
        entries[0]
            .to_string_lossy()
            .starts_with(first.content_hash())
    );
    // A second load is served from the cache and behaves the same.
    let second = engine.load("hostile", &bytes).unwrap();
    assert_eq!(first.version(), second.version());
    let mut inst = TransformInstance::new(second, InstanceSettings::default()).unwrap();
    assert_recovers(&mut inst);
    // A corrupt entry is ignored, not trusted.
    let path = dir.path().join(&entries[0]);
    std::fs::write(&path, b"garbage").unwrap();
    let third = engine.load("hostile", &bytes).unwrap();
    let mut inst = TransformInstance::new(third, InstanceSettings::default()).unwrap();
    assert_recovers(&mut inst);
}

#[test]
fn sleeping_traps_at_once_instead_of_holding_the_worker() {
    // A WASI sleep blocks in a host call the epoch deadline cannot interrupt; it is refused.
    let mut inst = instance(fast_limits());
    let out = inst.process(&msgs(&["sleep"]), 0);
    let MessageResult::Error(TransformError {
        kind: ErrorKind::Trap(reason),
        ..
    }) = &out[0]
    else {
        panic!("{out:?}")
    };
    // The trap comes from the timer subscription itself, before any waiting.
    assert!(reason.contains("cannot sleep"), "{reason}");
    assert_recovers(&mut inst);
}

/// A component built against the previous contract (`vast:transform@0.1.0`, row by row,
/// without the SDK) loads and runs next to 0.2.0 ones: rows, skips, failures, the host's
/// completion of rows, and the 0.1.0 host imports.
#[test]
fn components_built_against_0_1_0_still_run() {
    let bytes = std::fs::read(vast_test_guests::LEGACY_V0_1_PATH).unwrap();
    let module = engine().load("legacy", &bytes).unwrap();
    let mut inst = TransformInstance::new(module, InstanceSettings::default()).unwrap();
    let mut batch = msgs(&["hello", "skip", "fail", "metric x"]);
    batch[0].key = Some(b"k1".to_vec());
    batch[0].timestamp_ms = Some(1_000);
    let got = inst.process(&batch, 42);
    assert_eq!(got[1], MessageResult::Skip("asked to skip".into()));
    assert_eq!(got[2], MessageResult::Fail("asked to fail".into()));
    let MessageResult::Rows(rows) = &got[0] else {
        panic!("rows expected: {:?}", got[0])
    };
    let Row::Event(e) = &rows[0] else {
        panic!("an event expected")
    };
    assert_eq!((e.message.as_str(), e.entity_id.as_str()), ("hello", "t"));
    assert_eq!(e.tags, [("key".to_string(), "k1".to_string())]);
    assert_eq!((e.timestamp, e.created_at), (Some(1_000_000), Some(42)));
    assert_eq!(e.id.as_ref().map(String::len), Some(36));
    let MessageResult::Rows(rows) = &got[3] else {
        panic!("rows expected: {:?}", got[3])
    };
    assert!(matches!(rows.as_slice(), [Row::Event(_), Row::Metric(m)] if m.metric_value == 3.0));
    assert_eq!(inst.take_counters().get("legacy_batches"), Some(&1));
    assert_eq!(inst.stats().traps, 0);
}
