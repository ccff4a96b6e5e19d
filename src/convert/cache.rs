//! Content-addressed store of compiled pieces. A piece's key covers everything that decides its
//! bmodel: what its exported file is made of (the graph and the stored bytes of the tensors it
//! reads, see `graph_key`: nothing is exported to compute it), the tool command lines, the
//! chip (inside the flags), the quantize table, the TPU-MLIR version and our worker script. A
//! stored piece is never recompiled, unless its bytes no longer match the sha256 recorded when
//! it was stored: a corrupt or truncated entry is compiled again, never combined.
//!
//! Checking that reads every entry a run uses, so a run that hashed (or stored) an entry
//! leaves a `.stamp` beside it: the sha256 with the file's [`FileStamp`]. A later run takes
//! the entry as checked while its stamp is unchanged (a write, truncation or replacement
//! changes it) and hashes it again otherwise.
//!
//! Entries are published with a rename (the sidecar first, then the artifact), so runs sharing
//! one cache at once never see half an entry; builds are reproducible, so two runs storing the
//! same key store the same bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use std::time::SystemTime;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::file_stamp::FileStamp;
use crate::model::fingerprint::{Fingerprint, StableHasher};

/// Bump when the way pieces are produced changes in a way the key does not capture (v3: keys
/// from the graph and the stored tensor bytes instead of the ONNX file).
const FORMAT: &str = "llm-convert piece cache v3";

pub struct PieceCache {
    root: PathBuf,
    /// Artifacts whose bytes this run checked (or stored).
    verified: Mutex<HashMap<PathBuf, Verified>>,
}

struct Verified {
    sha256: String,
    /// The file's stamp when this run hashed or stored it, to record for later runs (`None`:
    /// trusted from the stamp already recorded, or not stampable).
    to_record: Option<FileStamp>,
}

/// A `.stamp` file: these bytes hashed to `sha256` while the file had stamp `file`.
#[derive(Serialize, Deserialize)]
struct StampRecord {
    sha256: String,
    file: FileStamp,
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

/// `<artifact><suffix>`.
fn beside(artifact: &Path, suffix: &str) -> PathBuf {
    let mut name = artifact.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// The sha256 recorded when the artifact was stored.
fn sidecar(artifact: &Path) -> PathBuf {
    beside(artifact, ".sha256")
}

fn stamp_file(artifact: &Path) -> PathBuf {
    beside(artifact, ".stamp")
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
    /// was recorded when it was stored (checked once per run; not read again while the stamp a
    /// run recorded after hashing it is unchanged).
    pub fn get(&self, key: &str, ext: &str) -> Option<PathBuf> {
        let p = self.path(key, ext);
        if self.is_verified(&p) {
            return Some(p);
        }
        if !p.is_file() {
            return None;
        }
        let recorded = std::fs::read_to_string(sidecar(&p)).ok();
        let recorded = recorded.as_deref().map(str::trim);
        if let Some(want) = recorded.filter(|want| unchanged_since_hashed(&p, want)) {
            self.remember(&p, want.to_string(), None);
            return Some(p);
        }
        let started = SystemTime::now();
        let before = FileStamp::of(&p).ok();
        let actual = crate::util::sha256_file(&p).ok();
        match (recorded, actual) {
            (Some(want), Some(got)) if want == got => {
                // A stamp for later runs, if no write during the hashing can have gone unseen.
                let after = FileStamp::of(&p).ok();
                let stamp = before.filter(|b| Some(*b) == after && b.settled_at(started));
                self.remember(&p, got, stamp);
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

    fn remember(&self, p: &Path, sha256: String, to_record: Option<FileStamp>) {
        if let Ok(mut map) = self.verified.lock() {
            map.insert(p.to_path_buf(), Verified { sha256, to_record });
        }
    }

    /// sha256 of a stored artifact (checked or stored by this run, else hashed now).
    pub fn sha256(&self, artifact: &Path) -> Result<String> {
        if let Some(sha) = self
            .verified
            .lock()
            .ok()
            .and_then(|m| m.get(artifact).map(|v| v.sha256.clone()))
        {
            return Ok(sha);
        }
        crate::util::sha256_file(artifact)
    }

    /// Leaves a `.stamp` beside every entry this run hashed or stored and nobody changed since,
    /// waiting (at most `file_stamp::SETTLE`, once) for the newest to settle. Best effort: an
    /// entry without a stamp is only hashed again.
    pub fn record_stamps(&self) {
        let Ok(mut map) = self.verified.lock() else {
            return;
        };
        let now = SystemTime::now();
        let wait = map
            .values()
            .filter_map(|v| v.to_record?.settles_in(now))
            .max()
            .unwrap_or_default();
        std::thread::sleep(wait);
        let now = SystemTime::now();
        for (path, v) in map.iter_mut() {
            let Some(stamp) = v.to_record.take() else {
                continue;
            };
            if FileStamp::of(path).ok() != Some(stamp) || !stamp.settled_at(now) {
                continue;
            }
            let record = StampRecord {
                sha256: v.sha256.clone(),
                file: stamp,
            };
            if let Ok(json) = serde_json::to_vec(&record) {
                let _ = crate::util::write_atomic_unsynced(&stamp_file(path), &json);
            }
        }
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
                // The rename moved the ctime: the stamp is the file's from here on.
                self.remember(&dest, sha, FileStamp::of(&dest).ok());
                Ok(dest)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(with_space_hint(e, &self.root))
            }
        }
    }
}

/// Whether `artifact` still has the stamp a run recorded after its bytes hashed to `sha256`.
fn unchanged_since_hashed(artifact: &Path, sha256: &str) -> bool {
    let Ok(text) = std::fs::read(stamp_file(artifact)) else {
        return false;
    };
    serde_json::from_slice::<StampRecord>(&text)
        .is_ok_and(|r| r.sha256 == sha256 && FileStamp::of(artifact).is_ok_and(|now| now == r.file))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A stamped entry is taken as checked by a later run; changed, it is hashed and refused
    /// (the stamp no longer matches), even with its mtime put back.
    #[test]
    fn a_stamp_stands_only_while_the_entry_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let key = "ab".repeat(32);
        let stored = {
            let cache = PieceCache::open(dir.path()).unwrap();
            let file = dir.path().join("piece.bmodel");
            std::fs::write(&file, vec![5u8; 4096]).unwrap();
            let stored = cache.put(&key, "bmodel", &file).unwrap();
            cache.record_stamps();
            stored
        };
        let stamp: StampRecord =
            serde_json::from_slice(&std::fs::read(stamp_file(&stored)).unwrap()).unwrap();
        assert_eq!(stamp.sha256, crate::util::sha256_file(&stored).unwrap());
        assert_eq!(stamp.file, FileStamp::of(&stored).unwrap());
        let later = PieceCache::open(dir.path()).unwrap();
        assert_eq!(later.get(&key, "bmodel"), Some(stored.clone()));

        let mtime = std::fs::metadata(&stored).unwrap().modified().unwrap();
        let mut bytes = std::fs::read(&stored).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&stored, &bytes).unwrap();
        let f = std::fs::File::options().write(true).open(&stored).unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        assert_eq!(
            PieceCache::open(dir.path()).unwrap().get(&key, "bmodel"),
            None
        );
    }
}
