//! `pipelines.toml` as data: every serde type of the configuration lives here (and only
//! serde types: each runtime object is built from its config by the room that owns it, e.g.
//! `SinkConfig::build` in `crate::sink`). Unknown keys are errors (a typo must not silently
//! fall back to a default); the environment (`KAFKA_*`, `VAST_*`) overrides the file.

mod pipeline;
mod reload;
mod sink;

pub use pipeline::{BatchConfig, Limits, PipelineConfig, TableSpec};
pub use reload::ReloadConfig;
pub use sink::{MissingSetting, ParquetConfig, SinkConfig, VastSinkConfig};
/// Names of the transforms embedded in the binary (defined once, by the SDK that holds them).
pub use vast_transform_sdk::transforms::BUNDLED;

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Kafka client settings.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Where rows go.
    #[serde(default)]
    pub sink: SinkConfig,
    /// Workers, queues, shutdown.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The admin HTTP server.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Hot reload of transforms.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// One entry per input topic.
    #[serde(default)]
    pub pipelines: Vec<PipelineConfig>,
    /// Directory the file was read from: relative paths in it resolve against this.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[kafka]`: the consumer group and any librdkafka property.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// `group.id`.
    pub group_id: String,
    /// Any librdkafka property (`security.protocol`, `sasl.mechanism`, `ssl.ca.location`, ...),
    /// passed through unchanged to the consumer and the dead-letter producer.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            group_id: "vast-processor".into(),
            properties: BTreeMap::new(),
        }
    }
}

/// `[runtime]`: concurrency, queues and shutdown.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads (each owns its wasm stores); 0 means one per core.
    pub workers: usize,
    /// Messages queued per worker before the consumer pauses partitions.
    pub queue_messages: usize,
    /// Bytes queued per worker before the consumer pauses partitions.
    pub queue_bytes: usize,
    /// How long a graceful shutdown may take to flush and commit, in seconds.
    pub shutdown_timeout_s: u64,
    /// How often delivered offsets are committed, in milliseconds.
    pub commit_interval_ms: u64,
    /// Add the lineage columns (source_topic, source_partition, source_offset, transform_version).
    pub lineage: bool,
    /// Where deployment records live (accepted, rejected and rolled-back transform versions);
    /// relative to the config file. Default: `.state` under the data directory.
    pub state_dir: Option<PathBuf>,
    /// `exactly-once` (default): the sink stores each partition's next offset with its rows
    /// and an assigned partition starts after what landed; `at-least-once`: Kafka's
    /// committed offsets alone, so a crash can write the uncommitted tail twice.
    pub delivery: Delivery,
}

/// `runtime.delivery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    #[default]
    ExactlyOnce,
    AtLeastOnce,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: 0,
            queue_messages: 8192,
            queue_bytes: 64 * 1024 * 1024,
            shutdown_timeout_s: 30,
            commit_interval_ms: 1000,
            lineage: true,
            state_dir: None,
            delivery: Delivery::ExactlyOnce,
        }
    }
}

impl RuntimeConfig {
    /// The number of workers to start.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// `[admin]`: the HTTP server for /metrics, /healthz, /readyz and /transforms.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address; loopback by default. `--admin-addr` overrides it.
    pub addr: String,
    /// Bearer token the write endpoints (deploy, rollback, pin, unpin, unban) require; without
    /// one they are open on a loopback address only. `VAST_PROCESSOR_ADMIN_TOKEN` sets it.
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token never appears in logs.
        f.debug_struct("AdminConfig")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            addr: "127.0.0.1:9464".into(),
            token: None,
        }
    }
}

/// Where a transform's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformSource {
    /// Embedded in the binary.
    Bundled(&'static str),
    /// A `.wasm` file.
    File(PathBuf),
}

/// Configuration errors; each names the key or file and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("unknown transform `{0}`: use a bundled transform ({list}) or a path to a .wasm component", list = BUNDLED.join(", "))]
    UnknownTransform(String),
}

