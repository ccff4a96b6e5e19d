//! The main job: model → ONNX pieces → model_transform / model_deploy per piece (cached,
//! parallel, fail-fast) → `model_tool --combine` → `<out>/<name>.bmodel`, `config/`,
//! `model.log` and `manifest.json`.

mod cache;
mod combine;
pub mod command;
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

/// What one piece needs to be compiled: usually one step; block_cache_i with decode stages
/// has one more per stage, compiled after the first in the same job because they reuse its
/// IO addresses (`--save_io_alone_config` / `--use_io_alone_config`).
#[derive(Clone)]
struct PieceJob {
    piece: Piece,
    steps: Vec<Step>,
    key: String,
}

/// One transform + deploy.
#[derive(Clone)]
struct Step {
    piece: Piece,
    onnx: PathBuf,
    onnx_bytes: u64,
    outputs: Vec<String>,
    transform_argv: Vec<String>,
    deploy_argv: Vec<String>,
    quantize_table: Option<PathBuf>,
}

/// Where a decode stage's deploy reads the first step's IO address config.
const IO_ALONE_PLACEHOLDER: &str = "{io_alone_config}";
/// Where a step's deploy reads its quantize table (its content is part of the key).
const QTABLE_PLACEHOLDER: &str = "{quantize_table}";

impl scheduler::Job for PieceJob {
    fn label(&self) -> String {
        self.piece.name()
    }

    /// A piece's transform + deploy hold a few copies of its weights (steps run one by one).
    fn mem(&self) -> u64 {
        4 * self.steps.iter().map(|s| s.onnx_bytes).max().unwrap_or(0)
    }
}

