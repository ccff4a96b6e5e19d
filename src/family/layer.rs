//! The decoder layer a family's config resolves to: what `arch` (the graph), `reference` (the
//! golden model) and `model::layout` (the tensors) read. Each choice is an enum or a flag, so a
//! new kind is a new variant that `arch` and `reference` must both handle (they match on it).

use super::layer_kinds::{LocalLayers, Scores};

/// How every norm of the layer (and the final norm) normalises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Norm {
    /// `x / sqrt(mean(x²) + eps) * w`.
    Rms,
    /// `x / sqrt(mean(x²) + eps) * (1 + w)`, weights stored zero-centred (Gemma).
    RmsOnePlus,
}

/// How a group of projections (q/k/v, or gate/up) is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Projections {
    /// One tensor per projection.
    Separate,
    /// One tensor whose output rows are the projections one after another (phi3's `qkv_proj`:
    /// q | k | v; `gate_up_proj`: gate | up).
    Fused,
}

/// Which part of each head rotary position embedding turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum RotaryDims {
    /// All of head_dim.
    Full,
    /// The first `rotary_dim` elements of each head (phi3's `partial_rotary_factor`); the rest
    /// pass through unrotated.
    Partial { rotary_dim: usize },
}

/// Which elements rotary pairs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum RotaryPairs {
    /// Element i with element i + d/2 (transformers' `rotate_half`).
    HalfSplit,
    /// Element 2i with element 2i + 1, pair i turning at frequency i (glm4/glm's
    /// interleaved `rotate_half`).
    Interleaved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rotary {
    pub dims: RotaryDims,
    pub pairs: RotaryPairs,
}

impl Rotary {
    /// How many elements of a `head_dim`-wide head are rotated.
    pub fn dim(&self, head_dim: usize) -> usize {
        match self.dims {
            RotaryDims::Full => head_dim,
            RotaryDims::Partial { rotary_dim } => rotary_dim,
        }
    }

    /// llama's: full head_dim, rotate-half.
    pub const FULL_HALF_SPLIT: Rotary = Rotary {
        dims: RotaryDims::Full,
        pairs: RotaryPairs::HalfSplit,
    };
}

/// Grouped-query self-attention, scores as [`Scores`] says (`1/sqrt(head_dim)` by default).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Attention {
    pub qkv: Projections,
    /// Bias on the q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// RMSNorm over head_dim on q and k before rotary (Qwen3).
    pub qk_norm: bool,
    pub rotary: Rotary,
    /// Score scale and soft cap (gemma2/gemma3; plain elsewhere).
    pub scores: Scores,
    /// The decode block returns the whole KV cache shifted by one slot, the new token last,
    /// instead of the new token's K/V (llm_convert.py's chatglm contract,
    /// support/docs/runtime-contract.md §5).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shifted_kv_cache: bool,
    /// ALiBi position biases instead of rotary (Baichuan2-13B): `rotary` is not applied, and
    /// head h's scores get `slope_h · (key position − query position)` ([`super::alibi`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub alibi: bool,
}

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Activation {
    /// `x * sigmoid(x)`.
    Silu,
    /// GELU's tanh approximation, `x/2 · (1 + tanh(sqrt(2/π) · (x + 0.044715 x³)))`
    /// (transformers' `gelu_pytorch_tanh`).
    GeluTanh,
}

/// `down(act(gate(x)) * up(x))`. Dense: a mixture of experts is [`LayerSpec::moe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Mlp {
    pub activation: Activation,
    pub gate_up: Projections,
    /// Bias on gate/up/down.
    pub bias: bool,
}

/// Multipliers on the embedding output, on each residual branch and on the lm_head input
/// (MiniCPM's µP scalings; Gemma's embedding × sqrt(hidden); all 1 elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Scales {
    pub embedding: f64,
    pub residual: f64,
    pub lm_head_input: f64,
}

impl Scales {
    pub const NONE: Scales = Scales {
        embedding: 1.0,
        residual: 1.0,
        lm_head_input: 1.0,
    };
}

/// One pre-norm decoder layer: `x += attn(norm(x))`, `x += mlp(norm(x))`, every layer alike
/// except for what [`LocalLayers`] says (which layers slide their window, and their rotary).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LayerSpec {
    pub norm: Norm,
    /// A norm also on each branch's output before the residual add (glm4's
    /// `post_self_attn_layernorm`, `post_mlp_layernorm`): `x += norm(attn(norm(x)))`.
    pub branch_output_norms: bool,
    pub attention: Attention,
    pub mlp: Mlp,
    pub scales: Scales,
    /// A query at position q sees the keys at positions k with `q - window < k <= q`
    /// (transformers' sliding-window overlay); `None`: every earlier key.
    pub sliding_window: Option<usize>,
    /// A mixture of experts in place of `mlp` on its sparse layers (qwen2_moe, qwen3_moe).
    pub moe: Option<super::Moe>,
    /// The layers the window applies to (all unless `layer_types` says otherwise).
    pub local: LocalLayers,
    /// `tanh(logits / c) · c` on lm_head's logits (gemma2's `final_logit_softcapping`).
    pub final_logit_softcap: Option<f64>,
    /// How the checkpoint stores tensors the layer reads in another layout.
    pub stored: Stored,
}

/// Checkpoint layouts that differ from what `arch` and `reference` read, undone in one place
/// when a tensor is read (`model::repack`), so both see the plain layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stored {
    /// The fused qkv rows are grouped per kv head (internlm2's `wqkv`: for each kv head, its
    /// query heads, then its k, then its v) instead of q | k | v.
    pub qkv_grouped_per_kv_head: bool,
    /// The lm_head rows are used L2-normalised (Baichuan2's NormHead).
    pub lm_head_rows_normalised: bool,
}

impl Stored {
    pub const PLAIN: Stored = Stored {
        qkv_grouped_per_kv_head: false,
        lm_head_rows_normalised: false,
    };
}

impl LayerSpec {
    /// llama's layer with the given biases.
    pub fn llama(qkv_bias: bool, o_bias: bool, mlp_bias: bool) -> LayerSpec {
        LayerSpec {
            norm: Norm::Rms,
            branch_output_norms: false,
            attention: Attention {
                qkv: Projections::Separate,
                qkv_bias,
                o_bias,
                qk_norm: false,
                rotary: Rotary::FULL_HALF_SPLIT,
                scores: Scores::PLAIN,
                shifted_kv_cache: false,
                alibi: false,
            },
            mlp: Mlp {
                activation: Activation::Silu,
                gate_up: Projections::Separate,
                bias: mlp_bias,
            },
            scales: Scales::NONE,
            sliding_window: None,
            moe: None,
            local: LocalLayers::ALL,
            final_logit_softcap: None,
            stored: Stored::PLAIN,
        }
    }
}
