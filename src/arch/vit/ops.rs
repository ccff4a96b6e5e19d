//! The vision towers' building blocks as `graph` ops: linears with bias, LayerNorm / RMSNorm
//! with their own eps, the activations, 2-D rotary and full multi-head attention with an
//! optional additive mask. Rows are `[tokens, width]` (no batch axis), as llm_convert.py's vit.

use crate::graph::{Attr, Graph};

/// `x Wᵀ (+ b)`, W `[out, in]` in the checkpoint, stored transposed as `[in, out]`.
pub fn linear(g: &mut Graph, x: &str, prefix: &str, inp: usize, out: usize, bias: bool) -> String {
    let w = g.weight(&format!("{prefix}.weight"), &[inp, out], true);
    let y = g.op("MatMul", &[x, &w], vec![]);
    if bias {
        let b = g.weight(&format!("{prefix}.bias"), &[out], false);
        g.add(&y, &b)
    } else {
        y
    }
}

/// One of the q/k/v parts of a fused `[3·out, in]` projection (rows `part·out ..`), with
/// its bias slice; the slices of a weight are folded by TPU-MLIR.
pub fn fused_part(
    g: &mut Graph,
    x: &str,
    prefix: &str,
    inp: usize,
    out: usize,
    part: usize,
    parts: usize,
) -> String {
    let w = g.weight(&format!("{prefix}.weight"), &[inp, parts * out], true);
    let b = g.weight(&format!("{prefix}.bias"), &[parts * out], false);
    let (s, e) = ((part * out) as i64, ((part + 1) * out) as i64);
    let w = g.slice(&w, 1, s, e);
    let b = g.slice(&b, 0, s, e);
    let y = g.op("MatMul", &[x, &w], vec![]);
    g.add(&y, &b)
}

/// The norm kinds of the vision towers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VitNorm {
    /// `x / sqrt(mean(x²) + eps) · w`.
    Rms,
    /// LayerNorm with weight and bias.
    Layer,
}

/// `norm(x)` over the last axis with `<prefix>.weight` (and `.bias` for LayerNorm).
pub fn norm(g: &mut Graph, kind: VitNorm, x: &str, prefix: &str, dim: usize, eps: f64) -> String {
    let w = g.weight(&format!("{prefix}.weight"), &[dim], false);
    match kind {
        VitNorm::Rms => {
            let sq = g.mul(x, x);
            let ms = g.op(
                "ReduceMean",
                &[&sq],
                vec![("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))],
            );
            let eps = g.scalar("eps", eps as f32);
            let var = g.add(&ms, &eps);
            let rms = g.op("Sqrt", &[&var], vec![]);
            let normed = g.op("Div", &[x, &rms], vec![]);
            g.mul(&normed, &w)
        }
        VitNorm::Layer => {
            let b = g.weight(&format!("{prefix}.bias"), &[dim], false);
            g.op(
                "LayerNormalization",
                &[x, &w, &b],
                vec![
                    ("axis", Attr::Int(-1)),
                    ("epsilon", Attr::Float(eps as f32)),
                ],
            )
        }
    }
}

/// The activations the vision towers use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VitAct {
    Silu,
    /// `x · sigmoid(1.702 x)` (Qwen2-VL's quick_gelu).
    QuickGelu,
    /// The exact (erf) GELU.
    Gelu,
}

pub fn activate(g: &mut Graph, act: VitAct, x: &str) -> String {
    match act {
        VitAct::Silu => {
            let s = g.op("Sigmoid", &[x], vec![]);
            g.mul(x, &s)
        }
        VitAct::QuickGelu => {
            let scaled = g.scale(x, 1.702);
            let s = g.op("Sigmoid", &[&scaled], vec![]);
            g.mul(x, &s)
        }
        VitAct::Gelu => {
            let inner = g.scale(x, std::f64::consts::FRAC_1_SQRT_2);
            let erf = g.op("Erf", &[&inner], vec![]);
            let one = g.scalar("one", 1.0);
            let erf = g.add(&erf, &one);
            let half = g.scale(x, 0.5);
            g.mul(&half, &erf)
        }
    }
}

/// `x · cos + rotate_half(x) · sin`, x `[1, P, heads, d]`, cos/sin `[1, P, 1, d]`.
pub fn rotate(g: &mut Graph, x: &str, cos: &str, sin: &str, d: usize) -> String {
    let half = (d / 2) as i64;
    let x1 = g.slice(x, 3, 0, half);
    let x2 = g.slice(x, 3, half, d as i64);
    let neg = g.op("Neg", &[&x2], vec![]);
    let rot = g.concat(&[&neg, &x1], 3);
    let a = g.mul(x, cos);
    let b = g.mul(&rot, sin);
    g.add(&a, &b)
}

/// Multi-head attention of `[1, P, heads, d]` q/k/v (scaled by `scale`, plus an additive
/// `[1,1,P,P]` mask) → `[P, heads·d]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    g: &mut Graph,
    q: &str,
    k: &str,
    v: &str,
    mask: Option<&str>,
    heads: usize,
    d: usize,
    scale: f64,
) -> String {
    let qt = g.transpose(q, &[0, 2, 1, 3]);
    let kt = g.transpose(k, &[0, 2, 3, 1]);
    let vt = g.transpose(v, &[0, 2, 1, 3]);
    let qt = g.scale(&qt, scale);
    let mut scores = g.op("MatMul", &[&qt, &kt], vec![]);
    if let Some(m) = mask {
        scores = g.add(&scores, m);
    }
    let probs = g.op("Softmax", &[&scores], vec![("axis", Attr::Int(-1))]);
    let o = g.op("MatMul", &[&probs, &vt], vec![]);
    let o = g.transpose(&o, &[0, 2, 1, 3]);
    g.reshape(&o, &[-1, (heads * d) as i64])
}
