//! Images in a prompt, on the bmodel: the host preprocessing (`crate::vision`) for the
//! bmodel's vit, the vit run (one per image), the prompt's image tokens and its M-RoPE positions, ready for
//! [`Pipeline::set_extras`](super::Pipeline::set_extras). Used by `verify`, `generate` and
//! `chat` with `--image`.

use std::path::{Path, PathBuf};

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
    /// The image file (input errors name it).
    pub path: PathBuf,
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
    /// `prompt` with this image's tokens in place and the extras for its prefill: the vit's
    /// embeddings at the image's rows, M-RoPE positions. The vit does not run again: chat
    /// places one image into every turn's prompt.
    pub fn place(&self, prompt: &[u32]) -> Result<(Vec<u32>, PromptExtras)> {
        place_all(std::slice::from_ref(self), prompt)
    }
}

/// The start and length of each run of `token` in `ids`.
fn runs(ids: &[u32], token: u32) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let n = ids[i..].iter().take_while(|&&t| t == token).count();
        if n > 0 {
            out.push((i, n));
            i += n;
        } else {
            i += 1;
        }
    }
    out
}

/// `prompt` with several images in place, in order, and their prefill's extras: the k-th
/// run of the image token (or single one) becomes image k's tokens, and its embeddings go
/// at that run's first row; a prompt without one gets every image first, each in its frame.
/// M-RoPE positions over the whole prompt follow transformers' `get_rope_index` (each image
/// its own grid, the text after it one past its largest position). A placeholder count
/// other than the image count is an input error (exit 2).
pub fn place_all(images: &[ImagePrompt], prompt: &[u32]) -> Result<(Vec<u32>, PromptExtras)> {
    let Some(first) = images.first() else {
        return Ok((prompt.to_vec(), PromptExtras::default()));
    };
    let token = first.placement.image_token;
    let placeholders = runs(prompt, token);
    let image = |ip: &ImagePrompt| std::iter::repeat_n(token, ip.placement.tokens);
    let mut ids = Vec::with_capacity(prompt.len() + images.len() * first.placement.tokens);
    let mut starts = Vec::with_capacity(images.len());
    if placeholders.is_empty() {
        for ip in images {
            ids.extend(ip.placement.vision_start);
            starts.push(ids.len());
            ids.extend(image(ip));
            ids.extend(ip.placement.vision_end);
        }
        ids.extend_from_slice(prompt);
    } else {
        if placeholders.len() != images.len() {
            let last = &images[images.len() - 1];
            return Err(InputError::invalid(
                &last.path,
                format!(
                    "the prompt has {} image placeholder(s) (runs of token {token}) but {} --image were given",
                    placeholders.len(),
                    images.len()
                ),
                "give one --image per image placeholder, in the placeholders' order (or leave the placeholders out: every image then goes before the prompt)",
            )
            .into());
        }
        let mut from = 0;
        for (&(at, n), ip) in placeholders.iter().zip(images) {
            ids.extend_from_slice(&prompt[from..at]);
            starts.push(ids.len());
            ids.extend(image(ip));
            from = at + n;
        }
        ids.extend_from_slice(&prompt[from..]);
    }
    let grids: Option<Vec<(vision::Grid, usize)>> =
        images.iter().map(|ip| ip.placement.mrope).collect();
    let positions = match grids {
        Some(g) if !g.is_empty() => {
            let merge = g[0].1;
            let grids: Vec<vision::Grid> = g.iter().map(|(grid, _)| *grid).collect();
            let pos = vision::mrope_position_ids(&ids, token, &grids, merge)?;
            Some(
                (0..pos.len)
                    .map(|i| [pos.row(0)[i], pos.row(1)[i], pos.row(2)[i]])
                    .collect(),
            )
        }
        _ => None,
    };
    // InternVL's tiles are contiguous: one write per image covers every tile's rows.
    let embeds = starts
        .into_iter()
        .zip(images)
        .map(|(at, ip)| (at, ip.vit.bytes.clone()))
        .collect();
    Ok((ids, PromptExtras { positions, embeds }))
}

