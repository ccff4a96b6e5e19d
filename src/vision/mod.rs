//! Host-side image preprocessing for the VLMs: pure functions, no bmrt.
//!
//! What the runner calls, in order (each step's output is the next one's input):
//!
//! ```text
//! decode::load_rgb(path) -> RgbImage                      // JPEG/PNG/WebP → RGB8; InputError (exit 2)
//!
//! Qwen2.5-VL / Qwen2-VL
//!   QwenVisionParams::load(model_dir)                     // vision_config + preprocessor_config.json
//!     .with_pixel_bounds(min, max)                        // optional (LLM-TPU: 64·28·28, capacity_pixels(P))
//!   params.grid_for(h, w, path) -> Grid                   // grid only (token count before decoding pixels)
//!   params.preprocess(&img) -> QwenPixels                 // smart_resize + bicubic + normalise + flatten [N, 1176]
//!   params.preprocess_llm_tpu(&img) -> QwenPixels         // or LLM-TPU's two resizes (qwen_vl_utils first)
//!   params.check_capacity(grid, P, path)                  // N ≤ P or InputError
//!   qwen_vit::qwen_vit_inputs(&params, &pixels, P, VitShape::{Static,Dynamic}, path)
//!       -> QwenVitInputs                                  // input_states, position_ids, masks, reverse_index
//!   grid.tokens(merge)                                    // <|image_pad|> count = t·h·w / merge²
//!   mrope::mrope_position_ids(&ids, image_token_id, &grids, merge) -> MropePositions
//!       .ids [3, L] / .padded(MIL) / .decode_position(index)
//!
//! InternVL
//!   InternVlParams::load(model_dir)                       // image_size, max tiles, thumbnail, mean/std
//!   params.preprocess(&img) -> InternVlPixels             // [tiles, 3, S, S]; .tile(k) per vit launch
//! ```
//!
//! Resize filter: a port of Pillow's BICUBIC (`resize::resize_bicubic`), bit-exact with
//! `PIL.Image.resize(..., BICUBIC)`, which transformers' PIL processors and LLM-TPU use; see
//! tests/vision_preprocess.rs for the measured differences against transformers' processors.

pub mod decode;
pub mod internvl;
pub mod mrope;
pub mod qwen;
pub mod qwen_vit;
pub mod resize;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::InputError;

pub use decode::load_rgb;
pub use internvl::{InternVlParams, InternVlPixels};
pub use mrope::{mrope_position_ids, MropePositions};
pub use qwen::{QwenPixels, QwenVisionParams};
pub use qwen_vit::{qwen_vit_inputs, QwenVitInputs, VitShape};

/// An 8-bit RGB image, row-major `[height, width, 3]`, with the file it came from (errors
/// about it name that file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
    pub source: PathBuf,
}

/// A Qwen VL image's patch grid (`image_grid_thw`): temporal × height × width patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

impl Grid {
    /// Patch rows N = t·h·w.
    pub fn patches(self) -> usize {
        self.t * self.h * self.w
    }

    /// LLM tokens (`<|image_pad|>` copies) the image expands to: t·h·w / merge².
    pub fn tokens(self, merge: usize) -> usize {
        self.patches() / (merge * merge)
    }
}

fn read_json(path: &Path) -> Result<Value, InputError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| InputError::missing(path, format!("model config ({e})")))?;
    serde_json::from_str(&text).map_err(|e| {
        InputError::invalid(
            path,
            format!("not valid JSON: {e}"),
            "restore the file from the model's original download",
        )
    })
}

/// An optional non-negative integer field.
fn json_usize(obj: &Value, key: &str, path: &Path) -> Result<Option<usize>, InputError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            InputError::invalid(
                path,
                format!("{key} is {v}, expected a non-negative integer"),
                format!("fix {key}"),
            )
        }),
    }
}

/// Per-channel (R, G, B) values.
type Rgb3 = [f32; 3];

/// `image_mean` / `image_std` (3 numbers each) when both are present.
fn json_mean_std(obj: &Value, path: &Path) -> Result<Option<(Rgb3, Rgb3)>, InputError> {
    let three = |key: &str| -> Result<Option<[f32; 3]>, InputError> {
        let Some(v) = obj.get(key).filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let nums: Option<Vec<f32>> = v
            .as_array()
            // f64 → f32 as numpy's np.array(mean, dtype=float32) rounds.
            .map(|a| a.iter().map(|x| x.as_f64().map(|f| f as f32)).collect())
            .unwrap_or(None);
        match nums.as_deref() {
            Some(&[a, b, c]) => Ok(Some([a, b, c])),
            _ => Err(InputError::invalid(
                path,
                format!("{key} is {v}, expected 3 numbers (R, G, B)"),
                format!("fix {key}"),
            )),
        }
    };
    match (three("image_mean")?, three("image_std")?) {
        (Some(m), Some(s)) => {
            if s.iter().any(|&x| x <= 0.0) {
                return Err(InputError::invalid(
                    path,
                    "image_std has a value ≤ 0",
                    "fix image_std",
                ));
            }
            Ok(Some((m, s)))
        }
        (None, None) => Ok(None),
        _ => Err(InputError::invalid(
            path,
            "only one of image_mean / image_std is set",
            "set both or neither",
        )),
    }
}
