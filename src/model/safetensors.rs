//! Safetensors checkpoints: one file or shards listed in `model.safetensors.index.json`.
//!
//! Each file is memory-mapped and its header validated up front (offsets inside the file,
//! supported dtypes); tensor data is only touched when a tensor is read.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

use super::fingerprint::{self, Fingerprint, Memo};
use super::weights::{StoredDtype, StoredFingerprints, TensorMeta, WeightSource};
use crate::error::InputError;
use crate::file_stamp::FileStamp;

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section (8-byte length + JSON header).
    data_start: usize,
    metadata: Metadata,
}

pub struct SafetensorsWeights {
    shards: Vec<Shard>,
    /// Tensor name → shard index.
    index: HashMap<String, usize>,
    fingerprints: Memo,
    /// Every shard's path with the stamp of the file mapped.
    stamps: Vec<(PathBuf, FileStamp)>,
}

impl SafetensorsWeights {
    /// Opens the checkpoint in a model folder: `model.safetensors.index.json` if present,
    /// else every `*.safetensors` file in the folder.
    pub fn open_dir(dir: &Path) -> Result<SafetensorsWeights, InputError> {
        let index_path = dir.join("model.safetensors.index.json");
        if index_path.exists() {
            let index = ShardIndex::read(&index_path)?;
            let weights = Self::open_files(&index.files())?;
            index.check_against(&weights)?;
            return Ok(weights);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| InputError::invalid(dir, format!("cannot list: {e}"), "check the path"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(InputError::missing(
                dir.join("model.safetensors"),
                "no *.safetensors weights in the model folder (pytorch .bin checkpoints are not supported: convert them to safetensors)",
            ));
        }
        Self::open_files(&files)
    }

    pub fn open_files(files: &[PathBuf]) -> Result<SafetensorsWeights, InputError> {
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        let mut stamps = Vec::with_capacity(files.len());
        for (i, path) in files.iter().enumerate() {
            let (shard, stamp) = open_shard(path)?;
            stamps.push((path.clone(), stamp));
            for name in shard.metadata.tensors().keys() {
                if index.insert(name.clone(), i).is_some() {
                    return Err(InputError::invalid(
                        path,
                        format!("tensor \"{name}\" also appears in another shard"),
                        "the checkpoint is inconsistent: re-download it",
                    ));
                }
            }
            shards.push(shard);
        }
        Ok(SafetensorsWeights {
            stamps,
            shards,
            index,
            fingerprints: Memo::default(),
        })
    }

    fn locate(&self, name: &str) -> Option<(&Shard, safetensors::tensor::TensorInfo)> {
        let shard = &self.shards[*self.index.get(name)?];
        let info = shard.metadata.info(name)?.clone();
        Some((shard, info))
    }

    /// The tensor's stored bytes (in the mapped file), its shard and dtype.
    fn stored_bytes(&self, name: &str) -> Result<(&Shard, &[u8], StoredDtype, Vec<usize>)> {
        let (shard, info) = self
            .locate(name)
            .with_context(|| format!("tensor \"{name}\" is not in the checkpoint"))?;
        let (start, end) = info.data_offsets;
        let bytes = shard
            .mmap
            .get(shard.data_start + start..shard.data_start + end)
            .with_context(|| {
                format!(
                    "{}: tensor \"{name}\" lies outside the file (checked at open)",
                    shard.path.display()
                )
            })?;
        let dtype = stored_dtype(info.dtype).context("dtype checked at open")?;
        Ok((shard, bytes, dtype, info.shape))
    }
}

impl Shard {
    /// Drops the mapped pages of `bytes` (a range of this shard's map) from our resident set,
    /// so streaming a model keeps memory near one piece (the page cache still holds them).
    fn release(&self, bytes: &[u8]) {
        let page = 4096;
        let start = bytes.as_ptr() as usize - self.mmap.as_ptr() as usize;
        let begin = start / page * page;
        // SAFETY: MADV_DONTNEED on a read-only file mapping only discards clean pages; later
        // reads (ours, or another thread's reading the same tensor meanwhile) fault them back
        // in from the file with the same bytes. The range lies inside the map.
        let _ = unsafe {
            self.mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                begin,
                start + bytes.len() - begin,
            )
        };
    }
}

