//! The mixture-of-experts MLP of qwen2_moe and qwen3_moe: a softmax router over
//! `num_experts` SiLU-gated experts picks `num_experts_per_tok` of them per token (their
//! softmax weights, renormalised to sum 1 with `norm_topk_prob`), plus, in qwen2_moe, a
//! shared expert scaled by `sigmoid(shared_expert_gate · x)`. Layers listed in
//! `mlp_only_layers`, or off the `decoder_sparse_step` grid, keep the dense MLP.

use super::{Dims, LayerSpec, WeightNames};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

/// Checkpoint module names of a MoE MLP, relative to its layer.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub struct MoeNames {
    /// The router, `[E, H]`, no bias.
    pub router: &'static str,
    /// Expert `e`'s projections are `{experts}.{e}.{gate,up,down}_proj`.
    pub experts: &'static str,
    pub shared_expert: &'static str,
    /// `[1, H]`, no bias.
    pub shared_expert_gate: &'static str,
}

/// transformers' Qwen2Moe/Qwen3Moe names (as the Hub and `save_pretrained` write them).
pub const QWEN_MOE: MoeNames = MoeNames {
    router: "mlp.gate",
    experts: "mlp.experts",
    shared_expert: "mlp.shared_expert",
    shared_expert_gate: "mlp.shared_expert_gate",
};

/// One of an expert's (or the shared expert's) three projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proj {
    Gate,
    Up,
    Down,
}

impl Proj {
    fn name(self) -> &'static str {
        match self {
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }
}

/// Which layers are sparse: a bit per layer (config.rs bounds `num_hidden_layers` by 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSet([u64; 16]);

impl LayerSet {
    pub fn contains(&self, layer: usize) -> bool {
        layer < 1024 && self.0[layer / 64] & (1 << (layer % 64)) != 0
    }

    fn insert(&mut self, layer: usize) {
        self.0[layer / 64] |= 1 << (layer % 64);
    }
}

