//! The embedded default sink: Parquet files under `DIR/<table>/date=YYYY-MM-DD/<unique>.parquet`,
//! zstd-compressed, written to a hidden temp file, fsynced, then renamed, so a reader never
//! sees a partial file. With exactly-once delivery a flush's files and its offsets land
//! together through the [`journal`]; each file also names the offset ranges it holds in its
//! key-value metadata (`vast_processor.offsets`).

pub mod journal;

use super::{Landing, Sink, SinkError, SinkFailure};
use crate::model::Table;
use arrow_array::RecordBatch;
use journal::{Intent, Journal};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How the sink encodes Parquet (the bench uses the same, to measure the sink's CPU cost).
///
/// Columns that are unique per row (ids, timestamps, the JSON documents) get no dictionary
/// and no statistics: the dictionary only fills up and is abandoned, and min/max of random
/// ids or JSON text prunes nothing, yet both cost a hash or a compare per value (a tenth of
/// the encode time for raw-logs). Low-cardinality columns keep both.
pub fn writer_properties() -> WriterProperties {
    let mut b =
        WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default()));
    for col in ["id", "attributes", "metadata", "trace_id", "source_offset"] {
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(col), false)
            .set_column_statistics_enabled(ColumnPath::from(col), EnabledStatistics::None);
    }
    for col in ["tags", "message"] {
        b = b.set_column_statistics_enabled(ColumnPath::from(col), EnabledStatistics::None);
    }
    // Event times are nearly unique (no dictionary), but their min/max prune time ranges.
    b = b.set_column_dictionary_enabled(ColumnPath::from("timestamp"), false);
    b.build()
}

/// Writes each flush as one Parquet file per table.
pub struct ParquetSink {
    dir: PathBuf,
    seq: AtomicU64,
    props: WriterProperties,
    journal: Journal,
}

/// The key of the offset ranges in each file's key-value metadata.
pub const OFFSETS_KEY: &str = "vast_processor.offsets";

/// Data directories this process has recovered (once each: a second sink on the same
/// directory must not take this process's own temp files for a dead writer's).
static RECOVERED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

