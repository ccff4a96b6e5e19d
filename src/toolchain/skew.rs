//! Version skew between a bmodel and the runtime about to run it (`doctor BMODEL`, and the start
//! of `verify` / `bench` / `generate` / `chat`): the compiler and format that wrote the bmodel,
//! its chip and net set, against the loaded libbmrt/libbmlib (the toolchain's simulator, or on a
//! device the system's libsophon and driver). Each mismatch says what to install or rebuild.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::layout::Layout;
use super::runtime::{RuntimeLibs, LIBSOPHON_LIB};
use super::simulator;
use crate::bmodel::{version::first_dotted_number, BmodelVersion, Summary};
use crate::bmrt::LibVersions;

/// Where a device's kernel driver reports its version (what libbmrt itself reads).
const DRIVER_VERSION_FILE: &str = "/proc/bmsophon/driver_version";

/// A skew that stops `verify`/`bench`/`generate`/`chat` before libbmrt sees the bmodel; exits 4.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SkewError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Match,
    Skew,
    /// Nothing to compare against here (e.g. a device's driver on the simulator).
    Unchecked,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkewCheck {
    pub name: &'static str,
    pub status: Status,
    /// A skew the runtime cannot run through (it would refuse or misread the bmodel).
    pub fatal: bool,
    pub detail: String,
    /// What to install or rebuild; empty unless skewed.
    pub fix: String,
}

#[derive(Debug, Serialize)]
pub struct VersionReport {
    pub bmodel: PathBuf,
    pub chip: String,
    pub cores: u32,
    pub bmodel_version: String,
    pub bmodel_format: Option<String>,
    pub compiler: Option<String>,
    pub nets: Vec<String>,
    pub runtime: String,
    /// The TPU-MLIR release the simulator libraries come from (simulator only).
    pub runtime_tpu_mlir: Option<String>,
    pub runtime_bmodel_format: Option<String>,
    pub libbmrt: Option<String>,
    pub libbmlib: Option<String>,
    /// A device's libsophon release and kernel driver version, when readable.
    pub libsophon: Option<String>,
    pub driver: Option<String>,
    pub checks: Vec<SkewCheck>,
    #[serde(skip)]
    pub libs: Option<RuntimeLibs>,
}

impl VersionReport {
    pub fn matching(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Skew)
    }

    /// The libraries to run the bmodel with, after printing every non-fatal skew as a warning
    /// on stderr; a fatal one is a [`SkewError`].
    pub fn enforce(&self) -> Result<RuntimeLibs, SkewError> {
        let skews = self.checks.iter().filter(|c| c.status == Status::Skew);
        let mut fatal = vec![];
        for c in skews {
            if c.fatal {
                fatal.push(format!("{}: {}\n  fix: {}", c.name, c.detail, c.fix));
            } else {
                eprintln!(
                    "warning: {}: {}: {}\n  fix: {}",
                    self.bmodel.display(),
                    c.name,
                    c.detail,
                    c.fix
                );
            }
        }
        match (&self.libs, fatal.is_empty()) {
            (Some(libs), true) => Ok(libs.clone()),
            _ => Err(SkewError(format!(
                "{}: cannot run on the {}: {}",
                self.bmodel.display(),
                self.runtime,
                fatal.join("; ")
            ))),
        }
    }
}

