//! Stored tensors' fingerprints kept across runs, per checkpoint, in the piece cache: an
//! unchanged rerun hashes no tensor (most of its time otherwise).
//!
//! They are taken over while every checkpoint file still has the stamp it had when the run
//! that computed them opened it, as the cache trusts its own files' stamps (see
//! [`crate::file_stamp`] for why that is safe). A run keeps what it computed only if no file
//! changed meanwhile: the one it opened is still at its path, with the same stamp, settled
//! before any tensor was hashed, so any later write changes the stamp.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::fingerprint::Fingerprint;
use super::weights::WeightSource;
use crate::file_stamp::FileStamp;

/// Bumped whenever what a stored name's fingerprint stands for changes.
const FORMAT: &str = "llm-convert stored fingerprints 1";

#[derive(Serialize, Deserialize)]
struct Kept {
    format: String,
    files: Vec<(PathBuf, FileStamp)>,
    /// Hex sha256 by stored tensor name.
    fingerprints: BTreeMap<String, String>,
}

/// Where a checkpoint's fingerprints are kept, and how many the run started with.
pub struct Recalled {
    path: PathBuf,
    files: Vec<(PathBuf, FileStamp)>,
    taken_over: usize,
}

/// Seeds `weights`' memo with the fingerprints an earlier run kept in `cache_root` for the
/// same files, unchanged. None where they cannot be kept: a source without stored files, a
/// file changed or replaced since it was opened, or one whose times have not settled.
pub fn recall(weights: &dyn WeightSource, cache_root: &Path) -> Option<Recalled> {
    let stored = weights.stored_fingerprints()?;
    let now = SystemTime::now();
    let unchanged = stored.files.iter().all(|(path, opened)| {
        FileStamp::of(path).is_ok_and(|s| s == *opened) && opened.settled_at(now)
    });
    if !unchanged || stored.files.is_empty() {
        return None;
    }
    let mut id = Sha256::new();
    id.update(FORMAT);
    for (path, _) in stored.files {
        id.update(
            std::path::absolute(path)
                .ok()?
                .as_os_str()
                .as_encoded_bytes(),
        );
        id.update([0]);
    }
    let path = cache_root
        .join("fingerprints")
        .join(format!("{}.json", crate::util::hex(&id.finalize())));
    let known = read(&path, stored.files).unwrap_or_default();
    let taken_over = known.len();
    stored.memo.seed(known);
    Some(Recalled {
        path,
        files: stored.files.to_vec(),
        taken_over,
    })
}

/// The kept fingerprints at `path` if they were kept for exactly `files` as stamped now.
fn read(path: &Path, files: &[(PathBuf, FileStamp)]) -> Option<HashMap<String, Fingerprint>> {
    let kept: Kept = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    if kept.format != FORMAT || kept.files != files {
        return None;
    }
    kept.fingerprints
        .into_iter()
        .map(|(name, hex)| Some((name, from_hex(&hex)?)))
        .collect()
}

impl Recalled {
    /// Keeps every fingerprint `weights` now remembers, if it computed any and no checkpoint
    /// file changed during the run.
    pub fn keep(&self, weights: &dyn WeightSource) -> Result<()> {
        let Some(stored) = weights.stored_fingerprints() else {
            return Ok(());
        };
        let all = stored.memo.snapshot();
        let unchanged = self
            .files
            .iter()
            .all(|(path, was)| FileStamp::of(path).is_ok_and(|s| s == *was));
        if all.len() == self.taken_over || !unchanged {
            return Ok(());
        }
        let kept = Kept {
            format: FORMAT.into(),
            files: self.files.clone(),
            fingerprints: all
                .iter()
                .map(|(n, fp)| (n.clone(), crate::util::hex(fp)))
                .collect(),
        };
        let dir = self.path.parent().context("no folder")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::util::write_atomic_unsynced(&self.path, &serde_json::to_vec(&kept)?)
    }
}

fn from_hex(hex: &str) -> Option<Fingerprint> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::safetensors::SafetensorsWeights;

    fn write_checkpoint(path: &Path, first: u8) {
        let data: Vec<u8> = (0..64u8).map(|i| i.wrapping_add(first)).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4, 4], &data)
            .unwrap();
        safetensors::serialize_to_file([("w", view)], None, path).unwrap();
        // Settled: a stamp is only trusted once the file's times are old enough.
        std::thread::sleep(crate::file_stamp::SETTLE * 2);
    }

    /// A folder with a settled checkpoint `m.safetensors` and where its cache goes.
    fn fixture() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (file, cache) = (dir.path().join("m.safetensors"), dir.path().join("cache"));
        write_checkpoint(&file, 0);
        (dir, file, cache)
    }

    fn open(file: &Path) -> SafetensorsWeights {
        SafetensorsWeights::open_files(std::slice::from_ref(&file.to_path_buf())).unwrap()
    }

    #[test]
    fn a_rerun_takes_them_over_until_a_byte_changes() {
        let (_dir, file, cache) = fixture();
        let first = open(&file);
        let recalled = recall(&first, &cache).expect("a settled file");
        let memo = |w: &SafetensorsWeights| w.stored_fingerprints().unwrap().memo.snapshot();
        assert!(memo(&first).is_empty(), "nothing kept yet");
        let fp = first.fingerprint("w").unwrap();
        recalled.keep(&first).unwrap();

        let again = open(&file);
        recall(&again, &cache).unwrap();
        assert_eq!(
            memo(&again).get("w"),
            Some(&fp),
            "taken over before any hashing"
        );

        // Rewritten with other bytes: nothing is taken over, and the hash sees the change.
        write_checkpoint(&file, 1);
        let changed = open(&file);
        recall(&changed, &cache).unwrap();
        assert!(memo(&changed).is_empty());
        assert_ne!(changed.fingerprint("w").unwrap(), fp);
    }

    #[test]
    fn a_file_replaced_after_opening_keeps_nothing() {
        let (_dir, file, cache) = fixture();
        let opened = open(&file);
        std::fs::remove_file(&file).unwrap();
        write_checkpoint(&file, 1);
        assert!(recall(&opened, &cache).is_none());
    }

    #[test]
    fn hex_round_trips() {
        let fp: Fingerprint = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(from_hex(&crate::util::hex(&fp)), Some(fp));
        assert_eq!(from_hex("00"), None);
        assert_eq!(from_hex(&"zz".repeat(32)), None);
    }
}
