//! llm_convert.py's command line, with the same meaning, defaults and normalisation rules
//! (TPU-MLIR 1.30.2 `python/tools/llm_convert.py`), turned into checked [`ConvertOptions`]. Anything we
//! cannot honour yet is refused here, by name, before any work starts.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use crate::arch::PieceOptions;
use crate::error::InputError;
use crate::model::ModelConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantize {
    Auto,
    Bf16,
    F16,
    W8bf16,
    W8f16,
    W4bf16,
    W4f16,
    F32,
}

impl Quantize {
    pub fn name(self) -> &'static str {
        match self {
            Quantize::Auto => "auto",
            Quantize::Bf16 => "bf16",
            Quantize::F16 => "f16",
            Quantize::W8bf16 => "w8bf16",
            Quantize::W8f16 => "w8f16",
            Quantize::W4bf16 => "w4bf16",
            Quantize::W4f16 => "w4f16",
            Quantize::F32 => "f32",
        }
    }

    /// The 16-bit activation type of embedding / lm_head ("half" in llm_convert.py).
    pub fn half(self) -> &'static str {
        match self {
            Quantize::F32 => "f32",
            q if q.name().contains("bf16") => "bf16",
            _ => "f16",
        }
    }

    pub fn is_weight_only(self) -> bool {
        self.name().starts_with('w')
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Chip {
    Bm1684x,
    Bm1688,
    Cv186x,
}

impl Chip {
    pub fn name(self) -> &'static str {
        match self {
            Chip::Bm1684x => "bm1684x",
            Chip::Bm1688 => "bm1688",
            Chip::Cv186x => "cv186x",
        }
    }

    /// What `--num_core 0` means (llm_convert.py: the chip's maximum).
    pub fn max_cores(self) -> usize {
        match self {
            Chip::Bm1688 => 2,
            _ => 1,
        }
    }
}

/// The conversion flags, spelled as llm_convert.py spells them, plus a few of ours.
#[derive(Args, Debug, Clone, Default)]
pub struct ConvertArgs {
    /// Hugging Face model folder, .gguf file, or bundled model folder (models/...).
    #[arg(short = 'm', long = "model_path", alias = "model")]
    pub model_path: Option<PathBuf>,
    /// KV cache length (SEQLEN).
    #[arg(short = 's', long = "seq_length")]
    pub seq_length: Option<usize>,
    /// Weight quantization; `auto` follows config.json's torch_dtype (bf16 → w4bf16, f16 → w4f16).
    #[arg(short = 'q', long = "quantize", value_enum, default_value = "auto")]
    pub quantize: Option<Quantize>,
    /// Group size of W4/W8 weight quantization [default: 64; a GGUF's own block size; a
    /// pre-quantized checkpoint's group size, which -g may not contradict].
    #[arg(short = 'g', long = "q_group_size")]
    pub q_group_size: Option<usize>,
    /// Target chip.
    #[arg(
        short = 'c',
        long = "chip",
        alias = "processor",
        value_enum,
        default_value = "bm1684x"
    )]
    pub chip: Option<Chip>,
    #[arg(long = "num_device", default_value_t = 1)]
    pub num_device: usize,
    /// Cores per chip (0 = the chip's maximum: bm1688 → 2, others → 1).
    #[arg(long = "num_core", default_value_t = 0)]
    pub num_core: usize,
    #[arg(short = 'b', long = "batch", default_value_t = 1)]
    pub batch: usize,
    /// Symmetric weight quantization (model_deploy --q_symmetric).
    #[arg(long)]
    pub symmetric: bool,
    #[arg(long = "embedding_disk")]
    pub embedding_disk: bool,
    #[command(flatten)]
    pub pieces: PieceArgs,
    #[arg(long = "lora_max_rank", default_value_t = 0)]
    pub lora_max_rank: usize,
    /// Keep the ONNX files and every intermediate file.
    #[arg(long)]
    pub debug: bool,
    /// Stop after model_transform (Top MLIR per piece).
    #[arg(long = "only_mlir")]
    pub only_mlir: bool,
    /// Stop after writing every piece as ONNX into <out_dir>/onnx (same as `export-onnx`,
    /// with every conversion flag's meaning).
    #[arg(long = "only_onnx")]
    pub only_onnx: bool,
    /// Accepted for llm_convert.py users: finished pieces are always reused from the cache.
    #[arg(long)]
    pub again: bool,
    /// Print the plan (pieces and tool command lines) without running anything.
    #[arg(long = "dry_run")]
    pub dry_run: bool,
    /// Output folder (default: ./<model>_<chip>_<quantize>).
    #[arg(short = 'o', long = "out_dir")]
    pub out_dir: Option<PathBuf>,
    /// Parallel compile workers (default: number of cores, fewer if memory is short).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where finished pieces are cached (default: $XDG_CACHE_HOME/llm-convert/pieces).
    #[arg(long = "cache-dir")]
    pub cache_dir: Option<PathBuf>,
    /// Run every tool step in its own Python process (slow; for debugging the worker).
    #[arg(long = "spawn-tools")]
    pub spawn_tools: bool,
    /// How pieces are compiled: `native` writes Top MLIR and runs tpuc-opt directly (no
    /// Python); `onnx` exports ONNX for TPU-MLIR's model_transform.py + model_deploy.py.
    #[arg(long, value_enum, default_value = "native")]
    pub backend: super::backend::Backend,
    /// Native backend (on by default): compile one layer of each shape fully and patch every
    /// other layer of that shape's weights into a copy (byte-identical to a full compile,
    /// create time aside; anything else compiles fully). `--compile-once=false` compiles every
    /// layer fully.
    #[arg(long = "compile-once", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub compile_once: Option<bool>,
    /// Compile only shard I of N (1-based, balanced by expected compile time) into the cache
    /// and write no bmodel; `llm-convert combine` with the same flags and a cache holding
    /// every shard's pieces then writes it.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<super::shard::Shard>,
}

