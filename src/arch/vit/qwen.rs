//! The Qwen2-VL / Qwen2.5-VL vision tower as the `vit` net, with llm_convert.py's inputs
//! (vlm.md §1.2-1.3, §3): `input_states [P, C·T·p·p] F32`, `position_ids [P, 2] INT32`,
//! `full_attn_mask [1,1,P,P] F32`, and for Qwen2.5-VL `window_attn_mask [1,1,P,P] F32` and
//! `reverse_index [P/m²] INT32` → `[P/m², H]`. Nothing is pinned: every width, head_dim,
//! depth, patch and merge size comes from the config (llm_convert.py needs head_dim 80).
//! Norms, eps and biases follow transformers (vision RMSNorm eps 1e-6, where llm_convert.py
//! takes the LLM's eps).

use super::ops::{self, VitAct, VitNorm};
use crate::graph::{Attr, Elem, Graph};

/// Which of the two towers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QwenVitKind {
    /// Qwen2-VL: LayerNorm, fc1 → quick_gelu → fc2, full attention everywhere.
    Qwen2,
    /// Qwen2.5-VL: RMSNorm, gated SiLU MLP with biases, window attention except in the
    /// full-attention blocks, un-windowed by reverse_index at the end.
    Qwen2_5,
}

/// Everything the graph needs to know about the tower.
#[derive(Debug, Clone)]
pub struct QwenVitSpec {
    pub kind: QwenVitKind,
    /// Weight name prefix (`visual`).
    pub prefix: String,
    /// Vision width Hv.
    pub hidden: usize,
    pub heads: usize,
    pub depth: usize,
    /// MLP width (Qwen2-VL: mlp_ratio · Hv).
    pub intermediate: usize,
    /// Patch side in pixels.
    pub patch: usize,
    /// One patch row: in_channels · temporal_patch · patch².
    pub patch_dim: usize,
    pub merge: usize,
    /// Blocks with full attention (Qwen2.5-VL); the others use the window mask.
    pub fullatt_blocks: Vec<usize>,
    /// The LLM width H (the merger's output).
    pub out_hidden: usize,
    pub act: VitAct,
}

impl QwenVitSpec {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Image tokens out of `patches` patch rows.
    pub fn tokens(&self, patches: usize) -> usize {
        patches / (self.merge * self.merge)
    }

    fn norm_kind(&self) -> VitNorm {
        match self.kind {
            QwenVitKind::Qwen2 => VitNorm::Layer,
            QwenVitKind::Qwen2_5 => VitNorm::Rms,
        }
    }
}

/// transformers' fixed vision eps.
const VISION_EPS: f64 = 1e-6;
/// The vision rotary base (transformers' `VisionRotaryEmbedding` default).
const VISION_THETA: f64 = 10000.0;

