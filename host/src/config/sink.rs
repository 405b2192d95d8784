//! `[sink]`: where rows go, tagged by `kind` (`parquet`, the default, or `vast`). Each
//! variant builds its sink (`SinkConfig::build`, in `crate::sink`).

use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};

/// `[sink]`, by `kind`.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkConfig {
    /// Local Parquet files (the embedded default).
    Parquet(ParquetConfig),
    /// VAST Database.
    Vast(VastSinkConfig),
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig::Parquet(ParquetConfig::default())
    }
}

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // `kind` may be left out (it defaults to parquet), which serde's internally tagged
        // enums do not allow; the rest is checked by the variant (unknown keys are errors).
        let mut table = toml::Table::deserialize(d)?;
        let kind = match table.remove("kind") {
            None => "parquet".to_string(),
            Some(toml::Value::String(s)) => s,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "sink.kind: expected a string, got {}",
                    other.type_str()
                )));
            }
        };
        let rest = toml::Value::Table(table);
        match kind.as_str() {
            "parquet" => ParquetConfig::deserialize(rest)
                .map(SinkConfig::Parquet)
                .map_err(|e| D::Error::custom(format!("[sink] (kind = \"parquet\"): {e}"))),
            "vast" => VastSinkConfig::deserialize(rest)
                .map(SinkConfig::Vast)
                .map_err(|e| D::Error::custom(format!("[sink] (kind = \"vast\"): {e}"))),
            other => Err(D::Error::custom(format!(
                "sink.kind: unknown sink `{other}`, expected `parquet` or `vast`"
            ))),
        }
    }
}

impl SinkConfig {
    /// `parquet` or `vast`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Parquet(_) => "parquet",
            SinkConfig::Vast(_) => "vast",
        }
    }

    /// The data directory (Parquet output; dead-letter files for pipelines without a topic).
    pub fn data_dir(&self) -> &Path {
        match self {
            SinkConfig::Parquet(p) => &p.data_dir,
            SinkConfig::Vast(v) => &v.data_dir,
        }
    }

    /// The VAST settings, switching to the VAST sink (keeping the data directory) when this
    /// is the Parquet one: `VAST_ENDPOINT` in the environment selects VAST.
    pub fn vast_mut(&mut self) -> &mut VastSinkConfig {
        if let SinkConfig::Parquet(p) = self {
            *self = SinkConfig::Vast(VastSinkConfig {
                data_dir: p.data_dir.clone(),
                ..VastSinkConfig::default()
            });
        }
        match self {
            SinkConfig::Vast(v) => v,
            SinkConfig::Parquet(_) => unreachable!("switched above"),
        }
    }
}

/// `[sink] kind = "parquet"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParquetConfig {
    /// The output directory (also where dead letters go when a pipeline has no dead-letter
    /// topic). `--data-dir` overrides it.
    pub data_dir: PathBuf,
}

impl Default for ParquetConfig {
    fn default() -> Self {
        ParquetConfig {
            data_dir: PathBuf::from("data"),
        }
    }
}

/// `[sink] kind = "vast"`. The connection settings may come from the environment
/// (`VAST_*`), so they are checked when the sink is built, naming the key and the variable.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VastSinkConfig {
    /// Where dead letters go when a pipeline has no dead-letter topic.
    pub data_dir: PathBuf,
    /// Endpoint URL (`VAST_ENDPOINT`).
    pub endpoint: Option<String>,
    /// Access key (`VAST_ACCESS_KEY`; prefer the environment).
    pub access_key: Option<String>,
    /// Secret key (`VAST_SECRET_KEY`; prefer the environment).
    pub secret_key: Option<String>,
    /// Bucket (`VAST_BUCKET`).
    pub bucket: Option<String>,
    /// Schema (`VAST_SCHEMA`); default `observability`.
    pub schema: Option<String>,
    /// Over https: a PEM file with the CA of the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Connect timeout, milliseconds.
    pub connect_timeout_ms: u64,
    /// Timeout of one request, milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for VastSinkConfig {
    fn default() -> Self {
        VastSinkConfig {
            data_dir: PathBuf::from("data"),
            endpoint: None,
            access_key: None,
            secret_key: None,
            bucket: None,
            schema: None,
            ca_file: None,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 60_000,
        }
    }
}

/// A setting the VAST sink needs and did not get.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the VAST sink needs sink.{key} (or {env})")]
pub struct MissingSetting {
    pub key: &'static str,
    pub env: &'static str,
}

impl VastSinkConfig {
    /// A required setting: present and non-empty.
    pub fn need<'a>(
        value: &'a Option<String>,
        key: &'static str,
        env: &'static str,
    ) -> Result<&'a str, MissingSetting> {
        value
            .as_deref()
            .filter(|v| !v.is_empty())
            .ok_or(MissingSetting { key, env })
    }

    /// The schema, `observability` unless set.
    pub fn schema(&self) -> &str {
        self.schema
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("observability")
    }
}
