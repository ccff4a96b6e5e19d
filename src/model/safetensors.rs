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

use super::weights::{StoredDtype, TensorMeta, WeightSource};
use crate::error::InputError;

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
}

impl SafetensorsWeights {
    /// Opens the checkpoint in a model folder: `model.safetensors.index.json` if present,
    /// else every `*.safetensors` file in the folder.
    pub fn open_dir(dir: &Path) -> Result<SafetensorsWeights, InputError> {
        let index_path = dir.join("model.safetensors.index.json");
        let files = if index_path.exists() {
            shard_files_from_index(&index_path)?
        } else {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| {
                    InputError::invalid(dir, format!("cannot list: {e}"), "check the path")
                })?
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
            files
        };
        Self::open_files(&files)
    }

    pub fn open_files(files: &[PathBuf]) -> Result<SafetensorsWeights, InputError> {
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let shard = open_shard(path)?;
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
        Ok(SafetensorsWeights { shards, index })
    }

    fn locate(&self, name: &str) -> Option<(&Shard, safetensors::tensor::TensorInfo)> {
        let shard = &self.shards[*self.index.get(name)?];
        let info = shard.metadata.info(name)?.clone();
        Some((shard, info))
    }
}

fn shard_files_from_index(index_path: &Path) -> Result<Vec<PathBuf>, InputError> {
    let text = std::fs::read_to_string(index_path).map_err(|e| {
        InputError::invalid(index_path, format!("cannot read: {e}"), "check permissions")
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        InputError::invalid(
            index_path,
            format!("not valid JSON: {e}"),
            "re-download the index file",
        )
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| {
            InputError::invalid(
                index_path,
                "no \"weight_map\" object",
                "re-download the index file",
            )
        })?;
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|f| f.as_str())
        .map(|f| dir.join(f))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    files.sort();
    for f in &files {
        if !f.exists() {
            return Err(InputError::missing(
                f,
                format!("shard listed in {}", index_path.display()),
            ));
        }
    }
    Ok(files)
}

fn open_shard(path: &Path) -> Result<Shard, InputError> {
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
    let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| {
        InputError::invalid(
            path,
            format!("not a valid safetensors file ({e}); it may be truncated or corrupt"),
            "re-download or re-save this file",
        )
    })?;
    for (name, info) in metadata.tensors() {
        stored_dtype(info.dtype).ok_or_else(|| {
            InputError::invalid(
                path,
                format!("tensor \"{name}\" has unsupported dtype {:?}", info.dtype),
                "supported dtypes: F32, F16, BF16",
            )
        })?;
    }
    Ok(Shard {
        path: path.to_path_buf(),
        mmap,
        data_start: 8 + header_len,
        metadata,
    })
}

fn stored_dtype(d: Dtype) -> Option<StoredDtype> {
    match d {
        Dtype::F32 => Some(StoredDtype::F32),
        Dtype::F16 => Some(StoredDtype::F16),
        Dtype::BF16 => Some(StoredDtype::Bf16),
        _ => None,
    }
}

fn candle_dtype(d: StoredDtype) -> DType {
    match d {
        StoredDtype::F32 => DType::F32,
        StoredDtype::F16 => DType::F16,
        StoredDtype::Bf16 | StoredDtype::Quantized => DType::BF16,
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
        let (shard, info) = self
            .locate(name)
            .with_context(|| format!("tensor \"{name}\" is not in the checkpoint"))?;
        let (start, end) = info.data_offsets;
        let bytes = &shard.mmap[shard.data_start + start..shard.data_start + end];
        let dtype = stored_dtype(info.dtype).context("dtype checked at open")?;
        let t = Tensor::from_raw_buffer(bytes, candle_dtype(dtype), &info.shape, &Device::Cpu)
            .with_context(|| format!("{}: reading tensor \"{name}\"", shard.path.display()))?;
        // The data is copied: drop the mapped pages from our resident set so streaming a
        // model keeps memory near one piece (the page cache still holds them).
        let page = 4096;
        let begin = (shard.data_start + start) / page * page;
        // SAFETY: MADV_DONTNEED on a read-only file mapping only discards clean pages; later
        // reads fault them back in from the file. No reference into the range outlives this.
        let _ = unsafe {
            shard.mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                begin,
                shard.data_start + end - begin,
            )
        };
        Ok(t.to_dtype(DType::F32)?)
    }

    fn describe(&self) -> String {
        match self.shards.as_slice() {
            [one] => one.path.display().to_string(),
            many => format!("{} safetensors shards", many.len()),
        }
    }
}
