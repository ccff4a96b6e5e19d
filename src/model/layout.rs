//! The tensors (HF names, torch shapes) a llama-family checkpoint must contain for its config.

use super::config::ModelConfig;

/// Name and shape of every tensor the config implies, in a stable order.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, q, kv, i, d) = (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
        cfg.head_dim,
    );
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, h],
    )];
    for l in 0..cfg.num_hidden_layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        out.push((p("input_layernorm.weight"), vec![h]));
        for (name, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            out.push((p(&format!("self_attn.{name}.weight")), vec![rows, h]));
            if cfg.qkv_bias {
                out.push((p(&format!("self_attn.{name}.bias")), vec![rows]));
            }
        }
        out.push((p("self_attn.o_proj.weight"), vec![h, q]));
        if cfg.o_bias {
            out.push((p("self_attn.o_proj.bias"), vec![h]));
        }
        if cfg.qk_norm {
            out.push((p("self_attn.q_norm.weight"), vec![d]));
            out.push((p("self_attn.k_norm.weight"), vec![d]));
        }
        out.push((p("post_attention_layernorm.weight"), vec![h]));
        for (name, shape) in [
            ("gate_proj", vec![i, h]),
            ("up_proj", vec![i, h]),
            ("down_proj", vec![h, i]),
        ] {
            let rows = shape[0];
            out.push((p(&format!("mlp.{name}.weight")), shape));
            if cfg.mlp_bias {
                out.push((p(&format!("mlp.{name}.bias")), vec![rows]));
            }
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    out
}
