//! src/vision against transformers 5.6.2's processors (and LLM-TPU's / OpenGVLab's code) on
//! real photos in tests/data: pixel values within measured bounds, and grids, window and
//! reverse indices, masks and M-RoPE ids exactly equal. tests/vision_reference.py makes the
//! reference arrays with the toolchain venv's python (cached per script + image hash).
//! Run with `--nocapture` to see the measured differences.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use llm_convert::error::InputError;
use llm_convert::exit::ExitStatus;
use llm_convert::vision::qwen::{qwen_vl_utils_smart_resize, smart_resize};
use llm_convert::vision::qwen_vit::{self, VitShape};
use llm_convert::vision::{
    load_rgb, mrope_position_ids, Grid, InternVlParams, QwenVisionParams, RgbImage,
};
use serde_json::Value;

const IMAGES: [&str; 3] = [
    "grace_hopper_300.jpg",
    "astronaut_crop.png",
    "coffee_wide.webp",
];

fn data(name: &str) -> PathBuf {
    common::repo().join("tests/data").join(name)
}

/// The reference directory and its summary.json.
fn reference() -> &'static (PathBuf, Value) {
    static REF: OnceLock<(PathBuf, Value)> = OnceLock::new();
    REF.get_or_init(|| {
        use sha2::Digest;
        let script = common::repo().join("tests/vision_reference.py");
        let mut h = sha2::Sha256::new();
        h.update(std::fs::read(&script).expect("reading vision_reference.py"));
        for img in IMAGES {
            h.update(std::fs::read(data(img)).expect("reading a test image"));
        }
        let key = llm_convert::util::hex(&h.finalize())[..16].to_string();
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = root.join(format!("vision-ref-{key}"));
        // References of older script versions are ~100 MB each: drop them.
        for old in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let n = old.file_name().to_string_lossy().into_owned();
            if n.starts_with("vision-ref-") && old.path() != dir {
                let _ = std::fs::remove_dir_all(old.path());
            }
        }
        if !dir.join("summary.json").exists() {
            let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let out = Command::new(common::toolchain().python())
                .arg(&script)
                .arg(&tmp)
                .args(IMAGES.map(data))
                .env("HF_HUB_OFFLINE", "1")
                .env("TRANSFORMERS_VERBOSITY", "error")
                .output()
                .expect("running vision_reference.py");
            assert!(
                out.status.success(),
                "vision_reference.py failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).expect("publishing the reference");
        }
        let text = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json");
        (
            dir,
            serde_json::from_str(&text).expect("summary.json parses"),
        )
    })
}

fn section(name: &str) -> &'static [Value] {
    reference().1[name].as_array().expect("summary section")
}

fn raw(entry: &Value, key: &str) -> Vec<u8> {
    let name = entry[key].as_str().expect("file name");
    std::fs::read(reference().0.join(name)).expect("reference array")
}

fn f32s(entry: &Value, key: &str) -> Vec<f32> {
    raw(entry, key)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("uint") as usize)
        .collect()
}

fn i64s(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("int"))
        .collect()
}

fn image_of(entry: &Value) -> PathBuf {
    PathBuf::from(entry["image"].as_str().expect("image path"))
}

/// (max, mean) absolute difference.
fn diff(a: &[f32], b: &[f32]) -> (f32, f64) {
    assert_eq!(a.len(), b.len(), "array lengths");
    let mut max = 0f32;
    let mut sum = 0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        max = max.max(d);
        sum += f64::from(d);
    }
    (max, sum / a.len().max(1) as f64)
}

fn pil_rgb(path: &Path) -> RgbImage {
    let entry = section("decode")
        .iter()
        .find(|e| image_of(e) == path)
        .expect("decoded by PIL");
    RgbImage {
        width: entry["width"].as_u64().expect("w") as usize,
        height: entry["height"].as_u64().expect("h") as usize,
        data: raw(entry, "rgb"),
        source: path.to_path_buf(),
    }
}

