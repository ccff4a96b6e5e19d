//! The InternVL vision tower as the `vit` net (vlm.md §2.2-2.3): `pixel_value [1, C, S, S]
//! F32` (one normalised tile) → `[tokens, H]`. InternViT (patch embedding, class token,
//! position embedding, pre-norm blocks with LayerScale, optional q/k RMSNorm), the class token
//! dropped, pixel shuffle 0.5, then the `mlp1` projector. Nothing is pinned: tile size, patch,
//! width, heads, depth and MLP width come from the config (llm_convert.py's InternVL3Converter
//! only converts InternViT-300M's geometry). Either checkpoint layout (OpenGVLab's fused
//! `attn.qkv`, or transformers' split q/k/v), read under its own names.

use super::ops::{self, VitAct, VitNorm};
use crate::graph::{Elem, Graph};
use crate::model::vlm::intern_names::{InternNames, Qkv, PROJECTOR_EPS};

/// Everything the graph needs to know about the tower.
#[derive(Debug, Clone)]
pub struct InternVitSpec {
    pub names: &'static InternNames,
    /// Tile side S in pixels.
    pub image_size: usize,
    pub patch: usize,
    pub channels: usize,
    /// Vision width Hv.
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    /// Encoder layers run (up to `select_layer`).
    pub layers: usize,
    pub qkv_bias: bool,
    pub qk_norm: bool,
    pub norm: VitNorm,
    pub norm_eps: f64,
    /// The LLM width H (the projector's output).
    pub out_hidden: usize,
}

impl InternVitSpec {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Patches per tile side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch
    }

    /// Image tokens per tile: the patch grid halved on each side by the pixel shuffle.
    pub fn tokens(&self) -> usize {
        let half = self.grid() / 2;
        half * half
    }
}

/// The `vit` graph: one tile in, its image tokens out.
pub fn vit(spec: &InternVitSpec) -> Graph {
    let (hv, g, p, c) = (spec.hidden, spec.grid(), spec.patch, spec.channels);
    let n = spec.names;
    let mut graph = Graph::new("vit");
    let gr = &mut graph;
    let x = gr.input(
        "pixel_value",
        Elem::F32,
        &[1, c, spec.image_size, spec.image_size],
    );

    // Patch embedding: the stride = kernel Conv2d as a MatMul over the patches' (C, p, p)
    // values, sequence index = row·g + column.
    let (gi, pi) = (g as i64, p as i64);
    let split = gr.reshape(&x, &[c as i64, gi, pi, gi, pi]);
    let split = gr.transpose(&split, &[1, 3, 0, 2, 4]);
    let rows = gr.reshape(&split, &[gi * gi, (c * p * p) as i64]);
    let patches = ops::linear(gr, &rows, n.patch, c * p * p, hv, true);
    let cls = gr.weight(n.cls, &[1, hv], false);
    let tokens = gr.concat(&[&cls, &patches], 0);
    let pos = gr.weight(n.position, &[1 + g * g, hv], false);
    let mut h = gr.add(&tokens, &pos);

    for i in 0..spec.layers {
        h = block(gr, spec, i, &h);
    }

    // Drop the class token; pixel shuffle 0.5: token (a, b) takes the 2×2 neighbours
    // (2a+m, 2b+k) as channel blocks m·2Hv + k·Hv.
    let grid = gr.slice(&h, 0, 1, (1 + g * g) as i64);
    let half = (g / 2) as i64;
    let grid = gr.reshape(&grid, &[half, 2, half, 2, hv as i64]);
    let grid = gr.transpose(&grid, &[0, 2, 1, 3, 4]);
    let wide = 4 * hv;
    let shuffled = gr.reshape(&grid, &[half * half, wide as i64]);

    let [ln, l1, l2] = n.projector;
    let y = ops::norm(gr, VitNorm::Layer, &shuffled, ln, wide, PROJECTOR_EPS);
    let y = ops::linear(gr, &y, l1, wide, spec.out_hidden, true);
    let y = ops::activate(gr, VitAct::Gelu, &y);
    let y = ops::linear(gr, &y, l2, spec.out_hidden, spec.out_hidden, true);
    graph.output(
        &y,
        "hidden_states",
        Elem::F32,
        &[spec.tokens(), spec.out_hidden],
    );
    graph
}

