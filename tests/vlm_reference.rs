//! The candle vision towers and the M-RoPE text part against transformers 5.6.2 on tiny
//! random VLMs (scripts/make_vlm_fixtures.py): image embeddings within 1e-4, the prompt's
//! M-RoPE positions equal, greedy tokens for a prompt with an image equal. CPU only.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use llm_convert::model::vlm::VisionTower;
use llm_convert::model::Model;
use llm_convert::reference::vision::{self, VisionInput};
use llm_convert::reference::Reference;
use llm_convert::vision::{load_rgb, InternVlParams, QwenVisionParams};
use serde_json::Value;

/// Image embeddings and prefill logits: at most this far from transformers' (f32 both).
const TOLERANCE: f32 = 1e-4;

struct Fixture {
    model: Model,
    expected: Value,
    tensors: HashMap<String, Tensor>,
}

fn fixture(name: &str) -> Fixture {
    let dir = common::vlm::vlm_fixtures().join(name);
    let model = Model::open(&dir).unwrap_or_else(|e| panic!("opening {name}: {e:#}"));
    let expected = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap())
        .expect("expected.json");
    let tensors =
        candle_core::safetensors::load(dir.join("expected/inputs.safetensors"), &Device::Cpu)
            .expect("inputs.safetensors");
    Fixture {
        model,
        expected,
        tensors,
    }
}

impl Fixture {
    fn input(&self) -> VisionInput {
        let grid_thw = match self.tensors.get("image_grid_thw") {
            Some(g) => g
                .to_vec2::<i64>()
                .unwrap()
                .into_iter()
                .map(|r| [r[0] as usize, r[1] as usize, r[2] as usize])
                .collect(),
            None => vec![],
        };
        VisionInput {
            pixel_values: self.tensors["pixel_values"].clone(),
            grid_thw,
        }
    }

    fn ids(&self, key: &str) -> Vec<u32> {
        self.expected[key]
            .as_array()
            .unwrap_or_else(|| panic!("expected.json has no {key}"))
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    }

