//! One decoder layer, as the family's [`LayerSpec`](crate::family::LayerSpec) describes it,
//! as `block_i` (prefill), `block_cache_i` (decode with the KV history) and `block_kv_i`, in
//! the runtime's `[batch, seq, heads, head_dim]` layout. RoPE is applied to q and the new k,
//! so cached keys are post-RoPE.

use super::mask::{
    causal_mask, decode_key_positions, effective_window, key_positions, positions_f32, with_alibi,
    with_window,
};
use super::softcap::maybe_softcap;
use super::{mrope, rope, PieceOptions};
use crate::family::{Activation, Norm, Projections, RotaryDims, RotaryPairs};
use crate::graph::{Attr, Elem, Graph};
use crate::model::ModelConfig;

/// `block_i`: input_states `[1,L,H]`, position_ids `[1,L]`, attention_mask `[1,1,L,L]` →
/// output_states, k `[1,L,KVH,D]`, v. With `dynamic`, L varies per call (up to
/// MAX_INPUT_LENGTH) and there is no mask input: the causal mask is built from position_ids.
/// A sliding window and ALiBi's biases are applied in-graph from position_ids either way.
pub fn prefill_block(cfg: &ModelConfig, o: &PieceOptions, layer: usize) -> Graph {
    let l = o.max_input_length;
    let axis = o.dynamic.then_some(1);
    let window = effective_window(cfg, layer, l);
    let alibi = cfg.layer.attention.alibi;
    let mut g = Graph::new(format!("block_{layer}"));
    let x = g.input_with_axis("input_states", Elem::F32, &[1, l, cfg.hidden_size], axis);
    let pos_dims = mrope::position_dims(cfg, l);
    let pos = g.input_with_axis("position_ids", Elem::I32, &pos_dims, axis);
    // M-RoPE positions repeat within an image: its causal mask counts rows instead.
    let mrope = mrope::section(cfg).is_some();
    let p =
        ((o.dynamic && !mrope) || window.is_some() || alibi).then(|| positions_f32(&mut g, &pos));
    let mut mask = match &p {
        Some(p) if o.dynamic => causal_mask(&mut g, p, p),
        _ if o.dynamic => mrope::sequence_causal_mask(&mut g, &pos),
        _ => g.input("attention_mask", Elem::F32, &[1, 1, l, l]),
    };
    if let (Some(w), Some(p)) = (window, &p) {
        mask = with_window(&mut g, &mask, p, p, w);
    }
    if let (true, Some(p)) = (alibi, &p) {
        mask = with_alibi(&mut g, cfg, &mask, p, p);
    }
    layer_body(
        &mut g,
        cfg,
        o,
        layer,
        &x,
        &pos,
        Attn::Prefill { mask: &mask },
        l,
    );
    g
}

/// `block_cache_i`: input_states `[1,1,H]`, position_ids `[1,1]`, attention_mask
/// `[1,1,1,kv+1]`, history_k/v `[1,kv,KVH,D]` → output_states, k `[1,1,KVH,D]`, v (the new token
/// is concatenated after the kv history slots). `kv` is S, or a shorter decode stage's length.
/// A sliding window hides the history slots too far behind position_ids, and ALiBi biases
/// them by their distance (slot j holds position j).
pub fn decode_block(cfg: &ModelConfig, o: &PieceOptions, layer: usize, kv: usize) -> Graph {
    let (kvh, d) = (cfg.num_key_value_heads, cfg.head_dim);
    let mut g = Graph::new(format!("block_cache_{layer}"));
    let x = g.input("input_states", Elem::F32, &[1, 1, cfg.hidden_size]);
    let pos = g.input("position_ids", Elem::I32, &mrope::position_dims(cfg, 1));
    let mut mask = g.input("attention_mask", Elem::F32, &[1, 1, 1, kv + 1]);
    let hk = g.input("history_k", Elem::F32, &[1, kv, kvh, d]);
    let hv = g.input("history_v", Elem::F32, &[1, kv, kvh, d]);
    let window = effective_window(cfg, layer, kv);
    if window.is_some() || cfg.layer.attention.alibi {
        let p = positions_f32(&mut g, &pos);
        let keys = decode_key_positions(&mut g, kv, &p);
        if let Some(w) = window {
            mask = with_window(&mut g, &mask, &p, &keys, w);
        }
        if cfg.layer.attention.alibi {
            mask = with_alibi(&mut g, cfg, &mask, &p, &keys);
        }
    }
    let attn = Attn::Decode {
        history: (&hk, &hv),
        mask: &mask,
        slots: kv,
    };
    layer_body(&mut g, cfg, o, layer, &x, &pos, attn, 1);
    g
}

