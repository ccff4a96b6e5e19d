//! An image for an InternVL prompt, on the bmodel, as LLM-TPU's InternVL3 pipeline does it
//! (vlm.md §2.4-2.5): the image tiled (`crate::vision::internvl`), one `vit` launch per tile
//! (`pixel_value [1, 3, S, S]` → `[T, H]`), the prompt's `<IMG_CONTEXT>` run expanded to
//! tiles · T tokens and each tile's rows written over the embedding at `first + k·T`. The text
//! blocks keep their 1-D positions.

use std::path::Path;

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use serde_json::Value;

use super::image_prompt::{ImagePrompt, Placement};
use super::multimodal::PromptExtras;
use super::vision::{VitInput, VitNet, VitOutput};
use crate::bmrt::Runtime;
use crate::error::InputError;
use crate::model::vlm::{VisionTower, VlmConfig};
use crate::model::ModelConfig;
use crate::reference::vision::VisionInput;
use crate::vision::{self, InternVlParams};

/// The image token: the config's `image_token_id` (native configs), else `<IMG_CONTEXT>` in
/// the folder's tokenizer.json (OpenGVLab's configs leave it to the tokenizer).
fn image_token(vlm: &VlmConfig, model_dir: &Path) -> Result<u32> {
    if let Some(id) = vlm.image_token_id {
        return Ok(id);
    }
    let path = model_dir.join("tokenizer.json");
    let found = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|t| {
            t["added_tokens"].as_array()?.iter().find_map(|a| {
                (a["content"].as_str() == Some(vlm.image_token))
                    .then(|| a["id"].as_u64())
                    .flatten()
            })
        });
    match found {
        Some(id) => Ok(id as u32),
        None => Err(InputError::invalid(
            model_dir.join("config.json"),
            format!(
                "no image_token_id in the config and no {} in tokenizer.json",
                vlm.image_token
            ),
            "add \"image_token_id\" (the <IMG_CONTEXT> token's id) to config.json",
        )
        .into()),
    }
}

/// Tiles `image` and runs the vit on each tile, in order (the caller places it).
pub(super) fn run_vit(
    rt: &Runtime,
    vit: &VitNet,
    vlm: &VlmConfig,
    model_dir: &Path,
    image: &Path,
) -> Result<ImagePrompt> {
    let token = image_token(vlm, model_dir)?;
    let params = InternVlParams::load(model_dir)?;
    // InternVL nets: max_patches holds the tile side S.
    ensure!(
        params.image_size == vit.max_patches,
        "the config's tiles are {0}x{0} pixels, the vit takes {1}x{1}",
        params.image_size,
        vit.max_patches
    );
    let pixels = params.preprocess(&vision::load_rgb(image)?);
    let per_tile = vit.max_tokens;
    let mut outs: Vec<VitOutput> = Vec::with_capacity(pixels.tiles);
    for k in 0..pixels.tiles {
        outs.push(vit.run(
            rt,
            &VitInput {
                rows: 1,
                pixels: pixels.tile(k),
                position_ids: &[],
                full_mask: &[],
                window_mask: &[],
                reverse_index: &[],
            },
        )?);
    }
    let tokens = per_tile * pixels.tiles;
    let dtype = outs[0].dtype;
    let vit_out = VitOutput {
        bytes: outs.iter().flat_map(|o| o.bytes.iter().copied()).collect(),
        tokens,
        dtype,
        seconds: outs.iter().map(|o| o.seconds).sum(),
    };
    let s = pixels.image_size;
    // Tile k's rows start at first + k·T: the tiles' bytes back to back are one write.
    Ok(ImagePrompt {
        path: image.to_path_buf(),
        ids: Vec::new(),
        extras: PromptExtras::default(),
        vit: vit_out,
        row_width: 3 * s * s,
        grid: [pixels.tiles, s, s],
        pixel_rows: pixels.data,
        image_token_id: token,
        vit_launches: pixels.tiles,
        placement: Placement {
            image_token: token,
            tokens,
            vision_start: vlm.vision_start_token_id,
            vision_end: vlm.vision_end_token_id,
            mrope: None,
        },
    })
}

/// The reference's input for an InternVL image prompt: the tiles as `[tiles, 3, S, S]`; None
/// for other towers.
pub(super) fn reference_input(cfg: &ModelConfig, ip: &ImagePrompt) -> Result<Option<VisionInput>> {
    match cfg.vlm.as_ref().map(|v| &v.vision) {
        Some(VisionTower::Intern(_)) => {
            let [tiles, s, _] = ip.grid;
            let pixel_values =
                Tensor::from_vec(ip.pixel_rows.clone(), (tiles, 3, s, s), &Device::Cpu)?;
            Ok(Some(VisionInput {
                pixel_values,
                grid_thw: vec![],
            }))
        }
        _ => Ok(None),
    }
}
