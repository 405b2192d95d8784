//! A worker owns one wasm instance per pipeline and one Arrow batcher per pipeline. It runs
//! messages of the partitions routed to it, in order, and flushes: sink write, dead letters,
//! then the delivered offsets.

use super::{DeliveredOffsets, PipelineSpec, RunStats};
use crate::batch::{Lineage, TableBatcher};
use crate::model::{Message, RowRef, Table};
use crate::sink::deadletter::{DeadLetter, DeadLetterError, DeadLetterWriter};
use crate::sink::{Landing, RetryHint, Sink, SinkError};
use crate::transform::reload::Fallback;
use crate::transform::wasm::{MessageResult, TransformError, TransformInstance, TransformModule};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Why a flush happened (exported as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    Rows,
    Bytes,
    Age,
    /// The worker's in-flight footprint reached `runtime.queue_bytes`: its largest batch
    /// goes out early so the source can go on.
    Memory,
    Shutdown,
    Revoke,
}

impl FlushReason {
    /// The label text.
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Rows => "rows",
            FlushReason::Bytes => "bytes",
            FlushReason::Age => "age",
            FlushReason::Memory => "memory",
            FlushReason::Shutdown => "shutdown",
            FlushReason::Revoke => "revoke",
        }
    }
}

/// A worker stopped: the pipeline cannot go on without losing or duplicating data.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("sink failed: {0}")]
    Sink(#[source] SinkError),
    #[error("dead letters could not be written: {0}")]
    DeadLetter(#[source] DeadLetterError),
    #[error("transform could not be instantiated: {0}")]
    Transform(#[source] TransformError),
    #[error("stopped while {0} was still failing; its offsets were not committed")]
    Aborted(&'static str),
}

/// Work sent to a worker thread.
pub enum WorkItem {
    /// Consumed records in order, each with its pipeline. The consumer sends records in
    /// chunks: per record, a channel operation and the shared queue counters cost more than
    /// everything else the consumer thread does.
    Msgs(Vec<(usize, Message)>),
    /// Everything before this marker belongs to partitions given up while the sink was
    /// failing (see [`crate::pipeline::Runtime::discard`]): drop what is held, resume.
    Discard(u64),
    /// Process everything queued so far, flush every pipeline, then answer.
    Flush {
        reason: FlushReason,
        ack: Sender<Result<(), Arc<WorkerError>>>,
    },
}

struct PipelineState {
    instance: Option<TransformInstance>,
    /// Generation of the live version `instance` runs.
    generation: u64,
    batcher: TableBatcher,
    letters: Vec<DeadLetter>,
    /// What `letters` hold (their payloads and errors, roughly).
    letter_bytes: usize,
    /// First and last processed (not yet delivered) offset per partition.
    processed: HashMap<i32, (i64, i64)>,
}

impl PipelineState {
    /// Drop the rows, dead letters and processed offsets (never delivered: their records
    /// are read again by the partitions' next owner).
    fn drop_pending(&mut self) {
        drop(self.batcher.finish());
        self.letters.clear();
        self.letter_bytes = 0;
        self.processed.clear();
    }
}

/// What every worker of a run shares.
#[derive(Clone)]
pub struct WorkerEnv {
    pub sink: Arc<dyn Sink>,
    pub delivered: Arc<DeliveredOffsets>,
    pub stats: Arc<RunStats>,
    /// Set when retries must give up (shutdown deadline passed).
    pub abort: Arc<AtomicBool>,
    /// Add the lineage columns.
    pub lineage: bool,
    /// Per-pipeline metrics (indexed like the specs).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `runtime.queue_bytes`: the in-flight bound of one worker.
    pub inflight_bytes: usize,
    /// The runtime's discard epoch: while it is ahead of the worker's, the worker drops
    /// records and pending writes up to the matching [`WorkItem::Discard`].
    pub discard: Arc<AtomicU64>,
    /// With exactly-once delivery, the consumer group whose offsets the sink stores with
    /// the rows.
    pub group: Option<Arc<str>>,
}

/// Processes the partitions routed to it; see the module docs.
pub struct Worker {
    id: usize,
    specs: Arc<Vec<PipelineSpec>>,
    states: Vec<PipelineState>,
    sink: Arc<dyn Sink>,
    dead_letters: DeadLetterWriter,
    delivered: Arc<DeliveredOffsets>,
    stats: Arc<RunStats>,
    /// Set when retries must give up (shutdown deadline passed).
    abort: Arc<AtomicBool>,
    /// Records queued for this worker and not transformed yet, and their footprint
    /// (decremented once they are transformed and dropped).
    pub queued_msgs: Arc<AtomicUsize>,
    pub queued_bytes: Arc<AtomicUsize>,
    /// What this worker holds beyond those records (see [`Worker::publish_held`]).
    pub held_bytes: Arc<AtomicUsize>,
    inflight_bytes: usize,
    discard: Arc<AtomicU64>,
    /// The discard epoch this worker has reached.
    epoch: u64,
    group: Option<Arc<str>>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Most messages handed to the transform in one `process` call.
const MAX_TRANSFORM_BATCH: usize = 1024;

impl Worker {
    /// A worker for `specs`.
    pub fn new(
        id: usize,
        specs: Arc<Vec<PipelineSpec>>,
        env: WorkerEnv,
        dead_letters: DeadLetterWriter,
    ) -> Self {
        let WorkerEnv {
            sink,
            delivered,
            stats,
            abort,
            lineage,
            metrics,
            inflight_bytes,
            discard,
            group,
        } = env;
        let states = specs
            .iter()
            .map(|_| PipelineState {
                instance: None,
                generation: 0,
                batcher: TableBatcher::new(lineage),
                letters: Vec::new(),
                letter_bytes: 0,
                processed: HashMap::new(),
            })
            .collect();
        Worker {
            id,
            specs,
            states,
            sink,
            dead_letters,
            delivered,
            stats,
            abort,
            queued_msgs: Arc::new(AtomicUsize::new(0)),
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            held_bytes: Arc::new(AtomicUsize::new(0)),
            inflight_bytes,
            discard,
            epoch: 0,
            group,
            metrics,
        }
    }

    /// True between a discard request and its marker.
    fn discarding(&self) -> bool {
        self.discard.load(Ordering::Relaxed) > self.epoch
    }

    fn drop_pending(&mut self, pipeline: usize) {
        self.states[pipeline].drop_pending();
    }

    /// Publish what the worker holds beyond its queue: every pipeline's buffered rows and
    /// dead letters, and its instances' linear memory (which never shrinks while they run).
    fn publish_held(&self) {
        let held: usize = self
            .states
            .iter()
            .map(|s| {
                s.batcher.bytes()
                    + s.letter_bytes
                    + s.instance
                        .as_ref()
                        .map_or(0, |i| i.stats().memory_high_water)
            })
            .sum();
        let before = self.held_bytes.swap(held, Ordering::Relaxed);
        self.stats.hold(before, held);
    }

    /// When the footprint reached the bound, flush the pipeline holding the most, if that
    /// is a worthwhile batch (an eighth of the bound): smaller ones would only multiply
    /// writes, and the source still gets a record at a time (see `Runtime::has_room`).
    fn relieve(&mut self) -> Result<(), WorkerError> {
        let inflight =
            self.queued_bytes.load(Ordering::Relaxed) + self.held_bytes.load(Ordering::Relaxed);
        if inflight < self.inflight_bytes {
            return Ok(());
        }
        let largest = (0..self.states.len())
            .map(|i| {
                (
                    self.states[i].batcher.bytes() + self.states[i].letter_bytes,
                    i,
                )
            })
            .max();
        if let Some((bytes, i)) = largest
            && bytes >= self.inflight_bytes / 8
        {
            self.flush(i, FlushReason::Memory)?;
        }
        Ok(())
    }

    /// Transform messages of one pipeline (in order) and buffer their rows and dead letters;
    /// flush when a batch limit is reached.
    pub fn handle(&mut self, pipeline: usize, msgs: &[Message]) -> Result<(), WorkerError> {
        if msgs.is_empty() || self.discarding() {
            return Ok(());
        }
        let spec = &self.specs[pipeline];
        let state = &mut self.states[pipeline];
        // A hot swap takes effect here, at a batch boundary: the batch runs wholly on one version.
        if state.instance.is_none() || state.generation != spec.live.generation() {
            let v = spec.live.current();
            let swap = state.instance.is_some();
            let t = Instant::now();
            let inst = TransformInstance::new(v.module.clone(), v.settings.clone())
                .map_err(WorkerError::Transform)?;
            state.instance = Some(inst);
            state.generation = v.generation;
            if swap {
                self.metrics.pipelines[pipeline]
                    .swap_pause_seconds
                    .observe(t.elapsed().as_secs_f64());
                tracing::info!(worker = self.id, pipeline = %spec.name, version = v.label(), "worker switched transform version");
            }
        }
        let instance = state.instance.as_mut().expect("just created");
        // A `process` call copies its whole batch into the guest: keep each call to a quarter
        // of the memory cap of the version that runs it (a reload may change the cap), so big
        // records do not trap the batch they share.
        let budget = call_budget(instance);
        if msgs.len() > 1 && msgs.iter().map(|m| m.payload.len()).sum::<usize>() > budget {
            let (mut start, mut acc) = (0, 0);
            for (i, m) in msgs.iter().enumerate() {
                if i > start && acc + m.payload.len() > budget {
                    self.handle(pipeline, &msgs[start..i])?;
                    (start, acc) = (i, 0);
                }
                acc += m.payload.len();
            }
            return self.handle(pipeline, &msgs[start..]);
        }
        let pm = &self.metrics.pipelines[pipeline];
        let before = instance.stats().clone();
        let (wall, cpu) = (Instant::now(), crate::metrics::thread_cpu_ns());
        let now = crate::model::now_micros();
        let processed = instance.process_batch(msgs, now);
        pm.transform_seconds.observe(wall.elapsed().as_secs_f64());
        pm.transform_cpu_ns.fetch_add(
            crate::metrics::thread_cpu_ns().saturating_sub(cpu),
            Ordering::Relaxed,
        );
        let after = instance.stats();
        pm.invocations
            .fetch_add(after.calls - before.calls, Ordering::Relaxed);
        pm.traps
            .fetch_add(after.traps - before.traps, Ordering::Relaxed);
        pm.guest_logs_dropped.fetch_add(
            after.logs_suppressed - before.logs_suppressed,
            Ordering::Relaxed,
        );
        pm.guest_truncated
            .fetch_add(after.truncated - before.truncated, Ordering::Relaxed);
        pm.memory_high_water
            .fetch_max(after.memory_high_water as u64, Ordering::Relaxed);
        pm.add_guest_counters(instance.take_counters());
        let module = instance.module().clone();
        let lineage_label = instance.lineage().clone();
        let version = &*lineage_label;
        let generation = state.generation;
        let mut fallback = spec.live.observe(generation, msgs, processed.results());
        // Only when the version changed under this batch (rare): no work per batch otherwise.
        let failed: Vec<usize> = if fallback.is_none() && spec.live.generation() != generation {
            processed
                .results()
                .iter()
                .enumerate()
                .filter(|(_, r)| matches!(r, MessageResult::Fail(_) | MessageResult::Error(_)))
                .map(|(i, _)| i)
                .collect()
        } else {
            Vec::new()
        };
        if !failed.is_empty() {
            // The version was replaced (or rolled back) while this batch ran on it: what it
            // failed gets a run on the version that runs now, which this worker switches to.
            let v = spec.live.current();
            let mut inst = TransformInstance::new(v.module.clone(), v.settings.clone())
                .map_err(WorkerError::Transform)?;
            let again: Vec<Message> = failed.iter().map(|&i| msgs[i].clone()).collect();
            let rerun = inst.process_batch(&again, now);
            fallback = Fallback::new(inst.lineage().clone(), &failed, msgs.len(), rerun);
            state.instance = Some(inst);
            state.generation = v.generation;
        }
        spec.live.remember(msgs);
        if let Some(f) = &fallback {
            tracing::debug!(pipeline = %spec.name, version, records = f.len(), restored_by = %f.label, "records the version on probation failed land as the replaced version wrote them");
        }
        let (mut events, mut metrics, mut skipped, mut dead) = (0u64, 0u64, 0u64, 0u64);
        for (i, (m, r)) in msgs.iter().zip(processed.results()).enumerate() {
            // A record the version on probation failed and the replaced one handled.
            let (r, rows_of, version) = match fallback.as_ref().and_then(|f| f.get(i)) {
                Some((r, from)) => (r, from, &*fallback.as_ref().expect("matched").label),
                None => (r, &processed, version),
            };
            match r {
                MessageResult::Rows(span) => {
                    let lineage = Lineage {
                        topic: &m.topic,
                        partition: m.partition,
                        offset: m.offset,
                        version,
                    };
                    for (index, row) in rows_of.rows(*span).enumerate() {
                        state.batcher.push_ref(&row, index, &lineage, now);
                        match row {
                            RowRef::Event(_) => events += 1,
                            RowRef::Metric(_) => metrics += 1,
                        }
                    }
                }
                MessageResult::Skip(_) => skipped += 1,
                MessageResult::Fail(error) => {
                    dead += 1;
                    pm.dead_letter("fail");
                    tracing::debug!(pipeline = %spec.name, topic = %m.topic, partition = m.partition, offset = m.offset, transform = version, error = %error, "record rejected by the transform; dead-lettered");
                    let at = || format!("{}/{}/{}", m.topic, m.partition, m.offset);
                    if spec.letters.note("fail", at, error).is_some() {
                        tracing::info!(pipeline = %spec.name, topic = %m.topic, partition = m.partition, offset = m.offset, transform = version, error = %error, "record rejected by the transform; dead-lettered (more are summarized every 10 s)");
                    }
                    state.letter_bytes += m.footprint() + error.len();
                    state.letters.push(dead_letter(
                        spec,
                        &module,
                        version,
                        m,
                        error.clone(),
                        "fail",
                    ));
                }
                MessageResult::Error(e) => {
                    dead += 1;
                    let class = if e.is_trap() { "trap" } else { "contract" };
                    pm.dead_letter(class);
                    tracing::debug!(pipeline = %spec.name, topic = %m.topic, partition = m.partition, offset = m.offset, transform = version, error = %e, "record could not be transformed; dead-lettered");
                    let error = e.to_string();
                    let at = || format!("{}/{}/{}", m.topic, m.partition, m.offset);
                    if spec.letters.note(class, at, &error).is_some() {
                        tracing::warn!(pipeline = %spec.name, topic = %m.topic, partition = m.partition, offset = m.offset, transform = version, error = %e, "record could not be transformed; dead-lettered (more are summarized every 10 s)");
                    }
                    state.letter_bytes += m.footprint() + error.len();
                    state
                        .letters
                        .push(dead_letter(spec, &module, version, m, error, class));
                }
            }
            state
                .processed
                .entry(m.partition)
                .and_modify(|(_, last)| *last = m.offset)
                .or_insert((m.offset, m.offset));
        }
        let total = self
            .stats
            .messages_in
            .fetch_add(msgs.len() as u64, Ordering::Relaxed)
            + msgs.len() as u64;
        tracing::debug!(worker = self.id, pipeline = %spec.name, batch = msgs.len(), messages_in = total, "processed");
        pm.messages_in
            .fetch_add(msgs.len() as u64, Ordering::Relaxed);
        pm.skipped.fetch_add(skipped, Ordering::Relaxed);
        RunStats::add(&self.stats.rows_events, events);
        RunStats::add(&self.stats.rows_metrics, metrics);
        RunStats::add(&self.stats.skipped, skipped);
        RunStats::add(&self.stats.dead_letters, dead);
        let b = &spec.batch;
        let reason = if state.batcher.rows() >= b.max_rows || state.letters.len() >= b.max_rows {
            Some(FlushReason::Rows)
        } else if state.batcher.bytes() >= b.max_bytes {
            Some(FlushReason::Bytes)
        } else {
            None
        };
        if let Some(reason) = reason {
            self.flush(pipeline, reason)?;
        }
        self.publish_held();
        self.relieve()
    }

    /// When the oldest buffered data of any pipeline reaches its max age.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.specs
            .iter()
            .zip(&self.states)
            .filter_map(|(spec, s)| {
                let has_data =
                    s.batcher.rows() > 0 || !s.letters.is_empty() || !s.processed.is_empty();
                let opened = s.batcher.opened().unwrap_or_else(Instant::now);
                has_data.then(|| opened + Duration::from_millis(spec.batch.max_age_ms))
            })
            .min()
    }

    /// Flush the pipelines whose oldest data reached its max age.
    pub fn flush_due(&mut self) -> Result<(), WorkerError> {
        let now = Instant::now();
        for i in 0..self.specs.len() {
            let s = &self.states[i];
            let has_data = s.batcher.rows() > 0 || !s.letters.is_empty() || !s.processed.is_empty();
            let age = s.batcher.opened().map(|o| now.duration_since(o));
            let max_age = Duration::from_millis(self.specs[i].batch.max_age_ms);
            if has_data && age.is_none_or(|a| a >= max_age) {
                self.flush(i, FlushReason::Age)?;
            }
        }
        Ok(())
    }

    /// Flush every pipeline.
    pub fn flush_all(&mut self, reason: FlushReason) -> Result<(), WorkerError> {
        for i in 0..self.specs.len() {
            self.flush(i, reason)?;
        }
        self.summarize_letters(matches!(reason, FlushReason::Shutdown));
        Ok(())
    }

    /// The pipelines' dead-letter summaries that are due (all of them with `force`).
    fn summarize_letters(&self, force: bool) {
        for spec in self.specs.iter() {
            if let Some(super::letters::Line::Summary {
                total,
                by_reason,
                first_at,
                first_error,
                seconds,
            }) = spec.letters.due(force)
            {
                tracing::info!(pipeline = %spec.name, dead_letters = total, by_reason = %by_reason, seconds, first = %first_at, first_error = %first_error, "records dead-lettered");
            }
        }
    }

    /// Write the pipeline's rows and dead letters durably, then advance its offsets.
    fn flush(&mut self, pipeline: usize, reason: FlushReason) -> Result<(), WorkerError> {
        if self.discarding() {
            self.drop_pending(pipeline);
            return Ok(());
        }
        let state = &mut self.states[pipeline];
        if state.batcher.rows() == 0 && state.letters.is_empty() && state.processed.is_empty() {
            return Ok(());
        }
        let spec = &self.specs[pipeline];
        let pm = &self.metrics.pipelines[pipeline];
        let bytes = state.batcher.bytes();
        let batches = state.batcher.finish();
        let rows: usize = batches.iter().map(|(_, b)| b.num_rows()).sum();
        let started = Instant::now();
        // Dead letters first: with exactly-once delivery the sink's write stores the
        // flush's offsets, after which a restart does not read these records again.
        if !state.letters.is_empty() {
            let letters = std::mem::take(&mut state.letters);
            state.letter_bytes = 0;
            let writer = &mut self.dead_letters;
            let (abort, discard, epoch) = (&self.abort, &self.discard, self.epoch);
            let give_up =
                || abort.load(Ordering::Relaxed) || discard.load(Ordering::Relaxed) > epoch;
            let written = retry(
                &give_up,
                &self.stats,
                pm,
                &self.metrics.sink_error,
                "the dead-letter destination",
                || writer.write(&letters),
                |e: &DeadLetterError| e.retry_hint() == RetryHint::Retry,
            );
            if matches!(written, Err(None)) && self.discard.load(Ordering::Relaxed) > self.epoch {
                state.drop_pending();
                return Ok(());
            }
            written.map_err(|e| {
                e.map_or(
                    WorkerError::Aborted("the dead-letter destination"),
                    WorkerError::DeadLetter,
                )
            })?;
        }
        if !batches.is_empty() {
            let sink_started = Instant::now();
            let landing = self.group.as_ref().map(|g| Landing {
                group: g.to_string(),
                topic: spec.topic.clone(),
                partitions: state
                    .processed
                    .iter()
                    .map(|(&p, &(first, last))| (p, first, last + 1))
                    .collect(),
            });
            let sink = self.sink.clone();
            let (abort, discard, epoch) = (&self.abort, &self.discard, self.epoch);
            let give_up =
                || abort.load(Ordering::Relaxed) || discard.load(Ordering::Relaxed) > epoch;
            let written = retry(
                &give_up,
                &self.stats,
                pm,
                &self.metrics.sink_error,
                "the sink",
                || sink.write(&batches, landing.as_ref()),
                |e: &SinkError| e.is_retriable(),
            );
            if matches!(written, Err(None)) && self.discard.load(Ordering::Relaxed) > self.epoch {
                state.drop_pending();
                return Ok(());
            }
            written.map_err(|e| e.map_or(WorkerError::Aborted("the sink"), WorkerError::Sink))?;
            pm.sink_write_seconds
                .observe(sink_started.elapsed().as_secs_f64());
            pm.batch_rows.observe(rows as f64);
            pm.batch_bytes.observe(bytes as f64);
        }
        // Counted once everything of the flush is durable, the flush before the rows, so a
        // scrape that sees the rows also sees the flush.
        pm.flush(reason.as_str());
        for (table, b) in &batches {
            pm.rows_out[*table as usize].fetch_add(b.num_rows() as u64, Ordering::Relaxed);
        }
        for (partition, (_, offset)) in state.processed.drain() {
            self.delivered.advance(&spec.topic, partition, offset + 1);
        }
        RunStats::add(&self.stats.flushes, 1);
        tracing::debug!(worker = self.id, pipeline = %spec.name, reason = reason.as_str(), rows, tables = ?batches.iter().map(|(t, _)| Table::name(*t)).collect::<Vec<_>>(), ms = started.elapsed().as_millis() as u64, "flushed");
        // The sink is done with the batches: the next rows go into their buffers.
        state.batcher.recycle(batches);
        self.publish_held();
        Ok(())
    }

    /// The worker thread's loop: take messages (grouped into transform batches), flush on
    /// limits, age and requests; on disconnect, flush and exit.
    pub fn run(mut self, rx: Receiver<WorkItem>) -> Result<(), Arc<WorkerError>> {
        let mut group = Group::default();
        loop {
            let wait = self
                .next_deadline()
                .map_or(Duration::from_millis(200), |d| {
                    d.saturating_duration_since(Instant::now())
                })
                .min(Duration::from_millis(200));
            let first = match rx.recv_timeout(wait) {
                Ok(item) => Some(item),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    return Ok(self.flush_all(FlushReason::Shutdown)?);
                }
            };
            let mut next = first;
            while let Some(item) = next.take() {
                match item {
                    WorkItem::Msgs(msgs) => {
                        for (pipeline, msg) in msgs {
                            if pipeline != group.pipeline
                                || group.msgs.len() >= MAX_TRANSFORM_BATCH
                                || group.bytes >= self.inflight_bytes / 8
                            {
                                self.run_group(&mut group)?;
                                group.pipeline = pipeline;
                            }
                            group.bytes += msg.footprint();
                            group.msgs.push(msg);
                        }
                    }
                    WorkItem::Discard(epoch) => {
                        self.run_group(&mut group)?;
                        for i in 0..self.states.len() {
                            self.drop_pending(i);
                        }
                        self.epoch = epoch;
                        self.publish_held();
                        tracing::info!(
                            worker = self.id,
                            "dropped what was held for partitions given up"
                        );
                    }
                    WorkItem::Flush { reason, ack } => {
                        self.run_group(&mut group)?;
                        let result = self.flush_all(reason).map_err(Arc::new);
                        let _ = ack.send(result.clone());
                        result?;
                    }
                }
                // Take what else is queued (in one transform call where it shares a pipeline),
                // but only while it is small (an eighth of the bound): taken records still count
                // against it until they are transformed, so a group of big ones is run at once.
                if group.bytes >= self.inflight_bytes / 8 {
                    self.run_group(&mut group)?;
                }
                next = match rx.try_recv() {
                    Ok(item) => Some(item),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => {
                        self.run_group(&mut group)?;
                        return Ok(self.flush_all(FlushReason::Shutdown)?);
                    }
                };
            }
            self.run_group(&mut group)?;
            self.flush_due()?;
            self.summarize_letters(false);
        }
    }

    /// Transform a group of taken records, then release their place in the queue.
    fn run_group(&mut self, group: &mut Group) -> Result<(), WorkerError> {
        if group.msgs.is_empty() {
            return Ok(());
        }
        let result = self.handle(group.pipeline, &group.msgs);
        let (n, bytes) = (group.msgs.len(), group.bytes);
        group.msgs.clear();
        group.bytes = 0;
        self.queued_msgs.fetch_sub(n, Ordering::Relaxed);
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.stats.dequeue(n, bytes);
        result
    }
}

/// Records taken from the queue for one transform call: one pipeline, in order.
#[derive(Default)]
struct Group {
    pipeline: usize,
    msgs: Vec<Message>,
    /// Their footprint (still counted as queued).
    bytes: usize,
}

/// The most payload bytes one `process` call of `instance` is given.
fn call_budget(instance: &TransformInstance) -> usize {
    (instance.settings().limits.memory_bytes() / 4).max(1 << 20)
}

fn dead_letter(
    spec: &PipelineSpec,
    module: &TransformModule,
    version: &str,
    m: &Message,
    error: String,
    class: &'static str,
) -> DeadLetter {
    DeadLetter {
        dlq_topic: spec.dead_letter_topic.clone(),
        key: m.key.clone(),
        value: m.payload.clone(),
        headers: m.headers.clone(),
        timestamp_ms: m.timestamp_ms,
        error,
        error_class: class,
        transform: module.name().to_string(),
        version: version.to_string(),
        topic: m.topic.clone(),
        partition: m.partition,
        offset: m.offset,
    }
}

/// Run `f` until it succeeds, backing off exponentially (100 ms doubling to 5 s, with
/// jitter) on retriable errors. `Err(Some(e))`: a fatal error; `Err(None)`: aborted.
#[allow(clippy::too_many_arguments)] // the retry's inputs, its counters and its outcome slot
fn retry<E: std::fmt::Display>(
    give_up: &dyn Fn() -> bool,
    stats: &RunStats,
    pm: &crate::metrics::PipelineMetrics,
    sink_error: &std::sync::Mutex<Option<String>>,
    what: &str,
    mut f: impl FnMut() -> Result<(), E>,
    retriable: impl Fn(&E) -> bool,
) -> Result<(), Option<E>> {
    let mut delay = Duration::from_millis(100);
    for attempt in 1u64.. {
        match f() {
            Ok(()) => {
                if attempt > 1 {
                    tracing::info!(attempt, "{what} recovered");
                }
                *sink_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Ok(());
            }
            Err(e) if retriable(&e) => {
                pm.sink_failures.fetch_add(1, Ordering::Relaxed);
                *sink_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("{what} failed: {e}"));
                if give_up() {
                    tracing::error!(error = %e, "giving up on {what}: stopping, or its partitions were given up");
                    return Err(None);
                }
                RunStats::add(&stats.sink_retries, 1);
                pm.sink_retries.fetch_add(1, Ordering::Relaxed);
                if attempt == 1 || attempt.is_power_of_two() {
                    tracing::warn!(attempt, error = %e, "{what} failed; retrying (offsets stay uncommitted)");
                }
                // Jitter (up to a quarter of the delay) keeps workers from retrying in lockstep.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos() as u64);
                let jitter = Duration::from_nanos(nanos % (delay.as_nanos() as u64 / 4 + 1));
                // In steps, so a stop that gives up is not held by the backoff.
                let until = Instant::now() + delay + jitter;
                while Instant::now() < until && !give_up() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                pm.sink_failures.fetch_add(1, Ordering::Relaxed);
                return Err(Some(e));
            }
        }
    }
    unreachable!("the retry loop only ends by returning")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BatchConfig, Limits, ReloadConfig};
    use crate::metrics::Metrics;
    use crate::transform::loader::bundled_bytes;
    use crate::transform::wasm::{InstanceSettings, TransformEngine};
    use std::collections::HashSet;
    use std::sync::atomic::AtomicU64;

    /// A sink that only counts rows.
    struct Counting(AtomicU64);

    impl Sink for Counting {
        fn write(
            &self,
            batches: &[(Table, arrow_array::RecordBatch)],
            _: Option<&Landing>,
        ) -> Result<(), SinkError> {
            let rows: usize = batches.iter().map(|(_, b)| b.num_rows()).sum();
            self.0.fetch_add(rows as u64, Ordering::Relaxed);
            Ok(())
        }

        fn name(&self) -> &'static str {
            "counting"
        }
    }

    fn settings(memory_mib: u64) -> InstanceSettings {
        InstanceSettings {
            limits: Limits {
                memory_mib,
                ..Limits::default()
            },
            ..InstanceSettings::default()
        }
    }

    fn megabyte_records(first: i64, n: i64) -> Vec<Message> {
        (first..first + n)
            .map(|offset| Message {
                topic: "raw-logs".into(),
                partition: 0,
                offset,
                timestamp_ms: None,
                key: None,
                headers: vec![],
                payload: vec![b'x'; 1 << 20],
            })
            .collect()
    }

    /// A reload that lowers `limits.memory_mib` must shrink the payload budget of a call with
    /// it: sized from the start-up limits, 8 MiB of records went into one call of an
    /// instance capped at 8 MiB, which trapped, and every record was retried alone.
    #[test]
    fn the_call_budget_follows_a_reloaded_memory_limit() {
        let engine = TransformEngine::new(None).unwrap();
        let module = engine
            .load("raw-logs", bundled_bytes("raw-logs").unwrap())
            .unwrap();
        let spec = PipelineSpec::new(
            "raw-logs",
            "raw-logs",
            module.clone(),
            settings(64),
            None,
            BatchConfig::default(),
            ReloadConfig::default(),
        );
        let live = spec.live.clone();
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new([("raw-logs", "raw-logs")]));
        let env = WorkerEnv {
            sink: Arc::new(Counting(AtomicU64::new(0))),
            delivered: Arc::new(DeliveredOffsets::default()),
            stats: Arc::new(RunStats::default()),
            abort: Arc::new(AtomicBool::new(false)),
            lineage: true,
            metrics: metrics.clone(),
            inflight_bytes: crate::config::RuntimeConfig::default().queue_bytes,
            discard: Arc::default(),
            group: None,
        };
        let mut w = Worker::new(
            0,
            Arc::new(vec![spec]),
            env,
            DeadLetterWriter::new(None, dir.path().to_path_buf()),
        );
        let calls = || metrics.pipelines[0].invocations.load(Ordering::Relaxed);
        let traps = || metrics.pipelines[0].traps.load(Ordering::Relaxed);
        // 64 MiB: a 16 MiB budget, so 8 records of 1 MiB go in one call.
        w.handle(0, &megabyte_records(0, 8)).unwrap();
        assert_eq!((calls(), traps()), (1, 0));
        // 8 MiB: a 2 MiB budget, so two records per call.
        live.try_swap(module, settings(8)).unwrap();
        w.handle(0, &megabyte_records(8, 8)).unwrap();
        assert_eq!(
            (calls() - 1, traps()),
            (4, 0),
            "calls, traps after the reload"
        );
        w.flush_all(FlushReason::Shutdown).unwrap();
    }
    /// A version on probation that fails records its predecessor handles costs no record:
    /// they land as the predecessor wrote them, under its label, and none is dead-lettered.
    #[test]
    fn records_a_version_on_probation_fails_land_as_the_replaced_version_wrote_them() {
        let engine = TransformEngine::new(None).unwrap();
        let good = engine
            .load("raw-logs", bundled_bytes("raw-logs").unwrap())
            .unwrap();
        let half = engine
            .load(
                "raw-logs",
                &std::fs::read(vast_test_guests::FAILS_HALF_PATH).unwrap(),
            )
            .unwrap();
        let spec = PipelineSpec::new(
            "raw-logs",
            "raw-logs",
            good,
            InstanceSettings::default(),
            None,
            BatchConfig::default(),
            ReloadConfig {
                rollback_error_rate: 1.0,
                probation_batches: 100,
                ..ReloadConfig::default()
            },
        );
        let live = spec.live.clone();
        let before = live.current().label().to_string();
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Counting(AtomicU64::new(0)));
        let stats = Arc::new(RunStats::default());
        let env = WorkerEnv {
            sink: sink.clone(),
            delivered: Arc::new(DeliveredOffsets::default()),
            stats: stats.clone(),
            abort: Arc::new(AtomicBool::new(false)),
            lineage: true,
            metrics: Arc::new(Metrics::new([("raw-logs", "raw-logs")])),
            inflight_bytes: crate::config::RuntimeConfig::default().queue_bytes,
            discard: Arc::default(),
            group: None,
        };
        let mut w = Worker::new(
            0,
            Arc::new(vec![spec]),
            env,
            DeadLetterWriter::new(None, dir.path().to_path_buf()),
        );
        let line = br#"{"host": "pg-1", "payload": {"event_type": "vacuum"}}"#;
        let msgs: Vec<Message> = (0..20)
            .map(|offset| Message {
                topic: "raw-logs".into(),
                partition: 0,
                offset,
                timestamp_ms: None,
                key: None,
                headers: vec![],
                payload: line.to_vec(),
            })
            .collect();
        // No shadow sample yet: the candidate goes straight to its probation.
        live.try_swap(half, InstanceSettings::default()).unwrap();
        assert!(live.on_probation());
        w.handle(0, &msgs).unwrap();
        // The rows of the odd offsets carry the replaced version's label.
        let state = &w.states[0];
        assert_eq!(state.letters.len(), 0, "nothing dead-lettered");
        let batches = w.states[0].batcher.finish();
        let versions = batches[0]
            .1
            .column_by_name("transform_version")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap()
            .clone();
        let labels: HashSet<&str> = (0..20).map(|i| versions.value(i)).collect();
        assert_eq!(batches[0].1.num_rows(), 20);
        assert!(labels.contains(before.as_str()), "{labels:?}");
        assert_eq!(labels.len(), 2, "{labels:?}");
        assert_eq!(RunStats::get(&stats.dead_letters), 0);
    }
}
