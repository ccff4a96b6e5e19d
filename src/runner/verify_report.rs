//! The `verify` command: its flags, the thresholds it picks for a bmodel, the per-step
//! progress lines and the report.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::verify::{verify, StepCheck, Thresholds, VerifyReport};
use super::{LoadedBmodel, Pipeline};
use crate::exit::ExitStatus;
use crate::model::tokenizer::PromptArgs;
use crate::model::Model;
use crate::toolchain::{Layout, RuntimeArg};

#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// The combined bmodel (ours or TPU-MLIR llm_convert.py's).
    pub bmodel: PathBuf,
    /// The model it was made from (the reference runs on its weights).
    #[arg(short = 'm', long = "model_path", alias = "model")]
    pub model: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// An image for a vision-language bmodel (JPEG/PNG/WebP): the vit is checked against the
    /// reference vision tower, then the prompt with the image (placed where the prompt has an
    /// image token, else first).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Tokens to generate (the first comes from prefill).
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Feed the reference's greedy tokens instead of the bmodel's, so two bmodels are scored on
    /// the same sequence: prompt + continuation run in one prefill and each of the --steps
    /// positions compares the top-1 of the bmodel's last block (through the reference's head,
    /// on the host) with the reference's.
    #[arg(long = "teacher-forced", conflicts_with = "image")]
    pub teacher_forced: bool,
    /// The bmodel's quantization, for the default thresholds (default: from manifest.json next
    /// to the bmodel, else from its file name).
    #[arg(short = 'q', long)]
    pub quantize: Option<String>,
    /// Minimum cosine of every block's output (default by quantization).
    #[arg(long = "min-cosine")]
    pub min_cosine: Option<f64>,
    /// Minimum fraction of generated tokens the reference agrees with (default by quantization).
    #[arg(long = "min-agreement")]
    pub min_agreement: Option<f64>,
    /// A differing token counts as agreeing when the reference ranks it within this fraction
    /// of its logit range below its own pick (default by quantization; 0 = exact only).
    #[arg(long = "tie-margin")]
    pub tie_margin: Option<f32>,
    #[command(flatten)]
    pub runtime: RuntimeArg,
    #[arg(long)]
    pub json: bool,
}

impl VerifyArgs {
    /// Verifies; `BelowThreshold` (exit 3) when the bmodel fails the thresholds.
    pub fn run(&self, layout: &Layout) -> Result<ExitStatus> {
        let model = Model::open_with(&self.model, Some(&layout.bundled_models()))?;
        let tokenizer = model.load_tokenizer()?;
        let prompt = self
            .prompt
            .ids(&self.model, tokenizer.as_ref(), model.config.vocab_size)?;
        let quantize = self
            .quantize
            .clone()
            .or_else(|| bmodel_quantize(&self.bmodel))
            .unwrap_or_else(|| "unknown".into());
        let thresholds = self.thresholds(&quantize);
        let LoadedBmodel { mut out, rt, .. } =
            LoadedBmodel::open(layout, &self.runtime, &self.bmodel)?;
        let mut pipeline = Pipeline::new(&rt)?;
        let quiet = self.json;
        let on_step = |s: &StepCheck| {
            if !quiet {
                eprintln!("{}", step_line(s));
            }
        };
        let report = match &self.image {
            Some(image) => super::verify_image::verify_image(
                &mut pipeline,
                &rt,
                &model,
                image,
                &prompt,
                self.steps,
                thresholds,
                on_step,
            )?,
            None if self.teacher_forced => super::verify::verify_teacher_forced(
                &mut pipeline,
                &model,
                &prompt,
                self.steps,
                thresholds,
                on_step,
            )?,
            None => verify(
                &mut pipeline,
                &model,
                &prompt,
                self.steps,
                thresholds,
                on_step,
            )?,
        };
        if self.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        } else {
            write_text(&mut out, &report, &quantize)?;
        }
        Ok(if report.pass {
            ExitStatus::Success
        } else {
            ExitStatus::BelowThreshold
        })
    }

    /// The quantization's defaults, with the limits given on the command line.
    fn thresholds(&self, quantize: &str) -> Thresholds {
        let mut t = Thresholds::for_quantize(quantize);
        if let Some(c) = self.min_cosine {
            t.min_cosine = c;
        }
        if let Some(a) = self.min_agreement {
            t.min_agreement = a;
        }
        if let Some(m) = self.tie_margin {
            t.tie_margin = m;
        }
        t
    }
}

/// The part of convert's manifest.json that names the quantization.
#[derive(serde::Deserialize)]
struct ManifestQuantize {
    options: ManifestOptions,
    #[serde(default)]
    gguf_linears: std::collections::BTreeMap<String, KeptLinear>,
}

