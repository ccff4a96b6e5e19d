//! Attention masks built in-graph from positions: causal (dynamic prefill, block_kv) and
//! the sliding window (mistral). Positions are exact integers in f32, but bf16 rounds them
//! above 256 (two neighbours would compare equal and a future token would leak), so these
//! ops are kept in f32 by the quantize table; the mask's sign survives the final cast.

use crate::graph::{Attr, Graph};
use crate::model::ModelConfig;

/// Additive causal mask `[1,1,L,K]`: `MASK_VALUE` where a key's position is after the
/// query's (kept in f32).
pub fn causal_mask(g: &mut Graph, query_pos: &str, key_pos: &str) -> String {
    let first = g.nodes.len();
    let q = g.reshape(query_pos, &[1, 1, -1, 1]);
    let k = g.reshape(key_pos, &[1, 1, 1, -1]);
    let ahead = g.op("Sub", &[&k, &q], vec![]);
    let ahead = g.op("Relu", &[&ahead], vec![]);
    let one = g.scalar("one", 1.0);
    let future = g.op("Min", &[&ahead, &one], vec![]);
    let mask = g.scale(&future, MASK_VALUE);
    g.keep_f32_since(first);
    mask
}

/// Position ids as f32 (exact below 2^24).
pub fn positions_f32(g: &mut Graph, pos: &str) -> String {
    g.op("Cast", &[pos], vec![("to", Attr::Int(1))])
}

/// The runtime's f16 mask value (bf16 rounds it to -9984, the runtime's bf16 value).
pub const MASK_VALUE: f64 = -10000.0;

/// `[0, 1, …, n-1]` as f32 `[1, n]` for keys `[1, n, KVH, D]` of per-call length n: a CumSum
/// over ones made from the keys themselves (kept in f32, like the mask).
pub fn key_positions(g: &mut Graph, keys: &str) -> String {
    let first = g.nodes.len();
    let col = g.slice(keys, 3, 0, 1);
    let col = g.slice(&col, 2, 0, 1);
    let zero = g.scale(&col, 0.0);
    let one = g.scalar("one", 1.0);
    let ones = g.add(&zero, &one);
    let ones = g.reshape(&ones, &[1, -1]);
    let axis = g.const_i64("axis", &[1]);
    let count = g.op("CumSum", &[&ones, &axis], vec![]);
    let pos = g.op("Sub", &[&count, &one], vec![]);
    g.keep_f32_since(first);
    pos
}

/// Layer `layer`'s sliding window, if it can hide a key from a piece whose queries and keys
/// have positions in `0..span`; none otherwise, so that piece's graph is exactly the graph of
/// a family without a window (a mistral with a long or null window exports llama's bytes).
pub fn effective_window(cfg: &ModelConfig, layer: usize, span: usize) -> Option<usize> {
    cfg.layer.window(layer).filter(|w| *w < span)
}

/// `mask` plus `MASK_VALUE` where a key is `window` or more positions behind the query
/// (transformers' sliding-window overlay: a query at q sees k iff `q - window < k <= q`).
/// Query positions `[Lq]`-shaped, key positions `[Lk]`-shaped, mask `[1,1,Lq,Lk]`.
pub fn with_window(
    g: &mut Graph,
    mask: &str,
    query_pos: &str,
    key_pos: &str,
    window: usize,
) -> String {
    let first = g.nodes.len();
    let q = g.reshape(query_pos, &[1, 1, -1, 1]);
    let k = g.reshape(key_pos, &[1, 1, 1, -1]);
    let behind = g.op("Sub", &[&q, &k], vec![]);
    let limit = g.scalar("window_limit", (window - 1) as f32);
    let over = g.op("Sub", &[&behind, &limit], vec![]);
    let over = g.op("Relu", &[&over], vec![]);
    let one = g.scalar("one", 1.0);
    let too_old = g.op("Min", &[&over, &one], vec![]);
    let hidden = g.scale(&too_old, MASK_VALUE);
    let out = g.add(mask, &hidden);
    g.keep_f32_since(first);
    out
}

/// Positions of a decode step's keys, f32 `[1, kv+1]`: history slot j holds position j, the
/// new token (last) is at the query's position.
pub fn decode_key_positions(g: &mut Graph, kv: usize, query_pos: &str) -> String {
    let first = g.nodes.len();
    let slots = g.const_f32(
        "slot_positions",
        &[1, kv],
        (0..kv).map(|j| j as f32).collect(),
    );
    let q = g.reshape(query_pos, &[1, 1]);
    let keys = g.concat(&[&slots, &q], 1);
    g.keep_f32_since(first);
    keys
}
