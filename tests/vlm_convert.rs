//! Vision-language models through the real TPU-MLIR and the CPU simulator: the tiny random
//! Qwen2.5-VL (vision head_dim 32, window + full attention blocks) converted with its `vit`
//! and M-RoPE text blocks; the vit's image embeddings against transformers', and the greedy
//! tokens of a prompt with the image spliced in against transformers' (expected.json).
//!
//! The vit inputs are made here from the processor's pixel_values (transformers'
//! `rot_pos_emb` / `get_window_index` for one image), so this checks the graph and the
//! runner, not the host preprocessing.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use llm_convert::bmrt::Runtime;
use llm_convert::runner::multimodal::PromptExtras;
use llm_convert::runner::vision::{VitInput, VitNet};
use llm_convert::runner::Pipeline;
use llm_convert::toolchain::RuntimeLibs;
use serde_json::Value;

/// The fixture's model files only (a folder of its own for the conversion's cache key).
fn model_copy(name: &str) -> PathBuf {
    let src = common::vlm::vlm_fixtures().join(name);
    let dst = common::scratch().join(format!("vlm-model-{name}"));
    if !dst.join("model.safetensors").exists() {
        std::fs::create_dir_all(&dst).unwrap();
        for f in ["config.json", "model.safetensors", "generation_config.json"] {
            if src.join(f).exists() {
                std::fs::copy(src.join(f), dst.join(f)).unwrap();
            }
        }
    }
    dst
}

struct Fixture {
    pixels: Vec<f32>,
    grid: [usize; 3],
    embeds: Vec<f32>,
    expected: Value,
}

