//! Command-line interface: argument parsing and wiring to the library. No logic lives here.

use std::io::Write;
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

/// What `generate` and `chat` share.
#[derive(Args)]
pub struct TextGenArgs {
    /// The combined bmodel.
    pub bmodel: PathBuf,
    /// The config folder convert wrote next to the bmodel (<out>/config), a Hugging Face
    /// model folder, or a .gguf file: tokenizer, chat template, EOS ids, generation_config.json.
    #[arg(short = 'm', long = "model_path", alias = "model")]
    pub config: PathBuf,
    /// Use the text as is, without the chat template.
    #[arg(long = "no-template")]
    pub no_template: bool,
    /// A system message for the chat template.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens to generate per reply (generation also stops at EOS and a full KV cache).
    #[arg(long = "max-tokens", default_value_t = 256)]
    pub max_tokens: usize,
    /// Sample (through the bmodel's sample_head; needs a --do_sample bmodel) with
    /// generation_config.json's parameters. Any of the options below also turns sampling on;
    /// without them decoding is greedy.
    #[arg(long)]
    pub sample: bool,
    /// Sampling temperature (> 0; 0 means greedy).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Candidates to sample from, 1..=50.
    #[arg(long = "top-k")]
    pub top_k: Option<usize>,
    /// Nucleus sampling threshold, in (0, 1].
    #[arg(long = "top-p")]
    pub top_p: Option<f32>,
    /// Repetition penalty (> 0; 1 = none) on the last --repetition-window tokens.
    #[arg(long = "repetition-penalty")]
    pub repetition_penalty: Option<f32>,
    /// Tokens the repetition penalty looks back at (default 64).
    #[arg(long = "repetition-window")]
    pub repetition_window: Option<usize>,
    /// Seed for the draws (default: random, reported with --json).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Runtime libraries: simulator (default), device, or a folder holding libbmrt.so.
    #[arg(long)]
    pub runtime: Option<String>,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub common: TextGenArgs,
    /// The prompt (a user message, unless --no-template).
    #[arg(long)]
    pub prompt: String,
    /// Print a JSON report (text, token ids, stop reason, timings) instead of the text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: TextGenArgs,
    /// One JSON report per turn, a line each (as generate --json), instead of streamed text.
    #[arg(long)]
    pub json: bool,
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

#[derive(Args)]
pub struct VerifyArgs {
    /// The combined bmodel (ours or TPU-MLIR llm_convert.py's).
    pub bmodel: PathBuf,
    /// The model it was made from (the reference runs on its weights).
    #[arg(short = 'm', long = "model_path", alias = "model")]
    pub model: PathBuf,
    /// Prompt token ids, comma separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    pub tokens: Option<Vec<u32>>,
    /// Prompt text (needs a tokenizer).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Tokens to generate (the first comes from prefill).
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// The bmodel's quantization, for the default thresholds (default: from manifest.json next
    /// to the bmodel, else from its file name).
    #[arg(short = 'q', long)]
    pub quantize: Option<String>,
    /// Minimum cosine of every block's output (default by quantization).
    #[arg(long = "min-cosine")]
    pub min_cosine: Option<f64>,
    /// Minimum fraction of generated tokens the reference agrees with (default by quantization).
    #[arg(long = "min-agreement")]
    pub min_agreement: Option<f64>,
    /// A differing token counts as agreeing when the reference ranks it within this fraction
    /// of its logit range below its own pick (default by quantization; 0 = exact only).
    #[arg(long = "tie-margin")]
    pub tie_margin: Option<f32>,
    /// Runtime libraries: simulator (default), device, or a folder holding libbmrt.so.
    #[arg(long)]
    pub runtime: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct BenchArgs {
    /// The combined bmodel.
    pub bmodel: PathBuf,
    /// Prompt length for the prefill (capped at MAX_INPUT_LENGTH).
    #[arg(long = "prompt-tokens", default_value_t = 16)]
    pub prompt_tokens: usize,
    /// Tokens to decode after the prefill.
    #[arg(long = "decode-tokens", default_value_t = 8)]
    pub decode_tokens: usize,
    /// Runtime libraries: simulator (default), device, or a folder holding libbmrt.so.
    #[arg(long)]
    pub runtime: Option<String>,
    #[arg(long)]
    pub json: bool,
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
        Command::Verify(args) => run_verify(args, &layout),
        Command::Bench(args) => run_bench(args, &layout),
        Command::Generate(args) => run_generate(args, &layout),
        Command::Chat(args) => run_chat(args, &layout),
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
    let prompt_ids = prompt_ids(&args.model, tokenizer.as_ref(), &args.tokens, &args.prompt)?;
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

/// `--tokens` as given, or `--prompt` through the model's tokenizer.
fn prompt_ids(
    model: &std::path::Path,
    tokenizer: Option<&tokenizers::Tokenizer>,
    tokens: &Option<Vec<u32>>,
    prompt: &Option<String>,
) -> Result<Vec<u32>> {
    match (tokens, prompt) {
        (Some(ids), _) => Ok(ids.clone()),
        (None, Some(text)) => {
            let tok = tokenizer.ok_or_else(|| {
                InputError::invalid(
                    model,
                    "--prompt needs a tokenizer and this model has none",
                    "pass --tokens instead",
                )
            })?;
            Ok(tok
                .encode(text.as_str(), false)
                .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?
                .get_ids()
                .to_vec())
        }
        (None, None) => Err(InputError::invalid(
            model,
            "no prompt given",
            "pass --tokens 1,2,3 or --prompt TEXT",
        )
        .into()),
    }
}

/// The quantization a bmodel was built with: manifest.json beside it, else its file name.
fn bmodel_quantize(bmodel: &std::path::Path) -> Option<String> {
    let manifest = bmodel.parent()?.join("manifest.json");
    if let Ok(text) = std::fs::read_to_string(manifest) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if let Some(q) = v["options"]["quantize"].as_str() {
                return Some(q.to_string());
            }
        }
    }
    let name = bmodel.file_name()?.to_string_lossy().to_lowercase();
    ["w4bf16", "w4f16", "w8bf16", "w8f16", "bf16", "f16", "f32"]
        .iter()
        .find(|q| name.contains(&format!("_{q}_")))
        .map(|q| q.to_string())
}

/// The runtime with `bmodel` loaded, the real stdout (fd 1 now goes to stderr: the simulator
/// chatters there), the libraries chosen, and the load seconds.
fn open_bmodel(
    layout: &Layout,
    runtime: Option<&str>,
    bmodel: &std::path::Path,
) -> Result<(std::fs::File, RuntimeLibs, crate::bmrt::Runtime, f64)> {
    if !bmodel.is_file() {
        return Err(InputError::missing(bmodel, "the bmodel to run").into());
    }
    let out = crate::util::stdout_to_stderr()?;
    let libs = RuntimeLibs::select(layout, runtime);
    let mut rt = crate::bmrt::Runtime::open(&libs, 0)?;
    let t0 = std::time::Instant::now();
    rt.load_bmodel(bmodel)?;
    Ok((out, libs, rt, t0.elapsed().as_secs_f64()))
}

fn run_verify(args: VerifyArgs, layout: &Layout) -> Result<i32> {
    use crate::runner::verify::{verify, Thresholds};
    let model = Model::open(&args.model)?;
    let tokenizer = model.load_tokenizer()?;
    let prompt = prompt_ids(&args.model, tokenizer.as_ref(), &args.tokens, &args.prompt)?;
    let quantize = args
        .quantize
        .clone()
        .or_else(|| bmodel_quantize(&args.bmodel))
        .unwrap_or_else(|| "unknown".into());
    let mut thresholds = Thresholds::for_quantize(&quantize);
    if let Some(c) = args.min_cosine {
        thresholds.min_cosine = c;
    }
    if let Some(a) = args.min_agreement {
        thresholds.min_agreement = a;
    }
    if let Some(t) = args.tie_margin {
        thresholds.tie_margin = t;
    }
    let (mut out, _, rt, _) = open_bmodel(layout, args.runtime.as_deref(), &args.bmodel)?;
    let mut pipeline = crate::runner::Pipeline::new(&rt)?;
    let quiet = args.json;
    let report = verify(
        &mut pipeline,
        &model,
        &prompt,
        args.steps,
        thresholds,
        |s| {
            if quiet {
                return;
            }
            let worst = s.blocks.iter().min_by(|a, b| a.cosine.total_cmp(&b.cosine));
            let mark = if s.token == s.reference_token {
                ""
            } else {
                "  <-- differs"
            };
            eprintln!(
            "step {:>3}: token {:>6} (reference {:>6}){mark}; worst block {} cosine {:.6} ({:.1} s)",
            s.step,
            s.token,
            s.reference_token,
            worst.map_or(0, |b| b.layer),
            worst.map_or(1.0, |b| b.cosine),
            s.seconds
        );
        },
    )?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(
            out,
            "quantization: {quantize} (thresholds: block cosine >= {}, token agreement >= {})",
            thresholds.min_cosine, thresholds.min_agreement
        )?;
        writeln!(out, "prefill blocks:")?;
        for b in &report.steps[0].blocks {
            let flag = if b.cosine < thresholds.min_cosine {
                "  <-- below threshold"
            } else {
                ""
            };
            writeln!(
                out,
                "  block_{:<3} cosine {:.6}  max |diff| {:.3e}{flag}",
                b.layer, b.cosine, b.max_abs_diff
            )?;
        }
        writeln!(
            out,
            "tokens: {:?}\nagreement with the reference: {:.0}% ({:.0}% exact, near ties at steps {:?}; {}); lowest block cosine {:.6} at step {} block_{}",
            report.tokens,
            report.agreement * 100.0,
            report.exact_agreement * 100.0,
            report.near_ties,
            match report.first_divergence {
                Some(s) => format!("first divergence at step {s}"),
                None => "no divergence".into(),
            },
            report.min_cosine,
            report.worst_block.0,
            report.worst_block.1
        )?;
        writeln!(out, "{}", if report.pass { "PASS" } else { "FAIL" })?;
    }
    Ok(if report.pass { 0 } else { 3 })
}

