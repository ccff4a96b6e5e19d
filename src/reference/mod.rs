//! The golden model: a candle forward pass of the family's layer description, written from
//! the model math (RMSNorm, rotate-half RoPE, grouped-query attention with its optional
//! sliding window, SwiGLU or GELU-tanh gating) straight from the checkpoint. It shares only the description and
//! the weight names with graph building, so a graph bug shows up as a mismatch.
//!
//! Computation is f32 on the CPU whatever the stored dtype. Layer weights are kept in memory
//! when they fit a budget, else re-read from the (mmapped) checkpoint on every forward.

mod mlp;
mod moe;
mod mrope;
mod rope;
mod softcap;
pub mod vision;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, D};

use crate::family::{LayerRope, Norm, Projections, RotaryDims, RotaryPairs, Scores};
use crate::model::{layout, Model, ModelConfig};
pub use rope::{inverse_frequencies, local_inverse_frequencies};
use softcap::softcap;

/// Above this many bytes of f32 layer weights, layers are streamed instead of kept.
const KEEP_LAYERS_BUDGET: usize = 4 << 30;

struct Linear {
    /// Weight transposed to [in, out], so `x @ wt` needs no per-call transpose.
    wt: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn load(model: &Model, prefix: &str, bias: bool) -> Result<Linear> {
        let wt = model
            .tensor(&format!("{prefix}.weight"))?
            .t()?
            .contiguous()?;
        let bias = if bias {
            Some(model.tensor(&format!("{prefix}.bias"))?)
        } else {
            None
        };
        Ok(Linear { wt, bias })
    }

    /// A fused projection's parts: consecutive output rows of these sizes.
    fn split<const N: usize>(&self, sizes: [usize; N]) -> Result<[Linear; N]> {
        let rows = self.wt.dim(1)?;
        anyhow::ensure!(
            sizes.iter().sum::<usize>() == rows,
            "fused projection has {rows} rows, not {sizes:?}"
        );
        let mut parts = Vec::with_capacity(N);
        let mut start = 0;
        for n in sizes {
            let bias = match &self.bias {
                Some(b) => Some(b.narrow(0, start, n)?.contiguous()?),
                None => None,
            };
            let wt = self.wt.narrow(1, start, n)?.contiguous()?;
            parts.push(Linear { wt, bias });
            start += n;
        }
        parts
            .try_into()
            .map_err(|_| anyhow::anyhow!("fused projection: {N} parts"))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.wt)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

struct Layer {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_norm: Tensor,
    /// glm4's norms on the attention and MLP outputs.
    attn_output_norm: Option<Tensor>,
    mlp_output_norm: Option<Tensor>,
    mlp: mlp::FeedForward,
}

impl Layer {
    fn load(model: &Model, i: usize) -> Result<Layer> {
        let c = &model.config;
        let (n, attn) = (c.weights(), &c.layer.attention);
        let linear = |module: &str, bias: bool| Linear::load(model, &n.module(i, module), bias);
        let norm = |module: &str| model.tensor(&n.weight(i, module));
        let branch_norms = c.layer.branch_output_norms;
        let [q, k, v] = match attn.qkv {
            Projections::Separate => [
                linear(n.q_proj, attn.qkv_bias)?,
                linear(n.k_proj, attn.qkv_bias)?,
                linear(n.v_proj, attn.qkv_bias)?,
            ],
            Projections::Fused => {
                let fused = linear(n.qkv_proj, attn.qkv_bias)?;
                fused.split([c.q_dim(), c.kv_dim(), c.kv_dim()])?
            }
        };
        Ok(Layer {
            input_norm: norm(n.input_norm)?,
            q,
            k,
            v,
            o: linear(n.o_proj, attn.o_bias)?,
            q_norm: if attn.qk_norm {
                Some(norm(n.q_norm)?)
            } else {
                None
            },
            k_norm: if attn.qk_norm {
                Some(norm(n.k_norm)?)
            } else {
                None
            },
            post_norm: norm(n.post_attention_norm)?,
            attn_output_norm: branch_norms.then(|| norm(n.attn_output_norm)).transpose()?,
            mlp_output_norm: branch_norms.then(|| norm(n.mlp_output_norm)).transpose()?,
            mlp: mlp::FeedForward::load(model, i)?,
        })
    }
}

/// What one forward call returns.
pub struct StepOutput {
    /// Logits of the last position, `[vocab]`.
    pub logits: Vec<f32>,
    /// Each layer's output hidden states `[tokens, hidden]` (before the final norm), when
    /// requested with [`Reference::keep_hidden`].
    pub layer_outputs: Vec<Tensor>,
    /// The final-normed hidden state of the last position, `[hidden]`.
    pub final_hidden: Vec<f32>,
}

pub struct Reference<'m> {
    model: &'m Model,
    embed: Tensor,
    final_norm: Tensor,
    /// `[hidden, vocab]`, transposed once.
    lm_head_t: Tensor,
    layers: Option<Vec<Layer>>,
    /// The model's rotary (longrope's short/long choice included).
    rotary: rope::Rotary,
    /// The local layers' own frequencies, when they turn at their own base (gemma3).
    local_inv_freq: Option<Vec<f32>>,
    /// Per layer: keys and values so far, `[tokens, kv_heads, head_dim]`.
    cache: Vec<Option<(Tensor, Tensor)>>,
    keep_hidden: bool,
    /// Rotary position minus cache index for the tokens after a prefill with M-RoPE
    /// positions (transformers' `rope_deltas`); 0 otherwise.
    position_offset: i64,
}

