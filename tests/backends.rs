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

fn assert_same_bmodel(fixture: &str, extra: &[&str]) {
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
}

/// w4bf16 (grouped weight quantization), tied embeddings, the fused-TopK lm_head.
#[test]
fn backends_agree_on_llama_tied_w4bf16() {
    assert_same_bmodel("llama_tied", &["-q", "w4bf16"]);
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
