//! Vision-language models: the `config.json` of a VLM is a text model nested inside
//! (`text_config`, `llm_config`, or flat at the top for older Qwen2(.5)-VL hub configs) plus a
//! `vision_config`. The text part is parsed by its text family like any LLM ([`text_part`]);
//! this module reads the vision tower's geometry — every number from the config, nothing
//! pinned — and the image-token ids, and names the tower's tensors (one place).
//!
//! Text tensors keep their text-family names (`model.layers.0...`, `lm_head.weight`);
//! [`RenamedWeights`] finds them wherever the checkpoint layout stores them.

use serde_json::{Map, Value};

use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub mod intern_names;
mod intern_vision;
mod qwen_vision;
pub mod text_only;

use intern_vision::intern_vision;
use qwen_vision::qwen_vision;

/// The VLM `model_type`s, for the README and the unknown-type error.
pub const VLM_TYPES: &[&str] = &["qwen2_5_vl", "qwen2_vl", "internvl_chat", "internvl"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VlmKind {
    /// Qwen2.5-VL: window + full attention blocks, RMSNorm, gated SiLU MLP, reverse index.
    Qwen2_5Vl,
    /// Qwen2-VL: full attention only, LayerNorm, quick-GELU fc MLP.
    Qwen2Vl,
    /// InternVL (InternViT + pixel shuffle + `mlp1`), either checkpoint layout.
    InternVl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum VisionNorm {
    Rms,
    /// LayerNorm with a bias.
    Layer,
}

/// How a Qwen vision block's MLP computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum QwenVisionMlp {
    /// `down(silu(gate(x)) * up(x))`, all with bias (Qwen2.5-VL).
    GatedSilu,
    /// `fc2(quick_gelu(fc1(x)))`, with bias (Qwen2-VL; quick_gelu = x·sigmoid(1.702x)).
    FcQuickGelu,
}

/// The Qwen2-VL / Qwen2.5-VL vision tower.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QwenVision {
    pub depth: usize,
    /// Vision width Hv (Qwen2.5-VL `hidden_size`, Qwen2-VL `embed_dim`).
    pub hidden_size: usize,
    pub num_heads: usize,
    /// Hv / num_heads (any even value: the 2D rotary turns head_dim/2 per axis pair).
    pub head_dim: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    /// Attention window in pixels (Qwen2.5-VL); `None`: every block attends the whole image.
    pub window_size: Option<usize>,
    /// Blocks with full attention (Qwen2.5-VL); the others attend within windows.
    pub fullatt_block_indexes: Vec<usize>,
    /// The merger's output width: the LLM's hidden size.
    pub out_hidden_size: usize,
    pub norm: VisionNorm,
    /// transformers hard-codes 1e-6 for every vision norm.
    pub norm_eps: f64,
    pub mlp: QwenVisionMlp,
}

impl QwenVision {
    /// Columns of one `input_states` row: C · T · patch · patch (1176 for 3·2·14·14).
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Patch rows merged into one image token (merge²).
    pub fn merge_unit(&self) -> usize {
        self.spatial_merge_size * self.spatial_merge_size
    }

    /// Pixels per side of one merge unit (28 for patch 14, merge 2): image sides are
    /// multiples of it.
    pub fn pixel_multiple(&self) -> usize {
        self.patch_size * self.spatial_merge_size
    }
}

/// Which names an InternVL checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InternLayout {
    /// OpenGVLab's `internvl_chat` (fused `attn.qkv`, `vision_model.*`, `mlp1.*`).
    Chat,
    /// transformers' native `internvl` (split q/k/v, `vision_tower.*`,
    /// `multi_modal_projector.*`).
    Native,
}

/// InternViT + pixel shuffle + projector.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InternVision {
    pub layout: InternLayout,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub qkv_bias: bool,
    /// RMSNorm over all heads' q and k (InternViT-6B); false for InternViT-300M.
    pub qk_norm: bool,
    pub norm: VisionNorm,
    pub norm_eps: f64,
    /// Pixel shuffle factor (0.5: 2×2 neighbours into one token).
    pub downsample_ratio: f64,
    /// Which encoder layer's output feeds the projector (-1: the last).
    pub select_layer: i64,
    /// The LLM's hidden size (projector output).
    pub out_hidden_size: usize,
}

