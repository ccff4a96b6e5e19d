//! The converter's weights (`BaseConverter.tensors`): every initializer and the ones it
//! derives, always f32; their values are read (checkpoint tensors) or computed (slices) only
//! when the npz is written or a value check needs them.

use std::borrow::Cow;

use anyhow::{bail, Result};

use crate::graph::{Graph, InitData};
use crate::model::WeightSource;

/// A converter weight (`BaseConverter.tensors`): an initializer or one the converter derived
/// (a constant Concat / Slice), always f32, scalars as `[1]`.
pub struct Tensor {
    pub name: String,
    pub dims: Vec<usize>,
    /// The rank the ONNX initializer had (0 for a scalar, whose dims here are `[1]`).
    pub onnx_rank: usize,
    /// An ONNX initializer (what `find_named_tensor` finds), not a derived weight.
    pub initializer: bool,
    pub data: TensorData,
}

pub enum TensorData {
    /// `graph.initializers[i]`.
    Init(usize),
    Derived(Vec<f32>),
    /// `tensors[source]` sliced: (axis, start, end, step) after each other.
    SliceOf {
        source: usize,
        ranges: Vec<(usize, i64, i64, i64)>,
    },
}

/// The f32 values of a converter weight, as OnnxConverter's `astype(np.float32)` makes them.
pub fn tensor_values<'g>(
    graph: &'g Graph,
    weights: &dyn WeightSource,
    tensors: &'g [Tensor],
    t: &'g Tensor,
) -> Result<Cow<'g, [f32]>> {
    let init = match &t.data {
        TensorData::Derived(v) => return Ok(Cow::Borrowed(v)),
        TensorData::SliceOf { source, ranges } => {
            let src = &tensors[*source];
            let values = tensor_values(graph, weights, tensors, src)?;
            let (_, v) = super::emit_slice::apply_slice(&src.dims, &values, ranges);
            return Ok(Cow::Owned(v));
        }
        TensorData::Init(i) => &graph.initializers[*i],
    };
    Ok(match &init.data {
        InitData::F32(v) => Cow::Borrowed(v),
        InitData::I64(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
        InitData::Weight { name, transpose } => {
            Cow::Owned(checkpoint_values(weights, name, *transpose, &init.dims)?)
        }
    })
}

/// A checkpoint tensor as the graph stores it (2-D weights `[out, in]` transposed to
/// `[in, out]`, conv kernels flattened first), as `onnx::write` writes it.
fn checkpoint_values(
    weights: &dyn WeightSource,
    name: &str,
    transpose: bool,
    dims: &[usize],
) -> Result<Vec<f32>> {
    let t = weights.read_f32(name)?;
    let shape = t.dims().to_vec();
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    let v = match (transpose, shape.as_slice()) {
        (true, &[rows, cols]) => transpose_2d(&v, rows, cols),
        (true, &[rows, ref rest @ ..]) if rest.len() > 1 => {
            transpose_2d(&v, rows, rest.iter().product())
        }
        (true, other) => bail!("{name}: cannot transpose a {other:?} tensor"),
        (false, _) => v,
    };
    let want: usize = dims.iter().product();
    anyhow::ensure!(
        v.len() == want,
        "{name}: {} values, the graph expects {dims:?}",
        v.len()
    );
    Ok(v)
}

/// `[rows, cols]` → `[cols, rows]`, in cache-sized tiles.
fn transpose_2d(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0f32; src.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let row = &src[r * cols..(r + 1) * cols];
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = row[c];
                }
            }
        }
    }
    out
}
