//! Which CPU simulator (cmodel) runs a bmodel of a given chip, and a library folder that makes
//! libbmlib load it.
//!
//! TPU-MLIR's own runner (`python/tools/model_runner.py`, `get_cmodel_so`/`link_cmodel_so`)
//! re-points `$TPUC_ROOT/lib/libcmodel.so` at `libcmodel_<chip>.so` before each run (BM1688 and
//! CV186X share `libcmodel_bm1688.so`) and keeps the bm1684x variant of libbmlib for both. The
//! simulator's libbmlib dlopens `libcmodel.so` by name through its RUNPATH (`$ORIGIN`), so the
//! folder libbmlib is loaded from decides the cmodel. We never edit the shared toolchain folder
//! (other processes may be running from it); for a chip whose cmodel is not the folder's own
//! `libcmodel.so`, we load from `<toolchain>/simulator/<cmodel>/lib` (`simulator/bm1688/lib`
//! for BM1688 and CV186X): links to every file of
//! `$TPUC_ROOT/lib`, except `libcmodel.so`, which links to that chip's cmodel. glibc takes
//! `$ORIGIN` from the path a library was opened by, without resolving links.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::layout::Layout;

/// The cmodel file TPU-MLIR 1.30.2 runs `chip` (as a bmodel names it: `BM1688`) on, for the
/// chips llm-convert targets.
pub fn cmodel_for(chip: &str) -> Option<&'static str> {
    match chip.to_ascii_uppercase().as_str() {
        "BM1684X" => Some("libcmodel_bm1684x.so"),
        "BM1688" | "CV186X" => Some("libcmodel_bm1688.so"),
        _ => None,
    }
}

/// The simulator's libbmlib (its bm1684x variant, the one TPU-MLIR keeps for these chips)
/// sends device-to-device copies to the firmware in a layout the BM1688 cmodel does not read
/// (it asserts `num > 0` in `sg_api_memcpy_byte`); host copies and memset work. On those
/// chips the runtime copies device to device through the host.
pub fn needs_host_d2d(chip: &str) -> bool {
    matches!(chip.to_ascii_uppercase().as_str(), "BM1688" | "CV186X")
}

/// The folder to load the simulator's libbmrt/libbmlib from for a bmodel of `chip`.
pub fn lib_dir_for(layout: &Layout, chip: &str) -> Result<PathBuf> {
    let lib = layout.lib_dir();
    let Some(cmodel) = cmodel_for(chip) else {
        bail!(
            "no CPU simulator for chip {chip}: llm-convert runs bm1684x, bm1688 and cv186x \
             bmodels on TPU-MLIR's cmodel; convert with `-c bm1684x` (or bm1688, cv186x), or \
             run it on a device with `--runtime device`"
        );
    };
    let target = lib.join(cmodel);
    if !target.is_file() {
        bail!(
            "{} is missing: the toolchain has no simulator for {chip}; reinstall it \
             (`llm-convert toolchain install`)",
            target.display()
        );
    }
    if same_contents(&lib.join("libcmodel.so"), &target)? {
        return Ok(lib);
    }
    // Named after the cmodel, not the chip: BM1688 and CV186X share one folder (and process).
    let variant = cmodel
        .trim_start_matches("libcmodel_")
        .trim_end_matches(".so");
    let shadow = layout.root.join("simulator").join(variant).join("lib");
    if !is_shadow_of(&shadow, &lib, &target) {
        build_shadow(&shadow, &lib, &target)
            .with_context(|| format!("preparing the {chip} simulator in {}", shadow.display()))?;
    }
    Ok(shadow)
}

/// Same bytes (the wheel ships `libcmodel.so` as a copy of the bm1684x cmodel, not a link).
fn same_contents(a: &Path, b: &Path) -> Result<bool> {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return Ok(false);
    };
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    Ok(read(a)? == read(b)?)
}

fn is_shadow_of(shadow: &Path, lib: &Path, cmodel: &Path) -> bool {
    let points_to =
        |name: &str, want: &Path| std::fs::read_link(shadow.join(name)).is_ok_and(|t| t == want);
    points_to("libcmodel.so", cmodel)
        && ["libbmlib.so", "libbmrt.so", "third_party"]
            .iter()
            .all(|n| points_to(n, &lib.join(n)))
}

/// Builds the folder under a temporary name and renames it into place, so concurrent
/// processes never see half of one.
fn build_shadow(shadow: &Path, lib: &Path, cmodel: &Path) -> Result<()> {
    let parent = shadow.parent().context("simulator folder has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!("lib.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for entry in std::fs::read_dir(lib).with_context(|| format!("listing {}", lib.display()))? {
        let name = entry?.file_name();
        let target = if name == "libcmodel.so" {
            cmodel.to_path_buf()
        } else {
            lib.join(&name)
        };
        std::os::unix::fs::symlink(&target, tmp.join(&name))
            .with_context(|| format!("linking {}", target.display()))?;
    }
    if shadow.exists() {
        let _ = std::fs::remove_dir_all(shadow);
    }
    if let Err(e) = std::fs::rename(&tmp, shadow) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another process may have published the same folder meanwhile.
        if !is_shadow_of(shadow, lib, cmodel) {
            return Err(e).with_context(|| format!("renaming into {}", shadow.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmodels_follow_tpu_mlir_model_runner() {
        assert_eq!(cmodel_for("BM1684X"), Some("libcmodel_bm1684x.so"));
        assert_eq!(cmodel_for("BM1688"), Some("libcmodel_bm1688.so"));
        assert_eq!(cmodel_for("CV186X"), Some("libcmodel_bm1688.so"));
        assert_eq!(cmodel_for("bm1690"), None);
        assert!(needs_host_d2d("CV186X") && !needs_host_d2d("BM1684X"));
    }

    #[test]
    fn a_shadow_folder_links_everything_but_the_cmodel() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("lib");
        std::fs::create_dir_all(lib.join("third_party")).unwrap();
        for f in [
            "libbmlib.so",
            "libbmrt.so",
            "libcmodel.so",
            "libcmodel_bm1688.so",
        ] {
            std::fs::write(lib.join(f), f).unwrap();
        }
        let shadow = dir.path().join("simulator/bm1688/lib");
        let cmodel = lib.join("libcmodel_bm1688.so");
        assert!(!is_shadow_of(&shadow, &lib, &cmodel));
        build_shadow(&shadow, &lib, &cmodel).unwrap();
        assert!(is_shadow_of(&shadow, &lib, &cmodel));
        let read = |n: &str| std::fs::read_to_string(shadow.join(n)).unwrap();
        assert_eq!(read("libcmodel.so"), "libcmodel_bm1688.so");
        assert_eq!(read("libbmrt.so"), "libbmrt.so");
        // Rebuilding over an existing folder works (a toolchain moved or reinstalled).
        build_shadow(&shadow, &lib, &cmodel).unwrap();
        assert!(is_shadow_of(&shadow, &lib, &cmodel));
    }
}
