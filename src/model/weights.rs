//! Lazy, one-tensor-at-a-time access to model weights, whatever the file format.

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{Storage, Tensor};

use super::fingerprint::{self, Fingerprint};
use crate::error::InputError;

/// Element types a weight can be stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredDtype {
    F32,
    F16,
    Bf16,
    /// A GGUF block-quantized type (Q4_1, Q8_0, …), dequantized on read.
    Quantized,
    /// Packed integers of a pre-quantized checkpoint (GPTQ / AWQ `qweight`, `qzeros`,
    /// `g_idx`): read only as integers ([`WeightSource::read_i32`]), never as floats.
    I32,
    /// fp8 (OCP e4m3fn) weights of an fp8 checkpoint: read only with their block scales
    /// (`quant::fp8`), through [`WeightSource::read_f8`], never as floats by themselves.
    F8E4m3,
}

/// Name, torch-order shape and stored dtype of one tensor.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TensorMeta {
    pub shape: Vec<usize>,
    pub dtype: StoredDtype,
}

/// See [`WeightSource::stored_fingerprints`].
pub struct StoredFingerprints<'a> {
    pub memo: &'a super::fingerprint::Memo,
    pub files: &'a [(PathBuf, crate::file_stamp::FileStamp)],
}

/// A set of named tensors read lazily. Names and shapes are Hugging Face's (torch order).
pub trait WeightSource: Send + Sync {
    /// Metadata of a tensor, without reading its data.
    fn meta(&self, name: &str) -> Option<TensorMeta>;
    /// All tensor names, sorted.
    fn names(&self) -> Vec<String>;
    /// Reads one tensor and converts it to f32 on the CPU.
    fn read_f32(&self, name: &str) -> Result<Tensor>;
    /// Stands for what [`Self::read_f32`] returns, computed from the stored bytes without
    /// decoding them (see [`fingerprint`](super::fingerprint)): a stored tensor's bytes, dtype
    /// and shape; a derived one's inputs with a tag of the transformation.
    fn fingerprint(&self, name: &str) -> Result<Fingerprint>;
    /// Where the weights come from, for messages.
    fn describe(&self) -> String;
    /// The memo of stored tensors' fingerprints and the files they hash, each with its stamp
    /// when opened, so a later run can take them over (`fingerprint_store`); views pass their
    /// source's on.
    fn stored_fingerprints(&self) -> Option<StoredFingerprints<'_>> {
        None
    }
    /// Reads an int32 tensor's values exactly (packed quantized weights). Sources without
    /// integer tensors have none.
    fn read_i32(&self, name: &str) -> Result<Vec<i32>> {
        anyhow::bail!(
            "tensor \"{name}\" is not an int32 tensor of {}",
            self.describe()
        )
    }
    /// Reads an fp8 tensor's values exactly, without any scale. Sources without fp8 tensors
    /// have none.
    fn read_f8(&self, name: &str) -> Result<Vec<f32>> {
        anyhow::bail!(
            "tensor \"{name}\" is not an fp8 tensor of {}",
            self.describe()
        )
    }
}

/// A [`WeightSource`] whose reads refuse NaN / Inf values (naming the tensor and `source`),
/// unless allowed: a checkpoint with them converts into a bmodel that silently outputs garbage.
pub struct FiniteWeights {
    inner: Box<dyn WeightSource>,
    source: PathBuf,
    allow_non_finite: bool,
}

impl FiniteWeights {
    pub fn new(inner: Box<dyn WeightSource>, source: &Path) -> FiniteWeights {
        FiniteWeights {
            inner,
            source: source.to_path_buf(),
            allow_non_finite: false,
        }
    }

    /// Reads proceed whatever the values are.
    pub fn allow_non_finite(&mut self) {
        self.allow_non_finite = true;
    }
}

impl WeightSource for FiniteWeights {
    fn meta(&self, name: &str) -> Option<TensorMeta> {
        self.inner.meta(name)
    }

    fn names(&self) -> Vec<String> {
        self.inner.names()
    }

    fn read_f32(&self, name: &str) -> Result<Tensor> {
        let t = self.inner.read_f32(name)?;
        if !self.allow_non_finite {
            if let Some((at, value)) = first_non_finite(&t)? {
                return Err(InputError::invalid(
                    &self.source,
                    format!(
                        "tensor \"{name}\" holds {value} at element {at} (of {}) in {}",
                        t.elem_count(),
                        self.inner.describe()
                    ),
                    "the checkpoint is corrupt: re-download it (--allow-non-finite proceeds anyway)",
                )
                .into());
            }
        }
        Ok(t)
    }

    /// A run that lets non-finite values through keys apart: its pieces are never reused by a
    /// run that would have refused them.
    fn fingerprint(&self, name: &str) -> Result<Fingerprint> {
        let fp = self.inner.fingerprint(name)?;
        Ok(match self.allow_non_finite {
            true => fingerprint::derived("non-finite values allowed", &[], &[fp]),
            false => fp,
        })
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn stored_fingerprints(&self) -> Option<StoredFingerprints<'_>> {
        self.inner.stored_fingerprints()
    }
}

/// The first NaN or infinite element of an f32 tensor, with its flat index.
fn first_non_finite(t: &Tensor) -> Result<Option<(usize, f32)>> {
    let (storage, layout) = t.storage_and_layout();
    let found = match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(cpu), Some((start, end))) => {
            let values = &cpu.as_slice::<f32>()?[start..end];
            values
                .iter()
                .position(|x| !x.is_finite())
                .map(|i| (i, values[i]))
        }
        _ => {
            drop(storage);
            let values = t.flatten_all()?.to_vec1::<f32>()?;
            values
                .iter()
                .position(|x| !x.is_finite())
                .map(|i| (i, values[i]))
        }
    };
    Ok(found)
}

/// Where a `&dyn WeightSource` is wanted (the ONNX writer).
impl AsRef<dyn WeightSource> for FiniteWeights {
    fn as_ref(&self) -> &(dyn WeightSource + 'static) {
        self
    }
}

/// The field stays usable as the `Box<dyn WeightSource>` it replaced (no trait import).
impl std::ops::Deref for FiniteWeights {
    type Target = dyn WeightSource;
    fn deref(&self) -> &Self::Target {
        self
    }
}
