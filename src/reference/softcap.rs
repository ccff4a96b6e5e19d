//! tanh soft-capping as transformers' gemma2 computes it: `tanh(x / c) · c`.

use anyhow::Result;
use candle_core::Tensor;

/// `x` soft-capped by `cap`, or `x` itself without one.
pub fn softcap(x: Tensor, cap: Option<f64>) -> Result<Tensor> {
    Ok(match cap {
        Some(c) => ((x / c)?.tanh()? * c)?,
        None => x,
    })
}