/// The history length axis of block_kv (independent of the new-token axis).
const HISTORY_AXIS: &str = "history_len";

/// `block_kv_i` (`--use_history_kv`): input_states `[1,L,H]`, position_ids `[1,L]` (old+j;
/// M-RoPE: `[3,L]`), history_k/v `[1,old,KVH,D]` (up to S) → output_states, k `[1,L,KVH,D]`,
/// v. L and old vary per call; every new token sees the whole history and the new tokens up
/// to itself.
pub fn history_block(cfg: &ModelConfig, o: &PieceOptions, layer: usize) -> Graph {
    let (l, s) = (o.max_input_length, o.seq_length);
    let (kvh, d) = (cfg.num_key_value_heads, cfg.head_dim);
    let mut g = Graph::new(format!("block_kv_{layer}"));
    let x = g.input_with_axis("input_states", Elem::F32, &[1, l, cfg.hidden_size], Some(1));
    let pos_dims = mrope::position_dims(cfg, l);
    let pos = g.input_with_axis("position_ids", Elem::I32, &pos_dims, Some(1));
    let hk = g.input_with_param(
        "history_k",
        Elem::F32,
        &[1, s, kvh, d],
        Some(1),
        HISTORY_AXIS,
    );
    let hv = g.input_with_param(
        "history_v",
        Elem::F32,
        &[1, s, kvh, d],
        Some(1),
        HISTORY_AXIS,
    );
    let attn = Attn::History {
        history: (&hk, &hv),
    };
    layer_body(&mut g, cfg, o, layer, &x, &pos, attn, l);
    g
}

/// What the layer's attention looks at besides the new tokens' own K/V.
enum Attn<'a> {
    /// Prefill: the new tokens only, with an additive `[1,1,L,L]` mask.
    Prefill { mask: &'a str },
    /// Decode: the history slots then the new token, one mask over all of them.
    Decode {
        history: (&'a str, &'a str),
        mask: &'a str,
        /// History slots (the decode stage's).
        slots: usize,
    },
    /// History prefill: every history slot, then the new tokens causally. The mask is built
    /// over all `old+L` keys from their positions `0..old+L`, counted from the concatenated
    /// keys (a CumSum of ones), since `old` varies per call. With M-RoPE (positions repeat
    /// within an image, so they do not order the tokens) the queries' sequence indices
    /// `old..old+L` stand for their positions.
    History { history: (&'a str, &'a str) },
}

/// Which of the block's linears are `A16MatMul`s: a pre-quantized checkpoint's, or a GGUF's
/// quantized ones when the conversion keeps the file's own quantization.
fn weight_only(cfg: &ModelConfig, o: &PieceOptions) -> Option<crate::graph::WeightOnly> {
    if let Some(q) = &cfg.quant {
        return Some(crate::graph::WeightOnly {
            bits: q.bits,
            group_size: q.group_size,
            not_converted: q.modules_to_not_convert.clone(),
            permuted: q.desc_act,
            per_layer: None,
        });
    }
    if !o.gguf_own_quant || cfg.gguf_linears.is_empty() {
        return None;
    }
    let layers = cfg
        .gguf_linears
        .iter()
        .map(|(prefix, f)| (prefix.clone(), f.bits))
        .collect();
    Some(crate::graph::WeightOnly {
        bits: 4,
        group_size: crate::model::gguf_linear::GROUP,
        not_converted: Vec::new(),
        permuted: false,
        per_layer: Some(layers),
    })
}

