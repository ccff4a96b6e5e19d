//! `chat --image` (repeatable): each image runs through the vit once; the first user turn
//! starts with one template placeholder per image, in order, and every turn's prompt gets
//! their embeddings there (the same placement as `generate --image`), so each re-prefill
//! (or history-KV continuation) sees the images at the same positions.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::config::ChatConfig;
use crate::bmrt::Runtime;
use crate::error::InputError;
use crate::model::vlm::VlmKind;
use crate::model::ModelConfig;
use crate::runner::image_prompt::{self, ImagePrompt};
use crate::runner::multimodal::PromptExtras;

/// The conversation's images, after their vit runs.
pub struct ChatImages {
    images: Vec<ImagePrompt>,
    /// The text the first user turn starts with: the template's image placeholder per image.
    pub placeholder: String,
}

impl ChatImages {
    /// Runs each of `paths` through the bmodel's vit (an input error for text-only models);
    /// None without images.
    pub fn open(
        rt: &Runtime,
        model_dir: &Path,
        cfg: &ChatConfig,
        paths: &[PathBuf],
    ) -> Result<Option<Self>> {
        if paths.is_empty() {
            return Ok(None);
        }
        let model = ModelConfig::from_file(&model_dir.join("config.json"))?;
        let vlm = image_prompt::vlm_of(&model, model_dir)?;
        let images = paths
            .iter()
            .map(|p| image_prompt::run_vit(rt, &model, model_dir, p))
            .collect::<Result<Vec<_>>>()?;
        let p = &images[0].placement;
        let text = |id: u32| {
            cfg.tokenizer.id_to_token(id).ok_or_else(|| {
                anyhow::Error::from(InputError::invalid(
                    cfg.source.join("tokenizer.json"),
                    format!("the tokenizer has no token {id}, the image placeholder's"),
                    "use the model's own tokenizer.json",
                ))
            })
        };
        let mut one = String::new();
        for id in p
            .vision_start
            .into_iter()
            .chain([p.image_token])
            .chain(p.vision_end)
        {
            one += &text(id)?;
        }
        if vlm.kind == VlmKind::InternVl {
            // InternVL's chat format: `<img><IMG_CONTEXT>…</img>\n` before the question.
            let has = |t: &str| cfg.tokenizer.token_to_id(t).is_some();
            if has("<img>") && has("</img>") {
                one = format!("<img>{one}</img>");
            }
            one.push('\n');
        }
        Ok(Some(ChatImages {
            placeholder: one.repeat(images.len()),
            images,
        }))
    }

    /// Image tokens the placeholders' image tokens become, beyond one each.
    pub fn extra_tokens(&self) -> usize {
        self.images
            .iter()
            .map(|i| i.placement.tokens.saturating_sub(1))
            .sum()
    }

    /// Every image's tokens.
    pub fn tokens(&self) -> usize {
        self.images.iter().map(|i| i.placement.tokens).sum()
    }

    /// The tokens the images add to a prompt without placeholders (each in its frame).
    pub fn framed_tokens(&self) -> usize {
        self.images
            .iter()
            .map(|i| {
                let p = &i.placement;
                p.tokens
                    + usize::from(p.vision_start.is_some())
                    + usize::from(p.vision_end.is_some())
            })
            .sum()
    }

    pub fn count(&self) -> usize {
        self.images.len()
    }

    pub fn vit_seconds(&self) -> f64 {
        self.images.iter().map(|i| i.vit.seconds).sum()
    }

    /// A turn's prompt with the images in place, and the prefill's extras.
    pub fn place(&self, ids: &[u32]) -> Result<(Vec<u32>, PromptExtras)> {
        image_prompt::place_all(&self.images, ids)
    }
}