impl ParquetSink {
    /// A sink writing under `dir` (created when missing), touching nothing there yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        ParquetSink {
            journal: Journal::new(&dir),
            dir,
            seq: AtomicU64::new(0),
            props: writer_properties(),
        }
    }

    /// The sink a run writes with: the first of a directory in a process finishes or
    /// removes what a writer that died left there (see [`journal`]).
    pub fn open(dir: impl Into<PathBuf>) -> Self {
        let sink = ParquetSink::new(dir);
        sink.recover_once();
        sink
    }

    /// The offsets stored for `group`: `(topic, partition, next)`, sorted.
    pub fn stored_offsets(&self, group: &str) -> Result<Vec<(String, i32, i64)>, SinkFailure> {
        self.journal.list(group)
    }

    fn recover_once(&self) {
        let key = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        let mut done = RECOVERED.lock().unwrap_or_else(|p| p.into_inner());
        if done.contains(&key) {
            return;
        }
        let tables: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
        match self.journal.recover(&tables) {
            Ok(r) => {
                if r.rolled_forward + r.temps_removed > 0 {
                    tracing::info!(dir = %self.dir.display(), flushes_completed = r.rolled_forward, temp_files_removed = r.temps_removed, "parquet: finished what an earlier process left");
                }
                done.push(key);
            }
            // Retried by the next sink on this directory; writes do not depend on it.
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "parquet: start-up recovery failed")
            }
        }
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write `batch` to a hidden temp file (complete and fsynced), returning its temp and
    /// final paths.
    fn write_temp(
        &self,
        table: Table,
        batch: &RecordBatch,
        offsets: Option<&str>,
    ) -> Result<(PathBuf, PathBuf), SinkFailure> {
        let dir = self
            .dir
            .join(table.name())
            .join(format!("date={}", utc_date_today()));
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| SinkFailure::Io {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
        let name = unique_name("parquet", self.seq.fetch_add(1, Ordering::Relaxed));
        let tmp = dir.join(format!(".{name}.tmp"));
        let fin = dir.join(&name);
        let result = (|| {
            let parquet = |source| SinkFailure::Parquet {
                path: tmp.clone(),
                source,
            };
            let file = File::create(&tmp).map_err(io("cannot create", &tmp))?;
            let mut w = ArrowWriter::try_new(file, batch.schema(), Some(self.props.clone()))
                .map_err(parquet)?;
            if let Some(o) = offsets {
                w.append_key_value_metadata(parquet::file::metadata::KeyValue::new(
                    OFFSETS_KEY.to_string(),
                    o.to_string(),
                ));
            }
            w.write(batch).map_err(parquet)?;
            let file = w.into_inner().map_err(parquet)?;
            file.sync_all().map_err(io("cannot fsync", &tmp))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| (tmp, fin))
    }

    fn write_one(&self, table: Table, batch: &RecordBatch) -> Result<PathBuf, SinkFailure> {
        let (tmp, fin) = self.write_temp(table, batch, None)?;
        if let Err(source) = std::fs::rename(&tmp, &fin) {
            let _ = std::fs::remove_file(&tmp);
            return Err(SinkFailure::Io {
                action: "cannot rename to",
                path: fin,
                source,
            });
        }
        if let Some(d) = fin.parent() {
            sync_dir(d);
        }
        Ok(fin)
    }

    /// Exactly once: what landed already is left out, the files and the offsets land
    /// together (the intent is the commit point), and a retry after an uncertain failure
    /// finds its own flush landed.
    fn write_landing(
        &self,
        batches: &[(Table, RecordBatch)],
        landing: &Landing,
    ) -> Result<(), SinkFailure> {
        // A data directory that is not one fails here, with its own path.
        std::fs::create_dir_all(&self.dir).map_err(|source| SinkFailure::Io {
            action: "cannot create",
            path: self.dir.clone(),
            source,
        })?;
        let parts: HashSet<i32> = landing.partitions.iter().map(|&(p, ..)| p).collect();
        // A flush committed but not applied (its writer died, or its apply failed) lands
        // first, so the offsets read next are true.
        self.journal
            .resolve(&landing.group, &landing.topic, &parts)?;
        let stored = self
            .journal
            .stored(&landing.group, &landing.topic, parts.iter().copied())?;
        let Some(batches) = landing.unlanded("parquet", batches, &stored) else {
            return Ok(());
        };
        let ranges = serde_json::json!({
            "group": landing.group,
            "topic": landing.topic,
            "partitions": landing.partitions,
        })
        .to_string();
        let mut files = Vec::new();
        let written = batches
            .iter()
            .filter(|(_, b)| b.num_rows() > 0)
            .try_for_each(|(table, b)| {
                files.push(self.write_temp(*table, b, Some(&ranges))?);
                Ok(())
            });
        let rel = |p: &Path| {
            p.strip_prefix(&self.dir)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned()
        };
        let intent = Intent {
            group: landing.group.clone(),
            topic: landing.topic.clone(),
            pid: std::process::id(),
            files: files.iter().map(|(t, f)| (rel(t), rel(f))).collect(),
            offsets: landing.after(&stored),
        };
        let begun = written.and_then(|()| self.journal.begin(&intent));
        let path = match begun {
            Ok(p) => p,
            Err(e) => {
                for (tmp, _) in &files {
                    let _ = std::fs::remove_file(tmp);
                }
                return Err(e);
            }
        };
        // Committed: a failure from here on is finished by the retry's `resolve`.
        self.journal.apply(&path, &intent)?;
        for (_, fin) in &files {
            tracing::debug!(path = %fin.display(), "wrote parquet file");
        }
        Ok(())
    }
}

/// A file name unique across processes and restarts: time, pid, sequence.
pub fn unique_name(ext: &str, seq: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}-{}-{seq:06}.{ext}", now.as_nanos(), std::process::id())
}

/// Today's UTC date as `YYYY-MM-DD` (the partition directory of files written now).
pub fn utc_date_today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    civil_date(secs.div_euclid(86_400))
}

/// `YYYY-MM-DD` of a day number since 1970-01-01.
pub fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{:04}-{m:02}-{d:02}", if m <= 2 { y + 1 } else { y })
}

