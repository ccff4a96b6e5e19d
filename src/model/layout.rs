//! The tensors (checkpoint names, torch shapes) a checkpoint must contain for its config:
//! the family's weight names, filtered by its layer description.

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
    let n = cfg.weights();
    let (attn, mlp) = (&cfg.layer.attention, &cfg.layer.mlp);
    let mut out = vec![(n.embed_tokens.to_string(), vec![cfg.vocab_size, h])];
    for l in 0..cfg.num_hidden_layers {
        // A linear layer: weight `[rows, cols]`, and with a bias `[rows]`.
        let linear = |out: &mut Vec<_>, module: &str, rows: usize, cols: usize, bias: bool| {
            out.push((n.weight(l, module), vec![rows, cols]));
            if bias {
                out.push((n.bias(l, module), vec![rows]));
            }
        };
        out.push((n.weight(l, n.input_norm), vec![h]));
        for (module, rows) in [(n.q_proj, q), (n.k_proj, kv), (n.v_proj, kv)] {
            linear(&mut out, module, rows, h, attn.qkv_bias);
        }
        linear(&mut out, n.o_proj, h, q, attn.o_bias);
        if attn.qk_norm {
            out.push((n.weight(l, n.q_norm), vec![d]));
            out.push((n.weight(l, n.k_norm), vec![d]));
        }
        out.push((n.weight(l, n.post_attention_norm), vec![h]));
        for (module, rows, cols) in [(n.gate_proj, i, h), (n.up_proj, i, h), (n.down_proj, h, i)] {
            linear(&mut out, module, rows, cols, mlp.bias);
        }
    }
    out.push((n.final_norm.to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push((n.lm_head.to_string(), vec![cfg.vocab_size, h]));
    }
    out
}
