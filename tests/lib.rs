//! Shared helpers for the end-to-end tests: a real Kafka-compatible broker (tansu) started on
//! a free loopback port, a producer that records where each record landed, the processor
//! run as a separate process, and readers for what it wrote.

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vast_processor::model::Table;

/// Scratch space under the target directory (logs, the compiled-transform cache).
pub fn scratch() -> PathBuf {
    let p = root().join("target/e2e-scratch");
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The tansu binary: `$TANSU_BIN`, else `target/tools/tansu` (installed by `scripts/get-tansu`,
/// which `.ci/run` runs). A missing broker is a test failure, never a skip.
pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let p = root().join("target/tools/tansu");
    assert!(
        p.exists(),
        "the tansu broker is not installed at {}: run scripts/get-tansu (.ci/run does)",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker on 127.0.0.1, in memory, killed (by PID) when dropped.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    pub addr: String,
}

impl Broker {
    /// Start a broker and wait until it accepts connections.
    pub fn start() -> Broker {
        Broker::start_on(free_port())
    }

    /// Stop the broker (losing its in-memory log), wait a little, and start it again on the
    /// same address.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::thread::sleep(Duration::from_secs(3));
        let fresh = Broker::start_on(self.port);
        self.child = fresh.spawned();
    }

    fn spawned(mut self) -> Option<Child> {
        self.child.take()
    }

    fn start_on(port: u16) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(scratch().join(format!("tansu-{port}.log"))).unwrap();
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start tansu");
        let b = Broker {
            child: Some(child),
            port,
            addr: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&b.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not start on {}",
                b.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    /// Create a topic.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(tansu_bin())
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://{}", self.addr),
            ])
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot create topic {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where a produced record landed.
#[derive(Debug, Clone, PartialEq)]
pub struct Produced {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Where a record landed (partition, offset), or why it was not delivered.
type Delivery = Result<(i32, i64), String>;

#[derive(Default)]
struct Deliveries(Mutex<HashMap<usize, Delivery>>);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<usize>;
    fn delivery(&self, r: &DeliveryResult<'_>, idx: Box<usize>) {
        let v = match r {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.0.lock().unwrap().insert(*idx, v);
    }
}

/// Produce `records` (key, payload) to `topic`, spread over partitions by the client, and
/// return where each landed (from the delivery reports: tansu's high watermark is not
/// reliable after batched produces).
pub fn produce(addr: &str, topic: &str, records: &[(Option<Vec<u8>>, Vec<u8>)]) -> Vec<Produced> {
    let p: BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .create_with_context(Deliveries::default())
        .unwrap();
    for (i, (k, v)) in records.iter().enumerate() {
        let mut rec = BaseRecord::with_opaque_to(topic, Box::new(i)).payload(v);
        if let Some(k) = k {
            rec = rec.key(k);
        }
        let mut rec = rec;
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    p.poll(Duration::from_millis(10));
                    rec = back;
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let d = p.context().0.lock().unwrap();
    records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| {
            let (partition, offset) = d
                .get(&i)
                .unwrap_or_else(|| panic!("no delivery report for record {i}"))
                .clone()
                .unwrap_or_else(|e| panic!("record {i} not delivered: {e}"));
            Produced {
                topic: topic.into(),
                partition,
                offset,
                key: k.clone(),
                payload: v.clone(),
            }
        })
        .collect()
}

/// Generated records for `topic` (every `invalid_every`th malformed; 0 = none).
pub fn generated(
    topic: &str,
    n: usize,
    invalid_every: usize,
    seed: u64,
) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    use vast_processor::generate::{Rng, malformed, record};
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let r = if invalid_every > 0 && (i + 1) % invalid_every == 0 {
                malformed(topic, &mut rng)
            } else {
                record(topic, &mut rng, 1_760_457_600_000_000 + i as i64).unwrap()
            };
            (r.key, r.payload)
        })
        .collect()
}

/// A pipelines.toml for tests: the bundled transforms for `topics`, dead letters to
/// `<topic>-dlq`, fast group joins and short batch ages.
pub fn test_config(broker: &Broker, group: &str, topics: &[&str], extra: &str) -> String {
    let mut s = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{group}\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"fetch.wait.max.ms\" = \"100\"\n\"heartbeat.interval.ms\" = \"500\"\n\"auto.offset.reset\" = \"earliest\"\n[admin]\naddr = \"127.0.0.1:0\"\n[runtime]\nshutdown_timeout_s = 20\ncommit_interval_ms = 200\n{extra}\n",
        broker.addr
    );
    for t in topics {
        s.push_str(&format!(
            "[[pipelines]]\ntopic = \"{t}\"\ntransform = \"{t}\"\ndead_letter_topic = \"{t}-dlq\"\n[pipelines.batch]\nmax_age_ms = 300\nmax_rows = 5000\n"
        ));
    }
    s
}

/// The processor, run as its own process.
pub struct Processor {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Processor {
    /// Start `bin run --data-dir <data>` plus `args` in `dir`, where `config` is written to
    /// `pipelines.toml` (the default config path).
    pub fn start(bin: &str, dir: &Path, config: &str, data: &Path, args: &[&str]) -> Processor {
        Processor::start_with_env(bin, dir, config, data, args, &[])
    }

