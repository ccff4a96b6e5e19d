//! A GGUF converted with `-q` omitted keeps its own quantization per tensor: Q4_0 / Q8_0 block
//! linears go into A16MatMul as the file's integers and scales (exact), other quantized types
//! are requantized onto the nearest A16 width, and the manifest says which per tensor. The
//! GGUFs are written here with candle's llama.cpp quantizers from the llama_tied fixture.

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;
use llm_convert::model::weights::WeightSource;
use llm_convert::model::Model;

const HF_TO_GGUF: [(&str, &str); 9] = [
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// llama.cpp's `permute` of q/k rows (rotate-half pairs to interleaved), which the reader undoes.
fn permute(t: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = t.dims2().unwrap();
    t.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// The llama_tied fixture as a llama GGUF whose block linear `<layer>.<hf module>` is stored as
/// `type_of(layer, module)` (norms F32, the embedding Q8_0).
fn write_gguf(path: &Path, type_of: impl Fn(usize, &str) -> GgmlDType) -> PathBuf {
    let src = Model::open(&common::fixtures().join("llama_tied")).unwrap();
    let c = &src.config;
    let read = |name: &str| src.weights.read_f32(name).unwrap();
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            QTensor::quantize(&read("model.embed_tokens.weight"), GgmlDType::Q8_0).unwrap(),
        ),
        (
            "output_norm.weight".into(),
            QTensor::quantize(&read("model.norm.weight"), GgmlDType::F32).unwrap(),
        ),
    ];
    for layer in 0..c.num_hidden_layers {
        for (hf, gguf) in HF_TO_GGUF {
            let mut t = read(&format!("model.layers.{layer}.{hf}.weight"));
            let ty = match hf.ends_with("norm") {
                true => GgmlDType::F32,
                false => type_of(layer, hf),
            };
            match hf {
                "self_attn.q_proj" => t = permute(&t, c.num_attention_heads),
                "self_attn.k_proj" => t = permute(&t, c.num_key_value_heads),
                _ => {}
            }
            let q = QTensor::quantize(&t, ty).unwrap();
            tensors.push((format!("blk.{layer}.{gguf}.weight"), q));
        }
    }
    let u = |v: usize| Value::U32(v as u32);
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", u(c.hidden_size)),
        ("llama.feed_forward_length", u(c.intermediate_size)),
        ("llama.block_count", u(c.num_hidden_layers)),
        ("llama.attention.head_count", u(c.num_attention_heads)),
        ("llama.attention.head_count_kv", u(c.num_key_value_heads)),
        ("llama.context_length", u(256)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
    path.to_path_buf()
}

/// Every block linear Q4_0 but the attention output and up projections, Q8_0.
fn exact_types(_layer: usize, module: &str) -> GgmlDType {
    match module {
        "self_attn.o_proj" | "mlp.up_proj" => GgmlDType::Q8_0,
        _ => GgmlDType::Q4_0,
    }
}

fn scratch_gguf(name: &str, type_of: impl Fn(usize, &str) -> GgmlDType) -> PathBuf {
    let dir = common::scratch().join("gguf_quant");
    std::fs::create_dir_all(&dir).unwrap();
    write_gguf(&dir.join(name), type_of)
}

/// What the A16 parts of a passed-through layer hold is the file's blocks exactly: dequantized
/// from the parts they give the weight the float read gives (candle's llama.cpp decoder, q/k
/// rows un-permuted), bit for bit; a requantized layer's stay within half its step of it.
#[test]
fn a16_parts_hold_the_files_integers() {
    let path = scratch_gguf("parts.gguf", |layer, module| match (layer, module) {
        (1, "mlp.down_proj") => GgmlDType::Q6K,
        (0, "mlp.down_proj") => GgmlDType::Q4K,
        _ => exact_types(layer, module),
    });
    let m = Model::open(&path).unwrap();
    let w = &m.weights;
    let read = |name: &str| -> Vec<f32> {
        w.read_f32(name)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let linears = &m.config.gguf_linears;
    assert_eq!(linears.len(), 14, "{linears:?}");
    for (prefix, f) in linears {
        let weight = read(&format!("{prefix}.weight"));
        let q = read(&format!("{prefix}.a16_qweight"));
        let s = read(&format!("{prefix}.a16_scales"));
        let z = read(&format!("{prefix}.a16_qzeros"));
        let values: Vec<f32> = match f.bits {
            4 => q
                .iter()
                .flat_map(|&b| [(b as u8 & 0x0f) as f32, (b as u8 >> 4) as f32])
                .collect(),
            _ => q.clone(),
        };
        assert_eq!(values.len(), weight.len(), "{prefix}");
        let mut worst = 0f32;
        for (i, (&v, &want)) in values.iter().zip(&weight).enumerate() {
            let g = i / 32;
            let got = (v - z[g]) * s[g];
            let err = (got - want).abs();
            let exact = serde_json::to_value(f).unwrap()["handling"] == "exact";
            if exact {
                assert_eq!(got, want, "{prefix} element {i}");
            } else {
                assert!(
                    err <= s[g] * 0.5 + 1e-6,
                    "{prefix} element {i}: {got} vs {want}"
                );
            }
            worst = worst.max(err);
        }
        println!("{prefix}: {f:?}, max |dequantized parts - weight| {worst:e}");
    }
    let f = |p: &str| serde_json::to_value(linears[p]).unwrap();
    assert_eq!(f("model.layers.0.self_attn.q_proj")["handling"], "exact");
    assert_eq!(f("model.layers.0.self_attn.q_proj")["bits"], 4);
    assert_eq!(f("model.layers.0.self_attn.o_proj")["bits"], 8);
    assert_eq!(f("model.layers.0.mlp.down_proj")["handling"], "requantized");
    assert_eq!(f("model.layers.0.mlp.down_proj")["bits"], 8);
    assert_eq!(f("model.layers.1.mlp.down_proj")["bits"], 8);
}

fn verify(bmodel: &Path, model: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec![
        "verify",
        bmodel.to_str().unwrap(),
        "-m",
        model.to_str().unwrap(),
        "--tokens",
        "1,17,42,99,7,300,5,12",
        "--steps",
        "6",
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = common::llm_convert(&args);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}): {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap_or(-1), report)
}

/// `-q` omitted on a GGUF of Q4_0 / Q8_0 blocks: the blocks' linears are A16MatMuls on the
/// file's integers (4- and 8-bit) at f16, and the bmodel passes `verify` on the simulator at
/// 16-bit thresholds against the dequantized file. Control: `-q w4f16` (TPU-MLIR requantizes
/// every layer, the Q8_0 ones onto 4 bits) is further from the file's model.
#[test]
fn q4_0_and_q8_0_blocks_pass_through_and_verify_at_16_bit_limits() {
    common::toolchain();
    let gguf = scratch_gguf("exact.gguf", exact_types);
    let kept = common::converted(&gguf, 64, &[]);
    let m = &kept.manifest;
    assert_eq!(m["options"]["quantize"], "f16");
    assert_eq!(m["options"]["gguf_own_quant"], true);
    let linears = m["gguf_linears"].as_object().unwrap();
    assert_eq!(linears.len(), 14);
    assert!(linears.values().all(|f| f["handling"] == "exact"));
    let (code, report) = verify(&kept.bmodel, &gguf, &[]);
    println!("kept: min cosine {}", report["min_cosine"]);
    assert_eq!(code, 0, "verify at 16-bit limits failed: {report}");
    assert_eq!(report["thresholds"]["min_cosine"], 0.99);

    let requantized = common::converted(&gguf, 64, &["-q", "w4f16"]);
    assert!(requantized.manifest.get("gguf_linears").is_none());
    let (_, control) = verify(&requantized.bmodel, &gguf, &["-q", "f16"]);
    println!("-q w4f16: min cosine {}", control["min_cosine"]);
    let cos = |r: &serde_json::Value| r["min_cosine"].as_f64().unwrap();
    assert!(
        cos(&control) < cos(&report),
        "requantizing every layer should move the bmodel away from the file's model: {} vs {}",
        cos(&control),
        cos(&report)
    );
}

/// The plan of a GGUF mixing types: the summary line names each type's fate; `--backend onnx`
/// (no A16MatMul) and an explicit `-q` keep today's uniform requantization.
#[test]
fn mixed_gguf_plan_says_what_each_type_becomes() {
    let gguf = scratch_gguf("mixed.gguf", |layer, module| match (layer, module) {
        (_, "mlp.down_proj") => GgmlDType::Q6K,
        (1, "mlp.gate_proj") => GgmlDType::Q4_1,
        _ => exact_types(layer, module),
    });
    let dry = |extra: &[&str]| {
        let mut args = vec!["-m", gguf.to_str().unwrap(), "-s", "64", "--dry_run"];
        args.extend_from_slice(extra);
        let o = common::llm_convert(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (out, err) = dry(&[]);
    for says in [
        "7 Q4_0 -> 4-bit as stored",
        "4 Q8_0 -> 8-bit as stored",
        "2 Q6K -> 8-bit requantized",
        "1 Q4_1 -> 4-bit requantized",
    ] {
        assert!(err.contains(says), "expected {says:?} in: {err}");
    }
    assert!(out.contains("--quantize f16"), "{out}");
    for extra in [&["-q", "w4bf16"][..], &["--backend", "onnx"]] {
        let (out, err) = dry(extra);
        assert!(!err.contains("keeping the GGUF"), "{extra:?}: {err}");
        assert!(out.contains("--quantize w4bf16"), "{extra:?}: {out}");
    }
}

/// A Q6_K down projection beside Q4_0 / Q8_0 ones: requantized onto 8 bits per tensor, the
/// others still the file's own; the bmodel stays within 16-bit reach of the file's model
/// (8-bit steps are ~1/40 of Q6_K's), which `verify` checks at block cosine 0.999.
#[test]
fn q6_k_requantized_onto_8_bits_verifies() {
    common::toolchain();
    let gguf = scratch_gguf("q6k.gguf", |layer, module| match module {
        "mlp.down_proj" => GgmlDType::Q6K,
        _ => exact_types(layer, module),
    });
    let kept = common::converted(&gguf, 64, &[]);
    let linears = kept.manifest["gguf_linears"].as_object().unwrap();
    let down = &linears["model.layers.1.mlp.down_proj"];
    assert_eq!(
        (down["handling"].as_str(), down["bits"].as_u64()),
        (Some("requantized"), Some(8))
    );
    let (code, report) = verify(&kept.bmodel, &gguf, &["--min-cosine", "0.999"]);
    println!("Q6_K on 8 bits: min cosine {}", report["min_cosine"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["thresholds"]["min_agreement"], 0.75,
        "w8 limits for a requantized layer"
    );
}
