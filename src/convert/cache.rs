//! Content-addressed store of compiled pieces. A piece's key covers everything that decides its
//! bmodel: what its exported file is made of (the graph and the stored bytes of the tensors it
//! reads, see `graph_key`: nothing is exported to compute it), the tool command lines, the
//! chip (inside the flags), the quantize table, the TPU-MLIR version and our worker script. A
//! stored piece is never recompiled, unless its bytes no longer match the sha256 recorded when
//! it was stored: a corrupt or truncated entry is compiled again, never combined.
//!
//! Entries are published with a rename (the sidecar first, then the artifact), so runs sharing
//! one cache at once never see half an entry; builds are reproducible, so two runs storing the
//! same key store the same bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};

use crate::model::fingerprint::{Fingerprint, StableHasher};

/// Bump when the way pieces are produced changes in a way the key does not capture (v3: keys
/// from the graph and the stored tensor bytes instead of the ONNX file).
const FORMAT: &str = "llm-convert piece cache v3";

pub struct PieceCache {
    root: PathBuf,
    /// Artifacts whose bytes this run checked (or stored), with their sha256.
    verified: Mutex<HashMap<PathBuf, String>>,
}

/// What decides one compile step's bmodel.
pub struct StepInputs<'a> {
    /// `graph_key::graph_digest` of the step's piece: its exported file's content.
    pub graph: Fingerprint,
    pub transform_argv: &'a [String],
    pub deploy_argv: &'a [String],
    pub output_names: &'a [String],
    /// The `--quantize_table` text, if the step has one.
    pub quantize_table: Option<&'a str>,
}

/// The key of one piece: all its compile steps (a decode net's stages are compiled together,
/// since they share the first step's IO addresses).
pub fn piece_key(steps: &[StepInputs], backend: super::backend::Backend) -> String {
    let mut h = StableHasher::new(FORMAT);
    h.str(crate::toolchain::TPU_MLIR_VERSION);
    // What turns the key's inputs into a bmodel: the Python worker, or the native backend
    // (its emitter and pass lists are code of this crate: its version stands for them).
    match backend {
        super::backend::Backend::Onnx => {
            h.bytes(include_bytes!("../../support/python/tpu_worker.py"))
        }
        super::backend::Backend::Native => h.str("native").str(crate::native::KEY_VERSION),
    };
    h.u64(steps.len() as u64);
    for step in steps {
        h.bytes(&step.graph)
            .strs(step.transform_argv)
            .strs(step.deploy_argv)
            .strs(step.output_names);
        match step.quantize_table {
            Some(text) => h.bool(true).str(text),
            None => h.bool(false),
        };
    }
    crate::util::hex(&h.finish())
}

/// The cache extension of step `j` of a piece (the first step's is plain "bmodel").
pub fn step_ext(j: usize) -> String {
    if j == 0 {
        "bmodel".into()
    } else {
        format!("stage{j}.bmodel")
    }
}

fn sidecar(artifact: &Path) -> PathBuf {
    let mut name = artifact.as_os_str().to_os_string();
    name.push(".sha256");
    PathBuf::from(name)
}

impl PieceCache {
    pub fn open(root: &Path) -> Result<PieceCache> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating cache {}", root.display()))?;
        Ok(PieceCache {
            root: root.to_path_buf(),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// `$XDG_CACHE_HOME/llm-convert/pieces` (or ~/.cache/...).
    pub fn default_root() -> PathBuf {
        crate::toolchain::layout::cache_root().join("pieces")
    }

    pub fn path(&self, key: &str, ext: &str) -> PathBuf {
        self.root.join(&key[..2]).join(format!("{key}.{ext}"))
    }

    /// The stored artifact, if this key was finished before and its bytes still hash to what
    /// was recorded when it was stored (checked once per run).
    pub fn get(&self, key: &str, ext: &str) -> Option<PathBuf> {
        let p = self.path(key, ext);
        if self.is_verified(&p) {
            return Some(p);
        }
        if !p.is_file() {
            return None;
        }
        let recorded = std::fs::read_to_string(sidecar(&p)).ok();
        let actual = crate::util::sha256_file(&p).ok();
        match (recorded.as_deref().map(str::trim), actual) {
            (Some(want), Some(got)) if want == got => {
                self.remember(&p, got);
                Some(p)
            }
            _ => {
                // Left in place: the compile that follows overwrites it atomically (another
                // run may be storing this very key right now).
                eprintln!(
                    "warning: cache entry {} does not match its recorded sha256 (corrupt, \
                     truncated or unfinished): compiling the piece again",
                    p.display()
                );
                None
            }
        }
    }

    fn is_verified(&self, p: &Path) -> bool {
        self.verified.lock().is_ok_and(|m| m.contains_key(p))
    }

    fn remember(&self, p: &Path, sha: String) {
        if let Ok(mut map) = self.verified.lock() {
            map.insert(p.to_path_buf(), sha);
        }
    }

    /// sha256 of a stored artifact (checked or stored by this run, else hashed now).
    pub fn sha256(&self, artifact: &Path) -> Result<String> {
        if let Some(sha) = self
            .verified
            .lock()
            .ok()
            .and_then(|m| m.get(artifact).cloned())
        {
            return Ok(sha);
        }
        crate::util::sha256_file(artifact)
    }

    /// Moves (or copies) a finished artifact into the store atomically, with a sha256
    /// sidecar; returns its path. On failure (a full disk, say) nothing half-written is left.
    pub fn put(&self, key: &str, ext: &str, file: &Path) -> Result<PathBuf> {
        let dest = self.path(key, ext);
        let dir = dest.parent().context("cache path has no parent")?;
        let tmp = dir.join(format!(".{key}.{ext}.tmp.{}", std::process::id()));
        let stored = (|| -> Result<String> {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            if std::fs::rename(file, &tmp).is_err() {
                std::fs::copy(file, &tmp)
                    .with_context(|| format!("copying {} into the cache", file.display()))?;
            }
            let sha = crate::util::sha256_file(&tmp)?;
            crate::util::write_atomic(&sidecar(&dest), sha.as_bytes())?;
            std::fs::rename(&tmp, &dest).with_context(|| format!("storing {}", dest.display()))?;
            Ok(sha)
        })();
        match stored {
            Ok(sha) => {
                self.remember(&dest, sha);
                Ok(dest)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(with_space_hint(e, &self.root))
            }
        }
    }
}

/// Says what to do when the cache's disk is full.
fn with_space_hint(e: anyhow::Error, root: &Path) -> anyhow::Error {
    let full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC))
    });
    if full {
        e.context(format!(
            "no space left for the piece cache in {}: free space there, or pass --cache-dir \
             on a disk with room",
            root.display()
        ))
    } else {
        e
    }
}
