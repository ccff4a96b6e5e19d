//! GGUF checkpoints (llama.cpp format): config from metadata, tensors dequantized on read and
//! renamed to Hugging Face names.
//!
//! llama.cpp's converter permutes the q/k projection rows of some architectures (`llama`: to
//! interleaved rotary pairs; the family registry says which); we undo it so the weights mean
//! what the HF checkpoint meant.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use super::fingerprint::{self, Fingerprint, Memo};
use super::gguf_linear::{self, Handling, LinearFormat};
use super::quant::{A16Part, LastLayer, QuantizedLinear};
use super::weights::{StoredDtype, StoredFingerprints, TensorMeta, WeightSource};
use crate::error::InputError;
use crate::family::{Family, Gguf};
use crate::file_stamp::FileStamp;

pub struct GgufFile {
    path: PathBuf,
    content: Content,
    arch: String,
    /// The family llama.cpp wrote as `arch`.
    family: &'static Family,
    gguf: Gguf,
    /// HF name → GGUF name.
    hf_to_gguf: HashMap<String, String>,
    n_head: usize,
    n_kv_head: usize,
    /// Of the stored blocks, by GGUF name.
    fingerprints: Memo,
    /// The path with the stamp of the file opened (every read opens the path again).
    stamp: [(PathBuf, FileStamp); 1],
    /// The block linear whose A16 parts were read last.
    last_a16: LastLayer,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile, InputError> {
        let file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                InputError::missing(path, "the GGUF file given with -m")
            } else {
                InputError::invalid(path, format!("cannot open: {e}"), "check permissions")
            }
        })?;
        let meta = file.metadata().map_err(|e| {
            InputError::invalid(path, format!("cannot stat: {e}"), "check the file")
        })?;
        let (file_len, stamp) = (meta.len(), FileStamp::of_metadata(&meta));
        let unreadable = |why: String| {
            InputError::invalid(
                path,
                format!("not a readable GGUF file: {why}"),
                "re-download the file; it may be truncated",
            )
        };
        // Our own checked walk first: candle's reader panics on some values (alignment 0).
        let mut reader = BufReader::new(file);
        let header_end = super::gguf_header::check(&mut reader, file_len).map_err(unreadable)?;
        // candle's reader asks the file for its position at every string (a syscall each: a
        // tokenizer's 50k-150k strings took most of an unchanged rerun): it reads the header,
        // checked to lie within the file, from memory.
        let mut header =
            vec![0u8; usize::try_from(header_end).map_err(|e| unreadable(e.to_string()))?];
        reader
            .seek(std::io::SeekFrom::Start(0))
            .and_then(|_| reader.read_exact(&mut header))
            .map_err(|e| unreadable(e.to_string()))?;
        let content = Content::read(&mut std::io::Cursor::new(&header))
            .map_err(|e| unreadable(e.to_string()))?;
        let arch = match content.metadata.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(InputError::invalid(
                    path,
                    "metadata has no general.architecture",
                    "this GGUF was not written by llama.cpp's converter",
                ))
            }
        };
        let (family, gguf) = match crate::family::by_gguf_arch(&arch) {
            Some(found) => found,
            None => {
                return Err(InputError::invalid(
                    path,
                    format!("unsupported GGUF architecture \"{arch}\""),
                    format!(
                        "supported architectures: {}",
                        crate::family::supported_gguf_archs()
                    ),
                ))
            }
        };
        let mut hf_to_gguf = HashMap::new();
        for name in content.tensor_infos.keys() {
            let hf = hf_name(name).ok_or_else(|| {
                InputError::invalid(
                    path,
                    format!("unknown tensor name \"{name}\""),
                    "only llama-family GGUF tensor names are understood",
                )
            })?;
            hf_to_gguf.insert(hf, name.clone());
        }
        let mut g = GgufFile {
            path: path.to_path_buf(),
            content,
            arch,
            family,
            gguf,
            hf_to_gguf,
            n_head: 0,
            n_kv_head: 0,
            fingerprints: Memo::default(),
            stamp: [(path.to_path_buf(), stamp)],
            last_a16: LastLayer::default(),
        };
        g.n_head = g.meta_usize("attention.head_count")?;
        g.n_kv_head = g
            .meta_usize_opt("attention.head_count_kv")?
            .unwrap_or(g.n_head);
        Ok(g)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    fn meta_usize_opt(&self, key: &str) -> Result<Option<usize>, InputError> {
        let full = format!("{}.{key}", self.arch);
        match self.content.metadata.get(&full) {
            None => Ok(None),
            Some(v) => v.to_u64().map(|n| Some(n as usize)).map_err(|e| {
                InputError::invalid(
                    &self.path,
                    format!("metadata {full}: {e}"),
                    "re-convert the model",
                )
            }),
        }
    }

    fn meta_usize(&self, key: &str) -> Result<usize, InputError> {
        self.meta_usize_opt(key)?.ok_or_else(|| {
            InputError::invalid(
                &self.path,
                format!("metadata key {}.{key} is missing", self.arch),
                "re-convert the model with a current llama.cpp",
            )
        })
    }

    fn meta_f64(&self, key: &str) -> Option<f64> {
        let full = format!("{}.{key}", self.arch);
        self.content.metadata.get(&full).and_then(|v| match v {
            Value::F32(x) => Some(*x as f64),
            Value::F64(x) => Some(*x),
            other => other.to_u64().ok().map(|n| n as f64),
        })
    }

    fn global_u32(&self, key: &str) -> Option<u32> {
        self.content.metadata.get(key).and_then(|v| v.to_u32().ok())
    }

    /// An HF-style `config.json` built from the GGUF metadata.
    pub fn hf_config(&self) -> Result<serde_json::Value, InputError> {
        let embed = self.meta("model.embed_tokens.weight").ok_or_else(|| {
            InputError::invalid(
                &self.path,
                "no token_embd.weight tensor",
                "re-convert the model",
            )
        })?;
        let hidden = self.meta_usize("embedding_length")?;
        let mut cfg = json!({
            "architectures": [self.gguf.hf_architecture],
            "model_type": self.family.model_type,
            "hidden_size": hidden,
            "intermediate_size": self.meta_usize("feed_forward_length")?,
            "num_hidden_layers": self.meta_usize("block_count")?,
            "num_attention_heads": self.n_head,
            "num_key_value_heads": self.n_kv_head,
            "vocab_size": embed.shape.first().copied().unwrap_or(0),
            "max_position_embeddings": self.meta_usize_opt("context_length")?.unwrap_or(2048),
            "rope_theta": self.meta_f64("rope.freq_base").unwrap_or(10000.0),
            "rms_norm_eps": self.meta_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            "tie_word_embeddings": !self.hf_to_gguf.contains_key("lm_head.weight"),
            "hidden_act": "silu",
            "torch_dtype": "bfloat16",
        });
        if let Some(d) = self.meta_usize_opt("attention.key_length")? {
            cfg["head_dim"] = json!(d);
        }
        if let Some(b) = self.global_u32("tokenizer.ggml.bos_token_id") {
            cfg["bos_token_id"] = json!(b);
        }
        if let Some(e) = self.global_u32("tokenizer.ggml.eos_token_id") {
            cfg["eos_token_id"] = json!(e);
        }
        if self.gguf.bias_in_config
            && self
                .hf_to_gguf
                .contains_key("model.layers.0.self_attn.q_proj.bias")
        {
            cfg["attention_bias"] = json!(true);
        }
        Ok(cfg)
    }

    fn dequantize(&self, gguf_name: &str) -> Result<Tensor> {
        let file =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        let q = self
            .content
            .tensor(&mut BufReader::new(file), gguf_name, &Device::Cpu)
            .with_context(|| format!("{}: reading tensor {gguf_name}", self.path.display()))?;
        Ok(q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?)
    }

    /// The head count `name`'s rows are un-permuted by on read (llama.cpp's q/k permute), if
    /// they are.
    fn unpermute_heads(&self, name: &str) -> Option<usize> {
        if !self.gguf.qk_rows_permuted {
            return None;
        }
        if name.ends_with("self_attn.q_proj.weight") || name.ends_with("self_attn.q_proj.bias") {
            Some(self.n_head)
        } else if name.ends_with("self_attn.k_proj.weight")
            || name.ends_with("self_attn.k_proj.bias")
        {
            Some(self.n_kv_head)
        } else {
            None
        }
    }

    /// The quantized linears inside the blocks (HF prefix → how they become A16MatMuls):
    /// 2-D `model.layers.*.weight` tensors of a quantized type whose rows are whole groups.
    pub fn block_linears(&self) -> BTreeMap<String, LinearFormat> {
        self.hf_to_gguf
            .iter()
            .filter_map(|(hf, gguf_name)| {
                let prefix = hf.strip_suffix(".weight")?;
                let info = self.content.tensor_infos.get(gguf_name)?;
                let format = gguf_linear::format_of(info.ggml_dtype)?;
                let whole = matches!(info.shape.dims(), [_, k] if k % gguf_linear::GROUP == 0);
                (prefix.starts_with("model.layers.") && whole).then(|| (prefix.to_string(), format))
            })
            .collect()
    }

    /// Block linear `prefix` as A16MatMul's integers, scales and zero points: the file's own
    /// for Q4_0 / Q8_0 (rows un-permuted like the float read), else requantized from the
    /// dequantized weight (see [`gguf_linear`]).
    fn a16_layer(&self, prefix: &str, f: LinearFormat) -> Result<QuantizedLinear> {
        let name = format!("{prefix}.weight");
        let gguf_name = &self.hf_to_gguf[&name];
        let [n, k] = self.content.tensor_infos[gguf_name].shape.dims()[..] else {
            anyhow::bail!("{}: tensor {gguf_name} is not 2-D", self.path.display());
        };
        let layer = match f.handling {
            Handling::Requantized => {
                let w = self.read_f32(&name)?.flatten_all()?.to_vec1::<f32>()?;
                return gguf_linear::requantize(&w, n, k, f.bits);
            }
            Handling::Exact => {
                gguf_linear::unpack_exact(f.gguf, &self.read_blocks(gguf_name)?, n, k)
                    .with_context(|| format!("{}: tensor {gguf_name}", self.path.display()))?
            }
        };
        Ok(match self.unpermute_heads(&name) {
            Some(heads) => {
                gguf_linear::permute_rows(layer, &gguf_linear::unpermuted_row_sources(n, heads)?)
            }
            None => layer,
        })
    }

    /// `name` as an A16 part of a quantized block linear.
    fn a16_part<'n>(&self, name: &'n str) -> Option<(&'n str, A16Part, LinearFormat)> {
        let (prefix, part) = A16Part::split(name)?;
        let gguf_name = self.hf_to_gguf.get(&format!("{prefix}.weight"))?;
        let info = self.content.tensor_infos.get(gguf_name)?;
        let f = gguf_linear::format_of(info.ggml_dtype)?;
        Some((prefix, part, f))
    }

    /// The quantization group of the layers' weights (see [`layer_group_size`]).
    pub fn layer_group_size(&self) -> Option<usize> {
        layer_group_size(
            self.content
                .tensor_infos
                .iter()
                .map(|(name, info)| (name.as_str(), info.ggml_dtype)),
        )
    }

    /// The file positioned at `gguf_name`'s stored blocks, and their length, checked against
    /// the element count and the file's size.
    fn open_blocks(&self, gguf_name: &str) -> Result<(File, u64)> {
        let info = self
            .content
            .tensor_infos
            .get(gguf_name)
            .with_context(|| format!("{}: no tensor {gguf_name}", self.path.display()))?;
        let (dtype, elems) = (info.ggml_dtype, info.shape.elem_count());
        let len = (elems % dtype.block_size() == 0)
            .then(|| (elems / dtype.block_size()).checked_mul(dtype.type_size()))
            .flatten()
            .with_context(|| {
                format!(
                    "{}: tensor {gguf_name}: {elems} elements are no whole number of \
                     {dtype:?} blocks",
                    self.path.display()
                )
            })? as u64;
        let start = self.content.tensor_data_offset.saturating_add(info.offset);
        let mut file =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        anyhow::ensure!(
            start.checked_add(len).is_some_and(|end| end <= file_len),
            "{}: tensor {gguf_name} ({len} bytes at {start}) lies past the end of the file",
            self.path.display()
        );
        file.seek(std::io::SeekFrom::Start(start))?;
        Ok((file, len))
    }

    /// `gguf_name`'s stored blocks as they are in the file (their length checked first).
    fn read_blocks(&self, gguf_name: &str) -> Result<Vec<u8>> {
        let (mut file, len) = self.open_blocks(gguf_name)?;
        let mut bytes = vec![0u8; len as usize];
        file.read_exact(&mut bytes)
            .with_context(|| format!("{}: reading tensor {gguf_name}", self.path.display()))?;
        Ok(bytes)
    }

    /// The tensor's stored blocks with their type and dims, hashed as read from the file (in
    /// chunks: no allocation follows a size in the file), once per run.
    fn stored_fingerprint(&self, gguf_name: &str) -> Result<Fingerprint> {
        self.fingerprints.get_or(gguf_name, || {
            let (mut file, len) = self.open_blocks(gguf_name)?;
            let info = &self.content.tensor_infos[gguf_name];
            let dtype = info.ggml_dtype;
            // The variant name of candle's type (a fieldless enum) and its block layout.
            let ty = format!("{dtype:?}/{}/{}", dtype.block_size(), dtype.type_size());
            fingerprint::stored("gguf", &ty, info.shape.dims(), len, |h| {
                let mut left = len;
                let mut buf = vec![0u8; 1 << 20];
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    file.read_exact(&mut buf[..n]).with_context(|| {
                        format!("{}: reading tensor {gguf_name}", self.path.display())
                    })?;
                    h.chunk(&buf[..n]);
                    left -= n as u64;
                }
                Ok(())
            })
        })
    }
}