fn run_bench(args: BenchArgs, layout: &Layout) -> Result<i32> {
    let (mut out, libs, rt, load_s) = open_bmodel(layout, args.runtime.as_deref(), &args.bmodel)?;
    let r = crate::runner::bench::bench(
        &rt,
        load_s,
        args.prompt_tokens,
        args.decode_tokens,
        libs.is_simulator(),
    )?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(0);
    }
    let label = if r.simulated {
        " (SIMULATED: CPU cmodel, not a TPU's speed)"
    } else {
        ""
    };
    writeln!(out, "runtime: {}{label}", r.runtime)?;
    writeln!(
        out,
        "model: {} layers, MAX_INPUT_LENGTH {}, SEQLEN {}, {}",
        r.layers,
        r.max_input_length,
        r.seq_length,
        if r.dynamic { "dynamic" } else { "static" }
    )?;
    writeln!(out, "load: {:.2} s", r.load_s)?;
    writeln!(
        out,
        "first token ({} prompt tokens): {:.3} s",
        r.prompt_tokens, r.first_token_s
    )?;
    writeln!(
        out,
        "decode: {:.2} tokens/s over {} tokens",
        r.decode_tokens_per_s, r.decode_tokens
    )?;
    writeln!(out, "mean time per net:")?;
    for n in &r.nets {
        writeln!(
            out,
            "  {:<18} {:>4} launches  {:>10.2} ms",
            n.net, n.launches, n.mean_ms
        )?;
    }
    match r.device_memory_mb {
        (0, 0) => writeln!(
            out,
            "device memory: not reported by this runtime (the simulator reports none)"
        )?,
        (total, used) => writeln!(out, "device memory: {used} MB used of {total} MB")?,
    }
    Ok(0)
}

