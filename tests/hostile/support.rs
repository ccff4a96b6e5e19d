//! Helpers of the hostile-input tests: CLI runs, fixture edits, a hand-written GGUF.

use std::path::{Path, PathBuf};

use crate::common::llm_convert;
use llm_convert::error::InputError;

/// Runs llm-convert; returns (exit code, stderr) and fails on a panic.
pub fn run(args: &[&str]) -> (i32, String) {
    let out = llm_convert(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

pub fn reference(model: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["reference", "-m", model.to_str().unwrap(), "--steps", "1"];
    if !extra.contains(&"--tokens") {
        args.extend(["--tokens", "1,2,3"]);
    }
    args.extend(extra);
    run(&args)
}

/// Asserts exit 2 and that stderr names `file` and contains every word of `words`.
pub fn assert_bad_input((code, err): (i32, String), file: &Path, words: &[&str]) {
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    for w in words {
        assert!(err.contains(w), "expected \"{w}\" in: {err}");
    }
}

pub fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

/// Header entries of a safetensors file: name → (dtype, data start in the file).
pub fn tensor_locations(bytes: &[u8]) -> Vec<(String, String, usize)> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let start = v["data_offsets"][0].as_u64().unwrap() as usize;
            (
                k.clone(),
                v["dtype"].as_str().unwrap().to_string(),
                8 + n + start,
            )
        })
        .collect()
}

/// A GGUF file (version 3) from metadata entries and F32 tensors, written by hand so any
/// field can be set to any value.
pub struct GgufBuilder {
    pub kv: Vec<(String, u32, Vec<u8>)>,
    pub tensors: Vec<(String, Vec<u64>, u64)>,
    pub data: Vec<u8>,
    pub alignment: u64,
}

impl GgufBuilder {
    pub fn new() -> GgufBuilder {
        let mut g = GgufBuilder {
            kv: vec![],
            tensors: vec![],
            data: vec![],
            alignment: 32,
        };
        g.string("general.architecture", "llama");
        g.u32("llama.attention.head_count", 2);
        g.u32("llama.embedding_length", 8);
        g.u32("llama.feed_forward_length", 16);
        g.u32("llama.block_count", 1);
        g
    }
    pub fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.kv.push((key.into(), 4, v.to_le_bytes().to_vec()));
        self
    }
    pub fn string(&mut self, key: &str, v: &str) -> &mut Self {
        let mut b = (v.len() as u64).to_le_bytes().to_vec();
        b.extend(v.as_bytes());
        self.kv.push((key.into(), 8, b));
        self
    }
    /// An F32 tensor of `dims` (GGUF order) filled with `value`.
    pub fn tensor(&mut self, name: &str, dims: &[u64], value: f32) -> &mut Self {
        let n: u64 = dims.iter().product();
        let offset = self.data.len() as u64;
        for _ in 0..n {
            self.data.extend(value.to_le_bytes());
        }
        self.data.resize(self.data.len().div_ceil(32) * 32, 0);
        self.tensors.push((name.into(), dims.to_vec(), offset));
        self
    }
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(0x4655_4747u32.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kv {
            b.extend((k.len() as u64).to_le_bytes());
            b.extend(k.as_bytes());
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        for (name, dims, offset) in &self.tensors {
            b.extend((name.len() as u64).to_le_bytes());
            b.extend(name.as_bytes());
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(0u32.to_le_bytes());
            b.extend(offset.to_le_bytes());
        }
        let a = self.alignment.max(1) as usize;
        b.resize(b.len().div_ceil(a) * a, 0);
        b.extend(&self.data);
        b
    }
    /// A tiny llama (hidden 8, 2 heads, 1 layer, vocab 4) whose weights are all `value`.
    pub fn llama(value: f32) -> GgufBuilder {
        let mut g = GgufBuilder::new();
        g.tensor("token_embd.weight", &[8, 4], value)
            .tensor("output_norm.weight", &[8], value);
        for (t, dims) in [
            ("attn_norm", vec![8]),
            ("ffn_norm", vec![8]),
            ("attn_q", vec![8, 8]),
            ("attn_k", vec![8, 8]),
            ("attn_v", vec![8, 8]),
            ("attn_output", vec![8, 8]),
            ("ffn_gate", vec![8, 16]),
            ("ffn_up", vec![8, 16]),
            ("ffn_down", vec![16, 8]),
        ] {
            g.tensor(&format!("blk.0.{t}.weight"), &dims, value);
        }
        g
    }
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.bytes()).unwrap();
        p
    }
}

/// The error is bad input (exit 2) and names `file`.
pub fn is_bad_input(e: &anyhow::Error, file: &Path) -> bool {
    e.chain().any(|c| c.downcast_ref::<InputError>().is_some())
        && format!("{e:#}").contains(&file.display().to_string())
}