#[allow(clippy::too_many_arguments)]
fn layer_body(
    g: &mut Graph,
    cfg: &ModelConfig,
    o: &PieceOptions,
    layer: usize,
    x: &str,
    pos: &str,
    attn: Attn,
    len: usize,
) {
    g.weight_only = weight_only(cfg, o);
    let (h, nh, kvh, d) = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let (spec, n) = (&cfg.layer, cfg.weights());
    let m = |module: &str| n.module(layer, module);
    let ln = norm(g, cfg, x, &n.weight(layer, n.input_norm), h);
    let (q, k, v) = match spec.attention.qkv {
        Projections::Separate => {
            let bias = spec.attention.qkv_bias;
            let q = linear(g, &ln, &m(n.q_proj), h, nh * d, bias);
            let k = linear(g, &ln, &m(n.k_proj), h, kvh * d, bias);
            let v = linear(g, &ln, &m(n.v_proj), h, kvh * d, bias);
            (q, k, v)
        }
        Projections::Fused => {
            let bias = spec.attention.qkv_bias;
            let prefix = m(n.qkv_proj);
            let [q, k, v] = fused_linear(g, &ln, &prefix, h, [nh * d, kvh * d, kvh * d], bias);
            (q, k, v)
        }
    };
    // -1 on the sequence axis: dynamic prefill blocks see any length.
    let mut q = g.reshape(&q, &[1, -1, nh as i64, d as i64]);
    let mut k = g.reshape(&k, &[1, -1, kvh as i64, d as i64]);
    let v = g.reshape(&v, &[1, -1, kvh as i64, d as i64]);
    if spec.attention.qk_norm {
        q = norm(g, cfg, &q, &n.weight(layer, n.q_norm), d);
        k = norm(g, cfg, &k, &n.weight(layer, n.k_norm), d);
    }
    // ALiBi models have no rotary: their positions enter as score biases (`with_alibi`).
    let (q, k) = if spec.attention.alibi {
        (q, k)
    } else {
        rotate(g, cfg, o, layer, pos, &q, &k)
    };
    // (keys, additive mask) parts of the score matrix, and the values in the same order.
    let (parts, v_all): (Vec<(String, Option<String>)>, String) = match &attn {
        Attn::Prefill { mask } => (vec![(k.clone(), Some(mask.to_string()))], v.clone()),
        Attn::Decode {
            history: (hk, hv),
            mask,
            ..
        } => (
            vec![(g.concat(&[hk, &k], 1), Some(mask.to_string()))],
            g.concat(&[hv, &v], 1),
        ),
        Attn::History { history: (hk, hv) } => {
            let k_all = g.concat(&[hk, &k], 1);
            let key_pos = key_positions(g, &k_all);
            let query_pos = match mrope::section(cfg) {
                Some(_) => mrope::history_query_indices(g, pos, &key_pos),
                None => positions_f32(g, pos),
            };
            let mut mask = causal_mask(g, &query_pos, &key_pos);
            if let Some(w) = effective_window(cfg, layer, o.seq_length) {
                mask = with_window(g, &mask, &query_pos, &key_pos, w);
            }
            if cfg.layer.attention.alibi {
                mask = with_alibi(g, cfg, &mask, &query_pos, &key_pos);
            }
            (vec![(k_all, Some(mask))], g.concat(&[hv, &v], 1))
        }
    };
    let attn_out = attention(g, cfg, &q, &parts, &v_all);
    let o_bias = spec.attention.o_bias;
    let mut o_proj = linear(g, &attn_out, &m(n.o_proj), nh * d, h, o_bias);
    if spec.branch_output_norms {
        o_proj = norm(g, cfg, &o_proj, &n.weight(layer, n.attn_output_norm), h);
    }
    let o_proj = g.scale(&o_proj, cfg.residual_scale());
    let x = g.add(x, &o_proj);
    let ln2 = norm(g, cfg, &x, &n.weight(layer, n.post_attention_norm), h);
    let mut down = mlp(g, cfg, layer, &ln2);
    if spec.branch_output_norms {
        down = norm(g, cfg, &down, &n.weight(layer, n.mlp_output_norm), h);
    }
    let down = g.scale(&down, cfg.residual_scale());
    let mut out = g.add(&x, &down);
    // Single device: the final norm is folded into the last block.
    if layer + 1 == cfg.num_hidden_layers {
        out = norm(g, cfg, &out, n.final_norm, h);
    }
    let axis = match attn {
        Attn::Prefill { .. } => o.dynamic.then_some(1),
        Attn::Decode { .. } => None,
        Attn::History { .. } => Some(1),
    };
    g.output_with_axis(&out, "output_states", Elem::F32, &[1, len, h], axis);
    let (k, v, len) = match attn {
        Attn::Decode { slots, .. } if spec.attention.shifted_kv_cache => {
            // The whole cache shifted by one: history slots 1.. then the new token.
            let end = slots as i64 + 1;
            let k = g.slice(&parts[0].0, 1, 1, end);
            (k, g.slice(&v_all, 1, 1, end), slots)
        }
        _ => (k, v, len),
    };
    g.output_with_axis(&k, "k_cache", Elem::F32, &[1, len, kvh, d], axis);
    g.output_with_axis(&v, "v_cache", Elem::F32, &[1, len, kvh, d], axis);
}

