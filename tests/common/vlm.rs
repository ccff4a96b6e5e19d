//! Tiny random vision-language models made by transformers (scripts/make_vlm_fixtures.py),
//! generated once per version of the script and kept under target/.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The folder holding one sub-folder per VLM fixture (`qwen25vl`, `internvl_chat`, ...), each
/// with config.json, model.safetensors, photo.png, expected.json and expected/inputs.safetensors.
pub fn vlm_fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| super::generated("make_vlm_fixtures.py", "vlm-fixtures", &[]))
}