    fn image_token_id(&self) -> u32 {
        let vlm = vision::vlm(&self.model).unwrap();
        let id = vlm
            .image_token_id
            .expect("the fixture's config names its image token");
        assert_eq!(id as u64, self.expected["image_token_id"].as_u64().unwrap());
        id
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Everything the reference must agree with transformers on, for one fixture.
fn matches_transformers(name: &str) {
    let f = fixture(name);
    let input = f.input();
    let trace = vision::vision_trace(&f.model, &input).unwrap();
    let want = &f.tensors["image_embeds"];
    let diff = max_diff(&trace.embeddings, want);
    eprintln!(
        "{name}: image embeddings max |diff| {diff:.2e} over {:?}",
        want.dims()
    );
    for (i, block) in trace.blocks.iter().enumerate() {
        let d = max_diff(block, &f.tensors[&format!("vision_block_{i}")]);
        eprintln!("{name}: vision block {i} max |diff| {d:.2e}");
    }
    assert!(
        diff <= TOLERANCE,
        "{name}: image embeddings differ by {diff}"
    );

    let ids = f.ids("prompt");
    let image_token = f.image_token_id();
    if let VisionTower::Qwen(q) = &vision::vlm(&f.model).unwrap().vision {
        let positions =
            vision::mrope_positions(&ids, image_token, &input.grid_thw, q.spatial_merge_size)
                .unwrap();
        let want: Vec<Vec<u32>> = serde_json::from_value(f.expected["position_ids"].clone())
            .expect("position_ids [3][L]");
        assert_eq!(positions.to_vec(), want, "{name}: M-RoPE positions");
    }

    let mut reference = Reference::new(&f.model).unwrap();
    let step = vision::prefill_spliced(
        &mut reference,
        &ids,
        image_token,
        &trace.embeddings,
        &input.grid_thw,
    )
    .unwrap();
    let want_logits: Vec<f32> =
        serde_json::from_value(f.expected["prefill_logits"].clone()).unwrap();
    let logit_diff = step
        .logits
        .iter()
        .zip(&want_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("{name}: prefill logits max |diff| {logit_diff:.2e}");
    assert!(
        logit_diff <= TOLERANCE * 10.0,
        "{name}: prefill logits differ by {logit_diff}"
    );

    let want_tokens = f.ids("tokens");
    let tokens = vision::greedy_from(&mut reference, step, want_tokens.len()).unwrap();
    assert_eq!(tokens, want_tokens, "{name}: greedy tokens with the image");
    // The same prompt with the placeholders left as token embeddings (1D positions) answers
    // differently: the image reaches the tokens.
    let text_only = reference.generate_greedy(&ids, want_tokens.len()).unwrap();
    assert_eq!(
        text_only,
        f.ids("tokens_text_only"),
        "{name}: text-only tokens"
    );
    assert_ne!(text_only, tokens);
}

#[test]
fn qwen25vl_matches_transformers() {
    matches_transformers("qwen25vl");
}

#[test]
fn qwen25vl_head_dim_80_matches_transformers() {
    matches_transformers("qwen25vl_hd80_bf16");
}

#[test]
fn qwen2vl_matches_transformers() {
    matches_transformers("qwen2vl");
}

#[test]
fn internvl_native_matches_transformers() {
    matches_transformers("internvl");
}

#[test]
fn internvl_chat_layout_matches_transformers() {
    matches_transformers("internvl_chat");
}

/// InternViT-300M's geometry (hidden 1024, 16 heads, one 448x448 tile), tied lm_head.
#[test]
fn internvl_chat_300m_geometry_matches_transformers() {
    matches_transformers("internvl_chat_300m_bf16");
}

/// The fixture exercises window attention: with every block attending the whole image the
/// embeddings move far past the tolerance.
#[test]
fn qwen25vl_windows_change_the_embeddings() {
    let mut f = fixture("qwen25vl");
    let vlm = f.model.config.vlm.as_mut().unwrap();
    let VisionTower::Qwen(q) = &mut vlm.vision else {
        panic!("qwen25vl has a Qwen tower")
    };
    assert!(q.fullatt_block_indexes.len() < q.depth);
    q.fullatt_block_indexes = (0..q.depth).collect();
    let all_full = vision::image_embeddings(&f.model, &f.input()).unwrap();
    let diff = max_diff(&all_full, &f.tensors["image_embeds"]);
    assert!(
        diff > 100.0 * TOLERANCE,
        "window attention changes nothing ({diff})"
    );
}

/// The M-RoPE sections matter: the same positions through plain 1D rotary give other logits.
#[test]
fn qwen25vl_positions_change_the_logits() {
    let f = fixture("qwen25vl");
    let ids = f.ids("prompt");
    let image_token = f.image_token_id();
    let input = f.input();
    let mut reference = Reference::new(&f.model).unwrap();
    let image = vision::image_embeddings(&f.model, &input).unwrap();
    let embeds =
        vision::splice(&reference.embed(&ids).unwrap(), &ids, image_token, &image).unwrap();
    let plain = reference.prefill_embeddings(&embeds, None).unwrap();
    let want: Vec<f32> = serde_json::from_value(f.expected["prefill_logits"].clone()).unwrap();
    let diff = plain
        .logits
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff > 100.0 * TOLERANCE,
        "M-RoPE positions change nothing ({diff})"
    );
}

/// Two images in one prompt: both grids through the tower (full attention per image), the
/// embeddings spliced in order, positions continuing after each image.
#[test]
fn qwen25vl_two_images_match_transformers() {
    let f = fixture("qwen25vl");
    let two = &f.expected["two_images"];
    let grid_thw = f.tensors["two_images.image_grid_thw"]
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| [r[0] as usize, r[1] as usize, r[2] as usize])
        .collect::<Vec<_>>();
    assert!(
        grid_thw.len() == 2 && grid_thw[0] != grid_thw[1],
        "{grid_thw:?}"
    );
    let input = VisionInput {
        pixel_values: f.tensors["two_images.pixel_values"].clone(),
        grid_thw,
    };
    let image = vision::image_embeddings(&f.model, &input).unwrap();
    let diff = max_diff(&image, &f.tensors["two_images.image_embeds"]);
    eprintln!("qwen25vl two images: embeddings max |diff| {diff:.2e}");
    assert!(diff <= TOLERANCE, "two images: embeddings differ by {diff}");
    let ids: Vec<u32> = serde_json::from_value(two["prompt"].clone()).unwrap();
    let token = f.image_token_id();
    let VisionTower::Qwen(q) = &vision::vlm(&f.model).unwrap().vision else {
        panic!("qwen25vl has a Qwen tower")
    };
    let positions =
        vision::mrope_positions(&ids, token, &input.grid_thw, q.spatial_merge_size).unwrap();
    let want: Vec<Vec<u32>> = serde_json::from_value(two["position_ids"].clone()).unwrap();
    assert_eq!(positions.to_vec(), want, "two images: M-RoPE positions");
    let mut reference = Reference::new(&f.model).unwrap();
    let step =
        vision::prefill_spliced(&mut reference, &ids, token, &image, &input.grid_thw).unwrap();
    let want_tokens: Vec<u32> = serde_json::from_value(two["tokens"].clone()).unwrap();
    let tokens = vision::greedy_from(&mut reference, step, want_tokens.len()).unwrap();
    assert_eq!(tokens, want_tokens, "two images: greedy tokens");
}

/// Two InternVL images in one prompt (3 and 5 tiles): every tile through the tower in order,
/// each image's embeddings spliced at its own `<IMG_CONTEXT>` run, the tokens transformers'.
#[test]
fn internvl_two_images_match_transformers() {
    let f = fixture("internvl");
    let two = &f.expected["two_images"];
    let tiles: Vec<usize> = serde_json::from_value(two["tiles"].clone()).unwrap();
    assert!(tiles.len() == 2 && tiles[0] != tiles[1], "{tiles:?}");
    let input = VisionInput {
        pixel_values: f.tensors["two_images.pixel_values"].clone(),
        grid_thw: vec![],
    };
    let image = vision::image_embeddings(&f.model, &input).unwrap();
    let diff = max_diff(&image, &f.tensors["two_images.image_embeds"]);
    eprintln!("internvl two images ({tiles:?} tiles): embeddings max |diff| {diff:.2e}");
    assert!(diff <= TOLERANCE, "two images: embeddings differ by {diff}");
    let ids: Vec<u32> = serde_json::from_value(two["prompt"].clone()).unwrap();
    let token = f.image_token_id();
    let mut reference = Reference::new(&f.model).unwrap();
    let step = vision::prefill_spliced(&mut reference, &ids, token, &image, &[]).unwrap();
    let want_tokens: Vec<u32> = serde_json::from_value(two["tokens"].clone()).unwrap();
    let tokens = vision::greedy_from(&mut reference, step, want_tokens.len()).unwrap();
    assert_eq!(tokens, want_tokens, "two images: greedy tokens");
    // Control: the images the other way round (each run gets the other image's rows) answer
    // differently, so the order of the splice reaches the tokens.
    let per = image.dim(0).unwrap() / tiles.iter().sum::<usize>();
    let first = image.narrow(0, 0, tiles[0] * per).unwrap();
    let second = image.narrow(0, tiles[0] * per, tiles[1] * per).unwrap();
    let swapped_ids = swap_runs(&ids, token);
    let swapped = Tensor::cat(&[&second, &first], 0).unwrap();
    let step = vision::prefill_spliced(&mut reference, &swapped_ids, token, &swapped, &[]).unwrap();
    let other = vision::greedy_from(&mut reference, step, want_tokens.len()).unwrap();
    assert_ne!(other, tokens, "swapping the two images changes nothing");
}

/// `ids` with its two image-token runs exchanged (the text around them kept).
fn swap_runs(ids: &[u32], token: u32) -> Vec<u32> {
    let runs: Vec<(usize, usize)> = {
        let (mut v, mut i) = (Vec::new(), 0);
        while i < ids.len() {
            if ids[i] == token {
                let n = ids[i..].iter().take_while(|&&t| t == token).count();
                v.push((i, n));
                i += n;
            } else {
                i += 1;
            }
        }
        v
    };
    let [(a, na), (b, nb)] = runs[..] else {
        panic!("two image runs expected: {runs:?}")
    };
    let run = |n| std::iter::repeat_n(token, n);
    ids[..a]
        .iter()
        .copied()
        .chain(run(nb))
        .chain(ids[a + na..b].iter().copied())
        .chain(run(na))
        .chain(ids[b + nb..].iter().copied())
        .collect()
}

/// A tile larger than the config's: the position embedding is resampled as torch's bicubic.
#[test]
fn internvl_resized_tile_interpolates_the_position_embedding() {
    let f = fixture("internvl");
    let input = VisionInput {
        pixel_values: f.tensors["resized.pixel_values"].clone(),
        grid_thw: vec![],
    };
    let image = vision::image_embeddings(&f.model, &input).unwrap();
    let diff = max_diff(&image, &f.tensors["resized.image_embeds"]);
    eprintln!("internvl resized tile: embeddings max |diff| {diff:.2e}");
    assert!(
        diff <= TOLERANCE,
        "resized tile: embeddings differ by {diff}"
    );
}

/// InternViT-6B's options: RMSNorm blocks, q/k norm, no q/k/v bias.
#[test]
fn internvl_qk_norm_rms_blocks_match_transformers() {
    matches_transformers("internvl_qknorm");
}

/// Our host preprocessing (src/vision) of the fixture's photo, with the processor settings
/// transformers used, then the reference: the same grid, pixels within the resize's rounding,
/// and the same greedy tokens as transformers from its own pixels.
fn our_preprocessing_gives_transformers_tokens(name: &str) {
    let f = fixture(name);
    let dir = common::vlm::vlm_fixtures().join(name);
    let photo = load_rgb(&dir.join("photo.png")).unwrap();
    let proc = &f.expected["processor"];
    let ours = match &vision::vlm(&f.model).unwrap().vision {
        VisionTower::Qwen(_) => {
            let bound = |k: &str| proc[k].as_u64().unwrap();
            let params = QwenVisionParams::load(&dir)
                .unwrap()
                .with_pixel_bounds(bound("min_pixels"), bound("max_pixels"));
            let px = params.preprocess(&photo).unwrap();
            let rows = px.rows.len() / px.dim;
            VisionInput {
                pixel_values: Tensor::from_vec(px.rows, (rows, px.dim), &Device::Cpu).unwrap(),
                grid_thw: vec![[px.grid.t, px.grid.h, px.grid.w]],
            }
        }
        VisionTower::Intern(_) => {
            let mut params = InternVlParams::load(&dir).unwrap();
            params.min_tiles = proc["min_patches"].as_u64().unwrap() as usize;
            params.max_tiles = proc["max_patches"].as_u64().unwrap() as usize;
            let px = params.preprocess(&photo);
            let s = px.image_size;
            VisionInput {
                pixel_values: Tensor::from_vec(px.data, (px.tiles, 3, s, s), &Device::Cpu).unwrap(),
                grid_thw: vec![],
            }
        }
    };
    let theirs = f.input();
    assert_eq!(ours.grid_thw, theirs.grid_thw, "{name}: grids");
    let pixel_diff = max_diff(&ours.pixel_values, &theirs.pixel_values);
    let image = vision::image_embeddings(&f.model, &ours).unwrap();
    let embed_diff = max_diff(&image, &f.tensors["image_embeds"]);
    eprintln!(
        "{name}: our preprocessing: pixels max |diff| {pixel_diff:.2e}, image embeddings max \
         |diff| {embed_diff:.2e}"
    );
    let ids = f.ids("prompt");
    let mut reference = Reference::new(&f.model).unwrap();
    let step = vision::prefill_spliced(
        &mut reference,
        &ids,
        f.image_token_id(),
        &image,
        &ours.grid_thw,
    )
    .unwrap();
    let want = f.ids("tokens");
    let tokens = vision::greedy_from(&mut reference, step, want.len()).unwrap();
    assert_eq!(tokens, want, "{name}: greedy tokens from our preprocessing");
}

#[test]
fn qwen25vl_our_preprocessing_gives_transformers_tokens() {
    our_preprocessing_gives_transformers_tokens("qwen25vl");
}

#[test]
fn qwen2vl_our_preprocessing_gives_transformers_tokens() {
    our_preprocessing_gives_transformers_tokens("qwen2vl");
}

#[test]
fn internvl_chat_our_preprocessing_gives_transformers_tokens() {
    our_preprocessing_gives_transformers_tokens("internvl_chat");
}

/// Qwen2-VL's vision norms are LayerNorms with a bias (not Qwen2.5-VL's RMSNorm): the same
/// tower with RMSNorm moves the embeddings far past the tolerance, so the fixture and the
/// vit's `verify --image` check that quirk.
#[test]
fn qwen2vl_layer_norm_changes_the_embeddings() {
    use llm_convert::model::vlm::VisionNorm;
    let mut f = fixture("qwen2vl");
    let vlm = f.model.config.vlm.as_mut().unwrap();
    let VisionTower::Qwen(q) = &mut vlm.vision else {
        panic!("qwen2vl has a Qwen tower")
    };
    assert_eq!(q.norm, VisionNorm::Layer);
    assert_eq!(
        q.window_size, None,
        "Qwen2-VL attends the whole image in every block"
    );
    q.norm = VisionNorm::Rms;
    let rms = vision::image_embeddings(&f.model, &f.input()).unwrap();
    let diff = max_diff(&rms, &f.tensors["image_embeds"]);
    assert!(
        diff > 100.0 * TOLERANCE,
        "LayerNorm vs RMSNorm changes nothing ({diff})"
    );
}

/// The vision head_dim 80 Qwen2-VL (llm_convert.py's geometry; bf16 weights, top-level
/// rope_scaling and in_chans added for its converter).
#[test]
fn qwen2vl_head_dim_80_matches_transformers() {
    matches_transformers("qwen2vl_hd80_bf16");
}

// ---- InternVL quirks (issue 12): each one changes the image embeddings ----

/// The `internvl` fixture with its weights edited by `edit(name, tensor)` (None: unchanged),
/// in a folder of its own.
fn internvl_edited(
    dir: &tempfile::TempDir,
    edit: impl Fn(&str, &Tensor) -> Option<Tensor>,
) -> Model {
    let src = common::vlm::vlm_fixtures().join("internvl");
    let mut weights =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut edited = 0;
    for (name, t) in weights.iter_mut() {
        if let Some(new) = edit(name, t) {
            *t = new;
            edited += 1;
        }
    }
    assert!(edited > 0, "no weight was edited");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    candle_core::safetensors::save(&weights, dir.path().join("model.safetensors")).unwrap();
    Model::open(dir.path()).unwrap()
}

fn internvl_embeddings_differ_by(model: &Model) -> f32 {
    let f = fixture("internvl");
    let image = vision::image_embeddings(model, &f.input()).unwrap();
    max_diff(&image, &f.tensors["image_embeds"])
}

/// LayerScale (`lambda_1` / `lambda_2`, OpenGVLab's `ls1` / `ls2`): with the scales set to 1
/// (dropped), the embeddings are far from transformers'.
#[test]
fn internvl_layer_scale_matters() {
    let dir = tempfile::tempdir().unwrap();
    let model = internvl_edited(&dir, |name, t| {
        name.contains(".lambda_").then(|| t.ones_like().unwrap())
    });
    let diff = internvl_embeddings_differ_by(&model);
    eprintln!("internvl without LayerScale: embeddings max |diff| {diff:.2e}");
    assert!(
        diff > 100.0 * TOLERANCE,
        "LayerScale changed nothing ({diff})"
    );
}

/// The pixel shuffle's channel order (the 2×2 neighbours (0,0), (0,1), (1,0), (1,1)): the
/// other order (rows and columns swapped) is what this model computes with the projector's
/// input blocks 1 and 2 swapped; its embeddings are far from transformers'.
#[test]
fn internvl_pixel_shuffle_order_matters() {
    let dir = tempfile::tempdir().unwrap();
    let model = internvl_edited(&dir, |name, t| {
        let swap_blocks = |t: &Tensor| {
            let axis = t.rank() - 1;
            let b = t.dim(axis).unwrap() / 4;
            let part = |k: usize| t.narrow(axis, k * b, b).unwrap();
            Tensor::cat(&[part(0), part(2), part(1), part(3)], axis).unwrap()
        };
        let projector_input = name.starts_with("multi_modal_projector.layer_norm.")
            || name == "multi_modal_projector.linear_1.weight";
        projector_input.then(|| swap_blocks(t))
    });
    let diff = internvl_embeddings_differ_by(&model);
    eprintln!("internvl with the transposed pixel shuffle: embeddings max |diff| {diff:.2e}");
    assert!(
        diff > 100.0 * TOLERANCE,
        "the shuffle order changed nothing ({diff})"
    );
}
