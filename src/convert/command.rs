//! The convert command: Ctrl-C handling, the run, and its summary (or the manifest as JSON).

use anyhow::Result;

use super::{convert, run_mode, ConvertArgs, Mode, Outcome};
use crate::exit::ExitStatus;
use crate::toolchain::Layout;

pub fn run(args: &ConvertArgs, layout: &Layout) -> Result<()> {
    run_in(args, layout, Mode::Convert)
}

/// `plan`, `combine` or a conversion.
pub fn run_in(args: &ConvertArgs, layout: &Layout, mode: Mode) -> Result<()> {
    // Ctrl-C: kill every TPU-MLIR process we started (they live in their own process groups).
    let _ = ctrlc::set_handler(|| {
        super::worker::kill_all_children();
        eprintln!("interrupted: finished pieces stay cached; rerun the same command to resume");
        ExitStatus::Interrupted.exit();
    });
    let outcome = match mode {
        Mode::Convert => convert(args, layout, args.json)?,
        _ => run_mode(args, layout, args.json, &|runner| runner, mode)?,
    };
    if let Some(outcome) = outcome {
        print_outcome(&outcome, args.json)?;
    }
    Ok(())
}

fn print_outcome(outcome: &Outcome, json: bool) -> Result<()> {
    let m = &outcome.manifest;
    if json {
        println!("{}", serde_json::to_string_pretty(m)?);
        return Ok(());
    }
    let cached = m.pieces.iter().filter(|p| p.cached).count();
    let exported = m.pieces.iter().filter(|p| p.exported).count();
    println!(
        "bmodel: {} ({:.1} MB)",
        m.bmodel.display(),
        m.bmodel_bytes as f64 / 1e6
    );
    println!("manifest: {}", outcome.manifest_path.display());
    let combine = if m.up_to_date {
        "bmodel up to date (not combined again)".to_string()
    } else {
        format!("combine {:.1} s", m.timings.combine_s)
    };
    println!(
        "{} pieces ({} compiled, {} from cache) in {:.1} s: export {:.1} s ({} exported), compile {:.1} s on {} workers, {combine}",
        m.pieces.len(),
        m.pieces.len() - cached,
        cached,
        m.timings.total_s,
        m.timings.export_s,
        exported,
        m.timings.compile_s,
        m.timings.workers,
    );
    Ok(())
}
