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
        (true, &[rows, cols]) => transpose_2d(&v, rows, cols),
        // A conv kernel used as a matmul (the vision patch embedding): [out, in...].
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

/// `[rows, cols]` → `[cols, rows]`, in cache-sized tiles (candle's strided copy was 44% of an
/// export's time).
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

#[cfg(test)]
mod tests {
    #[test]
    fn transpose_2d_matches_the_definition() {
        let (rows, cols) = (37, 70);
        let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let t = super::transpose_2d(&src, rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(t[c * rows + r], src[r * cols + c]);
            }
        }
    }
}