/// cos/sin `[rows, head_dim/4]`: `pos · θ^(-2j/(head_dim/2))`, j < head_dim/4, for h and w
/// positions below `rows`.
pub fn rotary_tables(head_dim: usize, rows: usize) -> (Vec<f32>, Vec<f32>) {
    let dim = head_dim / 2;
    let freqs: Vec<f32> = (0..dim / 2)
        .map(|j| (1.0 / VISION_THETA.powf((2 * j) as f64 / dim as f64)) as f32)
        .collect();
    let mut cos = Vec::with_capacity(rows * freqs.len());
    let mut sin = Vec::with_capacity(rows * freqs.len());
    for pos in 0..rows {
        for f in &freqs {
            let angle = (pos as f32 * f) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// The `vit` graph for at most `patches` patch rows.
pub fn vit(spec: &QwenVitSpec, patches: usize) -> Graph {
    let (hv, heads, d, p) = (spec.hidden, spec.heads, spec.head_dim(), patches);
    let tokens = spec.tokens(p);
    let windowed = spec.kind == QwenVitKind::Qwen2_5;
    let mut g = Graph::new("vit");
    let x = g.input("input_states", Elem::F32, &[p, spec.patch_dim]);
    let pos = g.input("position_ids", Elem::I32, &[p, 2]);
    let full_mask = g.input("full_attn_mask", Elem::F32, &[1, 1, p, p]);
    let window = windowed.then(|| {
        let mask = g.input("window_attn_mask", Elem::F32, &[1, 1, p, p]);
        let reverse = g.input("reverse_index", Elem::I32, &[tokens]);
        (mask, reverse)
    });
    let pre = spec.prefix.as_str();

    // Patch embedding: the Conv3d (stride = kernel) is a matmul with its weight flattened.
    let patch_w = g.weight(
        &format!("{pre}.patch_embed.proj.weight"),
        &[spec.patch_dim, hv],
        true,
    );
    let mut h = g.op("MatMul", &[&x, &patch_w], vec![]);

    // 2-D rotary: (h, w) frequencies side by side, then both halves.
    let (cos_t, sin_t) = rotary_tables(d, p);
    let quarter = d / 4;
    let turn = |g: &mut Graph, hint: &str, table: Vec<f32>| {
        let w = g.const_f32(hint, &[p, quarter], table);
        let t = g.op("Gather", &[&w, &pos], vec![("axis", Attr::Int(0))]);
        let t = g.reshape(&t, &[1, -1, 1, (2 * quarter) as i64]);
        g.concat(&[&t, &t], 3)
    };
    let cos = turn(&mut g, "vision_rotary_cos", cos_t);
    let sin = turn(&mut g, "vision_rotary_sin", sin_t);

    for i in 0..spec.depth {
        let mask = match &window {
            Some((w, _)) if !spec.fullatt_blocks.contains(&i) => w.clone(),
            _ => full_mask.clone(),
        };
        h = block(&mut g, spec, i, &h, &cos, &sin, &mask, heads, d);
    }

    // Merger: norm per patch, m² neighbouring rows into one token, MLP to the LLM width.
    let merger = format!("{pre}.merger");
    let n = ops::norm(
        &mut g,
        spec.norm_kind(),
        &h,
        &format!("{merger}.ln_q"),
        hv,
        VISION_EPS,
    );
    let wide = hv * spec.merge * spec.merge;
    let n = g.reshape(&n, &[-1, wide as i64]);
    let y = ops::linear(&mut g, &n, &format!("{merger}.mlp.0"), wide, wide, true);
    let y = ops::activate(&mut g, VitAct::Gelu, &y);
    let mut y = ops::linear(
        &mut g,
        &y,
        &format!("{merger}.mlp.2"),
        wide,
        spec.out_hidden,
        true,
    );
    if let Some((_, reverse)) = &window {
        // Back from window order to raster order.
        y = g.op("Gather", &[&y, reverse], vec![("axis", Attr::Int(0))]);
    }
    g.output(&y, "hidden_states", Elem::F32, &[tokens, spec.out_hidden]);
    g
}

#[allow(clippy::too_many_arguments)]
fn block(
    g: &mut Graph,
    spec: &QwenVitSpec,
    i: usize,
    x: &str,
    cos: &str,
    sin: &str,
    mask: &str,
    heads: usize,
    d: usize,
) -> String {
    let hv = spec.hidden;
    let b = format!("{}.blocks.{i}", spec.prefix);
    let kind = spec.norm_kind();
    let n = ops::norm(g, kind, x, &format!("{b}.norm1"), hv, VISION_EPS);
    let qkv = format!("{b}.attn.qkv");
    let shape = [1, -1, heads as i64, d as i64];
    let qkv_part = |g: &mut Graph, part: usize| {
        let y = ops::fused_part(g, &n, &qkv, hv, hv, part, 3);
        g.reshape(&y, &shape)
    };
    let q = qkv_part(g, 0);
    let k = qkv_part(g, 1);
    let v = qkv_part(g, 2);
    let q = ops::rotate(g, &q, cos, sin, d);
    let k = ops::rotate(g, &k, cos, sin, d);
    let scale = 1.0 / (d as f64).sqrt();
    let a = ops::attention(g, &q, &k, &v, Some(mask), heads, d, scale);
    let a = ops::linear(g, &a, &format!("{b}.attn.proj"), hv, hv, true);
    let x = g.add(x, &a);
    let n = ops::norm(g, kind, &x, &format!("{b}.norm2"), hv, VISION_EPS);
    let mlp = format!("{b}.mlp");
    let inter = spec.intermediate;
    let y = match spec.kind {
        QwenVitKind::Qwen2 => {
            let up = ops::linear(g, &n, &format!("{mlp}.fc1"), hv, inter, true);
            let act = ops::activate(g, spec.act, &up);
            ops::linear(g, &act, &format!("{mlp}.fc2"), inter, hv, true)
        }
        QwenVitKind::Qwen2_5 => {
            let gate = ops::linear(g, &n, &format!("{mlp}.gate_proj"), hv, inter, true);
            let act = ops::activate(g, spec.act, &gate);
            let up = ops::linear(g, &n, &format!("{mlp}.up_proj"), hv, inter, true);
            let prod = g.mul(&act, &up);
            ops::linear(g, &prod, &format!("{mlp}.down_proj"), inter, hv, true)
        }
    };
    g.add(&x, &y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: QwenVitKind) -> QwenVitSpec {
        QwenVitSpec {
            kind,
            prefix: "visual".into(),
            hidden: 64,
            heads: 2,
            depth: 2,
            intermediate: 96,
            patch: 14,
            patch_dim: 1176,
            merge: 2,
            fullatt_blocks: vec![1],
            out_hidden: 128,
            act: VitAct::Silu,
        }
    }

    #[test]
    fn qwen2_5_vit_has_llm_convert_inputs() {
        let g = vit(&spec(QwenVitKind::Qwen2_5), 64);
        let names: Vec<(&str, Vec<usize>)> = g
            .inputs
            .iter()
            .map(|i| (i.name.as_str(), i.dims.clone()))
            .collect();
        assert_eq!(
            names,
            [
                ("input_states", vec![64, 1176]),
                ("position_ids", vec![64, 2]),
                ("full_attn_mask", vec![1, 1, 64, 64]),
                ("window_attn_mask", vec![1, 1, 64, 64]),
                ("reverse_index", vec![16]),
            ]
        );
        assert_eq!(g.outputs[0].dims, [16, 128]);
        // Block 0 is windowed, block 1 full: both masks are used.
        let uses = |name: &str| g.nodes.iter().any(|n| n.inputs.iter().any(|i| i == name));
        assert!(uses("window_attn_mask") && uses("full_attn_mask") && uses("reverse_index"));
    }

    #[test]
    fn qwen2_vit_has_three_inputs() {
        let g = vit(&spec(QwenVitKind::Qwen2), 64);
        assert_eq!(g.inputs.len(), 3);
        assert!(g.initializers.iter().any(|i| i.name.contains("mlp.fc1")));
    }

    #[test]
    fn rotary_table_turns_at_the_vision_frequencies() {
        let (cos, sin) = rotary_tables(32, 3);
        assert_eq!(cos.len(), 3 * 8);
        // Row 2, frequency 1: 2 · 10000^(-2/16).
        let angle = 2.0f64 * 10000f64.powf(-2.0 / 16.0);
        assert!((cos[8 + 8 + 1] as f64 - angle.cos()).abs() < 1e-6);
        assert!((sin[8 + 8 + 1] as f64 - angle.sin()).abs() < 1e-6);
    }

    #[test]
    fn qwen2_vit_is_layer_norm_quick_gelu_full_attention() {
        let mut s = spec(QwenVitKind::Qwen2);
        s.act = VitAct::QuickGelu;
        let g = vit(&s, 64);
        let count = |op: &str| g.nodes.iter().filter(|n| n.op == op).count();
        // norm1 + norm2 per block and the merger's ln_q; no RMSNorm (ReduceMean).
        assert_eq!(count("LayerNormalization"), 2 * s.depth + 1);
        assert_eq!(count("ReduceMean"), 0);
        // quick_gelu once per block; the merger's exact GELU once.
        assert_eq!(count("Sigmoid"), s.depth);
        assert_eq!(count("Erf"), 1);
        // Every block's scores take the full mask; nothing is gathered back at the end.
        let masked = g
            .nodes
            .iter()
            .filter(|n| n.inputs.iter().any(|i| i == "full_attn_mask"))
            .count();
        assert_eq!(masked, s.depth);
        assert_eq!(count("Gather"), 2, "only the two rotary table lookups");
        let g25 = vit(&spec(QwenVitKind::Qwen2_5), 64);
        assert!(g25.nodes.iter().all(|n| n.op != "LayerNormalization"));
    }
}
