//! One instance of a transform per worker and pipeline: instantiate the module and call
//! `init`, call `process` with a deadline armed, classify what a trap was (deadline,
//! memory, stack, panic), check the output against the contract and the limits, and
//! isolate a poison message (a batch that traps is re-run one message at a time, so only
//! the culprits fail). The rows stay where the transform put them ([`Processed`]).

use super::engine::{self, Pre, TransformModule};
use super::host::{InstanceSettings, StoreState};
use super::{ErrorKind, TransformError, abi_v1, abi_v2};
use crate::model::{Message, Row, RowRef, check_object};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::{Store, Trap};

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
    outputs: Vec<abi_v2::Output>,
    /// Per output, its text bytes ([`abi_v2::text_bytes`]): rows of a small output need no
    /// size check.
    output_bytes: Vec<usize>,
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
        self.output_bytes.truncate(outputs);
        self.owned.truncate(owned);
        self.slots.truncate(slots);
    }

    fn row(&self, slot: Slot) -> RowRef<'_> {
        match slot {
            Slot::Event { out, i } => RowRef::Event(abi_v2::event(
                &self.outputs[out as usize].events,
                i as usize,
            )),
            Slot::Metric { out, i } => RowRef::Metric(abi_v2::metric(
                &self.outputs[out as usize].metrics,
                i as usize,
            )),
            Slot::Owned(i) => RowRef::from(&self.owned[i as usize]),
        }
    }

    /// [`RowRef::check`] of one row, reading only the column it checks.
    /// The row's size ([`RowRef::approx_bytes`]), or 0 when it comes from an output too
    /// small to hold a row over `max` (then it is not measured).
    fn row_bytes(&self, slot: Slot, max: usize) -> usize {
        match slot {
            Slot::Event { out, .. } | Slot::Metric { out, .. }
                if self.output_bytes[out as usize] + 256 <= max =>
            {
                0
            }
            _ => self.row(slot).approx_bytes(),
        }
    }

    fn check(&self, slot: Slot) -> Result<(), String> {
        match slot {
            Slot::Event { out, i } => check_object(
                "attributes",
                abi_v2::event_attributes(&self.outputs[out as usize].events, i as usize),
            ),
            Slot::Metric { out, i } => check_object(
                "metadata",
                abi_v2::metric_metadata(&self.outputs[out as usize].metrics, i as usize),
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
    fn add_owned(&mut self, outs: Vec<MessageResult>) -> Vec<MessageResult<RowSpan>> {
        outs.into_iter()
            .map(|o| match o {
                MessageResult::Skip(r) => MessageResult::Skip(r),
                MessageResult::Fail(r) => MessageResult::Fail(r),
                MessageResult::Error(e) => MessageResult::Error(e),
                MessageResult::Rows(rows) => {
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

    /// The outcomes of a 0.2.0 call whose output passed [`abi_v2::check`]; the output is
    /// kept and its rows are read in place.
    fn add_output(&mut self, mut output: abi_v2::Output) -> Vec<MessageResult<RowSpan>> {
        use abi_v2::wit;
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
        self.output_bytes.push(abi_v2::text_bytes(&output));
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

struct Live {
    store: Store<StoreState>,
    bindings: Bindings,
}

enum Bindings {
    Columns(abi_v2::Transform),
    V1(abi_v1::Transform),
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
    /// Guest log lines dropped by the rate limits (lines and bytes).
    pub logs_suppressed: u64,
    /// Guest log bytes written to the log.
    pub log_bytes: u64,
    /// Guest log lines and counter names cut to their limit.
    pub truncated: u64,
}

/// One instance of a transform, owned by one worker and reused across batches.
pub struct TransformInstance {
    module: Arc<TransformModule>,
    settings: InstanceSettings,
    /// [`super::lineage`] of module and settings: the version its rows carry.
    lineage: Arc<str>,
    live: Option<Live>,
    stats: InstanceStats,
    counters: HashMap<String, i64>,
    /// Traps are expected here (a shadow check of a candidate): logged at debug, not WARN.
    quiet_traps: bool,
    /// Set from another thread to stop the call in progress (a check that is no longer
    /// wanted: a newer file, a shutdown); it traps within an epoch tick.
    cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// A check's wall-time budget: calls trap once it is spent.
    budget_until: Option<Instant>,
}

/// The trap of a cancelled call.
#[derive(Debug, thiserror::Error)]
#[error("the check was cancelled")]
pub struct Cancelled;

/// The trap of a call past its check's budget.
#[derive(Debug, thiserror::Error)]
#[error("the check's time budget is spent")]
pub struct BudgetSpent;

impl TransformInstance {
    /// Instantiate `module` and call `init` with the settings' config.
    pub fn new(
        module: Arc<TransformModule>,
        settings: InstanceSettings,
    ) -> Result<Self, TransformError> {
        let lineage = Arc::from(super::lineage(&module, &settings));
        let mut inst = TransformInstance {
            module,
            settings,
            lineage,
            live: None,
            stats: InstanceStats::default(),
            counters: HashMap::new(),
            quiet_traps: false,
            cancel: None,
            budget_until: None,
        };
        inst.live = Some(inst.instantiate()?);
        Ok(inst)
    }

    /// Like [`TransformInstance::new`], for a check: `init` and every call stop (trap) soon
    /// after `cancel` is set or `until` passes. Traps are logged at debug
    /// ([`Self::quiet_traps`]).
    pub fn new_cancellable(
        module: Arc<TransformModule>,
        settings: InstanceSettings,
        cancel: Arc<std::sync::atomic::AtomicBool>,
        until: Instant,
    ) -> Result<Self, TransformError> {
        let lineage = Arc::from(super::lineage(&module, &settings));
        let mut inst = TransformInstance {
            module,
            settings,
            lineage,
            live: None,
            stats: InstanceStats::default(),
            counters: HashMap::new(),
            quiet_traps: true,
            cancel: Some(cancel),
            budget_until: Some(until),
        };
        inst.live = Some(inst.instantiate()?);
        Ok(inst)
    }

    /// Log this instance's traps at debug level: a check that runs a candidate expects them
    /// and reports them in its decision (one summary instead of a WARN per record).
    pub fn quiet_traps(mut self) -> Self {
        self.quiet_traps = true;
        if let Some(live) = self.live.as_mut() {
            live.store.data_mut().quiet = true;
        }
        self
    }

    /// One `process` call for the whole batch, without poison isolation: a trap is the
    /// error. For a check that must not spend one deadline per record on a looping candidate.
    pub fn process_once(
        &mut self,
        batch: &[Message],
        now_us: i64,
    ) -> Result<Vec<MessageResult>, TransformError> {
        let mut p = Processed {
            results: Vec::with_capacity(batch.len()),
            store: RowStore::default(),
            now_us,
        };
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let outs = self.call(batch, &mut p.store)?;
        if outs.len() != batch.len() {
            return Err(TransformError::new(
                self.module.version(),
                ErrorKind::Contract(format!(
                    "returned {} outcomes for {} messages",
                    outs.len(),
                    batch.len()
                )),
            ));
        }
        for o in outs {
            let r = self.finish(&p.store, o);
            p.results.push(r);
        }
        Ok(p.into_owned(batch))
    }

    /// The module this instance runs.
    pub fn module(&self) -> &Arc<TransformModule> {
        &self.module
    }

    /// The whole version its rows carry (module, config and enrichment tables).
    pub fn lineage(&self) -> &Arc<str> {
        &self.lineage
    }

    /// The settings it runs with (its config, limits and enrichment tables).
    pub fn settings(&self) -> &InstanceSettings {
        &self.settings
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
        let mut state = StoreState::new(&self.settings, Arc::from(m.version()));
        state.quiet = self.quiet_traps;
        let mut store = Store::new(&m.engine, state);
        store.limiter(|s| &mut s.limiter);
        match self.cancel.clone() {
            // Each tick asks: cancelled? budget spent? past the deadline? The cost is one call
            // per 10 ms.
            Some(cancel) => {
                let until = self.budget_until;
                store.epoch_deadline_callback(move |mut s| {
                    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                        return Err(wasmtime::Error::new(Cancelled));
                    }
                    if until.is_some_and(|u| Instant::now() >= u) {
                        return Err(wasmtime::Error::new(BudgetSpent));
                    }
                    let st = s.data_mut();
                    if st.ticks_left == 0 {
                        return Err(wasmtime::Error::new(Trap::Interrupt));
                    }
                    st.ticks_left -= 1;
                    Ok(wasmtime::UpdateDeadline::Continue(1))
                })
            }
            None => store.epoch_deadline_trap(),
        }
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
            Ok(Err(reason)) => Err(TransformError::new(
                m.version(),
                ErrorKind::InitRejected(reason),
            )),
            Err(e) => Err(self.classify(&mut store, e)),
        }
    }

    fn arm_deadline(&self, store: &mut Store<StoreState>) {
        if self.cancel.is_some() {
            store.data_mut().ticks_left = engine::deadline_ticks(self.settings.limits.deadline());
            store.set_epoch_deadline(1);
        } else {
            engine::arm_deadline(store, self.settings.limits.deadline());
        }
    }

    /// Forward captured stdout/stderr to the log; return the stderr text (for trap reports).
    fn drain_output(&mut self, store: &mut Store<StoreState>) -> String {
        let s = store.data_mut();
        let version = s.version.clone();
        let (out, out_dropped) = s.stdout.drain();
        let (err, err_dropped) = s.stderr.drain();
        self.stats.logs_suppressed += std::mem::take(&mut s.log_suppressed);
        self.stats.log_bytes += std::mem::take(&mut s.log_bytes);
        self.stats.truncated += std::mem::take(&mut s.truncated);
        self.stats.memory_high_water = self.stats.memory_high_water.max(s.limiter.high_water);
        for (name, delta) in s.counters.drain() {
            *self.counters.entry(name).or_default() += delta;
        }
        let quiet = s.quiet;
        for line in String::from_utf8_lossy(&out)
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            if quiet {
                tracing::debug!(target: "guest", transform = &*version, stream = "stdout", "{line}");
            } else {
                tracing::info!(target: "guest", transform = &*version, stream = "stdout", "{line}");
            }
        }
        let err_text = String::from_utf8_lossy(&err).into_owned();
        for line in err_text.lines().filter(|l| !l.trim().is_empty()) {
            // A candidate's panics in a check are expected; its decision summarises them.
            if quiet {
                tracing::debug!(target: "guest", transform = &*version, stream = "stderr", "{line}");
            } else {
                tracing::warn!(target: "guest", transform = &*version, stream = "stderr", "{line}");
            }
        }
        if out_dropped + err_dropped > 0 && !quiet {
            tracing::warn!(target: "guest", transform = &*version, bytes = out_dropped + err_dropped, "guest output over the capture limit was discarded");
        }
        err_text
    }

    /// Turn a wasmtime error from a call into a precise [`TransformError`].
    fn classify(&mut self, store: &mut Store<StoreState>, e: wasmtime::Error) -> TransformError {
        let stderr = self.drain_output(store);
        let version = self.module.version();
        if let Some(asked) = store.data_mut().limiter.refused.take() {
            return TransformError::new(
                version,
                ErrorKind::Memory {
                    limit_mib: self.settings.limits.memory_mib,
                    asked_mib: (asked / (1024 * 1024)) as u64,
                },
            );
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => TransformError::new(
                version,
                ErrorKind::Deadline {
                    deadline_ms: self.settings.limits.deadline_ms,
                },
            ),
            Some(Trap::StackOverflow) => TransformError::new(version, ErrorKind::StackOverflow),
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
                TransformError::new(version, ErrorKind::Trap(reason))
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
                abi_v1::process(b, &mut live.store, batch).map(|outs| Ok(store.add_owned(outs)))
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
                if self.quiet_traps {
                    tracing::debug!(transform = self.module.version(), error = %err, batch = batch.len(), "candidate trapped in a check");
                } else {
                    tracing::warn!(transform = self.module.version(), error = %err, batch = batch.len(), "transform trapped; instance will be rebuilt");
                }
                Err(err)
            }
        }
    }

    /// A 0.2.0 call per run of messages from one topic (a pipeline reads one topic, so
    /// normally one call). The outer error is a trap; the inner one a malformed output.
    fn call_columns(
        &mut self,
        b: &abi_v2::Transform,
        store: &mut Store<StoreState>,
        batch: &[Message],
        rows: &mut RowStore,
    ) -> wasmtime::Result<Result<Vec<MessageResult<RowSpan>>, TransformError>> {
        let contract = |reason: String| {
            TransformError::new(self.module.version(), ErrorKind::Contract(reason))
        };
        let mut outs = Vec::with_capacity(batch.len());
        for run in batch.chunk_by(|a, b| a.topic == b.topic) {
            let Some(input) = abi_v2::lower(run) else {
                return Ok(Err(contract(
                    "a batch over 4 GiB does not fit the contract's 32-bit offsets".into(),
                )));
            };
            self.stats.calls += 1;
            self.arm_deadline(store);
            let output = b.call_process(&mut *store, &input)?;
            if let Err(reason) = abi_v2::check(&output) {
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
            Ok(outs) if self.quiet_traps => {
                tracing::debug!(
                    transform = self.module.version(),
                    expected = batch.len(),
                    got = outs.len(),
                    "candidate returned the wrong number of outcomes in a check"
                );
                p.store.reset(mark);
                None
            }
            Ok(outs) => {
                tracing::warn!(
                    transform = self.module.version(),
                    expected = batch.len(),
                    got = outs.len(),
                    "transform returned the wrong number of outcomes; retrying one message at a time"
                );
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
                            MessageResult::Error(TransformError::new(
                                self.module.version(),
                                ErrorKind::Contract(format!(
                                    "returned {} outcomes for 1 message",
                                    outs.len()
                                )),
                            ))
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
            MessageResult::Error(TransformError::new(
                self.module.version(),
                ErrorKind::Contract(reason),
            ))
        };
        if span.len() > self.settings.limits.max_rows_per_message {
            return contract(format!(
                "produced {} rows for one message, over the limit of {} (limits.max_rows_per_message)",
                span.len(),
                self.settings.limits.max_rows_per_message
            ));
        }
        let max_bytes = self.settings.limits.max_row_bytes;
        for (index, &slot) in store.slots[span.start..span.end].iter().enumerate() {
            if let Err(reason) = store.check(slot) {
                return contract(format!("row {index}: {reason}"));
            }
            let bytes = store.row_bytes(slot, max_bytes);
            if bytes > max_bytes {
                return contract(format!(
                    "row {index} is about {bytes} bytes, over the limit of {max_bytes} bytes per row (limits.max_row_bytes; a row must fit one sink write)"
                ));
            }
        }
        MessageResult::Rows(span)
    }
}
