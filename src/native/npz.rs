//! The weight archive tpuc-opt reads: an uncompressed (stored) zip of `<key>.npy` files, each an
//! f32 little-endian C-order array, as `np.savez` writes them. tpuc-opt's cnpy aborts on
//! compressed members or on a dtype other than the `top.Weight`'s (f32), and it walks the local
//! headers one after another, so members carry no data descriptors (the zip is seekable).
//!
//! Arrays are written one at a time and never held together; members and archives past 4 GiB
//! get zip64 records.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// numpy aligns the data of every `.npy` to this many bytes (`np.lib.format.ARRAY_ALIGN`).
const ARRAY_ALIGN: usize = 64;
/// numpy leaves room in the header for the first axis to grow to this many digits.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;

/// The `.npy` (format 1.0) header of an f32 C-order array of shape `dims`, as numpy writes it.
pub fn npy_header(dims: &[usize]) -> Vec<u8> {
    npy_header_of("<f4", dims)
}

/// The header for element type `descr` (`<f4`, `|u1`).
fn npy_header_of(descr: &str, dims: &[usize]) -> Vec<u8> {
    let shape = match dims {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        _ => {
            let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    if let Some(first) = dims.first() {
        let digits = first.to_string().len();
        dict.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(digits)));
    }
    // magic (6) + version (2) + header length (2), then the dict, spaces, '\n'.
    let unpadded = 10 + dict.len() + 1;
    let pad = (ARRAY_ALIGN - unpadded % ARRAY_ALIGN) % ARRAY_ALIGN;
    let hlen = dict.len() + pad + 1;
    let mut out = Vec::with_capacity(10 + hlen);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(hlen as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    out
}

/// Writes an `.npz` to a temporary file next to its destination; [`NpzWriter::finish`] renames
/// it into place, so a reader never sees half an archive.
pub struct NpzWriter {
    zip: ZipWriter<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
    data_bytes: u64,
}

impl NpzWriter {
    pub fn create(path: &Path) -> Result<NpzWriter> {
        let mut tmp = path.as_os_str().to_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(NpzWriter {
            zip: ZipWriter::new(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            path: path.to_path_buf(),
            data_bytes: 0,
        })
    }

    /// Adds `<key>.npy` holding `data` (C order) of shape `dims`.
    pub fn add(&mut self, key: &str, dims: &[usize], data: &[f32]) -> Result<()> {
        self.add_raw(key, "<f4", dims, data.len(), le_bytes(data))
    }

    /// Adds a bf16 array as its bit patterns (numpy has no bf16: TPU-MLIR reads `<u2` members
    /// of `bf16` weights).
    pub fn add_bf16(&mut self, key: &str, dims: &[usize], bits: &[u16]) -> Result<()> {
        self.add_raw(key, "<u2", dims, bits.len(), bytemuck::cast_slice(bits))
    }

    /// Adds a uint8 array (A16MatMul's packed weights and zero points).
    pub fn add_u8(&mut self, key: &str, dims: &[usize], data: &[u8]) -> Result<()> {
        self.add_raw(key, "|u1", dims, data.len(), data)
    }

    fn add_raw(
        &mut self,
        key: &str,
        descr: &str,
        dims: &[usize],
        n: usize,
        data: &[u8],
    ) -> Result<()> {
        let want: usize = dims.iter().product();
        anyhow::ensure!(n == want, "npz member {key}: {n} values for shape {dims:?}");
        let header = npy_header_of(descr, dims);
        let bytes = header.len() as u64 + data.len() as u64;
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .last_modified_time(zip::DateTime::default())
            .large_file(bytes >= u32::MAX as u64);
        self.zip
            .start_file(format!("{key}.npy"), options)
            .with_context(|| format!("npz member {key}"))?;
        self.zip.write_all(&header)?;
        self.zip.write_all(data)?;
        self.data_bytes += data.len() as u64;
        Ok(())
    }

    /// The array bytes added so far.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Closes the archive and moves it into place; returns the array bytes written.
    pub fn finish(self) -> Result<u64> {
        let mut inner = self
            .zip
            .finish()
            .with_context(|| format!("finishing {}", self.tmp.display()))?;
        inner.flush()?;
        // No fsync: the archive is a step's input in a work folder that a crash discards
        // (nothing durable is derived from it unchecked), and syncing a vocabulary-sized one
        // waits for the disk on the export thread every compile waits for.
        drop(inner.into_inner().map_err(|e| e.into_error())?);
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("renaming {} into place", self.tmp.display()))?;
        Ok(self.data_bytes)
    }
}

/// The bf16 bit patterns TPU-MLIR's BF16 lowering makes of `values` on the BM chips
/// (`f32_to_bf16` → `fp32_to_bf16_all`, round to nearest, ties to even, on the bit pattern);
/// with `exact_only`, only if each is a bf16 already (its low 16 bits zero). None where a value
/// is not finite or is an f32 subnormal: the lowering flushes subnormals its own way (and a
/// bf16 subnormal too, so not even an exact one may go as bf16).
pub fn bf16_bits_as_lowered(values: &[f32], exact_only: bool) -> Option<Vec<u16>> {
    values
        .iter()
        .map(|v| {
            let b = v.to_bits();
            let exp = (b >> 23) & 0xff;
            let subnormal = exp == 0 && b & 0x7f_ffff != 0;
            if exp == 0xff || subnormal || (exact_only && b & 0xffff != 0) {
                return None;
            }
            let lsb = (b >> 16) & 1;
            Some(((u64::from(b) + 0x7fff + u64::from(lsb)) >> 16) as u16)
        })
        .collect()
}

/// Byte values carried as f32 (exact for 0..=255) back to bytes; anything else is a bug upstream.
pub fn bytes_of(key: &str, values: &[f32]) -> Result<Vec<u8>> {
    values
        .iter()
        .map(|&v| {
            anyhow::ensure!(
                (0.0..=255.0).contains(&v) && v.fract() == 0.0,
                "npz member {key}: {v} is not a byte"
            );
            Ok(v as u8)
        })
        .collect()
}

#[cfg(target_endian = "big")]
compile_error!("npy members are written by casting memory, which needs a little-endian target");

fn le_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(dims: &[usize]) -> String {
        String::from_utf8(npy_header(dims)[10..].to_vec()).unwrap()
    }

    #[test]
    fn bf16_bits_round_half_to_even_and_refuse_what_the_lowering_treats_apart() {
        let exact = [1.0f32, -2.5, 0.0, -0.0, f32::from_bits(0x3f81_0000)];
        let exact_bits = Some(vec![0x3f80, 0xc020, 0x0000, 0x8000, 0x3f81]);
        assert_eq!(bf16_bits_as_lowered(&exact, true), exact_bits);
        assert_eq!(bf16_bits_as_lowered(&exact, false), exact_bits);
        let inexact = [1.0, f32::from_bits(0x3f80_0001)];
        assert_eq!(bf16_bits_as_lowered(&inexact, true), None);
        // Below half, above half, ties to the even neighbour (down from even, up from odd),
        // a carry into the exponent, and the largest f32 to infinity, as TPU-MLIR's does.
        let bits = |b: &[u32]| b.iter().map(|&b| f32::from_bits(b)).collect::<Vec<_>>();
        let rounded = bits(&[
            0x3f80_7fff,
            0x3f80_8001,
            0x3f80_8000,
            0x3f81_8000,
            0xbf81_8000,
            0x3fff_ffff,
            0x7f7f_ffff,
        ]);
        assert_eq!(
            bf16_bits_as_lowered(&rounded, false),
            Some(vec![0x3f80, 0x3f81, 0x3f80, 0x3f82, 0xbf82, 0x4000, 0x7f80])
        );
        for refused in [
            f32::NAN,
            f32::INFINITY,
            f32::from_bits(1),
            f32::from_bits(0x0001_0000),
        ] {
            assert_eq!(bf16_bits_as_lowered(&[1.0, refused], false), None);
        }
    }

    #[test]
    fn headers_match_numpy_and_align_the_data() {
        // The bytes numpy 1.24 writes for np.zeros((2, 3), np.float32): magic, version 1.0,
        // header length 118, the dict padded with spaces to 64-byte alignment, '\n'.
        let h = npy_header(&[2, 3]);
        assert_eq!(&h[..10], b"\x93NUMPY\x01\x00\x76\x00");
        let want = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        assert_eq!(dict(&[2, 3]), format!("{want:<117}\n"));
        for dims in [&[][..], &[7], &[1, 1, 1, 1, 65], &[151_936, 896]] {
            let h = npy_header(dims);
            assert_eq!(h.len() % 64, 0, "{dims:?}");
            assert_eq!(u16::from_le_bytes([h[8], h[9]]) as usize, h.len() - 10);
        }
        assert!(dict(&[]).contains("'shape': (), }"));
        assert!(dict(&[5]).contains("'shape': (5,), }"));
    }
}
