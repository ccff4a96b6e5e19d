//! InternVL `vision_config` (both checkpoint layouts) → [`InternVision`].

use serde_json::Value;

use super::{positive_usize, InternLayout, InternVision, VisionNorm};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub(super) fn intern_vision(
    top: &ConfigKeys,
    v: &ConfigKeys,
    layout: InternLayout,
    llm_hidden: usize,
) -> Result<InternVision, InputError> {
    let usize_or = |k: &str, d: usize| -> Result<usize, InputError> {
        positive_usize(v, k, v.opt_usize(k)?.unwrap_or(d))
    };
    // Native configs write sizes as [h, w] lists; OpenGVLab's as ints.
    let square = |k: &str, d: usize| -> Result<usize, InputError> {
        match v.present(k) {
            None => Ok(d),
            Some(Value::Array(a)) => {
                let sides: Vec<u64> = a.iter().filter_map(Value::as_u64).collect();
                match sides.as_slice() {
                    [h, w] if h == w && *h > 0 && sides.len() == a.len() => Ok(*h as usize),
                    _ => Err(v.bad(
                        k,
                        format!("{} is not a square size", Value::Array(a.clone())),
                        "InternViT tiles are square: use [N, N]",
                    )),
                }
            }
            Some(_) => usize_or(k, d),
        }
    };
    let hidden = usize_or("hidden_size", 1024)?;
    let heads = usize_or("num_attention_heads", 16)?;
    if hidden % heads != 0 {
        return Err(v.bad(
            "num_attention_heads",
            format!("{heads} does not divide hidden_size {hidden}"),
            "fix vision_config",
        ));
    }
    let image_size = square("image_size", 448)?;
    let patch_size = square("patch_size", 14)?;
    if image_size % patch_size != 0 {
        return Err(v.bad(
            "image_size",
            format!("{image_size} is not a multiple of patch_size {patch_size}"),
            "fix vision_config",
        ));
    }
    let (qkv_bias, qk_norm) = match layout {
        InternLayout::Chat => (
            v.opt_bool("qkv_bias")?.unwrap_or(true),
            v.opt_bool("qk_normalization")?.unwrap_or(false),
        ),
        InternLayout::Native => (
            v.opt_bool("attention_bias")?.unwrap_or(false),
            v.opt_bool("use_qk_norm")?.unwrap_or(false),
        ),
    };
    let norm = match v.opt_str("norm_type")?.as_deref() {
        None | Some("layer_norm") => VisionNorm::Layer,
        Some("rms_norm") => VisionNorm::Rms,
        Some(other) => {
            return Err(v.bad(
                "norm_type",
                format!("\"{other}\" is not supported"),
                "InternViT uses \"layer_norm\" or \"rms_norm\"",
            ))
        }
    };
    let downsample_ratio = top.opt_f64("downsample_ratio")?.unwrap_or(0.5);
    if downsample_ratio != 0.5 {
        return Err(top.bad(
            "downsample_ratio",
            format!("{downsample_ratio} is not supported"),
            "InternVL's pixel shuffle is implemented for 0.5 (2×2 patches per token)",
        ));
    }
    let num_layers = usize_or("num_hidden_layers", 24)?;
    let select_key = match layout {
        InternLayout::Chat => "select_layer",
        InternLayout::Native => "vision_feature_layer",
    };
    let select_layer = match top.present(select_key) {
        None => -1,
        Some(s) => s.as_i64().ok_or_else(|| {
            top.bad(
                select_key,
                format!("{s} is not one integer"),
                "use a layer index such as -1",
            )
        })?,
    };
    let grid = image_size / patch_size;
    if grid % 2 != 0 {
        return Err(v.bad(
            "image_size",
            format!("{grid} patches per side is odd: the pixel shuffle pairs them"),
            "fix image_size / patch_size",
        ));
    }
    let iv = InternVision {
        layout,
        image_size,
        patch_size,
        num_channels: usize_or("num_channels", 3)?,
        hidden_size: hidden,
        num_heads: heads,
        head_dim: hidden / heads,
        intermediate_size: usize_or("intermediate_size", 4096)?,
        num_layers,
        qkv_bias,
        qk_norm,
        norm,
        norm_eps: v.opt_f64("layer_norm_eps")?.unwrap_or(1e-6),
        downsample_ratio,
        select_layer,
        out_hidden_size: llm_hidden,
    };
    if iv.layers_used() == 0 || iv.layers_used() > num_layers {
        return Err(top.bad(
            select_key,
            format!("{select_layer} selects no encoder layer of {num_layers}"),
            "use -1 (the last layer)",
        ));
    }
    Ok(iv)
}
