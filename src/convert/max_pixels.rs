//! `--max_pixels W,H` for vision-language models, parsed and checked as llm_convert.py does
//! (`parse_max_pixels`, then the per-model pixel multiple).

use std::path::Path;

use super::options::PieceShape;
use crate::error::InputError;
use crate::model::ModelConfig;

/// `"W,H"` → W·H.
pub fn parse(value: Option<&str>) -> Result<Option<usize>, InputError> {
    let Some(value) = value else { return Ok(None) };
    let bad = || {
        InputError::invalid(
            Path::new("llm-convert"),
            format!("--max_pixels {value:?} is not two integers separated by a comma"),
            "pass the largest image as W,H, e.g. --max_pixels 672,896".to_string(),
        )
    };
    let (w, h) = value.split_once(',').ok_or_else(bad)?;
    let w: usize = w.trim().parse().map_err(|_| bad())?;
    let h: usize = h.trim().parse().map_err(|_| bad())?;
    w.checked_mul(h).map(Some).ok_or_else(bad)
}

/// The model-dependent rules: the pixel multiple (Qwen2-VL / Qwen2.5-VL), no --max_pixels
/// for text-only models.
pub fn check(cfg: &ModelConfig, shape: &PieceShape, model: &Path) -> Result<(), InputError> {
    let config = model.join("config.json");
    crate::arch::vit::check_max_pixels(cfg, shape.max_pixels).map_err(|why| {
        let fix = if cfg.vlm.is_none() {
            "drop --max_pixels: this model has no vision tower"
        } else if shape.max_pixels.is_none() {
            "pass --max_pixels W,H with W·H a multiple of 28·28 (e.g. 756,756)"
        } else {
            "pass --max_pixels W,H with W·H a multiple of 28·28 (e.g. 112,112), or drop it"
        };
        InputError::invalid(&config, why, fix)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_width_and_height_like_llm_convert() {
        assert_eq!(parse(Some("672,896")).unwrap(), Some(672 * 896));
        assert_eq!(parse(Some(" 112 , 112")).unwrap(), Some(112 * 112));
        assert_eq!(parse(None).unwrap(), None);
        for bad in ["672", "a,b", "1,2,3", ""] {
            assert!(parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