/// `model.safetensors.index.json`: which shard holds each tensor.
pub struct ShardIndex {
    path: PathBuf,
    /// Tensor name → shard file (inside the index's folder).
    weight_map: BTreeMap<String, PathBuf>,
}

impl ShardIndex {
    pub fn read(index_path: &Path) -> Result<ShardIndex, InputError> {
        let text = std::fs::read(index_path).map_err(|e| {
            InputError::invalid(index_path, format!("cannot read: {e}"), "check permissions")
        })?;
        let index = Self::parse(&text, index_path)?;
        for f in index.files() {
            if !f.is_file() {
                return Err(InputError::missing(
                    f,
                    format!("shard listed in {}", index_path.display()),
                ));
            }
        }
        Ok(index)
    }

    /// Parses the index text; shard names must be plain file names in the index's folder.
    pub fn parse(text: &[u8], index_path: &Path) -> Result<ShardIndex, InputError> {
        let bad = |problem: String| {
            InputError::invalid(index_path, problem, "re-download the index file")
        };
        let v: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut weight_map = BTreeMap::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("weight_map[\"{name}\"] is {file}, not a file name")))?;
            let plain = Path::new(file).components().count() == 1
                && matches!(
                    Path::new(file).components().next(),
                    Some(std::path::Component::Normal(_))
                );
            if !plain {
                return Err(bad(format!(
                    "weight_map[\"{name}\"] = \"{file}\" is not a file name in the model folder"
                )));
            }
            weight_map.insert(name.clone(), dir.join(file));
        }
        Ok(ShardIndex {
            path: index_path.to_path_buf(),
            weight_map,
        })
    }

    /// The shard files, sorted, each once.
    pub fn files(&self) -> Vec<PathBuf> {
        let set: std::collections::BTreeSet<_> = self.weight_map.values().cloned().collect();
        set.into_iter().collect()
    }

    /// The index and the shards' own headers agree: every listed tensor is in the shard the
    /// index names, and every tensor of a shard is listed (for that shard).
    pub fn check_against(&self, weights: &SafetensorsWeights) -> Result<(), InputError> {
        let disagree = |problem: String| {
            InputError::invalid(
                &self.path,
                problem,
                "the index does not match the shards: re-download the model",
            )
        };
        for (name, file) in &self.weight_map {
            let found = weights.index.get(name).map(|&i| &weights.shards[i].path);
            if found != Some(file) {
                return Err(disagree(match found {
                    None => format!(
                        "weight_map lists \"{name}\" in {} but no shard holds it",
                        file.display()
                    ),
                    Some(other) => format!(
                        "weight_map lists \"{name}\" in {} but it is in {}",
                        file.display(),
                        other.display()
                    ),
                }));
            }
        }
        let unlisted = weights
            .names()
            .into_iter()
            .find(|n| !self.weight_map.contains_key(n));
        match unlisted {
            Some(name) => Err(disagree(format!(
                "\"{name}\" is in a shard but not in weight_map"
            ))),
            None => Ok(()),
        }
    }
}

/// The shard and the stamp of the file mapped.
fn open_shard(path: &Path) -> Result<(Shard, FileStamp), InputError> {
    let file = File::open(path).map_err(|e| {
        InputError::invalid(
            path,
            format!("cannot open: {e}"),
            "check the path and permissions",
        )
    })?;
    // SAFETY: the map is read-only; a checkpoint modified while we run is outside our contract.
    let mmap = unsafe { Mmap::map(&file) }
        .map_err(|e| InputError::invalid(path, format!("cannot mmap: {e}"), "check the file"))?;
    let stamp = file
        .metadata()
        .map(|m| FileStamp::of_metadata(&m))
        .map_err(|e| InputError::invalid(path, format!("cannot stat: {e}"), "check the file"))?;
    let (header_len, metadata) = parse_header(&mmap, path)?;
    let shard = Shard {
        path: path.to_path_buf(),
        mmap,
        data_start: 8 + header_len,
        metadata,
    };
    Ok((shard, stamp))
}