/// The absolute directory of a config file, against which its relative paths resolve. The
/// default `pipelines.toml` has an empty parent, which the reload watcher could not
/// canonicalize: live edits were ignored without a word.
pub fn config_dir(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new(""));
    if dir.as_os_str().is_empty() {
        std::env::current_dir().unwrap_or_default()
    } else {
        std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
    }
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path, config_dir(path))
    }

    /// Parse and validate config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path, base_dir: PathBuf) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: redact_excerpt(&e.to_string()),
        })?;
        config.base_dir = base_dir;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |i: usize, key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: format!("pipelines[{i}].{key}"),
            message,
        };
        let mut topics = HashSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            if p.topic.trim().is_empty() {
                return Err(invalid(i, "topic", "must not be empty".into()));
            }
            if !topics.insert(p.topic.as_str()) {
                return Err(invalid(
                    i,
                    "topic",
                    format!(
                        "topic `{}` is configured twice; keep one pipeline per topic",
                        p.topic
                    ),
                ));
            }
            resolve_transform(&p.transform, &self.base_dir)
                .map_err(|e| invalid(i, "transform", e.to_string()))?;
            // A wasm32 memory is at most 4 GiB; a call longer than ten minutes holds its
            // partition (and a rebalance) hostage.
            let l = &p.limits;
            in_range(l.memory_mib, 2, 4096, "MiB")
                .map_err(|m| invalid(i, "limits.memory_mib", m))?;
            in_range(l.deadline_ms, 1, 600_000, "ms")
                .map_err(|m| invalid(i, "limits.deadline_ms", m))?;
            in_range(l.max_rows_per_message, 1, 1_000_000, "rows")
                .map_err(|m| invalid(i, "limits.max_rows_per_message", m))?;
            in_range(l.max_row_bytes, 1024, pipeline::MAX_ROW_BYTES, "bytes")
                .map_err(|m| invalid(i, "limits.max_row_bytes", m))?;
            in_range(l.max_component_mib, 1, 1024, "MiB")
                .map_err(|m| invalid(i, "limits.max_component_mib", m))?;
            let b = &p.batch;
            in_range(b.max_rows, 1, 10_000_000, "rows")
                .map_err(|m| invalid(i, "batch.max_rows", m))?;
            in_range(b.max_bytes, 1, 1 << 30, "bytes")
                .map_err(|m| invalid(i, "batch.max_bytes", m))?;
            in_range(b.max_age_ms, 1, 3_600_000, "ms")
                .map_err(|m| invalid(i, "batch.max_age_ms", m))?;
        }
        // A dead-letter topic that a pipeline reads would feed its letters back in (two
        // pipelines reading each other's letters bounced 2 bad records into 162 in 20 s).
        for (i, p) in self.pipelines.iter().enumerate() {
            if let Some(dlq) = p.dead_letter_topic.as_deref()
                && topics.contains(dlq)
            {
                return Err(invalid(
                    i,
                    "dead_letter_topic",
                    format!(
                        "`{dlq}` is the input topic of a pipeline (dead letters would be consumed again); use a topic no pipeline reads"
                    ),
                ));
            }
        }
        let at = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let r = &self.runtime;
        in_range(r.workers, 0, 256, "workers (0: one per core)")
            .map_err(|m| at("runtime.workers", m))?;
        in_range(r.queue_messages, 64, 10_000_000, "messages")
            .map_err(|m| at("runtime.queue_messages", m))?;
        in_range(r.queue_bytes, 1 << 20, 16 << 30, "bytes")
            .map_err(|m| at("runtime.queue_bytes", m))?;
        in_range(r.shutdown_timeout_s, 1, 3600, "seconds")
            .map_err(|m| at("runtime.shutdown_timeout_s", m))?;
        in_range(r.commit_interval_ms, 10, 3_600_000, "ms")
            .map_err(|m| at("runtime.commit_interval_ms", m))?;
        let rl = &self.reload;
        fraction(rl.rollback_error_rate).map_err(|m| at("reload.rollback_error_rate", m))?;
        fraction(rl.shadow_max_new_failures)
            .map_err(|m| at("reload.shadow_max_new_failures", m))?;
        fraction(rl.shadow_max_changed).map_err(|m| at("reload.shadow_max_changed", m))?;
        in_range(rl.shadow_messages, 0, 100_000, "messages")
            .map_err(|m| at("reload.shadow_messages", m))?;
        in_range(rl.debounce_ms, 0, 60_000, "ms").map_err(|m| at("reload.debounce_ms", m))?;
        in_range(rl.check_budget_ms, 10, 600_000, "ms")
            .map_err(|m| at("reload.check_budget_ms", m))?;
        Ok(())
    }

    /// Apply the environment: the Python processor's variables (`KAFKA_BOOTSTRAP_SERVERS`,
    /// `KAFKA_GROUP_ID`, `KAFKA_TOPICS`, `VAST_*`) and `KAFKA_PROPERTY_<NAME>` for any
    /// librdkafka property (`KAFKA_PROPERTY_SESSION_TIMEOUT_MS` sets `session.timeout.ms`).
    /// `vars` is the environment (injected for tests).
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let env_err = |key: &str, message: String| ConfigError::Invalid {
            path: PathBuf::from("environment"),
            key: key.to_string(),
            message,
        };
        // VAST_* are applied after the loop: VAST_ENDPOINT selects the VAST sink, and the
        // others only fill in a VAST sink (they do not switch a Parquet one).
        let mut vast = VastSinkConfig::default();
        for (key, value) in vars {
            // An empty value means unset: compose files and .env templates pass `VAR=` for
            // everything they know about (an empty VAST_ENDPOINT keeps the Parquet sink).
            if value.trim().is_empty() {
                continue;
            }
            match key.as_str() {
                "KAFKA_BOOTSTRAP_SERVERS" => self.kafka.bootstrap_servers = value,
                "KAFKA_GROUP_ID" => self.kafka.group_id = value,
                "KAFKA_TOPICS" => {
                    let wanted: Vec<&str> = value
                        .split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .collect();
                    for t in &wanted {
                        if self.pipeline_for_topic(t).is_none() {
                            return Err(env_err(
                                "KAFKA_TOPICS",
                                format!(
                                    "topic `{t}` has no pipeline in the config (configured: {}); add a [[pipelines]] entry for it",
                                    self.pipelines
                                        .iter()
                                        .map(|p| p.topic.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            ));
                        }
                    }
                    self.pipelines
                        .retain(|p| wanted.contains(&p.topic.as_str()));
                }
                "VAST_PROCESSOR_ADMIN_TOKEN" => self.admin.token = Some(value),
                "VAST_ENDPOINT" => vast.endpoint = Some(value),
                "VAST_ACCESS_KEY" => vast.access_key = Some(value),
                "VAST_SECRET_KEY" => vast.secret_key = Some(value),
                "VAST_BUCKET" => vast.bucket = Some(value),
                "VAST_SCHEMA" => vast.schema = Some(value),
                _ => {
                    if let Some(name) = key.strip_prefix("KAFKA_PROPERTY_") {
                        if name.is_empty() {
                            return Err(env_err(&key, "names no property".into()));
                        }
                        let prop = name.to_ascii_lowercase().replace('_', ".");
                        self.kafka.properties.insert(prop, value);
                    }
                }
            }
        }
        if vast.endpoint.is_some() {
            self.sink.vast_mut();
        }
        if let SinkConfig::Vast(v) = &mut self.sink {
            let VastSinkConfig {
                endpoint,
                access_key,
                secret_key,
                bucket,
                schema,
                ..
            } = vast;
            for (slot, value) in [
                (&mut v.endpoint, endpoint),
                (&mut v.access_key, access_key),
                (&mut v.secret_key, secret_key),
                (&mut v.bucket, bucket),
                (&mut v.schema, schema),
            ] {
                if value.is_some() {
                    *slot = value;
                }
            }
        }
        Ok(())
    }

    /// Check the settings that span pipelines (call after `apply_env`).
    pub fn validate_runtime(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            path: PathBuf::from("config"),
            key: key.to_string(),
            message: message.to_string(),
        };
        if self.pipelines.is_empty() {
            return Err(invalid(
                "pipelines",
                "no pipeline configured: add a [[pipelines]] entry",
            ));
        }
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(invalid(
                "kafka.bootstrap_servers",
                "must not be empty (or set KAFKA_BOOTSTRAP_SERVERS)",
            ));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(invalid(
                "kafka.group_id",
                "must not be empty (or set KAFKA_GROUP_ID)",
            ));
        }
        for reserved in ["group.id", "bootstrap.servers", "enable.auto.commit"] {
            if self.kafka.properties.contains_key(reserved) {
                return Err(invalid(
                    &format!("kafka.properties.{reserved}"),
                    "is managed by vast-processor: use kafka.bootstrap_servers / kafka.group_id (auto-commit is always off)",
                ));
            }
        }
        Ok(())
    }

    /// The pipeline reading `topic`.
    pub fn pipeline_for_topic(&self, topic: &str) -> Option<&PipelineConfig> {
        self.pipelines.iter().find(|p| p.topic == topic)
    }
}