/// q and k turned by the layer's rotary embedding at `pos`.
fn rotate(
    g: &mut Graph,
    cfg: &ModelConfig,
    o: &PieceOptions,
    layer: usize,
    pos: &str,
    q: &str,
    k: &str,
) -> (String, String) {
    let (nh, kvh, d) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let rotary = cfg.layer.attention.rotary;
    let rd = rotary.dim(d);
    let (cos_t, sin_t) = rope::tables(cfg, layer, o.seq_length);
    let cos_w = g.const_f32("rotary_cos", &[o.seq_length, 1, rd], cos_t);
    let sin_w = g.const_f32("rotary_sin", &[o.seq_length, 1, rd], sin_t);
    let cos = g.op("Gather", &[&cos_w, pos], vec![("axis", Attr::Int(0))]);
    let sin = g.op("Gather", &[&sin_w, pos], vec![("axis", Attr::Int(0))]);
    let (cos, sin) = rope::longrope_select(g, cfg, o.seq_length, pos, (cos, sin));
    let (cos, sin) = (
        mrope::select(g, cfg, cos, rd),
        mrope::select(g, cfg, sin, rd),
    );
    let turn = |g: &mut Graph, x: &str, heads: usize| {
        let rope = |g: &mut Graph, x: &str| match rotary.pairs {
            RotaryPairs::HalfSplit => apply_rope(g, x, &cos, &sin, rd),
            RotaryPairs::Interleaved => apply_rope_interleaved(g, x, &cos, &sin, heads, rd),
        };
        match rotary.dims {
            RotaryDims::Full => rope(g, x),
            RotaryDims::Partial { rotary_dim } => {
                let (rd, d) = (rotary_dim as i64, d as i64);
                let x_rot = g.slice(x, 3, 0, rd);
                let x_pass = g.slice(x, 3, rd, d);
                let turned = rope(g, &x_rot);
                g.concat(&[&turned, &x_pass], 3)
            }
        }
    };
    (turn(g, q, nh), turn(g, k, kvh))
}

/// `down(act(gate(x)) * up(x))`, before the residual scale.
fn mlp(g: &mut Graph, cfg: &ModelConfig, layer: usize, x: &str) -> String {
    let (h, i, n, spec) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.weights(),
        &cfg.layer.mlp,
    );
    if let Some(moe) = cfg.layer.moe_at(layer) {
        return super::moe::moe_mlp(g, cfg, layer, x, moe);
    }
    let m = |module: &str| n.module(layer, module);
    // Node order (gate, act, up) is part of the exported bytes: keep it.
    let (gate, fused_up) = match spec.gate_up {
        Projections::Separate => (linear(g, x, &m(n.gate_proj), h, i, spec.bias), None),
        Projections::Fused => {
            let [gate, up] = fused_linear(g, x, &m(n.gate_up_proj), h, [i, i], spec.bias);
            (gate, Some(up))
        }
    };
    let act = match spec.activation {
        Activation::Silu => {
            let sig = g.op("Sigmoid", &[&gate], vec![]);
            g.mul(&gate, &sig)
        }
        Activation::GeluTanh => gelu_tanh(g, &gate),
    };
    let up = match fused_up {
        Some(up) => up,
        None => linear(g, x, &m(n.up_proj), h, i, spec.bias),
    };
    let prod = g.mul(&act, &up);
    linear(g, &prod, &m(n.down_proj), i, h, spec.bias)
}

/// The layer's norm over the last axis.
fn norm(g: &mut Graph, cfg: &ModelConfig, x: &str, weight: &str, dim: usize) -> String {
    let one_plus = match cfg.layer.norm {
        Norm::Rms => false,
        Norm::RmsOnePlus => true,
    };
    rms_norm(g, cfg, x, weight, dim, one_plus)
}

