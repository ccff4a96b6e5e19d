//! The candle reference against Hugging Face transformers on the same weights.

mod common;

use candle_core::Tensor;
use llm_convert::model::Model;
use llm_convert::reference::{argmax, Reference};
use serde::Deserialize;

#[derive(Deserialize)]
struct Expected {
    prompt: Vec<u32>,
    prefill_logits: Vec<f32>,
    hidden: Vec<Vec<Vec<f32>>>,
    tokens: Vec<u32>,
    step_logits: Vec<Vec<f32>>,
    /// Families with a sliding window: transformers' tokens with the window disabled.
    #[serde(default)]
    tokens_without_window: Option<Vec<u32>>,
    /// Remote-code families: the twin's tokens with the family's quirk dropped (internlm2's
    /// wqkv read as plain q | k | v rows, baichuan's head not normalised, …).
    #[serde(default)]
    tokens_quirk_dropped: Option<Vec<u32>>,
}

const TOL: f32 = 1e-4;

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn expected(name: &str) -> Expected {
    let path = common::fixtures().join(name).join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn check_family(name: &str) {
    let dir = common::fixtures().join(name);
    let exp = expected(name);
    let model = Model::open(&dir).unwrap();
    let mut r = Reference::new(&model).unwrap().keep_hidden(true);
    let out = r.prefill(&exp.prompt).unwrap();
    let d = max_abs_diff(&out.logits, &exp.prefill_logits);
    println!("{name}: prefill logits max |diff| = {d:.2e}");
    assert!(d <= TOL, "{name}: prefill logits differ by {d}");
    for (i, h) in exp.hidden.iter().enumerate() {
        let want: Vec<f32> = h.iter().flatten().copied().collect();
        let d = max_abs_diff(&flat(&out.layer_outputs[i]), &want);
        assert!(d <= TOL, "{name}: layer {i} output differs by {d}");
    }
    let mut logits = out.logits;
    let mut worst = 0f32;
    for (step, want_tok) in exp.tokens.iter().enumerate() {
        let tok = argmax(&logits);
        assert_eq!(tok, *want_tok, "{name}: greedy token {step} differs");
        logits = r.decode(tok).unwrap().logits;
        let d = max_abs_diff(&logits, &exp.step_logits[step]);
        worst = worst.max(d);
        assert!(d <= TOL, "{name}: decode step {step} logits differ by {d}");
    }
    println!(
        "{name}: {} greedy tokens equal, worst decode logits |diff| = {worst:.2e}",
        exp.tokens.len()
    );
}

#[test]
fn llama_tied_embeddings() {
    check_family("llama_tied");
}

#[test]
fn llama_untied_with_llama3_rope_scaling() {
    check_family("llama_rope3");
}

#[test]
fn llama_bf16_checkpoint() {
    check_family("llama_rope3_bf16");
}

#[test]
fn qwen2_qkv_bias() {
    check_family("qwen2");
}

#[test]
fn qwen2_bf16_tied() {
    check_family("qwen2_bf16");
}

#[test]
fn qwen3_qk_norm_and_explicit_head_dim() {
    check_family("qwen3");
}

#[test]
fn minicpm_scalings() {
    check_family("minicpm");
}

#[test]
fn minicpm_bf16() {
    check_family("minicpm_bf16");
}

/// mistral: the sliding window (5 here, 6 in the bf16 one) is shorter than prompt + steps,
/// and it matters: without it transformers picks other tokens, and so does the reference.
fn check_sliding_window(name: &str) {
    check_family(name);
    let exp = expected(name);
    let plain = exp
        .tokens_without_window
        .expect("expected.json has tokens_without_window");
    assert_ne!(
        plain, exp.tokens,
        "{name}: the window does not change the tokens"
    );
    let mut model = Model::open(&common::fixtures().join(name)).unwrap();
    assert!(model
        .config
        .layer
        .sliding_window
        .is_some_and(|w| w < exp.prompt.len()));
    model.config.layer.sliding_window = None;
    let got = Reference::new(&model)
        .unwrap()
        .generate_greedy(&exp.prompt, plain.len())
        .unwrap();
    assert_eq!(got, plain, "{name}: reference without the window");
}

#[test]
fn mistral_sliding_window_and_explicit_head_dim() {
    check_sliding_window("mistral");
}

#[test]
fn mistral_bf16() {
    check_sliding_window("mistral_bf16");
}

#[derive(Deserialize)]
struct ChatExpected {
    text: String,
    prompt: Vec<u32>,
    tokens: Vec<u32>,
}

/// SmolLM2 GGUF: our loader (dequantise, un-permute q/k, rebuilt tokenizer) against
/// transformers' own GGUF loader, on a chat prompt.
#[test]
fn smollm2_gguf_greedy_matches_transformers() {
    let exp: ChatExpected = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("smollm2/expected.json")).unwrap(),
    )
    .unwrap();
    let model = Model::open(&common::smollm2_gguf()).unwrap();
    let tok = model
        .load_tokenizer()
        .unwrap()
        .expect("tokenizer rebuilt from GGUF metadata");
    let ids = tok
        .encode(exp.text.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids, exp.prompt, "tokenization differs from transformers'");
    let mut r = Reference::new(&model).unwrap();
    let got = r.generate_greedy(&ids, exp.tokens.len()).unwrap();
    assert_eq!(got, exp.tokens);
    let text = tok.decode(&got, true).unwrap();
    println!("smollm2: {text:?}");
    assert!(text.contains("Paris"), "not sensible English: {text:?}");
}