    /// Like `start`, with extra environment variables.
    pub fn start_with_env(
        bin: &str,
        dir: &Path,
        config: &str,
        data: &Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Processor {
        let cfg = dir.join("pipelines.toml");
        std::fs::write(&cfg, config).unwrap();
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let log = dir.join(format!("processor-{n}.log"));
        let f = std::fs::File::create(&log).unwrap();
        // From the config's directory with the default `--config pipelines.toml`, as a user
        // runs it: a relative config path once turned hot reload off without a word.
        let child = Command::new(bin)
            .current_dir(dir)
            .arg("run")
            .arg("--data-dir")
            .arg(data)
            .args(args)
            .env("VAST_PROCESSOR_CACHE_DIR", scratch().join("wasm-cache"))
            .env("RUST_LOG", "info,vast_processor=debug")
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .env_remove("KAFKA_TOPICS")
            .env_remove("VAST_ENDPOINT")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        Processor {
            child: Some(child),
            log,
        }
    }

    /// Whether the process is still running.
    pub fn still_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Send a signal (e.g. libc SIGTERM = 15, SIGKILL = 9) to the process.
    pub fn signal(&self, sig: i32) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait for the process to exit (panics after `timeout`, printing its log).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                self.child = None;
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "processor did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the consumer group gave this process partitions (tansu takes about half
    /// the session timeout to complete a join).
    pub fn wait_joined(&self, what: &str) {
        wait_until(Duration::from_secs(60), what, || {
            self.log_text().contains("partitions assigned")
        });
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Rows of `table` written under `data` (each row a JSON object).
pub fn rows(data: &Path, table: Table) -> Vec<Value> {
    vast_processor::cli::commands::table_rows(data, table).unwrap()
}

/// Wait until `f` returns true (panics after `timeout` with `what`).
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A dead-letter record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Letter {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

fn to_letter(m: &BorrowedMessage<'_>) -> Letter {
    let mut headers = HashMap::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            headers.insert(
                h.key.to_string(),
                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
            );
        }
    }
    Letter {
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().unwrap_or_default().to_vec(),
        headers,
    }
}

/// Read every partition of `topic` from the beginning: at least `want` records (until
/// `timeout`), then whatever else arrives until the topic has been quiet for a second.
pub fn read_topic(
    addr: &str,
    topic: &str,
    partitions: i32,
    want: usize,
    timeout: Duration,
) -> Vec<Letter> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", format!("reader-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    // Once `want` records are in, stop after this long without a new one.
    const QUIET: Duration = Duration::from_secs(1);
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push(to_letter(&m));
                quiet_since = Instant::now();
            }
            _ if out.len() >= want && quiet_since.elapsed() > QUIET => break,
            _ => {}
        }
    }
    out
}

/// A reader of every partition of a topic from the beginning that keeps its position, so a
/// test can wait for records to arrive without re-reading (and without a quiet-time guess).
pub struct TopicReader {
    consumer: BaseConsumer,
    pub letters: Vec<Letter>,
}

impl TopicReader {
    pub fn new(addr: &str, topic: &str, partitions: i32) -> TopicReader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", addr)
            .set("group.id", format!("reader-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        TopicReader {
            consumer,
            letters: Vec::new(),
        }
    }

    /// Read what arrives within `d`, adding it to `letters`.
    pub fn read_for(&mut self, d: Duration) -> &[Letter] {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) {
                self.letters.push(to_letter(&m));
            }
        }
        &self.letters
    }
}

/// The group's committed offsets for `topic`'s partitions that have one (a partition that
/// never received a record has no commit, and none is expected: compare with
/// [`end_offsets`], which lists only partitions that were produced to).
pub fn committed(addr: &str, group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// End offsets (next offset) per partition, from what was produced.
pub fn end_offsets(produced: &[Produced]) -> HashMap<i32, i64> {
    let mut m = HashMap::new();
    for p in produced {
        let e = m.entry(p.partition).or_insert(0);
        *e = (*e).max(p.offset + 1);
    }
    m
}

/// A plain HTTP/1.0 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// A plain HTTP/1.0 GET that reports a refused, reset or timed-out connection instead of
/// panicking (for servers under stress).
pub fn try_http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of one Prometheus series (exact name and labels as rendered), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The admin server's address, from the processor's "admin server listening" log line.
pub fn admin_addr(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("admin server listening"))?;
    let at = line.find("addr=")? + 5;
    Some(
        line[at..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

/// Records produced continuously to `topic` by a background thread until [`Load::finish`].
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    produced: std::sync::Arc<Mutex<Vec<Produced>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Produce `per_round` generated records (every `invalid_every`th malformed) every
    /// `pause`, with a new seed each round starting at `seed`.
    pub fn start(
        addr: &str,
        topic: &str,
        per_round: usize,
        invalid_every: usize,
        seed: u64,
        pause: Duration,
    ) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let produced = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (s, p, addr, topic) = (
            stop.clone(),
            produced.clone(),
            addr.to_string(),
            topic.to_string(),
        );
        let thread = std::thread::spawn(move || {
            let mut seed = seed;
            while !s.load(Ordering::Relaxed) {
                let got = produce(
                    &addr,
                    &topic,
                    &generated(&topic, per_round, invalid_every, seed),
                );
                p.lock().unwrap().extend(got);
                seed += 1;
                std::thread::sleep(pause);
            }
        });
        Load {
            stop,
            produced,
            thread: Some(thread),
        }
    }

    /// Stop producing and return everything produced.
    pub fn finish(mut self) -> Vec<Produced> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.produced.lock().unwrap().clone()
    }
}
