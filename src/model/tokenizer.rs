//! Loading a tokenizer.json (a file, or the text rebuilt from GGUF metadata) and turning text
//! into ids: the one place for both.

use std::path::Path;

use anyhow::Result;
use tokenizers::Tokenizer;

use crate::error::InputError;

/// A tokenizer from its tokenizer.json bytes; a broken one is bad input naming `origin`.
pub fn load(json: &[u8], origin: &Path) -> Result<Tokenizer, InputError> {
    Tokenizer::from_bytes(json).map_err(|e| {
        InputError::invalid(
            origin,
            format!("cannot load the tokenizer: {e}"),
            "restore tokenizer.json from the model's Hugging Face folder",
        )
    })
}

/// Token ids of `text` (special tokens in it are recognised; `add_special` lets the
/// post-processor add its own, e.g. a BOS).
pub fn encode(tokenizer: &Tokenizer, text: &str, add_special: bool) -> Result<Vec<u32>> {
    Ok(tokenizer
        .encode(text, add_special)
        .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?
        .get_ids()
        .to_vec())
}

/// The prompt as `reference` and `verify` take it: token ids, or text for the tokenizer.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PromptArgs {
    /// Prompt token ids, comma separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    pub tokens: Option<Vec<u32>>,
    /// Prompt text (needs a tokenizer).
    #[arg(long)]
    pub prompt: Option<String>,
}

impl PromptArgs {
    /// `--tokens` as given (each below `vocab_size`), or `--prompt` through `tokenizer`;
    /// errors name `model`.
    pub fn ids(
        &self,
        model: &Path,
        tokenizer: Option<&Tokenizer>,
        vocab_size: usize,
    ) -> Result<Vec<u32>> {
        let ids = self.unchecked_ids(model, tokenizer)?;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(InputError::invalid(
                model,
                format!("token id {bad} is outside the vocabulary (vocab_size {vocab_size})"),
                format!("pass token ids from 0 to {}", vocab_size.saturating_sub(1)),
            )
            .into());
        }
        Ok(ids)
    }

    fn unchecked_ids(&self, model: &Path, tokenizer: Option<&Tokenizer>) -> Result<Vec<u32>> {
        match (&self.tokens, &self.prompt) {
            (Some(ids), _) => Ok(ids.clone()),
            (None, Some(text)) => {
                let tok = tokenizer.ok_or_else(|| {
                    InputError::invalid(
                        model,
                        "--prompt needs a tokenizer and this model has none",
                        "pass --tokens instead",
                    )
                })?;
                encode(tok, text, false)
            }
            (None, None) => Err(InputError::invalid(
                model,
                "no prompt given",
                "pass --tokens 1,2,3 or --prompt TEXT",
            )
            .into()),
        }
    }
}
