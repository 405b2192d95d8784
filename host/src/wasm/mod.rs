//! The sandboxed transform runtime.
//!
//! One [`TransformEngine`] per process (one wasmtime `Engine`, one `Linker`, one epoch
//! ticker). A [`TransformModule`] is a compiled component plus its `InstancePre`, shared by
//! all workers. A [`TransformInstance`] owns one `Store`, reused across batches and rebuilt
//! after a trap. Guests get the WASI interfaces linked but no capability behind them: no
//! preopened directories, no environment, no sockets; stdout and stderr go to the log.

mod cache;
mod capture;
mod columns;
mod limits;

pub use cache::default_dir as default_cache_dir;
pub use limits::Limits;

use crate::enrichment::Enrichment;
use crate::rows::{self, RowRef};
use capture::Capture;
use limits::MemoryLimiter;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The current contract, `vast:transform@0.2.0` (wit/transform.wit): column-wise batches.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/transform.wit",
        world: "transform",
    });
}

/// The previous contract, `vast:transform@0.1.0` (wit/compat/transform-0.1.0.wit), for
/// components built against it. Its record types are also the host's own message and row
/// types: one row shape for both contracts downstream of the runtime.
mod v1 {
    wasmtime::component::bindgen!({
        path: "../wit/compat/transform-0.1.0.wit",
        world: "transform",
        additional_derives: [PartialEq],
    });
}

pub use v1::vast::transform::host::Level;
use v1::vast::transform::types::Outcome;
pub use v1::vast::transform::types::{Event, Header, Message, Metric, MetricType, Row};

/// How often the epoch ticker advances; deadlines are accurate to about this.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why a transform could not be loaded or could not process a message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransformError {
    #[error("cannot set up the wasm engine: {0}")]
    Engine(String),
    #[error("`{name}` is not a valid WebAssembly component: {reason}")]
    Compile { name: String, reason: String },
    #[error(
        "`{name}` is not a vast:transform component (wrong WIT world or extra imports): {reason}"
    )]
    WrongWorld { name: String, reason: String },
    #[error("transform {version} rejected its config in `init`: {reason}")]
    InitRejected { version: String, reason: String },
    #[error("transform {version} exceeded its CPU deadline of {deadline_ms} ms and was stopped")]
    Deadline { version: String, deadline_ms: u64 },
    #[error(
        "transform {version} exceeded its memory limit of {limit_mib} MiB (it tried to grow to {asked_mib} MiB)"
    )]
    Memory {
        version: String,
        limit_mib: u64,
        asked_mib: u64,
    },
    #[error("transform {version} overflowed its stack")]
    StackOverflow { version: String },
    #[error("transform {version} trapped: {reason}")]
    Trap { version: String, reason: String },
    #[error("transform {version} broke the contract: {reason}")]
    Contract { version: String, reason: String },
}

impl TransformError {
    /// True for failures of the guest's execution (as opposed to loading errors).
    pub fn is_trap(&self) -> bool {
        matches!(
            self,
            TransformError::Deadline { .. }
                | TransformError::Memory { .. }
                | TransformError::StackOverflow { .. }
                | TransformError::Trap { .. }
        )
    }
}

/// The result for one input message, after host-side checks. `R` holds its rows: a
/// [`RowSpan`] into a [`Processed`] on the hot path ([`TransformInstance::process_batch`]),
/// owned rows with the host columns filled otherwise ([`TransformInstance::process`]).
#[derive(Debug, Clone, PartialEq)]
pub enum MessageResult<R = Vec<Row>> {
    /// Rows for the output tables (possibly none).
    Rows(R),
    /// Filtered on purpose by the transform.
    Skip(String),
    /// The transform reported bad input.
    Fail(String),
    /// The host could not get a valid result for this message (trap, contract breach).
    Error(TransformError),
}

/// One message's rows within a [`Processed`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowSpan {
    start: usize,
    end: usize,
}

impl RowSpan {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True when the message produced no rows.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// Where a row lives: in a checked 0.2.0 output (read in place) or an owned 0.1.0 row.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Event { out: u32, i: u32 },
    Metric { out: u32, i: u32 },
    Owned(u32),
}

