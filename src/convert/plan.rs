//! Planning a conversion: the pieces, grouped into compile jobs, and every step's exact tool
//! command lines (paths as placeholders). `--dry_run` prints this plan and the real run
//! executes it, so the two cannot drift apart.

use anyhow::{bail, Result};

use super::deploy_flags::DeployTemplate;
use super::options::ConvertOptions;
use crate::arch::{Piece, PieceOptions};
use crate::export::Exported;
use crate::model::ModelConfig;

/// Stands for the step's ONNX file (paths are not part of the cache key).
const ONNX_PLACEHOLDER: &str = "{onnx}";
/// Where a decode stage's deploy reads the first step's IO address config.
const IO_ALONE_PLACEHOLDER: &str = "{io_alone_config}";
/// Where a step's deploy reads its quantize table (its content is part of the key).
const QTABLE_PLACEHOLDER: &str = "{quantize_table}";
/// The IO address config the first step of a job saves in its work dir.
pub const IO_ALONE_FILE: &str = "io_alone_config.json";

/// Every compile job of a conversion, in the runtime's combine order.
pub struct Plan {
    pub jobs: Vec<JobPlan>,
}

/// One compile job: usually one step; block_cache_i with decode stages has one more per
/// stage, compiled after the first in the same job because they reuse its IO addresses
/// (`--save_io_alone_config` / `--use_io_alone_config`).
#[derive(Clone)]
pub struct JobPlan {
    pub steps: Vec<StepPlan>,
}

/// One transform + deploy, as the tools will be called.
#[derive(Clone)]
pub struct StepPlan {
    pub piece: Piece,
    /// `model_transform.py` arguments, with placeholders for paths.
    pub transform_argv: Vec<String>,
    /// `model_deploy.py` arguments, with placeholders for paths.
    pub deploy_argv: Vec<String>,
    /// The graph's output names (restored in the Top MLIR after the transform).
    pub outputs: Vec<String>,
    /// For a graph with per-call axes: every input's largest shape.
    dynamic_input_shapes: Option<Vec<Vec<usize>>>,
    pub has_quantize_table: bool,
    /// Checkpoint weight elements the step's graph reads (its compile cost grows with them).
    pub weight_elems: u64,
}

/// The paths a step's placeholders stand for.
pub struct StepPaths {
    pub model_def: String,
    pub io_alone_config: String,
    pub quantize_table: String,
}

impl Plan {
    /// Plans every piece from its graph (cheap: no weights are read).
    pub fn new(
        cfg: &ModelConfig,
        piece_opts: &PieceOptions,
        template: &DeployTemplate,
        opts: &ConvertOptions,
    ) -> Result<Plan> {
        let mut jobs = Vec::new();
        for group in job_groups(&crate::arch::pieces(cfg, piece_opts)) {
            let mut steps = Vec::with_capacity(group.len());
            for (j, &piece) in group.iter().enumerate() {
                let graph = crate::arch::build(piece, cfg, piece_opts);
                let dynamic_input_shapes = graph
                    .is_dynamic()
                    .then(|| graph.inputs.iter().map(|i| i.dims.clone()).collect());
                let has_quantize_table = graph.quantize_table().is_some();
                let weight_elems = graph
                    .initializers
                    .iter()
                    .filter(|i| matches!(i.data, crate::graph::InitData::Weight { .. }))
                    .map(|i| i.dims.iter().product::<usize>() as u64)
                    .sum();
                steps.push(StepPlan {
                    piece,
                    transform_argv: transform_argv(
                        &piece.name(),
                        dynamic_input_shapes.as_deref(),
                        opts,
                    ),
                    deploy_argv: step_deploy_argv(template, opts, &group, j, has_quantize_table)?,
                    outputs: graph.outputs.iter().map(|o| o.name.clone()).collect(),
                    dynamic_input_shapes,
                    has_quantize_table,
                    weight_elems,
                });
            }
            jobs.push(JobPlan { steps });
        }
        Ok(Plan { jobs })
    }

