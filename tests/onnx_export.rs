//! Exported ONNX pieces, chained the way the runtime chains the nets, against the reference.

mod common;

use std::process::Command;

use llm_convert::arch::PieceOptions;
use llm_convert::model::Model;
use llm_convert::reference::{rms_norm, Reference};
use serde::Deserialize;

#[derive(Deserialize)]
struct PipelineResult {
    tokens: Vec<u32>,
    hidden: Vec<Vec<Vec<f32>>>,
    checked: usize,
    sample_head_max_diff: Option<f64>,
}

const PROMPT: [u32; 8] = [3, 17, 256, 999, 42, 7, 511, 128];
const STEPS: usize = 16;

use llm_convert::runner::verify::cosine;

fn check(name: &str, seq: usize, mil: usize) {
    check_variant(name, seq, mil, false);
}

fn check_variant(name: &str, seq: usize, mil: usize, dynamic: bool) {
    check_options(name, seq, mil, dynamic, false);
}

fn check_options(name: &str, seq: usize, mil: usize, dynamic: bool, do_sample: bool) {
    let layout = common::toolchain();
    let model = Model::open(&common::fixtures().join(name)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = PieceOptions::new(seq, Some(mil))
        .unwrap()
        .with_dynamic(dynamic)
        .with_do_sample(do_sample);
    let exported = llm_convert::export::export_onnx(&model, &opts, dir.path(), true).unwrap();
    let heads = if do_sample { 5 } else { 3 };
    assert_eq!(exported.len(), heads + 2 * model.config.num_hidden_layers);

    let out = dir.path().join("result.json");
    let ids: Vec<String> = PROMPT.iter().map(|t| t.to_string()).collect();
    let status = Command::new(layout.python())
        .arg(common::repo().join("scripts/onnx_pipeline.py"))
        .args([
            dir.path().to_str().unwrap(),
            &ids.join(","),
            &STEPS.to_string(),
            out.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{name}: onnx_pipeline.py failed (checker or onnxruntime)"
    );
    let got: PipelineResult =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(
        got.checked,
        exported.len(),
        "every piece passes onnx.checker"
    );

    match (do_sample, got.sample_head_max_diff) {
        (true, Some(d)) => {
            println!("{name} sample_head: max |probs diff| vs numpy {d:.2e}");
            assert!(d < 1e-5, "{name}: sample_head probs differ by {d}");
        }
        (false, None) => {}
        other => panic!("{name}: sample_head checked = {other:?}"),
    }
    let mut r = Reference::new(&model).unwrap().keep_hidden(true);
    let prefill = r.prefill(&PROMPT).unwrap();
    let last = model.config.num_hidden_layers - 1;
    let final_norm = model.tensor("model.norm.weight").unwrap();
    for (i, rows) in got.hidden.iter().enumerate() {
        let mut want = prefill.layer_outputs[i].clone();
        if i == last {
            want = rms_norm(&want, &final_norm, model.config.rms_norm_eps).unwrap();
        }
        let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        let have: Vec<f32> = rows.iter().flatten().copied().collect();
        let cos = cosine(&have, &want);
        let max = have
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{name} block_{i}: cosine {cos:.8}, max |diff| {max:.2e}");
        assert!(cos >= 0.99999, "{name}: block_{i} output cosine {cos}");
    }
    let want_tokens = r.generate_greedy(&PROMPT, STEPS).unwrap();
    assert_eq!(
        got.tokens, want_tokens,
        "{name}: ONNX pipeline tokens differ from the reference"
    );
}

#[test]
fn llama_tied_static() {
    check("llama_tied", 32, 16);
}

#[test]
fn llama_llama3_rope_untied() {
    check("llama_rope3", 32, 8);
}

#[test]
fn qwen2_bias() {
    check("qwen2", 32, 16);
}

#[test]
fn qwen3_qk_norm() {
    check("qwen3", 32, 16);
}

#[test]
fn minicpm_scalings() {
    check("minicpm", 32, 16);
}

#[test]
fn bf16_checkpoints() {
    check("qwen2_bf16", 32, 16);
    check("minicpm_bf16", 32, 16);
}

/// `--dynamic`: prefill blocks take exactly the prompt's rows and build the causal mask from
/// position_ids (no mask input).
#[test]
fn dynamic_prefill_blocks() {
    check_variant("qwen2", 32, 16, true);
    check_variant("llama_rope3", 32, 32, true);
    check_variant("minicpm", 32, 16, true);
}

/// `--do_sample`: lm_head returns logits, greedy_head picks the same tokens as the reference,
/// and sample_head matches a numpy re-implementation of TPU-MLIR's sampling head.
#[test]
fn do_sample_heads() {
    check_options("qwen2", 32, 16, false, true);
    check_options("llama_tied", 32, 16, true, true);
}