fn is_jpeg(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "jpg")
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn decode_matches_pillow() {
    for entry in section("decode") {
        let path = image_of(entry);
        let ours = load_rgb(&path).expect("decoding a test photo");
        let pil = pil_rgb(&path);
        assert_eq!((ours.width, ours.height), (pil.width, pil.height));
        let a: Vec<f32> = ours.data.iter().map(|&v| f32::from(v)).collect();
        let b: Vec<f32> = pil.data.iter().map(|&v| f32::from(v)).collect();
        let (max, mean) = diff(&a, &b);
        println!(
            "decode {}: max |Δ| {max} levels, mean {mean:.4}",
            name(&path)
        );
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            // Lossless: the same pixels.
            "png" => assert_eq!(max, 0.0),
            // zune-jpeg / image-webp vs libjpeg-turbo / libwebp: IDCT and chroma upsampling
            // rounding. Measured on grace_hopper_300.jpg: max 6, mean 0.194.
            "jpg" => assert!(max <= 8.0 && mean < 0.3, "jpeg decode {max} {mean}"),
            // image-webp decodes this lossy WebP exactly as libwebp does.
            _ => assert!(max <= 2.0 && mean < 0.05, "webp decode {max} {mean}"),
        }
    }
}

#[test]
fn bicubic_resize_is_bit_exact_with_pillow() {
    for entry in section("resize") {
        let path = image_of(entry);
        let (w, h) = (
            entry["width"].as_u64().expect("w") as usize,
            entry["height"].as_u64().expect("h") as usize,
        );
        let src = pil_rgb(&path);
        let pil = raw(entry, "rgb");
        let ours = llm_convert::vision::resize::resize_bicubic(&src, w, h);
        assert!(
            ours.data == pil,
            "{} resized to {w}×{h} differs from Pillow's BICUBIC",
            name(&path)
        );
        // The quirks matter: the image crate's CatmullRom (the same a = −0.5 cubic, without
        // Pillow's widened support, weight quantisation and u8 intermediate) is visibly off.
        let buf = image::RgbImage::from_raw(src.width as u32, src.height as u32, src.data)
            .expect("rgb buffer");
        let cr = image::imageops::resize(
            &buf,
            w as u32,
            h as u32,
            image::imageops::FilterType::CatmullRom,
        );
        let a: Vec<f32> = cr.as_raw().iter().map(|&v| f32::from(v)).collect();
        let b: Vec<f32> = pil.iter().map(|&v| f32::from(v)).collect();
        let (max, mean) = diff(&a, &b);
        println!(
            "resize {} {}×{} → {w}×{h}: image's CatmullRom vs Pillow max {max} levels, mean {mean:.3}",
            name(&path),
            src.width,
            src.height
        );
        assert!(max >= 1.0, "CatmullRom happened to match Pillow");
    }
}

#[test]
fn smart_resize_equals_transformers() {
    for e in section("smart_resize") {
        let (h, w) = (e["h"].as_u64().expect("h"), e["w"].as_u64().expect("w"));
        let (lo, hi) = (
            e["min"].as_u64().expect("min"),
            e["max"].as_u64().expect("max"),
        );
        let ours = smart_resize(h as usize, w as usize, 28, lo, hi).ok();
        let theirs = (!e["out"].is_null()).then(|| {
            let v = usizes(&e["out"]);
            (v[0], v[1])
        });
        assert_eq!(ours, theirs, "smart_resize({h}, {w}, 28, {lo}, {hi})");
        // qwen_vl_utils' variant (LLM-TPU's first resize), where it gives a usable size.
        let qvu = e["qwen_vl_utils"]
            .as_array()
            .map(|_| usizes(&e["qwen_vl_utils"]));
        if let Some(v) = qvu.filter(|v| v.iter().all(|&s| s > 0)) {
            let ours = qwen_vl_utils_smart_resize(h as usize, w as usize, 28, lo, hi);
            assert_eq!(
                ours,
                Ok((v[0], v[1])),
                "qwen_vl_utils smart_resize({h}, {w})"
            );
        }
    }
}

#[test]
fn llm_tpu_two_step_resize_matches_its_pipeline() {
    for e in section("llm_tpu") {
        let path = image_of(e);
        let capacity = e["capacity"].as_u64().expect("capacity") as usize;
        let params = QwenVisionParams::defaults(true);
        let params = params
            .clone()
            .with_pixel_bounds(64 * 28 * 28, params.capacity_pixels(capacity));
        let g = usizes(&e["grid"]);
        let same_input = params
            .preprocess_llm_tpu(&pil_rgb(&path))
            .expect("preprocess");
        assert_eq!(
            same_input.grid,
            Grid {
                t: g[0],
                h: g[1],
                w: g[2]
            }
        );
        let pixels = f32s(e, "pixels");
        assert!(
            same_input.rows == pixels,
            "{} capacity {capacity}: qwen_vl_utils + processor pixels differ",
            name(&path)
        );
        let ours = params
            .preprocess_llm_tpu(&load_rgb(&path).expect("decode"))
            .expect("preprocess");
        let (max, mean) = diff(&ours.rows, &pixels);
        // The single (transformers) resize against LLM-TPU's two.
        let single = params.preprocess(&pil_rgb(&path)).expect("preprocess");
        let vs_single = if single.grid == same_input.grid {
            let (m, a) = diff(&single.rows, &pixels);
            format!("max {m:.4} mean {a:.5}")
        } else {
            format!("grid {:?} instead", single.grid)
        };
        println!(
            "llm-tpu {} capacity {capacity} grid {g:?}: ours max {max:.4} mean {mean:.5}; \
             transformers' single resize: {vs_single}",
            name(&path)
        );
        if is_jpeg(&path) {
            assert!(max < 0.1 && mean < 0.005, "{max} {mean}");
        } else {
            assert_eq!(max, 0.0);
        }
    }
}

