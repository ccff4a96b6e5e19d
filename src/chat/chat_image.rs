//! `chat --image`: the image runs through the vit once; its embeddings go into every turn's
//! prompt at the first user turn's image placeholder (the same placement as `generate
//! --image`), so each re-prefill (or history-KV continuation) sees it at the same positions.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::config::ChatConfig;
use crate::bmrt::Runtime;
use crate::error::InputError;
use crate::model::vlm::VlmKind;
use crate::model::ModelConfig;
use crate::runner::image_prompt::{self, ImagePrompt};
use crate::runner::multimodal::PromptExtras;

/// The conversation's image, after its vit run.
pub struct ChatImage {
    prompt: ImagePrompt,
    /// The text the first user turn starts with: the template's image placeholder.
    pub placeholder: String,
}

/// The one image `--image` names; a second is refused (exit 2): one image per chat for now.
pub fn single(images: &[PathBuf], bmodel: &Path) -> Result<Option<PathBuf>> {
    match images {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        _ => Err(InputError::invalid(
            bmodel,
            format!(
                "chat takes one --image for now ({} given): every image is placed in the first user turn, and several are not supported yet",
                images.len()
            ),
            "pass a single --image",
        )
        .into()),
    }
}

impl ChatImage {
    /// Runs `image` through the bmodel's vit (an input error for text-only models).
    pub fn open(rt: &Runtime, model_dir: &Path, cfg: &ChatConfig, image: &Path) -> Result<Self> {
        let model = ModelConfig::from_file(&model_dir.join("config.json"))?;
        let prompt = image_prompt::prepare(rt, &model, model_dir, image, &[])?;
        let vlm = image_prompt::vlm_of(&model, model_dir)?;
        let p = &prompt.placement;
        let text = |id: u32| {
            cfg.tokenizer.id_to_token(id).ok_or_else(|| {
                anyhow::Error::from(InputError::invalid(
                    cfg.source.join("tokenizer.json"),
                    format!("the tokenizer has no token {id}, the image placeholder's"),
                    "use the model's own tokenizer.json",
                ))
            })
        };
        let mut placeholder = String::new();
        for id in p
            .vision_start
            .into_iter()
            .chain([p.image_token])
            .chain(p.vision_end)
        {
            placeholder += &text(id)?;
        }
        if vlm.kind == VlmKind::InternVl {
            // InternVL's chat format: `<img><IMG_CONTEXT>…</img>\n` before the question.
            let has = |t: &str| cfg.tokenizer.token_to_id(t).is_some();
            if has("<img>") && has("</img>") {
                placeholder = format!("<img>{placeholder}</img>");
            }
            placeholder.push('\n');
        }
        Ok(ChatImage {
            prompt,
            placeholder,
        })
    }

    /// Image tokens the placeholder's one image token becomes.
    pub fn extra_tokens(&self) -> usize {
        self.prompt.placement.tokens.saturating_sub(1)
    }

    pub fn tokens(&self) -> usize {
        self.prompt.placement.tokens
    }

    pub fn vit_seconds(&self) -> f64 {
        self.prompt.vit.seconds
    }

    /// A turn's prompt with the image in place, and the prefill's extras.
    pub fn place(&self, ids: &[u32]) -> Result<(Vec<u32>, PromptExtras)> {
        self.prompt.place(ids)
    }
}
