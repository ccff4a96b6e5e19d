//! transformers 5 keeps a MoE layer's experts stacked in memory (`mlp.experts.gate_up_proj`
//! `[E, 2I, H]`, rows gate | up; `mlp.experts.down_proj` `[E, H, I]`) and writes them so with
//! `save_pretrained(save_original_format=False)`. The Hub (and the default save) stores one
//! tensor per expert (`mlp.experts.{e}.gate_proj.weight`, …): that is the layout the rest of
//! the tool reads, so a stacked checkpoint is shown through per-expert views of its tensors.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use anyhow::Result;
use candle_core::Tensor;

use super::fingerprint::{self, Fingerprint};
use super::weights::{TensorMeta, WeightSource};

/// One per-expert view: expert `expert`'s rows `start..start+rows` of a stacked tensor.
struct View {
    stacked: String,
    expert: usize,
    start: usize,
    meta: TensorMeta,
}

pub struct PerExpert {
    inner: Box<dyn WeightSource>,
    views: HashMap<String, View>,
    /// The last stacked tensors read (gate_up and down alternate), so reading every expert of
    /// a layer reads each stacked tensor once.
    recent: Mutex<Vec<(String, Tensor)>>,
}

/// `inner` with per-expert views of its stacked expert tensors (`inner` itself if it has
/// none).
pub fn per_expert(inner: Box<dyn WeightSource>) -> Box<dyn WeightSource> {
    let mut views = HashMap::new();
    for name in inner.names() {
        let Some(meta) = inner.meta(&name) else {
            continue;
        };
        let &[experts, rows, cols] = meta.shape.as_slice() else {
            continue;
        };
        let mut add = |e: usize, proj: &str, start: usize, rows: usize, prefix: &str| {
            let meta = TensorMeta {
                shape: vec![rows, cols],
                dtype: meta.dtype,
            };
            let view = View {
                stacked: name.clone(),
                expert: e,
                start,
                meta,
            };
            views.insert(format!("{prefix}.{e}.{proj}.weight"), view);
        };
        if let Some(prefix) = name.strip_suffix(".gate_up_proj") {
            if rows % 2 == 0 {
                for e in 0..experts {
                    add(e, "gate_proj", 0, rows / 2, prefix);
                    add(e, "up_proj", rows / 2, rows / 2, prefix);
                }
            }
        } else if let Some(prefix) = name.strip_suffix(".down_proj") {
            for e in 0..experts {
                add(e, "down_proj", 0, rows, prefix);
            }
        }
    }
    if views.is_empty() {
        return inner;
    }
    Box::new(PerExpert {
        inner,
        views,
        recent: Mutex::new(Vec::new()),
    })
}

impl PerExpert {
    fn stacked(&self, name: &str) -> Result<Tensor> {
        let mut recent = self
            .recent
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        if let Some((_, t)) = recent.iter().find(|(n, _)| n == name) {
            return Ok(t.clone());
        }
        let t = self.inner.read_f32(name)?;
        if recent.len() == 2 {
            recent.remove(0);
        }
        recent.push((name.to_string(), t.clone()));
        Ok(t)
    }
}

impl WeightSource for PerExpert {
    fn meta(&self, name: &str) -> Option<TensorMeta> {
        match self.views.get(name) {
            Some(v) => Some(v.meta.clone()),
            None => self.inner.meta(name),
        }
    }

    fn names(&self) -> Vec<String> {
        let mut all: BTreeMap<String, ()> =
            self.inner.names().into_iter().map(|n| (n, ())).collect();
        all.extend(self.views.keys().map(|n| (n.clone(), ())));
        all.into_keys().collect()
    }

    fn read_f32(&self, name: &str) -> Result<Tensor> {
        let Some(v) = self.views.get(name) else {
            return self.inner.read_f32(name);
        };
        let t = self.stacked(&v.stacked)?.get(v.expert)?;
        Ok(t.narrow(0, v.start, v.meta.shape[0])?.contiguous()?)
    }

    fn fingerprint(&self, name: &str) -> Result<Fingerprint> {
        let Some(v) = self.views.get(name) else {
            return self.inner.fingerprint(name);
        };
        let rows = [v.expert, v.start, v.meta.shape[0]].map(|x| x as u64);
        let stacked = self.inner.fingerprint(&v.stacked)?;
        Ok(fingerprint::derived(
            "expert rows of a stacked tensor",
            &rows,
            &[stacked],
        ))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn stored_fingerprints(&self) -> Option<crate::model::weights::StoredFingerprints<'_>> {
        self.inner.stored_fingerprints()
    }
}
