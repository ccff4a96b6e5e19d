//! InternVL dynamic tiling (OpenGVLab's `dynamic_preprocess` + `build_transform`, which
//! LLM-TPU's pipeline copies; transformers' `GotOcr2ImageProcessor` with `crop_to_patches`
//! picks the same grid): the image resized to a `cols × rows` grid of square tiles, cropped
//! row-major, plus a thumbnail when there is more than one tile, each normalised with the
//! ImageNet mean/std into `[3, S, S]`.

use std::path::Path;

use serde_json::Value;

use super::resize::resize_bicubic;
use super::{json_mean_std, json_usize, RgbImage};
use crate::error::InputError;

/// torchvision / timm ImageNet mean and std, as the Python floats (f64) torch rounds to f32.
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

#[derive(Debug, Clone, PartialEq)]
pub struct InternVlParams {
    /// Tile side S in pixels (`vision_config.image_size`, 448).
    pub image_size: usize,
    /// Tiles per image: `min_dynamic_patch` / `max_dynamic_patch` (OpenGVLab config.json) or
    /// `min_patches` / `max_patches` (preprocessor_config.json); 1 and 12 by default.
    /// LLM-TPU's demo uses max 4.
    pub min_tiles: usize,
    pub max_tiles: usize,
    /// Append the whole image as one more tile when there are several (`use_thumbnail`).
    pub use_thumbnail: bool,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// The tiles of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct InternVlPixels {
    /// `[tiles, 3, S, S]` f32 row-major.
    pub data: Vec<f32>,
    pub tiles: usize,
    pub image_size: usize,
    /// The chosen grid: tile columns × rows (before the thumbnail).
    pub cols: usize,
    pub rows: usize,
}

impl InternVlPixels {
    /// Tile `k` as `[3, S, S]` (one `pixel_value` input of the vit).
    pub fn tile(&self, k: usize) -> &[f32] {
        let n = 3 * self.image_size * self.image_size;
        &self.data[k * n..(k + 1) * n]
    }
}

impl Default for InternVlParams {
    fn default() -> Self {
        InternVlParams {
            image_size: 448,
            min_tiles: 1,
            max_tiles: 12,
            use_thumbnail: true,
            mean: IMAGENET_MEAN.map(|v| v as f32),
            std: IMAGENET_STD.map(|v| v as f32),
        }
    }
}

