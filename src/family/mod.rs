//! The model families we support, one file each (config defaults, the layer description a
//! config resolves to, weight names, GGUF mapping), and the one registry that lists them.
//! This is the only place that matches on `model_type`: adding a family means adding a file
//! here and a line to [`REGISTRY`].

pub mod alibi;
mod baichuan;
mod chatglm;
mod gemma;
mod gemma2;
mod gemma3_text;
mod glm;
mod glm4;
mod internlm2;
mod layer;
mod layer_kinds;
mod llama;
mod minicpm;
mod mistral;
pub mod moe;
pub mod names;
mod phi3;
mod qwen2;
mod qwen2_moe;
mod qwen3;
mod qwen3_moe;

pub use layer::{
    Activation, Attention, LayerSpec, Mlp, Norm, Projections, Rotary, RotaryDims, RotaryPairs,
    Scales, Stored,
};
pub use layer_kinds::{LayerRope, LayerSet, LocalLayers, Scores};
pub use moe::Moe;
pub use names::WeightNames;

use crate::error::InputError;
use crate::model::config::ConfigKeys;

/// Every supported family, in the order the README table and error messages list them.
pub static REGISTRY: &[&Family] = &[
    &llama::FAMILY,
    &qwen2::FAMILY,
    &qwen3::FAMILY,
    &minicpm::FAMILY,
    &mistral::FAMILY,
    &gemma::FAMILY,
    &phi3::FAMILY,
    &glm4::FAMILY,
    &glm::FAMILY,
    &qwen2_moe::FAMILY,
    &qwen3_moe::FAMILY,
    &gemma2::FAMILY,
    &gemma3_text::FAMILY,
    &internlm2::FAMILY,
    &baichuan::FAMILY,
    &chatglm::FAMILY,
];

/// The config numbers a family's layer description may depend on.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub hidden_size: usize,
    pub head_dim: usize,
    pub num_hidden_layers: usize,
}

/// How llama.cpp writes a family to GGUF.
#[derive(Debug, Clone, Copy)]
pub struct Gguf {
    /// `general.architecture`.
    pub arch: &'static str,
    /// `architectures[0]` of the config.json synthesised from the metadata.
    pub hf_architecture: &'static str,
    /// llama.cpp permuted the q/k rows to interleaved rotary pairs (undone on read).
    pub qk_rows_permuted: bool,
    /// q/k/v biases are declared by config.json's `attention_bias` (qwen2's are implied).
    pub bias_in_config: bool,
}

/// One model family.
pub struct Family {
    /// config.json's `model_type`.
    pub model_type: &'static str,
    /// How it differs from llama, for the README table.
    pub summary: &'static str,
    /// What the tests check for it, for the README table.
    pub verified: &'static str,
    /// `tie_word_embeddings` when config.json does not say.
    pub tie_word_embeddings: bool,
    /// `head_dim` when config.json does not say (`None`: hidden_size / num_attention_heads).
    pub head_dim: Option<usize>,
    /// `rms_norm_eps` when config.json does not say.
    pub rms_norm_eps: f64,
    pub weights: &'static WeightNames,
    pub gguf: Option<Gguf>,
    /// Reads the family's own config keys (with transformers' defaults) into its layer.
    pub layer: fn(&ConfigKeys, &Dims) -> Result<LayerSpec, InputError>,
}

impl Family {
    /// The `model_type` string.
    pub fn name(&self) -> &'static str {
        self.model_type
    }
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.model_type)
    }
}

impl PartialEq for Family {
    fn eq(&self, other: &Family) -> bool {
        self.model_type == other.model_type
    }
}

impl serde::Serialize for Family {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.model_type)
    }
}

/// config.json as the generic reader reads it: the family's own names for the generic keys
/// renamed (remote-code configs), or `None` when the family uses transformers' names.
pub fn canonical_config(
    model_type: &str,
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    (model_type == chatglm::FAMILY.model_type).then(|| chatglm::canonical_config(obj))
}

/// The family of a `model_type`.
pub fn lookup(model_type: &str) -> Option<&'static Family> {
    REGISTRY
        .iter()
        .copied()
        .find(|f| f.model_type == model_type)
}

/// The family llama.cpp writes with this `general.architecture`, and how.
pub fn by_gguf_arch(arch: &str) -> Option<(&'static Family, Gguf)> {
    REGISTRY
        .iter()
        .find_map(|f| f.gguf.filter(|g| g.arch == arch).map(|g| (*f, g)))
}

/// Supported `model_type`s, comma-separated (for error messages).
pub fn supported() -> String {
    let names: Vec<&str> = REGISTRY.iter().map(|f| f.model_type).collect();
    names.join(", ")
}

/// Supported GGUF architectures, comma-separated.
pub fn supported_gguf_archs() -> String {
    let archs: Vec<&str> = REGISTRY
        .iter()
        .filter_map(|f| f.gguf.map(|g| g.arch))
        .collect();
    archs.join(", ")
}

/// The README's family table (a unit test keeps README.md equal to it).
pub fn readme_table() -> String {
    let mut t = String::from(
        "| model_type | what differs from llama | verified by the tests | GGUF `general.architecture` |\n\
         |---|---|---|---|\n",
    );
    for f in REGISTRY {
        let gguf = f.gguf.map_or("—", |g| g.arch);
        t.push_str(&format!(
            "| {} | {} | {} | {gguf} |\n",
            f.model_type, f.summary, f.verified
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_lists_exactly_the_registry() {
        let readme = include_str!("../../README.md");
        let table = readme_table();
        assert!(
            readme.contains(&table),
            "README.md's family table is out of date; it should read:\n{table}"
        );
    }

    #[test]
    fn lookups() {
        assert_eq!(lookup("qwen3").map(Family::name), Some("qwen3"));
        assert!(lookup("gpt2").is_none());
        assert_eq!(by_gguf_arch("llama").map(|(f, _)| f.name()), Some("llama"));
        assert!(by_gguf_arch("mistral").is_none());
        assert_eq!(
            supported(),
            "llama, qwen2, qwen3, minicpm, mistral, gemma, phi3, glm4, glm, qwen2_moe, qwen3_moe, \
             gemma2, gemma3_text, internlm2, baichuan, chatglm"
        );
        assert_eq!(supported_gguf_archs(), "llama, qwen2, qwen3");
    }
}
