//! The main job: model → plan (pieces × steps × flags) → ONNX pieces, keyed for the cache →
//! model_transform / model_deploy per piece (cached, parallel, fail-fast) →
//! `model_tool --combine` → `<out>/<name>.bmodel`, `config/`, `model.log` and `manifest.json`.

pub mod backend;
mod cache;
mod combine;
pub mod command;
mod compile;
mod config_dir;
mod deploy_flags;
mod dry_run;
pub mod graph_key;
mod manifest;
pub mod max_pixels;
pub mod options;
mod output_names;
mod plan;
mod prepare;
mod progress;
mod publish;
mod quantize_choice;
mod records;
mod scheduler;
pub mod shard;
mod shard_report;
mod shifted_cache;
mod up_to_date;
pub mod worker;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use sha2::Digest;

pub use combine::mask_create_time;
pub use compile::WrapRunner;
pub use manifest::{Manifest, PieceRecord};
pub use options::{ConvertArgs, ConvertOptions};
pub use shard::Shard;
pub use worker::ToolRunner;

use crate::arch::PieceOptions;
use crate::model::Model;
use crate::toolchain::Layout;
use cache::PieceCache;
use compile::{Compiled, WORKER_MEM};
use deploy_flags::DeployTemplate;
use plan::Plan;
use prepare::{PieceJob, Prepare};
use progress::Progress;

pub struct Outcome {
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
}

/// What a run does with its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Compile what the cache lacks (all of it, or `--shard`'s part) and write the bmodel.
    Convert,
    /// `llm-convert plan`: export and key every piece, list them with their shard of
    /// `shards`; compile nothing.
    Plan { shards: usize },
    /// `llm-convert combine`: write the bmodel from the cache alone, refusing (with the list)
    /// when a piece is missing.
    Combine,
}

/// Runs a whole conversion.
pub fn convert(args: &ConvertArgs, layout: &Layout, quiet: bool) -> Result<Option<Outcome>> {
    convert_with(args, layout, quiet, &|runner| runner)
}

/// [`convert`] with every tool runner passed through `wrap` first.
pub fn convert_with(
    args: &ConvertArgs,
    layout: &Layout,
    quiet: bool,
    wrap: WrapRunner,
) -> Result<Option<Outcome>> {
    run_mode(args, layout, quiet, wrap, Mode::Convert)
}

