//! Which libbmrt/libbmlib to load at run time: TPU-MLIR's CPU simulator (cmodel) or a
//! libsophon install for real PCIe/SoC devices. Never linked: chosen per run.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::layout::Layout;

pub const ENV_RUNTIME: &str = "LLM_CONVERT_RUNTIME";
pub const LIBSOPHON_LIB: &str = "/opt/sophon/libsophon-current/lib";

/// `--runtime`, for every command that loads libbmrt.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RuntimeArg {
    /// Runtime libraries: simulator (default), device, or a folder holding libbmrt.so.
    #[arg(long)]
    pub runtime: Option<String>,
}

impl RuntimeArg {
    pub fn libs(&self, layout: &Layout) -> RuntimeLibs {
        RuntimeLibs::select(layout, self.runtime.as_deref())
    }
}

#[derive(Debug, Clone)]
pub enum RuntimeLibs {
    /// `$TPUC_ROOT/lib`: libbmlib there is the cmodel build, so launches run on the CPU.
    Simulator(PathBuf),
    /// A libsophon install (real devices).
    Device(PathBuf),
}

impl RuntimeLibs {
    /// `choice` is "simulator", "device" or a library folder; None reads `LLM_CONVERT_RUNTIME`,
    /// defaulting to the simulator.
    pub fn select(layout: &Layout, choice: Option<&str>) -> RuntimeLibs {
        let env = std::env::var(ENV_RUNTIME).ok();
        match choice.or(env.as_deref()).unwrap_or("simulator") {
            "simulator" | "cmodel" => RuntimeLibs::Simulator(layout.lib_dir()),
            "device" | "libsophon" => RuntimeLibs::Device(PathBuf::from(LIBSOPHON_LIB)),
            dir => RuntimeLibs::Device(PathBuf::from(dir)),
        }
    }

    /// The libraries that run a bmodel of `chip` (as its header names it): on the simulator,
    /// the folder whose `libcmodel.so` is that chip's cmodel ([`super::simulator`]); a device
    /// runtime as chosen (libbmrt itself refuses a bmodel for another chip).
    pub fn for_chip(&self, layout: &Layout, chip: &str) -> Result<RuntimeLibs> {
        match self {
            RuntimeLibs::Simulator(_) => Ok(RuntimeLibs::Simulator(super::simulator::lib_dir_for(
                layout, chip,
            )?)),
            RuntimeLibs::Device(d) => Ok(RuntimeLibs::Device(d.clone())),
        }
    }

    pub fn dir(&self) -> &PathBuf {
        match self {
            RuntimeLibs::Simulator(d) | RuntimeLibs::Device(d) => d,
        }
    }

    pub fn is_simulator(&self) -> bool {
        matches!(self, RuntimeLibs::Simulator(_))
    }

    pub fn describe(&self) -> String {
        match self {
            RuntimeLibs::Simulator(d) => format!("CPU simulator (cmodel) from {}", d.display()),
            RuntimeLibs::Device(d) => format!("device runtime (libsophon) from {}", d.display()),
        }
    }

    /// dlopens libbmlib then libbmrt from the chosen folder.
    pub fn try_load(&self) -> Result<String> {
        let dir = self.dir();
        for lib in ["libbmlib.so", "libbmrt.so"] {
            let path = dir.join(lib);
            // SAFETY: loading a shared library runs its initialisers; these are the vendor's
            // runtime libraries, which is exactly what we are checking.
            let l = unsafe { libloading::Library::new(&path) }
                .with_context(|| format!("dlopen {}", path.display()))?;
            drop(l);
        }
        Ok(format!(
            "libbmlib.so and libbmrt.so load from {}",
            dir.display()
        ))
    }
}