/// The flags that shape the exported pieces, with llm_convert.py's rules: shared by convert
/// (and its `--only_onnx`) and `export-onnx`, so both build the same pieces.
#[derive(Args, Debug, Clone, Default)]
pub struct PieceArgs {
    /// lm_head returns logits; adds greedy_head and sample_head.
    #[arg(long = "do_sample")]
    pub do_sample: bool,
    /// Prefill with KV history (block_kv_i); implies --dynamic.
    #[arg(long = "use_history_kv", alias = "use_block_with_kv")]
    pub use_history_kv: bool,
    /// Prefill length (default: seq_length; chunk_length with --use_history_kv).
    #[arg(long = "max_input_length")]
    pub max_input_length: Option<usize>,
    /// Decode stages of block_cache_i for histories c, 2c, 4c, … < S (faster decode on short
    /// histories); with --use_history_kv also the prefill chunk (default S/4). At most S/2.
    #[arg(long = "chunk_length")]
    pub chunk_length: Option<usize>,
    /// Dynamic prefill: cost grows with the real prompt length, no mask input.
    #[arg(long)]
    pub dynamic: bool,
    /// Vision-language models: the largest image the vit takes, as `W,H` (W·H a multiple of
    /// 28·28 for Qwen2-VL / Qwen2.5-VL; default 672,896 / 768,768; InternVL ignores it).
    #[arg(long = "max_pixels")]
    pub max_pixels: Option<String>,
    /// Convert even when a weight holds NaN or Inf (refused by default: such a bmodel computes
    /// garbage).
    #[arg(long = "allow-non-finite")]
    pub allow_non_finite: bool,
}

/// [`PieceArgs`] after the rules: what the pieces are built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceShape {
    pub seq_length: usize,
    pub max_input_length: usize,
    /// Decode-stage chunk (0 = none); with history KV also MAX_INPUT_LENGTH.
    pub chunk_length: usize,
    pub dynamic: bool,
    pub do_sample: bool,
    pub use_history_kv: bool,
    /// `--max_pixels` as W·H (None: the model's default).
    pub max_pixels: Option<usize>,
}

/// The longest `-s` accepted: 128k, the longest context of the supported families' releases.
/// The pieces' tables and masks grow with it (the mask with its square).
pub const MAX_SEQ_LENGTH: usize = 1 << 17;

/// `-s` must leave room for a prompt and a generated token, and stay buildable.
fn check_seq_length(seq: usize) -> Result<(), InputError> {
    if seq < 2 {
        return Err(refuse(
            Path::new("llm-convert"),
            "-s/--seq_length must be at least 2",
            "pass e.g. -s 512",
        ));
    }
    if seq > MAX_SEQ_LENGTH {
        return Err(refuse(
            Path::new("llm-convert"),
            &format!("-s/--seq_length {seq} is more than {MAX_SEQ_LENGTH}"),
            "pass a context length the TPU can hold, e.g. -s 4096",
        ));
    }
    Ok(())
}

