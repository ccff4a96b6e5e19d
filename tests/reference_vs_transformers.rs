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
    /// MoE families: transformers' tokens with every expert used, and with
    /// `norm_topk_prob` flipped.
    #[serde(default)]
    tokens_dense: Option<Vec<u32>>,
    #[serde(default)]
    tokens_other_norm: Option<Vec<u32>>,
    /// Remote-code families: the twin's tokens with the family's quirk dropped (internlm2's
    /// wqkv read as plain q | k | v rows, baichuan's head not normalised, …).
    #[serde(default)]
    tokens_quirk_dropped: Option<Vec<u32>>,
    /// baichuan_alibi: the twin's tokens with the power-of-two slope formula applied to its
    /// 6 heads (the interleave rule dropped).
    #[serde(default)]
    tokens_geometric_slopes: Option<Vec<u32>>,
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
/// `gemma3` (Gemma3ForConditionalGeneration's config and names, a hub-style text_config whose
/// default keys transformers dropped): its language model against transformers' VLM run on
/// text tokens.
#[test]
fn gemma3_language_model_with_defaults_filled() {
    check_family("gemma3");
}

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

/// qwen2_moe / qwen3_moe: the reference (top-k routing, optional renormalisation, shared
/// expert, dense layers) equals transformers, and the routing matters: every expert used (the
/// softmax-weighted average) or the other `norm_topk_prob` picks other tokens in transformers,
/// and the reference follows the changed config to transformers' tokens.
fn check_moe(name: &str, sparse: &[usize], shared: bool) {
    check_family(name);
    let exp = expected(name);
    let model = Model::open(&common::fixtures().join(name)).unwrap();
    let layers = model.config.num_hidden_layers;
    let got: Vec<usize> = (0..layers)
        .filter(|l| model.config.layer.moe_at(*l).is_some())
        .collect();
    assert_eq!(got, sparse, "{name}: sparse layers");
    let moe = model.config.layer.moe.unwrap();
    assert_eq!(moe.shared_expert.is_some(), shared, "{name}: shared expert");
    let dense = exp.tokens_dense.expect("expected.json has tokens_dense");
    assert_ne!(dense, exp.tokens, "{name}: top-k routing does not matter");
    let other = exp
        .tokens_other_norm
        .expect("expected.json has tokens_other_norm");
    assert_ne!(other, exp.tokens, "{name}: norm_topk_prob does not matter");
    let all = tokens_with(name, |l| {
        if let Some(m) = &mut l.moe {
            m.top_k = m.num_experts;
        }
    });
    assert_eq!(all, dense, "{name}: reference with every expert");
    let flipped = tokens_with(name, |l| {
        if let Some(m) = &mut l.moe {
            m.norm_topk_prob = !m.norm_topk_prob;
        }
    });
    assert_eq!(
        flipped, other,
        "{name}: reference with norm_topk_prob flipped"
    );
}

#[test]
fn qwen2_moe_shared_expert_dense_layer() {
    check_moe("qwen2_moe", &[0], true);
}

#[test]
fn qwen2_moe_bf16_renormalised() {
    check_moe("qwen2_moe_bf16", &[0, 1], true);
}

#[test]
fn qwen3_moe_qk_norm_renormalised() {
    check_moe("qwen3_moe", &[0, 1], false);
}

#[test]
fn qwen3_moe_bf16_sparse_step() {
    check_moe("qwen3_moe_bf16", &[1], false);
}

