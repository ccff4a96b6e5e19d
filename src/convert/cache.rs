//! Content-addressed store of compiled pieces. A piece's key covers everything that decides its
//! bmodel: the ONNX bytes (weights included), the tool command lines, the chip (inside the
//! flags), the TPU-MLIR version and our worker script. A stored piece is never recompiled.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Bump when the way pieces are produced changes in a way the key does not capture.
const FORMAT: &str = "llm-convert piece cache v2";

pub struct PieceCache {
    root: PathBuf,
}

/// What decides one compile step's bmodel.
pub struct StepInputs<'a> {
    pub onnx: &'a Path,
    pub transform_argv: &'a [String],
    pub deploy_argv: &'a [String],
    pub output_names: &'a [String],
    pub quantize_table: Option<&'a Path>,
}

/// The key of one piece: all its compile steps (a decode net's stages are compiled together,
/// since they share the first step's IO addresses).
pub fn piece_key(steps: &[StepInputs]) -> Result<String> {
    let mut h = Sha256::new();
    for part in [FORMAT, crate::toolchain::TPU_MLIR_VERSION] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(include_bytes!("../../support/python/tpu_worker.py"));
    for step in steps {
        for list in [step.transform_argv, step.deploy_argv, step.output_names] {
            for a in list {
                h.update(a.as_bytes());
                h.update([0]);
            }
            h.update([1]);
        }
        hash_file_into(step.onnx, &mut h)?;
        if let Some(q) = step.quantize_table {
            hash_file_into(q, &mut h)?;
        }
    }
    Ok(crate::util::hex(&h.finalize()))
}

/// The cache extension of step `j` of a piece (the first step's is plain "bmodel").
pub fn step_ext(j: usize) -> String {
    if j == 0 {
        "bmodel".into()
    } else {
        format!("stage{j}.bmodel")
    }
}

fn hash_file_into(path: &Path, h: &mut Sha256) -> Result<()> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

fn sidecar(artifact: &Path) -> PathBuf {
    let mut name = artifact.as_os_str().to_os_string();
    name.push(".sha256");
    PathBuf::from(name)
}

/// sha256 of a whole file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    hash_file_into(path, &mut h)?;
    Ok(crate::util::hex(&h.finalize()))
}

impl PieceCache {
    pub fn open(root: &Path) -> Result<PieceCache> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating cache {}", root.display()))?;
        Ok(PieceCache {
            root: root.to_path_buf(),
        })
    }

    /// `$XDG_CACHE_HOME/llm-convert/pieces` (or ~/.cache/...).
    pub fn default_root() -> PathBuf {
        crate::toolchain::layout::cache_root().join("pieces")
    }

    pub fn path(&self, key: &str, ext: &str) -> PathBuf {
        self.root.join(&key[..2]).join(format!("{key}.{ext}"))
    }

    /// The stored artifact, if this key was finished before.
    pub fn get(&self, key: &str, ext: &str) -> Option<PathBuf> {
        let p = self.path(key, ext);
        p.is_file().then_some(p)
    }

    /// sha256 of a stored artifact, from the sidecar written by [`Self::put`] (hashed again
    /// if the sidecar is missing).
    pub fn sha256(&self, artifact: &Path) -> Result<String> {
        let sidecar = sidecar(artifact);
        match std::fs::read_to_string(&sidecar) {
            Ok(s) if s.trim().len() == 64 => Ok(s.trim().to_string()),
            _ => sha256_file(artifact),
        }
    }

    /// Moves (or copies) a finished artifact into the store atomically, with a sha256
    /// sidecar; returns its path.
    pub fn put(&self, key: &str, ext: &str, file: &Path) -> Result<PathBuf> {
        let dest = self.path(key, ext);
        let dir = dest.parent().context("cache path has no parent")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!(".{key}.{ext}.tmp.{}", std::process::id()));
        if std::fs::rename(file, &tmp).is_err() {
            std::fs::copy(file, &tmp)
                .with_context(|| format!("copying {} into the cache", file.display()))?;
        }
        let sha = sha256_file(&tmp)?;
        crate::util::write_atomic(&sidecar(&dest), sha.as_bytes())?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("storing {}", dest.display()))?;
        Ok(dest)
    }
}
