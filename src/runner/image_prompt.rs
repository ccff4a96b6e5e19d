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
    /// vit launches: 1 for Qwen, one per tile for InternVL.
    pub vit_launches: usize,
    /// How the image goes into a prompt (again, for each chat turn).
    pub placement: Placement,
}

/// How an image's tokens go into a prompt: the token run, its frame, and for M-RoPE models
/// the grid its 3-D positions come from.
#[derive(Debug, Clone)]
pub struct Placement {
    pub image_token: u32,
    pub tokens: usize,
    pub vision_start: Option<u32>,
    pub vision_end: Option<u32>,
    /// Qwen: the patch grid and the merge size (None: 1-D positions, InternVL).
    pub mrope: Option<(vision::Grid, usize)>,
}

impl ImagePrompt {
    /// `prompt` with this image's tokens in place  and the
    /// extras for its prefill: the vit's embeddings at the image's rows, M-RoPE positions.
    /// The vit does not run again: chat places one image into every turn's prompt.
    pub fn place(&self, prompt: &[u32]) -> Result<(Vec<u32>, PromptExtras)> {
        let p = &self.placement;
        let ids = place_tokens(prompt, p);
        let at = ids
            .iter()
            .position(|&t| t == p.image_token)
            .context("no image token in the prompt")?;
        let positions = match p.mrope {
            Some((grid, merge)) => {
                let pos = vision::mrope_position_ids(&ids, p.image_token, &[grid], merge)?;
                Some(
                    (0..pos.len)
                        .map(|i| [pos.row(0)[i], pos.row(1)[i], pos.row(2)[i]])
                        .collect(),
                )
            }
            None => None,
        };
        // InternVL's tiles are contiguous: one write covers every tile's rows.
        let extras = PromptExtras {
            positions,
            embeds: vec![(at, self.vit.bytes.clone())],
        };
        Ok((ids, extras))
    }
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
fn place_tokens(prompt: &[u32], frame: &Placement) -> Vec<u32> {
    let tokens = frame.tokens;
    let image_token = frame.image_token;
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
        None => frame
            .vision_start
            .into_iter()
            .chain(image)
            .chain(frame.vision_end)
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
    let grid = pixels.grid;
    let mut ip = ImagePrompt {
        ids: Vec::new(),
        extras: PromptExtras::default(),
        vit: out,
        pixel_rows: pixels.rows,
        row_width: pixels.dim,
        grid: [grid.t, grid.h, grid.w],
        image_token_id: image_token,
        vit_launches: 1,
        placement: Placement {
            image_token,
            tokens: inputs.tokens,
            vision_start: vlm.vision_start_token_id,
            vision_end: vlm.vision_end_token_id,
            mrope: Some((grid, params.merge_size)),
        },
    };
    (ip.ids, ip.extras) = ip.place(prompt)?;
    Ok(ip)
}
