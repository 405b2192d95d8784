//! Hot-reload decisions through real components: automatic rollback of a version whose error
//! rate jumps after a swap, and the ban that keeps it out until its file changes.

use std::sync::Arc;
use vast_processor::config::ReloadConfig;
use vast_processor::model::Message;
use vast_processor::transform::reload::LiveTransform;
use vast_processor::transform::wasm::{
    InstanceSettings, MessageResult, TransformEngine, TransformInstance, TransformModule,
};

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

/// The bundled raw-logs transform, loaded as production loads it.
fn bundled_raw_logs(engine: &TransformEngine) -> Arc<TransformModule> {
    engine
        .load(
            "raw-logs",
            vast_processor::transform::loader::bundled_bytes("raw-logs").unwrap(),
        )
        .unwrap()
}

/// A live raw-logs transform running `module`, with the default reload settings.
fn live_with_defaults(module: Arc<TransformModule>) -> LiveTransform {
    LiveTransform::new(
        "raw-logs",
        module,
        InstanceSettings::default(),
        ReloadConfig::default(),
    )
}

#[test]
fn a_version_failing_after_the_swap_is_rolled_back_and_kept_out() {
    let engine = TransformEngine::new(None).unwrap();
    let good = bundled_raw_logs(&engine);
    let bad = engine
        .load(
            "raw-logs",
            &std::fs::read(vast_test_guests::FAILS_HALF_PATH).unwrap(),
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
        let before = live.previous().unwrap().label().to_string();
        // What it failed (odd offsets) the replaced version handled: those records land as
        // the replaced version wrote them, under its label.
        let fallback = live
            .observe(v.generation, &batch, &results)
            .expect("the failed records fall back");
        assert_eq!(&*fallback.label, before.as_str());
        for (i, m) in batch.iter().enumerate() {
            let back = fallback.get(i).map(|(r, _)| r);
            if m.offset % 2 == 1 {
                assert!(
                    matches!(back, Some(MessageResult::Rows(span)) if span.len() == 1),
                    "offset {}: {back:?}",
                    m.offset
                );
            } else {
                assert!(back.is_none(), "offset {} passed: {back:?}", m.offset);
            }
        }
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
            &std::fs::read(vast_test_guests::TEAM_ENRICH_PATH).unwrap(),
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

/// A version that traps on one record in a hundred passed the rate threshold (20%); a trap
/// where the replaced version made rows now rolls it back at once, and the detail says so.
#[test]
fn a_rare_trap_after_the_swap_rolls_back_whatever_the_rate() {
    let engine = TransformEngine::new(None).unwrap();
    let good = bundled_raw_logs(&engine);
    let rare = engine
        .load(
            "raw-logs",
            &std::fs::read(vast_test_guests::TRAPS_RARELY_PATH).unwrap(),
        )
        .unwrap();
    let live = LiveTransform::new(
        "raw-logs",
        good.clone(),
        InstanceSettings::default(),
        ReloadConfig {
            probation_batches: 100,
            probation_records: 1000,
            ..Default::default()
        },
    );
    live.try_swap(rare.clone(), InstanceSettings::default())
        .unwrap();
    let v = live.current();
    let mut inst = TransformInstance::new(v.module.clone(), v.settings.clone()).unwrap();
    // It traps on offsets 7, 107, ...: none in 10..100, one in 100..150.
    for (from, n) in [(10, 40), (50, 50), (100, 50)] {
        let batch = msgs(from, n);
        let results = inst.process(&batch, 0);
        live.observe(v.generation, &batch, &results);
        assert_eq!(
            live.current().module.version() == rare.version(),
            from < 100,
            "after offsets {from}..{}: {:?}",
            from + n,
            live.last()
        );
    }
    let last = live.last();
    assert_eq!(last.result, "rolled_back");
    assert!(
        last.detail.contains("failed 1 of 140 records")
            && last
                .detail
                .contains("1 of them traps, over reload.rollback_max_new_traps = 0"),
        "{}",
        last.detail
    );
    assert_eq!(live.current().module.version(), good.version());
}

fn team_tag(live: &LiveTransform) -> Option<String> {
    let v = live.current();
    let mut inst = TransformInstance::new(v.module.clone(), v.settings.clone()).unwrap();
    let out = inst.process(&msgs(0, 1), 0);
    let vast_processor::transform::wasm::MessageResult::Rows(rows) = &out[0] else {
        panic!("{out:?}")
    };
    let vast_processor::model::Row::Event(e) = &rows[0] else {
        panic!()
    };
    e.tags
        .iter()
        .find(|(k, _)| k == "team")
        .map(|(_, v)| v.clone())
}

#[test]
fn config_and_enrichment_changes_are_validated_and_swapped_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(vast_test_guests::TEAM_ENRICH_PATH, d.join("team.wasm")).unwrap();
    std::fs::write(d.join("teams.csv"), "entity_id,team\npg-1,dba\n").unwrap();
    std::fs::write(d.join("teams2.csv"), "entity_id,team\npg-1,platform\n").unwrap();
    let base = "[[pipelines]]\ntopic = \"raw-logs\"\ntransform = \"team.wasm\"\nconfig = { table = \"teams\" }\n[pipelines.enrichment.teams]\npath = \"teams.csv\"\n";
    let cfg_path = d.join("pipelines.toml");
    std::fs::write(&cfg_path, base).unwrap();
    let engine = TransformEngine::new(None).unwrap();
    let mut config = vast_processor::config::Config::load(&cfg_path).unwrap();
    let specs = vast_processor::pipeline::load_pipelines(&config, &engine).unwrap();
    let live = specs[0].live.clone();
    let lives = vec![live.clone()];
    assert_eq!(team_tag(&live).as_deref(), Some("dba"));

    // An enrichment table edited in place: reloaded and swapped.
    std::fs::write(d.join("teams.csv"), "entity_id,team\npg-1,storage\n").unwrap();
    vast_processor::transform::reload::swap_pipeline(&live, &config.pipelines[0], &config, &engine)
        .unwrap();
    assert_eq!(team_tag(&live).as_deref(), Some("storage"));
    let generation = live.generation();

    // A new transform config and table: validated (init), then swapped.
    let changed = base.replace("table = \"teams\"", "table = \"teams2\"")
        + "[pipelines.enrichment.teams2]\npath = \"teams2.csv\"\n";
    std::fs::write(&cfg_path, &changed).unwrap();
    let done = vast_processor::transform::reload::apply_config_change(
        &mut config,
        &cfg_path,
        &engine,
        &lives,
    )
    .unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(team_tag(&live).as_deref(), Some("platform"));
    assert!(live.generation() > generation);

    // A config key the transform refuses: rejected, the running version stays.
    let bad = changed.replace("table = \"teams2\"", "table = \"teams2\", colour = \"red\"");
    std::fs::write(&cfg_path, &bad).unwrap();
    let done = vast_processor::transform::reload::apply_config_change(
        &mut config,
        &cfg_path,
        &engine,
        &lives,
    )
    .unwrap();
    assert!(
        done[0].contains("rejected") && done[0].contains("colour"),
        "{done:?}"
    );
    assert_eq!(team_tag(&live).as_deref(), Some("platform"));

    // Changes that need a restart are refused with the reason.
    std::fs::write(
        &cfg_path,
        format!("[kafka]\nbootstrap_servers = \"elsewhere:9092\"\n{changed}"),
    )
    .unwrap();
    let err = vast_processor::transform::reload::apply_config_change(
        &mut config,
        &cfg_path,
        &engine,
        &lives,
    )
    .unwrap_err();
    assert!(err.contains("needs a restart ([kafka] changed)"), "{err}");
    // An invalid file is refused too.
    std::fs::write(&cfg_path, format!("{changed}\nbogus = 1\n")).unwrap();
    let err = vast_processor::transform::reload::apply_config_change(
        &mut config,
        &cfg_path,
        &engine,
        &lives,
    )
    .unwrap_err();
    assert!(
        err.contains("config change rejected") && err.contains("bogus"),
        "{err}"
    );
    assert_eq!(team_tag(&live).as_deref(), Some("platform"));
}

/// Replacing the watched `.wasm` by a FIFO blocked the reload thread forever (later valid
/// deploys were never evaluated); by a link to /dev/zero it filled memory; by a 2 GB sparse
/// file it took 2 GB. Each is refused at once, and the next valid file is deployed.
#[test]
fn a_fifo_a_device_or_a_huge_file_is_refused_and_the_next_deploy_still_lands() {
    let engine = TransformEngine::new(None).unwrap();
    let good = bundled_raw_logs(&engine);
    let live = live_with_defaults(good);
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.wasm");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path and a plain mode.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let zero = dir.path().join("zero.wasm");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let sparse = dir.path().join("sparse.wasm");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    for (file, why) in [
        (&fifo, "not a regular file"),
        (&zero, "not a regular file"),
        (&sparse, "over the limit"),
    ] {
        // Returns at all: opened without blocking, refused before any read.
        vast_processor::transform::reload::reload_file(&live, file, &engine);
        let last = live.last();
        assert_eq!(last.result, "rejected", "{}", file.display());
        assert!(
            last.detail.contains(why),
            "{}: {}",
            file.display(),
            last.detail
        );
    }
    let next = dir.path().join("team.wasm");
    std::fs::copy(vast_test_guests::TEAM_ENRICH_PATH, &next).unwrap();
    vast_processor::transform::reload::reload_file(&live, &next, &engine);
    assert_eq!(live.last().result, "accepted", "{:?}", live.last());
}

