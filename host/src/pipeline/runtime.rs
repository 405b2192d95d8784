//! The runtime that owns the wiring between a source and the sinks: the worker pool (one
//! thread per worker, each owning its wasm instances and batchers), the bounded queue per
//! worker (a source asks [`Runtime::has_room`] before it queues, and holds back or pauses
//! when there is none), the flush hand-off, the [`DeliveredOffsets`] the workers advance,
//! and the graceful stop: flush, then the source's [`Committer`], within the shutdown
//! timeout (a watchdog makes retries give up past it).

use super::worker::WorkItem;
use super::{
    DeliveredOffsets, FlushReason, PipelineSpec, RunStats, Worker, WorkerEnv, WorkerError,
};
use crate::metrics::Metrics;
use crate::model::Message;
use crate::sink::Sink;
use crate::sink::deadletter::DeadLetterWriter;
use crossbeam_channel::{Sender, bounded};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Records per chunk sent to a worker (see [`WorkItem::Msgs`]).
const CHUNK: usize = 256;

/// Why the runtime could not go on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// A worker stopped: its pipeline cannot go on without losing or duplicating data.
    #[error("worker {worker} stopped: {source}")]
    Worker {
        worker: usize,
        #[source]
        source: Arc<WorkerError>,
    },
    /// A worker's thread ended (its error, if any, is reported by [`Runtime::failure`]).
    #[error("a worker stopped")]
    Disconnected,
    #[error("workers did not flush within {0:?}")]
    FlushTimeout(Duration),
    /// A flush asked for after the stop's deadline (the revoke as the consumer closes): not
    /// attempted, so the stop keeps to its bound.
    #[error("not flushed: the stop's deadline has passed")]
    StopDeadlinePassed,
    #[error(
        "shutdown did not finish within {0:?}: unflushed data was not committed and will be re-read"
    )]
    ShutdownTimeout(Duration),
    #[error("cannot start a worker thread: {0}")]
    Spawn(#[source] Arc<std::io::Error>),
    /// A recreated topic's stale stored offsets could not be lowered: going on would take
    /// the new records' rows for landed ones.
    #[error(
        "the offsets stored with the rows are past a recreated topic's end and could not be lowered: {0}"
    )]
    StaleOffsets(#[source] Arc<crate::sink::SinkError>),
}

/// How the runtime is sized (from `[runtime]`, [`RuntimeOptions::from_config`]).
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub workers: usize,
    /// Records not yet transformed, per worker, before a source must hold back.
    pub queue_messages: usize,
    /// The in-flight bytes per worker before a source must hold back: records not yet
    /// transformed, the rows being batched, dead letters, the transforms' memory.
    pub queue_bytes: usize,
    /// Add the lineage columns.
    pub lineage: bool,
    /// The bound of a flush request and of the graceful stop.
    pub shutdown_timeout: Duration,
    /// With exactly-once delivery, the consumer group whose offsets the sink stores.
    pub group: Option<Arc<str>>,
}

impl RuntimeOptions {
    /// The runtime's sizing from `[runtime]`.
    pub fn from_config(c: &crate::config::RuntimeConfig) -> Self {
        RuntimeOptions {
            workers: c.worker_count(),
            queue_messages: c.queue_messages,
            queue_bytes: c.queue_bytes,
            lineage: c.lineage,
            shutdown_timeout: Duration::from_secs(c.shutdown_timeout_s),
            group: None,
        }
    }
}

/// Commits the delivered offsets where the source keeps them. Kafka implements it; a file
/// replay has nothing to commit ([`NoCommit`]).
pub trait Committer {
    /// Commit the positions in `delivered` that this source owns, and wait for the answer
    /// (the last commit of a stop; a failure only means those records are read again).
    fn commit_final(&mut self, delivered: &DeliveredOffsets);
}

/// The committer of a source without offsets to commit (file replay).
pub struct NoCommit;

impl Committer for NoCommit {
    fn commit_final(&mut self, _: &DeliveredOffsets) {}
}

struct WorkerHandle {
    tx: Sender<WorkItem>,
    queued_msgs: Arc<AtomicUsize>,
    queued_bytes: Arc<AtomicUsize>,
    /// What the worker holds beyond its queue: rows being batched, dead letters, the memory
    /// of its transform instances.
    held_bytes: Arc<AtomicUsize>,
    /// Records queued for the worker but not sent yet (counted in `queued_*` already).
    chunk: Mutex<Chunk>,
}

#[derive(Default)]
struct Chunk {
    msgs: Vec<(usize, Message)>,
    bytes: usize,
}

/// The worker pool and its queues; see the module docs.
pub struct Runtime {
    workers: Vec<WorkerHandle>,
    queue_messages: usize,
    queue_bytes: usize,
    delivered: Arc<DeliveredOffsets>,
    stats: Arc<RunStats>,
    /// Set when retries must give up (shutdown deadline passed).
    abort: Arc<AtomicBool>,
    /// Bumped by [`Runtime::discard`]; workers drop what they hold up to its marker.
    discard: Arc<AtomicU64>,
    /// The first failure, of a worker thread or reported by the source.
    failed: Arc<Mutex<Option<RuntimeError>>>,
    shutdown_timeout: Duration,
    /// Once a stop has begun, when it must be over: every later flush (a revoke as the
    /// consumer closes) ends by then too, so the whole stop keeps to the bound.
    stop_deadline: Mutex<Option<Instant>>,
}

