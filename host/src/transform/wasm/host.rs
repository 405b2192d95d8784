//! What a guest may touch: the state of one store (WASI with no capabilities, the memory
//! limiter, captured stdout/stderr) and the host imports of the contract: `log` (rate-limited
//! per instance), `lookup` (the pipeline's enrichment tables) and `counter` (bounded in the
//! number of names). Both contract worlds' `host` interfaces call these (abi_v1, abi_v2).

use super::capture::Capture;
use super::limiter::MemoryLimiter;
use crate::config::Limits;
use crate::model::cut_with_marker;
use crate::transform::enrichment::Enrichment;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// A guest log line's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Everything an instance needs besides the module: the pipeline's settings.
#[derive(Clone, Default)]
pub struct InstanceSettings {
    /// Key/values passed to `init`.
    pub config: Vec<(String, String)>,
    pub limits: Limits,
    pub enrichment: Arc<Enrichment>,
}

impl InstanceSettings {
    /// The first 8 hex of SHA-256 over the `init` config and the enrichment tables' content:
    /// what decides a row besides the module. Limits are left out: they bound a call, they
    /// do not shape its rows.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update((self.config.len() as u64).to_le_bytes());
        for (k, v) in &self.config {
            for part in [k, v] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
        h.update(self.enrichment.digest().as_bytes());
        super::engine::hex(&h.finalize())[..8].to_string()
    }
}

/// The whole version that shaped a row: `name@<module hash, 12 hex>.<config and tables, 8
/// hex>`, so rows written under different configs or enrichment tables can be told apart.
pub fn lineage(module: &super::TransformModule, settings: &InstanceSettings) -> String {
    format!("{}.{}", module.version(), settings.fingerprint())
}

/// Host state of one store: WASI (empty), limits, and what the host imports touch.
pub struct StoreState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    pub(super) enrichment: Arc<Enrichment>,
    pub(super) version: Arc<str>,
    pub(super) stdout: Capture,
    pub(super) stderr: Capture,
    pub(super) log_tokens: f64,
    pub(super) log_refilled: Instant,
    pub(super) log_suppressed: u64,
    /// Byte budget of the log (refilled like the line budget).
    pub(super) log_byte_tokens: f64,
    /// Bytes logged, and log lines or counter names cut to their limit.
    pub(super) log_bytes: u64,
    pub(super) truncated: u64,
    pub(super) counters: HashMap<String, i64>,
    /// A check's instance: its guest's log lines go to debug (the decision summarises them).
    pub(super) quiet: bool,
    /// Epoch ticks left before the deadline, for a cancellable instance (its deadline is
    /// counted in a callback that also looks at the cancel flag).
    pub(super) ticks_left: u64,
}

