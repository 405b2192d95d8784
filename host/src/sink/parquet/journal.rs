//! Exactly-once bookkeeping of the Parquet sink, under `<data dir>/.vast-processor/`:
//!
//! - `offsets/<group>/<topic>/<partition>.json`: the next offset whose rows have not landed,
//!   per consumer group and partition (names percent-encoded), replaced atomically.
//! - `pending/<flush>.json`: a flush's intent, written (atomically, fsynced) once all its
//!   files are complete under their hidden temp names. The intent is the commit point: from
//!   then on the flush rolls forward (temps renamed to their final names, offsets raised,
//!   intent removed), by its writer or, after a crash, by whoever next asks for one of its
//!   partitions. Every step is idempotent, so two rolling the same intent forward agree.
//!
//! A flush's file without an intent is a hidden temp file; it is removed on start when the
//! process that wrote it is gone.

use super::{sync_dir, unique_name};
use crate::sink::SinkFailure;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A committed flush, until it is applied.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub group: String,
    pub topic: String,
    pub pid: u32,
    /// `(temp, final)` names, relative to the data directory.
    pub files: Vec<(String, String)>,
    /// `(partition, next offset)` once the flush has landed.
    pub offsets: Vec<(i32, i64)>,
}

/// One partition's stored position.
#[derive(Serialize, Deserialize)]
struct Stored {
    next: i64,
    pid: u32,
    written_at_us: i64,
}

/// What the start-up recovery did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Intents of dead writers rolled forward.
    pub rolled_forward: usize,
    /// Hidden temp files of dead writers removed.
    pub temps_removed: usize,
}

/// The journal of one data directory.
pub struct Journal {
    data: PathBuf,
    root: PathBuf,
    seq: AtomicU64,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SinkFailure {
    let path = path.to_path_buf();
    move |source| SinkFailure::Io {
        action,
        path,
        source,
    }
}

/// A file or directory name for any group or topic: `[A-Za-z0-9_-]` kept, the rest `%XX`.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The name [`encode`] was given.
pub fn decode(encoded: &str) -> String {
    let b = encoded.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The writer's pid in a hidden temp name `.<nanos>-<pid>-<seq>.<ext>.tmp`.
pub fn temp_pid(name: &str) -> Option<u32> {
    let body = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    body.split('-').nth(1)?.parse().ok()
}

/// Whether process `pid` is alive on this host. This process counts as gone while the
/// directory is recovered at start: a container restart reuses the pid.
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        // Unknown: keep what it may still be writing.
        true
    }
}

impl Journal {
    pub fn new(data: &Path) -> Self {
        Journal {
            data: data.to_path_buf(),
            root: data.join(".vast-processor"),
            seq: AtomicU64::new(0),
        }
    }

    fn offsets_dir(&self, group: &str, topic: &str) -> PathBuf {
        self.root
            .join("offsets")
            .join(encode(group))
            .join(encode(topic))
    }

    fn pending_dir(&self) -> PathBuf {
        self.root.join("pending")
    }

