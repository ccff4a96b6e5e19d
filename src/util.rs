//! Small helpers shared by several modules.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Lower-case hex of a byte slice (sha2 0.11 digests no longer implement LowerHex).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a whole file, lower-case hex, read in 1 MiB pieces (wheels and bmodels are
/// too large to hold twice).
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Writes `data` to `path` via a temporary file in the same folder and a rename, so readers
/// never see a half-written file.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_renamed(path, data, true)
}

/// [`write_atomic`] without the fsync, for records a crash may lose (they are derived again
/// when missing or torn).
pub fn write_atomic_unsynced(path: &Path, data: &[u8]) -> Result<()> {
    write_renamed(path, data, false)
}

fn write_renamed(path: &Path, data: &[u8], sync: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .context("path has no file name")?
        .to_string_lossy();
    // Unique per call, not only per process: two threads of one run may write the same file
    // (e.g. the worker script on first use) and must not rename each other's temp away.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{n}", std::process::id()));
    let written = (|| -> Result<()> {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(data)
            .and_then(|_| if sync { f.sync_all() } else { Ok(()) })
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
    })();
    if written.is_err() {
        // A full disk must not leave a half-written temp file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Points fd 1 at stderr (the CPU simulator prints its chatter to stdout) and returns a file
/// on the original stdout, for the command's real output (`--json` must stay parseable).
pub fn stdout_to_stderr() -> Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    std::io::stdout().flush()?;
    // SAFETY: dup/dup2 on the process's own standard descriptors; the new fd is owned by the
    // returned File.
    unsafe {
        let saved = libc::dup(1);
        anyhow::ensure!(saved >= 0, "dup(stdout) failed");
        anyhow::ensure!(libc::dup2(2, 1) >= 0, "dup2(stderr, stdout) failed");
        Ok(std::fs::File::from_raw_fd(saved))
    }
}

/// Flushes C stdio (the simulator's chatter sits in its buffer), so that a status line printed
/// next to it starts on a line of its own.
pub fn flush_c_stdio() {
    // SAFETY: fflush(NULL) flushes every open C output stream; it takes no Rust data.
    unsafe {
        libc::fflush(std::ptr::null_mut());
    }
}

/// A status line on stderr, after flushing the simulator's buffered chatter so it stays whole.
pub fn status(line: impl std::fmt::Display) {
    flush_c_stdio();
    eprintln!("{line}");
}

/// `[rows, cols]` → `[cols, rows]`, in cache-sized tiles (a plain strided loop, and candle's
/// strided copy, were 3x slower on a 4096² layer).
pub fn transpose<T: Copy + Default>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    const TILE: usize = 64;
    let mut out = vec![T::default(); src.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let row = &src[r * cols..(r + 1) * cols];
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = row[c];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_matches_the_definition() {
        let (rows, cols) = (37, 70);
        let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let t = transpose(&src, rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(t[c * rows + r], src[r * cols + c]);
            }
        }
    }

    /// Threads of one process writing the same file at once (the worker script on a fresh
    /// toolchain, under `--jobs 2`) all succeed and leave the whole file.
    #[test]
    fn write_atomic_from_many_threads_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("f.txt");
        let data = vec![7u8; 1 << 16];
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        write_atomic(&path, &data)
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
        });
        assert_eq!(std::fs::read(&path).unwrap(), data);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "temp files left behind");
    }
}