/// A fused projection (output rows = `parts` one after another) as one linear per part, each
/// with its slice of the weight (folded by TPU-MLIR). Slicing the fused output instead lets
/// TPU-MLIR's w4 MatMul split rename an output (v_cache).
fn fused_linear<const N: usize>(
    g: &mut Graph,
    x: &str,
    prefix: &str,
    inp: usize,
    parts: [usize; N],
    bias: bool,
) -> [String; N] {
    let total: usize = parts.iter().sum();
    let w = g.weight(&format!("{prefix}.weight"), &[inp, total], true);
    let b = bias.then(|| g.weight(&format!("{prefix}.bias"), &[total], false));
    let mut start = 0;
    parts.map(|n| {
        let (s, e) = (start as i64, (start + n) as i64);
        start += n;
        let w_part = g.slice(&w, 1, s, e);
        let y = g.op("MatMul", &[x, &w_part], vec![]);
        match &b {
            Some(b) => {
                let b_part = g.slice(b, 0, s, e);
                g.add(&y, &b_part)
            }
            None => y,
        }
    })
}

/// `x / sqrt(mean(x²) + eps) * w` over the last axis (`* (1 + w)` with `one_plus`).
fn rms_norm(
    g: &mut Graph,
    cfg: &ModelConfig,
    x: &str,
    weight: &str,
    dim: usize,
    one_plus: bool,
) -> String {
    let sq = g.mul(x, x);
    let ms = g.op(
        "ReduceMean",
        &[&sq],
        vec![("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))],
    );
    let eps = g.scalar("eps", cfg.rms_norm_eps as f32);
    let var = g.add(&ms, &eps);
    let rms = g.op("Sqrt", &[&var], vec![]);
    let normed = g.op("Div", &[x, &rms], vec![]);
    let mut w = g.weight(weight, &[dim], false);
    if one_plus {
        let one = g.scalar("one", 1.0);
        w = g.add(&w, &one);
    }
    g.mul(&normed, &w)
}

/// `x/2 · (1 + tanh(sqrt(2/π) · (x + 0.044715 x³)))` from primitives (opset 17 has no Gelu).
fn gelu_tanh(g: &mut Graph, x: &str) -> String {
    let x2 = g.mul(x, x);
    let x3 = g.mul(&x2, x);
    let cubic = g.scale(&x3, 0.044715);
    let inner = g.add(x, &cubic);
    let inner = g.scale(&inner, (2.0 / std::f64::consts::PI).sqrt());
    let t = g.op("Tanh", &[&inner], vec![]);
    let one = g.scalar("one", 1.0);
    let t = g.add(&t, &one);
    let half_x = g.scale(x, 0.5);
    g.mul(&half_x, &t)
}

/// `x Wᵀ (+ b)` with W stored transposed as `[in, out]`.
pub(super) fn linear(
    g: &mut Graph,
    x: &str,
    prefix: &str,
    inp: usize,
    out: usize,
    bias: bool,
) -> String {
    let quantized = g
        .weight_only
        .clone()
        .and_then(|wo| Some((wo.bits_of(prefix)?, wo)));
    let y = match quantized {
        Some((bits, wo)) => g.a16_matmul(x, prefix, inp, out, &wo, bits),
        None => {
            let w = g.weight(&format!("{prefix}.weight"), &[inp, out], true);
            g.op("MatMul", &[x, &w], vec![])
        }
    };
    if bias {
        let b = g.weight(&format!("{prefix}.bias"), &[out], false);
        g.add(&y, &b)
    } else {
        y
    }
}

/// `x * cos + rotate_half(x) * sin`, x `[1, len, heads, D]`, cos/sin `[1, len, 1, D]`.
fn apply_rope(g: &mut Graph, x: &str, cos: &str, sin: &str, d: usize) -> String {
    let half = (d / 2) as i64;
    let x1 = g.slice(x, 3, 0, half);
    let x2 = g.slice(x, 3, half, d as i64);
    let neg = g.op("Neg", &[&x2], vec![]);
    let rot = g.concat(&[&neg, &x1], 3);
    let a = g.mul(x, cos);
    let b = g.mul(&rot, sin);
    g.add(&a, &b)
}

/// `x * cos + rotate_pairs(x) * sin` with pairs (2i, 2i+1): x `[1, len, heads, D]` viewed as
/// `[1, len, heads, D/2, 2]`, rotate_pairs(x) = (-x[2i+1], x[2i]); cos/sin repeat each
/// frequency twice.
fn apply_rope_interleaved(
    g: &mut Graph,
    x: &str,
    cos: &str,
    sin: &str,
    heads: usize,
    d: usize,
) -> String {
    let (heads, d) = (heads as i64, d as i64);
    let pairs = g.reshape(x, &[1, -1, heads, d / 2, 2]);
    let even = g.slice(&pairs, 4, 0, 1);
    let odd = g.slice(&pairs, 4, 1, 2);
    let neg = g.op("Neg", &[&odd], vec![]);
    let rot = g.concat(&[&neg, &even], 4);
    let rot = g.reshape(&rot, &[1, -1, heads, d]);
    let a = g.mul(x, cos);
    let b = g.mul(&rot, sin);
    g.add(&a, &b)
}

/// Grouped-query attention over key parts (each with an optional additive mask) whose
/// values, concatenated in the same order, are `v`; returns `[1, len, heads*D]`.
fn attention(
    g: &mut Graph,
    cfg: &ModelConfig,
    q: &str,
    parts: &[(String, Option<String>)],
    v: &str,
) -> String {
    let (nh, kvh, d) = (
        cfg.num_attention_heads as i64,
        cfg.num_key_value_heads as i64,
        cfg.head_dim as i64,
    );
    let groups = nh / kvh;
    // [1, kv_len, kvh, D] → [1, kv_len, nh, D]: each kv head serves `groups` query heads.
    let repeat = |g: &mut Graph, t: &str| -> String {
        if groups == 1 {
            return t.to_string();
        }
        if kvh == 1 {
            // One kv head (MQA): tile the heads axis itself. TPU-MLIR 1.30.2's tpuc-opt
            // crashes (segfault in --processor-tpu-optimize) on the 5-D tile of a 1-head axis.
            let reps = g.const_i64("reps", &[1, 1, groups, 1]);
            return g.op("Tile", &[t, &reps], vec![]);
        }
        let t = g.reshape(t, &[1, -1, kvh, 1, d]);
        let reps = g.const_i64("reps", &[1, 1, 1, groups, 1]);
        let t = g.op("Tile", &[&t, &reps], vec![]);
        g.reshape(&t, &[1, -1, nh, d])
    };
    let v = repeat(g, v);
    let qt = g.transpose(q, &[0, 2, 1, 3]); // [1, nh, len, D]
    let vt = g.transpose(&v, &[0, 2, 1, 3]); // [1, nh, kv_len, D]
    let mut all_scores = Vec::new();
    for (k, mask) in parts {
        let k = repeat(g, k);
        let kt = g.transpose(&k, &[0, 2, 3, 1]); // [1, nh, D, part_len]
        let scores = g.op("MatMul", &[&qt, &kt], vec![]);
        let scores = g.scale(&scores, cfg.layer.attention.scores.scale(d as usize));
        let scores = maybe_softcap(g, &scores, cfg.layer.attention.scores.softcap);
        all_scores.push(match mask {
            Some(m) if cfg.layer.attention.alibi => {
                // TPU-MLIR fuses scores + mask → Softmax → MatMul into one FAttention op whose
                // mask is one [L, K] plane for every head: ALiBi's per-head biases would be
                // lost. An f32 add keeps the pattern from matching.
                let first = g.nodes.len();
                let masked = g.add(&scores, m);
                g.keep_f32_since(first);
                masked
            }
            Some(m) => g.add(&scores, m),
            None => scores,
        });
    }
    let refs: Vec<&str> = all_scores.iter().map(String::as_str).collect();
    let scores = if refs.len() == 1 {
        all_scores[0].clone()
    } else {
        g.concat(&refs, -1)
    };
    let probs = g.op("Softmax", &[&scores], vec![("axis", Attr::Int(-1))]);
    let o = g.op("MatMul", &[&probs, &vt], vec![]);
    let o = g.transpose(&o, &[0, 2, 1, 3]);
    g.reshape(&o, &[1, -1, nh * d])
}
