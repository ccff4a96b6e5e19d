//! Compiling prepared jobs: each step's model_transform.py → output names restored →
//! model_deploy.py on a tool runner, then the bmodels into the cache.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::backend::Backend;
use super::cache::{self, PieceCache};
use super::options::ConvertOptions;
use super::output_names;
use super::plan::{StepPaths, StepPlan, IO_ALONE_FILE};
use super::prepare::PieceJob;
use super::scheduler;
use super::worker::{self, LazyWorker, SpawnRunner, ToolRunner};
use crate::toolchain::Layout;

/// Workers use ~0.9 GB each once TPU-MLIR (and torch) are imported.
pub const WORKER_MEM: u64 = 1 << 30;

/// Wraps each tool runner a run makes; the identity outside tests (which use it to break one
/// step of a real compile on purpose).
pub type WrapRunner<'a> = &'a (dyn Fn(Box<dyn ToolRunner>) -> Box<dyn ToolRunner> + Sync);

impl scheduler::Job for PieceJob {
    fn label(&self) -> String {
        self.plan.piece().name()
    }

    /// A piece's transform + deploy hold a few copies of its weights (steps run one by one).
    fn mem(&self) -> u64 {
        4 * self.files.iter().map(|f| f.weight_bytes).max().unwrap_or(0)
    }
}

/// What compiling one step did.
pub struct Compiled {
    pub bmodel: Option<PathBuf>,
    pub transform_s: f64,
    pub deploy_s: f64,
    /// Compile-once: the template this step's bmodel was patched from (None: compiled).
    pub patched_from: Option<String>,
    /// How a patched step's coefficients were made: `rust` or `tpuc-opt`.
    pub patched_coefficients: Option<String>,
    /// When a worker started and finished the step, seconds after the compile stage began.
    pub started_s: f64,
    pub finished_s: f64,
}

/// Parallel workers: --jobs, else the cores, bounded by memory and the number of jobs.
pub fn worker_count(opts: &ConvertOptions, jobs: usize) -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let by_mem = (scheduler::memory_budget() / (2 * WORKER_MEM)).max(1) as usize;
    opts.jobs.unwrap_or(cores.min(by_mem)).clamp(1, jobs.max(1))
}

/// `n` runners: native ones (compile-once's templates shared, for the nets in `layers`),
/// lazily started TPU-MLIR workers, or one process per step (`--spawn-tools`).
pub fn start_runners(
    layout: &Layout,
    opts: &ConvertOptions,
    folder: &Path,
    n: usize,
    wrap: WrapRunner,
    layers: std::collections::HashSet<String>,
) -> Vec<Box<dyn ToolRunner>> {
    let templates = std::sync::Arc::new(crate::native::compile_once::Templates::for_nets(layers));
    (0..n)
        .map(|i| {
            let runner: Box<dyn ToolRunner> = if opts.backend == Backend::Native {
                Box::new(if opts.compile_once {
                    crate::native::NativeRunner::with_templates(layout, templates.clone())
                } else {
                    crate::native::NativeRunner::new(layout)
                })
            } else if opts.spawn_tools {
                Box::new(SpawnRunner::new(layout))
            } else {
                let log = folder.join(format!("worker_{i}.log"));
                Box::new(LazyWorker::new(layout, &log))
            };
            wrap(runner)
        })
        .collect()
}

/// Every step of a job, then its bmodels into the cache (the first step's last: its presence
/// marks the piece done).
pub fn compile_piece(
    job: &PieceJob,
    runner: &mut dyn ToolRunner,
    folder: &Path,
    cache: &PieceCache,
    opts: &ConvertOptions,
    epoch: std::time::Instant,
) -> Result<Vec<Compiled>> {
    let io_alone =
        std::path::absolute(folder.join(job.plan.piece().file_stem()))?.join(IO_ALONE_FILE);
    let mut done = Vec::with_capacity(job.files.len());
    let mut produced = Vec::with_capacity(job.files.len());
    for (step, files) in job.plan.steps.iter().zip(&job.files) {
        let paths = StepPaths {
            model_def: files.model_def.display().to_string(),
            io_alone_config: io_alone.display().to_string(),
            quantize_table: files
                .quantize_table
                .as_ref()
                .map(|q| q.display().to_string())
                .unwrap_or_default(),
        };
        let started_s = epoch.elapsed().as_secs_f64();
        let (mut c, bmodel) = compile_step(step, &paths, runner, folder, opts)?;
        c.started_s = started_s;
        c.finished_s = epoch.elapsed().as_secs_f64();
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
        for step in &job.plan.steps {
            let _ = std::fs::remove_dir_all(folder.join(step.piece.file_stem()));
        }
    }
    Ok(done)
}