/// Compares the bmodel (`summary`, from its header) with the runtime `base` selects, loading
/// that runtime's libraries for this process (the chip's simulator on the simulator). Fails only
/// when the libraries cannot be loaded.
pub fn check(
    layout: &Layout,
    base: &RuntimeLibs,
    bmodel: &Path,
    summary: &Summary,
) -> anyhow::Result<VersionReport> {
    let version = BmodelVersion::parse(&summary.version);
    let mut checks = vec![];
    // A chip without a simulator is a skew; a toolchain that cannot provide one is a failure.
    let libs = if base.is_simulator() && simulator::cmodel_for(&summary.chip).is_none() {
        checks.push(skew(
            "chip",
            true,
            format!(
                "no CPU simulator for {}: the simulator runs BM1684X, BM1688 and CV186X",
                summary.chip
            ),
            "convert for one of those (`-c bm1684x`, bm1688 or cv186x), or run it on a device \
             (`--runtime device`)"
                .into(),
        ));
        None
    } else {
        Some(base.for_chip(layout, &summary.chip)?)
    };
    let lib_versions = match &libs {
        Some(l) => crate::bmrt::runtime_versions(l)?,
        None => LibVersions::default(),
    };
    let simulated = base.is_simulator();
    let runtime_tpu_mlir = if simulated {
        layout.installed_version()
    } else {
        None
    };
    let (libsophon, driver) = if simulated {
        (None, None)
    } else {
        (libsophon_release(base.dir()), read_driver_version())
    };
    if let Some(l) = &libs {
        checks.push(chip_check(&summary.chip, l));
    }
    checks.push(format_check(&version, &lib_versions, simulated));
    checks.push(compiler_check(
        &version,
        runtime_tpu_mlir.as_deref(),
        summary,
        simulated,
    ));
    checks.push(build_check(&lib_versions));
    if !simulated {
        checks.push(driver_check(libsophon.as_deref(), driver.as_deref()));
    }
    checks.push(net_set_check(&summary.nets));
    Ok(VersionReport {
        bmodel: bmodel.to_path_buf(),
        chip: summary.chip.clone(),
        cores: summary.cores,
        bmodel_version: summary.version.clone(),
        bmodel_format: version.format,
        compiler: version.compiler,
        nets: summary.nets.clone(),
        runtime: libs.as_ref().unwrap_or(base).describe(),
        runtime_tpu_mlir,
        runtime_bmodel_format: lib_versions.bmodel_format,
        libbmrt: lib_versions.bmrt,
        libbmlib: lib_versions.bmlib,
        libsophon,
        driver,
        checks,
        libs,
    })
}

fn matched(name: &'static str, detail: String) -> SkewCheck {
    SkewCheck {
        name,
        status: Status::Match,
        fatal: false,
        detail,
        fix: String::new(),
    }
}

fn skew(name: &'static str, fatal: bool, detail: String, fix: String) -> SkewCheck {
    SkewCheck {
        name,
        status: Status::Skew,
        fatal,
        detail,
        fix,
    }
}

fn unchecked(name: &'static str, detail: String) -> SkewCheck {
    SkewCheck {
        name,
        status: Status::Unchecked,
        fatal: false,
        detail,
        fix: String::new(),
    }
}

fn chip_check(chip: &str, libs: &RuntimeLibs) -> SkewCheck {
    match (libs, simulator::cmodel_for(chip)) {
        (RuntimeLibs::Simulator(dir), Some(cmodel)) => matched(
            "chip",
            format!(
                "{chip} runs on the simulator's {cmodel} (from {})",
                dir.display()
            ),
        ),
        _ => unchecked(
            "chip",
            format!("{chip}: libbmrt compares it with the device's when it loads the bmodel"),
        ),
    }
}

