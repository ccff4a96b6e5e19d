//! Exported ONNX pieces, chained the way the runtime chains the nets, against the reference.

mod common;

use std::path::Path;
use std::process::Command;

use common::PROMPT;
use llm_convert::arch::PieceOptions;
use llm_convert::model::Model;
use llm_convert::reference::{norm, Reference};
use serde::Deserialize;

#[derive(Deserialize)]
struct PipelineResult {
    tokens: Vec<u32>,
    hidden: Vec<Vec<Vec<f32>>>,
    checked: usize,
    sample_head_max_diff: Option<f64>,
    /// History lengths of the decode nets used (S, or a decode stage's).
    stages_used: Vec<usize>,
    /// Per decode step, per layer: the block_cache output row.
    decode_hidden: Vec<Vec<Vec<f32>>>,
}

const STEPS: usize = 16;

use llm_convert::runner::verify::cosine;

fn check(name: &str, seq: usize, mil: usize) {
    check_variant(name, seq, mil, false);
}

fn check_variant(name: &str, seq: usize, mil: usize, dynamic: bool) {
    check_options(name, seq, mil, dynamic, false);
}

fn check_options(name: &str, seq: usize, mil: usize, dynamic: bool, do_sample: bool) {
    let opts = PieceOptions::new(seq, Some(mil))
        .unwrap()
        .with_dynamic(dynamic)
        .with_do_sample(do_sample);
    check_with(name, &opts, &PROMPT);
}