#[test]
fn qwen_pixel_values_match_transformers() {
    for e in section("qwen") {
        let path = image_of(e);
        let params = QwenVisionParams::defaults(true).with_pixel_bounds(
            e["min_pixels"].as_u64().expect("min"),
            e["max_pixels"].as_u64().expect("max"),
        );
        let ours = params
            .preprocess(&load_rgb(&path).expect("decode"))
            .expect("preprocess");
        // Our resize + normalise on PIL's decoded pixels: must equal the PIL processor exactly.
        let same_input = params.preprocess(&pil_rgb(&path)).expect("preprocess");
        let g = usizes(&e["pil_grid"]);
        assert_eq!(g, usizes(&e["fast_grid"]), "PIL and fast grids");
        assert_eq!(
            ours.grid,
            Grid {
                t: g[0],
                h: g[1],
                w: g[2]
            },
            "grid of {}",
            name(&path)
        );
        let pil = f32s(e, "pil");
        let fast = f32s(e, "fast");
        assert_eq!(
            same_input.rows,
            pil,
            "{}: PIL-decoded pixels through our resize must equal Qwen2VLImageProcessorPil",
            name(&path)
        );
        let (pmax, pmean) = diff(&ours.rows, &pil);
        let (fmax, fmean) = diff(&ours.rows, &fast);
        println!(
            "qwen {} grid {:?} (min {}, max {}): vs PIL max {pmax:.4} mean {pmean:.5}; vs fast max {fmax:.4} mean {fmean:.5}",
            name(&path),
            g,
            params.min_pixels,
            params.max_pixels
        );
        // One u8 level is 1/255/std ≈ 0.0146. Measured: the JPEG (decoder rounding) max 0.071,
        // mean 0.0032 against both; PNG / WebP equal the PIL path exactly and are within
        // 2 levels (max 0.029, mean 8e-5) of the torchvision path.
        if is_jpeg(&path) {
            assert!(pmax < 0.1 && pmean < 0.005, "vs PIL: {pmax} {pmean}");
            assert!(fmax < 0.1 && fmean < 0.005, "vs fast: {fmax} {fmean}");
        } else {
            assert_eq!(pmax, 0.0, "vs PIL");
            assert!(fmax < 0.05 && fmean < 2e-4, "vs fast: {fmax} {fmean}");
        }
    }
}

