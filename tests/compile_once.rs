//! `--compile-once` (the default): every layer patched from a template of its shape is byte-identical
//! (create time aside) to a full compile of that layer, at bf16 and w4bf16, static and
//! dynamic; a layer of another shape (the last block, which holds the final norm) falls back
//! to a full compile. The patched layers' coefficients are made in Rust (no tpuc-opt call);
//! a wrong Rust rounding (the control) is caught by the template's own bytes and leaves the
//! shape on the coefficient call. The models are 4-layer copies of the 2-layer fixtures
//! (layers 2 and 3 are layers 0 and 1 scaled, so each has weights of its own).

mod common;

use std::collections::HashMap;
use std::path::Path;

use llm_convert::convert::mask_create_time;
use serde_json::Value;

/// A copy of `fixture` with `layers` decoder layers, layer i's tensors those of layer
/// i mod n scaled by 1 + 0.05·(i div n).
fn deeper(fixture: &str, layers: usize) -> tempfile::TempDir {
    let dir = common::variant(fixture, |c| c["num_hidden_layers"] = layers.into());
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let config: Value = serde_json::from_slice(
        &std::fs::read(common::fixtures().join(fixture).join("config.json")).unwrap(),
    )
    .unwrap();
    let n = config["num_hidden_layers"].as_u64().unwrap() as usize;
    let mut out: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    for (name, t) in st.tensors() {
        assert_eq!(
            t.dtype(),
            safetensors::Dtype::F32,
            "{fixture}: f32 fixtures only"
        );
        let shape = t.shape().to_vec();
        let Some(rest) = name.split(".layers.").nth(1) else {
            out.push((name.clone(), shape, t.data().to_vec()));
            continue;
        };
        let i: usize = rest.split('.').next().unwrap().parse().unwrap();
        for j in (i..layers).step_by(n) {
            let s = 1.0 + 0.05 * (j / n) as f32;
            let data: Vec<u8> = t
                .data()
                .chunks_exact(4)
                .flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) * s).to_le_bytes())
                .collect();
            let renamed = name.replace(&format!(".layers.{i}."), &format!(".layers.{j}."));
            out.push((renamed, shape.clone(), data));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = out
        .iter()
        .map(|(k, s, d)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d);
            (k.clone(), v.unwrap())
        })
        .collect();
    let file = safetensors::serialize(views, None).unwrap();
    std::fs::write(&path, file).unwrap();
    dir
}

/// The tool's test hook: the Rust coefficients truncate to bf16 instead of rounding.
const TRUNCATE: (&str, &str) = ("LLM_CONVERT_TEST_BF16_TRUNCATE", "1");

