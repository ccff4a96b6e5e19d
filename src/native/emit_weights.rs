//! The converter's weights (`BaseConverter.tensors`): every initializer and the ones it
//! derives, always f32; their values are read (checkpoint tensors) or computed (slices) only
//! when the npz is written or a value check needs them.

use std::borrow::Cow;

use anyhow::Result;

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

impl Tensor {
    /// Stored as uint8 in the npz (`tensor<…xui8>`): A16MatMul's packed integers.
    pub fn uint8(&self, graph: &Graph) -> bool {
        matches!(self.data, TensorData::Init(i) if graph.initializers[i].uint8)
    }
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
        InitData::Weight { name, transpose } => Cow::Owned(crate::graph::checkpoint_values(
            weights, name, *transpose, &init.dims,
        )?),
    })
}
