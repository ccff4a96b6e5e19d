//! TPU-MLIR's ONNX front end names ops after ONNX node outputs plus the op type
//! (`output_states_Add`, `TopK_3_out1_TopK`), and those become the bmodel's output names.
//! llm_convert.py's bmodels carry plain names (`output_states`, `token_id`); we restore ours in
//! the Top MLIR before model_deploy, by following `return`'s operands to their locations.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};

/// Renames the locations of the values `func @main` returns to `outputs` (in order).
/// Returns the rewritten text and how many outputs were renamed.
pub fn restore(mlir: &str, outputs: &[String]) -> (String, usize) {
    let lines: Vec<&str> = mlir.lines().collect();
    let Some(ret) = lines
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("return "))
    else {
        return (mlir.to_string(), 0);
    };
    let operands: Vec<&str> = ret["return ".len()..]
        .split(':')
        .next()
        .unwrap_or("")
        .split(',')
        .map(|s| s.trim())
        .collect();
    let aliases: HashMap<&str, &str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix('#').and_then(|_| l.split_once(" = ")))
        .collect();
    let mut renames: HashMap<String, String> = HashMap::new();
    for (operand, wanted) in operands.iter().zip(outputs) {
        if let Some(alias) = result_location(&lines, &aliases, operand) {
            renames.insert(alias, wanted.clone());
        }
    }
    let mut n = 0;
    let text: Vec<String> = lines
        .iter()
        .map(|l| match l.split_once(" = ") {
            Some((alias, _)) if renames.contains_key(alias) => {
                n += 1;
                format!("{alias} = loc(\"{}\")", renames[alias])
            }
            _ => l.to_string(),
        })
        .collect();
    let mut out = text.join("\n");
    if mlir.ends_with('\n') {
        out.push('\n');
    }
    (out, n)
}

/// The `#locN` alias naming one result: `%x` (single result), `%x#k` or a named result of a
/// multi-result op (`%values, %indices = ...`); fused locations are indexed by result.
fn result_location(lines: &[&str], aliases: &HashMap<&str, &str>, operand: &str) -> Option<String> {
    let (value, index) = match operand.split_once('#') {
        Some((v, k)) => (v, k.parse::<usize>().ok()?),
        None => (operand, usize::MAX),
    };
    for line in lines {
        let Some((lhs, rhs)) = line.trim().split_once(" = ") else {
            continue;
        };
        let results: Vec<&str> = lhs.split(',').map(|r| r.trim()).collect();
        let pos = if index != usize::MAX {
            results
                .iter()
                .position(|r| r.split(':').next() == Some(value))
                .map(|_| index)
        } else {
            results.iter().position(|r| *r == value)
        };
        let Some(pos) = pos else { continue };
        let loc = rhs.rsplit_once("loc(")?.1.strip_suffix(')')?;
        let target = aliases.get(loc)?;
        return match target.strip_prefix("loc(fused[") {
            Some(list) => list
                .trim_end_matches("])")
                .split(',')
                .nth(pos)
                .map(|s| s.trim().to_string()),
            None => Some(loc.to_string()),
        };
    }
    None
}

/// Applies [`restore`] to a Top MLIR file in place.
pub fn restore_file(path: &Path, outputs: &[String]) -> Result<usize> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (new, n) = restore(&text, outputs);
    if n > 0 {
        crate::util::write_atomic(path, new.as_bytes())?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_single_and_multi_result_outputs() {
        let mlir = r#"module {
  func.func @main(%arg0: tensor<1x128xf32> loc(unknown)) -> tensor<1x1xf32> {
    %3 = "top.MatMul"(%1, %2, %0) {} : () -> tensor<1x1024xf32> loc(#loc3)
    %values, %indices = "top.TopK"(%3) {K = 1 : i64} : (tensor<1x1024xf32>) -> (tensor<1x1xf32>, tensor<1x1xf32>) loc(#loc6)
    %7:2 = "top.Split"(%3) : () -> (tensor<1xf32>, tensor<1xf32>) loc(#loc9)
    return %3, %indices, %7#1 : tensor<1x1024xf32>, tensor<1x1xf32>, tensor<1xf32> loc(#loc)
  } loc(#loc)
} loc(#loc)
#loc3 = loc("MatMul_1_out0_MatMul")
#loc4 = loc("TopK_3_out0_TopK")
#loc5 = loc("TopK_3_out1_TopK")
#loc6 = loc(fused[#loc4, #loc5])
#loc7 = loc("a_Split")
#loc8 = loc("b_Split")
#loc9 = loc(fused[#loc7, #loc8])
"#;
        let (out, n) = restore(mlir, &["logits".into(), "token_id".into(), "second".into()]);
        assert_eq!(n, 3);
        assert!(out.contains("#loc3 = loc(\"logits\")"));
        assert!(out.contains("#loc5 = loc(\"token_id\")"));
        assert!(out.contains("#loc4 = loc(\"TopK_3_out0_TopK\")"));
        assert!(out.contains("#loc8 = loc(\"second\")"));
        assert!(out.contains("#loc7 = loc(\"a_Split\")"));
    }
}
