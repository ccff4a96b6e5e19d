//! What `generate` and `chat` share: their flags, the loaded config and bmodel, the pipeline
//! set up for sampling or greedy, the prompt-length rule and the per-generation reports; and
//! the `generate` command itself.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use super::config::ChatConfig;
use super::generate::{generate, Generation};
use super::options::{resolve as resolve_sampling, SamplingFlags};
use super::template::Message;
use crate::bmrt::Runtime;
use crate::error::InputError;
use crate::runner::{simulated_label, LoadedBmodel, Pipeline};
use crate::toolchain::{Layout, RuntimeArg};
use crate::util::status;

/// What `generate` and `chat` share.
#[derive(clap::Args, Debug, Clone)]
pub struct TextGenArgs {
    /// The combined bmodel.
    pub bmodel: PathBuf,
    /// The config folder convert wrote next to the bmodel (<out>/config), a Hugging Face
    /// model folder, or a .gguf file: tokenizer, chat template, EOS ids, generation_config.json.
    #[arg(short = 'm', long = "model_path", alias = "model")]
    pub config: PathBuf,
    /// Use the text as is, without the chat template.
    #[arg(long = "no-template")]
    pub no_template: bool,
    /// A system message for the chat template.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens to generate per reply (generation also stops at EOS and a full KV cache).
    #[arg(long = "max-tokens", default_value_t = 256)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingFlags,
    #[command(flatten)]
    pub runtime: RuntimeArg,
}

#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub common: TextGenArgs,
    /// The prompt (a user message, unless --no-template).
    #[arg(long, required_unless_present = "tokens")]
    pub prompt: Option<String>,
    /// The prompt as token ids, comma separated, used as they are (no chat template); image
    /// placeholders are runs of the image token.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    pub tokens: Option<Vec<u32>>,
    /// An image for a vision-language bmodel (JPEG/PNG/WebP), repeatable: the k-th image goes
    /// at the prompt's k-th image placeholder (`<|image_pad|>`, `<IMG_CONTEXT>`); without
    /// placeholders every image goes before the prompt, in order.
    #[arg(long)]
    pub image: Vec<PathBuf>,
    /// Print a JSON report (text, token ids, stop reason, timings) instead of the text.
    #[arg(long)]
    pub json: bool,
}

/// The chat config and what loading the bmodel told us, for `generate` and `chat`.
pub struct TextGen {
    pub cfg: ChatConfig,
    pub out: std::fs::File,
    pub simulated: bool,
    pub runtime: String,
    pub load_s: f64,
}

impl TextGen {
    pub fn open(args: &TextGenArgs, layout: &Layout) -> Result<(TextGen, Runtime)> {
        // The config first: a bad folder fails fast, before the bmodel loads.
        let cfg = ChatConfig::load_with(&args.config, Some(&layout.bundled_models()))?;
        let LoadedBmodel {
            out,
            libs,
            rt,
            load_s,
        } = LoadedBmodel::open(layout, &args.runtime, &args.bmodel)?;
        let runtime = rt.describe().to_string();
        let tg = TextGen {
            cfg,
            out,
            simulated: libs.is_simulator(),
            runtime,
            load_s,
        };
        Ok((tg, rt))
    }

    /// The pipeline, sampling as asked (a bmodel without sample_head refuses to sample).
    pub fn pipeline<'rt>(&self, args: &TextGenArgs, rt: &'rt Runtime) -> Result<Pipeline<'rt>> {
        let flags = &args.sampling;
        let (sampling, notes) = resolve_sampling(flags, &self.cfg.generation);
        for n in notes {
            status(format!("note: {n}"));
        }
        if sampling.is_none()
            && flags.temperature.is_none()
            && self.cfg.generation.do_sample == Some(true)
        {
            status("note: generation_config.json asks for sampling; decoding greedily (pass --sample for its parameters)");
        }
        let mut pipeline = Pipeline::new(rt)?;
        // Both refusals are the user's to fix: exit code 2.
        let fix = if sampling.is_some() && pipeline.nets.sample_head.is_none() {
            "convert the model again with --do_sample, or drop the sampling options for greedy decoding"
        } else {
            "keep the sampling options within the ranges above"
        };
        pipeline.set_sampling(sampling).map_err(|e| {
            InputError::invalid(&args.bmodel, format!("cannot sample as asked: {e:#}"), fix)
        })?;
        Ok(pipeline)
    }

    /// Prompts up to this length fit: one prefill, or with block_kv nets (chunked prefill)
    /// the KV cache.
    pub fn limit(pipeline: &Pipeline) -> usize {
        let n = &pipeline.nets;
        if n.history_kv() {
            n.seq_length - 1
        } else {
            n.max_input_length.min(n.seq_length - 1)
        }
    }

    /// Generates a reply to `prompt`, streaming its text to stdout unless `json`.
    pub fn reply(
        &mut self,
        pipeline: &mut Pipeline,
        prompt: &[u32],
        max_tokens: usize,
        json: bool,
    ) -> Result<Generation> {
        let out = &mut self.out;
        generate(
            pipeline,
            &self.cfg.tokenizer,
            prompt,
            max_tokens,
            &self.cfg.eos_ids,
            |piece| {
                if !json {
                    out.write_all(piece.as_bytes())?;
                    out.flush()?;
                }
                Ok(())
            },
        )
    }

    pub fn timing_note(&self, g: &Generation) -> String {
        format!(
            "{} prompt tokens{}, {} generated; first token {:.3} s, {:.2} tokens/s{}",
            g.prompt_tokens,
            if g.cached_prompt_tokens > 0 {
                format!(" ({} already in the KV cache)", g.cached_prompt_tokens)
            } else {
                String::new()
            },
            g.tokens.len(),
            g.first_token_s,
            g.decode_tokens_per_s(),
            simulated_label(self.simulated)
        )
    }

    /// The `--json` report of one generation (generate's, and each turn of chat's).
    pub fn generation_json(
        &self,
        pipeline: &Pipeline,
        prompt: &[u32],
        g: &Generation,
    ) -> serde_json::Value {
        serde_json::json!({
            "text": g.text,
            "prompt_ids": prompt,
            "cached_prompt_tokens": g.cached_prompt_tokens,
            "tokens": g.tokens,
            "stop_reason": g.stop_reason,
            "stop_message": g.stop_reason.describe(pipeline.nets.seq_length),
            "sampling": pipeline.sampling(),
            "timings": {
                "simulated": self.simulated,
                "load_s": self.load_s,
                "first_token_s": g.first_token_s,
                "decode_s": g.decode_s,
                "decode_tokens_per_s": g.decode_tokens_per_s(),
            },
            "runtime": self.runtime,
        })
    }
}

