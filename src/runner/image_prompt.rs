//! One image in a prompt, on the bmodel: the host preprocessing (`crate::vision`) for the
//! bmodel's vit, the vit run, the prompt's image tokens and its M-RoPE positions, ready for
//! [`Pipeline::set_extras`](super::Pipeline::set_extras). Used by `verify`, `generate` and
//! `chat` with `--image`.

use std::path::Path;

use anyhow::{ensure, Context, Result};

use super::multimodal::PromptExtras;
use super::vision::{VitInput, VitKind, VitNet, VitOutput};
use crate::bmrt::Runtime;
use crate::error::InputError;
use crate::model::vlm::VlmConfig;
use crate::model::ModelConfig;
use crate::vision::{self, QwenVisionParams, VitShape};

/// A preprocessed image and what it became on the bmodel.
pub struct ImagePrompt {
    /// The prompt with the image's tokens in place.
    pub ids: Vec<u32>,
    pub extras: PromptExtras,
    /// The vit's output (Qwen: one call).
    pub vit: VitOutput,
    /// What the reference needs: the processor's patch rows `[N, width]` and the grid.
    pub pixel_rows: Vec<f32>,
    pub row_width: usize,
    pub grid: [usize; 3],
    pub image_token_id: u32,
}

/// The model's VLM part, or an input error naming the model.
pub fn vlm_of<'c>(cfg: &'c ModelConfig, model: &Path) -> Result<&'c VlmConfig> {
    cfg.vlm.as_ref().ok_or_else(|| {
        InputError::invalid(
            model.join("config.json"),
            "--image needs a vision-language model; this config has no vision_config",
            "drop --image, or pass the VLM's folder with -m",
        )
        .into()
    })
}

/// Puts the image's tokens into `prompt`: a run of the image token (or one of them) becomes
/// the image's token count; without one, `<vision_start> image tokens <vision_end>` goes
/// first.
pub(super) fn place_image(
    prompt: &[u32],
    vlm: &VlmConfig,
    image_token: u32,
    tokens: usize,
) -> Vec<u32> {
    let image = std::iter::repeat_n(image_token, tokens);
    match prompt.iter().position(|&t| t == image_token) {
        Some(at) => {
            let end = at
                + prompt[at..]
                    .iter()
                    .take_while(|&&t| t == image_token)
                    .count();
            prompt[..at]
                .iter()
                .copied()
                .chain(image)
                .chain(prompt[end..].iter().copied())
                .collect()
        }
        None => vlm
            .vision_start_token_id
            .into_iter()
            .chain(image)
            .chain(vlm.vision_end_token_id)
            .chain(prompt.iter().copied())
            .collect(),
    }
}

/// Preprocesses `image` for the bmodel's vit, runs it, and builds the prompt around it.
pub fn prepare(
    rt: &Runtime,
    cfg: &ModelConfig,
    model_dir: &Path,
    image: &Path,
    prompt: &[u32],
) -> Result<ImagePrompt> {
    let vlm = vlm_of(cfg, model_dir)?;
    let vit = VitNet::discover(rt)?.ok_or_else(|| {
        anyhow::Error::from(InputError::invalid(
            model_dir.join("config.json"),
            "the bmodel has no vit net, so it cannot take an image",
            "convert the vision-language model with this llm-convert (it adds the vit), or drop --image",
        ))
    })?;
    if vit.kind == VitKind::Intern {
        return super::intern_prompt::prepare(rt, &vit, vlm, model_dir, image, prompt);
    }
    let image_token = vlm
        .image_token_id
        .context("the config names no image_token_id")?;
    let img = vision::load_rgb(image)?;
    // LLM-TPU's bounds for the processor: at most what the vit holds.
    let params = QwenVisionParams::load(model_dir)?;
    let max = params
        .max_pixels
        .min(params.capacity_pixels(vit.max_patches));
    let min = params.min_pixels.min(max);
    let params = params.with_pixel_bounds(min, max);
    let pixels = params.preprocess(&img)?;
    let shape = VitShape::Dynamic; // compact; VitNet::run pads for a static net
    let inputs = vision::qwen_vit_inputs(&params, &pixels, vit.max_patches, shape, image)?;
    ensure!(
        pixels.dim == vit.row_width,
        "the image's patch rows have {} values, the vit takes {}",
        pixels.dim,
        vit.row_width
    );
    let out = vit.run(
        rt,
        &VitInput {
            rows: inputs.patches,
            pixels: &inputs.input_states,
            position_ids: &inputs.position_ids,
            full_mask: &inputs.full_attn_mask,
            window_mask: inputs.window_attn_mask.as_deref().unwrap_or(&[]),
            reverse_index: inputs.reverse_index.as_deref().unwrap_or(&[]),
        },
    )?;
    let ids = place_image(prompt, vlm, image_token, inputs.tokens);
    let at = ids
        .iter()
        .position(|&t| t == image_token)
        .context("no image token in the prompt")?;
    let grid = pixels.grid;
    let merge = params.merge_size;
    let positions = vision::mrope_position_ids(&ids, image_token, &[grid], merge)?;
    let rows: Vec<[i32; 3]> = (0..positions.len)
        .map(|i| {
            [
                positions.row(0)[i],
                positions.row(1)[i],
                positions.row(2)[i],
            ]
        })
        .collect();
    Ok(ImagePrompt {
        extras: PromptExtras {
            positions: Some(rows),
            embeds: vec![(at, out.bytes.clone())],
        },
        ids,
        vit: out,
        pixel_rows: pixels.rows,
        row_width: pixels.dim,
        grid: [grid.t, grid.h, grid.w],
        image_token_id: image_token,
    })
}