impl serde::Serialize for LayerSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((0..1024).filter(|l| self.contains(*l)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Moe {
    pub num_experts: usize,
    /// `num_experts_per_tok`.
    pub top_k: usize,
    /// `moe_intermediate_size`: each expert's width.
    pub intermediate_size: usize,
    /// The top-k weights are divided by their sum.
    pub norm_topk_prob: bool,
    /// The shared expert's width (`shared_expert_intermediate_size`), when there is one.
    pub shared_expert: Option<usize>,
    /// The sparse layers; the others use the dense MLP of width `intermediate_size`.
    pub layers: LayerSet,
    #[serde(skip)]
    pub names: &'static MoeNames,
}

impl Moe {
    /// The router module of `layer`.
    pub fn router(&self, n: &WeightNames, layer: usize) -> String {
        n.module(layer, self.names.router)
    }

    /// Expert `e`'s projection module of `layer`.
    pub fn expert(&self, n: &WeightNames, layer: usize, e: usize, p: Proj) -> String {
        n.module(layer, &format!("{}.{e}.{}", self.names.experts, p.name()))
    }

    /// The shared expert's projection module of `layer`.
    pub fn shared(&self, n: &WeightNames, layer: usize, p: Proj) -> String {
        n.module(layer, &format!("{}.{}", self.names.shared_expert, p.name()))
    }

    /// The shared expert's gate module of `layer`.
    pub fn shared_gate(&self, n: &WeightNames, layer: usize) -> String {
        n.module(layer, self.names.shared_expert_gate)
    }
}

impl LayerSpec {
    /// The MoE MLP of `layer`, if that layer is sparse.
    pub fn moe_at(&self, layer: usize) -> Option<&Moe> {
        self.moe.as_ref().filter(|m| m.layers.contains(layer))
    }
}

/// The defaults of a family's config class.
pub(super) struct Defaults {
    pub num_experts: usize,
    pub top_k: usize,
    pub intermediate_size: usize,
    /// `shared_expert_intermediate_size`'s default; `None`: the family has no shared expert.
    pub shared_expert: Option<usize>,
}

/// Largest `num_experts` accepted (real models: 60 to 512).
const MAX_EXPERTS: usize = 4096;

/// Reads the MoE keys with the family's class defaults. `num_experts` is also read as
/// `num_local_experts` (transformers 5.6.2's Qwen3MoeConfig saves it under that name).
pub(super) fn read(keys: &ConfigKeys, dims: &Dims, d: Defaults) -> Result<Moe, InputError> {
    let num_experts = match keys.opt_usize("num_experts")? {
        Some(e) => e,
        None => keys
            .opt_usize("num_local_experts")?
            .unwrap_or(d.num_experts),
    };
    if num_experts > MAX_EXPERTS {
        return Err(keys.bad(
            "num_experts",
            format!("{num_experts} is more than this tool converts (at most {MAX_EXPERTS})"),
            "fix its value: the config is corrupt",
        ));
    }
    let top_k = keys.opt_usize("num_experts_per_tok")?.unwrap_or(d.top_k);
    if top_k > num_experts {
        return Err(keys.bad(
            "num_experts_per_tok",
            format!("{top_k} is more than num_experts {num_experts}"),
            "fix num_experts_per_tok",
        ));
    }
    let width = |key: &str, default: usize| -> Result<usize, InputError> {
        let w = keys.opt_usize(key)?.unwrap_or(default);
        if w > 1 << 20 {
            return Err(keys.bad(
                key,
                format!("{w} is larger than any model this tool can convert"),
                "fix its value: the config is corrupt",
            ));
        }
        Ok(w)
    };
    let intermediate_size = width("moe_intermediate_size", d.intermediate_size)?;
    let shared_expert = match d.shared_expert {
        Some(default) => Some(width("shared_expert_intermediate_size", default)?),
        None => None,
    };
    Ok(Moe {
        num_experts,
        top_k,
        intermediate_size,
        norm_topk_prob: keys.opt_bool("norm_topk_prob")?.unwrap_or(false),
        shared_expert,
        layers: sparse_layers(keys, dims.num_hidden_layers)?,
        names: &QWEN_MOE,
    })
}

/// transformers' `Qwen2MoeDecoderLayer`: layer i is sparse iff i is not in
/// `mlp_only_layers` and `(i + 1) % decoder_sparse_step == 0`.
fn sparse_layers(keys: &ConfigKeys, layers: usize) -> Result<LayerSet, InputError> {
    let step = keys.opt_usize("decoder_sparse_step")?.unwrap_or(1);
    let dense: Vec<usize> = match keys.present("mlp_only_layers") {
        None => vec![],
        Some(v) => v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|i| i.as_u64().map(|i| i as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                keys.bad(
                    "mlp_only_layers",
                    format!("expected a list of layer indices, got {v}"),
                    "fix its value",
                )
            })?,
    };
    let mut set = LayerSet([0; 16]);
    for l in (0..layers.min(1024)).filter(|l| (l + 1) % step == 0 && !dense.contains(l)) {
        set.insert(l);
    }
    Ok(set)
}

/// `use_sliding_window: true` (windowed attention on some layers) is not implemented.
pub(super) fn refuse_sliding_window(keys: &ConfigKeys) -> Result<(), InputError> {
    if keys.opt_bool("use_sliding_window")? == Some(true) {
        return Err(keys.bad(
            "use_sliding_window",
            "windowed attention for this family is not supported",
            "set \"use_sliding_window\": false (what the published checkpoints use)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::ModelConfig;
    use serde_json::{json, Value};

    fn parse(model_type: &str, extra: Value) -> Result<ModelConfig, crate::error::InputError> {
        crate::model::config::test_config(model_type, 64, extra)
    }

    #[test]
    fn qwen2_moe_defaults_like_transformers() {
        let c = parse("qwen2_moe", json!({"num_hidden_layers": 4})).unwrap();
        let m = c.layer.moe.unwrap();
        assert_eq!((m.num_experts, m.top_k, m.intermediate_size), (60, 4, 1408));
        assert_eq!((m.shared_expert, m.norm_topk_prob), (Some(5632), false));
        assert!((0..4).all(|l| c.layer.moe_at(l).is_some()));
        assert!(c.layer.attention.qkv_bias && !c.layer.attention.o_bias);
        assert!(!c.layer.attention.qk_norm);
    }

    #[test]
    fn sparse_step_and_dense_layers() {
        let c = parse(
            "qwen2_moe",
            json!({"num_hidden_layers": 6, "decoder_sparse_step": 2, "mlp_only_layers": [3]}),
        )
        .unwrap();
        let sparse: Vec<usize> = (0..6).filter(|l| c.layer.moe_at(*l).is_some()).collect();
        assert_eq!(sparse, vec![1, 5]);
        let e = parse("qwen2_moe", json!({"mlp_only_layers": "1"})).unwrap_err();
        assert!(e.to_string().contains("mlp_only_layers"), "{e}");
        let e = parse(
            "qwen2_moe",
            json!({"num_experts": 2, "num_experts_per_tok": 3}),
        );
        assert!(e.unwrap_err().to_string().contains("num_experts_per_tok"));
        let e = parse("qwen2_moe", json!({"use_sliding_window": true})).unwrap_err();
        assert!(e.to_string().contains("use_sliding_window"), "{e}");
    }

    #[test]
    fn qwen3_moe_reads_num_local_experts() {
        let c = parse(
            "qwen3_moe",
            json!({"num_local_experts": 8, "norm_topk_prob": true}),
        );
        let c = c.unwrap();
        let m = c.layer.moe.unwrap();
        assert_eq!((m.num_experts, m.top_k, m.intermediate_size), (8, 8, 768));
        assert_eq!((m.shared_expert, m.norm_topk_prob), (None, true));
        assert!(c.layer.attention.qk_norm && !c.layer.attention.qkv_bias);
        let d = parse("qwen3_moe", json!({})).unwrap().layer.moe.unwrap();
        assert_eq!((d.num_experts, d.norm_topk_prob), (128, false));
    }
}
