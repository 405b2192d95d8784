//! The VAST Database sink: one transaction per flush covering both tables, so rows become
//! visible only at commit. Tables are created (with the Python table creator's sorting keys
//! when the server supports them) or completed (missing lineage columns added) on first use.
//! Failures roll the transaction back; retriable ones are retried by the worker (which keeps
//! offsets uncommitted and, through its bounded queue, pauses consumption), fatal ones
//! (credentials, schema mismatch, missing bucket) stop the pipeline.
//!
//! Exactly once: the transaction that inserts a flush's rows also writes the next offset of
//! each partition it covers into the offsets table ([`OFFSETS_TABLE`], one row per consumer
//! group, topic and partition), read with `$row_id` and updated by it in that transaction.
//! What landed already (read in the same transaction) is left out, so a retry after a lost
//! transaction, a 409 or an uncertain commit never writes a row twice.

pub mod client;
pub mod query;
pub mod sigv4;
pub mod wire;

use super::{Landing, Sink, SinkError, SinkFailure};
use crate::batch::schema;
use crate::config::VastSinkConfig;
use crate::model::Table;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use client::{TxId, VastClient, VastConfig, VastError, conform};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Sorting keys of the Python table creator, as column indices of the contract schemas:
/// events (entity_id, timestamp, event_type), metrics (metric_name, entity_id, timestamp).
pub fn sorting_key(table: Table) -> &'static [usize] {
    match table {
        Table::Events => &[1, 0, 2],
        Table::Metrics => &[0, 1, 2],
    }
}

/// What `check` reports about one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub table: &'static str,
    pub exists: bool,
    /// Columns the processor writes that the table lacks (they would be added).
    pub missing_columns: Vec<String>,
    /// Columns whose type differs (writes would fail).
    pub mismatched_columns: Vec<String>,
}

/// The VAST sink.
pub struct VastSink {
    client: VastClient,
    bucket: String,
    schema: String,
    lineage: bool,
    /// Table layouts as listed by the server, once a transaction that ensured them committed.
    ready: Mutex<HashMap<Table, Schema>>,
    /// The offsets table's layout, likewise.
    offsets_ready: Mutex<Option<Schema>>,
    /// Who writes (host and pid), into the offsets rows.
    writer: String,
}

/// `host/pid`: who wrote an offsets row.
fn writer_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    format!("{}/{}", host.trim(), std::process::id())
}

/// The table of offsets stored with the rows (in the sink's schema).
pub const OFFSETS_TABLE: &str = "vast_processor_offsets";