impl WeightSource for GgufFile {
    fn meta(&self, name: &str) -> Option<TensorMeta> {
        if let Some((prefix, part, f)) = self.a16_part(name) {
            let weight = self.meta(&format!("{prefix}.weight"))?;
            let [n, k] = weight.shape[..] else {
                return None;
            };
            return Some(TensorMeta {
                shape: part.shape(n, k, f.bits, gguf_linear::GROUP),
                dtype: StoredDtype::F32,
            });
        }
        let info = self.content.tensor_infos.get(self.hf_to_gguf.get(name)?)?;
        let dtype = match info.ggml_dtype {
            GgmlDType::F32 => StoredDtype::F32,
            GgmlDType::F16 => StoredDtype::F16,
            GgmlDType::BF16 => StoredDtype::Bf16,
            _ => StoredDtype::Quantized,
        };
        Some(TensorMeta {
            shape: info.shape.dims().to_vec(),
            dtype,
        })
    }

    fn names(&self) -> Vec<String> {
        let sorted: BTreeMap<_, _> = self.hf_to_gguf.iter().collect();
        sorted.into_keys().cloned().collect()
    }

    fn read_f32(&self, name: &str) -> Result<Tensor> {
        if let Some((prefix, part, f)) = self.a16_part(name) {
            let layer = self.last_a16.get_or(prefix, || self.a16_layer(prefix, f))?;
            let shape = part.shape(layer.n, layer.k, f.bits, gguf_linear::GROUP);
            return Ok(Tensor::from_vec(
                layer.a16(part, f.bits),
                shape,
                &Device::Cpu,
            )?);
        }
        let gguf_name = self
            .hf_to_gguf
            .get(name)
            .with_context(|| format!("tensor \"{name}\" is not in {}", self.path.display()))?;
        let t = self.dequantize(gguf_name)?;
        match self.unpermute_heads(name) {
            Some(heads) => unpermute_rows(&t, heads),
            None => Ok(t),
        }
    }

