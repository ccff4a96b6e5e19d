//! The `reference` command: the golden model's greedy tokens for a prompt, and their report.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::error::InputError;
use crate::model::tokenizer::PromptArgs;
use crate::model::{BundledModels, Model};
use crate::reference::Reference;

/// More greedy steps than any context we run: the output buffer is sized from it.
const MAX_STEPS: usize = 1 << 20;

#[derive(clap::Args, Debug, Clone)]
// Reference needs a prompt before anything loads (verify reports a missing one itself).
#[command(mut_arg("tokens", |a| a.required_unless_present("prompt")))]
pub struct ReferenceArgs {
    /// Hugging Face model folder, .gguf file, or bundled model folder (models/...).
    #[arg(short = 'm', long = "model_path", alias = "model")]
    pub model: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Greedy tokens to generate.
    #[arg(long, default_value_t = 16)]
    pub steps: usize,
    #[arg(long)]
    pub json: bool,
    /// Run even if a weight holds NaN or Inf (by default an error naming the tensor).
    #[arg(long = "allow-non-finite")]
    pub allow_non_finite: bool,
}

impl ReferenceArgs {
    pub fn run(&self, installed: &BundledModels) -> Result<()> {
        let t0 = Instant::now();
        let mut model = Model::open_with(&self.model, Some(installed))?;
        if self.allow_non_finite {
            model.allow_non_finite();
        }
        let tokenizer = model.load_tokenizer()?;
        let vocab = model.config.vocab_size;
        let prompt_ids = self.prompt.ids(&self.model, tokenizer.as_ref(), vocab)?;
        if self.steps > MAX_STEPS {
            return Err(InputError::invalid(
                &self.model,
                format!("--steps {} is more than {MAX_STEPS}", self.steps),
                "lower --steps",
            )
            .into());
        }
        let mut reference = Reference::new(&model).context("building the reference model")?;
        let generated = reference.generate_greedy(&prompt_ids, self.steps)?;
        let text = match &tokenizer {
            Some(t) => Some(
                t.decode(&generated, false)
                    .map_err(|e| anyhow::anyhow!("decoding: {e}"))?,
            ),
            None => None,
        };
        let seconds = t0.elapsed().as_secs_f64();
        if self.json {
            let v = serde_json::json!({"prompt_ids": prompt_ids, "generated_ids": generated, "text": text, "seconds": seconds});
            println!("{}", serde_json::to_string(&v)?);
        } else {
            println!("prompt ids: {prompt_ids:?}");
            println!("generated ids: {generated:?}");
            if let Some(t) = text {
                println!("text: {t}");
            }
            eprintln!("({seconds:.2} s)");
        }
        Ok(())
    }
}