/// The worker threads of a [`Runtime`]: joined once the runtime (its senders) is dropped.
pub struct WorkerThreads {
    handles: Vec<JoinHandle<Result<(), Arc<WorkerError>>>>,
}

impl WorkerThreads {
    /// Wait for every worker to exit; the first error a worker stopped with.
    pub fn join(self) -> Result<(), RuntimeError> {
        let mut first = Ok(());
        for (worker, h) in self.handles.into_iter().enumerate() {
            if let Ok(Err(source)) = h.join()
                && first.is_ok()
            {
                first = Err(RuntimeError::Worker { worker, source });
            }
        }
        first
    }
}

impl Runtime {
    /// Start `opts.workers` workers for `specs`; `dead_letters` makes each worker's writer.
    pub fn start(
        specs: Arc<Vec<PipelineSpec>>,
        opts: &RuntimeOptions,
        sink: Arc<dyn Sink>,
        stats: Arc<RunStats>,
        metrics: Arc<Metrics>,
        dead_letters: impl Fn() -> DeadLetterWriter,
    ) -> Result<(Arc<Runtime>, WorkerThreads), RuntimeError> {
        let delivered = Arc::new(DeliveredOffsets::default());
        let abort = Arc::new(AtomicBool::new(false));
        let discard = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(None::<RuntimeError>));
        let mut handles = Vec::new();
        let mut workers = Vec::new();
        for id in 0..opts.workers.max(1) {
            // Channel capacity is a backstop; sources hold back before it is reached.
            let (tx, rx) = bounded(opts.queue_messages + 1);
            let env = WorkerEnv {
                sink: sink.clone(),
                delivered: delivered.clone(),
                stats: stats.clone(),
                abort: abort.clone(),
                lineage: opts.lineage,
                metrics: metrics.clone(),
                inflight_bytes: opts.queue_bytes,
                discard: discard.clone(),
                group: opts.group.clone(),
            };
            let worker = Worker::new(id, specs.clone(), env, dead_letters());
            let queued_msgs = worker.queued_msgs.clone();
            let queued_bytes = worker.queued_bytes.clone();
            let held_bytes = worker.held_bytes.clone();
            let failed = failed.clone();
            let h = std::thread::Builder::new()
                .name(format!("worker-{id}"))
                .spawn(move || {
                    worker.run(rx).inspect_err(|e| {
                        tracing::error!(worker = id, error = %e, "worker stopped");
                        failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(RuntimeError::Worker {
                                worker: id,
                                source: e.clone(),
                            });
                    })
                })
                .map_err(|e| RuntimeError::Spawn(Arc::new(e)))?;
            handles.push(h);
            workers.push(WorkerHandle {
                tx,
                queued_msgs,
                queued_bytes,
                held_bytes,
                chunk: Mutex::default(),
            });
        }
        stats
            .inflight_limit
            .store(workers.len() * opts.queue_bytes, Ordering::Relaxed);
        let runtime = Runtime {
            workers,
            queue_messages: opts.queue_messages,
            queue_bytes: opts.queue_bytes,
            delivered,
            stats,
            abort,
            discard,
            failed,
            shutdown_timeout: opts.shutdown_timeout,
            stop_deadline: Mutex::new(None),
        };
        Ok((Arc::new(runtime), WorkerThreads { handles }))
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// What has been durably delivered.
    pub fn delivered(&self) -> &DeliveredOffsets {
        &self.delivered
    }

    /// The run's counters.
    pub fn stats(&self) -> &RunStats {
        &self.stats
    }

    /// The first failure (a worker's, or one the source reported with [`Runtime::fail`]).
    pub fn failure(&self) -> Option<RuntimeError> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Record a failure the source met (e.g. a flush on revoke that failed).
    pub fn fail(&self, e: RuntimeError) {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    }

    /// True when worker `w` may be given another record: fewer than `queue_messages` records
    /// not yet transformed, and its whole in-flight footprint (those records, the rows it
    /// batches, its dead letters, its transforms' memory) under `queue_bytes`. A worker with
    /// nothing queued always gets one, so a footprint over the bound slows it, never stops it.
    pub fn has_room(&self, w: usize) -> bool {
        let wk = &self.workers[w];
        let queued = wk.queued_msgs.load(Ordering::Relaxed);
        queued == 0
            || (queued < self.queue_messages
                && wk.queued_bytes.load(Ordering::Relaxed) + wk.held_bytes.load(Ordering::Relaxed)
                    < self.queue_bytes)
    }

