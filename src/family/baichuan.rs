//! baichuan (remote code `modeling_baichuan.py`: Baichuan2-7B): llama's block with q/k/v
//! packed into `W_pack` (rows q | k | v, no bias), multi-head attention (no
//! `num_key_value_heads`), rotary base 10000, and NormHead: the logits use the lm_head rows
//! L2-normalised (`nn.functional.normalize(self.weight)`, done once at the first forward by
//! the remote code), done here when the lm_head is read (`model::repack`).
//! Baichuan2-13B uses ALiBi position biases instead of rotary; it is refused (see [`alibi`]).

use super::{llama, names, Dims, Family, LayerSpec, Projections};
use crate::error::InputError;
use crate::model::config::ConfigKeys;

pub static FAMILY: Family = Family {
    model_type: "baichuan",
    summary: "Baichuan2-7B: q/k/v packed in `W_pack` (q, k, v rows), NormHead (lm_head rows \
              L2-normalised on read); 13B's ALiBi refused",
    verified: "reference f32 (from a llama twin); ONNX chain (static, dynamic, history KV); \
               verify bf16 (static, dynamic); contract w4bf16",
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
    alibi(keys, dims)?;
    let mut spec = LayerSpec::llama(false, false, false);
    spec.attention.qkv = Projections::Fused;
    spec.stored.lm_head_rows_normalised = true;
    Ok(spec)
}

/// Nothing in a Baichuan config names its position encoding: the 13B models' remote code
/// (ALiBi) ships a config class without `max_position_embeddings` (it has only
/// `model_max_length`) and they are 5120 wide; the 7B's (rotary) has both keys and is 4096.
fn alibi(keys: &ConfigKeys, dims: &Dims) -> Result<(), InputError> {
    let why = if dims.hidden_size == ALIBI_HIDDEN_SIZE {
        format!("hidden_size {ALIBI_HIDDEN_SIZE} (Baichuan2-13B's width)")
    } else if keys.present("max_position_embeddings").is_none() {
        "no max_position_embeddings (Baichuan2-13B's config has only model_max_length)".to_string()
    } else {
        return Ok(());
    };
    Err(keys.bad(
        "model_type",
        format!(
            "\"baichuan\" with {why} is Baichuan2-13B, which adds ALiBi position biases to \
             the attention scores instead of rotary embeddings: not supported"
        ),
        "only Baichuan2-7B (rotary, hidden_size 4096, with max_position_embeddings) converts",
    ))
}

#[cfg(test)]
mod tests {
    use crate::family::Projections;
    use serde_json::json;

    #[test]
    fn packed_qkv_norm_head() {
        let extra = json!({"max_position_embeddings": 4096});
        let c = crate::model::config::test_config("baichuan", 128, extra).unwrap();
        assert_eq!(c.layer.attention.qkv, Projections::Fused);
        assert!(c.layer.stored.lm_head_rows_normalised && !c.tie_word_embeddings);
        assert_eq!(c.num_key_value_heads, c.num_attention_heads);
    }

    #[test]
    fn alibi_configs_are_refused() {
        let no_max = crate::model::config::test_config("baichuan", 128, json!({}));
        let wide = crate::model::config::test_config(
            "baichuan",
            5120,
            json!({"max_position_embeddings": 4096}),
        );
        for e in [no_max.unwrap_err(), wide.unwrap_err()] {
            let text = e.to_string();
            assert!(
                text.contains("ALiBi") && text.contains("config.json"),
                "{text}"
            );
        }
    }
}
