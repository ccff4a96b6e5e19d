//! What may differ from one layer to the next, and how attention scores are formed: transformers'
//! `layer_types` (sliding-window "local" layers among full "global" ones, gemma2/gemma3), the
//! local layers' own rotary base (gemma3's `rope_local_base_freq`), the score scale
//! (`query_pre_attn_scalar`) and tanh soft-capping of scores and logits (gemma2).
//!
//! [`LayerSpec::window`] and [`LayerSpec::rope`] are the one place that says what layer `i`
//! does; `arch` and `reference` ask them for every layer.

use super::LayerSpec;

/// A set of layer indices (below the config's 1024-layer limit), `Copy` like the rest of the
/// layer description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerSet {
    All,
    Only([u64; 16]),
}

impl LayerSet {
    /// The layers `i` for which `member(i)` holds, of `0..layers`.
    pub fn from_fn(layers: usize, member: impl Fn(usize) -> bool) -> LayerSet {
        let mut bits = [0u64; 16];
        for i in (0..layers.min(1024)).filter(|&i| member(i)) {
            bits[i / 64] |= 1 << (i % 64);
        }
        LayerSet::Only(bits)
    }

    pub fn contains(&self, layer: usize) -> bool {
        match self {
            LayerSet::All => true,
            LayerSet::Only(bits) => layer < 1024 && bits[layer / 64] & (1 << (layer % 64)) != 0,
        }
    }
}

impl serde::Serialize for LayerSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LayerSet::All => s.serialize_str("all"),
            LayerSet::Only(_) => {
                let layers: Vec<usize> = (0..1024).filter(|&i| self.contains(i)).collect();
                s.collect_seq(layers)
            }
        }
    }
}

/// The sliding-window ("local") layers: `LayerSpec::sliding_window` applies to these only, and
/// they may turn rotary at their own base.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LocalLayers {
    pub layers: LayerSet,
    /// Their own rotary base, without the model's `rope_scaling` (gemma3's
    /// `rope_local_base_freq`); `None`: the model's rotary like every other layer.
    pub rope_theta: Option<f64>,
}

impl LocalLayers {
    /// Every layer local, with the model's rotary (mistral's window on every layer).
    pub const ALL: LocalLayers = LocalLayers {
        layers: LayerSet::All,
        rope_theta: None,
    };
}

/// The rotary frequencies one layer turns at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LayerRope {
    /// The config's `rope_theta` and `rope_scaling`.
    Model,
    /// `theta` with no scaling (gemma3's local layers).
    Unscaled { theta: f64 },
}

/// How attention scores are formed before the mask:
/// `s = q·kᵀ / sqrt(query_pre_attn_scalar or head_dim)`, then with a soft cap `c`,
/// `s = tanh(s / c) · c` (gemma2's `attn_logit_softcapping`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Scores {
    /// gemma2/gemma3's `query_pre_attn_scalar`; `None`: head_dim.
    pub query_pre_attn_scalar: Option<f64>,
    pub softcap: Option<f64>,
}

impl Scores {
    /// `1/sqrt(head_dim)`, no cap.
    pub const PLAIN: Scores = Scores {
        query_pre_attn_scalar: None,
        softcap: None,
    };

    /// The factor on `q·kᵀ`.
    pub fn scale(&self, head_dim: usize) -> f64 {
        1.0 / self.query_pre_attn_scalar.unwrap_or(head_dim as f64).sqrt()
    }
}

impl LayerSpec {
    /// Layer `layer`'s sliding window (a query at q sees keys k with `q - window < k <= q`), if
    /// it is a local layer and the model has one.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.sliding_window
            .filter(|_| self.local.layers.contains(layer))
    }

    /// The rotary frequencies of layer `layer`.
    pub fn rope(&self, layer: usize) -> LayerRope {
        match self.local.rope_theta {
            Some(theta) if self.local.layers.contains(layer) => LayerRope::Unscaled { theta },
            _ => LayerRope::Model,
        }
    }

    /// Whether any layer turns at its own rotary base.
    pub fn has_local_rope(&self) -> bool {
        self.local.rope_theta.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_sets() {
        let even = LayerSet::from_fn(1024, |i| i % 2 == 0);
        assert!(even.contains(0) && !even.contains(1) && even.contains(1022));
        assert!(!even.contains(1023) && !even.contains(5000));
        assert!(LayerSet::All.contains(7));
        let three = LayerSet::from_fn(3, |i| i != 1);
        assert_eq!(serde_json::to_string(&three).unwrap(), "[0,2]");
        assert_eq!(serde_json::to_string(&LayerSet::All).unwrap(), "\"all\"");
    }

    #[test]
    fn per_layer_window_and_rope() {
        let mut spec = LayerSpec::llama(false, false, false);
        assert_eq!((spec.window(0), spec.rope(0)), (None, LayerRope::Model));
        spec.sliding_window = Some(4);
        assert_eq!(spec.window(3), Some(4));
        spec.local = LocalLayers {
            layers: LayerSet::from_fn(2, |i| i == 0),
            rope_theta: Some(100.0),
        };
        assert_eq!(spec.window(0), Some(4));
        assert_eq!(spec.window(1), None);
        assert_eq!(spec.rope(0), LayerRope::Unscaled { theta: 100.0 });
        assert_eq!(spec.rope(1), LayerRope::Model);
    }

    #[test]
    fn score_scale() {
        assert_eq!(Scores::PLAIN.scale(64), 1.0 / 64f64.sqrt());
        let s = Scores {
            query_pre_attn_scalar: Some(256.0),
            softcap: None,
        };
        assert_eq!(s.scale(32), 1.0 / 16.0);
    }
}
