//! Slice and Concat: the two ops whose conversion folds constants (`convert_slice_op`,
//! `convert_concat_op`). A Slice of a weight becomes a new weight named after the Slice's
//! output (computed from its source when the npz is written, so a sliced checkpoint tensor is
//! not held meanwhile); a run of constant Concat inputs becomes one new weight.

use anyhow::{bail, ensure, Result};

use super::emit::{ints, Emitter};
use super::emit_ops::loc;
use super::emit_prep::Node;

/// What `int(x)` makes of numpy's f32 copy of an int64 constant, after the converter's
/// `x[x == int64_max] = int32_max - 1024`.
const CLAMPED_MAX: f32 = (i32::MAX - 1024) as f32;

/// `try_get_slice_input`: a constant bound's values (clamped in place, so the npz holds the
/// clamped copy too) and its `top.Weight`; a computed one as an operand.
enum Bound {
    Const(Vec<i64>),
    Value(super::emit::Value),
}

fn bound(e: &mut Emitter, name: &str) -> Result<Bound> {
    if !e.is_weight(name) {
        return Ok(Bound::Value(e.get_operand(name)?));
    }
    let v = e.values(name)?.into_owned();
    let max = i64::MAX as f32;
    if v.contains(&max) {
        let clamped = v
            .iter()
            .map(|&x| if x == max { CLAMPED_MAX } else { x })
            .collect();
        e.replace_values(name, clamped)?;
    }
    e.get_weight_op(name)?;
    let v = e.values(name)?;
    Ok(Bound::Const(v.iter().map(|&x| x as i64).collect()))
}

pub fn slice(e: &mut Emitter, n: &Node) -> Result<()> {
    ensure!(
        (3..=5).contains(&n.inputs.len()),
        "Slice takes data, starts, ends[, axes[, steps]]"
    );
    let data = n.inputs[0].as_str();
    let source = if e.is_weight(data) {
        e.get_weight_op(data)?
    } else {
        e.get_operand(data)?
    };
    let starts = bound(e, &n.inputs[1])?;
    let ends = bound(e, &n.inputs[2])?;
    let axes = match n.inputs.get(3) {
        Some(a) => bound(e, a)?,
        None => match &ends {
            Bound::Const(v) => Bound::Const((0..v.len() as i64).collect()),
            Bound::Value(_) => bail!("Slice with computed ends needs axes"),
        },
    };
    let steps = match n.inputs.get(4) {
        Some(s) => bound(e, s)?,
        None => match &axes {
            Bound::Const(v) => Bound::Const(vec![1; v.len()]),
            Bound::Value(_) => Bound::Value(e.none()),
        },
    };
    let (starts, ends, axes, steps) = match (starts, ends, axes, steps) {
        (Bound::Const(s), Bound::Const(en), Bound::Const(a), Bound::Const(st)) => (s, en, a, st),
        (s, en, a, st) => {
            // SliceAxisOp(input, axis, start, step, end), constants as their Weights.
            let op = |b: Bound, name: Option<&String>, e: &mut Emitter| match (b, name) {
                (Bound::Value(v), _) => Ok(v),
                (Bound::Const(_), Some(w)) => e.get_weight_op(w),
                (Bound::Const(_), None) => Ok(e.none()),
            };
            let a = op(a, n.inputs.get(3), e)?;
            let s = op(s, n.inputs.get(1), e)?;
            let st = op(st, n.inputs.get(4), e)?;
            let en = op(en, n.inputs.get(2), e)?;
            let v = e.op(
                "top.SliceAxis",
                &[&source, &a, &s, &st, &en],
                vec![],
                &loc(n),
            );
            return e.add_operand(&n.name, v);
        }
    };
    ensure!(
        starts.len() == ends.len() && axes.len() == ends.len() && steps.len() == axes.len(),
        "Slice bounds of different lengths"
    );
    if steps.iter().any(|&s| s < 1) {
        bail!("Slice steps {steps:?}: only positive steps are supported");
    }
    if e.is_weight(data) {
        let rank = e.tensor(data)?.dims.len() as i64;
        let ranges = starts
            .iter()
            .zip(&ends)
            .zip(&axes)
            .zip(&steps)
            .map(|(((&s, &en), &a), &st)| {
                let axis = if a < 0 { a + rank } else { a };
                ensure!(
                    (0..rank).contains(&axis),
                    "Slice axis {a} of a rank-{rank} weight"
                );
                Ok((axis as usize, s, en, st))
            })
            .collect::<Result<Vec<_>>>()?;
        return e.add_slice_weight(&n.name, data, ranges);
    }
    let mut order: Vec<usize> = (0..axes.len()).collect();
    if axes.windows(2).any(|w| w[0] > w[1]) {
        order.sort_by_key(|&i| axes[i]);
    }
    let pick = |v: &[i64]| -> Vec<i64> { order.iter().map(|&i| v[i]).collect() };
    let x = e.get_operand(data)?;
    let none = e.none();
    let attrs = vec![
        ("offset", ints(&pick(&starts))),
        ("steps", ints(&pick(&steps))),
        ("ends", ints(&pick(&ends))),
        ("axes", ints(&pick(&axes))),
    ];
    let v = e.op("top.Slice", &[&x, &none, &none, &none], attrs, &loc(n));
    e.add_operand(&n.name, v)
}

