//! Which `-q` a conversion compiles with, and what a pre-quantized checkpoint allows: its own
//! 4-bit mode and group size, the native backend only, plain decoders only.

use std::path::Path;

use super::backend::Backend;
use super::options::{refuse, Quantize};
use crate::error::InputError;
use crate::model::ModelConfig;

/// The `-q` a conversion uses: the user's, or for `auto` the checkpoint's dtype's w4 mode; a
/// pre-quantized checkpoint's own mode ([`checkpoint_quantize`]).
pub fn resolve(q: Quantize, cfg: &ModelConfig, model: &Path) -> Result<Quantize, InputError> {
    if let Some(qc) = &cfg.quant {
        return checkpoint_quantize(q, qc, cfg, model);
    }
    if cfg.fp8.is_some() {
        return fp8_quantize(q, cfg, model);
    }
    if q != Quantize::Auto {
        return Ok(q);
    }
    match cfg.torch_dtype.as_deref() {
        Some("bfloat16") => Ok(Quantize::W4bf16),
        Some("float16") => Ok(Quantize::W4f16),
        other => Err(refuse(
            model,
            &format!(
                "-q auto needs torch_dtype bfloat16 or float16 in config.json, found {}",
                other.unwrap_or("none")
            ),
            "pass -q explicitly, e.g. -q w4bf16",
        )),
    }
}

/// Whether a conversion keeps a GGUF's own quantization per tensor: `-q auto` (or omitted) on
/// a GGUF with quantized block linears, on the native backend (the ONNX path cannot express
/// A16MatMul and requantizes as `auto` does for other checkpoints).
pub fn keeps_gguf_quant(q: Quantize, cfg: &ModelConfig, backend: Backend) -> bool {
    q == Quantize::Auto && !cfg.gguf_linears.is_empty() && backend == Backend::Native
}

/// A pre-quantized checkpoint's mode: its 4- (8-)bit weights with the checkpoint's activation
/// dtype (AWQ: f16, as llm_convert.py forces w4f16); `-q auto` picks it, any other -q but a
/// w4 (w8) mode contradicts the checkpoint.
fn checkpoint_quantize(
    q: Quantize,
    qc: &crate::model::quant::QuantConfig,
    cfg: &ModelConfig,
    model: &Path,
) -> Result<Quantize, InputError> {
    use crate::family::Projections;
    use crate::model::quant::Packing;
    let layer = &cfg.layer;
    let unsupported = if cfg.vlm.is_some() {
        Some("a vision-language model")
    } else if layer.moe.is_some() {
        Some("a mixture of experts")
    } else if layer.attention.qkv == Projections::Fused || layer.mlp.gate_up == Projections::Fused {
        Some("fused qkv / gate_up projections")
    } else {
        None
    };
    // A float linear inside a block would be re-quantized by TPU-MLIR's w4 mode.
    let float_linear = crate::model::layout::expected_tensors(cfg)
        .into_iter()
        .filter_map(|(name, shape)| {
            let prefix = name.strip_suffix(".weight")?;
            (shape.len() == 2 && prefix.contains("layers.")).then(|| prefix.to_string())
        })
        .find(|prefix| {
            qc.modules_to_not_convert
                .iter()
                .any(|m| prefix.contains(m.as_str()))
        });
    if let Some(prefix) = float_linear {
        return Err(refuse(
            &model.join("config.json"),
            &format!(
                "modules_to_not_convert keeps {prefix} float inside a block, which the w4 compile would re-quantize"
            ),
            "convert the model's unquantized checkpoint with -q",
        ));
    }
    if let Some(what) = unsupported {
        return Err(refuse(
            &model.join("config.json"),
            &format!(
                "pre-quantized ({}) checkpoints of {what} are not supported yet (plain decoders with separate projections are)",
                qc.method
            ),
            "convert the model's unquantized checkpoint with -q",
        ));
    }
    let bf16 = matches!(qc.packing, Packing::Gptq | Packing::CompressedTensors)
        && cfg.torch_dtype.as_deref() == Some("bfloat16");
    let own = match (qc.bits, bf16) {
        (8, true) => Quantize::W8bf16,
        (8, false) => Quantize::W8f16,
        (_, true) => Quantize::W4bf16,
        (_, false) => Quantize::W4f16,
    };
    let same_width = q.name().get(..2) == own.name().get(..2);
    match q {
        Quantize::Auto => Ok(own),
        _ if q.is_weight_only() && same_width => Ok(q),
        other => Err(refuse(
            &model.join("config.json"),
            &format!(
                "-q {} contradicts the checkpoint: it is {}-bit {} (group_size {}), whose weights convert as they are",
                other.name(),
                qc.bits,
                qc.method,
                qc.group_size
            ),
            &format!("omit -q (or pass -q auto, or -q {})", own.name()),
        )),
    }
}