/// The output folder can be created: it is not a file, nor below one.
pub fn check_output_dir(out_dir: &Path) -> Result<(), InputError> {
    let abs = std::path::absolute(out_dir).unwrap_or_else(|_| out_dir.to_path_buf());
    // The nearest part of the path that exists must be a folder.
    match abs.ancestors().find(|p| p.exists()) {
        Some(existing) if !existing.is_dir() => Err(refuse(
            out_dir,
            &format!(
                "cannot create the output folder: {} is a file",
                existing.display()
            ),
            "pass -o with a folder path (not a file, nor inside one)",
        )),
        _ => Ok(()),
    }
}

impl PieceArgs {
    /// llm_convert.py's rules: history KV implies --dynamic, chunk_length defaults to S/4 and
    /// becomes MAX_INPUT_LENGTH (which may then not be given); chunk_length <= S/2. Errors
    /// name `model_path`.
    pub fn resolve(&self, seq_length: usize, model_path: &Path) -> Result<PieceShape, InputError> {
        check_seq_length(seq_length)?;
        let mut chunk = self.chunk_length.unwrap_or(0);
        let mut mil = self.max_input_length.unwrap_or(seq_length);
        if self.use_history_kv {
            if chunk == 0 {
                chunk = seq_length / 4;
            }
            if chunk == 0 {
                return Err(refuse(
                    model_path,
                    &format!(
                        "--use_history_kv needs --chunk_length > 0, and -s {seq_length} / 4 is 0"
                    ),
                    "pass --chunk_length explicitly or raise -s",
                ));
            }
            if let Some(given) = self.max_input_length {
                return Err(refuse(
                    model_path,
                    &format!("--max_input_length {given} cannot be set with --use_history_kv (it is --chunk_length)"),
                    "drop --max_input_length and set --chunk_length instead",
                ));
            }
            mil = chunk;
        }
        if chunk > seq_length / 2 {
            return Err(refuse(
                model_path,
                &format!(
                    "--chunk_length {chunk} is larger than -s {seq_length} / 2 = {}",
                    seq_length / 2
                ),
                "lower --chunk_length or raise -s",
            ));
        }
        if mil == 0 || mil > seq_length {
            return Err(refuse(
                model_path,
                &format!("--max_input_length {mil} must be between 1 and -s {seq_length}"),
                "lower --max_input_length or raise -s",
            ));
        }
        Ok(PieceShape {
            seq_length,
            max_input_length: mil,
            chunk_length: chunk,
            dynamic: self.dynamic || self.use_history_kv,
            do_sample: self.do_sample,
            use_history_kv: self.use_history_kv,
            max_pixels: super::max_pixels::parse(self.max_pixels.as_deref())?,
        })
    }
}

impl PieceShape {
    /// The one builder of the pieces' options.
    pub fn piece_options(&self) -> anyhow::Result<PieceOptions> {
        Ok(
            PieceOptions::new(self.seq_length, Some(self.max_input_length))?
                .with_dynamic(self.dynamic)
                .with_do_sample(self.do_sample)
                .with_history(self.use_history_kv, self.chunk_length)
                .with_max_pixels(self.max_pixels),
        )
    }
}

/// Normalised, validated options.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertOptions {
    pub model_path: PathBuf,
    /// Lower-case model name used in folder and file names.
    pub model_name: String,
    pub seq_length: usize,
    pub max_input_length: usize,
    pub quantize: Quantize,
    pub q_group_size: usize,
    pub chip: Chip,
    pub num_device: usize,
    pub num_core: usize,
    pub symmetric: bool,
    pub dynamic: bool,
    pub do_sample: bool,
    pub use_history_kv: bool,
    /// Decode-stage chunk (0 = none); with --use_history_kv also MAX_INPUT_LENGTH.
    pub chunk_length: usize,
    /// `--max_pixels` as W·H (vision-language models; None: the model's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pixels: Option<usize>,
    pub debug: bool,
    pub only_mlir: bool,
    pub only_onnx: bool,
    pub dry_run: bool,
    pub out_dir: PathBuf,
    pub jobs: Option<usize>,
    pub cache_dir: Option<PathBuf>,
    pub spawn_tools: bool,
    pub backend: super::backend::Backend,
    pub compile_once: bool,
    pub shard: Option<super::shard::Shard>,
    /// `-q auto` on a GGUF: its quantized block linears keep the file's own blocks (see
    /// `model::gguf_linear`); everything else compiles at f16.
    pub gguf_own_quant: bool,
}

