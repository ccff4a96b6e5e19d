//! embedding, embedding_cache, lm_head, and the `--do_sample` heads (greedy_head, sample_head).

use super::softcap::maybe_softcap;
use super::PieceOptions;
use crate::graph::{Attr, Elem, Graph};
use crate::model::ModelConfig;

/// `input_ids [1, len] int32 → [1, len, hidden]` (× MiniCPM's scale_emb).
pub fn embedding(cfg: &ModelConfig, opts: &PieceOptions, len: usize, name: &str) -> Graph {
    let mut g = Graph::new(name);
    let ids = g.input("input_ids", Elem::I32, &[1, len]);
    let table = g.weight(
        cfg.weights().embed_tokens,
        &[cfg.vocab_size, cfg.hidden_size],
        false,
    );
    // A scale after the Gather (gemma, MiniCPM) is folded into the table by the top passes,
    // which then round what a bf16 table would already have rounded: only unscaled tables.
    if opts.bf16_tables && cfg.embedding_scale() == 1.0 {
        g.bf16_tables.push(table.clone());
    }
    let x = g.op("Gather", &[&table, &ids], vec![("axis", Attr::Int(0))]);
    let x = g.scale(&x, cfg.embedding_scale());
    // Output names match TPU-MLIR llm_convert.py's bmodels.
    g.output(&x, name, Elem::F32, &[1, len, cfg.hidden_size]);
    g
}

/// `hidden_states [1, hidden] → token_id [1, 1] int32` (fused top-1), or with `logits`
/// (`--do_sample`) `→ m_logits [1, V] f32`. The final norm lives in the last block (single
/// device), so this is only the projection.
pub fn lm_head(cfg: &ModelConfig, opts: &PieceOptions) -> Graph {
    let logits_out = opts.do_sample;
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let mut g = Graph::new("lm_head");
    let x = g.input("hidden_states", Elem::F32, &[1, h]);
    let x = g.scale(&x, cfg.lm_head_input_scale());
    let w = if cfg.tie_word_embeddings {
        cfg.weights().embed_tokens
    } else {
        cfg.weights().lm_head
    };
    // `W [V,H] · xᵀ` keeps the weight in its checkpoint layout, so with tied embeddings the
    // combined bmodel stores one table for embedding and lm_head (model_tool --combine shares
    // identical weight blobs); `x · Wᵀ` would make TPU-MLIR fold in a transposed copy.
    let w = g.weight(w, &[v, h], false);
    // As the embedding's: a scaled input (MiniCPM) may be folded into the weight.
    if opts.bf16_tables && cfg.lm_head_input_scale() == 1.0 {
        g.bf16_tables.push(w.clone());
    }
    let xt = g.reshape(&x, &[h as i64, 1]);
    let logits = g.op("MatMul", &[&w, &xt], vec![]);
    let logits = g.reshape(&logits, &[1, v as i64]);
    if logits_out {
        // The cap keeps the logits' order, so the token_id head goes without it.
        let logits = maybe_softcap(&mut g, &logits, cfg.layer.final_logit_softcap);
        g.output(&logits, "m_logits", Elem::F32, &[1, v]);
    } else {
        let token = top1(&mut g, &logits);
        g.output(&token, "token_id", Elem::I32, &[1, 1]);
    }
    g
}

/// Index of the largest logit, `[1, 1]` int32.
fn top1(g: &mut Graph, logits: &str) -> String {
    let k = g.const_i64("k", &[1]);
    let top = g.op_n("TopK", &[logits, &k], 2, vec![("axis", Attr::Int(1))]);
    g.op("Cast", &[&top[1]], vec![("to", Attr::Int(INT32))])
}

const FLOAT: i64 = 1;
const INT32: i64 = 6;