fn build(model: &Path, extra: &[&str], env: &[(&str, &str)]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let mut args = vec![
        "-m",
        model.to_str().unwrap(),
        "-s",
        "64",
        "--jobs",
        "2",
        "--json",
    ];
    args.extend_from_slice(&["-o", out.to_str().unwrap()]);
    args.extend_from_slice(&["--cache-dir", cache.to_str().unwrap()]);
    args.extend_from_slice(extra);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_llm-convert"))
        .args(&args)
        .envs(env.iter().copied())
        .output()
        .expect("running llm-convert");
    assert!(
        o.status.success(),
        "llm-convert {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let m: Value = serde_json::from_slice(&o.stdout).expect("--json prints the manifest");
    // The pieces live in the temp cache: keep their masked bytes before it goes.
    let mut m = m;
    for p in m["pieces"].as_array_mut().unwrap() {
        let b = std::fs::read(p["bmodel"].as_str().unwrap()).unwrap();
        p["masked"] = Value::from(llm_convert::util::hex(&sha(&mask_create_time(&b))));
    }
    m
}

fn sha(b: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(b).to_vec()
}

/// What a compile-once run did: its patched pieces (with how their coefficients were made)
/// and its compiled pieces.
struct Once {
    patched: Vec<(String, String)>,
    compiled: Vec<String>,
}

impl Once {
    fn patched(&self) -> Vec<&str> {
        self.patched.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Every patched piece's coefficients were made by `how` (`rust` or `tpuc-opt`).
    fn assert_coefficients(&self, how: &str) {
        assert!(!self.patched.is_empty());
        for (name, by) in &self.patched {
            assert_eq!(by, how, "{name}'s coefficients: {:?}", self.patched);
        }
    }
}

/// Full compile (`--compile-once=false`) and compile-once (the default) of the same model and
/// flags (the compile-once run with `env`): every piece the same bytes (create time aside).
fn assert_patches_match(model: &Path, extra: &[&str], env: &[(&str, &str)]) -> Once {
    common::toolchain();
    let mut without = extra.to_vec();
    without.push("--compile-once=false");
    let full = build(model, &without, &[]);
    let once = build(model, extra, env);
    let masked: HashMap<&str, &Value> = full["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), &p["masked"]))
        .collect();
    let (mut patched, mut compiled) = (vec![], vec![]);
    for p in once["pieces"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        assert_eq!(
            &p["masked"], masked[name],
            "{extra:?}: {name} (patched from {:?}) differs from its full compile",
            p["patched_from"]
        );
        if let Some(t) = p["patched_from"].as_str() {
            // The control: a patched layer is not its template's bytes (its own weights are in).
            let mut pieces = once["pieces"].as_array().unwrap().iter();
            let t = pieces.find(|q| q["name"] == t).unwrap();
            assert_ne!(p["masked"], t["masked"], "{name} kept {t}'s weights");
            let how = p["patched_coefficients"].as_str().unwrap_or_default();
            patched.push((name.to_string(), how.to_string()));
        } else {
            compiled.push(name.to_string());
        }
    }
    assert!(full["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["patched_from"].is_null()));
    assert_eq!(
        full["bmodel_sha256_without_create_time"], once["bmodel_sha256_without_create_time"],
        "{extra:?}: the combined bmodels differ"
    );
    Once { patched, compiled }
}

fn check(fixture: &str, extra: &[&str], env: &[(&str, &str)]) -> Once {
    let model = deeper(fixture, 4);
    let once = assert_patches_match(model.path(), extra, env);
    let (patched, compiled) = (once.patched(), &once.compiled);
    // Layers 1 and 2 are patched from layer 0; layer 3 holds the final norm: its own shape.
    for name in ["block_1", "block_2", "block_cache_1", "block_cache_2"] {
        assert!(
            patched.contains(&name),
            "{extra:?}: {name} not patched: {patched:?}"
        );
    }
    for name in [
        "block_0",
        "block_3",
        "block_cache_0",
        "block_cache_3",
        "lm_head",
    ] {
        assert!(
            compiled.iter().any(|p| p == name),
            "{extra:?}: {name} not compiled: {compiled:?}"
        );
    }
    once
}

#[test]
fn qwen2_bf16_static() {
    check("qwen2", &["-q", "bf16"], &[]).assert_coefficients("rust");
}

/// The control: with the Rust coefficients truncated to bf16, the template's self-check
/// refuses them, and the layers are patched from the coefficient call, still byte-identical.
#[test]
fn qwen2_bf16_truncation_is_caught() {
    check("qwen2", &["-q", "bf16"], &[TRUNCATE]).assert_coefficients("tpuc-opt");
}

#[test]
fn qwen2_w4bf16_static() {
    check("qwen2", &["-q", "w4bf16"], &[]).assert_coefficients("rust");
}

#[test]
fn qwen2_bf16_dynamic_history() {
    check(
        "qwen2",
        &[
            "-q",
            "bf16",
            "--dynamic",
            "--use_history_kv",
            "--chunk_length",
            "16",
        ],
        &[],
    )
    .assert_coefficients("rust");
}

#[test]
fn llama_tied_w4bf16_dynamic() {
    check("llama_tied", &["-q", "w4bf16", "--dynamic"], &[]).assert_coefficients("rust");
}

/// The 2-layer fixture: its last block is another shape than its first, so nothing is patched.
#[test]
fn a_differing_shape_falls_back() {
    let once = assert_patches_match(&common::fixtures().join("qwen2"), &["-q", "w4bf16"], &[]);
    assert!(once.patched.is_empty(), "{:?}", once.patched);
}

#[test]
fn onnx_backend_refuses_it() {
    let o = common::llm_convert(&[
        "-m",
        common::fixtures().join("qwen2").to_str().unwrap(),
        "-s",
        "64",
        "--backend",
        "onnx",
        "--compile-once",
        "--dry_run",
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--compile-once"));
}

/// gemma3: sliding (0, 1) and global (2) layers are two shapes, and the last (3) a third; its
/// decode blocks' cheap coefficient passes give 64 bytes other values than the full pipeline,
/// which the template's self-check catches: they compile fully, still byte-identical.
#[test]
fn gemma3_local_and_global_layers() {
    let once = assert_patches_match(
        &common::fixtures().join("gemma3_text"),
        &["-q", "w4bf16"],
        &[],
    );
    assert_eq!(once.patched(), ["block_1"], "{:?}", once.compiled);
    assert!(once.compiled.iter().any(|p| p == "block_2"));
}
