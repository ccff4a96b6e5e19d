//! A bounds-checked reader for the few FlatBuffers tables of a bmodel we look into
//! (TPU-MLIR's `bmodel.fbs`): every offset comes from the file, so every read is checked and
//! a bad file is an error, never a panic.

use anyhow::{bail, Context, Result};

/// A table inside `buf`.
#[derive(Clone, Copy)]
pub struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn read<const N: usize>(buf: &[u8], at: usize) -> Result<[u8; N]> {
    let end = at.checked_add(N).context("offset overflows")?;
    let bytes = buf
        .get(at..end)
        .with_context(|| format!("offset {at} is beyond the flatbuffer ({} bytes)", buf.len()))?;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Ok(out)
}

pub fn u32_at(buf: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(read(buf, at)?))
}

fn u16_at(buf: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(read(buf, at)?))
}

pub fn u64_at(buf: &[u8], at: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(read(buf, at)?))
}

/// The target of a forward `uoffset` stored at `at`.
fn follow(buf: &[u8], at: usize) -> Result<usize> {
    at.checked_add(u32_at(buf, at)? as usize)
        .context("offset overflows")
}

impl<'a> Table<'a> {
    /// The root table of a flatbuffer.
    pub fn root(buf: &'a [u8]) -> Result<Table<'a>> {
        Ok(Table {
            buf,
            pos: follow(buf, 0)?,
        })
    }

    /// Where field `id` lives, if present.
    fn field(&self, id: usize) -> Result<Option<usize>> {
        let soffset = i32::from_le_bytes(read(self.buf, self.pos)?) as i64;
        let vtable = usize::try_from(self.pos as i64 - soffset).context("bad vtable offset")?;
        let vt_len = u16_at(self.buf, vtable)? as usize;
        let slot = 4 + 2 * id;
        if slot + 2 > vt_len {
            return Ok(None);
        }
        match u16_at(self.buf, vtable + slot)? {
            0 => Ok(None),
            o => Ok(Some(self.pos + o as usize)),
        }
    }

    pub fn u32(&self, id: usize) -> Result<u32> {
        match self.field(id)? {
            Some(at) => u32_at(self.buf, at),
            None => Ok(0),
        }
    }

    pub fn string(&self, id: usize) -> Result<Option<String>> {
        let Some(at) = self.field(id)? else {
            return Ok(None);
        };
        let start = follow(self.buf, at)?;
        let len = u32_at(self.buf, start)? as usize;
        let end = (start + 4).checked_add(len).context("string overflows")?;
        let bytes = self
            .buf
            .get(start + 4..end)
            .context("string beyond the flatbuffer")?;
        Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
    }

    /// An inline `Binary { start: u64, size: u64 }` struct.
    pub fn binary(&self, id: usize) -> Result<Option<(u64, u64)>> {
        match self.field(id)? {
            Some(at) => Ok(Some((u64_at(self.buf, at)?, u64_at(self.buf, at + 8)?))),
            None => Ok(None),
        }
    }

    /// A vector of tables (empty when absent).
    pub fn tables(&self, id: usize) -> Result<Vec<Table<'a>>> {
        let Some(at) = self.field(id)? else {
            return Ok(Vec::new());
        };
        let start = follow(self.buf, at)?;
        let len = u32_at(self.buf, start)? as usize;
        if len > self.buf.len() / 4 {
            bail!("vector of {len} tables cannot fit the flatbuffer");
        }
        (0..len)
            .map(|i| {
                Ok(Table {
                    buf: self.buf,
                    pos: follow(self.buf, start + 4 + 4 * i)?,
                })
            })
            .collect()
    }

    /// A sub-table field, if present.
    pub fn table(&self, id: usize) -> Result<Option<Table<'a>>> {
        match self.field(id)? {
            Some(at) => Ok(Some(Table {
                buf: self.buf,
                pos: follow(self.buf, at)?,
            })),
            None => Ok(None),
        }
    }

    /// Where the bytes of a string or `[ubyte]` field lie in the buffer: (start, length).
    pub fn bytes_span(&self, id: usize) -> Result<Option<(usize, usize)>> {
        let Some(at) = self.field(id)? else {
            return Ok(None);
        };
        let start = follow(self.buf, at)?;
        let len = u32_at(self.buf, start)? as usize;
        let end = (start + 4).checked_add(len).context("vector overflows")?;
        if end > self.buf.len() {
            bail!("vector beyond the flatbuffer");
        }
        Ok(Some((start + 4, len)))
    }

    /// The length of a vector field (0 when absent).
    pub fn vector_len(&self, id: usize) -> Result<usize> {
        match self.field(id)? {
            Some(at) => Ok(u32_at(self.buf, follow(self.buf, at)?)? as usize),
            None => Ok(0),
        }
    }
}
