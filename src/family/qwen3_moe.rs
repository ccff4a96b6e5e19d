//! qwen3_moe (transformers' `Qwen3MoeForCausalLM`: Qwen3-30B-A3B, Qwen3-235B-A22B): qwen3's
//! attention (q/k RMSNorm over head_dim, `attention_bias` on q/k/v/o, default false) with
//! qwen2_moe's routed experts ([`super::moe`]) and no shared expert.

use super::moe::{self, Defaults};
use super::{llama, names, Dims, Family, LayerSpec};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub static FAMILY: Family = Family {
    model_type: "qwen3_moe",
    summary: "qwen3's attention (q/k RMSNorm); qwen2_moe's routed experts without the shared \
              expert (`num_experts`, or `num_local_experts` as transformers 5 saves it; \
              `norm_topk_prob` default false)",
    verified: "reference f32/bf16; ONNX chain (static, dynamic, history KV); verify bf16 \
               (static, dynamic); contract w4bf16",
    tie_word_embeddings: false,
    head_dim: None,
    rms_norm_eps: 1e-6,
    weights: &names::LLAMA,
    gguf: None,
    layer,
};

fn layer(keys: &ConfigKeys, dims: &Dims) -> Result<LayerSpec, InputError> {
    llama::silu_only(keys)?;
    moe::refuse_sliding_window(keys)?;
    let bias = keys.opt_bool("attention_bias")?.unwrap_or(false);
    let mut spec = LayerSpec::llama(bias, bias, false);
    spec.attention.qk_norm = true;
    let defaults = Defaults {
        num_experts: 128,
        top_k: 8,
        intermediate_size: 768,
        shared_expert: None,
    };
    spec.moe = Some(moe::read(keys, dims, defaults)?);
    Ok(spec)
}
