//! Whether the output folder already holds the bmodel this run would combine: the manifest of
//! the finished run that wrote it names the same tool and TPU-MLIR versions, the same flags
//! and the same pieces (cache keys and bytes, in combine order), and the bmodel and model.log
//! are the files it wrote (the bmodel by its [`FileStamp`], model.log by its sha256). Then the
//! run skips `model_tool --combine` and `--info`: they would write the same bytes, create time
//! aside. Anything else (an old manifest without a stamp, an edited, truncated, replaced or
//! missing output) combines again.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::manifest::{BmodelFacts, PieceRecord};
use super::options::ConvertOptions;
use crate::file_stamp::FileStamp;

/// Flags that change how a run works, not what it writes.
const RUN_ONLY: [&str; 3] = ["jobs", "debug", "cache_dir"];

/// What this module reads of an earlier `manifest.json`.
#[derive(Deserialize)]
struct Previous {
    tool: String,
    tpu_mlir_version: String,
    options: serde_json::Value,
    bmodel: PathBuf,
    bmodel_bytes: u64,
    bmodel_sha256: String,
    bmodel_sha256_without_create_time: String,
    #[serde(default)]
    bmodel_file: Option<FileStamp>,
    #[serde(default)]
    model_log_sha256: Option<String>,
    pieces: Vec<PreviousPiece>,
}

#[derive(Deserialize, PartialEq)]
struct PreviousPiece {
    name: String,
    cache_key: String,
    bmodel_sha256: Option<String>,
}

/// The published outputs a run found current.
pub struct Current {
    pub bmodel: BmodelFacts,
    pub model_log_sha256: String,
}

/// [`Current`] if the outputs in `out_dir` are what combining `pieces` for `opts` into
/// `bmodel` would write; `None` if anything differs or cannot be read.
pub fn check(
    out_dir: &Path,
    opts: &ConvertOptions,
    pieces: &[PieceRecord],
    bmodel: &Path,
) -> Option<Current> {
    let text = std::fs::read(out_dir.join("manifest.json")).ok()?;
    let prev: Previous = serde_json::from_slice(&text).ok()?;
    let same_pieces = prev.pieces.len() == pieces.len()
        && prev.pieces.iter().zip(pieces).all(|(p, r)| {
            p.name == r.name && p.cache_key == r.cache_key && p.bmodel_sha256 == r.bmodel_sha256
        });
    let same_run = prev.tool == super::manifest::tool()
        && prev.tpu_mlir_version == crate::toolchain::TPU_MLIR_VERSION
        && output_flags(prev.options) == output_flags(serde_json::to_value(opts).ok()?)
        && prev.bmodel == bmodel
        && same_pieces;
    if !same_run {
        return None;
    }
    let file = FileStamp::of(bmodel).ok()?;
    if prev.bmodel_file != Some(file) || file.size != prev.bmodel_bytes {
        return None;
    }
    let log = crate::util::sha256_file(&out_dir.join("model.log")).ok()?;
    if prev.model_log_sha256.as_ref() != Some(&log) {
        return None;
    }
    Some(Current {
        bmodel: BmodelFacts {
            bytes: prev.bmodel_bytes,
            sha256: prev.bmodel_sha256,
            sha256_without_create_time: prev.bmodel_sha256_without_create_time,
        },
        model_log_sha256: log,
    })
}

/// The options with the run-only ones left out.
fn output_flags(mut options: serde_json::Value) -> serde_json::Value {
    if let Some(map) = options.as_object_mut() {
        for key in RUN_ONLY {
            map.remove(key);
        }
    }
    options
}