#[test]
fn vit_inputs_equal_transformers_and_llm_tpu() {
    for e in section("vit") {
        let g = usizes(&e["grid"]);
        let grid = Grid {
            t: g[0],
            h: g[1],
            w: g[2],
        };
        let merge = e["merge"].as_u64().expect("merge") as usize;
        let patch = e["patch"].as_u64().expect("patch") as usize;
        let ws = e["window_size"].as_u64().expect("ws") as usize;
        let plan = qwen_vit::window_plan(grid, merge, ws / merge / patch);
        assert_eq!(plan.window_index, usizes(&e["window_index"]), "{g:?}");
        assert_eq!(
            plan.cu_window_seqlens,
            usizes(&e["cu_window_seqlens"]),
            "{g:?}"
        );
        let rev: Vec<i64> = qwen_vit::reverse_index(&plan.window_index)
            .iter()
            .map(|&v| i64::from(v))
            .collect();
        assert_eq!(rev, i64s(&e["reverse_index"]), "{g:?}");
        let pos: Vec<i64> = qwen_vit::rot_pos_ids(grid, merge)
            .iter()
            .flatten()
            .map(|&v| i64::from(v))
            .collect();
        assert_eq!(pos, i64s(&e["rot_pos"]), "{g:?}");

        // The full input set (dynamic = compact) against LLM-TPU's reorder and masks.
        let mut params = QwenVisionParams::defaults(true);
        params.merge_size = merge;
        params.patch_size = patch;
        params.window_size = Some(ws);
        let n = grid.patches();
        let dim = params.patch_dim();
        let pixels = llm_convert::vision::QwenPixels {
            rows: (0..n * dim).map(|i| (i / dim) as f32).collect(),
            dim,
            grid,
            resized: (grid.h * patch, grid.w * patch),
        };
        let path = Path::new("grid.png");
        let d = qwen_vit::qwen_vit_inputs(&params, &pixels, n, VitShape::Dynamic, path)
            .expect("dynamic inputs");
        let pos_w: Vec<i64> = d.position_ids.iter().map(|&v| i64::from(v)).collect();
        assert_eq!(pos_w, i64s(&e["rot_pos_windowed"]), "{g:?}");
        assert!(d.full_attn_mask == f32s(e, "full_mask"), "full mask {g:?}");
        let window = f32s(e, "window_mask");
        assert!(
            d.window_attn_mask.as_deref() == Some(&window[..]),
            "window mask {g:?}"
        );
        // input_states row r is the raster patch window_index[r / unit]·unit + r % unit.
        let unit = merge * merge;
        for r in 0..n {
            let src = plan.window_index[r / unit] * unit + r % unit;
            assert_eq!(d.input_states[r * dim], src as f32);
        }
        // Static: the same values in the top-left corner, −10000 / zeros elsewhere.
        let cap = n + 2 * unit;
        let s = qwen_vit::qwen_vit_inputs(&params, &pixels, cap, VitShape::Static, path)
            .expect("static inputs");
        for r in 0..cap {
            let row = &s.window_attn_mask.as_ref().expect("window")[r * cap..(r + 1) * cap];
            if r < n {
                assert_eq!(&row[..n], &window[r * n..(r + 1) * n]);
                assert!(row[n..].iter().all(|&v| v == qwen_vit::MASK_OFF));
            } else {
                assert!(row.iter().all(|&v| v == qwen_vit::MASK_OFF));
            }
        }
        assert_eq!(&s.input_states[..n * dim], &d.input_states[..]);
        assert!(s.input_states[n * dim..].iter().all(|&v| v == 0.0));
        assert_eq!(s.reverse_index.as_ref().map(Vec::len), Some(cap / unit));
    }
}

#[test]
fn mrope_ids_equal_get_rope_index() {
    for e in section("mrope") {
        let ids: Vec<u32> = usizes(&e["ids"]).iter().map(|&v| v as u32).collect();
        let grids: Vec<Grid> = e["grids"]
            .as_array()
            .expect("grids")
            .iter()
            .map(|g| {
                let g = usizes(g);
                Grid {
                    t: g[0],
                    h: g[1],
                    w: g[2],
                }
            })
            .collect();
        let p = mrope_position_ids(&ids, 151655, &grids, 2).expect("ids");
        let ours: Vec<i64> = p.ids.iter().map(|&v| i64::from(v)).collect();
        assert_eq!(ours, i64s(&e["position_ids"]), "{} {grids:?}", e["model"]);
        assert_eq!(p.delta, e["delta"].as_i64().expect("delta"));
        let tokens: usize = grids.iter().map(|g| g.tokens(2)).sum();
        assert_eq!(ids.iter().filter(|&&t| t == 151655).count(), tokens);
    }
}

