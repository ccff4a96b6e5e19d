//! Hostile input, by class (issue 15): every damaged checkpoint, config, flag, output path or
//! bmodel exits 2 naming the file, never panics and never allocates without bound. One test
//! per class (built from the class, not from one file), then property-based tests over the
//! parsers: arbitrary bytes and mutations of valid files.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{copy_model, llm_convert};
use llm_convert::error::InputError;
use proptest::prelude::*;

/// Refuses any single allocation above this: a parser that sizes a buffer from an unchecked
/// value in the file aborts the test binary instead of passing (or swapping).
const ALLOCATION_LIMIT: usize = 1 << 30;

struct Bounded;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only refuses (null) oversized requests.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        if layout.size() > ALLOCATION_LIMIT {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        if new_size > ALLOCATION_LIMIT {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

// ---- helpers ----

/// Runs llm-convert; returns (exit code, stderr) and fails on a panic.
fn run(args: &[&str]) -> (i32, String) {
    let out = llm_convert(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn reference(model: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["reference", "-m", model.to_str().unwrap(), "--steps", "1"];
    if !extra.contains(&"--tokens") {
        args.extend(["--tokens", "1,2,3"]);
    }
    args.extend(extra);
    run(&args)
}

/// Asserts exit 2 and that stderr names `file` and contains every word of `words`.
fn assert_bad_input((code, err): (i32, String), file: &Path, words: &[&str]) {
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    for w in words {
        assert!(err.contains(w), "expected \"{w}\" in: {err}");
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

/// Header entries of a safetensors file: name → (dtype, data start in the file).
fn tensor_locations(bytes: &[u8]) -> Vec<(String, String, usize)> {
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
struct GgufBuilder {
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u64)>,
    data: Vec<u8>,
    alignment: u64,
}

impl GgufBuilder {
    fn new() -> GgufBuilder {
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
    fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.kv.push((key.into(), 4, v.to_le_bytes().to_vec()));
        self
    }
    fn string(&mut self, key: &str, v: &str) -> &mut Self {
        let mut b = (v.len() as u64).to_le_bytes().to_vec();
        b.extend(v.as_bytes());
        self.kv.push((key.into(), 8, b));
        self
    }
    /// An F32 tensor of `dims` (GGUF order) filled with `value`.
    fn tensor(&mut self, name: &str, dims: &[u64], value: f32) -> &mut Self {
        let n: u64 = dims.iter().product();
        let offset = self.data.len() as u64;
        for _ in 0..n {
            self.data.extend(value.to_le_bytes());
        }
        self.data.resize(self.data.len().div_ceil(32) * 32, 0);
        self.tensors.push((name.into(), dims.to_vec(), offset));
        self
    }
    fn bytes(&self) -> Vec<u8> {
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
    fn llama(value: f32) -> GgufBuilder {
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
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.bytes()).unwrap();
        p
    }
}

/// The error is bad input (exit 2) and names `file`.
fn is_bad_input(e: &anyhow::Error, file: &Path) -> bool {
    e.chain().any(|c| c.downcast_ref::<InputError>().is_some())
        && format!("{e:#}").contains(&file.display().to_string())
}

// ---- one test per class ----

/// Class: a panic inside a dependency on a value read from the file (candle divides by a
/// GGUF's `general.alignment`). Every value candle's reader uses unchecked is checked first.
#[test]
fn dependency_panics_on_file_values_are_checked_first() {
    let dir = tempfile::tempdir().unwrap();
    let intact = GgufBuilder::llama(0.5).write(dir.path(), "intact.gguf");
    assert_eq!(
        reference(&intact, &[]).0,
        0,
        "{}",
        reference(&intact, &[]).1
    );
    for (i, alignment) in [0u32, 3, 48, u32::MAX].into_iter().enumerate() {
        let mut g = GgufBuilder::llama(0.5);
        g.u32("general.alignment", alignment);
        let path = g.write(dir.path(), &format!("align{i}.gguf"));
        assert_bad_input(reference(&path, &[]), &path, &["general.alignment"]);
    }
    // A tensor with no dimensions where the config reads one, and dimensions whose product
    // overflows.
    let mut g = GgufBuilder::new();
    g.tensor("token_embd.weight", &[], 0.5);
    let path = g.write(dir.path(), "nodims.gguf");
    assert_bad_input(reference(&path, &[]), &path, &[]);
    let mut g = GgufBuilder::llama(0.5);
    g.tensors[0].1 = vec![1 << 40, 1 << 40];
    let path = g.write(dir.path(), "overflow.gguf");
    assert_bad_input(reference(&path, &[]), &path, &["overflow"]);
}

/// Class: sizes from untrusted input used before they are bounded (config sizes, `-s`, an
/// offset near 2^64 that wraps an addition).
#[test]
fn sizes_from_input_are_bounded_before_use() {
    for (key, value) in [
        ("num_hidden_layers", serde_json::json!(1u64 << 40)),
        ("hidden_size", serde_json::json!(1u64 << 50)),
        ("vocab_size", serde_json::json!(u64::MAX)),
        ("intermediate_size", serde_json::json!(1u64 << 33)),
        ("max_position_embeddings", serde_json::json!(1u64 << 60)),
        ("num_attention_heads", serde_json::json!(1u64 << 20)),
        ("eos_token_id", serde_json::json!(1u64 << 40)),
    ] {
        let dir = copy_model("llama_tied");
        edit_config(dir.path(), |v| v[key] = value.clone());
        let cfg = dir.path().join("config.json");
        assert_bad_input(reference(dir.path(), &[]), &cfg, &[key]);
    }
    // -s: refused before anything is written.
    let dir = copy_model("llama_tied");
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("o");
    for s in ["1000000000000", "131073"] {
        let args = [
            "export-onnx",
            "-m",
            dir.path().to_str().unwrap(),
            "-s",
            s,
            "-o",
        ];
        let mut args = args.to_vec();
        args.push(o.to_str().unwrap());
        let (code, err) = run(&args);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("seq_length"), "{err}");
        assert!(!o.join("onnx").exists(), "pieces left behind");
    }
    // Offsets near 2^64 in a safetensors header and a GGUF tensor.
    let dir = copy_model("llama_tied");
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let names: Vec<String> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    // Chain the tensors so the last one ends just below 2^64 (each a valid size).
    let mut start = 0u64;
    for (i, name) in names.iter().enumerate() {
        let size = if i + 1 == names.len() {
            u64::MAX - start - 16
        } else {
            1 << 50
        };
        header[name]["dtype"] = "U8".into();
        header[name]["shape"] = serde_json::json!([size]);
        header[name]["data_offsets"] = serde_json::json!([start, start + size]);
        start += size;
    }
    let text = header.to_string();
    let mut damaged = (text.len() as u64).to_le_bytes().to_vec();
    damaged.extend(text.as_bytes());
    damaged.extend(&bytes[8 + n..]);
    std::fs::write(&st, damaged).unwrap();
    assert_bad_input(reference(dir.path(), &[]), &st, &["truncated"]);
    let dir = tempfile::tempdir().unwrap();
    let mut g = GgufBuilder::llama(0.5);
    g.tensors[1].2 = u64::MAX - 16;
    let path = g.write(dir.path(), "wrap.gguf");
    assert_bad_input(reference(&path, &[]), &path, &["truncated"]);
}

/// Class: configs accepted that the model cannot run.
#[test]
fn configs_the_model_cannot_run_are_refused() {
    let cases: [(&str, serde_json::Value); 5] = [
        ("head_dim", serde_json::json!(31)),
        ("rms_norm_eps", serde_json::json!(-1.0)),
        ("rope_theta", serde_json::json!(0.0)),
        ("rope_theta", serde_json::json!(-5)),
        ("rms_norm_eps", serde_json::json!(2.0)),
    ];
    for (key, value) in cases {
        let dir = copy_model("llama_tied");
        edit_config(dir.path(), |v| {
            v[key] = value.clone();
            if key == "rope_theta" {
                v.as_object_mut().unwrap().remove("rope_parameters");
            }
        });
        let cfg = dir.path().join("config.json");
        assert_bad_input(reference(dir.path(), &[]), &cfg, &[key]);
    }
    // A derived odd head_dim (hidden_size / heads).
    let dir = copy_model("llama_tied");
    edit_config(dir.path(), |v| {
        v.as_object_mut().unwrap().remove("head_dim");
        v["num_attention_heads"] = 128.into();
        v["num_key_value_heads"] = 128.into();
    });
    let cfg = dir.path().join("config.json");
    assert_bad_input(reference(dir.path(), &[]), &cfg, &["head_dim", "odd"]);
    let dir = copy_model("llama_rope3");
    edit_config(dir.path(), |v| {
        let key = if v.get("rope_parameters").is_some() {
            "rope_parameters"
        } else {
            "rope_scaling"
        };
        v[key]["factor"] = serde_json::json!(-8.0);
    });
    let cfg = dir.path().join("config.json");
    assert_bad_input(reference(dir.path(), &[]), &cfg, &["factor"]);
}

/// Class: NaN / Inf weights, in any format, refused naming the tensor (an explicit flag runs
/// anyway).
#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    for (fixture, poison) in [("llama_tied", f32::NAN), ("qwen2_bf16", f32::INFINITY)] {
        let dir = copy_model(fixture);
        let st = dir.path().join("model.safetensors");
        let mut bytes = std::fs::read(&st).unwrap();
        let locations = tensor_locations(&bytes);
        let (name, dtype, at) = locations
            .iter()
            .find(|(n, _, _)| n.ends_with("post_attention_layernorm.weight"))
            .unwrap()
            .clone();
        match dtype.as_str() {
            "F32" => bytes[at..at + 4].copy_from_slice(&poison.to_le_bytes()),
            "BF16" => {
                bytes[at..at + 2].copy_from_slice(&half::bf16::from_f32(poison).to_le_bytes())
            }
            "F16" => bytes[at..at + 2].copy_from_slice(&half::f16::from_f32(poison).to_le_bytes()),
            other => panic!("fixture dtype {other}"),
        }
        std::fs::write(&st, bytes).unwrap();
        let words = [name.as_str(), if poison.is_nan() { "NaN" } else { "inf" }];
        assert_bad_input(reference(dir.path(), &[]), dir.path(), &words);
        let (code, err) = reference(dir.path(), &["--allow-non-finite"]);
        assert_eq!(code, 0, "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = GgufBuilder::llama(f32::NEG_INFINITY).write(dir.path(), "inf.gguf");
    assert_bad_input(
        reference(&path, &[]),
        &path,
        &["model.embed_tokens.weight", "inf"],
    );
}

/// Class: exit 1 where the README promises 2 (output path under a file, a token id outside
/// the vocabulary, a file that is not a bmodel, with or without a toolchain).
#[test]
fn user_errors_exit_2_not_1() {
    let dir = copy_model("llama_tied");
    let model = dir.path().to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a_file");
    std::fs::write(&file, b"x").unwrap();
    for out in [file.join("out"), file.clone()] {
        let o = out.to_str().unwrap();
        let (code, err) = run(&["-m", model, "-s", "64", "-q", "bf16", "-o", o, "--dry_run"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
    }
    let o = file.join("out");
    let args = [
        "export-onnx",
        "-m",
        model,
        "-s",
        "64",
        "-o",
        o.to_str().unwrap(),
    ];
    let (code, err) = run(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    for tokens in ["1024", "1,2,4294967295"] {
        let (code, err) = reference(dir.path(), &["--tokens", tokens]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(model) && err.contains("vocab"), "{err}");
    }
    // Not a bmodel: random bytes, a truncated header, the magic with lying sizes.
    // generate / chat read their config first: the GGUF has a tokenizer.
    let gguf = common::smollm2_gguf();
    let chat_config = gguf.to_str().unwrap();
    let mut lying = 0xFF55_AAEEu32.to_le_bytes().to_vec();
    lying.extend([16u32, 1 << 20, 0].iter().flat_map(|w| w.to_le_bytes()));
    for (i, bytes) in [b"not a bmodel at all".to_vec(), vec![0xEE, 0xAA], lying]
        .into_iter()
        .enumerate()
    {
        let bmodel = tmp.path().join(format!("bad{i}.bmodel"));
        std::fs::write(&bmodel, bytes).unwrap();
        let b = bmodel.to_str().unwrap();
        for toolchain in [None, Some("/nonexistent-toolchain")] {
            let mut commands: Vec<Vec<&str>> = vec![
                vec!["verify", b, "-m", model, "--tokens", "1,2"],
                vec!["bench", b],
                vec!["generate", b, "-m", chat_config, "--prompt", "hi"],
                vec!["chat", b, "-m", chat_config],
            ];
            for c in &mut commands {
                if let Some(t) = toolchain {
                    c.extend(["--toolchain-dir", t]);
                }
                let (code, err) = run(c);
                assert_eq!(code, 2, "{c:?}: {err}");
                assert!(err.contains(b) && err.contains("bmodel"), "{c:?}: {err}");
            }
        }
    }
}

/// Class: a shard index whose `weight_map` disagrees with the shard headers.
#[test]
fn shard_index_must_agree_with_the_shards() {
    type WeightMap = serde_json::Map<String, serde_json::Value>;
    type Damage = fn(&mut WeightMap);
    // model.safetensors as the fixture has it, plus other.safetensors holding "model.extra".
    let sharded = |damage: Damage| {
        let dir = copy_model("llama_tied");
        let data = vec![0u8; 16];
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
        let other = dir.path().join("other.safetensors");
        safetensors::serialize_to_file([("model.extra", view)], None, &other).unwrap();
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let mut map: WeightMap = tensor_locations(&bytes)
            .into_iter()
            .map(|(n, _, _)| (n, "model.safetensors".into()))
            .collect();
        map.insert("model.extra".into(), "other.safetensors".into());
        damage(&mut map);
        let v = serde_json::json!({"metadata": {}, "weight_map": map});
        let index = dir.path().join("model.safetensors.index.json");
        std::fs::write(&index, v.to_string()).unwrap();
        (dir, index)
    };
    let (dir, _) = sharded(|_| {});
    assert_eq!(reference(dir.path(), &[]).0, 0, "a faithful index works");
    let damages: [(Damage, &str); 6] = [
        (
            |m| drop(m.insert("model.ghost.weight".into(), "model.safetensors".into())),
            "model.ghost.weight",
        ),
        (|m| drop(m.remove("model.norm.weight")), "model.norm.weight"),
        (
            |m| drop(m.insert("model.extra".into(), "model.safetensors".into())),
            "model.extra",
        ),
        (
            |m| drop(m.insert("model.norm.weight".into(), "../model.safetensors".into())),
            "../model.safetensors",
        ),
        (
            |m| drop(m.insert("model.norm.weight".into(), 7.into())),
            "model.norm.weight",
        ),
        (
            |m| drop(m.insert("model.norm.weight".into(), "gone.safetensors".into())),
            "gone.safetensors",
        ),
    ];
    for (damage, word) in damages {
        let (dir, index) = sharded(damage);
        let (code, err) = reference(dir.path(), &[]);
        assert_eq!(code, 2, "{err}");
        let named = err.contains(&index.display().to_string()) || err.contains("gone.safetensors");
        assert!(named && err.contains(word), "expected {word}: {err}");
    }
}

// ---- property-based tests over the parsers ----

/// A small valid safetensors file (two F32 tensors).
fn valid_safetensors() -> Vec<u8> {
    let a = vec![0u8; 4 * 6];
    let b = vec![0u8; 4 * 4];
    let ta = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &a).unwrap();
    let tb = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &b).unwrap();
    safetensors::serialize([("a", ta), ("b", tb)], None).unwrap()
}

/// `base` with some 8-byte words overwritten by extreme values and some bytes flipped, and
/// maybe truncated.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len();
    (
        proptest::collection::vec(
            (
                0..len,
                prop_oneof![
                    Just(0u64),
                    Just(u64::MAX),
                    Just(u64::MAX - 7),
                    Just(1 << 62),
                    any::<u64>()
                ],
            ),
            0..3,
        ),
        proptest::collection::vec((0..len, any::<u8>()), 0..6),
        prop_oneof![Just(len), 0..=len],
    )
        .prop_map(move |(words, flips, cut)| {
            let mut b = base.clone();
            for (at, w) in words {
                let end = (at + 8).min(b.len());
                b[at..end].copy_from_slice(&w.to_le_bytes()[..end - at]);
            }
            for (at, x) in flips {
                b[at] ^= x;
            }
            b.truncate(cut);
            b
        })
}

/// Mutations of a JSON text: values replaced at random keys by hostile values.
fn hostile_json_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::json!(0)),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(u64::MAX)),
        Just(serde_json::json!(1u64 << 40)),
        Just(serde_json::json!(1.5)),
        Just(serde_json::json!(-0.0)),
        Just(serde_json::json!(1e308)),
        Just(serde_json::json!(null)),
        Just(serde_json::json!("x")),
        Just(serde_json::json!([])),
        Just(serde_json::json!({"rope_type": "llama3", "factor": 0})),
        (1u64..100_000).prop_map(|n| serde_json::json!(n)),
    ]
}

const CASES: u32 = 96;

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn safetensors_header_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let path = Path::new("/x/model.safetensors");
        if let Err(e) = llm_convert::model::safetensors::parse_header(&bytes, path) {
            prop_assert!(e.to_string().contains("/x/model.safetensors"), "{e}");
        }
    }

    #[test]
    fn safetensors_header_mutations(bytes in mutated(valid_safetensors())) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        match llm_convert::model::safetensors::SafetensorsWeights::open_files(std::slice::from_ref(&path)) {
            Err(e) => prop_assert!(e.to_string().contains(&path.display().to_string()), "{e}"),
            Ok(w) => {
                use llm_convert::model::WeightSource;
                for name in w.names() {
                    let _ = w.read_f32(&name);
                }
            }
        }
        prop_assert!(LARGEST.load(Ordering::Relaxed) <= ALLOCATION_LIMIT);
    }

    #[test]
    fn shard_index_arbitrary(text in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..128),
        (hostile_json_value(), proptest::collection::vec(prop_oneof![Just('a'), Just('.'), Just('/'), Just('\\')], 0..12).prop_map(String::from_iter)).prop_map(|(v, s)| serde_json::json!({"weight_map": {"t": v, "u": s}}).to_string().into_bytes()),
    ]) {
        let path = Path::new("/x/model.safetensors.index.json");
        if let Err(e) = llm_convert::model::safetensors::ShardIndex::parse(&text, path) {
            prop_assert!(e.to_string().contains("/x/model.safetensors.index.json"), "{e}");
        }
    }

    #[test]
    fn gguf_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut b = 0x4655_4747u32.to_le_bytes().to_vec();
        b.extend(bytes);
        let r = llm_convert::model::gguf_header::check(std::io::Cursor::new(&b), b.len() as u64);
        if r.is_ok() {
            let _ = candle_core::quantized::gguf_file::Content::read(&mut std::io::Cursor::new(&b));
        }
        prop_assert!(LARGEST.load(Ordering::Relaxed) <= ALLOCATION_LIMIT);
    }

    #[test]
    fn gguf_mutations(bytes in mutated(GgufBuilder::llama(0.25).bytes())) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, &bytes).unwrap();
        match llm_convert::model::Model::open(&path) {
            Err(e) => prop_assert!(is_bad_input(&e, &path), "{e:#}"),
            Ok(model) => {
                use llm_convert::model::WeightSource;
                for name in model.weights.names() {
                    let _ = model.weights.read_f32(&name);
                }
            }
        }
        prop_assert!(LARGEST.load(Ordering::Relaxed) <= ALLOCATION_LIMIT);
    }

    #[test]
    fn config_mutations(
        edits in proptest::collection::vec((prop_oneof![
            Just("hidden_size"), Just("num_attention_heads"), Just("num_key_value_heads"),
            Just("head_dim"), Just("num_hidden_layers"), Just("intermediate_size"),
            Just("vocab_size"), Just("max_position_embeddings"), Just("rope_theta"),
            Just("rms_norm_eps"), Just("rope_scaling"), Just("rope_parameters"),
            Just("eos_token_id"), Just("bos_token_id"), Just("sliding_window"),
            Just("scale_emb"), Just("scale_depth"), Just("dim_model_base"), Just("model_type"),
        ], hostile_json_value()), 1..4),
        family in prop_oneof![Just("llama"), Just("qwen2"), Just("qwen3"), Just("minicpm"), Just("mistral")],
    ) {
        let mut v = serde_json::json!({"model_type": family, "hidden_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 256});
        for (k, x) in edits {
            v[k] = x;
        }
        let path = Path::new("/x/config.json");
        match llm_convert::model::ModelConfig::from_json(&v, path) {
            Err(e) => prop_assert!(e.to_string().contains("/x/config.json"), "{e}"),
            Ok(cfg) => {
                prop_assert!(cfg.head_dim % 2 == 0 && cfg.rms_norm_eps.is_finite() && cfg.rope_theta > 0.0);
                // What is derived from it stays small.
                let n = llm_convert::model::layout::expected_tensors(&cfg).len();
                prop_assert!(n < 20_000, "{n} tensors");
            }
        }
    }

    #[test]
    fn bmodel_header_arbitrary_bytes(
        words in proptest::collection::vec(prop_oneof![any::<u32>(), 0u32..256], 0..8),
        tail in proptest::collection::vec(any::<u8>(), 0..256),
        magic in any::<bool>(),
    ) {
        let mut b: Vec<u8> = if magic { 0xFF55_AAEEu32.to_le_bytes().to_vec() } else { vec![] };
        b.extend(words.iter().flat_map(|w| w.to_le_bytes()));
        b.extend(tail);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bmodel");
        std::fs::write(&path, &b).unwrap();
        if let Err(e) = llm_convert::bmodel::check_file(&path) {
            prop_assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        if let Ok(h) = llm_convert::bmodel::Header::parse(&b) {
            let _ = llm_convert::bmodel::summarize(h.flatbuffer(&b));
        }
        prop_assert!(LARGEST.load(Ordering::Relaxed) <= ALLOCATION_LIMIT);
    }
}
