//! The Qwen2.5-VL and Qwen2-VL vision towers, as transformers computes them: the patch
//! embedding as a matmul over the `[N, C·T·P·P]` rows, the 2D rotary, window and full
//! attention blocks, the patch merger and (Qwen2.5-VL) the reverse-index reorder.

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};

use super::super::{rope, silu, Linear};
use super::nn::{self, Norm};
use super::qwen_index::{self, Grid};
use super::VisionTrace;
use crate::model::vlm::{QwenVision, QwenVisionMlp};
use crate::model::Model;

/// transformers' `Qwen2_5_VisionRotaryEmbedding` theta.
const ROTARY_THETA: f32 = 10000.0;

enum Mlp {
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    Fc {
        fc1: Linear,
        fc2: Linear,
    },
}

struct Block {
    norm1: Norm,
    norm2: Norm,
    qkv: Linear,
    proj: Linear,
    mlp: Mlp,
}

impl Block {
    fn load(model: &Model, q: &QwenVision, i: usize) -> Result<Block> {
        let p = format!("visual.blocks.{i}");
        let norm = |n: &str| Norm::load(model, &format!("{p}.{n}"), q.norm, q.norm_eps);
        let lin = |n: &str| nn::linear(model, &format!("{p}.{n}"));
        let mlp = match q.mlp {
            QwenVisionMlp::GatedSilu => Mlp::Gated {
                gate: lin("mlp.gate_proj")?,
                up: lin("mlp.up_proj")?,
                down: lin("mlp.down_proj")?,
            },
            QwenVisionMlp::FcQuickGelu => Mlp::Fc {
                fc1: lin("mlp.fc1")?,
                fc2: lin("mlp.fc2")?,
            },
        };
        Ok(Block {
            norm1: norm("norm1")?,
            norm2: norm("norm2")?,
            qkv: lin("attn.qkv")?,
            proj: lin("attn.proj")?,
            mlp,
        })
    }

    fn forward(
        &self,
        q: &QwenVision,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let (heads, d) = (q.num_heads, q.head_dim);
        let qkv = self
            .qkv
            .forward(&self.norm1.forward(x)?)?
            .reshape((n, 3, heads, d))?;
        let part = |i: usize| -> Result<Tensor> { Ok(qkv.narrow(1, i, 1)?.squeeze(1)?) };
        let qs = rope::apply(&part(0)?, cos, sin)?.unsqueeze(0)?;
        let ks = rope::apply(&part(1)?, cos, sin)?.unsqueeze(0)?;
        let vs = part(2)?.unsqueeze(0)?;
        let attn = nn::attention(&qs, &ks, &vs, Some(mask))?.squeeze(0)?;
        let x = (x + self.proj.forward(&attn)?)?;
        let h = self.norm2.forward(&x)?;
        let mlp = match &self.mlp {
            Mlp::Gated { gate, up, down } => {
                down.forward(&silu(&gate.forward(&h)?)?.mul(&up.forward(&h)?)?)?
            }
            Mlp::Fc { fc1, fc2 } => fc2.forward(&nn::quick_gelu(&fc1.forward(&h)?)?)?,
        };
        Ok((x + mlp)?)
    }
}

