//! gemma2 (transformers' `Gemma2ForCausalLM`): gemma's (1+w) RMSNorm, embedding × sqrt(hidden)
//! and GELU-tanh (`hidden_activation`), in a "sandwich" block that also norms each branch's
//! output before the residual add. Its names differ from llama's meaning:
//! `post_attention_layernorm` norms the attention output, `pre_feedforward_layernorm` is the
//! pre-MLP norm and `post_feedforward_layernorm` norms the MLP output. Sliding-window layers
//! alternate with global ones (`layer_types`; without it layer i slides iff i is even), scores
//! are scaled by `1/sqrt(query_pre_attn_scalar)` (default 256) and soft-capped
//! (`attn_logit_softcapping`, default 50), and the logits too (`final_logit_softcapping`,
//! default 30). `attention_bias` (default false) puts a bias on q, k, v and o. One rotary for
//! every layer. `head_dim` default 256, tied by default.

use serde_json::Value;

use super::{gemma, names, Dims, Family, LayerSet, LayerSpec, Norm, WeightNames};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub static FAMILY: Family = Family {
    model_type: "gemma2",
    summary: "gemma's (1+w) RMSNorm, scaled embedding and GELU-tanh (`hidden_activation`), plus \
              norms on the attention and MLP outputs (`post_attention_layernorm` is the attention \
              output's, `pre_feedforward_layernorm` the MLP input's), sliding-window layers \
              alternating with global ones (`layer_types`, `sliding_window` default 4096), \
              scores × `query_pre_attn_scalar`^-½ (default 256), tanh soft caps on scores \
              (`attn_logit_softcapping`, default 50) and logits (`final_logit_softcapping`, \
              default 30), optional `attention_bias`",
    verified: "reference f32/bf16 (window, layer types, score cap, score scale each change the \
               tokens; the logit cap the logits); ONNX chain (static, dynamic, do_sample with \
               capped logits, history KV); verify bf16 (static, dynamic); contract w4bf16",
    tie_word_embeddings: true,
    head_dim: Some(256),
    rms_norm_eps: 1e-6,
    weights: &NAMES,
    gguf: None,
    layer,
};

/// llama's names with gemma2's four norms: the llama-meaning pre-MLP norm is
/// `pre_feedforward_layernorm`, the branch output norms `post_attention_layernorm` and
/// `post_feedforward_layernorm` (shared by gemma3).
pub(super) const NAMES: WeightNames = WeightNames {
    post_attention_norm: "pre_feedforward_layernorm",
    attn_output_norm: "post_attention_layernorm",
    mlp_output_norm: "post_feedforward_layernorm",
    ..names::LLAMA
};

/// transformers' `Gemma2Config` defaults.
const DEFAULT_SLIDING_WINDOW: usize = 4096;
const DEFAULT_QUERY_PRE_ATTN_SCALAR: f64 = 256.0;

fn layer(keys: &ConfigKeys, dims: &Dims) -> Result<LayerSpec, InputError> {
    let mut spec = sandwich_layer(keys, dims)?;
    spec.attention.scores.softcap = nullable_positive(keys, "attn_logit_softcapping", Some(50.0))?;
    spec.final_logit_softcap = nullable_positive(keys, "final_logit_softcapping", Some(30.0))?;
    // Gemma2Config: layer i slides iff (i + 1) % 2 != 0.
    spec.local.layers = sliding_layers(keys, dims.num_hidden_layers, 2)?;
    Ok(spec)
}

/// The layer gemma2 and gemma3 share: gemma's norm, activation and embedding scale, the four
/// norms, `attention_bias`, `query_pre_attn_scalar`, `sliding_window`.
pub(super) fn sandwich_layer(keys: &ConfigKeys, dims: &Dims) -> Result<LayerSpec, InputError> {
    if keys.opt_bool("use_bidirectional_attention")? == Some(true) {
        return Err(keys.bad(
            "use_bidirectional_attention",
            "bidirectional (embedding) Gemma models are not supported",
            "only causal language models convert: remove the key or set it to false",
        ));
    }
    let bias = keys.opt_bool("attention_bias")?.unwrap_or(false);
    let mut spec = LayerSpec::llama(bias, bias, false);
    spec.norm = Norm::RmsOnePlus;
    spec.branch_output_norms = true;
    // Gemma2MLP / Gemma3MLP read `hidden_activation` only.
    spec.mlp.activation = gemma::tanh_gelu(keys, "hidden_activation")?;
    spec.scales = gemma::scaled_embedding(keys, dims)?;
    spec.attention.scores.query_pre_attn_scalar = nullable_positive(
        keys,
        "query_pre_attn_scalar",
        Some(DEFAULT_QUERY_PRE_ATTN_SCALAR),
    )?;
    spec.sliding_window = keys.nullable_usize("sliding_window", Some(DEFAULT_SLIDING_WINDOW))?;
    Ok(spec)
}

