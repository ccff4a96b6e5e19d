//! chatglm (remote code `modeling_chatglm.py`: ChatGLM3-6B, GLM-4-9B-chat hub checkpoints):
//! glm's math under `transformer.*` names (see `names::CHATGLM`): q/k/v packed in
//! `query_key_value` (rows q | k | v, bias `add_qkv_bias`) with `multi_query_group_num` kv
//! heads, gate/up fused in `dense_h_to_4h`, pre-norm RMSNorm, SiLU, and rotary on the first
//! half of each head in interleaved pairs with base `10000 · rope_ratio` (GLM-4 sets rope_ratio;
//! TPU-MLIR's llm_convert.py ignores it). Its config names the generic numbers its own way;
//! [`canonical_config`] renames them before the generic reader runs. ChatGLM-6B (v1) and
//! configs with another block layout (LayerNorm, post-layernorm residuals, linear biases) are
//! refused.
//!
//! Runtime contract: llm_convert.py's chatglm one, so that its runtimes run our bmodels: the
//! decode block returns the whole KV cache shifted by one (support/docs/runtime-contract.md
//! §5), with no decode stages and no history KV (`convert::shifted_cache` refuses them).

use serde_json::{Map, Value};

use super::{llama, names, Dims, Family, LayerSpec, Projections, RotaryDims, RotaryPairs};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub static FAMILY: Family = Family {
    model_type: "chatglm",
    summary: "glm's math under `transformer.*` names: packed `query_key_value` (q, k, v rows; \
              `multi_query_group_num` kv heads), fused `dense_h_to_4h`, interleaved-pair \
              rotary on half of head_dim with base 10000·`rope_ratio`; ChatGLM config keys \
              (`num_layers`, `padded_vocab_size`, `ffn_hidden_size`, `kv_channels`, …); \
              llm_convert.py's runtime contract for it (decode returns the whole shifted KV \
              cache: no history KV, no decode stages, prefill at -s)",
    verified: "reference f32 (from a glm twin); ONNX chain (static, dynamic); verify bf16 \
               (static); contract w4bf16; llm_convert.py's bmodel (rope_ratio 1, tied) runs \
               with our tokens",
    tie_word_embeddings: false,
    head_dim: None,
    rms_norm_eps: 1e-5,
    weights: &names::CHATGLM,
    gguf: None,
    layer,
};

/// ChatGLMConfig key → the generic key it stands for.
const RENAMES: &[(&str, &str)] = &[
    ("num_layers", "num_hidden_layers"),
    ("padded_vocab_size", "vocab_size"),
    ("ffn_hidden_size", "intermediate_size"),
    ("kv_channels", "head_dim"),
    ("layernorm_epsilon", "rms_norm_eps"),
    ("seq_length", "max_position_embeddings"),
];

/// `obj` with ChatGLMConfig's keys under the generic names: the renames above (the ChatGLM
/// name wins: `vocab_size = padded_vocab_size` as the config class sets it),
/// `num_key_value_heads = multi_query_group_num` when `multi_query_attention`, and
/// `rope_theta = 10000 · rope_ratio` (modeling_chatglm's `base = base * self.rope_ratio`).
pub fn canonical_config(obj: &Map<String, Value>) -> Map<String, Value> {
    let mut out = obj.clone();
    for (from, to) in RENAMES {
        if let Some(v) = obj.get(*from).filter(|v| !v.is_null()) {
            out.insert(to.to_string(), v.clone());
        }
    }
    if obj.get("multi_query_attention").and_then(Value::as_bool) == Some(true) {
        if let Some(groups) = obj.get("multi_query_group_num") {
            out.insert("num_key_value_heads".into(), groups.clone());
        }
    }
    let ratio = obj.get("rope_ratio").and_then(Value::as_f64).unwrap_or(1.0);
    out.insert("rope_theta".into(), Value::from(10000.0 * ratio));
    out
}

