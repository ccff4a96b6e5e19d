//! Finding, provisioning and checking the pinned TPU-MLIR toolchain, and running its tools
//! with the right environment. Decides nothing about what to compile.

pub mod doctor;
mod doctor_bmodel;
pub mod env;
pub mod install;
pub mod install_native;
pub mod layout;
pub mod runtime;
pub mod simulator;
pub mod skew;

pub use layout::{Layout, TPU_MLIR_VERSION};
pub use runtime::{RuntimeArg, RuntimeLibs};

use anyhow::{bail, Result};

/// `toolchain show`: where the toolchain lives, as JSON.
pub fn show(layout: &Layout) -> Result<()> {
    let v = serde_json::json!({
        "root": layout.root, "installed": layout.is_installed(), "python": layout.python(),
        "tpuc_root": layout.tpuc_root(), "site_packages": layout.site_packages(),
        "version": TPU_MLIR_VERSION,
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// The installed toolchain, or an error that says how to install it.
pub fn require_installed(layout: &Layout) -> Result<()> {
    if !layout.is_installed() {
        bail!(
            "TPU-MLIR {TPU_MLIR_VERSION} is not installed in {}: run `llm-convert toolchain install` \
             (or scripts/setup.sh), or point {} at an existing install",
            layout.root.display(),
            layout::ENV_TOOLCHAIN_DIR
        );
    }
    Ok(())
}
