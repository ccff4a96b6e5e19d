//! Lazy, one-tensor-at-a-time access to model weights, whatever the file format.

use anyhow::Result;
use candle_core::Tensor;

/// Element types a weight can be stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredDtype {
    F32,
    F16,
    Bf16,
    /// A GGUF block-quantized type (Q4_1, Q8_0, …), dequantized on read.
    Quantized,
}

/// Name, torch-order shape and stored dtype of one tensor.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TensorMeta {
    pub shape: Vec<usize>,
    pub dtype: StoredDtype,
}

/// A set of named tensors read lazily. Names and shapes are Hugging Face's (torch order).
pub trait WeightSource: Send + Sync {
    /// Metadata of a tensor, without reading its data.
    fn meta(&self, name: &str) -> Option<TensorMeta>;
    /// All tensor names, sorted.
    fn names(&self) -> Vec<String>;
    /// Reads one tensor and converts it to f32 on the CPU.
    fn read_f32(&self, name: &str) -> Result<Tensor>;
    /// Where the weights come from, for messages.
    fn describe(&self) -> String;
}