impl GenerateArgs {
    /// One reply, streamed (or reported with `--json`).
    pub fn run(&self, layout: &Layout) -> Result<()> {
        let args = &self.common;
        let (mut tg, rt) = TextGen::open(args, layout)?;
        let mut pipeline = tg.pipeline(args, &rt)?;
        let mut prompt = self.prompt_ids(&tg)?;
        if !self.image.is_empty() {
            let cfg = crate::model::ModelConfig::from_file(&args.config.join("config.json"))?;
            let (images, ids, extras) = crate::runner::image_prompt::prepare_all(
                &rt,
                &cfg,
                &args.config,
                &self.image,
                &prompt,
            )?;
            for ip in &images {
                status(format!(
                    "image: {} tokens (vit {:.2} s)",
                    ip.vit.tokens, ip.vit.seconds
                ));
            }
            pipeline.set_extras(extras);
            prompt = ids;
        }
        let limit = TextGen::limit(&pipeline);
        if prompt.len() > limit {
            return Err(InputError::invalid(
                &args.bmodel,
                format!(
                    "the prompt is {} tokens; this bmodel takes at most {limit} (MAX_INPUT_LENGTH {}, SEQLEN {})",
                    prompt.len(),
                    pipeline.nets.max_input_length,
                    pipeline.nets.seq_length
                ),
                "shorten the prompt, or convert with a larger -s / --max_input_length",
            )
            .into());
        }
        let g = tg.reply(&mut pipeline, &prompt, args.max_tokens, self.json)?;
        if self.json {
            let v = tg.generation_json(&pipeline, &prompt, &g);
            writeln!(tg.out, "{}", serde_json::to_string_pretty(&v)?)?;
        } else {
            writeln!(tg.out)?;
            status(format!(
                "[{}; stop: {}]",
                tg.timing_note(&g),
                g.stop_reason.describe(pipeline.nets.seq_length)
            ));
        }
        Ok(())
    }

    /// The prompt through the chat template (unless `--no-template` or there is none).
    fn prompt_ids(&self, tg: &TextGen) -> Result<Vec<u32>> {
        let prompt = match (&self.tokens, &self.prompt) {
            (Some(ids), _) => return self.checked_tokens(ids),
            (None, Some(p)) => p,
            (None, None) => anyhow::bail!("generate needs --prompt or --tokens"),
        };
        match (&tg.cfg.template, self.common.no_template) {
            (Some(t), false) => {
                let mut messages = Vec::new();
                if let Some(s) = &self.common.system {
                    messages.push(Message::new("system", s));
                }
                messages.push(Message::new("user", prompt));
                tg.cfg.encode(&t.render(&messages, true)?, false)
            }
            (None, false) => {
                status(format!(
                    "note: {} has no chat template: using the prompt as is (--no-template)",
                    tg.cfg.source.display()
                ));
                tg.cfg.encode(prompt, true)
            }
            (_, true) => tg.cfg.encode(prompt, true),
        }
    }

    /// `--tokens`, each below the config's vocab_size (the embedding has no other rows).
    fn checked_tokens(&self, ids: &[u32]) -> Result<Vec<u32>> {
        let path = self.common.config.join("config.json");
        let vocab = crate::model::ModelConfig::from_file(&path)?.vocab_size;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(InputError::invalid(
                path,
                format!("--tokens: id {bad} is outside the vocabulary (vocab_size {vocab})"),
                format!("pass token ids from 0 to {}", vocab.saturating_sub(1)),
            )
            .into());
        }
        Ok(ids.to_vec())
    }
}
