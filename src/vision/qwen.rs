//! Qwen2-VL / Qwen2.5-VL image preprocessing: `smart_resize`, bicubic resize, rescale +
//! normalise, and the patch flatten to `[N, C·T·p·p]` rows (transformers 5.6.2
//! `Qwen2VLImageProcessorPil`, which LLM-TPU's pipeline runs).

use std::path::Path;

use serde_json::Value;

use super::resize::resize_bicubic;
use super::{json_mean_std, json_usize, Grid, RgbImage};
use crate::error::InputError;

/// OpenAI CLIP mean/std, transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`, as the Python
/// floats (f64) that numpy then rounds to f32.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// The Qwen VL vision geometry and processor settings.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenVisionParams {
    /// Spatial patch side in pixels (`vision_config.patch_size`, 14).
    pub patch_size: usize,
    /// Frames per temporal patch (`temporal_patch_size`, 2); an image is repeated to fill it.
    pub temporal_patch_size: usize,
    /// `spatial_merge_size` (2): merge units of merge² patches become one LLM token.
    pub merge_size: usize,
    /// Qwen2.5-VL's `window_size` in pixels (112); `None` for Qwen2-VL (full attention only).
    pub window_size: Option<usize>,
    /// `in_channels` / `in_chans`; must be 3 (RGB).
    pub in_channels: usize,
    /// smart_resize's pixel bounds (`min_pixels`/`max_pixels`, or `size.shortest_edge`/
    /// `size.longest_edge`; transformers' defaults 56·56 and 28·28·1280).
    pub min_pixels: u64,
    pub max_pixels: u64,
    /// `rescale_factor` (1/255).
    pub rescale_factor: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Normalised patches of one image, as the vit's `input_states` before window reordering.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenPixels {
    /// `[grid.patches(), dim]` row-major; rows in (t, block-row, block-col, in-row, in-col)
    /// order, columns in (c, t, py, px) order.
    pub rows: Vec<f32>,
    /// Columns per row: `in_channels · temporal_patch_size · patch_size²` (1176).
    pub dim: usize,
    pub grid: Grid,
    /// The size the image was resized to (height, width).
    pub resized: (usize, usize),
}

impl QwenVisionParams {
    /// Defaults for a `model_type` (`qwen2_5_vl` or `qwen2_vl`) without any config.
    pub fn defaults(windowed: bool) -> Self {
        QwenVisionParams {
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            window_size: windowed.then_some(112),
            in_channels: 3,
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            rescale_factor: 1.0 / 255.0,
            mean: CLIP_MEAN.map(|v| v as f32),
            std: CLIP_STD.map(|v| v as f32),
        }
    }

    /// From `config.json` (its `model_type` and `vision_config`) and, when the model folder has
    /// one, `preprocessor_config.json`. `dir` names the folder in errors.
    pub fn from_json(
        config: &Value,
        preprocessor: Option<&Value>,
        dir: &Path,
    ) -> Result<Self, InputError> {
        let cfg_path = dir.join("config.json");
        let windowed = match config.get("model_type").and_then(Value::as_str) {
            Some("qwen2_5_vl") => true,
            Some("qwen2_vl") => false,
            other => {
                return Err(InputError::invalid(
                    &cfg_path,
                    format!("model_type {other:?} is not a Qwen VL model"),
                    "pass a qwen2_vl or qwen2_5_vl model folder",
                ));
            }
        };
        let mut p = Self::defaults(windowed);
        let empty = Value::Null;
        let vc = config.get("vision_config").unwrap_or(&empty);
        let get =
            |key: &str, dflt: usize| json_usize(vc, key, &cfg_path).map(|v| v.unwrap_or(dflt));
        p.patch_size = get("patch_size", p.patch_size)?;
        p.temporal_patch_size = get("temporal_patch_size", p.temporal_patch_size)?;
        p.merge_size = get("spatial_merge_size", p.merge_size)?;
        p.in_channels = get("in_channels", get("in_chans", 3)?)?;
        if windowed {
            p.window_size = Some(get("window_size", 112)?);
        }
        if let Some(pre) = preprocessor {
            p.apply_preprocessor(pre, &dir.join("preprocessor_config.json"))?;
        }
        p.validate(&cfg_path)?;
        Ok(p)
    }

    /// Reads `dir/config.json` and `dir/preprocessor_config.json` (if present).
    pub fn load(dir: &Path) -> Result<Self, InputError> {
        let config = super::read_json(&dir.join("config.json"))?;
        let pre_path = dir.join("preprocessor_config.json");
        let pre = if pre_path.exists() {
            Some(super::read_json(&pre_path)?)
        } else {
            None
        };
        Self::from_json(&config, pre.as_ref(), dir)
    }

