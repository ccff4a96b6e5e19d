//! The main job: model → ONNX pieces → model_transform / model_deploy per piece (cached,
//! parallel, fail-fast) → `model_tool --combine` → `<out>/<name>.bmodel`, `config/`,
//! `model.log` and `manifest.json`.

mod cache;
mod combine;
mod config_dir;
mod deploy_flags;
mod manifest;
pub mod options;
mod output_names;
mod progress;
mod scheduler;
pub mod worker;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

pub use manifest::{Manifest, PieceRecord};
pub use options::{ConvertArgs, ConvertOptions};

use crate::arch::{Piece, PieceOptions};
use crate::model::Model;
use crate::toolchain::Layout;
use cache::PieceCache;
use deploy_flags::DeployTemplate;
use progress::Progress;
use worker::{LazyWorker, SpawnRunner, ToolRunner};

/// Workers use ~0.9 GB each once TPU-MLIR (and torch) are imported.
const WORKER_MEM: u64 = 1 << 30;

/// What one piece needs to be compiled.
#[derive(Clone)]
struct PieceJob {
    piece: Piece,
    onnx: PathBuf,
    onnx_bytes: u64,
    outputs: Vec<String>,
    transform_argv: Vec<String>,
    deploy_argv: Vec<String>,
    key: String,
}

impl scheduler::Job for PieceJob {
    fn label(&self) -> String {
        self.piece.name()
    }

    /// A piece's transform + deploy hold a few copies of its weights.
    fn mem(&self) -> u64 {
        4 * self.onnx_bytes
    }
}

/// What compiling one piece did.
struct Compiled {
    bmodel: Option<PathBuf>,
    transform_s: f64,
    deploy_s: f64,
}

pub struct Outcome {
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
}

