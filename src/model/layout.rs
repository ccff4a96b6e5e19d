//! The tensors (checkpoint names, torch shapes) a checkpoint must contain for its config:
//! the family's weight names, filtered by its layer description.

use super::config::ModelConfig;
use crate::family::Projections;

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
        match attn.qkv {
            Projections::Separate => {
                for (module, rows) in [(n.q_proj, q), (n.k_proj, kv), (n.v_proj, kv)] {
                    linear(&mut out, module, rows, h, attn.qkv_bias);
                }
            }
            Projections::Fused => linear(&mut out, n.qkv_proj, q + 2 * kv, h, attn.qkv_bias),
        }
        linear(&mut out, n.o_proj, h, q, attn.o_bias);
        if attn.qk_norm {
            out.push((n.weight(l, n.q_norm), vec![d]));
            out.push((n.weight(l, n.k_norm), vec![d]));
        }
        if cfg.layer.branch_output_norms {
            out.push((n.weight(l, n.attn_output_norm), vec![h]));
            out.push((n.weight(l, n.mlp_output_norm), vec![h]));
        }
        out.push((n.weight(l, n.post_attention_norm), vec![h]));
        if let Some(moe) = cfg.layer.moe_at(l) {
            out.extend(super::layout_moe::moe_tensors(cfg, l, moe));
            continue;
        }
        match mlp.gate_up {
            Projections::Separate => {
                for (module, rows) in [(n.gate_proj, i), (n.up_proj, i)] {
                    linear(&mut out, module, rows, h, mlp.bias);
                }
            }
            Projections::Fused => linear(&mut out, n.gate_up_proj, 2 * i, h, mlp.bias),
        }
        linear(&mut out, n.down_proj, h, i, mlp.bias);
    }
    out.push((n.final_norm.to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push((n.lm_head.to_string(), vec![cfg.vocab_size, h]));
    }
    out
}
