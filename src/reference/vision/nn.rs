//! The vision towers' building blocks: norms, activations, bidirectional attention.

use anyhow::Result;
use candle_core::{Device, Tensor, D};

use super::super::{rms_norm, softmax_last, Linear};
use crate::model::vlm::VisionNorm;
use crate::model::Model;

/// A vision norm's weights: RMSNorm (weight) or LayerNorm (weight + bias).
pub struct Norm {
    kind: VisionNorm,
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl Norm {
    pub fn load(model: &Model, prefix: &str, kind: VisionNorm, eps: f64) -> Result<Norm> {
        let weight = model.tensor(&format!("{prefix}.weight"))?;
        let bias = match kind {
            VisionNorm::Rms => None,
            VisionNorm::Layer => Some(model.tensor(&format!("{prefix}.bias"))?),
        };
        Ok(Norm {
            kind,
            weight,
            bias,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match (&self.kind, &self.bias) {
            (VisionNorm::Layer, Some(b)) => layer_norm(x, &self.weight, b, self.eps),
            _ => rms_norm(x, &self.weight, self.eps),
        }
    }
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * w + b` (biased variance,
/// as torch).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    Ok(centred
        .broadcast_mul(&inv)?
        .broadcast_mul(w)?
        .broadcast_add(b)?)
}

/// `x · sigmoid(1.702 x)` (transformers' quick_gelu).
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    let s = ((x * -1.702)?.exp()? + 1.0)?.recip()?;
    Ok(x.mul(&s)?)
}

pub fn linear(model: &Model, prefix: &str) -> Result<Linear> {
    Linear::load(model, prefix, true)
}

/// Bidirectional multi-head attention: `q`, `k`, `v` `[batch, tokens, heads, head_dim]`, an
/// optional additive `mask` `[tokens, tokens]`. Returns `[batch, tokens, heads·head_dim]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, n, h, d) = q.dims4()?;
    let heads_first = |x: &Tensor| -> Result<Tensor> {
        Ok(x.transpose(1, 2)?.contiguous()?.reshape((b * h, n, d))?)
    };
    let (q, k, v) = (heads_first(q)?, heads_first(k)?, heads_first(v)?);
    let mut scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    if let Some(m) = mask {
        scores = scores.broadcast_add(m)?;
    }
    let out = softmax_last(&scores)?.matmul(&v)?; // [b·h, n, d]
    Ok(out
        .reshape((b, h, n, d))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, n, h * d))?)
}

/// The additive mask of a block-diagonal attention: rows and columns in
/// `cu[i]..cu[i+1]` see each other, nothing else (transformers' `cu_seqlens`).
pub fn block_diagonal_mask(cu: &[usize], n: usize) -> Result<Tensor> {
    let mut m = vec![f32::NEG_INFINITY; n * n];
    for w in cu.windows(2) {
        for r in w[0]..w[1] {
            m[r * n + w[0]..r * n + w[1]].fill(0.0);
        }
    }
    Ok(Tensor::from_vec(m, (n, n), &Device::Cpu)?)
}