/// Runs a whole conversion.
pub fn convert(args: &ConvertArgs, layout: &Layout, quiet: bool) -> Result<Option<Outcome>> {
    let t_start = Instant::now();
    let (model_path, _) = args.validate()?;
    let model = Model::open(&model_path)?;
    let opts = args.resolve(&model.config)?;
    let template = DeployTemplate::builtin()?;
    let piece_opts = PieceOptions::new(opts.seq_length, Some(opts.max_input_length))?
        .with_dynamic(opts.dynamic)
        .with_do_sample(opts.do_sample);
    let folder = opts.out_dir.join(opts.folder_name());

    if opts.dry_run {
        print_plan(&model, &opts, &template, &folder, &piece_opts)?;
        return Ok(None);
    }
    crate::toolchain::require_installed(layout)?;
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;

    let pieces = crate::arch::pieces(&model.config, &piece_opts);
    let jobs_n = worker_count(&opts, pieces.len());
    // Workers start on their first job, so their ~6-10 s import overlaps the rest of the export.
    let runners = start_runners(layout, &opts, &folder, jobs_n)?;
    let cache_root = opts
        .cache_dir
        .clone()
        .unwrap_or_else(PieceCache::default_root);
    let cache = PieceCache::open(&cache_root)?;
    let onnx_dir = folder.join("onnx");
    let progress = Progress::new(pieces.len() as u64, "converting", quiet);
    progress.note(&format!(
        "{} pieces, {} workers, cache {}",
        pieces.len(),
        jobs_n,
        cache_root.display()
    ));

    // Export on this thread and hand each piece to the compile workers as soon as it exists.
    let t_work = Instant::now();
    let budget = scheduler::memory_budget().saturating_sub(WORKER_MEM * jobs_n as u64);
    let (tx, rx) = std::sync::mpsc::channel::<PieceJob>();
    let (planned, compiled) = std::thread::scope(|s| {
        let (cache_r, folder_r, opts_r, progress_r) = (&cache, &folder, &opts, &progress);
        let compiler = s.spawn(move || {
            scheduler::run_stream(rx, runners, budget, progress_r, |job, runner| {
                compile_piece(job, runner, folder_r, cache_r, opts_r)
            })
        });
        let planned = plan_pieces(
            &model,
            &pieces,
            &piece_opts,
            &onnx_dir,
            &template,
            &opts,
            &cache,
            &progress,
            &tx,
        );
        if planned.is_err() {
            worker::kill_all_children();
        }
        drop(tx);
        let compiled = compiler
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the compile scheduler panicked")));
        (planned, compiled)
    });
    let (planned, export_s) = planned?;
    let compiled = compiled.map_err(|e| e.context("compilation stopped; no bmodel was written"))?;
    progress.done();
    let compile_s = t_work.elapsed().as_secs_f64();
    let mut fresh: std::collections::HashMap<String, Compiled> = compiled
        .into_iter()
        .map(|(job, c)| (job.piece.name(), c))
        .collect();

    let mut records = Vec::with_capacity(planned.len());
    for job in &planned {
        let c = fresh.remove(&job.piece.name());
        let bmodel = match &c {
            Some(c) => c.bmodel.clone(),
            None => cache.get(&job.key, "bmodel"),
        };
        records.push(PieceRecord {
            name: job.piece.name(),
            kind: job.piece.kind().into(),
            cache_key: job.key.clone(),
            cached: c.is_none(),
            transform_s: c.as_ref().map(|c| c.transform_s),
            deploy_s: c.as_ref().map(|c| c.deploy_s),
            deploy_argv: job.deploy_argv.clone(),
            bmodel_bytes: bmodel
                .as_ref()
                .and_then(|b| std::fs::metadata(b).ok())
                .map(|m| m.len()),
            bmodel_sha256: match &bmodel {
                Some(b) => Some(cache.sha256(b)?),
                None => None,
            },
            bmodel,
        });
    }

    if opts.only_mlir {
        if !quiet {
            eprintln!("Top MLIR of every piece is in {}", folder.display());
        }
        return Ok(None);
    }

    let t_combine = Instant::now();
    let bmodel_path = opts.out_dir.join(format!("{}.bmodel", opts.folder_name()));
    let piece_paths: Vec<PathBuf> = records.iter().filter_map(|r| r.bmodel.clone()).collect();
    combine::combine(layout, &piece_paths, &bmodel_path)?;
    let combined_bytes = std::fs::metadata(&bmodel_path)?.len();
    let pieces_total: u64 = records.iter().filter_map(|r| r.bmodel_bytes).sum();
    if let Err(e) = combine::check_size(combined_bytes, pieces_total) {
        let _ = std::fs::remove_file(&bmodel_path);
        return Err(e);
    }
    let info = combine::info(layout, &bmodel_path)?;
    crate::util::write_atomic(&opts.out_dir.join("model.log"), info.as_bytes())?;
    let config_files = config_dir::write(&model, &opts.out_dir.join("config"))?;
    let combine_s = t_combine.elapsed().as_secs_f64();
    if !opts.debug {
        let _ = std::fs::remove_dir_all(&onnx_dir);
    }

    let manifest = Manifest::new(
        &opts,
        &model,
        &bmodel_path,
        combined_bytes,
        records,
        config_files,
        manifest::Timings {
            export_s,
            compile_s,
            combine_s,
            total_s: t_start.elapsed().as_secs_f64(),
            workers: jobs_n,
        },
    )?;
    let manifest_path = opts.out_dir.join("manifest.json");
    crate::util::write_atomic(&manifest_path, &serde_json::to_vec_pretty(&manifest)?)?;
    Ok(Some(Outcome {
        manifest,
        manifest_path,
    }))
}