/// `data[start:end:step]` along each axis, as numpy slices (negative bounds count from the
/// end, out-of-range ones clamp): the kept indices of one axis of size `len`.
pub fn slice_indices(len: usize, start: i64, end: i64, step: i64) -> Vec<usize> {
    let n = len as i64;
    let clamp = |x: i64| if x < 0 { (x + n).max(0) } else { x.min(n) };
    let (s, en) = (clamp(start), clamp(end));
    (s..en)
        .step_by(step.max(1) as usize)
        .map(|i| i as usize)
        .collect()
}

/// The values of `src` (row-major, shape `dims`) at `ranges` → (new dims, values).
pub fn apply_slice(
    dims: &[usize],
    src: &[f32],
    ranges: &[(usize, i64, i64, i64)],
) -> (Vec<usize>, Vec<f32>) {
    let mut dims = dims.to_vec();
    let mut data = src.to_vec();
    for &(axis, s, en, st) in ranges {
        let keep = slice_indices(dims[axis], s, en, st);
        let outer: usize = dims[..axis].iter().product();
        let inner: usize = dims[axis + 1..].iter().product();
        let mut out = Vec::with_capacity(outer * keep.len() * inner);
        for o in 0..outer {
            for &k in &keep {
                let base = (o * dims[axis] + k) * inner;
                out.extend_from_slice(&data[base..base + inner]);
            }
        }
        dims[axis] = keep.len();
        data = out;
    }
    (dims, data)
}

pub fn concat(e: &mut Emitter, n: &Node) -> Result<()> {
    let Some(axis) = n.int_attr("axis") else {
        bail!("Concat without axis");
    };
    let mut operands = Vec::new();
    let mut pending: Option<(String, Vec<usize>, Vec<f32>)> = None;
    for x in &n.inputs {
        if e.is_weight(x) {
            let dims = e.tensor(x)?.dims.clone();
            let max = i64::MAX as f32;
            let data: Vec<f32> = e
                .values(x)?
                .iter()
                .map(|&v| if v == max { CLAMPED_MAX } else { v })
                .collect();
            if dims.len() == 1 && dims[0] == 0 {
                continue;
            }
            pending = Some(match pending.take() {
                None => (x.clone(), dims, data),
                Some((name, pdims, pdata)) => {
                    let (d, v) = concat_arrays(&pdims, &pdata, &dims, &data, axis)?;
                    (format!("{name}_{x}"), d, v)
                }
            });
            continue;
        }
        if let Some((name, dims, data)) = pending.take() {
            let w = if e.is_weight(&name) {
                format!("{name}_{}_weight", n.name)
            } else {
                format!("{name}_weight")
            };
            e.add_weight(&w, dims, data)?;
            operands.push(e.get_weight_op(&w)?);
        }
        operands.push(e.get_operand(x)?);
    }
    if operands.is_empty() {
        let Some((_, dims, data)) = pending else {
            bail!("Concat of nothing");
        };
        return e.add_weight(&n.name, dims, data);
    }
    if let Some((_, dims, data)) = pending {
        let w = format!("{}_weight", n.name);
        e.add_weight(&w, dims, data)?;
        operands.push(e.get_weight_op(&w)?);
    }
    if operands.len() == 1 {
        let v = operands.remove(0);
        return e.add_operand(&n.name, v);
    }
    let refs: Vec<&super::emit::Value> = operands.iter().collect();
    let v = e.op(
        "top.Concat",
        &refs,
        vec![("axis", super::emit::si32(axis))],
        &loc(n),
    );
    e.add_operand(&n.name, v)
}

/// `np.concatenate((a, b), axis)` of row-major arrays.
fn concat_arrays(
    ad: &[usize],
    a: &[f32],
    bd: &[usize],
    b: &[f32],
    axis: i64,
) -> Result<(Vec<usize>, Vec<f32>)> {
    let rank = ad.len() as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    ensure!(
        ad.len() == bd.len() && (0..rank).contains(&axis),
        "cannot concatenate constants {ad:?} and {bd:?} on axis {axis}"
    );
    let ax = axis as usize;
    for i in 0..ad.len() {
        ensure!(
            i == ax || ad[i] == bd[i],
            "constants {ad:?} and {bd:?} differ off axis {ax}"
        );
    }
    let outer: usize = ad[..ax].iter().product();
    let (ia, ib) = (
        ad[ax..].iter().product::<usize>(),
        bd[ax..].iter().product::<usize>(),
    );
    let mut out = Vec::with_capacity(a.len() + b.len());
    for o in 0..outer {
        out.extend_from_slice(&a[o * ia..(o + 1) * ia]);
        out.extend_from_slice(&b[o * ib..(o + 1) * ib]);
    }
    let mut dims = ad.to_vec();
    dims[ax] += bd[ax];
    Ok((dims, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_like_numpy() {
        assert_eq!(slice_indices(5, 1, 3, 1), [1, 2]);
        assert_eq!(slice_indices(5, -2, i64::MAX, 1), [3, 4]);
        assert_eq!(slice_indices(5, 0, 2_147_482_623, 2), [0, 2, 4]);
        assert!(slice_indices(5, 4, 2, 1).is_empty());
        // [[0 1 2] [3 4 5]][:, 1:3] → [[1 2] [4 5]]
        let (d, v) = apply_slice(&[2, 3], &[0., 1., 2., 3., 4., 5.], &[(1, 1, 3, 1)]);
        assert_eq!((d, v), (vec![2, 2], vec![1., 2., 4., 5.]));
        let (d, v) = concat_arrays(&[2, 1], &[0., 1.], &[2, 2], &[2., 3., 4., 5.], -1).unwrap();
        assert_eq!((d, v), (vec![2, 3], vec![0., 2., 3., 1., 4., 5.]));
    }
}
