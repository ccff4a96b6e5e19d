//! Device memory: descriptors, owned allocations, and copies between host and device.
//!
//! The wrapper guarantees the host side (every copy stays inside the Rust slice it was given)
//! and checks every device range against its descriptor's size. It cannot know whether the
//! device memory behind a descriptor is still allocated: that is the caller's logic.

use std::ffi::c_void;
use std::fmt;
use std::ops::Deref;

use anyhow::{bail, ensure, Context, Result};
use bytemuck::Pod;

use super::ffi::{self, BmrtApi};
use super::runtime::{check, Runtime};

/// A device memory range (`bm_device_mem_t`): a plain descriptor, cheap to copy.
#[derive(Clone, Copy)]
pub struct DeviceMem {
    raw: ffi::bm_device_mem_t,
    api: &'static BmrtApi,
}

// SAFETY: a descriptor is an address and a size on the device; the host pointer variant of its
// union is never dereferenced by us, so sharing or moving it between threads is harmless.
unsafe impl Send for DeviceMem {}
// SAFETY: as above; it is immutable.
unsafe impl Sync for DeviceMem {}

impl DeviceMem {
    pub(super) fn from_raw(api: &'static BmrtApi, raw: ffi::bm_device_mem_t) -> DeviceMem {
        DeviceMem { raw, api }
    }

    pub(super) fn raw(&self) -> ffi::bm_device_mem_t {
        self.raw
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        // SAFETY: a pure accessor on a descriptor passed by value.
        unsafe { self.api.bm_mem_get_device_size(self.raw) as usize }
    }

    /// Device address.
    pub fn addr(&self) -> u64 {
        // SAFETY: a pure accessor on a descriptor passed by value.
        unsafe { self.api.bm_mem_get_device_addr(self.raw) }
    }

    /// The sub-range `[offset, offset + len)` of this memory (e.g. one token's slot in a KV
    /// cache, bound as a net output for the in-place append).
    pub fn sub(&self, offset: usize, len: usize) -> Result<DeviceMem> {
        ensure!(
            offset
                .checked_add(len)
                .is_some_and(|end| end <= self.size()),
            "range {offset}..{offset}+{len} is outside device memory {self:?}"
        );
        let len = u32::try_from(len).context("sub-range over 4 GiB")?;
        // SAFETY: builds a descriptor only; the range lies inside this one (checked above).
        let raw = unsafe {
            self.api
                .bm_mem_from_device(self.addr() + offset as u64, len)
        };
        Ok(DeviceMem::from_raw(self.api, raw))
    }
}

impl fmt::Debug for DeviceMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DeviceMem {{ addr: {:#x}, size: {} }}",
            self.addr(),
            self.size()
        )
    }
}

/// Device memory allocated by [`Runtime::alloc`], freed on drop. Derefs to its [`DeviceMem`].
pub struct DeviceBuffer<'rt> {
    rt: &'rt Runtime,
    mem: DeviceMem,
}

impl Deref for DeviceBuffer<'_> {
    type Target = DeviceMem;
    fn deref(&self) -> &DeviceMem {
        &self.mem
    }
}

impl fmt::Debug for DeviceBuffer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceBuffer({:?})", self.mem)
    }
}

impl Drop for DeviceBuffer<'_> {
    fn drop(&mut self) {
        // SAFETY: allocated by bm_malloc_device_byte on this (still live, borrowed) handle and
        // freed exactly once.
        unsafe { self.rt.api.bm_free_device(self.rt.handle, self.mem.raw) };
    }
}

