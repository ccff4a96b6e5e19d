//! What chatting needs besides the bmodel, from `<out>/config` (written by convert), a Hugging
//! Face model folder, or a GGUF file / bundled model: the tokenizer, the chat template, the
//! stop (EOS) ids and the sampling defaults of generation_config.json.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::template::ChatTemplate;
use crate::error::InputError;
use crate::model::{BundledModels, Expected, ModelPath};

/// generation_config.json's sampling fields (each only when present).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

pub struct ChatConfig {
    /// The folder or file it was read from.
    pub source: PathBuf,
    pub tokenizer: Tokenizer,
    /// None when the model has no chat template.
    pub template: Option<ChatTemplate>,
    /// Generation stops at any of these.
    pub eos_ids: BTreeSet<u32>,
    pub generation: GenerationDefaults,
}

/// What `-m` must name for chatting.
const CONFIG_PATH: Expected = Expected {
    role: "the model config folder given with -m",
    problem: "neither a config folder nor a .gguf file",
    fix:
        "pass the config/ folder convert wrote next to the bmodel, or the Hugging Face model folder",
};

/// The raw files, wherever they came from.
struct Files {
    source: PathBuf,
    tokenizer_json: Vec<u8>,
    tokenizer_config: Option<Value>,
    /// chat_template.jinja (transformers >= 4.43 may save the template there instead).
    template_file: Option<String>,
    config: Option<Value>,
    generation_config: Option<Value>,
}

impl ChatConfig {
    /// Reads a config folder (`<out>/config`, a Hugging Face folder) or a `.gguf` file.
    pub fn load(path: &Path) -> Result<ChatConfig> {
        Self::load_with(path, None)
    }

    /// Reads what `-m` names: with `installed`, also a bundled model folder.
    pub fn load_with(path: &Path, installed: Option<&BundledModels>) -> Result<ChatConfig> {
        let files = match ModelPath::resolve(path, installed, &CONFIG_PATH)? {
            ModelPath::Gguf(p) => Files::from_gguf(&p)?,
            ModelPath::Dir(p) => Files::from_dir(&p)?,
        };
        Self::from_files(files)
    }

    fn from_files(f: Files) -> Result<ChatConfig> {
        let tokenizer =
            crate::model::tokenizer::load(&f.tokenizer_json, &f.source.join("tokenizer.json"))?;
        let tc = f.tokenizer_config.unwrap_or(Value::Null);
        let mut special = serde_json::Map::new();
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            if let Some(t) = token_text(&tc[key]) {
                special.insert(key.into(), Value::String(t));
            }
        }
        let tc_path = f.source.join("tokenizer_config.json");
        let template = match (chat_template_of(&tc), f.template_file) {
            (Some(src), _) => Some(ChatTemplate::new(
                &src,
                special.clone(),
                &tc_path.display().to_string(),
            )?),
            (None, Some(src)) => Some(ChatTemplate::new(
                &src,
                special.clone(),
                &f.source.join("chat_template.jinja").display().to_string(),
            )?),
            (None, None) => None,
        };

        let mut eos_ids = BTreeSet::new();
        for v in [&f.config, &f.generation_config].into_iter().flatten() {
            eos_ids.extend(ids_of(&v["eos_token_id"]));
        }
        if let Some(id) = special
            .get("eos_token")
            .and_then(Value::as_str)
            .and_then(|t| tokenizer.token_to_id(t))
        {
            eos_ids.insert(id);
        }

        let g = f.generation_config.unwrap_or(Value::Null);
        let num = |k: &str| g[k].as_f64().map(|x| x as f32);
        let generation = GenerationDefaults {
            do_sample: g["do_sample"].as_bool(),
            temperature: num("temperature"),
            top_k: g["top_k"].as_u64().map(|k| k as usize),
            top_p: num("top_p"),
            repetition_penalty: num("repetition_penalty"),
        };
        Ok(ChatConfig {
            source: f.source,
            tokenizer,
            template,
            eos_ids,
            generation,
        })
    }

    /// Token ids of `text`: special tokens in it (`<|im_start|>` ...) are recognised; with
    /// `add_special` the tokenizer's post-processor adds its own (a BOS), as transformers'
    /// `tokenizer(text)` does for a raw prompt. Rendered templates carry their own.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        crate::model::tokenizer::encode(&self.tokenizer, text, add_special)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("decoding token ids: {e}"))
    }
}

