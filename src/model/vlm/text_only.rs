//! Vision-language configs whose language model converts on its own: Gemma 3 (`gemma3`,
//! `Gemma3ForConditionalGeneration`). Its text part is a `gemma3_text` model under
//! `text_config`; the SigLIP tower is not converted, so the bmodel takes text only (the runner
//! refuses `--image` on it as on any text bmodel).
//!
//! transformers writes a nested config with only the keys that differ from the text config
//! class's defaults (the hub's Gemma 3 configs name six or seven keys), and fills the rest
//! from those defaults when it reads the file: so do we, with `Gemma3TextConfig`'s values
//! for the keys the text parser would otherwise miss or default differently.

use serde_json::{json, Map, Value};

use crate::error::InputError;
use crate::model::config::ConfigKeys;

/// The `model_type`s converted as their language model alone.
pub const TEXT_ONLY_TYPES: &[&str] = &["gemma3"];

/// transformers 5.6.2 `Gemma3TextConfig()` defaults that the generic parser would not supply
/// (or would supply otherwise: it defaults `num_key_value_heads` to the head count). The
/// family's own defaults (head_dim 256, eps, window, pattern, local rotary base, scalar,
/// activation) are already transformers'.
fn gemma3_text_defaults() -> Map<String, Value> {
    let v = json!({
        "vocab_size": 262208,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": true,
    });
    v.as_object().cloned().unwrap_or_default()
}

/// Global layers' rotary base when neither `rope_theta` nor `rope_parameters` is given.
const GEMMA3_ROPE_THETA: f64 = 1_000_000.0;

/// The text part's config object (defaults filled, top-level keys transformers reads from the
/// top carried in) when `model_type` is a VLM converted as its language model alone.
pub fn text_only_part(
    keys: &ConfigKeys,
    model_type: &str,
) -> Result<Option<Map<String, Value>>, InputError> {
    if model_type != "gemma3" {
        return Ok(None);
    }
    let top = keys.object();
    let mut text = top
        .get("text_config")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| {
            keys.bad(
                "text_config",
                "missing: a gemma3 config nests its language model there",
                "restore config.json from the original model",
            )
        })?;
    match text.get("model_type").and_then(Value::as_str) {
        None => {
            text.insert("model_type".into(), "gemma3_text".into());
        }
        Some("gemma3_text") => {}
        Some(other) => {
            return Err(keys.bad(
                "text_config.model_type",
                format!("\"{other}\": a gemma3 config's language model is a gemma3_text"),
                "restore config.json from the original model",
            ))
        }
    }
    for (k, v) in gemma3_text_defaults() {
        text.entry(k).or_insert(v);
    }
    let has_rotary = ["rope_theta", "rope_parameters"]
        .iter()
        .any(|k| text.get(*k).is_some_and(|v| !v.is_null()));
    if !has_rotary {
        text.insert("rope_theta".into(), GEMMA3_ROPE_THETA.into());
    }
    // The top-level tie flag wins (transformers' VLM classes tie by their own); the other
    // top-level keys fill what the text part lacks.
    if let Some(tie) = top.get("tie_word_embeddings").filter(|v| !v.is_null()) {
        text.insert("tie_word_embeddings".into(), tie.clone());
    }
    super::carry_top_level_keys(top, &mut text);
    Ok(Some(text))
}

/// Where the text part's tensors are stored: `language_model.model.*` (hub checkpoints and
/// transformers 5.6.2's save_pretrained) or `model.language_model.*` (transformers 5's
/// in-memory names); a separate lm_head under `language_model.`.
pub const TEXT_RENAMES: &[(&str, &str)] = &[
    ("model.", "language_model.model."),
    ("model.", "model.language_model."),
    ("lm_head.", "language_model.lm_head."),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn part(config: Value) -> Result<Option<Map<String, Value>>, InputError> {
        let obj = config.as_object().unwrap().clone();
        let keys = ConfigKeys::new(&obj, Path::new("config.json"));
        text_only_part(&keys, obj["model_type"].as_str().unwrap())
    }

    #[test]
    fn fills_transformers_defaults_and_keeps_what_is_given() {
        let text = part(json!({
            "model_type": "gemma3",
            "tie_word_embeddings": false,
            "text_config": {"hidden_size": 2560, "num_hidden_layers": 34,
                            "rope_scaling": {"factor": 8.0, "rope_type": "linear"}}
        }))
        .unwrap()
        .unwrap();
        assert_eq!(text["model_type"], "gemma3_text");
        assert_eq!(text["hidden_size"], 2560);
        assert_eq!(text["num_attention_heads"], 8);
        assert_eq!(text["num_key_value_heads"], 4);
        assert_eq!(text["vocab_size"], 262208);
        assert_eq!(text["rope_theta"], 1e6);
        assert_eq!(text["tie_word_embeddings"], false);
    }

    #[test]
    fn other_types_pass_and_a_missing_text_config_is_named() {
        assert!(part(json!({"model_type": "gemma3_text"}))
            .unwrap()
            .is_none());
        let e = part(json!({"model_type": "gemma3"}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("text_config") && e.contains("config.json"),
            "{e}"
        );
        let e = part(json!({"model_type": "gemma3", "text_config": {"model_type": "llama"}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gemma3_text"), "{e}");
    }
}
