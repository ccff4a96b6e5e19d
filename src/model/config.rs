//! `config.json` → typed [`ModelConfig`]: the generic numbers here, the family's own keys by
//! its reader in [`crate::family`].
//!
//! Reads both layouts seen in the wild: the Hub's classic one (`rope_theta`, `rope_scaling`,
//! `torch_dtype`) and transformers 5's (`rope_parameters`, `dtype`). Defaults follow the
//! transformers config classes so a sparse config means what it means to transformers.

mod keys;
mod longrope;

use std::path::Path;

use serde_json::Value;

use crate::error::InputError;
pub use crate::family::Family;
use crate::family::{Dims, LayerSpec, WeightNames};
pub use keys::ConfigKeys;
pub use longrope::LongRope;

/// How rotary frequencies are rescaled for long context.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Per-frequency divisors and a cos/sin factor (phi3, MiniCPM4), see [`LongRope`].
    #[serde(rename = "longrope")]
    LongRope(LongRope),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelConfig {
    pub family: &'static Family,
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// The decoder layer this config describes (biases, norms, scales, window…).
    pub layer: LayerSpec,
    /// `torch_dtype` (or transformers 5 `dtype`), e.g. "bfloat16".
    pub torch_dtype: Option<String>,
    /// A pre-quantized checkpoint's `quantization_config` (GPTQ / AWQ / auto-round).
    pub quant: Option<super::quant::QuantConfig>,
    /// An fp8 checkpoint's `quantization_config` (its weights are dequantized on read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fp8: Option<super::quant::fp8::Fp8Config>,
    /// The group the layers' weights were stored quantized in when they are dequantized on
    /// read (a GGUF's 32-element blocks); W4/W8 requantize on it (see `ConvertArgs::resolve`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_group_size: Option<usize>,
    /// A GGUF's quantized block linears (HF prefix → how its blocks become an A16MatMul),
    /// used when a conversion keeps the file's own quantization (`-q auto`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub gguf_linears: std::collections::BTreeMap<String, super::gguf_linear::LinearFormat>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The vision tower and image tokens, when the config is a VLM's.
    pub vlm: Option<super::vlm::VlmConfig>,
    /// The vision-language `model_type` whose language model this is, converted without its
    /// vision tower (`vlm::text_only`): `Some("gemma3")`.
    pub text_only_of: Option<&'static str>,
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<ModelConfig, InputError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                InputError::missing(path, "every Hugging Face model folder has a config.json")
            } else {
                InputError::invalid(path, format!("cannot read: {e}"), "check file permissions")
            }
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            InputError::invalid(
                path,
                format!("not valid JSON: {e}"),
                "restore config.json from the original model",
            )
        })?;
        Self::from_json(&value, path)
    }

    /// Builds a config from parsed JSON; `path` is only used in error messages.
    pub fn from_json(value: &Value, path: &Path) -> Result<ModelConfig, InputError> {
        let obj = value.as_object().ok_or_else(|| {
            InputError::invalid(
                path,
                "top level is not a JSON object",
                "restore config.json",
            )
        })?;
        let top = ConfigKeys::new(obj, path);
        let model_type = top.req_str("model_type")?;
        if let Some(split) = super::vlm::text_part(&top, &model_type)? {
            let scope = if obj.contains_key("llm_config") {
                "llm_config"
            } else {
                "text_config"
            };
            let mut cfg = Self::from_keys(&top.nested(&split.text, scope))?;
            cfg.vlm = Some(split.vlm);
            return Ok(cfg);
        }
        if let Some(text) = super::vlm::text_only::text_only_part(&top, &model_type)? {
            let mut cfg = Self::from_keys(&top.nested(&text, "text_config"))?;
            cfg.text_only_of = super::vlm::text_only::TEXT_ONLY_TYPES
                .iter()
                .copied()
                .find(|t| *t == model_type);
            return Ok(cfg);
        }
        // Families whose configs name the common keys their own way (chatglm).
        let renamed = crate::family::canonical_config(&model_type, obj);
        Self::from_keys(&ConfigKeys::new(renamed.as_ref().unwrap_or(obj), path))
    }

    /// A text model's config from its keys (the whole file, or a VLM's text part).
    fn from_keys(r: &ConfigKeys) -> Result<ModelConfig, InputError> {
        let model_type = r.req_str("model_type")?;
        let family = crate::family::lookup(&model_type).ok_or_else(|| {
            InputError::invalid(
                r.path(),
                format!("unsupported model_type \"{model_type}\""),
                format!(
                    "supported model types: {}; vision-language: {}; vision-language as text \
                     only: {}",
                    crate::family::supported(),
                    super::vlm::VLM_TYPES.join(", "),
                    super::vlm::text_only::TEXT_ONLY_TYPES.join(", ")
                ),
            )
        })?;
        // The MLP activation (`hidden_act`) is the family's to read.
        let hidden_size = bounded(r, "hidden_size", r.req_usize("hidden_size")?)?;
        let num_attention_heads = bounded(
            r,
            "num_attention_heads",
            r.req_usize("num_attention_heads")?,
        )?;
        let num_key_value_heads = r
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        let head_dim = match r.opt_usize("head_dim")?.or(family.head_dim) {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => {
                return Err(r.bad(
                    "head_dim",
                    format!(
                        "missing, and hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
                    ),
                    "add \"head_dim\" to config.json",
                ))
            }
        };
        let head_dim = bounded(r, "head_dim", head_dim)?;
        if head_dim % 2 != 0 {
            return Err(r.bad(
                "head_dim",
                format!("{head_dim} is odd: rotary embeddings rotate pairs of channels"),
                "head_dim (or hidden_size / num_attention_heads) must be even",
            ));
        }
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(r.bad(
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"
                ),
                "fix num_key_value_heads",
            ));
        }
        let vocab_size = bounded(r, "vocab_size", r.req_usize("vocab_size")?)?;
        let max_position_embeddings = bounded(
            r,
            "max_position_embeddings",
            r.opt_usize("max_position_embeddings")?.unwrap_or(2048),
        )?;
        let rope = read_rope(r, max_position_embeddings)?;
        let num_hidden_layers = bounded(r, "num_hidden_layers", r.req_usize("num_hidden_layers")?)?;
        let dims = Dims {
            hidden_size,
            head_dim,
            num_hidden_layers,
        };
        let layer = (family.layer)(r, &dims)?;
        if let Some(RopeScaling::LongRope(l)) = &rope.1 {
            l.check_width(r, layer.attention.rotary.dim(head_dim))?;
        }
        let quantization = r.raw("quantization_config").filter(|v| !v.is_null());
        let fp8 = match quantization {
            Some(qc) => super::quant::fp8::Fp8Config::parse(qc, r.path())?,
            None => None,
        };
        let cfg = ModelConfig {
            family,
            hidden_size,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            num_hidden_layers,
            intermediate_size: bounded(r, "intermediate_size", r.req_usize("intermediate_size")?)?,
            vocab_size,
            max_position_embeddings,
            rope_theta: rope.0,
            rope_scaling: rope.1,
            rms_norm_eps: in_range(
                r,
                "rms_norm_eps",
                r.opt_f64("rms_norm_eps")?.unwrap_or(family.rms_norm_eps),
                0.0..1.0,
            )?,
            tie_word_embeddings: r
                .opt_bool("tie_word_embeddings")?
                .unwrap_or(family.tie_word_embeddings),
            layer,
            torch_dtype: match r.opt_str("torch_dtype")? {
                Some(d) => Some(d),
                None => r.opt_str("dtype")?,
            },
            quant: match quantization.filter(|_| fp8.is_none()) {
                Some(qc) => Some(super::quant::QuantConfig::parse(qc, r.path())?),
                None => None,
            },
            fp8,
            stored_group_size: None,
            gguf_linears: Default::default(),
            bos_token_id: r.opt_usize("bos_token_id")?.map(|v| v as u32),
            eos_token_ids: r.token_ids("eos_token_id")?,
            vlm: None,
            text_only_of: None,
        };
        Ok(cfg)
    }

    /// The family's checkpoint tensor names.
    pub fn weights(&self) -> &'static WeightNames {
        self.family.weights
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Multiplier applied to each residual branch (MiniCPM's depth scaling, else 1).
    pub fn residual_scale(&self) -> f64 {
        self.layer.scales.residual
    }

    /// Multiplier applied to the embedding output (MiniCPM's scale_emb, else 1).
    pub fn embedding_scale(&self) -> f64 {
        self.layer.scales.embedding
    }

    /// Multiplier applied to the final hidden state before lm_head (MiniCPM, else 1).
    pub fn lm_head_input_scale(&self) -> f64 {
        self.layer.scales.lm_head_input
    }
}

