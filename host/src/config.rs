//! `pipelines.toml`: which transform runs for which topic, with what settings.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default).

use crate::enrichment::TableSpec;
use crate::wasm::Limits;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Names of the transforms embedded in the binary.
pub const BUNDLED: [&str; 4] = ["raw-logs", "raw-queries", "raw-host-logs", "otel-metrics"];

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// One entry per input topic.
    #[serde(default)]
    pub pipelines: Vec<PipelineConfig>,
    /// Directory the file was read from: relative paths in it resolve against this.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// One `[[pipelines]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Label used in logs and metrics; defaults to the topic.
    #[serde(default)]
    pub name: Option<String>,
    /// The Kafka topic to read.
    pub topic: String,
    /// A bundled transform name, or a path to a `.wasm` component (relative to this file).
    pub transform: String,
    /// Key/values passed to the transform's `init`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Enrichment tables the transform can `lookup`.
    #[serde(default)]
    pub enrichment: BTreeMap<String, TableSpec>,
    /// Per-instance sandbox limits.
    #[serde(default)]
    pub limits: Limits,
}

impl PipelineConfig {
    /// The pipeline's label.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.topic)
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

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::parse(&text, path, base)
    }

    /// Parse and validate config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path, base_dir: PathBuf) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
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
            if p.limits.memory_mib < 2 {
                return Err(invalid(
                    i,
                    "limits.memory_mib",
                    "must be at least 2 (MiB)".into(),
                ));
            }
            if p.limits.deadline_ms == 0 {
                return Err(invalid(
                    i,
                    "limits.deadline_ms",
                    "must be greater than 0".into(),
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
        let text = include_str!("../../pipelines.toml");
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
