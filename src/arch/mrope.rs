//! Qwen2-VL / Qwen2.5-VL multimodal RoPE in the text blocks (vlm.md §1.5): position_ids are
//! `[3, L]` (temporal, height, width rows), the cos/sin table rows are gathered for all three,
//! and frequency j takes the row of the `mrope_section` it falls in (transformers'
//! `apply_multimodal_rotary_pos_emb`, the section list applied to both halves).

use super::mask::MASK_VALUE;
use crate::graph::Graph;
use crate::model::ModelConfig;

/// The M-RoPE sections (t, h, w) in frequencies, when the text blocks use M-RoPE.
pub fn section(cfg: &ModelConfig) -> Option<[usize; 3]> {
    cfg.vlm.as_ref().and_then(|v| v.mrope_section)
}

/// The position_ids shape of a block over `len` tokens: `[3, len]` with M-RoPE, else `[1, len]`.
pub fn position_dims(cfg: &ModelConfig, len: usize) -> [usize; 2] {
    [if section(cfg).is_some() { 3 } else { 1 }, len]
}

/// With M-RoPE, the gathered `[3, L, 1, D]` cos or sin table → `[1, L, 1, D]`: each half's
/// frequencies `[0, s0)` from row 0, `[s0, s0+s1)` from row 1, the rest from row 2. Without,
/// `table` unchanged.
pub fn select(g: &mut Graph, cfg: &ModelConfig, table: String, d: usize) -> String {
    let Some([s0, s1, _]) = section(cfg) else {
        return table;
    };
    let half = d / 2;
    let bounds = [(0, s0), (s0, s0 + s1), (s0 + s1, half)];
    let mut parts = Vec::with_capacity(6);
    for offset in [0, half] {
        for (row, &(a, b)) in bounds.iter().enumerate() {
            if a == b {
                continue;
            }
            let r = g.slice(&table, 0, row as i64, row as i64 + 1);
            parts.push(g.slice(&r, 3, (offset + a) as i64, (offset + b) as i64));
        }
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    g.concat(&refs, 3)
}

/// The causal mask of a dynamic M-RoPE prefill block: from the tokens' sequence indices
/// (a CumSum over `input_states [1, L, H]`'s rows), since M-RoPE positions repeat within an
/// image. Kept in f32 like the other in-graph masks.
pub fn sequence_causal_mask(g: &mut Graph, input_states: &str) -> String {
    let first = g.nodes.len();
    let col = g.slice(input_states, 2, 0, 1);
    let zero = g.scale(&col, 0.0);
    let one = g.scalar("one", 1.0);
    let ones = g.add(&zero, &one);
    let ones = g.reshape(&ones, &[1, -1]);
    let axis = g.const_i64("axis", &[1]);
    let count = g.op("CumSum", &[&ones, &axis], vec![]);
    let q = g.reshape(&count, &[1, 1, -1, 1]);
    let k = g.reshape(&count, &[1, 1, 1, -1]);
    let ahead = g.op("Sub", &[&k, &q], vec![]);
    let ahead = g.op("Relu", &[&ahead], vec![]);
    let future = g.op("Min", &[&ahead, &one], vec![]);
    let mask = g.scale(&future, MASK_VALUE);
    g.keep_f32_since(first);
    mask
}
