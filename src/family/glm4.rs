//! glm4 (transformers' `Glm4ForCausalLM`: GLM-4-0414, GLM-Z1): llama's names with gate/up
//! fused into `gate_up_proj` (rows gate | up), q/k/v biases (`attention_bias`, default true;
//! o_proj never has one), rotary on the first `head_dim · partial_rotary_factor` (default 0.5)
//! elements in interleaved pairs (2i, 2i+1), and a norm on each branch's output before the
//! residual add (`post_self_attn_layernorm`, `post_mlp_layernorm`). `head_dim` default 128,
//! `rms_norm_eps` default 1.5625e-7, untied by default.

use super::{llama, names, phi3, Dims, Family, LayerSpec, Projections, RotaryPairs};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub static FAMILY: Family = Family {
    model_type: "glm4",
    summary: "fused `gate_up_proj` (gate, up), q/k/v bias (`attention_bias`, default true), \
              interleaved-pair rotary on `partial_rotary_factor` (default 0.5) of head_dim, \
              norms on the attention and MLP outputs, `head_dim` default 128, \
              `rms_norm_eps` default 1.5625e-7",
    verified: "reference f32/bf16; ONNX chain (static, dynamic, history KV); verify bf16 \
               (static, dynamic); contract w4bf16",
    tie_word_embeddings: false,
    head_dim: Some(128),
    rms_norm_eps: 1.5625e-7,
    weights: &names::LLAMA,
    gguf: None,
    layer,
};

fn layer(keys: &ConfigKeys, dims: &Dims) -> Result<LayerSpec, InputError> {
    let mut spec = glm_layer(keys, dims)?;
    spec.branch_output_norms = true;
    Ok(spec)
}

/// The layer glm4 and glm share (glm has no branch output norms; it is glm's `layer`).
pub(super) fn glm_layer(keys: &ConfigKeys, dims: &Dims) -> Result<LayerSpec, InputError> {
    llama::silu_only(keys)?;
    let qkv_bias = keys.opt_bool("attention_bias")?.unwrap_or(true);
    let mut spec = LayerSpec::llama(qkv_bias, false, false);
    spec.mlp.gate_up = Projections::Fused;
    spec.attention.rotary.dims = phi3::rotary_dims(keys, dims.head_dim, 0.5)?;
    spec.attention.rotary.pairs = RotaryPairs::Interleaved;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use crate::family::{Projections, RotaryDims, RotaryPairs};
    use crate::model::ModelConfig;
    use serde_json::{json, Value};

    fn parse(extra: Value) -> Result<ModelConfig, crate::error::InputError> {
        crate::model::config::test_config("glm4", 128, extra)
    }

    #[test]
    fn defaults_like_transformers() {
        let c = parse(json!({})).unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!((c.rms_norm_eps, c.tie_word_embeddings), (1.5625e-7, false));
        let (attn, l) = (c.layer.attention, c.layer);
        assert!(attn.qkv_bias && !attn.o_bias && !l.mlp.bias && l.branch_output_norms);
        assert_eq!(
            (attn.qkv, l.mlp.gate_up),
            (Projections::Separate, Projections::Fused)
        );
        assert_eq!(attn.rotary.dims, RotaryDims::Partial { rotary_dim: 64 });
        assert_eq!(attn.rotary.pairs, RotaryPairs::Interleaved);
    }

    #[test]
    fn config_keys() {
        let c = parse(json!({"head_dim": 32, "attention_bias": false,
                             "partial_rotary_factor": 1.0}))
        .unwrap();
        assert!(!c.layer.attention.qkv_bias);
        assert_eq!(c.layer.attention.rotary.dims, RotaryDims::Full);
        let e = parse(json!({"hidden_act": "gelu"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_act"), "{e}");
    }
}
