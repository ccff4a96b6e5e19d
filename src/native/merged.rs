//! A deploy's tpuc-opt calls run as one process (see [`merged_call`]).

use anyhow::{Context, Result};

use super::passes::{DeployArgs, TpucCall};

/// Whether a deploy's calls may be merged: on one BM1684X core only, where the bytes were
/// compared (`tests/backends.rs` on every piece kind). On BM1688 with two cores the merged
/// run's block_cache differs in 24 bytes and its lm_head in size, and a test verifying such a
/// bmodel hung in the bm1688 simulator (every engine thread waiting on a sync id): there the
/// separate processes stay.
pub fn applies(a: &DeployArgs) -> bool {
    a.chip == "bm1684x" && a.num_core == 1
}

/// `calls` (a deploy's after its lowering, see [`deploy_calls`](super::passes::deploy_calls))
/// as one tpuc-opt run: every pass of every call in order on the first call's input, one
/// output, `out`. The final MLIR and its weights are then not written by one process and read
/// back by the next: on SmolLM2's pieces (idle) a deploy takes 7-23 % less time, and the bmodel
/// is the same, byte for byte but TPU-MLIR's create time. The lowering stays its own process:
/// run in the same process as layer group and address assignment it changes a MoE block's
/// bmodel (qwen2_moe, 517,715 bytes differ), whatever the threading.
pub fn merged_call(calls: &[TpucCall], out: &str) -> Result<TpucCall> {
    let first = calls.first().context("no tpuc-opt call to merge")?;
    let input = first
        .tokens
        .get(1)
        .context("a tpuc-opt call without an input")?;
    let (mut passes, mut trailing) = (Vec::new(), Vec::new());
    let mut threading_off = false;
    for call in calls {
        let mut tokens = call.tokens.iter().skip(2);
        while let Some(t) = tokens.next() {
            match t.as_str() {
                "-o" => {
                    tokens.next();
                }
                "--mlir-disable-threading" => threading_off = true,
                t if t.starts_with("-o ") || t.is_empty() => {}
                // A global option, accepted after the output only (as model_deploy.py puts it).
                t if t.starts_with("--debug_cmd") => {
                    if !trailing.iter().any(|d: &String| d == t) {
                        trailing.push(t.to_string());
                    }
                }
                t => passes.push(t.to_string()),
            }
        }
    }
    let mut tokens = vec!["tpuc-opt".to_string(), input.clone()];
    if threading_off {
        tokens.push("--mlir-disable-threading".into());
    }
    tokens.extend(passes);
    tokens.extend(["-o".to_string(), out.to_string()]);
    tokens.extend(trailing);
    Ok(TpucCall::new("deploy", tokens))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::passes::{deploy_calls, DeployArgs};

    #[test]
    fn passes_in_order_one_output_debug_cmd_last() {
        let argv: Vec<String> = "--mlir b.mlir --chip bm1684x --model b.bmodel --quantize bf16"
            .split_whitespace()
            .map(String::from)
            .collect();
        let all = deploy_calls(&DeployArgs::parse(&argv).unwrap(), "b");
        let calls = &all[1..];
        let merged = merged_call(calls, "b_final.mlir").unwrap();
        let t = &merged.tokens;
        assert_eq!(
            t[..3],
            [
                "tpuc-opt",
                &all[0].tokens[all[0].tokens.len() - 1],
                "--mlir-disable-threading"
            ]
        );
        let at = |p: &str| t.iter().position(|x| x.starts_with(p)).unwrap();
        assert!(!t.iter().any(|x| x.starts_with("--processor-assign")));
        assert!(at("--strip-io-quant") < at("--address-assign"));
        assert!(at("--address-assign") < at("--codegen"));
        assert_eq!(t.iter().filter(|x| x.as_str() == "-o").count(), 1);
        assert!(!t
            .iter()
            .any(|x| x.starts_with("-o /dev/null") || x.is_empty()));
        assert_eq!(t[t.len() - 3..], ["-o", "b_final.mlir", "--debug_cmd="]);
        // Every pass of every call is there once.
        for call in calls {
            for tok in call.tokens[2..]
                .iter()
                .filter(|x| x.starts_with("--") && !x.starts_with("--debug"))
            {
                assert_eq!(t.iter().filter(|x| *x == tok).count(), 1, "{tok}");
            }
        }
        assert!(merged.argv().is_ok());
    }
}
