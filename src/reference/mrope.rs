//! Multimodal rotary tables (Qwen2-VL / Qwen2.5-VL): each rotary frequency is turned by one
//! of three position rows (t, h, w), chosen by `mrope_section` (transformers'
//! `apply_multimodal_rotary_pos_emb`, whose section list is doubled over the rotate-half
//! halves).

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};

/// cos and sin tables `[len, 1, head_dim]`: frequency j (and j + head_dim/2) at token l is
/// `positions[row(j)][l] · inv_freq[j]`, with row 0 for the first `section[0]` frequencies,
/// row 1 for the next `section[1]`, row 2 for the rest.
pub fn tables(
    inv_freq: &[f32],
    positions: &[Vec<u32>; 3],
    section: [usize; 3],
) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    ensure!(
        section.iter().sum::<usize>() == half,
        "mrope_section {section:?} does not sum to head_dim/2 = {half}"
    );
    let len = positions[0].len();
    ensure!(
        positions.iter().all(|r| r.len() == len),
        "the three M-RoPE position rows differ in length"
    );
    let row = |j: usize| usize::from(j >= section[0]) + usize::from(j >= section[0] + section[1]);
    let (mut cos, mut sin) = (
        Vec::with_capacity(len * half * 2),
        Vec::with_capacity(len * half * 2),
    );
    let tokens = positions[0].iter().zip(&positions[1]).zip(&positions[2]);
    for ((&t, &h), &w) in tokens {
        let thw = [t, h, w];
        for _ in 0..2 {
            for (j, f) in inv_freq.iter().enumerate() {
                let a = thw[row(j)] as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    let shape = (len, 1, half * 2);
    Ok((
        Tensor::from_vec(cos, shape, &Device::Cpu)?,
        Tensor::from_vec(sin, shape, &Device::Cpu)?,
    ))
}
