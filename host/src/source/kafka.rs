//! The Kafka source: one consumer thread polls the group and routes each partition's records,
//! in order, to one worker (the least loaded when first seen), over bounded queues. When a
//! worker's queue is full the partition is paused instead of buffering more. Offsets are committed only for the
//! delivered prefix reported by the workers; on revoke and on shutdown the workers flush
//! first and the commit is synchronous.

use crate::config::Config;
use crate::deadletter::DeadLetterWriter;
use crate::pipeline::worker::WorkItem;
use crate::pipeline::{DeliveredOffsets, FlushReason, PipelineSpec, RunStats, Worker, WorkerEnv};
use crate::sink::Sink;
use crate::wasm::{Header, Message};
use crossbeam_channel::{Sender, bounded};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Headers, Message as _};
use rdkafka::topic_partition_list::TopicPartitionListElem;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Why the run stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("{0}")]
    Worker(String),
    #[error(
        "shutdown did not finish within {0:?}: unflushed data was not committed and will be re-read"
    )]
    ShutdownTimeout(Duration),
}

/// Options of one `run`.
pub struct RunOptions {
    /// Stop (gracefully) after this long without a new record, once partitions are assigned.
    pub stop_after_idle: Option<Duration>,
    /// Set to request a graceful stop (SIGTERM/SIGINT).
    pub shutdown: Arc<AtomicBool>,
    /// Where dead letters without a topic go.
    pub data_dir: PathBuf,
    /// Metrics, shared with the admin server.
    pub metrics: Arc<crate::metrics::Metrics>,
}

type Tp = (String, i32);

/// How long the poll loop waits for a full worker before pausing the last fetchable
/// partition (see the loop).
const ROOM_WAIT: Duration = Duration::from_secs(1);

/// Records per chunk sent to a worker (see [`WorkItem::Msgs`]).
const CHUNK: usize = 256;

/// The poll loop's checks (shutdown, failures, held records, commits, the age of unsent
/// chunks) run after an empty poll or every this many records, not per record: per record
/// they were a fifth of the consumer thread's time.
const HOUSEKEEPING_EVERY: u32 = 64;

/// Longest a queued record waits in an unsent chunk while records keep arriving.
const CHUNK_AGE: Duration = Duration::from_millis(5);

struct Pending {
    pipeline: usize,
    msg: Message,
    bytes: usize,
}

struct WorkerHandle {
    tx: Sender<WorkItem>,
    queued_msgs: Arc<AtomicUsize>,
    queued_bytes: Arc<AtomicUsize>,
    /// Records queued for the worker but not sent yet (counted in `queued_*` already).
    chunk: Mutex<Chunk>,
}

#[derive(Default)]
struct Chunk {
    msgs: Vec<(usize, Message)>,
    bytes: usize,
}

/// State shared between the poll loop and the rebalance callbacks (which run inside poll).
struct Shared {
    workers: Vec<WorkerHandle>,
    queue_messages: usize,
    queue_bytes: usize,
    delivered: Arc<DeliveredOffsets>,
    stats: Arc<RunStats>,
    /// Records held back for paused partitions, in order.
    held: Mutex<HashMap<Tp, VecDeque<Pending>>>,
    assigned: Mutex<HashSet<Tp>>,
    /// Partition → worker, see [`Shared::worker_for`].
    routes: Mutex<HashMap<Tp, usize>>,
    committed: Mutex<HashMap<Tp, i64>>,
    flush_timeout: Duration,
    failed: Mutex<Option<String>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Shared {
    /// The worker of a partition. A partition keeps its worker for the life of the process
    /// (its records stay in order and its delivered prefix has one writer); a partition seen
    /// for the first time goes to the worker with the fewest assigned partitions. Hashing
    /// instead left one of two workers idle whenever two partitions collided.
    fn worker_for(&self, tp: &Tp) -> usize {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&w) = routes.get(tp) {
            return w;
        }
        let assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        let mut load = vec![0usize; self.workers.len()];
        for (t, &w) in routes.iter() {
            if assigned.contains(t) {
                load[w] += 1;
            }
        }
        drop(assigned);
        let w = (0..load.len()).min_by_key(|&w| (load[w], w)).unwrap_or(0);
        routes.insert(tp.clone(), w);
        w
    }