    fn apply_preprocessor(&mut self, pre: &Value, path: &Path) -> Result<(), InputError> {
        // transformers: `size` first, then explicit min_pixels / max_pixels override it.
        if let Some(size) = pre.get("size") {
            if let Some(v) = json_usize(size, "shortest_edge", path)? {
                self.min_pixels = v as u64;
            }
            if let Some(v) = json_usize(size, "longest_edge", path)? {
                self.max_pixels = v as u64;
            }
        }
        if let Some(v) = json_usize(pre, "min_pixels", path)? {
            self.min_pixels = v as u64;
        }
        if let Some(v) = json_usize(pre, "max_pixels", path)? {
            self.max_pixels = v as u64;
        }
        for (key, ours) in [
            ("patch_size", self.patch_size),
            ("temporal_patch_size", self.temporal_patch_size),
            ("merge_size", self.merge_size),
        ] {
            let theirs = json_usize(pre, key, path)?;
            if let Some(v) = theirs.filter(|&v| v != ours) {
                return Err(InputError::invalid(
                    path,
                    format!("{key} is {v} but config.json's vision_config says {ours}"),
                    "make preprocessor_config.json agree with config.json",
                ));
            }
        }
        if let Some(f) = pre.get("rescale_factor").and_then(Value::as_f64) {
            self.rescale_factor = f;
        }
        if let Some((mean, std)) = json_mean_std(pre, path)? {
            self.mean = mean;
            self.std = std;
        }
        Ok(())
    }

    fn validate(&self, path: &Path) -> Result<(), InputError> {
        let bad = |what: String| {
            Err(InputError::invalid(
                path,
                what,
                "fix vision_config / preprocessor_config.json",
            ))
        };
        if self.in_channels != 3 {
            return bad(format!(
                "vision in_channels is {}, only RGB (3) is supported",
                self.in_channels
            ));
        }
        if self.patch_size == 0 || self.temporal_patch_size == 0 || self.merge_size == 0 {
            return bad(
                "patch_size, temporal_patch_size and spatial_merge_size must be > 0".into(),
            );
        }
        let factor = self.patch_size * self.merge_size;
        if let Some(ws) = self.window_size.filter(|&ws| ws < factor) {
            return bad(format!(
                "window_size {ws} is smaller than patch·merge = {factor}"
            ));
        }
        if self.min_pixels > self.max_pixels {
            return bad(format!(
                "min_pixels {} is more than max_pixels {}",
                self.min_pixels, self.max_pixels
            ));
        }
        Ok(())
    }

    /// smart_resize's factor: patch · merge (28).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// Patches per merge unit (merge², 4).
    pub fn merge_unit(&self) -> usize {
        self.merge_size * self.merge_size
    }

