//! Qwen2-VL / Qwen2.5-VL `vision_config` → [`QwenVision`], with transformers' defaults.

use super::{index_list, positive_usize, QwenVision, QwenVisionMlp, VisionNorm, VlmKind};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub(super) fn qwen_vision(
    v: &ConfigKeys,
    kind: VlmKind,
    llm_hidden: usize,
) -> Result<QwenVision, InputError> {
    let qwen25 = kind == VlmKind::Qwen2_5Vl;
    let usize_or = |k: &str, d: usize| -> Result<usize, InputError> {
        positive_usize(v, k, v.opt_usize(k)?.unwrap_or(d))
    };
    // Qwen2.5-VL calls the vision width hidden_size, Qwen2-VL embed_dim (its hidden_size is
    // the LLM's).
    let hidden = if qwen25 {
        usize_or("hidden_size", 3584)?
    } else {
        usize_or("embed_dim", 1280)?
    };
    let heads = usize_or("num_heads", 16)?;
    let head_dim = hidden / heads;
    if hidden % heads != 0 || head_dim % 4 != 0 {
        return Err(v.bad(
            "num_heads",
            format!(
                "vision hidden size {hidden} / {heads} heads is not a multiple of 4 (the 2D \
                 rotary turns head_dim/4 pairs per image axis)"
            ),
            "fix vision_config's hidden size or num_heads",
        ));
    }
    let in_channels = match v.opt_usize("in_channels")? {
        Some(c) => c,
        None => v.opt_usize("in_chans")?.unwrap_or(3),
    };
    let depth = usize_or("depth", 32)?;
    let out_hidden = if qwen25 {
        v.opt_usize("out_hidden_size")?.unwrap_or(llm_hidden)
    } else {
        v.opt_usize("hidden_size")?.unwrap_or(llm_hidden)
    };
    if out_hidden != llm_hidden {
        return Err(v.bad(
            if qwen25 {
                "out_hidden_size"
            } else {
                "hidden_size"
            },
            format!("{out_hidden} differs from the language model's hidden_size {llm_hidden}"),
            "the merger must output the LLM's width: fix the config",
        ));
    }
    let (window_size, fullatt) = if qwen25 {
        let full = match v.present("fullatt_block_indexes") {
            // transformers' default, for the blocks this depth has.
            None => [7, 15, 23, 31].into_iter().filter(|&i| i < depth).collect(),
            Some(a) => index_list(v, "fullatt_block_indexes", a)?,
        };
        if let Some(bad) = full.iter().find(|&&i| i >= depth) {
            return Err(v.bad(
                "fullatt_block_indexes",
                format!("block {bad} does not exist (depth {depth})"),
                "fix fullatt_block_indexes",
            ));
        }
        (Some(usize_or("window_size", 112)?), full)
    } else {
        (None, (0..depth).collect())
    };
    let mlp = if qwen25 {
        QwenVisionMlp::GatedSilu
    } else {
        QwenVisionMlp::FcQuickGelu
    };
    let act = v.opt_str("hidden_act")?;
    let expected_act = if qwen25 { "silu" } else { "quick_gelu" };
    if let Some(a) = act.filter(|a| a != expected_act) {
        return Err(v.bad(
            "hidden_act",
            format!("\"{a}\" is not supported for this vision tower"),
            format!("it uses \"{expected_act}\""),
        ));
    }
    let intermediate = if qwen25 {
        usize_or("intermediate_size", 3420)?
    } else {
        usize_or("mlp_ratio", 4)? * hidden
    };
    let q = QwenVision {
        depth,
        hidden_size: hidden,
        num_heads: heads,
        head_dim,
        intermediate_size: intermediate,
        in_channels,
        patch_size: usize_or("patch_size", 14)?,
        temporal_patch_size: usize_or("temporal_patch_size", 2)?,
        spatial_merge_size: usize_or("spatial_merge_size", 2)?,
        window_size,
        fullatt_block_indexes: fullatt,
        out_hidden_size: out_hidden,
        norm: if qwen25 {
            VisionNorm::Rms
        } else {
            VisionNorm::Layer
        },
        norm_eps: 1e-6,
        mlp,
    };
    if let Some(w) = q.window_size {
        if w % q.pixel_multiple() != 0 {
            return Err(v.bad(
                "window_size",
                format!(
                    "{w} is not a multiple of patch_size × spatial_merge_size = {}",
                    q.pixel_multiple()
                ),
                "fix window_size",
            ));
        }
    }
    Ok(q)
}