impl Runtime {
    /// Allocates `bytes` of device memory.
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer<'_>> {
        ensure!(bytes > 0, "cannot allocate 0 bytes of device memory");
        let size = u32::try_from(bytes).context("device allocations are limited to 4 GiB")?;
        let mut raw = ffi::bm_device_mem_t::default();
        // SAFETY: live handle; `raw` is a valid out-pointer.
        let status = unsafe { self.api.bm_malloc_device_byte(self.handle, &mut raw, size) };
        check(status).with_context(|| format!("allocating {bytes} bytes of device memory"))?;
        Ok(DeviceBuffer {
            rt: self,
            mem: DeviceMem::from_raw(self.api, raw),
        })
    }

    /// A descriptor for an arbitrary device range (`bm_mem_from_device`). Prefer
    /// [`DeviceMem::sub`], which checks the range lies inside a known one.
    ///
    /// # Safety
    /// `[addr, addr + len)` must be device memory of this runtime that stays allocated while the
    /// descriptor is used: on the simulator, device memory is host memory, so a wild range
    /// passed to a copy or launch can corrupt the process.
    pub unsafe fn mem_from_device(&self, addr: u64, len: usize) -> Result<DeviceMem> {
        let len = u32::try_from(len).context("device ranges are limited to 4 GiB")?;
        // SAFETY: builds a descriptor only; the caller vouches for the range.
        let raw = unsafe { self.api.bm_mem_from_device(addr, len) };
        Ok(DeviceMem::from_raw(self.api, raw))
    }

    /// Host → device, the whole of `dst`: `src` must be exactly `dst.size()` bytes.
    pub fn s2d<T: Pod>(&self, dst: &DeviceMem, src: &[T]) -> Result<()> {
        self.wait_before_host_copy()?;
        let bytes: &[u8] = bytemuck::cast_slice(src);
        ensure!(
            bytes.len() == dst.size(),
            "s2d: {} host bytes for {dst:?} (use s2d_partial for a prefix)",
            bytes.len()
        );
        // SAFETY: live handle; bmlib reads dst.size() == bytes.len() bytes from `src` and does
        // not write through the (non-const in C) pointer.
        let status = unsafe {
            self.api
                .bm_memcpy_s2d(self.handle, dst.raw(), bytes.as_ptr() as *mut c_void)
        };
        check(status).with_context(|| format!("bm_memcpy_s2d into {dst:?}"))
    }

    /// Host → device, a prefix of `dst` of `src`'s length.
    pub fn s2d_partial<T: Pod>(&self, dst: &DeviceMem, src: &[T]) -> Result<()> {
        self.wait_before_host_copy()?;
        let bytes: &[u8] = bytemuck::cast_slice(src);
        ensure!(
            bytes.len() <= dst.size(),
            "s2d_partial: {} host bytes do not fit {dst:?}",
            bytes.len()
        );
        if bytes.is_empty() {
            return Ok(());
        }
        // SAFETY: live handle; bmlib reads exactly `bytes.len()` bytes from `src`, which fit
        // in `dst` (checked above), and does not write through the pointer.
        let status = unsafe {
            self.api.bm_memcpy_s2d_partial(
                self.handle,
                dst.raw(),
                bytes.as_ptr() as *mut c_void,
                bytes.len() as u32,
            )
        };
        check(status).with_context(|| format!("bm_memcpy_s2d_partial into {dst:?}"))
    }

    /// Device → host, the whole of `src`: `dst` must be exactly `src.size()` bytes.
    pub fn d2s<T: Pod>(&self, dst: &mut [T], src: &DeviceMem) -> Result<()> {
        self.wait_before_host_copy()?;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(dst);
        ensure!(
            bytes.len() == src.size(),
            "d2s: {} host bytes for {src:?} (use d2s_partial for a prefix)",
            bytes.len()
        );
        // SAFETY: live handle; bmlib writes src.size() == bytes.len() bytes into `dst`, and any
        // bit pattern is a valid `T: Pod`.
        let status = unsafe {
            self.api
                .bm_memcpy_d2s(self.handle, bytes.as_mut_ptr().cast(), src.raw())
        };
        check(status).with_context(|| format!("bm_memcpy_d2s from {src:?}"))
    }

    /// Device → host, the first `dst.len()` elements' worth of bytes of `src`.
    pub fn d2s_partial<T: Pod>(&self, dst: &mut [T], src: &DeviceMem) -> Result<()> {
        self.wait_before_host_copy()?;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(dst);
        ensure!(
            bytes.len() <= src.size(),
            "d2s_partial: {} host bytes exceed {src:?}",
            bytes.len()
        );
        if bytes.is_empty() {
            return Ok(());
        }
        // SAFETY: live handle; bmlib writes exactly `bytes.len()` bytes into `dst`.
        let status = unsafe {
            self.api.bm_memcpy_d2s_partial(
                self.handle,
                bytes.as_mut_ptr().cast(),
                src.raw(),
                bytes.len() as u32,
            )
        };
        check(status).with_context(|| format!("bm_memcpy_d2s_partial from {src:?}"))
    }

    /// Reads the first `count` elements of `src` into a new vector.
    pub fn read<T: Pod>(&self, src: &DeviceMem, count: usize) -> Result<Vec<T>> {
        let mut v = vec![T::zeroed(); count];
        self.d2s_partial(&mut v, src)?;
        Ok(v)
    }

    /// Device → device: `len` bytes from `src[src_offset..]` to `dst[dst_offset..]`.
    pub fn d2d(
        &self,
        dst: &DeviceMem,
        dst_offset: usize,
        src: &DeviceMem,
        src_offset: usize,
        len: usize,
    ) -> Result<()> {
        for (what, mem, off) in [
            ("destination", dst, dst_offset),
            ("source", src, src_offset),
        ] {
            if off.checked_add(len).is_none_or(|end| end > mem.size()) {
                bail!("d2d: {what} range {off}..{off}+{len} is outside {mem:?}");
            }
        }
        if len == 0 {
            return Ok(());
        }
        if self.d2d_through_host {
            let mut staged = vec![0u8; len];
            self.d2s_partial(&mut staged, &src.sub(src_offset, len)?)?;
            return self.s2d_partial(&dst.sub(dst_offset, len)?, &staged);
        }
        // SAFETY: live handle; both ranges lie inside their descriptors (checked above).
        let status = unsafe {
            self.api.bm_memcpy_d2d_byte(
                self.handle,
                dst.raw(),
                dst_offset,
                src.raw(),
                src_offset,
                len,
            )
        };
        check(status).with_context(|| {
            format!("bm_memcpy_d2d_byte {len} bytes {src:?}+{src_offset} -> {dst:?}+{dst_offset}")
        })
    }

    /// On runtimes set to [`Runtime::copy_d2d_through_host`], host copies do not queue behind
    /// launches as they do on the others: wait for the launches first.
    fn wait_before_host_copy(&self) -> Result<()> {
        if self.d2d_through_host {
            self.sync()?;
        }
        Ok(())
    }

    /// Fills `mem` with zeros (e.g. a fresh KV cache).
    pub fn memset_zero(&self, mem: &DeviceMem) -> Result<()> {
        let mut zero = 0u8;
        // SAFETY: live handle; mode 1 reads one byte from `zero`, which outlives the call.
        let status = unsafe {
            self.api
                .bm_memset_device_ext(self.handle, (&mut zero as *mut u8).cast(), 1, mem.raw())
        };
        check(status).with_context(|| format!("bm_memset_device_ext on {mem:?}"))
    }
}