/// Its columns: one row per consumer group, topic and partition.
pub fn offsets_schema() -> Schema {
    Schema::new(vec![
        Field::new("consumer_group", DataType::Utf8, true),
        Field::new("topic", DataType::Utf8, true),
        Field::new("partition", DataType::Int32, true),
        Field::new("next_offset", DataType::Int64, true),
        Field::new("version", DataType::Int64, true),
        Field::new("writer", DataType::Utf8, true),
        Field::new(
            "written_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ])
}

/// One partition's row in the offsets table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredOffset {
    pub row_id: u64,
    pub next: i64,
    pub version: i64,
}

fn fatal(e: VastError) -> SinkError {
    let hint = if e.is_auth() {
        " (check VAST_ACCESS_KEY / VAST_SECRET_KEY)"
    } else {
        ""
    };
    SinkError::stop("vast", SinkFailure::Vast { source: e, hint })
}

fn classify(e: VastError) -> SinkError {
    // A table that vanished is re-created on the next attempt.
    if e.is_retriable() || matches!(e, VastError::Http { status: 404, .. }) {
        SinkError::retry(
            "vast",
            SinkFailure::Vast {
                source: e,
                hint: "",
            },
        )
    } else {
        fatal(e)
    }
}

/// Attempts at preparing the tables when the sink is built (about 10 s of backoff in all).
const BOOTSTRAP_ATTEMPTS: u32 = 8;

/// Why the VAST sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Missing(#[from] crate::config::MissingSetting),
    #[error("cannot use VAST at {endpoint}: {source}{}", if source.is_auth() { ": the credentials were refused; check VAST_ACCESS_KEY and VAST_SECRET_KEY" } else { "" })]
    Connect {
        endpoint: String,
        #[source]
        source: Box<VastError>,
    },
    #[error("cannot prepare tables in {bucket}/{schema}: {source}")]
    Bootstrap {
        bucket: String,
        schema: String,
        #[source]
        source: Box<VastError>,
    },
}

/// `url` without a `user:password@` part, the form that may be printed.
pub fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// What a connection needs, from `[sink]` and the environment.
pub struct Connection {
    pub config: VastConfig,
    pub bucket: String,
    pub schema: String,
}

impl Connection {
    /// The connection settings of `[sink] kind = "vast"` (`base_dir` resolves `ca_file`).
    pub fn from_config(
        c: &VastSinkConfig,
        base_dir: &Path,
    ) -> Result<Self, crate::config::MissingSetting> {
        let need = VastSinkConfig::need;
        let endpoint = need(&c.endpoint, "endpoint", "VAST_ENDPOINT")?;
        let access = need(&c.access_key, "access_key", "VAST_ACCESS_KEY")?;
        let secret = need(&c.secret_key, "secret_key", "VAST_SECRET_KEY")?;
        let bucket = need(&c.bucket, "bucket", "VAST_BUCKET")?;
        let bare = without_userinfo(endpoint);
        if bare != endpoint {
            // SigV4 signs with the access and secret keys; a user:password in the URL is
            // never used, and would be printed wherever the endpoint is.
            tracing::warn!(endpoint = %bare, "sink.endpoint holds credentials (user:password@); they are ignored and not shown");
        }
        Ok(Connection {
            config: VastConfig {
                endpoint: bare,
                credentials: sigv4::Credentials::new(access.to_string(), secret.to_string()),
                ca_file: c.ca_file.as_ref().map(|p| base_dir.join(p)),
                connect_timeout: Duration::from_millis(c.connect_timeout_ms),
                request_timeout: Duration::from_millis(c.request_timeout_ms),
            },
            bucket: bucket.to_string(),
            schema: c.schema().to_string(),
        })
    }

    /// Connect to the server (see [`VastSink::connect`]).
    pub fn connect(&self, lineage: bool) -> Result<VastSink, BuildError> {
        VastSink::connect(&self.config, &self.bucket, &self.schema, lineage).map_err(|source| {
            BuildError::Connect {
                endpoint: self.config.endpoint.clone(),
                source: Box::new(source),
            }
        })
    }
}

impl VastSink {
    /// The sink of `[sink] kind = "vast"`: connected, its schema and tables prepared.
    pub fn build(c: &VastSinkConfig, base_dir: &Path, lineage: bool) -> Result<Self, BuildError> {
        let conn = Connection::from_config(c, base_dir)?;
        let sink = conn.connect(lineage)?;
        sink.bootstrap_retrying(BOOTSTRAP_ATTEMPTS)
            .map_err(|source| BuildError::Bootstrap {
                bucket: conn.bucket.clone(),
                schema: conn.schema.clone(),
                source: Box::new(source),
            })?;
        Ok(sink)
    }

    /// Connect (version probe: a non-VAST server or wrong credentials fail here) and check
    /// the bucket exists.
    pub fn connect(
        config: &VastConfig,
        bucket: &str,
        schema: &str,
        lineage: bool,
    ) -> Result<VastSink, VastError> {
        let client = VastClient::connect(config)?;
        if !client.bucket_exists(bucket)? {
            return Err(VastError::MissingBucket(bucket.to_string()));
        }
        tracing::info!(version = ?client.version(), bucket, schema, "connected to VAST");
        Ok(VastSink {
            client,
            bucket: bucket.into(),
            schema: schema.into(),
            lineage,
            ready: Mutex::new(HashMap::new()),
            offsets_ready: Mutex::new(None),
            writer: writer_id(),
        })
    }

    /// The connected client.
    pub fn client(&self) -> &VastClient {
        &self.client
    }

    /// [`VastSink::bootstrap`], retried with backoff (100 ms doubling to 2 s) on retriable
    /// errors, up to `attempts` in all. Two processors starting on an empty database race to
    /// create the schema and tables, and the loser's commit is a 409: its next attempt, a
    /// new transaction, reads what the winner created.
    pub fn bootstrap_retrying(&self, attempts: u32) -> Result<(), VastError> {
        let mut delay = std::time::Duration::from_millis(100);
        for attempt in 1.. {
            match self.bootstrap() {
                Err(e) if e.is_retriable() && attempt < attempts => {
                    tracing::warn!(attempt, error = %e, "preparing the VAST tables failed; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(std::time::Duration::from_secs(2));
                }
                result => return result,
            }
        }
        unreachable!("the loop returns")
    }

    /// Make sure the schema and both tables exist with every column the processor writes,
    /// in a transaction of their own (used at startup so errors surface early).
    pub fn bootstrap(&self) -> Result<(), VastError> {
        let tx = self.client.begin()?;
        let result = (|| {
            let mut layouts = HashMap::new();
            for t in Table::ALL {
                layouts.insert(t, self.ensure(tx, t)?);
            }
            self.client.commit(tx)?;
            Ok(layouts)
        })();
        match result {
            Ok(layouts) => {
                *self.ready.lock().unwrap_or_else(|p| p.into_inner()) = layouts;
                Ok(())
            }
            Err(e) => {
                let _ = self.client.rollback(tx);
                Err(e)
            }
        }
    }

    /// Report the bucket/schema/table state and column differences, changing nothing.
    pub fn inspect(&self) -> Result<(bool, Vec<TableReport>), VastError> {
        let tx = self.client.begin()?;
        let result = (|| {
            let schema_exists = self.client.schema_exists(tx, &self.bucket, &self.schema)?;
            let mut reports = Vec::new();
            for t in Table::ALL {
                let expected = schema(t, self.lineage);
                let exists = schema_exists
                    && self
                        .client
                        .table_exists(tx, &self.bucket, &self.schema, t.name())?;
                let (mut missing, mut mismatched) = (Vec::new(), Vec::new());
                if exists {
                    let listed =
                        self.client
                            .list_columns(tx, &self.bucket, &self.schema, t.name())?;
                    for f in expected.fields() {
                        match listed.field_with_name(f.name()) {
                            Err(_) => missing.push(f.name().clone()),
                            Ok(l) if l.data_type() != f.data_type() => mismatched.push(format!(
                                "{} ({} on the server, {} written)",
                                f.name(),
                                l.data_type(),
                                f.data_type()
                            )),
                            Ok(_) => {}
                        }
                    }
                }
                reports.push(TableReport {
                    table: t.name(),
                    exists,
                    missing_columns: missing,
                    mismatched_columns: mismatched,
                });
            }
            Ok((schema_exists, reports))
        })();
        let _ = self.client.rollback(tx);
        result
    }

    /// Inside `tx`: create the schema/table if missing, add missing columns, and return the
    /// table's layout as the server lists it.
    fn ensure(&self, tx: TxId, table: Table) -> Result<Schema, VastError> {
        let sorted: &[usize] = if self.client.supports_sorting() {
            sorting_key(table)
        } else {
            &[]
        };
        self.ensure_named(tx, table.name(), &schema(table, self.lineage), sorted)
    }

    fn ensure_named(
        &self,
        tx: TxId,
        name: &str,
        expected: &Schema,
        sorted: &[usize],
    ) -> Result<Schema, VastError> {
        let (b, s) = (&self.bucket, &self.schema);
        if !self.client.schema_exists(tx, b, s)? {
            tracing::info!(bucket = %b, schema = %s, "creating schema");
            self.client.create_schema(tx, b, s)?;
        }
        if !self.client.table_exists(tx, b, s, name)? {
            tracing::info!(table = name, sorted = ?sorted, "creating table");
            self.client.create_table(tx, b, s, name, expected, sorted)?;
        }
        let listed = self.client.list_columns(tx, b, s, name)?;
        let mut missing = Vec::new();
        for f in expected.fields() {
            match listed.field_with_name(f.name()) {
                Err(_) => missing.push(f.as_ref().clone().with_nullable(true)),
                Ok(l) if l.data_type() != f.data_type() => {
                    return Err(VastError::SchemaMismatch {
                        table: name.into(),
                        column: f.name().clone(),
                        found: l.data_type().to_string(),
                        expected: f.data_type().to_string(),
                    });
                }
                Ok(_) => {}
            }
        }
        if missing.is_empty() {
            return Ok(listed);
        }
        tracing::info!(table = name, columns = ?missing.iter().map(|f| f.name().clone()).collect::<Vec<_>>(), "adding missing columns");
        self.client
            .add_columns(tx, b, s, name, &Schema::new(missing))?;
        self.client.list_columns(tx, b, s, name)
    }

    /// Inside `tx`: the offsets table's layout (created when missing).
    fn offsets_layout(&self, tx: TxId) -> Result<Schema, VastError> {
        if let Some(l) = self
            .offsets_ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(l);
        }
        self.ensure_named(tx, OFFSETS_TABLE, &offsets_schema(), &[])
    }

    /// Inside `tx`: the stored offsets of `group` (of `topic` only, when given), by topic and
    /// partition. Two rows for one partition (two first flushes racing) count as the larger.
    pub fn read_offsets(
        &self,
        tx: TxId,
        group: &str,
        topic: Option<&str>,
    ) -> Result<HashMap<(String, i32), StoredOffset>, VastError> {
        let layout = self.offsets_layout(tx)?;
        let mut fields = Vec::new();
        for name in [
            "consumer_group",
            "topic",
            "partition",
            "next_offset",
            "version",
        ] {
            let f = layout
                .field_with_name(name)
                .map_err(|_| VastError::SchemaMismatch {
                    table: OFFSETS_TABLE.into(),
                    column: name.into(),
                    found: "nothing".into(),
                    expected: "the offsets column".into(),
                })?;
            fields.push(f.clone());
        }
        fields.push(Field::new(query::ROW_ID, DataType::UInt64, true));
        let pages = self
            .client
            .query(tx, &self.bucket, &self.schema, OFFSETS_TABLE, &fields)?;
        let bad = |what: &str| VastError::Protocol(format!("{OFFSETS_TABLE}: {what}"));
        let mut out: HashMap<(String, i32), StoredOffset> = HashMap::new();
        for page in pages {
            let col = |i: usize| page.column(i).clone();
            let groups = col(0);
            let groups = groups
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .ok_or_else(|| bad("consumer_group is not a string"))?;
            let topics = col(1);
            let topics = topics
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .ok_or_else(|| bad("topic is not a string"))?;
            let parts = col(2);
            let parts = parts
                .as_any()
                .downcast_ref::<arrow_array::Int32Array>()
                .ok_or_else(|| bad("partition is not an int32"))?;
            let nexts = col(3);
            let nexts = nexts
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .ok_or_else(|| bad("next_offset is not an int64"))?;
            let versions = col(4);
            let versions = versions
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .ok_or_else(|| bad("version is not an int64"))?;
            let ids = col(5);
            let ids = ids
                .as_any()
                .downcast_ref::<arrow_array::UInt64Array>()
                .ok_or_else(|| bad("$row_id is not a uint64"))?;
            for r in 0..page.num_rows() {
                if groups.is_null(r) || groups.value(r) != group || topics.is_null(r) {
                    continue;
                }
                if topic.is_some_and(|t| t != topics.value(r))
                    || parts.is_null(r)
                    || nexts.is_null(r)
                {
                    continue;
                }
                let row = StoredOffset {
                    row_id: ids.value(r),
                    next: nexts.value(r),
                    version: if versions.is_null(r) {
                        0
                    } else {
                        versions.value(r)
                    },
                };
                let key = (topics.value(r).to_string(), parts.value(r));
                let e = out.entry(key).or_insert(row);
                if row.next > e.next {
                    *e = row;
                }
            }
        }
        Ok(out)
    }

    /// Inside `tx`: raise the stored offsets of `landing`'s partitions (absolute values, a
    /// version each), updating the rows read in this transaction, inserting the missing.
    fn write_offsets(
        &self,
        tx: TxId,
        landing: &Landing,
        stored: &HashMap<(String, i32), StoredOffset>,
    ) -> Result<(), VastError> {
        let layout = self.offsets_layout(tx)?;
        let now = crate::model::now_micros();
        let (mut upd, mut new) = (Vec::new(), Vec::new());
        for &(p, _, next) in &landing.partitions {
            match stored.get(&(landing.topic.clone(), p)) {
                Some(s) if s.next >= next => {}
                Some(s) => upd.push((s.row_id, next, s.version + 1)),
                None => new.push((p, next)),
            }
        }
        let ts = |n: usize| -> ArrayRef {
            Arc::new(
                arrow_array::TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC"),
            )
        };
        let text = |v: &str, n: usize| -> ArrayRef {
            Arc::new(arrow_array::StringArray::from(vec![v; n]))
        };
        if !upd.is_empty() {
            let n = upd.len();
            let columns: Vec<ArrayRef> = vec![
                Arc::new(arrow_array::UInt64Array::from_iter_values(
                    upd.iter().map(|u| u.0),
                )),
                Arc::new(arrow_array::Int64Array::from_iter_values(
                    upd.iter().map(|u| u.1),
                )),
                Arc::new(arrow_array::Int64Array::from_iter_values(
                    upd.iter().map(|u| u.2),
                )),
                text(&self.writer, n),
                ts(n),
            ];
            let mut fields = vec![Field::new(query::ROW_ID, DataType::UInt64, true)];
            for name in ["next_offset", "version", "writer", "written_at"] {
                fields.push(
                    layout
                        .field_with_name(name)
                        .map_err(|e| VastError::Protocol(e.to_string()))?
                        .clone(),
                );
            }
            let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
                .map_err(|e| VastError::Protocol(e.to_string()))?;
            self.client
                .update(tx, &self.bucket, &self.schema, OFFSETS_TABLE, &batch)?;
        }
        if !new.is_empty() {
            let n = new.len();
            let columns: Vec<ArrayRef> = vec![
                text(&landing.group, n),
                text(&landing.topic, n),
                Arc::new(arrow_array::Int32Array::from_iter_values(
                    new.iter().map(|x| x.0),
                )),
                Arc::new(arrow_array::Int64Array::from_iter_values(
                    new.iter().map(|x| x.1),
                )),
                Arc::new(arrow_array::Int64Array::from(vec![1i64; n])),
                text(&self.writer, n),
                ts(n),
            ];
            let batch = RecordBatch::try_new(Arc::new(offsets_schema()), columns)
                .map_err(|e| VastError::Protocol(e.to_string()))?;
            let batch = conform(&batch, &layout, OFFSETS_TABLE)?;
            self.client
                .insert(tx, &self.bucket, &self.schema, OFFSETS_TABLE, &batch)?;
        }
        Ok(())
    }

    /// The stored offsets of `group`: `(topic, partition, next)`, sorted (for `check`).
    pub fn stored_offsets(&self, group: &str) -> Result<Vec<(String, i32, i64)>, VastError> {
        let tx = self.client.begin()?;
        let result = self.read_offsets(tx, group, None);
        let _ = self.client.rollback(tx);
        let mut v: Vec<_> = result?
            .into_iter()
            .map(|((t, p), s)| (t, p, s.next))
            .collect();
        v.sort();
        Ok(v)
    }

    fn write_tx(
        &self,
        tx: TxId,
        batches: &[(Table, RecordBatch)],
    ) -> Result<HashMap<Table, Schema>, VastError> {
        let known = self.ready.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut layouts = known.clone();
        for (table, batch) in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            let layout = match known.get(table) {
                Some(l) => l.clone(),
                None => {
                    let l = self.ensure(tx, *table)?;
                    layouts.insert(*table, l.clone());
                    l
                }
            };
            let batch = conform(batch, &layout, table.name())?;
            self.client
                .insert(tx, &self.bucket, &self.schema, table.name(), &batch)?;
        }
        Ok(layouts)
    }
}