/// The rows of one batch, kept as the transform returned them.
#[derive(Default)]
struct RowStore {
    outputs: Vec<bindings::vast::transform::types::Output>,
    owned: Vec<Row>,
    slots: Vec<Slot>,
}

impl RowStore {
    fn mark(&self) -> (usize, usize, usize) {
        (self.outputs.len(), self.owned.len(), self.slots.len())
    }

    /// Forget what was added since `mark` (a call whose outcomes are discarded).
    fn reset(&mut self, (outputs, owned, slots): (usize, usize, usize)) {
        self.outputs.truncate(outputs);
        self.owned.truncate(owned);
        self.slots.truncate(slots);
    }

    fn row(&self, slot: Slot) -> RowRef<'_> {
        match slot {
            Slot::Event { out, i } => RowRef::Event(columns::event(
                &self.outputs[out as usize].events,
                i as usize,
            )),
            Slot::Metric { out, i } => RowRef::Metric(columns::metric(
                &self.outputs[out as usize].metrics,
                i as usize,
            )),
            Slot::Owned(i) => RowRef::from(&self.owned[i as usize]),
        }
    }

    /// [`RowRef::check`] of one row, reading only the column it checks.
    fn check(&self, slot: Slot) -> Result<(), String> {
        match slot {
            Slot::Event { out, i } => rows::check_object(
                "attributes",
                columns::event_attributes(&self.outputs[out as usize].events, i as usize),
            ),
            Slot::Metric { out, i } => rows::check_object(
                "metadata",
                columns::metric_metadata(&self.outputs[out as usize].metrics, i as usize),
            ),
            Slot::Owned(i) => RowRef::from(&self.owned[i as usize]).check(),
        }
    }

    fn rows(&self, span: RowSpan) -> impl ExactSizeIterator<Item = RowRef<'_>> + '_ {
        self.slots[span.start..span.end]
            .iter()
            .map(|&slot| self.row(slot))
    }

    /// The outcomes of a 0.1.0 call, its rows moved into the store.
    fn add_owned(&mut self, outs: Vec<Outcome>) -> Vec<MessageResult<RowSpan>> {
        outs.into_iter()
            .map(|o| match o {
                Outcome::Skip(r) => MessageResult::Skip(r),
                Outcome::Fail(r) => MessageResult::Fail(r),
                Outcome::Rows(rows) => {
                    let start = self.slots.len();
                    for row in rows {
                        self.slots.push(Slot::Owned(self.owned.len() as u32));
                        self.owned.push(row);
                    }
                    MessageResult::Rows(RowSpan {
                        start,
                        end: self.slots.len(),
                    })
                }
            })
            .collect()
    }

    /// The outcomes of a 0.2.0 call whose output passed [`columns::check`]; the output is
    /// kept and its rows are read in place.
    fn add_output(
        &mut self,
        mut output: bindings::vast::transform::types::Output,
    ) -> Vec<MessageResult<RowSpan>> {
        use bindings::vast::transform::types as wit;
        let out = self.outputs.len() as u32;
        let mut tables = output.tables.iter();
        let (mut events, mut metrics) = (0u32, 0u32);
        let results = std::mem::take(&mut output.outcomes)
            .into_iter()
            .map(|o| match o {
                wit::Outcome::Skip(r) => MessageResult::Skip(r),
                wit::Outcome::Fail(r) => MessageResult::Fail(r),
                wit::Outcome::Rows(n) => {
                    let start = self.slots.len();
                    // `check` matched the outcomes' counts against `tables`.
                    for t in tables.by_ref().take(n as usize) {
                        self.slots.push(match t {
                            wit::Table::Events => {
                                events += 1;
                                Slot::Event { out, i: events - 1 }
                            }
                            wit::Table::Metrics => {
                                metrics += 1;
                                Slot::Metric {
                                    out,
                                    i: metrics - 1,
                                }
                            }
                        });
                    }
                    MessageResult::Rows(RowSpan {
                        start,
                        end: self.slots.len(),
                    })
                }
            })
            .collect();
        self.outputs.push(output);
        results
    }
}

