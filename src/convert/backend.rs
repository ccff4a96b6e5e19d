//! Which compiler front end a conversion uses: the native one (Top MLIR written from our graph,
//! tpuc-opt called directly, no Python) or TPU-MLIR's own tools on an ONNX export.

use std::path::{Path, PathBuf};

use crate::arch::Piece;

/// `--backend`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Top MLIR + weights written directly; tpuc-opt runs the passes model_transform.py and
    /// model_deploy.py would run. Needs no Python.
    #[default]
    Native,
    /// ONNX export, then model_transform.py + model_deploy.py in a Python worker.
    Onnx,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Native => "native",
            Backend::Onnx => "onnx",
        }
    }

    /// The conversion folder's subdirectory the export writes into.
    pub fn export_dir(self) -> &'static str {
        match self {
            Backend::Native => "top",
            Backend::Onnx => "onnx",
        }
    }

    /// Where the export writes a piece's file in `dir`.
    pub fn export_path(self, dir: &Path, piece: Piece) -> PathBuf {
        match self {
            Backend::Native => crate::export::native_export_path(dir, piece),
            Backend::Onnx => dir.join(format!("{}.onnx", piece.file_stem())),
        }
    }
}
