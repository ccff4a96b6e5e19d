//! baichuan (remote code `modeling_baichuan.py`: Baichuan2-7B): llama's block with q/k/v
//! packed into `W_pack` (rows q | k | v, no bias), multi-head attention (no
//! `num_key_value_heads`), rotary base 10000, and NormHead: the logits use the lm_head rows
//! L2-normalised (`nn.functional.normalize(self.weight)`, done once at the first forward by
//! the remote code), done here when the lm_head is read (`model::repack`).
//! Baichuan2-13B is the same block with ALiBi position biases instead of rotary (see
//! [`uses_alibi`], `family::alibi`).

use super::{llama, names, Dims, Family, LayerSpec, Projections};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub static FAMILY: Family = Family {
    model_type: "baichuan",
    summary: "Baichuan2-7B and 13B: q/k/v packed in `W_pack` (q, k, v rows), NormHead (lm_head \
              rows L2-normalised on read); 13B: ALiBi biases instead of rotary",
    verified: "7B and 13B (ALiBi): reference f32 (from a llama twin); ONNX chain (static, \
               dynamic, history KV); verify bf16 (static, dynamic); contract w4bf16",
    tie_word_embeddings: false,
    head_dim: None,
    rms_norm_eps: 1e-6,
    weights: &names::BAICHUAN,
    gguf: None,
    layer,
};

/// The only width Baichuan/Baichuan2-13B were released at (vLLM picks ALiBi by it too).
const ALIBI_HIDDEN_SIZE: usize = 5120;

fn layer(keys: &ConfigKeys, dims: &Dims) -> Result<LayerSpec, InputError> {
    llama::silu_only(keys)?;
    let mut spec = LayerSpec::llama(false, false, false);
    spec.attention.qkv = Projections::Fused;
    spec.attention.alibi = uses_alibi(keys, dims);
    spec.stored.lm_head_rows_normalised = true;
    Ok(spec)
}

/// Nothing in a Baichuan config names its position encoding: the 13B models' remote code
/// (ALiBi) ships a config class without `max_position_embeddings` (it has only
/// `model_max_length`) and they are 5120 wide; the 7B's (rotary) has both keys and is 4096.
fn uses_alibi(keys: &ConfigKeys, dims: &Dims) -> bool {
    dims.hidden_size == ALIBI_HIDDEN_SIZE || keys.present("max_position_embeddings").is_none()
}

#[cfg(test)]
mod tests {
    use crate::family::Projections;
    use serde_json::json;

    #[test]
    fn packed_qkv_norm_head() {
        let extra = json!({"max_position_embeddings": 4096});
        let c = crate::model::config::test_config("baichuan", 128, extra).unwrap();
        assert!(!c.layer.attention.alibi);
        assert_eq!(c.layer.attention.qkv, Projections::Fused);
        assert!(c.layer.stored.lm_head_rows_normalised && !c.tie_word_embeddings);
        assert_eq!(c.num_key_value_heads, c.num_attention_heads);
    }

    #[test]
    fn thirteen_b_configs_use_alibi() {
        let no_max = crate::model::config::test_config("baichuan", 128, json!({}));
        let wide = crate::model::config::test_config(
            "baichuan",
            5120,
            json!({"max_position_embeddings": 4096}),
        );
        for c in [no_max.unwrap(), wide.unwrap()] {
            assert!(c.layer.attention.alibi);
            assert!(c.layer.stored.lm_head_rows_normalised);
        }
    }
}
