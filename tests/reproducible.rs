//! Two cold conversions of the same input give the same bmodel (create time aside), on the
//! real TPU-MLIR. Without zeroing the uninitialised padding TPU-MLIR writes into every dynamic
//! subnet's IR (lm_head's TopK, `--dynamic` blocks), these differ in a few bytes from run to run.

mod common;

use serde_json::Value;

/// Converts `fixture` twice into fresh caches; returns both manifests.
fn two_cold_builds(fixture: &str, extra: &[&str]) -> (Value, Value) {
    common::toolchain();
    let model = common::fixtures().join(fixture);
    let run = || {
        let dir = tempfile::tempdir().unwrap();
        common::convert_seq64(
            &model,
            &dir.path().join("out"),
            &dir.path().join("cache"),
            extra,
        )
    };
    (run(), run())
}

fn assert_equal_builds(a: &Value, b: &Value) {
    let cold = |m: &Value| {
        m["pieces"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["cached"] == false)
    };
    assert!(cold(a) && cold(b), "both builds must compile every piece");
    assert_eq!(
        a["bmodel_sha256_without_create_time"], b["bmodel_sha256_without_create_time"],
        "two cold builds of the same input differ"
    );
}

/// Static w4bf16: the default lm_head (fused TopK) is the one dynamic subnet.
#[test]
fn two_cold_static_builds_are_equal() {
    let (a, b) = two_cold_builds("llama_tied", &["-q", "w4bf16", "--jobs", "2"]);
    assert_equal_builds(&a, &b);
}

/// `--dynamic` blocks: every layer group of their IR carries the padding.
#[test]
fn two_cold_dynamic_builds_are_equal() {
    let (a, b) = two_cold_builds("qwen2", &["-q", "bf16", "--dynamic", "--jobs", "2"]);
    assert_equal_builds(&a, &b);
}
