//! `export-onnx` and `convert --only_onnx` build the pieces through one builder: the same
//! flags give byte-identical ONNX files, and the piece rules refuse the same things.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{fixtures, llm_convert};

/// Every file under `dir`, by relative path, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        out.insert(name, std::fs::read(e.path()).unwrap());
    }
    out
}

fn run_ok(args: &[&str]) {
    let o = llm_convert(args);
    assert!(
        o.status.success(),
        "llm-convert {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn export_onnx_and_only_onnx_write_the_same_pieces() {
    let model = fixtures().join("qwen2");
    let model = model.to_str().unwrap();
    let p = tempfile::tempdir().unwrap();
    run_ok(&[
        "export-onnx",
        "-m",
        model,
        "-s",
        "64",
        "-o",
        p.path().to_str().unwrap(),
    ]);
    let plain = files(&p.path().join("onnx"));
    for flags in [
        &["--use_history_kv", "--chunk_length", "16"][..],
        &["--use_block_with_kv", "--do_sample"][..],
        &[
            "--dynamic",
            "--max_input_length",
            "32",
            "--chunk_length",
            "8",
        ][..],
    ] {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let mut export = vec!["export-onnx", "-m", model, "-s", "64"];
        export.extend_from_slice(flags);
        export.extend_from_slice(&["-o", a.path().to_str().unwrap()]);
        run_ok(&export);
        let mut convert = vec!["-m", model, "-s", "64", "-q", "bf16", "--only_onnx"];
        convert.extend_from_slice(flags);
        convert.extend_from_slice(&["-o", b.path().to_str().unwrap()]);
        run_ok(&convert);
        let (fa, fb) = (files(&a.path().join("onnx")), files(&b.path().join("onnx")));
        // Every flag set adds pieces a plain export lacks (block_kv_i, sample_head, decode
        // stages block_cache_i_n), so export-onnx really honoured it.
        let added: Vec<_> = fa.keys().filter(|k| !plain.contains_key(*k)).collect();
        assert!(!added.is_empty(), "{flags:?}: {:?}", fa.keys());
        assert_eq!(
            fa.keys().collect::<Vec<_>>(),
            fb.keys().collect::<Vec<_>>(),
            "{flags:?}"
        );
        for (name, bytes) in &fa {
            assert!(bytes == &fb[name], "{flags:?}: {name} differs");
        }
    }
}

#[test]
fn export_onnx_follows_the_history_kv_rules() {
    let model = fixtures().join("qwen2");
    let out = tempfile::tempdir().unwrap();
    for (flags, says) in [
        (
            &["--use_history_kv", "--max_input_length", "8"][..],
            "cannot be set with --use_history_kv",
        ),
        (&["--chunk_length", "40"][..], "larger than -s 64 / 2"),
    ] {
        let mut args = vec!["export-onnx", "-m", model.to_str().unwrap(), "-s", "64"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["-o", out.path().to_str().unwrap()]);
        let o = llm_convert(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
    }
}
