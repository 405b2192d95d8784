//! The bundled components agree with their logic compiled natively, message by message, over
//! thousands of generated records in many batches: whatever happens at the sandbox boundary
//! (copying into and out of guest memory, the guest's per-batch arena growing and being
//! rewound, instances reused across batches) must not change a single field.

use std::path::PathBuf;
use vast_processor::model::RowRef;
use vast_processor::model::{Event, Metric, MetricType, Row};
use vast_processor::transform::wasm::{
    InstanceSettings, MessageResult, TransformEngine, TransformInstance,
};
use vast_transform_sdk as sdk;

const NOW: i64 = 1_760_457_600_000_000;

fn host_row(r: sdk::Row) -> Row {
    match r {
        sdk::Row::Event(e) => Row::Event(Event {
            timestamp: e.timestamp,
            entity_id: e.entity_id,
            event_type: e.event_type,
            source: e.source,
            environment: e.environment,
            message: e.message,
            tags: e.tags,
            attributes: e.attributes,
            trace_id: e.trace_id,
            id: e.id,
            created_at: e.created_at,
        }),
        sdk::Row::Metric(m) => Row::Metric(Metric {
            metric_name: m.metric_name,
            entity_id: m.entity_id,
            timestamp: m.timestamp,
            source: m.source,
            environment: m.environment,
            metric_value: m.metric_value,
            metric_type: match m.metric_type {
                sdk::MetricType::Gauge => MetricType::Gauge,
                sdk::MetricType::Counter => MetricType::Counter,
                sdk::MetricType::Histogram => MetricType::Histogram,
            },
            unit: m.unit,
            tags: m.tags,
            metadata: m.metadata,
            created_at: m.created_at,
            id: m.id,
        }),
    }
}

#[test]
fn bundled_components_match_their_native_logic_over_many_batches() {
    let engine = TransformEngine::new(Some(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wasm-cache"),
    ))
    .unwrap();
    for topic in sdk::transforms::BUNDLED {
        let bytes = vast_processor::transform::loader::bundled_bytes(topic).unwrap();
        let module = engine.load(topic, bytes).unwrap();
        let mut inst = TransformInstance::new(module, InstanceSettings::default()).unwrap();
        let native = sdk::transforms::by_name(topic).unwrap();
        let mut msgs = vast_processor::generate::messages(topic, 6000);
        // Damaged records between good ones: their errors must come out whole, whatever the
        // next message does with the guest's memory (otel-metrics decodes in scratch memory
        // that the next message rewinds).
        for (i, m) in msgs.iter_mut().enumerate() {
            match i % 13 {
                3 => m.payload.truncate(m.payload.len() / 2),
                8 => m.payload = b"\x1f\x8b\x08\x00 not gzip after all".to_vec(),
                _ => {}
            }
        }
        // Uneven batch sizes, the pipeline's maximum among them.
        let mut start = 0;
        for size in [1024usize, 1, 700, 1024, 3, 1024].iter().cycle() {
            if start >= msgs.len() {
                break;
            }
            let batch = &msgs[start..(start + size).min(msgs.len())];
            let got = inst.process(batch, NOW);
            assert_eq!(got.len(), batch.len());
            for (m, g) in batch.iter().zip(got) {
                let mut stats = sdk::Stats::default();
                let want = native(
                    &sdk::message(topic, m.offset, m.payload.clone()),
                    &mut stats,
                );
                let ctx = || format!("{topic} offset {}", m.offset);
                match (want, g) {
                    (sdk::Outcome::Rows(want), MessageResult::Rows(got)) => {
                        let want: Vec<Row> = want.into_iter().map(host_row).collect();
                        let want: Vec<_> = want
                            .iter()
                            .enumerate()
                            .map(|(i, r)| {
                                let r = RowRef::from(r);
                                r.check().unwrap();
                                vast_processor::model::to_json(&r.to_row(m, i, NOW))
                            })
                            .collect();
                        let got: Vec<_> = got.iter().map(vast_processor::model::to_json).collect();
                        assert_eq!(want, got, "{}", ctx());
                    }
                    (sdk::Outcome::Skip(a), MessageResult::Skip(b)) => {
                        assert_eq!(a, b, "{}", ctx())
                    }
                    (sdk::Outcome::Fail(a), MessageResult::Fail(b)) => {
                        assert_eq!(a, b, "{}", ctx())
                    }
                    (want, got) => panic!("{}: native {want:?}, wasm {got:?}", ctx()),
                }
            }
            start += size;
        }
    }
}