/// One batch's results, one per message in order, with the rows kept as the transform
/// returned them: read them with [`Processed::rows`] (borrowed, no copies) or take them
/// owned and completed with [`Processed::into_owned`].
pub struct Processed {
    results: Vec<MessageResult<RowSpan>>,
    store: RowStore,
    now_us: i64,
}

impl Processed {
    /// One result per input message, in order.
    pub fn results(&self) -> &[MessageResult<RowSpan>] {
        &self.results
    }

    /// The rows of one message (a span from [`Processed::results`]), as the transform
    /// returned them: host columns are filled by whoever stores them.
    pub fn rows(&self, span: RowSpan) -> impl ExactSizeIterator<Item = RowRef<'_>> + '_ {
        self.store.rows(span)
    }

    /// The results with owned rows, host columns filled (`batch` is the processed batch).
    pub fn into_owned(self, batch: &[Message]) -> Vec<MessageResult> {
        let Processed {
            results,
            store,
            now_us,
        } = self;
        results
            .into_iter()
            .zip(batch)
            .map(|(r, m)| match r {
                MessageResult::Rows(span) => MessageResult::Rows(
                    store
                        .rows(span)
                        .enumerate()
                        .map(|(index, row)| row.to_row(m, index, now_us))
                        .collect(),
                ),
                MessageResult::Skip(r) => MessageResult::Skip(r),
                MessageResult::Fail(r) => MessageResult::Fail(r),
                MessageResult::Error(e) => MessageResult::Error(e),
            })
            .collect()
    }
}

/// Owns the wasmtime engine shared by every transform of the process.
pub struct TransformEngine {
    engine: Engine,
    linker: Arc<Linker<StoreState>>,
    cache_dir: Option<PathBuf>,
}

