//! Element types of net inputs/outputs, and the 16-bit float conversions hosts need to fill
//! and read bf16/f16 activations.

use std::fmt;

use anyhow::{bail, Result};
use half::{bf16, f16};

use super::ffi;

/// `bm_data_type_t` as a Rust enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    BF16,
    I4,
    U4,
}

impl DType {
    const ALL: [(DType, ffi::bm_data_type_t, &'static str); 11] = [
        (DType::F32, ffi::BM_FLOAT32, "f32"),
        (DType::F16, ffi::BM_FLOAT16, "f16"),
        (DType::I8, ffi::BM_INT8, "i8"),
        (DType::U8, ffi::BM_UINT8, "u8"),
        (DType::I16, ffi::BM_INT16, "i16"),
        (DType::U16, ffi::BM_UINT16, "u16"),
        (DType::I32, ffi::BM_INT32, "i32"),
        (DType::U32, ffi::BM_UINT32, "u32"),
        (DType::BF16, ffi::BM_BFLOAT16, "bf16"),
        (DType::I4, ffi::BM_INT4, "i4"),
        (DType::U4, ffi::BM_UINT4, "u4"),
    ];

    /// None for a value this crate does not know (a newer runtime).
    pub fn from_raw(raw: ffi::bm_data_type_t) -> Option<DType> {
        Self::ALL.iter().find(|e| e.1 == raw).map(|e| e.0)
    }

    pub fn raw(self) -> ffi::bm_data_type_t {
        Self::ALL[self as usize].1
    }

    pub fn name(self) -> &'static str {
        Self::ALL[self as usize].2
    }

    /// Bytes taken by `count` elements (4-bit types pack two per byte).
    pub fn bytes_for(self, count: usize) -> usize {
        match self {
            DType::I4 | DType::U4 => count.div_ceil(2),
            DType::I8 | DType::U8 => count,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => count * 2,
            DType::F32 | DType::I32 | DType::U32 => count * 4,
        }
    }

    /// Little-endian device bytes for `values` (F32, F16 or BF16; rounds to nearest).
    pub fn encode_f32(self, values: &[f32]) -> Result<Vec<u8>> {
        Ok(match self {
            DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F16 => f32_to_f16(values)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            DType::BF16 => f32_to_bf16(values)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            other => bail!("cannot encode f32 values as {other}"),
        })
    }

    /// f32 values from little-endian device bytes (F32, F16 or BF16).
    pub fn decode_f32(self, bytes: &[u8]) -> Result<Vec<f32>> {
        let width = self.bytes_for(1);
        if !matches!(self, DType::F32 | DType::F16 | DType::BF16) {
            bail!("cannot decode {self} as f32 values");
        }
        if bytes.len() % width != 0 {
            bail!(
                "{} bytes is not a whole number of {self} elements",
                bytes.len()
            );
        }
        let chunks = bytes.chunks_exact(width);
        Ok(match self {
            DType::F32 => chunks
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => chunks
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            _ => chunks
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// bf16 bit patterns (as stored on the device) to f32.
pub fn bf16_to_f32(bits: &[u16]) -> Vec<f32> {
    bits.iter().map(|&b| bf16::from_bits(b).to_f32()).collect()
}

/// f32 to bf16 bit patterns (round to nearest even).
pub fn f32_to_bf16(values: &[f32]) -> Vec<u16> {
    values
        .iter()
        .map(|&v| bf16::from_f32(v).to_bits())
        .collect()
}

/// f16 bit patterns to f32.
pub fn f16_to_f32(bits: &[u16]) -> Vec<f32> {
    bits.iter().map(|&b| f16::from_bits(b).to_f32()).collect()
}

/// f32 to f16 bit patterns (round to nearest even).
pub fn f32_to_f16(values: &[f32]) -> Vec<u16> {
    values.iter().map(|&v| f16::from_f32(v).to_bits()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_round_trip() {
        for (d, raw, _) in DType::ALL {
            assert_eq!(DType::from_raw(raw), Some(d));
            assert_eq!(d.raw(), raw);
        }
        assert_eq!(DType::from_raw(99), None);
        assert_eq!(DType::BF16.raw(), 8);
        assert_eq!(DType::I32.raw(), 6);
    }

    #[test]
    fn sizes_and_halves() {
        assert_eq!(DType::I4.bytes_for(3), 2);
        assert_eq!(DType::BF16.bytes_for(3), 6);
        assert_eq!(bf16_to_f32(&f32_to_bf16(&[1.0, -2.5])), vec![1.0, -2.5]);
        assert_eq!(f16_to_f32(&f32_to_f16(&[0.5])), vec![0.5]);
        let bytes = DType::BF16.encode_f32(&[1.0, 3.0]).unwrap();
        assert_eq!(DType::BF16.decode_f32(&bytes).unwrap(), vec![1.0, 3.0]);
        assert!(DType::I32.encode_f32(&[1.0]).is_err());
        assert!(DType::F32.decode_f32(&[0, 0, 0]).is_err());
    }
}