/// Words in a key that mark its value as a secret (`secret_key`, `sasl.password`, ...).
const SECRET_WORDS: [&str; 7] = [
    "secret",
    "password",
    "passwd",
    "token",
    "key",
    "credential",
    "sasl",
];

/// A TOML error's excerpt of the file with the values of secret-looking keys replaced: an
/// error on the secret's own line (an unterminated string) used to echo it. A line is
/// redacted when its key looks secret, or when it holds no key (a continuation of a value).
fn redact_excerpt(message: &str) -> String {
    message
        .lines()
        .map(|line| {
            // Excerpt lines look like `12 | key = "value"`.
            let Some((gutter, code)) = line.split_once(" | ") else {
                return line.to_string();
            };
            if !gutter.trim().chars().all(|c| c.is_ascii_digit()) || gutter.trim().is_empty() {
                return line.to_string();
            }
            let redacted = match code.split_once('=') {
                Some((key, _)) => {
                    let key = key.to_ascii_lowercase();
                    if SECRET_WORDS.iter().any(|w| key.contains(w)) {
                        format!("{}= <redacted>", &code[..key.len()])
                    } else {
                        code.to_string()
                    }
                }
                None if code.trim_start().starts_with('[') || code.trim().is_empty() => {
                    code.to_string()
                }
                None => "<redacted>".to_string(),
            };
            format!("{gutter} | {redacted}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `value` within `lo..=hi`, or the message that says the allowed range.
fn in_range<T: PartialOrd + std::fmt::Display>(
    value: T,
    lo: T,
    hi: T,
    unit: &str,
) -> Result<(), String> {
    if value < lo || value > hi {
        return Err(format!(
            "{value} is out of range: allowed {lo} to {hi} {unit}"
        ));
    }
    Ok(())
}

/// A fraction: a finite number from 0 to 1.
fn fraction(value: f64) -> Result<(), String> {
    if !(0.0..=1.0).contains(&value) {
        return Err(format!(
            "{value} is out of range: allowed 0 to 1 (a fraction)"
        ));
    }
    Ok(())
}

/// Interpret a `transform` value: a path when it ends in `.wasm` or contains a path
/// separator (resolved against `base`), else a bundled name.
pub fn resolve_transform(spec: &str, base: &Path) -> Result<TransformSource, ConfigError> {
    if spec.ends_with(".wasm") || spec.contains('/') || spec.contains(std::path::MAIN_SEPARATOR) {
        return Ok(TransformSource::File(base.join(spec)));
    }
    BUNDLED
        .iter()
        .find(|b| **b == spec)
        .map(|b| TransformSource::Bundled(b))
        .ok_or_else(|| ConfigError::UnknownTransform(spec.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("pipelines.toml"), PathBuf::from("/etc/vp"))
    }

    #[test]
    fn the_shipped_file_is_valid() {
        let text = include_str!("../../../pipelines.toml");
        let c = parse(text).unwrap();
        for b in BUNDLED {
            assert_eq!(
                resolve_transform(&c.pipeline_for_topic(b).unwrap().transform, &c.base_dir)
                    .unwrap(),
                TransformSource::Bundled(b)
            );
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err =
            parse("[[pipelines]]\ntopic='a'\ntransform='raw-logs'\ntransfrom='x'\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `transfrom`"),
            "{err}"
        );
        let err = parse(
            "[[pipelines]]\ntopic='a'\ntransform='raw-logs'\n[pipelines.limits]\nmemory='1'\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `memory`"), "{err}");
    }

    /// Settings that broke a run (found by an adversarial run) are refused by `check` and
    /// `run` with the key and the allowed range.
    #[test]
    fn settings_that_break_a_run_are_refused_with_their_range() {
        let pipe = "[[pipelines]]\ntopic='a'\ntransform='raw-logs'\n";
        for (text, key) in [
            (
                "[runtime]\nshutdown_timeout_s = 0\n",
                "runtime.shutdown_timeout_s",
            ),
            ("[runtime]\nqueue_messages = 1\n", "runtime.queue_messages"),
            ("[runtime]\nworkers = 2000\n", "runtime.workers"),
            ("[runtime]\nqueue_bytes = 10\n", "runtime.queue_bytes"),
            (
                "[runtime]\ncommit_interval_ms = 0\n",
                "runtime.commit_interval_ms",
            ),
            (
                "[reload]\nrollback_error_rate = nan\n",
                "reload.rollback_error_rate",
            ),
            (
                "[reload]\nrollback_error_rate = 1.5\n",
                "reload.rollback_error_rate",
            ),
            (
                "[reload]\nshadow_max_new_failures = -0.1\n",
                "reload.shadow_max_new_failures",
            ),
            (
                "[reload]\nshadow_max_changed = 2\n",
                "reload.shadow_max_changed",
            ),
            (
                "[reload]\nshadow_messages = 100000000\n",
                "reload.shadow_messages",
            ),
            (
                "[pipelines.limits]\nmax_rows_per_message = 0\n",
                "pipelines[0].limits.max_rows_per_message",
            ),
            (
                "[pipelines.limits]\nmemory_mib = 18446744073709551615\n",
                "pipelines[0].limits.memory_mib",
            ),
            (
                "[pipelines.limits]\ndeadline_ms = 18446744073709551615\n",
                "pipelines[0].limits.deadline_ms",
            ),
            (
                "[pipelines.batch]\nmax_age_ms = 0\n",
                "pipelines[0].batch.max_age_ms",
            ),
        ] {
            // Table headers after the pipeline entry apply to it (or are top-level sections).
            let text = if text.starts_with("[pipelines.") {
                format!("{pipe}{text}")
            } else {
                format!("{text}{pipe}")
            };
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("allowed"),
                "{text:?}: {err}"
            );
        }
        // Two pipelines that dead-letter into each other's input.
        let err = parse(
            "[[pipelines]]\ntopic='a'\ntransform='raw-logs'\ndead_letter_topic='b'\n\
             [[pipelines]]\ntopic='b'\ntransform='raw-logs'\ndead_letter_topic='a'\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("dead_letter_topic") && err.contains("`b` is the input topic"),
            "{err}"
        );
        // The shipped file and the edges of each range are fine.
        parse(&format!(
            "[runtime]\nworkers = 256\nqueue_messages = 64\nshutdown_timeout_s = 1\n\
             [reload]\nrollback_error_rate = 1.0\n{pipe}[pipelines.limits]\nmemory_mib = 4096\n"
        ))
        .unwrap();
    }

    /// A TOML error on a secret's own line echoed the secret (`secret_kee = "<secret>`, an
    /// unterminated string); the excerpt keeps the line but not the value.
    #[test]
    fn config_errors_do_not_echo_secrets() {
        for text in [
            "[sink]\nkind = 'vast'\nsecret_kee = \"hunter2-value\n",
            "[sink]\nkind = 'vast'\nsecret_key = \"hunter2-value\nbucket = 'b'\n",
            "[kafka.properties]\n\"sasl.password\" = \"hunter2-value\n",
            "[sink]\nkind = 'vast'\nsecret_key = 'hunter2-value'\nendpoint = \n",
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{text:?}: {err}");
            assert!(err.contains("invalid config file"), "{err}");
        }
        // Other lines stay readable.
        let err = parse("[kafka]\nbootstrap_servers = \"k:9092\ngroup_id = 'g'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bootstrap_servers"), "{err}");
    }

    #[test]
    fn the_sink_is_a_tagged_table_whose_keys_are_checked_per_kind() {
        assert_eq!(parse("").unwrap().sink, SinkConfig::default());
        let c = parse("[sink]\ndata_dir = 'out'\n").unwrap();
        assert_eq!(c.sink.kind(), "parquet");
        assert_eq!(c.sink.data_dir(), Path::new("out"));
        let c = parse("[sink]\nkind = 'vast'\nbucket = 'b'\nschema = 's'\n").unwrap();
        let SinkConfig::Vast(v) = &c.sink else {
            panic!("{:?}", c.sink)
        };
        assert_eq!((v.bucket.as_deref(), v.schema()), (Some("b"), "s"));
        // A VAST key under the Parquet sink, a typo, an unknown kind: each names the key.
        for (text, key) in [
            ("[sink]\nbucket = 'b'\n", "unknown field `bucket`"),
            (
                "[sink]\nkind = 'vast'\nendpoit = 'x'\n",
                "unknown field `endpoit`",
            ),
            ("[sink]\nkind = 's3'\n", "sink.kind: unknown sink `s3`"),
            ("[sink]\nkind = 1\n", "sink.kind: expected a string"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
        // Settings the environment may supply are checked when the sink is built.
        let need = VastSinkConfig::need(&None, "bucket", "VAST_BUCKET").unwrap_err();
        assert_eq!(
            need.to_string(),
            "the VAST sink needs sink.bucket (or VAST_BUCKET)"
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = parse("[[pipelines]]\ntopic='a'\ntransform='nope'\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pipelines[0].transform") && err.contains("raw-logs"),
            "{err}"
        );
        let err = parse("[[pipelines]]\ntopic='a'\ntransform='raw-logs'\n[[pipelines]]\ntopic='a'\ntransform='raw-logs'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pipelines[1].topic"), "{err}");
    }

    #[test]
    fn empty_environment_values_are_unset() {
        let mut c = parse(include_str!("../../../pipelines.toml")).unwrap();
        let env = [
            ("VAST_ENDPOINT", ""),
            ("VAST_SECRET_KEY", " "),
            ("KAFKA_TOPICS", ""),
            ("KAFKA_BOOTSTRAP_SERVERS", ""),
            ("KAFKA_PROPERTY_SASL_USERNAME", ""),
        ];
        c.apply_env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .unwrap();
        assert_eq!(c.sink.kind(), "parquet");
        assert_eq!(c.pipelines.len(), 4);
        assert_eq!(c.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert!(!c.kafka.properties.contains_key("sasl.username"));
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c = parse(include_str!("../../../pipelines.toml")).unwrap();
        let env = [
            ("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092"),
            ("KAFKA_GROUP_ID", "g2"),
            ("KAFKA_TOPICS", "raw-logs, otel-metrics"),
            ("KAFKA_PROPERTY_SESSION_TIMEOUT_MS", "6000"),
            ("KAFKA_PROPERTY_SECURITY_PROTOCOL", "SASL_SSL"),
            ("VAST_ENDPOINT", "http://vast:9090"),
            ("VAST_BUCKET", "b"),
            ("UNRELATED", "x"),
        ];
        c.apply_env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "k1:9092,k2:9092");
        assert_eq!(c.kafka.group_id, "g2");
        assert_eq!(
            c.kafka
                .properties
                .get("session.timeout.ms")
                .map(String::as_str),
            Some("6000")
        );
        assert_eq!(
            c.kafka
                .properties
                .get("security.protocol")
                .map(String::as_str),
            Some("SASL_SSL")
        );
        let topics: Vec<_> = c.pipelines.iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(topics, ["raw-logs", "otel-metrics"]);
        let SinkConfig::Vast(v) = &c.sink else {
            panic!("VAST_ENDPOINT selects the VAST sink")
        };
        assert_eq!(v.bucket.as_deref(), Some("b"));
        let err = c
            .apply_env([("KAFKA_TOPICS".to_string(), "nope".to_string())])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("KAFKA_TOPICS") && err.contains("`nope`"),
            "{err}"
        );
    }

    #[test]
    fn runtime_validation_names_the_key() {
        let mut c = parse(include_str!("../../../pipelines.toml")).unwrap();
        c.kafka.properties.insert("group.id".into(), "x".into());
        let err = c.validate_runtime().unwrap_err().to_string();
        assert!(err.contains("kafka.properties.group.id"), "{err}");
        let err = parse("[[pipelines]]\ntopic='a'\ntransform='raw-logs'\ndead_letter_topic='a'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pipelines[0].dead_letter_topic"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]
        /// Fuzzing the config parser: any text gives a config or an error, never a panic.
        #[test]
        fn the_parser_never_panics(text in "(\\[\\[?[a-z.]{0,12}\\]\\]?|[a-z_]{1,12} = (\"[a-z0-9./-]{0,10}\"|[0-9]{1,6}|true|\\{ [a-z]+ = \"x\" \\})|\n|\\PC){0,30}") {
            let _ = parse(&text);
        }
    }

    #[test]
    fn paths_resolve_against_the_config_dir() {
        assert_eq!(
            resolve_transform("mine.wasm", Path::new("/etc/vp")).unwrap(),
            TransformSource::File(PathBuf::from("/etc/vp/mine.wasm"))
        );
        assert_eq!(
            resolve_transform("/abs/x.wasm", Path::new("/etc/vp")).unwrap(),
            TransformSource::File(PathBuf::from("/abs/x.wasm"))
        );
    }
}
