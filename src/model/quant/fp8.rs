//! fp8 checkpoints (`quant_method: "fp8"`, transformers' FineGrainedFP8 layout: DeepSeek-V3,
//! Qwen3-FP8, …): each quantized linear stores `weight` as F8_E4M3 `[N, K]` and
//! `weight_scale_inv` `[ceil(N/bn), ceil(K/bk)]` for blocks of `weight_block_size = [bn, bk]`;
//! the weight is `w[n, k] = f8[n, k] · weight_scale_inv[n/bn, k/bk]`. BM1684X has no fp8
//! matmul (TPU-MLIR's `top.Fp8MatMul` targets other chips), so the layers are read here as
//! that product, in f32 as torch computes it, and compile at the model's 16-bit dtype: no
//! integer re-quantization, and activations stay 16-bit (the checkpoint's dynamic fp8
//! activation quantization is a GPU kernel detail, not part of the weights).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::error::InputError;
use crate::model::fingerprint::{self, Fingerprint};
use crate::model::weights::{StoredDtype, TensorMeta, WeightSource};

/// What `quantization_config` says of an fp8 checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fp8Config {
    /// `weight_block_size`: output rows and input features per scale.
    pub block: [usize; 2],
}

/// The OCP e4m3fn value of byte `b` (sign, 4 exponent bits biased by 7, 3 mantissa bits; no
/// infinities, `S.1111.111` is NaN).
pub fn e4m3(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((b >> 3) & 0x0f);
    let man = f32::from(b & 0x07);
    let magnitude = match (exp, b & 0x7f) {
        (_, 0x7f) => f32::NAN,
        (0, _) => man / 8.0 * 2f32.powi(-6),
        _ => (1.0 + man / 8.0) * 2f32.powi(exp - 7),
    };
    sign * magnitude
}

impl Fp8Config {
    /// `qc` if it is an fp8 `quantization_config` (`config` names errors), else `None`.
    pub fn parse(qc: &Value, config: &Path) -> Result<Option<Fp8Config>, InputError> {
        if qc.get("quant_method").and_then(Value::as_str) != Some("fp8") {
            return Ok(None);
        }
        let bad = |problem: String, fix: &str| InputError::invalid(config, problem, fix);
        let text = |key: &str| qc.get(key).and_then(Value::as_str);
        if let Some(fmt) = text("fmt").filter(|f| *f != "e4m3") {
            return Err(bad(
                format!("fp8 format {fmt:?} is not supported (only e4m3)"),
                "use the model's e4m3 fp8 release, or its unquantized checkpoint with -q",
            ));
        }
        if let Some(scheme) = text("activation_scheme").filter(|s| *s != "dynamic") {
            return Err(bad(
                format!(
                    "fp8 activation_scheme {scheme:?} is not supported (only \"dynamic\": static \
                     input scales would be ignored)"
                ),
                "use a dynamic-activation fp8 release, or the unquantized checkpoint with -q",
            ));
        }
        let block = match qc.get("weight_block_size") {
            // transformers' FineGrainedFP8Config default.
            None => [128, 128],
            Some(v) => match v.as_array().map(|a| {
                a.iter()
                    .map(|d| d.as_u64().filter(|&d| d > 0))
                    .collect::<Option<Vec<u64>>>()
            }) {
                Some(Some(dims)) if dims.len() == 2 => [dims[0] as usize, dims[1] as usize],
                _ => {
                    return Err(bad(
                        format!(
                            "fp8 weight_block_size {v} is not two positive integers (per-tensor \
                             and per-channel fp8 are not supported)"
                        ),
                        "use a block-wise fp8 release (weight_block_size [128, 128]), or the unquantized checkpoint",
                    ))
                }
            },
        };
        Ok(Some(Fp8Config { block }))
    }
}

/// One fp8 layer's `[N, K]` and its scales' dtype.
#[derive(Debug, Clone, Copy)]
struct Layer {
    n: usize,
    k: usize,
    scale_dtype: StoredDtype,
}

/// `inner` with every fp8 `<layer>.weight` read as its scaled value (`inner` itself without an
/// fp8 config). Every layer's tensors are checked from metadata here; `dir` names errors.
pub fn view(
    cfg: Option<&Fp8Config>,
    inner: Box<dyn WeightSource>,
    dir: &Path,
) -> Result<Box<dyn WeightSource>, InputError> {
    let Some(cfg) = cfg.cloned() else {
        return Ok(inner);
    };
    let bad = |name: &str, problem: String| {
        InputError::invalid(
            dir,
            format!("fp8 tensor \"{name}\" {problem} (in {})", inner.describe()),
            format!(
                "the checkpoint does not match its quantization_config (weight_block_size {:?}): re-download it",
                cfg.block
            ),
        )
    };
    let mut layers = BTreeMap::new();
    for name in inner.names() {
        let Some(meta) = inner.meta(&name).filter(|m| m.dtype == StoredDtype::F8E4m3) else {
            continue;
        };
        let Some(prefix) = name.strip_suffix(".weight") else {
            return Err(bad(&name, "is not a layer's weight".into()));
        };
        let [n, k] = meta.shape[..] else {
            return Err(bad(&name, format!("has shape {:?}, not 2-D", meta.shape)));
        };
        let scale_name = format!("{prefix}.weight_scale_inv");
        let scale = inner
            .meta(&scale_name)
            .ok_or_else(|| bad(&scale_name, "is missing".into()))?;
        let float = matches!(
            scale.dtype,
            StoredDtype::F32 | StoredDtype::Bf16 | StoredDtype::F16
        );
        let want = [n.div_ceil(cfg.block[0]), k.div_ceil(cfg.block[1])];
        if !float || scale.shape != want {
            return Err(bad(
                &scale_name,
                format!(
                    "is {:?} {:?}, but weight [{n}, {k}] in blocks of {:?} implies a float {want:?}",
                    scale.dtype, scale.shape, cfg.block
                ),
            ));
        }
        let scale_dtype = scale.dtype;
        layers.insert(prefix.to_string(), Layer { n, k, scale_dtype });
    }
    if layers.is_empty() {
        return Err(InputError::invalid(
            dir,
            format!(
                "config.json says the checkpoint is fp8 but {} holds no F8_E4M3 weight",
                inner.describe()
            ),
            "remove quantization_config from config.json if the weights are float, or re-download",
        ));
    }
    Ok(Box::new(Fp8Weights { inner, cfg, layers }))
}

