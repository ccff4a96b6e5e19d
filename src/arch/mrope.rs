//! Qwen2-VL / Qwen2.5-VL multimodal RoPE in the text blocks (vlm.md §1.5): position_ids are
//! `[3, L]` (temporal, height, width rows), the cos/sin table rows are gathered for all three,
//! and frequency j takes the row of the `mrope_section` it falls in (transformers'
//! `apply_multimodal_rotary_pos_emb`, the section list applied to both halves).

use super::mask::{positions_f32, MASK_VALUE};
use crate::graph::{Attr, Graph};
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
/// (a CumSum over ones, one per column of `position_ids [3, L]`), since M-RoPE positions
/// repeat within an image. Kept in f32 like the other in-graph masks.
///
/// Counted from position_ids, never from input_states: with `--quant_input` TPU-MLIR gives
/// an input the dtype of its first consumer, and an f32-kept op reading input_states made it
/// an F32 input where the runtime writes the previous block's bf16/f16 rows (issue 12).
pub fn sequence_causal_mask(g: &mut Graph, position_ids: &str) -> String {
    let first = g.nodes.len();
    let (count, one) = sequence_count(g, position_ids);
    let q = g.reshape(&count, &[1, 1, -1, 1]);
    let k = g.reshape(&count, &[1, 1, 1, -1]);
    let ahead = g.op("Sub", &[&k, &q], vec![]);
    let ahead = g.op("Relu", &[&ahead], vec![]);
    let future = g.op("Min", &[&ahead, &one], vec![]);
    let mask = g.scale(&future, MASK_VALUE);
    g.keep_f32_since(first);
    mask
}

/// The sequence indices `old..old+L` of block_kv's new tokens, f32 `[1, L]`, for its causal
/// mask over the `old + L` keys (`key_pos` = `0..old+L`): the new tokens are the last L
/// keys, so token j is `max(key_pos) - L + (j + 1)`, with `old` varying per call.
///
/// Nothing here reads history_k/v: as for input_states, an f32-kept op there would make
/// TPU-MLIR compile them as F32 inputs where the runtime copies bf16/f16 KV.
pub fn history_query_indices(g: &mut Graph, position_ids: &str, key_pos: &str) -> String {
    let first = g.nodes.len();
    let (count, _) = sequence_count(g, position_ids);
    let max = |g: &mut Graph, x: &str| {
        let keep = vec![("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))];
        g.op("ReduceMax", &[x], keep)
    };
    let last_key = max(g, key_pos);
    let new = max(g, &count);
    let old = g.op("Sub", &[&last_key, &new], vec![]);
    let idx = g.add(&old, &count);
    g.keep_f32_since(first);
    idx
}

/// `[1, 2, …, L]` (f32 `[1, L]`) for the L columns of `position_ids [3, L]`, and the scalar
/// one it was counted with.
fn sequence_count(g: &mut Graph, position_ids: &str) -> (String, String) {
    let pos = positions_f32(g, position_ids);
    let row = g.slice(&pos, 0, 0, 1);
    let zero = g.scale(&row, 0.0);
    let one = g.scalar("one", 1.0);
    let ones = g.add(&zero, &one);
    let axis = g.const_i64("axis", &[1]);
    let count = g.op("CumSum", &[&ones, &axis], vec![]);
    (count, one)
}

#[cfg(test)]
mod tests {
    use crate::arch::{build, pieces, PieceOptions};
    use crate::model::ModelConfig;
    use serde_json::json;
    use std::path::Path;

    /// The tiny Qwen2.5-VL's config (M-RoPE sections 4, 6, 6) and a mistral with a window.
    fn configs() -> Vec<ModelConfig> {
        let text = json!({"model_type": "qwen2_5_vl_text", "hidden_size": 128,
            "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
            "intermediate_size": 256, "vocab_size": 512,
            "rope_parameters": {"rope_type": "default", "mrope_section": [4, 6, 6],
                                "rope_theta": 10000.0}});
        let vlm = json!({"model_type": "qwen2_5_vl", "text_config": text, "image_token_id": 300,
            "vision_config": {"depth": 2, "hidden_size": 64, "num_heads": 2,
                "intermediate_size": 96, "out_hidden_size": 128, "fullatt_block_indexes": [1]}});
        let mrope = ModelConfig::from_json(&vlm, Path::new("config.json")).unwrap();
        assert!(super::section(&mrope).is_some());
        let mistral =
            crate::model::config::test_config("mistral", 64, json!({"sliding_window": 4})).unwrap();
        vec![mrope, mistral]
    }

    /// No op kept in f32 reads a piece's input_states or history_k/v: with `--quant_input`
    /// TPU-MLIR would make that input F32, and the runtime writes bf16/f16 hidden states and
    /// KV into it (the dynamic M-RoPE blocks' mask once sliced input_states, and every block
    /// read garbage).
    #[test]
    fn half_precision_inputs_feed_no_f32_op() {
        for c in configs() {
            for dynamic in [false, true] {
                let o = PieceOptions::new(32, Some(16))
                    .unwrap()
                    .with_dynamic(dynamic)
                    .with_history(true, 8);
                for p in pieces(&c, &o) {
                    let g = build(p, &c, &o);
                    for input in ["input_states", "history_k", "history_v"] {
                        for n in g
                            .nodes
                            .iter()
                            .filter(|n| n.inputs.iter().any(|i| i == input))
                        {
                            let name = format!("{}_{}", n.outputs[0], n.op);
                            assert!(
                                !g.f32_ops.contains(&name),
                                "{p:?} dynamic={dynamic}: {name} reads {input}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// block_kv takes the same `[3, L]` position_ids as block_i with M-RoPE (`[1, L]`
    /// without). With M-RoPE its mask's query side is counted from position_ids' columns (a
    /// CumSum, then offset by the history length via ReduceMax), since positions repeat
    /// within an image; the text block_kv compares the positions themselves.
    #[test]
    fn block_kv_takes_the_blocks_positions() {
        use crate::arch::Piece;
        for c in configs() {
            let mrope = super::section(&c).is_some();
            let o = PieceOptions::new(32, Some(16))
                .unwrap()
                .with_dynamic(true)
                .with_history(true, 0);
            let kv = build(Piece::BlockKv(0), &c, &o);
            let block = build(Piece::Block(0), &c, &o);
            let dims = |g: &crate::graph::Graph| {
                let pos = g.inputs.iter().find(|i| i.name == "position_ids");
                pos.map(|i| (i.dims.clone(), i.dynamic_axis))
            };
            assert_eq!(dims(&kv), dims(&block));
            let rows = if mrope { 3 } else { 1 };
            assert_eq!(dims(&kv), Some((vec![rows, 16], Some(1))));
            let count = |op: &str| kv.nodes.iter().filter(|n| n.op == op).count();
            // The keys' CumSum, and with M-RoPE the queries'.
            assert_eq!(count("CumSum"), if mrope { 2 } else { 1 });
            assert_eq!(count("ReduceMax"), if mrope { 2 } else { 0 });
            // The KV history feeds only the concatenation with the new K/V: any other first
            // consumer (the M-RoPE mask once read the history keys through a Reshape) made
            // TPU-MLIR compile history_k as an F32 input.
            for input in ["history_k", "history_v"] {
                for n in kv
                    .nodes
                    .iter()
                    .filter(|n| n.inputs.iter().any(|i| i == input))
                {
                    assert_eq!(n.op, "Concat", "{input}");
                }
            }
        }
    }
}
