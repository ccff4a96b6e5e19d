//! Pre-quantized checkpoints (GPTQ, AWQ GEMM, compressed-tensors pack-quantized) written by
//! scripts/make_quant_fixtures.py: the
//! packing checked by a decoder of our own written from the formats' documentation (not the
//! code under test), the model's dequantized view and the reference against transformers on
//! the dequantized weights, and malformed checkpoints refused with exit 2 naming the tensor.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::quant::{expected, Expected};
use llm_convert::model::Model;
use safetensors::{Dtype, SafeTensors};

const FIXTURES: [&str; 7] = [
    "gptq_sym_g128",
    "gptq_asym_desc_g32",
    "gptq8_asym_g64",
    "awq_g64",
    "ct_asym_g64",
    "ct_sym_g32",
    "ct8_asym_g32",
];

fn fixture(name: &str) -> std::path::PathBuf {
    common::quant_fixtures().join(name)
}

/// A stored tensor as raw bytes, dtype and shape.
type Raw = (Dtype, Vec<usize>, Vec<u8>);

fn load(path: &Path) -> BTreeMap<String, Raw> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

fn save(path: &Path, tensors: &BTreeMap<String, Raw>) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, (d, s, b))| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn i32s(raw: &Raw) -> Vec<i32> {
    assert_eq!(raw.0, Dtype::I32);
    raw.2
        .chunks(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn floats(raw: &Raw) -> Vec<f32> {
    match raw.0 {
        Dtype::F32 => raw
            .2
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::F16 => raw
            .2
            .chunks(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .2
            .chunks(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        d => panic!("{d:?}"),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Method {
    Gptq,
    Awq,
    /// compressed-tensors pack-quantized.
    Ct,
}

fn method_of(cfg: &serde_json::Value) -> Method {
    match cfg["quantization_config"]["quant_method"].as_str().unwrap() {
        "gptq" => Method::Gptq,
        "awq" => Method::Awq,
        "compressed-tensors" => Method::Ct,
        m => panic!("{m}"),
    }
}

fn read_config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// The documented layouts, element by element: AutoGPTQ packs `qweight[k / 8, n]` with input
/// feature k at bit `4 (k % 8)`; `qzeros[g, n / 8]` with n at bit `4 (n % 8)`, storing z - 1;
/// 8-bit GPTQ and compressed-tensors pack four values per word the same way (value i at bit
/// 8i; compressed-tensors' offset is then 128). AutoAWQ GEMM packs `qweight[k, n / 8]` and `qzeros[g, n / 8]` with n at bit
/// `4 · [0, 4, 1, 5, 2, 6, 3, 7][n % 8]`; scales `[g, n]`; the group of k is `g_idx[k]`
/// (GPTQ) or `k / group_size`. compressed-tensors (`pack_to_int32`) packs
/// `weight_packed[n, k / 8]` with k at bit `4 (k % 8)` and `weight_zero_point[n / 8, g]` with
/// n at bit `4 (n % 8)`, each holding the signed value plus 8 (sym: no zero point, i.e. 0);
/// `weight_scale[n, g]`.
fn decode_independently(
    t: &BTreeMap<String, Raw>,
    prefix: &str,
    method: Method,
    group: usize,
    bits: usize,
) -> (Vec<usize>, Vec<f32>) {
    let get = |s: &str| &t[&format!("{prefix}.{s}")];
    let nib = |word: i32, pos: usize| ((word as u32) >> (4 * pos)) & 0xF;
    // `bits`-bit values: 32 / bits per word, value i at bits·i (the 4-bit case is `nib`).
    let per = 32 / bits;
    let val = |word: i32, pos: usize| ((word as u32) >> (bits * pos)) & ((1 << bits) - 1);
    if method == Method::Ct {
        let qw = i32s(get("weight_packed"));
        let scales = floats(get("weight_scale"));
        let (n, k) = (get("weight_packed").1[0], get("weight_packed").1[1] * per);
        assert_eq!(i32s(get("weight_shape")), [n as i32, k as i32]);
        let groups = k / group;
        let zp = t.get(&format!("{prefix}.weight_zero_point")).map(i32s);
        let offset = 1i32 << (bits - 1);
        let mut w = vec![0f32; n * k];
        for row in 0..n {
            for col in 0..k {
                let g = col / group;
                let q = val(qw[row * (k / per) + col / per], col % per) as i32 - offset;
                let z = zp.as_ref().map_or(0, |z| {
                    val(z[(row / per) * groups + g], row % per) as i32 - offset
                });
                w[row * k + col] = (q - z) as f32 * scales[row * groups + g];
            }
        }
        return (vec![n, k], w);
    }
    let awq = method == Method::Awq;
    let qw = i32s(get("qweight"));
    let qz = i32s(get("qzeros"));
    let scales = floats(get("scales"));
    let n = get("scales").1[1];
    let awq_pos = |n: usize| [0, 4, 1, 5, 2, 6, 3, 7][n % 8];
    let k = if awq {
        get("qweight").1[0]
    } else {
        get("qweight").1[0] * per
    };
    let g_idx: Vec<usize> = match t.get(&format!("{prefix}.g_idx")) {
        Some(g) => i32s(g).iter().map(|&v| v as usize).collect(),
        None => (0..k).map(|i| i / group).collect(),
    };
    let mut w = vec![0f32; n * k];
    for row in 0..n {
        for col in 0..k {
            let g = g_idx[col];
            let (q, z) = if awq {
                (
                    nib(qw[col * (n / 8) + row / 8], awq_pos(row)),
                    nib(qz[g * (n / 8) + row / 8], awq_pos(row)),
                )
            } else {
                // v1 zero points are stored minus one, wrapping within the bits.
                let z = (val(qz[g * (n / per) + row / per], row % per) + 1) % (1 << bits);
                (val(qw[(col / per) * n + row], col % per), z)
            };
            w[row * k + col] = (q as f32 - z as f32) * scales[g * n + row];
        }
    }
    (vec![n, k], w)
}

fn quantized_layers(t: &BTreeMap<String, Raw>) -> Vec<String> {
    t.keys()
        .filter_map(|k| {
            k.strip_suffix(".qweight")
                .or_else(|| k.strip_suffix(".weight_packed"))
                .map(str::to_string)
        })
        .collect()
}

/// compressed-tensors' weights group's group_size, or the others' `group_size`.
fn group_size(cfg: &serde_json::Value) -> usize {
    let qc = &cfg["quantization_config"];
    let g = &qc["config_groups"]["group_0"]["weights"]["group_size"];
    g.as_u64().or_else(|| qc["group_size"].as_u64()).unwrap() as usize
}

#[test]
fn packing_matches_the_documented_layout() {
    for name in FIXTURES {
        let dir = fixture(name);
        let stored = load(&dir.join("model.safetensors"));
        let want = load(&dir.join("dequantized.safetensors"));
        let cfg = read_config(&dir);
        let group = group_size(&cfg);
        let layers = quantized_layers(&stored);
        assert_eq!(layers.len(), 14, "{name}");
        for prefix in &layers {
            let qc = &cfg["quantization_config"];
            let bits = qc["bits"]
                .as_u64()
                .or_else(|| qc["config_groups"]["group_0"]["weights"]["num_bits"].as_u64())
                .unwrap() as usize;
            let (shape, w) = decode_independently(&stored, prefix, method_of(&cfg), group, bits);
            let expect = &want[&format!("{prefix}.weight")];
            assert_eq!(shape, expect.1, "{name} {prefix}");
            assert_eq!(w, floats(expect), "{name} {prefix}");
        }
        // desc_act's g_idx is not the trivial k / group_size (the permutation is exercised).
        if name.contains("desc") {
            let g = i32s(&stored["model.layers.0.mlp.down_proj.g_idx"]);
            assert!(g.iter().enumerate().any(|(k, &v)| v as usize != k / group));
        }
    }
}

#[test]
fn model_reads_the_exactly_dequantized_weights() {
    for name in FIXTURES {
        let dir = fixture(name);
        let model = Model::open(&dir).unwrap();
        let want = load(&dir.join("dequantized.safetensors"));
        for (k, raw) in &want {
            let got = model.tensor(k).unwrap();
            assert_eq!(got.dims(), raw.1.as_slice(), "{name} {k}");
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, floats(raw), "{name} {k}");
        }
        // Float modules are untouched.
        assert!(model.tensor("lm_head.weight").is_ok());
    }
}

/// `verify BMODEL` against the fixture's reference on its prompt, 4 steps, at the thresholds
/// of 16-bit `dtype` (`f16` / `bf16`).
fn verify_at(
    bmodel: &std::path::Path,
    dir: &std::path::Path,
    exp: &Expected,
    dtype: &str,
) -> std::process::Output {
    common::llm_convert(&[
        "verify",
        bmodel.to_str().unwrap(),
        "-m",
        dir.to_str().unwrap(),
        "--tokens",
        &common::tokens_arg(&exp.prompt),
        "--steps",
        "4",
        "-q",
        dtype,
        "--json",
    ])
}

#[test]
fn reference_equals_transformers_on_the_dequantized_weights() {
    for name in FIXTURES {
        common::quant::assert_reference_matches(name, &fixture(name));
    }
}

/// `reference` on a copy of fixture `name` edited by `edit`: (exit code, stderr).
fn broken(
    name: &str,
    edit: impl FnOnce(&Path, &mut BTreeMap<String, Raw>, &mut serde_json::Value),
) -> (i32, String) {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture(name);
    let mut tensors = load(&src.join("model.safetensors"));
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(tmp.path(), &mut tensors, &mut cfg);
    save(&tmp.path().join("model.safetensors"), &tensors);
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let out = common::llm_convert(&[
        "reference",
        "-m",
        tmp.path().to_str().unwrap(),
        "--tokens",
        "1,2,3",
        "--steps",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    (out.status.code().unwrap_or(-1), err)
}

#[test]
fn malformed_checkpoints_exit_2_naming_the_tensor() {
    let scales = "model.layers.1.mlp.up_proj.scales";
    let (code, err) = broken("gptq_sym_g128", |_, t, _| {
        t.remove(scales);
    });
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(scales) && err.contains("is missing"), "{err}");

    // qzeros with one group too few for group_size 64.
    let zeros = "model.layers.0.self_attn.k_proj.qzeros";
    let (code, err) = broken("awq_g64", |_, t, _| {
        let z = t.get_mut(zeros).unwrap();
        z.1[0] -= 1;
        let len = z.1.iter().product::<usize>() * 4;
        z.2.truncate(len);
    });
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(zeros) && err.contains("implies"), "{err}");

    // A group_size the packed shapes contradict (scales hold 4 groups of 32 rows, not 2 of 64).
    let (code, err) = broken("gptq_asym_desc_g32", |_, _, c| {
        c["quantization_config"]["group_size"] = 64.into();
    });
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(".scales\" has shape") && err.contains("group_size 64"),
        "{err}"
    );

    // g_idx naming a group that does not exist.
    let g = "model.layers.0.mlp.down_proj.g_idx";
    let (code, err) = broken("gptq_asym_desc_g32", |_, t, _| {
        t.get_mut(g).unwrap().2[..4].copy_from_slice(&99i32.to_le_bytes());
    });
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(g) && err.contains("group 99"), "{err}");

    for (method, says) in [
        (
            serde_json::json!({"quant_method": "bitnet", "bits": 4}),
            "unknown quant_method \"bitnet\"",
        ),
        (
            serde_json::json!({"quant_method": "awq", "bits": 8, "group_size": 64, "version": "gemm"}),
            "8-bit awq",
        ),
    ] {
        let (code, err) = broken("awq_g64", |_, _, c| {
            c["quantization_config"] = method;
        });
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(says) && err.contains("config.json"), "{err}");
    }
}

/// An `.npy` member of an npz, parsed here: (descr, shape, data bytes).
fn npy_member(npz: &Path, key: &str) -> (String, Vec<usize>, Vec<u8>) {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(npz).unwrap()).unwrap();
    let mut bytes = Vec::new();
    zip.by_name(&format!("{key}.npy"))
        .unwrap_or_else(|e| panic!("{key}: {e}"))
        .read_to_end(&mut bytes)
        .unwrap();
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    let field = |name: &str| {
        let at = header.find(name).unwrap() + name.len();
        header[at..].trim_start_matches([':', ' ']).to_string()
    };
    let descr = field("'descr'")[1..]
        .split('\'')
        .next()
        .unwrap()
        .to_string();
    let shape_text = field("'shape'");
    let shape = shape_text[1..shape_text.find(')').unwrap()]
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    (descr, shape, bytes[10 + hlen..].to_vec())
}

/// A layer's stored integers as A16MatMul computes with them, `(q - z) · s`, decoded from
/// the documented layouts (see [`decode_independently`]): (N, K, groups, q [N, K], z [N, groups],
/// s [N, groups]). GPTQ's zero is the stored one plus 1; compressed-tensors' q and z keep their
/// +8 offset (it cancels), a symmetric layer's zero being 8.
#[allow(clippy::type_complexity)]
fn stored_integers(
    t: &BTreeMap<String, Raw>,
    prefix: &str,
    method: Method,
) -> (usize, usize, usize, Vec<u8>, Vec<u8>, Vec<f32>) {
    let get = |s: &str| &t[&format!("{prefix}.{s}")];
    let nib = |word: i32, pos: usize| (((word as u32) >> (4 * pos)) & 0xF) as u8;
    let awq_pos = |n: usize| [0, 4, 1, 5, 2, 6, 3, 7][n % 8];
    let (n, k, groups) = match method {
        Method::Ct => {
            let (n, k) = (get("weight_packed").1[0], get("weight_packed").1[1] * 8);
            (n, k, get("weight_scale").1[1])
        }
        Method::Awq => (get("scales").1[1], get("qweight").1[0], get("scales").1[0]),
        Method::Gptq => (
            get("scales").1[1],
            get("qweight").1[0] * 8,
            get("scales").1[0],
        ),
    };
    let mut q = vec![0u8; n * k];
    let mut z = vec![0u8; n * groups];
    let mut s = vec![0f32; n * groups];
    if method == Method::Ct {
        let qw = i32s(get("weight_packed"));
        let zp = t.get(&format!("{prefix}.weight_zero_point")).map(i32s);
        let sc = floats(get("weight_scale"));
        for row in 0..n {
            for col in 0..k {
                q[row * k + col] = nib(qw[row * (k / 8) + col / 8], col % 8);
            }
            for g in 0..groups {
                z[row * groups + g] = zp
                    .as_ref()
                    .map_or(8, |zp| nib(zp[(row / 8) * groups + g], row % 8));
                s[row * groups + g] = sc[row * groups + g];
            }
        }
        return (n, k, groups, q, z, s);
    }
    let awq = method == Method::Awq;
    let (qw, qz, sc) = (
        i32s(get("qweight")),
        i32s(get("qzeros")),
        floats(get("scales")),
    );
    for row in 0..n {
        for col in 0..k {
            q[row * k + col] = if awq {
                nib(qw[col * (n / 8) + row / 8], awq_pos(row))
            } else {
                nib(qw[(col / 8) * n + row], col % 8)
            };
        }
        for g in 0..groups {
            z[row * groups + g] = if awq {
                nib(qz[g * (n / 8) + row / 8], awq_pos(row))
            } else {
                nib(qz[g * (n / 8) + row / 8], row % 8) + 1
            };
            s[row * groups + g] = sc[g * n + row];
        }
    }
    (n, k, groups, q, z, s)
}

/// The native backend's block_0 npz holds the checkpoint's own integers: A16MatMul's packed
/// weight is the checkpoint's 4-bit values two per byte (even input feature low), its zero
/// points and scales the checkpoint's, decoded here independently of `model::quant`.
#[test]
fn native_block_npz_holds_the_checkpoint_integers() {
    use llm_convert::arch::{self, PieceOptions};
    for name in ["gptq_sym_g128", "awq_g64", "ct_asym_g64", "ct_sym_g32"] {
        let dir = fixture(name);
        let model = Model::open(&dir).unwrap();
        let opts = PieceOptions::new(64, None).unwrap();
        let piece = arch::pieces(&model.config, &opts)
            .into_iter()
            .find(|p| p.name() == "block_0")
            .unwrap();
        let graph = arch::build(piece, &model.config, &opts);
        let out = tempfile::tempdir().unwrap();
        let origin =
            llm_convert::native::origin::write_origin(&graph, &model.weights, out.path(), None)
                .unwrap();
        let mlir = std::fs::read_to_string(&origin.mlir).unwrap();
        assert_eq!(mlir.matches("\"top.A16MatMul\"").count(), 7, "{name}");
        assert!(
            !mlir.contains("\"top.MatMul\"(%1, %"),
            "{name}: no float linear"
        );

        let stored = load(&dir.join("model.safetensors"));
        let method = method_of(&read_config(&dir));
        for lin in ["self_attn.q_proj", "mlp.down_proj"] {
            let prefix = format!("model.layers.0.{lin}");
            let (n, k, groups, q, z, scale) = stored_integers(&stored, &prefix, method);
            let (descr, shape, bytes) = npy_member(&origin.npz, &format!("{prefix}.a16_qweight"));
            assert_eq!(
                (descr.as_str(), shape.as_slice()),
                ("|u1", &[n, k / 2][..]),
                "{name} {lin}"
            );
            for row in 0..n {
                for j in 0..k / 2 {
                    let b = bytes[row * k / 2 + j];
                    assert_eq!(
                        (b & 0xF, b >> 4),
                        (q[row * k + 2 * j], q[row * k + 2 * j + 1]),
                        "{name} {lin} [{row}, {j}]"
                    );
                }
            }
            let (descr, shape, zeros) = npy_member(&origin.npz, &format!("{prefix}.a16_qzeros"));
            assert_eq!(
                (descr.as_str(), shape.as_slice()),
                ("|u1", &[n, groups][..])
            );
            let (_, _, s_bytes) = npy_member(&origin.npz, &format!("{prefix}.a16_scales"));
            for row in 0..n {
                for g in 0..groups {
                    let at = row * groups + g;
                    assert_eq!(zeros[at], z[at], "{name} {lin} zero [{row}, {g}]");
                    let s = f32::from_le_bytes(s_bytes[4 * at..4 * at + 4].try_into().unwrap());
                    assert_eq!(s, scale[at], "{name} {lin} scale [{row}, {g}]");
                }
            }
        }
    }
}

/// `convert` of what the native backend cannot express yet, or with a -q that contradicts
/// the checkpoint: exit 2 saying why.
#[test]
fn convert_refuses_what_it_cannot_keep_exact() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("o");
    let cache = out.path().join("cache");
    let run = |model: &Path, extra: &[&str]| {
        let mut args = vec![
            "-m",
            model.to_str().unwrap(),
            "-s",
            "64",
            "-o",
            o.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = common::llm_convert(&args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!err.contains("panicked"), "{err}");
        (out.status.code().unwrap_or(-1), err)
    };
    let (code, err) = run(&fixture("awq_g64"), &["-q", "bf16"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("-q bf16 contradicts the checkpoint"), "{err}");
    // An 8-bit checkpoint's integers do not fit a 4-bit compile.
    let (code, err) = run(&fixture("gptq8_asym_g64"), &["-q", "w4bf16"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("-q w4bf16 contradicts the checkpoint: it is 8-bit"),
        "{err}"
    );
    let (code, err) = run(&fixture("awq_g64"), &["-g", "128"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("-g 128 contradicts the checkpoint's quantization_config group_size 64"),
        "{err}"
    );
    let (code, err) = run(&fixture("gptq_sym_g128"), &["--backend", "onnx"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ONNX cannot express"), "{err}");
    let awq = fixture("awq_g64");
    let export = common::llm_convert(&[
        "export-onnx",
        "-m",
        awq.to_str().unwrap(),
        "-s",
        "64",
        "-o",
        o.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&export.stderr);
    assert_eq!(export.status.code(), Some(2), "{err}");
    assert!(
        err.contains("ONNX cannot express") && err.contains("export-onnx"),
        "{err}"
    );
    // A g_idx out of group order where the config says desc_act false: the graph would not
    // gather x into that order.
    let copy = tempfile::tempdir().unwrap();
    let src = fixture("gptq_asym_desc_g32");
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(src.join(f), copy.path().join(f)).unwrap();
    }
    let cfg_path = copy.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["quantization_config"]["desc_act"] = false.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let (code, err) = run(copy.path(), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(".g_idx\" groups the input features out of order but desc_act is false"),
        "{err}"
    );
}

/// Fixture `name` converted with `-q` omitted, which must pick `own`, and its bmodel verified
/// at `dtype`'s thresholds (passing): the expectation, verify's report and its min cosine.
fn converted_and_verified(
    name: &str,
    own: &str,
    dtype: &str,
) -> (Expected, serde_json::Value, f64) {
    let dir = fixture(name);
    let c = common::converted(&dir, 64, &[]);
    assert_eq!(c.manifest["options"]["quantize"], own, "{name}");
    let exp = expected(&dir);
    let out = verify_at(&c.bmodel, &dir, &exp, dtype);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}: verify failed\n{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cos = report["min_cosine"].as_f64().unwrap();
    println!(
        "{name}: min block cosine {cos:.7}, tokens {}",
        report["tokens"]
    );
    assert_eq!(report["pass"], true, "{name}: {report}");
    (exp, report, cos)
}

/// A GPTQ (qwen2, biases, sym, g128), a GPTQ desc_act (llama, asym, g32, permuted g_idx:
/// its rows reordered into group order and x gathered the same way), an 8-bit GPTQ (qwen2,
/// asym, g64: an 8-bit A16MatMul) and an AWQ (llama, asym,
/// g64) checkpoint convert on the real toolchain and the bmodel matches the exactly dequantized reference at f16 thresholds
/// (not w4 ones), with transformers' tokens on the dequantized weights. (That the blocks get
/// the checkpoint's own integers is shown by `native_block_npz_holds_the_checkpoint_integers`.)
#[test]
fn gptq_and_awq_convert_and_verify_at_f16_thresholds() {
    for name in [
        "gptq_sym_g128",
        "gptq_asym_desc_g32",
        "gptq8_asym_g64",
        "awq_g64",
    ] {
        let own = if name.starts_with("gptq8") {
            "w8f16"
        } else {
            "w4f16"
        };
        let (exp, report, cos) = converted_and_verified(name, own, "f16");
        // f16 rounding of the activations only.
        assert!(cos > 0.9999, "{name}: min cosine {cos}");
        let tokens: Vec<u32> = serde_json::from_value(report["tokens"].clone()).unwrap();
        assert_eq!(
            tokens,
            exp.tokens[..4],
            "{name}: tokens differ from transformers'"
        );
    }
}

/// TPU-MLIR's own llm_convert.py reads the same tiny GPTQ (4- and 8-bit) and AWQ checkpoints (its own
/// unpacking: a check of the fixtures' packing by a third reader) and its bmodels run in our
/// runner with the tokens ours give.
#[test]
fn llm_convert_py_reads_the_same_checkpoints_with_the_same_tokens() {
    for (name, q) in [
        ("gptq_sym_g128", "w4f16"),
        ("gptq8_asym_g64", "w8f16"),
        ("awq_g64", "w4f16"),
    ] {
        let dir = fixture(name);
        let tmp = tempfile::tempdir().unwrap();
        let theirs = common::llm_convert_py(
            &dir,
            &tmp.path().join("theirs"),
            &["-s", "64", "-q", q, "-c", "bm1684x"],
        );
        let exp = expected(&dir);
        let out = verify_at(&theirs, &dir, &exp, "f16");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{name}: {}", String::from_utf8_lossy(&out.stderr)));
        let cos = report["min_cosine"].as_f64().unwrap();
        println!(
            "{name}: llm_convert.py's bmodel: min block cosine {cos:.7}, tokens {}",
            report["tokens"]
        );
        let tokens: Vec<u32> = serde_json::from_value(report["tokens"].clone()).unwrap();
        assert_eq!(
            tokens,
            exp.tokens[..4],
            "{name}: llm_convert.py's tokens differ"
        );
        assert_eq!(report["pass"], true, "{name}: {report}");
    }
}

/// A compressed-tensors pack-quantized checkpoint (qwen2, bf16, asym, g64, lm_head ignored)
/// converts as w4bf16 on the real toolchain (A16MatMul on its integers, as
/// `native_block_npz_holds_the_checkpoint_integers` shows), an 8-bit one (llama, asym, g32) as
/// w8bf16 (an 8-bit A16MatMul), and each bmodel matches the exactly dequantized reference at
/// bf16 thresholds, with transformers' tokens (the 8-bit one's 4th is a bf16 near tie).
#[test]
fn compressed_tensors_converts_and_verifies_at_bf16_thresholds() {
    for (name, own) in [("ct_asym_g64", "w4bf16"), ("ct8_asym_g32", "w8bf16")] {
        let (exp, report, cos) = converted_and_verified(name, own, "bf16");
        // bf16 rounding of the activations only (a w4 re-quantization sits near 0.99 or below).
        assert!(cos > 0.999, "{name}: min cosine {cos}");
        // transformers' tokens, up to a step where the bf16 bmodel picks the runner-up of a
        // near tie (verify's tie margin; free-running tokens part after it).
        let tokens: Vec<u32> = serde_json::from_value(report["tokens"].clone()).unwrap();
        let ties: Vec<usize> = serde_json::from_value(report["near_ties"].clone()).unwrap();
        if let Some(step) = (0..4).find(|&i| tokens[i] != exp.tokens[i]) {
            assert!(
                ties.contains(&step),
                "{name}: token {step} differs from transformers' and is no near tie: {tokens:?} vs {:?}",
                &exp.tokens[..4]
            );
        }
    }
}

#[test]
fn malformed_compressed_tensors_exit_2_naming_the_tensor() {
    let scale = "model.layers.1.mlp.up_proj.weight_scale";
    let (code, err) = broken("ct_asym_g64", |_, t, _| {
        t.remove(scale);
    });
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(scale) && err.contains("is missing"), "{err}");

    // Zero points packed along K instead of N: [N, G/8]-ish, not [N/8, G].
    let zp = "model.layers.0.self_attn.o_proj.weight_zero_point";
    let (code, err) = broken("ct_asym_g64", |_, t, _| {
        let z = t.get_mut(zp).unwrap();
        z.1 = vec![z.1[1], z.1[0]];
    });
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(zp) && err.contains("implies"), "{err}");

    // weight_shape contradicting the packed size.
    let ws = "model.layers.0.mlp.gate_proj.weight_shape";
    let (code, err) = broken("ct_asym_g64", |_, t, _| {
        t.get_mut(ws).unwrap().2[4..8].copy_from_slice(&100i32.to_le_bytes());
    });
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(ws) && err.contains("100"), "{err}");

    // A symmetric config over asymmetric tensors.
    let (code, err) = broken("ct_asym_g64", |_, _, c| {
        c["quantization_config"]["config_groups"]["group_0"]["weights"]["symmetric"] = true.into();
    });
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(".weight_zero_point\" is present but the config group is symmetric"),
        "{err}"
    );

    // What cannot be exact is refused by name.
    let (code, err) = broken("ct_sym_g32", |_, _, c| {
        c["quantization_config"]["config_groups"]["group_0"]["input_activations"] =
            serde_json::json!({"num_bits": 8, "type": "int"});
    });
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("input_activations is set"), "{err}");
}