fn fixture(name: &str) -> Fixture {
    let dir = common::vlm::vlm_fixtures().join(name);
    let t = candle_core::safetensors::load(dir.join("expected/inputs.safetensors"), &Device::Cpu)
        .unwrap();
    let vec = |k: &str| -> Vec<f32> {
        t[k].to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let grid: Vec<i64> = t["image_grid_thw"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    Fixture {
        pixels: vec("pixel_values"),
        grid: [grid[0] as usize, grid[1] as usize, grid[2] as usize],
        embeds: vec("image_embeds"),
        expected,
    }
}

/// transformers' vit inputs for one image (t = 1), merge 2: rows in window order, (h, w)
/// positions, full and window masks over the N rows, the reverse index.
struct QwenInputs {
    rows: Vec<f32>,
    pos: Vec<i32>,
    full: Vec<f32>,
    window: Vec<f32>,
    reverse: Vec<i32>,
}

fn qwen_inputs(f: &Fixture, window_units: usize) -> QwenInputs {
    let [_, gh, gw] = f.grid;
    let (m, n) = (2, gh * gw);
    let width = f.pixels.len() / n;
    let (lh, lw) = (gh / m, gw / m);
    // Raster patch rows are (block-row, block-col, in-row, in-col): unit u = rows 4u..4u+4.
    let mut unit_pos = Vec::new();
    for br in 0..lh {
        for bc in 0..lw {
            for ir in 0..m {
                for ic in 0..m {
                    unit_pos.push([(br * m + ir) as i32, (bc * m + ic) as i32]);
                }
            }
        }
    }
    // Windows of window_units × window_units merge units, padded at the bottom/right.
    let ws = window_units;
    let (nh, nw) = (lh / ws + 1, lw / ws + 1);
    let (mut order, mut cu) = (Vec::new(), vec![0usize]);
    for wh in 0..nh {
        for ww in 0..nw {
            let mut count = 0;
            for r in wh * ws..(wh + 1) * ws {
                for c in ww * ws..(ww + 1) * ws {
                    if r < lh && c < lw {
                        order.push(r * lw + c);
                        count += 1;
                    }
                }
            }
            if count > 0 {
                cu.push(cu.last().unwrap() + count * m * m);
            }
        }
    }
    let mut rows = Vec::with_capacity(f.pixels.len());
    let mut pos = Vec::with_capacity(2 * n);
    for &u in &order {
        for k in 0..m * m {
            let r = u * m * m + k;
            rows.extend_from_slice(&f.pixels[r * width..(r + 1) * width]);
            pos.extend_from_slice(&unit_pos[r]);
        }
    }
    let mut window = vec![-10000f32; n * n];
    for w in cu.windows(2) {
        for r in w[0]..w[1] {
            window[r * n + w[0]..r * n + w[1]].fill(0.0);
        }
    }
    let mut reverse = vec![0i32; order.len()];
    for (slot, &u) in order.iter().enumerate() {
        reverse[u] = slot as i32;
    }
    QwenInputs {
        rows,
        pos,
        full: vec![0f32; n * n],
        window,
        reverse,
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Runs the fixture's prompt with its image on `bmodel`: (vit cosine, tokens).
fn run_with_image(bmodel: &Path, f: &Fixture, steps: usize) -> (f64, Vec<u32>, f64) {
    let layout = common::toolchain();
    let libs = RuntimeLibs::select(&layout, Some("simulator"));
    let mut rt = Runtime::open(&libs, 0).expect("opening the simulator runtime");
    rt.load_bmodel(bmodel).expect("loading the bmodel");
    let vit = VitNet::discover(&rt)
        .unwrap()
        .expect("the bmodel has a vit net");
    let q = qwen_inputs(f, 4);
    let n = f.grid[1] * f.grid[2];
    let out = vit
        .run(
            &rt,
            &VitInput {
                rows: n,
                pixels: &q.rows,
                position_ids: &q.pos,
                full_mask: &q.full,
                window_mask: &q.window,
                reverse_index: &q.reverse,
            },
        )
        .unwrap();
    let got = out.to_f32().unwrap();
    let vit_cos = cosine(&got, &f.embeds);

    let prompt = ids(&f.expected["prompt"]);
    let image_token = f.expected["image_token_id"].as_u64().unwrap() as u32;
    let at = prompt.iter().position(|&t| t == image_token).unwrap();
    let rows: Vec<Vec<u32>> = f.expected["position_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    let positions = (0..prompt.len())
        .map(|i| [rows[0][i] as i32, rows[1][i] as i32, rows[2][i] as i32])
        .collect();
    let mut pipeline = Pipeline::new(&rt).unwrap();
    pipeline.set_extras(PromptExtras {
        positions: Some(positions),
        embeds: vec![(at, out.bytes.clone())],
    });
    // Teacher-forced: each step is fed transformers' token, so one near tie does not
    // derail the rest.
    let want = ids(&f.expected["tokens"]);
    let mut tokens = vec![pipeline.prefill(&prompt).unwrap().token];
    for &t in &want[..steps - 1] {
        tokens.push(pipeline.decode(t).unwrap().token);
    }
    (vit_cos, tokens, out.seconds)
}

/// Accepted (issue 12, 1): bf16 static; vit >= 0.999 against transformers; the tokens
/// transformers picks. Steps 5 and 7 are near ties in transformers' own logits (678 over 410
/// by 0.35% of the logit range, 82 over 154 by 0.2%; below the 0.5% bf16 tie margin of
/// `verify`), so only those may differ; every other step must agree.
#[test]
fn qwen2_5_vl_bf16_static_runs_like_transformers() {
    let model = model_copy("qwen25vl");
    let f = fixture("qwen25vl");
    let c = common::converted(&model, 256, &["-q", "bf16", "--max_pixels", "140,224"]);
    let (vit_cos, tokens, vit_s) = run_with_image(&c.bmodel, &f, 16);
    eprintln!("vit cosine {vit_cos:.6}, vit {vit_s:.2} s, tokens {tokens:?}");
    assert!(vit_cos >= 0.999, "vit cosine {vit_cos}");
    let want = ids(&f.expected["tokens"]);
    let differ: Vec<usize> = (0..want.len()).filter(|&i| tokens[i] != want[i]).collect();
    assert!(
        differ.iter().all(|s| [5, 7].contains(s)),
        "steps {differ:?}: {tokens:?} vs {want:?}"
    );
    assert_eq!(tokens[..5], want[..5]);
    // The image changed the answer: the same prompt without it gives other tokens.
    assert_ne!(tokens[..5], ids(&f.expected["tokens_text_only"])[..5]);
}

/// `verify --image` on the same bmodel passes (vit and every block against the candle
/// reference, then the tokens), and a missing or broken image is a usage error (exit 2).
#[test]
fn verify_image_passes_and_bad_images_exit_2() {
    let model = model_copy("qwen25vl");
    let f = fixture("qwen25vl");
    let c = common::converted(&model, 256, &["-q", "bf16", "--max_pixels", "140,224"]);
    let photo = common::vlm::vlm_fixtures().join("qwen25vl/photo.png");
    let prompt = common::tokens_arg(&ids(&f.expected["prompt"]));
    let bmodel = c.bmodel.to_str().unwrap();
    let model_arg = model.to_str().unwrap();
    let run = |image: &Path, steps: &str| {
        common::llm_convert(&[
            "verify",
            "-m",
            model_arg,
            bmodel,
            "--image",
            image.to_str().unwrap(),
            "--tokens",
            &prompt,
            "--steps",
            steps,
            "--json",
        ])
    };
    let out = run(&photo, "6");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["vit_cosine"].as_f64().unwrap() >= 0.999, "{report}");
    assert!(report["min_cosine"].as_f64().unwrap() >= 0.999, "{report}");
    assert_eq!(report["pass"], Value::Bool(true));
    let broken = common::scratch().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    for bad in [common::scratch().join("missing.png"), broken] {
        let out = run(&bad, "2");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", bad.display());
        assert!(
            stderr.contains(bad.file_name().unwrap().to_str().unwrap()),
            "{stderr}"
        );
    }
}

/// The M-RoPE builds a dry run plans: static, `--dynamic` (its blocks verify, see the dynamic
/// test at the end) and `--use_history_kv` (block_kv_i with `[3, L]` positions; chat over it
/// is tests/chat.rs `chat_image_on_history_kv_bmodel_continues_through_block_kv`).
#[test]
fn mrope_dry_runs_plan_static_dynamic_and_history_kv() {
    let dry_run = dry_run_vlm;
    let (code, err) = dry_run("qwen25vl", &["--max_pixels", "140,224"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("block_kv_0"), "{err}");
    let (code, err) = dry_run("qwen25vl", &["--max_pixels", "140,224", "--dynamic"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = dry_run("qwen25vl", &["--max_pixels", "140,224", "--use_history_kv"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("block_kv_0") && err.contains("block_kv_1"),
        "{err}"
    );
}

// ---- InternVL (issue 12): the InternViT vit, one launch per tile, the <IMG_CONTEXT> splice ----

/// InternVL conversions: S 128 (the prompts are 57 tokens).
const INTERN_SEQ: usize = 128;

/// The fixture's model files plus a preprocessor_config.json with the fixture processor's
/// tile cap (max_patches 4: chelsea becomes 2 tiles + the thumbnail, 48 image tokens).
fn intern_model(name: &str) -> PathBuf {
    let dir = model_copy(name);
    let pre = r#"{"min_patches": 1, "max_patches": 4, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}"#;
    std::fs::write(dir.join("preprocessor_config.json"), pre).unwrap();
    dir
}

fn intern_expected(name: &str) -> Value {
    let dir = common::vlm::vlm_fixtures().join(name);
    serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap()
}

/// `verify --image photo.png --tokens PROMPT --steps 6 --json` passes; returns its report.
fn intern_verify(name: &str, model: &Path, bmodel: &Path, prompt: &[u32]) -> Value {
    let photo = common::vlm::vlm_fixtures().join(name).join("photo.png");
    let out = common::llm_convert(&[
        "verify",
        "-m",
        model.to_str().unwrap(),
        bmodel.to_str().unwrap(),
        "--image",
        photo.to_str().unwrap(),
        "--tokens",
        &common::tokens_arg(prompt),
        "--steps",
        "6",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let vit_line = stderr.lines().find(|l| l.starts_with("vit:")).unwrap_or("");
    eprintln!("{name}: {vit_line}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["vit_cosine"].as_f64().unwrap() >= 0.999, "{report}");
    assert!(report["min_cosine"].as_f64().unwrap() >= 0.999, "{report}");
    assert_eq!(report["exact_agreement"].as_f64(), Some(1.0), "{report}");
    assert_eq!(report["pass"], Value::Bool(true), "{report}");
    report
}

fn count(ids: &Value, id: u64) -> usize {
    ids.as_array()
        .unwrap()
        .iter()
        .filter(|v| v.as_u64() == Some(id))
        .count()
}

/// Accepted (issue 12, InternVL, native layout): bf16 static converts with its vit;
/// transformers' own tiles through the vit give transformers' image embeddings (cosine at
/// least 0.999 over all 3 tiles, one launch each); `verify --image` on the photo passes (our
/// tiling, vit and every block against the candle reference, tokens equal).
#[test]
fn internvl_native_bf16_vit_and_verify_image_pass() {
    let name = "internvl";
    let model = intern_model(name);
    let c = common::converted(&model, INTERN_SEQ, &["-q", "bf16"]);
    let dir = common::vlm::vlm_fixtures().join(name);
    let t = candle_core::safetensors::load(dir.join("expected/inputs.safetensors"), &Device::Cpu)
        .unwrap();
    let flat = |k: &str| -> Vec<f32> { t[k].flatten_all().unwrap().to_vec1().unwrap() };
    let (pixels, want) = (flat("pixel_values"), flat("image_embeds"));
    {
        let layout = common::toolchain();
        let libs = RuntimeLibs::select(&layout, Some("simulator"));
        let mut rt = Runtime::open(&libs, 0).expect("opening the simulator runtime");
        rt.load_bmodel(&c.bmodel).expect("loading the bmodel");
        let vit = VitNet::discover(&rt).unwrap().expect("a vit net");
        assert_eq!((vit.max_patches, vit.max_tokens), (112, 16));
        let tile = 3 * 112 * 112;
        let mut got = Vec::new();
        for k in 0..pixels.len() / tile {
            let input = VitInput {
                rows: 1,
                pixels: &pixels[k * tile..(k + 1) * tile],
                position_ids: &[],
                full_mask: &[],
                window_mask: &[],
                reverse_index: &[],
            };
            got.extend(vit.run(&rt, &input).unwrap().to_f32().unwrap());
        }
        let cos = cosine(&got, &want);
        eprintln!("internvl: transformers' tiles, vit cosine {cos:.6}");
        assert!(cos >= 0.999, "vit cosine {cos}");
    }
    let expected = intern_expected(name);
    let report = intern_verify(name, &model, &c.bmodel, &ids(&expected["prompt"]));
    assert_eq!(count(&report["prompt"], 1002), 48, "{report}");
}

/// Accepted (issue 12, InternVL, OpenGVLab's internvl_chat layout: fused qkv, vision_model.*,
/// mlp1.*): bf16 static converts and `verify --image` passes; a prompt with a single
/// <IMG_CONTEXT> is expanded to the image's 3 tiles · 16 tokens.
#[test]
fn internvl_chat_bf16_verify_image_expands_the_image_token() {
    let name = "internvl_chat";
    let model = intern_model(name);
    let c = common::converted(&model, INTERN_SEQ, &["-q", "bf16"]);
    let prompt = [3, 17, 256, 1000, 1002, 1001, 42, 7, 511, 128];
    let report = intern_verify(name, &model, &c.bmodel, &prompt);
    assert_eq!(count(&report["prompt"], 1002), 48, "{report}");
    assert_eq!(
        report["prompt"].as_array().unwrap().len(),
        prompt.len() + 47
    );
}

/// Accepted (issue 12, InternVL `--dynamic`): the vit and blocks are dynamic nets and
/// `verify --image` passes on the photo's 3 tiles (each tile at the full size) with a 57-token
/// prompt in the 128-token prefill: vit and every block >= 0.999, tokens = transformers'.
#[test]
fn internvl_native_bf16_dynamic_verifies_with_the_photo() {
    let name = "internvl";
    let model = intern_model(name);
    let c = common::converted(&model, INTERN_SEQ, &["-q", "bf16", "--dynamic"]);
    assert_eq!(
        common::net_io(&c.out, "vit")[0],
        "input: pixel_value, [max:1, max:3, max:112, max:112], float32"
    );
    let expected = intern_expected(name);
    let report = intern_verify(name, &model, &c.bmodel, &ids(&expected["prompt"]));
    assert_eq!(
        ids(&report["tokens"]),
        ids(&expected["tokens"])[..6],
        "{report}"
    );
}

/// Accepted (issue 12, InternVL w4bf16): converts, and its nets are the runtime's contract:
/// `vit` `pixel_value [1, 3, S, S] float32` → `[tokens, H] bfloat16`, text blocks with 1-D
/// position ids.
#[test]
fn internvl_w4bf16_converts_to_contract() {
    let model = intern_model("internvl");
    let c = common::converted(&model, INTERN_SEQ, &["-q", "w4bf16"]);
    let log = std::fs::read_to_string(c.out.join("model.log")).unwrap();
    let vit = log
        .split("==========")
        .find(|net| net.contains("[vit]"))
        .expect("a vit net in model.log");
    assert!(
        vit.contains("input: pixel_value, [1, 3, 112, 112], float32"),
        "{vit}"
    );
    assert!(
        vit.contains("output: hidden_states, [16, 128], bfloat16"),
        "{vit}"
    );
    let s = INTERN_SEQ;
    assert!(
        log.contains(&format!("input: position_ids, [1, {s}], int32")),
        "{log}"
    );
    assert!(log.contains("input: position_ids, [1, 1], int32"), "{log}");
}

// ---- Qwen2-VL (issue 12): LayerNorm blocks, quick_gelu fc MLP, full attention in every
// block, so a 3-input vit (no window mask, no reverse index) as llm_convert.py emits. ----

/// The Qwen2-VL vit's contract for `--max_pixels 140,224` (160 patch rows, 40 tokens) with
/// half-precision output `half`: llm_convert.py's three inputs, left in F32 / INT32.
fn assert_qwen2_vl_contract(out: &Path, output: &str, half: &str) {
    assert_eq!(
        common::net_io(out, "vit"),
        [
            "input: input_states, [160, 1176], float32".to_string(),
            "input: position_ids, [160, 2], int32".to_string(),
            "input: full_attn_mask, [1, 1, 160, 160], float32".to_string(),
            format!("output: {output}, [40, 128], {half}"),
        ]
    );
    let block = common::net_io(out, "block_0");
    assert_eq!(
        block[1], "input: position_ids, [3, 256], int32",
        "{block:?}"
    );
}

/// Accepted (issue 12): the tiny Qwen2-VL (vision head_dim 48, 2 LayerNorm blocks) at bf16
/// static; `verify --image` on the Qwen2.5-VL test's photo runs our preprocessing, the vit
/// and every block on the simulator against the candle reference: vit cosine and every
/// block >= 0.999, every token the reference's and transformers' (expected.json), and the
/// image changes the answer.
#[test]
fn qwen2_vl_bf16_static_verifies_with_the_photo() {
    let model = model_copy("qwen2vl");
    let c = common::converted(&model, 256, &["-q", "bf16", "--max_pixels", "140,224"]);
    assert_qwen2_vl_contract(&c.out, "hidden_states", "bfloat16");
    verifies_with_the_photo(&model, &c.bmodel, &fixture("qwen2vl"));
}

/// `verify --image` with the Qwen2.5-VL test's photo and `f`'s prompt, 4 steps: passes with
/// vit and every block >= 0.999 and transformers' tokens, which the image changed.
fn verifies_with_the_photo(model: &Path, bmodel: &Path, f: &Fixture) {
    let photo = common::vlm::vlm_fixtures().join("qwen25vl/photo.png");
    let prompt = common::tokens_arg(&ids(&f.expected["prompt"]));
    let out = common::llm_convert(&[
        "verify",
        "-m",
        model.to_str().unwrap(),
        bmodel.to_str().unwrap(),
        "--image",
        photo.to_str().unwrap(),
        "--tokens",
        &prompt,
        "--steps",
        "4",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["vit_cosine"].as_f64().unwrap() >= 0.999, "{report}");
    assert!(report["min_cosine"].as_f64().unwrap() >= 0.999, "{report}");
    assert_eq!(report["pass"], Value::Bool(true), "{report}");
    assert_eq!(report["exact_agreement"].as_f64(), Some(1.0), "{report}");
    let tokens = ids(&report["tokens"]);
    assert_eq!(tokens, ids(&f.expected["tokens"])[..4], "{report}");
    assert_ne!(tokens, ids(&f.expected["tokens_text_only"])[..4]);
}

/// w4bf16 converts with the same vit (half precision, F32/INT32 inputs) and w4 blocks.
#[test]
fn qwen2_vl_w4bf16_converts_to_the_contract() {
    let model = model_copy("qwen2vl");
    let c = common::converted(&model, 256, &["-q", "w4bf16", "--max_pixels", "140,224"]);
    assert_qwen2_vl_contract(&c.out, "hidden_states", "bfloat16");
    let argv = |piece: &str| -> String {
        let p = c.manifest["pieces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == piece)
            .unwrap_or_else(|| panic!("no piece {piece}"));
        serde_json::from_value::<Vec<String>>(p["deploy_argv"].clone())
            .unwrap()
            .join(" ")
    };
    assert!(
        argv("vit").contains("--quantize bf16 --quant_output"),
        "{}",
        argv("vit")
    );
    assert!(
        argv("block_0").contains("--quantize w4bf16"),
        "{}",
        argv("block_0")
    );
}

/// Qwen2-VL plans static, `--dynamic` and `--use_history_kv` builds; a --max_pixels that is
/// not a multiple of 28·28 is refused, and so is llm_convert.py's default for qwen2_vl
/// (768·768 is not a multiple of 784: llm_convert.py refuses it too), with the fix to pass
/// --max_pixels.
#[test]
fn qwen2_vl_dry_runs_and_max_pixels_refusals() {
    let dry_run = |extra: &[&str]| dry_run_vlm("qwen2vl", extra);
    let (code, err) = dry_run(&["--max_pixels", "140,224"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = dry_run(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("768,768") && err.contains("pass --max_pixels"),
        "{err}"
    );
    let (code, err) = dry_run(&["--max_pixels", "140,224", "--dynamic"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = dry_run(&["--max_pixels", "140,224", "--use_history_kv"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("block_kv_0"), "{err}");
    let (code, err) = dry_run(&["--max_pixels", "100,100"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("28"), "{err}");
}

/// `llm-convert -m FIXTURE -s 256 -q bf16 EXTRA --dry_run`: (exit code, the plan (stdout)
/// then stderr).
fn dry_run_vlm(fixture: &str, extra: &[&str]) -> (Option<i32>, String) {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("o");
    let model = common::vlm::vlm_fixtures().join(fixture);
    let mut args = vec!["-m", model.to_str().unwrap(), "-s", "256", "-q", "bf16"];
    args.extend_from_slice(extra);
    args.extend(["--dry_run", "-o", o.to_str().unwrap()]);
    let r = common::llm_convert(&args);
    let plan = String::from_utf8_lossy(&r.stdout);
    (
        r.status.code(),
        format!("{plan}{}", String::from_utf8_lossy(&r.stderr)),
    )
}

/// TPU-MLIR's own llm_convert.py bmodel of VLM fixture `name` (bf16, BM1684X, `-s seq`,
/// `--max_pixels 140,224`, into `<dir>/theirs`): (model copy, dir, bmodel).
fn llm_convert_py_vlm(name: &str, seq: &str) -> (PathBuf, tempfile::TempDir, PathBuf) {
    let model = model_copy(name);
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "-s",
        seq,
        "-q",
        "bf16",
        "-c",
        "bm1684x",
        "--max_pixels",
        "140,224",
    ];
    let theirs = common::llm_convert_py(&model, &dir.path().join("theirs"), &flags);
    (model, dir, theirs)
}

/// TPU-MLIR's own llm_convert.py bmodel of a tiny Qwen2-VL (vision head_dim 80, which its
/// converter hardcodes) runs in our runner: the vit is found by name and its three inputs,
/// and `verify --image` passes as for ours.
#[test]
fn llm_convert_py_qwen2_vl_bmodel_verifies_with_the_photo() {
    let (model, dir, theirs) = llm_convert_py_vlm("qwen2vl_hd80_bf16", "256");
    let out = dir.path().join("theirs");
    assert_qwen2_vl_contract(&out, "visual.merger.mlp.2", "bfloat16");
    verifies_with_the_photo(&model, &theirs, &fixture("qwen2vl_hd80_bf16"));
}

/// TPU-MLIR's own llm_convert.py bmodel of a tiny Qwen2.5-VL (vision head_dim 80, 4 blocks,
/// full attention in 1 and 3) at its smallest seq for the 44-token prompt: the runtime's
/// 5-input windowed vit (named by its last op), `[3, S]` M-RoPE blocks; our runner's
/// `verify --image` passes with transformers' tokens as on our own bmodels.
#[test]
fn llm_convert_py_qwen2_5_vl_bmodel_verifies_with_the_photo() {
    let (model, dir, theirs) = llm_convert_py_vlm("qwen25vl_hd80_bf16", "64");
    let out = dir.path().join("theirs");
    assert_eq!(
        common::net_io(&out, "vit"),
        [
            "input: input_states, [160, 1176], float32",
            "input: position_ids, [160, 2], int32",
            "input: full_attn_mask, [1, 1, 160, 160], float32",
            "input: window_attn_mask, [1, 1, 160, 160], float32",
            "input: reverse_index, [40], int32",
            "output: visual.merger.mlp.2.reverse, [40, 256], bfloat16",
        ]
    );
    assert_eq!(
        common::net_io(&out, "block_0")[1],
        "input: position_ids, [3, 64], int32"
    );
    verifies_with_the_photo(&model, &theirs, &fixture("qwen25vl_hd80_bf16"));
}

// ---- `--dynamic` M-RoPE prefill blocks (issue 12). Their in-graph causal mask once sliced
// input_states in an f32-kept op, so TPU-MLIR (`--quant_input`) made block_i's input_states
// F32 while the runtime writes bf16 rows: every block read garbage (cosine ~0.1). ----

/// Accepted: the tiny Qwen2.5-VL at bf16 `--dynamic` keeps the runtime's dtypes (bf16
/// input_states, INT32 `[3, L]` position_ids) and `verify --image` passes with a prompt (44
/// tokens) shorter than the 256-token prefill: vit and every block >= 0.999, every token the
/// reference's and transformers'.
#[test]
fn qwen2_5_vl_bf16_dynamic_verifies_with_the_photo() {
    let model = model_copy("qwen25vl");
    let f = fixture("qwen25vl");
    assert!(ids(&f.expected["prompt"]).len() < 256);
    let c = common::converted(
        &model,
        256,
        &["-q", "bf16", "--max_pixels", "140,224", "--dynamic"],
    );
    let block = common::net_io(&c.out, "block_0");
    assert_eq!(
        block[..2],
        [
            "input: input_states, [max:1, max:256, max:128], bfloat16".to_string(),
            "input: position_ids, [max:3, max:256], int32".to_string(),
        ],
        "{block:?}"
    );
    verifies_with_the_photo(&model, &c.bmodel, &f);
}

/// Two images on the InternVL bmodel (issue 12), through the runner's own multi-image path
/// (`image_prompt::prepare_all`, what `generate --image A --image B` runs): our tiling gives
/// transformers' 3 and 5 tiles (one vit launch per tile, in order), each image's rows go at
/// its own `<IMG_CONTEXT>` run, and the tokens are transformers' (teacher-forced after the
/// first). Control: the images the other way round swap the runs and change the last prompt
/// row. S 256: the prompt is 140 tokens.
#[test]
fn internvl_two_images_give_transformers_tokens() {
    use llm_convert::model::ModelConfig;
    use llm_convert::runner::image_prompt;
    let name = "internvl";
    let model = intern_model(name);
    let c = common::converted(&model, 256, &["-q", "bf16"]);
    let expected = intern_expected(name);
    let two = &expected["two_images"];
    let prompt = ids(&two["prompt"]);
    let want = ids(&two["tokens"]);
    let dir = common::vlm::vlm_fixtures().join(name);
    let (a, b) = (dir.join("photo.png"), dir.join("photo2.png"));
    let layout = common::toolchain();
    let libs = RuntimeLibs::select(&layout, Some("simulator"));
    let mut rt = Runtime::open(&libs, 0).expect("opening the simulator runtime");
    rt.load_bmodel(&c.bmodel).expect("loading the bmodel");
    let cfg = ModelConfig::from_file(&model.join("config.json")).unwrap();
    let mut p = Pipeline::new(&rt).unwrap();
    p.capture = true;
    let mut run = |paths: &[PathBuf], steps: usize| {
        let t0 = std::time::Instant::now();
        let (images, ids, extras) =
            image_prompt::prepare_all(&rt, &cfg, &model, paths, &prompt).unwrap();
        let tiles: Vec<usize> = images.iter().map(|i| i.vit_launches).collect();
        p.set_extras(extras);
        let first = p.prefill(&ids).unwrap();
        let h = p.nets.hidden_size;
        let rows = &first.block_outputs[p.nets.layers() - 1];
        let last = rows[(ids.len() - 1) * h..ids.len() * h].to_vec();
        let mut tokens = vec![first.token];
        for &t in &want[..steps - 1] {
            tokens.push(p.decode(t).unwrap().token);
        }
        eprintln!(
            "internvl two images: tiles {tiles:?}, tokens {tokens:?} ({:.1} s)",
            t0.elapsed().as_secs_f64()
        );
        (tiles, ids, tokens, last)
    };
    let (tiles, got_ids, tokens, last) = run(&[a.clone(), b.clone()], 6);
    assert_eq!(tiles, [3, 5]);
    assert_eq!(got_ids, prompt, "transformers' expanded prompt");
    assert_eq!(tokens, want[..6], "transformers' tokens");
    let (tiles, swapped_ids, _, swapped_last) = run(&[b, a], 1);
    assert_eq!(tiles, [5, 3]);
    assert_eq!(count(&Value::from(swapped_ids.clone()), 1002), 128);
    assert_ne!(swapped_ids, prompt);
    let cos = cosine(&swapped_last, &last);
    eprintln!("swapped: last prompt row cosine {cos:.6}");
    assert!(
        cos < 0.999,
        "swapping the images leaves the last row alone ({cos})"
    );
}
