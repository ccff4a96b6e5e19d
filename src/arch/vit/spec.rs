//! The vision tower of a model config, as the vit graphs need it (the one place that reads
//! the VLM part of [`ModelConfig`] for `arch`).

use super::intern::InternVitSpec;
use super::ops::{VitAct, VitNorm};
use super::qwen::{QwenVitKind, QwenVitSpec};
use crate::model::vlm::intern_names::intern_names;
use crate::model::vlm::{QwenVisionMlp, VisionNorm, VisionTower};
use crate::model::ModelConfig;

/// A model's vision tower.
#[derive(Debug, Clone)]
pub enum VitSpec {
    Qwen(QwenVitSpec),
    Intern(InternVitSpec),
}

impl VitSpec {
    /// Patch rows for `pixels` = W·H (Qwen: one row per patch²).
    pub fn patches(&self, pixels: usize) -> usize {
        match self {
            VitSpec::Qwen(q) => pixels / (q.patch * q.patch),
            // One fixed tile per call.
            VitSpec::Intern(_) => 0,
        }
    }
}

/// The vision tower of `cfg`, if it is a vision-language model with a tower built here.
pub fn vit_spec(cfg: &ModelConfig) -> Option<VitSpec> {
    match &cfg.vlm.as_ref()?.vision {
        VisionTower::Qwen(v) => {
            let (kind, act) = match v.mlp {
                QwenVisionMlp::GatedSilu => (QwenVitKind::Qwen2_5, VitAct::Silu),
                QwenVisionMlp::FcQuickGelu => (QwenVitKind::Qwen2, VitAct::QuickGelu),
            };
            Some(VitSpec::Qwen(QwenVitSpec {
                kind,
                prefix: "visual".into(),
                hidden: v.hidden_size,
                heads: v.num_heads,
                depth: v.depth,
                intermediate: v.intermediate_size,
                patch: v.patch_size,
                patch_dim: v.patch_dim(),
                merge: v.spatial_merge_size,
                fullatt_blocks: v.fullatt_block_indexes.clone(),
                out_hidden: v.out_hidden_size,
                act,
            }))
        }
        VisionTower::Intern(v) => Some(VitSpec::Intern(InternVitSpec {
            names: intern_names(v.layout),
            image_size: v.image_size,
            patch: v.patch_size,
            channels: v.num_channels,
            hidden: v.hidden_size,
            heads: v.num_heads,
            intermediate: v.intermediate_size,
            layers: v.layers_used(),
            qkv_bias: v.qkv_bias,
            qk_norm: v.qk_norm,
            norm: match v.norm {
                VisionNorm::Layer => VitNorm::Layer,
                VisionNorm::Rms => VitNorm::Rms,
            },
            norm_eps: v.norm_eps,
            out_hidden: v.out_hidden_size,
        })),
    }
}
