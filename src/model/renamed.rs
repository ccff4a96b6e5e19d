//! A [`WeightSource`] that finds tensors under the names another checkpoint layout uses: a
//! VLM stores its text part as `language_model.model.layers.0…` (InternVL) or
//! `model.language_model.layers.0…` (transformers 5 Qwen2.5-VL), while the text family reads
//! `model.layers.0…`. Everything downstream keeps the text family's names.

use anyhow::Result;
use candle_core::Tensor;

use super::fingerprint::Fingerprint;
use super::weights::{TensorMeta, WeightSource};

pub struct RenamedWeights {
    inner: Box<dyn WeightSource>,
    /// (prefix the reader asks for, prefix the checkpoint may store instead), tried in order.
    renames: &'static [(&'static str, &'static str)],
}

impl RenamedWeights {
    pub fn new(
        inner: Box<dyn WeightSource>,
        renames: &'static [(&'static str, &'static str)],
    ) -> RenamedWeights {
        RenamedWeights { inner, renames }
    }

    /// The stored name of `name`: its renamed form if the checkpoint has that, else itself.
    fn stored(&self, name: &str) -> String {
        for (from, to) in self.renames {
            if let Some(rest) = name.strip_prefix(from) {
                let renamed = format!("{to}{rest}");
                if self.inner.meta(&renamed).is_some() {
                    return renamed;
                }
            }
        }
        name.to_string()
    }
}

impl WeightSource for RenamedWeights {
    fn meta(&self, name: &str) -> Option<TensorMeta> {
        self.inner.meta(&self.stored(name))
    }

    /// The stored names, each under the name readers use for it.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .names()
            .into_iter()
            .map(|n| {
                self.renames
                    .iter()
                    .find_map(|(from, to)| n.strip_prefix(to).map(|rest| format!("{from}{rest}")))
                    .unwrap_or(n)
            })
            .collect();
        names.sort();
        names
    }

    fn read_f32(&self, name: &str) -> Result<Tensor> {
        self.inner.read_f32(&self.stored(name))
    }

    fn fingerprint(&self, name: &str) -> Result<Fingerprint> {
        self.inner.fingerprint(&self.stored(name))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn stored_fingerprints(&self) -> Option<crate::model::weights::StoredFingerprints<'_>> {
        self.inner.stored_fingerprints()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::StoredDtype;

    struct Names(Vec<&'static str>);

    impl WeightSource for Names {
        fn meta(&self, name: &str) -> Option<TensorMeta> {
            self.0.contains(&name).then(|| TensorMeta {
                shape: vec![1],
                dtype: StoredDtype::F32,
            })
        }
        fn names(&self) -> Vec<String> {
            self.0.iter().map(|s| s.to_string()).collect()
        }
        fn read_f32(&self, name: &str) -> Result<Tensor> {
            anyhow::bail!("read {name}")
        }
        fn fingerprint(&self, name: &str) -> Result<Fingerprint> {
            anyhow::bail!("fingerprint {name}")
        }
        fn describe(&self) -> String {
            "test".into()
        }
    }

    const RULES: &[(&str, &str)] = &[
        ("model.", "language_model.model."),
        ("lm_head.", "x.lm_head."),
    ];

    #[test]
    fn finds_renamed_and_plain_names() {
        let w = RenamedWeights::new(
            Box::new(Names(vec![
                "language_model.model.norm.weight",
                "lm_head.weight",
                "mlp1.0.weight",
            ])),
            RULES,
        );
        assert!(w.meta("model.norm.weight").is_some());
        assert!(w.meta("lm_head.weight").is_some());
        assert!(w.meta("mlp1.0.weight").is_some());
        assert!(w.meta("model.embed_tokens.weight").is_none());
        assert_eq!(
            w.names(),
            vec!["lm_head.weight", "mlp1.0.weight", "model.norm.weight"]
        );
        let e = w.read_f32("model.norm.weight").unwrap_err().to_string();
        assert_eq!(e, "read language_model.model.norm.weight");
        let e = w.fingerprint("model.norm.weight").unwrap_err().to_string();
        assert_eq!(e, "fingerprint language_model.model.norm.weight");
    }
}
