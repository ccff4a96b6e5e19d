//! `--dry_run`: the plan's tool command lines exactly as the real run fills them in, with paths
//! relative to the run's folder instead of absolute ones.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use super::backend::Backend;
use super::plan::{Plan, StepPaths, IO_ALONE_FILE};
use crate::model::Model;

pub fn print(plan: &Plan, model: &Model, bmodel: &Path, backend: Backend) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "model: {} ({:?})",
        model.source.display(),
        model.config.family
    )?;
    writeln!(out, "output: {}", bmodel.display())?;
    if backend == Backend::Native {
        // Same flags; the native runner turns each tool step into tpuc-opt calls.
        writeln!(
            out,
            "backend: native (each tool step below runs as tpuc-opt calls, no Python)"
        )?;
    }
    let dir = Path::new(backend.export_dir());
    for job in &plan.jobs {
        for step in &job.steps {
            let stem = step.piece.file_stem();
            let (transform, deploy) = step.filled(&StepPaths {
                model_def: backend.export_path(dir, step.piece).display().to_string(),
                io_alone_config: format!("{}/{IO_ALONE_FILE}", job.piece().file_stem()),
                quantize_table: format!("{}/{stem}.qtable", dir.display()),
            });
            writeln!(
                out,
                "{stem}:\n  model_transform.py {}\n  model_deploy.py {}",
                transform.join(" "),
                deploy.join(" ")
            )?;
        }
    }
    Ok(())
}
