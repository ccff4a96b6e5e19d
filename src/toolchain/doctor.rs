//! `llm-convert doctor`: is the toolchain usable, and if not, what to run to fix it.
//! `llm-convert doctor BMODEL`: does that bmodel match the runtime ([`super::skew`]).

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::env::command;
use super::layout::{Layout, TPU_MLIR_VERSION};
use super::runtime::{RuntimeArg, RuntimeLibs};
use crate::exit::ExitStatus;

const FIX_INSTALL: &str = "run `llm-convert toolchain install` (or scripts/setup.sh)";

/// `doctor`'s flags.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Exit status: 0 all checks pass (with BMODEL: the bmodel matches the \
    runtime), 1 a toolchain check failed or the runtime cannot be loaded, 2 BMODEL is not a \
    readable bmodel, 4 BMODEL and the runtime are skewed (version, chip or net set)."
)]
pub struct DoctorArgs {
    /// A bmodel to check against the runtime instead: its compiler version, format, chip and
    /// net set against libbmrt/libbmlib (and on a device, the driver).
    pub bmodel: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArg,
}

impl DoctorArgs {
    /// Runs every check and prints the report; fails (exit 1) unless all pass.
    pub fn run(&self, layout: &Layout) -> anyhow::Result<ExitStatus> {
        if let Some(bmodel) = &self.bmodel {
            return super::doctor_bmodel::run(
                layout,
                &self.runtime.libs(layout),
                bmodel,
                self.json,
            );
        }
        let report = run(layout, &self.runtime.libs(layout));
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print(&report);
        }
        Ok(ExitStatus::ok_if(report.ok()))
    }
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// What was found (version, path), or what went wrong.
    pub detail: String,
    /// How to fix it; empty when ok.
    pub fix: String,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub tpu_mlir_version: &'static str,
    pub toolchain_dir: PathBuf,
    pub tpuc_root: PathBuf,
    pub venv: PathBuf,
    pub python: PathBuf,
    pub runtime: String,
    pub checks: Vec<Check>,
    /// Which compile backends this toolchain can run: `native` (tpuc-opt directly) and `onnx`
    /// (TPU-MLIR's Python tools, which a `--native` install leaves out).
    pub backends: Vec<Backend>,
}

#[derive(Debug, Serialize)]
pub struct Backend {
    pub name: &'static str,
    pub usable: bool,
}

/// The checks each backend needs to pass (the ONNX one also needs the native one's).
const NATIVE_NEEDS: &[&str] = &[
    "toolchain installed",
    "TPU-MLIR version",
    "tpuc-opt --version",
    "model_tool runs",
    "libbmrt/libbmlib load",
    "cmake (PPL JIT for FAttention)",
];
const PYTHON_CHECKS: &[&str] = &[
    "python 3.10 venv",
    "model_transform.py -h",
    "model_deploy.py -h",
];

