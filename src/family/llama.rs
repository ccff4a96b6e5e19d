//! llama (transformers' `LlamaForCausalLM`): the baseline every other family here varies.
//! Rotary scaling (default, linear, llama3) is read generically by `model::config`.

use super::{names, Dims, Family, Gguf, LayerSpec};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub static FAMILY: Family = Family {
    model_type: "llama",
    summary: "the baseline: RMSNorm, rotate-half RoPE (default, linear, llama3 `rope_scaling`), \
              SiLU MLP; optional `attention_bias`, `mlp_bias`",
    verified: "reference f32/bf16 (tied, untied, llama3 rope; SmolLM2 GGUF); ONNX chain (static, dynamic, do_sample, history KV); verify bf16 (dynamic, do_sample), SmolLM2 w4bf16; contract bf16, w8f16",
    tie_word_embeddings: false,
    head_dim: None,
    rms_norm_eps: 1e-6,
    weights: &names::LLAMA,
    gguf: Some(Gguf {
        arch: "llama",
        hf_architecture: "LlamaForCausalLM",
        qk_rows_permuted: true,
        bias_in_config: true,
    }),
    layer,
};

/// `attention_bias` puts a bias on q, k, v and o alike.
fn layer(keys: &ConfigKeys, _: &Dims) -> Result<LayerSpec, InputError> {
    silu_only(keys)?;
    let bias = keys.opt_bool("attention_bias")?.unwrap_or(false);
    Ok(LayerSpec::llama(bias, bias, mlp_bias(keys)?))
}

/// `mlp_bias` (default false), read alike by every llama-derived family.
pub(super) fn mlp_bias(keys: &ConfigKeys) -> Result<bool, InputError> {
    Ok(keys.opt_bool("mlp_bias")?.unwrap_or(false))
}

/// `hidden_act` must be (or default to) SiLU, for every family with llama's MLP.
pub(super) fn silu_only(keys: &ConfigKeys) -> Result<(), InputError> {
    match keys.opt_str("hidden_act")? {
        Some(act) if act != "silu" => Err(keys.bad(
            "hidden_act",
            format!("\"{act}\" is not supported"),
            "only SiLU-gated MLPs (hidden_act = \"silu\") are supported",
        )),
        _ => Ok(()),
    }
}
