//! Deployments as durable state. Per pipeline, a small record of the module contents (by
//! content hash) that were accepted, rejected or rolled back, and the accepted components'
//! bytes kept content-addressed. A restart used to run whatever file was on disk, a rejected
//! one included; with this record it runs the last accepted version instead and says why.
//! Removing the state directory returns to "the file is the truth".
//!
//! Layout under the state directory:
//! `deployments/<pipeline>.json` (the record) and `components/<sha256>.wasm` (bytes).
//! Every write goes to a temporary file that is synced and renamed over the old one, so a
//! crash mid-write leaves the previous record whole.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Accepted components whose bytes are kept (older ones are removed from `components/`).
const KEEP_ACCEPTED: usize = 5;

/// A deployment store that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("deployment state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("deployment record {path} is not valid: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl StateError {
    /// Worth retrying later (a full or unmounted disk), as opposed to a record to remove.
    pub fn is_transient(&self) -> bool {
        matches!(self, StateError::Io { .. })
    }
}

/// Why a module content may not run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// `rejected` (refused before it ran) or `rolled_back` (taken out after it ran).
    pub decision: String,
    pub reason: String,
    pub at_unix_ms: u128,
}

/// One pipeline's deployment record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Content hash of the version running when the record was last written.
    pub running: Option<String>,
    /// Accepted content hashes, oldest first (each once).
    pub accepted: Vec<String>,
    /// Refused content hashes.
    pub refused: BTreeMap<String, Refusal>,
    /// Content hash of a version pinned by hand: it runs (a restart included) and file
    /// changes are not deployed until it is unpinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<String>,
}

/// The deployment record of one pipeline, kept in memory and written through.
pub struct DeploymentStore {
    dir: PathBuf,
    pipeline: String,
    record: Mutex<Record>,
    /// Opened by another command than `run` (a redrive): it reads the record, never writes.
    read_only: bool,
}

