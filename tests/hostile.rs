//! Hostile input, by class (issue 15): every damaged checkpoint, config, flag, output path or
//! bmodel exits 2 naming the file, never panics and never allocates without bound. One test
//! per class (built from the class, not from one file), then property-based tests over the
//! parsers: arbitrary bytes and mutations of valid files.

mod common;
#[path = "hostile/properties.rs"]
mod properties;
#[path = "hostile/support.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::copy_model;
use support::{assert_bad_input, edit_config, reference, run, tensor_locations, GgufBuilder};

/// Refuses any single allocation above this: a parser that sizes a buffer from an unchecked
/// value in the file aborts the test binary instead of passing (or swapping).
pub(crate) const ALLOCATION_LIMIT: usize = 1 << 30;

struct Bounded;

pub(crate) static LARGEST: AtomicUsize = AtomicUsize::new(0);

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
        // Converting refuses too; the flag lets it through.
        let out = tempfile::tempdir().unwrap();
        let m = dir.path().to_str().unwrap();
        let o = out.path().join("o");
        let convert = [
            "-m",
            m,
            "-s",
            "16",
            "-q",
            "bf16",
            "--only_onnx",
            "-o",
            o.to_str().unwrap(),
        ];
        assert_bad_input(run(&convert), dir.path(), &words);
        // The pieces exported before the poisoned one are removed: no half export is left.
        assert_eq!(
            common::count_files(&o, "onnx"),
            0,
            "a failed export left pieces"
        );
        let (code, err) = run(&[&convert[..], &["--allow-non-finite"]].concat());
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
