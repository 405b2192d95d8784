//! `vast-processor transform new NAME`: create a ready-to-build transform crate from the
//! templates in `scaffold/` (a working transform with unit tests, sample input, its golden
//! output, a pipeline entry and a README with the build/test/deploy loop).

use std::path::{Path, PathBuf};

/// Arguments of `transform new`.
#[derive(Debug, Clone, clap::Args)]
pub struct NewArgs {
    /// Crate and topic name: lowercase letters, digits, `-` and `_`, starting with a letter.
    pub name: String,
    /// Parent directory of the new crate (it is created as DIR/NAME).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Path to the vast-transform-sdk crate (guest-transforms/sdk of a vast-processor
    /// checkout); default: the checkout this binary was built from, when it still exists.
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

/// Why a crate could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "invalid name `{0}`: use lowercase letters, digits, `-` and `_`, starting with a letter"
    )]
    InvalidName(String),
    #[error("{0} already exists; choose another name or --dir")]
    Exists(PathBuf),
    #[error(
        "cannot find the vast-transform-sdk crate{0}; pass --sdk PATH to guest-transforms/sdk of a vast-processor checkout"
    )]
    NoSdk(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

const FILES: [(&str, &str); 6] = [
    ("Cargo.toml", include_str!("scaffold/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("scaffold/lib.rs.tmpl")),
    ("samples/input.jsonl", include_str!("scaffold/input.jsonl")),
    (
        "samples/expected.jsonl",
        include_str!("scaffold/expected.jsonl"),
    ),
    (
        "pipelines.toml",
        include_str!("scaffold/pipelines.toml.tmpl"),
    ),
    ("README.md", include_str!("scaffold/README.md.tmpl")),
];

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64
}

/// The SDK this binary was built with, if its checkout is still there.
fn built_in_sdk() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-transforms/sdk");
    p.join("Cargo.toml").is_file().then_some(p)
}

/// Create the crate; returns its directory.
pub fn create(args: &NewArgs) -> Result<PathBuf, ScaffoldError> {
    if !valid_name(&args.name) {
        return Err(ScaffoldError::InvalidName(args.name.clone()));
    }
    let sdk = match &args.sdk {
        Some(p) if p.join("Cargo.toml").is_file() => p.clone(),
        Some(p) => return Err(ScaffoldError::NoSdk(format!(" at {}", p.display()))),
        None => built_in_sdk().ok_or_else(|| ScaffoldError::NoSdk(String::new()))?,
    };
    let sdk = sdk.canonicalize().map_err(|source| ScaffoldError::Io {
        path: sdk.clone(),
        source,
    })?;
    let root = args.dir.join(&args.name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
    let crate_name = args.name.replace('-', "_");
    // TOML basic strings: escape backslashes and quotes of the path.
    let sdk_text = sdk
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    for (rel, template) in FILES {
        let path = root.join(rel);
        let text = template
            .replace("{{name}}", &args.name)
            .replace("{{crate}}", &crate_name)
            .replace("{{sdk}}", &sdk_text);
        let io = |source| ScaffoldError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, text).map_err(io)?;
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("my-enrich_2"));
        for bad in ["", "My", "2x", "a b", "a/b", "ä"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn creates_every_file_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let args = NewArgs {
            name: "my-enrich".into(),
            dir: dir.path().into(),
            sdk: None,
        };
        let root = create(&args).unwrap();
        for (rel, _) in FILES {
            let text = std::fs::read_to_string(root.join(rel)).unwrap();
            assert!(!text.contains("{{"), "{rel} has an unfilled placeholder");
        }
        let pipelines = std::fs::read_to_string(root.join("pipelines.toml")).unwrap();
        assert!(pipelines.contains("release/my_enrich.wasm"), "{pipelines}");
        assert!(matches!(create(&args), Err(ScaffoldError::Exists(_))));
        let bad = NewArgs {
            sdk: Some(dir.path().join("nowhere")),
            name: "other".into(),
            ..args
        };
        assert!(matches!(create(&bad), Err(ScaffoldError::NoSdk(_))));
    }
}
