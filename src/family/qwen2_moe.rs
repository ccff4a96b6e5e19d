//! qwen2_moe (transformers' `Qwen2MoeForCausalLM`: Qwen1.5-MoE, Qwen2-57B-A14B): qwen2's
//! attention (q/k/v bias, `qkv_bias` default true) with a mixture-of-experts MLP
//! ([`super::moe`]) that has a sigmoid-gated shared expert.

use super::moe::{self, Defaults};
use super::{llama, names, Dims, Family, LayerSpec};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub static FAMILY: Family = Family {
    model_type: "qwen2_moe",
    summary: "qwen2's attention (q/k/v bias, `qkv_bias`); MoE MLP: softmax router, top \
              `num_experts_per_tok` of `num_experts` experts (`moe_intermediate_size`), \
              `norm_topk_prob` (default false), sigmoid-gated shared expert \
              (`shared_expert_intermediate_size`), dense layers by `mlp_only_layers` / \
              `decoder_sparse_step`",
    verified: "reference f32/bf16 (per-expert and stacked expert tensors); ONNX chain (static, dynamic, history KV); verify bf16 \
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
    let qkv_bias = keys.opt_bool("qkv_bias")?.unwrap_or(true);
    let mut spec = LayerSpec::llama(qkv_bias, false, false);
    let defaults = Defaults {
        num_experts: 60,
        top_k: 4,
        intermediate_size: 1408,
        shared_expert: Some(5632),
    };
    spec.moe = Some(moe::read(keys, dims, defaults)?);
    Ok(spec)
}
