//! Safe Rust over Sophgo's runtime (libbmrt + libbmlib), loaded at run time from the CPU
//! simulator (TPU-MLIR's cmodel build) or a libsophon install: see [`RuntimeLibs`].
//!
//! Knows nothing about LLMs: a [`Runtime`] loads bmodels, describes their nets ([`NetInfo`]),
//! copies between host and device memory ([`DeviceMem`], [`DeviceBuffer`]) and launches nets on
//! [`Tensor`]s. The runner builds the LLM pipeline on top (support/docs/runtime-contract.md).
//!
//! [`RuntimeLibs`]: crate::toolchain::RuntimeLibs

mod dtype;
pub mod ffi;
mod launch;
mod loader;
mod mem;
mod net;
mod runtime;

pub use dtype::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16, DType};
pub use launch::Tensor;
pub use loader::LibVersions;
pub use mem::{DeviceBuffer, DeviceMem};
pub use net::{NetInfo, Stage, ADDR_MODE_BASIC, ADDR_MODE_IO_ALONE};
pub use runtime::{DevStat, Runtime};

/// The version strings of the runtime libraries `libs` names, loading them for this process
/// (the one runtime it may use: see [`Runtime::open`]).
pub fn runtime_versions(libs: &crate::toolchain::RuntimeLibs) -> anyhow::Result<LibVersions> {
    loader::versions(libs)
}