    /// Write `bytes` to `path` atomically and durably (temp, fsync, rename, directory fsync).
    fn replace(&self, path: &Path, bytes: &[u8]) -> Result<(), SinkFailure> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
        let tmp = dir.join(format!(
            ".{}.tmp",
            unique_name("json", self.seq.fetch_add(1, Ordering::Relaxed))
        ));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(io("cannot create", &tmp))?;
            f.write_all(bytes).map_err(io("cannot write", &tmp))?;
            f.sync_all().map_err(io("cannot fsync", &tmp))?;
            std::fs::rename(&tmp, path).map_err(io("cannot rename to", path))?;
            sync_dir(dir);
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// The stored next offset of each of `partitions` (absent: nothing stored). A file that
    /// cannot be parsed counts as absent (with a warning) and is replaced by the next flush.
    pub fn stored(
        &self,
        group: &str,
        topic: &str,
        partitions: impl IntoIterator<Item = i32>,
    ) -> Result<HashMap<i32, i64>, SinkFailure> {
        let dir = self.offsets_dir(group, topic);
        let mut out = HashMap::new();
        for p in partitions {
            let path = dir.join(format!("{p}.json"));
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("cannot read", &path)(e)),
            };
            match serde_json::from_slice::<Stored>(&bytes) {
                Ok(s) => {
                    out.insert(p, s.next);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable stored offset ignored (the next flush replaces it)");
                }
            }
        }
        Ok(out)
    }

    /// Every offset stored for `group`: `(topic, partition, next)`, sorted.
    pub fn list(&self, group: &str) -> Result<Vec<(String, i32, i64)>, SinkFailure> {
        let dir = self.root.join("offsets").join(encode(group));
        let topics = match std::fs::read_dir(&dir) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("cannot list", &dir)(e)),
        };
        let mut out = Vec::new();
        for t in topics.flatten() {
            let topic = decode(&t.file_name().to_string_lossy());
            let Ok(files) = std::fs::read_dir(t.path()) else {
                continue;
            };
            let parts: Vec<i32> = files
                .flatten()
                .filter_map(|f| {
                    f.file_name()
                        .to_string_lossy()
                        .strip_suffix(".json")?
                        .parse()
                        .ok()
                })
                .collect();
            for (p, next) in self.stored(group, &topic, parts)? {
                out.push((topic.clone(), p, next));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Store `next` for `partition` as it is, lower than before included (see
    /// `Sink::reset_offsets`), after rolling forward what is committed for it.
    pub fn reset(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        next: i64,
    ) -> Result<(), SinkFailure> {
        self.resolve(group, topic, &HashSet::from([partition]))?;
        let s = Stored {
            next,
            pid: std::process::id(),
            written_at_us: crate::model::now_micros(),
        };
        let bytes = serde_json::to_vec(&s).expect("an offset serializes");
        self.replace(
            &self
                .offsets_dir(group, topic)
                .join(format!("{partition}.json")),
            &bytes,
        )
    }

    /// Commit a flush whose files are complete under their temp names: after this returns
    /// the flush lands, whatever happens to this process.
    pub fn begin(&self, intent: &Intent) -> Result<PathBuf, SinkFailure> {
        let name = unique_name("json", self.seq.fetch_add(1, Ordering::Relaxed));
        let path = self.pending_dir().join(name);
        let bytes = serde_json::to_vec(intent).expect("an intent serializes");
        self.replace(&path, &bytes)?;
        Ok(path)
    }

    /// Roll a committed flush forward: its files visible, its offsets raised, its intent gone.
    pub fn apply(&self, path: &Path, intent: &Intent) -> Result<(), SinkFailure> {
        let mut dirs = HashSet::new();
        for (tmp, fin) in &intent.files {
            let (tmp, fin) = (self.data.join(tmp), self.data.join(fin));
            match std::fs::rename(&tmp, &fin) {
                Ok(()) => {}
                // Renamed already (by an earlier attempt or another roller).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && fin.exists() => {}
                Err(e) => return Err(io("cannot rename to", &fin)(e)),
            }
            if let Some(d) = fin.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        for d in &dirs {
            sync_dir(d);
        }
        let parts = intent.offsets.iter().map(|&(p, _)| p);
        let stored = self.stored(&intent.group, &intent.topic, parts)?;
        let dir = self.offsets_dir(&intent.group, &intent.topic);
        for &(p, next) in &intent.offsets {
            if stored.get(&p).is_some_and(|&s| s >= next) {
                continue;
            }
            let s = Stored {
                next,
                pid: intent.pid,
                written_at_us: crate::model::now_micros(),
            };
            let bytes = serde_json::to_vec(&s).expect("an offset serializes");
            self.replace(&dir.join(format!("{p}.json")), &bytes)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot remove", path)(e)),
        }
        if let Some(d) = path.parent() {
            sync_dir(d);
        }
        Ok(())
    }

    /// The intents waiting, with their paths. One that cannot be parsed is moved aside
    /// (`.bad`) with a warning: it was written atomically, so something else broke it.
    fn pending(&self) -> Result<Vec<(PathBuf, Intent)>, SinkFailure> {
        let dir = self.pending_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("cannot list", &dir)(e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                // Applied by its writer meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("cannot read", &path)(e)),
            };
            match serde_json::from_slice::<Intent>(&bytes) {
                Ok(i) => out.push((path, i)),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "unreadable flush intent moved aside");
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Roll forward every intent of `group` touching one of `partitions` of `topic` (a flush
    /// committed by a writer that died, or whose apply failed): before its offsets are read.
    pub fn resolve(
        &self,
        group: &str,
        topic: &str,
        partitions: &HashSet<i32>,
    ) -> Result<usize, SinkFailure> {
        let mut n = 0;
        for (path, intent) in self.pending()? {
            let touches = intent.group == group
                && intent.topic == topic
                && intent.offsets.iter().any(|(p, _)| partitions.contains(p));
            if touches {
                self.apply(&path, &intent)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// At start: roll forward the intents of writers that are gone, then remove their hidden
    /// temp files (a flush interrupted before its intent) from the table directories and the
    /// journal. Lists directories, reads no data file.
    pub fn recover(&self, tables: &[&str]) -> Result<Recovery, SinkFailure> {
        let mut r = Recovery::default();
        let mut keep: HashSet<PathBuf> = HashSet::new();
        for (path, intent) in self.pending()? {
            if alive(intent.pid) {
                keep.extend(intent.files.iter().map(|(t, _)| self.data.join(t)));
            } else {
                self.apply(&path, &intent)?;
                r.rolled_forward += 1;
            }
        }
        let mut dirs = vec![self.pending_dir()];
        for t in tables {
            let root = self.data.join(t);
            if let Ok(parts) = std::fs::read_dir(&root) {
                dirs.extend(parts.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
        let offsets = self.root.join("offsets");
        if let Ok(groups) = std::fs::read_dir(&offsets) {
            for g in groups.flatten() {
                if let Ok(topics) = std::fs::read_dir(g.path()) {
                    dirs.extend(topics.flatten().map(|e| e.path()));
                }
            }
        }
        for d in dirs {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let dead = temp_pid(&name.to_string_lossy()).is_some_and(|pid| !alive(pid));
                let path = e.path();
                if dead && !keep.contains(&path) {
                    match std::fs::remove_file(&path) {
                        Ok(()) => r.temps_removed += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io("cannot remove", &path)(e)),
                    }
                }
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(pid: u32, files: Vec<(String, String)>, offsets: Vec<(i32, i64)>) -> Intent {
        Intent {
            group: "g/1".into(),
            topic: "raw.logs".into(),
            pid,
            files,
            offsets,
        }
    }

    #[test]
    fn names_are_encoded_and_temp_pids_read() {
        assert_eq!(encode("raw-logs_1"), "raw-logs_1");
        assert_eq!(encode("g/1.x"), "g%2F1%2Ex");
        for name in ["g/1.x", "raw-logs", "ü%zz", "a%"] {
            assert_eq!(decode(&encode(name)), name);
        }
        assert_eq!(temp_pid(".123-456-000001.parquet.tmp"), Some(456));
        assert_eq!(temp_pid("123-456-000001.parquet"), None);
        assert_eq!(temp_pid(".probe-1"), None);
    }

    #[test]
    fn an_applied_intent_shows_its_files_and_raises_its_offsets_once() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        std::fs::create_dir_all(dir.path().join("events/date=x")).unwrap();
        std::fs::write(dir.path().join("events/date=x/.1-2-3.parquet.tmp"), b"data").unwrap();
        let i = intent(
            std::process::id(),
            vec![(
                "events/date=x/.1-2-3.parquet.tmp".into(),
                "events/date=x/1-2-3.parquet".into(),
            )],
            vec![(0, 10), (3, 7)],
        );
        let path = j.begin(&i).unwrap();
        j.apply(&path, &i).unwrap();
        assert!(dir.path().join("events/date=x/1-2-3.parquet").exists());
        assert!(!path.exists());
        let stored = j.stored("g/1", "raw.logs", [0, 1, 3]).unwrap();
        assert_eq!(stored, HashMap::from([(0, 10), (3, 7)]));
        assert_eq!(
            j.list("g/1").unwrap(),
            [
                ("raw.logs".to_string(), 0, 10),
                ("raw.logs".to_string(), 3, 7)
            ]
        );
        // Applying again (a second roller) changes nothing; a lower offset never wins.
        j.apply(&path, &i).unwrap();
        let lower = intent(std::process::id(), vec![], vec![(0, 5)]);
        let p2 = j.begin(&lower).unwrap();
        j.apply(&p2, &lower).unwrap();
        assert_eq!(j.stored("g/1", "raw.logs", [0]).unwrap()[&0], 10);
    }

    #[test]
    fn a_dead_writers_intent_rolls_forward_and_its_stray_temps_go() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        let day = dir.path().join("events/date=x");
        std::fs::create_dir_all(&day).unwrap();
        // pid 0 and this process count as gone at start.
        let me = std::process::id();
        std::fs::write(day.join(format!(".1-{me}-1.parquet.tmp")), b"committed").unwrap();
        std::fs::write(day.join(format!(".1-{me}-2.parquet.tmp")), b"interrupted").unwrap();
        std::fs::write(day.join("1-9-1.parquet"), b"landed").unwrap();
        let i = intent(
            me,
            vec![(
                format!("events/date=x/.1-{me}-1.parquet.tmp"),
                format!("events/date=x/1-{me}-1.parquet"),
            )],
            vec![(2, 42)],
        );
        j.begin(&i).unwrap();
        let r = j.recover(&["events", "metrics"]).unwrap();
        assert_eq!(
            r,
            Recovery {
                rolled_forward: 1,
                temps_removed: 1
            }
        );
        let mut names: Vec<String> = std::fs::read_dir(&day)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [format!("1-{me}-1.parquet"), "1-9-1.parquet".into()]);
        assert_eq!(j.stored("g/1", "raw.logs", [2]).unwrap()[&2], 42);
        assert!(j.pending().unwrap().is_empty());
    }

    #[test]
    fn resolve_rolls_forward_only_the_asked_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        let a = intent(1, vec![], vec![(0, 5)]);
        let b = intent(1, vec![], vec![(1, 9)]);
        j.begin(&a).unwrap();
        j.begin(&b).unwrap();
        assert_eq!(
            j.resolve("g/1", "raw.logs", &HashSet::from([1])).unwrap(),
            1
        );
        assert_eq!(
            j.stored("g/1", "raw.logs", [0, 1]).unwrap(),
            HashMap::from([(1, 9)])
        );
        assert_eq!(j.pending().unwrap().len(), 1);
        // Another group's intent is not this group's business.
        assert_eq!(
            j.resolve("other", "raw.logs", &HashSet::from([0])).unwrap(),
            0
        );
    }

    #[test]
    fn a_broken_offsets_file_counts_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        let d = j.offsets_dir("g", "t");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("0.json"), b"{not json").unwrap();
        assert!(j.stored("g", "t", [0]).unwrap().is_empty());
    }
}
