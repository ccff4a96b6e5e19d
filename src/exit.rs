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
    /// The bmodel and the runtime do not match (`doctor BMODEL`; a fatal skew when a command
    /// starts): [`crate::toolchain::skew`].
    VersionSkew,
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
            ExitStatus::VersionSkew => 4,
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
        } else if err.chain().any(|e| {
            e.downcast_ref::<crate::toolchain::skew::SkewError>()
                .is_some()
        }) {
            ExitStatus::VersionSkew
        } else {
            ExitStatus::Failure
        }
    }

    /// Ends the process with this status.
    pub fn exit(self) -> ! {
        std::process::exit(self.code())
    }
}

/// Where the main thread's last panic happened (the hook runs before the unwind is caught).
static PANIC_AT: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Replaces the default panic report (a backtrace hint addressed to developers) with one
/// line, kept for [`report_panic`]; with `RUST_BACKTRACE` set, the default report stays.
pub fn quiet_panics() {
    if std::env::var_os("RUST_BACKTRACE").is_some() {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        match thread.name() {
            Some("main") => {
                if let Ok(mut slot) = PANIC_AT.lock() {
                    *slot = Some(at);
                }
            }
            name => eprintln!(
                "error: thread {} panicked at {at}: {}",
                name.unwrap_or("<unnamed>"),
                payload_text(info.payload())
            ),
        }
    }));
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// The last line of defence against hostile input: a panic caught at the command boundary.
/// Every known panic has a check in front of it, so one that still happens is a bug, but
/// almost surely one triggered by a value in an input file: it is reported as bad input (2)
/// naming the files and folders on the command line, or as a failure (1) when there are none.
pub fn report_panic(payload: &(dyn std::any::Any + Send)) -> ExitStatus {
    let at = PANIC_AT
        .lock()
        .ok()
        .and_then(|mut slot| slot.take())
        .map(|at| format!(" (at {at})"))
        .unwrap_or_default();
    let inputs: Vec<String> = std::env::args_os()
        .skip(1)
        .filter(|a| std::path::Path::new(a).exists())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let msg = payload_text(payload);
    if inputs.is_empty() {
        eprintln!("error: llm-convert panicked: {msg}{at}\n  this is a bug in llm-convert: please report it");
        return ExitStatus::Failure;
    }
    eprintln!(
        "error: {}: llm-convert panicked reading it: {msg}{at}\n  fix: the input likely holds a value llm-convert fails to check (a bug: please report it with the file); check or re-download it",
        inputs.join(", ")
    );
    ExitStatus::BadInput
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