    /// The stored blocks' fingerprint; q/k rows that read un-permutes carry that step too.
    fn fingerprint(&self, name: &str) -> Result<Fingerprint> {
        if let Some((prefix, part, f)) = self.a16_part(name) {
            let weight = self.fingerprint(&format!("{prefix}.weight"))?;
            let params = [part as u64, f.bits as u64, f.handling as u64];
            return Ok(fingerprint::derived(
                "gguf blocks as A16",
                &params,
                &[weight],
            ));
        }
        let gguf_name = self
            .hf_to_gguf
            .get(name)
            .with_context(|| format!("tensor \"{name}\" is not in {}", self.path.display()))?;
        let fp = self.stored_fingerprint(gguf_name)?;
        Ok(match self.unpermute_heads(name) {
            Some(heads) => fingerprint::derived("rotary rows un-permuted", &[heads as u64], &[fp]),
            None => fp,
        })
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn stored_fingerprints(&self) -> Option<StoredFingerprints<'_>> {
        Some(StoredFingerprints {
            memo: &self.fingerprints,
            files: &self.stamp,
        })
    }
}

/// Inverse of llama.cpp's `permute`: rows within each head go from interleaved rotary pairs
/// back to HF's rotate-half order (first half, second half).
fn unpermute_rows(t: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims.first().copied().unwrap_or(0);
    if n_head == 0 || rows % (2 * n_head) != 0 {
        anyhow::bail!("{rows} rows cannot be split into {n_head} rotary heads");
    }
    let rest: usize = dims[1..].iter().product();
    let r = t
        .reshape((n_head, rows / n_head / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?;
    Ok(r)
}

/// GGUF tensor name → Hugging Face name.
fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let (stem, kind) = tail.rsplit_once('.')?;
    let hf = match stem {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// The group size shared by every quantized layer tensor (`blk.*`): llama.cpp's scale blocks
/// (sub-blocks for the K types) are 32 elements, Q2_K's, Q3_K's and Q6_K's 16. `None` when the
/// layers are float or mix group sizes. TPU-MLIR's llm_convert.py keeps a GGUF's groups too.
fn layer_group_size<'a>(tensors: impl Iterator<Item = (&'a str, GgmlDType)>) -> Option<usize> {
    let mut sizes = tensors
        .filter(|(name, _)| name.starts_with("blk."))
        .filter_map(|(_, t)| match t {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => None,
            GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q6K => Some(16),
            _ => Some(32),
        });
    let first = sizes.next()?;
    sizes.all(|g| g == first).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_group_size_is_the_layers_shared_block() {
        use GgmlDType::*;
        let g = |t: &[(&'static str, GgmlDType)]| layer_group_size(t.iter().copied());
        let q4 = [
            ("blk.0.attn_q.weight", Q4_1),
            ("blk.0.attn_norm.weight", F32),
        ];
        assert_eq!(g(&q4), Some(32));
        // The embedding's type does not count; the layers' does.
        assert_eq!(
            g(&[("token_embd.weight", Q6K), ("blk.0.ffn_up.weight", Q8_0)]),
            Some(32)
        );
        assert_eq!(g(&[("blk.0.ffn_down.weight", Q6K)]), Some(16));
        assert_eq!(
            g(&[("blk.0.ffn_down.weight", Q6K), ("blk.0.ffn_up.weight", Q4K)]),
            None
        );
        assert_eq!(
            g(&[("blk.0.attn_q.weight", F16), ("token_embd.weight", Q8_0)]),
            None
        );
    }

    #[test]
    fn maps_names() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight").unwrap(),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight").unwrap(),
            "model.layers.0.mlp.down_proj.weight"
        );
        assert_eq!(
            hf_name("blk.1.attn_k_norm.weight").unwrap(),
            "model.layers.1.self_attn.k_norm.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert!(hf_name("blk.0.mystery.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() -> Result<()> {
        // llama.cpp: w.reshape(n_head, 2, rows/n_head/2, in).swapaxes(1, 2).reshape(rows, in)
        let (n_head, rows, cols) = (2usize, 8usize, 3usize);
        let hf = Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu)?.reshape((rows, cols))?;
        let permuted = hf
            .reshape((n_head, 2, rows / n_head / 2, cols))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows, cols))?;
        let back = unpermute_rows(&permuted, n_head)?;
        assert_eq!(back.to_vec2::<f32>()?, hf.to_vec2::<f32>()?);
        Ok(())
    }
}
