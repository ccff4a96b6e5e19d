//! Error categories that decide the process exit code ([`crate::exit::ExitStatus`]).
//!
//! Bad input (a broken model folder, a config we cannot read, a missing tensor) exits with 2 so
//! scripts can tell "fix your input" apart from "the tool or toolchain failed" (exit 1).

use std::path::PathBuf;

/// A problem with what the user gave us. Always names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: not found ({what})")]
    Missing { path: PathBuf, what: String },
    #[error("{path}: {problem}\n  fix: {fix}")]
    Invalid {
        path: PathBuf,
        problem: String,
        fix: String,
    },
}

impl InputError {
    pub fn missing(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        InputError::Missing {
            path: path.into(),
            what: what.into(),
        }
    }

    pub fn invalid(
        path: impl Into<PathBuf>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        InputError::Invalid {
            path: path.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}