/// Greedy tokens of fixture `name`'s reference after `change` to its layer description.
fn tokens_with(name: &str, change: impl Fn(&mut llm_convert::family::LayerSpec)) -> Vec<u32> {
    let exp = expected(name);
    let mut model = Model::open(&common::fixtures().join(name)).unwrap();
    change(&mut model.config.layer);
    Reference::new(&model)
        .unwrap()
        .generate_greedy(&exp.prompt, exp.tokens.len())
        .unwrap()
}

/// gemma: the reference equals transformers, and each quirk matters: with llama's RMSNorm,
/// SiLU, or an unscaled embedding the reference picks other tokens than transformers.
fn check_gemma(name: &str) {
    use llm_convert::family::{Activation, Norm};
    check_family(name);
    let want = expected(name).tokens;
    let plain_norm = tokens_with(name, |l| l.norm = Norm::Rms);
    assert_ne!(plain_norm, want, "{name}: the (1+w) norm does not matter");
    let silu = tokens_with(name, |l| l.mlp.activation = Activation::Silu);
    assert_ne!(silu, want, "{name}: GELU-tanh does not matter");
    let unscaled = tokens_with(name, |l| l.scales.embedding = 1.0);
    assert_ne!(
        unscaled, want,
        "{name}: the embedding scale does not matter"
    );
}

#[test]
fn gemma_one_plus_norm_gelu_tanh_scaled_embedding() {
    check_gemma("gemma");
}

/// bf16: the embedding scale is sqrt(128) rounded to bf16 (11.3125), as transformers runs it.
#[test]
fn gemma_bf16() {
    let model = Model::open(&common::fixtures().join("gemma_bf16")).unwrap();
    assert_eq!(model.config.embedding_scale(), 11.3125);
    check_gemma("gemma_bf16");
}

/// phi3: the reference (fused q|k|v and gate|up split by rows) equals transformers, and the
/// partial rotary matters: rotating all of head_dim picks other tokens.
fn check_phi3(name: &str, rotary_dim: usize) {
    use llm_convert::family::RotaryDims;
    check_family(name);
    let model = Model::open(&common::fixtures().join(name)).unwrap();
    assert_eq!(
        model.config.layer.attention.rotary.dims,
        RotaryDims::Partial { rotary_dim }
    );
    let full = tokens_with(name, |l| l.attention.rotary.dims = RotaryDims::Full);
    assert_ne!(
        full,
        expected(name).tokens,
        "{name}: partial rotary does not matter"
    );
}

#[test]
fn phi3_fused_projections_partial_rotary() {
    check_phi3("phi3", 24);
}

#[test]
fn phi3_bf16_tied() {
    check_phi3("phi3_bf16", 16);
}