/// eprintln! after flushing the simulator's buffered chatter, so status lines stay whole.
macro_rules! status {
    ($($arg:tt)*) => {{
        crate::util::flush_c_stdio();
        eprintln!($($arg)*);
    }};
}

/// The chat config, the loaded runtime and a pipeline set up for sampling or greedy, for
/// `generate` and `chat`.
struct TextGen {
    cfg: crate::chat::ChatConfig,
    out: std::fs::File,
    simulated: bool,
    runtime: String,
    load_s: f64,
}

impl TextGen {
    fn open(args: &TextGenArgs, layout: &Layout) -> Result<(TextGen, crate::bmrt::Runtime)> {
        // The config first: a bad folder fails fast, before the bmodel loads.
        let cfg = crate::chat::ChatConfig::load(&args.config)?;
        let (out, libs, rt, load_s) = open_bmodel(layout, args.runtime.as_deref(), &args.bmodel)?;
        let runtime = rt.describe().to_string();
        Ok((
            TextGen {
                cfg,
                out,
                simulated: libs.is_simulator(),
                runtime,
                load_s,
            },
            rt,
        ))
    }

    /// The pipeline, sampling as asked (a bmodel without sample_head refuses to sample).
    fn pipeline<'rt>(
        &self,
        args: &TextGenArgs,
        rt: &'rt crate::bmrt::Runtime,
    ) -> Result<crate::runner::Pipeline<'rt>> {
        let flags = crate::chat::SamplingFlags {
            sample: args.sample,
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            repetition_penalty: args.repetition_penalty,
            repetition_window: args.repetition_window,
            seed: args.seed,
        };
        let (sampling, notes) = crate::chat::resolve_sampling(&flags, &self.cfg.generation);
        for n in notes {
            status!("note: {n}");
        }
        if sampling.is_none()
            && args.temperature.is_none()
            && self.cfg.generation.do_sample == Some(true)
        {
            status!("note: generation_config.json asks for sampling; decoding greedily (pass --sample for its parameters)");
        }
        let mut pipeline = crate::runner::Pipeline::new(rt)?;
        // Both refusals are the user's to fix: exit code 2.
        let fix = if sampling.is_some() && pipeline.nets.sample_head.is_none() {
            "convert the model again with --do_sample, or drop the sampling options for greedy decoding"
        } else {
            "keep the sampling options within the ranges above"
        };
        pipeline.set_sampling(sampling).map_err(|e| {
            InputError::invalid(&args.bmodel, format!("cannot sample as asked: {e:#}"), fix)
        })?;
        Ok(pipeline)
    }

    /// Prompts up to this length fit: one prefill, or with block_kv nets (chunked prefill)
    /// the KV cache.
    fn limit(pipeline: &crate::runner::Pipeline) -> usize {
        let n = &pipeline.nets;
        if n.history_kv() {
            n.seq_length - 1
        } else {
            n.max_input_length.min(n.seq_length - 1)
        }
    }

    fn timing_note(&self, g: &crate::chat::Generation) -> String {
        format!(
            "{} prompt tokens{}, {} generated; first token {:.3} s, {:.2} tokens/s{}",
            g.prompt_tokens,
            if g.cached_prompt_tokens > 0 {
                format!(" ({} already in the KV cache)", g.cached_prompt_tokens)
            } else {
                String::new()
            },
            g.tokens.len(),
            g.first_token_s,
            g.decode_tokens_per_s(),
            if self.simulated {
                " (SIMULATED: CPU cmodel, not a TPU's speed)"
            } else {
                ""
            }
        )
    }
}