/// Exports every piece, keys it, and sends the ones not in the cache to the compilers.
/// Returns every piece's job (cached ones included) and the export seconds.
#[allow(clippy::too_many_arguments)]
fn plan_pieces(
    model: &Model,
    pieces: &[Piece],
    piece_opts: &PieceOptions,
    onnx_dir: &Path,
    template: &DeployTemplate,
    opts: &ConvertOptions,
    cache: &PieceCache,
    progress: &Progress,
    to_compile: &std::sync::mpsc::Sender<PieceJob>,
) -> Result<(Vec<PieceJob>, f64)> {
    // Two stages: this thread exports, a second one hashes each ONNX file for its cache key
    // (sha256 of 1.2 GB of f32 weights costs ~10 s on a CPU without SHA extensions) and hands
    // uncached pieces to the compilers.
    let (exported_tx, exported_rx) = std::sync::mpsc::channel::<Exported>();
    std::thread::scope(|s| {
        let hasher = s.spawn(move || -> Result<Vec<PieceJob>> {
            let mut planned = Vec::new();
            for x in exported_rx {
                let name = x.piece.name();
                let key = cache::piece_key(&x.path, &x.transform_argv, &x.deploy_argv, &x.outputs)?;
                let onnx_bytes = std::fs::metadata(&x.path).map(|m| m.len()).unwrap_or(0);
                inject_fault(&name, &x.path, onnx_bytes)?;
                let job = PieceJob {
                    piece: x.piece,
                    onnx: std::path::absolute(&x.path)?,
                    onnx_bytes,
                    outputs: x.outputs,
                    transform_argv: x.transform_argv,
                    deploy_argv: x.deploy_argv,
                    key,
                };
                if !opts.only_mlir && cache.get(&job.key, "bmodel").is_some() {
                    progress.finish(&format!("{name} (cached)"));
                } else if to_compile.send(job.clone()).is_err() {
                    // The compilers stopped (a piece failed); their error is the one to report.
                    break;
                }
                planned.push(job);
            }
            Ok(planned)
        });
        let mut export_s = 0.0;
        let exporting = (|| -> Result<()> {
            for &piece in pieces {
                let e = crate::export::export_piece(model, piece, piece_opts, onnx_dir)?;
                export_s += e.seconds;
                let transform_argv = transform_argv(&piece.name(), &e, opts);
                let deploy_argv = template.deploy_argv(piece, opts)?;
                let x = Exported {
                    piece,
                    path: e.path,
                    outputs: e.outputs,
                    transform_argv,
                    deploy_argv,
                };
                if exported_tx.send(x).is_err() {
                    break; // the hasher failed; its error is reported below
                }
            }
            Ok(())
        })();
        drop(exported_tx);
        let planned = hasher
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the hashing thread panicked")));
        exporting?;
        Ok((planned?, export_s))
    })
}

/// A piece's ONNX file, on its way to being keyed.
struct Exported {
    piece: Piece,
    path: PathBuf,
    outputs: Vec<String>,
    transform_argv: Vec<String>,
    deploy_argv: Vec<String>,
}

/// `model_transform.py` arguments; `{onnx}` stands for the ONNX path (not part of the key).
fn transform_argv(name: &str, e: &crate::export::Exported, opts: &ConvertOptions) -> Vec<String> {
    let mut argv = vec![
        "--model_name".to_string(),
        name.to_string(),
        "--model_def".into(),
        "{onnx}".into(),
        "--mlir".into(),
        format!("{name}.mlir"),
    ];
    if let Some(shapes) = &e.dynamic_input_shapes {
        // Symbolic ONNX axes get their largest size; the Top MLIR stays static, and
        // model_deploy --dynamic makes the net dynamic (llm_convert.py's bmodels do the same).
        let list: Vec<String> = shapes
            .iter()
            .map(|s| {
                let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
                format!("[{}]", dims.join(","))
            })
            .collect();
        argv.extend(["--input_shapes".into(), format!("[{}]", list.join(","))]);
    }
    // Our graphs are already simple: onnxsim and its two constant-folding passes only cost
    // time (10 s on a 113 MB embedding). `type=bool` upstream: an empty value means False.
    argv.push("--do_onnx_sim=".into());
    if opts.debug {
        argv.push("--debug".into());
    }
    argv
}

/// Test hook: `LLM_CONVERT_FAULT_PIECE=<piece>` truncates that piece's ONNX file after its
/// cache key is taken, so the real model_transform.py fails on a broken input.
fn inject_fault(piece: &str, onnx: &Path, len: u64) -> Result<()> {
    if std::env::var("LLM_CONVERT_FAULT_PIECE").is_ok_and(|p| p == piece) {
        let f = std::fs::OpenOptions::new().write(true).open(onnx)?;
        f.set_len(len / 2)?;
    }
    Ok(())
}