struct Fp8Weights {
    inner: Box<dyn WeightSource>,
    cfg: Fp8Config,
    layers: BTreeMap<String, Layer>,
}

impl Fp8Weights {
    fn layer_of<'n>(&self, name: &'n str) -> Option<(&'n str, Layer)> {
        let prefix = name.strip_suffix(".weight")?;
        Some((prefix, *self.layers.get(prefix)?))
    }

    /// `f8 · scale_inv` per block, `[N, K]` in torch order.
    fn dequantize(&self, prefix: &str, l: Layer) -> Result<Vec<f32>> {
        let mut w = self.inner.read_f8(&format!("{prefix}.weight"))?;
        let scales = self
            .inner
            .read_f32(&format!("{prefix}.weight_scale_inv"))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let [bn, bk] = self.cfg.block;
        let cols = l.k.div_ceil(bk);
        for (n, row) in w.chunks_exact_mut(l.k).enumerate() {
            let s = &scales[(n / bn) * cols..(n / bn + 1) * cols];
            for (k, v) in row.iter_mut().enumerate() {
                *v *= s[k / bk];
            }
        }
        Ok(w)
    }
}

impl WeightSource for Fp8Weights {
    fn meta(&self, name: &str) -> Option<TensorMeta> {
        match self.layer_of(name) {
            Some((_, l)) => Some(TensorMeta {
                shape: vec![l.n, l.k],
                dtype: l.scale_dtype,
            }),
            None => self.inner.meta(name),
        }
    }

    fn names(&self) -> Vec<String> {
        self.inner.names()
    }

    fn read_f32(&self, name: &str) -> Result<Tensor> {
        let Some((prefix, l)) = self.layer_of(name) else {
            return self.inner.read_f32(name);
        };
        let w = self
            .dequantize(prefix, l)
            .with_context(|| format!("dequantizing fp8 layer {prefix}"))?;
        Ok(Tensor::from_vec(w, (l.n, l.k), &Device::Cpu)?)
    }

    /// The scaled weight stands for its fp8 bytes, its scales and the block size.
    fn fingerprint(&self, name: &str) -> Result<Fingerprint> {
        let Some((prefix, _)) = self.layer_of(name) else {
            return self.inner.fingerprint(name);
        };
        let inputs = [
            self.inner.fingerprint(&format!("{prefix}.weight"))?,
            self.inner
                .fingerprint(&format!("{prefix}.weight_scale_inv"))?,
        ];
        let [bn, bk] = self.cfg.block;
        Ok(fingerprint::derived(
            "fp8 e4m3 * weight_scale_inv",
            &[bn as u64, bk as u64],
            &inputs,
        ))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn read_i32(&self, name: &str) -> Result<Vec<i32>> {
        self.inner.read_i32(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from the OCP 8-bit floating point spec's e4m3 table.
    #[test]
    fn e4m3_values() {
        assert_eq!(e4m3(0x38), 1.0);
        assert_eq!(e4m3(0x7e), 448.0);
        assert_eq!(e4m3(0xfe), -448.0);
        assert_eq!(e4m3(0x01), 2f32.powi(-9));
        assert_eq!(e4m3(0x08), 2f32.powi(-6));
        assert_eq!(e4m3(0x3c), 1.5);
        assert_eq!(e4m3(0x00), 0.0);
        assert!(e4m3(0x7f).is_nan() && e4m3(0xff).is_nan());
    }

    #[test]
    fn config_is_refused_by_name() {
        let p = Path::new("config.json");
        let parse = |v: Value| Fp8Config::parse(&v, p);
        let ok = parse(serde_json::json!({"quant_method": "fp8", "fmt": "e4m3",
            "activation_scheme": "dynamic", "weight_block_size": [64, 32]}));
        assert_eq!(ok.unwrap(), Some(Fp8Config { block: [64, 32] }));
        assert_eq!(
            parse(serde_json::json!({"quant_method": "gptq"})).unwrap(),
            None
        );
        for (bad, word) in [
            (
                serde_json::json!({"quant_method": "fp8", "fmt": "e5m2"}),
                "e5m2",
            ),
            (
                serde_json::json!({"quant_method": "fp8", "activation_scheme": "static"}),
                "static",
            ),
            (
                serde_json::json!({"quant_method": "fp8", "weight_block_size": null}),
                "weight_block_size",
            ),
            (
                serde_json::json!({"quant_method": "fp8", "weight_block_size": [0, 128]}),
                "weight_block_size",
            ),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(word) && e.contains("config.json"), "{e}");
        }
    }
}
