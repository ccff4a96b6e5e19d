//! torch's `F.interpolate(mode="bicubic", align_corners=False)` on a square grid, as one
//! matrix: what InternViT does to its position embedding for tiles of another size.

use anyhow::Result;
use candle_core::{Device, Tensor};

/// torch's cubic convolution coefficient A.
const A: f32 = -0.75;

/// Weights of the 4 source samples `floor(s)-1 ..= floor(s)+2` for source coordinate `s`.
fn taps(t: f32) -> [f32; 4] {
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// `[to, from]`: row i holds the weights of output sample i over the `from` inputs (indices
/// outside the grid clamp to its edge, as torch).
fn axis(from: usize, to: usize) -> Vec<f32> {
    let scale = from as f32 / to as f32;
    let mut m = vec![0.0; to * from];
    for i in 0..to {
        // No clamping of the source coordinate for cubic (torch's area_pixel_compute_source_index).
        let s = (i as f32 + 0.5) * scale - 0.5;
        let base = s.floor();
        for (k, w) in taps(s - base).into_iter().enumerate() {
            let j = (base as i64 - 1 + k as i64).clamp(0, from as i64 - 1) as usize;
            m[i * from + j] += w;
        }
    }
    m
}

/// Resamples `grid` `[from·from, dim]` (row-major positions) to `[to·to, dim]`.
pub fn resize_square(grid: &Tensor, from: usize, to: usize) -> Result<Tensor> {
    let a = axis(from, to);
    let mut m = vec![0.0f32; to * to * from * from];
    for (r, c) in (0..to).flat_map(|r| (0..to).map(move |c| (r, c))) {
        let row = &mut m[(r * to + c) * from * from..][..from * from];
        for y in 0..from {
            for x in 0..from {
                row[y * from + x] = a[r * from + y] * a[c * from + x];
            }
        }
    }
    let m = Tensor::from_vec(m, (to * to, from * from), &Device::Cpu)?;
    Ok(m.matmul(grid)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_the_identity_and_weights_sum_to_one() {
        let a = axis(4, 4);
        for i in 0..4 {
            for j in 0..4 {
                assert!((a[i * 4 + j] - f32::from(i == j)).abs() < 1e-6);
            }
        }
        let b = axis(8, 10);
        for i in 0..10 {
            assert!((b[i * 8..(i + 1) * 8].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }
}
