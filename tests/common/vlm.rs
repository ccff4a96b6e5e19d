//! Tiny random vision-language models made by transformers (scripts/make_vlm_fixtures.py),
//! generated once per version of the script and kept under target/.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The folder holding one sub-folder per VLM fixture (`qwen25vl`, `internvl_chat`, ...), each
/// with config.json, model.safetensors, photo.png, expected.json and expected/inputs.safetensors.
pub fn vlm_fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = super::repo().join("scripts/make_vlm_fixtures.py");
        let text = std::fs::read(&script).expect("reading make_vlm_fixtures.py");
        let key = llm_convert::util::hex(&super::sha2_digest(&text))[..16].to_string();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("vlm-fixtures-{key}"));
        if dir.join("done").exists() {
            return dir;
        }
        let layout = super::toolchain();
        let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let out = Command::new(layout.python())
            .arg(&script)
            .arg(&tmp)
            .env("HF_HUB_OFFLINE", "1")
            .env("TQDM_DISABLE", "1")
            .env("TRANSFORMERS_VERBOSITY", "error")
            .output()
            .expect("running make_vlm_fixtures.py");
        assert!(
            out.status.success(),
            "make_vlm_fixtures.py failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(tmp.join("done"), b"").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).expect("publishing the VLM fixtures");
        dir
    })
}
