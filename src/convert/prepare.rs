//! Preparing the compile jobs of a plan: key each job for the cache from its graphs and the
//! stored bytes of the tensors they read (no export), then export only the jobs the cache
//! lacks and hand them to the compilers as soon as they are ready.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;

use anyhow::Result;

use super::backend::Backend;
use super::cache::{self, PieceCache};
use super::graph_key;
use super::plan::{JobPlan, Plan};
use super::progress::Progress;
use crate::arch::{Piece, PieceOptions};
use crate::graph::InitData;
use crate::model::Model;
use crate::native::shared_npz::SharedArchives;

/// A planned job with its files and its cache key.
#[derive(Clone)]
pub struct PieceJob {
    pub plan: JobPlan,
    /// One per step of the plan: where the export writes them (written only if `exported`).
    pub files: Vec<StepFiles>,
    pub key: String,
    /// When this run finished exporting the job, seconds after the compile stage began (None:
    /// not exported, it was in the cache; `--only_mlir` exports every job).
    pub exported_s: Option<f64>,
}

/// What the export wrote for one step (absolute paths: the tools run in the step's work dir).
#[derive(Clone)]
pub struct StepFiles {
    /// What the export wrote for `--model_def` (the ONNX file, or the native origin MLIR).
    pub model_def: PathBuf,
    /// Bytes of weights it holds (a compile needs a few times this much memory).
    pub weight_bytes: u64,
    /// Its weight archive is a hard link of a sibling piece's (native backend).
    pub weights_linked: bool,
    pub quantize_table: Option<PathBuf>,
}

/// Where the jobs go and what is skipped.
pub struct Prepare<'a> {
    pub model: &'a Model,
    pub piece_opts: &'a PieceOptions,
    pub export_dir: &'a Path,
    /// What the export writes: ONNX, or the native backend's Top MLIR + npz.
    pub backend: Backend,
    pub cache: &'a PieceCache,
    /// `--only_mlir`: every job is run (for its Top MLIR), cached or not.
    pub compile_cached: bool,
    /// `plan` and `combine`: nothing is compiled; jobs not in the cache are only listed.
    pub cache_only: bool,
    pub progress: &'a Progress,
    /// When the compile stage began (the manifest's times count from it).
    pub epoch: std::time::Instant,
}

