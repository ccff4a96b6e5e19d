//! A bounds-checked walk over a GGUF file's header before candle parses it: every count,
//! length and offset in it comes from the file, so each is checked (overflow-checked
//! arithmetic, bounded by the file's size) and nothing is allocated from it. What candle's
//! reader would panic on or allocate without bound (a `general.alignment` of 0, a tensor
//! whose offset wraps past 2^64, dimensions whose product overflows) is an error here.

use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::GgmlDType;

/// The deepest nesting of arrays we walk (llama.cpp writes depth 1).
const MAX_DEPTH: usize = 8;
/// GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Values longer than this are skipped with a seek, shorter ones read past.
const SEEK_BEYOND: u64 = 64 * 1024;

/// Sizes of the header's length prefixes (v1 wrote u32, later versions u64).
#[derive(Clone, Copy)]
enum Version {
    V1,
    V2Plus,
}

struct Walker<R> {
    reader: R,
    pos: u64,
    file_len: u64,
    version: Version,
}

/// Checks the header of a GGUF file of `file_len` bytes read from `reader` (at its start);
/// returns where the header ends (the tensor infos' end, before the data's alignment). The
/// error says what is wrong, in words for a user.
pub fn check<R: Read + Seek>(reader: R, file_len: u64) -> Result<u64, String> {
    let mut w = Walker {
        reader,
        pos: 0,
        file_len,
        version: Version::V2Plus,
    };
    let magic = w.u32()?;
    if magic != 0x4655_4747 && magic != 0x4747_5546 {
        return Err(format!(
            "not a GGUF file (first bytes {magic:#010x}, not \"GGUF\")"
        ));
    }
    w.version = match w.u32()? {
        1 => Version::V1,
        2 | 3 => Version::V2Plus,
        v => return Err(format!("GGUF version {v} is not supported (1 to 3 are)")),
    };
    let tensor_count = w.len()?;
    let kv_count = w.len()?;
    // Each entry takes at least a few bytes: counts beyond that cannot be real.
    w.fits(tensor_count, 8, "tensors")?;
    w.fits(kv_count, 8, "metadata entries")?;
    let mut alignment = 32u64;
    for _ in 0..kv_count {
        let key = w.string()?;
        let ty = w.u32()?;
        if key == "general.alignment" {
            if let Some(a) = w.alignment_value(ty)? {
                if a == 0 || !a.is_power_of_two() {
                    return Err(format!(
                        "general.alignment is {a}: it must be a power of two"
                    ));
                }
                alignment = a;
            }
        } else {
            w.skip_value(ty, 0)?;
        }
    }
    let mut tensors = Vec::new();
    for _ in 0..tensor_count {
        let name = w.string()?;
        let n_dims = w.u32()?;
        if n_dims > MAX_DIMS {
            return Err(format!(
                "tensor \"{name}\" has {n_dims} dimensions (at most {MAX_DIMS})"
            ));
        }
        let mut elems = 1u64;
        for _ in 0..n_dims {
            let d = w.len()?;
            elems = elems
                .checked_mul(d)
                .ok_or_else(|| format!("tensor \"{name}\": its dimensions overflow"))?;
        }
        let dtype = w.u32()?;
        let dtype = ggml_dtype(dtype)
            .ok_or_else(|| format!("tensor \"{name}\" has unknown ggml type {dtype}"))?;
        let offset = w.u64()?;
        let (block, type_size) = (dtype.block_size() as u64, dtype.type_size() as u64);
        if elems % block != 0 {
            return Err(format!(
                "tensor \"{name}\": {elems} elements is not a whole number of {dtype:?} blocks of {block}"
            ));
        }
        let bytes = (elems / block)
            .checked_mul(type_size)
            .ok_or_else(|| format!("tensor \"{name}\": its size overflows"))?;
        tensors.push((name, offset, bytes));
    }
    let header_end = w.pos;
    let data_start = header_end
        .div_ceil(alignment)
        .checked_mul(alignment)
        .ok_or("the tensor data offset overflows")?;
    for (name, offset, bytes) in tensors {
        let end = data_start
            .checked_add(offset)
            .and_then(|n| n.checked_add(bytes));
        match end {
            Some(end) if end <= file_len => {}
            Some(end) => {
                return Err(format!(
                "tensor \"{name}\" ends at byte {end} but the file has {file_len} bytes: truncated"
            ))
            }
            None => {
                return Err(format!(
                    "tensor \"{name}\" has offset {offset}, beyond any file: truncated or corrupt"
                ))
            }
        }
    }
    Ok(header_end)
}

/// The ggml types candle reads, by their number in the file (ggml.h's `ggml_type`).
fn ggml_dtype(n: u32) -> Option<GgmlDType> {
    use GgmlDType::*;
    Some(match n {
        0 => F32,
        1 => F16,
        2 => Q4_0,
        3 => Q4_1,
        6 => Q5_0,
        7 => Q5_1,
        8 => Q8_0,
        9 => Q8_1,
        10 => Q2K,
        11 => Q3K,
        12 => Q4K,
        13 => Q5K,
        14 => Q6K,
        15 => Q8K,
        30 => BF16,
        _ => return None,
    })
}