fn layer(keys: &ConfigKeys, dims: &Dims) -> Result<LayerSpec, InputError> {
    llama::silu_only(keys)?;
    if keys.present("multi_query_attention").is_none() || keys.present("ffn_hidden_size").is_none()
    {
        return Err(keys.bad(
            "multi_query_attention",
            "missing with ffn_hidden_size: this is a ChatGLM-6B (v1) config, whose block \
             (GELU, 2-D positions) differs",
            "only ChatGLM2/3 and GLM-4 checkpoints (model_type chatglm with \
             multi_query_attention and ffn_hidden_size) are supported",
        ));
    }
    for (key, want) in [
        ("rmsnorm", true),
        ("post_layer_norm", true),
        ("apply_residual_connection_post_layernorm", false),
        ("add_bias_linear", false),
        ("original_rope", true),
    ] {
        if let Some(v) = keys.opt_bool(key)? {
            if v != want {
                return Err(keys.bad(
                    key,
                    format!("{v} is a block layout this tool does not build"),
                    format!("only ChatGLM3/GLM-4's layout ({key} = {want}) is supported"),
                ));
            }
        }
    }
    let qkv_bias = keys.opt_bool("add_qkv_bias")?.unwrap_or(false);
    let mut spec = LayerSpec::llama(qkv_bias, false, false);
    spec.attention.qkv = Projections::Fused;
    spec.mlp.gate_up = Projections::Fused;
    // RotaryEmbedding(rotary_dim // 2) with rotary_dim = kv_channels: half of each head.
    spec.attention.rotary.dims = RotaryDims::Partial {
        rotary_dim: dims.head_dim / 2,
    };
    spec.attention.rotary.pairs = RotaryPairs::Interleaved;
    spec.attention.shifted_kv_cache = true;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use crate::family::{Projections, RotaryDims, RotaryPairs};
    use crate::model::ModelConfig;
    use serde_json::{json, Value};
    use std::path::Path;

    fn chatglm(extra: Value) -> Result<ModelConfig, crate::error::InputError> {
        let mut v = json!({"model_type": "chatglm", "hidden_size": 128, "num_layers": 2,
            "num_attention_heads": 4, "kv_channels": 32, "multi_query_attention": true,
            "multi_query_group_num": 2, "ffn_hidden_size": 256, "padded_vocab_size": 512,
            "vocab_size": 500, "layernorm_epsilon": 1e-5, "seq_length": 8192,
            "add_qkv_bias": true, "add_bias_linear": false, "rmsnorm": true});
        if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            v.extend(extra.clone());
        }
        ModelConfig::from_json(&v, Path::new("config.json"))
    }

    #[test]
    fn reads_chatglm_keys() {
        let c = chatglm(json!({"rope_ratio": 500})).unwrap();
        assert_eq!(
            (c.num_hidden_layers, c.vocab_size, c.intermediate_size),
            (2, 512, 256)
        );
        assert_eq!((c.head_dim, c.num_key_value_heads), (32, 2));
        assert_eq!((c.rms_norm_eps, c.max_position_embeddings), (1e-5, 8192));
        assert_eq!(c.rope_theta, 5_000_000.0);
        let a = c.layer.attention;
        assert!(a.qkv_bias && !a.o_bias && !c.tie_word_embeddings);
        assert_eq!(
            (a.qkv, c.layer.mlp.gate_up),
            (Projections::Fused, Projections::Fused)
        );
        assert_eq!(a.rotary.dims, RotaryDims::Partial { rotary_dim: 16 });
        assert_eq!(a.rotary.pairs, RotaryPairs::Interleaved);
        assert_eq!(chatglm(json!({})).unwrap().rope_theta, 10000.0);
    }

    #[test]
    fn other_layouts_are_refused() {
        let e = chatglm(json!({"apply_residual_connection_post_layernorm": true}));
        assert!(e.unwrap_err().to_string().contains("apply_residual"));
        let mut v1 = json!({});
        v1["multi_query_attention"] = Value::Null;
        let e = chatglm(v1).unwrap_err().to_string();
        assert!(e.contains("ChatGLM-6B"), "{e}");
    }
}