/// Upper bounds on config sizes: far above any real model, low enough that nothing derived
/// from them (the tensor list, rotary tables, per-layer specs) can exhaust memory before the
/// checkpoint is compared with them.
const LIMITS: &[(&str, usize)] = &[
    ("hidden_size", 1 << 17),
    ("intermediate_size", 1 << 20),
    ("num_attention_heads", 1 << 10),
    ("head_dim", 1 << 11),
    ("num_hidden_layers", 1 << 10),
    ("vocab_size", 1 << 22),
    ("max_position_embeddings", 1 << 24),
];

/// `value` of `key`, refused above its limit in [`LIMITS`].
fn bounded(keys: &ConfigKeys, key: &str, value: usize) -> Result<usize, InputError> {
    let limit = LIMITS
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(usize::MAX, |(_, l)| *l);
    if value > limit {
        return Err(keys.bad(
            key,
            format!("{value} is larger than any model this tool can convert (at most {limit})"),
            "fix its value: the config is corrupt",
        ));
    }
    Ok(value)
}

/// `value` of `key`, refused unless finite and inside `range` (start inclusive).
fn in_range(
    keys: &ConfigKeys,
    key: &str,
    value: f64,
    range: std::ops::Range<f64>,
) -> Result<f64, InputError> {
    if !(value.is_finite() && range.contains(&value)) {
        return Err(keys.bad(
            key,
            format!("{value} is outside [{}, {})", range.start, range.end),
            "fix its value",
        ));
    }
    Ok(value)
}