#[test]
fn the_shadow_sample_keeps_to_its_byte_cap_whatever_the_record_sizes() {
    use vast_processor::transform::reload::SHADOW_BYTES;
    let engine = TransformEngine::new(None).unwrap();
    let good = bundled_raw_logs(&engine);
    let live = live_with_defaults(good);
    let big = |offset: i64, bytes: usize| Message {
        payload: vec![b'A'; bytes],
        ..msgs(offset, 1).remove(0)
    };
    // 200 records of 500 KB (the default 200 messages): only the latest that fit are kept.
    let batch: Vec<Message> = (0..200).map(|i| big(i, 500_000)).collect();
    live.remember(&batch);
    let (n, bytes) = live.sample_size();
    assert!(bytes <= SHADOW_BYTES, "{bytes}");
    assert_eq!(n, SHADOW_BYTES / (500_000 + 128), "{n} messages, {bytes} B");
    // Small records fill it by count again (a quarter of it per batch at most), oldest first out.
    live.remember(&msgs(1000, 300));
    assert_eq!(live.sample_size().0, 16 + 50, "one batch takes 50");
    for b in 1..5 {
        live.remember(&msgs(1000 + 300 * b, 300));
    }
    assert_eq!(live.sample_size(), (200, 200 * (msgs(0, 1)[0].footprint())));
    // One record over the cap is not sampled at all.
    live.remember(&[big(2000, SHADOW_BYTES + 1)]);
    assert_eq!(live.sample_size().0, 200);
}

