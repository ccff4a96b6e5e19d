//! Reading a `.bmodel` file's own structure (TPU-MLIR's `bmodel.fbs`): the fixed header, the
//! FlatBuffers description of its nets, and the binary section they point into.

mod dynamic_ir;
mod flatbuf;
pub mod patch;
pub mod version;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::error::InputError;

pub use dynamic_ir::zero_timestep_padding;
pub use flatbuf::Table;
pub use version::BmodelVersion;

/// `0xFF55AAEE`, the first word of every bmodel.
pub const MAGIC: u32 = 0xFF55_AAEE;

/// The fixed header: where the FlatBuffers description and the binary section lie.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub header_size: usize,
    pub flatbuffer_size: usize,
    pub binary_size: usize,
}

impl Header {
    /// Reads and checks the header against the file's length.
    pub fn parse(bytes: &[u8]) -> Result<Header> {
        Self::parse_prefix(bytes, bytes.len() as u64)
    }

    /// Reads the header from the first bytes of a file of `file_len` bytes.
    pub fn parse_prefix(bytes: &[u8], file_len: u64) -> Result<Header> {
        let word = |i: usize| flatbuf::u32_at(bytes, 4 * i).context("shorter than a bmodel header");
        if word(0)? != MAGIC {
            bail!("not a bmodel (its first bytes are not the bmodel magic 0xFF55AAEE)");
        }
        let h = Header {
            header_size: word(1)? as usize,
            flatbuffer_size: word(2)? as usize,
            // A u64 at byte 12 (the header is packed): bmodels of large models pass 4 GiB.
            binary_size: usize::try_from(
                flatbuf::u64_at(bytes, 12).context("shorter than a bmodel header")?,
            )
            .context("binary size overflows")?,
        };
        let end = h
            .header_size
            .checked_add(h.flatbuffer_size)
            .and_then(|n| n.checked_add(h.binary_size))
            .context("header sizes overflow")?;
        if h.header_size < 16 || end as u64 > file_len {
            bail!(
                "header says {end} bytes (header {}, description {}, binary {}) but the file has {}: truncated",
                h.header_size,
                h.flatbuffer_size,
                h.binary_size,
                file_len
            );
        }
        Ok(h)
    }

    /// The FlatBuffers description.
    pub fn flatbuffer<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.header_size..self.header_size + self.flatbuffer_size]
    }

    /// Where the binary section (coefficients, commands, dynamic IR) starts in the file.
    pub fn binary_base(&self) -> usize {
        self.header_size + self.flatbuffer_size
    }
}

/// What a quick look at a bmodel file finds: enough to know it is one, before libbmrt sees it.
#[derive(Debug, Clone)]
pub struct Summary {
    pub chip: String,
    pub nets: Vec<String>,
    /// `Model.version`, e.g. `2.2+v1.30.2-20260831` (`model_tool --info` prints it as
    /// "bmodel version: B.2.2+v1.30.2-..."): the format version, then the compiler that wrote it.
    pub version: String,
    /// The most TPU cores any net's stage was compiled for (`NetParameter.core_num`, 0 = 1).
    pub cores: u32,
}

/// The largest FlatBuffers description we read (real ones are kilobytes to a few megabytes).
const MAX_FLATBUFFER: usize = 1 << 28;

/// Checks that `path` is a whole bmodel: the header, sizes against the file's length, and the
/// description's chip and nets. Reads the header and description only.
pub fn check_file(path: &Path) -> Result<Summary, InputError> {
    let bad = |why: String| {
        InputError::invalid(
            path,
            format!("not a usable bmodel: {why}"),
            "pass a .bmodel written by llm-convert (or TPU-MLIR); re-copy it if it was cut short",
        )
    };
    let mut file = File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let file_len = file
        .metadata()
        .map_err(|e| bad(format!("cannot stat: {e}")))?
        .len();
    let mut head = [0u8; 20];
    file.read_exact(&mut head)
        .map_err(|_| bad(format!("{file_len} bytes, shorter than a bmodel header")))?;
    let header = Header::parse_prefix(&head, file_len).map_err(|e| bad(format!("{e:#}")))?;
    if header.flatbuffer_size > MAX_FLATBUFFER {
        return Err(bad(format!(
            "a description of {} bytes (at most {MAX_FLATBUFFER})",
            header.flatbuffer_size
        )));
    }
    let mut description = vec![0u8; header.flatbuffer_size];
    file.seek(SeekFrom::Start(header.header_size as u64))
        .and_then(|_| file.read_exact(&mut description))
        .map_err(|e| bad(format!("reading the description: {e}")))?;
    summarize(&description).map_err(|e| bad(format!("{e:#}")))
}

/// The chip and net names of a FlatBuffers description.
pub fn summarize(description: &[u8]) -> Result<Summary> {
    let root = Table::root(description).context("reading the description's root")?;
    let chip = root
        .string(fields::MODEL_CHIP)?
        .filter(|c| !c.is_empty())
        .context("the description names no chip")?;
    let nets = root
        .tables(fields::MODEL_NET)?
        .iter()
        .map(|net| Ok(net.string(fields::NET_NAME)?.unwrap_or_default()))
        .collect::<Result<Vec<_>>>()?;
    if nets.is_empty() {
        bail!("the description has no nets");
    }
    let version = root.string(fields::MODEL_VERSION)?.unwrap_or_default();
    let mut cores = 1;
    for net in root.tables(fields::MODEL_NET)? {
        for stage in net.tables(fields::NET_PARAMETER)? {
            cores = cores.max(stage.u32(fields::PARAM_CORE_NUM)?);
        }
    }
    Ok(Summary {
        chip,
        nets,
        version,
        cores,
    })
}

/// Field ids in `bmodel.fbs` (table `Model`, `Net`, `NetParameter`, `SubNet`).
pub mod fields {
    pub const MODEL_VERSION: usize = 1;
    pub const MODEL_CHIP: usize = 3;
    pub const MODEL_NET: usize = 4;
    pub const NET_NAME: usize = 0;
    pub const NET_PARAMETER: usize = 3;
    pub const PARAM_COEFF_MEM: usize = 4;
    pub const PARAM_BINARY_IR: usize = 11;
    pub const PARAM_SUB_NET: usize = 12;
    pub const PARAM_CORE_NUM: usize = 16;
    pub const COEFF_CHECK_CODE: usize = 1;
    pub const COEFF_BINARY: usize = 2;
    pub const SUBNET_INPUT_TENSOR: usize = 3;
    pub const SUBNET_OUTPUT_TENSOR: usize = 4;
    pub const SUBNET_IS_DYNAMIC: usize = 5;
    pub const SUBNET_IR_OFFSET: usize = 6;
    pub const SUBNET_IR_LEN: usize = 7;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rejects_what_is_not_a_bmodel() {
        assert!(Header::parse(b"").is_err());
        assert!(Header::parse(b"PK\x03\x04 some zip file bytes").is_err());
        let mut h = MAGIC.to_le_bytes().to_vec();
        h.extend(64u32.to_le_bytes());
        h.extend(u32::MAX.to_le_bytes());
        h.extend(u32::MAX.to_le_bytes());
        h.resize(64, 0);
        let e = Header::parse(&h).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }
}