/// A positive, finite rotary parameter of `key`.
fn positive(keys: &ConfigKeys, key: &str, value: f64) -> Result<f64, InputError> {
    if !(value.is_finite() && value > 0.0) {
        return Err(keys.bad(
            key,
            format!("{value} is not a positive finite number"),
            "fix its value",
        ));
    }
    Ok(value)
}

/// transformers 5 keys `rope_parameters` by layer type when layer types differ (gemma3:
/// `{"full_attention": {...}, "sliding_attention": {...}}`): the full-attention layers' rotary
/// is the model's, and the family reads the others'.
fn full_attention_rope(params: &Value) -> &Value {
    params
        .get("full_attention")
        .filter(|p| p.is_object())
        .unwrap_or(params)
}

/// (rope_theta, rope_scaling) from either `rope_theta`+`rope_scaling` or `rope_parameters`.
fn read_rope(
    keys: &ConfigKeys,
    max_position_embeddings: usize,
) -> Result<(f64, Option<RopeScaling>), InputError> {
    let params = keys
        .present("rope_parameters")
        .map(full_attention_rope)
        .or(keys.present("rope_scaling"));
    let theta_in_params = params
        .and_then(|p| p.get("rope_theta"))
        .and_then(Value::as_f64);
    let theta = match keys.opt_f64("rope_theta")? {
        Some(t) => t,
        None => theta_in_params.unwrap_or(10000.0),
    };
    let theta = positive(keys, "rope_theta", theta)?;
    let Some(p) = params else {
        return Ok((theta, None));
    };
    let key = if keys.present("rope_parameters").is_some() {
        "rope_parameters"
    } else {
        "rope_scaling"
    };
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |name: &str| -> Result<f64, InputError> {
        let v = p.get(name).and_then(Value::as_f64).ok_or_else(|| {
            keys.bad(
                key,
                format!("rope type \"{kind}\" needs \"{name}\""),
                format!("add \"{name}\" to {key}"),
            )
        })?;
        positive(keys, &format!("{key}.{name}"), v)
    };
    let scaling = match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => {
            let (low, high) = (num("low_freq_factor")?, num("high_freq_factor")?);
            if high <= low {
                return Err(keys.bad(
                    key,
                    format!("high_freq_factor {high} must be larger than low_freq_factor {low}"),
                    "restore rope_scaling from the original config",
                ));
            }
            Some(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            })
        }
        "longrope" => Some(RopeScaling::LongRope(LongRope::read(
            keys,
            key,
            p,
            max_position_embeddings,
        )?)),
        other => {
            return Err(keys.bad(
                key,
                format!("rope type \"{other}\" is not supported"),
                "supported rope types: default, linear, llama3, longrope",
            ))
        }
    };
    Ok((theta, scaling))
}