/// What compiling one step did.
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
    let model = Model::open_with(&model_path, Some(&layout.bundled_models()))?;
    let opts = args.resolve(&model.config)?;
    let template = DeployTemplate::builtin()?;
    let piece_opts = opts.piece_options()?;
    let folder = opts.out_dir.join(opts.folder_name());

    if opts.dry_run {
        print_plan(&model, &opts, &template, &folder, &piece_opts)?;
        return Ok(None);
    }
    if opts.only_onnx {
        let dir = opts.out_dir.join("onnx");
        let done = crate::export::export_onnx(&model, &piece_opts, &dir, quiet)?;
        if !quiet {
            eprintln!("{} ONNX pieces in {}", done.len(), dir.display());
        }
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
    let progress = Progress::new(job_groups(&pieces).len() as u64, "converting", quiet);
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
    let mut fresh: std::collections::HashMap<String, Vec<Compiled>> = compiled
        .into_iter()
        .map(|(job, c)| (job.piece.file_stem(), c))
        .collect();

    // One record per step, in the runtime's combine order (a net's stages after it).
    let mut records = Vec::with_capacity(planned.len());
    for job in &planned {
        let mut steps_done = fresh.remove(&job.piece.file_stem()).map(Vec::into_iter);
        for (j, step) in job.steps.iter().enumerate() {
            let c = steps_done.as_mut().and_then(Iterator::next);
            let bmodel = match &c {
                Some(c) => c.bmodel.clone(),
                None => cache.get(&job.key, &cache::step_ext(j)),
            };
            records.push(PieceRecord {
                name: step.piece.file_stem(),
                kind: step.piece.kind().into(),
                cache_key: job.key.clone(),
                cached: c.is_none(),
                transform_s: c.as_ref().map(|c| c.transform_s),
                deploy_s: c.as_ref().map(|c| c.deploy_s),
                deploy_argv: step.deploy_argv.clone(),
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
    let (exported_tx, exported_rx) = std::sync::mpsc::channel::<Vec<Step>>();
    std::thread::scope(|s| {
        let hasher = s.spawn(move || -> Result<Vec<PieceJob>> {
            let mut planned = Vec::new();
            for steps in exported_rx {
                let inputs: Vec<cache::StepInputs> = steps
                    .iter()
                    .map(|x| cache::StepInputs {
                        onnx: &x.onnx,
                        transform_argv: &x.transform_argv,
                        deploy_argv: &x.deploy_argv,
                        output_names: &x.outputs,
                        quantize_table: x.quantize_table.as_deref(),
                    })
                    .collect();
                let key = cache::piece_key(&inputs)?;
                for x in &steps {
                    inject_fault(&x.piece.file_stem(), &x.onnx, x.onnx_bytes)?;
                }
                let job = PieceJob {
                    piece: steps[0].piece,
                    steps,
                    key,
                };
                let name = job.piece.file_stem();
                let stored = (0..job.steps.len())
                    .all(|j| cache.get(&job.key, &cache::step_ext(j)).is_some());
                if !opts.only_mlir && stored {
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
            for group in job_groups(pieces) {
                let mut steps = Vec::with_capacity(group.len());
                for (j, &piece) in group.iter().enumerate() {
                    let e = crate::export::export_piece(model, piece, piece_opts, onnx_dir)?;
                    export_s += e.seconds;
                    let deploy_argv =
                        step_deploy_argv(template, opts, &group, j, e.quantize_table.is_some())?;
                    steps.push(Step {
                        piece,
                        quantize_table: e
                            .quantize_table
                            .as_ref()
                            .map(std::path::absolute)
                            .transpose()?,
                        transform_argv: transform_argv(&piece.name(), &e, opts),
                        onnx_bytes: std::fs::metadata(&e.path).map(|m| m.len()).unwrap_or(0),
                        onnx: std::path::absolute(&e.path)?,
                        outputs: e.outputs,
                        deploy_argv,
                    });
                }
                if exported_tx.send(steps).is_err() {
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

/// `model_deploy.py` arguments of step `j` of a job: the template's, then (decode stages) the
/// IO address config the first step saves and the others reuse, then the quantize table.
/// Paths are placeholders, filled in per run.
fn step_deploy_argv(
    template: &DeployTemplate,
    opts: &ConvertOptions,
    group: &[Piece],
    j: usize,
    quantize_table: bool,
) -> Result<Vec<String>> {
    let mut argv = template.deploy_argv(group[j], opts)?;
    if group.len() > 1 {
        argv.extend(if j == 0 {
            [
                "--save_io_alone_config".into(),
                "io_alone_config.json".into(),
            ]
        } else {
            ["--use_io_alone_config".into(), IO_ALONE_PLACEHOLDER.into()]
        });
    }
    if quantize_table {
        argv.extend(["--quantize_table".into(), QTABLE_PLACEHOLDER.into()]);
    }
    Ok(argv)
}

/// Pieces grouped into compile jobs: each decode stage joins its block_cache_i.
fn job_groups(pieces: &[Piece]) -> Vec<Vec<Piece>> {
    let mut groups: Vec<Vec<Piece>> = Vec::new();
    for &p in pieces {
        match (p, groups.last_mut()) {
            (Piece::BlockCacheStage(i, _), Some(g)) if g[0] == Piece::BlockCache(i) => g.push(p),
            _ => groups.push(vec![p]),
        }
    }
    groups
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

/// Every step of a piece, then its bmodels into the cache (the first step's last: its
/// presence marks the piece done).
fn compile_piece(
    job: &PieceJob,
    runner: &mut dyn ToolRunner,
    folder: &Path,
    cache: &PieceCache,
    opts: &ConvertOptions,
) -> Result<Vec<Compiled>> {
    let io_alone =
        std::path::absolute(folder.join(job.piece.file_stem()))?.join("io_alone_config.json");
    let mut done = Vec::with_capacity(job.steps.len());
    let mut produced = Vec::with_capacity(job.steps.len());
    for step in &job.steps {
        let (c, bmodel) = compile_step(step, runner, folder, &io_alone, opts)?;
        done.push(c);
        produced.push(bmodel);
    }
    if opts.only_mlir {
        return Ok(done);
    }
    for j in (0..produced.len()).rev() {
        if let Some(b) = &produced[j] {
            make_reproducible(b)?;
            done[j].bmodel = Some(cache.put(&job.key, &cache::step_ext(j), b)?);
        }
    }
    if !opts.debug {
        for step in &job.steps {
            let _ = std::fs::remove_dir_all(folder.join(step.piece.file_stem()));
        }
    }
    Ok(done)
}

/// Zeroes what TPU-MLIR leaves uninitialised in a piece (see `bmodel::zero_timestep_padding`),
/// so a piece's bytes follow from its inputs and two cold builds are equal.
fn make_reproducible(bmodel: &Path) -> Result<()> {
    let mut bytes =
        std::fs::read(bmodel).with_context(|| format!("reading {}", bmodel.display()))?;
    match crate::bmodel::zero_timestep_padding(&mut bytes) {
        Ok(0) => Ok(()),
        Ok(_) => crate::util::write_atomic(bmodel, &bytes),
        Err(e) => {
            // Not fatal: the bmodel is right, only not byte-reproducible.
            eprintln!(
                "warning: {}: dynamic IR not normalised ({e:#})",
                bmodel.display()
            );
            Ok(())
        }
    }
}

/// transform → restore output names → deploy. The step's work dir is `<folder>/<stem>/` and its
/// log `<folder>/<stem>.log`, as llm_convert.py lays them out; returns the bmodel it wrote.
fn compile_step(
    step: &Step,
    runner: &mut dyn ToolRunner,
    folder: &Path,
    io_alone: &Path,
    opts: &ConvertOptions,
) -> Result<(Compiled, Option<PathBuf>)> {
    let (stem, name) = (step.piece.file_stem(), step.piece.name());
    let work = std::path::absolute(folder.join(&stem))?;
    let log = std::path::absolute(folder.join(format!("{stem}.log")))?;
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _ = std::fs::remove_file(&log);
    let fail = |tool: &str, e: anyhow::Error| {
        e.context(format!(
            "piece {stem}: {tool} failed; log {}:\n{}",
            log.display(),
            worker::tail(&log, 20)
        ))
    };
    let fill = |argv: &[String]| -> Vec<String> {
        argv.iter()
            .map(|a| match a.as_str() {
                "{onnx}" => step.onnx.display().to_string(),
                IO_ALONE_PLACEHOLDER => io_alone.display().to_string(),
                QTABLE_PLACEHOLDER => step
                    .quantize_table
                    .as_ref()
                    .map(|q| q.display().to_string())
                    .unwrap_or_default(),
                _ => a.clone(),
            })
            .collect()
    };
    let transform_s = runner
        .run(
            "model_transform.py",
            &fill(&step.transform_argv),
            &work,
            &log,
        )
        .map_err(|e| fail("model_transform.py", e))?;
    let mlir = work.join(format!("{name}.mlir"));
    output_names::restore_file(&mlir, &step.outputs).map_err(|e| fail("renaming outputs", e))?;
    let mut compiled = Compiled {
        bmodel: None,
        transform_s,
        deploy_s: 0.0,
    };
    if opts.only_mlir {
        return Ok((compiled, None));
    }
    compiled.deploy_s = runner
        .run("model_deploy.py", &fill(&step.deploy_argv), &work, &log)
        .map_err(|e| fail("model_deploy.py", e))?;
    let produced = work.join(format!("{name}.bmodel"));
    if !produced.is_file() {
        return Err(fail(
            "model_deploy.py",
            anyhow::anyhow!("it reported success but wrote no {}", produced.display()),
        ));
    }
    Ok((compiled, Some(produced)))
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
    for group in job_groups(&crate::arch::pieces(&model.config, piece_opts)) {
        for (j, piece) in group.iter().enumerate() {
            let (name, stem) = (piece.name(), piece.file_stem());
            let qtable = crate::arch::build(*piece, &model.config, piece_opts)
                .quantize_table()
                .is_some();
            let io_alone = format!("{}/io_alone_config.json", group[0].file_stem());
            let deploy = step_deploy_argv(template, opts, &group, j, qtable)?
                .into_iter()
                .map(|a| match a.as_str() {
                    IO_ALONE_PLACEHOLDER => io_alone.clone(),
                    QTABLE_PLACEHOLDER => format!("onnx/{stem}.qtable"),
                    _ => a,
                })
                .collect::<Vec<_>>()
                .join(" ");
            println!(
                "{stem}:\n  model_transform.py --model_name {name} --model_def onnx/{stem}.onnx --mlir {name}.mlir --do_onnx_sim=\n  model_deploy.py {deploy}"
            );
        }
    }
    Ok(())
}