/// The `--json` report of one generation (generate's, and each turn of chat's).
fn generation_json(
    tg: &TextGen,
    pipeline: &crate::runner::Pipeline,
    prompt: &[u32],
    g: &crate::chat::Generation,
) -> serde_json::Value {
    serde_json::json!({
        "text": g.text,
        "prompt_ids": prompt,
        "cached_prompt_tokens": g.cached_prompt_tokens,
        "tokens": g.tokens,
        "stop_reason": g.stop_reason,
        "stop_message": g.stop_reason.describe(pipeline.nets.seq_length),
        "sampling": pipeline.sampling(),
        "timings": {
            "simulated": tg.simulated,
            "load_s": tg.load_s,
            "first_token_s": g.first_token_s,
            "decode_s": g.decode_s,
            "decode_tokens_per_s": g.decode_tokens_per_s(),
        },
        "runtime": tg.runtime,
    })
}

fn run_generate(args: GenerateArgs, layout: &Layout) -> Result<i32> {
    use crate::chat::{generate, Message};
    let (mut tg, rt) = TextGen::open(&args.common, layout)?;
    let mut pipeline = tg.pipeline(&args.common, &rt)?;
    let prompt = match (&tg.cfg.template, args.common.no_template) {
        (Some(t), false) => {
            let mut messages = Vec::new();
            if let Some(s) = &args.common.system {
                messages.push(Message::new("system", s));
            }
            messages.push(Message::new("user", &args.prompt));
            tg.cfg.encode(&t.render(&messages, true)?, false)?
        }
        (None, false) => {
            status!(
                "note: {} has no chat template: using the prompt as is (--no-template)",
                tg.cfg.source.display()
            );
            tg.cfg.encode(&args.prompt, true)?
        }
        (_, true) => tg.cfg.encode(&args.prompt, true)?,
    };
    let limit = TextGen::limit(&pipeline);
    if prompt.len() > limit {
        return Err(InputError::invalid(
            &args.common.bmodel,
            format!(
                "the prompt is {} tokens; this bmodel takes at most {limit} (MAX_INPUT_LENGTH {}, SEQLEN {})",
                prompt.len(),
                pipeline.nets.max_input_length,
                pipeline.nets.seq_length
            ),
            "shorten the prompt, or convert with a larger -s / --max_input_length",
        )
        .into());
    }
    let json = args.json;
    let out = &mut tg.out;
    let g = generate(
        &mut pipeline,
        &tg.cfg.tokenizer,
        &prompt,
        args.common.max_tokens,
        &tg.cfg.eos_ids,
        |piece| {
            if !json {
                out.write_all(piece.as_bytes())?;
                out.flush()?;
            }
            Ok(())
        },
    )?;
    let seq = pipeline.nets.seq_length;
    if json {
        let v = generation_json(&tg, &pipeline, &prompt, &g);
        writeln!(tg.out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(tg.out)?;
        status!(
            "[{}; stop: {}]",
            tg.timing_note(&g),
            g.stop_reason.describe(seq)
        );
    }
    Ok(0)
}

fn run_chat(args: ChatArgs, layout: &Layout) -> Result<i32> {
    use crate::chat::{generate, Conversation, StopReason};
    use std::io::BufRead;
    let json = args.json;
    let args = args.common;
    let (mut tg, rt) = TextGen::open(&args, layout)?;
    let mut pipeline = tg.pipeline(&args, &rt)?;
    let limit = TextGen::limit(&pipeline);
    let seq = pipeline.nets.seq_length;
    let templated = tg.cfg.template.is_some() && !args.no_template;
    if !templated {
        status!("note: no chat template in use: every line is a separate raw prompt (no history)");
    }
    if pipeline.nets.history_kv() {
        status!(
            "chat: one line per turn, /clear starts over, end of input (Ctrl-D) exits. This \
             history-KV bmodel keeps the conversation in its KV cache: each turn prefills only \
             its new tokens (the conversation holds at most {limit} tokens)."
        );
    } else {
        status!(
            "chat: one line per turn, /clear starts over, end of input (Ctrl-D) exits. This bmodel \
             keeps no KV cache between turns: every turn re-reads the conversation (at most {limit} tokens)."
        );
    }
    let mut conversation = Conversation::new(args.system.clone());
    let stdin = std::io::stdin();
    let prompt_mark = || {
        crate::util::flush_c_stdio();
        eprint!("> ");
        let _ = std::io::stderr().flush();
    };
    prompt_mark();
    for line in stdin.lock().lines() {
        let line = line.context("reading stdin")?;
        let line = line.trim();
        if line.is_empty() {
            prompt_mark();
            continue;
        }
        if line == "/clear" {
            conversation.clear();
            status!("(conversation cleared)");
            prompt_mark();
            continue;
        }
        let ids = if templated {
            conversation.push_user(line);
            match conversation.prompt(&tg.cfg, limit) {
                Ok(p) => {
                    if p.dropped_exchanges > 0 {
                        status!(
                            "(the conversation no longer fits MAX_INPUT_LENGTH ({limit} tokens): dropped the oldest {} exchange(s))",
                            p.dropped_exchanges
                        );
                    }
                    p.ids
                }
                Err(e) => {
                    status!("{e:#}");
                    prompt_mark();
                    continue;
                }
            }
        } else {
            let ids = tg.cfg.encode(line, true)?;
            if ids.len() > limit {
                status!(
                    "this line is {} tokens; the bmodel takes at most {limit} (MAX_INPUT_LENGTH): send a shorter one",
                    ids.len()
                );
                prompt_mark();
                continue;
            }
            ids
        };
        let out = &mut tg.out;
        let g = generate(
            &mut pipeline,
            &tg.cfg.tokenizer,
            &ids,
            args.max_tokens,
            &tg.cfg.eos_ids,
            |piece| {
                if !json {
                    out.write_all(piece.as_bytes())?;
                    out.flush()?;
                }
                Ok(())
            },
        )?;
        if json {
            let v = generation_json(&tg, &pipeline, &ids, &g);
            writeln!(tg.out, "{}", serde_json::to_string(&v)?)?;
            tg.out.flush()?;
        } else {
            writeln!(tg.out)?;
        }
        if templated {
            conversation.push_assistant(&g.text);
        }
        if g.stop_reason != StopReason::Eos {
            status!("[stopped: {}]", g.stop_reason.describe(seq));
        }
        status!("[{}]", tg.timing_note(&g));
        prompt_mark();
    }
    status!();
    Ok(0)
}