impl Files {
    fn from_dir(dir: &Path) -> Result<Files> {
        let tok = dir.join("tokenizer.json");
        if !tok.is_file() {
            return Err(InputError::invalid(
                &tok,
                "not found: chat and generate need the model's tokenizer",
                "pass a folder that has it: the Hugging Face model folder, or the config/ folder convert wrote next to the bmodel (it copies the model's tokenizer), or the .gguf file",
            )
            .into());
        }
        let tokenizer_json =
            std::fs::read(&tok).with_context(|| format!("reading {}", tok.display()))?;
        let template_path = dir.join("chat_template.jinja");
        let template_file = if template_path.is_file() {
            Some(
                std::fs::read_to_string(&template_path)
                    .with_context(|| format!("reading {}", template_path.display()))?,
            )
        } else {
            None
        };
        Ok(Files {
            source: dir.to_path_buf(),
            tokenizer_json,
            tokenizer_config: read_json(&dir.join("tokenizer_config.json"))?,
            template_file,
            config: read_json(&dir.join("config.json"))?,
            generation_config: read_json(&dir.join("generation_config.json"))?,
        })
    }

    fn from_gguf(path: &Path) -> Result<Files> {
        use crate::model::{gguf::GgufFile, gguf_tokenizer};
        let g = GgufFile::open(path)?;
        let json = gguf_tokenizer::tokenizer_json(g.metadata()).map_err(|why| {
            InputError::invalid(
                path,
                format!("no usable tokenizer: {why}"),
                "pass a Hugging Face folder with tokenizer.json instead",
            )
        })?;
        Ok(Files {
            source: path.to_path_buf(),
            tokenizer_json: json.into_bytes(),
            tokenizer_config: Some(gguf_tokenizer::tokenizer_config(g.metadata())),
            template_file: None,
            config: Some(g.hf_config()?),
            generation_config: None,
        })
    }
}

/// A JSON file if it exists; a file that exists but does not parse is an error naming it.
fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v = serde_json::from_str(&text).map_err(|e| {
        InputError::invalid(
            path,
            format!("not valid JSON: {e}"),
            "restore it from the model's Hugging Face folder",
        )
    })?;
    Ok(Some(v))
}

/// A special token as tokenizer_config.json writes it: a string, or an AddedToken object.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

/// `chat_template`: a string, or a list of named templates (the "default" one is used).
fn chat_template_of(tc: &Value) -> Option<String> {
    match &tc["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .or_else(|| list.first())
            .and_then(|t| t["template"].as_str())
            .map(String::from),
        _ => None,
    }
}

/// `eos_token_id`: an int or a list of ints.
fn ids_of(v: &Value) -> Vec<u32> {
    match v {
        Value::Number(n) => n.as_u64().map(|x| x as u32).into_iter().collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eos_ids_come_from_every_source() {
        let tok = crate::chat::test_util::byte_tokenizer();
        let files = Files {
            source: PathBuf::from("cfg"),
            tokenizer_json: tok.to_string(false).unwrap().into_bytes(),
            tokenizer_config: Some(serde_json::json!({
                "eos_token": {"content": "!", "lstrip": false},
                "bos_token": "<",
                "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D"}],
            })),
            template_file: None,
            config: Some(serde_json::json!({"eos_token_id": [7, 8]})),
            generation_config: Some(
                serde_json::json!({"eos_token_id": 9, "do_sample": true, "top_k": 20, "temperature": 0.7}),
            ),
        };
        let c = ChatConfig::from_files(files).unwrap();
        // "!" is byte 0x21 = id 33 in the byte tokenizer.
        assert_eq!(c.eos_ids.iter().copied().collect::<Vec<_>>(), [7, 8, 9, 33]);
        assert_eq!(c.generation.top_k, Some(20));
        assert_eq!(c.generation.do_sample, Some(true));
        assert_eq!(c.generation.temperature, Some(0.7));
        assert_eq!(c.generation.top_p, None);
        let t = c.template.as_ref().unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "<D");
    }

    #[test]
    fn a_folder_without_tokenizer_says_what_to_pass() {
        let dir = tempfile::tempdir().unwrap();
        let err = ChatConfig::load(dir.path()).err().unwrap();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("tokenizer.json") && msg.contains("config/"),
            "{msg}"
        );
        assert_eq!(
            crate::exit::ExitStatus::of_error(&err),
            crate::exit::ExitStatus::BadInput
        );
    }
}
