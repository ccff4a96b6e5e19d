//! The native backend: the same `graph::Graph` the ONNX export serialises, written directly as
//! TPU-MLIR Top-dialect MLIR plus its weight `.npz`, and compiled by calling `tpuc-opt` with the
//! pass pipeline model_transform.py + model_deploy.py run — no Python process.
//!
//! - `emit`: Graph → the origin MLIR text (the ops TPU-MLIR's ONNX front end would create).
//! - `origin`: writing that text and its weight archive (bf16 tables, archives shared by a
//!   layer's pieces).
//! - `npz`: the uncompressed weight archive tpuc-opt reads.
//! - `passes`: the tpuc-opt pass lists of each model_deploy flag set, and running them.
//! - `compile_once`: identically shaped layers compiled once, the others patched in.

pub mod compile_once;
mod direct_coeff;
mod direct_w4;
pub mod emit;
mod emit_ops;
mod emit_prep;
mod emit_slice;
mod emit_text;
mod emit_weights;
mod merged;
mod mlir_float;
pub mod npz;
pub mod origin;
pub mod passes;
pub mod runner;
pub mod shared_npz;

pub use runner::NativeRunner;

/// Part of every native piece's cache key: bump it whenever the emitter or the pass lists
/// change what they produce (the ONNX backend's equivalent is the worker script's bytes).
pub const KEY_VERSION: &str = "1";