/// Make a rename durable: fsync the directory (best effort; not every filesystem allows it).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Sink for ParquetSink {
    fn write(
        &self,
        batches: &[(Table, RecordBatch)],
        landing: Option<&Landing>,
    ) -> Result<(), SinkError> {
        if let Some(landing) = landing {
            return self
                .write_landing(batches, landing)
                .map_err(|e| SinkError::retry("parquet", e));
        }
        for (table, batch) in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            // A failed write leaves no visible file; a retry writes the whole flush again, and
            // files already written for other tables of this flush are at-least-once duplicates
            // that `id` de-duplicates.
            let path = self
                .write_one(*table, batch)
                .map_err(|e| SinkError::retry("parquet", e))?;
            tracing::debug!(table = table.name(), rows = batch.num_rows(), path = %path.display(), "wrote parquet file");
        }
        Ok(())
    }

    fn stores_offsets(&self) -> bool {
        true
    }

    fn reset_offsets(
        &self,
        group: &str,
        partitions: &[((String, i32), i64)],
    ) -> Result<(), SinkError> {
        for ((topic, p), next) in partitions {
            self.journal
                .reset(group, topic, *p, *next)
                .map_err(|e| SinkError::retry("parquet", e))?;
        }
        Ok(())
    }

    fn landed(
        &self,
        group: &str,
        partitions: &[(String, i32)],
    ) -> Result<HashMap<(String, i32), i64>, SinkError> {
        let mut by_topic: HashMap<&str, HashSet<i32>> = HashMap::new();
        for (t, p) in partitions {
            by_topic.entry(t).or_default().insert(*p);
        }
        let mut out = HashMap::new();
        for (topic, parts) in by_topic {
            let found = self
                .journal
                .resolve(group, topic, &parts)
                .and_then(|_| self.journal.stored(group, topic, parts.iter().copied()))
                .map_err(|e| SinkError::retry("parquet", e))?;
            out.extend(found.into_iter().map(|(p, n)| ((topic.to_string(), p), n)));
        }
        Ok(out)
    }

    fn name(&self) -> &'static str {
        "parquet"
    }

    fn check(&self) -> Result<(), SinkError> {
        let probe = self.dir.join(format!(".probe-{}", std::process::id()));
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&probe, b""))
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|source| {
                SinkError::retry(
                    "parquet",
                    SinkFailure::Io {
                        action: "data directory is not writable:",
                        path: self.dir.clone(),
                        source,
                    },
                )
            })
    }
}

