//! glm (transformers' `GlmForCausalLM`: GLM-4-9B-chat-hf, GLM-4-9B-0414's predecessors): glm4's
//! layer without its branch output norms, i.e. llama's pre-norm block with gate/up fused into
//! `gate_up_proj` (rows gate | up), q/k/v biases (`attention_bias`, default true), and rotary
//! on the first `head_dim · partial_rotary_factor` (default 0.5) elements in interleaved pairs
//! (2i, 2i+1). `head_dim` default 128, `rms_norm_eps` default 1.5625e-7, untied by default.

use super::{glm4, names, Family};

pub static FAMILY: Family = Family {
    model_type: "glm",
    summary: "glm4 without the attention and MLP output norms: fused `gate_up_proj` (gate, up), \
              q/k/v bias (`attention_bias`, default true), interleaved-pair rotary on \
              `partial_rotary_factor` (default 0.5) of head_dim, `head_dim` default 128, \
              `rms_norm_eps` default 1.5625e-7",
    verified: "reference f32/bf16; ONNX chain (static, dynamic, history KV); verify bf16 \
               (static, dynamic); contract w4bf16",
    tie_word_embeddings: false,
    head_dim: Some(128),
    rms_norm_eps: 1.5625e-7,
    weights: &names::LLAMA,
    gguf: None,
    layer: glm4::glm_layer,
};

#[cfg(test)]
mod tests {
    use crate::family::{Projections, RotaryDims, RotaryPairs};
    use serde_json::json;

    #[test]
    fn glm4_without_branch_norms() {
        let c = crate::model::config::test_config("glm", 128, json!({})).unwrap();
        assert_eq!((c.head_dim, c.rms_norm_eps), (128, 1.5625e-7));
        assert!(!c.layer.branch_output_norms && c.layer.attention.qkv_bias);
        assert_eq!(c.layer.mlp.gate_up, Projections::Fused);
        let rotary = c.layer.attention.rotary;
        assert_eq!(rotary.dims, RotaryDims::Partial { rotary_dim: 64 });
        assert_eq!(rotary.pairs, RotaryPairs::Interleaved);
    }
}