impl<'m> Reference<'m> {
    pub fn new(model: &'m Model) -> Result<Reference<'m>> {
        let c = &model.config;
        let names = c.weights();
        let embed = model.tensor(names.embed_tokens)?;
        let lm_head = if c.tie_word_embeddings {
            embed.clone()
        } else {
            model.tensor(names.lm_head)?
        };
        let layer_bytes: usize = layout::expected_tensors(c)
            .iter()
            .filter(|(n, _)| n.starts_with(&format!("{}.", names.layers)))
            .map(|(_, s)| s.iter().product::<usize>() * 4)
            .sum();
        let layers = if layer_bytes <= KEEP_LAYERS_BUDGET {
            Some(
                (0..c.num_hidden_layers)
                    .map(|i| Layer::load(model, i))
                    .collect::<Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        Ok(Reference {
            model,
            embed,
            final_norm: model.tensor(names.final_norm)?,
            lm_head_t: lm_head.t()?.contiguous()?,
            layers,
            rotary: rope::Rotary::new(c),
            local_inv_freq: local_inverse_frequencies(c),
            cache: vec![None; c.num_hidden_layers],
            keep_hidden: false,
            position_offset: 0,
        })
    }

    /// Also return every layer's output (for per-block comparisons).
    pub fn keep_hidden(mut self, yes: bool) -> Self {
        self.keep_hidden = yes;
        self
    }

    pub fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    /// Tokens currently in the KV cache.
    pub fn cached_len(&self) -> usize {
        self.cache[0]
            .as_ref()
            .map_or(0, |(k, _)| k.dim(0).unwrap_or(0))
    }

    /// Clears the KV cache and runs the prompt.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<StepOutput> {
        anyhow::ensure!(!ids.is_empty(), "prefill needs at least one token");
        self.cache.iter_mut().for_each(|c| *c = None);
        self.position_offset = 0;
        self.forward(ids)
    }

    /// Clears the KV cache and runs a prompt given as embeddings `[L, hidden]` (a VLM's
    /// prompt with the image embeddings spliced in), with M-RoPE `positions` `[3][L]` (t, h, w
    /// rows) or, with `None`, positions 0..L. Decoding continues at max(positions) + 1.
    pub fn prefill_embeddings(
        &mut self,
        embeds: &Tensor,
        positions: Option<&[Vec<u32>; 3]>,
    ) -> Result<StepOutput> {
        let len = embeds.dim(0)?;
        anyhow::ensure!(len > 0, "prefill needs at least one token");
        self.cache.iter_mut().for_each(|c| *c = None);
        self.position_offset = 0;
        let tables = match positions {
            None => self.rotary.tables(0, len)?,
            Some(p) => {
                let section = self
                    .config()
                    .vlm
                    .as_ref()
                    .and_then(|v| v.mrope_section)
                    .context("M-RoPE positions for a model without mrope_section")?;
                let max = p.iter().flatten().max().copied().unwrap_or(0);
                self.position_offset = max as i64 + 1 - len as i64;
                mrope::tables(&self.rotary.short, p, section)?
            }
        };
        self.forward_embedded(embeds.clone(), tables)
    }

    /// Runs one more token after what is cached.
    pub fn decode(&mut self, id: u32) -> Result<StepOutput> {
        self.forward(&[id])
    }

    /// Prefill then `steps` greedy tokens; returns the generated ids.
    pub fn generate_greedy(&mut self, prompt: &[u32], steps: usize) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(steps);
        let mut step = self.prefill(prompt)?;
        for i in 0..steps {
            let next = argmax(&step.logits);
            out.push(next);
            if i + 1 < steps {
                step = self.decode(next)?;
            }
        }
        Ok(out)
    }

    /// The head on final-normed hidden rows `[rows, hidden]`: logits per row (the input
    /// scale and logit soft cap included).
    pub fn head(&self, normed: &Tensor) -> Result<Vec<Vec<f32>>> {
        let c = &self.model.config;
        let head_in = scale(normed, c.lm_head_input_scale())?;
        let logits = head_in.matmul(&self.lm_head_t)?;
        Ok(softcap(logits, c.layer.final_logit_softcap)?.to_vec2::<f32>()?)
    }

    /// The final norm of hidden rows `[rows, hidden]`.
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        norm(self.config(), x, &self.final_norm)
    }

