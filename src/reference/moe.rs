//! A sparse layer's MLP as transformers' Qwen2MoeSparseMoeBlock computes it: softmax over the
//! router logits, the top k experts per token (weights renormalised to sum 1 with
//! `norm_topk_prob`), each chosen expert run on its tokens and scaled by its weight, plus the
//! sigmoid-gated shared expert. Only the chosen experts are computed.

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::mlp::DenseMlp;
use super::Linear;
use crate::family::moe::{Moe, Proj};
use crate::model::{Model, ModelConfig};

pub(super) struct MoeMlp {
    moe: Moe,
    router: Linear,
    experts: Vec<DenseMlp>,
    /// The shared expert and its `[H] → [1]` gate.
    shared: Option<(DenseMlp, Linear)>,
}

impl MoeMlp {
    pub fn load(model: &Model, i: usize, moe: &Moe) -> Result<MoeMlp> {
        let n = model.config.weights();
        let linear = |module: String| Linear::load(model, &module, false);
        let mlp = |m: &dyn Fn(Proj) -> String| -> Result<DenseMlp> {
            Ok(DenseMlp {
                gate: linear(m(Proj::Gate))?,
                up: linear(m(Proj::Up))?,
                down: linear(m(Proj::Down))?,
            })
        };
        let experts = (0..moe.num_experts)
            .map(|e| mlp(&|p| moe.expert(n, i, e, p)))
            .collect::<Result<Vec<_>>>()?;
        let shared = match moe.shared_expert {
            Some(_) => Some((
                mlp(&|p| moe.shared(n, i, p))?,
                linear(moe.shared_gate(n, i))?,
            )),
            None => None,
        };
        Ok(MoeMlp {
            moe: *moe,
            router: linear(moe.router(n, i))?,
            experts,
            shared,
        })
    }

    /// `x` `[t, H]` → `[t, H]`.
    pub fn forward(&self, c: &ModelConfig, x: &Tensor) -> Result<Tensor> {
        let t = x.dim(0)?;
        let probs = super::softmax_last(&self.router.forward(x)?)?.to_vec2::<f32>()?;
        // Per expert: the tokens routed to it and their weights.
        let mut routed: Vec<(Vec<u32>, Vec<f32>)> = vec![(vec![], vec![]); self.moe.num_experts];
        for (tok, p) in probs.iter().enumerate() {
            let top = top_k(p, self.moe.top_k);
            let total: f32 = top.iter().map(|&e| p[e]).sum();
            for e in top {
                let w = if self.moe.norm_topk_prob {
                    p[e] / total
                } else {
                    p[e]
                };
                routed[e].0.push(tok as u32);
                routed[e].1.push(w);
            }
        }
        let mut out = x.zeros_like()?;
        for (e, (tokens, weights)) in routed.iter().enumerate() {
            if tokens.is_empty() {
                continue;
            }
            let idx = Tensor::new(tokens.as_slice(), &Device::Cpu)?;
            let y = self.experts[e].forward(c, &x.index_select(&idx, 0)?)?;
            let w = Tensor::from_vec(weights.clone(), (tokens.len(), 1), &Device::Cpu)?;
            out = out.index_add(&idx, &y.broadcast_mul(&w)?, 0)?;
        }
        if let Some((mlp, gate)) = &self.shared {
            let sig = sigmoid(&gate.forward(x)?)?;
            out = (out + mlp.forward(c, x)?.broadcast_mul(&sig)?)?;
        }
        debug_assert_eq!(out.dim(0)?, t);
        Ok(out)
    }
}

fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok((x.neg()?.exp()? + 1.0)?.recip()?)
}

/// Indices of the `k` largest values, largest first (the lower index first on ties, as
/// torch.topk returns them on the CPU).
fn top_k(p: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

#[cfg(test)]
mod tests {
    #[test]
    fn top_k_picks_the_largest() {
        assert_eq!(super::top_k(&[0.1, 0.4, 0.2, 0.3], 2), vec![1, 3]);
        assert_eq!(super::top_k(&[0.25, 0.25, 0.5], 2), vec![2, 0]);
    }
}