/// Read every row of `table` under `dir` (all date partitions), in file-name order.
pub fn read_table(dir: &Path, table: Table) -> Result<Vec<RecordBatch>, String> {
    let mut files = Vec::new();
    let root = dir.join(table.name());
    if root.exists() {
        for part in std::fs::read_dir(&root).map_err(|e| e.to_string())? {
            let part = part.map_err(|e| e.to_string())?.path();
            if !part.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&part).map_err(|e| e.to_string())? {
                let f = f.map_err(|e| e.to_string())?.path();
                let visible = f
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.'));
                if visible && f.extension().is_some_and(|e| e == "parquet") {
                    files.push(f);
                }
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let file = File::open(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| format!("{}: {e}", f.display()))?;
        for batch in reader {
            out.push(batch.map_err(|e| format!("{}: {e}", f.display()))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Lineage, TableBatcher};
    use crate::model::{Event, Row};

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(20_375), "2025-10-14");
        assert_eq!(civil_date(19_782), "2024-02-29");
        assert_eq!(civil_date(-1), "1969-12-31");
    }

    #[test]
    fn writes_readable_files_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(dir.path());
        sink.write(&events(0..3), None).unwrap();
        let batches = read_table(dir.path(), Table::Events).unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
        assert_eq!(
            batches[0].schema(),
            crate::batch::schema(Table::Events, true)
        );
        // No temp file is left behind.
        let day = dir
            .path()
            .join("events")
            .join(format!("date={}", utc_date_today()));
        let names: Vec<String> = std::fs::read_dir(&day)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(
            names[0].ends_with(".parquet") && !names[0].starts_with('.'),
            "{names:?}"
        );

        // The written column chunks follow writer_properties(): per-row-unique columns have
        // no dictionary and no statistics; event times keep statistics (time pruning).
        let file = File::open(day.join(&names[0])).unwrap();
        let meta = parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap();
        let meta = parquet::file::reader::FileReader::metadata(&meta);
        let rg = meta.row_group(0);
        let col = |name: &str| {
            (0..rg.num_columns())
                .map(|i| rg.column(i))
                .find(|c| c.column_path().string() == name)
                .unwrap()
        };
        for name in ["id", "attributes", "source_offset"] {
            let c = col(name);
            assert!(
                c.dictionary_page_offset().is_none(),
                "{name} has a dictionary"
            );
            assert!(c.statistics().is_none(), "{name} has statistics");
        }
        assert!(col("timestamp").dictionary_page_offset().is_none());
        assert!(col("timestamp").statistics().is_some());
        assert!(col("message").statistics().is_none());
        let entity = col("entity_id");
        assert!(entity.dictionary_page_offset().is_some());
        assert!(entity.statistics().is_some());
    }

    fn events(offsets: std::ops::Range<i64>) -> Vec<(Table, RecordBatch)> {
        let mut b = TableBatcher::new(true);
        for i in offsets {
            b.push(
                &Row::Event(Event {
                    timestamp: Some(i),
                    entity_id: "e".into(),
                    event_type: "log".into(),
                    source: "s".into(),
                    environment: "p".into(),
                    message: format!("m{i}"),
                    tags: vec![],
                    attributes: "{}".into(),
                    trace_id: None,
                    id: Some(format!("id{i}")),
                    created_at: Some(0),
                }),
                &Lineage {
                    topic: "t",
                    partition: 0,
                    offset: i,
                    version: "v",
                },
            );
        }
        b.finish()
    }

    fn landing(first: i64, next: i64) -> Landing {
        Landing {
            group: "g".into(),
            topic: "t".into(),
            partitions: vec![(0, first, next)],
        }
    }

    #[test]
    fn with_offsets_a_flush_lands_once_and_an_overlap_only_adds_the_new_rows() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(dir.path());
        let asked = [("t".to_string(), 0), ("t".to_string(), 1)];
        assert!(sink.landed("g", &asked).unwrap().is_empty());
        sink.write(&events(0..3), Some(&landing(0, 3))).unwrap();
        assert_eq!(
            sink.landed("g", &asked).unwrap(),
            HashMap::from([(("t".to_string(), 0), 3)])
        );
        // The same flush again (a retry after an uncertain failure, a zombie): nothing.
        sink.write(&events(0..3), Some(&landing(0, 3))).unwrap();
        // A flush reaching back into what landed: only offsets 3 and 4 are new.
        sink.write(&events(1..5), Some(&landing(1, 5))).unwrap();
        let ids: Vec<String> = read_table(dir.path(), Table::Events)
            .unwrap()
            .iter()
            .flat_map(|b| {
                let ids = b
                    .column_by_name("id")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<arrow_array::StringArray>()
                    .unwrap()
                    .clone();
                (0..arrow_array::Array::len(&ids)).map(move |i| ids.value(i).to_string())
            })
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ["id0", "id1", "id2", "id3", "id4"], "{ids:?}");
        assert_eq!(sink.landed("g", &asked).unwrap()[&("t".to_string(), 0)], 5);
        // Another group has its own offsets.
        assert!(sink.landed("other", &asked).unwrap().is_empty());
        // A reset lowers what is stored (the topic was recreated).
        sink.reset_offsets("g", &[(("t".to_string(), 0), 0)])
            .unwrap();
        assert_eq!(sink.landed("g", &asked).unwrap()[&("t".to_string(), 0)], 0);
        sink.write(&events(0..2), Some(&landing(0, 2))).unwrap();
        assert_eq!(sink.landed("g", &asked).unwrap()[&("t".to_string(), 0)], 2);
        // Each file names its offset ranges in its metadata.
        let day = dir
            .path()
            .join("events")
            .join(format!("date={}", utc_date_today()));
        let file = std::fs::read_dir(&day).unwrap().next().unwrap().unwrap();
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(
            File::open(file.path()).unwrap(),
        )
        .unwrap();
        let meta = parquet::file::reader::FileReader::metadata(&reader);
        let kv = meta.file_metadata().key_value_metadata().unwrap();
        let ranges = kv.iter().find(|k| k.key == OFFSETS_KEY).unwrap();
        let v: serde_json::Value = serde_json::from_str(ranges.value.as_ref().unwrap()).unwrap();
        assert_eq!(v["group"], "g");
        assert_eq!(v["topic"], "t");
        assert!(v["partitions"][0][0] == 0, "{v}");
    }

    #[test]
    fn an_unwritable_directory_is_a_retriable_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let sink = ParquetSink::new(&file);
        let mut b = TableBatcher::new(false);
        b.push(
            &Row::Event(Event {
                timestamp: Some(0),
                entity_id: "e".into(),
                event_type: "log".into(),
                source: "s".into(),
                environment: "p".into(),
                message: "m".into(),
                tags: vec![],
                attributes: "{}".into(),
                trace_id: None,
                id: Some("i".into()),
                created_at: Some(0),
            }),
            &Lineage {
                topic: "t",
                partition: 0,
                offset: 0,
                version: "v",
            },
        );
        let err = sink.write(&b.finish(), None).unwrap_err();
        assert!(err.is_retriable(), "{err}");
        assert!(err.to_string().contains("cannot create"), "{err}");
    }
}
