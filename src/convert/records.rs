//! Collecting a run's results: one manifest record per compile step, freshly compiled or
//! taken from the cache, in the runtime's combine order (a net's stages after it).

use std::collections::HashMap;

use anyhow::Result;

use super::cache::{self, PieceCache};
use super::compile::Compiled;
use super::manifest::PieceRecord;
use super::prepare::PieceJob;

/// `fresh`: what this run compiled, by the job's file stem; every other step is cached.
pub fn collect(
    jobs: &[PieceJob],
    mut fresh: HashMap<String, Vec<Compiled>>,
    cache: &PieceCache,
) -> Result<Vec<PieceRecord>> {
    let mut records = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut steps_done = fresh
            .remove(&job.plan.piece().file_stem())
            .map(Vec::into_iter);
        for (j, step) in job.plan.steps.iter().enumerate() {
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
                exported: job.exported_s.is_some(),
                exported_s: job.exported_s,
                weights_linked: job.exported_s.is_some()
                    && job.files.get(j).is_some_and(|f| f.weights_linked),
                transform_s: c.as_ref().map(|c| c.transform_s),
                deploy_s: c.as_ref().map(|c| c.deploy_s),
                started_s: c.as_ref().map(|c| c.started_s),
                finished_s: c.as_ref().map(|c| c.finished_s),
                deploy_argv: step.deploy_argv.clone(),
                bmodel_bytes: bmodel
                    .as_ref()
                    .and_then(|b| std::fs::metadata(b).ok())
                    .map(|m| m.len()),
                bmodel_sha256: match &bmodel {
                    Some(b) => Some(cache.sha256(b)?),
                    None => None,
                },
                patched_from: c.as_ref().and_then(|c| c.patched_from.clone()),
                patched_coefficients: c.as_ref().and_then(|c| c.patched_coefficients.clone()),
                bmodel,
            });
        }
    }
    Ok(records)
}
