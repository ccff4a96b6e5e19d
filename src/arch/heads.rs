//! embedding, embedding_cache and lm_head.

use crate::graph::{Attr, Elem, Graph};
use crate::model::ModelConfig;

/// `input_ids [1, len] int32 → [1, len, hidden]` (× MiniCPM's scale_emb).
pub fn embedding(cfg: &ModelConfig, len: usize, name: &str) -> Graph {
    let mut g = Graph::new(name);
    let ids = g.input("input_ids", Elem::I32, &[1, len]);
    let table = g.weight(
        "model.embed_tokens.weight",
        &[cfg.vocab_size, cfg.hidden_size],
        false,
    );
    let x = g.op("Gather", &[&table, &ids], vec![("axis", Attr::Int(0))]);
    let x = g.scale(&x, cfg.embedding_scale());
    // Output names match TPU-MLIR llm_convert.py's bmodels.
    g.output(&x, name, Elem::F32, &[1, len, cfg.hidden_size]);
    g
}

/// `hidden_states [1, hidden] → token [1, 1] int32` (fused top-1). The final norm lives in the
/// last block (single device), so this is only the projection.
pub fn lm_head(cfg: &ModelConfig) -> Graph {
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let mut g = Graph::new("lm_head");
    let x = g.input("hidden_states", Elem::F32, &[1, h]);
    let x = g.scale(&x, cfg.lm_head_input_scale());
    let w = if cfg.tie_word_embeddings {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    // `W [V,H] · xᵀ` keeps the weight in its checkpoint layout, so with tied embeddings the
    // combined bmodel stores one table for embedding and lm_head (model_tool --combine shares
    // identical weight blobs); `x · Wᵀ` would make TPU-MLIR fold in a transposed copy.
    let w = g.weight(w, &[v, h], false);
    let xt = g.reshape(&x, &[h as i64, 1]);
    let logits = g.op("MatMul", &[&w, &xt], vec![]);
    let logits = g.reshape(&logits, &[1, v as i64]);
    let k = g.const_i64("k", &[1]);
    let top = g.op_n("TopK", &[&logits, &k], 2, vec![("axis", Attr::Int(1))]);
    let token = g.op("Cast", &[&top[1]], vec![("to", Attr::Int(6))]);
    g.output(&token, "token_id", Elem::I32, &[1, 1]);
    g
}