/// An fp8 checkpoint compiles at 16 bits (its weights dequantized on read, `quant::fp8`):
/// `auto` picks its dtype's mode, a float -q is kept, and a W4/W8 -q would re-quantize the fp8
/// weights onto an integer grid, which contradicts the checkpoint.
fn fp8_quantize(q: Quantize, cfg: &ModelConfig, model: &Path) -> Result<Quantize, InputError> {
    let own = match cfg.torch_dtype.as_deref() {
        Some("float16") => Quantize::F16,
        _ => Quantize::Bf16,
    };
    match q {
        Quantize::Auto => Ok(own),
        Quantize::Bf16 | Quantize::F16 | Quantize::F32 => Ok(q),
        other => Err(refuse(
            &model.join("config.json"),
            &format!(
                "-q {} contradicts the checkpoint: its weights are fp8 (e4m3, block scales), which \
                 would be re-quantized to {}-bit integers; they compile at 16 bits (BM1684X has no fp8 matmul)",
                other.name(),
                if other.name().starts_with("w4") { 4 } else { 8 }
            ),
            &format!("omit -q (or pass -q auto, or -q {})", own.name()),
        )),
    }
}

/// A pre-quantized checkpoint needs A16MatMul, which only the native backend emits.
pub fn check_backend(
    cfg: &ModelConfig,
    backend: Backend,
    model_path: &Path,
) -> Result<(), InputError> {
    if let (Some(qc), Backend::Onnx) = (&cfg.quant, backend) {
        return Err(refuse(
            &model_path.join("config.json"),
            &format!(
                "a pre-quantized ({}) checkpoint needs TPU-MLIR's weight-only A16MatMul, which ONNX cannot express",
                qc.method
            ),
            "use the native backend (the default: drop --backend onnx)",
        ));
    }
    Ok(())
}

/// The W4/W8 group size: a pre-quantized checkpoint's own (its integers are in those groups:
/// a contradicting -g is refused); else -g; else a GGUF's own block size (its layers,
/// dequantized on read, are requantized on their own blocks as llm_convert.py does: on another
/// grid every weight is rounded twice — SmolLM2's Q4_1 at 64: 15% more weight error); else 64.
pub fn group_size(
    given: Option<usize>,
    cfg: &ModelConfig,
    model_path: &Path,
) -> Result<usize, InputError> {
    match (&cfg.quant, given, cfg.stored_group_size) {
        (Some(q), Some(g), _) if g != q.group_size => Err(refuse(
            &model_path.join("config.json"),
            &format!(
                "-g {g} contradicts the checkpoint's quantization_config group_size {}",
                q.group_size
            ),
            "drop -g: a pre-quantized checkpoint keeps its own groups",
        )),
        (Some(q), _, _) => Ok(q.group_size),
        (None, Some(g), _) => Ok(g),
        (None, None, Some(g)) => Ok(g),
        (None, None, None) => Ok(DEFAULT_GROUP_SIZE),
    }
}

/// `-g` when neither the flag nor the checkpoint says otherwise (llm_convert.py's default).
const DEFAULT_GROUP_SIZE: usize = 64;