/// A transform file that cannot be loaded at all (a deploy of garbage, then a restart) used
/// to stop the start: with a deployment record the last accepted version runs instead.
/// Without the record the start still fails, with the loader's error.
#[test]
fn a_start_with_a_broken_file_runs_the_last_accepted_version_from_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let wasm = d.join("team.wasm");
    let team = std::fs::read(vast_test_guests::TEAM_ENRICH_PATH).unwrap();
    std::fs::write(&wasm, &team).unwrap();
    std::fs::write(d.join("teams.csv"), "entity_id,team\npg-1,dba\n").unwrap();
    let cfg_path = d.join("pipelines.toml");
    std::fs::write(
        &cfg_path,
        "[[pipelines]]\ntopic = \"raw-logs\"\ntransform = \"team.wasm\"\nconfig = { table = \"teams\" }\n[pipelines.enrichment.teams]\npath = \"teams.csv\"\n",
    )
    .unwrap();
    let engine = TransformEngine::new(None).unwrap();
    let config = vast_processor::config::Config::load(&cfg_path).unwrap();
    let state = d.join("state");
    let load =
        || vast_processor::pipeline::load_pipelines_with_state(&config, &engine, Some(&state));
    let first = load().unwrap();
    let accepted = first[0].live.current().module.version().to_string();
    assert!(first[0].live.refused_file().is_none());

    std::fs::write(&wasm, b"not a component").unwrap();
    let second = load().unwrap();
    let live = &second[0].live;
    assert_eq!(live.current().module.version(), accepted);
    let refused = live.refused_file().expect("the broken file is named");
    assert!(refused.file.ends_with("team.wasm"), "{refused:?}");
    assert_eq!(live.last().result, "refused_at_start");
    // It runs as the record's version did: the enrichment still applies.
    assert_eq!(team_tag(live).as_deref(), Some("dba"));

    let err = vast_processor::pipeline::load_pipelines(&config, &engine)
        .err()
        .expect("without a record the broken file stops the start");
    assert!(!err.to_string().is_empty());
}