/// A run in any [`Mode`].
pub fn run_mode(
    args: &ConvertArgs,
    layout: &Layout,
    quiet: bool,
    wrap: WrapRunner,
    mode: Mode,
) -> Result<Option<Outcome>> {
    let t_start = Instant::now();
    let (model_path, _) = args.validate()?;
    let mut model = Model::open_with(&model_path, Some(&layout.bundled_models()))?;
    if args.pieces.allow_non_finite {
        model.allow_non_finite();
    }
    let opts = args.resolve(&model.config)?;
    if let (Some(vlm), false) = (model.config.text_only_of, quiet) {
        eprintln!(
            "note: {vlm} converts as its language model only: the vision tower is not \
             converted, so the bmodel takes text (no --image)"
        );
    }
    if opts.gguf_own_quant && !quiet {
        eprintln!(
            "{}",
            crate::model::gguf_linear::summary(&model.config.gguf_linears)
        );
    }
    let template = DeployTemplate::builtin()?;
    let piece_opts = opts.piece_options()?;
    let folder = opts.out_dir.join(opts.folder_name());
    let bmodel_path = opts.out_dir.join(format!("{}.bmodel", opts.folder_name()));
    // Cheap (graphs without weights): --dry_run prints what the real run executes.
    let mut plan = Plan::new(&model.config, &piece_opts, &template, &opts)?;
    shard_report::check_mode(&opts, mode)?;
    let all_jobs = plan.jobs.len();
    if let Some(s) = opts.shard {
        plan.jobs = shard::select(std::mem::take(&mut plan.jobs), s);
    }

    if opts.dry_run {
        dry_run::print(&plan, &model, &bmodel_path, opts.backend)?;
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
    if opts.backend == backend::Backend::Onnx
        && !crate::toolchain::install_native::python_backend_installed(layout)
    {
        anyhow::bail!(
            "the onnx backend needs TPU-MLIR's Python tools, and this toolchain was installed \
             with --native: run `llm-convert toolchain install` (without --native), or convert \
             with --backend native"
        );
    }
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let cache_root = opts
        .cache_dir
        .clone()
        .unwrap_or_else(PieceCache::default_root);
    let cache = PieceCache::open(&cache_root)?;
    let export_dir = folder.join(opts.backend.export_dir());
    let run = Run {
        layout,
        opts: &opts,
        folder: &folder,
        cache: &cache,
        cache_root: &cache_root,
        wrap,
        quiet,
        cache_only: mode != Mode::Convert,
    };
    let finished = (|| -> Result<Option<(Manifest, PathBuf)>> {
        let done = run.compile(&plan, &model, &piece_opts, &export_dir)?;
        match mode {
            Mode::Plan { shards } => {
                shard_report::print_plan(&done.jobs, &cache, &cache_root, shards, quiet)?;
                return Ok(None);
            }
            Mode::Combine => shard_report::require_all(&done.jobs, &cache, &cache_root)?,
            Mode::Convert => {}
        }
        if let Some(s) = opts.shard {
            shard_report::print_shard(s, &done.jobs, done.fresh.len(), all_jobs, &cache_root);
            return Ok(None);
        }
        let records = records::collect(&done.jobs, done.fresh, &cache)?;
        if opts.only_mlir {
            if !quiet {
                eprintln!("Top MLIR of every piece is in {}", folder.display());
            }
            return Ok(None);
        }
        let t_combine = Instant::now();
        let mut staging = publish::Staging::new(&opts.out_dir);
        let current = up_to_date::check(&opts.out_dir, &opts, &records, &bmodel_path);
        let up_to_date = current.is_some();
        let (facts, model_log_sha256) = match current {
            Some(c) => (c.bmodel, c.model_log_sha256),
            None => {
                let staged = staging.file(&format!("{}.bmodel", opts.folder_name()));
                let bytes = combine_pieces(layout, &records, &staged)?;
                let info = combine::info(layout, &staged)?;
                std::fs::write(staging.file("model.log"), info.as_bytes())
                    .with_context(|| format!("writing model.log in {}", opts.out_dir.display()))?;
                // Hashed where staged; the manifest names where it is published.
                let (sha256, sha256_without_create_time) = combine::sha256_both(&staged)?;
                let facts = manifest::BmodelFacts {
                    bytes,
                    sha256,
                    sha256_without_create_time,
                };
                (
                    facts,
                    crate::util::hex(&sha2::Sha256::digest(info.as_bytes())),
                )
            }
        };
        let combine_s = t_combine.elapsed().as_secs_f64();
        // Written every run: the model folder's config and tokenizer files key no piece.
        let config_files = config_dir::write(&model, &staging.dir("config")?)?;
        staging.publish()?;
        let outputs = manifest::Outputs {
            // Taken after the rename, which moves the file's ctime.
            bmodel_file: crate::file_stamp::FileStamp::settled(&bmodel_path),
            bmodel: bmodel_path.clone(),
            facts,
            model_log_sha256,
            up_to_date,
            config_files,
        };
        let timings = manifest::Timings {
            export_s: done.export_s,
            compile_s: done.compile_s,
            combine_s,
            total_s: t_start.elapsed().as_secs_f64(),
            workers: done.workers,
        };
        let manifest = Manifest::new(&opts, &model, outputs, records, timings);
        // Last: a run stopped before this leaves the earlier manifest, whose bmodel stamp no
        // longer matches a bmodel this run replaced.
        let manifest_path = opts.out_dir.join("manifest.json");
        crate::util::write_atomic(&manifest_path, &serde_json::to_vec_pretty(&manifest)?)?;
        Ok(Some((manifest, manifest_path)))
    })();
    cache.record_stamps();
    if !opts.debug {
        match &finished {
            Ok(done) => {
                let _ = std::fs::remove_dir_all(&export_dir);
                if done.is_none() {
                    // `plan` leaves nothing behind (a shard keeps its logs).
                    let _ = std::fs::remove_dir(&folder);
                    let _ = std::fs::remove_dir(&opts.out_dir);
                }
            }
            Err(_) => publish::clean_failed_work(&folder),
        }
    }
    let Some((manifest, manifest_path)) = finished? else {
        return Ok(None);
    };
    Ok(Some(Outcome {
        manifest,
        manifest_path,
    }))
}

/// What a run compiles with.
struct Run<'a> {
    layout: &'a Layout,
    opts: &'a ConvertOptions,
    folder: &'a Path,
    cache: &'a PieceCache,
    cache_root: &'a Path,
    wrap: WrapRunner<'a>,
    quiet: bool,
    /// Compile nothing (`plan`, `combine`).
    cache_only: bool,
}

