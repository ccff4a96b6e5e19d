//! What the loaded bmodels contain: net names and an owned copy of each `bm_net_info_t`.

use std::ffi::{c_char, c_int, CStr, CString};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::dtype::DType;
use super::ffi::{self, BmrtApi};
use super::mem::DeviceMem;
use super::runtime::Runtime;

/// `addr_mode` of a net whose IO shares the runtime's memory layout.
pub const ADDR_MODE_BASIC: i32 = ffi::BM_ADDR_MODE_BASIC as i32;
/// `addr_mode` of a net with IO memory of its own (`--addr_mode io_alone`): `block_cache_i`,
/// whose `history_k/v` inputs are the KV cache.
pub const ADDR_MODE_IO_ALONE: i32 = ffi::BM_ADDR_MODE_IO_ALONE as i32;

/// One net of a loaded bmodel (an owned copy of `bm_net_info_t`).
#[derive(Debug, Clone)]
pub struct NetInfo {
    pub name: String,
    /// Dynamic nets accept any shape up to a stage's (the stage shapes are maxima).
    pub is_dynamic: bool,
    pub input_names: Vec<String>,
    pub input_dtypes: Vec<DType>,
    pub output_names: Vec<String>,
    pub output_dtypes: Vec<DType>,
    pub stages: Vec<Stage>,
    pub max_input_bytes: Vec<usize>,
    pub max_output_bytes: Vec<usize>,
    pub core_num: i32,
    pub addr_mode: i32,
}

/// One compiled shape set of a net, with the device memory bmrt allocated for its I/O.
#[derive(Debug, Clone)]
pub struct Stage {
    pub input_shapes: Vec<Vec<usize>>,
    pub output_shapes: Vec<Vec<usize>>,
    /// Empty if the runtime allocated none.
    pub input_mems: Vec<DeviceMem>,
    pub output_mems: Vec<DeviceMem>,
}

impl NetInfo {
    pub fn input_num(&self) -> usize {
        self.input_names.len()
    }

    pub fn output_num(&self) -> usize {
        self.output_names.len()
    }

    pub fn is_io_alone(&self) -> bool {
        self.addr_mode == ADDR_MODE_IO_ALONE
    }

    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.input_names.iter().position(|n| n == name)
    }

    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.output_names.iter().position(|n| n == name)
    }

    pub fn stage(&self, index: usize) -> Result<&Stage> {
        self.stages.get(index).ok_or_else(|| {
            anyhow!(
                "net {} has {} stage(s), no stage {index}",
                self.name,
                self.stages.len()
            )
        })
    }

    /// Copies bmrt's description.
    ///
    /// # Safety
    /// `info` must be a `bm_net_info_t` returned by bmrt and still owned by a live runtime:
    /// its arrays hold input_num / output_num / stage_num entries and its strings are
    /// NUL-terminated.
    unsafe fn from_raw(api: &'static BmrtApi, info: &ffi::bm_net_info_t) -> Result<NetInfo> {
        let ni = count(info.input_num, "input_num")?;
        let no = count(info.output_num, "output_num")?;
        let ns = count(info.stage_num, "stage_num")?;
        // SAFETY (every block below): each pointer is one of `info`'s arrays, read with the
        // entry count bm_net_info_t documents for it; the caller vouches for `info`.
        let name = unsafe { string(info.name) }?;
        let read = || -> Result<NetInfo> {
            let mut stages = vec![];
            for (i, s) in unsafe { array(info.stages, ns) }?.iter().enumerate() {
                stages.push(
                    unsafe { stage_from_raw(api, s, ni, no) }
                        .with_context(|| format!("stage {i}"))?,
                );
            }
            Ok(NetInfo {
                name: name.clone(),
                is_dynamic: info.is_dynamic,
                input_names: unsafe { strings(info.input_names, ni) }.context("input names")?,
                input_dtypes: unsafe { dtypes(info.input_dtypes, ni) }.context("input dtypes")?,
                output_names: unsafe { strings(info.output_names, no) }.context("output names")?,
                output_dtypes: unsafe { dtypes(info.output_dtypes, no) }
                    .context("output dtypes")?,
                stages,
                max_input_bytes: unsafe { optional(info.max_input_bytes, ni) }?.to_vec(),
                max_output_bytes: unsafe { optional(info.max_output_bytes, no) }?.to_vec(),
                core_num: info.core_num,
                addr_mode: info.addr_mode,
            })
        };
        read().with_context(|| format!("reading the description of net {name}"))
    }
}

/// # Safety
/// `s` comes from a live `bm_net_info_t` with `ni` inputs and `no` outputs.
unsafe fn stage_from_raw(
    api: &'static BmrtApi,
    s: &ffi::bm_stage_info_t,
    ni: usize,
    no: usize,
) -> Result<Stage> {
    let shapes = |p, n| -> Result<Vec<Vec<usize>>> {
        // SAFETY: `p` is one of the stage's shape arrays with `n` entries.
        unsafe { array(p, n) }?.iter().map(shape_from_raw).collect()
    };
    let mems = |p, n| -> Result<Vec<DeviceMem>> {
        // SAFETY: `p` is null or one of the stage's mem arrays with `n` entries.
        let raw = unsafe { optional(p, n) }?;
        Ok(raw.iter().map(|&m| DeviceMem::from_raw(api, m)).collect())
    };
    Ok(Stage {
        input_shapes: shapes(s.input_shapes, ni).context("input shapes")?,
        output_shapes: shapes(s.output_shapes, no).context("output shapes")?,
        input_mems: mems(s.input_mems, ni)?,
        output_mems: mems(s.output_mems, no)?,
    })
}

