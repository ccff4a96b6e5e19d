//! Making TPU-MLIR's dynamic-subnet IR reproducible.
//!
//! A dynamic subnet (on BM1684X every `TopK` is one, so each default `lm_head` has one; so do
//! `--dynamic` blocks) carries firmware IR written by `SubnetIr::write_ir_to_buffer`
//! (TPU-MLIR `DynamicNetIr.cpp`). Each layer group starts with a `fw_timestep_base_info_t`
//! copied whole from a stack struct:
//!
//! ```text
//! u32 ts_num_and_split_tensor_num; u8 max_nslice_deprecated, input_tensor_num,
//! output_tensor_num, flags, swpipl_stage_num; /* 3 bytes padding */ u32 max_nslice;
//! ```
//!
//! The 3 padding bytes are whatever was on the compiler's stack, so two compiles of the same
//! net differ there (and only there; measured on lm_head: bytes 21-23 of its IR). The
//! firmware never reads padding, so we zero it: the bmodel then depends on its input alone.
//!
//! The IR layout walked here: subnet input ids and output ids (u32 each, as many as the
//! subnet's tensors), the group count (u32), then per group the base info and, for a global
//! group (one timestep), its input ids, output ids, the layer type (u32), the layer's magic
//! word (`0x0f00ffff | version`), its length (u32), that many bytes and 16 more (TPU-MLIR
//! 1.30.2 writes a 16-byte trailer its length word does not count; measured on TopK, MatMul
//! and attention layers). The walk must end exactly at the subnet's IR length, so a layout we
//! misread is an error, never a wrong edit. A local group (several timesteps) is not walked
//! past: its own padding is zeroed, the groups after it are left as they are.

use anyhow::{bail, Context, Result};

use super::flatbuf::u32_at;
use super::{fields as f, Header, Table};

const BASE_INFO_BYTES: usize = 16;
const BASE_INFO_PADDING: std::ops::Range<usize> = 9..12;
const LAYER_MAGIC: u32 = 0x0f00_ffff;
const GLOBAL_LAYER_TRAILER: usize = 16;

/// Zeroes the padding of every layer-group header in the dynamic IR of `bytes` (a whole
/// bmodel). Returns how many group headers were zeroed.
pub fn zero_timestep_padding(bytes: &mut [u8]) -> Result<usize> {
    let header = Header::parse(bytes)?;
    let base = header.binary_base();
    let mut spans = Vec::new();
    {
        let model = Table::root(header.flatbuffer(bytes))?;
        for net in model.tables(f::MODEL_NET)? {
            for param in net.tables(f::NET_PARAMETER)? {
                let Some((ir_start, ir_size)) = param.binary(f::PARAM_BINARY_IR)? else {
                    continue;
                };
                for sub in param.tables(f::PARAM_SUB_NET)? {
                    if sub.u32(f::SUBNET_IS_DYNAMIC)? == 0 {
                        continue;
                    }
                    let (off, len) = (
                        sub.u32(f::SUBNET_IR_OFFSET)? as u64,
                        sub.u32(f::SUBNET_IR_LEN)? as u64,
                    );
                    if off + len > ir_size {
                        bail!("a subnet's IR ({off}+{len}) lies outside its net's IR ({ir_size} bytes)");
                    }
                    let ids = sub.vector_len(f::SUBNET_INPUT_TENSOR)?
                        + sub.vector_len(f::SUBNET_OUTPUT_TENSOR)?;
                    let start = usize::try_from(ir_start + off).context("IR offset")? + base;
                    spans.push((start, start + len as usize, ids));
                }
            }
        }
    }
    let mut zeroed = 0;
    for (start, end, ids) in spans {
        let ir = bytes
            .get_mut(start..end)
            .context("dynamic IR beyond the end of the file")?;
        zeroed += zero_in_subnet(ir, ids)?;
    }
    Ok(zeroed)
}

fn zero_in_subnet(ir: &mut [u8], tensor_ids: usize) -> Result<usize> {
    let mut p = 4 * tensor_ids;
    let groups = u32_at(ir, p)? as usize;
    p += 4;
    if groups > ir.len() / BASE_INFO_BYTES {
        bail!(
            "dynamic IR claims {groups} layer groups in {} bytes",
            ir.len()
        );
    }
    for g in 0..groups {
        let info = ir
            .get_mut(p..p + BASE_INFO_BYTES)
            .with_context(|| format!("layer group {g} beyond the IR"))?;
        let timesteps = u32::from_le_bytes([info[0], info[1], info[2], info[3]]) >> 16;
        let tensors = info[5] as usize + info[6] as usize;
        info[BASE_INFO_PADDING].fill(0);
        if timesteps > 1 {
            return Ok(g + 1);
        }
        p += BASE_INFO_BYTES + 4 * tensors + 4; // group ids, then the layer type
        if u32_at(ir, p)? & 0x0fff_ffff != LAYER_MAGIC {
            bail!("layer group {g}: no layer IR magic at byte {p}");
        }
        p += 8 + u32_at(ir, p + 4)? as usize + GLOBAL_LAYER_TRAILER;
    }
    if p != ir.len() {
        bail!(
            "dynamic IR walk ended at byte {p}, not at its length {}",
            ir.len()
        );
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One global group, laid out as `write_ir_to_buffer` writes it.
    fn subnet_ir(padding: [u8; 3]) -> Vec<u8> {
        let mut ir = Vec::new();
        for id in [0u32, 1] {
            ir.extend(id.to_le_bytes()); // subnet input, output ids
        }
        ir.extend(1u32.to_le_bytes()); // one group
        ir.extend(0x0001_0000u32.to_le_bytes()); // one timestep
        ir.extend([0xff, 1, 2, 0x22, 1]);
        ir.extend(padding);
        ir.extend(1u32.to_le_bytes()); // max_nslice
        for id in [0u32, 0x0002_0000, 0x0001_0001] {
            ir.extend(id.to_le_bytes()); // group in, outs
        }
        ir.extend(0x39u32.to_le_bytes()); // layer type
        ir.extend(0x1f00_ffffu32.to_le_bytes());
        ir.extend(3u32.to_le_bytes());
        ir.extend([7, 7, 7]);
        ir.extend([0; GLOBAL_LAYER_TRAILER]);
        ir
    }

    #[test]
    fn padding_is_zeroed_and_nothing_else_changes() {
        let mut a = subnet_ir([0xf8, 0x80, 0xff]);
        let b = subnet_ir([0, 0, 0]);
        assert_ne!(a, b);
        assert_eq!(zero_in_subnet(&mut a, 2).unwrap(), 1);
        assert_eq!(a, b);
    }

    #[test]
    fn a_broken_ir_is_an_error_not_a_panic() {
        let good = subnet_ir([1, 2, 3]);
        for cut in 0..good.len() {
            let mut ir = good[..cut].to_vec();
            assert!(zero_in_subnet(&mut ir, 2).is_err(), "cut at {cut}");
        }
        let mut wrong_magic = good.clone();
        let at = wrong_magic.len() - 11 - GLOBAL_LAYER_TRAILER;
        wrong_magic[at] = 0;
        assert!(zero_in_subnet(&mut wrong_magic, 2).is_err());
    }
}