/// Runs every image of `paths` through the vit (in order) and places them all in `prompt`:
/// what `generate --image A --image B` prefills.
pub fn prepare_all(
    rt: &Runtime,
    cfg: &ModelConfig,
    model_dir: &Path,
    paths: &[PathBuf],
    prompt: &[u32],
) -> Result<(Vec<ImagePrompt>, Vec<u32>, PromptExtras)> {
    let images = paths
        .iter()
        .map(|p| run_vit(rt, cfg, model_dir, p))
        .collect::<Result<Vec<_>>>()?;
    let (ids, extras) = place_all(&images, prompt)?;
    Ok((images, ids, extras))
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

/// Preprocesses `image` for the bmodel's vit, runs it, and builds the prompt around it.
pub fn prepare(
    rt: &Runtime,
    cfg: &ModelConfig,
    model_dir: &Path,
    image: &Path,
    prompt: &[u32],
) -> Result<ImagePrompt> {
    let mut ip = run_vit(rt, cfg, model_dir, image)?;
    (ip.ids, ip.extras) = ip.place(prompt)?;
    Ok(ip)
}

/// Preprocesses `image` for the bmodel's vit and runs it (`ids` / `extras` left empty).
pub fn run_vit(
    rt: &Runtime,
    cfg: &ModelConfig,
    model_dir: &Path,
    image: &Path,
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
        return super::intern_prompt::run_vit(rt, &vit, vlm, model_dir, image);
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
    Ok(ImagePrompt {
        path: image.to_path_buf(),
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::vision::VitOutput;

    const PAD: u32 = 9;

    /// An image of a t=1 patch grid `h`×`w` (merge 2) whose vit rows are `byte`.
    fn image(h: usize, w: usize, byte: u8) -> ImagePrompt {
        let tokens = h * w / 4;
        ImagePrompt {
            path: PathBuf::from(format!("img{byte}.png")),
            ids: vec![],
            extras: PromptExtras::default(),
            vit: VitOutput {
                bytes: vec![byte; tokens],
                tokens,
                dtype: crate::bmrt::DType::BF16,
                seconds: 0.0,
            },
            pixel_rows: vec![],
            row_width: 0,
            grid: [1, h, w],
            image_token_id: PAD,
            vit_launches: 1,
            placement: Placement {
                image_token: PAD,
                tokens,
                vision_start: Some(7),
                vision_end: Some(8),
                mrope: Some((vision::Grid { t: 1, h, w }, 2)),
            },
        }
    }

    /// Each placeholder gets its own image, in order; positions continue after each image
    /// at max + 1 (get_rope_index), so the second image starts past the first's extent.
    #[test]
    fn two_images_each_at_their_placeholder() {
        let (a, b) = (image(2, 4, 1), image(4, 2, 2));
        let prompt = [1, 7, PAD, 8, 5, 7, PAD, PAD, 8, 6];
        let (ids, extras) = place_all(&[a, b], &prompt).unwrap();
        assert_eq!(ids, [1, 7, PAD, PAD, 8, 5, 7, PAD, PAD, 8, 6]);
        assert_eq!(extras.embeds, vec![(2, vec![1; 2]), (7, vec![2; 2])]);
        let pos = extras.positions.unwrap();
        // text 0,1; image a (1×2 units) at 2: w 2,3; text 4,5,6; image b (2×1) at 7: h 7,8.
        let t: Vec<i32> = pos.iter().map(|p| p[0]).collect();
        let h: Vec<i32> = pos.iter().map(|p| p[1]).collect();
        let w: Vec<i32> = pos.iter().map(|p| p[2]).collect();
        assert_eq!(t, [0, 1, 2, 2, 4, 5, 6, 7, 7, 9, 10]);
        assert_eq!(h, [0, 1, 2, 2, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(w, [0, 1, 2, 3, 4, 5, 6, 7, 7, 9, 10]);
    }

    #[test]
    fn images_go_first_without_placeholders_and_counts_must_match() {
        let (ids, extras) = place_all(&[image(2, 2, 1), image(2, 2, 2)], &[5, 6]).unwrap();
        assert_eq!(ids, [7, PAD, 8, 7, PAD, 8, 5, 6]);
        assert_eq!(extras.embeds, vec![(1, vec![1]), (4, vec![2])]);
        let err = place_all(&[image(2, 2, 1), image(2, 2, 2)], &[PAD, 5])
            .unwrap_err()
            .downcast::<InputError>()
            .expect("an input error (exit 2)");
        let msg = err.to_string();
        assert!(
            msg.contains("img2.png") && msg.contains("1 image placeholder(s)"),
            "{msg}"
        );
    }
}
