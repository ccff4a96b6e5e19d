//! Command-line interface: the clap types of the top level and the dispatch to each command.
//! No logic lives here: each command's flags, work and report sit next to the module it
//! belongs to.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::chat::{ChatArgs, GenerateArgs};
use crate::convert::{ConvertArgs, Mode};
use crate::exit::ExitStatus;
use crate::export::ExportArgs;
use crate::golden::ReferenceArgs;
use crate::runner::bench_report::BenchArgs;
use crate::runner::verify_report::VerifyArgs;
use crate::toolchain::doctor::DoctorArgs;
use crate::toolchain::{self, install, Layout};

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
    /// List every piece with its cache key, expected cost and shard (`--shards N`); compiles
    /// nothing.
    Plan {
        #[command(flatten)]
        args: ConvertArgs,
        /// Number of shards to assign the pieces to (what `--shard I/N` compiles).
        #[arg(long, default_value_t = 1)]
        shards: usize,
    },
    /// Write the bmodel from a piece cache that holds every piece (filled by `--shard I/N`
    /// runs with the same flags); refuses with the list of missing pieces.
    Combine(ConvertArgs),
    /// Install or inspect the pinned TPU-MLIR toolchain.
    Toolchain {
        #[command(subcommand)]
        action: ToolchainAction,
    },
    /// Check that the toolchain and runtime work; every failure says how to fix it.
    Doctor(DoctorArgs),
    /// Run the candle reference model (the golden model) greedily.
    Reference(ReferenceArgs),
    /// Run a bmodel and the reference on the same tokens; compare every block and every token.
    Verify(VerifyArgs),
    /// First-token latency, decode tokens/s, time per net and device memory of a bmodel.
    Bench(BenchArgs),
    /// Write every piece (embedding, blocks, lm_head, ...) as an ONNX file.
    ExportOnnx(ExportArgs),
    /// Generate a reply to one prompt with a bmodel (streamed; --json for a report).
    Generate(GenerateArgs),
    /// Chat with a bmodel on stdin: one line per turn, /clear starts over, EOF exits.
    Chat(ChatArgs),
}

#[derive(Subcommand)]
pub enum ToolchainAction {
    /// Provision everything: Debian packages, Python 3.10 venv, TPU-MLIR, bundled models.
    Install {
        /// Do not install Debian packages (someone else manages them).
        #[arg(long)]
        skip_apt: bool,
        /// Only what the native backend needs (tpuc-opt, model_tool, libbmrt + cmodel, the PPL
        /// JIT): no Python venv, torch or onnx. A later run without it adds them.
        #[arg(long)]
        native: bool,
    },
    /// Print where the toolchain lives (JSON).
    Show,
}

pub fn run(cli: Cli) -> Result<ExitStatus> {
    // The toolchain is a value from here on: nothing below reads it from the environment.
    let layout = match &cli.toolchain_dir {
        Some(dir) => Layout::new(dir),
        None => Layout::from_env(),
    };
    let ok = |r: Result<()>| r.map(|()| ExitStatus::Success);
    let Some(command) = cli.command else {
        return ok(crate::convert::command::run(&cli.convert, &layout));
    };
    match command {
        Command::Convert(args) => ok(crate::convert::command::run(&args, &layout)),
        Command::Plan { args, shards } => ok(crate::convert::command::run_in(
            &args,
            &layout,
            Mode::Plan { shards },
        )),
        Command::Combine(args) => ok(crate::convert::command::run_in(
            &args,
            &layout,
            Mode::Combine,
        )),
        Command::Toolchain {
            action: ToolchainAction::Install { skip_apt, native },
        } => ok(install::install(
            &layout,
            &install::InstallOptions { skip_apt, native },
        )),
        Command::Toolchain {
            action: ToolchainAction::Show,
        } => ok(toolchain::show(&layout)),
        Command::Doctor(args) => args.run(&layout),
        Command::Reference(args) => ok(args.run(&layout.bundled_models())),
        Command::Verify(args) => args.run(&layout),
        Command::Bench(args) => ok(args.run(&layout)),
        Command::ExportOnnx(args) => ok(args.run(&layout.bundled_models())),
        Command::Generate(args) => ok(args.run(&layout)),
        Command::Chat(args) => ok(args.run(&layout)),
    }
}