/// The sliding layers: `layer_types` (one `"sliding_attention"` or `"full_attention"` per
/// layer), else every layer but each `pattern`-th (transformers' default `layer_types`).
pub(super) fn sliding_layers(
    keys: &ConfigKeys,
    layers: usize,
    pattern: usize,
) -> Result<LayerSet, InputError> {
    let Some(types) = keys.present("layer_types") else {
        return Ok(LayerSet::from_fn(layers, |i| (i + 1) % pattern != 0));
    };
    let bad = |problem: String| {
        keys.bad(
            "layer_types",
            problem,
            format!(
                "give one \"sliding_attention\" or \"full_attention\" per layer \
                 ({layers} layers), or remove the key"
            ),
        )
    };
    let types = types
        .as_array()
        .ok_or_else(|| bad(format!("expected a list, got {types}")))?;
    if types.len() != layers {
        return Err(bad(format!("{} entries for {layers} layers", types.len())));
    }
    let mut sliding = Vec::with_capacity(layers);
    for t in types {
        sliding.push(match t.as_str() {
            Some("sliding_attention") => true,
            Some("full_attention") => false,
            _ => return Err(bad(format!("layer type {t} is not supported"))),
        });
    }
    Ok(LayerSet::from_fn(layers, |i| sliding[i]))
}

/// A positive number that may be null (= none): `default` only when the key is absent.
pub(super) fn nullable_positive(
    keys: &ConfigKeys,
    key: &str,
    default: Option<f64>,
) -> Result<Option<f64>, InputError> {
    let value = match keys.raw(key) {
        None => return Ok(default),
        Some(Value::Null) => return Ok(None),
        Some(_) => keys.opt_f64(key)?,
    };
    match value {
        Some(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
        _ => Err(keys.bad(
            key,
            format!(
                "{} is not a positive number",
                keys.raw(key).unwrap_or(&Value::Null)
            ),
            "fix its value (or null for none)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::family::{Activation, LayerRope, Norm};
    use crate::model::ModelConfig;
    use serde_json::{json, Value};

    fn parse(extra: Value) -> Result<ModelConfig, crate::error::InputError> {
        crate::model::config::test_config("gemma2", 64, extra)
    }

    #[test]
    fn defaults_like_transformers() {
        let c = parse(json!({"num_hidden_layers": 3})).unwrap();
        let l = &c.layer;
        assert_eq!((c.head_dim, c.tie_word_embeddings), (256, true));
        assert_eq!(
            (l.norm, l.mlp.activation),
            (Norm::RmsOnePlus, Activation::GeluTanh)
        );
        assert!(l.branch_output_norms && !l.attention.qk_norm && !l.attention.qkv_bias);
        assert_eq!(c.embedding_scale(), 8.0);
        assert_eq!(l.attention.scores.query_pre_attn_scalar, Some(256.0));
        assert_eq!(l.attention.scores.softcap, Some(50.0));
        assert_eq!(l.final_logit_softcap, Some(30.0));
        let windows: Vec<_> = (0..3).map(|i| l.window(i)).collect();
        assert_eq!(windows, vec![Some(4096), None, Some(4096)]);
        assert!((0..3).all(|i| l.rope(i) == LayerRope::Model));
        assert_eq!(c.weights().post_attention_norm, "pre_feedforward_layernorm");
    }

    #[test]
    fn config_keys() {
        let c = parse(
            json!({"layer_types": ["full_attention", "sliding_attention"],
                             "sliding_window": 5, "attn_logit_softcapping": null,
                             "final_logit_softcapping": 7.5, "query_pre_attn_scalar": 32,
                             "attention_bias": true, "hidden_act": "gelu"}),
        )
        .unwrap();
        let l = &c.layer;
        assert_eq!((l.window(0), l.window(1)), (None, Some(5)));
        assert_eq!(l.attention.scores.softcap, None);
        assert_eq!(l.final_logit_softcap, Some(7.5));
        assert_eq!(l.attention.scores.scale(16), 1.0 / 32f64.sqrt());
        assert!(l.attention.qkv_bias && l.attention.o_bias);
        for (bad, key) in [
            (json!({"layer_types": ["full_attention"]}), "layer_types"),
            (
                json!({"layer_types": ["chunked_attention", "full_attention"]}),
                "layer_types",
            ),
            (
                json!({"attn_logit_softcapping": 0}),
                "attn_logit_softcapping",
            ),
            (
                json!({"use_bidirectional_attention": true}),
                "use_bidirectional_attention",
            ),
            (json!({"hidden_activation": "silu"}), "hidden_activation"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }
}
