//! The provisioned toolchain: install is idempotent, doctor passes, and a missing or
//! unfinished install is reported with the command that fixes it.

mod common;

use common::llm_convert;

#[test]
fn second_install_is_a_noop() {
    common::toolchain();
    let out = llm_convert(&["toolchain", "install"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("nothing to do"),
        "second install did work: {err}"
    );
}

#[test]
fn doctor_passes_on_the_installed_toolchain() {
    common::toolchain();
    let out = llm_convert(&["doctor", "--json"]);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    let failed: Vec<_> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] != true)
        .collect();
    assert!(failed.is_empty(), "failing checks: {failed:#?}");
    assert!(out.status.success());
    assert_eq!(report["tpu_mlir_version"], "1.30.2");
}

#[test]
fn doctor_on_an_unfinished_install_fails_and_says_how_to_fix() {
    // A toolchain folder with a venv dir but no stamp: what an interrupted install leaves.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("venv/bin")).unwrap();
    let out = llm_convert(&[
        "doctor",
        "--json",
        "--toolchain-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = report["checks"].as_array().unwrap();
    let installed = checks
        .iter()
        .find(|c| c["name"] == "toolchain installed")
        .unwrap();
    assert_eq!(
        installed["ok"], false,
        "an install without its stamp must not count as installed"
    );
    for c in checks.iter().filter(|c| c["ok"] == false) {
        let fix = c["fix"].as_str().unwrap();
        assert!(
            fix.contains("llm-convert toolchain install") || fix.contains("apt-get install"),
            "{c}"
        );
    }
}

// --- native backend (npass): `toolchain install --native` and doctor's backends ---

fn backends(report: &serde_json::Value) -> Vec<(String, bool)> {
    report["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap().to_string(), b["usable"] == true))
        .collect()
}

#[test]
fn native_install_over_a_full_one_is_a_noop_and_both_backends_are_usable() {
    common::toolchain();
    let out = llm_convert(&["toolchain", "install", "--native"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("full install; nothing to do"), "{err}");
    let out = llm_convert(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        backends(&report),
        [("native".to_string(), true), ("onnx".to_string(), true)]
    );
}

#[test]
fn doctor_on_a_native_only_install_skips_python_and_offers_only_native() {
    // The installed toolchain's files, with a native-only stamp and no venv python: what
    // `toolchain install --native` leaves (its wheel is unpacked to the same TPUC_ROOT).
    let layout = common::toolchain();
    let dir = tempfile::tempdir().unwrap();
    let sp = dir.path().join("venv/lib/python3.10");
    std::fs::create_dir_all(&sp).unwrap();
    std::os::unix::fs::symlink(layout.site_packages(), sp.join("site-packages")).unwrap();
    let stamp = r#"{"spec": "native", "python": "", "installed_at": "now", "native_only": true}"#;
    std::fs::write(dir.path().join("installed.json"), stamp).unwrap();
    let out = llm_convert(&[
        "doctor",
        "--json",
        "--toolchain-dir",
        dir.path().to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{report:#}");
    assert_eq!(
        backends(&report),
        [("native".to_string(), true), ("onnx".to_string(), false)]
    );
    let venv = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "python 3.10 venv")
        .unwrap();
    assert!(
        venv["detail"].as_str().unwrap().starts_with("skipped"),
        "{venv}"
    );
}
