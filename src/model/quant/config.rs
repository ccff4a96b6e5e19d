//! `config.json`'s `quantization_config` for the packings we read (GPTQ, AWQ GEMM, and
//! auto-round in either packing), as llm_convert.py 1.30.2 maps them
//! (`ModelHandle.init_quantization`). Everything else is refused by name.

use std::path::Path;

use serde_json::Value;

use crate::error::InputError;

/// How a linear layer's integers are packed into int32 words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Packing {
    /// AutoGPTQ: `qweight [K/8, N]`, 8 rows (input features) per word, nibble i = row 8r+i;
    /// `qzeros [K/g, N/8]` packed the same way along N; zeros stored minus one (v1 format).
    Gptq,
    /// AutoAWQ GEMM: `qweight [K, N/8]`, 8 columns per word in the order
    /// `[0, 4, 1, 5, 2, 6, 3, 7]`; `qzeros [K/g, N/8]` the same; zeros stored as they are.
    AwqGemm,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QuantConfig {
    /// `quant_method` as written (`gptq`, `awq`, `auto-round`), for messages.
    pub method: String,
    pub packing: Packing,
    pub bits: usize,
    /// Input features per scale / zero point.
    pub group_size: usize,
    pub sym: bool,
    /// GPTQ's activation-order quantization: rows are grouped by `g_idx`, not by position.
    pub desc_act: bool,
    /// Added to each stored zero point (1 for GPTQ's v1 format, else 0).
    pub zero_offset: u8,
    pub modules_to_not_convert: Vec<String>,
}