impl Prepare<'_> {
    /// Keys every job, exports the ones to compile in `order` (indices of the plan's jobs) and
    /// sends them to `to_compile`. Returns every job (cached ones included), in the plan's
    /// order, and the export seconds.
    pub fn run(
        &self,
        plan: &Plan,
        order: &[usize],
        to_compile: &Sender<PieceJob>,
    ) -> Result<(Vec<PieceJob>, f64)> {
        // Two stages: a second thread keys each job (sha256 of the stored tensors, each once:
        // ~1 s per GB with SHA extensions, ~10 s without) and passes the ones to compile to
        // this thread, which exports them for the compilers. Hashing overlaps exports and
        // compiles; a cached job costs no export.
        let (keyed_tx, keyed_rx) = std::sync::mpsc::channel::<PieceJob>();
        let pieces: Vec<Piece> = plan
            .jobs
            .iter()
            .flat_map(|j| j.steps.iter().map(|s| s.piece))
            .collect();
        std::thread::scope(|s| {
            let hasher = s.spawn(move || -> Result<Vec<PieceJob>> {
                self.hash_ahead(plan);
                let mut jobs: Vec<Option<PieceJob>> = vec![None; plan.jobs.len()];
                for &i in order {
                    let job = self.key(plan.jobs[i].clone())?;
                    let name = job.plan.piece().file_stem();
                    let stored = (0..job.files.len())
                        .all(|j| self.cache.get(&job.key, &cache::step_ext(j)).is_some());
                    if stored && !self.compile_cached {
                        self.progress.finish(&format!("{name} (cached)"));
                    } else if self.cache_only {
                        self.progress.finish(&format!("{name} (not in the cache)"));
                    } else if keyed_tx.send(job.clone()).is_err() {
                        break; // the export stopped; its error is reported below
                    }
                    jobs[i] = Some(job);
                }
                // (Fewer where the compilers stopped: their error is the one reported.)
                Ok(jobs.into_iter().flatten().collect())
            });
            let mut export_s = 0.0;
            let mut exported: HashMap<String, (Vec<StepFiles>, Option<f64>)> = HashMap::new();
            let archives = SharedArchives::default();
            let exporting = (|| -> Result<()> {
                for mut job in keyed_rx {
                    job.files = self.export(&job.plan, &mut export_s, &pieces, &archives)?;
                    job.exported_s = Some(self.epoch.elapsed().as_secs_f64());
                    exported.insert(
                        job.plan.piece().file_stem(),
                        (job.files.clone(), job.exported_s),
                    );
                    if to_compile.send(job).is_err() {
                        // The compilers stopped (a piece failed); their error is the one to
                        // report.
                        break;
                    }
                }
                Ok(())
            })();
            let jobs = hasher
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the hashing thread panicked")));
            exporting?;
            let mut jobs = jobs?;
            for job in &mut jobs {
                if let Some((files, at)) = exported.remove(&job.plan.piece().file_stem()) {
                    job.files = files;
                    job.exported_s = at;
                }
            }
            Ok((jobs, export_s))
        })
    }

    /// Exports every step of a job: the one place a piece's compile input is written.
    /// `pieces`: every step's piece of the run; the native export shares a weight archive
    /// between those that read the same tensors, through `archives`.
    fn export(
        &self,
        job: &JobPlan,
        seconds: &mut f64,
        pieces: &[Piece],
        archives: &SharedArchives,
    ) -> Result<Vec<StepFiles>> {
        let mut files = Vec::with_capacity(job.steps.len());
        for step in &job.steps {
            let (model, opts, dir) = (self.model, self.piece_opts, self.export_dir);
            let e = match self.backend {
                Backend::Onnx => crate::export::export_piece(model, step.piece, opts, dir)?,
                Backend::Native => {
                    let siblings: Vec<Piece> = pieces
                        .iter()
                        .filter(|p| step.piece.shares_weights_with(p))
                        .copied()
                        .collect();
                    let share = Some((archives, siblings.as_slice()));
                    crate::export::export_piece_native(model, step.piece, opts, dir, share)?
                }
            };
            *seconds += e.seconds;
            step.check_export(&e)?;
            files.push(StepFiles {
                weight_bytes: e.weight_bytes,
                weights_linked: e.weights_linked,
                model_def: std::path::absolute(&e.path)?,
                quantize_table: e
                    .quantize_table
                    .as_ref()
                    .map(std::path::absolute)
                    .transpose()?,
            });
        }
        Ok(files)
    }

    /// Fingerprints every checkpoint tensor the plan reads, on every core, so the keys find
    /// them remembered: an unchanged rerun is mostly this hashing. A failure is left for the
    /// keying to report, naming its piece.
    fn hash_ahead(&self, plan: &Plan) {
        let mut seen = HashSet::new();
        let mut names = Vec::new();
        for step in plan.jobs.iter().flat_map(|j| &j.steps) {
            let graph = crate::arch::build(step.piece, &self.model.config, self.piece_opts);
            for init in graph.initializers {
                if let InitData::Weight { name, .. } = init.data {
                    if seen.insert(name.clone()) {
                        names.push(name);
                    }
                }
            }
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads.min(names.len()) {
                s.spawn(|| {
                    while let Some(name) = names.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let _ = self.model.weights.fingerprint(name);
                    }
                });
            }
        });
    }

    /// The job's key, from each step's graph (built again: cheap) and the fingerprints of the
    /// tensors it reads; its files are where the export would write them.
    fn key(&self, plan: JobPlan) -> Result<PieceJob> {
        let mut inputs = Vec::with_capacity(plan.steps.len());
        let mut files = Vec::with_capacity(plan.steps.len());
        for step in &plan.steps {
            let stem = step.piece.file_stem();
            let graph = crate::arch::build(step.piece, &self.model.config, self.piece_opts);
            let digest = graph_key::graph_digest(&graph, &stem, self.model.weights.as_ref())?;
            let quantize_table = graph.quantize_table();
            files.push(StepFiles {
                model_def: std::path::absolute(
                    self.backend.export_path(self.export_dir, step.piece),
                )?,
                weight_bytes: 0,
                weights_linked: false,
                quantize_table: quantize_table
                    .as_ref()
                    .map(|_| std::path::absolute(self.export_dir.join(format!("{stem}.qtable"))))
                    .transpose()?,
            });
            inputs.push((digest, quantize_table));
        }
        let steps: Vec<cache::StepInputs> = plan
            .steps
            .iter()
            .zip(&inputs)
            .map(|(step, (graph, quantize_table))| cache::StepInputs {
                graph: *graph,
                transform_argv: &step.transform_argv,
                deploy_argv: &step.deploy_argv,
                output_names: &step.outputs,
                quantize_table: quantize_table.as_deref(),
            })
            .collect();
        let key = cache::piece_key(&steps, self.backend);
        Ok(PieceJob {
            plan,
            files,
            key,
            exported_s: None,
        })
    }
}
