//! fp8 checkpoints (`quant_method: "fp8"`, block-wise e4m3 weights with `weight_scale_inv`),
//! written by scripts/make_quant_fixtures.py with torch's float8_e4m3fn: read as
//! `f8 · scale_inv` exactly as torch computes it, compiled at 16 bits, verified on the simulator.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::quant::Expected;
use llm_convert::model::Model;
use safetensors::{Dtype, SafeTensors};

const FIXTURE: &str = "fp8_b32x48";

fn fixture(name: &str) -> PathBuf {
    common::quant_fixtures().join(name)
}

fn expected() -> Expected {
    common::quant::expected(&fixture(FIXTURE))
}

/// Our e4m3 decoding gives torch's float8_e4m3fn value for every byte.
#[test]
fn e4m3_bytes_decode_as_torch_does() {
    let text = std::fs::read_to_string(fixture(FIXTURE).join("e4m3_table.json")).unwrap();
    let table: Vec<Option<f32>> = serde_json::from_str(&text).unwrap();
    assert_eq!(table.len(), 256);
    for (b, want) in table.iter().enumerate() {
        let got = llm_convert::model::quant::fp8::e4m3(b as u8);
        match want {
            Some(v) => assert_eq!(got.to_bits(), v.to_bits(), "byte {b:#04x}"),
            None => assert!(got.is_nan(), "byte {b:#04x}: {got}"),
        }
    }
}

/// Every fp8 layer reads as torch's `f8.float() * scale` (bit for bit), and the model equals
/// the float32 checkpoint of the same weights tensor for tensor.
#[test]
fn model_reads_the_exactly_dequantized_weights() {
    let fp8 = Model::open(&fixture(FIXTURE)).unwrap();
    let float_dir = fixture(&format!("{FIXTURE}_float"));
    let float = Model::open(&float_dir).unwrap();
    let bytes = std::fs::read(float_dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut fp8_layers = 0;
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), Dtype::F32);
        let got = fp8.tensor(&name).unwrap();
        assert_eq!(got.dims(), view.shape(), "{name}");
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = float.tensor(&name).unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let same_bits = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same_bits, "{name} differs from the float checkpoint's");
        fp8_layers += usize::from(name.contains("_proj"));
    }
    assert_eq!(fp8_layers, 14, "2 layers x 7 linears");
}

/// `reference` on the fp8 checkpoint equals transformers on the dequantized weights (f32
/// logits within 1e-4, prefill and 16 steps, same greedy tokens).
#[test]
fn reference_equals_transformers_on_the_dequantized_weights() {
    common::quant::assert_reference_matches(FIXTURE, &fixture(FIXTURE));
}

/// A copy of the fixture with its tensors and config edited.
fn edited(
    edit: impl FnOnce(&mut BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>, &mut serde_json::Value),
) -> tempfile::TempDir {
    let src = fixture(FIXTURE);
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: BTreeMap<_, _> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut tensors, &mut cfg);
    let tmp = tempfile::tempdir().unwrap();
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, (d, s, b))| {
            let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
            (k.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &tmp.path().join("model.safetensors")).unwrap();
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    tmp
}

/// `reference` on `dir`: (exit code, greedy tokens or stderr).
fn reference(dir: &Path) -> (i32, String) {
    let exp = expected();
    let out = common::llm_convert(&[
        "reference",
        "-m",
        dir.to_str().unwrap(),
        "--tokens",
        &common::tokens_arg(&exp.prompt),
        "--steps",
        "16",
        "--json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    let code = out.status.code().unwrap_or(-1);
    match code {
        0 => {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            (code, v["generated_ids"].to_string())
        }
        _ => (code, err),
    }
}

/// The block scales matter: the same fp8 bytes with every scale 1 give other tokens.
#[test]
fn scales_change_the_tokens() {
    let ones = edited(|t, _| {
        for (name, (dtype, _, bytes)) in t.iter_mut() {
            if name.ends_with(".weight_scale_inv") {
                assert_eq!(*dtype, Dtype::F32);
                for word in bytes.chunks_exact_mut(4) {
                    word.copy_from_slice(&1f32.to_le_bytes());
                }
            }
        }
    });
    let (code, tokens) = reference(ones.path());
    assert_eq!(code, 0, "{tokens}");
    let want = serde_json::to_string(&expected().tokens).unwrap();
    assert_ne!(tokens, want, "scales ignored, same tokens");
    let (code, tokens) = reference(&fixture(FIXTURE));
    assert_eq!((code, tokens), (0, want));
}

/// Malformed fp8 checkpoints and contradicting flags: exit 2 naming the tensor or key.
#[test]
fn malformed_fp8_checkpoints_exit_2_naming_the_tensor() {
    const SCALE: &str = "model.layers.1.mlp.down_proj.weight_scale_inv";
    let missing = edited(|t, _| {
        t.remove(SCALE);
    });
    let wrong_block = edited(|_, c| {
        c["quantization_config"]["weight_block_size"] = serde_json::json!([48, 32]);
    });
    let no_config = edited(|_, c| {
        c.as_object_mut().unwrap().remove("quantization_config");
    });
    let e5m2 = edited(|_, c| c["quantization_config"]["fmt"] = "e5m2".into());
    let static_acts =
        edited(|_, c| c["quantization_config"]["activation_scheme"] = "static".into());
    for (dir, says) in [
        (&missing, format!("\"{SCALE}\" is missing")),
        (&wrong_block, "weight_scale_inv\" is F32".to_string()),
        (&no_config, "stored as fp8".to_string()),
        (&e5m2, "\"e5m2\" is not supported".to_string()),
        (&static_acts, "activation_scheme \"static\"".to_string()),
    ] {
        let (code, err) = reference(dir.path());
        assert_eq!(code, 2, "{says}: {err}");
        assert!(err.contains(&says), "expected {says:?} in: {err}");
    }
}

/// `-q` omitted converts at the checkpoint's bf16; a W4/W8 `-q` would re-quantize the fp8
/// weights and is refused; the bf16 bmodel passes `verify` on the simulator at bf16 thresholds
/// (every block cosine, tokens = the reference on the dequantized weights).
#[test]
fn fp8_converts_at_bf16_and_verifies() {
    let model = fixture(FIXTURE);
    let out = tempfile::tempdir().unwrap();
    for q in ["w4bf16", "w8bf16"] {
        let o = common::llm_convert(&[
            "-m",
            model.to_str().unwrap(),
            "-s",
            "64",
            "-q",
            q,
            "-c",
            "bm1684x",
            "-o",
            out.path().to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "-q {q}: {err}");
        assert!(err.contains("fp8") && err.contains("-q bf16"), "{err}");
    }
    let converted = common::converted(&model, 64, &[]);
    assert_eq!(converted.manifest["options"]["quantize"], "bf16");
    let exp = expected();
    let o = common::llm_convert(&[
        "verify",
        converted.bmodel.to_str().unwrap(),
        "-m",
        model.to_str().unwrap(),
        "--tokens",
        &common::tokens_arg(&exp.prompt),
        "--steps",
        "4",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}): {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    println!("fp8 bf16 verify: min cosine {}", report["min_cosine"]);
    assert_eq!(o.status.code(), Some(0), "verify failed: {report}");
    let tokens: Vec<u32> = serde_json::from_value(report["tokens"].clone()).unwrap();
    assert_eq!(tokens, exp.tokens[..4]);
}
