//! InternViT's tensor names in each checkpoint layout, and the eps values the layouts fix
//! rather than configure: read by the vit graph (`arch::vit::intern`) and the reference
//! (`reference::vision::intern`) alike.

use super::InternLayout;

/// The projector's LayerNorm eps: `nn.LayerNorm`'s default, as upstream in both layouts
/// (InternVL3Converter uses the vision `layer_norm_eps`).
pub const PROJECTOR_EPS: f64 = 1e-5;
/// transformers' native q/k RMSNorm eps; OpenGVLab's uses `layer_norm_eps`.
pub const NATIVE_QK_NORM_EPS: f64 = 1e-6;

/// Weight names of one checkpoint layout.
#[derive(Debug)]
pub struct InternNames {
    pub cls: &'static str,
    pub patch: &'static str,
    pub position: &'static str,
    pub layer: &'static str,
    /// Fused `[3·Hv, Hv]` qkv, or the separate q/k/v projections.
    pub qkv: Qkv,
    pub norm1: &'static str,
    pub norm2: &'static str,
    pub ls1: &'static str,
    pub ls2: &'static str,
    pub proj: &'static str,
    pub q_norm: &'static str,
    pub k_norm: &'static str,
    pub projector: [&'static str; 3],
    pub qk_norm_eps: Option<f64>,
}

#[derive(Debug)]
pub enum Qkv {
    Fused(&'static str),
    Split([&'static str; 3]),
}

/// OpenGVLab's `internvl_chat`.
pub static CHAT_NAMES: InternNames = InternNames {
    cls: "vision_model.embeddings.class_embedding",
    patch: "vision_model.embeddings.patch_embedding",
    position: "vision_model.embeddings.position_embedding",
    layer: "vision_model.encoder.layers",
    qkv: Qkv::Fused("attn.qkv"),
    norm1: "norm1",
    norm2: "norm2",
    ls1: "ls1",
    ls2: "ls2",
    proj: "attn.proj",
    q_norm: "attn.q_norm",
    k_norm: "attn.k_norm",
    projector: ["mlp1.0", "mlp1.1", "mlp1.3"],
    qk_norm_eps: None,
};

/// transformers' native `internvl`.
pub static NATIVE_NAMES: InternNames = InternNames {
    cls: "vision_tower.embeddings.cls_token",
    patch: "vision_tower.embeddings.patch_embeddings.projection",
    position: "vision_tower.embeddings.position_embeddings",
    layer: "vision_tower.encoder.layer",
    qkv: Qkv::Split(["attention.q_proj", "attention.k_proj", "attention.v_proj"]),
    norm1: "layernorm_before",
    norm2: "layernorm_after",
    ls1: "lambda_1",
    ls2: "lambda_2",
    proj: "attention.projection_layer",
    q_norm: "attention.q_norm",
    k_norm: "attention.k_norm",
    projector: [
        "multi_modal_projector.layer_norm",
        "multi_modal_projector.linear_1",
        "multi_modal_projector.linear_2",
    ],
    qk_norm_eps: Some(NATIVE_QK_NORM_EPS),
};

/// The names of `layout`.
pub fn intern_names(layout: InternLayout) -> &'static InternNames {
    match layout {
        InternLayout::Chat => &CHAT_NAMES,
        InternLayout::Native => &NATIVE_NAMES,
    }
}
