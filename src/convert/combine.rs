//! `model_tool --combine` of the piece bmodels into one, its `--info`, and the size sanity check.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::toolchain::{env, Layout};

/// Combines `pieces` (in the runtime's order) into `out`, atomically.
pub fn combine(layout: &Layout, pieces: &[PathBuf], out: &Path) -> Result<()> {
    let dir = out.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        out.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut args: Vec<std::ffi::OsString> = vec!["--combine".into()];
    args.extend(pieces.iter().map(|p| p.as_os_str().to_os_string()));
    args.extend(["-o".into(), tmp.as_os_str().to_os_string()]);
    let res = env::command(layout, layout.tool("model_tool"), args)
        .stderr_to_stdout()
        .stdout_capture()
        .unchecked()
        .run()
        .context("running model_tool --combine")?;
    if !res.status.success() || !tmp.is_file() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "model_tool --combine failed ({}):\n{}",
            res.status,
            String::from_utf8_lossy(&res.stdout)
        );
    }
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// `model_tool --info <bmodel>` text.
pub fn info(layout: &Layout, bmodel: &Path) -> Result<String> {
    let res = env::command(
        layout,
        layout.tool("model_tool"),
        ["--info".as_ref(), bmodel.as_os_str()],
    )
    .stderr_to_stdout()
    .stdout_capture()
    .unchecked()
    .run()
    .context("running model_tool --info")?;
    let text = String::from_utf8_lossy(&res.stdout).into_owned();
    if !res.status.success() {
        bail!("model_tool --info {} failed:\n{text}", bmodel.display());
    }
    Ok(text)
}

/// Combining shares identical weight blobs, so the result can be smaller than the sum of the
/// pieces but never much larger (llm_convert.py's rule: at most 1.2x).
pub fn check_size(combined: u64, pieces_total: u64) -> Result<()> {
    if combined as f64 > 1.2 * pieces_total as f64 {
        bail!(
            "the combined bmodel is {combined} bytes, more than 1.2x the {pieces_total} bytes of its pieces: \
             model_tool --combine misbehaved; rerun with --debug and check the piece logs"
        );
    }
    if combined == 0 {
        bail!("the combined bmodel is empty");
    }
    Ok(())
}

/// The bmodel bytes with the header's `create time` string zeroed: TPU-MLIR stamps the build
/// time (a 24-character `ctime()` string, length-prefixed, in the first KiB), so two builds of
/// the same model differ only there.
pub fn mask_create_time(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let window = bytes.len().min(64 * 1024);
    let mut i = 0;
    while i + 4 + 25 <= window {
        if bytes[i..i + 4] == [25, 0, 0, 0] {
            let s = &bytes[i + 4..i + 4 + 25];
            if s[13] == b':' && s[16] == b':' && s[24] == b'\n' && s[3] == b' ' {
                out[i + 4..i + 4 + 24].fill(0);
                return out;
            }
        }
        i += 1;
    }
    out
}

/// (sha256, sha256 with the create time masked) of a bmodel, hashed on two threads.
pub fn sha256_both(path: &Path) -> Result<(String, String)> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let head = bytes.len().min(64 * 1024);
    let (raw, masked) = std::thread::scope(|s| {
        let raw = s.spawn(|| crate::util::hex(&Sha256::digest(&bytes)));
        let mut h = Sha256::new();
        h.update(mask_create_time(&bytes[..head]));
        h.update(&bytes[head..]);
        let masked = crate::util::hex(&h.finalize());
        (raw.join(), masked)
    });
    let raw = raw.map_err(|_| anyhow::anyhow!("hashing thread panicked"))?;
    Ok((raw, masked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_only_the_ctime_string() {
        let mut b = vec![7u8; 100];
        b.extend([25, 0, 0, 0]);
        b.extend(b"Thu Nov 26 16:24:52 2026\n");
        b.extend([9u8; 50]);
        let m = mask_create_time(&b);
        assert_eq!(&m[..104], &b[..104]);
        assert!(m[104..128].iter().all(|&x| x == 0));
        assert_eq!(&m[128..], &b[128..]);
        let other = mask_create_time(b"no time here at all, just bytes");
        assert_eq!(other, b"no time here at all, just bytes");
    }
}