/// `2.2` < `2.10`: dotted numbers compared numerically.
fn numeric(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

fn format_check(v: &BmodelVersion, libs: &LibVersions, simulated: bool) -> SkewCheck {
    let upgrade = if simulated {
        "install the TPU-MLIR release that wrote the bmodel and point `--runtime` at its \
         tpu_mlir/lib, or rebuild the bmodel with this llm-convert"
    } else {
        "upgrade the runtime (the sophon-libsophon package of the release matching the TPU-MLIR \
         that wrote the bmodel), or rebuild the bmodel with the TPU-MLIR matching your libsophon"
    };
    match (&v.format, &libs.bmodel_format) {
        (Some(b), Some(r)) if b == r => matched("bmodel format", format!("{b}, libbmrt reads {r}")),
        (Some(b), Some(r)) => {
            let newer = numeric(b) > numeric(r);
            let detail = format!(
                "the bmodel is format {b}, libbmrt reads format {r}{}",
                if newer {
                    ": the bmodel is newer than the runtime"
                } else {
                    ""
                }
            );
            skew("bmodel format", newer, detail, upgrade.into())
        }
        (None, _) => skew(
            "bmodel format",
            false,
            format!(
                "the bmodel's version {:?} names no format (x.y+v...)",
                v.raw
            ),
            "rebuild the bmodel with this llm-convert".into(),
        ),
        (Some(b), None) => unchecked(
            "bmodel format",
            format!("{b}; this libbmrt does not say which format it reads (no BMODEL_VERSION)"),
        ),
    }
}

fn compiler_check(
    v: &BmodelVersion,
    runtime_tpu_mlir: Option<&str>,
    summary: &Summary,
    simulated: bool,
) -> SkewCheck {
    let chip = summary.chip.to_ascii_lowercase();
    let rebuild = |ours: &str| {
        format!(
            "rebuild the bmodel with this llm-convert (TPU-MLIR {ours}): `llm-convert -m <model> \
             -c {chip} --num_core {} ...`, or run it with the runtime of the TPU-MLIR release \
             that wrote it (`pip install tpu_mlir==<version>`, then `--runtime <its tpu_mlir/lib>`)",
            summary.cores.max(1)
        )
    };
    match (v.compiler.as_deref(), runtime_tpu_mlir) {
        (Some(b), Some(r)) if b == r => {
            matched("compiler", format!("TPU-MLIR {b} = runtime's {r}"))
        }
        (Some(b), Some(r)) => skew(
            "compiler",
            false,
            format!("the bmodel was compiled by TPU-MLIR {b}, the runtime is TPU-MLIR {r}'s"),
            rebuild(r),
        ),
        (None, Some(r)) => skew(
            "compiler",
            false,
            format!("the bmodel's version {:?} names no TPU-MLIR release", v.raw),
            rebuild(r),
        ),
        (b, None) if !simulated => unchecked(
            "compiler",
            format!(
                "TPU-MLIR {}; a device runtime does not name the TPU-MLIR release it pairs with \
                 (LLM-TPU pairs each TPU-MLIR release with a libsophon release)",
                b.unwrap_or("(unknown)")
            ),
        ),
        (b, None) => unchecked(
            "compiler",
            format!(
                "TPU-MLIR {}; the toolchain does not say which release it is",
                b.unwrap_or("(unknown)")
            ),
        ),
    }
}

/// `commit:ee6becb0` in a version banner.
fn commit_of(banner: &str) -> Option<&str> {
    let rest = &banner[banner.find("commit:")? + "commit:".len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

fn build_check(libs: &LibVersions) -> SkewCheck {
    let name = "libbmrt/libbmlib";
    match (
        libs.bmrt.as_deref().and_then(commit_of),
        libs.bmlib.as_deref().and_then(commit_of),
    ) {
        (Some(r), Some(l)) if r.starts_with(l) || l.starts_with(r) => {
            matched(name, format!("one build (commit {r})"))
        }
        (Some(r), Some(l)) => skew(
            name,
            false,
            format!("libbmrt is commit {r}, libbmlib commit {l}: two different builds"),
            "install libbmrt and libbmlib from one release (one libsophon package, or one \
             TPU-MLIR toolchain); do not mix folders on LD_LIBRARY_PATH"
                .into(),
        ),
        _ => unchecked(name, "the libraries do not name their build".into()),
    }
}

fn driver_check(libsophon: Option<&str>, driver: Option<&str>) -> SkewCheck {
    let name = "driver";
    match (libsophon, driver.and_then(first_dotted_number)) {
        (Some(l), Some(d)) if l == d => matched(name, format!("driver {d} = libsophon {l}")),
        (Some(l), Some(d)) => skew(
            name,
            false,
            format!("the kernel driver is {d}, libsophon is {l}"),
            "install the sophon-driver and sophon-libsophon packages of one release, then \
             reload the driver (or reboot)"
                .into(),
        ),
        (_, None) => unchecked(
            name,
            format!("{DRIVER_VERSION_FILE} is not readable (no device driver loaded?)"),
        ),
        (None, Some(d)) => unchecked(
            name,
            format!("driver {d}; the libsophon release is unknown (not under /opt/sophon)"),
        ),
    }
}

/// The nets the runner drives: embedding, embedding_cache, lm_head, and block_i with
/// block_cache_i for every layer i from 0.
fn net_set_check(nets: &[String]) -> SkewCheck {
    let name = "net set";
    let indices = |prefix: &str| {
        let mut v: Vec<usize> = nets
            .iter()
            .filter_map(|n| n.strip_prefix(prefix)?.parse().ok())
            .collect();
        v.sort_unstable();
        v
    };
    let (blocks, caches) = (indices("block_"), indices("block_cache_"));
    let mut missing: Vec<String> = ["embedding", "embedding_cache", "lm_head"]
        .iter()
        .filter(|n| !nets.iter().any(|x| x == *n))
        .map(|n| n.to_string())
        .collect();
    let layers = blocks.iter().chain(&caches).max().map_or(0, |m| m + 1);
    for i in 0..layers.max(1) {
        for (prefix, have) in [("block_", &blocks), ("block_cache_", &caches)] {
            if !have.contains(&i) {
                missing.push(format!("{prefix}{i}"));
            }
        }
    }
    let layer_net = |n: &str| {
        ["block_", "block_cache_"].iter().any(|p| {
            n.strip_prefix(p)
                .is_some_and(|r| r.parse::<usize>().is_ok())
        })
    };
    let others: Vec<&str> = nets
        .iter()
        .map(String::as_str)
        .filter(|n| !["embedding", "embedding_cache", "lm_head"].contains(n) && !layer_net(n))
        .collect();
    let extra = if others.is_empty() {
        String::new()
    } else {
        format!(", and {}", others.join(", "))
    };
    if missing.is_empty() {
        matched(
            name,
            format!(
                "embedding, embedding_cache, lm_head, {layers} x (block_i, block_cache_i){extra}"
            ),
        )
    } else {
        skew(
            name,
            false,
            format!(
                "not an LLM bmodel the runner drives: no {}",
                missing.join(", ")
            ),
            "convert the model with llm-convert (or TPU-MLIR's llm_convert.py) into one \
             combined bmodel"
                .into(),
        )
    }
}

/// The libsophon release a device runtime folder belongs to: `/opt/sophon/libsophon-0.5.1/lib`
/// (what `libsophon-current` links to).
fn libsophon_release(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let release = dir.parent()?.file_name()?.to_string_lossy().into_owned();
    release
        .strip_prefix("libsophon-")
        .and_then(first_dotted_number)
        .or_else(|| (dir == Path::new(LIBSOPHON_LIB)).then(|| "current".to_string()))
        .filter(|v| v != "current")
}

fn read_driver_version() -> Option<String> {
    std::fs::read_to_string(DRIVER_VERSION_FILE)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_runner_needs_every_layer() {
        let good = names(&[
            "embedding",
            "embedding_cache",
            "block_0",
            "block_cache_0",
            "block_1",
            "block_cache_1",
            "lm_head",
            "greedy_head",
        ]);
        let c = net_set_check(&good);
        assert_eq!(c.status, Status::Match, "{c:?}");
        assert!(
            c.detail.contains("2 x") && c.detail.contains("greedy_head"),
            "{c:?}"
        );
        let gap = names(&[
            "embedding",
            "embedding_cache",
            "block_0",
            "block_cache_1",
            "lm_head",
        ]);
        let c = net_set_check(&gap);
        assert_eq!(c.status, Status::Skew);
        assert!(
            c.detail.contains("block_cache_0") && c.detail.contains("block_1"),
            "{c:?}"
        );
        let c = net_set_check(&names(&["main"]));
        assert!(
            c.detail.contains("embedding") && c.detail.contains("block_0"),
            "{c:?}"
        );
    }

    #[test]
    fn formats_and_builds_compare() {
        let libs = LibVersions {
            bmodel_format: Some("2.2".into()),
            bmrt: Some("libbmrt_version:1.0.0, branch:master,commit:ee6becb0 ,compiled".into()),
            bmlib: Some("libbmlib_version:1.0.0, branch:master, commit:ee6becb05d2, ...".into()),
        };
        let v = BmodelVersion::parse("B.2.2+v1.30.2-20260831");
        assert_eq!(format_check(&v, &libs, true).status, Status::Match);
        let newer = format_check(&BmodelVersion::parse("B.2.10+v9.0.0"), &libs, true);
        assert!(newer.status == Status::Skew && newer.fatal, "{newer:?}");
        let older = format_check(&BmodelVersion::parse("B.2.1+v1.0.0"), &libs, true);
        assert!(older.status == Status::Skew && !older.fatal, "{older:?}");
        assert_eq!(build_check(&libs).status, Status::Match);
        let mixed = LibVersions {
            bmlib: Some("libbmlib_version:1.0.0, commit:0123abc".into()),
            ..libs
        };
        assert_eq!(build_check(&mixed).status, Status::Skew);
    }

    #[test]
    fn driver_against_libsophon() {
        let c = driver_check(
            Some("0.5.1"),
            Some("release version:0.5.1 release date:2024"),
        );
        assert_eq!(c.status, Status::Match, "{c:?}");
        assert_eq!(
            driver_check(Some("0.5.1"), Some("0.4.9")).status,
            Status::Skew
        );
        assert_eq!(driver_check(Some("0.5.1"), None).status, Status::Unchecked);
    }
}