/// Exports fixture `name` with `opts` and checks the chained pieces (see [`check_dir`]).
fn check_with(name: &str, opts: &PieceOptions, prompt: &[u32]) -> Vec<usize> {
    let model = Model::open(&common::fixtures().join(name)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let exported = llm_convert::export::export_onnx(&model, opts, dir.path(), true).unwrap();
    let heads = if opts.do_sample { 5 } else { 3 };
    let per_layer = 2 + opts.decode_stages.len() + usize::from(opts.history_kv);
    assert_eq!(
        exported.len(),
        heads + per_layer * model.config.num_hidden_layers
    );
    check_dir(name, &model, opts, prompt, dir.path(), STEPS)
}

/// Chains the ONNX pieces in `dir` in onnxruntime on `prompt` (scripts/onnx_pipeline.py,
/// after onnx.checker) and compares every prefill block's output rows, every decode block's
/// output (teacher-forced with the pipeline's tokens) and the greedy tokens with the
/// reference. Returns the decode history lengths used.
fn check_dir(
    name: &str,
    model: &Model,
    opts: &PieceOptions,
    prompt: &[u32],
    dir: &Path,
    steps: usize,
) -> Vec<usize> {
    let layout = common::toolchain();
    let pieces = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "onnx")
        })
        .count();
    let out = dir.join("result.json");
    let ids: Vec<String> = prompt.iter().map(|t| t.to_string()).collect();
    let status = Command::new(layout.python())
        .arg(common::repo().join("scripts/onnx_pipeline.py"))
        .args([
            dir.to_str().unwrap(),
            &ids.join(","),
            &steps.to_string(),
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
    assert_eq!(got.checked, pieces, "every piece passes onnx.checker");

    match (opts.do_sample, got.sample_head_max_diff) {
        (true, Some(d)) => {
            println!("{name} sample_head: max |probs diff| vs numpy {d:.2e}");
            assert!(d < 1e-5, "{name}: sample_head probs differ by {d}");
        }
        (false, None) => {}
        other => panic!("{name}: sample_head checked = {other:?}"),
    }
    let mut r = Reference::new(model).unwrap().keep_hidden(true);
    let final_norm = model.tensor(model.config.weights().final_norm).unwrap();
    let last = model.config.num_hidden_layers - 1;
    // The last block holds the final norm.
    let compare = |what: &str, i: usize, want: &candle_core::Tensor, have: &[f32]| {
        let want = if i == last {
            norm(&model.config, want, &final_norm).unwrap()
        } else {
            want.clone()
        };
        let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        let cos = cosine(have, &want);
        let max = have
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        cos_log(name, what, i, cos, max);
        assert!(
            cos >= 0.99999,
            "{name}: {what} block_{i} output cosine {cos}"
        );
    };
    let prefill = r.prefill(prompt).unwrap();
    for (i, rows) in got.hidden.iter().enumerate() {
        let have: Vec<f32> = rows.iter().flatten().copied().collect();
        compare("prefill", i, &prefill.layer_outputs[i], &have);
    }
    assert_eq!(got.decode_hidden.len(), steps - 1);
    for (step, layers) in got.decode_hidden.iter().enumerate() {
        let dec = r.decode(got.tokens[step]).unwrap();
        for (i, row) in layers.iter().enumerate() {
            compare(
                &format!("decode {}", step + 1),
                i,
                &dec.layer_outputs[i],
                row,
            );
        }
    }
    let want_tokens = r.generate_greedy(prompt, steps).unwrap();
    assert_eq!(
        got.tokens, want_tokens,
        "{name}: ONNX pipeline tokens differ from the reference"
    );
    got.stages_used
}

/// Prints a block's agreement (prefill always, decode for the first and last steps only).
fn cos_log(name: &str, what: &str, layer: usize, cos: f64, max: f32) {
    if what == "prefill" || what == "decode 1" || what == format!("decode {}", STEPS - 1) {
        println!("{name} {what} block_{layer}: cosine {cos:.8}, max |diff| {max:.2e}");
    }
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

/// `--use_history_kv --chunk_length 4` at S 32: a 10-token prompt runs as chunks of 4, 4 and 2
/// (block_i, then block_kv_i over 4 and 8 history slots), and decode walks through the stages
/// (16 slots, then the full 32).
#[test]
fn history_kv_chunks_and_decode_stages() {
    let prompt = [3, 17, 256, 999, 42, 7, 511, 128, 64, 5];
    for name in ["qwen3", "llama_rope3", "qwen2", "llama_tied", "minicpm"] {
        let opts = PieceOptions::new(32, Some(4))
            .unwrap()
            .with_dynamic(true)
            .with_history(true, 4);
        assert_eq!(opts.decode_stages, vec![16, 8, 4]);
        let used = check_with(name, &opts, &prompt);
        assert_eq!(used, vec![16, 32], "{name}: decode stages used");
    }
}

/// The bundled SmolLM2-135M (GGUF, 30 layers, tied embeddings) chained in onnxruntime gives
/// the reference's greedy tokens (prefill and decode blocks checked too).
#[test]
fn smollm2_135m_chain() {
    let model = Model::open(&common::smollm2_gguf()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = PieceOptions::new(64, Some(16)).unwrap();
    llm_convert::export::export_onnx(&model, &opts, dir.path(), true).unwrap();
    check_dir("smollm2", &model, &opts, &PROMPT, dir.path(), STEPS);
}

/// Weights above the inline limit go to `<piece>.onnx.data` (external data, as a >2 GiB piece
/// must): with the limit at 0, every piece of a tiny model is written that way, passes the
/// checker, and chains to the reference's tokens.
#[test]
fn external_data_pieces() {
    let model = Model::open(&common::fixtures().join("qwen2")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = PieceOptions::new(32, Some(16)).unwrap();
    for piece in llm_convert::arch::pieces(&model.config, &opts) {
        let graph = llm_convert::arch::build(piece, &model.config, &opts);
        let path = dir.path().join(format!("{}.onnx", piece.file_stem()));
        llm_convert::onnx::write_with_inline_limit(&graph, model.weights.as_ref(), &path, 0)
            .unwrap();
        let data = path.with_file_name(format!("{}.onnx.data", piece.file_stem()));
        let onnx_len = std::fs::metadata(&path).unwrap().len();
        let data_len = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
        assert!(
            data_len > onnx_len,
            "{}: {onnx_len} bytes of ONNX, {data_len} of external data",
            piece.name()
        );
    }
    check_dir("qwen2", &model, &opts, &PROMPT, dir.path(), STEPS);
}

/// `llm-convert … --only_onnx` writes the pieces with every conversion flag's meaning:
/// `--use_history_kv --chunk_length 8` at S 32 gives MAX_INPUT_LENGTH 8, block_kv_i, decode
/// stages of 16 and 8 slots, and f32 quantize tables for the in-graph masks.
#[test]
fn only_onnx_follows_the_conversion_flags() {
    let name = "llama_rope3";
    let model_dir = common::fixtures().join(name);
    let dir = tempfile::tempdir().unwrap();
    let o = common::llm_convert(&[
        "-m",
        model_dir.to_str().unwrap(),
        "-s",
        "32",
        "-q",
        "bf16",
        "--use_history_kv",
        "--chunk_length",
        "8",
        "--only_onnx",
        "-o",
        dir.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let onnx = dir.path().join("onnx");
    for f in [
        "block_kv_1.onnx",
        "block_kv_1.qtable",
        "block_1.qtable",
        "block_cache_1_1.onnx",
        "block_cache_1_2.onnx",
    ] {
        assert!(onnx.join(f).is_file(), "{f} missing");
    }
    assert!(!onnx.join("block_cache_1_3.onnx").exists());
    let model = Model::open(&model_dir).unwrap();
    let opts = PieceOptions::new(32, Some(8))
        .unwrap()
        .with_dynamic(true)
        .with_history(true, 8);
    let used = check_dir(name, &model, &opts, &PROMPT, &onnx, STEPS);
    assert_eq!(used, vec![16, 32]);
}

/// mistral (sliding window 5, shorter than the 8-token prompt + 16 steps; head_dim 48): the
/// window is applied in-graph from position_ids, so the static chain (mask input = causal
/// only, as the runtime sends it) gives the reference's windowed tokens.
#[test]
fn mistral_sliding_window_static() {
    check("mistral", 32, 16);
    check("mistral_bf16", 32, 16);
}

/// mistral `--dynamic`: the window joins the causal mask built from position_ids.
#[test]
fn mistral_sliding_window_dynamic() {
    check_variant("mistral", 32, 16, true);
}

/// mistral `--use_history_kv --chunk_length 4`: block_kv_i windows over the history keys'
/// positions, and the decode stages (16 slots, then 32) window the history slots.
#[test]
fn mistral_sliding_window_history_kv() {
    let prompt = [3, 17, 256, 999, 42, 7, 511, 128, 64, 5];
    let opts = PieceOptions::new(32, Some(4))
        .unwrap()
        .with_dynamic(true)
        .with_history(true, 4);
    let used = check_with("mistral", &opts, &prompt);
    assert_eq!(used, vec![16, 32], "mistral: decode stages used");
}

/// gemma ((1+w) norms, GELU-tanh from primitives, embedding × sqrt(hidden), tied, MQA):
/// static, f32 and bf16 checkpoints.
#[test]
fn gemma_static() {
    check("gemma", 32, 16);
    check("gemma_bf16", 32, 16);
}

#[test]
fn gemma_dynamic() {
    check_variant("gemma", 32, 16, true);
}

/// gemma `--use_history_kv --chunk_length 4`: a 10-token prompt in chunks through block_kv_i,
/// decode across the stages.
#[test]
fn gemma_history_kv() {
    let prompt = [3, 17, 256, 999, 42, 7, 511, 128, 64, 5];
    let opts = PieceOptions::new(32, Some(4))
        .unwrap()
        .with_dynamic(true)
        .with_history(true, 4);
    let used = check_with("gemma", &opts, &prompt);
    assert_eq!(used, vec![16, 32], "gemma: decode stages used");
}

/// phi3 (fused qkv_proj / gate_up_proj sliced in-graph, partial rotary): static, f32 and bf16.
#[test]
fn phi3_static() {
    check("phi3", 32, 16);
    check("phi3_bf16", 32, 16);
}

#[test]
fn phi3_dynamic() {
    check_variant("phi3", 32, 16, true);
}

/// phi3 `--use_history_kv --chunk_length 4`.
#[test]
fn phi3_history_kv() {
    let prompt = [3, 17, 256, 999, 42, 7, 511, 128, 64, 5];
    let opts = PieceOptions::new(32, Some(4))
        .unwrap()
        .with_dynamic(true)
        .with_history(true, 4);
    let used = check_with("phi3", &opts, &prompt);
    assert_eq!(used, vec![16, 32], "phi3: decode stages used");
}

/// glm4 (interleaved half rotary as a 5-D pair view, fused gate_up_proj, branch output
/// norms): static, f32 and bf16.
#[test]
fn glm4_static() {
    check("glm4", 32, 16);
    check("glm4_bf16", 32, 16);
}

#[test]
fn glm4_dynamic() {
    check_variant("glm4", 32, 16, true);
}

/// glm4 `--use_history_kv --chunk_length 4`.
#[test]
fn glm4_history_kv() {
    let prompt = [3, 17, 256, 999, 42, 7, 511, 128, 64, 5];
    let opts = PieceOptions::new(32, Some(4))
        .unwrap()
        .with_dynamic(true)
        .with_history(true, 4);
    let used = check_with("glm4", &opts, &prompt);
    assert_eq!(used, vec![16, 32], "glm4: decode stages used");
}

/// glm (glm4 without the branch output norms): static, f32 and bf16.
#[test]
fn glm_static() {
    check("glm", 32, 16);
    check("glm_bf16", 32, 16);
}

#[test]
fn glm_dynamic() {
    check_variant("glm", 32, 16, true);
}

/// glm `--use_history_kv --chunk_length 4`.
#[test]
fn glm_history_kv() {
    let prompt = [3, 17, 256, 999, 42, 7, 511, 128, 64, 5];
    let opts = PieceOptions::new(32, Some(4))
        .unwrap()
        .with_dynamic(true)
        .with_history(true, 4);
    let used = check_with("glm", &opts, &prompt);
    assert_eq!(used, vec![16, 32], "glm: decode stages used");
}

/// qwen2_moe (router, top-k weights from ReduceMax rounds, every expert weighted, shared
/// expert, a dense layer) and qwen3_moe: static, f32 and bf16.
#[test]
fn moe_static() {
    for name in ["qwen2_moe", "qwen2_moe_bf16", "qwen3_moe", "qwen3_moe_bf16"] {
        check(name, 32, 16);
    }
}

#[test]
fn moe_dynamic() {
    check_variant("qwen2_moe", 32, 16, true);
    check_variant("qwen3_moe", 32, 16, true);
}

/// qwen2_moe and qwen3_moe `--use_history_kv --chunk_length 4`.
#[test]
fn moe_history_kv() {
    let prompt = [3, 17, 256, 999, 42, 7, 511, 128, 64, 5];
    let opts = PieceOptions::new(32, Some(4))
        .unwrap()
        .with_dynamic(true)
        .with_history(true, 4);
    for name in ["qwen2_moe", "qwen3_moe"] {
        let used = check_with(name, &opts, &prompt);
        assert_eq!(used, vec![16, 32], "{name}: decode stages used");
    }
}
/// gemma2 (local layers 0 and 2 with a 4-token window, soft-capped scores, score scale
/// 1/sqrt(16), sandwich norms): static, f32 and bf16 checkpoints.
#[test]
fn gemma2_static() {
    check("gemma2", 32, 16);
    check("gemma2_bf16", 32, 16);
}

#[test]
fn gemma2_dynamic() {
    check_variant("gemma2", 32, 16, true);
}

/// gemma2 `--use_history_kv --chunk_length 4`: chunks and decode stages on local layers.
#[test]
fn gemma2_history_kv() {
    let prompt = [3, 17, 256, 999, 42, 7, 511, 128, 64, 5];
    let opts = PieceOptions::new(32, Some(4))
        .unwrap()
        .with_dynamic(true)
        .with_history(true, 4);
    let used = check_with("gemma2", &opts, &prompt);
    assert_eq!(used, vec![16, 32], "gemma2: decode stages used");
}

/// gemma2 `--do_sample`: the chain's tokens are the reference's, and lm_head's `m_logits` are
/// the soft-capped logits the reference (and transformers) return, bounded by the cap.
#[test]
fn gemma2_do_sample_logits_are_soft_capped() {
    check_options("gemma2", 32, 16, false, true);
    let model = Model::open(&common::fixtures().join("gemma2")).unwrap();
    let cap = model.config.layer.final_logit_softcap.unwrap() as f32;
    let opts = PieceOptions::new(32, Some(16))
        .unwrap()
        .with_do_sample(true);
    let dir = tempfile::tempdir().unwrap();
    llm_convert::export::export_onnx(&model, &opts, dir.path(), true).unwrap();
    let want = Reference::new(&model).unwrap().prefill(&PROMPT).unwrap();
    let hidden: Vec<String> = want.final_hidden.iter().map(f32::to_string).collect();
    let script = "import sys, json, numpy as np, onnxruntime as ort\n\
        s = ort.InferenceSession(sys.argv[1])\n\
        x = np.array([json.loads(sys.argv[2])], np.float32)\n\
        print(json.dumps(s.run(None, {'hidden_states': x})[0][0].tolist()))";
    let lm_head = dir.path().join("lm_head.onnx");
    let o = Command::new(common::toolchain().python())
        .args(["-c", script, lm_head.to_str().unwrap()])
        .arg(format!("[{}]", hidden.join(",")))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let have: Vec<f32> = serde_json::from_slice(&o.stdout).unwrap();
    let d = have
        .iter()
        .zip(&want.logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("gemma2 lm_head m_logits: max |diff| vs reference {d:.2e}");
    assert!(d < 1e-4, "gemma2: m_logits differ by {d}");
    assert!(have.iter().all(|l| l.abs() < cap), "logits above the cap");
}

/// gemma3_text (q/k norms; local layers 0, 1, 3 with a 4-token window and rotary base 100,
/// global layer 2 with linearly scaled rotary): static, f32 and bf16 checkpoints.
#[test]
fn gemma3_text_static() {
    check("gemma3_text", 32, 16);
    check("gemma3_text_bf16", 32, 16);
}

/// Gemma 3's vision-language layout (`gemma3`: `language_model.model.*` names, a text_config
/// with only the non-default keys) exports every piece byte for byte as its `gemma3_text`
/// twin: the same bmodel as the verified text family.
#[test]
fn gemma3_exports_the_gemma3_text_pieces() {
    let opts = PieceOptions::new(32, Some(16)).unwrap();
    let export = |name: &str| {
        let model = Model::open(&common::fixtures().join(name)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        llm_convert::export::export_onnx(&model, &opts, dir.path(), true).unwrap();
        // Every file written (graphs, external weights, quantize tables), by name.
        let mut bytes: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect();
        bytes.sort();
        bytes
    };
    let (vlm, text) = (export("gemma3"), export("gemma3_text"));
    assert_eq!(vlm.len(), text.len());
    for ((a, x), (b, y)) in vlm.iter().zip(&text) {
        assert_eq!(a, b);
        assert!(x == y, "{a}: the gemma3 layout exports other bytes");
    }
}

#[test]
fn gemma3_text_dynamic() {
    check_variant("gemma3_text", 32, 16, true);
}

/// gemma3_text `--use_history_kv --chunk_length 4`.
#[test]
fn gemma3_text_history_kv() {
    let prompt = [3, 17, 256, 999, 42, 7, 511, 128, 64, 5];
    let opts = PieceOptions::new(32, Some(4))
        .unwrap()
        .with_dynamic(true)
        .with_history(true, 4);
    let used = check_with("gemma3_text", &opts, &prompt);
    assert_eq!(used, vec![16, 32], "gemma3_text: decode stages used");
}

/// internlm2 (grouped wqkv regrouped on read, q/k/v/o biases): static.
#[test]
fn internlm2_static() {
    check("internlm2", 32, 16);
}

#[test]
fn internlm2_dynamic() {
    check_variant("internlm2", 32, 16, true);
}

/// internlm2 `--use_history_kv --chunk_length 4`.
#[test]
fn internlm2_history_kv() {
    let prompt = [3, 17, 256, 999, 42, 7, 511, 128, 64, 5];
    let opts = PieceOptions::new(32, Some(4))
        .unwrap()
        .with_dynamic(true)
        .with_history(true, 4);
    let used = check_with("internlm2", &opts, &prompt);
    assert_eq!(used, vec![16, 32], "internlm2: decode stages used");
}

/// baichuan (W_pack, NormHead on read): static.
#[test]
fn baichuan_static() {
    check("baichuan", 32, 16);
}

#[test]
fn baichuan_dynamic() {
    check_variant("baichuan", 32, 16, true);
}

/// baichuan `--use_history_kv --chunk_length 4`.
#[test]
fn baichuan_history_kv() {
    let prompt = [3, 17, 256, 999, 42, 7, 511, 128, 64, 5];
    let opts = PieceOptions::new(32, Some(4))
        .unwrap()
        .with_dynamic(true)
        .with_history(true, 4);
    let used = check_with("baichuan", &opts, &prompt);
    assert_eq!(used, vec![16, 32], "baichuan: decode stages used");
}

/// baichuan_alibi (Baichuan2-13B: ALiBi biases from the positions in-graph): static.
#[test]
fn baichuan_alibi_static() {
    check("baichuan_alibi", 32, 16);
}

#[test]
fn baichuan_alibi_dynamic() {
    check_variant("baichuan_alibi", 32, 16, true);
}

/// baichuan_alibi `--use_history_kv --chunk_length 4`: the biases of history keys come from
/// their slots.
#[test]
fn baichuan_alibi_history_kv() {
    let prompt = [3, 17, 256, 999, 42, 7, 511, 128, 64, 5];
    let opts = PieceOptions::new(32, Some(4))
        .unwrap()
        .with_dynamic(true)
        .with_history(true, 4);
    let used = check_with("baichuan_alibi", &opts, &prompt);
    assert_eq!(used, vec![16, 32], "baichuan_alibi: decode stages used");
}

/// phi3 with longrope at S = 32 > original_max_position_embeddings 16: the graph switches to
/// the long factors when the call's largest position id reaches 16 (static, dynamic, history
/// KV), as transformers does per call.
#[test]
fn phi3_longrope_static() {
    check("phi3_longrope", 32, 16);
}

#[test]
fn phi3_longrope_dynamic() {
    check_variant("phi3_longrope", 32, 16, true);
}

#[test]
fn phi3_longrope_history_kv() {
    let prompt = [3, 17, 256, 999, 42, 7, 511, 128, 64, 5];
    let opts = PieceOptions::new(32, Some(4))
        .unwrap()
        .with_dynamic(true)
        .with_history(true, 4);
    let used = check_with("phi3_longrope", &opts, &prompt);
    assert_eq!(used, vec![16, 32], "phi3_longrope: decode stages used");
}

/// MiniCPM4 (minicpm with longrope): static.
#[test]
fn minicpm4_static() {
    check("minicpm4", 32, 16);
}

/// chatglm (packed query_key_value, fused dense_h_to_4h, interleaved half rotary): static,
/// prefill at S; its decode blocks return the whole KV cache shifted by one, the cache
/// right-aligned (llm_convert.py's contract for it; no history KV or decode stages).
#[test]
fn chatglm_static() {
    check("chatglm", 32, 32);
}

#[test]
fn chatglm_dynamic() {
    check_variant("chatglm", 32, 32, true);
}