impl InternVision {
    /// Patches per side of one tile (32 for 448/14).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Image tokens per tile (256 for 448/14 with ratio 0.5).
    pub fn tokens_per_tile(&self) -> usize {
        let side = (self.grid() as f64 * self.downsample_ratio).round() as usize;
        side * side
    }

    /// Encoder layers run (the layers after `select_layer` are skipped).
    pub fn layers_used(&self) -> usize {
        if self.select_layer < 0 {
            (self.num_layers as i64 + 1 + self.select_layer).max(0) as usize
        } else {
            self.select_layer as usize
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum VisionTower {
    Qwen(QwenVision),
    Intern(InternVision),
}

/// What a VLM's config adds to its text part.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VlmConfig {
    pub kind: VlmKind,
    /// The VLM's own `model_type` (the text part's family is in `ModelConfig::family`).
    pub model_type: String,
    pub vision: VisionTower,
    /// The token each image token position holds; `None` when only the tokenizer knows it
    /// (OpenGVLab configs): look up [`VlmConfig::image_token`] there.
    pub image_token_id: Option<u32>,
    /// The image token's text (`<|image_pad|>`, `<IMG_CONTEXT>`).
    pub image_token: &'static str,
    pub vision_start_token_id: Option<u32>,
    pub vision_end_token_id: Option<u32>,
    /// M-RoPE: rotary frequency pairs turned by the (t, h, w) position rows (Qwen2(.5)-VL;
    /// sums to head_dim / 2).
    pub mrope_section: Option<[usize; 3]>,
}

/// What [`text_part`] returns: the text model's config object, and the VLM around it.
pub struct Split {
    pub text: Map<String, Value>,
    pub vlm: VlmConfig,
}

/// Copies into a VLM's text part the keys a VLM keeps at the top level and transformers reads
/// from there (the text part's own value, if any, stays).
pub(super) fn carry_top_level_keys(top: &Map<String, Value>, text: &mut Map<String, Value>) {
    for k in [
        "tie_word_embeddings",
        "torch_dtype",
        "dtype",
        "quantization_config",
    ] {
        if let Some(v) = top.get(k).filter(|v| !v.is_null()) {
            text.entry(k).or_insert_with(|| v.clone());
        }
    }
}

/// `Some` when `model_type` is a VLM: splits the config into its text part (to be parsed
/// by the text family) and the vision description.
pub fn text_part(keys: &ConfigKeys, model_type: &str) -> Result<Option<Split>, InputError> {
    let kind = match model_type {
        "qwen2_5_vl" => VlmKind::Qwen2_5Vl,
        "qwen2_vl" => VlmKind::Qwen2Vl,
        "internvl_chat" | "internvl" => VlmKind::InternVl,
        _ => return Ok(None),
    };
    let top = keys.object();
    let nested_key = ["text_config", "llm_config"]
        .into_iter()
        .find(|k| top.get(*k).is_some_and(Value::is_object));
    let mut text = match nested_key {
        Some(k) => top[k].as_object().cloned().unwrap_or_default(),
        // Older Qwen2(.5)-VL hub configs keep the LLM's keys at the top level.
        None if kind != VlmKind::InternVl => top.clone(),
        None => {
            return Err(keys.bad(
                "llm_config",
                "missing: an InternVL config nests its language model there (or in \
                 \"text_config\")",
                "restore config.json from the original model",
            ))
        }
    };
    carry_top_level_keys(top, &mut text);
    // transformers' VLM classes tie lm_head by their own top-level flag and ignore the text
    // config's (5.6.2 drops lm_head from the file when the top-level one is true; class
    // defaults: Qwen2(.5)-VL false, InternVL true). OpenGVLab's remote code ties by
    // llm_config's.
    if model_type != "internvl_chat" {
        let tie = top
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(model_type == "internvl");
        text.insert("tie_word_embeddings".into(), Value::from(tie));
    }
    let mrope_section = match kind {
        VlmKind::InternVl => None,
        _ => Some(take_mrope_section(keys, &mut text)?),
    };
    let text_type = match kind {
        // Qwen2(.5)-VL's LLM is a qwen2 (`qwen2_5_vl_text` in transformers 5).
        VlmKind::Qwen2_5Vl | VlmKind::Qwen2Vl => {
            // Qwen2_5_VLTextConfig's default theta (qwen2's is 10000).
            let has_theta = text.contains_key("rope_theta")
                || ["rope_parameters", "rope_scaling"].iter().any(|k| {
                    text.get(*k)
                        .and_then(|p| p.get("rope_theta"))
                        .is_some_and(|t| !t.is_null())
                });
            if !has_theta {
                text.insert("rope_theta".into(), Value::from(1_000_000.0));
            }
            "qwen2".to_string()
        }
        VlmKind::InternVl => match text.get("model_type").and_then(Value::as_str) {
            Some(t) => t.to_string(),
            // InternVLConfig's default text config is qwen2.
            None => "qwen2".to_string(),
        },
    };
    text.insert("model_type".into(), Value::from(text_type));
    let out_hidden = text.get("hidden_size").and_then(Value::as_u64).unwrap_or(0) as usize;
    let vision_obj = top
        .get("vision_config")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            keys.bad(
                "vision_config",
                "missing or not an object",
                "restore config.json from the original model",
            )
        })?;
    let vkeys = keys.nested(vision_obj, "vision_config");
    let vision = match kind {
        VlmKind::Qwen2_5Vl | VlmKind::Qwen2Vl => {
            VisionTower::Qwen(qwen_vision(&vkeys, kind, out_hidden)?)
        }
        VlmKind::InternVl => {
            let layout = if model_type == "internvl" {
                InternLayout::Native
            } else {
                InternLayout::Chat
            };
            VisionTower::Intern(intern_vision(keys, &vkeys, layout, out_hidden)?)
        }
    };
    let id =
        |k: &str| -> Result<Option<u32>, InputError> { Ok(keys.opt_usize(k)?.map(|v| v as u32)) };
    let vlm = match kind {
        VlmKind::InternVl => VlmConfig {
            kind,
            model_type: model_type.to_string(),
            vision,
            // Native configs say it; OpenGVLab's leave it to the tokenizer.
            image_token_id: id("image_token_id")?,
            image_token: "<IMG_CONTEXT>",
            vision_start_token_id: None,
            vision_end_token_id: None,
            mrope_section,
        },
        _ => VlmConfig {
            kind,
            model_type: model_type.to_string(),
            vision,
            image_token_id: Some(id("image_token_id")?.unwrap_or(151655)),
            image_token: "<|image_pad|>",
            vision_start_token_id: Some(id("vision_start_token_id")?.unwrap_or(151652)),
            vision_end_token_id: Some(id("vision_end_token_id")?.unwrap_or(151653)),
            mrope_section,
        },
    };
    Ok(Some(Split { text, vlm }))
}

