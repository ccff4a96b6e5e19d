//! Rotary position embedding as transformers computes it (rotate-half or interleaved pairs), including
//! linear and llama3 frequency scaling.

use anyhow::Result;
use candle_core::{Device, Tensor, D};

use crate::family::RotaryDims;
use crate::model::config::RopeScaling;
use crate::model::ModelConfig;

/// How a forward call's rotary tables are made: longrope's long factors replace the short ones
/// for calls whose largest position reaches `original` (transformers' per-call choice), and
/// cos/sin are multiplied by `attention_factor`.
pub struct Rotary {
    pub short: Vec<f32>,
    /// (inverse frequencies with the long factors, original_max_position_embeddings).
    pub long: Option<(Vec<f32>, usize)>,
    pub attention_factor: f32,
}

impl Rotary {
    pub fn new(c: &ModelConfig) -> Rotary {
        let short = inverse_frequencies(c);
        match &c.rope_scaling {
            Some(RopeScaling::LongRope(l)) => Rotary {
                long: Some((
                    longrope(c, &l.long_factor),
                    l.original_max_position_embeddings,
                )),
                attention_factor: l.attention_factor as f32,
                short,
            },
            _ => Rotary {
                short,
                long: None,
                attention_factor: 1.0,
            },
        }
    }

    /// cos and sin for positions `start..start+len`.
    pub fn tables(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let inv_freq = match &self.long {
            Some((long, original)) if start + len > *original => long,
            _ => &self.short,
        };
        let (cos, sin) = tables(inv_freq, start, len)?;
        if self.attention_factor == 1.0 {
            return Ok((cos, sin));
        }
        let a = self.attention_factor as f64;
        Ok(((cos * a)?, (sin * a)?))
    }
}

/// `1 / (ext_i · theta^(2i/d))` over the rotated width `d`, in f32 like torch.
fn longrope(c: &ModelConfig, ext: &[f64]) -> Vec<f32> {
    let d = c.layer.attention.rotary.dim(c.head_dim);
    (0..d / 2)
        .map(|i| 1.0 / (ext[i] as f32 * (c.rope_theta as f32).powf((2 * i) as f32 / d as f32)))
        .collect()
}

/// The frequencies of layers turning at their own base, unscaled (gemma3's local layers), if
/// the model has any.
pub fn local_inverse_frequencies(c: &ModelConfig) -> Option<Vec<f32>> {
    let theta = c.layer.local.rope_theta?;
    Some(unscaled(c, theta))
}

/// `inv_freq[i] = 1 / theta^(2i / d)` over the rotated part `d` of a head. f32 like torch.
fn unscaled(c: &ModelConfig, theta: f64) -> Vec<f32> {
    // Partial rotary (phi3): the frequencies of a head as wide as the rotated part.
    let d = match c.layer.attention.rotary.dims {
        RotaryDims::Full => c.head_dim,
        RotaryDims::Partial { rotary_dim } => rotary_dim,
    };
    (0..d / 2)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / d as f32))
        .collect()
}

/// `inv_freq[i] = 1 / theta^(2i / head_dim)`, rescaled per `rope_scaling`. f32 like torch.
pub fn inverse_frequencies(c: &ModelConfig) -> Vec<f32> {
    let base = unscaled(c, c.rope_theta);
    match &c.rope_scaling {
        None => base,
        Some(RopeScaling::LongRope(l)) => longrope(c, &l.short_factor),
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / *factor as f32).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let (factor, lo, hi, old) = (
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
                *original_max_position_embeddings as f32,
            );
            let low_freq_wavelen = old / lo;
            let high_freq_wavelen = old / hi;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - lo) / (hi - lo);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// cos and sin tables `[len, 1, head_dim]` for positions `start..start+len` (halves duplicated).
pub fn tables(inv_freq: &[f32], start: usize, len: usize) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(len * half * 2);
    let mut sin = Vec::with_capacity(len * half * 2);
    for p in start..start + len {
        for _ in 0..2 {
            for f in inv_freq {
                let a = p as f32 * f;
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

/// `x * cos + rotate_half(x) * sin` for `x`: `[len, heads, head_dim]`.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// `x * cos + rotate_pairs(x) * sin` with pairs (2i, 2i+1) turning at frequency i (glm4's
/// interleaved layout): `out[2i] = x[2i]·cos_i − x[2i+1]·sin_i`,
/// `out[2i+1] = x[2i+1]·cos_i + x[2i]·sin_i`. `cos`, `sin`: the `[len, 1, d]` tables above
/// (frequency i at column i).
pub fn apply_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (t, h, d) = x.dims3()?;
    let pairs = x.reshape((t, h, d / 2, 2))?;
    let x0 = pairs.narrow(3, 0, 1)?;
    let x1 = pairs.narrow(3, 1, 1)?;
    let c = cos.narrow(D::Minus1, 0, d / 2)?.reshape((t, 1, d / 2, 1))?;
    let s = sin.narrow(D::Minus1, 0, d / 2)?.reshape((t, 1, d / 2, 1))?;
    let out0 = (x0.broadcast_mul(&c)? - x1.broadcast_mul(&s)?)?;
    let out1 = (x1.broadcast_mul(&c)? + x0.broadcast_mul(&s)?)?;
    Ok(Tensor::cat(&[&out0, &out1], 3)?.reshape((t, h, d))?)
}

/// Rotary on the first `rotary_dim` elements of each head only; the rest pass through.
/// `turn` is [`apply`] or [`apply_interleaved`].
pub fn apply_partial(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    rotary_dim: usize,
    turn: fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let turned = turn(&x.narrow(D::Minus1, 0, rotary_dim)?, cos, sin)?;
    let rest = x.narrow(D::Minus1, rotary_dim, d - rotary_dim)?;
    Ok(Tensor::cat(&[&turned, &rest], D::Minus1)?)
}