    pub fn piece_count(&self) -> usize {
        self.jobs.iter().map(|j| j.steps.len()).sum()
    }

    /// The layer nets compile-once may patch from a template: every layer of a kind but the
    /// last (which holds the final norm, a shape of its own), where at least two remain. The
    /// others compile as without it: a template no layer is patched from costs its checks.
    pub fn patchable_nets(&self) -> std::collections::HashSet<String> {
        patchable(self.jobs.iter().map(|j| j.piece()))
    }

    /// The order to export and compile the jobs in (the combine keeps the plan's): with
    /// compile-once, each layer likely to be a template first, as every later layer of its
    /// shape waits for it; then the full compiles, most weights first (the longest, so none is
    /// left alone at the end); then the layers to patch, in order.
    pub fn compile_order(&self, compile_once: bool) -> Vec<usize> {
        let patchable = if compile_once {
            self.patchable_nets()
        } else {
            Default::default()
        };
        let jobs = self
            .jobs
            .iter()
            .map(|j| (j.piece(), j.steps[0].weight_elems));
        order(jobs, &patchable)
    }
}

/// [`Plan::patchable_nets`] of a plan whose jobs' nets are `pieces`.
fn patchable(pieces: impl Iterator<Item = Piece>) -> std::collections::HashSet<String> {
    let mut by_kind = std::collections::BTreeMap::<&str, Vec<Piece>>::new();
    for p in pieces.filter(|p| p.layer().is_some()) {
        by_kind.entry(p.kind()).or_default().push(p);
    }
    let mut nets = std::collections::HashSet::new();
    for mut layers in by_kind.into_values() {
        layers.sort_by_key(|p| p.layer());
        layers.pop();
        if layers.len() >= 2 {
            nets.extend(layers.iter().map(|p| p.name()));
        }
    }
    nets
}

/// [`Plan::compile_order`] of jobs (their net and weight elements) and patchable nets.
fn order(
    jobs: impl Iterator<Item = (Piece, u64)>,
    patchable: &std::collections::HashSet<String>,
) -> Vec<usize> {
    // Compile-once's shape key holds the net name's length (block_9, block_10): the first
    // patchable layer of each kind and length is its shape's template.
    let mut seen = std::collections::HashSet::new();
    let ranks: Vec<_> = jobs
        .map(|(p, weight_elems)| {
            if !patchable.contains(&p.name()) {
                (1, u64::MAX - weight_elems)
            } else if seen.insert((p.kind(), p.name().len())) {
                (0, 0)
            } else {
                (2, 0)
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..ranks.len()).collect();
    order.sort_by_key(|&i| ranks[i]);
    order
}

impl JobPlan {
    /// The job's net (its first step's piece).
    pub fn piece(&self) -> Piece {
        self.steps[0].piece
    }
}

impl StepPlan {
    /// The export must have written the graph this step was planned from.
    pub fn check_export(&self, e: &Exported) -> Result<()> {
        if e.outputs != self.outputs
            || e.dynamic_input_shapes != self.dynamic_input_shapes
            || e.quantize_table.is_some() != self.has_quantize_table
        {
            bail!(
                "internal error: the exported {} differs from its plan",
                self.piece.file_stem()
            );
        }
        Ok(())
    }

    /// Both tools' arguments with the placeholders replaced by `paths`.
    pub fn filled(&self, paths: &StepPaths) -> (Vec<String>, Vec<String>) {
        (
            fill(&self.transform_argv, paths),
            fill(&self.deploy_argv, paths),
        )
    }
}

fn fill(argv: &[String], paths: &StepPaths) -> Vec<String> {
    argv.iter()
        .map(|a| match a.as_str() {
            ONNX_PLACEHOLDER => paths.model_def.clone(),
            IO_ALONE_PLACEHOLDER => paths.io_alone_config.clone(),
            QTABLE_PLACEHOLDER => paths.quantize_table.clone(),
            _ => a.clone(),
        })
        .collect()
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

/// `model_deploy.py` arguments of step `j` of a job: the template's, then (decode stages) the
/// IO address config the first step saves and the others reuse, then the quantize table.
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
            ["--save_io_alone_config".into(), IO_ALONE_FILE.into()]
        } else {
            ["--use_io_alone_config".into(), IO_ALONE_PLACEHOLDER.into()]
        });
    }
    if quantize_table {
        argv.extend(["--quantize_table".into(), QTABLE_PLACEHOLDER.into()]);
    }
    Ok(argv)
}

