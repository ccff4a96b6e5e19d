//! The environment every TPU-MLIR child process gets. Users never source anything: we set
//! TPUC_ROOT, PATH, LD_LIBRARY_PATH, PYTHONPATH and the PPL JIT variables per child.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::layout::Layout;

/// (name, value) pairs to set on a child process.
pub fn tool_env(layout: &Layout) -> Vec<(String, OsString)> {
    let t = layout.tpuc_root();
    let ppl = t.join("cross_toolchains").join("ppl_compile");
    let path = join_paths(
        [
            layout.venv().join("bin"),
            t.join("bin"),
            t.join("python").join("tools"),
            ppl.join("bin"),
        ],
        std::env::var_os("PATH"),
    );
    let ld = join_paths(
        [
            t.join("lib"),
            t.join("lib").join("capi"),
            t.join("lib").join("third_party"),
        ],
        None,
    );
    let pythonpath = join_paths(
        [
            layout.site_packages(),
            t.clone(),
            t.join("python"),
            t.join("python").join("tools"),
            t.join("python").join("utils"),
        ],
        None,
    );
    let s = |p: &Path| p.as_os_str().to_os_string();
    vec![
        ("TPUC_ROOT".into(), s(&t)),
        ("PATH".into(), path),
        ("LD_LIBRARY_PATH".into(), ld),
        ("PYTHONPATH".into(), pythonpath),
        ("PPL_PROJECT_ROOT".into(), s(&ppl)),
        ("PPL_BUILD_PATH".into(), s(&t.join("build").join("ppl"))),
        ("PPL_RUNTIME_PATH".into(), s(&ppl.join("deps"))),
        ("PPL_CACHE_PATH".into(), s(&layout.ppl_cache())),
        (
            "TPUKERNEL_CUSTOM_FIRMWARE_PATH".into(),
            s(&t.join("lib").join("libcmodel_custom.so")),
        ),
        ("OMP_NUM_THREADS".into(), OsString::from("2")),
        // Keep pip and Python quiet and out of the user's site directory.
        ("PYTHONNOUSERSITE".into(), OsString::from("1")),
    ]
}

/// A duct expression running `program args…` with the toolchain environment.
pub fn command<I, A>(layout: &Layout, program: impl Into<PathBuf>, args: I) -> duct::Expression
where
    I: IntoIterator<Item = A>,
    A: Into<OsString>,
{
    let mut e = duct::cmd(program.into(), args);
    for (k, v) in tool_env(layout) {
        e = e.env(k, v);
    }
    e
}

fn join_paths<const N: usize>(first: [PathBuf; N], rest: Option<OsString>) -> OsString {
    let mut all: Vec<PathBuf> = first.into_iter().collect();
    if let Some(r) = rest {
        all.extend(std::env::split_paths(&r));
    }
    std::env::join_paths(all).unwrap_or_default()
}
