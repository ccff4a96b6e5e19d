//! `verify`: the bmodel and the candle reference on the same tokens. Prefill compares every
//! block's output rows; decode is teacher-forced (both sides get the bmodel's token) so each
//! step compares every block and whether the reference would pick the same token.

use anyhow::{Context, Result};
use candle_core::Tensor;
use serde::Serialize;

use super::pipeline::Pipeline;
use crate::error::InputError;
use crate::model::Model;
use crate::reference::{argmax, norm, Reference, StepOutput};

/// Pass/fail limits; defaults depend on the quantization (see [`Thresholds::for_quantize`]).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Thresholds {
    /// Every block output's cosine with the reference must reach this.
    pub min_cosine: f64,
    /// Fraction of generated tokens the reference must agree with.
    pub min_agreement: f64,
    /// A different token still agrees when the reference ranks it within this fraction of its
    /// logit range below its own pick: 16-bit activations cannot break closer ties.
    pub tie_margin: f32,
}

impl Thresholds {
    /// Measured: bf16 tiny models stay above 0.9996 per block and agree on every greedy token
    /// but near ties. Weight-only quantization moves both, w4 most: SmolLM2-135M w4bf16 keeps
    /// 0.975-0.998 through block 28, but its last block (which holds the final RMSNorm, and so
    /// loses the residual stream's huge outlier channel that dominated the cosine before) drops
    /// to 0.78-0.93, with every token still the reference's. A broken conversion sits near 0.
    pub fn for_quantize(q: &str) -> Thresholds {
        let (min_cosine, min_agreement, tie_margin) = match q {
            "f32" => (0.9999, 1.0, 0.0005),
            "bf16" | "f16" => (0.99, 1.0, 0.005),
            "w8bf16" | "w8f16" => (0.9, 0.75, 0.02),
            _ => (0.7, 0.5, 0.05), // w4*, unknown
        };
        Thresholds {
            min_cosine,
            min_agreement,
            tie_margin,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BlockCheck {
    pub layer: usize,
    pub cosine: f64,
    pub max_abs_diff: f32,
}

#[derive(Debug, Serialize)]
pub struct StepCheck {
    /// 0 = prefill (the first generated token), then one per decode step.
    pub step: usize,
    pub token: u32,
    pub reference_token: u32,
    /// How far below the reference's best logit the bmodel's token is, relative to the
    /// logits' range (0 when they agree; tiny when bf16 rounding broke a near tie).
    pub reference_margin: f32,
    pub blocks: Vec<BlockCheck>,
    pub seconds: f64,
    /// Prefill: how many chunks the prompt ran in (more than one through block_kv).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_chunks: Option<usize>,
    /// Decode: history slots of the block_cache stage used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_slots: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub prompt: Vec<u32>,
    pub steps: Vec<StepCheck>,
    pub tokens: Vec<u32>,
    /// Fraction of steps where the bmodel's token is the reference's, or a near tie
    /// (`thresholds.tie_margin`).
    pub agreement: f64,
    /// Fraction of steps with exactly the reference's token.
    pub exact_agreement: f64,
    /// Steps where the tokens differ only by a near tie.
    pub near_ties: Vec<usize>,
    pub first_divergence: Option<usize>,
    pub min_cosine: f64,
    /// (step, layer) of the lowest cosine.
    pub worst_block: (usize, usize),
    pub thresholds: Thresholds,
    pub pass: bool,
    /// `--image`: the vit output's cosine with the reference vision tower's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vit_cosine: Option<f64>,
    /// `--teacher-forced`: the tokens both sides were fed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teacher_forced: Option<TeacherForced>,
}

#[derive(Debug, Serialize)]
pub struct TeacherForced {
    /// The reference's greedy continuation of the prompt (step i's reference token).
    pub continuation: Vec<u32>,
    /// The bmodel's own lm_head's token after the last fed row (the last step's, from the
    /// device head rather than the host one).
    pub lm_head_token: u32,
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return if na == nb { 1.0 } else { 0.0 };
    }
    dot / (na * nb)
}

fn compare(
    model: &Model,
    final_norm: &candle_core::Tensor,
    device: &[Vec<f32>],
    reference: &StepOutput,
    rows: usize,
) -> Result<Vec<BlockCheck>> {
    let last = reference.layer_outputs.len().saturating_sub(1);
    let mut out = Vec::with_capacity(device.len());
    for (layer, got) in device.iter().enumerate() {
        let mut want = reference.layer_outputs[layer].clone();
        // The final norm is folded into the last block.
        if layer == last {
            want = norm(&model.config, &want, final_norm)?;
        }
        let want: Vec<f32> = want.flatten_all()?.to_vec1()?;
        let tail = want.len() - rows * model.config.hidden_size;
        let want = &want[tail..];
        out.push(BlockCheck {
            layer,
            cosine: cosine(got, want),
            max_abs_diff: got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max),
        });
    }
    Ok(out)
}

/// `(best - logits[token]) / (best - worst)` of the reference logits.
fn margin(logits: &[f32], token: u32) -> f32 {
    let best = logits.iter().copied().fold(f32::MIN, f32::max);
    let worst = logits.iter().copied().fold(f32::MAX, f32::min);
    match logits.get(token as usize) {
        Some(&l) if best > worst => (best - l) / (best - worst),
        _ => 1.0,
    }
}

/// Runs `prompt` and `steps` generated tokens on both sides.
/// `--steps` tokens after a `prompt`-token prompt must fit the KV cache (the first comes from
/// prefill, each later one adds a position).
fn check_steps(prompt: usize, steps: usize, seq_length: usize) -> Result<(), InputError> {
    let room = (seq_length + 1).saturating_sub(prompt);
    if steps == 0 || steps > room {
        return Err(InputError::invalid(
            std::path::Path::new("--steps"),
            format!(
                "{steps} steps after a {prompt}-token prompt do not fit the bmodel's \
                 {seq_length}-token KV cache"
            ),
            if room == 0 {
                "use a shorter prompt (or a bmodel converted with a larger -s)".to_string()
            } else {
                format!("pass --steps between 1 and {room}")
            },
        ));
    }
    Ok(())
}

pub fn verify(
    pipeline: &mut Pipeline,
    model: &Model,
    prompt: &[u32],
    steps: usize,
    thresholds: Thresholds,
    on_step: impl FnMut(&StepCheck),
) -> Result<VerifyReport> {
    let prefill = |r: &mut Reference| r.prefill(prompt);
    verify_with(pipeline, model, prompt, steps, thresholds, prefill, on_step)
}

/// [`verify`] with the reference's prefill given (a prompt with images: spliced embeddings
/// and M-RoPE positions, matching the extras set on `pipeline`).
pub fn verify_with(
    pipeline: &mut Pipeline,
    model: &Model,
    prompt: &[u32],
    steps: usize,
    thresholds: Thresholds,
    reference_prefill: impl FnOnce(&mut Reference) -> Result<StepOutput>,
    mut on_step: impl FnMut(&StepCheck),
) -> Result<VerifyReport> {
    check_steps(prompt.len(), steps, pipeline.nets.seq_length)?;
    pipeline.capture = true;
    let mut reference = Reference::new(model)?.keep_hidden(true);
    // The last block holds the final norm; read its weight once, not per step.
    let final_norm = model.tensor(model.config.weights().final_norm)?;
    let mut checks = Vec::new();
    let t0 = std::time::Instant::now();
    let dev = pipeline.prefill(prompt)?;
    let refs = reference_prefill(&mut reference)?;
    checks.push(StepCheck {
        step: 0,
        token: dev.token,
        reference_token: argmax(&refs.logits),
        reference_margin: margin(&refs.logits, dev.token),
        blocks: compare(model, &final_norm, &dev.block_outputs, &refs, prompt.len())?,
        seconds: t0.elapsed().as_secs_f64(),
        prefill_chunks: Some(dev.chunks),
        decode_slots: None,
    });
    on_step(&checks[0]);
    let mut token = dev.token;
    for step in 1..steps.max(1) {
        if pipeline.history() >= pipeline.nets.seq_length {
            break;
        }
        let t0 = std::time::Instant::now();
        let dev = pipeline.decode(token)?;
        let refs = reference.decode(token)?;
        checks.push(StepCheck {
            step,
            token: dev.token,
            reference_token: argmax(&refs.logits),
            reference_margin: margin(&refs.logits, dev.token),
            blocks: compare(model, &final_norm, &dev.block_outputs, &refs, 1)?,
            seconds: t0.elapsed().as_secs_f64(),
            prefill_chunks: None,
            decode_slots: Some(dev.slots),
        });
        on_step(&checks[checks.len() - 1]);
        token = dev.token;
    }
    Ok(summarize(prompt, checks, thresholds))
}

/// Agreement, near ties, the first divergence and the worst block over `checks`.
fn summarize(prompt: &[u32], checks: Vec<StepCheck>, thresholds: Thresholds) -> VerifyReport {
    let exact = checks
        .iter()
        .filter(|c| c.token == c.reference_token)
        .count();
    let near_ties: Vec<usize> = checks
        .iter()
        .filter(|c| c.token != c.reference_token && c.reference_margin <= thresholds.tie_margin)
        .map(|c| c.step)
        .collect();
    let n = checks.len() as f64;
    let agreement = (exact + near_ties.len()) as f64 / n;
    let exact_agreement = exact as f64 / n;
    let first_divergence = checks
        .iter()
        .find(|c| c.token != c.reference_token)
        .map(|c| c.step);
    let mut min_cosine = f64::INFINITY;
    let mut worst_block = (0, 0);
    for c in &checks {
        for b in &c.blocks {
            if b.cosine < min_cosine {
                min_cosine = b.cosine;
                worst_block = (c.step, b.layer);
            }
        }
    }
    let pass = min_cosine >= thresholds.min_cosine && agreement >= thresholds.min_agreement;
    VerifyReport {
        prompt: prompt.to_vec(),
        tokens: checks.iter().map(|c| c.token).collect(),
        steps: checks,
        agreement,
        exact_agreement,
        near_ties,
        first_divergence,
        min_cosine,
        worst_block,
        thresholds,
        pass,
        vit_cosine: None,
        teacher_forced: None,
    }
}

/// `verify --teacher-forced`: both sides follow the reference's greedy continuation of
/// `prompt` (`steps` tokens), so different bmodels are scored on the same token sequence.
/// The bmodel runs prompt + continuation in one prefill (causal, so row i sees what a decode
/// at i would; one launch per net instead of `steps` slow decode steps); each step compares
/// the top-1 of the bmodel's final-block row (the reference's head applied on the host) with
/// the reference's. Only the last row goes through the bmodel's own lm_head.
pub fn verify_teacher_forced(
    pipeline: &mut Pipeline,
    model: &Model,
    prompt: &[u32],
    steps: usize,
    thresholds: Thresholds,
    mut on_step: impl FnMut(&StepCheck),
) -> Result<VerifyReport> {
    check_steps(prompt.len(), steps, pipeline.nets.seq_length)?;
    let mut reference = Reference::new(model)?.keep_hidden(true);
    let continuation = reference.generate_greedy(prompt, steps)?;
    let fed = [prompt, &continuation[..steps - 1]].concat();
    pipeline.capture = true;
    let t0 = std::time::Instant::now();
    let dev = pipeline.prefill(&fed)?;
    let seconds = t0.elapsed().as_secs_f64();
    let refs = reference.prefill(&fed)?;
    let final_norm = model.tensor(model.config.weights().final_norm)?;
    let blocks = compare(model, &final_norm, &dev.block_outputs, &refs, fed.len())?;
    let hidden = model.config.hidden_size;
    let last = refs
        .layer_outputs
        .last()
        .context("a model without layers")?;
    let ref_logits = reference.head(&reference.final_norm(last)?)?;
    // The last block's rows already hold the final norm (it is folded in).
    let dev_rows = dev
        .block_outputs
        .last()
        .context("no block output captured")?;
    let dev_rows = Tensor::from_slice(dev_rows, (fed.len(), hidden), &candle_core::Device::Cpu)?;
    let dev_logits = reference.head(&dev_rows)?;
    let mut checks = Vec::with_capacity(steps);
    for step in 0..steps {
        let row = prompt.len() - 1 + step;
        let token = argmax(&dev_logits[row]);
        checks.push(StepCheck {
            step,
            token,
            reference_token: argmax(&ref_logits[row]),
            reference_margin: margin(&ref_logits[row], token),
            blocks: if step == 0 {
                blocks.clone()
            } else {
                Vec::new()
            },
            seconds: if step == 0 { seconds } else { 0.0 },
            prefill_chunks: (step == 0).then_some(dev.chunks),
            decode_slots: None,
        });
        on_step(&checks[step]);
    }
    let mut report = summarize(prompt, checks, thresholds);
    report.teacher_forced = Some(TeacherForced {
        continuation,
        lm_head_token: dev.token,
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: usize, token: u32, reference_token: u32, margin: f32, cos: &[f64]) -> StepCheck {
        StepCheck {
            step,
            token,
            reference_token,
            reference_margin: margin,
            blocks: cos
                .iter()
                .enumerate()
                .map(|(layer, &cosine)| BlockCheck {
                    layer,
                    cosine,
                    max_abs_diff: 0.0,
                })
                .collect(),
            seconds: 0.0,
            prefill_chunks: None,
            decode_slots: None,
        }
    }

    #[test]
    fn agreement_counts_exact_tokens_and_near_ties_only() {
        let t = Thresholds {
            min_cosine: 0.9,
            min_agreement: 0.5,
            tie_margin: 0.05,
        };
        let checks = vec![
            step(0, 5, 5, 0.0, &[0.99, 0.95]),
            step(1, 6, 7, 0.04, &[]),          // a near tie
            step(2, 8, 9, 0.2, &[0.98, 0.91]), // a miss
            step(3, 1, 1, 0.0, &[]),
        ];
        let r = summarize(&[1, 2], checks, t);
        assert_eq!(r.tokens, vec![5, 6, 8, 1]);
        assert_eq!((r.exact_agreement, r.agreement), (0.5, 0.75));
        assert_eq!(r.near_ties, vec![1]);
        assert_eq!(r.first_divergence, Some(1));
        assert_eq!((r.min_cosine, r.worst_block), (0.91, (2, 1)));
        assert!(r.pass);
        // The same steps fail a stricter agreement, and a miss beyond the tie margin counts.
        let strict = Thresholds {
            min_agreement: 0.8,
            ..t
        };
        let checks = vec![step(0, 5, 5, 0.0, &[0.99]), step(1, 6, 7, 0.06, &[])];
        let r = summarize(&[1], checks, strict);
        assert_eq!((r.agreement, r.near_ties.len(), r.pass), (0.5, 0, false));
    }

    #[test]
    fn steps_must_fit_the_kv_cache() {
        assert!(check_steps(8, 57, 64).is_ok());
        let e = check_steps(8, 58, 64).unwrap_err().to_string();
        assert!(
            e.contains("--steps") && e.contains("between 1 and 57"),
            "{e}"
        );
        assert!(check_steps(8, 0, 64).is_err());
        let e = check_steps(70, 1, 64).unwrap_err().to_string();
        assert!(e.contains("shorter prompt"), "{e}");
    }
}