#[test]
fn internvl_tiles_match_opengvlab_and_transformers() {
    for e in section("internvl") {
        let path = image_of(e);
        let params = InternVlParams {
            image_size: e["image_size"].as_u64().expect("size") as usize,
            max_tiles: e["max_tiles"].as_u64().expect("max") as usize,
            ..Default::default()
        };
        let ours = params.preprocess(&load_rgb(&path).expect("decode"));
        let same_input = params.preprocess(&pil_rgb(&path));
        assert_eq!(vec![ours.cols, ours.rows], usizes(&e["grid"]));
        let tiles = e["tiles"].as_u64().expect("tiles") as usize;
        assert_eq!(ours.tiles, tiles);
        assert_eq!(e["hf_pil_tiles"].as_u64(), Some(tiles as u64));
        assert_eq!(e["hf_fast_tiles"].as_u64(), Some(tiles as u64));
        let ogv = f32s(e, "opengvlab");
        assert!(
            same_input.data == ogv,
            "{}: PIL-decoded pixels through our tiling must equal OpenGVLab's exactly",
            name(&path)
        );
        let mut line = format!(
            "internvl {} {}px max {} grid {}×{} + {} tiles:",
            name(&path),
            params.image_size,
            params.max_tiles,
            ours.cols,
            ours.rows,
            tiles
        );
        let mut results = Vec::new();
        for key in ["opengvlab", "hf_pil", "hf_fast"] {
            results.push((key, diff(&ours.data, &f32s(e, key))));
        }
        for (key, (max, mean)) in &results {
            line += &format!(" vs {key} max {max:.4} mean {mean:.5};");
        }
        println!("{line}");
        for (key, (max, mean)) in results {
            // Measured: the JPEG max 0.122 (7 levels / 255 / 0.225), mean 0.0039 against all
            // three; PNG / WebP equal OpenGVLab's and transformers' PIL path exactly and are
            // within 2 levels (max 0.035, mean 8e-5) of the torchvision path.
            if is_jpeg(&path) {
                assert!(max < 0.15 && mean < 0.005, "{key}: {max} {mean}");
            } else if key == "hf_fast" {
                assert!(max < 0.05 && mean < 2e-4, "{key}: {max} {mean}");
            } else {
                assert_eq!(max, 0.0, "{key}");
            }
        }
    }
}

#[test]
fn tile_grid_equals_opengvlab_and_transformers() {
    for e in section("tile_grid") {
        let p = InternVlParams {
            max_tiles: e["max"].as_u64().expect("max") as usize,
            ..Default::default()
        };
        let (w, h) = (
            e["w"].as_u64().expect("w") as usize,
            e["h"].as_u64().expect("h") as usize,
        );
        let (c, r) = p.tile_grid(w, h);
        assert_eq!(
            vec![c, r],
            usizes(&e["opengvlab"]),
            "{w}×{h} max {}",
            p.max_tiles
        );
        assert_eq!(vec![c, r], usizes(&e["hf"]), "{w}×{h} max {}", p.max_tiles);
    }
}

// --- bad images: each is an InputError (exit 2) naming the file ------------------------------

fn input_error<T>(r: Result<T, InputError>, file: &str, says: &str) {
    let Err(err) = r else {
        panic!("{file}: a bad image must be refused");
    };
    let msg = err.to_string();
    assert!(msg.contains(file), "message must name {file}: {msg}");
    assert!(msg.contains(says), "message must say {says:?}: {msg}");
    assert!(
        msg.contains("fix:"),
        "message must say how to fix it: {msg}"
    );
    assert_eq!(ExitStatus::of_error(&anyhow::Error::new(err)).code(), 2);
}

fn write(dir: &Path, file: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(&p, bytes).expect("writing a test file");
    p
}

#[test]
fn bad_images_are_input_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    input_error(
        load_rgb(&d.join("missing.jpg")),
        "missing.jpg",
        "cannot open",
    );
    let p = write(d, "notes.jpg", b"these are my notes, not a photo\n");
    input_error(load_rgb(&p), "notes.jpg", "not an image");
    input_error(load_rgb(&write(d, "empty.png", b"")), "empty.png", "empty");
    for img in IMAGES {
        let full = std::fs::read(data(img)).expect("image");
        let p = write(d, &format!("cut-{img}"), &full[..full.len() / 3]);
        input_error(load_rgb(&p), &format!("cut-{img}"), "truncated");
    }
    // Zero-sized and huge headers: unit tests in src/vision/decode.rs.

    // Needs more patches than the compiled vit holds.
    let photo = data("grace_hopper_300.jpg");
    let img = load_rgb(&photo).expect("decode");
    let params = QwenVisionParams::defaults(true);
    let pixels = params.preprocess(&img).expect("preprocess");
    let n = pixels.grid.patches();
    input_error(
        qwen_vit::qwen_vit_inputs(&params, &pixels, n - 4, VitShape::Static, &photo),
        "grace_hopper_300.jpg",
        "vit was compiled",
    );
    assert!(qwen_vit::qwen_vit_inputs(&params, &pixels, n, VitShape::Static, &photo).is_ok());
    // An aspect ratio above 200 is refused by smart_resize.
    let thin = RgbImage {
        width: 201,
        height: 1,
        data: vec![0; 201 * 3],
        source: d.join("thin.png"),
    };
    input_error(params.preprocess(&thin), "thin.png", "aspect ratio");
}