    /// Embedding of `ids`, `[tokens, hidden]` (with MiniCPM's scale_emb).
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let idx = Tensor::new(ids, &Device::Cpu)?;
        let x = self
            .embed
            .index_select(&idx, 0)
            .context("token id outside the vocabulary")?;
        scale(&x, self.config().embedding_scale())
    }

    fn forward(&mut self, ids: &[u32]) -> Result<StepOutput> {
        let c = self.model.config.clone();
        let vocab = c.vocab_size as u32;
        if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
            anyhow::bail!("token id {bad} is outside the vocabulary (size {vocab})");
        }
        let position = self.cached_len() as i64 + self.position_offset;
        let position = usize::try_from(position).context("negative rotary position")?;
        let tables = self.rotary.tables(position, ids.len())?;
        self.forward_embedded(self.embed(ids)?, tables)
    }

    /// The layers, final norm and head on embeddings `x` `[tokens, hidden]` with their
    /// rotary tables.
    fn forward_embedded(
        &mut self,
        mut x: Tensor,
        (cos, sin): (Tensor, Tensor),
    ) -> Result<StepOutput> {
        let c = self.model.config.clone();
        let start = self.cached_len();
        // Layers with their own rotary base (gemma3's local layers) turn at the same positions.
        let local = match &self.local_inv_freq {
            Some(f) => {
                let position = self.cached_len() as i64 + self.position_offset;
                let position = usize::try_from(position).context("negative rotary position")?;
                Some(rope::tables(f, position, x.dim(0)?)?)
            }
            None => None,
        };
        let mut layer_outputs = vec![];
        for i in 0..c.num_hidden_layers {
            let streamed;
            let layer = match &self.layers {
                Some(all) => &all[i],
                None => {
                    streamed = Layer::load(self.model, i)?;
                    &streamed
                }
            };
            let (cos, sin) = match (&local, c.layer.rope(i)) {
                (Some((lc, ls)), LayerRope::Unscaled { .. }) => (lc, ls),
                _ => (&cos, &sin),
            };
            x = layer_forward(&c, i, layer, &mut self.cache[i], &x, cos, sin, start)?;
            if self.keep_hidden {
                layer_outputs.push(x.clone());
            }
        }
        let n = x.dim(0)?;
        let last = x.narrow(0, n - 1, 1)?;
        let normed = norm(&c, &last, &self.final_norm)?;
        let logits = self.head(&normed)?.swap_remove(0);
        Ok(StepOutput {
            logits,
            layer_outputs,
            final_hidden: normed.squeeze(0)?.to_vec1::<f32>()?,
        })
    }
}

/// Decoder layer `index`; appends this step's keys/values to `cache`.
#[allow(clippy::too_many_arguments)]
fn layer_forward(
    c: &ModelConfig,
    index: usize,
    l: &Layer,
    cache: &mut Option<(Tensor, Tensor)>,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    start: usize,
) -> Result<Tensor> {
    let (t, nh, kvh, d) = (
        x.dim(0)?,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
    );
    let h = norm(c, x, &l.input_norm)?;
    let mut q = l.q.forward(&h)?.reshape((t, nh, d))?;
    let mut k = l.k.forward(&h)?.reshape((t, kvh, d))?;
    let v = l.v.forward(&h)?.reshape((t, kvh, d))?;
    if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
        q = norm(c, &q, qn)?;
        k = norm(c, &k, kn)?;
    }
    let rotary = c.layer.attention.rotary;
    let turn = match rotary.pairs {
        RotaryPairs::HalfSplit => rope::apply,
        RotaryPairs::Interleaved => rope::apply_interleaved,
    };
    let (q, k) = match (c.layer.attention.alibi, rotary.dims) {
        // ALiBi models have no rotary: positions enter through the score biases.
        (true, _) => (q, k),
        (false, RotaryDims::Full) => (turn(&q, cos, sin)?, turn(&k, cos, sin)?),
        (false, RotaryDims::Partial { rotary_dim }) => (
            rope::apply_partial(&q, cos, sin, rotary_dim, turn)?,
            rope::apply_partial(&k, cos, sin, rotary_dim, turn)?,
        ),
    };
    let (keys, values) = match cache.take() {
        Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 0)?, Tensor::cat(&[&pv, &v], 0)?),
        None => (k, v),
    };
    *cache = Some((keys.clone(), values.clone()));
    let window = c.layer.window(index);
    let scores = &c.layer.attention.scores;
    let alibi = c
        .layer
        .attention
        .alibi
        .then(|| crate::family::alibi::slopes(nh));
    let positions = Positions {
        start,
        window,
        alibi,
    };
    let attn = attention(&q, &keys, &values, &positions, scores)?; // [t, nh*d]
    let res = c.residual_scale();
    let mut attn_out = l.o.forward(&attn)?;
    if let Some(w) = &l.attn_output_norm {
        attn_out = norm(c, &attn_out, w)?;
    }
    let x = (x + scale(&attn_out, res)?)?;
    let h2 = norm(c, &x, &l.post_norm)?;
    let mut down = l.mlp.forward(c, &h2)?;
    if let Some(w) = &l.mlp_output_norm {
        down = norm(c, &down, w)?;
    }
    Ok((&x + scale(&down, res)?)?)
}