impl QuantConfig {
    /// Parses `qc` (the `quantization_config` object of `config`, which names errors).
    pub fn parse(qc: &Value, config: &Path) -> Result<QuantConfig, InputError> {
        let bad = |problem: String, fix: &str| InputError::invalid(config, problem, fix);
        let method = qc
            .get("quant_method")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                bad(
                    "quantization_config has no quant_method".into(),
                    "add quant_method (gptq, awq or auto-round) or use an unquantized checkpoint",
                )
            })?
            .to_string();
        let packing =
            match method.as_str() {
                "gptq" => Packing::Gptq,
                "awq" => Packing::AwqGemm,
                "auto-round" => {
                    let format = qc
                        .get("packing_format")
                        .and_then(Value::as_str)
                        .unwrap_or("auto_round:auto_gptq");
                    match format {
                    "auto_round:auto_gptq" | "auto_gptq" => Packing::Gptq,
                    "auto_round:auto_awq" | "auto_awq" => Packing::AwqGemm,
                    other => return Err(bad(
                        format!("auto-round packing_format {other:?} is not supported"),
                        "use a checkpoint packed as auto_round:auto_gptq or auto_round:auto_awq",
                    )),
                }
                }
                "compressed-tensors" | "fp8" => return Err(bad(
                    format!(
                    "quant_method {method:?} is not supported yet (GPTQ, AWQ and auto-round are)"
                ),
                    "use the model's GPTQ or AWQ release, or its unquantized checkpoint with -q",
                )),
                other => return Err(bad(
                    format!("unknown quant_method {other:?} in quantization_config"),
                    "supported: gptq, awq, auto-round; or use the unquantized checkpoint with -q",
                )),
            };
        let int = |key: &str| qc.get(key).and_then(Value::as_i64);
        let bits = int("bits").or_else(|| int("w_bit")).ok_or_else(|| {
            bad(
                format!("quantization_config ({method}) has no bits"),
                "the config is incomplete: re-download the checkpoint",
            )
        })?;
        if bits != 4 {
            return Err(bad(
                format!("{bits}-bit {method} checkpoints are not supported (only 4-bit)"),
                "use the model's 4-bit release, or its unquantized checkpoint with -q w8bf16",
            ));
        }
        let group = int("group_size")
            .or_else(|| int("q_group_size"))
            .unwrap_or(-1);
        if group <= 0 || group % 8 != 0 {
            return Err(bad(
                format!("group_size {group} is not supported (a positive multiple of 8 is: 32, 64, 128, ...)"),
                "per-channel checkpoints (group_size -1) are refused: use a grouped release",
            ));
        }
        if packing == Packing::AwqGemm {
            let version = qc.get("version").and_then(Value::as_str).unwrap_or("gemm");
            if !version.eq_ignore_ascii_case("gemm") {
                return Err(bad(
                    format!("AWQ version {version:?} is not supported (only the GEMM packing is)"),
                    "use an AWQ GEMM checkpoint",
                ));
            }
        }
        let flag = |key: &str| qc.get(key).and_then(Value::as_bool);
        let zero_offset = match (packing, qc.get("checkpoint_format").and_then(Value::as_str)) {
            (Packing::Gptq, Some("gptq_v2")) => 0,
            (Packing::Gptq, _) => 1,
            (Packing::AwqGemm, _) => 0,
        };
        let modules_to_not_convert = qc
            .get("modules_to_not_convert")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(QuantConfig {
            method,
            packing,
            bits: bits as usize,
            group_size: group as usize,
            // AWQ's zero_point = true is asymmetric.
            sym: flag("sym")
                .unwrap_or(packing == Packing::Gptq && flag("zero_point") != Some(true)),
            desc_act: flag("desc_act").unwrap_or(false),
            zero_offset,
            modules_to_not_convert,
        })
    }

    /// Values per int32 word.
    pub fn per_word(&self) -> usize {
        32 / self.bits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<QuantConfig, String> {
        QuantConfig::parse(&v, Path::new("config.json")).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_each_method() {
        let g = parse(json!({"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": true, "desc_act": true})).unwrap();
        assert_eq!(
            (g.packing, g.group_size, g.sym, g.desc_act, g.zero_offset),
            (Packing::Gptq, 128, true, true, 1)
        );
        let a = parse(json!({"quant_method": "awq", "bits": 4, "group_size": 64, "version": "GEMM", "zero_point": true,
                             "modules_to_not_convert": ["visual"]})).unwrap();
        assert_eq!(
            (a.packing, a.group_size, a.zero_offset),
            (Packing::AwqGemm, 64, 0)
        );
        assert_eq!(a.modules_to_not_convert, ["visual"]);
        let r = parse(json!({"quant_method": "auto-round", "bits": 4, "group_size": 32, "packing_format": "auto_round:auto_awq"})).unwrap();
        assert_eq!(r.packing, Packing::AwqGemm);
        let r = parse(json!({"quant_method": "auto-round", "bits": 4, "group_size": 32})).unwrap();
        assert_eq!(r.packing, Packing::Gptq);
        let v2 = parse(json!({"quant_method": "gptq", "bits": 4, "group_size": 32, "checkpoint_format": "gptq_v2"})).unwrap();
        assert_eq!(v2.zero_offset, 0);
    }

    #[test]
    fn refuses_what_it_cannot_read_by_name() {
        for (v, says) in [
            (
                json!({"quant_method": "hqq", "bits": 4}),
                "unknown quant_method \"hqq\"",
            ),
            (
                json!({"quant_method": "fp8"}),
                "\"fp8\" is not supported yet",
            ),
            (
                json!({"quant_method": "awq", "bits": 8, "group_size": 128}),
                "8-bit awq",
            ),
            (
                json!({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"}),
                "AWQ version \"gemv\"",
            ),
            (
                json!({"quant_method": "gptq", "bits": 4, "group_size": -1}),
                "group_size -1",
            ),
            (
                json!({"quant_method": "auto-round", "bits": 4, "group_size": 32, "packing_format": "auto_round:gguf"}),
                "packing_format",
            ),
            (json!({"bits": 4}), "no quant_method"),
        ] {
            let err = parse(v).unwrap_err();
            assert!(err.contains(says), "{err}");
            assert!(err.contains("config.json"), "{err}");
        }
    }
}