/// Batches ten times the worker's (1024 messages), as `bench` sends, run without a trap
/// given memory for them, take a bounded multiple of their input, and repeating them does
/// not keep growing the instance's memory: the guest's arena keeps and reuses its chunks.
/// (The earlier arena doubled chunks without a cap and merged them into a new one per batch,
/// reserving up to twice what a batch needed.) A small batch in between may leave the
/// general allocator's free space fragmented once, so the plateau is taken after it.
#[test]
fn large_batches_reuse_the_guest_arena() {
    let engine = TransformEngine::new(Some(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wasm-cache"),
    ))
    .unwrap();
    let mut settings = InstanceSettings::default();
    settings.limits.memory_mib = 256;
    for topic in sdk::transforms::BUNDLED {
        let bytes = vast_processor::transform::loader::bundled_bytes(topic).unwrap();
        let module = engine.load(topic, bytes).unwrap();
        let mut inst = TransformInstance::new(module, settings.clone()).unwrap();
        let msgs = vast_processor::generate::messages(topic, 10_000);
        let (all, few) = (&msgs[..], &msgs[..10]);
        let batches = [all, few, all, all, few, all, all, all];
        let mut plateau = 0;
        for (i, batch) in batches.iter().enumerate() {
            let got = inst.process(batch, NOW);
            assert_eq!(got.len(), batch.len());
            let errors = got
                .iter()
                .filter(|r| matches!(r, MessageResult::Error(_)))
                .count();
            assert_eq!(errors, 0, "{topic}: {errors} messages errored");
            if i == 2 {
                plateau = inst.stats().memory_high_water;
            }
        }
        let stats = inst.stats();
        assert_eq!(stats.traps, 0, "{topic}: {stats:?}");
        assert_eq!(
            stats.calls,
            batches.len() as u64,
            "{topic}: retried one by one: {stats:?}"
        );
        assert_eq!(
            stats.memory_high_water, plateau,
            "{topic}: memory kept growing over repeated batches: {stats:?}"
        );
        // What a batch costs in guest memory, against its input: raw-host-logs (1.4 KB
        // messages, ~3.7 rows each) peaks at ~70 MiB for 10,000 messages now (101 MiB with the
        // first capped arena, 144 MiB before it); otel-metrics at ~40 MiB, the others below.
        let input: usize = msgs.iter().map(|m| m.payload.len()).sum();
        assert!(
            stats.memory_high_water <= 8 * input + (16 << 20),
            "{topic}: {} MiB of guest memory for {} MiB of input",
            stats.memory_high_water >> 20,
            input >> 20
        );
    }
}

/// Rows appended as the worker appends them (borrowed from the call's output, host columns
/// filled by the batcher) and as owned, completed rows give identical Arrow batches: for
/// every bundled component (0.2.0 outputs read in place) and for a 0.1.0 component (owned
/// rows), including row ids derived per message and row index.
#[test]
fn borrowed_rows_build_the_same_arrow_as_owned_rows() {
    use vast_processor::batch::{Lineage, TableBatcher};
    let engine = TransformEngine::new(Some(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wasm-cache"),
    ))
    .unwrap();
    let mut cases: Vec<(String, Vec<u8>, Vec<vast_processor::model::Message>)> =
        sdk::transforms::BUNDLED
            .iter()
            .map(|t| {
                let bytes = vast_processor::transform::loader::bundled_bytes(t)
                    .unwrap()
                    .to_vec();
                (
                    t.to_string(),
                    bytes,
                    vast_processor::generate::messages(t, 2500),
                )
            })
            .collect();
    let mut legacy = vast_processor::generate::messages("raw-logs", 4);
    for (m, p) in legacy.iter_mut().zip(["hello", "skip", "metric x", "fail"]) {
        m.payload = p.as_bytes().to_vec();
    }
    cases.push((
        "legacy".into(),
        std::fs::read(vast_test_guests::LEGACY_V0_1_PATH).unwrap(),
        legacy,
    ));
    for (name, bytes, msgs) in cases {
        let module = engine.load(&name, &bytes).unwrap();
        let mut fast = TransformInstance::new(module.clone(), InstanceSettings::default()).unwrap();
        let mut owned = TransformInstance::new(module, InstanceSettings::default()).unwrap();
        let (mut a, mut b) = (TableBatcher::new(true), TableBatcher::new(true));
        let mut rows = 0;
        for batch in msgs.chunks(1024) {
            let p = fast.process_batch(batch, NOW);
            let o = owned.process(batch, NOW);
            for ((m, r), r2) in batch.iter().zip(p.results()).zip(&o) {
                let lineage = Lineage {
                    topic: &m.topic,
                    partition: m.partition,
                    offset: m.offset,
                    version: "v",
                };
                match (r, r2) {
                    (MessageResult::Rows(span), MessageResult::Rows(owned_rows)) => {
                        assert_eq!(span.len(), owned_rows.len(), "{name}");
                        for (i, row) in p.rows(*span).enumerate() {
                            a.push_ref(&row, i, &lineage, NOW);
                        }
                        for row in owned_rows {
                            b.push(row, &lineage);
                        }
                        rows += span.len();
                    }
                    (MessageResult::Skip(x), MessageResult::Skip(y))
                    | (MessageResult::Fail(x), MessageResult::Fail(y)) => assert_eq!(x, y),
                    (x, y) => panic!("{name}: {x:?} vs {y:?}"),
                }
            }
        }
        assert!(rows > 0, "{name}: no rows");
        assert_eq!(a.bytes(), b.bytes(), "{name}");
        assert_eq!(a.finish(), b.finish(), "{name}");
    }
}