impl<R: Read + Seek> Walker<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.reader
            .read_exact(&mut b)
            .map_err(|_| format!("the header ends early (at byte {}): truncated", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// A length or count prefix.
    fn len(&mut self) -> Result<u64, String> {
        match self.version {
            Version::V1 => Ok(self.u32()? as u64),
            Version::V2Plus => self.u64(),
        }
    }

    fn remaining(&self) -> u64 {
        self.file_len.saturating_sub(self.pos)
    }

    /// `count` items of at least `min_size` bytes each fit in the rest of the file.
    fn fits(&self, count: u64, min_size: u64, what: &str) -> Result<(), String> {
        if count.saturating_mul(min_size) > self.remaining() {
            return Err(format!(
                "the header claims {count} {what} at byte {}, more than the file's {} bytes can hold: truncated or corrupt",
                self.pos, self.file_len
            ));
        }
        Ok(())
    }

    /// Skips `n` bytes that must lie inside the file.
    fn skip(&mut self, n: u64) -> Result<(), String> {
        if n > self.remaining() {
            return Err(format!(
                "a value of {n} bytes at byte {} runs past the end of the file: truncated",
                self.pos
            ));
        }
        // Short values (the tokenizer's ~50k tokens) are read past: a BufReader drops its
        // buffer on every seek, which made each token an lseek and an 8 KiB read.
        if n <= SEEK_BEYOND {
            let read = std::io::copy(&mut (&mut self.reader).take(n), &mut std::io::sink())
                .map_err(|e| format!("reading: {e}"))?;
            if read != n {
                return Err(format!(
                    "the header ends early (at byte {}): truncated",
                    self.pos + read
                ));
            }
        } else {
            let to = i64::try_from(n).map_err(|_| "a value too large to skip".to_string())?;
            self.reader
                .seek(SeekFrom::Current(to))
                .map_err(|e| format!("seeking: {e}"))?;
        }
        self.pos += n;
        Ok(())
    }

    /// A string, read only when short (keys and tensor names); longer ones are errors.
    fn string(&mut self) -> Result<String, String> {
        let n = self.len()?;
        if n > 65_536 {
            return Err(format!("a name of {n} bytes at byte {}: corrupt", self.pos));
        }
        if n > self.remaining() {
            return Err(format!(
                "a name of {n} bytes at byte {} runs past the end of the file: truncated",
                self.pos
            ));
        }
        let mut b = vec![0u8; n as usize];
        self.reader
            .read_exact(&mut b)
            .map_err(|_| "the header ends early: truncated".to_string())?;
        self.pos += n;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// Fixed size of a scalar value type, `None` for strings and arrays.
    fn scalar_size(ty: u32) -> Result<Option<u64>, String> {
        Ok(match ty {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            8 | 9 => None,
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }

    fn skip_value(&mut self, ty: u32, depth: usize) -> Result<(), String> {
        if let Some(n) = Self::scalar_size(ty)? {
            return self.skip(n);
        }
        if ty == 8 {
            let n = self.len()?;
            return self.skip(n);
        }
        if depth >= MAX_DEPTH {
            return Err(format!("metadata arrays nested deeper than {MAX_DEPTH}"));
        }
        let elem_ty = self.u32()?;
        let count = self.len()?;
        match Self::scalar_size(elem_ty)? {
            Some(size) => {
                let total = count
                    .checked_mul(size)
                    .ok_or("a metadata array's size overflows")?;
                self.skip(total)
            }
            None => {
                self.fits(count, 1, "array elements")?;
                for _ in 0..count {
                    self.skip_value(elem_ty, depth + 1)?;
                }
                Ok(())
            }
        }
    }

    /// `general.alignment` as candle reads it (unsigned or non-negative integers up to 32
    /// bits; other types it ignores, and so do we after skipping them).
    fn alignment_value(&mut self, ty: u32) -> Result<Option<u64>, String> {
        Ok(match ty {
            0 => Some(self.bytes::<1>()?[0] as u64),
            1 => u64::try_from(self.bytes::<1>()?[0] as i8).ok(),
            2 => Some(u16::from_le_bytes(self.bytes()?) as u64),
            3 => u64::try_from(i16::from_le_bytes(self.bytes()?)).ok(),
            4 => Some(self.u32()? as u64),
            5 => u64::try_from(i32::from_le_bytes(self.bytes()?)).ok(),
            other => {
                self.skip_value(other, 0)?;
                None
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn header(alignment: Option<u32>, tensor_offset: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(0x4655_4747u32.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes()); // tensors
        b.extend((alignment.is_some() as u64).to_le_bytes());
        if let Some(a) = alignment {
            let key = b"general.alignment";
            b.extend((key.len() as u64).to_le_bytes());
            b.extend(key);
            b.extend(4u32.to_le_bytes());
            b.extend(a.to_le_bytes());
        }
        let name = b"t";
        b.extend((name.len() as u64).to_le_bytes());
        b.extend(name);
        b.extend(1u32.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(tensor_offset.to_le_bytes());
        b.resize(b.len().div_ceil(32) * 32 + 16, 0);
        b
    }

    fn run(b: &[u8]) -> Result<u64, String> {
        check(Cursor::new(b), b.len() as u64)
    }

    #[test]
    fn accepts_a_valid_header_and_rejects_bad_alignment_and_offsets() {
        assert!(run(&header(None, 0)).is_ok());
        assert!(run(&header(Some(32), 0)).is_ok());
        let e = run(&header(Some(0), 0)).unwrap_err();
        assert!(e.contains("general.alignment"), "{e}");
        let e = run(&header(None, u64::MAX - 8)).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = run(&header(None, 1 << 40)).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
    }
}
