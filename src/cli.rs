//! Command-line interface: argument parsing and wiring to the library. No logic lives here.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::convert::{self, ConvertArgs};
use crate::error::InputError;
use crate::model::Model;
use crate::reference::Reference;
use crate::toolchain::{self, doctor, install, Layout, RuntimeLibs};

#[derive(Parser)]
#[command(
    name = "llm-convert",
    version,
    about = "Convert Hugging Face LLMs into Sophgo TPU bmodels, and prove them right",
    long_about = "Convert Hugging Face LLMs into Sophgo TPU bmodels, and prove them right.\n\n\
        Without a subcommand, converts a model with TPU-MLIR llm_convert.py's flags:\n  \
        llm-convert -m <hf_dir|file.gguf> -s <seq> -q w4bf16 -c bm1684x -o <dir>",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Toolchain folder (default: $XDG_CACHE_HOME/llm-convert/tpu-mlir-1.30.2; env LLM_CONVERT_TOOLCHAIN).
    #[arg(long, global = true)]
    pub toolchain_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub convert: ConvertArgs,
}

#[derive(Subcommand)]
pub enum Command {
    /// Convert a model (the same as giving the flags without a subcommand).
    Convert(ConvertArgs),
    /// Install or inspect the pinned TPU-MLIR toolchain.
    Toolchain {
        #[command(subcommand)]
        action: ToolchainAction,
    },
    /// Check that the toolchain and runtime work; every failure says how to fix it.
    Doctor {
        #[arg(long)]
        json: bool,
        /// Runtime libraries: simulator (default), device, or a folder holding libbmrt.so.
        #[arg(long)]
        runtime: Option<String>,
    },
    /// Run the candle reference model (the golden model) greedily.
    Reference(ReferenceArgs),
    /// Write every piece (embedding, blocks, lm_head, ...) as an ONNX file.
    ExportOnnx(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// Hugging Face model folder, .gguf file, or bundled model folder (models/...).
    #[arg(short = 'm', long = "model_path", alias = "model")]
    pub model: PathBuf,
    /// KV cache length (SEQLEN).
    #[arg(short = 's', long = "seq_length")]
    pub seq_length: usize,
    /// Prefill length (default: seq_length).
    #[arg(long = "max_input_length")]
    pub max_input_length: Option<usize>,
    /// Dynamic prefill blocks (no mask input; any length up to max_input_length).
    #[arg(long)]
    pub dynamic: bool,
    /// lm_head returns logits; adds greedy_head and sample_head.
    #[arg(long = "do_sample")]
    pub do_sample: bool,
    /// Output folder; the ONNX files go to <out_dir>/onnx.
    #[arg(short = 'o', long = "out_dir")]
    pub out_dir: PathBuf,
}

#[derive(Subcommand)]
pub enum ToolchainAction {
    /// Provision everything: Debian packages, Python 3.10 venv, TPU-MLIR, bundled models.
    Install {
        /// Do not install Debian packages (someone else manages them).
        #[arg(long)]
        skip_apt: bool,
    },
    /// Print where the toolchain lives (JSON).
    Show,
}

#[derive(Args)]
pub struct ReferenceArgs {
    /// Hugging Face model folder, .gguf file, or bundled model folder (models/...).
    #[arg(short = 'm', long = "model_path", alias = "model")]
    pub model: PathBuf,
    /// Prompt token ids, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "prompt",
        required_unless_present = "prompt"
    )]
    pub tokens: Option<Vec<u32>>,
    /// Prompt text (needs a tokenizer).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Greedy tokens to generate.
    #[arg(long, default_value_t = 16)]
    pub steps: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: Cli) -> Result<i32> {
    let layout = match &cli.toolchain_dir {
        Some(d) => {
            // Bundled-model lookups read the same setting.
            std::env::set_var(toolchain::layout::ENV_TOOLCHAIN_DIR, d);
            Layout::new(d)
        }
        None => Layout::from_env(),
    };
    let Some(command) = cli.command else {
        return run_convert(&cli.convert, &layout);
    };
    match command {
        Command::Convert(args) => run_convert(&args, &layout),
        Command::Toolchain {
            action: ToolchainAction::Install { skip_apt },
        } => {
            install::install(&layout, &install::InstallOptions { skip_apt })?;
            Ok(0)
        }
        Command::Toolchain {
            action: ToolchainAction::Show,
        } => {
            let v = serde_json::json!({
                "root": layout.root, "installed": layout.is_installed(), "python": layout.python(),
                "tpuc_root": layout.tpuc_root(), "site_packages": layout.site_packages(),
                "version": toolchain::TPU_MLIR_VERSION,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        Command::Doctor { json, runtime } => {
            let rt = RuntimeLibs::select(&layout, runtime.as_deref());
            let report = doctor::run(&layout, &rt);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                doctor::print(&report);
            }
            Ok(if report.ok() { 0 } else { 1 })
        }
        Command::Reference(args) => run_reference(args),
        Command::ExportOnnx(args) => {
            let model = Model::open(&args.model)?;
            let opts = crate::arch::PieceOptions::new(args.seq_length, args.max_input_length)
                .map_err(|e| {
                    InputError::invalid(&args.model, format!("{e}"), "fix -s / --max_input_length")
                })?
                .with_dynamic(args.dynamic)
                .with_do_sample(args.do_sample);
            let t0 = std::time::Instant::now();
            let done =
                crate::export::export_onnx(&model, &opts, &args.out_dir.join("onnx"), false)?;
            let bytes: u64 = done.iter().map(|d| d.weight_bytes).sum();
            eprintln!(
                "{} pieces, {:.1} MB of weights in {:.1} s",
                done.len(),
                bytes as f64 / 1e6,
                t0.elapsed().as_secs_f64()
            );
            Ok(0)
        }
    }
}

fn run_reference(args: ReferenceArgs) -> Result<i32> {
    let t0 = std::time::Instant::now();
    let model = Model::open(&args.model)?;
    let tokenizer = model.load_tokenizer()?;
    let prompt_ids: Vec<u32> = match (&args.tokens, &args.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => {
            let tok = tokenizer.as_ref().ok_or_else(|| {
                InputError::invalid(
                    &args.model,
                    "--prompt needs a tokenizer and this model has none",
                    "pass --tokens instead",
                )
            })?;
            tok.encode(text.as_str(), false)
                .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?
                .get_ids()
                .to_vec()
        }
        (None, None) => unreachable!("clap requires --tokens or --prompt"),
    };
    let mut reference = Reference::new(&model).context("building the reference model")?;
    let generated = reference.generate_greedy(&prompt_ids, args.steps)?;
    let text = match &tokenizer {
        Some(t) => Some(
            t.decode(&generated, false)
                .map_err(|e| anyhow::anyhow!("decoding: {e}"))?,
        ),
        None => None,
    };
    let seconds = t0.elapsed().as_secs_f64();
    if args.json {
        let v = serde_json::json!({"prompt_ids": prompt_ids, "generated_ids": generated, "text": text, "seconds": seconds});
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("prompt ids: {prompt_ids:?}");
        println!("generated ids: {generated:?}");
        if let Some(t) = text {
            println!("text: {t}");
        }
        eprintln!("({seconds:.2} s)");
    }
    Ok(0)
}

fn run_convert(args: &ConvertArgs, layout: &Layout) -> Result<i32> {
    // Ctrl-C: kill every TPU-MLIR process we started (they live in their own process groups).
    let _ = ctrlc::set_handler(|| {
        convert::worker::kill_all_children();
        eprintln!("interrupted: finished pieces stay cached; rerun the same command to resume");
        std::process::exit(130);
    });
    let Some(outcome) = convert::convert(args, layout, args.json)? else {
        return Ok(0);
    };
    let m = &outcome.manifest;
    if args.json {
        println!("{}", serde_json::to_string_pretty(m)?);
    } else {
        let cached = m.pieces.iter().filter(|p| p.cached).count();
        println!(
            "bmodel: {} ({:.1} MB)",
            m.bmodel.display(),
            m.bmodel_bytes as f64 / 1e6
        );
        println!("manifest: {}", outcome.manifest_path.display());
        println!(
            "{} pieces ({} compiled, {} from cache) in {:.1} s: export {:.1} s, compile {:.1} s on {} workers, combine {:.1} s",
            m.pieces.len(),
            m.pieces.len() - cached,
            cached,
            m.timings.total_s,
            m.timings.export_s,
            m.timings.compile_s,
            m.timings.workers,
            m.timings.combine_s
        );
    }
    Ok(0)
}