    /// Columns of a patch row: C · T · p² (1176).
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Pixels a vit compiled for `capacity` patches holds (LLM-TPU's `MAX_PIXELS`).
    pub fn capacity_pixels(&self, capacity: usize) -> u64 {
        (capacity * self.patch_size * self.patch_size) as u64
    }

    /// The same settings with smart_resize's bounds replaced. LLM-TPU's pipeline uses
    /// `min = 64·28·28` and `max = capacity_pixels(vit capacity)`.
    pub fn with_pixel_bounds(mut self, min_pixels: u64, max_pixels: u64) -> Self {
        self.min_pixels = min_pixels;
        self.max_pixels = max_pixels;
        self
    }

    /// The grid an image of `height × width` becomes (smart_resize, then / patch).
    pub fn grid_for(&self, height: usize, width: usize, path: &Path) -> Result<Grid, InputError> {
        let (h, w) = self.resized_size(height, width, path)?;
        Ok(Grid {
            t: 1,
            h: h / self.patch_size,
            w: w / self.patch_size,
        })
    }

    fn resized_size(
        &self,
        height: usize,
        width: usize,
        path: &Path,
    ) -> Result<(usize, usize), InputError> {
        smart_resize(
            height,
            width,
            self.factor(),
            self.min_pixels,
            self.max_pixels,
        )
        .map_err(|problem| {
            InputError::invalid(
                path,
                problem,
                "crop the image to a less extreme shape (at most 200:1)",
            )
        })
    }

    /// Resizes, normalises and flattens one image into vit patch rows.
    pub fn preprocess(&self, img: &RgbImage) -> Result<QwenPixels, InputError> {
        let (rh, rw) = self.resized_size(img.height, img.width, &img.source)?;
        let resized = resize_bicubic(img, rw, rh);
        let plane = self.normalize(&resized);
        let (p, tp, m) = (self.patch_size, self.temporal_patch_size, self.merge_size);
        let grid = Grid {
            t: 1,
            h: rh / p,
            w: rw / p,
        };
        let dim = self.patch_dim();
        let mut rows = Vec::with_capacity(grid.patches() * dim);
        for bh in 0..grid.h / m {
            for bw in 0..grid.w / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let (y0, x0) = ((bh * m + mh) * p, (bw * m + mw) * p);
                        for chan in plane.chunks_exact(rh * rw) {
                            // An image is one frame repeated over the temporal patch.
                            for _ in 0..tp {
                                for py in 0..p {
                                    let start = (y0 + py) * rw + x0;
                                    rows.extend_from_slice(&chan[start..start + p]);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(QwenPixels {
            rows,
            dim,
            grid,
            resized: (rh, rw),
        })
    }

    /// LLM-TPU's path (`pipeline.py` → qwen_vl_utils `fetch_image`, then the processor):
    /// qwen_vl_utils first resizes to its own smart_resize with bounds 4·f² … 16384·f²
    /// (f = patch·merge), then [`Self::preprocess`] resizes that again with `self`'s bounds.
    /// The second resize is a no-op when the first size already fits; otherwise (small images
    /// under LLM-TPU's min 64·28·28, large ones over the vit capacity) the pixels, and
    /// sometimes the grid, differ from transformers' single resize.
    pub fn preprocess_llm_tpu(&self, img: &RgbImage) -> Result<QwenPixels, InputError> {
        let f = self.factor() as u64;
        let (h, w) = qwen_vl_utils_smart_resize(
            img.height,
            img.width,
            self.factor(),
            QWEN_VL_UTILS_TOKENS.0 * f * f,
            QWEN_VL_UTILS_TOKENS.1 * f * f,
        )
        .map_err(|problem| {
            InputError::invalid(
                &img.source,
                problem,
                "crop the image to a less extreme shape (at most 200:1)",
            )
        })?;
        self.preprocess(&resize_bicubic(img, w, h))
    }

    /// CHW f32 planes: `f32(v · rescale_factor)` (numpy rescales in f64), then
    /// `(x − mean) / std` in f32, as transformers' PIL backend does.
    fn normalize(&self, img: &RgbImage) -> Vec<f32> {
        let n = img.width * img.height;
        let mut out = vec![0f32; 3 * n];
        for (i, px) in img.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let x = (f64::from(px[c]) * self.rescale_factor) as f32;
                out[c * n + i] = (x - self.mean[c]) / self.std[c];
            }
        }
        out
    }

    /// Fails when `grid` needs more patches than a vit compiled for `capacity` holds.
    pub fn check_capacity(
        &self,
        grid: Grid,
        capacity: usize,
        path: &Path,
    ) -> Result<(), InputError> {
        if grid.patches() <= capacity {
            return Ok(());
        }
        Err(InputError::invalid(
            path,
            format!(
                "after resizing to {}×{} the image needs {} vision patches, but the vit was compiled \
                 for {capacity} ({} pixels)",
                grid.w * self.patch_size,
                grid.h * self.patch_size,
                grid.patches(),
                self.capacity_pixels(capacity)
            ),
            "use a smaller max_pixels for the image (at most the compiled capacity), or \
             reconvert with a larger --max_pixels",
        ))
    }
}

/// qwen_vl_utils' image bounds in merged tokens (`IMAGE_MIN_TOKEN_NUM`, `IMAGE_MAX_TOKEN_NUM`).
pub const QWEN_VL_UTILS_TOKENS: (u64, u64) = (4, 16384);

/// What both smart_resize variants refuse: an empty image, or one thinner than 1:200.
fn check_shape(height: usize, width: usize) -> Result<(), String> {
    if height == 0 || width == 0 {
        return Err(format!("the image is zero-sized ({width}×{height})"));
    }
    let ratio = height.max(width) as f64 / height.min(width) as f64;
    if ratio > 200.0 {
        return Err(format!(
            "absolute aspect ratio must be smaller than 200, got {ratio}"
        ));
    }
    Ok(())
}

/// qwen_vl_utils' (0.0.14) `smart_resize`, which differs from transformers' in two clamps:
/// the rounded sides are at least `factor`, and the scaled-down sides are not.
pub fn qwen_vl_utils_smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(usize, usize), String> {
    check_shape(height, width)?;
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let mut h_bar = f.max((h / f).round_ties_even() * f);
    let mut w_bar = f.max((w / f).round_ties_even() * f);
    let area = (height as u64 * width as u64) as f64;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (area / max_pixels as f64).sqrt();
        h_bar = (h / beta / f).floor() * f;
        w_bar = (w / beta / f).floor() * f;
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / area).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    if h_bar < 1.0 || w_bar < 1.0 {
        return Err(format!(
            "the image ({width}×{height}) is too thin to resize within {max_pixels} pixels"
        ));
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// transformers' `smart_resize`: (height, width) rounded to multiples of `factor` (Python's
/// round-half-to-even), scaled into `[min_pixels, max_pixels]` keeping the aspect ratio.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(usize, usize), String> {
    check_shape(height, width)?;
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    let area = (height as u64 * width as u64) as f64;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (area / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / area).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_transformers_examples() {
        // Values computed with transformers 5.6.2's smart_resize.
        assert_eq!(smart_resize(351, 300, 28, 3136, 1003520), Ok((364, 308)));
        // 42/28 = 1.5 and 70/28 = 2.5 round half to even: 2 and 2.
        assert_eq!(smart_resize(42, 70, 28, 0, 1 << 30), Ok((56, 56)));
        // Too many pixels: scaled down by sqrt, floored to the factor.
        assert_eq!(smart_resize(1000, 1000, 28, 3136, 200_704), Ok((448, 448)));
        // Too few: scaled up, ceiled.
        assert_eq!(smart_resize(10, 20, 28, 3136, 1003520), Ok((56, 84)));
        assert!(smart_resize(10, 2010, 28, 3136, 1003520).is_err());
    }

    #[test]
    fn flatten_order_is_c_t_py_px_within_block_raster() {
        // A 56×56 image with distinct pixels: grid 4×4, row 1 is the patch at (row 0, col 1).
        let data = (0..56 * 56)
            .flat_map(|i| {
                [
                    (i % 251) as u8,
                    ((i / 7) % 253) as u8,
                    ((i * 3) % 255) as u8,
                ]
            })
            .collect();
        let img = RgbImage {
            width: 56,
            height: 56,
            data,
            source: "t.png".into(),
        };
        let mut p = QwenVisionParams::defaults(true);
        p.mean = [0.0; 3];
        p.std = [1.0; 3];
        p.rescale_factor = 1.0;
        let px = p.preprocess(&img).expect("preprocess");
        assert_eq!(px.grid, Grid { t: 1, h: 4, w: 4 });
        assert_eq!(px.dim, 1176);
        let at = |row: usize, col: usize| px.rows[row * 1176 + col];
        let pixel = |y: usize, x: usize, c: usize| f32::from(img.data[(y * 56 + x) * 3 + c]);
        // Row 1 = block (0,0), in-row 0, in-col 1 → patch origin (0, 14).
        assert_eq!(at(1, 0), pixel(0, 14, 0));
        // Row 2 = in-row 1, in-col 0 → origin (14, 0); column py=3, px=5 of channel 2, t=1.
        assert_eq!(at(2, 2 * 392 + 196 + 3 * 14 + 5), pixel(17, 5, 2));
        // Row 4 = block (0,1) → origin (0, 28).
        assert_eq!(at(4, 0), pixel(0, 28, 0));
        // Both temporal copies are equal.
        assert_eq!(at(7, 10), at(7, 196 + 10));
    }

    #[test]
    fn params_come_from_the_configs() {
        use serde_json::json;
        let dir = Path::new("m");
        let cfg = json!({"model_type": "qwen2_5_vl", "vision_config": {
            "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "window_size": 128, "in_channels": 3}});
        let pre = json!({"min_pixels": 1024, "max_pixels": 65536, "patch_size": 16,
                         "size": {"shortest_edge": 1, "longest_edge": 2},
                         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]});
        let p = QwenVisionParams::from_json(&cfg, Some(&pre), dir).expect("params");
        assert_eq!(
            (p.patch_size, p.window_size, p.patch_dim()),
            (16, Some(128), 1536)
        );
        // Explicit min/max_pixels override `size`, as in transformers.
        assert_eq!(
            (p.min_pixels, p.max_pixels, p.mean, p.std),
            (1024, 65536, [0.5; 3], [0.25; 3])
        );
        let p = QwenVisionParams::from_json(&json!({"model_type": "qwen2_vl"}), None, dir)
            .expect("qwen2_vl defaults");
        assert_eq!(p, QwenVisionParams::defaults(false));
        let clash = json!({"merge_size": 3});
        assert!(QwenVisionParams::from_json(&cfg, Some(&clash), dir).is_err());
        assert!(QwenVisionParams::from_json(&json!({"model_type": "llama"}), None, dir).is_err());
    }

    #[test]
    fn capacity_check_names_the_file() {
        let p = QwenVisionParams::defaults(true);
        let g = Grid { t: 1, h: 64, w: 64 };
        assert!(p.check_capacity(g, 4096, Path::new("a.jpg")).is_ok());
        let e = p
            .check_capacity(g, 3072, Path::new("a.jpg"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.jpg") && e.contains("4096") && e.contains("3072"),
            "{e}"
        );
    }
}