/// Removes `mrope_section` from the text part's rope keys (leaving the plain rope the text
/// family reads) and returns it; transformers' default is [16, 24, 24].
fn take_mrope_section(
    keys: &ConfigKeys,
    text: &mut Map<String, Value>,
) -> Result<[usize; 3], InputError> {
    let mut found = None;
    for k in ["rope_parameters", "rope_scaling"] {
        let Some(p) = text.get_mut(k).and_then(Value::as_object_mut) else {
            continue;
        };
        if let Some(s) = p.remove("mrope_section") {
            found = Some((k, s));
        }
        // "mrope" is the default rope with sections (transformers maps it to "default").
        for t in ["rope_type", "type"] {
            if p.get(t).and_then(Value::as_str) == Some("mrope") {
                p.insert(t.into(), Value::from("default"));
            }
        }
    }
    let Some((key, section)) = found else {
        return Ok([16, 24, 24]);
    };
    let parsed: Option<Vec<usize>> = section.as_array().map(|a| {
        a.iter()
            .filter_map(|v| v.as_u64().map(|v| v as usize))
            .collect()
    });
    match parsed {
        Some(v) if v.len() == 3 && section.as_array().is_some_and(|a| a.len() == 3) => {
            Ok([v[0], v[1], v[2]])
        }
        _ => Err(keys.bad(
            &format!("{key}.mrope_section"),
            format!("{section} is not three non-negative integers"),
            "restore it from the original config (Qwen2.5-VL: [16, 24, 24])",
        )),
    }
}