/// `model_transform.py` arguments.
fn transform_argv(
    name: &str,
    dynamic_input_shapes: Option<&[Vec<usize>]>,
    opts: &ConvertOptions,
) -> Vec<String> {
    let mut argv = vec![
        "--model_name".to_string(),
        name.to_string(),
        "--model_def".into(),
        ONNX_PLACEHOLDER.into(),
        "--mlir".into(),
        format!("{name}.mlir"),
    ];
    if let Some(shapes) = dynamic_input_shapes {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_stages_join_their_block_cache() {
        let pieces = [
            Piece::Block(0),
            Piece::BlockCache(0),
            Piece::BlockCacheStage(0, 1),
            Piece::BlockCacheStage(0, 2),
            Piece::BlockKv(0),
        ];
        let sizes: Vec<usize> = job_groups(&pieces).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 3, 1]);
    }

    #[test]
    fn patchable_nets_are_layers_but_the_last_where_two_remain() {
        let three = [Piece::Embedding, Piece::LmHead]
            .into_iter()
            .chain((0..3).flat_map(|i| [Piece::Block(i), Piece::BlockCache(i)]));
        let mut nets: Vec<String> = patchable(three).into_iter().collect();
        nets.sort();
        assert_eq!(
            nets,
            ["block_0", "block_1", "block_cache_0", "block_cache_1"]
        );
        let two = (0..2).flat_map(|i| [Piece::Block(i), Piece::BlockCache(i)]);
        assert!(patchable(two).is_empty());
    }

    #[test]
    fn likely_templates_first_then_full_compiles_largest_first_then_patches() {
        let mut jobs = vec![(Piece::Embedding, 100), (Piece::LmHead, 200)];
        jobs.extend((0..12).flat_map(|i| [(Piece::Block(i), 10), (Piece::BlockCache(i), 10)]));
        let patchable = patchable(jobs.iter().map(|j| j.0));
        let names = |order: Vec<usize>| -> Vec<String> {
            order.iter().take(8).map(|&i| jobs[i].0.name()).collect()
        };
        assert_eq!(
            names(order(jobs.iter().copied(), &patchable)),
            [
                "block_0",
                "block_cache_0",
                "block_10",
                "block_cache_10",
                "lm_head",
                "embedding",
                "block_11",
                "block_cache_11"
            ]
        );
        // Without compile-once: the plan's order but the largest first.
        let none = Default::default();
        assert_eq!(
            names(order(jobs.iter().copied(), &none))[..4],
            ["lm_head", "embedding", "block_0", "block_cache_0"]
        );
    }

    #[test]
    fn fill_replaces_only_placeholders() {
        let argv: Vec<String> = ["--model_def", ONNX_PLACEHOLDER, "--use_io_alone_config"]
            .into_iter()
            .chain([IO_ALONE_PLACEHOLDER, "--quantize_table", QTABLE_PLACEHOLDER])
            .map(String::from)
            .collect();
        let paths = StepPaths {
            model_def: "a.onnx".into(),
            io_alone_config: "b/io.json".into(),
            quantize_table: "a.qtable".into(),
        };
        assert_eq!(
            fill(&argv, &paths).join(" "),
            "--model_def a.onnx --use_io_alone_config b/io.json --quantize_table a.qtable"
        );
    }
}