impl Sink for VastSink {
    fn write(
        &self,
        batches: &[(Table, RecordBatch)],
        landing: Option<&Landing>,
    ) -> Result<(), SinkError> {
        let tx = self.client.begin().map_err(classify)?;
        let result = (|| {
            let Some(landing) = landing else {
                return self.write_tx(tx, batches).map(|l| Some((l, None)));
            };
            let stored = self.read_offsets(tx, &landing.group, Some(&landing.topic))?;
            let next: HashMap<i32, i64> = stored.iter().map(|((_, p), s)| (*p, s.next)).collect();
            let Some(batches) = landing.unlanded("vast", batches, &next) else {
                return Ok(None);
            };
            let layouts = self.write_tx(tx, &batches)?;
            self.write_offsets(tx, landing, &stored)?;
            let offsets = self.offsets_layout(tx)?;
            Ok(Some((layouts, Some(offsets))))
        })();
        let (layouts, offsets) = match result {
            Ok(Some(l)) => l,
            Ok(None) => {
                tracing::debug!("vast: this flush landed already; nothing written");
                let _ = self.client.rollback(tx);
                return Ok(());
            }
            Err(e) => {
                // Nothing of this transaction becomes visible; forget layouts it may have changed.
                let _ = self.client.rollback(tx);
                self.ready.lock().unwrap_or_else(|p| p.into_inner()).clear();
                *self.offsets_ready.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Err(classify(e));
            }
        };
        match self.client.commit(tx) {
            Ok(()) => {
                *self.ready.lock().unwrap_or_else(|p| p.into_inner()) = layouts;
                if offsets.is_some() {
                    *self.offsets_ready.lock().unwrap_or_else(|p| p.into_inner()) = offsets;
                }
                Ok(())
            }
            Err(e) => {
                // A failed commit (a 409, a 5xx) leaves the transaction open on the server:
                // roll it back (best effort, one request within the client's timeouts; a
                // commit that did apply answers the rollback with an error, ignored). A
                // commit whose answer was lost may have been applied: with offsets the retry
                // reads them in its own transaction and writes nothing twice; without (at
                // least once) redoing the flush can duplicate rows, which `id` de-duplicates.
                let _ = self.client.rollback(tx);
                self.ready.lock().unwrap_or_else(|p| p.into_inner()).clear();
                *self.offsets_ready.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Err(classify(e))
            }
        }
    }

