//! The tensors of a sparse layer's MLP (see [`crate::family::moe`]): router, experts and the
//! shared expert, in place of the dense gate/up/down.

use super::config::ModelConfig;
use crate::family::moe::{Moe, Proj};

/// Name and torch shape of layer `l`'s MoE tensors, in a stable order.
pub fn moe_tensors(cfg: &ModelConfig, l: usize, moe: &Moe) -> Vec<(String, Vec<usize>)> {
    let (h, i, n) = (cfg.hidden_size, moe.intermediate_size, cfg.weights());
    let w = |module: String| format!("{module}.weight");
    let mut out = vec![(w(moe.router(n, l)), vec![moe.num_experts, h])];
    for e in 0..moe.num_experts {
        out.push((w(moe.expert(n, l, e, Proj::Gate)), vec![i, h]));
        out.push((w(moe.expert(n, l, e, Proj::Up)), vec![i, h]));
        out.push((w(moe.expert(n, l, e, Proj::Down)), vec![h, i]));
    }
    if let Some(si) = moe.shared_expert {
        out.push((w(moe.shared(n, l, Proj::Gate)), vec![si, h]));
        out.push((w(moe.shared(n, l, Proj::Up)), vec![si, h]));
        out.push((w(moe.shared(n, l, Proj::Down)), vec![h, si]));
        out.push((w(moe.shared_gate(n, l)), vec![1, h]));
    }
    out
}
