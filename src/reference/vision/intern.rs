//! InternViT + pixel shuffle + the `mlp1` projector (InternVL), as transformers'
//! `InternVLModel.get_image_features` and OpenGVLab's `InternVLChatModel.extract_feature`
//! compute them, for either checkpoint layout.

use anyhow::{ensure, Context, Result};
use candle_core::Tensor;

use super::super::{rms_norm, Linear};
use super::bicubic;
use super::nn::{self, Norm};
use super::VisionTrace;
use crate::model::vlm::intern_names::{intern_names, Qkv, PROJECTOR_EPS as PROJECTOR_NORM_EPS};
use crate::model::vlm::InternVision;
use crate::model::Model;

struct Layer {
    norm1: Norm,
    norm2: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    qk_norm: Option<(Tensor, Tensor, f64)>,
    proj: Linear,
    ls1: Tensor,
    ls2: Tensor,
    fc1: Linear,
    fc2: Linear,
}

impl Layer {
    fn load(model: &Model, iv: &InternVision, i: usize) -> Result<Layer> {
        let n = intern_names(iv.layout);
        let p = format!("{}.{i}", n.layer);
        let norm = |s: &str| Norm::load(model, &format!("{p}.{s}"), iv.norm, iv.norm_eps);
        let lin = |s: &str, bias: bool| Linear::load(model, &format!("{p}.{s}"), bias);
        let [q, k, v] = match n.qkv {
            Qkv::Fused(name) => lin(name, iv.qkv_bias)?.split([iv.hidden_size; 3])?,
            Qkv::Split([q, k, v]) => [
                lin(q, iv.qkv_bias)?,
                lin(k, iv.qkv_bias)?,
                lin(v, iv.qkv_bias)?,
            ],
        };
        let qk_norm = if iv.qk_norm {
            let eps = n.qk_norm_eps.unwrap_or(iv.norm_eps);
            let w = |s: &str| model.tensor(&format!("{p}.{s}.weight"));
            Some((w(n.q_norm)?, w(n.k_norm)?, eps))
        } else {
            None
        };
        Ok(Layer {
            norm1: norm(n.norm1)?,
            norm2: norm(n.norm2)?,
            q,
            k,
            v,
            qk_norm,
            proj: lin(n.proj, true)?,
            ls1: model.tensor(&format!("{p}.{}", n.ls1))?,
            ls2: model.tensor(&format!("{p}.{}", n.ls2))?,
            fc1: lin("mlp.fc1", true)?,
            fc2: lin("mlp.fc2", true)?,
        })
    }

    /// `x`: `[tiles, tokens, hidden]`.
    fn forward(&self, iv: &InternVision, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let h = self.norm1.forward(x)?;
        let (mut q, mut k) = (tokens(&self.q, &h)?, tokens(&self.k, &h)?);
        if let Some((qw, kw, eps)) = &self.qk_norm {
            // Over all heads at once, before the head split.
            q = rms_norm(&q, qw, *eps)?;
            k = rms_norm(&k, kw, *eps)?;
        }
        let heads = |x: Tensor| x.reshape((b, t, iv.num_heads, iv.head_dim));
        let attn = nn::attention(&heads(q)?, &heads(k)?, &heads(tokens(&self.v, &h)?)?, None)?;
        let x = (x + tokens(&self.proj, &attn)?.broadcast_mul(&self.ls1)?)?;
        let hidden = tokens(&self.fc1, &self.norm2.forward(&x)?)?.gelu_erf()?;
        let mlp = tokens(&self.fc2, &hidden)?;
        Ok((&x + mlp.broadcast_mul(&self.ls2)?)?)
    }
}

/// The position embedding `[1, 1 + g·g, hidden]` for tiles of `g × g` patches: as stored for
/// the config's grid, else its patch part resampled bicubically (the class position as is).
fn position_embedding(stored: Tensor, grid: usize, g: usize, hid: usize) -> Result<Tensor> {
    let stored = stored.reshape((grid * grid + 1, hid))?;
    if g == grid {
        return Ok(stored.unsqueeze(0)?);
    }
    let patches = bicubic::resize_square(&stored.narrow(0, 1, grid * grid)?, grid, g)?;
    Ok(Tensor::cat(&[&stored.narrow(0, 0, 1)?, &patches], 0)?.unsqueeze(0)?)
}

/// A linear layer on `[tiles, tokens, in]`.
fn tokens(l: &Linear, x: &Tensor) -> Result<Tensor> {
    let (b, t, i) = x.dims3()?;
    let y = l.forward(&x.reshape((b * t, i))?)?;
    Ok(y.reshape((b, t, y.dim(1)?))?)
}

/// `pixel_values [tiles, C, S, S]` → image embeddings `[tiles · tokens_per_tile, out_hidden]`,
/// tile after tile; each encoder layer's output `[tiles, 1 + patches, hidden]`.
pub fn forward(model: &Model, iv: &InternVision, pixel_values: &Tensor) -> Result<VisionTrace> {
    let (b, c, h, w) = pixel_values
        .dims4()
        .context("InternVL pixel values must be [tiles, channels, height, width]")?;
    let p = iv.patch_size;
    ensure!(
        c == iv.num_channels && h == w && h % (2 * p) == 0,
        "tiles are {c}x{h}x{w}; the vision tower takes {} channels, square tiles of a multiple \
         of {} pixels",
        iv.num_channels,
        2 * p
    );
    let n = intern_names(iv.layout);
    // Patches per side of these tiles (the config's grid unless the tiles are resized).
    let g = h / p;
    let hid = iv.hidden_size;
    // Conv2d with stride = kernel: each patch's (C, P, P) values against the kernel rows.
    let patches = pixel_values
        .reshape((b, c, g, p, g, p))?
        .permute(vec![0, 2, 4, 1, 3, 5])?
        .contiguous()?
        .reshape((b, g * g, c * p * p))?;
    let kernel = Linear {
        wt: model
            .tensor(&format!("{}.weight", n.patch))?
            .reshape((hid, c * p * p))?
            .t()?
            .contiguous()?,
        bias: Some(model.tensor(&format!("{}.bias", n.patch))?),
    };
    let x = tokens(&kernel, &patches)?;
    let cls = model
        .tensor(n.cls)?
        .reshape((1, 1, hid))?
        .repeat((b, 1, 1))?;
    let pos = position_embedding(model.tensor(n.position)?, iv.grid(), g, hid)?;
    let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&pos)?;

    let mut blocks = vec![];
    for i in 0..iv.layers_used() {
        x = Layer::load(model, iv, i)?.forward(iv, &x)?;
        blocks.push(x.clone());
    }

    // Drop CLS; pixel shuffle: token (a, b) of the half grid takes the 2x2 neighbours
    // (2a+m, 2b+k) as channel blocks in order m·2H + k·H.
    let half = g / 2;
    let grid = x.narrow(1, 1, g * g)?.reshape((b, half, 2, half, 2, hid))?;
    let shuffled = grid
        .permute(vec![0, 1, 3, 2, 4, 5])?
        .contiguous()?
        .reshape((b * half * half, 4 * hid))?;
    let [ln, l1, l2] = n.projector;
    let ln_w = model.tensor(&format!("{ln}.weight"))?;
    let ln_b = model.tensor(&format!("{ln}.bias"))?;
    let y = nn::layer_norm(&shuffled, &ln_w, &ln_b, PROJECTOR_NORM_EPS)?;
    let y = nn::linear(model, l1)?.forward(&y)?.gelu_erf()?;
    let embeddings = nn::linear(model, l2)?.forward(&y)?;
    Ok(VisionTrace { embeddings, blocks })
}
