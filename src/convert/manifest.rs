//! `manifest.json`: what was built, from what, with which flags and tools, and how long it took.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::options::ConvertOptions;
use crate::file_stamp::FileStamp;
use crate::model::Model;

#[derive(Debug, Serialize)]
pub struct PieceRecord {
    pub name: String,
    pub kind: String,
    pub cache_key: String,
    /// Reused from the cache (no tool ran for it in this run).
    pub cached: bool,
    /// Exported by this run (a piece found in the cache is not).
    pub exported: bool,
    /// When its export finished, seconds after the compile stage began.
    pub exported_s: Option<f64>,
    /// Exported with its weight archive a hard link of another piece's that holds them all (a
    /// layer's pieces read the same tensors; see `native::shared_npz`).
    pub weights_linked: bool,
    pub transform_s: Option<f64>,
    pub deploy_s: Option<f64>,
    /// When a worker started and finished it, seconds after the compile stage began (with
    /// `timings`, where a run's wall time went).
    pub started_s: Option<f64>,
    pub finished_s: Option<f64>,
    pub deploy_argv: Vec<String>,
    pub bmodel: Option<PathBuf>,
    pub bmodel_bytes: Option<u64>,
    pub bmodel_sha256: Option<String>,
    /// `--compile-once`: the layer whose bmodel this one's weights were patched into (absent:
    /// compiled fully, or taken from the cache).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patched_from: Option<String>,
    /// How a patched piece's coefficients were made: `rust` (from its Top weights, by a
    /// recipe its template's bytes confirmed) or `tpuc-opt` (the coefficient call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patched_coefficients: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Timings {
    pub export_s: f64,
    pub compile_s: f64,
    pub combine_s: f64,
    pub total_s: f64,
    pub workers: usize,
}

#[derive(Debug, Serialize)]
pub struct Manifest {
    pub tool: String,
    pub tpu_mlir_version: String,
    pub model: PathBuf,
    pub family: String,
    pub options: ConvertOptions,
    pub bmodel: PathBuf,
    pub bmodel_bytes: u64,
    pub bmodel_sha256: String,
    /// sha256 with TPU-MLIR's `create time` header string zeroed: equal across rebuilds.
    pub bmodel_sha256_without_create_time: String,
    /// The bmodel file's identity once published (`None`: it could not be taken, e.g. a
    /// filesystem keeping whole seconds). A rerun with equal pieces and flags leaves the
    /// bmodel alone only while the file still has it (see `up_to_date`).
    pub bmodel_file: Option<FileStamp>,
    pub model_log_sha256: String,
    /// This run found the bmodel and model.log already current (same pieces, flags and
    /// tools, files unchanged) and ran no model_tool: it wrote config/ and this manifest only.
    pub up_to_date: bool,
    pub config_files: Vec<String>,
    /// How each GGUF block linear was kept, when the conversion kept the file's quantization.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub gguf_linears: BTreeMap<String, crate::model::gguf_linear::LinearFormat>,
    pub pieces: Vec<PieceRecord>,
    pub timings: Timings,
}

/// Size and hashes of a combined bmodel.
#[derive(Debug, Clone)]
pub struct BmodelFacts {
    pub bytes: u64,
    pub sha256: String,
    pub sha256_without_create_time: String,
}

/// What a manifest's outputs are.
pub struct Outputs {
    pub bmodel: PathBuf,
    pub facts: BmodelFacts,
    pub bmodel_file: Option<FileStamp>,
    pub model_log_sha256: String,
    pub up_to_date: bool,
    pub config_files: Vec<String>,
}

/// The `tool` a manifest names.
pub fn tool() -> String {
    format!("llm-convert {}", env!("CARGO_PKG_VERSION"))
}

impl Manifest {
    pub fn new(
        opts: &ConvertOptions,
        model: &Model,
        outputs: Outputs,
        pieces: Vec<PieceRecord>,
        timings: Timings,
    ) -> Manifest {
        Manifest {
            tool: tool(),
            tpu_mlir_version: crate::toolchain::TPU_MLIR_VERSION.into(),
            model: model.source.clone(),
            family: model.config.family.name().into(),
            options: opts.clone(),
            bmodel: outputs.bmodel,
            bmodel_bytes: outputs.facts.bytes,
            bmodel_sha256: outputs.facts.sha256,
            bmodel_sha256_without_create_time: outputs.facts.sha256_without_create_time,
            bmodel_file: outputs.bmodel_file,
            model_log_sha256: outputs.model_log_sha256,
            up_to_date: outputs.up_to_date,
            config_files: outputs.config_files,
            gguf_linears: match opts.gguf_own_quant {
                true => model.config.gguf_linears.clone(),
                false => BTreeMap::new(),
            },
            pieces,
            timings,
        }
    }
}
