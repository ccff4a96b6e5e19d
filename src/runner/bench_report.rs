//! The `bench` command: its flags and the report.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use super::bench::{bench, BenchReport, PrepareImage};
use super::image_prompt::ImagePrompt;
use super::session::{simulated_label, LoadedBmodel};
use crate::toolchain::{Layout, RuntimeArg};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The combined bmodel.
    pub bmodel: PathBuf,
    /// Prompt length for the prefill (capped at MAX_INPUT_LENGTH).
    #[arg(long = "prompt-tokens", default_value_t = 16)]
    pub prompt_tokens: usize,
    /// Tokens to decode after the prefill.
    #[arg(long = "decode-tokens", default_value_t = 8)]
    pub decode_tokens: usize,
    /// An image for a vision-language bmodel: its vit time is reported apart, and the
    /// prefill holds its tokens before the --prompt-tokens.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// With --image: the config folder (preprocessor settings; default: the bmodel's
    /// folder's config/, as convert writes it).
    #[arg(short = 'm', long = "model_path", alias = "model")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArg,
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    pub fn run(&self, layout: &Layout) -> Result<()> {
        let LoadedBmodel {
            mut out,
            libs,
            rt,
            load_s,
        } = LoadedBmodel::open(layout, &self.runtime, &self.bmodel)?;
        let model = match (&self.image, &self.config) {
            (None, _) => None,
            (Some(_), Some(dir)) => Some(dir.clone()),
            (Some(_), None) => Some(
                self.bmodel
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join("config"),
            ),
        };
        let cfg = match &model {
            Some(dir) => Some(crate::model::ModelConfig::from_file(
                &dir.join("config.json"),
            )?),
            None => None,
        };
        let prepare = |prompt: &[u32]| -> Result<ImagePrompt> {
            match (&self.image, &model, &cfg) {
                (Some(image), Some(dir), Some(cfg)) => {
                    super::image_prompt::prepare(&rt, cfg, dir, image, prompt)
                }
                _ => anyhow::bail!("no image"),
            }
        };
        let image: Option<PrepareImage> = self.image.as_ref().map(|_| &prepare as _);
        let r = bench(
            &rt,
            load_s,
            self.prompt_tokens,
            self.decode_tokens,
            libs.is_simulator(),
            image,
        )?;
        if self.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        } else {
            write_text(&mut out, &r)?;
        }
        Ok(())
    }
}

fn write_text(out: &mut impl Write, r: &BenchReport) -> Result<()> {
    writeln!(
        out,
        "runtime: {}{}",
        r.runtime,
        simulated_label(r.simulated)
    )?;
    writeln!(
        out,
        "model: {} layers, MAX_INPUT_LENGTH {}, SEQLEN {}, {}",
        r.layers,
        r.max_input_length,
        r.seq_length,
        if r.dynamic { "dynamic" } else { "static" }
    )?;
    writeln!(out, "load: {:.2} s", r.load_s)?;
    writeln!(
        out,
        "first token ({} prompt tokens): {:.3} s",
        r.prompt_tokens, r.first_token_s
    )?;
    writeln!(
        out,
        "decode: {:.2} tokens/s over {} tokens",
        r.decode_tokens_per_s, r.decode_tokens
    )?;
    if let Some(v) = &r.vit {
        writeln!(
            out,
            "vit: {:.3} s per image ({} image token(s); {} launch(es), {:.2} ms per tile), apart from prefill",
            v.total_s / v.images as f64,
            v.image_tokens,
            v.tiles,
            v.per_tile_ms
        )?;
    }
    writeln!(out, "mean time per net:")?;
    for n in &r.nets {
        writeln!(
            out,
            "  {:<18} {:>4} launches  {:>10.2} ms",
            n.net, n.launches, n.mean_ms
        )?;
    }
    match r.device_memory_mb {
        (0, 0) => writeln!(
            out,
            "device memory: not reported by this runtime (the simulator reports none)"
        )?,
        (total, used) => writeln!(out, "device memory: {used} MB used of {total} MB")?,
    }
    Ok(())
}
