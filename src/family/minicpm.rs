//! minicpm (remote code `modeling_minicpm.py`): llama with three µP scalings: the embedding
//! output × `scale_emb`, each residual branch × `scale_depth / sqrt(num_hidden_layers)`, the
//! lm_head input ÷ `hidden_size / dim_model_base`. Embeddings are tied by default.
//! MiniCPM4's `rope_scaling` longrope is read by the generic rope reader (transformers'
//! per-call short/long choice; the remote code's `MiniCPMLongRoPE` picks by its cache length,
//! `max_position_embeddings`, which agrees on the released MiniCPM4 configs, where that equals
//! `original_max_position_embeddings`). Its `sparse_config` (InfLLM v2 sparse attention, for
//! inputs longer than `dense_len`) is ignored: attention here is dense, which is what the
//! model computes below `dense_len`.

use super::{llama, names, Dims, Family, LayerSpec, Scales};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub static FAMILY: Family = Family {
    model_type: "minicpm",
    summary: "`scale_emb`, `scale_depth`, `dim_model_base` scalings; tied embeddings by default; \
              MiniCPM4's longrope (its `sparse_config` ignored: dense attention)",
    verified:
        "reference f32/bf16, MiniCPM4 longrope f32; ONNX chain (static, dynamic, history KV; \
               longrope static); verify bf16 dynamic (also longrope); contract w4f16",
    tie_word_embeddings: true,
    head_dim: None,
    rms_norm_eps: 1e-6,
    weights: &names::LLAMA,
    gguf: None,
    layer,
};

fn layer(keys: &ConfigKeys, dims: &Dims) -> Result<LayerSpec, InputError> {
    llama::silu_only(keys)?;
    let bias = keys.opt_bool("attention_bias")?.unwrap_or(false);
    let mut spec = LayerSpec::llama(bias, bias, llama::mlp_bias(keys)?);
    let scale_depth = keys.opt_f64("scale_depth")?.unwrap_or(1.0);
    let dim_model_base = keys
        .opt_f64("dim_model_base")?
        .unwrap_or(dims.hidden_size as f64);
    spec.scales = Scales {
        embedding: keys.opt_f64("scale_emb")?.unwrap_or(1.0),
        residual: scale_depth / (dims.num_hidden_layers as f64).sqrt(),
        lm_head_input: dim_model_base / dims.hidden_size as f64,
    };
    Ok(spec)
}