/// Every job of a run and what this run compiled.
struct Done {
    jobs: Vec<PieceJob>,
    /// The freshly compiled jobs' steps, by the job's file stem.
    fresh: std::collections::HashMap<String, Vec<Compiled>>,
    export_s: f64,
    compile_s: f64,
    workers: usize,
}

impl Run<'_> {
    /// Exports on this thread and hands each job to the compile workers as soon as it exists.
    fn compile(
        &self,
        plan: &Plan,
        model: &Model,
        piece_opts: &PieceOptions,
        export_dir: &Path,
    ) -> Result<Done> {
        let workers = compile::worker_count(self.opts, plan.piece_count());
        // Workers start on their first job, so their ~6-10 s import overlaps the rest of the
        // export.
        let runners = compile::start_runners(
            self.layout,
            self.opts,
            self.folder,
            workers,
            self.wrap,
            plan.patchable_nets(),
        );
        let progress = Progress::new(plan.jobs.len() as u64, "converting", self.quiet);
        progress.note(&format!(
            "{} pieces, {} workers, cache {}",
            plan.piece_count(),
            workers,
            self.cache_root.display()
        ));
        let recalled = crate::model::fingerprint_store::recall(&model.weights, self.cache_root);
        let t_work = Instant::now();
        let prepare = Prepare {
            model,
            piece_opts,
            export_dir,
            backend: self.opts.backend,
            cache: self.cache,
            compile_cached: self.opts.only_mlir,
            cache_only: self.cache_only,
            progress: &progress,
            epoch: t_work,
        };
        let budget = scheduler::memory_budget().saturating_sub(WORKER_MEM * workers as u64);
        let (tx, rx) = std::sync::mpsc::channel::<PieceJob>();
        let (prepared, compiled) = std::thread::scope(|s| {
            let progress = &progress;
            let compiler = s.spawn(move || {
                scheduler::run_stream(rx, runners, budget, progress, |job, runner| {
                    compile::compile_piece(job, runner, self.folder, self.cache, self.opts, t_work)
                })
            });
            let prepared = prepare.run(plan, &plan.compile_order(self.opts.compile_once), &tx);
            if prepared.is_err() {
                worker::kill_all_children();
            }
            drop(tx);
            let compiled = compiler
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the compile scheduler panicked")));
            (prepared, compiled)
        });
        let (jobs, export_s) = prepared?;
        if let Some(Err(e)) = recalled.map(|r| r.keep(&model.weights)) {
            // Only a rerun's speed depends on it.
            eprintln!("warning: the checkpoint's fingerprints were not kept: {e:#}");
        }
        let compiled =
            compiled.map_err(|e| e.context("compilation stopped; no bmodel was written"))?;
        progress.done();
        Ok(Done {
            jobs,
            fresh: compiled
                .into_iter()
                .map(|(job, c)| (job.plan.piece().file_stem(), c))
                .collect(),
            export_s,
            compile_s: t_work.elapsed().as_secs_f64(),
            workers,
        })
    }
}

/// `model_tool --combine` of every step's bmodel, in order; returns the combined size (checked
/// against the pieces').
fn combine_pieces(layout: &Layout, records: &[PieceRecord], bmodel_path: &Path) -> Result<u64> {
    let piece_paths: Vec<PathBuf> = records.iter().filter_map(|r| r.bmodel.clone()).collect();
    combine::combine(layout, &piece_paths, bmodel_path)?;
    let combined_bytes = std::fs::metadata(bmodel_path)?.len();
    let pieces_total: u64 = records.iter().filter_map(|r| r.bmodel_bytes).sum();
    if let Err(e) = combine::check_size(combined_bytes, pieces_total) {
        let _ = std::fs::remove_file(bmodel_path);
        return Err(e);
    }
    Ok(combined_bytes)
}
