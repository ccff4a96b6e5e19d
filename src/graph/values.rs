//! A graph's checkpoint weights as both serialisers (ONNX, native npz) store them: f32, 2-D
//! weights `[out, in]` transposed to `[in, out]` when the graph asks (`MatMul(x, W)` computes
//! `x Wᵀ`), conv kernels flattened first.

use anyhow::{bail, Result};

use crate::model::WeightSource;

/// The f32 values of checkpoint tensor `name` as a graph initializer of `dims` holds them.
pub fn checkpoint_values(
    weights: &dyn WeightSource,
    name: &str,
    transpose: bool,
    dims: &[usize],
) -> Result<Vec<f32>> {
    let t = weights.read_f32(name)?;
    let shape = t.dims().to_vec();
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    let v = match (transpose, shape.as_slice()) {
        (true, &[rows, cols]) => crate::util::transpose(&v, rows, cols),
        // A conv kernel used as a matmul (the vision patch embedding): [out, in...].
        (true, &[rows, ref rest @ ..]) if rest.len() > 1 => {
            crate::util::transpose(&v, rows, rest.iter().product())
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
