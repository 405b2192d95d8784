//! The Kafka source: one consumer thread polls the group and pushes each partition's records,
//! in order, into the [`Runtime`], to one worker (the least loaded when the partition is
//! first seen). When a worker's queue is full the partition is paused instead of buffering
//! more. The Kafka [`Committer`] commits only the delivered prefix the workers report; on
//! revoke and on shutdown the workers flush first and the commit is synchronous.

use crate::config::Config;
use crate::model::{Header, Message};
use crate::pipeline::{
    Committer, DeliveredOffsets, FlushReason, PipelineSpec, RunStats, Runtime, RuntimeError,
    RuntimeOptions,
};
use crate::sink::Sink;
use crate::sink::deadletter::DeadLetterWriter;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
};
use rdkafka::message::{Headers, Message as _};
use rdkafka::topic_partition_list::TopicPartitionListElem;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why the run stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("kafka: {what}: {source}")]
    Kafka {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
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

/// The poll loop's checks (shutdown, failures, held records, commits, the age of unsent
/// chunks) run after an empty poll or every this many records, not per record: per record
/// they were a fifth of the consumer thread's time.
const HOUSEKEEPING_EVERY: u32 = 64;

/// Longest a queued record waits in an unsent chunk while records keep arriving.
const CHUNK_AGE: Duration = Duration::from_millis(5);

struct Pending {
    pipeline: usize,
    msg: Message,
}

/// State shared between the poll loop and the rebalance callbacks (which run inside poll).
struct Shared {
    runtime: Arc<Runtime>,
    stats: Arc<RunStats>,
    /// Records held back for paused partitions, in order.
    held: Mutex<HashMap<Tp, VecDeque<Pending>>>,
    assigned: Mutex<HashSet<Tp>>,
    /// Partition → worker, see [`Shared::worker_for`].
    routes: Mutex<HashMap<Tp, usize>>,
    committed: Mutex<HashMap<Tp, i64>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// With exactly-once delivery: the sink that stores offsets with the rows, and the group.
    landed_in: Option<(Arc<dyn Sink>, String)>,
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
        let mut load = vec![0usize; self.runtime.workers()];
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
    /// True when `revoked` is every partition this member has (an eager rebalance).
    fn all_revoked(&self, revoked: &HashSet<Tp>) -> bool {
        self.assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .all(|tp| revoked.contains(tp))
    }

    fn assigned_count(&self) -> usize {
        self.assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn has_room(&self, w: usize) -> bool {
        self.runtime.has_room(w)
    }

    fn queue(&self, w: usize, p: Pending) -> Result<(), RuntimeError> {
        self.runtime.queue(w, p.pipeline, p.msg)
    }

    /// Commit delivered offsets of `only` (or of every assigned partition) that moved.
    /// Returns false when the commit failed (it is retried on the next call).
    fn commit(
        &self,
        consumer: &BaseConsumer<Ctx>,
        mode: CommitMode,
        only: Option<&HashSet<Tp>>,
    ) -> bool {
        let delivered = self.runtime.delivered().snapshot();
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
                    let p = positions.entry(tp.clone()).or_default();
                    if p.committed != next {
                        p.committed = next;
                        p.progressed_ms = (crate::model::now_micros() / 1000) as u64;
                    }
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
    /// librdkafka's errors: every broker down makes the processor not ready.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.shared
                .metrics
                .broker_up
                .store(false, Ordering::Relaxed);
        }
        tracing::warn!(error = %error, reason, "kafka client error");
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        // Any broker (not the bootstrap placeholder) up: connected again.
        let mut known = statistics
            .brokers
            .values()
            .filter(|b| b.nodeid >= 0)
            .peekable();
        if known.peek().is_some() {
            let up = known.any(|b| b.state == "UP");
            self.shared.metrics.broker_up.store(up, Ordering::Relaxed);
        }
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
                if e.progressed_ms == 0 {
                    // First sight counts as progress: a partition is stuck only after a
                    // while without a commit.
                    e.progressed_ms = (crate::model::now_micros() / 1000) as u64;
                }
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

impl Ctx {
    /// Exactly once: start each assigned partition at the larger of Kafka's committed offset
    /// and the next offset the sink stored with its rows (rows that landed after the last
    /// Kafka commit are not read again). Sets the offsets of `tpl` before it is assigned.
    fn start_past_landed(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let Some((sink, group)) = &self.shared.landed_in else {
            return;
        };
        let asked: Vec<Tp> = tps(tpl).into_iter().collect();
        if asked.is_empty() {
            return;
        }
        let mut landed = None;
        for attempt in 0..3u32 {
            match sink.landed(group, &asked) {
                Ok(l) => {
                    landed = Some(l);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "cannot read the offsets stored with the rows; retrying");
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                }
            }
        }
        let Some(landed) = landed else {
            // Kafka's committed offsets then; the sink still leaves out what it holds.
            tracing::error!(
                partitions = asked.len(),
                "cannot read the offsets stored with the rows; starting at Kafka's committed offsets"
            );
            return;
        };
        if landed.is_empty() {
            return;
        }
        let committed = match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(c) => c,
            Err(e) => {
                // Without Kafka's positions the stored ones are the best start: a later
                // flush's rows never re-land (the sink leaves out what it holds).
                tracing::warn!(error = %e, "cannot read committed offsets; starting at the offsets stored with the rows");
                TopicPartitionList::new()
            }
        };
        // What is stored past the partition's end belongs to records that are gone (the
        // topic was recreated or truncated): Kafka treats such a position as out of range,
        // and so does this; the stored offset is lowered to the log's start.
        let mut stale = Vec::new();
        let mut landed = landed;
        for (tp, next) in landed.iter_mut() {
            match consumer.fetch_watermarks(&tp.0, tp.1, Duration::from_secs(10)) {
                Ok((low, high)) if *next > high => {
                    tracing::warn!(topic = %tp.0, partition = tp.1, stored = *next, log_end = high, "the offset stored with the rows is past the end of the partition (recreated or truncated topic): starting from Kafka's position instead");
                    stale.push((tp.clone(), low.max(0)));
                    *next = i64::MIN;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(topic = %tp.0, partition = tp.1, error = %e, "cannot read the partition's end offset");
                }
            }
        }
        landed.retain(|_, n| *n != i64::MIN);
        if !stale.is_empty() {
            let mut result = sink.reset_offsets(group, &stale);
            for attempt in 0..3u32 {
                let Err(e) = &result else { break };
                tracing::warn!(error = %e, attempt, "cannot lower the stale offsets stored with the rows; retrying");
                std::thread::sleep(Duration::from_millis(500 << attempt));
                result = sink.reset_offsets(group, &stale);
            }
            if let Err(e) = result {
                // Stop rather than drop the new records' rows as landed.
                self.shared
                    .runtime
                    .fail(RuntimeError::StaleOffsets(Arc::new(e)));
            }
        }
        let mut ahead = TopicPartitionList::new();
        for (tp, next) in landed {
            let kafka = committed
                .find_partition(&tp.0, tp.1)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            if kafka.is_none_or(|k| next > k) {
                if let Err(e) = tpl.set_partition_offset(&tp.0, tp.1, Offset::Offset(next)) {
                    tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "cannot set the start offset");
                    continue;
                }
                let _ = ahead.add_partition_offset(&tp.0, tp.1, Offset::Offset(next));
                tracing::info!(topic = %tp.0, partition = tp.1, offset = next, kafka_committed = ?kafka, "starting after the rows already landed in the sink");
            }
        }
        // Kafka's committed offsets catch up (lag and tools stay true).
        if ahead.count() > 0
            && let Err(e) = consumer.commit(&ahead, CommitMode::Async)
        {
            tracing::debug!(error = %e, "commit of the landed offsets failed; the next commit moves them");
        }
    }
}