pub(super) fn positive_usize(keys: &ConfigKeys, key: &str, v: usize) -> Result<usize, InputError> {
    if v == 0 || v > 1 << 20 {
        return Err(keys.bad(key, format!("{v} is out of range"), "fix its value"));
    }
    Ok(v)
}

pub(super) fn index_list(
    keys: &ConfigKeys,
    key: &str,
    a: &Value,
) -> Result<Vec<usize>, InputError> {
    let items = a.as_array().ok_or_else(|| {
        keys.bad(
            key,
            format!("{a} is not a list"),
            "use a list of block indexes",
        )
    })?;
    items
        .iter()
        .map(|i| {
            i.as_u64().map(|i| i as usize).ok_or_else(|| {
                keys.bad(
                    key,
                    format!("{i} is not an index"),
                    "use non-negative integers",
                )
            })
        })
        .collect()
}

/// Where each checkpoint layout stores the text part's tensors: (text-family prefix,
/// stored prefix) pairs tried in order, then the name as is.
pub fn text_renames(kind: VlmKind) -> &'static [(&'static str, &'static str)] {
    match kind {
        // transformers 5 in-memory names; hub checkpoints (and 5.6.2's save_pretrained) keep
        // `model.*` / `visual.*`, found by the fallback.
        VlmKind::Qwen2_5Vl | VlmKind::Qwen2Vl => &[
            ("model.", "model.language_model."),
            ("visual.", "model.visual."),
        ],
        VlmKind::InternVl => &[
            ("model.", "language_model.model."),
            ("lm_head.", "language_model.lm_head."),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::ModelConfig;
    use serde_json::json;
    use std::path::Path;

    fn parse(v: Value) -> Result<ModelConfig, InputError> {
        ModelConfig::from_json(&v, Path::new("/m/config.json"))
    }

    fn text() -> Value {
        json!({"hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
               "num_hidden_layers": 2, "intermediate_size": 256, "vocab_size": 512})
    }

    fn qwen25(vision: Value) -> Value {
        let mut t = text();
        t["model_type"] = json!("qwen2_5_vl_text");
        t["rope_parameters"] = json!({"rope_type": "default", "type": "mrope",
                                      "mrope_section": [4, 6, 6], "rope_theta": 10000.0});
        json!({"model_type": "qwen2_5_vl", "text_config": t, "vision_config": vision,
               "image_token_id": 300})
    }

    #[test]
    fn qwen2_5_vl_nested_config() {
        let c = parse(qwen25(
            json!({"depth": 2, "hidden_size": 64, "num_heads": 2,
            "intermediate_size": 96, "out_hidden_size": 128, "fullatt_block_indexes": [1],
            "window_size": 56}),
        ))
        .unwrap();
        assert_eq!(c.family.name(), "qwen2");
        assert_eq!(
            (c.hidden_size, c.rope_theta, c.rope_scaling.clone()),
            (128, 10000.0, None)
        );
        let vlm = c.vlm.as_ref().unwrap();
        assert_eq!(vlm.mrope_section, Some([4, 6, 6]));
        assert_eq!(vlm.image_token_id, Some(300));
        let VisionTower::Qwen(q) = &vlm.vision else {
            panic!("{vlm:?}")
        };
        assert_eq!(
            (q.head_dim, q.patch_dim(), q.window_size),
            (32, 1176, Some(56))
        );
        assert_eq!(q.fullatt_block_indexes, vec![1]);
    }

    #[test]
    fn flat_hub_qwen2_5_vl_config() {
        let mut v = text();
        v["model_type"] = json!("qwen2_5_vl");
        v["rope_scaling"] = json!({"type": "mrope", "mrope_section": [4, 6, 6]});
        v["vision_config"] = json!({"depth": 8, "hidden_size": 160, "num_heads": 2,
            "intermediate_size": 96, "out_hidden_size": 128, "in_chans": 3});
        let c = parse(v).unwrap();
        assert_eq!(c.rope_theta, 1_000_000.0);
        let vlm = c.vlm.unwrap();
        assert_eq!(vlm.vision_start_token_id, Some(151652));
        let VisionTower::Qwen(q) = vlm.vision else {
            panic!()
        };
        assert_eq!((q.head_dim, q.fullatt_block_indexes.clone()), (80, vec![7]));
    }

    #[test]
    fn bad_vision_configs_are_refused() {
        let e = parse(qwen25(
            json!({"depth": 2, "hidden_size": 64, "num_heads": 2,
            "out_hidden_size": 96}),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("out_hidden_size") && e.contains("128"), "{e}");
        let e = parse(qwen25(
            json!({"depth": 2, "hidden_size": 64, "num_heads": 2,
            "out_hidden_size": 128, "fullatt_block_indexes": [5]}),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("fullatt_block_indexes"), "{e}");
        let mut v = qwen25(json!({}));
        v["text_config"]["rope_parameters"]["mrope_section"] = json!([4, 6]);
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("mrope_section"), "{e}");
        let mut v = qwen25(json!({}));
        v.as_object_mut().unwrap().remove("vision_config");
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("vision_config"), "{e}");
    }

    #[test]
    fn internvl_both_layouts() {
        let mut llm = text();
        llm["model_type"] = json!("qwen2");
        let chat = json!({"model_type": "internvl_chat", "llm_config": llm.clone(),
            "vision_config": {"hidden_size": 64, "num_attention_heads": 2,
                "intermediate_size": 128, "num_hidden_layers": 2, "image_size": 56,
                "patch_size": 14, "qkv_bias": true}, "select_layer": -1,
            "downsample_ratio": 0.5});
        let c = parse(chat).unwrap();
        let VisionTower::Intern(iv) = c.vlm.as_ref().unwrap().vision.clone() else {
            panic!()
        };
        assert_eq!(
            (iv.layout, iv.grid(), iv.tokens_per_tile()),
            (InternLayout::Chat, 4, 4)
        );
        assert!(iv.qkv_bias && iv.layers_used() == 2);
        assert_eq!(c.vlm.unwrap().image_token_id, None);
        let native = json!({"model_type": "internvl", "text_config": llm,
            "vision_config": {"hidden_size": 64, "num_attention_heads": 2,
                "intermediate_size": 128, "num_hidden_layers": 2, "image_size": [56, 56],
                "patch_size": [14, 14]}, "image_token_id": 500});
        let c = parse(native).unwrap();
        let vlm = c.vlm.unwrap();
        let VisionTower::Intern(iv) = vlm.vision else {
            panic!()
        };
        assert_eq!(
            (iv.layout, iv.image_size, iv.qkv_bias),
            (InternLayout::Native, 56, false)
        );
        assert_eq!(vlm.image_token_id, Some(500));
    }

    #[test]
    fn text_models_are_not_vlms() {
        let mut v = text();
        v["model_type"] = json!("qwen2");
        assert!(parse(v).unwrap().vlm.is_none());
    }

    #[test]
    fn top_level_tie_word_embeddings_wins_for_transformers_classes() {
        let mut llm = text();
        llm["model_type"] = json!("qwen2");
        llm["tie_word_embeddings"] = json!(false);
        let vision = json!({"hidden_size": 64, "num_attention_heads": 2,
            "intermediate_size": 128, "num_hidden_layers": 2, "image_size": 56, "patch_size": 14});
        let native = json!({"model_type": "internvl", "text_config": llm.clone(),
            "vision_config": vision.clone(), "tie_word_embeddings": true});
        assert!(parse(native).unwrap().tie_word_embeddings);
        let default = json!({"model_type": "internvl", "text_config": llm.clone(),
            "vision_config": vision.clone()});
        assert!(parse(default).unwrap().tie_word_embeddings);
        let chat = json!({"model_type": "internvl_chat", "llm_config": llm,
            "vision_config": vision, "tie_word_embeddings": true});
        assert!(!parse(chat).unwrap().tie_word_embeddings);
        let mut q = qwen25(json!({"depth": 2, "hidden_size": 64, "num_heads": 2,
            "out_hidden_size": 128}));
        q["text_config"]["tie_word_embeddings"] = json!(true);
        assert!(!parse(q).unwrap().tie_word_embeddings);
    }
}