/// `greedy_head`: `m_logits [1, V] → token_id [1, 1]`.
pub fn greedy_head(cfg: &ModelConfig) -> Graph {
    let mut g = Graph::new("greedy_head");
    let logits = g.input("m_logits", Elem::F32, &[1, cfg.vocab_size]);
    let token = top1(&mut g, &logits);
    g.output(&token, "token_id", Elem::I32, &[1, 1]);
    g
}

/// Candidates `sample_head` returns (llm_convert.py's max_top_k).
pub const SAMPLE_TOP_K: usize = 50;
/// Candidates kept whatever top_p says (llm_convert.py's min_tokens_to_keep).
const MIN_TOKENS_TO_KEEP: f32 = 5.0;

/// `sample_head`, TPU-MLIR's semantics: repetition penalty on the logits of `input_ids`
/// (`x·penalty` if negative, `x/penalty` otherwise), top-50, `/temperature`, top-p on the
/// cumulative softmax (always keeping the first 5), top-k, then softmax.
/// Inputs `m_logits [1,V] f32, input_ids [1,≤S] int32 (dynamic), penalty [1], temperature [1],
/// top_k [1] int32, top_p [1]` → `probs [1,50] f32, token [1,50] int32`.
pub fn sample_head(cfg: &ModelConfig, seq_length: usize) -> Graph {
    let n = SAMPLE_TOP_K;
    let mut g = Graph::new("sample_head");
    let logits = g.input("m_logits", Elem::F32, &[1, cfg.vocab_size]);
    let ids = g.input_with_axis("input_ids", Elem::I32, &[1, seq_length], Some(1));
    let penalty = g.input("penalty", Elem::F32, &[1]);
    let temperature = g.input("temperature", Elem::F32, &[1]);
    let top_k = g.input("top_k", Elem::I32, &[1]);
    let top_p = g.input("top_p", Elem::F32, &[1]);

    let seen = g.op(
        "GatherElements",
        &[&logits, &ids],
        vec![("axis", Attr::Int(1))],
    );
    let zero = g.scalar("zero", 0.0);
    let negative = g.op("Less", &[&seen, &zero], vec![]);
    let up = g.mul(&seen, &penalty);
    let down = g.op("Div", &[&seen, &penalty], vec![]);
    let penalised = g.op("Where", &[&negative, &up, &down], vec![]);
    let logits = g.op(
        "ScatterElements",
        &[&logits, &ids, &penalised],
        vec![("axis", Attr::Int(1))],
    );
    let k = g.const_i64("k", &[n as i64]);
    let top = g.op_n("TopK", &[&logits, &k], 2, vec![("axis", Attr::Int(1))]);
    let scaled = g.op("Div", &[&top[0], &temperature], vec![]);
    let p0 = g.op("Softmax", &[&scaled], vec![("axis", Attr::Int(1))]);
    let axis = g.const_i64("axis", &[1]);
    let cumulative = g.op("CumSum", &[&p0, &axis], vec![]);
    let within_p = g.op("Less", &[&cumulative, &top_p], vec![]);
    let rank = g.const_f32("rank", &[1, n], (0..n).map(|i| i as f32).collect());
    let min_keep = g.scalar("min_keep", MIN_TOKENS_TO_KEEP);
    let first = g.op("Less", &[&rank, &min_keep], vec![]);
    let top_k = g.op("Cast", &[&top_k], vec![("to", Attr::Int(FLOAT))]);
    let within_k = g.op("Less", &[&rank, &top_k], vec![]);
    let keep = g.op("Or", &[&within_p, &first], vec![]);
    let keep = g.op("And", &[&keep, &within_k], vec![]);
    let dropped = g.scalar("dropped", -1000.0);
    let masked = g.op("Where", &[&keep, &scaled, &dropped], vec![]);
    let probs = g.op("Softmax", &[&masked], vec![("axis", Attr::Int(1))]);
    let token = g.op("Cast", &[&top[1]], vec![("to", Attr::Int(INT32))]);
    g.output(&probs, "probs", Elem::F32, &[1, n]);
    g.output(&token, "token", Elem::I32, &[1, n]);
    g
}
