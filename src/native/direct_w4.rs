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

/// Output rows quantized together (a cache line of f32 per weight row).
const BAND: usize = 16;

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
    let mut lowest = f32::INFINITY;
    // A band of output rows (columns of `w`) at a time: each of its K rows is read as one
    // contiguous run, and the per-row loops run across the band, where they vectorise.
    let mut q = vec![0u8; k * BAND];
    for c0 in (0..n).step_by(BAND) {
        let cols = BAND.min(n - c0);
        let band = |i: usize| &w[i * n + c0..i * n + c0 + cols];
        for g in 0..groups {
            let rows = g * group..(g + 1) * group;
            let (mut lo, mut hi) = ([f32::INFINITY; BAND], [f32::NEG_INFINITY; BAND]);
            for i in rows.clone() {
                for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(band(i)) {
                    *l = if v < *l { v } else { *l };
                    *h = if v > *h { v } else { *h };
                }
            }
            let mut scale = [1f32; BAND];
            let mut zp = [0i32; BAND];
            for c in 0..cols {
                lowest = lowest.min(lo[c]);
                scale[c] = (hi[c] - lo[c]).max(1e-5f32) / 15.0;
                zp[c] = (-((lo[c] / scale[c]).round() as i32)).clamp(0, 15);
                scales[(c0 + c) * groups + g] = scale[c];
                zps[(c0 + c) * groups + g] = zp[c] as u8;
            }
            let zp_f = zp.map(|z| z as f32);
            for i in rows {
                let out = &mut q[i * BAND..i * BAND + cols];
                for (((o, &v), &s), &z) in out.iter_mut().zip(band(i)).zip(&scale).zip(&zp_f) {
                    *o = (round_half_away(v / s) + z).clamp(0.0, 15.0) as u8;
                }
            }
        }
        // Two to a byte, the even index in the low nibble.
        for (j, pair) in q.chunks_exact(2 * BAND).take(k / 2).enumerate() {
            for c in 0..cols {
                packed[(c0 + c) * k / 2 + j] = pair[c] | (pair[BAND + c] << 4);
            }
        }
    }
    let sign = lowest <= 0.0;
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

/// `x.round()`, half away from zero, in arithmetic the compiler vectorises (libm's `roundf`
/// and a saturating cast are scalar calls): 2^23 added and taken away rounds |x| to the
/// nearest integer, ties to even, exactly below 2^22; a tie that went down goes up instead.
/// Values beyond 2^22 become 2^22: the callers clamp to 0..=15 after adding a zero point up
/// to 15, which cannot tell them apart.
#[inline]
fn round_half_away(x: f32) -> f32 {
    const TWO_23: f32 = 8_388_608.0;
    let a = x.abs().min(4_194_304.0);
    let n = (a + TWO_23) - TWO_23;
    let r = if a - n >= 0.5 { n + 1.0 } else { n };
    r.copysign(x)
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

    /// The C++'s loop as written: column by column, libm's rounding.
    fn reference(w: &[f32], k: usize, n: usize, group: usize) -> (Vec<u8>, Vec<f32>, Vec<u8>) {
        let groups = k / group;
        let (mut packed, mut scales, mut zps) = (
            vec![0u8; n * k / 2],
            vec![0f32; n * groups],
            vec![0u8; n * groups],
        );
        for r in 0..n {
            let row: Vec<f32> = (0..k).map(|i| w[i * n + r]).collect();
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
                    packed[at / 2] |= if at % 2 == 0 { q } else { q << 4 };
                }
            }
        }
        (packed, scales, zps)
    }

    #[test]
    fn the_fast_loop_quantizes_as_the_reference_does() {
        // Values on a coarse grid make v / scale land on halves; a far-off group, huge ratios.
        let (k, n, group) = (128, 192, 32);
        let mut seed = 12345u64;
        let w: Vec<f32> = (0..k * n)
            .map(|i| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (seed >> 40) as f32 / (1u64 << 24) as f32;
                match i % 5 {
                    0 => (u * 30.0).round() * 0.5 - 7.0,
                    1 => u * 1e-6,
                    2 => 1000.0 + u,
                    _ => u * 2.0 - 1.0,
                }
            })
            .collect();
        let q = quantize(&w, k, n, group).unwrap();
        let (packed, scales, zps) = reference(&w, k, n, group);
        assert_eq!(q.packed, packed);
        assert_eq!(q.zp, lanes(&zps, n, k / group));
        let bits: Vec<u16> = scales
            .iter()
            .map(|s| super::super::direct_coeff::bf16_bits(s.to_bits()).unwrap())
            .collect();
        let bytes: Vec<u8> = lanes(&bits, n, k / group)
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        assert_eq!(q.scale, bytes);
    }

    #[test]
    fn rounding_is_libms_half_away_from_zero() {
        let mut xs = vec![
            0.5f32,
            -0.5,
            1.5,
            -1.5,
            2.5,
            0.49999997,
            -0.49999997,
            8388607.5,
        ];
        xs.extend([8388608.0, 1e10, -1e10, 0.0, -0.0, 14.5, -14.5]);
        xs.extend((0..20000).map(|i| (i as f32 - 10000.0) * 0.0625));
        for x in xs {
            let want = x.clamp(-4_194_304.0, 4_194_304.0).round();
            assert_eq!(round_half_away(x).to_bits(), want.to_bits(), "{x}");
        }
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