/// How convert kept a GGUF block linear (manifest `gguf_linears`).
#[derive(serde::Deserialize)]
struct KeptLinear {
    bits: usize,
    handling: String,
}

impl ManifestQuantize {
    /// The quantization whose limits apply: the reference reads the GGUF dequantized, so the
    /// file's own Q4_0 / Q8_0 blocks are held to 16-bit limits, and a layer requantized onto
    /// 4 (8) bits to w4's (w8's).
    fn limits(self) -> String {
        let half = self.options.quantize;
        let requantized = self
            .gguf_linears
            .values()
            .filter(|l| l.handling == "requantized")
            .map(|l| l.bits)
            .min();
        match requantized {
            Some(bits) => format!("w{bits}{half}"),
            None => half,
        }
    }
}

#[derive(serde::Deserialize)]
struct ManifestOptions {
    quantize: String,
}

/// The quantization a bmodel was built with: manifest.json beside it, else its file name.
fn bmodel_quantize(bmodel: &Path) -> Option<String> {
    let manifest = bmodel.parent()?.join("manifest.json");
    let from_manifest = std::fs::read_to_string(manifest)
        .ok()
        .and_then(|text| serde_json::from_str::<ManifestQuantize>(&text).ok());
    if let Some(m) = from_manifest {
        return Some(m.limits());
    }
    let name = bmodel.file_name()?.to_string_lossy().to_lowercase();
    ["w4bf16", "w4f16", "w8bf16", "w8f16", "bf16", "f16", "f32"]
        .iter()
        .find(|q| name.contains(&format!("_{q}_")))
        .map(|q| q.to_string())
}

/// One progress line per step: the token, the reference's, the worst block.
fn step_line(s: &StepCheck) -> String {
    let mark = if s.token == s.reference_token {
        String::new()
    } else {
        format!("  <-- differs (margin {:.4})", s.reference_margin)
    };
    let line = format!(
        "step {:>3}: token {:>6} (reference {:>6}){mark}",
        s.step, s.token, s.reference_token
    );
    // Teacher-forced steps after the first carry no blocks (one prefill compared them all).
    match s.blocks.iter().min_by(|a, b| a.cosine.total_cmp(&b.cosine)) {
        Some(w) => format!(
            "{line}; worst block {} cosine {:.6} ({:.1} s)",
            w.layer, w.cosine, s.seconds
        ),
        None => line,
    }
}

/// The human-readable report: thresholds, every prefill block, agreement, PASS/FAIL.
fn write_text(out: &mut impl Write, report: &VerifyReport, quantize: &str) -> Result<()> {
    let t = &report.thresholds;
    writeln!(
        out,
        "quantization: {quantize} (thresholds: block cosine >= {}, token agreement >= {})",
        t.min_cosine, t.min_agreement
    )?;
    if let Some(c) = report.vit_cosine {
        let flag = if c < t.min_cosine {
            "  <-- below threshold"
        } else {
            ""
        };
        writeln!(out, "vit (image embeddings) cosine {c:.6}{flag}")?;
    }
    writeln!(out, "prefill blocks:")?;
    for b in &report.steps[0].blocks {
        let flag = if b.cosine < t.min_cosine {
            "  <-- below threshold"
        } else {
            ""
        };
        writeln!(
            out,
            "  block_{:<3} cosine {:.6}  max |diff| {:.3e}{flag}",
            b.layer, b.cosine, b.max_abs_diff
        )?;
    }
    writeln!(
        out,
        "tokens: {:?}\nagreement with the reference: {:.0}% ({:.0}% exact, near ties at steps {:?}; {}); lowest block cosine {:.6} at step {} block_{}",
        report.tokens,
        report.agreement * 100.0,
        report.exact_agreement * 100.0,
        report.near_ties,
        match report.first_divergence {
            Some(s) => format!("first divergence at step {s}"),
            None => "no divergence".into(),
        },
        report.min_cosine,
        report.worst_block.0,
        report.worst_block.1
    )?;
    if let Some(tf) = &report.teacher_forced {
        writeln!(
            out,
            "teacher-forced on the reference's tokens {:?}; the bmodel's lm_head after the last one: {}",
            tf.continuation, tf.lm_head_token
        )?;
    }
    writeln!(out, "{}", if report.pass { "PASS" } else { "FAIL" })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_from_the_manifest_then_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let bmodel = dir.path().join("m_w8f16_seq64_bm1684x_1dev_static.bmodel");
        assert_eq!(bmodel_quantize(&bmodel).as_deref(), Some("w8f16"));
        std::fs::write(
            dir.path().join("manifest.json"),
            r#"{"options": {"quantize": "bf16", "seq_length": 64}}"#,
        )
        .unwrap();
        assert_eq!(bmodel_quantize(&bmodel).as_deref(), Some("bf16"));
    }
}
