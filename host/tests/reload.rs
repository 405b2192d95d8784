//! Hot-reload decisions through real components: automatic rollback of a version whose error
//! rate jumps after a swap, and the ban that keeps it out until its file changes.

use std::sync::Arc;
use vast_processor::reload::{LiveTransform, ReloadConfig};
use vast_processor::wasm::{InstanceSettings, Message, TransformEngine, TransformInstance};

fn msgs(from: i64, n: i64) -> Vec<Message> {
    let line = br#"{"host": "pg-1", "payload": {"event_type": "vacuum"}}"#;
    (from..from + n)
        .map(|offset| Message {
            topic: "raw-logs".into(),
            partition: 0,
            offset,
            timestamp_ms: None,
            key: None,
            headers: vec![],
            payload: line.to_vec(),
        })
        .collect()
}

#[test]
fn a_version_failing_after_the_swap_is_rolled_back_and_kept_out() {
    let engine = TransformEngine::new(None).unwrap();
    let good = engine
        .load(
            "raw-logs",
            vast_processor::registry::bundled_bytes("raw-logs").unwrap(),
        )
        .unwrap();
    let bad = engine
        .load(
            "raw-logs",
            &std::fs::read(vast_guest_artifacts::FAILS_HALF_PATH).unwrap(),
        )
        .unwrap();
    // No shadow sample yet (nothing processed): only the probation can catch it.
    let config = ReloadConfig {
        probation_batches: 5,
        rollback_error_rate: 0.2,
        ..Default::default()
    };
    let live = Arc::new(LiveTransform::new(
        "raw-logs",
        good.clone(),
        InstanceSettings::default(),
        config,
    ));
    live.try_swap(bad.clone(), InstanceSettings::default())
        .unwrap();
    assert_eq!(live.current().module.version(), bad.version());
    assert_eq!(live.previous().unwrap().module.version(), good.version());

    // Workers run batches on the new version and report them.
    let mut offset = 0;
    for _ in 0..5 {
        let v = live.current();
        if v.module.version() != bad.version() {
            break;
        }
        let mut inst = TransformInstance::new(v.module.clone(), v.settings.clone()).unwrap();
        let batch = msgs(offset, 10);
        offset += 10;
        let results = inst.process(&batch, 0);
        live.observe(v.generation, &results);
    }
    assert_eq!(
        live.current().module.version(),
        good.version(),
        "not rolled back"
    );
    assert_eq!(
        live.rolled_back.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(live.last().result, "rolled_back");
    // The bad version stays out while its bytes are unchanged.
    let again = live
        .try_swap(bad.clone(), InstanceSettings::default())
        .unwrap_err();
    assert!(again.0.contains("rolled back"), "{again}");
    assert_eq!(live.current().module.version(), good.version());
    // With recent messages remembered, the shadow check now catches it up front too.
    live.remember(&msgs(100, 50));
    let team = engine
        .load(
            "raw-logs",
            &std::fs::read(vast_guest_artifacts::TEAM_ENRICH_PATH).unwrap(),
        )
        .unwrap();
    live.try_swap(team.clone(), InstanceSettings::default())
        .unwrap();
    let err = live.try_swap(bad, InstanceSettings::default()).unwrap_err();
    assert!(
        err.0.contains("would newly fail") && err.0.contains("fails-half rejects odd offsets"),
        "{err}"
    );
    assert_eq!(live.current().module.version(), team.version());
}
