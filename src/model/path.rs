//! What `-m` names: a model folder, a `.gguf` file, or a bundled-model folder (resolved to
//! its installed file). The one place that tells them apart, for [`super::Model`] and the
//! chat config alike.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::bundled::{self, BundledModels};
use crate::error::InputError;

pub enum ModelPath {
    Gguf(PathBuf),
    Dir(PathBuf),
}

/// How the errors word what the path should have been.
pub struct Expected {
    /// What `-m` was for, for "not found (...)".
    pub role: &'static str,
    /// The problem when the path is something else, e.g. "neither a model folder nor a .gguf file".
    pub problem: &'static str,
    pub fix: &'static str,
}

impl ModelPath {
    /// Classifies `path`; a bundled folder resolves through `installed` (without it, a
    /// bundled folder is refused: it names no weights by itself).
    pub fn resolve(
        path: &Path,
        installed: Option<&BundledModels>,
        expected: &Expected,
    ) -> Result<ModelPath> {
        let path = match installed {
            Some(i) => bundled::resolve(path, i)?,
            None if bundled::is_bundled(path) => {
                return Err(InputError::invalid(
                    path,
                    "a bundled model folder: its weights live in the toolchain",
                    "open it with the toolchain's bundled models (llm-convert -m does)",
                )
                .into())
            }
            None => path.to_path_buf(),
        };
        if !path.exists() {
            return Err(InputError::missing(&path, expected.role).into());
        }
        if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
            Ok(ModelPath::Gguf(path))
        } else if path.is_dir() {
            Ok(ModelPath::Dir(path))
        } else {
            Err(InputError::invalid(&path, expected.problem, expected.fix).into())
        }
    }
}
