//! Preparing the compile jobs of a plan: export each job's pieces as ONNX, key the job for the
//! cache, and hand the ones not in the cache to the compilers as soon as they are ready.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

use anyhow::Result;

use super::cache::{self, PieceCache};
use super::plan::{JobPlan, Plan};
use super::progress::Progress;
use crate::arch::PieceOptions;
use crate::model::Model;

/// A planned job with its exported files and its cache key.
#[derive(Clone)]
pub struct PieceJob {
    pub plan: JobPlan,
    /// One per step of the plan.
    pub files: Vec<StepFiles>,
    pub key: String,
}

/// What the export wrote for one step (absolute paths: the tools run in the step's work dir).
#[derive(Clone)]
pub struct StepFiles {
    pub onnx: PathBuf,
    pub onnx_bytes: u64,
    pub quantize_table: Option<PathBuf>,
}

/// Where the jobs go and what is skipped.
pub struct Prepare<'a> {
    pub model: &'a Model,
    pub piece_opts: &'a PieceOptions,
    pub onnx_dir: &'a Path,
    pub cache: &'a PieceCache,
    /// `--only_mlir`: every job is run (for its Top MLIR), cached or not.
    pub compile_cached: bool,
    /// `plan` and `combine`: nothing is compiled; jobs not in the cache are only listed.
    pub cache_only: bool,
    pub progress: &'a Progress,
}

impl Prepare<'_> {
    /// Exports every job, keys it, and sends the ones not in the cache to `to_compile`.
    /// Returns every job (cached ones included) and the export seconds.
    pub fn run(&self, plan: &Plan, to_compile: &Sender<PieceJob>) -> Result<(Vec<PieceJob>, f64)> {
        // Two stages: this thread exports, a second one hashes each ONNX file for its cache
        // key (sha256 of 1.2 GB of f32 weights costs ~10 s on a CPU without SHA extensions)
        // and hands uncached jobs to the compilers.
        let (exported_tx, exported_rx) = std::sync::mpsc::channel::<(JobPlan, Vec<StepFiles>)>();
        std::thread::scope(|s| {
            let hasher = s.spawn(move || -> Result<Vec<PieceJob>> {
                let mut jobs = Vec::new();
                for (plan, files) in exported_rx {
                    let job = self.key(plan, files)?;
                    let stored = (0..job.files.len())
                        .all(|j| self.cache.get(&job.key, &cache::step_ext(j)).is_some());
                    if stored && !self.compile_cached {
                        let name = job.plan.piece().file_stem();
                        self.progress.finish(&format!("{name} (cached)"));
                    } else if self.cache_only {
                        let name = job.plan.piece().file_stem();
                        self.progress.finish(&format!("{name} (not in the cache)"));
                    } else if to_compile.send(job.clone()).is_err() {
                        // The compilers stopped (a piece failed); their error is the one to
                        // report.
                        break;
                    }
                    jobs.push(job);
                }
                Ok(jobs)
            });
            let mut export_s = 0.0;
            let exporting = (|| -> Result<()> {
                for job in &plan.jobs {
                    let files = self.export(job, &mut export_s)?;
                    if exported_tx.send((job.clone(), files)).is_err() {
                        break; // the hasher failed; its error is reported below
                    }
                }
                Ok(())
            })();
            drop(exported_tx);
            let jobs = hasher
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the hashing thread panicked")));
            exporting?;
            Ok((jobs?, export_s))
        })
    }

    fn export(&self, job: &JobPlan, seconds: &mut f64) -> Result<Vec<StepFiles>> {
        let mut files = Vec::with_capacity(job.steps.len());
        for step in &job.steps {
            let e = crate::export::export_piece(
                self.model,
                step.piece,
                self.piece_opts,
                self.onnx_dir,
            )?;
            *seconds += e.seconds;
            step.check_export(&e)?;
            files.push(StepFiles {
                onnx_bytes: std::fs::metadata(&e.path).map(|m| m.len()).unwrap_or(0),
                onnx: std::path::absolute(&e.path)?,
                quantize_table: e
                    .quantize_table
                    .as_ref()
                    .map(std::path::absolute)
                    .transpose()?,
            });
        }
        Ok(files)
    }

    fn key(&self, plan: JobPlan, files: Vec<StepFiles>) -> Result<PieceJob> {
        let inputs: Vec<cache::StepInputs> = plan
            .steps
            .iter()
            .zip(&files)
            .map(|(step, f)| cache::StepInputs {
                onnx: &f.onnx,
                transform_argv: &step.transform_argv,
                deploy_argv: &step.deploy_argv,
                output_names: &step.outputs,
                quantize_table: f.quantize_table.as_deref(),
            })
            .collect();
        let key = cache::piece_key(&inputs)?;
        Ok(PieceJob { plan, files, key })
    }
}