    /// Partitions assigned to this consumer now.
    fn assigned_count(&self) -> usize {
        self.assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn has_room(&self, w: usize) -> bool {
        let wk = &self.workers[w];
        wk.queued_msgs.load(Ordering::Relaxed) < self.queue_messages
            && wk.queued_bytes.load(Ordering::Relaxed) < self.queue_bytes
    }

    /// Queue a record for worker `w`: into its chunk, which is sent once full (or by
    /// [`Shared::send_chunks`]).
    fn queue(&self, w: usize, p: Pending) -> Result<(), String> {
        let wk = &self.workers[w];
        wk.queued_msgs.fetch_add(1, Ordering::Relaxed);
        wk.queued_bytes.fetch_add(p.bytes, Ordering::Relaxed);
        let mut chunk = wk.chunk.lock().unwrap_or_else(|e| e.into_inner());
        chunk.msgs.push((p.pipeline, p.msg));
        chunk.bytes += p.bytes;
        if chunk.msgs.len() >= CHUNK {
            return self.send_chunk(wk, &mut chunk);
        }
        Ok(())
    }

    fn send_chunk(&self, wk: &WorkerHandle, chunk: &mut Chunk) -> Result<(), String> {
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
            .send(WorkItem::Msgs { msgs, bytes })
            .map_err(|_| "a worker stopped".to_string())
    }

    /// Send every worker's unsent records.
    fn send_chunks(&self) -> Result<(), String> {
        for wk in &self.workers {
            let mut chunk = wk.chunk.lock().unwrap_or_else(|e| e.into_inner());
            self.send_chunk(wk, &mut chunk)?;
        }
        Ok(())
    }

    /// Ask every worker to flush everything (unsent records first) and wait for all answers.
    fn flush_workers(&self, reason: FlushReason) -> Result<(), String> {
        self.send_chunks()?;
        let mut acks = Vec::new();
        for w in &self.workers {
            let (tx, rx) = bounded(1);
            if w.tx.send(WorkItem::Flush { reason, ack: tx }).is_err() {
                return Err("a worker stopped".into());
            }
            acks.push(rx);
        }
        let deadline = Instant::now() + self.flush_timeout;
        for rx in acks {
            match rx.recv_deadline(deadline) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(format!(
                        "workers did not flush within {:?}",
                        self.flush_timeout
                    ));
                }
            }
        }
        Ok(())
    }

    /// Commit delivered offsets of `only` (or of every assigned partition) that moved.
    /// Returns false when the commit failed (it is retried on the next call).
    fn commit(
        &self,
        consumer: &BaseConsumer<Ctx>,
        mode: CommitMode,
        only: Option<&HashSet<Tp>>,
    ) -> bool {
        let delivered = self.delivered.snapshot();
        let assigned = self
            .assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut committed = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        let mut tpl = TopicPartitionList::new();
        let mut moved = Vec::new();
        for (tp, next) in delivered {
            let wanted = only.map_or(assigned.contains(&tp), |o| o.contains(&tp));
            // An async commit may have failed unseen: synchronous commits (revoke, shutdown)
            // always send every delivered position.
            let unchanged = committed.get(&tp) == Some(&next) && matches!(mode, CommitMode::Async);
            if wanted && !unchanged {
                let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(next));
                moved.push((tp, next));
            }
        }
        if moved.is_empty() {
            return true;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                RunStats::add(&self.stats.commits, 1);
                let mut positions = self
                    .metrics
                    .partitions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                for (tp, next) in moved {
                    tracing::debug!(topic = %tp.0, partition = tp.1, offset = next, "committed");
                    positions.entry(tp.clone()).or_default().committed = next;
                    committed.insert(tp, next);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "offset commit failed; it will be retried");
                return false;
            }
        }
        true
    }
}

struct Ctx {
    shared: Arc<Shared>,
}

impl ClientContext for Ctx {
    /// librdkafka's periodic statistics: the high watermark and lag of each partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut positions = self
            .shared
            .metrics
            .partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                let key = (topic.clone(), partition);
                if partition < 0 || !positions.contains_key(&key) && p.consumer_lag < 0 {
                    continue;
                }
                let e = positions.entry(key).or_default();
                e.high_watermark = p.hi_offset;
                if p.consumer_lag >= 0 {
                    e.lag = p.consumer_lag;
                }
            }
        }
    }
}

