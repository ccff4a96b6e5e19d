//! `export-onnx`: every piece of a model as one ONNX file, one piece at a time (weights are
//! read from the mmapped checkpoint while each file is written, then dropped).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::arch::{self, Piece, PieceOptions};
use crate::model::Model;

pub struct Exported {
    pub piece: Piece,
    pub path: PathBuf,
    pub weight_bytes: u64,
    pub seconds: f64,
}

/// Writes `<out_dir>/<piece>.onnx` for every piece; returns what was written.
pub fn export_onnx(
    model: &Model,
    opts: &PieceOptions,
    out_dir: &Path,
    quiet: bool,
) -> Result<Vec<Exported>> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let pieces = arch::pieces(&model.config);
    let total = pieces.len();
    let mut done = Vec::with_capacity(total);
    for (n, piece) in pieces.into_iter().enumerate() {
        let t0 = Instant::now();
        let graph = arch::build(piece, &model.config, opts);
        let path = out_dir.join(format!("{}.onnx", piece.name()));
        let weight_bytes = crate::onnx::write(&graph, model.weights.as_ref(), &path)
            .with_context(|| format!("exporting piece {}", piece.name()))?;
        let seconds = t0.elapsed().as_secs_f64();
        if !quiet {
            eprintln!(
                "[{}/{}] {} ({:.1} MB of weights, {:.2} s)",
                n + 1,
                arch::pieces(&model.config).len(),
                path.display(),
                weight_bytes as f64 / 1e6,
                seconds
            );
        }
        done.push(Exported {
            piece,
            path,
            weight_bytes,
            seconds,
        });
    }
    Ok(done)
}