/// The family's norm over the last dimension (every layer norm and the final norm).
pub fn norm(c: &ModelConfig, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    match c.layer.norm {
        Norm::Rms => rms_norm(x, w, c.rms_norm_eps),
        Norm::RmsOnePlus => rms_norm(x, &(w + 1.0)?, c.rms_norm_eps),
    }
}

/// Where the queries are and what their positions do to the scores.
struct Positions {
    /// The first query's position (key j is at position j).
    start: usize,
    /// With a sliding window, the query at position p sees only keys at positions j with
    /// `p - window < j`.
    window: Option<usize>,
    /// ALiBi's per-head slopes: head h's score for key j from the query at p gets
    /// `slope_h · (j - p)`.
    alibi: Option<Vec<f64>>,
}

/// Causal grouped-query attention. `q`: `[t, heads, d]` at absolute positions `start..start+t`;
/// `k`, `v`: `[start+t, kv_heads, d]`. Returns `[t, heads*d]`.
fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    positions: &Positions,
    scoring: &Scores,
) -> Result<Tensor> {
    let Positions {
        start,
        window,
        ref alibi,
    } = *positions;
    let (t, nh, d) = q.dims3()?;
    let (s, kvh, _) = k.dims3()?;
    let groups = nh / kvh;
    let expand = |x: &Tensor| -> Result<Tensor> {
        // [s, kvh, d] → [nh, s, d], each kv head serving `groups` query heads.
        Ok(x.transpose(0, 1)?
            .unsqueeze(1)?
            .expand((kvh, groups, s, d))?
            .reshape((nh, s, d))?)
    };
    let (k, v) = (expand(k)?, expand(v)?);
    let q = q.transpose(0, 1)?.contiguous()?; // [nh, t, d]
    let scores = (q.matmul(&k.t()?)? * scoring.scale(d))?; // [nh, t, s]
    let scores = softcap(scores, scoring.softcap)?;
    let no_bias = [0.0];
    let slopes: &[f64] = alibi.as_deref().unwrap_or(&no_bias);
    let mask: Vec<f32> = slopes
        .iter()
        .flat_map(|&slope| {
            (0..t).flat_map(move |i| {
                (0..s).map(move |j| {
                    let p = start + i;
                    if j <= p && window.is_none_or(|w| p - j < w) {
                        (slope * (j as f64 - p as f64)) as f32
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
        })
        .collect();
    // One `[t, s]` mask for every head, or one per head with ALiBi.
    let mask = Tensor::from_vec(mask, (slopes.len(), t, s), &Device::Cpu)?;
    let probs = softmax_last(&scores.broadcast_add(&mask)?)?;
    let out = probs.matmul(&v)?; // [nh, t, d]
    Ok(out.transpose(0, 1)?.reshape((t, nh * d))?)
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

fn silu(x: &Tensor) -> Result<Tensor> {
    // x * sigmoid(x) = x / (1 + e^-x)
    Ok((x / (x.neg()?.exp()? + 1.0)?)?)
}

/// GELU, tanh approximation: `x/2 · (1 + tanh(sqrt(2/π) · (x + 0.044715 x³)))`.
fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    let cube = x.mul(x)?.mul(x)?;
    let inner = ((x + (cube * 0.044715)?)? * (2.0 / std::f64::consts::PI).sqrt())?;
    Ok(((x * 0.5)? * (inner.tanh()? + 1.0)?)?)
}

fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    Ok(if s == 1.0 { x.clone() } else { (x * s)? })
}

/// Index of the largest value (first one on ties, like torch.argmax).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}
