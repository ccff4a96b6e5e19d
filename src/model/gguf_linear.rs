//! A GGUF linear layer's blocks as TPU-MLIR's A16MatMul takes them (integers, a scale and a
//! zero point per group of 32 input features), following the file's own type per tensor:
//! Q4_0 (`(q - 8) · d`) and Q8_0 (`q · d`, q signed: stored + 128 with zero point 128) pass
//! through exactly; every other quantized type is requantized from its dequantized values onto
//! 4 bits (Q4_1) or 8 (the rest), the widths llm_convert.py 1.30.2 gives each GGUF type
//! (`ModelHandle._quant_type_to_output_bits`): a K-quant's two-level scales fit no 4-bit grid.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Result};
use candle_core::quantized::GgmlDType;
use half::f16;

use super::quant::QuantizedLinear;

/// Input features per scale in every A16 layer made from a GGUF (the block size of Q4_0 and
/// Q8_0, and the sub-block of Q4_K / Q5_K).
pub const GROUP: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Handling {
    /// The file's integers and scales as they are.
    Exact,
    /// Dequantized, then quantized again onto `bits` (min-max per group of 32).
    Requantized,
}

/// How one GGUF linear becomes an A16MatMul.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LinearFormat {
    /// The GGUF type, as candle names it (`Q4_0`, `Q6K`, …).
    #[serde(serialize_with = "type_name")]
    pub gguf: GgmlDType,
    pub bits: usize,
    pub handling: Handling,
}

fn type_name<S: serde::Serializer>(t: &GgmlDType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{t:?}"))
}

/// The A16 format of a tensor stored as `t` (`None`: a float type, kept float).
pub fn format_of(t: GgmlDType) -> Option<LinearFormat> {
    use GgmlDType::*;
    let (bits, handling) = match t {
        F32 | F16 | BF16 => return None,
        Q4_0 => (4, Handling::Exact),
        Q8_0 => (8, Handling::Exact),
        Q4_1 => (4, Handling::Requantized),
        Q2K | Q3K | Q4K | Q5_0 | Q5_1 | Q5K | Q6K | Q8_1 | Q8K => (8, Handling::Requantized),
    };
    Some(LinearFormat {
        gguf: t,
        bits,
        handling,
    })
}

