//! qwen2 (transformers' `Qwen2ForCausalLM`): llama with a bias on q/k/v (never on o).

use super::{llama, names, Dims, Family, Gguf, LayerSpec};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub static FAMILY: Family = Family {
    model_type: "qwen2",
    summary: "q/k/v bias (always), no o bias",
    verified: "reference f32/bf16; ONNX chain (static, dynamic, do_sample, history KV); verify bf16, w4bf16; contract bf16, w4bf16 (static, dynamic, history KV); chat",
    tie_word_embeddings: false,
    head_dim: None,
    rms_norm_eps: 1e-6,
    weights: &names::LLAMA,
    gguf: Some(Gguf {
        arch: "qwen2",
        hf_architecture: "Qwen2ForCausalLM",
        qk_rows_permuted: false,
        bias_in_config: false,
    }),
    layer,
};

fn layer(keys: &ConfigKeys, _: &Dims) -> Result<LayerSpec, InputError> {
    llama::silu_only(keys)?;
    Ok(LayerSpec::llama(true, false, llama::mlp_bias(keys)?))
}