/// The tower on the processor's rows `pixel_values [N, C·T·P·P]` of the images `grids`;
/// returns the image embeddings `[N / merge², out_hidden]` in the processor's (raster
/// merge-unit) order, and each block's output (in window order for Qwen2.5-VL, as
/// transformers' `hidden_states`).
pub fn forward(
    model: &Model,
    q: &QwenVision,
    pixel_values: &Tensor,
    grids: &[Grid],
) -> Result<VisionTrace> {
    let (n, cols) = pixel_values
        .dims2()
        .context("Qwen pixel values must be [rows, C·T·P·P]")?;
    ensure!(
        cols == q.patch_dim(),
        "pixel rows have {cols} values, the vision tower takes {} (C·T·P·P)",
        q.patch_dim()
    );
    let merge = q.spatial_merge_size;
    qwen_index::check_grids(grids, merge, n)?;
    let unit = q.merge_unit();

    // Conv3d with stride = kernel over (C, T, P, P)-ordered rows = one matmul, no bias.
    let w = model
        .tensor("visual.patch_embed.proj.weight")?
        .reshape((q.hidden_size, cols))?;
    let x = pixel_values.matmul(&w.t()?)?;

    let positions = qwen_index::rotary_positions(grids, merge);
    let (order, window_cu) = match q.window_size {
        Some(px) => {
            let ws = px / merge / q.patch_size;
            ensure!(ws > 0, "window_size {px} is smaller than one merge unit");
            qwen_index::window_index(grids, merge, ws)
        }
        None => ((0..n / unit).collect(), qwen_index::full_seqlens(grids)),
    };
    // Patch rows in window order: merge units moved as a whole.
    let rows: Vec<u32> = order
        .iter()
        .flat_map(|&u| (u * unit..(u + 1) * unit).map(|r| r as u32))
        .collect();
    let rows_t = Tensor::new(rows.as_slice(), &Device::Cpu)?;
    let mut x = x.index_select(&rows_t, 0)?;
    let positions: Vec<[usize; 2]> = rows.iter().map(|&r| positions[r as usize]).collect();
    let (cos, sin) = rotary_tables(&positions, q.head_dim)?;

    let full_mask = nn::block_diagonal_mask(&qwen_index::full_seqlens(grids), n)?;
    let window_mask = nn::block_diagonal_mask(&window_cu, n)?;
    let mut blocks = Vec::with_capacity(q.depth);
    for i in 0..q.depth {
        let block = Block::load(model, q, i)?;
        let mask = if q.fullatt_block_indexes.contains(&i) {
            &full_mask
        } else {
            &window_mask
        };
        x = block.forward(q, &x, &cos, &sin, mask)?;
        blocks.push(x.clone());
    }

    let ln_q = Norm::load(model, "visual.merger.ln_q", q.norm, q.norm_eps)?;
    let merged = ln_q
        .forward(&x)?
        .reshape((n / unit, unit * q.hidden_size))?;
    let fc1 = nn::linear(model, "visual.merger.mlp.0")?;
    let fc2 = nn::linear(model, "visual.merger.mlp.2")?;
    let merged = fc2.forward(&fc1.forward(&merged)?.gelu_erf()?)?;
    // Back to the processor's merge-unit order.
    let back: Vec<u32> = qwen_index::inverse(&order)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let embeddings = merged.index_select(&Tensor::new(back.as_slice(), &Device::Cpu)?, 0)?;
    Ok(VisionTrace { embeddings, blocks })
}

/// The 2D rotary cos / sin `[N, 1, head_dim]`: head_dim/4 frequencies turned by the row
/// position, the next head_dim/4 by the column position, the whole repeated twice
/// (rotate-half layout).
fn rotary_tables(positions: &[[usize; 2]], head_dim: usize) -> Result<(Tensor, Tensor)> {
    let dim = head_dim / 2;
    let inv: Vec<f32> = (0..dim / 2)
        .map(|j| 1.0 / ROTARY_THETA.powf((2 * j) as f32 / dim as f32))
        .collect();
    let (mut cos, mut sin) = (vec![], vec![]);
    for p in positions {
        let angles: Vec<f32> = p
            .iter()
            .flat_map(|&a| inv.iter().map(move |f| a as f32 * f))
            .collect();
        for _ in 0..2 {
            cos.extend(angles.iter().map(|a| a.cos()));
            sin.extend(angles.iter().map(|a| a.sin()));
        }
    }
    let shape = (positions.len(), 1, head_dim);
    Ok((
        Tensor::from_vec(cos, shape, &Device::Cpu)?,
        Tensor::from_vec(sin, shape, &Device::Cpu)?,
    ))
}
