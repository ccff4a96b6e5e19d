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
        crate::bmodel::check_file(bmodel)?;
        let out = crate::util::stdout_to_stderr()?;
        let libs = runtime.libs(layout);
        let mut rt = Runtime::open(&libs, 0)?;
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
