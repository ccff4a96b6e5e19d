//! mistral (transformers' `MistralForCausalLM`): llama's modules without biases, plus a
//! sliding window on every layer (`sliding_window`, default 4096; null = none) and an
//! optionally explicit `head_dim`. llama.cpp writes mistral GGUFs as `llama`.

use super::{llama, names, Dims, Family, LayerSpec};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub static FAMILY: Family = Family {
    model_type: "mistral",
    summary: "`sliding_window` on every layer (default 4096, null = none), no biases, \
              explicit `head_dim`",
    verified: "reference f32/bf16; ONNX chain (static, dynamic, history KV); verify bf16 (static, dynamic)",
    tie_word_embeddings: false,
    head_dim: None,
    rms_norm_eps: 1e-6,
    weights: &names::LLAMA,
    gguf: None,
    layer,
};

/// transformers' `MistralConfig.sliding_window` default.
const DEFAULT_SLIDING_WINDOW: usize = 4096;

fn layer(keys: &ConfigKeys, _: &Dims) -> Result<LayerSpec, InputError> {
    llama::silu_only(keys)?;
    let mut spec = LayerSpec::llama(false, false, false);
    spec.sliding_window = keys.nullable_usize("sliding_window", Some(DEFAULT_SLIDING_WINDOW))?;
    Ok(spec)
}