fn tps(tpl: &TopicPartitionList) -> HashSet<Tp> {
    tpl.elements()
        .iter()
        .map(|e: &TopicPartitionListElem| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let s = &self.shared;
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let revoked = tps(tpl);
                // Held records of revoked partitions were never processed: the next owner reads
                // them again from the committed offset.
                {
                    let mut held = s.held.lock().unwrap_or_else(|p| p.into_inner());
                    for tp in &revoked {
                        if held.remove(tp).is_some() {
                            s.stats.paused.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
                // Flush what the workers hold for every partition, then commit synchronously
                // before the partitions are released.
                if let Err(e) = s.flush_workers(FlushReason::Revoke) {
                    tracing::error!(error = %e, "flush on revoke failed; uncommitted records will be re-read by the next owner");
                    *s.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
                commit_sync(s, consumer, Some(&revoked));
                let list: Vec<Tp> = revoked.iter().cloned().collect();
                s.delivered.remove(&list);
                let mut assigned = s.assigned.lock().unwrap_or_else(|p| p.into_inner());
                let mut committed = s.committed.lock().unwrap_or_else(|p| p.into_inner());
                for tp in &revoked {
                    assigned.remove(tp);
                    committed.remove(tp);
                }
                tracing::info!(
                    partitions = revoked.len(),
                    "partitions revoked (flushed and committed)"
                );
            }
            Rebalance::Assign(_) | Rebalance::Error(_) => {}
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.shared.metrics.joined.store(true, Ordering::Relaxed);
                let got = tps(tpl);
                tracing::info!(partitions = ?got.iter().map(|(t, p)| format!("{t}/{p}")).collect::<Vec<_>>(), "partitions assigned");
                self.shared
                    .assigned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(got);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

fn to_message(m: &rdkafka::message::BorrowedMessage<'_>) -> Message {
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| Header {
                    key: h.key.to_string(),
                    value: h.value.map(<[u8]>::to_vec),
                })
                .collect()
        })
        .unwrap_or_default();
    Message {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        headers,
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
    }
}

/// The consumer configuration: the file's properties, then the settings at-least-once needs.
pub fn consumer_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &config.kafka.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("group.id", &config.kafka.group_id)
        // We commit explicitly, and only what was delivered.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    // Defaults the file's [kafka.properties] (or KAFKA_PROPERTY_*) override.
    let defaults = [
        ("auto.offset.reset", "earliest"),
        // Bound librdkafka's own prefetch buffer too (per partition).
        ("queued.max.messages.kbytes", "16384"),
        // When that buffer is full librdkafka stops fetching the partition for this long
        // (1 s by default). The workers drain a full buffer in well under that, then sat
        // idle: end to end, 0.75 s gaps with no records every few hundred thousand.
        ("fetch.queue.backoff.ms", "20"),
    ];
    for (key, value) in defaults {
        if !config.kafka.properties.contains_key(key) {
            c.set(key, value);
        }
    }
    c
}

/// Run the pipelines from Kafka until shutdown is requested (or the idle limit passes).
pub fn run(
    config: &Config,
    specs: Vec<PipelineSpec>,
    sink: Arc<dyn Sink>,
    stats: Arc<RunStats>,
    opts: RunOptions,
) -> Result<(), RunError> {
    let specs = Arc::new(specs);
    let by_topic: HashMap<String, usize> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.topic.clone(), i))
        .collect();
    let delivered = Arc::new(DeliveredOffsets::default());
    let abort = Arc::new(AtomicBool::new(false));
    let n = config.runtime.worker_count();
    let mut handles: Vec<JoinHandle<Result<(), String>>> = Vec::new();
    let mut workers = Vec::new();
    let failed_flag = Arc::new(Mutex::new(None::<String>));
    for id in 0..n {
        // Channel capacity is a backstop; the consumer pauses partitions before it is reached.
        let (tx, rx) = bounded(config.runtime.queue_messages + 1);
        let dlq = DeadLetterWriter::new(Some(config.kafka.clone()), opts.data_dir.clone());
        let env = WorkerEnv {
            sink: sink.clone(),
            delivered: delivered.clone(),
            stats: stats.clone(),
            abort: abort.clone(),
            lineage: config.runtime.lineage,
            metrics: opts.metrics.clone(),
        };
        let worker = Worker::new(id, specs.clone(), env, dlq);
        let queued_msgs = worker.queued_msgs.clone();
        let queued_bytes = worker.queued_bytes.clone();
        let failed = failed_flag.clone();
        let h = std::thread::Builder::new()
            .name(format!("worker-{id}"))
            .spawn(move || {
                worker.run(rx).map_err(|e| {
                    tracing::error!(worker = id, error = %e, "worker stopped");
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    e.to_string()
                })
            })
            .map_err(|e| RunError::Worker(format!("cannot start worker: {e}")))?;
        handles.push(h);
        workers.push(WorkerHandle {
            tx,
            queued_msgs,
            queued_bytes,
            chunk: Mutex::default(),
        });
    }
    let shared = Arc::new(Shared {
        workers,
        queue_messages: config.runtime.queue_messages,
        queue_bytes: config.runtime.queue_bytes,
        delivered,
        stats: stats.clone(),
        held: Mutex::new(HashMap::new()),
        assigned: Mutex::new(HashSet::new()),
        routes: Mutex::new(HashMap::new()),
        committed: Mutex::new(HashMap::new()),
        flush_timeout: Duration::from_secs(config.runtime.shutdown_timeout_s),
        failed: Mutex::new(None),
        metrics: opts.metrics.clone(),
    });
    let consumer: BaseConsumer<Ctx> = consumer_config(config)
        .create_with_context(Ctx {
            shared: shared.clone(),
        })
        .map_err(|e| RunError::Kafka(format!("cannot create the consumer: {e}")))?;
    let topics: Vec<&str> = specs.iter().map(|s| s.topic.as_str()).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| RunError::Kafka(format!("cannot subscribe to {topics:?}: {e}")))?;
    tracing::info!(topics = ?topics, group = %config.kafka.group_id, workers = n, "consuming");

    let commit_every = Duration::from_millis(config.runtime.commit_interval_ms);
    let mut last_commit = Instant::now();
    let mut last_record = Instant::now();
    let mut was_assigned = false;
    let mut outcome = Ok(());
    // The route of the last record's partition: records come in runs per partition, and
    // the lookup allocates the topic name and takes a lock.
    let mut route: Option<(String, i32, usize, usize)> = None;
    // Records since the last housekeeping, and when the oldest unsent chunk began.
    let mut since_checks = 0u32;
    let mut got_records = false;
    let mut unsent_since: Option<Instant> = None;
    loop {
        if since_checks == 0 {
            if opts.shutdown.load(Ordering::Relaxed) {
                tracing::info!("shutdown requested: stopping fetch, flushing, committing");
                break;
            }
            let worker_failure = failure(&failed_flag, &shared);
            if let Some(e) = worker_failure {
                outcome = Err(RunError::Worker(e));
                break;
            }
            if std::mem::take(&mut got_records) {
                last_record = Instant::now();
            }
            let assigned_now = !shared
                .assigned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty();
            if assigned_now && !was_assigned {
                last_record = Instant::now();
            }
            was_assigned = assigned_now;
            if let Some(idle) = opts.stop_after_idle {
                let drained = shared.stats.queued.load(Ordering::Relaxed) == 0
                    && shared
                        .held
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .is_empty();
                if assigned_now && drained && last_record.elapsed() >= idle {
                    tracing::info!(idle = ?idle, "no new records: stopping");
                    break;
                }
            }
            release_held(&shared, &consumer);
            if unsent_since.is_some_and(|t| t.elapsed() >= CHUNK_AGE) {
                if let Err(e) = shared.send_chunks() {
                    outcome = Err(RunError::Worker(e));
                    break;
                }
                unsent_since = None;
            }
            commit_if_due(&shared, &consumer, commit_every, &mut last_commit);
        }
        // Nothing waits in a chunk while the consumer blocks in poll.
        let timeout = if unsent_since.is_some() {
            Duration::ZERO
        } else {
            Duration::from_millis(50)
        };
        let m = match consumer.poll(timeout) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "kafka consumer error");
                since_checks = 0;
                continue;
            }
            None => {
                if let Err(e) = shared.send_chunks() {
                    outcome = Err(RunError::Worker(e));
                    break;
                }
                unsent_since = None;
                since_checks = 0;
                continue;
            }
        };
        got_records = true;
        since_checks = (since_checks + 1) % HOUSEKEEPING_EVERY;
        let (pipeline, w) = match &route {
            Some((t, p, pipeline, w)) if *p == m.partition() && t == m.topic() => (*pipeline, *w),
            _ => {
                let tp = (m.topic().to_string(), m.partition());
                let Some(&pipeline) = by_topic.get(&tp.0) else {
                    continue;
                };
                let w = shared.worker_for(&tp);
                route = Some((tp.0, tp.1, pipeline, w));
                (pipeline, w)
            }
        };
        let msg = to_message(&m);
        let bytes = msg.payload.len() + msg.key.as_ref().map_or(0, Vec::len) + 128;
        let p = Pending {
            pipeline,
            msg,
            bytes,
        };
        let tp = || (m.topic().to_string(), m.partition());
        // `paused` counts the partitions with held records (all changed on this thread).
        let mut held = (shared.stats.paused.load(Ordering::Relaxed) > 0)
            .then(|| shared.held.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(q) = held.as_mut().and_then(|h| h.get_mut(&tp())) {
            // Already paused: keep order behind the held records.
            q.push_back(p);
            continue;
        }
        if !shared.has_room(w) {
            let held_count = held.as_ref().map_or(0, |h| h.len());
            if held_count + 1 >= shared.assigned_count() {
                // Pausing the last fetchable partition would leave librdkafka's fetcher with
                // nothing to fetch, and it then noticed a resume only up to a second later
                // (end to end: 0.5-0.9 s without records every few hundred thousand). Every
                // other partition is held back already, so wait a while for the worker to
                // make room (a flush takes 0.1-0.3 s); commits and held records keep moving.
                // Past the wait (a stuck sink), pause as usual so the consumer keeps polling
                // and stays in its group.
                drop(held.take());
                let stop = || {
                    opts.shutdown.load(Ordering::Relaxed)
                        || failure(&failed_flag, &shared).is_some()
                };
                wait_for_room(&shared, &consumer, w, stop, commit_every, &mut last_commit);
                unsent_since = None;
            }
            if !shared.has_room(w) {
                let tp = tp();
                pause(&consumer, &tp);
                shared.stats.paused.fetch_add(1, Ordering::Relaxed);
                RunStats::add(&shared.stats.pauses, 1);
                let mut held =
                    held.unwrap_or_else(|| shared.held.lock().unwrap_or_else(|p| p.into_inner()));
                held.entry(tp).or_default().push_back(p);
                continue;
            }
        }
        drop(held);
        if let Err(e) = shared.queue(w, p) {
            outcome = Err(RunError::Worker(e));
            break;
        }
        unsent_since.get_or_insert_with(Instant::now);
    }

    // Graceful stop: flush what the workers hold, commit synchronously, then let them exit.
    let timeout = Duration::from_secs(config.runtime.shutdown_timeout_s);
    let watchdog_abort = abort.clone();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    std::thread::spawn(move || {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if done2.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Past the deadline, retries give up so the process can exit (nothing uncommitted is lost).
        watchdog_abort.store(true, Ordering::Relaxed);
    });
    if outcome.is_ok() {
        match shared.flush_workers(FlushReason::Shutdown) {
            Ok(()) => commit_sync(&shared, &consumer, None),
            Err(e) => {
                outcome = Err(if abort.load(Ordering::Relaxed) {
                    RunError::ShutdownTimeout(timeout)
                } else {
                    RunError::Worker(e)
                });
            }
        }
    } else {
        // Commit what is truly delivered even when stopping on an error.
        commit_sync(&shared, &consumer, None);
    }
    done.store(true, Ordering::Relaxed);
    // Dropping the senders ends the workers.
    drop(consumer);
    drop(shared);
    for h in handles {
        if let Ok(Err(e)) = h.join()
            && outcome.is_ok()
        {
            outcome = Err(RunError::Worker(e));
        }
    }
    tracing::info!(stats = %stats.summary(), "stopped");
    outcome
}