pub(super) fn refuse(path: &Path, what: &str, fix: &str) -> InputError {
    InputError::invalid(path, what.to_string(), fix.to_string())
}

impl ConvertArgs {
    /// Flags that need only the command line; `resolve` finishes with the model config.
    pub fn validate(&self) -> Result<(PathBuf, usize), InputError> {
        let here = Path::new("llm-convert");
        let model = self.model_path.clone().ok_or_else(|| {
            refuse(
                here,
                "-m/--model_path is required",
                "pass -m <hf_dir|file.gguf>",
            )
        })?;
        let seq = self.seq_length.ok_or_else(|| {
            refuse(
                here,
                "-s/--seq_length is required",
                "pass -s <length>, e.g. -s 512",
            )
        })?;
        check_seq_length(seq)?;
        let unsupported: [(bool, &str); 4] = [
            (
                self.num_device > 1,
                "--num_device > 1 (multi-device tensor parallel)",
            ),
            (self.batch > 1, "--batch > 1"),
            (self.embedding_disk, "--embedding_disk"),
            (self.lora_max_rank > 0, "--lora_max_rank"),
        ];
        if let Some((_, what)) = unsupported.iter().find(|(on, _)| *on) {
            return Err(refuse(
                here,
                &format!("{what} is not supported by this llm-convert yet"),
                "drop the flag, or use TPU-MLIR's llm_convert.py for this model for now",
            ));
        }
        if self.num_device == 0 || self.batch == 0 {
            return Err(refuse(
                here,
                "--num_device and --batch must be at least 1",
                "fix the flag",
            ));
        }
        if self.q_group_size == Some(0) {
            return Err(refuse(
                here,
                "-g/--q_group_size must be positive",
                "use e.g. -g 64",
            ));
        }
        if self.jobs == Some(0) {
            return Err(refuse(
                here,
                "--jobs must be at least 1",
                "omit --jobs for the default",
            ));
        }
        if self.compile_once == Some(true) && self.backend != super::backend::Backend::Native {
            return Err(refuse(
                here,
                "--compile-once patches layers in the native backend only",
                "drop --backend onnx, or drop --compile-once",
            ));
        }
        if self.spawn_tools && self.backend == super::backend::Backend::Native {
            return Err(refuse(
                here,
                "--spawn-tools runs TPU-MLIR's Python tools, which the native backend does not use",
                "add --backend onnx, or drop --spawn-tools",
            ));
        }
        Ok((model, seq))
    }

