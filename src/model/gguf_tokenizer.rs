//! Rebuilds a Hugging Face `tokenizer.json` from a GGUF file's tokenizer metadata.
//!
//! Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`) is rebuilt; its pre-tokenizer is
//! chosen by `tokenizer.ggml.pre`, as llama.cpp does.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Value as Json};

/// GGUF token_type for control tokens (`<|im_start|>` …) and user-defined added tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Returns the tokenizer.json text, or why it cannot be rebuilt.
pub fn tokenizer_json(meta: &HashMap<String, Value>) -> Result<String, String> {
    let model = str_of(meta, "tokenizer.ggml.model").ok_or("no tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(format!(
            "tokenizer model \"{model}\" cannot be rebuilt (only byte-level BPE \"gpt2\" can)"
        ));
    }
    let tokens = strings_of(meta, "tokenizer.ggml.tokens").ok_or("no tokenizer.ggml.tokens")?;
    let merges = strings_of(meta, "tokenizer.ggml.merges").ok_or("no tokenizer.ggml.merges")?;
    let types: Vec<i64> = match meta.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.to_i32().map(i64::from).unwrap_or(1))
            .collect(),
        _ => vec![1; tokens.len()],
    };
    let pre = str_of(meta, "tokenizer.ggml.pre").unwrap_or("default");
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match pre {
        "default" | "gpt2" => byte_level,
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        "qwen2" => split_then_bytes(QWEN2_SPLIT),
        "llama-bpe" | "llama3" => split_then_bytes(LLAMA3_SPLIT),
        other => return Err(format!("pre-tokenizer \"{other}\" is not known")),
    };
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, ty))| **ty == TOKEN_TYPE_CONTROL || **ty == TOKEN_TYPE_USER_DEFINED)
        .map(|(i, (t, ty))| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": *ty == TOKEN_TYPE_CONTROL})
        })
        .collect();
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    Ok(tok.to_string())
}

/// `tokenizer_config.json` fields the chat tools need (template, special tokens).
pub fn tokenizer_config(meta: &HashMap<String, Value>) -> Json {
    let tokens = strings_of(meta, "tokenizer.ggml.tokens").unwrap_or_default();
    let token = |key: &str| {
        meta.get(key)
            .and_then(|v| v.to_u32().ok())
            .and_then(|id| tokens.get(id as usize).cloned())
    };
    let mut cfg = json!({"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": false});
    if let Some(t) = str_of(meta, "tokenizer.chat_template") {
        cfg["chat_template"] = json!(t);
    }
    for (field, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
    ] {
        if let Some(t) = token(key) {
            cfg[field] = json!(t);
        }
    }
    cfg
}

fn split_then_bytes(regex: &str) -> Json {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]})
}

fn str_of<'a>(meta: &'a HashMap<String, Value>, key: &str) -> Option<&'a str> {
    meta.get(key)
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
}

fn strings_of(meta: &HashMap<String, Value>, key: &str) -> Option<Vec<String>> {
    let arr = meta.get(key)?.to_vec().ok()?;
    arr.iter().map(|v| v.to_string().ok().cloned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pre: &str) -> HashMap<String, Value> {
        let s = |x: &str| Value::String(x.to_string());
        let tokens = ["<|im_start|>", "h", "i", "hi", "Ġ", "Ġhi", "1", "2"];
        HashMap::from([
            ("tokenizer.ggml.model".to_string(), s("gpt2")),
            ("tokenizer.ggml.pre".to_string(), s(pre)),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(tokens.iter().map(|t| s(t)).collect()),
            ),
            (
                "tokenizer.ggml.merges".to_string(),
                Value::Array(vec![s("h i"), s("Ġ hi")]),
            ),
            (
                "tokenizer.ggml.token_type".to_string(),
                Value::Array(
                    [3, 1, 1, 1, 1, 1, 1, 1]
                        .iter()
                        .map(|t| Value::I32(*t))
                        .collect(),
                ),
            ),
        ])
    }

    #[test]
    fn rebuilt_tokenizer_applies_merges_specials_and_digits() {
        let json = tokenizer_json(&meta("smollm")).unwrap();
        let tok = tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap();
        let enc = tok.encode("<|im_start|>hi hi12", false).unwrap();
        assert_eq!(enc.get_ids(), &[0, 3, 5, 6, 7]);
        assert_eq!(tok.decode(&[3, 5], false).unwrap(), "hi hi");
    }

    #[test]
    fn unknown_pre_tokenizer_is_reported() {
        let e = tokenizer_json(&meta("mystery")).unwrap_err();
        assert!(e.contains("mystery"));
    }
}