/// Guest log lines allowed per instance in a burst, and refilled per second after it.
const LOG_BURST: f64 = 100.0;
const LOG_PER_SEC: f64 = 20.0;
/// Guest log bytes allowed per instance in a burst, and refilled per second after it: lines
/// were counted, not bytes, and 300 lines of 5 MiB wrote 1.5 GB of stderr in 12 s.
const LOG_BYTES_BURST: f64 = 256.0 * 1024.0;
const LOG_BYTES_PER_SEC: f64 = 64.0 * 1024.0;
/// Longest guest log line and counter name kept; longer ones are cut, with a marker.
pub const MAX_LOG_LINE: usize = 4096;
pub const MAX_COUNTER_NAME: usize = 128;

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl StoreState {
    /// A store's state for an instance with `settings`, labelled `version` in logs.
    pub(super) fn new(settings: &InstanceSettings, version: Arc<str>) -> StoreState {
        let stdout = Capture::default();
        let stderr = Capture::default();
        // Deliberately empty: no preopens, no env, no args, no network, no inherited stdio.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        StoreState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                max_bytes: settings.limits.memory_bytes(),
                refused: None,
                high_water: 0,
            },
            enrichment: settings.enrichment.clone(),
            version,
            stdout,
            stderr,
            log_tokens: LOG_BURST,
            log_refilled: Instant::now(),
            log_suppressed: 0,
            log_byte_tokens: LOG_BYTES_BURST,
            log_bytes: 0,
            truncated: 0,
            counters: HashMap::new(),
            quiet: false,
            ticks_left: 0,
        }
    }

    /// `log`: a guest log line, through a token bucket per instance (over the rate it is
    /// dropped and counted).
    pub(super) fn log(&mut self, level: Level, mut message: String) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.log_refilled).as_secs_f64();
        self.log_refilled = now;
        self.log_tokens = (self.log_tokens + elapsed * LOG_PER_SEC).min(LOG_BURST);
        self.log_byte_tokens =
            (self.log_byte_tokens + elapsed * LOG_BYTES_PER_SEC).min(LOG_BYTES_BURST);
        if cut_with_marker(&mut message, MAX_LOG_LINE) {
            self.truncated += 1;
        }
        let bytes = message.len() as f64;
        if self.log_tokens < 1.0 || self.log_byte_tokens < bytes {
            self.log_suppressed += 1;
            return;
        }
        self.log_tokens -= 1.0;
        self.log_byte_tokens -= bytes;
        self.log_bytes += message.len() as u64;
        let v = &*self.version;
        if self.quiet {
            tracing::debug!(target: "guest", transform = v, level = ?level, "{message}");
            return;
        }
        match level {
            Level::Trace => tracing::trace!(target: "guest", transform = v, "{message}"),
            Level::Debug => tracing::debug!(target: "guest", transform = v, "{message}"),
            Level::Info => tracing::info!(target: "guest", transform = v, "{message}"),
            Level::Warn => tracing::warn!(target: "guest", transform = v, "{message}"),
            Level::Error => tracing::error!(target: "guest", transform = v, "{message}"),
        }
    }

    /// `lookup`: a key in one of the pipeline's enrichment tables.
    pub(super) fn lookup(&mut self, table: String, key: String) -> Option<String> {
        self.enrichment.lookup(&table, &key).map(str::to_string)
    }

    /// `counter`: add to a guest-defined counter (exported as a metric).
    pub(super) fn counter(&mut self, mut name: String, delta: i64) {
        // A name is a metric label: 40 names of 20 MiB made an 839 MB /metrics body.
        if cut_with_marker(&mut name, MAX_COUNTER_NAME) {
            self.truncated += 1;
        }
        // Bound the number of distinct names a guest can create (metric label cardinality).
        if self.counters.len() < 256 || self.counters.contains_key(&name) {
            *self.counters.entry(name).or_default() += delta;
        }
    }
}

/// Implement a contract world's `host` interface (the same in both worlds) on
/// [`StoreState`], by its bindings' path: `impl_host_interface!(bindings::vast::transform::host)`.
macro_rules! impl_host_interface {
    ($($path:ident)::+) => {
        impl $($path)::+::Host for $crate::transform::wasm::host::StoreState {
            fn log(&mut self, level: $($path)::+::Level, message: String) {
                use $($path)::+::Level as L;
                let level = match level {
                    L::Trace => $crate::transform::wasm::host::Level::Trace,
                    L::Debug => $crate::transform::wasm::host::Level::Debug,
                    L::Info => $crate::transform::wasm::host::Level::Info,
                    L::Warn => $crate::transform::wasm::host::Level::Warn,
                    L::Error => $crate::transform::wasm::host::Level::Error,
                };
                $crate::transform::wasm::host::StoreState::log(self, level, message)
            }

            fn lookup(&mut self, table: String, key: String) -> Option<String> {
                $crate::transform::wasm::host::StoreState::lookup(self, table, key)
            }

            fn counter(&mut self, name: String, delta: i64) {
                $crate::transform::wasm::host::StoreState::counter(self, name, delta)
            }
        }
    };
}
pub(super) use impl_host_interface;