/// Validates a whole safetensors file's bytes: the header, every tensor inside the data
/// section, supported dtypes. Returns the header length and the tensors; `path` names errors.
pub fn parse_header(bytes: &[u8], path: &Path) -> Result<(usize, Metadata), InputError> {
    let corrupt = |why: String| {
        InputError::invalid(
            path,
            format!("not a valid safetensors file ({why}); it may be truncated or corrupt"),
            "re-download or re-save this file",
        )
    };
    check_offsets(bytes).map_err(corrupt)?;
    let (header_len, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| corrupt(e.to_string()))?;
    for (name, info) in metadata.tensors() {
        stored_dtype(info.dtype).ok_or_else(|| {
            InputError::invalid(
                path,
                format!("tensor \"{name}\" has unsupported dtype {:?}", info.dtype),
                "supported dtypes: F32, F16, BF16 (and I32 for GPTQ / AWQ packed weights, F8_E4M3 for fp8 checkpoints)",
            )
        })?;
    }
    Ok((header_len, metadata))
}

/// Every tensor's `data_offsets` lie inside the data section, checked before the safetensors
/// crate sums them (its end check adds without overflow checks).
fn check_offsets(bytes: &[u8]) -> Result<(), String> {
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(format!(
            "{} bytes: shorter than the header length",
            bytes.len()
        ));
    };
    let mut word = [0u8; 8];
    word.copy_from_slice(len_bytes);
    let header_len = u64::from_le_bytes(word);
    let data_len = (bytes.len() as u64 - 8)
        .checked_sub(header_len)
        .ok_or_else(|| format!("header of {header_len} bytes beyond the end of the file"))?;
    // A header is at most 100 MB (the crate's limit), so parsing it allocates little.
    if header_len > 100_000_000 {
        return Ok(()); // the crate refuses it as too large
    }
    let header = &bytes[8..8 + header_len as usize];
    let Ok(entries) = serde_json::from_slice::<BTreeMap<String, serde_json::Value>>(header) else {
        return Ok(()); // the crate's own parser words this error
    };
    for (name, entry) in entries.iter().filter(|(k, _)| *k != "__metadata__") {
        let offsets = entry.get("data_offsets").and_then(|o| o.as_array());
        let end = offsets.and_then(|o| o.get(1)).and_then(|e| e.as_u64());
        if let Some(end) = end.filter(|e| *e > data_len) {
            return Err(format!(
                "tensor \"{name}\" ends at data byte {end} but the data section has {data_len}: truncated"
            ));
        }
    }
    Ok(())
}

fn stored_dtype(d: Dtype) -> Option<StoredDtype> {
    match d {
        Dtype::F32 => Some(StoredDtype::F32),
        Dtype::F16 => Some(StoredDtype::F16),
        Dtype::BF16 => Some(StoredDtype::Bf16),
        Dtype::I32 => Some(StoredDtype::I32),
        Dtype::F8_E4M3 => Some(StoredDtype::F8E4m3),
        _ => None,
    }
}

fn candle_dtype(d: StoredDtype) -> DType {
    match d {
        StoredDtype::F32 => DType::F32,
        StoredDtype::F16 => DType::F16,
        StoredDtype::Bf16 | StoredDtype::Quantized => DType::BF16,
        // Never read as floats (read_f32 refuses them first).
        StoredDtype::I32 => DType::U32,
        StoredDtype::F8E4m3 => DType::F8E4M3,
    }
}

impl WeightSource for SafetensorsWeights {
    fn meta(&self, name: &str) -> Option<TensorMeta> {
        let (_, info) = self.locate(name)?;
        Some(TensorMeta {
            shape: info.shape.clone(),
            dtype: stored_dtype(info.dtype)?,
        })
    }

