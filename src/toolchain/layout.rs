//! Where the pinned TPU-MLIR toolchain lives on disk.
//!
//! Default: `$XDG_CACHE_HOME/llm-convert/tpu-mlir-1.30.2` (or `~/.cache/...`), outside any
//! repository; `LLM_CONVERT_TOOLCHAIN` (or `--toolchain-dir`) points elsewhere.

use std::path::{Path, PathBuf};

use crate::model::BundledModels;

/// The TPU-MLIR release every cache key and manifest is pinned to.
pub const TPU_MLIR_VERSION: &str = "1.30.2";
/// sha256 of `tpu_mlir-1.30.2-py3-none-any.whl` as served by PyPI.
pub const TPU_MLIR_WHEEL_SHA256: &str =
    "542807361c9eeb0777a7bd35e501d8c71cce767e4bce021a3cb3a7c25c35f909";
pub const TPU_MLIR_WHEEL: &str = "tpu_mlir-1.30.2-py3-none-any.whl";
pub const ENV_TOOLCHAIN_DIR: &str = "LLM_CONVERT_TOOLCHAIN";

#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    /// From `LLM_CONVERT_TOOLCHAIN`, else the default cache location.
    pub fn from_env() -> Layout {
        match std::env::var_os(ENV_TOOLCHAIN_DIR) {
            Some(dir) if !dir.is_empty() => Layout::new(dir),
            _ => Layout::new(cache_root().join(format!("tpu-mlir-{TPU_MLIR_VERSION}"))),
        }
    }

    pub fn venv(&self) -> PathBuf {
        self.root.join("venv")
    }

    pub fn python(&self) -> PathBuf {
        self.venv().join("bin").join("python")
    }

    pub fn site_packages(&self) -> PathBuf {
        self.venv()
            .join("lib")
            .join("python3.10")
            .join("site-packages")
    }

    /// Where `toolchain install` puts the bundled models' packages.
    pub fn bundled_models(&self) -> BundledModels {
        BundledModels {
            site_packages: self.site_packages(),
        }
    }

    /// `$TPUC_ROOT`: the installed `tpu_mlir` package.
    pub fn tpuc_root(&self) -> PathBuf {
        self.site_packages().join("tpu_mlir")
    }

    pub fn wheels(&self) -> PathBuf {
        self.root.join("wheels")
    }

    /// Written last by a successful install; its absence means "not (fully) installed".
    pub fn stamp(&self) -> PathBuf {
        self.root.join("installed.json")
    }

    /// PPL JIT kernel cache (FAttention compiles through it), kept inside the toolchain dir.
    pub fn ppl_cache(&self) -> PathBuf {
        self.root.join("ppl_cache")
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.tpuc_root().join("bin").join(name)
    }

    pub fn python_tool(&self, name: &str) -> PathBuf {
        self.tpuc_root().join("python").join("tools").join(name)
    }

    pub fn lib_dir(&self) -> PathBuf {
        self.tpuc_root().join("lib")
    }

    /// Version of the installed `tpu_mlir` package, from its dist-info folder name.
    pub fn installed_version(&self) -> Option<String> {
        std::fs::read_dir(self.site_packages())
            .ok()?
            .flatten()
            .find_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let rest = name.strip_prefix("tpu_mlir-")?.strip_suffix(".dist-info")?;
                Some(rest.to_string())
            })
    }

    pub fn is_installed(&self) -> bool {
        self.stamp().exists()
    }
}

/// `$XDG_CACHE_HOME/llm-convert`, else `$HOME/.cache/llm-convert`.
pub fn cache_root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("llm-convert")
}
