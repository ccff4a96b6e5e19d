//! Rotary tables as weights: cos/sin `[seq_length, 1, head_dim]` (halves duplicated, or each
//! frequency twice in a row for interleaved pairs), gathered by position_ids in the graph.
//! Written from the formulas independently of `reference`.

use std::collections::HashMap;
use std::sync::Mutex;

use super::mask::positions_f32;
use crate::family::{LayerRope, RotaryPairs};
use crate::graph::{Attr, Graph};
use crate::model::config::RopeScaling;
use crate::model::ModelConfig;

/// Layer `layer`'s (cos, sin) tables, row-major `[seq, 1, rotary_dim]` (rotary_dim = head_dim
/// unless partial). longrope: the short factors' tables.
pub fn tables(cfg: &ModelConfig, layer: usize, seq: usize) -> (Vec<f32>, Vec<f32>) {
    match (cfg.layer.rope(layer), &cfg.rope_scaling) {
        (LayerRope::Model, Some(RopeScaling::LongRope(l))) => tables_from(
            cfg,
            seq,
            &model_freqs(cfg, Some(&l.short_factor)),
            l.attention_factor,
        ),
        (LayerRope::Model, _) => tables_from(cfg, seq, &model_freqs(cfg, None), 1.0),
        (LayerRope::Unscaled { theta }, _) => {
            let d = cfg.layer.attention.rotary.dim(cfg.head_dim);
            let freqs: Vec<f64> = (0..d / 2)
                .map(|i| theta.powf(-(2.0 * i as f64) / d as f64))
                .collect();
            tables_from(cfg, seq, &freqs, 1.0)
        }
    }
}

/// The model's inverse frequencies after `rope_scaling`, each divided by `ext` (longrope's
/// factors) when given.
fn model_freqs(cfg: &ModelConfig, ext: Option<&[f64]>) -> Vec<f64> {
    let d = cfg.layer.attention.rotary.dim(cfg.head_dim);
    (0..d / 2)
        .map(|i| {
            let f = cfg.rope_theta.powf(-(2.0 * i as f64) / d as f64);
            match ext {
                Some(ext) => f / ext[i],
                None => scaled(cfg, f),
            }
        })
        .collect()
}

/// The tables of inverse frequencies `freqs`, cos/sin × `a` (longrope's attention factor).
/// Every piece with rotary builds the same tables, an unchanged rerun too (to key it), so
/// they are computed once per process and copied.
fn tables_from(cfg: &ModelConfig, seq: usize, freqs: &[f64], a: f64) -> (Vec<f32>, Vec<f32>) {
    type Key = (usize, bool, usize, Vec<u64>, u64);
    type Tables = (Vec<f32>, Vec<f32>);
    static MEMO: Mutex<Option<HashMap<Key, Tables>>> = Mutex::new(None);
    let d = cfg.layer.attention.rotary.dim(cfg.head_dim);
    let halves = matches!(cfg.layer.attention.rotary.pairs, RotaryPairs::HalfSplit);
    let key = (
        d,
        halves,
        seq,
        freqs.iter().map(|f| f.to_bits()).collect(),
        a.to_bits(),
    );
    if let Some(t) = MEMO
        .lock()
        .ok()
        .and_then(|m| m.as_ref()?.get(&key).cloned())
    {
        return t;
    }
    let t = compute_tables(d, halves, seq, freqs, a);
    if let Ok(mut m) = MEMO.lock() {
        let m = m.get_or_insert_with(HashMap::new);
        // A process converts one model at a time; tests convert many.
        if m.len() >= 8 {
            m.clear();
        }
        m.insert(key, t.clone());
    }
    t
}

fn compute_tables(
    d: usize,
    halves: bool,
    seq: usize,
    freqs: &[f64],
    a: f64,
) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(seq * d);
    let mut sin = Vec::with_capacity(seq * d);
    // Element j of a row turns at frequency `order[j]`.
    let order: Vec<usize> = match halves {
        true => (0..d).map(|j| j % (d / 2)).collect(),
        false => (0..d).map(|j| j / 2).collect(),
    };
    // Each frequency's values once per position (a row holds each twice).
    let mut row = Vec::with_capacity(freqs.len());
    for pos in 0..seq {
        row.clear();
        row.extend(freqs.iter().map(|&f| {
            // f32 product, like the checkpoint's framework computes position * inv_freq.
            let angle = (pos as f32 * f as f32) as f64;
            ((angle.cos() * a) as f32, (angle.sin() * a) as f32)
        }));
        for &i in &order {
            cos.push(row[i].0);
            sin.push(row[i].1);
        }
    }
    (cos, sin)
}

/// longrope, when the piece can see positions past `original_max_position_embeddings`: the
/// gathered short-factor `cos`/`sin` `[1,L,1,rd]` become the long-factor ones when the call's
/// largest position id reaches it (transformers' per-call choice, `max(position_ids) + 1 >
/// original`), else stay. Static prefill pads position_ids with zeros, so the largest is
/// the last real token's. Kept in f32 (bf16 rounds positions above 256).
pub fn longrope_select(
    g: &mut Graph,
    cfg: &ModelConfig,
    seq: usize,
    pos: &str,
    (cos, sin): (String, String),
) -> (String, String) {
    let Some(RopeScaling::LongRope(l)) = &cfg.rope_scaling else {
        return (cos, sin);
    };
    if seq <= l.original_max_position_embeddings {
        return (cos, sin);
    }
    let rd = cfg.layer.attention.rotary.dim(cfg.head_dim);
    let (cos_t, sin_t) = tables_from(
        cfg,
        seq,
        &model_freqs(cfg, Some(&l.long_factor)),
        l.attention_factor,
    );
    let first = g.nodes.len();
    let cos_w = g.const_f32("rotary_cos_long", &[seq, 1, rd], cos_t);
    let sin_w = g.const_f32("rotary_sin_long", &[seq, 1, rd], sin_t);
    let p = positions_f32(g, pos);
    let last = g.op("ReduceMax", &[&p], vec![("keepdims", Attr::Int(1))]);
    let limit = g.scalar(
        "longrope_last_short",
        (l.original_max_position_embeddings - 1) as f32,
    );
    let over = g.op("Sub", &[&last, &limit], vec![]);
    let over = g.op("Relu", &[&over], vec![]);
    let one = g.scalar("one", 1.0);
    let long = g.op("Min", &[&over, &one], vec![]); // 1 past the original length, else 0
    let pick = |g: &mut Graph, short: &str, table: &str| {
        let gathered = g.op("Gather", &[table, pos], vec![("axis", Attr::Int(0))]);
        let step = g.op("Sub", &[&gathered, short], vec![]);
        let step = g.mul(&step, &long);
        g.add(short, &step)
    };
    let out = (pick(g, &cos, &cos_w), pick(g, &sin, &sin_w));
    g.keep_f32_since(first);
    out
}

/// One inverse frequency after `rope_scaling` (longrope's divisors are applied by the caller).
fn scaled(cfg: &ModelConfig, f: f64) -> f64 {
    match &cfg.rope_scaling {
        None | Some(RopeScaling::LongRope(_)) => f,
        Some(RopeScaling::Linear { factor }) => f / factor,
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        }) => {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < old / high_freq_factor {
                f
            } else if wavelen > old / low_freq_factor {
                f / factor
            } else {
                let s = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 - s) * f / factor + s * f
            }
        }
    }
}