    fn stores_offsets(&self) -> bool {
        true
    }

    fn reset_offsets(
        &self,
        group: &str,
        partitions: &[((String, i32), i64)],
    ) -> Result<(), SinkError> {
        let tx = self.client.begin().map_err(classify)?;
        let result = (|| {
            let stored = self.read_offsets(tx, group, None)?;
            let layout = self.offsets_layout(tx)?;
            let rows: Vec<(u64, i64, i64)> = partitions
                .iter()
                .filter_map(|(tp, next)| stored.get(tp).map(|s| (s.row_id, *next, s.version + 1)))
                .collect();
            if rows.is_empty() {
                return Ok(());
            }
            let mut fields = vec![Field::new(query::ROW_ID, DataType::UInt64, true)];
            for name in ["next_offset", "version"] {
                fields.push(
                    layout
                        .field_with_name(name)
                        .map_err(|e| VastError::Protocol(e.to_string()))?
                        .clone(),
                );
            }
            let columns: Vec<ArrayRef> = vec![
                Arc::new(arrow_array::UInt64Array::from_iter_values(
                    rows.iter().map(|r| r.0),
                )),
                Arc::new(arrow_array::Int64Array::from_iter_values(
                    rows.iter().map(|r| r.1),
                )),
                Arc::new(arrow_array::Int64Array::from_iter_values(
                    rows.iter().map(|r| r.2),
                )),
            ];
            let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
                .map_err(|e| VastError::Protocol(e.to_string()))?;
            self.client
                .update(tx, &self.bucket, &self.schema, OFFSETS_TABLE, &batch)
        })();
        match result.and_then(|()| self.client.commit(tx)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = self.client.rollback(tx);
                Err(classify(e))
            }
        }
    }

    fn landed(
        &self,
        group: &str,
        partitions: &[(String, i32)],
    ) -> Result<HashMap<(String, i32), i64>, SinkError> {
        let tx = self.client.begin().map_err(classify)?;
        let result = self.read_offsets(tx, group, None);
        // A read: nothing to commit, except a created offsets table (kept for next time).
        let done = match &result {
            Ok(_) => self.client.commit(tx),
            Err(_) => self.client.rollback(tx),
        };
        let stored = result.map_err(classify)?;
        if let Err(e) = done {
            tracing::debug!(error = %e, "vast: ending the read of the offsets failed");
        }
        Ok(partitions
            .iter()
            .filter_map(|tp| stored.get(tp).map(|s| (tp.clone(), s.next)))
            .collect())
    }

    fn name(&self) -> &'static str {
        "vast"
    }

    fn check(&self) -> Result<(), SinkError> {
        match self.client.bucket_exists(&self.bucket) {
            Ok(true) => Ok(()),
            Ok(false) => Err(fatal(VastError::MissingBucket(self.bucket.clone()))),
            Err(e) => Err(SinkError::retry(
                "vast",
                SinkFailure::Vast {
                    source: e,
                    hint: " (VAST unreachable)",
                },
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint with credentials in it was printed by `check` and "cannot reach VAST".
    #[test]
    fn endpoints_lose_their_userinfo_before_anything_can_print_them() {
        assert_eq!(
            without_userinfo("http://admin:hunter2@vast-vip:80/x?y=1"),
            "http://vast-vip:80/x?y=1"
        );
        assert_eq!(without_userinfo("https://vast:443"), "https://vast:443");
        assert_eq!(
            without_userinfo("http://vast/path@not-userinfo"),
            "http://vast/path@not-userinfo"
        );
        let c = VastSinkConfig {
            endpoint: Some("http://u:hunter2@127.0.0.1:1".into()),
            access_key: Some("AK".into()),
            secret_key: Some("SK".into()),
            bucket: Some("b".into()),
            ..VastSinkConfig::default()
        };
        let conn = Connection::from_config(&c, Path::new(".")).unwrap();
        assert_eq!(conn.config.endpoint, "http://127.0.0.1:1");
        let Err(e) = conn.connect(true) else {
            panic!("nothing listens there")
        };
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
