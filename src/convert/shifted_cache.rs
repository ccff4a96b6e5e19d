//! The options a shifted-KV-cache family (chatglm, support/docs/runtime-contract.md §5)
//! refuses: its decode block moves every cache slot each step, so no smaller decode stage can
//! share the cache and no history-KV prefill can append to it, and its runtime reads SEQLEN
//! from the prefill length.

use std::path::Path;

use super::options::PieceShape;
use crate::error::InputError;
use crate::model::ModelConfig;

pub fn check(cfg: &ModelConfig, shape: &PieceShape, model: &Path) -> Result<(), InputError> {
    if !cfg.layer.attention.shifted_kv_cache {
        return Ok(());
    }
    let refused = [
        (shape.use_history_kv, "--use_history_kv"),
        (shape.chunk_length > 0, "--chunk_length (decode stages)"),
        (
            shape.max_input_length != shape.seq_length,
            "--max_input_length other than -s",
        ),
    ];
    match refused.iter().find(|(on, _)| *on) {
        Some((_, what)) => Err(InputError::invalid(
            model.join("config.json"),
            format!(
                "{what} is not supported for {}: its decode blocks return the whole KV cache \
                 shifted by one slot (llm_convert.py's contract for it), which leaves no room \
                 for decode stages or history KV, and its runtime prefills at -s",
                cfg.family.name()
            ),
            "drop the flag",
        )),
        None => Ok(()),
    }
}
