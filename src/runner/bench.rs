//! `bench`: first-token latency, decode tokens/s, mean time per net and device memory of an LLM
//! bmodel, from real prefill/decode runs of the pipeline.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::image_prompt::ImagePrompt;
use super::pipeline::Pipeline;
use crate::bmrt::Runtime;

/// Runs the image through the vit and places it in the text prompt it gets.
pub type PrepareImage<'a> = &'a dyn Fn(&[u32]) -> Result<ImagePrompt>;

/// The vit's share of a bench with `--image`: apart from prefill and decode.
#[derive(Debug, Serialize)]
pub struct VitTiming {
    pub images: usize,
    /// vit launches: 1 per Qwen image, one per InternVL tile.
    pub tiles: usize,
    pub image_tokens: usize,
    pub total_s: f64,
    pub per_image_ms: f64,
    pub per_tile_ms: f64,
}

impl VitTiming {
    pub fn of(ip: &ImagePrompt) -> VitTiming {
        let s = ip.vit.seconds;
        VitTiming {
            images: 1,
            tiles: ip.vit_launches,
            image_tokens: ip.placement.tokens,
            total_s: s,
            per_image_ms: 1e3 * s,
            per_tile_ms: 1e3 * s / ip.vit_launches.max(1) as f64,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct NetTiming {
    pub net: String,
    pub launches: usize,
    pub mean_ms: f64,
    pub total_s: f64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// Results from the CPU simulator say nothing about a real TPU's speed.
    pub simulated: bool,
    pub runtime: String,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub load_s: f64,
    pub first_token_s: f64,
    pub decode_tokens_per_s: f64,
    pub nets: Vec<NetTiming>,
    /// MB (total, used) as bm_get_stat reports them; the simulator reports zeros.
    pub device_memory_mb: (i32, i32),
    pub layers: usize,
    pub max_input_length: usize,
    pub seq_length: usize,
    pub dynamic: bool,
    /// With `--image`: the vit time (the prompt then holds the image's tokens too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vit: Option<VitTiming>,
}

/// Prefill `prompt_tokens` tokens, then decode `decode_tokens` greedily. `image` runs the
/// image through the vit (timed apart) and puts it before those tokens; it gets the text
/// prompt and returns the image prompt.
pub fn bench(
    rt: &Runtime,
    load_s: f64,
    prompt_tokens: usize,
    decode_tokens: usize,
    simulated: bool,
    image: Option<PrepareImage>,
) -> Result<BenchReport> {
    let mut p = Pipeline::new(rt)?;
    let limit = p.nets.max_input_length.min(p.nets.seq_length - 1);
    let len = prompt_tokens.clamp(1, limit);
    // Any valid ids work for timing; small ones are valid for every vocabulary.
    let mut prompt: Vec<u32> = (0..len as u32).map(|i| 1 + i % 100).collect();
    let mut vit = None;
    if let Some(prepare) = image {
        let ip = prepare(&prompt)?;
        // The image's tokens come first; the text is cut to what still fits.
        let keep = ip.ids.len().min(limit).saturating_sub(ip.ids.len() - len);
        anyhow::ensure!(
            keep >= 1,
            "the image's {} tokens do not fit MAX_INPUT_LENGTH {limit} with a text token",
            ip.placement.tokens
        );
        let (ids, extras) = ip.place(&prompt[..keep])?;
        p.set_extras(extras);
        prompt = ids;
        vit = Some(VitTiming::of(&ip));
    }
    let mut per_net: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    let mut record = |launches: &[(String, f64)]| {
        for (net, s) in launches {
            let e = per_net.entry(net.clone()).or_default();
            e.0 += 1;
            e.1 += s;
        }
    };
    let t0 = Instant::now();
    let first = p.prefill(&prompt)?;
    let first_token_s = t0.elapsed().as_secs_f64();
    record(&first.launches);
    let mut token = first.token;
    let room = p.nets.seq_length.saturating_sub(p.history());
    let steps = decode_tokens.min(room);
    let t1 = Instant::now();
    for _ in 0..steps {
        let step = p.decode(token)?;
        record(&step.launches);
        token = step.token;
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let stat = rt.stat()?;
    Ok(BenchReport {
        simulated,
        runtime: rt.describe().to_string(),
        prompt_tokens: prompt.len(),
        decode_tokens: steps,
        load_s,
        first_token_s,
        decode_tokens_per_s: if decode_s > 0.0 {
            steps as f64 / decode_s
        } else {
            0.0
        },
        nets: per_net
            .into_iter()
            .map(|(net, (n, total))| NetTiming {
                net,
                launches: n,
                mean_ms: 1e3 * total / n as f64,
                total_s: total,
            })
            .collect(),
        device_memory_mb: (stat.mem_total, stat.mem_used),
        layers: p.nets.layers(),
        max_input_length: p.nets.max_input_length,
        seq_length: p.nets.seq_length,
        dynamic: p.nets.dynamic,
        vit,
    })
}
