//! A layer's MLP: the dense gated one, or a mixture of experts ([`super::moe`]).

use anyhow::Result;
use candle_core::Tensor;

use super::moe::MoeMlp;
use super::{gelu_tanh, silu, Linear};
use crate::family::{Activation, Projections};
use crate::model::{Model, ModelConfig};

/// `down(act(gate(x)) * up(x))`.
pub(super) struct DenseMlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl DenseMlp {
    pub fn forward(&self, c: &ModelConfig, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate.forward(x)?;
        let act = match c.layer.mlp.activation {
            Activation::Silu => silu(&gate)?,
            Activation::GeluTanh => gelu_tanh(&gate)?,
        };
        self.down.forward(&act.mul(&self.up.forward(x)?)?)
    }
}

pub(super) enum FeedForward {
    Dense(DenseMlp),
    Moe(Box<MoeMlp>),
}

impl FeedForward {
    pub fn load(model: &Model, i: usize) -> Result<FeedForward> {
        let c = &model.config;
        if let Some(moe) = c.layer.moe_at(i) {
            return Ok(FeedForward::Moe(Box::new(MoeMlp::load(model, i, moe)?)));
        }
        let (n, mlp) = (c.weights(), &c.layer.mlp);
        let linear = |module: &str| Linear::load(model, &n.module(i, module), mlp.bias);
        let (gate, up) = match mlp.gate_up {
            Projections::Separate => (linear(n.gate_proj)?, linear(n.up_proj)?),
            Projections::Fused => {
                let [gate, up] =
                    linear(n.gate_up_proj)?.split([c.intermediate_size, c.intermediate_size])?;
                (gate, up)
            }
        };
        let down = linear(n.down_proj)?;
        Ok(FeedForward::Dense(DenseMlp { gate, up, down }))
    }

    pub fn forward(&self, c: &ModelConfig, x: &Tensor) -> Result<Tensor> {
        match self {
            FeedForward::Dense(m) => m.forward(c, x),
            FeedForward::Moe(m) => m.forward(c, x),
        }
    }
}
