//! What the pre-quantized fixtures (scripts/make_quant_fixtures.py) expect, and the check that
//! `reference` computes it: shared by the integer-packed and the fp8 tests.

use std::path::Path;

use llm_convert::model::Model;
use llm_convert::reference::{argmax, Reference};

/// What transformers computes on the dequantized weights (the fixture's expected.json).
#[derive(serde::Deserialize)]
pub struct Expected {
    pub prompt: Vec<u32>,
    pub prefill_logits: Vec<f32>,
    pub tokens: Vec<u32>,
    pub step_logits: Vec<Vec<f32>>,
}

pub fn expected(dir: &Path) -> Expected {
    let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `reference` on the checkpoint in `dir` equals its expected.json: f32 logits within 1e-4 on
/// prefill and every decode step, the same greedy tokens.
pub fn assert_reference_matches(name: &str, dir: &Path) {
    let exp = expected(dir);
    let model = Model::open(dir).unwrap();
    let mut r = Reference::new(&model).unwrap();
    let out = r.prefill(&exp.prompt).unwrap();
    let d = max_abs_diff(&out.logits, &exp.prefill_logits);
    println!("{name}: prefill logits max |diff| = {d:.2e}");
    assert!(d <= 1e-4, "{name}: prefill logits differ by {d}");
    let mut logits = out.logits;
    for (step, &want) in exp.tokens.iter().enumerate() {
        let tok = argmax(&logits);
        assert_eq!(tok, want, "{name}: greedy token {step}");
        logits = r.decode(tok).unwrap().logits;
        let d = max_abs_diff(&logits, &exp.step_logits[step]);
        assert!(d <= 1e-4, "{name}: step {step} logits differ by {d}");
    }
}
