//! Prometheus metrics: counters, gauges and histograms kept in atomics, rendered in the text
//! exposition format by the admin server. Labels are bounded: pipeline/topic (from the
//! config), table, reason classes, partitions, and at most 256 guest counter names per pipeline.

mod run;

pub use run::RunStats;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A histogram with fixed upper bounds.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// f64 bits of the running sum.
    sum: AtomicU64,
}

/// Buckets for durations in seconds (100 µs .. 10 s).
pub const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Buckets for row counts.
pub const ROWS: &[f64] = &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0];
/// Buckets for byte sizes.
pub const BYTES: &[f64] = &[1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

impl Histogram {
    /// An empty histogram over `bounds`.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Record one observation.
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.buckets) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            f64::from_bits(self.sum.load(Ordering::Relaxed))
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Dead-letter reason classes.
pub const DEAD_CLASSES: [&str; 3] = ["fail", "trap", "contract"];
/// Flush reasons.
pub const FLUSH_REASONS: [&str; 6] = ["rows", "bytes", "age", "memory", "shutdown", "revoke"];

/// The metrics of one pipeline.
pub struct PipelineMetrics {
    pub name: String,
    pub topic: String,
    pub messages_in: AtomicU64,
    /// Rows written per table: [events, metrics].
    pub rows_out: [AtomicU64; 2],
    pub skipped: AtomicU64,
    /// Dead letters per class, in the order of [`DEAD_CLASSES`].
    pub dead_letters: [AtomicU64; 3],
    pub invocations: AtomicU64,
    pub traps: AtomicU64,
    /// Guest log lines dropped by the rate limits.
    pub guest_logs_dropped: AtomicU64,
    /// Guest log lines and counter names cut to their limit.
    pub guest_truncated: AtomicU64,
    pub transform_seconds: Histogram,
    /// CPU time the workers' threads spent inside the transform, in nanoseconds.
    pub transform_cpu_ns: AtomicU64,
    /// Highest linear-memory size of any instance, in bytes.
    pub memory_high_water: AtomicU64,
    /// Flushes per reason, in the order of [`FLUSH_REASONS`].
    pub flushes: [AtomicU64; FLUSH_REASONS.len()],
    pub batch_rows: Histogram,
    pub batch_bytes: Histogram,
    pub sink_write_seconds: Histogram,
    pub sink_retries: AtomicU64,
    pub sink_failures: AtomicU64,
    pub guest_counters: Mutex<BTreeMap<String, i64>>,
    /// How long a worker paused to switch to a newly swapped version.
    pub swap_pause_seconds: Histogram,
}

impl PipelineMetrics {
    fn new(name: &str, topic: &str) -> Self {
        let z = || AtomicU64::new(0);
        PipelineMetrics {
            name: name.to_string(),
            topic: topic.to_string(),
            messages_in: z(),
            rows_out: [z(), z()],
            skipped: z(),
            dead_letters: [z(), z(), z()],
            invocations: z(),
            traps: z(),
            guest_logs_dropped: z(),
            guest_truncated: z(),
            transform_seconds: Histogram::new(SECONDS),
            transform_cpu_ns: z(),
            memory_high_water: z(),
            flushes: std::array::from_fn(|_| z()),
            batch_rows: Histogram::new(ROWS),
            batch_bytes: Histogram::new(BYTES),
            sink_write_seconds: Histogram::new(SECONDS),
            sink_retries: z(),
            sink_failures: z(),
            guest_counters: Mutex::new(BTreeMap::new()),
            swap_pause_seconds: Histogram::new(SECONDS),
        }
    }

    /// Add guest-defined counters (at most 256 names per pipeline).
    pub fn add_guest_counters(&self, counters: impl IntoIterator<Item = (String, i64)>) {
        let mut m = self
            .guest_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (k, v) in counters {
            if m.len() < 256 || m.contains_key(&k) {
                *m.entry(k).or_default() += v;
            }
        }
    }

    /// Count a dead letter of `class` (one of [`DEAD_CLASSES`]).
    pub fn dead_letter(&self, class: &str) {
        if let Some(i) = DEAD_CLASSES.iter().position(|c| *c == class) {
            self.dead_letters[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Count a flush for `reason` (one of [`FLUSH_REASONS`]).
    pub fn flush(&self, reason: &str) {
        if let Some(i) = FLUSH_REASONS.iter().position(|r| *r == reason) {
            self.flushes[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Per-partition consumer position, from librdkafka's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionPosition {
    pub committed: i64,
    pub high_watermark: i64,
    pub lag: i64,
    /// When the committed offset last moved (ms since the Unix epoch; 0: not yet).
    pub progressed_ms: u64,
}

/// Whether the processor is ready, and why not: computed in the background from live
/// signals (see `crate::admin`), read instantly by `/readyz` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// `ok`, or the class of the first problem (a metric label).
    pub reason: &'static str,
    /// What to tell a person.
    pub detail: String,
}

/// All metrics of a run.
pub struct Metrics {
    pub pipelines: Vec<PipelineMetrics>,
    pub partitions: Mutex<BTreeMap<(String, i32), PartitionPosition>>,
    pub reload_swaps: AtomicU64,
    /// Set while the consumer is a member of its group (from an assignment, possibly empty,
    /// to a revoke).
    pub joined: AtomicBool,
    /// False while librdkafka reports every broker down.
    pub broker_up: AtomicBool,
    /// The last sink (or dead-letter) write's error, cleared by the next success.
    pub sink_error: Mutex<Option<String>>,
    /// The current readiness.
    pub readiness: Mutex<Readiness>,
}

impl Metrics {
    /// Metrics for pipelines given as (name, topic).
    pub fn new<'a>(pipelines: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Metrics {
            pipelines: pipelines
                .into_iter()
                .map(|(n, t)| PipelineMetrics::new(n, t))
                .collect(),
            partitions: Mutex::new(BTreeMap::new()),
            reload_swaps: AtomicU64::new(0),
            joined: AtomicBool::new(false),
            broker_up: AtomicBool::new(true),
            sink_error: Mutex::new(None),
            readiness: Mutex::new(Readiness {
                reason: "starting",
                detail: "not ready: starting".into(),
            }),
        }
    }

    /// Render everything in the Prometheus text format. `stats` supplies the process-wide
    /// gauges (queues, paused partitions).
    pub fn render(&self, stats: &RunStats) -> String {
        let mut o = String::with_capacity(16 * 1024);
        {
            let r = self.readiness.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(
                o,
                "# HELP vast_ready 1 when /readyz answers 200; the reason label says why not.\n# TYPE vast_ready gauge\nvast_ready{{reason=\"{}\"}} {}",
                r.reason,
                u8::from(r.reason == "ok")
            );
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let pl = |p: &PipelineMetrics| {
            format!("pipeline=\"{}\",topic=\"{}\"", esc(&p.name), esc(&p.topic))
        };
        type Counter = fn(&PipelineMetrics) -> u64;
        let simple: [(&str, &str, &str, Counter); 9] = [
            (
                "vast_messages_in_total",
                "counter",
                "Records consumed.",
                |p| p.messages_in.load(Ordering::Relaxed),
            ),
            (
                "vast_skipped_total",
                "counter",
                "Records the transform skipped on purpose.",
                |p| p.skipped.load(Ordering::Relaxed),
            ),
            (
                "vast_transform_invocations_total",
                "counter",
                "Calls of the transform's process function.",
                |p| p.invocations.load(Ordering::Relaxed),
            ),
            (
                "vast_transform_traps_total",
                "counter",
                "Transform calls that trapped (panic, deadline, memory, stack).",
                |p| p.traps.load(Ordering::Relaxed),
            ),
            (
                "vast_transform_guest_logs_dropped_total",
                "counter",
                "Guest log lines dropped by the per-instance line and byte budgets.",
                |p| p.guest_logs_dropped.load(Ordering::Relaxed),
            ),
            (
                "vast_transform_guest_truncated_total",
                "counter",
                "Guest log lines and counter names cut to their length limit.",
                |p| p.guest_truncated.load(Ordering::Relaxed),
            ),
            (
                "vast_sink_retries_total",
                "counter",
                "Sink or dead-letter writes retried.",
                |p| p.sink_retries.load(Ordering::Relaxed),
            ),
            (
                "vast_sink_failures_total",
                "counter",
                "Sink writes that failed (each retry counts).",
                |p| p.sink_failures.load(Ordering::Relaxed),
            ),
            (
                "vast_transform_memory_high_water_bytes",
                "gauge",
                "Largest linear memory of any instance of the transform.",
                |p| p.memory_high_water.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, f) in simple {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for p in &self.pipelines {
                let _ = writeln!(o, "{name}{{{}}} {}", pl(p), f(p));
            }
        }
        let _ = writeln!(
            o,
            "# HELP vast_rows_out_total Rows written to the sink.\n# TYPE vast_rows_out_total counter"
        );
        for p in &self.pipelines {
            for (i, table) in ["events", "metrics"].iter().enumerate() {
                let _ = writeln!(
                    o,
                    "vast_rows_out_total{{{},table=\"{table}\"}} {}",
                    pl(p),
                    load(&p.rows_out[i])
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP vast_dead_letters_total Records sent to the dead-letter destination, by reason class.\n# TYPE vast_dead_letters_total counter"
        );
        for p in &self.pipelines {
            for (i, c) in DEAD_CLASSES.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "vast_dead_letters_total{{{},reason=\"{c}\"}} {}",
                    pl(p),
                    load(&p.dead_letters[i])
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP vast_transform_errors_total Records the transform rejected (fail outcomes).\n# TYPE vast_transform_errors_total counter"
        );
        for p in &self.pipelines {
            let _ = writeln!(
                o,
                "vast_transform_errors_total{{{}}} {}",
                pl(p),
                load(&p.dead_letters[0])
            );
        }
        let _ = writeln!(
            o,
            "# HELP vast_transform_cpu_seconds_total CPU time spent in the transform.\n# TYPE vast_transform_cpu_seconds_total counter"
        );
        for p in &self.pipelines {
            let _ = writeln!(
                o,
                "vast_transform_cpu_seconds_total{{{}}} {}",
                pl(p),
                load(&p.transform_cpu_ns) as f64 / 1e9
            );
        }
        let _ = writeln!(
            o,
            "# HELP vast_flushes_total Batches flushed, by reason.\n# TYPE vast_flushes_total counter"
        );
        for p in &self.pipelines {
            for (i, r) in FLUSH_REASONS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "vast_flushes_total{{{},reason=\"{r}\"}} {}",
                    pl(p),
                    load(&p.flushes[i])
                );
            }
        }
        type Hist = fn(&PipelineMetrics) -> &Histogram;
        let hists: [(&str, &str, Hist); 5] = [
            (
                "vast_reload_swap_pause_seconds",
                "Pause of a worker switching to a hot-swapped version.",
                |p| &p.swap_pause_seconds,
            ),
            (
                "vast_transform_batch_seconds",
                "Wall time of one transform call.",
                |p| &p.transform_seconds,
            ),
            ("vast_batch_rows", "Rows per flushed batch.", |p| {
                &p.batch_rows
            }),
            (
                "vast_batch_bytes",
                "Approximate bytes per flushed batch.",
                |p| &p.batch_bytes,
            ),
            (
                "vast_sink_write_seconds",
                "Latency of a successful sink write.",
                |p| &p.sink_write_seconds,
            ),
        ];
        for (name, help, f) in hists {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
            for p in &self.pipelines {
                f(p).render(&mut o, name, &pl(p));
            }
        }
        let _ = writeln!(
            o,
            "# HELP vast_guest_counter Counters defined by the transform (WIT counter import).\n# TYPE vast_guest_counter counter"
        );
        for p in &self.pipelines {
            for (k, v) in p
                .guest_counters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                let _ = writeln!(o, "vast_guest_counter{{{},name=\"{}\"}} {v}", pl(p), esc(k));
            }
        }
        let parts = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            o,
            "# HELP vast_committed_offset Committed offset per partition.\n# TYPE vast_committed_offset gauge"
        );
        for ((t, p), pos) in parts.iter() {
            let _ = writeln!(
                o,
                "vast_committed_offset{{topic=\"{}\",partition=\"{p}\"}} {}",
                esc(t),
                pos.committed
            );
        }
        let _ = writeln!(
            o,
            "# HELP vast_consumer_lag Records behind the high watermark per partition.\n# TYPE vast_consumer_lag gauge"
        );
        for ((t, p), pos) in parts.iter() {
            let _ = writeln!(
                o,
                "vast_consumer_lag{{topic=\"{}\",partition=\"{p}\"}} {}",
                esc(t),
                pos.lag
            );
        }
        drop(parts);
        let gauges = [
            (
                "vast_queue_messages",
                "Records queued for workers and not transformed yet.",
                stats.queued.load(Ordering::Relaxed),
            ),
            (
                "vast_queue_bytes",
                "Bytes of the records queued for workers and not transformed yet.",
                stats.queued_bytes.load(Ordering::Relaxed),
            ),
            (
                "vast_inflight_bytes",
                "Bytes in flight in the workers: records not yet transformed, rows being batched, dead letters, transform memory.",
                stats.inflight(),
            ),
            (
                "vast_inflight_bytes_max",
                "The most bytes ever in flight in the workers.",
                stats.inflight_max.load(Ordering::Relaxed),
            ),
            (
                "vast_inflight_limit_bytes",
                "The in-flight bound: runtime.queue_bytes times the workers.",
                stats.inflight_limit.load(Ordering::Relaxed),
            ),
            (
                "vast_paused_partitions",
                "Partitions paused because their worker queue is full.",
                stats.paused.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(
            o,
            "# HELP vast_offset_commits_total Successful offset commits.\n# TYPE vast_offset_commits_total counter\nvast_offset_commits_total {}",
            stats.commits.load(Ordering::Relaxed)
        );
        o
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// CPU time consumed by the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_THREAD_CPUTIME_ID is valid
    // on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 5.0, 50.0] {
            h.observe(v);
        }
        let mut s = String::new();
        h.render(&mut s, "x", "a=\"b\"");
        assert!(s.contains("x_bucket{a=\"b\",le=\"1\"} 1"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"10\"} 2"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3"), "{s}");
        assert!(s.contains("x_sum{a=\"b\"} 55.5"), "{s}");
    }

    #[test]
    fn renders_labelled_series() {
        let m = Metrics::new([("logs", "raw-logs")]);
        m.pipelines[0].messages_in.fetch_add(3, Ordering::Relaxed);
        m.pipelines[0].dead_letter("trap");
        m.pipelines[0].add_guest_counters([("x\"y".to_string(), 2)]);
        let text = m.render(&RunStats::default());
        assert!(
            text.contains("vast_messages_in_total{pipeline=\"logs\",topic=\"raw-logs\"} 3"),
            "{text}"
        );
        assert!(text.contains(
            "vast_dead_letters_total{pipeline=\"logs\",topic=\"raw-logs\",reason=\"trap\"} 1"
        ));
        assert!(text.contains(
            "vast_guest_counter{pipeline=\"logs\",topic=\"raw-logs\",name=\"x\\\"y\"} 2"
        ));
        assert!(text.contains("vast_paused_partitions 0"));
    }

    #[test]
    fn thread_cpu_time_advances() {
        let a = thread_cpu_ns();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        assert!(thread_cpu_ns() > a);
    }
}
