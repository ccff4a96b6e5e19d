//! Rotary tables as weights: cos/sin `[seq_length, 1, head_dim]` (halves duplicated, or each
//! frequency twice in a row for interleaved pairs), gathered by position_ids in the graph.
//! Written from the formulas independently of `reference`.

use crate::family::{LayerRope, RotaryPairs};
use crate::model::config::RopeScaling;
use crate::model::ModelConfig;

/// Layer `layer`'s (cos, sin) tables, row-major `[seq, 1, rotary_dim]` (rotary_dim = head_dim
/// unless partial).
pub fn tables(cfg: &ModelConfig, layer: usize, seq: usize) -> (Vec<f32>, Vec<f32>) {
    let d = cfg.layer.attention.rotary.dim(cfg.head_dim);
    let freqs: Vec<f64> = match cfg.layer.rope(layer) {
        LayerRope::Model => (0..d / 2)
            .map(|i| scaled(cfg, cfg.rope_theta.powf(-(2.0 * i as f64) / d as f64)))
            .collect(),
        LayerRope::Unscaled { theta } => (0..d / 2)
            .map(|i| theta.powf(-(2.0 * i as f64) / d as f64))
            .collect(),
    };
    let mut cos = Vec::with_capacity(seq * d);
    let mut sin = Vec::with_capacity(seq * d);
    // Element j of a row turns at frequency `order[j]`.
    let order: Vec<usize> = match cfg.layer.attention.rotary.pairs {
        RotaryPairs::HalfSplit => (0..d).map(|j| j % (d / 2)).collect(),
        RotaryPairs::Interleaved => (0..d).map(|j| j / 2).collect(),
    };
    for pos in 0..seq {
        for &i in &order {
            // f32 product, like the checkpoint's framework computes position * inv_freq.
            let angle = (pos as f32 * freqs[i] as f32) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// One inverse frequency after `rope_scaling`.
fn scaled(cfg: &ModelConfig, f: f64) -> f64 {
    match &cfg.rope_scaling {
        None => f,
        Some(RopeScaling::Linear { factor }) => f / factor,
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        }) => {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < old / high_freq_factor {
                f
            } else if wavelen > old / low_freq_factor {
                f / factor
            } else {
                let s = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 - s) * f / factor + s * f
            }
        }
    }
}
