//! gemma (transformers' `GemmaForCausalLM`): llama's block and names with three changes:
//! every RMSNorm scales by `1 + w` (weights stored zero-centred), the embedding output is
//! multiplied by `sqrt(hidden_size)` cast to the weight dtype (`GemmaTextScaledWordEmbedding`),
//! and the MLP gate is GELU's tanh approximation. `head_dim` defaults to 256, embeddings are
//! tied by default. No biases.

use super::{Activation, Dims, Family, LayerSpec, Norm, Scales};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub static FAMILY: Family = Family {
    model_type: "gemma",
    summary: "(1+w) RMSNorm, embedding × sqrt(hidden) rounded to the weight dtype, GELU-tanh MLP \
              (`hidden_activation`, else `hidden_act`), `head_dim` default 256, tied by default",
    verified: "reference f32/bf16; ONNX chain (static, dynamic, history KV); verify bf16 (static, dynamic); contract w4bf16",
    tie_word_embeddings: true,
    head_dim: Some(256),
    rms_norm_eps: 1e-6,
    weights: &super::names::LLAMA,
    gguf: None,
    layer,
};

/// Names transformers maps to the tanh approximation (`ACT2FN`: GELUTanh, NewGELU, FastGELU).
const TANH_GELUS: [&str; 4] = [
    "gelu_pytorch_tanh",
    "gelu_python_tanh",
    "gelu_new",
    "gelu_fast",
];

fn layer(keys: &ConfigKeys, dims: &Dims) -> Result<LayerSpec, InputError> {
    let mut spec = LayerSpec::llama(false, false, false);
    spec.norm = Norm::RmsOnePlus;
    spec.mlp.activation = activation(keys)?;
    spec.scales = scaled_embedding(keys, dims)?;
    Ok(spec)
}

/// Gemma's embedding × sqrt(hidden) (in the weight dtype), shared by gemma2 and gemma3.
pub(super) fn scaled_embedding(keys: &ConfigKeys, dims: &Dims) -> Result<Scales, InputError> {
    Ok(Scales {
        embedding: embedding_scale(dims.hidden_size, &weight_dtype(keys)?),
        ..Scales::NONE
    })
}

/// Gemma is trained with the tanh GELU. Hub configs say so in `hidden_activation` (and often
/// carry a stale `"hidden_act": "gelu"` beside it), so that key wins; transformers 5.6.2's
/// GemmaMLP reads `hidden_act`, whose class default is `gelu_pytorch_tanh`.
fn activation(keys: &ConfigKeys) -> Result<Activation, InputError> {
    let key = if keys.present("hidden_activation").is_some() {
        "hidden_activation"
    } else {
        "hidden_act"
    };
    tanh_gelu(keys, key)
}

/// The activation `key` names: one of the tanh GELUs (or absent: the class default).
pub(super) fn tanh_gelu(keys: &ConfigKeys, key: &str) -> Result<Activation, InputError> {
    match keys.opt_str(key)? {
        None => Ok(Activation::GeluTanh),
        Some(act) if TANH_GELUS.contains(&act.as_str()) => Ok(Activation::GeluTanh),
        Some(act) => Err(keys.bad(
            key,
            format!("\"{act}\" is not supported for gemma"),
            "Gemma's MLP uses GELU's tanh approximation: set \"hidden_activation\": \
             \"gelu_pytorch_tanh\"",
        )),
    }
}

/// The dtype the checkpoint runs in (`torch_dtype`, or transformers 5's `dtype`).
fn weight_dtype(keys: &ConfigKeys) -> Result<String, InputError> {
    Ok(match keys.opt_str("torch_dtype")? {
        Some(d) => d,
        None => keys.opt_str("dtype")?.unwrap_or_default(),
    })
}

/// `sqrt(hidden)` as transformers holds it: an f32 buffer cast to the weight dtype before the
/// multiply (so bf16 turns sqrt(3072) = 55.43 into 55.5).
fn embedding_scale(hidden: usize, dtype: &str) -> f64 {
    let s = (hidden as f64).sqrt() as f32;
    match dtype {
        "bfloat16" => half::bf16::from_f32(s).to_f64(),
        "float16" => half::f16::from_f32(s).to_f64(),
        _ => s as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::embedding_scale;
    use crate::family::{Activation, Norm};
    use crate::model::ModelConfig;
    use serde_json::{json, Value};

    fn parse(extra: Value) -> Result<ModelConfig, crate::error::InputError> {
        crate::model::config::test_config("gemma", 64, extra)
    }

    #[test]
    fn defaults_like_transformers() {
        let c = parse(json!({})).unwrap();
        assert_eq!((c.head_dim, c.tie_word_embeddings), (256, true));
        assert_eq!(c.layer.norm, Norm::RmsOnePlus);
        assert_eq!(c.layer.mlp.activation, Activation::GeluTanh);
        assert_eq!(c.embedding_scale(), 8.0);
        assert!(!c.layer.attention.qkv_bias && !c.layer.mlp.bias);
    }

    #[test]
    fn activation_keys() {
        let hub = parse(json!({"hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh"}));
        assert_eq!(hub.unwrap().layer.mlp.activation, Activation::GeluTanh);
        let e = parse(json!({"hidden_act": "gelu"}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hidden_act") && e.contains("gelu_pytorch_tanh"),
            "{e}"
        );
        let e = parse(json!({"hidden_activation": "silu"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_activation"), "{e}");
    }

    #[test]
    fn embedding_scale_rounds_like_torch() {
        assert_eq!(embedding_scale(3072, "bfloat16"), 55.5);
        assert_eq!(embedding_scale(2048, "bfloat16"), 45.25);
        assert_eq!(embedding_scale(128, "bfloat16"), 11.3125);
        assert_eq!(embedding_scale(128, "float32"), 128f64.sqrt() as f32 as f64);
    }
}
