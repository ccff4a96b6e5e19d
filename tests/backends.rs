//! The native backend (Top MLIR written by us, tpuc-opt called directly) and the ONNX backend
//! (TPU-MLIR's model_transform.py + model_deploy.py) build the same bmodel, byte for byte
//! (create time aside), from cold caches: so every simulator test run on one backend's
//! bmodels holds for the other's.

mod common;

use serde_json::Value;

fn build(fixture: &str, backend: &str, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--backend", backend, "--jobs", "2"];
    args.extend_from_slice(extra);
    common::convert_seq64(
        &common::fixtures().join(fixture),
        &dir.path().join("out"),
        &dir.path().join("cache"),
        &args,
    )
}

/// Both backends' manifests, once their bmodels are seen to be equal.
fn same_bmodel(fixture: &str, extra: &[&str]) -> (Value, Value) {
    common::toolchain();
    let native = build(fixture, "native", extra);
    let onnx = build(fixture, "onnx", extra);
    for m in [&native, &onnx] {
        let pieces = m["pieces"].as_array().unwrap();
        assert!(
            pieces.iter().all(|p| p["cached"] == false),
            "{fixture} {extra:?}: both builds must compile every piece"
        );
    }
    assert_eq!(
        native["bmodel_sha256_without_create_time"], onnx["bmodel_sha256_without_create_time"],
        "{fixture} {extra:?}: the native and onnx backends built different bmodels"
    );
    (native, onnx)
}

fn assert_same_bmodel(fixture: &str, extra: &[&str]) {
    let (native, onnx) = same_bmodel(fixture, extra);
    // The native export wrote one weight archive per layer (and one for the two embedding
    // pieces): every later piece reading the same tensors hard-linked it, so the equality
    // above holds for pieces compiled from an archive with their siblings' members.
    // (A tied lm_head reads the embedding's table as it is stored: it may link too.)
    let linked = |p: &&Value| p["weights_linked"] == true;
    for p in native["pieces"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let first = name == "embedding" || name.starts_with("block_") && !name.contains("cache");
        let later = name.starts_with("block_cache_") || name == "embedding_cache";
        if first || later {
            assert_eq!(
                linked(&p),
                later,
                "{fixture} {extra:?}: {name}'s weights_linked"
            );
        }
    }
    assert!(onnx["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| !linked(&p)));
}

/// `--dynamic` prefill blocks (in-graph mask, dynamic subnets), sampling heads, history-KV
/// prefill and decode stages (io_alone configs shared between a job's steps).
#[test]
fn backends_agree_on_qwen2_dynamic_history_sample() {
    assert_same_bmodel(
        "qwen2",
        &[
            "-q",
            "bf16",
            "--use_history_kv",
            "--chunk_length",
            "16",
            "--do_sample",
        ],
    );
}

/// A mixture-of-experts block whose routing stays f32 (a quantize table).
#[test]
fn backends_agree_on_qwen2_moe_w4bf16() {
    assert_same_bmodel("qwen2_moe", &["-q", "w4bf16"]);
}

/// A bf16 checkpoint at a bf16 half precision: the native backend writes its vocabulary
/// tables (the embedding, the untied lm_head) to the Top weights as bf16 (half the bytes to
/// write and for tpuc-opt to read), the ONNX backend as f32; the bmodels are the same.
#[test]
fn backends_agree_on_bf16_tables() {
    let fixture = "llama_rope3_bf16";
    assert_same_bmodel(fixture, &["-q", "w4bf16"]);
    assert_tables_written_as_bf16(fixture);
}

/// w4bf16 (grouped weight quantization), tied embeddings, the fused-TopK lm_head; and an f32
/// checkpoint's tables go to the Top weights rounded to bf16 as the BF16 lowering rounds
/// them: the bmodels are the ONNX path's, whose lowering rounds the f32 tables itself (a
/// rounding of ours that differed on any value would change the bytes).
#[test]
fn backends_agree_on_f32_tables_rounded_to_bf16() {
    let fixture = "llama_tied";
    assert_same_bmodel(fixture, &["-q", "w4bf16"]);
    assert_tables_written_as_bf16(fixture);
}

/// gemma2's embedding is scaled after the Gather, which the top passes fold into the table: a
/// table rounded to bf16 before the fold would change the bytes, so it stays f32 (MiniCPM's
/// scaled embedding and lm_head input alike).
#[test]
fn backends_agree_on_scaled_tables() {
    // (Its block_cache pieces do not link their blocks' archives today: no link check.)
    same_bmodel("gemma2", &["-q", "bf16"]);
}

/// The native build of `fixture` at w4bf16 wrote every vocabulary table as bf16 (`--only_mlir`
/// keeps the Top weights it compiled).
fn assert_tables_written_as_bf16(fixture: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (model, out) = (common::fixtures().join(fixture), dir.path().join("out"));
    let o = common::llm_convert(&[
        "-m",
        model.to_str().unwrap(),
        "-s",
        "64",
        "-q",
        "w4bf16",
        "--only_mlir",
        "-o",
        out.to_str().unwrap(),
        "--cache-dir",
        dir.path().join("cache").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for piece in ["embedding", "embedding_cache", "lm_head"] {
        let npz = find(
            dir.path(),
            &format!("{piece}_top_f32_all_origin_weight.npz"),
        )
        .unwrap_or_else(|| panic!("--only_mlir keeps {piece}'s origin npz"));
        // Members are stored uncompressed: the npy header is in the bytes.
        let bytes = std::fs::read(&npz).unwrap();
        let has = |d: &[u8]| bytes.windows(d.len()).any(|w| w == d);
        assert!(
            has(b"'descr': '<u2'") && !has(b"'descr': '<f4'"),
            "{fixture} {piece}: the table is not written as bf16 ({})",
            npz.display()
        );
    }
}

fn find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(p) = find(&path, name) {
                return Some(p);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}