/// A pipeline name as a file name: names are usually topic-like, anything else is escaped.
fn file_name(pipeline: &str) -> String {
    pipeline
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c.to_string()
            } else {
                format!("%{:02x}", c as u32)
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write `bytes` to `path` so that a crash leaves either the old file or the new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    // The rename itself is durable once the directory is synced.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl DeploymentStore {
    /// Open `pipeline`'s record under `state_dir` (an empty record when there is none yet).
    pub fn open(state_dir: &Path, pipeline: &str) -> Result<DeploymentStore, StateError> {
        Self::open_with(state_dir, pipeline, false)
    }

    /// Open the record to read it only: decisions taken meanwhile are not written.
    pub fn open_read_only(state_dir: &Path, pipeline: &str) -> Result<DeploymentStore, StateError> {
        Self::open_with(state_dir, pipeline, true)
    }

    fn open_with(
        state_dir: &Path,
        pipeline: &str,
        read_only: bool,
    ) -> Result<DeploymentStore, StateError> {
        let store = DeploymentStore {
            dir: state_dir.to_path_buf(),
            pipeline: pipeline.to_string(),
            record: Mutex::new(Record::default()),
            read_only,
        };
        let path = store.record_path();
        let record = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::default(),
            Err(e) => return Err(io(&path)(e)),
        };
        *store.record.lock().unwrap_or_else(|p| p.into_inner()) = record;
        Ok(store)
    }

    fn record_path(&self) -> PathBuf {
        self.dir
            .join("deployments")
            .join(format!("{}.json", file_name(&self.pipeline)))
    }

    fn component_path(&self, hash: &str) -> PathBuf {
        self.dir.join("components").join(format!("{hash}.wasm"))
    }

    /// The record as it stands.
    pub fn record(&self) -> Record {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why `hash` may not run, if it was refused.
    pub fn refusal(&self, hash: &str) -> Option<Refusal> {
        self.record().refused.get(hash).cloned()
    }

    /// The kept bytes of an accepted component, checked against their hash.
    pub fn bytes(&self, hash: &str) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.component_path(hash)).ok()?;
        (crate::transform::wasm::engine::content_hash(&bytes) == hash).then_some(bytes)
    }

    /// The newest accepted version other than `except` that is not refused and whose bytes
    /// are kept: the running one first.
    pub fn last_accepted(&self, except: &str) -> Option<(String, Vec<u8>)> {
        let r = self.record();
        r.running
            .iter()
            .chain(r.accepted.iter().rev())
            .filter(|h| h.as_str() != except && !r.refused.contains_key(h.as_str()))
            .find_map(|h| self.bytes(h).map(|b| (h.clone(), b)))
    }

    fn save(&self, r: &Record) -> Result<(), StateError> {
        if self.read_only {
            return Ok(());
        }
        let text = serde_json::to_vec_pretty(r).expect("a record serializes");
        write_atomic(&self.record_path(), &text)
    }

    /// `hash` runs now: record it as accepted and running (keeping `bytes`, when given, so
    /// a later restart can fall back to it), and lift any refusal of it.
    pub fn accept(&self, hash: &str, bytes: Option<&[u8]>) -> Result<(), StateError> {
        if let Some(b) = bytes.filter(|_| !self.read_only) {
            let path = self.component_path(hash);
            if self.bytes(hash).is_none() {
                write_atomic(&path, b)?;
            }
        }
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        r.accepted.retain(|h| h != hash);
        r.accepted.push(hash.to_string());
        r.refused.remove(hash);
        r.running = Some(hash.to_string());
        // Bytes of versions that can no longer be fallen back to are removed.
        if r.accepted.len() > KEEP_ACCEPTED {
            let drop = r.accepted.len() - KEEP_ACCEPTED;
            for old in r.accepted.drain(..drop) {
                if !self.read_only {
                    let _ = std::fs::remove_file(self.component_path(&old));
                }
            }
        }
        self.save(&r)
    }

    /// Pin `hash` (`None`: unpin).
    pub fn pin(&self, hash: Option<&str>) -> Result<(), StateError> {
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        r.pinned = hash.map(str::to_string);
        self.save(&r)
    }

    /// Lift the refusal of `hash`; whether there was one.
    pub fn unban(&self, hash: &str) -> Result<bool, StateError> {
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        if r.refused.remove(hash).is_none() {
            return Ok(false);
        }
        self.save(&r).map(|()| true)
    }

    /// `hash` is the running version again (a rollback or a fallback at start).
    pub fn running(&self, hash: &str) -> Result<(), StateError> {
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        r.running = Some(hash.to_string());
        self.save(&r)
    }

    /// Record that `hash` was refused (`rejected` or `rolled_back`) and why.
    pub fn refuse(&self, hash: &str, decision: &str, reason: &str) -> Result<(), StateError> {
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        // A rolled-back version stays banned when it is offered again and refused for that.
        if decision != "rolled_back"
            && r.refused
                .get(hash)
                .is_some_and(|old| old.decision == "rolled_back")
        {
            return Ok(());
        }
        let mut reason = reason.to_string();
        crate::model::cut_with_marker(&mut reason, 2048);
        r.refused.insert(
            hash.to_string(),
            Refusal {
                decision: decision.to_string(),
                reason,
                at_unix_ms: super::now_ms(),
            },
        );
        if r.running.as_deref() == Some(hash) {
            r.running = None;
        }
        self.save(&r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_reopening_and_refusals_are_lifted_by_acceptance() {
        let dir = tempfile::tempdir().unwrap();
        let s = DeploymentStore::open(dir.path(), "raw logs/1").unwrap();
        let (a, b) = (b"component a".as_slice(), b"component b".as_slice());
        let (ha, hb) = (
            crate::transform::wasm::engine::content_hash(a),
            crate::transform::wasm::engine::content_hash(b),
        );
        s.accept(&ha, Some(a)).unwrap();
        s.refuse(&hb, "rejected", "traps").unwrap();
        let again = DeploymentStore::open(dir.path(), "raw logs/1").unwrap();
        assert_eq!(again.record(), s.record());
        assert_eq!(again.refusal(&hb).unwrap().decision, "rejected");
        assert_eq!(again.last_accepted(&hb), Some((ha.clone(), a.to_vec())));
        assert_eq!(again.last_accepted(&ha), None, "nothing else accepted");
        again.accept(&hb, Some(b)).unwrap();
        assert!(again.refusal(&hb).is_none());
        assert_eq!(again.record().running.as_deref(), Some(hb.as_str()));
        // The name is escaped: one file in deployments/, no directory made from the slash.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("deployments"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["raw%20logs%2f1.json".to_string()]);
    }

    #[test]
    fn a_damaged_component_is_not_offered_and_a_corrupt_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = DeploymentStore::open(dir.path(), "p").unwrap();
        let a = b"component a".as_slice();
        let ha = crate::transform::wasm::engine::content_hash(a);
        s.accept(&ha, Some(a)).unwrap();
        std::fs::write(dir.path().join(format!("components/{ha}.wasm")), b"other").unwrap();
        assert_eq!(s.last_accepted("x"), None);
        std::fs::write(dir.path().join("deployments/p.json"), b"{not json").unwrap();
        assert!(matches!(
            DeploymentStore::open(dir.path(), "p"),
            Err(StateError::Corrupt { .. })
        ));
    }
}