    /// Full normalisation once the model's config is known.
    pub fn resolve(&self, cfg: &ModelConfig) -> Result<ConvertOptions, InputError> {
        let (model_path, seq_length) = self.validate()?;
        let asked = self.quantize.unwrap_or(Quantize::Auto);
        let gguf_own_quant = super::quantize_choice::keeps_gguf_quant(asked, cfg, self.backend);
        let quantize = match gguf_own_quant {
            // The blocks' A16MatMuls carry the file's bits; the rest (and activations) is f16,
            // the type of Q4_0 / Q8_0 scales.
            true => Quantize::F16,
            false => super::quantize_choice::resolve(asked, cfg, &model_path)?,
        };
        super::quantize_choice::check_backend(cfg, self.backend, &model_path)?;
        let shape = self.pieces.resolve(seq_length, &model_path)?;
        super::max_pixels::check(cfg, &shape, &model_path)?;
        super::shifted_cache::check(cfg, &shape, &model_path)?;
        let q_group_size = super::quantize_choice::group_size(self.q_group_size, cfg, &model_path)?;
        if quantize.is_weight_only() {
            let g = q_group_size;
            for (what, k) in [
                ("hidden_size", cfg.hidden_size),
                ("intermediate_size", cfg.intermediate_size),
                ("num_attention_heads*head_dim", cfg.q_dim()),
            ] {
                if k % g != 0 {
                    return Err(refuse(
                        &model_path.join("config.json"),
                        &format!("{what} = {k} is not a multiple of -g/--q_group_size {g}"),
                        "pick a group size that divides every matmul's input dimension (e.g. -g 32), or use -q bf16",
                    ));
                }
            }
        }
        let chip = self.chip.unwrap_or(Chip::Bm1684x);
        let num_core = if self.num_core == 0 {
            chip.max_cores()
        } else {
            self.num_core
        };
        let model_name = model_name(&model_path);
        let out_dir = self.out_dir.clone().unwrap_or_else(|| {
            PathBuf::from(format!("{model_name}_{}_{}", chip.name(), quantize.name()))
        });
        if inside(&out_dir, &model_path) {
            return Err(refuse(
                &out_dir,
                "the output folder is inside the model folder",
                "pass -o with a folder outside the model",
            ));
        }
        check_output_dir(&out_dir)?;
        Ok(ConvertOptions {
            model_path,
            model_name,
            seq_length,
            max_input_length: shape.max_input_length,
            quantize,
            q_group_size,
            chip,
            num_device: self.num_device,
            num_core,
            symmetric: self.symmetric,
            dynamic: shape.dynamic,
            do_sample: shape.do_sample,
            use_history_kv: shape.use_history_kv,
            chunk_length: shape.chunk_length,
            max_pixels: shape.max_pixels,
            debug: self.debug,
            only_mlir: self.only_mlir,
            only_onnx: self.only_onnx,
            dry_run: self.dry_run,
            out_dir,
            jobs: self.jobs,
            cache_dir: self.cache_dir.clone(),
            spawn_tools: self.spawn_tools,
            backend: self.backend,
            compile_once: self.backend == super::backend::Backend::Native
                && self.compile_once.unwrap_or(true),
            shard: self.shard,
            gguf_own_quant,
        })
    }
}

/// The model's name as llm_convert.py uses it: the folder or file name, lower case, no extension.
fn model_name(path: &Path) -> String {
    let p = path
        .components()
        .next_back()
        .map(|c| c.as_os_str())
        .unwrap_or_default();
    let name = Path::new(p)
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_else(|| "model".into());
    if name.is_empty() || name == "." || name == ".." {
        "model".into()
    } else {
        name
    }
}

fn inside(child: &Path, parent: &Path) -> bool {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    parent.is_dir() && abs(child).starts_with(abs(parent))
}

impl ConvertOptions {
    /// What the pieces are built from (the same shape `export-onnx` resolves).
    pub fn piece_shape(&self) -> PieceShape {
        PieceShape {
            seq_length: self.seq_length,
            max_input_length: self.max_input_length,
            chunk_length: self.chunk_length,
            dynamic: self.dynamic,
            do_sample: self.do_sample,
            use_history_kv: self.use_history_kv,
            max_pixels: self.max_pixels,
        }
    }

    pub fn piece_options(&self) -> anyhow::Result<PieceOptions> {
        Ok(self
            .piece_shape()
            .piece_options()?
            .with_gguf_own_quant(self.gguf_own_quant)
            .with_bf16_tables(
                self.backend == super::backend::Backend::Native && self.quantize.half() == "bf16",
            ))
    }

    /// `<model>_<q>_seq<S>_<chip>_<n>dev[_history]_{static|dynamic}` (other chips: `_<c>core`).
    pub fn folder_name(&self) -> String {
        let devices = match self.chip {
            Chip::Bm1684x => format!("{}dev", self.num_device),
            _ => format!("{}core", self.num_core),
        };
        format!(
            "{}_{}_seq{}_{}_{}{}_{}",
            self.model_name,
            self.quantize.name(),
            self.seq_length,
            self.chip.name(),
            devices,
            if self.use_history_kv { "_history" } else { "" },
            if self.dynamic { "dynamic" } else { "static" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_name_is_lower_case_stem() {
        assert_eq!(model_name(Path::new("/x/Qwen3-4B-AWQ")), "qwen3-4b-awq");
        assert_eq!(
            model_name(Path::new("/x/SmolLM2.Q4_1.gguf")),
            "smollm2.q4_1"
        );
        assert_eq!(
            model_name(Path::new("models/smollm2-135m-instruct/")),
            "smollm2-135m-instruct"
        );
    }
}
