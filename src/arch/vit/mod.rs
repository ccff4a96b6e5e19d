//! The `vit` piece of a vision-language model: the vision tower and its projector into the
//! LLM's width, as one net with llm_convert.py's inputs and outputs (vlm.md §1.2, §2.2, §3),
//! so LLM-TPU's runtimes and ours run both bmodels alike. Geometry comes from the config.

pub mod intern;
pub mod ops;
pub mod qwen;
mod spec;

pub use spec::{vit_spec, VitSpec};

use crate::graph::Graph;
use crate::model::ModelConfig;

/// llm_convert.py's `--max_pixels` default (W, H) for a tower, and the multiple W·H must be
/// of (patch · merge, squared); None: the tower's input size is fixed (InternVL).
pub fn max_pixels_rule(spec: &VitSpec) -> Option<((usize, usize), usize)> {
    match spec {
        VitSpec::Qwen(q) => {
            let default = match q.kind {
                qwen::QwenVitKind::Qwen2_5 => (672, 896),
                qwen::QwenVitKind::Qwen2 => (768, 768),
            };
            Some((default, q.patch * q.merge))
        }
        VitSpec::Intern(_) => None,
    }
}

/// Checks `--max_pixels` (W·H) for this model as llm_convert.py does; returns the patch rows
/// the vit takes (P), or an explanation. Models without a vit accept none.
pub fn check_max_pixels(cfg: &ModelConfig, max_pixels: Option<usize>) -> Result<usize, String> {
    let Some(spec) = vit_spec(cfg) else {
        return match max_pixels {
            Some(_) => Err("--max_pixels is for vision-language models only".into()),
            None => Ok(0),
        };
    };
    let Some(((w, h), multiple)) = max_pixels_rule(&spec) else {
        // Fixed input (llm_convert.py ignores --max_pixels for InternVL).
        return Ok(0);
    };
    let pixels = max_pixels.unwrap_or(w * h);
    let unit = multiple * multiple;
    if pixels == 0 || pixels % unit != 0 {
        if max_pixels.is_none() {
            // Qwen2-VL's 768,768: llm_convert.py refuses its own default too.
            return Err(format!(
                "the default --max_pixels {w},{h} of this model (llm_convert.py's) is not a \
                 multiple of {multiple}·{multiple} = {unit}, so it needs --max_pixels"
            ));
        }
        return Err(format!(
            "--max_pixels W,H must give W·H a positive multiple of {multiple}·{multiple} = {unit} (got {pixels})"
        ));
    }
    Ok(spec.patches(pixels))
}

/// The `vit` graph of a vision-language model (`max_pixels` = W·H, llm_convert.py's default
/// when None).
pub fn build(cfg: &ModelConfig, max_pixels: Option<usize>) -> Graph {
    let spec = vit_spec(cfg).unwrap_or_else(|| panic!("internal error: no vit for this model"));
    match &spec {
        VitSpec::Qwen(q) => {
            let default = max_pixels_rule(&spec).map(|((w, h), _)| w * h).unwrap_or(0);
            qwen::vit(q, spec.patches(max_pixels.unwrap_or(default)))
        }
        VitSpec::Intern(v) => intern::vit(v),
    }
}
