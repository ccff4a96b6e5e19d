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
