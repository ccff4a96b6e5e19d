//! The runtime: one device handle plus one bmrt instance, the bmodels loaded into it, and
//! their teardown in the right order.

use std::ffi::{c_void, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::ffi::{self, BmrtApi};
use super::loader;
use crate::toolchain::RuntimeLibs;

/// A device (or the simulator) with a bmrt instance on it. Not `Send`: the vendor handles are
/// used from the thread that made them.
pub struct Runtime {
    pub(super) api: &'static BmrtApi,
    pub(super) handle: ffi::bm_handle_t,
    pub(super) bmrt: *mut c_void,
    describe: String,
    device_id: i32,
    bmodels: Vec<PathBuf>,
    /// Device-to-device copies go through host memory (see [`Runtime::copy_d2d_through_host`]).
    pub(super) d2d_through_host: bool,
}

/// Device statistics from `bm_get_stat` (the simulator reports zeros).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevStat {
    /// Device memory in MB.
    pub mem_total: i32,
    pub mem_used: i32,
    /// TPU utilisation in percent.
    pub tpu_util: i32,
}

impl Runtime {
    /// Requests device `device_id` and creates a bmrt instance on it, with
    /// `BM_RUNTIME_SHARE_MEM` (nets share one activation area; io_alone IO stays separate).
    pub fn open(libs: &RuntimeLibs, device_id: i32) -> Result<Runtime> {
        let api = loader::api(libs)?;
        let describe = format!("{} device {device_id}", libs.describe());
        let mut handle: ffi::bm_handle_t = std::ptr::null_mut();
        // SAFETY: `handle` is a valid out-pointer; bm_dev_request fills it on success.
        let status = unsafe { api.bm_dev_request(&mut handle, device_id) };
        check(status).with_context(|| format!("bm_dev_request on the {describe}"))?;
        if handle.is_null() {
            bail!("bm_dev_request on the {describe} returned no handle");
        }
        // SAFETY: `handle` is the live handle just requested.
        let bmrt = unsafe { api.bmrt_create(handle) };
        if bmrt.is_null() {
            // SAFETY: the handle is live and nothing else uses it.
            unsafe { api.bm_dev_free(handle) };
            bail!("bmrt_create failed on the {describe}");
        }
        // SAFETY: `bmrt` is the live instance just created.
        unsafe { api.bmrt_set_flags(bmrt, ffi::BM_RUNTIME_SHARE_MEM) };
        Ok(Runtime {
            api,
            handle,
            bmrt,
            describe,
            device_id,
            bmodels: vec![],
            d2d_through_host: false,
        })
    }

    /// Loads every net of a (combined) bmodel.
    pub fn load_bmodel(&mut self, path: &Path) -> Result<()> {
        let what = || format!("loading bmodel {} on the {}", path.display(), self.describe);
        if !path.is_file() {
            return Err(anyhow::anyhow!("{} does not exist", path.display())).with_context(what);
        }
        let c_path = CString::new(path.as_os_str().as_bytes())
            .with_context(|| format!("{} contains a NUL byte", path.display()))
            .with_context(what)?;
        // SAFETY: `bmrt` is live and `c_path` a NUL-terminated string that outlives the call.
        let ok = unsafe { self.api.bmrt_load_bmodel(self.bmrt, c_path.as_ptr()) };
        if !ok {
            return Err(anyhow::anyhow!(
                "bmrt_load_bmodel failed (see bmrt's log above; a bmodel for another chip or \
                 a newer runtime, or out of device memory?)"
            ))
            .with_context(what);
        }
        self.bmodels.push(path.to_path_buf());
        Ok(())
    }

    /// From now on, device-to-device copies are a device-to-host plus a host-to-device copy,
    /// and every host copy first waits for queued launches: for simulators whose firmware
    /// cannot copy device to device and whose host copies do not wait
    /// (`toolchain::simulator::needs_host_d2d`).
    pub fn copy_d2d_through_host(&mut self) {
        self.d2d_through_host = true;
    }

    /// The bmodels loaded so far.
    pub fn bmodels(&self) -> &[PathBuf] {
        &self.bmodels
    }

    pub fn device_id(&self) -> i32 {
        self.device_id
    }

    /// Which libraries and device, for messages.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Waits until every queued launch and copy on this device has finished.
    pub fn sync(&self) -> Result<()> {
        // SAFETY: the handle is live for as long as `self`.
        check(unsafe { self.api.bm_thread_sync(self.handle) }).context("bm_thread_sync")
    }

    pub fn stat(&self) -> Result<DevStat> {
        let mut s = ffi::bm_dev_stat_t::default();
        // SAFETY: the handle is live and `s` a valid, writable bm_dev_stat_t.
        check(unsafe { self.api.bm_get_stat(self.handle, &mut s) }).context("bm_get_stat")?;
        Ok(DevStat {
            mem_total: s.mem_total,
            mem_used: s.mem_used,
            tpu_util: s.tpu_util,
        })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // bmrt first (it frees the nets' device memory through the handle), then the handle.
        // Borrowed DeviceBuffers are already gone: they cannot outlive `&self`.
        // SAFETY: both are live, created in `open`, and destroyed exactly once here.
        unsafe {
            self.api.bmrt_destroy(self.bmrt);
            self.api.bm_dev_free(self.handle);
        }
    }
}

/// A bmlib status as a Result.
pub(super) fn check(status: ffi::bm_status_t) -> Result<()> {
    let name = match status {
        ffi::BM_SUCCESS => return Ok(()),
        ffi::BM_ERR_DEVNOTREADY => "device not ready",
        ffi::BM_ERR_FAILURE => "failure",
        ffi::BM_ERR_TIMEOUT => "timeout",
        ffi::BM_ERR_PARAM => "invalid parameter",
        ffi::BM_ERR_NOMEM => "out of device memory",
        ffi::BM_ERR_DATA => "data error",
        ffi::BM_ERR_BUSY => "busy",
        ffi::BM_ERR_NOFEATURE | ffi::BM_NOT_SUPPORTED => "not supported",
        _ => "unknown error",
    };
    bail!("bmlib returned {status} ({name})")
}