/// A small config of `model_type` (hidden `hidden`, MLP twice that, 4 heads, 2 layers) with
/// `extra` keys on top, for the families' unit tests.
#[cfg(test)]
pub(crate) fn test_config(
    model_type: &str,
    hidden: usize,
    extra: Value,
) -> Result<ModelConfig, InputError> {
    let mut v = serde_json::json!({"model_type": model_type, "hidden_size": hidden,
        "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 2 * hidden,
        "vocab_size": 256});
    if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        v.extend(extra.clone());
    }
    ModelConfig::from_json(&v, Path::new("config.json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelConfig, InputError> {
        ModelConfig::from_json(&v, Path::new("/m/config.json"))
    }

    fn base(model_type: &str) -> Value {
        json!({"model_type": model_type, "hidden_size": 64, "num_attention_heads": 4,
               "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 256})
    }

    #[test]
    fn derives_head_dim_and_kv_heads() {
        let c = parse(base("llama")).unwrap();
        assert_eq!((c.head_dim, c.num_key_value_heads), (16, 4));
        let a = c.layer.attention;
        assert!(!c.tie_word_embeddings && !a.qkv_bias && !a.qk_norm);
    }

    #[test]
    fn qwen2_has_qkv_bias_only_and_qwen3_qk_norm() {
        let q2 = parse(base("qwen2")).unwrap();
        assert!(q2.layer.attention.qkv_bias && !q2.layer.attention.o_bias);
        let mut v = base("qwen3");
        v["head_dim"] = json!(32);
        let q3 = parse(v).unwrap();
        assert!(q3.layer.attention.qk_norm && q3.head_dim == 32 && q3.q_dim() == 128);
    }

    #[test]
    fn reads_llama3_rope_in_both_layouts() {
        let scaling = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let mut classic = base("llama");
        classic["rope_theta"] = json!(500000.0);
        classic["rope_scaling"] = scaling.clone();
        let mut v5 = base("llama");
        let mut params = scaling;
        params["rope_theta"] = json!(500000.0);
        v5["rope_parameters"] = params;
        let a = parse(classic).unwrap();
        let b = parse(v5).unwrap();
        assert_eq!(a.rope_theta, 500000.0);
        assert_eq!(a.rope_scaling, b.rope_scaling);
        assert!(
            matches!(a.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0)
        );
    }

    #[test]
    fn missing_key_names_file_and_key() {
        let mut v = base("llama");
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = parse(v).unwrap_err().to_string();
        assert!(
            e.contains("/m/config.json") && e.contains("hidden_size"),
            "{e}"
        );
    }

    #[test]
    fn unknown_model_type_lists_supported() {
        let e = parse(base("gpt2")).unwrap_err().to_string();
        assert!(
            e.contains("gpt2") && e.contains("qwen3") && e.contains("minicpm"),
            "{e}"
        );
    }

    #[test]
    fn minicpm_scales() {
        let mut v = base("minicpm");
        v["scale_emb"] = json!(12);
        v["scale_depth"] = json!(1.4);
        v["dim_model_base"] = json!(16);
        let c = parse(v).unwrap();
        assert_eq!(c.embedding_scale(), 12.0);
        assert!((c.residual_scale() - 1.4 / 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(c.lm_head_input_scale(), 0.25);
        assert!(c.tie_word_embeddings);
    }

    #[test]
    fn mistral_window_defaults_like_transformers() {
        let absent = parse(base("mistral")).unwrap();
        assert_eq!(absent.layer.sliding_window, Some(4096));
        let mut v = base("mistral");
        v["sliding_window"] = Value::Null;
        assert_eq!(parse(v).unwrap().layer.sliding_window, None);
        let mut v = base("mistral");
        v["sliding_window"] = json!(5);
        v["head_dim"] = json!(48);
        let c = parse(v).unwrap();
        assert_eq!((c.layer.sliding_window, c.head_dim), (Some(5), 48));
        assert!(!c.tie_word_embeddings && !c.layer.attention.qkv_bias);
        let mut v = base("mistral");
        v["sliding_window"] = json!(0);
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("sliding_window"), "{e}");
    }
}
