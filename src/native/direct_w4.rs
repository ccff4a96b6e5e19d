//! W4BF16's weight-only quantization of a MatMul weight, as TPU-MLIR's A16MatMul canonicalize
//! makes it (`computePerGroupParam`, `weightQuantization`) and BM1684X's weight reorder lays
//! it out: the K×N Top weight transposed to N rows of K, per group of K values along a row
//! an f32 scale `max(max − min, 1e-5) / 15` and a zero point `clamp(−round(min / scale),
//! 0, 15)`, each value `clamp(round(w / scale) + zp, 0, 15)` packed two to a byte (even
//! index in the low nibble); scales stored as bf16, scales and zero points reordered onto the
//! 64 NPU lanes (row n to lane n mod 64). f32 arithmetic throughout, as the C++ does; the
//! template's own bytes confirm it before any layer relies on it.

use anyhow::{bail, Result};

/// BM1684X's NPU lanes, over which the reorder spreads a MatMul's output rows.
const LANES: usize = 64;

/// The three weights of one quantized MatMul: packed values, bf16 scales, zero points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantized {
    pub packed: Vec<u8>,
    pub scale: Vec<u8>,
    pub zp: Vec<u8>,
    /// TPU-MLIR's `sign` attribute (the weight has a value ≤ 0): it stays in the op, so a
    /// layer whose sign differs from its template's is not patched.
    pub sign: bool,
}

/// Quantizes the K×N f32 weight `w` (C order) in groups of `group` along K.
pub fn quantize(w: &[f32], k: usize, n: usize, group: usize) -> Result<Quantized> {
    if w.len() != k * n || group == 0 || k % group != 0 || k % 2 != 0 {
        bail!("a {k}x{n} weight ({} values) in groups of {group}", w.len());
    }
    if n % LANES != 0 && n > LANES {
        bail!("{n} output rows do not spread evenly over {LANES} lanes");
    }
    if w.iter().any(|v| !v.is_finite()) {
        bail!("a value is not finite");
    }
    let groups = k / group;
    let mut scales = vec![0f32; n * groups];
    let mut zps = vec![0u8; n * groups];
    let mut packed = vec![0u8; n * k / 2];
    let mut row = vec![0f32; k];
    for r in 0..n {
        for (i, v) in row.iter_mut().enumerate() {
            *v = w[i * n + r];
        }
        for g in 0..groups {
            let vals = &row[g * group..(g + 1) * group];
            let (min, max) = vals
                .iter()
                .fold((vals[0], vals[0]), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let scale = (max - min).max(1e-5f32) / 15.0;
            let zp = (-((min / scale).round() as i32)).clamp(0, 15) as u8;
            scales[r * groups + g] = scale;
            zps[r * groups + g] = zp;
            for (j, &v) in vals.iter().enumerate() {
                let q = ((v / scale).round() + zp as f32).clamp(0.0, 15.0) as u8;
                let at = r * k + g * group + j;
                if at % 2 == 0 {
                    packed[at / 2] = q;
                } else {
                    packed[at / 2] |= q << 4;
                }
            }
        }
    }
    let sign = w.iter().fold(f32::INFINITY, |m, &v| m.min(v)) <= 0.0;
    let scale_bits: Vec<u16> = scales
        .iter()
        .map(|s| super::direct_coeff::bf16_bits(s.to_bits()))
        .collect::<Option<_>>()
        .unwrap_or_default();
    let scale = lanes(&scale_bits, n, groups)
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    Ok(Quantized {
        packed,
        scale,
        zp: lanes(&zps, n, groups),
        sign,
    })
}

/// Rows of `groups` values, row r moved to lane r mod 64, block r div 64 within it.
fn lanes<T: Copy>(v: &[T], n: usize, groups: usize) -> Vec<T> {
    let blocks = n.div_ceil(LANES);
    let lanes = n.min(LANES);
    let mut out = Vec::with_capacity(v.len());
    for l in 0..lanes {
        for b in 0..blocks {
            let r = b * LANES + l;
            out.extend_from_slice(&v[r * groups..(r + 1) * groups]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_quantized_between_its_min_and_max() {
        // K = 4, N = 1, one group: min −1, max 2: scale 0.2, zp 5, values 0, 5, 10, 15.
        let q = quantize(&[-1.0, 0.0, 1.0, 2.0], 4, 1, 4).unwrap();
        assert_eq!(q.zp, [5]);
        assert_eq!(q.packed, [5 << 4, 10 | (15 << 4)]);
        // 0.2 as bf16: 0x3e4d.
        assert_eq!(q.scale, [0x4d, 0x3e]);
        assert!(q.sign);
        assert!(quantize(&[1.0, f32::NAN], 2, 1, 2).is_err());
    }

    #[test]
    fn rows_spread_over_the_lanes() {
        let v: Vec<u32> = (0..128 * 2).collect();
        let out = lanes(&v, 128, 2);
        // Lane 0 holds rows 0 and 64, lane 1 rows 1 and 65.
        assert_eq!(&out[..6], [0, 1, 128, 129, 2, 3]);
        assert_eq!(lanes(&v[..8], 4, 2), v[..8]);
    }
}
