//! `<out>/config`: what the runtime needs besides the bmodel (config.json, tokenizer, chat
//! template), copied with llm_convert.py's ignore list, or synthesised for a GGUF model.

use std::path::Path;

use anyhow::{Context, Result};

use crate::model::{Model, TokenizerSource};
use crate::util::write_atomic;

/// llm_convert.py's `gen_config` ignore rules.
fn ignored(name: &str) -> bool {
    name.starts_with('.')
        || [".safetensors", ".pth", ".pt", ".py", ".bin", ".gguf"]
            .iter()
            .any(|ext| name.ends_with(ext))
        || name.ends_with(".index.json")
}

/// Writes `<dest>` from the model; returns the file names written.
pub fn write(model: &Model, dest: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut written = Vec::new();
    if model.source.is_dir() {
        let entries = std::fs::read_dir(&model.source)
            .with_context(|| format!("listing {}", model.source.display()))?;
        for e in entries {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.file_type()?.is_file() || ignored(&name) {
                continue;
            }
            let data = std::fs::read(e.path())
                .with_context(|| format!("reading {}", e.path().display()))?;
            write_atomic(&dest.join(&name), &data)?;
            written.push(name);
        }
    } else {
        // GGUF: synthesise what a Hugging Face folder would hold.
        let cfg = serde_json::to_vec_pretty(&model.config_json)?;
        write_atomic(&dest.join("config.json"), &cfg)?;
        written.push("config.json".into());
        if let TokenizerSource::Rebuilt(json, tok_cfg) = &model.tokenizer {
            write_atomic(&dest.join("tokenizer.json"), json.as_bytes())?;
            write_atomic(
                &dest.join("tokenizer_config.json"),
                &serde_json::to_vec_pretty(tok_cfg)?,
            )?;
            written.extend(["tokenizer.json".into(), "tokenizer_config.json".into()]);
        }
    }
    written.sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::ignored;

    #[test]
    fn ignore_list_matches_llm_convert() {
        for n in [
            "model.safetensors",
            "model.safetensors.index.json",
            "x.bin",
            ".git",
            "modeling.py",
            "a.pt",
        ] {
            assert!(ignored(n), "{n}");
        }
        for n in [
            "config.json",
            "tokenizer.json",
            "generation_config.json",
            "tokenizer_config.json",
        ] {
            assert!(!ignored(n), "{n}");
        }
    }
}