    fn names(&self) -> Vec<String> {
        let sorted: BTreeMap<_, _> = self.index.iter().collect();
        sorted.into_keys().cloned().collect()
    }

    fn read_f32(&self, name: &str) -> Result<Tensor> {
        let (shard, bytes, dtype, shape) = self.stored_bytes(name)?;
        if dtype == StoredDtype::I32 {
            // A user's file that lies about a weight's dtype: input error (exit 2), not a bug.
            return Err(InputError::invalid(
                &shard.path,
                format!("tensor \"{name}\" is stored as int32 (packed integers), but it is read as a float weight"),
                "store this tensor as F32/F16/BF16, or give the checkpoint the quantization_config its packed int32 tensors belong to",
            )
            .into());
        }
        if dtype == StoredDtype::F8E4m3 {
            return Err(InputError::invalid(
                &shard.path,
                format!("tensor \"{name}\" is stored as fp8 (e4m3), which means nothing without its weight_scale_inv"),
                "give the checkpoint the quantization_config (quant_method \"fp8\") its fp8 tensors belong to",
            )
            .into());
        }
        let t = Tensor::from_raw_buffer(bytes, candle_dtype(dtype), &shape, &Device::Cpu)
            .with_context(|| format!("{}: reading tensor \"{name}\"", shard.path.display()))?;
        // The data is copied: its pages can go.
        shard.release(bytes);
        Ok(t.to_dtype(DType::F32)?)
    }

    /// The tensor's byte range as stored, with its dtype and shape, hashed from the map in
    /// chunks (each chunk's pages released after), once per run.
    fn fingerprint(&self, name: &str) -> Result<Fingerprint> {
        self.fingerprints.get_or(name, || {
            let (shard, bytes, dtype, shape) = self.stored_bytes(name)?;
            let dtype = match dtype {
                StoredDtype::F32 => "F32",
                StoredDtype::F16 => "F16",
                StoredDtype::Bf16 => "BF16",
                StoredDtype::Quantized => "quantized",
                StoredDtype::I32 => "I32",
                StoredDtype::F8E4m3 => "F8_E4M3",
            };
            fingerprint::stored("safetensors", dtype, &shape, bytes.len() as u64, |h| {
                for chunk in bytes.chunks(16 << 20) {
                    h.chunk(chunk);
                    shard.release(chunk);
                }
                Ok(())
            })
        })
    }

    fn stored_fingerprints(&self) -> Option<StoredFingerprints<'_>> {
        Some(StoredFingerprints {
            memo: &self.fingerprints,
            files: &self.stamps,
        })
    }

    fn read_i32(&self, name: &str) -> Result<Vec<i32>> {
        let (shard, bytes, dtype, _) = self.stored_bytes(name)?;
        if dtype != StoredDtype::I32 {
            return Err(InputError::invalid(
                &shard.path,
                format!("tensor \"{name}\" is {dtype:?}, but its quantization format stores it as packed int32"),
                "use the checkpoint as the quantizer wrote it (its packed tensors are I32)",
            )
            .into());
        }
        let v = bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        shard.release(bytes);
        Ok(v)
    }

    fn read_f8(&self, name: &str) -> Result<Vec<f32>> {
        let (shard, bytes, dtype, _) = self.stored_bytes(name)?;
        if dtype != StoredDtype::F8E4m3 {
            return Err(InputError::invalid(
                &shard.path,
                format!("tensor \"{name}\" is {dtype:?}, but the checkpoint's fp8 quantization stores it as F8_E4M3"),
                "use the checkpoint as the quantizer wrote it (its quantized weights are F8_E4M3)",
            )
            .into());
        }
        let v = bytes.iter().map(|&b| super::quant::fp8::e4m3(b)).collect();
        shard.release(bytes);
        Ok(v)
    }

    fn describe(&self) -> String {
        match self.shards.as_slice() {
            [one] => one.path.display().to_string(),
            many => format!("{} safetensors shards", many.len()),
        }
    }
}