/// The first worker failure reported, by a worker thread or a rebalance callback.
fn failure(flag: &Mutex<Option<String>>, shared: &Shared) -> Option<String> {
    flag.lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .or_else(|| {
            shared
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
}

/// An asynchronous commit of what was delivered, at most every `every`.
fn commit_if_due(
    shared: &Shared,
    consumer: &BaseConsumer<Ctx>,
    every: Duration,
    last: &mut Instant,
) {
    if last.elapsed() >= every {
        shared.commit(consumer, CommitMode::Async, None);
        *last = Instant::now();
    }
}

/// Wait up to [`ROOM_WAIT`] for worker `w` to have room, or until `stop`, moving held
/// records and committing meanwhile (the poll loop is not polling).
fn wait_for_room(
    shared: &Shared,
    consumer: &BaseConsumer<Ctx>,
    w: usize,
    stop: impl Fn() -> bool,
    commit_every: Duration,
    last_commit: &mut Instant,
) {
    let until = Instant::now() + ROOM_WAIT;
    // The worker can only make room from records it was sent.
    let _ = shared.send_chunks();
    while !shared.has_room(w) && Instant::now() < until && !stop() {
        std::thread::sleep(Duration::from_millis(1));
        release_held(shared, consumer);
        let _ = shared.send_chunks();
        commit_if_due(shared, consumer, commit_every, last_commit);
    }
}

/// A synchronous commit, retried a few times: used where there is no later chance (revoke,
/// shutdown). A commit that still fails only means those records are read again.
fn commit_sync(shared: &Shared, consumer: &BaseConsumer<Ctx>, only: Option<&HashSet<Tp>>) {
    for attempt in 0..5u32 {
        if shared.commit(consumer, CommitMode::Sync, only) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200 << attempt));
    }
    tracing::error!(
        "offsets could not be committed; the uncommitted records will be processed again after a restart"
    );
}