impl Report {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

pub fn run(layout: &Layout, runtime: &RuntimeLibs) -> Report {
    let native_only = super::install_native::is_native_only(layout);
    let mut checks = vec![];
    let mut check = |name: &str, fix: &str, f: &dyn Fn() -> Result<String, String>| {
        let t0 = Instant::now();
        let r = if native_only && PYTHON_CHECKS.contains(&name) {
            Ok(
                "skipped: native-only install (`llm-convert toolchain install` adds the ONNX \
                backend's Python)"
                    .to_string(),
            )
        } else {
            f()
        };
        checks.push(Check {
            name: name.into(),
            ok: r.is_ok(),
            fix: if r.is_ok() { String::new() } else { fix.into() },
            detail: r.unwrap_or_else(|e| e),
            seconds: t0.elapsed().as_secs_f64(),
        });
    };
    check("toolchain installed", FIX_INSTALL, &|| {
        if layout.is_installed() {
            Ok(format!("{} (stamp present)", layout.root.display()))
        } else {
            Err(format!(
                "{} has no completed install",
                layout.root.display()
            ))
        }
    });
    check("python 3.10 venv", FIX_INSTALL, &|| {
        run_out(command(
            layout,
            layout.python(),
            [
                "-c",
                "import sys; print(sys.version.split()[0], sys.executable)",
            ],
        ))
        .and_then(|v| {
            if v.starts_with("3.10") {
                Ok(v)
            } else {
                Err(format!("wrong python: {v}"))
            }
        })
    });
    check(
        "TPU-MLIR version",
        FIX_INSTALL,
        &|| match layout.installed_version() {
            Some(v) if v == TPU_MLIR_VERSION => Ok(v),
            Some(v) => Err(format!(
                "found TPU-MLIR {v}, this llm-convert is pinned to {TPU_MLIR_VERSION}"
            )),
            None => Err(format!(
                "no tpu_mlir dist-info in {}",
                layout.site_packages().display()
            )),
        },
    );
    check("tpuc-opt --version", FIX_INSTALL, &|| {
        let v = run_out(command(layout, layout.tool("tpuc-opt"), ["--version"]))?;
        match v.lines().find(|l| l.contains("LLVM version")) {
            Some(l) => Ok(l.trim().to_string()),
            None => Err(format!("unexpected output: {}", tail(&v, 3))),
        }
    });
    check("model_tool runs", FIX_INSTALL, &|| {
        // model_tool prints its usage (and exits non-zero) without arguments: usage text = it runs.
        let out = command(layout, layout.tool("model_tool"), Vec::<String>::new())
            .stderr_to_stdout()
            .stdout_capture()
            .unchecked()
            .run()
            .map_err(|e| format!("cannot start {}: {e}", layout.tool("model_tool").display()))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("--combine") {
            Ok("usage printed, --combine available".into())
        } else {
            Err(format!("unexpected output: {}", tail(&text, 3)))
        }
    });
    for tool in ["model_transform.py", "model_deploy.py"] {
        check(&format!("{tool} -h"), FIX_INSTALL, &|| {
            let out = run_out(command(
                layout,
                layout.python(),
                [layout.python_tool(tool).into_os_string(), "-h".into()],
            ))?;
            if out.contains("usage:") {
                Ok("imports and parses arguments".into())
            } else {
                Err(tail(&out, 5))
            }
        });
    }
    check("libbmrt/libbmlib load", FIX_INSTALL, &|| {
        runtime.try_load().map_err(|e| format!("{e:#}"))
    });
    check(
        "cmake (PPL JIT for FAttention)",
        "run `apt-get install -y cmake` (or `llm-convert toolchain install`)",
        &|| {
            find_on_path("cmake")
                .map(|p| p.display().to_string())
                .ok_or_else(|| "cmake not on PATH".into())
        },
    );
    check(
        "libclang (bindgen)",
        "run `apt-get install -y libclang-dev` (or `llm-convert toolchain install`)",
        &|| {
            find_libclang()
                .map(|p| p.display().to_string())
                .ok_or_else(|| "no libclang.so found".into())
        },
    );
    let passed = |names: &[&str]| {
        names
            .iter()
            .all(|n| checks.iter().any(|c| c.name == *n && c.ok))
    };
    let native = passed(NATIVE_NEEDS);
    let backends = vec![
        Backend {
            name: "native",
            usable: native,
        },
        Backend {
            name: "onnx",
            usable: native && !native_only && passed(PYTHON_CHECKS),
        },
    ];
    Report {
        backends,
        tpu_mlir_version: TPU_MLIR_VERSION,
        toolchain_dir: layout.root.clone(),
        tpuc_root: layout.tpuc_root(),
        venv: layout.venv(),
        python: layout.python(),
        runtime: runtime.describe(),
        checks,
    }
}

pub fn print(report: &Report) {
    println!(
        "TPU-MLIR {}  toolchain: {}",
        report.tpu_mlir_version,
        report.toolchain_dir.display()
    );
    println!("TPUC_ROOT: {}", report.tpuc_root.display());
    println!("venv: {}", report.venv.display());
    println!("runtime: {}", report.runtime);
    let usable: Vec<&str> = report
        .backends
        .iter()
        .map(|b| if b.usable { b.name } else { "" })
        .filter(|n| !n.is_empty())
        .collect();
    println!(
        "backends usable: {}",
        if usable.is_empty() {
            "none".to_string()
        } else {
            usable.join(", ")
        }
    );
    for c in &report.checks {
        let mark = if c.ok { "ok  " } else { "FAIL" };
        println!("[{mark}] {:<32} {} ({:.1} s)", c.name, c.detail, c.seconds);
        if !c.ok {
            println!("       fix: {}", c.fix);
        }
    }
    let failed = report.checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        println!("all {} checks passed", report.checks.len());
    } else {
        println!("{failed} of {} checks failed", report.checks.len());
    }
}

fn run_out(e: duct::Expression) -> Result<String, String> {
    let out = e
        .stderr_to_stdout()
        .stdout_capture()
        .unchecked()
        .run()
        .map_err(|e| format!("cannot start: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("exit {}: {}", out.status, tail(&text, 5)))
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// bindgen needs a loadable libclang and clang's builtin headers (stddef.h), which is what
/// Debian's libclang-dev brings.
fn find_libclang() -> Option<PathBuf> {
    let llvm_dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("llvm-"))
        })
        .collect();
    llvm_dirs.iter().find_map(|d| {
        let lib = d.join("lib").join("libclang.so");
        let headers = std::fs::read_dir(d.join("lib").join("clang"))
            .ok()?
            .flatten()
            .any(|v| v.path().join("include").join("stddef.h").exists());
        (lib.exists() && headers).then_some(lib)
    })
}