impl ConsumerContext for Ctx {
    /// The default rebalance (rdkafka's), with the start offsets of an assignment set first.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let assign = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        if assign {
            self.start_past_landed(consumer, tpl);
        }
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
            _ => Rebalance::Error(rdkafka::error::KafkaError::Rebalance(err.into())),
        };
        self.pre_rebalance(consumer, &rebalance);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let done = match (assign, cooperative) {
            (true, true) => consumer.incremental_assign(tpl),
            (true, false) => consumer.assign(tpl),
            (false, true) => consumer.incremental_unassign(tpl),
            (false, false) => consumer.unassign(),
        };
        if let Err(e) = done {
            tracing::error!(error = %e, assign, "cannot apply the rebalance");
        }
        self.post_rebalance(consumer, &rebalance);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let s = &self.shared;
        match rebalance {
            Rebalance::Revoke(tpl) => {
                // Not a member until the next assignment.
                s.metrics.joined.store(false, Ordering::Relaxed);
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
                match s.runtime.flush(FlushReason::Revoke) {
                    Ok(()) => {}
                    // The sink is failing and every partition goes (an eager rebalance):
                    // hold on to nothing, so the group moves on and this member rejoins.
                    // Exiting instead made every rebalance during an outage a restart.
                    Err(e @ RuntimeError::FlushTimeout(_)) if s.all_revoked(&revoked) => {
                        tracing::warn!(error = %e, partitions = revoked.len(), "flush on revoke did not finish (is the sink failing?); dropped what was held, the next owner reads it again from the committed offsets");
                        if let Err(e) = s.runtime.discard() {
                            s.runtime.fail(e);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "flush on revoke failed; uncommitted records will be re-read by the next owner");
                        s.runtime.fail(e);
                    }
                }
                commit_sync(s, consumer, Some(&revoked));
                let list: Vec<Tp> = revoked.iter().cloned().collect();
                s.runtime.delivered().remove(&list);
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

/// The group's committed offsets of `partitions` (for `check`): a partition without a commit
/// is absent.
pub fn committed_offsets(
    config: &Config,
    partitions: &[(String, i32)],
    timeout: Duration,
) -> Result<HashMap<(String, i32), i64>, rdkafka::error::KafkaError> {
    let consumer: BaseConsumer = consumer_config(config).create()?;
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition(t, *p);
    }
    let got = consumer.committed_offsets(tpl, timeout)?;
    Ok(got
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect())
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
        // Per-partition lag and broker states for /metrics and /readyz.
        ("statistics.interval.ms", "1000"),
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
    // Exactly once needs a sink that stores offsets with its rows.
    let exactly_once = config.runtime.delivery == crate::config::Delivery::ExactlyOnce;
    let group: Option<Arc<str>> =
        (exactly_once && sink.stores_offsets()).then(|| config.kafka.group_id.as_str().into());
    match (&group, exactly_once) {
        (Some(_), _) => tracing::info!(
            sink = sink.name(),
            "delivery: exactly once (offsets stored with the rows)"
        ),
        (None, true) => tracing::info!(
            sink = sink.name(),
            "delivery: at least once (this sink does not store offsets with its rows yet)"
        ),
        (None, false) => tracing::info!(
            sink = sink.name(),
            "delivery: at least once (runtime.delivery)"
        ),
    }
    let sink_for_offsets = sink.clone();
    let mut runtime_opts = RuntimeOptions::from_config(&config.runtime);
    runtime_opts.group = group.clone();
    let (runtime, threads) = Runtime::start(
        specs.clone(),
        &runtime_opts,
        sink,
        stats.clone(),
        opts.metrics.clone(),
        || DeadLetterWriter::new(Some(config.kafka.clone()), opts.data_dir.clone()),
    )?;
    let shared = Arc::new(Shared {
        runtime: runtime.clone(),
        stats: stats.clone(),
        held: Mutex::new(HashMap::new()),
        assigned: Mutex::new(HashSet::new()),
        routes: Mutex::new(HashMap::new()),
        committed: Mutex::new(HashMap::new()),
        metrics: opts.metrics.clone(),
        landed_in: group.map(|g| (sink_for_offsets, g.to_string())),
    });
    let consumer: BaseConsumer<Ctx> = consumer_config(config)
        .create_with_context(Ctx {
            shared: shared.clone(),
        })
        .map_err(|source| RunError::Kafka {
            what: "cannot create the consumer".into(),
            source,
        })?;
    let topics: Vec<&str> = specs.iter().map(|s| s.topic.as_str()).collect();
    consumer
        .subscribe(&topics)
        .map_err(|source| RunError::Kafka {
            what: format!("cannot subscribe to {topics:?}"),
            source,
        })?;
    tracing::info!(topics = ?topics, group = %config.kafka.group_id, workers = runtime.workers(), "consuming");

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
            if let Some(e) = runtime.failure() {
                outcome = Err(e);
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
                if let Err(e) = runtime.send_chunks() {
                    outcome = Err(e);
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
                if let Err(e) = runtime.send_chunks() {
                    outcome = Err(e);
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
        let p = Pending {
            pipeline,
            msg: to_message(&m),
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
                let stop = || opts.shutdown.load(Ordering::Relaxed) || runtime.failure().is_some();
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
            outcome = Err(e);
            break;
        }
        unsent_since.get_or_insert_with(Instant::now);
    }

    // Graceful stop: flush what the workers hold, commit synchronously, then let them exit.
    let mut committer = KafkaCommitter {
        shared: &shared,
        consumer: &consumer,
    };
    let stopped = runtime.stop(&mut committer, outcome.is_ok());
    if outcome.is_ok() {
        outcome = stopped;
    }
    // Dropping the senders ends the workers.
    drop(consumer);
    drop(shared);
    drop(runtime);
    let joined = threads.join();
    if outcome.is_ok() {
        outcome = joined;
    }
    tracing::info!(stats = %stats.summary(), "stopped");
    Ok(outcome?)
}

/// Kafka's [`Committer`]: a synchronous commit of every assigned partition's delivered
/// position (retried a few times).
struct KafkaCommitter<'a> {
    shared: &'a Shared,
    consumer: &'a BaseConsumer<Ctx>,
}

impl Committer for KafkaCommitter<'_> {
    fn commit_final(&mut self, _: &DeliveredOffsets) {
        // `Shared::commit` reads the runtime's delivered offsets itself.
        commit_sync(self.shared, self.consumer, None);
    }
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
    let _ = shared.runtime.send_chunks();
    while !shared.has_room(w) && Instant::now() < until && !stop() {
        std::thread::sleep(Duration::from_millis(1));
        release_held(shared, consumer);
        let _ = shared.runtime.send_chunks();
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
    let _ = shared.runtime.send_chunks();
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