/// `x + ls1 · proj(attn(norm1(x)))`, then `+ ls2 · fc2(gelu(fc1(norm2(x))))`; x `[T, Hv]`.
fn block(g: &mut Graph, spec: &InternVitSpec, i: usize, x: &str) -> String {
    let (hv, heads, d) = (spec.hidden, spec.heads, spec.head_dim());
    let n = spec.names;
    let b = format!("{}.{i}", n.layer);
    let h = ops::norm(
        g,
        spec.norm,
        x,
        &format!("{b}.{}", n.norm1),
        hv,
        spec.norm_eps,
    );
    let mut qkv: Vec<String> = (0..3)
        .map(|part| match &n.qkv {
            Qkv::Fused(name) => {
                let prefix = format!("{b}.{name}");
                if spec.qkv_bias {
                    ops::fused_part(g, &h, &prefix, hv, hv, part, 3)
                } else {
                    let w = g.weight(&format!("{prefix}.weight"), &[hv, 3 * hv], true);
                    let w = g.slice(&w, 1, (part * hv) as i64, ((part + 1) * hv) as i64);
                    g.op("MatMul", &[&h, &w], vec![])
                }
            }
            Qkv::Split(names) => {
                let prefix = format!("{b}.{}", names[part]);
                ops::linear(g, &h, &prefix, hv, hv, spec.qkv_bias)
            }
        })
        .collect();
    if spec.qk_norm {
        // RMSNorm over all heads at once, before the head split.
        let eps = n.qk_norm_eps.unwrap_or(spec.norm_eps);
        for (slot, name) in [(0, n.q_norm), (1, n.k_norm)] {
            let prefix = format!("{b}.{name}");
            qkv[slot] = ops::norm(g, VitNorm::Rms, &qkv[slot], &prefix, hv, eps);
        }
    }
    let shape = [1, -1, heads as i64, d as i64];
    let [q, k, v] = [0, 1, 2].map(|j| g.reshape(&qkv[j], &shape));
    let scale = 1.0 / (d as f64).sqrt();
    let a = ops::attention(g, &q, &k, &v, None, heads, d, scale);
    let a = ops::linear(g, &a, &format!("{b}.{}", n.proj), hv, hv, true);
    let ls1 = g.weight(&format!("{b}.{}", n.ls1), &[hv], false);
    let a = g.mul(&a, &ls1);
    let x = g.add(x, &a);
    let h = ops::norm(
        g,
        spec.norm,
        &x,
        &format!("{b}.{}", n.norm2),
        hv,
        spec.norm_eps,
    );
    let inter = spec.intermediate;
    let up = ops::linear(g, &h, &format!("{b}.mlp.fc1"), hv, inter, true);
    let act = ops::activate(g, VitAct::Gelu, &up);
    let y = ops::linear(g, &act, &format!("{b}.mlp.fc2"), inter, hv, true);
    let ls2 = g.weight(&format!("{b}.{}", n.ls2), &[hv], false);
    let y = g.mul(&y, &ls2);
    g.add(&x, &y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::vlm::intern_names::{CHAT_NAMES, NATIVE_NAMES};

    fn spec(names: &'static InternNames, qk_norm: bool) -> InternVitSpec {
        InternVitSpec {
            names,
            image_size: 112,
            patch: 14,
            channels: 3,
            hidden: 64,
            heads: 2,
            intermediate: 128,
            layers: 2,
            qkv_bias: !qk_norm,
            qk_norm,
            norm: if qk_norm {
                VitNorm::Rms
            } else {
                VitNorm::Layer
            },
            norm_eps: 1e-6,
            out_hidden: 128,
        }
    }

    fn weights(g: &Graph) -> Vec<&str> {
        g.initializers
            .iter()
            .filter_map(|i| match &i.data {
                crate::graph::InitData::Weight { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_tile_in_its_tokens_out() {
        let g = vit(&spec(&CHAT_NAMES, false));
        assert_eq!(g.inputs.len(), 1);
        assert_eq!(g.inputs[0].name, "pixel_value");
        assert_eq!(g.inputs[0].dims, [1, 3, 112, 112]);
        // 8×8 patches → 4×4 tokens.
        assert_eq!(g.outputs[0].dims, [16, 128]);
        let w = weights(&g);
        for name in [
            "vision_model.encoder.layers.1.attn.qkv.bias",
            "vision_model.encoder.layers.1.ls2",
            "vision_model.embeddings.class_embedding",
            "mlp1.3.weight",
        ] {
            assert!(w.contains(&name), "{name} in {w:?}");
        }
    }

    #[test]
    fn native_names_and_qk_norm() {
        let g = vit(&spec(&NATIVE_NAMES, true));
        let w = weights(&g);
        for name in [
            "vision_tower.encoder.layer.0.attention.q_proj.weight",
            "vision_tower.encoder.layer.0.attention.k_norm.weight",
            "vision_tower.encoder.layer.0.lambda_1",
            "multi_modal_projector.linear_2.bias",
        ] {
            assert!(w.contains(&name), "{name} in {w:?}");
        }
        // RMSNorm blocks carry no norm bias, and no q/k/v bias here.
        assert!(!w.iter().any(|n| n.ends_with("layernorm_before.bias")));
        assert!(!w.iter().any(|n| n.ends_with("q_proj.bias")));
    }
}
