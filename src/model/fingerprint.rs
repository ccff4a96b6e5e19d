//! Fingerprints of weights: a sha256 that stands for the values a [`WeightSource`] read
//! returns, computed from the stored bytes without decoding them (the piece cache keys on
//! them, so an unchanged rerun reads no weight as f32).
//!
//! Every digest goes through [`StableHasher`], a length-prefixed encoding written out here,
//! so a fingerprint depends on nothing but its inputs (no `Debug` output, no hash-map order):
//! it is the same in every process, on every run and with every Rust version.
//!
//! [`WeightSource`]: super::WeightSource

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::Result;
use sha2::{Digest, Sha256};

/// sha256 standing for a tensor's values: equal fingerprints mean equal `read_f32` results.
pub type Fingerprint = [u8; 32];

/// A sha256 over a self-delimiting encoding: every string, list and byte run is prefixed by
/// its length, so two different sequences of fields never encode to the same bytes.
pub struct StableHasher(Sha256);

impl StableHasher {
    /// A hasher for one kind of digest (`domain` keeps kinds from colliding).
    pub fn new(domain: &str) -> StableHasher {
        let mut h = StableHasher(Sha256::new());
        h.str(domain);
        h
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.update(v.to_le_bytes());
        self
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.0.update(v.to_le_bytes());
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.0.update([v as u8]);
        self
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u64(b.len() as u64);
        self.0.update(b);
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn strs<S: AsRef<str>>(&mut self, list: &[S]) -> &mut Self {
        self.u64(list.len() as u64);
        for s in list {
            self.str(s.as_ref());
        }
        self
    }

    pub fn usizes(&mut self, list: &[usize]) -> &mut Self {
        self.u64(list.len() as u64);
        for &v in list {
            self.u64(v as u64);
        }
        self
    }

    /// Bytes of a run whose total length was written before (a tensor streamed in chunks).
    pub fn chunk(&mut self, b: &[u8]) -> &mut Self {
        self.0.update(b);
        self
    }

    pub fn finish(self) -> Fingerprint {
        self.0.finalize().into()
    }
}

/// The fingerprint of stored bytes: the format (`"safetensors"`, `"gguf"`), the stored dtype,
/// the shape and the bytes themselves, fed by `feed` in chunks (`len` bytes in all).
pub fn stored(
    format: &str,
    dtype: &str,
    shape: &[usize],
    len: u64,
    feed: impl FnOnce(&mut StableHasher) -> Result<()>,
) -> Result<Fingerprint> {
    let mut h = StableHasher::new("llm-convert stored tensor");
    h.str(format).str(dtype).usizes(shape).u64(len);
    feed(&mut h)?;
    Ok(h.finish())
}

/// The fingerprint of a tensor computed from others: a tag naming the transformation, its
/// parameters, and its inputs' fingerprints.
pub fn derived(tag: &str, params: &[u64], inputs: &[Fingerprint]) -> Fingerprint {
    let mut h = StableHasher::new("llm-convert derived tensor");
    h.str(tag).u64(params.len() as u64);
    for &p in params {
        h.u64(p);
    }
    h.u64(inputs.len() as u64);
    for i in inputs {
        h.bytes(i);
    }
    h.finish()
}

/// Fingerprints of stored tensors already computed, by stored name: each tensor's bytes are
/// hashed once per run (tied embeddings are read by two pieces, a stacked expert tensor by
/// every expert's view, a fused qkv by q, k and v).
#[derive(Default)]
pub struct Memo(Mutex<HashMap<String, Fingerprint>>);

impl Memo {
    /// The remembered fingerprint of `name`, else `compute`'s (remembered when it succeeds).
    pub fn get_or(
        &self,
        name: &str,
        compute: impl FnOnce() -> Result<Fingerprint>,
    ) -> Result<Fingerprint> {
        if let Some(fp) = self.0.lock().ok().and_then(|m| m.get(name).copied()) {
            return Ok(fp);
        }
        // Not held while hashing: another thread asking for another tensor is not blocked.
        let fp = compute()?;
        if let Ok(mut m) = self.0.lock() {
            m.insert(name.to_string(), fp);
        }
        Ok(fp)
    }

    /// Takes fingerprints computed by an earlier run of the same bytes (`fingerprint_store`).
    pub fn seed(&self, known: HashMap<String, Fingerprint>) {
        if let Ok(mut m) = self.0.lock() {
            m.extend(known);
        }
    }

    /// Every fingerprint remembered so far.
    pub fn snapshot(&self) -> HashMap<String, Fingerprint> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_separates_fields() {
        let ab = |a: &str, b: &str| {
            let mut h = StableHasher::new("t");
            h.str(a).str(b);
            h.finish()
        };
        assert_ne!(ab("ab", "c"), ab("a", "bc"));
        assert_eq!(ab("ab", "c"), ab("ab", "c"));
        assert_ne!(
            derived("x", &[1], &[[0; 32]]),
            derived("x", &[], &[[0; 32]])
        );
    }

    /// The encoding is fixed: this digest is the same in every build and process (checked
    /// against sha256 of the bytes the encoding is documented to write, computed in Python).
    #[test]
    fn a_fingerprint_is_stable() {
        let fp = stored("safetensors", "bf16", &[2, 3], 12, |h| {
            h.chunk(&[1; 12]);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            crate::util::hex(&fp),
            "51ca3ea19c72279f2391e1332e7bdd8de5fba7b917cf9c5da4c1c6e0b2b572ab",
            "the fingerprint encoding changed: every cache key changes with it"
        );
    }

    #[test]
    fn memo_computes_once() {
        let memo = Memo::default();
        let mut calls = 0;
        for _ in 0..3 {
            memo.get_or("t", || {
                calls += 1;
                Ok([7; 32])
            })
            .unwrap();
        }
        assert_eq!(calls, 1);
    }
}
