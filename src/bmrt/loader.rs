//! dlopens libbmlib then libbmrt once per process and keeps them loaded for good: every
//! `Runtime`, `DeviceMem` and `NetInfo` holds plain function pointers into them.

use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_LOCAL, RTLD_NOW};

use super::ffi::BmrtApi;
use crate::toolchain::RuntimeLibs;

struct Loaded {
    /// The folder the libraries came from (canonical when possible).
    dir: PathBuf,
    /// Held only to keep libbmlib (and its global symbols) loaded.
    _bmlib: Library,
    api: BmrtApi,
    versions: LibVersions,
}

/// What the loaded libbmrt/libbmlib say about themselves (None: the symbol is absent, as in
/// builds older or newer than TPU-MLIR 1.30.2's).
#[derive(Debug, Clone, Default)]
pub struct LibVersions {
    /// libbmrt's `BMODEL_VERSION`: the bmodel format it reads (`2.2`).
    pub bmodel_format: Option<String>,
    /// libbmrt's `_bmrt_version()`: `libbmrt_version:1.0.0, branch:master,commit:ee6becb0 ,...`.
    pub bmrt: Option<String>,
    /// libbmlib's `libbmlib_version()`: `libbmlib_version:1.0.0, branch:master, commit:...`.
    pub bmlib: Option<String>,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();
/// Serialises the first load, so two threads never dlopen concurrently.
static LOADING: Mutex<()> = Mutex::new(());

/// The runtime API from `libs`, loading it on first use. One folder per process: the simulator's
/// and libsophon's libbmlib share the soname `libbmlib.so.0`, so they cannot coexist.
pub(crate) fn api(libs: &RuntimeLibs) -> Result<&'static BmrtApi> {
    let dir = canonical(libs.dir());
    // A poisoned lock only means another thread panicked while loading; LOADED tells the truth.
    let _guard = LOADING.lock().unwrap_or_else(|p| p.into_inner());
    let loaded = match LOADED.get() {
        Some(l) => l,
        None => {
            let l = open(&dir).with_context(|| format!("loading the {}", libs.describe()))?;
            LOADED.get_or_init(|| l)
        }
    };
    if loaded.dir != dir {
        bail!(
            "this process already loaded the runtime libraries from {}; it cannot also load {} \
             (one runtime per process: libbmlib and the simulator's cmodel load once, so one \
             process runs bmodels of one chip; run a bmodel of another chip in its own process)",
            loaded.dir.display(),
            dir.display()
        );
    }
    Ok(&loaded.api)
}

/// The version strings of the libraries `libs` names (loading them as [`api`] does).
pub(crate) fn versions(libs: &RuntimeLibs) -> Result<LibVersions> {
    api(libs)?;
    Ok(LOADED.get().map(|l| l.versions.clone()).unwrap_or_default())
}

fn canonical(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

fn open(dir: &Path) -> Result<Loaded> {
    let bmlib_path = dir.join("libbmlib.so");
    let bmrt_path = dir.join("libbmrt.so");
    for p in [&bmlib_path, &bmrt_path] {
        if !p.exists() {
            bail!(
                "{} does not exist: install the toolchain (`llm-convert toolchain install`) for \
                 the simulator, or libsophon for a device",
                p.display()
            );
        }
    }
    // libbmlib first, by absolute path and RTLD_GLOBAL: libbmrt's `NEEDED libbmlib.so.0` then
    // resolves to this copy (same soname) whatever LD_LIBRARY_PATH said at process start. The
    // simulator's libbmlib dlopens libcmodel.so itself, through its own RUNPATH ($ORIGIN).
    // SAFETY: loading runs the library's initialisers; these are the vendor runtime libraries
    // the user chose to run, and nothing else in the process has loaded another copy.
    let bmlib = unsafe { Library::open(Some(&bmlib_path), RTLD_NOW | RTLD_GLOBAL) }
        .with_context(|| format!("dlopen {}", bmlib_path.display()))?;
    // SAFETY: as above.
    let bmrt = unsafe { Library::open(Some(&bmrt_path), RTLD_NOW | RTLD_LOCAL) }
        .with_context(|| format!("dlopen {}", bmrt_path.display()))?;
    let versions = read_versions(&bmlib, &bmrt);
    // SAFETY: every symbol is looked up by the name and C signature our header declares
    // (checked against TPU-MLIR 1.30.2's libraries); bm_* symbols resolve through libbmrt's
    // dependency on libbmlib. Fails cleanly if any is missing (dynamic_link_require_all).
    let api = unsafe { BmrtApi::from_library(bmrt) }.with_context(|| {
        format!(
            "{} lacks a bmrt/bmlib function llm-convert needs (runtime too old?)",
            dir.display()
        )
    })?;
    Ok(Loaded {
        dir: dir.to_path_buf(),
        _bmlib: bmlib,
        api,
        versions,
    })
}

fn read_versions(bmlib: &Library, bmrt: &Library) -> LibVersions {
    /// A `const char *f(void)` returning a static string.
    fn call(lib: &Library, name: &[u8]) -> Option<String> {
        // SAFETY: in the libraries we load these are `const char *(void)` returning a static
        // NUL-terminated string (checked against TPU-MLIR 1.30.2's); absent means None.
        unsafe {
            let f = lib
                .get::<unsafe extern "C" fn() -> *const c_char>(name)
                .ok()?;
            text(f())
        }
    }
    /// # Safety
    /// `p` is null or a NUL-terminated string that lives as long as the library.
    unsafe fn text(p: *const c_char) -> Option<String> {
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().trim().to_string())
    }
    // SAFETY: `BMODEL_VERSION` is a `const char *` variable: the symbol is its address.
    let bmodel_format = unsafe {
        bmrt.get::<*const *const c_char>(b"BMODEL_VERSION")
            .ok()
            .and_then(|sym| {
                let at: *const *const c_char = *sym;
                if at.is_null() {
                    None
                } else {
                    text(*at)
                }
            })
    };
    LibVersions {
        bmodel_format,
        bmrt: call(bmrt, b"_Z13_bmrt_versionv"),
        bmlib: call(bmlib, b"libbmlib_version"),
    }
}