impl TransformEngine {
    /// Create the engine; `cache_dir` enables the compiled-component cache.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, TransformError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // `perf` can name guest functions when asked to (see BENCHMARKS.md, "Profiling").
        if std::env::var_os("VAST_PROCESSOR_PERFMAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| TransformError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::<StoreState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| TransformError::Engine(format!("{e:#}")))?;
        deny_timers(&mut linker).map_err(|e| TransformError::Engine(format!("{e:#}")))?;
        bindings::Transform::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(|e| TransformError::Engine(format!("{e:#}")))?;
        v1::Transform::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(|e| TransformError::Engine(format!("{e:#}")))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                // Ends with the engine: the weak handle stops upgrading once it is dropped.
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| TransformError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(TransformEngine {
            engine,
            linker: Arc::new(linker),
            cache_dir,
        })
    }

    /// Compile (or load from the cache) and link a component. `name` labels the transform
    /// in versions, logs and errors.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Arc<TransformModule>, TransformError> {
        let hash = hex(&Sha256::digest(bytes));
        let cached = self
            .cache_dir
            .as_deref()
            .and_then(|d| cache::load(d, &self.engine, &hash));
        let component = match cached {
            Some(c) => c,
            None => {
                if !bytes.starts_with(b"\0asm") {
                    return Err(TransformError::Compile {
                        name: name.to_string(),
                        reason: "the file does not start with the WebAssembly magic bytes".into(),
                    });
                }
                let c =
                    Component::new(&self.engine, bytes).map_err(|e| TransformError::Compile {
                        name: name.to_string(),
                        reason: format!("{e:#}"),
                    })?;
                if let Some(d) = self.cache_dir.as_deref() {
                    cache::store(d, &self.engine, &hash, &c);
                }
                c
            }
        };
        let wrong_world = |e: wasmtime::Error| TransformError::WrongWorld {
            name: name.to_string(),
            reason: format!("{e:#}"),
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        // The current contract first; a component built against 0.1.0 still runs.
        let pre = match bindings::TransformPre::new(pre.clone()) {
            Ok(p) => Pre::Columns(p),
            Err(current) => match v1::TransformPre::new(pre) {
                Ok(p) => Pre::V1(p),
                Err(_) => return Err(wrong_world(current)),
            },
        };
        Ok(Arc::new(TransformModule {
            name: name.to_string(),
            version: format!("{name}@{}", &hash[..12]),
            content_hash: hash,
            pre,
            engine: self.engine.clone(),
        }))
    }
}

/// Sleeping (a WASI timer subscription) would block in a host call, where the epoch deadline
/// cannot interrupt it: a guest could hold a worker for as long as it likes. Transforms have
/// no reason to wait, so timer subscriptions trap with a clear message instead.
fn deny_timers(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynPollable;
    linker.allow_shadowing(true);
    let mut clocks = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clocks.func_wrap(
        "subscribe-duration",
        |_: wasmtime::StoreContextMut<'_, StoreState>,
         (_,): (u64,)|
         -> wasmtime::Result<(Resource<DynPollable>,)> {
            Err(wasmtime::Error::msg(
                "transforms cannot sleep or wait on timers (wasi:clocks subscribe-duration)",
            ))
        },
    )?;
    clocks.func_wrap(
        "subscribe-instant",
        |_: wasmtime::StoreContextMut<'_, StoreState>,
         (_,): (u64,)|
         -> wasmtime::Result<(Resource<DynPollable>,)> {
            Err(wasmtime::Error::msg(
                "transforms cannot sleep or wait on timers (wasi:clocks subscribe-instant)",
            ))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A compiled, linked transform, shared by every worker that runs it.
pub struct TransformModule {
    name: String,
    version: String,
    content_hash: String,
    pre: Pre,
    engine: Engine,
}

/// Which contract the component implements.
enum Pre {
    /// `vast:transform@0.2.0`.
    Columns(bindings::TransformPre<StoreState>),
    /// `vast:transform@0.1.0`.
    V1(v1::TransformPre<StoreState>),
}

impl TransformModule {
    /// The transform's name (bundled name or file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `name@<first 12 hex of the content hash>`: names the exact code that produced a row.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// SHA-256 of the component bytes, hex.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }
}

/// Everything an instance needs besides the module: the pipeline's settings.
#[derive(Clone, Default)]
pub struct InstanceSettings {
    /// Key/values passed to `init`.
    pub config: Vec<(String, String)>,
    pub limits: Limits,
    pub enrichment: Arc<Enrichment>,
}

/// Host state of one store: WASI (empty), limits, and what the host imports touch.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    enrichment: Arc<Enrichment>,
    version: Arc<str>,
    stdout: Capture,
    stderr: Capture,
    log_tokens: f64,
    log_refilled: Instant,
    log_suppressed: u64,
    counters: HashMap<String, i64>,
}

/// Guest log lines allowed per instance in a burst, and refilled per second after it.
const LOG_BURST: f64 = 100.0;
const LOG_PER_SEC: f64 = 20.0;

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::vast::transform::types::Host for StoreState {}
impl v1::vast::transform::types::Host for StoreState {}

/// 0.2.0's host interface is 0.1.0's: one implementation (below) serves both.
impl bindings::vast::transform::host::Host for StoreState {
    fn log(&mut self, level: bindings::vast::transform::host::Level, message: String) {
        use bindings::vast::transform::host::Level as L;
        let level = match level {
            L::Trace => Level::Trace,
            L::Debug => Level::Debug,
            L::Info => Level::Info,
            L::Warn => Level::Warn,
            L::Error => Level::Error,
        };
        v1::vast::transform::host::Host::log(self, level, message)
    }

    fn lookup(&mut self, table: String, key: String) -> Option<String> {
        v1::vast::transform::host::Host::lookup(self, table, key)
    }

    fn counter(&mut self, name: String, delta: i64) {
        v1::vast::transform::host::Host::counter(self, name, delta)
    }
}

impl v1::vast::transform::host::Host for StoreState {
    fn log(&mut self, level: Level, message: String) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.log_refilled).as_secs_f64();
        self.log_refilled = now;
        self.log_tokens = (self.log_tokens + elapsed * LOG_PER_SEC).min(LOG_BURST);
        if self.log_tokens < 1.0 {
            self.log_suppressed += 1;
            return;
        }
        self.log_tokens -= 1.0;
        let v = &*self.version;
        match level {
            Level::Trace => tracing::trace!(target: "guest", transform = v, "{message}"),
            Level::Debug => tracing::debug!(target: "guest", transform = v, "{message}"),
            Level::Info => tracing::info!(target: "guest", transform = v, "{message}"),
            Level::Warn => tracing::warn!(target: "guest", transform = v, "{message}"),
            Level::Error => tracing::error!(target: "guest", transform = v, "{message}"),
        }
    }

    fn lookup(&mut self, table: String, key: String) -> Option<String> {
        self.enrichment.lookup(&table, &key).map(str::to_string)
    }

    fn counter(&mut self, name: String, delta: i64) {
        // Bound the number of distinct names a guest can create (metric label cardinality).
        if self.counters.len() < 256 || self.counters.contains_key(&name) {
            *self.counters.entry(name).or_default() += delta;
        }
    }
}

struct Live {
    store: Store<StoreState>,
    bindings: Bindings,
}

enum Bindings {
    Columns(bindings::Transform),
    V1(v1::Transform),
}

/// Counters an instance keeps about itself.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InstanceStats {
    /// `process` calls made (including one-at-a-time retries).
    pub calls: u64,
    /// Calls that trapped.
    pub traps: u64,
    /// Times the instance was (re)built.
    pub instantiations: u64,
    /// Highest linear memory size seen, bytes.
    pub memory_high_water: usize,
    /// Guest log lines dropped by the rate limit.
    pub logs_suppressed: u64,
}

