//! internlm2 (remote code `modeling_internlm2.py`: InternLM2, InternLM2.5): llama's block under
//! other names (`model.tok_embeddings`, `attention.wqkv`/`wo`, `feed_forward.w1`/`w3`/`w2`,
//! `attention_norm`, `ffn_norm`, `output`), with q/k/v in one `wqkv` whose rows are grouped per
//! kv head: for kv head j, its `num_attention_heads / num_key_value_heads` query heads, then
//! its k head, then its v head (`rearrange(qkv, "b q (h gs d) -> b q h gs d", gs=2+g)`). The
//! grouping is undone when the tensor is read (`model::repack`), so the graph and the reference
//! see a plain q | k | v fused projection. `bias` (InternLM2Config's default: true; released
//! models: false) puts a bias on wqkv and wo. `rope_scaling` "dynamic" (InternLM2.5) is
//! refused by the generic rope reader.

use super::{llama, names, Dims, Family, LayerSpec, Projections};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub static FAMILY: Family = Family {
    model_type: "internlm2",
    summary: "llama renamed (`tok_embeddings`, `attention.wqkv`/`wo`, `feed_forward.w1/w3/w2`, \
              `attention_norm`, `ffn_norm`, `output`); `wqkv` grouped per kv head (regrouped to \
              q, k, v on read); `bias` on wqkv/wo (default true)",
    verified: "reference f32 (from a llama twin); ONNX chain (static, dynamic, history KV); \
               verify bf16 (static, dynamic); contract w4bf16",
    tie_word_embeddings: false,
    head_dim: None,
    rms_norm_eps: 1e-6,
    weights: &names::INTERNLM2,
    gguf: None,
    layer,
};

fn layer(keys: &ConfigKeys, _: &Dims) -> Result<LayerSpec, InputError> {
    llama::silu_only(keys)?;
    let bias = keys.opt_bool("bias")?.unwrap_or(true);
    let mut spec = LayerSpec::llama(bias, bias, false);
    spec.attention.qkv = Projections::Fused;
    spec.stored.qkv_grouped_per_kv_head = true;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use crate::family::Projections;
    use serde_json::json;

    #[test]
    fn grouped_wqkv_and_bias_default() {
        let c = crate::model::config::test_config("internlm2", 128, json!({})).unwrap();
        let a = c.layer.attention;
        assert_eq!(a.qkv, Projections::Fused);
        assert!(c.layer.stored.qkv_grouped_per_kv_head && a.qkv_bias && a.o_bias);
        assert!(!c.layer.mlp.bias && !c.tie_word_embeddings);
        let c = crate::model::config::test_config("internlm2", 128, json!({"bias": false}));
        assert!(!c.unwrap().layer.attention.qkv_bias);
    }
}
