//! llm-convert: Hugging Face LLMs → Sophgo TPU bmodels, with a golden reference to prove them.
//! See support/docs/ARCHITECTURE.md for how the modules fit.

pub mod arch;
pub mod bmodel;
pub mod bmrt;
pub mod chat;
pub mod cli;
pub mod convert;
pub mod error;
pub mod exit;
pub mod export;
pub mod family;
pub mod file_stamp;
pub mod golden;
pub mod graph;
pub mod model;
pub mod native;
pub mod onnx;
pub mod reference;
pub mod runner;
pub mod toolchain;
pub mod util;
pub mod vision;