/// One instance of a transform, owned by one worker and reused across batches.
pub struct TransformInstance {
    module: Arc<TransformModule>,
    settings: InstanceSettings,
    live: Option<Live>,
    stats: InstanceStats,
    counters: HashMap<String, i64>,
}

impl TransformInstance {
    /// Instantiate `module` and call `init` with the settings' config.
    pub fn new(
        module: Arc<TransformModule>,
        settings: InstanceSettings,
    ) -> Result<Self, TransformError> {
        let mut inst = TransformInstance {
            module,
            settings,
            live: None,
            stats: InstanceStats::default(),
            counters: HashMap::new(),
        };
        inst.live = Some(inst.instantiate()?);
        Ok(inst)
    }

    /// The module this instance runs.
    pub fn module(&self) -> &Arc<TransformModule> {
        &self.module
    }

    /// Statistics so far.
    pub fn stats(&self) -> &InstanceStats {
        &self.stats
    }

    /// Guest-defined counters accumulated since the last call, reset on read.
    pub fn take_counters(&mut self) -> HashMap<String, i64> {
        std::mem::take(&mut self.counters)
    }

    fn instantiate(&mut self) -> Result<Live, TransformError> {
        let m = self.module.clone();
        let stdout = Capture::default();
        let stderr = Capture::default();
        // Deliberately empty: no preopens, no env, no args, no network, no inherited stdio.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let state = StoreState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                max_bytes: self.settings.limits.memory_bytes(),
                refused: None,
                high_water: 0,
            },
            enrichment: self.settings.enrichment.clone(),
            version: Arc::from(m.version.as_str()),
            stdout,
            stderr,
            log_tokens: LOG_BURST,
            log_refilled: Instant::now(),
            log_suppressed: 0,
            counters: HashMap::new(),
        };
        let mut store = Store::new(&m.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        self.stats.instantiations += 1;
        self.arm_deadline(&mut store);
        let bindings = match &m.pre {
            Pre::Columns(pre) => pre.instantiate(&mut store).map(Bindings::Columns),
            Pre::V1(pre) => pre.instantiate(&mut store).map(Bindings::V1),
        }
        .map_err(|e| self.classify(&mut store, e))?;
        self.arm_deadline(&mut store);
        let init = match &bindings {
            Bindings::Columns(b) => b.call_init(&mut store, &self.settings.config),
            Bindings::V1(b) => b.call_init(&mut store, &self.settings.config),
        };
        self.drain_output(&mut store);
        match init {
            Ok(Ok(())) => Ok(Live { store, bindings }),
            Ok(Err(reason)) => Err(TransformError::InitRejected {
                version: m.version.clone(),
                reason,
            }),
            Err(e) => Err(self.classify(&mut store, e)),
        }
    }

    fn arm_deadline(&self, store: &mut Store<StoreState>) {
        let ticks = self.settings.limits.deadline().as_millis() / EPOCH_TICK.as_millis();
        store.set_epoch_deadline(ticks as u64 + 1);
    }

    /// Forward captured stdout/stderr to the log; return the stderr text (for trap reports).
    fn drain_output(&mut self, store: &mut Store<StoreState>) -> String {
        let s = store.data_mut();
        let version = s.version.clone();
        let (out, out_dropped) = s.stdout.drain();
        let (err, err_dropped) = s.stderr.drain();
        self.stats.logs_suppressed += std::mem::take(&mut s.log_suppressed);
        self.stats.memory_high_water = self.stats.memory_high_water.max(s.limiter.high_water);
        for (name, delta) in s.counters.drain() {
            *self.counters.entry(name).or_default() += delta;
        }
        for line in String::from_utf8_lossy(&out)
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            tracing::info!(target: "guest", transform = &*version, stream = "stdout", "{line}");
        }
        let err_text = String::from_utf8_lossy(&err).into_owned();
        for line in err_text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::warn!(target: "guest", transform = &*version, stream = "stderr", "{line}");
        }
        if out_dropped + err_dropped > 0 {
            tracing::warn!(target: "guest", transform = &*version, bytes = out_dropped + err_dropped, "guest output over the capture limit was discarded");
        }
        err_text
    }

    /// Turn a wasmtime error from a call into a precise [`TransformError`].
    fn classify(&mut self, store: &mut Store<StoreState>, e: wasmtime::Error) -> TransformError {
        let stderr = self.drain_output(store);
        let version = self.module.version.clone();
        if let Some(asked) = store.data_mut().limiter.refused.take() {
            return TransformError::Memory {
                version,
                limit_mib: self.settings.limits.memory_mib,
                asked_mib: (asked / (1024 * 1024)) as u64,
            };
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => TransformError::Deadline {
                version,
                deadline_ms: self.settings.limits.deadline_ms,
            },
            Some(Trap::StackOverflow) => TransformError::StackOverflow { version },
            _ => {
                // The root cause names the trap; the outer layers are a long wasm backtrace.
                let mut reason = e.root_cause().to_string();
                // A Rust guest prints its panic message to stderr before aborting: the most
                // useful part of the report.
                let mut lines = stderr.lines();
                if let Some(at) = lines.find(|l| l.contains("panicked")) {
                    let msg = lines.next().unwrap_or_default();
                    reason = format!("{reason}; guest {} {}", at.trim(), msg.trim());
                }
                TransformError::Trap { version, reason }
            }
        }
    }

    /// Call `process` once, its rows added to `store`; on a trap, the instance is dropped
    /// (rebuilt on the next call).
    fn call(
        &mut self,
        batch: &[Message],
        store: &mut RowStore,
    ) -> Result<Vec<MessageResult<RowSpan>>, TransformError> {
        let mut live = match self.live.take() {
            Some(l) => l,
            None => self.instantiate()?,
        };
        let mark = store.mark();
        let result = match &live.bindings {
            Bindings::V1(b) => {
                self.stats.calls += 1;
                self.arm_deadline(&mut live.store);
                b.call_process(&mut live.store, batch)
                    .map(|outs| Ok(store.add_owned(outs)))
            }
            Bindings::Columns(b) => self.call_columns(b, &mut live.store, batch, store),
        };
        match result {
            Ok(outs) => {
                self.drain_output(&mut live.store);
                self.live = Some(live);
                if outs.is_err() {
                    store.reset(mark);
                }
                outs
            }
            Err(e) => {
                store.reset(mark);
                self.stats.traps += 1;
                let err = self.classify(&mut live.store, e);
                tracing::warn!(transform = %self.module.version, error = %err, batch = batch.len(), "transform trapped; instance will be rebuilt");
                Err(err)
            }
        }
    }

    /// A 0.2.0 call per run of messages from one topic (a pipeline reads one topic, so
    /// normally one call). The outer error is a trap; the inner one a malformed output.
    fn call_columns(
        &mut self,
        b: &bindings::Transform,
        store: &mut Store<StoreState>,
        batch: &[Message],
        rows: &mut RowStore,
    ) -> wasmtime::Result<Result<Vec<MessageResult<RowSpan>>, TransformError>> {
        let contract = |reason: String| TransformError::Contract {
            version: self.module.version.clone(),
            reason,
        };
        let mut outs = Vec::with_capacity(batch.len());
        for run in batch.chunk_by(|a, b| a.topic == b.topic) {
            let Some(input) = columns::lower(run) else {
                return Ok(Err(contract(
                    "a batch over 4 GiB does not fit the contract's 32-bit offsets".into(),
                )));
            };
            self.stats.calls += 1;
            self.arm_deadline(store);
            let output = b.call_process(&mut *store, &input)?;
            if let Err(reason) = columns::check(&output) {
                return Ok(Err(contract(reason)));
            }
            outs.extend(rows.add_output(output));
        }
        Ok(Ok(outs))
    }

    /// Process one batch: exactly one result per message, in order, with owned rows and
    /// the host columns filled (`now_us` is the processing time). See
    /// [`TransformInstance::process_batch`] for the hot path.
    pub fn process(&mut self, batch: &[Message], now_us: i64) -> Vec<MessageResult> {
        self.process_batch(batch, now_us).into_owned(batch)
    }

    /// Process one batch: exactly one result per message, in order, rows left where the
    /// transform put them. `now_us` is the processing time for host-assigned columns.
    ///
    /// Poison isolation: if the batch call traps (or breaks the one-outcome-per-message
    /// contract), its messages are re-run one at a time so only the culprits fail.
    pub fn process_batch(&mut self, batch: &[Message], now_us: i64) -> Processed {
        let mut p = Processed {
            results: Vec::with_capacity(batch.len()),
            store: RowStore::default(),
            now_us,
        };
        if batch.is_empty() {
            return p;
        }
        let mark = p.store.mark();
        let outs = match self.call(batch, &mut p.store) {
            Ok(outs) if outs.len() == batch.len() => Some(outs),
            Ok(outs) => {
                tracing::warn!(transform = %self.module.version, expected = batch.len(), got = outs.len(), "transform returned the wrong number of outcomes; retrying one message at a time");
                p.store.reset(mark);
                None
            }
            Err(e) if batch.len() == 1 => {
                p.results.push(MessageResult::Error(e));
                return p;
            }
            Err(_) => None,
        };
        match outs {
            Some(outs) => {
                for o in outs {
                    let r = self.finish(&p.store, o);
                    p.results.push(r);
                }
            }
            None => {
                for m in batch {
                    let mark = p.store.mark();
                    let r = match self.call(std::slice::from_ref(m), &mut p.store) {
                        Ok(mut outs) if outs.len() == 1 => {
                            let o = outs.pop().expect("length checked");
                            self.finish(&p.store, o)
                        }
                        Ok(outs) => {
                            p.store.reset(mark);
                            MessageResult::Error(TransformError::Contract {
                                version: self.module.version.clone(),
                                reason: format!("returned {} outcomes for 1 message", outs.len()),
                            })
                        }
                        Err(e) => MessageResult::Error(e),
                    };
                    p.results.push(r);
                }
            }
        }
        p
    }

    /// The host's checks of one message's rows: the row limit, and columns it cannot store.
    fn finish(&self, store: &RowStore, o: MessageResult<RowSpan>) -> MessageResult<RowSpan> {
        let MessageResult::Rows(span) = o else {
            return o;
        };
        let contract = |reason| {
            MessageResult::Error(TransformError::Contract {
                version: self.module.version.clone(),
                reason,
            })
        };
        if span.len() > self.settings.limits.max_rows_per_message {
            return contract(format!(
                "produced {} rows for one message, over the limit of {} (limits.max_rows_per_message)",
                span.len(),
                self.settings.limits.max_rows_per_message
            ));
        }
        for (index, &slot) in store.slots[span.start..span.end].iter().enumerate() {
            if let Err(reason) = store.check(slot) {
                return contract(format!("row {index}: {reason}"));
            }
        }
        MessageResult::Rows(span)
    }
}