/// qwen2_moe saved with its experts stacked (transformers' in-memory layout,
/// `save_original_format=False`) reads as the per-expert checkpoint.
#[test]
fn qwen2_moe_stacked_experts() {
    let dir = common::fixtures().join("qwen2_moe_stacked");
    use llm_convert::model::WeightSource;
    let raw = llm_convert::model::safetensors::SafetensorsWeights::open_dir(&dir).unwrap();
    let stored = raw.names();
    assert!(stored.contains(&"model.layers.0.mlp.experts.gate_up_proj".to_string()));
    assert!(
        !stored.iter().any(|n| n.contains("experts.0.")),
        "{stored:?}"
    );
    check_family("qwen2_moe_stacked");
}
/// Greedy tokens and prefill logits of fixture `name`'s reference after `change` to its config.
fn run_with(
    name: &str,
    change: impl Fn(&mut llm_convert::model::ModelConfig),
) -> (Vec<u32>, Vec<f32>) {
    let exp = expected(name);
    let mut model = Model::open(&common::fixtures().join(name)).unwrap();
    change(&mut model.config);
    let mut r = Reference::new(&model).unwrap();
    let logits = r.prefill(&exp.prompt).unwrap().logits;
    let tokens = r.generate_greedy(&exp.prompt, exp.tokens.len()).unwrap();
    (tokens, logits)
}

/// A quirk's name and how to drop it from a config.
type Quirk = (&'static str, fn(&mut llm_convert::model::ModelConfig));

/// gemma2 and gemma3_text: the reference equals transformers (with the window, and with a
/// window longer than the run), and each quirk matters: sliding every layer or none, the
/// score scale of head_dim, and each family's own (`own`) pick other tokens.
fn check_gemma_sandwich(name: &str, own: &[Quirk]) {
    use llm_convert::family::LayerSet;
    check_sliding_window(name);
    let want = expected(name).tokens;
    let mut quirks: Vec<Quirk> = vec![
        ("the layer types", |c| c.layer.local.layers = LayerSet::All),
        ("query_pre_attn_scalar", |c| {
            c.layer.attention.scores.query_pre_attn_scalar = None
        }),
    ];
    quirks.extend_from_slice(own);
    for (quirk, change) in quirks {
        let (tokens, _) = run_with(name, change);
        assert_ne!(tokens, want, "{name}: {quirk} does not matter");
    }
}

/// gemma2: alternating windows, soft caps on scores and logits. The logit cap keeps the
/// argmax but changes the logits transformers returns.
fn check_gemma2(name: &str) {
    check_gemma_sandwich(
        name,
        &[("the score soft cap", |c| {
            c.layer.attention.scores.softcap = None
        })],
    );
    let exp = expected(name);
    let (tokens, logits) = run_with(name, |c| c.layer.final_logit_softcap = None);
    assert_eq!(
        tokens, exp.tokens,
        "{name}: the logit cap changed the argmax"
    );
    let d = max_abs_diff(&logits, &exp.prefill_logits);
    assert!(d > 0.1, "{name}: the logit soft cap does not matter ({d})");
}

#[test]
fn gemma2_windows_softcaps_score_scale() {
    check_gemma2("gemma2");
}

#[test]
fn gemma2_bf16() {
    check_gemma2("gemma2_bf16");
}

/// gemma3_text: q/k norms, local layers with their own unscaled rotary base and a window,
/// a global layer with the model's (linearly scaled) rotary.
#[test]
fn gemma3_text_local_global_layers() {
    check_gemma_sandwich(
        "gemma3_text",
        &[
            ("the local rotary base", |c| c.layer.local.rope_theta = None),
            ("the global rope scaling", |c| c.rope_scaling = None),
        ],
    );
}

#[test]
fn gemma3_text_bf16() {
    check_gemma_sandwich(
        "gemma3_text_bf16",
        &[("the local rotary base", |c| c.layer.local.rope_theta = None)],
    );
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

/// baichuan_alibi (Baichuan2-13B's layout: no max_position_embeddings): ALiBi biases in
/// place of rotary, 6 heads so the slopes follow the interleave rule; the twin without ALiBi
/// (no positions at all), or with the power-of-two formula over 6 heads, picks other tokens.
#[test]
fn baichuan13b_alibi() {
    check_remote("baichuan_alibi");
    let model = Model::open(&common::fixtures().join("baichuan_alibi")).unwrap();
    assert!(model.config.layer.attention.alibi);
    let exp = expected("baichuan_alibi");
    let geometric = exp
        .tokens_geometric_slopes
        .expect("expected.json has tokens_geometric_slopes");
    assert_ne!(geometric, exp.tokens, "the interleave rule does not matter");
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
