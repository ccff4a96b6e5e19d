//! `config.json`'s `quantization_config` for the packings we read (GPTQ, AWQ GEMM, auto-round
//! in either packing, and compressed-tensors' 4-bit group `pack-quantized`), as llm_convert.py
//! 1.30.2 maps them (`ModelHandle.init_quantization`). Everything else is refused by name.

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
    /// compressed-tensors `pack-quantized` (llm-compressor): `weight_packed [N, K/8]`, 8 input
    /// features per word in plain order, each signed value stored plus 8; `weight_zero_point
    /// [N/8, K/g]` packed along N the same way (asym only; sym's zero is 0, stored 8);
    /// `weight_scale [N, K/g]`, already in A16MatMul's `[out, groups]` order.
    CompressedTensors,
}

impl Packing {
    /// The checkpoint's tensor names (after `<layer>.`) for the packed weight, scales, zero
    /// points and group index.
    pub fn tensors(self) -> [&'static str; 4] {
        match self {
            Packing::Gptq | Packing::AwqGemm => ["qweight", "scales", "qzeros", "g_idx"],
            Packing::CompressedTensors => [
                "weight_packed",
                "weight_scale",
                "weight_zero_point",
                "weight_g_idx",
            ],
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QuantConfig {
    /// `quant_method` as written (`gptq`, `awq`, `auto-round`, `compressed-tensors`), for messages.
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
                    "add quant_method (gptq, awq, auto-round, compressed-tensors or fp8) or use an unquantized checkpoint",
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
                "compressed-tensors" => return compressed_tensors(qc, config),
                other => return Err(bad(
                    format!("unknown quant_method {other:?} in quantization_config"),
                    "supported: gptq, awq, auto-round, compressed-tensors, fp8; or use the unquantized checkpoint with -q",
                )),
            };
        let int = |key: &str| qc.get(key).and_then(Value::as_i64);
        let bits = int("bits").or_else(|| int("w_bit")).ok_or_else(|| {
            bad(
                format!("quantization_config ({method}) has no bits"),
                "the config is incomplete: re-download the checkpoint",
            )
        })?;
        // 8-bit: GPTQ's packing (4 per word) maps onto an 8-bit A16MatMul; AWQ's GEMM
        // kernels and packing are 4-bit only.
        let allowed = bits == 4 || (bits == 8 && packing == Packing::Gptq);
        if !allowed {
            return Err(bad(
                format!("{bits}-bit {method} checkpoints are not supported (4-bit, and 8-bit GPTQ, are)"),
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
            (Packing::AwqGemm | Packing::CompressedTensors, _) => 0,
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

/// compressed-tensors (llm-compressor's `pack-quantized`): one config group of 4-bit int
/// weights in groups along K, 16-bit activations; its `ignore` list as modules kept float.
fn compressed_tensors(qc: &Value, config: &Path) -> Result<QuantConfig, InputError> {
    let bad = |problem: String| {
        InputError::invalid(
            config,
            format!("compressed-tensors {problem}"),
            "only 4-bit int group weights (pack-quantized, W4A16) convert exactly: use such a release, \
             or the model's unquantized checkpoint with -q",
        )
    };
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let format = text(qc, "format").unwrap_or_else(|| "pack-quantized".into());
    if format != "pack-quantized" {
        return Err(bad(format!(
            "format {format:?} is not supported (pack-quantized is)"
        )));
    }
    let status = text(qc, "quantization_status").unwrap_or_else(|| "compressed".into());
    if status != "compressed" {
        return Err(bad(format!(
            "quantization_status {status:?} is not supported (compressed is)"
        )));
    }
    let groups = qc
        .get("config_groups")
        .and_then(Value::as_object)
        .filter(|g| g.len() == 1)
        .ok_or_else(|| {
            bad("quantization_config needs exactly one entry in config_groups".into())
        })?;
    let (group_name, group) = groups.iter().next().expect("one entry, checked above");
    let at = |what: &str| format!("config_groups.{group_name}.{what}");
    if let Some(f) = text(group, "format").filter(|f| f != "pack-quantized") {
        return Err(bad(format!("{} {f:?} is not supported", at("format"))));
    }
    for act in ["input_activations", "output_activations"] {
        if group.get(act).is_some_and(|v| !v.is_null()) {
            return Err(bad(format!(
                "{} is set: quantized activations are not supported (weight-only W4A16 is)",
                at(act)
            )));
        }
    }
    let w = group
        .get("weights")
        .filter(|w| w.is_object())
        .ok_or_else(|| bad(format!("{} is missing", at("weights"))))?;
    let weights = |key: &str| at(&format!("weights.{key}"));
    let kind = text(w, "type").unwrap_or_else(|| "int".into());
    if kind != "int" {
        return Err(bad(format!(
            "{} {kind:?} is not supported (int is)",
            weights("type")
        )));
    }
    let bits = w.get("num_bits").and_then(Value::as_i64).unwrap_or(0);
    if bits != 4 && bits != 8 {
        return Err(bad(format!(
            "{} {bits} is not supported (4 and 8 are)",
            weights("num_bits")
        )));
    }
    let strategy = text(w, "strategy").unwrap_or_default();
    if strategy != "group" {
        return Err(bad(format!(
            "{} {strategy:?} is not supported (group is: A16MatMul takes a scale per group)",
            weights("strategy")
        )));
    }
    let group_size = w.get("group_size").and_then(Value::as_i64).unwrap_or(-1);
    if group_size <= 0 || group_size % 8 != 0 {
        return Err(bad(format!(
            "{} {group_size} is not supported (a positive multiple of 8 is: 32, 64, 128, ...)",
            weights("group_size")
        )));
    }
    if w.get("dynamic").and_then(Value::as_bool) == Some(true) {
        return Err(bad(format!("{} true is not supported", weights("dynamic"))));
    }
    let mut modules_to_not_convert = Vec::new();
    for entry in qc
        .get("ignore")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = entry.as_str().unwrap_or_default();
        modules_to_not_convert.push(ignored_name(name).ok_or_else(|| {
            bad(format!(
                "ignore entry {name:?} is not supported (module names, and re:.*NAME or \
                 re:.*NAME$ patterns are)"
            ))
        })?);
    }
    Ok(QuantConfig {
        method: "compressed-tensors".into(),
        packing: Packing::CompressedTensors,
        bits: bits as usize,
        group_size: group_size as usize,
        sym: w.get("symmetric").and_then(Value::as_bool).unwrap_or(true),
        // activation order: `weight_g_idx` groups the input features out of order.
        desc_act: w
            .get("actorder")
            .is_some_and(|a| !a.is_null() && a != false),
        zero_offset: 0,
        modules_to_not_convert,
    })
}

/// An `ignore` entry as the name part it matches (`contains`): a module name, or a
/// `re:.*NAME` / `re:.*NAME$` pattern (the only regexes llm-compressor writes in practice:
/// `re:.*lm_head`, `re:visual.*` is refused rather than guessed).
fn ignored_name(entry: &str) -> Option<String> {
    let name = match entry.strip_prefix("re:") {
        None => entry,
        Some(re) => {
            let re = re.strip_prefix(".*")?;
            re.strip_suffix('$').unwrap_or(re)
        }
    };
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    plain.then(|| name.to_string())
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

    fn ct(weights: Value, extra: Value) -> Value {
        let mut qc = json!({"quant_method": "compressed-tensors", "format": "pack-quantized",
            "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                          "input_activations": null, "output_activations": null}}});
        for (k, v) in extra.as_object().unwrap() {
            qc[k] = v.clone();
        }
        qc
    }

    #[test]
    fn reads_compressed_tensors_pack_quantized() {
        let w = json!({"num_bits": 4, "type": "int", "symmetric": false, "strategy": "group",
                       "group_size": 64, "actorder": null, "dynamic": false});
        let c = parse(ct(
            w.clone(),
            json!({"ignore": ["lm_head", "re:.*mlp.gate$"]}),
        ))
        .unwrap();
        assert_eq!(
            (
                c.packing,
                c.bits,
                c.group_size,
                c.sym,
                c.desc_act,
                c.zero_offset
            ),
            (Packing::CompressedTensors, 4, 64, false, false, 0)
        );
        assert_eq!(c.modules_to_not_convert, ["lm_head", "mlp.gate"]);
        let mut w2 = w.clone();
        w2["actorder"] = "group".into();
        w2["symmetric"] = true.into();
        let c = parse(ct(w2, json!({}))).unwrap();
        assert!(c.sym && c.desc_act);
        let refusals = [
            (json!({"num_bits": 2}), json!({}), "num_bits 2"),
            (
                json!({"type": "float"}),
                json!({}),
                "weights.type \"float\"",
            ),
            (
                json!({"strategy": "channel"}),
                json!({}),
                "strategy \"channel\"",
            ),
            (json!({"group_size": 20}), json!({}), "group_size 20"),
            (
                json!({}),
                json!({"format": "float-quantized"}),
                "format \"float-quantized\"",
            ),
            (
                json!({}),
                json!({"quantization_status": "frozen"}),
                "\"frozen\"",
            ),
            (
                json!({}),
                json!({"ignore": ["re:visual.*"]}),
                "ignore entry \"re:visual.*\"",
            ),
        ];
        for (patch, extra, says) in refusals {
            let mut wp = w.clone();
            for (k, v) in patch.as_object().unwrap() {
                wp[k] = v.clone();
            }
            let err = parse(ct(wp, extra)).unwrap_err();
            assert!(err.contains(says) && err.contains("config.json"), "{err}");
        }
        let mut qc = ct(w, json!({}));
        qc["config_groups"]["group_0"]["input_activations"] = json!({"num_bits": 8});
        let err = parse(qc).unwrap_err();
        assert!(err.contains("input_activations is set"), "{err}");
    }

    #[test]
    fn refuses_what_it_cannot_read_by_name() {
        for (v, says) in [
            (
                json!({"quant_method": "hqq", "bits": 4}),
                "unknown quant_method \"hqq\"",
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
