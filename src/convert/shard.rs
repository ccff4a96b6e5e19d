//! Splitting one conversion across machines (CI runners): `--shard I/N` compiles only shard
//! I's jobs into the piece cache, `llm-convert combine` builds the bmodel from a cache that
//! holds every piece. Every shard plans the whole model and assigns jobs the same way, so the
//! N runs need no coordination beyond the same flags.

use std::str::FromStr;

use super::plan::JobPlan;

/// Shard `index` of `count`, both 1-based as CI matrices write them (`--shard 2/3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// More shards than this is a typo (a 70B model has ~250 pieces).
const MAX_SHARDS: usize = 4096;

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("\"{s}\" is not I/N with 1 <= I <= N <= {MAX_SHARDS} (e.g. 2/3)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<usize>().map_err(|_| bad())?,
            n.trim().parse::<usize>().map_err(|_| bad())?,
        );
        if index == 0 || index > count || count > MAX_SHARDS {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Expected compile cost of a job, in seconds of this machine's worker time, roughly: each
/// step pays a fixed ~1.8 s (transform + deploy of a small graph) plus time that grows with
/// the weights it packs (~1 s per 4 M elements, measured on SmolLM2's pieces). Only the
/// ratios matter: they balance the shards.
pub fn job_cost(job: &JobPlan) -> f64 {
    job.steps
        .iter()
        .map(|s| 1.8 + s.weight_elems as f64 / 4.0e6)
        .sum()
}

/// The 0-based shard of every job: longest job first onto the least loaded shard (ties to the
/// lower shard), so the result depends only on the plan.
pub fn assign(jobs: &[JobPlan], count: usize) -> Vec<usize> {
    let costs: Vec<f64> = jobs.iter().map(job_cost).collect();
    assign_costs(&costs, count)
}

fn assign_costs(costs: &[f64], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|&a, &b| costs[b].total_cmp(&costs[a]).then(a.cmp(&b)));
    let mut load = vec![0.0f64; count.max(1)];
    let mut shard_of = vec![0; costs.len()];
    for j in order {
        let (least, _) = load
            .iter()
            .enumerate()
            .min_by(|(a, x), (b, y)| x.total_cmp(y).then(a.cmp(b)))
            .unwrap_or((0, &0.0));
        shard_of[j] = least;
        load[least] += costs[j];
    }
    shard_of
}

/// The jobs of `shard`, in plan order.
pub fn select(jobs: Vec<JobPlan>, shard: Shard) -> Vec<JobPlan> {
    let shard_of = assign(&jobs, shard.count);
    jobs.into_iter()
        .zip(shard_of)
        .filter(|(_, s)| *s + 1 == shard.index)
        .map(|(j, _)| j)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_i_of_n() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
        for bad in ["0/3", "4/3", "3", "a/b", "1/0", "1/5000", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn balances_by_cost() {
        // Longest first: 9 → A, 5 → B, 4 → B (5 < 9), 3 → A? no: B has 9 = A's 9, tie → A;
        // 1 → B (9+3=12 > 9).
        assert_eq!(assign_costs(&[9.0, 5.0, 4.0, 3.0, 1.0], 2), [0, 1, 1, 0, 1]);
        // Every shard gets work when there is enough; one shard takes everything.
        let many = assign_costs(&[1.0; 7], 3);
        assert!((0..3).all(|s| many.contains(&s)));
        assert_eq!(assign_costs(&[2.0, 1.0], 1), [0, 0]);
        // More shards than jobs: the extra shards are empty, not an error.
        assert_eq!(assign_costs(&[1.0], 3), [0]);
    }
}
