//! `verify --image`: the vit against the reference vision tower (cosine of the image
//! embeddings), then the prompt with the image on both sides, every block and every token.

use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::image_prompt;
use super::verify::{cosine, verify_with, StepCheck, Thresholds, VerifyReport};
use super::Pipeline;
use crate::model::Model;
use crate::reference::vision::{image_embeddings, prefill_spliced, VisionInput};

#[allow(clippy::too_many_arguments)]
pub fn verify_image(
    pipeline: &mut Pipeline,
    rt: &crate::bmrt::Runtime,
    model: &Model,
    image: &Path,
    prompt: &[u32],
    steps: usize,
    thresholds: Thresholds,
    on_step: impl FnMut(&StepCheck),
) -> Result<VerifyReport> {
    let ip = image_prompt::prepare(rt, &model.config, &model.source, image, prompt)?;
    let rows = ip.pixel_rows.len() / ip.row_width;
    let input = match super::intern_prompt::reference_input(&model.config, &ip)? {
        Some(input) => input,
        None => VisionInput {
            pixel_values: Tensor::from_vec(
                ip.pixel_rows.clone(),
                (rows, ip.row_width),
                &Device::Cpu,
            )?,
            grid_thw: vec![ip.grid],
        },
    };
    let want = image_embeddings(model, &input)?;
    let want_v: Vec<f32> = want.flatten_all()?.to_vec1()?;
    let vit_cosine = cosine(&ip.vit.to_f32()?, &want_v);
    eprintln!(
        "vit: {} patches -> {} image tokens, cosine {vit_cosine:.6} ({:.2} s)",
        rows, ip.vit.tokens, ip.vit.seconds
    );
    pipeline.set_extras(ip.extras.clone());
    let (ids, token) = (ip.ids.clone(), ip.image_token_id);
    let prefill = |r: &mut crate::reference::Reference| {
        prefill_spliced(r, &ids, token, &want, &input.grid_thw)
    };
    let mut report = verify_with(
        pipeline, model, &ip.ids, steps, thresholds, prefill, on_step,
    )?;
    report.vit_cosine = Some(vit_cosine);
    report.pass &= vit_cosine >= thresholds.min_cosine;
    Ok(report)
}
