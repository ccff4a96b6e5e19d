//! Attention masks built in-graph from positions: causal (dynamic prefill, block_kv), the
//! sliding window (mistral) and ALiBi's per-head biases (Baichuan2-13B). Positions are exact
//! integers in f32, but bf16 rounds them above 256 (two neighbours would compare equal and a
//! future token would leak), so these ops are kept in f32 by the quantize table; the mask's
//! sign survives the final cast.

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

/// Layer `layer`'s sliding window, if some layer's window can hide a key from a piece whose
/// queries and keys have positions in `0..span`; none otherwise, so that piece's graph is
/// exactly the graph of a family without a window (a mistral with a long or null window
/// exports llama's bytes).
///
/// When only some layers slide (gemma2, gemma3), the others get a window of `span`, which
/// hides nothing: the runtime writes position ids and the mask into block 0's input buffers
/// only and binds them for every block, so every block must be the same graph (the same I/O
/// addresses). A global block without the window ops gets other addresses, and then the copy
/// of its hidden-state input overwrites block 0's position ids before they are read.
pub fn effective_window(cfg: &ModelConfig, layer: usize, span: usize) -> Option<usize> {
    let hides = |i: usize| cfg.layer.window(i).filter(|w| *w < span);
    if (0..cfg.num_hidden_layers).all(|i| hides(i).is_none()) {
        return None;
    }
    Some(hides(layer).unwrap_or(span))
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
    g.keep_f32_since(first);
    // The add itself stays out of the f32 set: when `mask` is the runtime's `attention_mask`
    // input, an f32 consumer would make TPU-MLIR keep that input in f32, and LLM-TPU's runtime
    // writes 16-bit masks. Only the sum's sign matters, which 16 bits keep.
    g.add(mask, &hidden)
}

/// `mask` plus ALiBi's biases `slope_h · (k − q)` (`family::alibi`): query positions
/// `[Lq]`-shaped, key positions `[Lk]`-shaped, mask `[1,1,Lq,Lk]` → `[1,heads,Lq,Lk]`. The
/// biases are made in f32 and, as in [`with_window`], added outside the f32 set.
pub fn with_alibi(
    g: &mut Graph,
    cfg: &ModelConfig,
    mask: &str,
    query_pos: &str,
    key_pos: &str,
) -> String {
    let first = g.nodes.len();
    let q = g.reshape(query_pos, &[1, 1, -1, 1]);
    let k = g.reshape(key_pos, &[1, 1, 1, -1]);
    let distance = g.op("Sub", &[&k, &q], vec![]);
    let heads = cfg.num_attention_heads;
    let slopes = crate::family::alibi::slopes(heads);
    let slopes = g.const_f32(
        "alibi_slopes",
        &[1, heads, 1, 1],
        slopes.iter().map(|&s| s as f32).collect(),
    );
    let bias = g.mul(&distance, &slopes);
    g.keep_f32_since(first);
    g.add(mask, &bias)
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

#[cfg(test)]
mod tests {
    use crate::arch::{build, pieces, Piece, PieceOptions};
    use serde_json::json;

    /// gemma2 with a short window: global layers get the window ops too (with a window that
    /// hides nothing), so every block but the last (the final norm) is the same graph as
    /// block 0 and gets block 0's I/O addresses.
    #[test]
    fn local_and_global_blocks_are_the_same_graph() {
        let c = crate::model::config::test_config(
            "gemma2",
            64,
            json!({"num_hidden_layers": 3, "sliding_window": 4, "head_dim": 16}),
        )
        .unwrap();
        assert_eq!((c.layer.window(0), c.layer.window(1)), (Some(4), None));
        let ops = |p: Piece, o: &PieceOptions| -> Vec<(&str, usize)> {
            let g = build(p, &c, o);
            g.nodes.iter().map(|n| (n.op, n.inputs.len())).collect()
        };
        for dynamic in [false, true] {
            let o = PieceOptions::new(32, Some(16))
                .unwrap()
                .with_dynamic(dynamic)
                .with_history(true, 8);
            for p in pieces(&c, &o) {
                let same_in_layer_0 = match p {
                    Piece::Block(1) => Piece::Block(0),
                    Piece::BlockCache(1) => Piece::BlockCache(0),
                    Piece::BlockCacheStage(1, k) => Piece::BlockCacheStage(0, k),
                    Piece::BlockKv(1) => Piece::BlockKv(0),
                    _ => continue,
                };
                assert_eq!(ops(p, &o), ops(same_in_layer_0, &o), "{p:?}");
            }
        }
    }
}
