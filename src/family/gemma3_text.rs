//! gemma3_text (transformers' `Gemma3ForCausalLM`, the language model of Gemma 3): gemma2's
//! sandwich block and names plus q/k RMSNorm ((1+w), over head_dim, before rotary). Five local
//! layers per global one (`layer_types`, else `sliding_window_pattern`, default 6): local
//! layers slide a window (`sliding_window`, default 4096) and turn rotary at their own base
//! without scaling (`rope_local_base_freq`, default 10000, or transformers 5's
//! `rope_parameters.sliding_attention`); global layers see everything with the model's rotary
//! (`rope_theta` with `rope_scaling`, or `rope_parameters.full_attention`). Soft caps are off
//! by default. The nested `gemma3` (vision-language) config reaches this family through
//! `model::vlm::text_only`.

use serde_json::Value;

use super::gemma2::{nullable_positive, sandwich_layer, sliding_layers, NAMES};
use super::{Dims, Family, LayerSpec, LocalLayers};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub static FAMILY: Family = Family {
    model_type: "gemma3_text",
    summary: "gemma2's block and names with q/k (1+w) RMSNorm; local (sliding-window) and global \
              layers (`layer_types`, else `sliding_window_pattern` default 6); local layers turn \
              rotary at `rope_local_base_freq` (default 10000) unscaled, global ones at \
              `rope_theta` with `rope_scaling` (or per-layer-type `rope_parameters`); soft caps \
              off by default; `gemma3` (the vision-language config) converts as its text part (defaults \
              filled as transformers does; vision tower not converted)",
    verified: "reference f32/bf16 (window, layer types, local rope base, global rope scaling, \
               score scale each change the tokens); ONNX chain (static, dynamic, history KV); \
               verify bf16 (static, dynamic); contract w4bf16; gemma3 layout: reference vs \
               transformers' Gemma3ForConditionalGeneration, same pieces as gemma3_text",
    tie_word_embeddings: true,
    head_dim: Some(256),
    rms_norm_eps: 1e-6,
    weights: &NAMES,
    gguf: None,
    layer,
};

/// transformers' `Gemma3TextConfig` defaults.
const DEFAULT_PATTERN: usize = 6;
const DEFAULT_LOCAL_THETA: f64 = 10_000.0;

fn layer(keys: &ConfigKeys, dims: &Dims) -> Result<LayerSpec, InputError> {
    let mut spec = sandwich_layer(keys, dims)?;
    spec.attention.qk_norm = true;
    spec.attention.scores.softcap = nullable_positive(keys, "attn_logit_softcapping", None)?;
    spec.final_logit_softcap = nullable_positive(keys, "final_logit_softcapping", None)?;
    let pattern = keys
        .opt_usize("sliding_window_pattern")?
        .unwrap_or(DEFAULT_PATTERN);
    spec.local = LocalLayers {
        layers: sliding_layers(keys, dims.num_hidden_layers, pattern)?,
        rope_theta: Some(local_theta(keys)?),
    };
    global_theta_given(keys)?;
    Ok(spec)
}

/// The local layers' rotary base: `rope_parameters.sliding_attention` (transformers 5), else
/// `rope_local_base_freq`, else 10000. Only the default (unscaled) rotary is supported there.
fn local_theta(keys: &ConfigKeys) -> Result<f64, InputError> {
    let local = keys
        .present("rope_parameters")
        .and_then(|p| p.get("sliding_attention"));
    let from_params = match local {
        Some(p) => {
            let kind = p.get("rope_type").and_then(Value::as_str);
            if kind.is_some_and(|k| k != "default") {
                return Err(keys.bad(
                    "rope_parameters",
                    format!("sliding_attention rope type {kind:?} is not supported"),
                    "Gemma 3's local layers use the default rotary: set its rope_type to \"default\"",
                ));
            }
            p.get("rope_theta").map(|t| {
                t.as_f64()
                    .filter(|t| t.is_finite() && *t > 0.0)
                    .ok_or_else(|| {
                        keys.bad(
                            "rope_parameters",
                            format!("sliding_attention rope_theta {t} is not a positive number"),
                            "fix its value",
                        )
                    })
            })
        }
        None => None,
    };
    match from_params {
        Some(theta) => theta,
        None => Ok(
            nullable_positive(keys, "rope_local_base_freq", Some(DEFAULT_LOCAL_THETA))?
                .unwrap_or(DEFAULT_LOCAL_THETA),
        ),
    }
}

/// The global layers' base has gemma3's own default (1e6), which the generic rotary reader
/// (default 10000) does not know: refuse a config that leaves it out rather than guess.
fn global_theta_given(keys: &ConfigKeys) -> Result<(), InputError> {
    let in_params = keys
        .present("rope_parameters")
        .and_then(|p| p.get("full_attention").unwrap_or(p).get("rope_theta"))
        .is_some();
    if keys.present("rope_theta").is_none() && !in_params {
        return Err(keys.bad(
            "rope_theta",
            "missing (Gemma 3's global layers default to 1000000, this tool does not guess)",
            "add \"rope_theta\": 1000000.0 to config.json",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::family::LayerRope;
    use crate::model::config::RopeScaling;
    use crate::model::ModelConfig;
    use serde_json::{json, Value};

    fn parse(extra: Value) -> Result<ModelConfig, crate::error::InputError> {
        crate::model::config::test_config("gemma3_text", 64, extra)
    }

    #[test]
    fn hub_layout() {
        let c = parse(json!({"num_hidden_layers": 7, "rope_theta": 1e6,
                             "rope_scaling": {"rope_type": "linear", "factor": 8.0},
                             "rope_local_base_freq": 1e4, "sliding_window": 512}))
        .unwrap();
        let l = &c.layer;
        assert!(l.attention.qk_norm && l.branch_output_norms);
        assert_eq!(
            (l.attention.scores.softcap, l.final_logit_softcap),
            (None, None)
        );
        let windows: Vec<_> = (0..7).map(|i| l.window(i)).collect();
        let w = Some(512);
        assert_eq!(windows, vec![w, w, w, w, w, None, w]);
        assert_eq!(l.rope(0), LayerRope::Unscaled { theta: 1e4 });
        assert_eq!(l.rope(5), LayerRope::Model);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 8.0 }));
    }

    /// transformers 5 writes `rope_parameters` per layer type, and `layer_types`.
    #[test]
    fn transformers5_layout() {
        let c = parse(
            json!({"layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5e5},
                "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}}),
        )
        .unwrap();
        assert_eq!(c.layer.rope(0), LayerRope::Unscaled { theta: 100.0 });
        assert_eq!((c.layer.window(0), c.layer.window(1)), (Some(4096), None));
        assert_eq!(c.rope_theta, 5e5);
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));
    }

    #[test]
    fn refusals() {
        let e = parse(json!({})).unwrap_err().to_string();
        assert!(e.contains("rope_theta") && e.contains("1000000"), "{e}");
        let e = parse(json!({"rope_theta": 1e6, "rope_parameters": {
            "sliding_attention": {"rope_type": "linear", "factor": 2.0}}}))
        .unwrap_err()
        .to_string();
        assert!(e.contains("sliding_attention"), "{e}");
    }
}
