//! The golden vision towers: a candle forward pass of each VLM's vision encoder and
//! projector written from the model math (transformers 5.6.2's modeling code), sharing
//! nothing with graph building but the config and the weight names. Plus what puts an image
//! into a prompt: the splice of the image embeddings at the image tokens, Qwen's M-RoPE
//! position ids, and greedy generation from there.
//!
//! Inputs are what the model's image processor makes (`pixel_values`), not images: the host
//! preprocessing lives in `crate::vision`.

mod bicubic;
mod intern;
mod nn;
mod qwen;
/// The Qwen tower's window / position index arithmetic, independent of the host
/// preprocessing's (for cross-checks).
pub mod qwen_index;

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};

pub use qwen_index::Grid;

use super::{argmax, Reference, StepOutput};
use crate::model::vlm::{VisionTower, VlmConfig};
use crate::model::Model;

/// What the image processor made for the images of one prompt.
pub struct VisionInput {
    /// Qwen2(.5)-VL: `[rows, C·T·P·P]` patch rows (1176 columns for 3·2·14·14), the processor's
    /// order. InternVL: `[tiles, C, S, S]` normalised tiles.
    pub pixel_values: Tensor,
    /// Qwen2(.5)-VL: `(t, h, w)` in patches per image, in prompt order; empty for InternVL.
    pub grid_thw: Vec<Grid>,
}

/// A vision forward pass.
pub struct VisionTrace {
    /// `[image tokens, LLM hidden]`, in prompt order.
    pub embeddings: Tensor,
    /// Each vision block's output (Qwen: `[rows, Hv]` in window order; InternVL:
    /// `[tiles, 1 + patches, Hv]`).
    pub blocks: Vec<Tensor>,
}

/// The model's VLM description; an error for a text-only model.
pub fn vlm(model: &Model) -> Result<&VlmConfig> {
    model.config.vlm.as_ref().with_context(|| {
        format!(
            "{} is not a vision-language model (no vision_config)",
            model.source.display()
        )
    })
}

/// The image embeddings `[image tokens, LLM hidden]` the vision tower and projector compute.
pub fn image_embeddings(model: &Model, input: &VisionInput) -> Result<Tensor> {
    Ok(vision_trace(model, input)?.embeddings)
}

/// The vision forward pass with each block's output.
pub fn vision_trace(model: &Model, input: &VisionInput) -> Result<VisionTrace> {
    match &vlm(model)?.vision {
        VisionTower::Qwen(q) => qwen::forward(model, q, &input.pixel_values, &input.grid_thw),
        VisionTower::Intern(iv) => intern::forward(model, iv, &input.pixel_values),
    }
}

/// The prompt's embeddings `[L, H]` (`text` from [`Reference::embed`]) with the rows of
/// `image_token_id` replaced, in order, by the rows of `image` `[T, H]`.
pub fn splice(text: &Tensor, ids: &[u32], image_token_id: u32, image: &Tensor) -> Result<Tensor> {
    let (l, t) = (text.dim(0)?, image.dim(0)?);
    let mut next = l;
    let rows: Vec<u32> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            if id == image_token_id {
                next += 1;
                (next - 1) as u32
            } else {
                i as u32
            }
        })
        .collect();
    ensure!(
        next - l == t,
        "the prompt has {} image tokens (id {image_token_id}), the images give {t} embeddings",
        next - l
    );
    let all = Tensor::cat(&[text, image], 0)?;
    Ok(all.index_select(&Tensor::new(rows.as_slice(), &Device::Cpu)?, 0)?)
}

/// The M-RoPE position ids `[3][L]` (t, h, w rows) of a Qwen2(.5)-VL prompt, as
/// transformers' `get_rope_index` computes them for images: text counts on from the last
/// position; each run of image tokens is one image of `grids` (in order), placed at
/// (start, start + row, start + column) over its merged grid; the text after it starts at
/// start + max(rows, columns).
pub fn mrope_positions(
    ids: &[u32],
    image_token_id: u32,
    grids: &[Grid],
    merge: usize,
) -> Result<[Vec<u32>; 3]> {
    let mut rows: [Vec<u32>; 3] = Default::default();
    let (mut pos, mut i, mut images) = (0u32, 0, grids.iter());
    while i < ids.len() {
        if ids[i] != image_token_id {
            rows.iter_mut().for_each(|r| r.push(pos));
            pos += 1;
            i += 1;
            continue;
        }
        let &[t, h, w] = images
            .next()
            .context("the prompt has more image-token runs than images")?;
        let (lh, lw) = (h / merge, w / merge);
        let run = ids[i..]
            .iter()
            .take_while(|&&id| id == image_token_id)
            .count();
        ensure!(
            run == t * lh * lw,
            "an image-token run of {run} tokens for an image of {} tokens ({t}x{lh}x{lw})",
            t * lh * lw
        );
        for f in 0..t {
            for r in 0..lh {
                for c in 0..lw {
                    rows[0].push(pos + f as u32);
                    rows[1].push(pos + r as u32);
                    rows[2].push(pos + c as u32);
                }
            }
        }
        pos += lh.max(lw) as u32;
        i += run;
    }
    ensure!(
        images.next().is_none(),
        "more images than image-token runs in the prompt"
    );
    Ok(rows)
}

/// Prefill of a prompt with images: the images' embeddings spliced in at `image_token_id`,
/// M-RoPE positions for Qwen2(.5)-VL, 1D positions for InternVL.
pub fn prefill_with_images(
    reference: &mut Reference,
    ids: &[u32],
    image_token_id: u32,
    input: &VisionInput,
) -> Result<StepOutput> {
    let image = image_embeddings(reference.model, input)?;
    prefill_spliced(reference, ids, image_token_id, &image, &input.grid_thw)
}

/// [`prefill_with_images`] with the image embeddings already computed (`grid_thw` as in
/// [`VisionInput`]: the Qwen images' grids, empty for InternVL).
pub fn prefill_spliced(
    reference: &mut Reference,
    ids: &[u32],
    image_token_id: u32,
    image: &Tensor,
    grid_thw: &[Grid],
) -> Result<StepOutput> {
    let embeds = splice(&reference.embed(ids)?, ids, image_token_id, image)?;
    let positions = match &vlm(reference.model)?.vision {
        VisionTower::Qwen(q) => Some(mrope_positions(
            ids,
            image_token_id,
            grid_thw,
            q.spatial_merge_size,
        )?),
        VisionTower::Intern(_) => None,
    };
    reference.prefill_embeddings(&embeds, positions.as_ref())
}

/// [`prefill_with_images`] then `steps` greedy tokens.
pub fn generate_with_images(
    reference: &mut Reference,
    ids: &[u32],
    image_token_id: u32,
    input: &VisionInput,
    steps: usize,
) -> Result<Vec<u32>> {
    let first = prefill_with_images(reference, ids, image_token_id, input)?;
    greedy_from(reference, first, steps)
}

/// `steps` greedy tokens after a prefill that returned `first`.
pub fn greedy_from(reference: &mut Reference, first: StepOutput, steps: usize) -> Result<Vec<u32>> {
    let mut step = first;
    let mut out = Vec::with_capacity(steps);
    for i in 0..steps {
        let next = argmax(&step.logits);
        out.push(next);
        if i + 1 < steps {
            step = reference.decode(next)?;
        }
    }
    Ok(out)
}