    /// Queue a record of `pipeline` for worker `w`: into the worker's chunk, which is sent
    /// once full (or by [`Runtime::send_chunks`]). It counts ([`Message::footprint`]) until
    /// the worker has transformed it.
    pub fn queue(&self, w: usize, pipeline: usize, msg: Message) -> Result<(), RuntimeError> {
        let bytes = msg.footprint();
        let wk = &self.workers[w];
        wk.queued_msgs.fetch_add(1, Ordering::Relaxed);
        wk.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let mut chunk = wk.chunk.lock().unwrap_or_else(|e| e.into_inner());
        chunk.msgs.push((pipeline, msg));
        chunk.bytes += bytes;
        if chunk.msgs.len() >= CHUNK {
            return self.send_chunk(wk, &mut chunk);
        }
        Ok(())
    }

    fn send_chunk(&self, wk: &WorkerHandle, chunk: &mut Chunk) -> Result<(), RuntimeError> {
        if chunk.msgs.is_empty() {
            return Ok(());
        }
        let Chunk { msgs, bytes } = std::mem::replace(
            chunk,
            Chunk {
                msgs: Vec::with_capacity(CHUNK),
                bytes: 0,
            },
        );
        self.stats.enqueue(msgs.len(), bytes);
        wk.tx
            .send(WorkItem::Msgs(msgs))
            .map_err(|_| RuntimeError::Disconnected)
    }

    /// Give up everything the workers hold and have queued (rows, dead letters, records not
    /// transformed, a write being retried): for partitions released while the sink fails, so
    /// the group can move on. None of it was delivered, so none of it was committed: the
    /// partitions' next owner reads those records again. Records queued after this call are
    /// processed as usual.
    pub fn discard(&self) -> Result<(), RuntimeError> {
        self.send_chunks()?;
        let epoch = self.discard.fetch_add(1, Ordering::Relaxed) + 1;
        for w in &self.workers {
            w.tx.send(WorkItem::Discard(epoch))
                .map_err(|_| RuntimeError::Disconnected)?;
        }
        Ok(())
    }

    /// Send every worker's unsent records.
    pub fn send_chunks(&self) -> Result<(), RuntimeError> {
        for wk in &self.workers {
            let mut chunk = wk.chunk.lock().unwrap_or_else(|e| e.into_inner());
            self.send_chunk(wk, &mut chunk)?;
        }
        Ok(())
    }

    /// Ask every worker to flush everything (unsent records first) and wait for all answers,
    /// at most the shutdown timeout.
    pub fn flush(&self, reason: FlushReason) -> Result<(), RuntimeError> {
        let stop = *self.stop_deadline.lock().unwrap_or_else(|p| p.into_inner());
        if stop.is_some_and(|d| Instant::now() >= d) {
            return Err(RuntimeError::StopDeadlinePassed);
        }
        self.send_chunks()?;
        let mut acks = Vec::new();
        for w in &self.workers {
            let (tx, rx) = bounded(1);
            if w.tx.send(WorkItem::Flush { reason, ack: tx }).is_err() {
                return Err(RuntimeError::Disconnected);
            }
            acks.push(rx);
        }
        let mut deadline = Instant::now() + self.shutdown_timeout;
        if let Some(stop) = stop {
            deadline = deadline.min(stop);
        }
        for (worker, rx) in acks.into_iter().enumerate() {
            match rx.recv_deadline(deadline) {
                Ok(Ok(())) => {}
                Ok(Err(source)) => return Err(RuntimeError::Worker { worker, source }),
                Err(_) => return Err(RuntimeError::FlushTimeout(self.shutdown_timeout)),
            }
        }
        Ok(())
    }

    /// The graceful stop: flush what the workers hold (unless `flush` is false: stopping on
    /// an error), then let `committer` commit what is delivered, within the shutdown
    /// timeout. Drop the runtime afterwards to end the workers, and join them.
    pub fn stop(&self, committer: &mut dyn Committer, flush: bool) -> Result<(), RuntimeError> {
        let timeout = self.shutdown_timeout;
        let deadline = Instant::now() + timeout;
        *self.stop_deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        let abort = self.abort.clone();
        let done = Arc::new(AtomicBool::new(false));
        let watching = done.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + timeout;
            while Instant::now() < until {
                if watching.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Past the deadline, retries give up so the process can exit (nothing
            // uncommitted is lost: it is read again).
            abort.store(true, Ordering::Relaxed);
        });
        let result = if flush {
            match self.flush(FlushReason::Shutdown) {
                Ok(()) => {
                    committer.commit_final(&self.delivered);
                    Ok(())
                }
                // The flush timing out is the stop's deadline passing (the watchdog may
                // not have set `abort` yet).
                Err(RuntimeError::FlushTimeout(_)) => Err(RuntimeError::ShutdownTimeout(timeout)),
                Err(_) if self.abort.load(Ordering::Relaxed) || Instant::now() >= deadline => {
                    Err(RuntimeError::ShutdownTimeout(timeout))
                }
                Err(e) => Err(e),
            }
        } else {
            // Commit what is truly delivered even when stopping on an error.
            committer.commit_final(&self.delivered);
            Ok(())
        };
        done.store(true, Ordering::Relaxed);
        result
    }
}