/// # Safety
/// As [`array`], each entry a NUL-terminated string.
unsafe fn strings(p: *mut *const c_char, n: usize) -> Result<Vec<String>> {
    // SAFETY: per this function's contract.
    unsafe { array(p, n) }?
        .iter()
        .map(|&s| unsafe { string(s) })
        .collect()
}

/// # Safety
/// As [`array`].
unsafe fn dtypes(p: *mut ffi::bm_data_type_t, n: usize) -> Result<Vec<DType>> {
    // SAFETY: per this function's contract.
    unsafe { array(p, n) }?
        .iter()
        .map(|&d| DType::from_raw(d).ok_or_else(|| anyhow!("unknown dtype {d}")))
        .collect()
}

impl Runtime {
    /// Names of every net loaded so far, in bmrt's order.
    pub fn net_names(&self) -> Result<Vec<String>> {
        // SAFETY: `bmrt` is live.
        let n = unsafe { self.api.bmrt_get_network_number(self.bmrt) };
        let n = count(n, "bmrt_get_network_number")?;
        if n == 0 {
            return Ok(vec![]);
        }
        let mut names: *mut *const c_char = std::ptr::null_mut();
        // SAFETY: `bmrt` is live and `names` a valid out-pointer; bmrt mallocs an array of `n`
        // pointers to strings it owns.
        unsafe { self.api.bmrt_get_network_names(self.bmrt, &mut names) };
        // SAFETY: `names` has `n` entries (or is null, which `array` rejects).
        let copied = unsafe { array(names, n) }
            .and_then(|a| a.iter().map(|&s| unsafe { string(s) }).collect());
        // SAFETY: the array (not the strings) was malloc'ed by bmrt for us to free.
        unsafe { libc::free(names.cast()) };
        copied.context("bmrt_get_network_names")
    }

    /// Whether a net of that name is loaded (to probe optional nets, e.g. `block_kv_0`).
    pub fn has_net(&self, name: &str) -> Result<bool> {
        Ok(self.net_names()?.iter().any(|n| n == name))
    }

    /// The net called `name`; an error naming it (and the bmodels) if none is loaded.
    pub fn net(&self, name: &str) -> Result<NetInfo> {
        if !self.has_net(name)? {
            let bmodels: Vec<String> = self
                .bmodels()
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            bail!(
                "no net named {name:?} in {} (nets: {})",
                if bmodels.is_empty() {
                    "this runtime (no bmodel loaded)".to_string()
                } else {
                    bmodels.join(", ")
                },
                self.net_names()?.join(", ")
            );
        }
        let c_name = CString::new(name).with_context(|| format!("net name {name:?} has a NUL"))?;
        // SAFETY: `bmrt` is live and `c_name` NUL-terminated; the result is null or points to
        // bmrt's own description, valid while the runtime lives (longer than this call).
        let info = unsafe { self.api.bmrt_get_network_info(self.bmrt, c_name.as_ptr()) };
        // SAFETY: non-null pointers from bmrt_get_network_info point to a valid bm_net_info_t.
        let info = unsafe { info.as_ref() }
            .ok_or_else(|| anyhow!("bmrt_get_network_info({name:?}) returned nothing"))?;
        // SAFETY: `info` comes from this live runtime.
        unsafe { NetInfo::from_raw(self.api, info) }
    }
}

fn count(n: c_int, what: &str) -> Result<usize> {
    usize::try_from(n).map_err(|_| anyhow!("{what} is negative ({n})"))
}

/// `n` elements at `p` (an empty slice for n == 0, an error for a null array).
///
/// # Safety
/// A non-null `p` must point to at least `n` initialised elements that outlive `'a`.
unsafe fn array<'a, T>(p: *mut T, n: usize) -> Result<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    ensure!(!p.is_null(), "null array of {n} entries");
    // SAFETY: non-null, and the caller guarantees `n` valid elements.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Like [`array`], but a null array (the runtime provides none) is empty.
///
/// # Safety
/// As [`array`].
unsafe fn optional<'a, T>(p: *mut T, n: usize) -> Result<&'a [T]> {
    if p.is_null() {
        return Ok(&[]);
    }
    // SAFETY: per this function's contract.
    unsafe { array(p, n) }
}

/// # Safety
/// A non-null `p` must point to a NUL-terminated string.
unsafe fn string(p: *const c_char) -> Result<String> {
    ensure!(!p.is_null(), "null string");
    // SAFETY: non-null and NUL-terminated per the caller.
    Ok(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

pub(super) fn shape_from_raw(s: &ffi::bm_shape_t) -> Result<Vec<usize>> {
    let n = usize::try_from(s.num_dims)
        .ok()
        .filter(|&n| n <= s.dims.len())
        .ok_or_else(|| anyhow!("shape with {} dims", s.num_dims))?;
    s.dims[..n]
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| anyhow!("negative dim {d}")))
        .collect()
}

pub(super) fn shape_to_raw(dims: &[usize]) -> Result<ffi::bm_shape_t> {
    let mut s = ffi::bm_shape_t::default();
    ensure!(
        dims.len() <= s.dims.len(),
        "shape {dims:?} has more than {} dims",
        s.dims.len()
    );
    s.num_dims = dims.len() as c_int;
    for (d, &v) in s.dims.iter_mut().zip(dims) {
        *d = c_int::try_from(v).with_context(|| format!("dim {v} of {dims:?} is too large"))?;
    }
    Ok(s)
}
