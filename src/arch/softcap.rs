//! tanh soft-capping (gemma2's attention scores and final logits): `tanh(x / c) · c`, which
//! keeps the order of values but bounds them to (-c, c).

use crate::graph::Graph;

/// `tanh(x / cap) · cap`.
pub fn softcap(g: &mut Graph, x: &str, cap: f64) -> String {
    let scaled = g.scale(x, 1.0 / cap);
    let t = g.op("Tanh", &[&scaled], vec![]);
    g.scale(&t, cap)
}

/// `x` soft-capped by `cap`, or `x` itself without one.
pub fn maybe_softcap(g: &mut Graph, x: &str, cap: Option<f64>) -> String {
    match cap {
        Some(c) => softcap(g, x, c),
        None => x.to_string(),
    }
}