/// One line saying, per GGUF type, how many block linears become what.
pub fn summary(linears: &BTreeMap<String, LinearFormat>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for f in linears.values() {
        let how = match f.handling {
            Handling::Exact => "as stored",
            Handling::Requantized => "requantized",
        };
        *counts
            .entry(format!("{:?} -> {}-bit {how}", f.gguf, f.bits))
            .or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!(
        "keeping the GGUF's own quantization of the block linears (groups of {GROUP}, f16 scales and activations): {}; \
         other weights f16 (-q w4bf16 etc. requantizes every layer instead)",
        parts.join(", ")
    )
}

/// Q4_0 / Q8_0 blocks of an `[n, k]` weight (rows of `k`, blocks along them) unpacked.
pub fn unpack_exact(t: GgmlDType, blocks: &[u8], n: usize, k: usize) -> Result<QuantizedLinear> {
    let (block_bytes, zero) = match t {
        GgmlDType::Q4_0 => (2 + GROUP / 2, 8u8),
        GgmlDType::Q8_0 => (2 + GROUP, 128u8),
        other => bail!("{other:?} blocks are not passed through (only Q4_0 and Q8_0 are)"),
    };
    ensure!(
        k % GROUP == 0,
        "{k} input features are not whole blocks of {GROUP}"
    );
    let groups = n * k / GROUP;
    ensure!(
        blocks.len() == groups * block_bytes,
        "{} bytes of {t:?} blocks, but [{n}, {k}] needs {}",
        blocks.len(),
        groups * block_bytes
    );
    let mut q = Vec::with_capacity(n * k);
    let mut scales = Vec::with_capacity(groups);
    for b in blocks.chunks_exact(block_bytes) {
        scales.push(f16::from_le_bytes([b[0], b[1]]).to_f32());
        let qs = &b[2..];
        match t {
            // Byte j holds weight j (low nibble) and weight j + 16 (high nibble).
            GgmlDType::Q4_0 => {
                q.extend(qs.iter().map(|&v| v & 0x0f));
                q.extend(qs.iter().map(|&v| v >> 4));
            }
            _ => q.extend(qs.iter().map(|&v| (v as i8 as i16 + 128) as u8)),
        }
    }
    Ok(QuantizedLinear {
        k,
        n,
        group_size: GROUP,
        q,
        zeros: vec![zero; groups],
        scales,
        g_idx: None,
    })
}

/// `w` (`[n, k]`, row-major) quantized onto `bits` per group of 32: min-max over the group and
/// zero, zero point rounded, as TPU-MLIR's own asymmetric weight-only quantization does.
pub fn requantize(w: &[f32], n: usize, k: usize, bits: usize) -> Result<QuantizedLinear> {
    ensure!(
        k % GROUP == 0,
        "{k} input features are not whole groups of {GROUP}"
    );
    ensure!(w.len() == n * k, "{} values for [{n}, {k}]", w.len());
    let top = ((1u32 << bits) - 1) as f32;
    let mut q = Vec::with_capacity(n * k);
    let (mut zeros, mut scales) = (Vec::new(), Vec::new());
    for group in w.chunks_exact(GROUP) {
        let lo = group.iter().fold(0f32, |a, &v| a.min(v));
        let hi = group.iter().fold(0f32, |a, &v| a.max(v));
        let scale = if hi > lo { (hi - lo) / top } else { 1.0 };
        let zero = (-lo / scale).round().clamp(0.0, top);
        q.extend(
            group
                .iter()
                .map(|&v| ((v / scale).round() + zero).clamp(0.0, top) as u8),
        );
        zeros.push(zero as u8);
        scales.push(scale);
    }
    Ok(QuantizedLinear {
        k,
        n,
        group_size: GROUP,
        q,
        zeros,
        scales,
        g_idx: None,
    })
}

/// For each output row of llama.cpp's q/k un-permute (see `gguf::unpermute_rows`), the stored
/// row it comes from: within a head, stored rows pair up as (2i, 2i+1), HF's are (i, i + half).
pub fn unpermuted_row_sources(rows: usize, n_head: usize) -> Result<Vec<usize>> {
    ensure!(
        n_head > 0 && rows % (2 * n_head) == 0,
        "{rows} rows cannot be split into {n_head} rotary heads"
    );
    let half = rows / n_head / 2;
    let mut src = Vec::with_capacity(rows);
    for h in 0..n_head {
        for j in 0..2 {
            src.extend((0..half).map(|i| h * 2 * half + 2 * i + j));
        }
    }
    Ok(src)
}

/// `layer` with its output rows (and their scales and zero points) taken from `sources`.
pub fn permute_rows(layer: QuantizedLinear, sources: &[usize]) -> QuantizedLinear {
    let (k, groups) = (layer.k, layer.groups());
    let take = |v: &[u8], width: usize| -> Vec<u8> {
        sources
            .iter()
            .flat_map(|&r| v[r * width..(r + 1) * width].iter().copied())
            .collect()
    };
    let scales = sources
        .iter()
        .flat_map(|&r| layer.scales[r * groups..(r + 1) * groups].iter().copied())
        .collect();
    QuantizedLinear {
        q: take(&layer.q, k),
        zeros: take(&layer.zeros, groups),
        scales,
        ..layer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    fn weights(n: usize, k: usize) -> Tensor {
        let v: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.45) * (1.0 + (i % 5) as f32))
            .collect();
        Tensor::from_vec(v, (n, k), &Device::Cpu).unwrap()
    }

    /// Our unpacking of candle's Q4_0 / Q8_0 blocks dequantizes to exactly what candle's own
    /// decoder (llama.cpp's `dequantize_row_*`) gives.
    #[test]
    fn exact_types_unpack_as_candle_dequantizes() {
        for t in [GgmlDType::Q4_0, GgmlDType::Q8_0] {
            let (n, k) = (6, 96);
            let qt = QTensor::quantize(&weights(n, k), t).unwrap();
            let layer = unpack_exact(t, &qt.data().unwrap(), n, k).unwrap();
            let theirs: Vec<f32> = qt
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(layer.dequantize(), theirs, "{t:?}");
            assert!(unpack_exact(t, &qt.data().unwrap()[1..], n, k).is_err());
        }
        assert!(unpack_exact(GgmlDType::Q4K, &[], 1, 256).is_err());
    }

    #[test]
    fn requantize_stays_within_half_a_step() {
        let (n, k) = (3, 64);
        let w: Vec<f32> = weights(n, k).flatten_all().unwrap().to_vec1().unwrap();
        for bits in [4, 8] {
            let layer = requantize(&w, n, k, bits).unwrap();
            let back = layer.dequantize();
            for (i, (a, b)) in w.iter().zip(&back).enumerate() {
                let step = layer.scales[i / GROUP];
                assert!(
                    (a - b).abs() <= step * 0.5 + 1e-6,
                    "{bits}-bit {i}: {a} vs {b}"
                );
            }
        }
        // A constant group is exact.
        let c = requantize(&[0.3; 32], 1, 32, 4).unwrap().dequantize();
        assert!(c.iter().all(|&v| (v - 0.3).abs() < 1e-6), "{c:?}");
    }

    /// The row sources agree with the tensor un-permute the float path uses.
    #[test]
    fn row_sources_match_the_tensor_unpermute() {
        let (rows, heads) = (12, 3);
        let src = unpermuted_row_sources(rows, heads).unwrap();
        let t = Tensor::arange(0f32, rows as f32, &Device::Cpu)
            .unwrap()
            .reshape((rows, 1))
            .unwrap();
        let moved: Vec<f32> = t
            .reshape((heads, rows / heads / 2, 2, 1))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<usize> = moved.iter().map(|&v| v as usize).collect();
        assert_eq!(src, want);
        assert!(unpermuted_row_sources(10, 3).is_err());
    }
}
