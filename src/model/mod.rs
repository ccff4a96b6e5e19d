//! Model loading: a Hugging Face folder (config.json + safetensors) or a GGUF file, as a typed
//! config plus lazily read weights. Knows nothing of ONNX or TPU-MLIR.

pub mod bundled;
pub mod config;
pub mod fingerprint;
pub mod fingerprint_store;
pub mod gguf;
pub mod gguf_header;
pub mod gguf_linear;
pub mod gguf_tokenizer;
pub mod layout;
pub mod layout_moe;
pub mod path;
pub mod quant;
pub mod renamed;
pub mod repack;
pub mod safetensors;
pub mod stacked_experts;
pub mod tokenizer;
pub mod vlm;
pub mod weights;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Tensor;

pub use bundled::BundledModels;
pub use config::{Family, ModelConfig};
pub use path::{Expected, ModelPath};
pub use weights::{FiniteWeights, StoredDtype, TensorMeta, WeightSource};

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

/// What `-m` must name for the model's weights.
const MODEL_PATH: Expected = Expected {
    role: "the model given with -m",
    problem: "neither a model folder nor a .gguf file",
    fix: "pass a Hugging Face model folder (config.json + *.safetensors) or a .gguf file",
};

pub struct Model {
    /// The folder or GGUF file the user named.
    pub source: PathBuf,
    pub config: ModelConfig,
    /// config.json as read (or as synthesised from GGUF metadata).
    pub config_json: serde_json::Value,
    /// Reads refuse NaN / Inf unless [`Model::allow_non_finite`] was called.
    pub weights: FiniteWeights,
    pub tokenizer: TokenizerSource,
}

impl Model {
    /// Opens a model folder or a `.gguf` file, and checks every tensor the config needs is
    /// present with the right shape.
    pub fn open(path: &Path) -> Result<Model> {
        Self::open_with(path, None)
    }

    /// Opens what `-m` names: with `installed`, also a bundled-model folder (see [`bundled`]).
    pub fn open_with(path: &Path, installed: Option<&BundledModels>) -> Result<Model> {
        let model = match ModelPath::resolve(path, installed, &MODEL_PATH)? {
            ModelPath::Gguf(p) => Self::open_gguf(&p)?,
            ModelPath::Dir(p) => Self::open_dir(&p)?,
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
        let stored: Box<dyn WeightSource> =
            Box::new(safetensors::SafetensorsWeights::open_dir(dir)?);
        // GPTQ / AWQ / fp8 layers read as their exactly dequantized weights (`quant`).
        let stored = quant::fp8::view(config.fp8.as_ref(), stored, dir)?;
        let stored = quant::view(config.quant.as_ref(), stored, dir)?;
        // A VLM's text part may sit under another prefix (see `vlm::text_renames`).
        let stored = match (&config.vlm, config.text_only_of) {
            (Some(v), _) => Box::new(renamed::RenamedWeights::new(
                stored,
                vlm::text_renames(v.kind),
            )),
            (None, Some(_)) => Box::new(renamed::RenamedWeights::new(
                stored,
                vlm::text_only::TEXT_RENAMES,
            )),
            (None, None) => stored,
        };
        let weights = repack::view(&config, stored);
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
            weights: FiniteWeights::new(stacked_experts::per_expert(weights), dir),
            tokenizer,
        })
    }

    fn open_gguf(path: &Path) -> Result<Model> {
        let g = gguf::GgufFile::open(path)?;
        let config_json = g.hf_config()?;
        let mut config = ModelConfig::from_json(&config_json, path)?;
        config.stored_group_size = g.layer_group_size();
        config.gguf_linears = g.block_linears();
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
            weights: FiniteWeights::new(Box::new(g), path),
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

    /// Lets tensors with NaN / Inf values through (they are an error by default).
    pub fn allow_non_finite(&mut self) {
        self.weights.allow_non_finite();
    }

    /// Reads one tensor as f32 (dequantizing/up-casting as needed; NaN / Inf refused).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        self.weights.read_f32(name)
    }

    /// Loads the tokenizer, if one is available.
    pub fn load_tokenizer(&self) -> Result<Option<tokenizers::Tokenizer>> {
        match &self.tokenizer {
            TokenizerSource::File(p) => {
                let json = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                Ok(Some(tokenizer::load(&json, p)?))
            }
            TokenizerSource::Rebuilt(json, _) => {
                Ok(Some(tokenizer::load(json.as_bytes(), &self.source)?))
            }
            TokenizerSource::Unavailable(_) => Ok(None),
        }
    }
}
