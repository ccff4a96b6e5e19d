//! `export-onnx`: every piece of a model as one ONNX file, one piece at a time (weights are
//! read from the mmapped checkpoint while each file is written, then dropped).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::arch::{self, Piece, PieceOptions};
use crate::convert::options::PieceArgs;
use crate::model::{BundledModels, Model};
use crate::native::origin::Share;
use crate::native::shared_npz::SharedArchives;

/// `export-onnx`: the piece flags mean what they mean to convert (the same builder as
/// `convert --only_onnx`).
#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// Hugging Face model folder, .gguf file, or bundled model folder (models/...).
    #[arg(short = 'm', long = "model_path", alias = "model")]
    pub model: PathBuf,
    /// KV cache length (SEQLEN).
    #[arg(short = 's', long = "seq_length")]
    pub seq_length: usize,
    #[command(flatten)]
    pub pieces: PieceArgs,
    /// Output folder; the ONNX files go to <out_dir>/onnx.
    #[arg(short = 'o', long = "out_dir")]
    pub out_dir: PathBuf,
}

impl ExportArgs {
    pub fn run(&self, installed: &BundledModels) -> Result<()> {
        let mut model = Model::open_with(&self.model, Some(installed))?;
        if let Some(q) = &model.config.quant {
            return Err(crate::error::InputError::invalid(
                self.model.join("config.json"),
                format!(
                    "a pre-quantized ({}) checkpoint's linears are TPU-MLIR A16MatMul ops, which ONNX cannot express",
                    q.method
                ),
                "convert it with the native backend (llm-convert -m MODEL ...) instead of export-onnx",
            )
            .into());
        }
        if self.pieces.allow_non_finite {
            model.allow_non_finite();
        }
        let shape = self.pieces.resolve(self.seq_length, &self.model)?;
        crate::convert::max_pixels::check(&model.config, &shape, &self.model)?;
        let opts = shape.piece_options()?;
        crate::convert::options::check_output_dir(&self.out_dir)?;
        let t0 = Instant::now();
        let done = export_onnx(&model, &opts, &self.out_dir.join("onnx"), false)?;
        let bytes: u64 = done.iter().map(|d| d.weight_bytes).sum();
        eprintln!(
            "{} pieces, {:.1} MB of weights in {:.1} s",
            done.len(),
            bytes as f64 / 1e6,
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

pub struct Exported {
    pub piece: Piece,
    pub path: PathBuf,
    pub weight_bytes: u64,
    /// The native export's weight archive is a hard link of a sibling piece's (see
    /// `native::shared_npz`).
    pub weights_linked: bool,
    pub seconds: f64,
    /// Graph output names, in order.
    pub outputs: Vec<String>,
    /// For a graph with per-call axes: every input's largest shape (model_transform.py needs
    /// them as `--input_shapes`).
    pub dynamic_input_shapes: Option<Vec<Vec<usize>>>,
    /// `<piece>.qtable` next to the ONNX file when some ops must stay f32
    /// (`model_deploy.py --quantize_table`).
    pub quantize_table: Option<PathBuf>,
}

/// Writes `<out_dir>/<piece>.onnx` for every piece; returns what was written.
pub fn export_onnx(
    model: &Model,
    opts: &PieceOptions,
    out_dir: &Path,
    quiet: bool,
) -> Result<Vec<Exported>> {
    let pieces = arch::pieces(&model.config, opts);
    let total = pieces.len();
    let mut done: Vec<Exported> = Vec::with_capacity(total);
    for (n, piece) in pieces.into_iter().enumerate() {
        let e = match export_piece(model, piece, opts, out_dir) {
            Ok(e) => e,
            Err(err) => {
                // A half set of pieces is no export: leave none of this run's files behind.
                for e in &done {
                    e.remove_files();
                }
                return Err(err);
            }
        };
        if !quiet {
            eprintln!(
                "[{}/{}] {} ({:.1} MB of weights, {:.2} s)",
                n + 1,
                total,
                e.path.display(),
                e.weight_bytes as f64 / 1e6,
                e.seconds
            );
        }
        done.push(e);
    }
    Ok(done)
}

impl Exported {
    /// Deletes what the export wrote for this piece.
    fn remove_files(&self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(crate::onnx::external_data_path(&self.path));
        if let Some(q) = &self.quantize_table {
            let _ = std::fs::remove_file(q);
        }
    }
}

/// Writes `<out_dir>/<piece>.onnx`.
pub fn export_piece(
    model: &Model,
    piece: Piece,
    opts: &PieceOptions,
    out_dir: &Path,
) -> Result<Exported> {
    export_with(model, piece, opts, out_dir, |graph| {
        let path = out_dir.join(format!("{}.onnx", piece.file_stem()));
        let bytes = crate::onnx::write(graph, model.weights.as_ref(), &path)?;
        Ok((path, bytes, false))
    })
}

/// Writes the native backend's `<out_dir>/<piece>_origin.mlir` and its weight npz; with
/// `share`, the npz may be (or be offered as) one archive with the `siblings` pieces'.
pub fn export_piece_native(
    model: &Model,
    piece: Piece,
    opts: &PieceOptions,
    out_dir: &Path,
    share: Option<(&SharedArchives, &[Piece])>,
) -> Result<Exported> {
    export_with(model, piece, opts, out_dir, |graph| {
        // A directory per step: a decode stage's module is named like its block_cache_i.
        let dir = out_dir.join(piece.file_stem());
        let share = share.map(|(archives, siblings)| Share {
            archives,
            siblings: siblings
                .iter()
                .map(|&p| arch::build(p, &model.config, opts))
                .collect(),
        });
        let o = crate::native::origin::write_origin(
            graph,
            model.weights.as_ref(),
            &dir,
            share.as_ref(),
        )?;
        anyhow::ensure!(
            o.mlir == native_export_path(out_dir, piece),
            "internal error: {} written, {} planned",
            o.mlir.display(),
            native_export_path(out_dir, piece).display()
        );
        Ok((o.mlir, o.weight_bytes, o.linked))
    })
}

/// `<out_dir>/<piece file stem>/<net name>_origin.mlir`.
pub fn native_export_path(out_dir: &Path, piece: Piece) -> PathBuf {
    crate::native::origin::origin_path(&out_dir.join(piece.file_stem()), &piece.name())
}

/// Builds the piece's graph, has `write` serialise it (returning the file, its weight bytes
/// and whether they are a sibling's), and writes the quantize table next to it.
fn export_with(
    model: &Model,
    piece: Piece,
    opts: &PieceOptions,
    out_dir: &Path,
    write: impl FnOnce(&crate::graph::Graph) -> Result<(PathBuf, u64, bool)>,
) -> Result<Exported> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let t0 = Instant::now();
    let graph = arch::build(piece, &model.config, opts);
    let outputs = graph.outputs.iter().map(|o| o.name.clone()).collect();
    let dynamic_input_shapes = graph
        .is_dynamic()
        .then(|| graph.inputs.iter().map(|i| i.dims.clone()).collect());
    let (path, weight_bytes, weights_linked) =
        write(&graph).with_context(|| format!("exporting piece {}", piece.name()))?;
    let quantize_table = match graph.quantize_table() {
        Some(text) => {
            let q = out_dir.join(format!("{}.qtable", piece.file_stem()));
            crate::util::write_atomic(&q, text.as_bytes())?;
            Some(q)
        }
        None => None,
    };
    Ok(Exported {
        piece,
        path,
        weight_bytes,
        weights_linked,
        seconds: t0.elapsed().as_secs_f64(),
        outputs,
        dynamic_input_shapes,
        quantize_table,
    })
}