impl InternVlParams {
    /// From `config.json` (OpenGVLab `internvl_chat` or native `internvl`) and an optional
    /// `preprocessor_config.json`. `dir` names the folder in errors.
    pub fn from_json(
        config: &Value,
        preprocessor: Option<&Value>,
        dir: &Path,
    ) -> Result<Self, InputError> {
        let cfg_path = dir.join("config.json");
        let mut p = InternVlParams::default();
        let empty = Value::Null;
        let vc = config.get("vision_config").unwrap_or(&empty);
        // `image_size` is an int (OpenGVLab) or [h, w] (native); `force_image_size` wins.
        let size = config
            .get("force_image_size")
            .filter(|v| !v.is_null())
            .or_else(|| vc.get("image_size"));
        if let Some(v) = size {
            p.image_size = square_size(v).ok_or_else(|| {
                InputError::invalid(
                    &cfg_path,
                    format!("image_size {v} is not a positive int or a square [S, S]"),
                    "fix vision_config.image_size",
                )
            })?;
        }
        if let Some(v) = json_usize(config, "min_dynamic_patch", &cfg_path)? {
            p.min_tiles = v;
        }
        if let Some(v) = json_usize(config, "max_dynamic_patch", &cfg_path)? {
            p.max_tiles = v;
        }
        if let Some(v) = config.get("use_thumbnail").and_then(Value::as_bool) {
            p.use_thumbnail = v;
        }
        if let Some(pre) = preprocessor {
            let path = dir.join("preprocessor_config.json");
            if let Some(v) = json_usize(pre, "min_patches", &path)? {
                p.min_tiles = v;
            }
            if let Some(v) = json_usize(pre, "max_patches", &path)? {
                p.max_tiles = v;
            }
            if let Some((mean, std)) = json_mean_std(pre, &path)? {
                p.mean = mean;
                p.std = std;
            }
        }
        if p.min_tiles == 0 || p.min_tiles > p.max_tiles || p.image_size == 0 {
            return Err(InputError::invalid(
                &cfg_path,
                format!(
                    "tiles {}..={} of {} px cannot be tiled",
                    p.min_tiles, p.max_tiles, p.image_size
                ),
                "set 1 ≤ min_dynamic_patch ≤ max_dynamic_patch and a positive image_size",
            ));
        }
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

    /// The tile grid (cols, rows) for an image of `width × height`: the candidate with
    /// `min ≤ cols·rows ≤ max` whose cols/rows is closest to width/height; on a tie the later
    /// (larger) candidate wins while the image area exceeds half of the tiles' area.
    pub fn tile_grid(&self, width: usize, height: usize) -> (usize, usize) {
        // transformers' get_all_supported_aspect_ratios order: cols outer, rows inner,
        // stable-sorted by area.
        let mut candidates = Vec::new();
        for c in 1..=self.max_tiles {
            for r in 1..=self.max_tiles {
                if (self.min_tiles..=self.max_tiles).contains(&(c * r)) {
                    candidates.push((c, r));
                }
            }
        }
        candidates.sort_by_key(|&(c, r)| c * r);
        let aspect = width as f64 / height as f64;
        let area = (width * height) as f64;
        let tile_area = (self.image_size * self.image_size) as f64;
        let mut best_diff = f64::INFINITY;
        let mut best = (1, 1);
        for (c, r) in candidates {
            let diff = (aspect - c as f64 / r as f64).abs();
            if diff < best_diff {
                best_diff = diff;
                best = (c, r);
            } else if diff == best_diff && area > 0.5 * tile_area * (c * r) as f64 {
                best = (c, r);
            }
        }
        best
    }

    /// Tiles and normalises one image.
    pub fn preprocess(&self, img: &RgbImage) -> InternVlPixels {
        let s = self.image_size;
        let (cols, rows) = self.tile_grid(img.width, img.height);
        let resized = resize_bicubic(img, s * cols, s * rows);
        let mut tiles = Vec::with_capacity(cols * rows + 1);
        for k in 0..cols * rows {
            let (x0, y0) = ((k % cols) * s, (k / cols) * s);
            tiles.push(crop(&resized, x0, y0, s));
        }
        if self.use_thumbnail && tiles.len() != 1 {
            tiles.push(resize_bicubic(img, s, s));
        }
        let mut data = Vec::with_capacity(tiles.len() * 3 * s * s);
        for tile in &tiles {
            self.normalize_into(tile, &mut data);
        }
        InternVlPixels {
            data,
            tiles: tiles.len(),
            image_size: s,
            cols,
            rows,
        }
    }

    /// torchvision `ToTensor` (u8 / 255 in f32) then `Normalize` ((x − mean) / std in f32).
    fn normalize_into(&self, tile: &RgbImage, out: &mut Vec<f32>) {
        for c in 0..3 {
            out.extend(
                tile.data
                    .chunks_exact(3)
                    .map(|px| (f32::from(px[c]) / 255.0 - self.mean[c]) / self.std[c]),
            );
        }
    }
}

fn square_size(v: &Value) -> Option<usize> {
    match v {
        Value::Array(a) if a.len() == 2 && a[0] == a[1] => a[0].as_u64(),
        _ => v.as_u64(),
    }
    .filter(|&s| s > 0)
    .map(|s| s as usize)
}

fn crop(img: &RgbImage, x0: usize, y0: usize, side: usize) -> RgbImage {
    let mut data = Vec::with_capacity(side * side * 3);
    for y in y0..y0 + side {
        let start = (y * img.width + x0) * 3;
        data.extend_from_slice(&img.data[start..start + side * 3]);
    }
    RgbImage {
        width: side,
        height: side,
        data,
        source: img.source.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tile_grid_follows_the_aspect_ratio_and_area_tie_rule() {
        let p = InternVlParams {
            max_tiles: 4,
            ..Default::default()
        };
        assert_eq!(p.tile_grid(448, 448), (1, 1));
        assert_eq!(p.tile_grid(900, 440), (2, 1));
        assert_eq!(p.tile_grid(300, 1200), (1, 4));
        // Square and large: (1,1) and (2,2) tie on aspect; the area rule picks (2,2).
        assert_eq!(p.tile_grid(1000, 1000), (2, 2));
        // Square and small: the tie keeps (1,1).
        assert_eq!(p.tile_grid(300, 300), (1, 1));
    }

    #[test]
    fn tiles_are_row_major_with_a_thumbnail() {
        let p = InternVlParams {
            image_size: 4,
            max_tiles: 4,
            ..Default::default()
        };
        // 16×4 image: grid (4, 1) → 4 tiles + thumbnail, tile k holds columns 4k..4k+4.
        let data = (0..16 * 4)
            .flat_map(|i| {
                let x = (i % 16) as u8;
                [x * 10, x * 10, x * 10]
            })
            .collect();
        let img = RgbImage {
            width: 16,
            height: 4,
            data,
            source: "w.png".into(),
        };
        let px = p.preprocess(&img);
        assert_eq!((px.cols, px.rows, px.tiles), (4, 1, 5));
        assert_eq!(px.data.len(), 5 * 3 * 16);
        let v = |x: u8| (f32::from(x * 10) / 255.0 - p.mean[0]) / p.std[0];
        assert_eq!(px.tile(2)[0], v(8));
        assert_eq!(px.tile(3)[3], v(15));
    }

    #[test]
    fn config_layouts() {
        let dir = Path::new("m");
        let open = json!({"model_type": "internvl_chat", "max_dynamic_patch": 6,
                          "use_thumbnail": false, "vision_config": {"image_size": 224}});
        let p = InternVlParams::from_json(&open, None, dir).expect("opengvlab");
        assert_eq!(
            (p.image_size, p.max_tiles, p.use_thumbnail),
            (224, 6, false)
        );
        let native = json!({"model_type": "internvl", "vision_config": {"image_size": [448, 448]}});
        let pre =
            json!({"max_patches": 3, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]});
        let p = InternVlParams::from_json(&native, Some(&pre), dir).expect("native");
        assert_eq!((p.image_size, p.max_tiles, p.mean), (448, 3, [0.5; 3]));
        let bad = json!({"vision_config": {"image_size": [448, 224]}});
        assert!(InternVlParams::from_json(&bad, None, dir).is_err());
    }
}