/// 100 invalid-JSON records after a good deploy rolled the good version back and banned it:
/// the previous version fails them too. Only what the new version does worse counts.
#[test]
fn bad_input_that_both_versions_reject_never_rolls_back_a_good_version() {
    let engine = TransformEngine::new(None).unwrap();
    let good = bundled_raw_logs(&engine);
    let team = engine
        .load(
            "raw-logs",
            &std::fs::read(vast_test_guests::TEAM_ENRICH_PATH).unwrap(),
        )
        .unwrap();
    let config = ReloadConfig {
        probation_batches: 5,
        probation_records: 0,
        probation_seconds: 0,
        ..Default::default()
    };
    let live = LiveTransform::new("raw-logs", good, InstanceSettings::default(), config);
    live.try_swap(team.clone(), InstanceSettings::default())
        .unwrap();
    let bad_input: Vec<Message> = msgs(0, 100)
        .into_iter()
        .map(|m| Message {
            payload: b"{not json".to_vec(),
            ..m
        })
        .collect();
    for chunk in bad_input.chunks(20) {
        let v = live.current();
        let mut inst = TransformInstance::new(v.module.clone(), v.settings.clone()).unwrap();
        let results = inst.process(chunk, 0);
        assert!(
            results
                .iter()
                .all(|r| !matches!(r, vast_processor::transform::wasm::MessageResult::Rows(_)))
        );
        live.observe(v.generation, chunk, &results);
    }
    assert_eq!(live.current().module.version(), team.version());
    assert_eq!(
        live.rolled_back.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "{:?}",
        live.last()
    );
    assert!(
        !live.on_probation(),
        "five batches, no minimum of records or time: over"
    );
}

/// Each of ~170 shadow records burned the full deadline of a looping candidate in turn (354 s
/// before the rejection, every later deploy waiting). The sample runs in one call first, so
/// a candidate that hits its deadline on records the running version handled is rejected at
/// once, saying so.
#[test]
fn a_looping_candidate_is_rejected_after_one_deadline_not_one_per_shadow_record() {
    let engine = TransformEngine::new(None).unwrap();
    let good = bundled_raw_logs(&engine);
    let mut settings = InstanceSettings::default();
    settings.limits.deadline_ms = 100;
    let live = LiveTransform::new("raw-logs", good, settings.clone(), ReloadConfig::default());
    let looping: Vec<Message> = msgs(0, 50)
        .into_iter()
        .map(|m| Message {
            payload: b"loop".to_vec(),
            ..m
        })
        .collect();
    live.remember(&looping);
    let hostile = engine
        .load(
            "hostile",
            &std::fs::read(vast_test_guests::HOSTILE_PATH).unwrap(),
        )
        .unwrap();
    let err = live.try_swap(hostile, settings).unwrap_err();
    assert!(
        err.0.contains("CPU deadline of 100 ms")
            && err.0.contains("where the running version took"),
        "{err}"
    );
}

