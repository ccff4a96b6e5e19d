//! Model loading: a Hugging Face folder (config.json + safetensors) or a GGUF file, as a typed
//! config plus lazily read weights. Knows nothing of ONNX or TPU-MLIR.

pub mod bundled;
pub mod config;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod layout;
pub mod safetensors;
pub mod weights;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Tensor;

pub use config::{Family, ModelConfig};
pub use weights::{StoredDtype, TensorMeta, WeightSource};

use crate::error::InputError;

/// Where the tokenizer comes from.
pub enum TokenizerSource {
    /// `tokenizer.json` in the model folder.
    File(PathBuf),
    /// Rebuilt from GGUF metadata (tokenizer.json text, tokenizer_config.json).
    Rebuilt(String, serde_json::Value),
    /// None available, with the reason.
    Unavailable(String),
}

pub struct Model {
    /// The folder or GGUF file the user named.
    pub source: PathBuf,
    pub config: ModelConfig,
    /// config.json as read (or as synthesised from GGUF metadata).
    pub config_json: serde_json::Value,
    pub weights: Box<dyn WeightSource>,
    pub tokenizer: TokenizerSource,
}

impl Model {
    /// Opens a model folder, a `.gguf` file, or a bundled-model folder (see [`bundled`]),
    /// and checks every tensor the config needs is present with the right shape.
    pub fn open(path: &Path) -> Result<Model> {
        let path = bundled::resolve(path)?;
        let model = if path.extension().is_some_and(|e| e == "gguf") {
            Self::open_gguf(&path)?
        } else if path.is_dir() {
            Self::open_dir(&path)?
        } else if path.exists() {
            return Err(InputError::invalid(
                &path,
                "neither a model folder nor a .gguf file",
                "pass a Hugging Face model folder (config.json + *.safetensors) or a .gguf file",
            )
            .into());
        } else {
            return Err(InputError::missing(&path, "the model given with -m").into());
        };
        model.check_tensors()?;
        Ok(model)
    }

    fn open_dir(dir: &Path) -> Result<Model> {
        let config_path = dir.join("config.json");
        let config = ModelConfig::from_file(&config_path)?;
        let config_json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&config_path).context("re-reading config.json")?,
        )?;
        let weights = safetensors::SafetensorsWeights::open_dir(dir)?;
        let tok = dir.join("tokenizer.json");
        let tokenizer = if tok.exists() {
            TokenizerSource::File(tok)
        } else {
            TokenizerSource::Unavailable(format!("{} does not exist", tok.display()))
        };
        Ok(Model {
            source: dir.to_path_buf(),
            config,
            config_json,
            weights: Box::new(weights),
            tokenizer,
        })
    }

    fn open_gguf(path: &Path) -> Result<Model> {
        let g = gguf::GgufFile::open(path)?;
        let config_json = g.hf_config()?;
        let config = ModelConfig::from_json(&config_json, path)?;
        let tokenizer = match gguf_tokenizer::tokenizer_json(g.metadata()) {
            Ok(json) => {
                TokenizerSource::Rebuilt(json, gguf_tokenizer::tokenizer_config(g.metadata()))
            }
            Err(why) => TokenizerSource::Unavailable(format!("{}: {why}", path.display())),
        };
        Ok(Model {
            source: path.to_path_buf(),
            config,
            config_json,
            weights: Box::new(g),
            tokenizer,
        })
    }

    /// Every tensor the config implies exists with the expected shape.
    pub fn check_tensors(&self) -> Result<(), InputError> {
        for (name, shape) in layout::expected_tensors(&self.config) {
            match self.weights.meta(&name) {
                None => {
                    return Err(InputError::invalid(
                        &self.source,
                        format!("tensor \"{name}\" is missing from {}", self.weights.describe()),
                        "the checkpoint does not match config.json: re-download the model",
                    ))
                }
                Some(m) if m.shape != shape => {
                    return Err(InputError::invalid(
                        &self.source,
                        format!(
                            "tensor \"{name}\" has shape {:?} but config.json implies {shape:?}",
                            m.shape
                        ),
                        "the checkpoint does not match config.json: check hidden_size, intermediate_size, heads, head_dim and vocab_size",
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Reads one tensor as f32 (dequantizing/up-casting as needed).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        self.weights.read_f32(name)
    }

    /// Loads the tokenizer, if one is available.
    pub fn load_tokenizer(&self) -> Result<Option<tokenizers::Tokenizer>> {
        match &self.tokenizer {
            TokenizerSource::File(p) => {
                tokenizers::Tokenizer::from_file(p).map(Some).map_err(|e| {
                    InputError::invalid(
                        p,
                        format!("cannot load tokenizer: {e}"),
                        "restore tokenizer.json",
                    )
                    .into()
                })
            }
            TokenizerSource::Rebuilt(json, _) => tokenizers::Tokenizer::from_bytes(json.as_bytes())
                .map(Some)
                .map_err(|e| anyhow::anyhow!("rebuilt tokenizer does not load: {e}")),
            TokenizerSource::Unavailable(_) => Ok(None),
        }
    }
}
