//! A sparse layer's MLP (qwen2_moe, qwen3_moe) as graph ops, with exact top-k routing at
//! dense cost: the router's softmax weights of the experts outside each token's top k are
//! zeroed (an expert is kept when its weight is at least the k-th largest), optionally renormalised by the top-k sum, and every expert runs on every token,
//! scaled by its weight column. The routing runs in f32 (quantize table) so bf16 rounding
//! does not pick other experts; the experts are plain MatMuls, so weight-only quantization
//! (w4/w8) applies to them as to the dense MLP.

use super::decoder::linear;
use crate::family::moe::{Moe, Proj};
use crate::graph::{Attr, Graph};
use crate::model::ModelConfig;

/// The MoE MLP of `layer` on `x` `[1, L, H]`, before the residual scale.
pub fn moe_mlp(g: &mut Graph, cfg: &ModelConfig, layer: usize, x: &str, moe: &Moe) -> String {
    let (h, i, n) = (cfg.hidden_size, moe.intermediate_size, cfg.weights());
    let weights = routing_weights(g, cfg, layer, x, moe);
    let mut sum: Option<String> = None;
    for e in 0..moe.num_experts {
        let m = |p: Proj| moe.expert(n, layer, e, p);
        let y = swiglu(g, x, [m(Proj::Gate), m(Proj::Up), m(Proj::Down)], h, i);
        let w = g.slice(&weights, 2, e as i64, e as i64 + 1);
        let y = g.mul(&y, &w);
        sum = Some(match sum {
            Some(s) => g.add(&s, &y),
            None => y,
        });
    }
    let mut out = sum.unwrap_or_else(|| g.scale(x, 0.0));
    if let Some(si) = moe.shared_expert {
        let m = |p: Proj| moe.shared(n, layer, p);
        let shared = swiglu(g, x, [m(Proj::Gate), m(Proj::Up), m(Proj::Down)], h, si);
        let gate = linear(g, x, &moe.shared_gate(n, layer), h, 1, false);
        let gate = g.op("Sigmoid", &[&gate], vec![]);
        let shared = g.mul(&shared, &gate);
        out = g.add(&out, &shared);
    }
    out
}

/// `[1, L, E]`: each token's softmax router weight on its top-k experts, 0 elsewhere
/// (divided by the top-k sum with `norm_topk_prob`). Kept in f32.
///
/// The k-th largest weight comes from k-1 rounds of "drop the row maximum" (ReduceMax, Less,
/// Where) rather than TopK: with an ONNX TopK here, TPU-MLIR 1.30.2's block_cache net gave
/// garbage (1e29) on the simulator while block_i was right; its ONNX front end cannot ask for
/// `use_hau=False`, which llm_convert.py passes to TopK at sequence length 1. Exact ties at the k-th weight keep
/// every tied expert (transformers keeps the lower index); f32 router weights do not tie.
fn routing_weights(g: &mut Graph, cfg: &ModelConfig, layer: usize, x: &str, moe: &Moe) -> String {
    let (h, e) = (cfg.hidden_size, moe.num_experts);
    let first = g.nodes.len();
    let logits = linear(g, x, &moe.router(cfg.weights(), layer), h, e, false);
    let probs = g.op("Softmax", &[&logits], vec![("axis", Attr::Int(-1))]);
    let row_max = |g: &mut Graph, t: &str| {
        let axes = ("axes", Attr::Ints(vec![-1]));
        g.op("ReduceMax", &[t], vec![axes, ("keepdims", Attr::Int(1))])
    };
    let gone = g.scalar("gone", -1.0);
    let mut rest = probs.clone();
    for _ in 1..moe.top_k {
        let max = row_max(g, &rest);
        let below = g.op("Less", &[&rest, &max], vec![]);
        rest = g.op("Where", &[&below, &rest, &gone], vec![]);
    }
    let kth = row_max(g, &rest);
    let dropped = g.op("Less", &[&probs, &kth], vec![]);
    let zero = g.scalar("zero", 0.0);
    let mut weights = g.op("Where", &[&dropped, &zero, &probs], vec![]);
    if moe.norm_topk_prob {
        let axes = g.const_i64("axes", &[-1]);
        let total = g.op(
            "ReduceSum",
            &[&weights, &axes],
            vec![("keepdims", Attr::Int(1))],
        );
        weights = g.op("Div", &[&weights, &total], vec![]);
    }
    g.keep_f32_since(first);
    weights
}

/// `down(silu(gate(x)) * up(x))` of width `i`, no biases.
fn swiglu(g: &mut Graph, x: &str, [gate, up, down]: [String; 3], h: usize, i: usize) -> String {
    let gate = linear(g, x, &gate, h, i, false);
    let sig = g.op("Sigmoid", &[&gate], vec![]);
    let act = g.mul(&gate, &sig);
    let up = linear(g, x, &up, h, i, false);
    let prod = g.mul(&act, &up);
    linear(g, &prod, &down, i, h, false)
}
