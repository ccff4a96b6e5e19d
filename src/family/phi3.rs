//! phi3 (transformers' `Phi3ForCausalLM`: Phi-3/3.5-mini, Phi-4-mini): llama's block with q/k/v
//! fused into `qkv_proj` (rows q | k | v) and gate/up into `gate_up_proj` (rows gate | up),
//! rotary on the first `head_dim · partial_rotary_factor` elements of each head only, an
//! optional `sliding_window` (default none), `rms_norm_eps` default 1e-5, no biases.
//! longrope (`rope_scaling` type longrope: the 128k models, Phi-4-mini) is read by the generic
//! rope reader (`model::config::LongRope`: short/long factors chosen per call like
//! transformers, attention factor from `original_max_position_embeddings`); the legacy "su" /
//! "yarn" names transformers maps to longrope for phi3 are refused as unsupported rope types.

use super::{llama, names, Dims, Family, LayerSpec, Projections, RotaryDims};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub static FAMILY: Family = Family {
    model_type: "phi3",
    summary: "fused `qkv_proj` (q, k, v rows) and `gate_up_proj` (gate, up), partial rotary \
              (`partial_rotary_factor`), optional `sliding_window`, `rms_norm_eps` default 1e-5; \
              longrope (short/long factors chosen per call from the position ids, attention \
              factor)",
    verified: "reference f32/bf16, longrope f32; ONNX chain (static, dynamic, history KV; \
               longrope static, dynamic, history KV); verify bf16 (static, dynamic; longrope static); \
               contract w4bf16; llm_convert.py's bmodel (full rotary, tied) runs with our tokens",
    tie_word_embeddings: false,
    head_dim: None,
    rms_norm_eps: 1e-5,
    weights: &names::LLAMA,
    gguf: None,
    layer,
};

fn layer(keys: &ConfigKeys, dims: &Dims) -> Result<LayerSpec, InputError> {
    llama::silu_only(keys)?;
    let mut spec = LayerSpec::llama(false, false, false);
    spec.attention.qkv = Projections::Fused;
    spec.mlp.gate_up = Projections::Fused;
    spec.attention.rotary.dims = rotary_dims(keys, dims.head_dim, 1.0)?;
    spec.sliding_window = keys.nullable_usize("sliding_window", None)?;
    Ok(spec)
}

/// transformers keeps `partial_rotary_factor` in `rope_parameters` (5.x) or at the top level
/// (older configs); the rotated width is `int(head_dim · factor)`. `default` is the class's
/// factor when neither place has one.
pub(super) fn rotary_dims(
    keys: &ConfigKeys,
    head_dim: usize,
    default: f64,
) -> Result<RotaryDims, InputError> {
    const KEY: &str = "partial_rotary_factor";
    let nested = keys
        .present("rope_parameters")
        .and_then(|p| p.get(KEY))
        .filter(|v| !v.is_null());
    let factor = match nested {
        Some(v) => v.as_f64().ok_or_else(|| {
            keys.bad(
                "rope_parameters",
                format!("\"{KEY}\" must be a number, got {v}"),
                "fix its value",
            )
        })?,
        None => keys.opt_f64(KEY)?.unwrap_or(default),
    };
    let rotary_dim = (head_dim as f64 * factor) as usize;
    if !(factor > 0.0 && factor <= 1.0) || rotary_dim % 2 != 0 || rotary_dim == 0 {
        return Err(keys.bad(
            KEY,
            format!("{factor} gives a rotary width of {rotary_dim} of head_dim {head_dim}"),
            "use a factor in (0, 1] that rotates an even number of elements",
        ));
    }
    Ok(if rotary_dim == head_dim {
        RotaryDims::Full
    } else {
        RotaryDims::Partial { rotary_dim }
    })
}

#[cfg(test)]
mod tests {
    use crate::family::{Projections, RotaryDims};
    use crate::model::ModelConfig;
    use serde_json::{json, Value};

    fn parse(extra: Value) -> Result<ModelConfig, crate::error::InputError> {
        crate::model::config::test_config("phi3", 128, extra)
    }

    #[test]
    fn fused_projections_and_defaults() {
        let c = parse(json!({})).unwrap();
        assert_eq!(c.layer.attention.qkv, Projections::Fused);
        assert_eq!(c.layer.mlp.gate_up, Projections::Fused);
        assert_eq!(c.layer.attention.rotary.dims, RotaryDims::Full);
        assert_eq!((c.rms_norm_eps, c.tie_word_embeddings), (1e-5, false));
        assert_eq!(c.layer.sliding_window, None);
    }

    #[test]
    fn partial_rotary_in_either_place() {
        let top = parse(json!({"partial_rotary_factor": 0.75})).unwrap();
        let nested = parse(json!({"rope_parameters": {"rope_type": "default",
                                  "rope_theta": 10000.0, "partial_rotary_factor": 0.75}}))
        .unwrap();
        for c in [top, nested] {
            assert_eq!(
                c.layer.attention.rotary.dims,
                RotaryDims::Partial { rotary_dim: 24 }
            );
        }
        let e = parse(json!({"partial_rotary_factor": 1.5}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("partial_rotary_factor"), "{e}");
    }

    #[test]
    fn longrope_parses_and_bad_factors_are_refused() {
        use crate::model::config::RopeScaling;
        let f: Vec<f64> = vec![1.0; 16];
        let c = parse(
            json!({"rope_scaling": {"type": "longrope", "short_factor": f,
                                              "long_factor": f}}),
        )
        .unwrap();
        assert!(matches!(c.rope_scaling, Some(RopeScaling::LongRope(_))));
        let e = parse(
            json!({"rope_scaling": {"type": "longrope", "short_factor": [1.0],
                                              "long_factor": [1.0]}}),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("rope_scaling") && text.contains("short_factor"),
            "{text}"
        );
    }
}