/// glm4: the reference (fused gate|up, q/k/v biases, branch output norms) equals
/// transformers, and the interleaved half rotary matters: half-split pairs, or rotating all
/// of head_dim, pick other tokens.
fn check_glm4(name: &str, rotary_dim: usize) {
    use llm_convert::family::{RotaryDims, RotaryPairs};
    check_family(name);
    let model = Model::open(&common::fixtures().join(name)).unwrap();
    let rotary = model.config.layer.attention.rotary;
    assert_eq!(rotary.dims, RotaryDims::Partial { rotary_dim });
    assert_eq!(rotary.pairs, RotaryPairs::Interleaved);
    let want = expected(name).tokens;
    let half_split = tokens_with(name, |l| l.attention.rotary.pairs = RotaryPairs::HalfSplit);
    assert_ne!(half_split, want, "{name}: interleaved pairs do not matter");
    let full = tokens_with(name, |l| l.attention.rotary.dims = RotaryDims::Full);
    assert_ne!(full, want, "{name}: partial rotary does not matter");
}

#[test]
fn glm4_interleaved_half_rotary_branch_norms() {
    check_glm4("glm4", 24);
}

#[test]
fn glm4_bf16_tied() {
    check_glm4("glm4_bf16", 32);
}

/// glm: glm4's checks on glm4's layer without the branch output norms.
#[test]
fn glm_interleaved_half_rotary() {
    check_glm4("glm", 32);
    let model = Model::open(&common::fixtures().join("glm")).unwrap();
    assert!(!model.config.layer.branch_output_norms);
}

#[test]
fn glm_bf16_tied() {
    check_glm4("glm_bf16", 24);
}

/// A fixture whose expectation records the quirk dropped (a remote-code family's twin renamed
/// and repacked, or longrope): the reference equals transformers (on the twin), and the quirk
/// matters: transformers with it dropped picks other tokens.
fn check_remote(name: &str) {
    check_family(name);
    let exp = expected(name);
    let dropped = exp
        .tokens_quirk_dropped
        .expect("expected.json has tokens_quirk_dropped");
    assert_ne!(dropped, exp.tokens, "{name}: the quirk does not matter");
}

/// internlm2: renamed tensors, wqkv grouped per kv head (with biases), regrouped on read.
#[test]
fn internlm2_grouped_wqkv() {
    check_remote("internlm2");
    let model = Model::open(&common::fixtures().join("internlm2")).unwrap();
    assert!(model.config.layer.stored.qkv_grouped_per_kv_head);
}

/// baichuan: W_pack split in-graph, NormHead applied when the lm_head is read; the twin's
/// un-normalised head picks other tokens.
#[test]
fn baichuan_packed_qkv_norm_head() {
    check_remote("baichuan");
    let model = Model::open(&common::fixtures().join("baichuan")).unwrap();
    assert!(model.config.layer.stored.lm_head_rows_normalised);
}

/// phi3 with longrope: the prompt + steps cross original_max_position_embeddings (16), so
/// the short factors turn the early calls and the long ones the later, as transformers
/// chooses per call; cos/sin carry the attention factor. Short factors only give other tokens.
#[test]
fn phi3_longrope_short_and_long_factors() {
    use llm_convert::model::config::RopeScaling;
    check_remote("phi3_longrope");
    let model = Model::open(&common::fixtures().join("phi3_longrope")).unwrap();
    let Some(RopeScaling::LongRope(l)) = &model.config.rope_scaling else {
        panic!("phi3_longrope: no longrope");
    };
    assert_eq!(l.original_max_position_embeddings, 16);
    // max_position_embeddings 64: sqrt(1 + ln(64/16) / ln(16)).
    assert!((l.attention_factor - 1.5f64.sqrt()).abs() < 1e-12);
}

/// MiniCPM4: minicpm's scalings with longrope (its sparse_config ignored).
#[test]
fn minicpm4_longrope() {
    check_remote("minicpm4");
}

/// chatglm: the glm twin under transformer.* names with packed query_key_value and the
/// ChatGLM config keys; rotary base 10000·rope_ratio (500). Ignoring rope_ratio (base 10000,
/// what llm_convert.py computes) gives other tokens.
#[test]
fn chatglm_packed_qkv_rope_ratio() {
    check_remote("chatglm");
    let model = Model::open(&common::fixtures().join("chatglm")).unwrap();
    assert_eq!(model.config.rope_theta, 5_000_000.0);
}
