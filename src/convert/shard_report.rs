//! What `plan`, `--shard` and `combine` tell the user: the pieces with their cache keys and
//! shards, a shard's summary, and the list of pieces a combine still lacks.

use std::path::Path;

use anyhow::Result;

use super::cache::{self, PieceCache};
use super::options::ConvertOptions;
use super::prepare::PieceJob;
use super::shard::{self, Shard};
use super::Mode;
use crate::error::InputError;

/// Flags that make no sense together with the mode.
pub fn check_mode(opts: &ConvertOptions, mode: Mode) -> Result<(), InputError> {
    let here = Path::new("llm-convert");
    let clash = match mode {
        Mode::Convert => None,
        Mode::Plan { shards: 0 } => {
            return Err(InputError::invalid(
                here,
                "--shards must be at least 1",
                "pass --shards N with the number of CI jobs",
            ))
        }
        Mode::Plan { .. } | Mode::Combine => [
            (opts.shard.is_some(), "--shard"),
            (opts.only_mlir, "--only_mlir"),
            (opts.only_onnx, "--only_onnx"),
            (opts.dry_run, "--dry_run"),
        ]
        .into_iter()
        .find(|(on, _)| *on)
        .map(|(_, f)| f),
    };
    let clash = clash.or_else(|| {
        (opts.shard.is_some() && (opts.only_mlir || opts.only_onnx))
            .then_some("--only_mlir/--only_onnx")
    });
    match clash {
        Some(flag) => Err(InputError::invalid(
            here,
            format!("{flag} cannot be combined with this command"),
            "plan, --shard and combine take the conversion flags only (the same ones on every \
             shard and on combine)",
        )),
        None => Ok(()),
    }
}

/// Whether every step of `job` is in the cache.
fn stored(job: &PieceJob, cache: &PieceCache) -> bool {
    (0..job.files.len()).all(|j| cache.get(&job.key, &cache::step_ext(j)).is_some())
}

#[derive(serde::Serialize)]
struct PlannedPiece {
    name: String,
    /// The nets this job compiles (a decode net's stages come with it).
    steps: Vec<String>,
    key: String,
    cached: bool,
    /// Expected compile seconds (relative; what shards are balanced by).
    cost: f64,
    /// `I/N` of `--shards N`.
    shard: String,
}

/// `llm-convert plan`: every piece (JSON on stdout with `--json`, else a table).
pub fn print_plan(
    jobs: &[PieceJob],
    cache: &PieceCache,
    cache_root: &Path,
    shards: usize,
    json: bool,
) -> Result<()> {
    let plans: Vec<_> = jobs.iter().map(|j| j.plan.clone()).collect();
    let shard_of = shard::assign(&plans, shards);
    let pieces: Vec<PlannedPiece> = jobs
        .iter()
        .zip(shard_of)
        .map(|(j, s)| PlannedPiece {
            name: j.plan.piece().name(),
            steps: j.plan.steps.iter().map(|s| s.piece.name()).collect(),
            key: j.key.clone(),
            cached: stored(j, cache),
            cost: (shard::job_cost(&j.plan) * 10.0).round() / 10.0,
            shard: Shard {
                index: s + 1,
                count: shards,
            }
            .to_string(),
        })
        .collect();
    if json {
        let report = serde_json::json!({
            "cache": cache_root,
            "shards": shards,
            "pieces": pieces,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:<22} {:>7} {:>6} {:<7} key",
        "piece", "cost", "shard", "cached"
    );
    for p in &pieces {
        println!(
            "{:<22} {:>7.1} {:>6} {:<7} {}",
            p.name,
            p.cost,
            p.shard,
            if p.cached { "yes" } else { "no" },
            p.key
        );
    }
    let missing = pieces.iter().filter(|p| !p.cached).count();
    println!(
        "{} pieces, {missing} not in the cache {}",
        pieces.len(),
        cache_root.display()
    );
    Ok(())
}

/// `combine`: every piece must be in the cache.
pub fn require_all(jobs: &[PieceJob], cache: &PieceCache, cache_root: &Path) -> Result<()> {
    let missing: Vec<String> = jobs
        .iter()
        .filter(|j| !stored(j, cache))
        .map(|j| format!("{} ({})", j.plan.piece().name(), &j.key[..12]))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(InputError::invalid(
        cache_root,
        format!(
            "{} of {} pieces are not in this cache: {}",
            missing.len(),
            jobs.len(),
            missing.join(", ")
        ),
        "run every `--shard I/N` with the same flags into this cache first (or merge their \
         cache folders into it); `llm-convert plan --shards N` lists each piece's shard",
    )
    .into())
}

/// The line a `--shard` run ends with.
pub fn print_shard(s: Shard, jobs: &[PieceJob], compiled: usize, all_jobs: usize, root: &Path) {
    println!(
        "shard {s}: {} of {all_jobs} pieces ({compiled} compiled, {} already cached) are in {}",
        jobs.len(),
        jobs.len() - compiled,
        root.display()
    );
}
