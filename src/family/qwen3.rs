//! qwen3 (transformers' `Qwen3ForCausalLM`): llama plus an RMSNorm over head_dim on q and k
//! before rotary; head_dim is usually explicit (≠ hidden / heads).

use super::{llama, names, Dims, Family, Gguf, LayerSpec};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub static FAMILY: Family = Family {
    model_type: "qwen3",
    summary: "q/k RMSNorm over `head_dim` before RoPE, explicit `head_dim`",
    verified: "reference; ONNX chain (static, history KV); verify bf16 (static, history KV); contract bf16 do_sample, w4bf16",
    tie_word_embeddings: false,
    head_dim: None,
    rms_norm_eps: 1e-6,
    weights: &names::LLAMA,
    gguf: Some(Gguf {
        arch: "qwen3",
        hf_architecture: "Qwen3ForCausalLM",
        qk_rows_permuted: false,
        bias_in_config: false,
    }),
    layer,
};

fn layer(keys: &ConfigKeys, _: &Dims) -> Result<LayerSpec, InputError> {
    llama::silu_only(keys)?;
    let bias = keys.opt_bool("attention_bias")?.unwrap_or(false);
    let mut spec = LayerSpec::llama(bias, bias, llama::mlp_bias(keys)?);
    spec.attention.qk_norm = true;
    Ok(spec)
}
