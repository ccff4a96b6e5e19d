//! A bmodel loaded for a command (`verify`, `bench`, `generate`, `chat`): the runtime, the
//! libraries it came from, the load time, and the real stdout for the command's output.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use crate::bmrt::Runtime;
use crate::error::InputError;
use crate::toolchain::{Layout, RuntimeArg, RuntimeLibs};

pub struct LoadedBmodel {
    /// The original stdout (fd 1 now goes to stderr: the simulator chatters there).
    pub out: std::fs::File,
    pub libs: RuntimeLibs,
    pub rt: Runtime,
    pub load_s: f64,
}

impl LoadedBmodel {
    pub fn open(layout: &Layout, runtime: &RuntimeArg, bmodel: &Path) -> Result<LoadedBmodel> {
        if !bmodel.is_file() {
            return Err(InputError::missing(bmodel, "the bmodel to run").into());
        }
        // Before libbmrt: it is not built for damaged files, and may be missing altogether.
        let summary = crate::bmodel::check_file(bmodel)?;
        // The chip's simulator, and the versions `doctor BMODEL` checks: skews warn, or stop.
        let libs = crate::toolchain::skew::check(layout, &runtime.libs(layout), bmodel, &summary)?
            .enforce()?;
        let out = crate::util::stdout_to_stderr()?;
        let mut rt = Runtime::open(&libs, 0)?;
        if libs.is_simulator() && crate::toolchain::simulator::needs_host_d2d(&summary.chip) {
            rt.copy_d2d_through_host();
        }
        let t0 = Instant::now();
        rt.load_bmodel(bmodel)?;
        Ok(LoadedBmodel {
            out,
            libs,
            rt,
            load_s: t0.elapsed().as_secs_f64(),
        })
    }
}

/// "(SIMULATED: ...)" after a timing measured on the CPU simulator, else nothing.
pub fn simulated_label(simulated: bool) -> &'static str {
    if simulated {
        " (SIMULATED: CPU cmodel, not a TPU's speed)"
    } else {
        ""
    }
}
