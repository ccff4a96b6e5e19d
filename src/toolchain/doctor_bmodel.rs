//! `llm-convert doctor BMODEL`: the bmodel's versions, chip and nets against the runtime's, as
//! a report; exit 0 when they match, 4 when skewed, 2 when BMODEL is no readable bmodel.

use std::path::Path;

use super::layout::Layout;
use super::runtime::RuntimeLibs;
use super::skew::{self, Status, VersionReport};
use crate::error::InputError;
use crate::exit::ExitStatus;

pub fn run(
    layout: &Layout,
    base: &RuntimeLibs,
    bmodel: &Path,
    json: bool,
) -> anyhow::Result<ExitStatus> {
    if !bmodel.is_file() {
        return Err(InputError::missing(bmodel, "the bmodel to check").into());
    }
    let summary = crate::bmodel::check_file(bmodel)?;
    let report = skew::check(layout, base, bmodel, &summary)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    Ok(if report.matching() {
        ExitStatus::Success
    } else {
        ExitStatus::VersionSkew
    })
}

fn print(r: &VersionReport) {
    let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unknown)".into());
    println!("bmodel: {}", r.bmodel.display());
    println!(
        "  version {} (format {}, TPU-MLIR {}), chip {}, {} core(s), {} nets",
        r.bmodel_version,
        or_unknown(&r.bmodel_format),
        or_unknown(&r.compiler),
        r.chip,
        r.cores.max(1),
        r.nets.len()
    );
    println!("runtime: {}", r.runtime);
    if let Some(v) = &r.runtime_tpu_mlir {
        println!("  TPU-MLIR {v}");
    }
    println!(
        "  libbmrt reads bmodel format {}",
        or_unknown(&r.runtime_bmodel_format)
    );
    println!("  {}", or_unknown(&r.libbmrt));
    println!("  {}", or_unknown(&r.libbmlib));
    if r.libsophon.is_some() || r.driver.is_some() {
        println!(
            "  libsophon {}, driver {}",
            or_unknown(&r.libsophon),
            or_unknown(&r.driver)
        );
    }
    for c in &r.checks {
        let mark = match c.status {
            Status::Match => "ok  ",
            Status::Skew => "SKEW",
            Status::Unchecked => "--  ",
        };
        println!("[{mark}] {:<18} {}", c.name, c.detail);
        if c.status == Status::Skew {
            println!("       fix: {}", c.fix);
        }
    }
    let skews = r.checks.iter().filter(|c| c.status == Status::Skew).count();
    if skews == 0 {
        println!("the bmodel matches the runtime");
    } else {
        println!("{skews} skew(s) between the bmodel and the runtime (exit 4)");
    }
}
