//! `manifest.json`: what was built, from what, with which flags and tools, and how long it took.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use super::options::ConvertOptions;
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
    pub transform_s: Option<f64>,
    pub deploy_s: Option<f64>,
    pub deploy_argv: Vec<String>,
    pub bmodel: Option<PathBuf>,
    pub bmodel_bytes: Option<u64>,
    pub bmodel_sha256: Option<String>,
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
    pub config_files: Vec<String>,
    pub pieces: Vec<PieceRecord>,
    pub timings: Timings,
}

impl Manifest {
    pub fn new(
        opts: &ConvertOptions,
        model: &Model,
        (bmodel, hashed_from): (&Path, &Path),
        bmodel_bytes: u64,
        pieces: Vec<PieceRecord>,
        config_files: Vec<String>,
        timings: Timings,
    ) -> Result<Manifest> {
        // The bytes are hashed where they are staged; `bmodel` is where they will be.
        let (sha, masked) = super::combine::sha256_both(hashed_from)?;
        Ok(Manifest {
            tool: format!("llm-convert {}", env!("CARGO_PKG_VERSION")),
            tpu_mlir_version: crate::toolchain::TPU_MLIR_VERSION.into(),
            model: model.source.clone(),
            family: model.config.family.name().into(),
            options: opts.clone(),
            bmodel: bmodel.to_path_buf(),
            bmodel_bytes,
            bmodel_sha256: sha,
            bmodel_sha256_without_create_time: masked,
            config_files,
            pieces,
            timings,
        })
    }
}
