//! The one place where checkpoint layouts that differ from the plain one ([`Stored`]) are
//! undone: a [`WeightSource`] that rewrites those tensors as they are read, so the graph
//! (ONNX initializers), the reference and every other reader see q | k | v fused rows and the
//! lm_head as it is used.

use anyhow::{Context, Result};
use candle_core::{Tensor, D};

use super::config::ModelConfig;
use super::fingerprint::{self, Fingerprint};
use super::weights::{TensorMeta, WeightSource};
use crate::family::{Projections, Stored};

/// `inner` as the family's layer reads it (`inner` itself when the checkpoint is plain).
pub fn view(cfg: &ModelConfig, inner: Box<dyn WeightSource>) -> Box<dyn WeightSource> {
    let stored = cfg.layer.stored;
    if stored == Stored::PLAIN {
        return inner;
    }
    let n = cfg.weights();
    let mut grouped_qkv = Vec::new();
    if stored.qkv_grouped_per_kv_head && cfg.layer.attention.qkv == Projections::Fused {
        for l in 0..cfg.num_hidden_layers {
            grouped_qkv.push(n.weight(l, n.qkv_proj));
            grouped_qkv.push(n.bias(l, n.qkv_proj));
        }
    }
    let normalised_head =
        (stored.lm_head_rows_normalised && !cfg.tie_word_embeddings).then(|| n.lm_head.to_string());
    Box::new(Repacked {
        inner,
        grouped_qkv,
        groups: cfg.num_attention_heads / cfg.num_key_value_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        normalised_head,
    })
}

struct Repacked {
    inner: Box<dyn WeightSource>,
    /// wqkv weights and biases stored grouped per kv head.
    grouped_qkv: Vec<String>,
    groups: usize,
    kv_heads: usize,
    head_dim: usize,
    /// The lm_head whose rows are used L2-normalised.
    normalised_head: Option<String>,
}

impl WeightSource for Repacked {
    fn meta(&self, name: &str) -> Option<TensorMeta> {
        self.inner.meta(name)
    }

    fn names(&self) -> Vec<String> {
        self.inner.names()
    }

    fn read_f32(&self, name: &str) -> Result<Tensor> {
        let t = self.inner.read_f32(name)?;
        if self.grouped_qkv.iter().any(|n| n == name) {
            return ungroup_qkv(&t, self.kv_heads, self.groups, self.head_dim)
                .with_context(|| format!("regrouping {name} to q, k, v rows"));
        }
        if self.normalised_head.as_deref() == Some(name) {
            return l2_normalise_rows(&t).with_context(|| format!("normalising {name}'s rows"));
        }
        Ok(t)
    }

    fn fingerprint(&self, name: &str) -> Result<Fingerprint> {
        let fp = self.inner.fingerprint(name)?;
        if self.grouped_qkv.iter().any(|n| n == name) {
            let shape = [self.kv_heads, self.groups, self.head_dim].map(|v| v as u64);
            return Ok(fingerprint::derived("qkv rows ungrouped", &shape, &[fp]));
        }
        if self.normalised_head.as_deref() == Some(name) {
            return Ok(fingerprint::derived("rows l2-normalised", &[], &[fp]));
        }
        Ok(fp)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn stored_fingerprints(&self) -> Option<crate::model::weights::StoredFingerprints<'_>> {
        self.inner.stored_fingerprints()
    }
}

/// Rows `[kv_heads][groups q heads, 1 k head, 1 v head][head_dim]` (weight `[rows, cols]` or
/// bias `[rows]`) → q rows (head `j·groups + i` from group j's i-th), then k, then v.
pub fn ungroup_qkv(t: &Tensor, kv_heads: usize, groups: usize, head_dim: usize) -> Result<Tensor> {
    let rows = t.dim(0)?;
    anyhow::ensure!(
        rows == kv_heads * (groups + 2) * head_dim,
        "{rows} rows is not {kv_heads} kv heads × ({groups} q + k + v) × head_dim {head_dim}"
    );
    let cols = t.elem_count() / rows;
    let g = t.reshape((kv_heads, groups + 2, head_dim * cols))?;
    let part = |start: usize, len: usize| -> Result<Tensor> {
        Ok(g.narrow(1, start, len)?
            .contiguous()?
            .reshape((kv_heads * len * head_dim, cols))?)
    };
    let qkv = Tensor::cat(
        &[part(0, groups)?, part(groups, 1)?, part(groups + 1, 1)?],
        0,
    )?;
    Ok(qkv.reshape(t.dims())?)
}

/// Each row divided by its L2 norm (at least 1e-12), as `torch.nn.functional.normalize`.
pub fn l2_normalise_rows(t: &Tensor) -> Result<Tensor> {
    let norm = t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    Ok(t.broadcast_div(&norm)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn ungroups_rows_per_kv_head() {
        // 2 kv heads, 2 q heads each, head_dim 1: rows q0 q1 k0 v0 q2 q3 k1 v1.
        let rows: Vec<f32> = vec![0., 1., 10., 20., 2., 3., 11., 21.];
        let t = Tensor::from_vec(rows, (8,), &Device::Cpu).unwrap();
        let u = ungroup_qkv(&t, 2, 2, 1).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(u, vec![0., 1., 2., 3., 10., 11., 20., 21.]);
        let w = Tensor::arange(0f32, 16., &Device::Cpu)
            .unwrap()
            .reshape((8, 2))
            .unwrap();
        let u = ungroup_qkv(&w, 2, 2, 1).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(u[2], vec![8., 9.]);
        assert_eq!(u[4], vec![4., 5.]);
        assert!(ungroup_qkv(&w, 2, 1, 1).is_err());
    }

    #[test]
    fn normalises_rows() {
        let t = Tensor::new(&[[3f32, 4.], [0., 0.]], &Device::Cpu).unwrap();
        let n = l2_normalise_rows(&t).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(n, vec![vec![0.6, 0.8], vec![0., 0.]]);
    }
}
