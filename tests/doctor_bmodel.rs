//! `llm-convert doctor BMODEL`: a bmodel made by TPU-MLIR 1.30.2 matches the runtime (exit 0);
//! a copy whose description claims another compiler or format is skewed (exit 4, with the fix),
//! and the commands that run bmodels refuse a fatal skew before libbmrt; a file that is no
//! bmodel, or is cut short, is bad input (exit 2) with a precise message.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

/// qwen2 at bf16, seq 64, bm1684x (the same conversion as tests/chips.rs's bm1684x test).
fn bmodel() -> Arc<common::Converted> {
    common::converted(&common::fixtures().join("qwen2"), 64, &["-q", "bf16"])
}

/// `doctor PATH --json`: (exit code, report or Null, stderr).
fn doctor(path: &Path) -> (i32, Value, String) {
    let o = common::llm_convert(&["doctor", path.to_str().unwrap(), "--json"]);
    (
        o.status.code().unwrap_or(-1),
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {report:#}"))
}

/// A copy of `src` in `dir` with the one occurrence of `from` replaced by `to` (same length).
fn edited_copy(src: &Path, dir: &Path, from: &[u8], to: &[u8]) -> PathBuf {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(src).unwrap();
    let hits: Vec<usize> = bytes
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "{:?} occurs once",
        String::from_utf8_lossy(from)
    );
    bytes[hits[0]..hits[0] + to.len()].copy_from_slice(to);
    let out = dir.join(src.file_name().unwrap());
    std::fs::write(&out, bytes).unwrap();
    out
}

#[test]
fn a_bmodel_made_by_tpu_mlir_1_30_2_matches() {
    let b = bmodel();
    let (code, r, err) = doctor(&b.bmodel);
    assert_eq!(code, 0, "{r:#}\n{err}");
    assert_eq!(r["chip"], "BM1684X");
    assert_eq!(r["compiler"], "1.30.2");
    assert_eq!(r["bmodel_format"], "2.2");
    assert_eq!(r["runtime_bmodel_format"], "2.2");
    assert_eq!(r["runtime_tpu_mlir"], "1.30.2");
    assert!(r["bmodel_version"]
        .as_str()
        .unwrap()
        .starts_with("2.2+v1.30.2-"));
    for name in [
        "chip",
        "bmodel format",
        "compiler",
        "libbmrt/libbmlib",
        "net set",
    ] {
        assert_eq!(check(&r, name)["status"], "match", "{name}: {r:#}");
    }
    // The text report says the same.
    let o = common::llm_convert(&["doctor", b.bmodel.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("the bmodel matches the runtime"), "{text}");
}

#[test]
fn another_compiler_version_is_skew_with_the_fix() {
    let b = bmodel();
    let dir = tempfile::tempdir().unwrap();
    let skewed = edited_copy(&b.bmodel, dir.path(), b"+v1.30.2-", b"+v1.29.0-");
    let (code, r, err) = doctor(&skewed);
    assert_eq!(code, 4, "{r:#}\n{err}");
    assert_eq!(r["compiler"], "1.29.0");
    let c = check(&r, "compiler");
    assert_eq!(c["status"], "skew");
    assert_eq!(
        c["fatal"], false,
        "an older compiler warns, the run goes on"
    );
    let detail = c["detail"].as_str().unwrap();
    assert!(
        detail.contains("1.29.0") && detail.contains("1.30.2"),
        "{c}"
    );
    assert!(c["fix"].as_str().unwrap().contains("rebuild"), "{c}");
    // Only the compiler moved.
    assert_eq!(check(&r, "bmodel format")["status"], "match");
    let o = common::llm_convert(&["doctor", skewed.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("[SKEW] compiler") && text.contains("fix: rebuild"),
        "{text}"
    );
}

#[test]
fn a_newer_format_is_a_fatal_skew_and_verify_refuses_it() {
    let b = bmodel();
    let dir = tempfile::tempdir().unwrap();
    let skewed = edited_copy(&b.bmodel, dir.path(), b"2.2+v1.30.2-", b"9.9+v1.30.2-");
    let (code, r, err) = doctor(&skewed);
    assert_eq!(code, 4, "{r:#}\n{err}");
    let c = check(&r, "bmodel format");
    assert_eq!(
        (&c["status"], &c["fatal"]),
        (&"skew".into(), &true.into()),
        "{c}"
    );
    // verify stops before libbmrt reads it, with the same explanation and exit 4.
    let model = common::fixtures().join("qwen2");
    let tokens = common::tokens_arg(&common::PROMPT);
    let o = common::llm_convert(&[
        "verify",
        skewed.to_str().unwrap(),
        "-m",
        model.to_str().unwrap(),
        "--tokens",
        &tokens,
        "--steps",
        "1",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.contains("format 9.9")
            && err.contains("newer than the runtime")
            && err.contains("fix:"),
        "{err}"
    );
}

#[test]
fn what_is_not_a_whole_bmodel_is_bad_input() {
    let b = bmodel();
    let dir = tempfile::tempdir().unwrap();
    let not_bmodel = b.out.join("manifest.json");
    let (code, _, err) = doctor(&not_bmodel);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("manifest.json") && err.contains("not the bmodel magic 0xFF55AAEE"),
        "{err}"
    );

    let bytes = std::fs::read(&b.bmodel).unwrap();
    let cut = dir.path().join("cut.bmodel");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (code, _, err) = doctor(&cut);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cut.bmodel") && err.contains("truncated"),
        "{err}"
    );
    assert!(
        err.contains(&format!("the file has {}", bytes.len() / 2)),
        "{err}"
    );

    let tiny = dir.path().join("tiny.bmodel");
    std::fs::write(&tiny, &bytes[..10]).unwrap();
    let (code, _, err) = doctor(&tiny);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("10 bytes, shorter than a bmodel header"),
        "{err}"
    );

    let (code, _, err) = doctor(&dir.path().join("missing.bmodel"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing.bmodel: not found"), "{err}");
}