/// Parallel workers: --jobs, else the cores, bounded by memory and the number of pieces.
fn worker_count(opts: &ConvertOptions, pieces: usize) -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let by_mem = (scheduler::memory_budget() / (2 * WORKER_MEM)).max(1) as usize;
    opts.jobs
        .unwrap_or(cores.min(by_mem))
        .clamp(1, pieces.max(1))
}

fn start_runners(
    layout: &Layout,
    opts: &ConvertOptions,
    folder: &Path,
    n: usize,
) -> Result<Vec<Box<dyn ToolRunner>>> {
    let mut runners: Vec<Box<dyn ToolRunner>> = Vec::with_capacity(n);
    for i in 0..n {
        if opts.spawn_tools {
            runners.push(Box::new(SpawnRunner::new(layout)));
        } else {
            let log = folder.join(format!("worker_{i}.log"));
            runners.push(Box::new(LazyWorker::new(layout, &log)));
        }
    }
    Ok(runners)
}

/// transform → restore output names → deploy → into the cache. The piece's work dir is
/// `<folder>/<piece>/` and its log `<folder>/<piece>.log`, as llm_convert.py lays them out.
fn compile_piece(
    job: &PieceJob,
    runner: &mut dyn ToolRunner,
    folder: &Path,
    cache: &PieceCache,
    opts: &ConvertOptions,
) -> Result<Compiled> {
    let name = job.piece.name();
    let work = std::path::absolute(folder.join(&name))?;
    let log = std::path::absolute(folder.join(format!("{name}.log")))?;
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _ = std::fs::remove_file(&log);
    let fail = |step: &str, e: anyhow::Error| {
        e.context(format!(
            "piece {name}: {step} failed; log {}:\n{}",
            log.display(),
            worker::tail(&log, 20)
        ))
    };
    let onnx = job.onnx.display().to_string();
    let targv: Vec<String> = job
        .transform_argv
        .iter()
        .map(|a| {
            if a == "{onnx}" {
                onnx.clone()
            } else {
                a.clone()
            }
        })
        .collect();
    let transform_s = runner
        .run("model_transform.py", &targv, &work, &log)
        .map_err(|e| fail("model_transform.py", e))?;
    let mlir = work.join(format!("{name}.mlir"));
    output_names::restore_file(&mlir, &job.outputs).map_err(|e| fail("renaming outputs", e))?;
    if opts.only_mlir {
        return Ok(Compiled {
            bmodel: None,
            transform_s,
            deploy_s: 0.0,
        });
    }
    let deploy_s = runner
        .run("model_deploy.py", &job.deploy_argv, &work, &log)
        .map_err(|e| fail("model_deploy.py", e))?;
    let produced = work.join(format!("{name}.bmodel"));
    if !produced.is_file() {
        return Err(fail(
            "model_deploy.py",
            anyhow::anyhow!("it reported success but wrote no {}", produced.display()),
        ));
    }
    let stored = cache.put(&job.key, "bmodel", &produced)?;
    if !opts.debug {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(Compiled {
        bmodel: Some(stored),
        transform_s,
        deploy_s,
    })
}

fn print_plan(
    model: &Model,
    opts: &ConvertOptions,
    template: &DeployTemplate,
    folder: &Path,
    piece_opts: &PieceOptions,
) -> Result<()> {
    println!(
        "model: {} ({:?})",
        model.source.display(),
        model.config.family
    );
    println!("output: {}.bmodel", folder.display());
    for piece in crate::arch::pieces(&model.config, piece_opts) {
        let name = piece.name();
        println!(
            "{name}:\n  model_transform.py --model_name {name} --model_def onnx/{name}.onnx --mlir {name}.mlir --do_onnx_sim=\n  model_deploy.py {}",
            template.deploy_argv(piece, opts)?.join(" ")
        );
    }
    Ok(())
}
