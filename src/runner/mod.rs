//! The LLM pipeline on a combined bmodel (our own or TPU-MLIR llm_convert.py's), on the CPU
//! simulator or a device, and what is built on it: `verify` against the reference.

pub mod bench;
pub mod bench_report;
pub mod image_prompt;
mod intern_prompt;
pub mod multimodal;
mod nets;
mod pipeline;
pub mod sample;
mod session;
pub mod verify;
mod verify_image;
pub mod verify_report;
pub mod vision;

pub use nets::LlmNets;
pub use pipeline::{Pipeline, StepResult};
pub use sample::SamplingConfig;
pub use session::{simulated_label, LoadedBmodel};
