//! The process exit statuses, one named type for every command (the shape of ripgrep's and
//! uv's `ExitStatus`): scripts tell "fix your input" (2) and "verify found the bmodel wrong"
//! (3) apart from "the tool or toolchain failed" (1).

use crate::error::InputError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// The command did what was asked.
    Success,
    /// The tool, the toolchain or a check (`doctor`) failed.
    Failure,
    /// What the user gave us is wrong ([`InputError`]); the message says how to fix it.
    BadInput,
    /// `verify` ran, and the bmodel is below the thresholds.
    BelowThreshold,
    /// Ctrl-C (128 + SIGINT, as shells report it).
    Interrupted,
}

impl ExitStatus {
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::BadInput => 2,
            ExitStatus::BelowThreshold => 3,
            ExitStatus::Interrupted => 130,
        }
    }

    /// `Success` when `ok`, else `Failure`.
    pub fn ok_if(ok: bool) -> ExitStatus {
        if ok {
            ExitStatus::Success
        } else {
            ExitStatus::Failure
        }
    }

    /// An error's status: `BadInput` when any cause in the chain is an [`InputError`].
    pub fn of_error(err: &anyhow::Error) -> ExitStatus {
        if err
            .chain()
            .any(|e| e.downcast_ref::<InputError>().is_some())
        {
            ExitStatus::BadInput
        } else {
            ExitStatus::Failure
        }
    }

    /// Ends the process with this status.
    pub fn exit(self) -> ! {
        std::process::exit(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_errors_anywhere_in_the_chain_are_bad_input() {
        let e = anyhow::Error::from(InputError::missing("x", "a file")).context("opening");
        assert_eq!(ExitStatus::of_error(&e), ExitStatus::BadInput);
        assert_eq!(ExitStatus::of_error(&e).code(), 2);
        let e = anyhow::anyhow!("tool crashed");
        assert_eq!(ExitStatus::of_error(&e).code(), 1);
    }
}
