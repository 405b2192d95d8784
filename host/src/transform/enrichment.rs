//! Enrichment tables: CSV or JSON files named in a pipeline's config, loaded by the host and
//! served to guests through the `lookup` import.

use crate::config::TableSpec;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Why a table could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum EnrichmentError {
    #[error("enrichment table `{table}`: cannot read {path}: {source}")]
    Io {
        table: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("enrichment table `{table}` ({path}): {reason}")]
    Format {
        table: String,
        path: PathBuf,
        reason: String,
    },
}

/// Loaded tables: table name → key → value text.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Enrichment {
    tables: HashMap<String, HashMap<String, String>>,
    /// SHA-256 (hex) of every table's content, for the version label of the rows it shaped.
    digest: String,
}

impl Enrichment {
    /// Load every table; relative paths are resolved against `base`.
    pub fn load(specs: &BTreeMap<String, TableSpec>, base: &Path) -> Result<Self, EnrichmentError> {
        let mut tables = HashMap::new();
        for (name, spec) in specs {
            let path = base.join(&spec.path);
            let text = std::fs::read_to_string(&path).map_err(|source| EnrichmentError::Io {
                table: name.clone(),
                path: path.clone(),
                source,
            })?;
            let format_err = |reason: String| EnrichmentError::Format {
                table: name.clone(),
                path: path.clone(),
                reason,
            };
            let rows = match path.extension().and_then(|e| e.to_str()) {
                Some("csv") => load_csv(&text, spec.key.as_deref()).map_err(format_err)?,
                Some("json") => load_json(&text).map_err(format_err)?,
                _ => {
                    return Err(format_err(
                        "unknown file type: use a .csv or .json file".into(),
                    ));
                }
            };
            tables.insert(name.clone(), rows);
        }
        let digest = digest(&tables);
        Ok(Enrichment { tables, digest })
    }

    /// SHA-256 (hex) of the loaded content (table names, keys and values, in sorted order):
    /// two loads of the same tables agree, any changed value changes it. Empty without tables.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The value for `key` in `table`.
    pub fn lookup(&self, table: &str, key: &str) -> Option<&str> {
        self.tables.get(table)?.get(key).map(String::as_str)
    }

    /// Number of rows of `table`.
    pub fn len(&self, table: &str) -> Option<usize> {
        self.tables.get(table).map(HashMap::len)
    }
}

fn digest(tables: &HashMap<String, HashMap<String, String>>) -> String {
    use sha2::{Digest, Sha256};
    if tables.is_empty() {
        return String::new();
    }
    let mut h = Sha256::new();
    let mut names: Vec<_> = tables.keys().collect();
    names.sort();
    for name in names {
        let t = &tables[name];
        let mut keys: Vec<_> = t.keys().collect();
        keys.sort();
        // Lengths before contents: no two different tables hash the same text.
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((t.len() as u64).to_le_bytes());
        for k in keys {
            for part in [k.as_str(), t[k].as_str()] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
    }
    crate::transform::wasm::engine::hex(&h.finalize())
}

/// CSV with a header row; each row becomes a JSON object of column → value, keyed by the
/// key column.
fn load_csv(text: &str, key: Option<&str>) -> Result<HashMap<String, String>, String> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    let key_idx = match key {
        None => 0,
        Some(k) => headers.iter().position(|h| h == k).ok_or_else(|| {
            format!(
                "no column `{k}` (columns: {})",
                headers.iter().collect::<Vec<_>>().join(", ")
            )
        })?,
    };
    let mut out = HashMap::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| format!("line {}: {e}", i + 2))?;
        let key = rec.get(key_idx).unwrap_or_default().to_string();
        let obj: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .zip(rec.iter())
            .map(|(h, v)| (h.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        out.insert(key, serde_json::Value::Object(obj).to_string());
    }
    Ok(out)
}

/// A JSON object of key → value; string values come back unquoted, others as JSON text.
fn load_json(text: &str) -> Result<HashMap<String, String>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let serde_json::Value::Object(map) = v else {
        return Err("must be a JSON object mapping keys to values".into());
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_json_tables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("t.csv"),
            "host,team,owner\npg-1,dba,ann\npg-2,web,bob\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("t.json"), r#"{"a":"x","b":{"n":1}}"#).unwrap();
        let mut specs = BTreeMap::new();
        specs.insert(
            "csv".into(),
            TableSpec {
                path: "t.csv".into(),
                key: None,
            },
        );
        specs.insert(
            "json".into(),
            TableSpec {
                path: "t.json".into(),
                key: None,
            },
        );
        let e = Enrichment::load(&specs, dir.path()).unwrap();
        assert_eq!(
            e.lookup("csv", "pg-2"),
            Some(r#"{"host":"pg-2","team":"web","owner":"bob"}"#)
        );
        assert_eq!(e.lookup("csv", "nope"), None);
        assert_eq!(e.lookup("json", "a"), Some("x"));
        assert_eq!(e.lookup("json", "b"), Some(r#"{"n":1}"#));
        assert_eq!(e.len("csv"), Some(2));
        let again = Enrichment::load(&specs, dir.path()).unwrap();
        assert_eq!(e.digest(), again.digest(), "same content, same digest");
        std::fs::write(
            dir.path().join("t.csv"),
            "host,team,owner\npg-1,dba,ann\npg-2,ops,bob\n",
        )
        .unwrap();
        let changed = Enrichment::load(&specs, dir.path()).unwrap();
        assert_ne!(e.digest(), changed.digest(), "one value changed");
        assert_eq!(Enrichment::default().digest(), "");
    }

    #[test]
    fn bad_key_column_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.csv"), "host,team\n").unwrap();
        let mut specs = BTreeMap::new();
        specs.insert(
            "t".into(),
            TableSpec {
                path: "t.csv".into(),
                key: Some("entity".into()),
            },
        );
        let err = Enrichment::load(&specs, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no column `entity`") && err.contains("host, team"),
            "{err}"
        );
    }
}