/// An enrichment edit that changed every row's `team`, or dropped the column, was accepted
/// without a word: the check compared failures only. Now the rows are compared: the decision
/// names what changed, and `reload.shadow_max_changed` can refuse a change that is too big.
#[test]
fn output_changes_are_reported_and_refused_over_shadow_max_changed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(vast_test_guests::TEAM_ENRICH_PATH, d.join("team.wasm")).unwrap();
    let start = |reload: &str| {
        std::fs::write(d.join("teams.csv"), "entity_id,team,owner\npg-1,dba,ann\n").unwrap();
        let cfg_path = d.join("pipelines.toml");
        std::fs::write(
            &cfg_path,
            format!("{reload}[[pipelines]]\ntopic = \"raw-logs\"\ntransform = \"team.wasm\"\nconfig = {{ table = \"teams\" }}\n[pipelines.enrichment.teams]\npath = \"teams.csv\"\n"),
        )
        .unwrap();
        let config = vast_processor::config::Config::load(&cfg_path).unwrap();
        let engine = TransformEngine::new(None).unwrap();
        let live = vast_processor::pipeline::load_pipelines(&config, &engine).unwrap()[0]
            .live
            .clone();
        live.remember(&msgs(0, 40));
        (config, engine, live)
    };

    // Report only (the default): accepted, with what changed in the decision.
    let (config, engine, live) = start("");
    let before = live.current().label().to_string();
    std::fs::write(
        d.join("teams.csv"),
        "entity_id,team,owner\npg-1,storage,ann\n",
    )
    .unwrap();
    vast_processor::transform::reload::swap_pipeline(&live, &config.pipelines[0], &config, &engine)
        .unwrap();
    let last = live.last();
    let diff = last.output_diff.clone().expect("a diff with the decision");
    assert_eq!((diff.compared, diff.changed), (40, 40), "{diff:?}");
    assert_eq!(diff.fields.keys().collect::<Vec<_>>(), ["tags.team"]);
    assert_eq!(
        diff.examples[0],
        r#"raw-logs/0@0: tags.team "dba" -> "storage""#
    );
    assert!(
        last.detail
            .contains("40 of 40 records changed output (tags.team 40)"),
        "{}",
        last.detail
    );
    // Same module, other table content: another version in the rows' lineage.
    let after = live.current().label().to_string();
    assert_ne!(before, after);
    assert_eq!(
        before.split('.').next(),
        after.split('.').next(),
        "{before} {after}"
    );

    // A column dropped: the tag is gone from every row, and that is named too.
    std::fs::write(d.join("teams.csv"), "entity_id,owner\npg-1,ann\n").unwrap();
    vast_processor::transform::reload::swap_pipeline(&live, &config.pipelines[0], &config, &engine)
        .unwrap();
    let diff = live.last().output_diff.unwrap();
    assert_eq!(diff.changed, 40);
    assert!(
        diff.examples[0].contains(r#"tags.team "storage" -> null"#),
        "{diff:?}"
    );

    // Refused over the limit: the running version (and its team) stays.
    let (config, engine, live) = start("[reload]\nshadow_max_changed = 0.5\n");
    std::fs::write(
        d.join("teams.csv"),
        "entity_id,team,owner\npg-1,storage,ann\n",
    )
    .unwrap();
    let err = vast_processor::transform::reload::swap_pipeline(
        &live,
        &config.pipelines[0],
        &config,
        &engine,
    )
    .unwrap_err();
    assert!(
        err.0.contains("40 of 40 records changed output")
            && err.0.contains("shadow_max_changed = 0.5"),
        "{err}"
    );
    assert_eq!(team_tag(&live).as_deref(), Some("dba"));
    assert_eq!(live.last().result, "rejected");
}

/// A check has a wall-time budget of its own: a candidate slow on the sample is rejected once
/// it is spent, even when its per-call deadline is far away.
#[test]
fn a_check_over_its_budget_is_rejected() {
    let engine = TransformEngine::new(None).unwrap();
    let good = bundled_raw_logs(&engine);
    let mut settings = InstanceSettings::default();
    settings.limits.deadline_ms = 60_000;
    let config = ReloadConfig {
        check_budget_ms: 300,
        ..ReloadConfig::default()
    };
    let live = LiveTransform::new("raw-logs", good, settings.clone(), config);
    let looping: Vec<Message> = msgs(0, 5)
        .into_iter()
        .map(|m| Message {
            payload: b"loop".to_vec(),
            ..m
        })
        .collect();
    live.remember(&looping);
    let hostile = engine
        .load(
            "hostile",
            &std::fs::read(vast_test_guests::HOSTILE_PATH).unwrap(),
        )
        .unwrap();
    let err = live.try_swap(hostile, settings).unwrap_err();
    assert!(
        err.0
            .contains("the check's budget of 300 ms (reload.check_budget_ms) ran out"),
        "{err}"
    );
    assert_eq!(live.last().result, "rejected");
}
