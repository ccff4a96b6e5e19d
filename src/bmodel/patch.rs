//! Writing another layer's coefficients into a one-net bmodel: the coefficient blob
//! (`NetParameter.coeff_mem.binary_coeff`), its sha256 (`coeff_mem.check_code`) and the net's
//! name are the only bytes of an identically shaped layer's bmodel that depend on the layer
//! (create time aside), so they are all a patch rewrites.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::{fields as f, Header, Table};

/// Where the layer-dependent bytes of a one-net, one-stage bmodel lie (file offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoeffSpans {
    /// The coefficient blob: (offset, size).
    pub coeff: (usize, usize),
    /// The 32-byte sha256 of the blob.
    pub check_code: usize,
    /// The net name's bytes: (offset, length).
    pub name: (usize, usize),
}

/// Finds the spans; a bmodel with several nets or stages or no coefficients is refused (a patch could not be byte-identical to a compile).
pub fn coeff_spans(bytes: &[u8]) -> Result<CoeffSpans> {
    let h = Header::parse(bytes)?;
    let fb = h.flatbuffer(bytes);
    let model = Table::root(fb)?;
    let nets = model.tables(f::MODEL_NET)?;
    let [net] = nets.as_slice() else {
        bail!("{} nets, a patch needs exactly one", nets.len());
    };
    let stages = net.tables(f::NET_PARAMETER)?;
    let [stage] = stages.as_slice() else {
        bail!("{} stages, a patch needs exactly one", stages.len());
    };
    let coeff = stage
        .table(f::PARAM_COEFF_MEM)?
        .context("the net has no coefficients")?;
    // `coeff_mem.location` (each op's `path` attribute, offset and size) is left as it is:
    // compile-once patches only layers whose weight slots, paths included, are the template's.
    let (start, size) = coeff
        .binary(f::COEFF_BINARY)?
        .context("no coefficient binary")?;
    let (cc, cc_len) = coeff
        .bytes_span(f::COEFF_CHECK_CODE)?
        .context("no coefficient check code")?;
    if cc_len != 32 {
        bail!("a check code of {cc_len} bytes, not a sha256");
    }
    let (name, name_len) = net
        .bytes_span(f::NET_NAME)?
        .context("the net has no name")?;
    let base = h.binary_base();
    let off = usize::try_from(start)
        .ok()
        .and_then(|s| s.checked_add(base))
        .context("coefficient offset overflows")?;
    let size = usize::try_from(size).context("coefficient size overflows")?;
    if off.checked_add(size).is_none_or(|e| e > bytes.len()) {
        bail!("the coefficient binary lies beyond the file");
    }
    Ok(CoeffSpans {
        coeff: (off, size),
        check_code: h.header_size + cc,
        name: (h.header_size + name, name_len),
    })
}

/// `template` with `coeff` (exactly the template's blob size) and the net renamed to `name`
/// (the same length: a longer name would move every later byte of the description).
pub fn patch(template: &[u8], coeff: &[u8], name: &str) -> Result<Vec<u8>> {
    let s = coeff_spans(template)?;
    if coeff.len() != s.coeff.1 {
        bail!(
            "{} coefficient bytes for a blob of {}",
            coeff.len(),
            s.coeff.1
        );
    }
    if name.len() != s.name.1 {
        bail!("net name {name:?} is not {} bytes long", s.name.1);
    }
    let mut out = template.to_vec();
    out[s.coeff.0..s.coeff.0 + s.coeff.1].copy_from_slice(coeff);
    out[s.check_code..s.check_code + 32].copy_from_slice(&Sha256::digest(coeff));
    out[s.name.0..s.name.0 + s.name.1].copy_from_slice(name.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_bmodel_is_an_error() {
        assert!(coeff_spans(b"not a bmodel at all, some bytes").is_err());
        assert!(patch(b"", b"", "x").is_err());
    }
}