fn pause(consumer: &BaseConsumer<Ctx>, tp: &Tp) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.0, tp.1);
    if let Err(e) = consumer.pause(&tpl) {
        tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "cannot pause partition");
    } else {
        tracing::debug!(topic = %tp.0, partition = tp.1, "paused (worker queue full)");
    }
}

/// Move held records of paused partitions into worker queues as room frees up; resume a
/// partition once all its held records are queued.
fn release_held(shared: &Shared, consumer: &BaseConsumer<Ctx>) {
    let mut held = shared.held.lock().unwrap_or_else(|p| p.into_inner());
    if held.is_empty() {
        return;
    }
    let mut resumed = Vec::new();
    for (tp, q) in held.iter_mut() {
        let w = shared.worker_for(tp);
        while shared.has_room(w) {
            let Some(p) = q.pop_front() else { break };
            if shared.queue(w, p).is_err() {
                return;
            }
        }
        if q.is_empty() {
            resumed.push(tp.clone());
        }
    }
    // The released records go out at once (a worker that stopped is reported by the loop).
    let _ = shared.send_chunks();
    for tp in resumed {
        held.remove(&tp);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        if let Err(e) = consumer.resume(&tpl) {
            tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "cannot resume partition");
        } else {
            tracing::debug!(topic = %tp.0, partition = tp.1, "resumed (held records queued)");
        }
        shared.stats.paused.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(properties: &str) -> Config {
        let text = format!(
            "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\ngroup_id = \"g\"\n[kafka.properties]\n{properties}\n[[pipelines]]\ntopic = \"raw-logs\"\ntransform = \"raw-logs\"\n"
        );
        Config::parse(&text, std::path::Path::new("t.toml"), std::env::temp_dir()).unwrap()
    }

    #[test]
    fn consumer_defaults_bound_prefetch_and_its_backoff_and_the_file_wins() {
        let c = consumer_config(&config(""));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("16384"));
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("20"));
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
        let c = consumer_config(&config(
            "\"fetch.queue.backoff.ms\" = \"500\"\n\"auto.offset.reset\" = \"latest\"",
        ));
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("500"));
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
    }
}