/// Zeroes what TPU-MLIR leaves uninitialised in a piece (see `bmodel::zero_timestep_padding`),
/// so a piece's bytes follow from its inputs and two cold builds are equal.
fn make_reproducible(bmodel: &Path) -> Result<()> {
    let file =
        std::fs::File::open(bmodel).with_context(|| format!("opening {}", bmodel.display()))?;
    // A private copy-on-write map: only the header and the dynamic IR are read, and only
    // pages written are copied (a vocabulary piece's 300 MB read whole took ~0.5 s, for a
    // static bmodel that has nothing to zero).
    // SAFETY: the file is this step's output, which nothing else writes; writes to the map
    // stay in this process.
    let mut bytes = unsafe { memmap2::MmapOptions::new().map_copy(&file) }
        .with_context(|| format!("mapping {}", bmodel.display()))?;
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

/// Removes a work dir an earlier run left. A run killed with SIGKILL can leave a TPU-MLIR
/// grandchild (tpuc-opt under a killed worker) still writing into it, so deleting in place can
/// fail with "directory not empty": the dir is first renamed aside (atomic), then deleted on a
/// best-effort basis.
fn clear_work_dir(work: &Path) -> Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut aside = work.as_os_str().to_os_string();
    aside.push(format!(".stale-{}-{nanos}", std::process::id()));
    let aside = PathBuf::from(aside);
    if std::fs::rename(work, &aside).is_err() {
        return std::fs::remove_dir_all(work)
            .with_context(|| format!("clearing {}", work.display()));
    }
    for _ in 0..10 {
        if std::fs::remove_dir_all(&aside).is_ok() || !aside.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// transform → restore output names → deploy. The step's work dir is `<folder>/<stem>/` and its
/// log `<folder>/<stem>.log`, as llm_convert.py lays them out; returns the bmodel it wrote.
fn compile_step(
    step: &StepPlan,
    paths: &StepPaths,
    runner: &mut dyn ToolRunner,
    folder: &Path,
    opts: &ConvertOptions,
) -> Result<(Compiled, Option<PathBuf>)> {
    let (stem, name) = (step.piece.file_stem(), step.piece.name());
    let work = std::path::absolute(folder.join(&stem))?;
    let log = std::path::absolute(folder.join(format!("{stem}.log")))?;
    if work.exists() {
        clear_work_dir(&work)?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _ = std::fs::remove_file(&log);
    // A compiler step that fails is reported as bad input (exit 2, as the brief's contract for
    // "a failing compiler step" says): the log is the file to read, and the fix says what to try.
    let fail = |tool: &str, e: anyhow::Error| {
        anyhow::Error::new(crate::error::InputError::invalid(
            &log,
            format!(
                "piece {stem}: {tool} failed ({e:#}); the log's last lines:\n{}",
                worker::tail(&log, 20)
            ),
            "the log says where TPU-MLIR stopped: a config value it cannot compile (change it, \
             or convert with other flags), memory (rerun with --jobs 1), or a broken toolchain \
             (llm-convert doctor; llm-convert toolchain install)",
        ))
    };
    let (transform_argv, deploy_argv) = step.filled(paths);
    let transform_s = runner
        .run("model_transform.py", &transform_argv, &work, &log)
        .map_err(|e| fail("model_transform.py", e))?;
    let mlir = work.join(format!("{name}.mlir"));
    output_names::restore_file(&mlir, &step.outputs).map_err(|e| fail("renaming outputs", e))?;
    let mut compiled = Compiled {
        bmodel: None,
        transform_s,
        deploy_s: 0.0,
        patched_from: None,
        patched_coefficients: None,
        started_s: 0.0,
        finished_s: 0.0,
    };
    if opts.only_mlir {
        return Ok((compiled, None));
    }
    compiled.deploy_s = runner
        .run("model_deploy.py", &deploy_argv, &work, &log)
        .map_err(|e| fail("model_deploy.py", e))?;
    compiled.patched_from =
        std::fs::read_to_string(work.join(crate::native::compile_once::MARKER)).ok();
    compiled.patched_coefficients =
        std::fs::read_to_string(work.join(crate::native::compile_once::COEFF_MARKER)).ok();
    let produced = work.join(format!("{name}.bmodel"));
    if !produced.is_file() {
        return Err(fail(
            "model_deploy.py",
            anyhow::anyhow!("it reported success but wrote no {}", produced.display()),
        ));
    }
    Ok((compiled, Some(produced)))
}
