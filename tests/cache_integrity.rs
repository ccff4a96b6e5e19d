//! The piece cache is never wrong, on the real TPU-MLIR: a damaged entry is compiled again,
//! runs sharing one cache at once all succeed with correct bmodels, a full disk fails cleanly
//! with nothing half-written, and a run killed at any point resumes to the same bmodel.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

const FLAGS: &[&str] = &["-q", "w4bf16", "--jobs", "2"];

fn masked(m: &Value) -> &str {
    m["bmodel_sha256_without_create_time"].as_str().unwrap()
}

fn piece<'a>(m: &'a Value, name: &str) -> &'a Value {
    m["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no piece {name}"))
}

/// A clean cold build of `fixture` in its own cache (once per test process).
fn clean_build(fixture: &str) -> Value {
    static BUILDS: OnceLock<Mutex<HashMap<String, Value>>> = OnceLock::new();
    let builds = BUILDS.get_or_init(Default::default);
    let mut builds = builds.lock().unwrap_or_else(|p| p.into_inner());
    builds
        .entry(fixture.to_string())
        .or_insert_with(|| {
            let dir = tempfile::tempdir().unwrap();
            let model = common::fixtures().join(fixture);
            common::convert_seq64(&model, &dir.path().join("o"), &dir.path().join("c"), FLAGS)
        })
        .clone()
}

/// `llm-convert -m MODEL -s 64 --json -o OUT --cache-dir CACHE FLAGS` in the background, its
/// output captured (to read it after) or dropped (a run that is killed).
fn spawn_convert(model: &Path, out: &Path, cache: &Path, capture: bool) -> std::process::Child {
    let output = || {
        if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    Command::new(env!("CARGO_BIN_EXE_llm-convert"))
        .args(["-m", model.to_str().unwrap(), "-s", "64", "--json"])
        .args([
            "-o",
            out.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ])
        .args(FLAGS)
        .stdout(output())
        .stderr(output())
        .spawn()
        .unwrap()
}

#[test]
fn damaged_entries_are_compiled_again() {
    common::toolchain();
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixtures().join("llama_tied");
    let cache = dir.path().join("cache");
    let first = common::convert_seq64(&model, &dir.path().join("a"), &cache, FLAGS);
    let entry = |name: &str| PathBuf::from(piece(&first, name)["bmodel"].as_str().unwrap());
    // Truncated, one byte flipped, record lost: three ways an entry stops being trustworthy.
    let truncated = entry("block_0");
    let len = std::fs::metadata(&truncated).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // The first run left stamps, so the second trusts unchanged entries without hashing them:
    // each damage below must show in the stamp. This one keeps the size and puts the mtime
    // back.
    let flipped = entry("lm_head");
    assert!(Path::new(&format!("{}.stamp", flipped.display())).is_file());
    let mtime = std::fs::metadata(&flipped).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&flipped).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&flipped, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&flipped)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let unrecorded = entry("embedding");
    std::fs::remove_file(format!("{}.sha256", unrecorded.display())).unwrap();

    let second = common::convert_seq64(&model, &dir.path().join("b"), &cache, FLAGS);
    for name in ["block_0", "lm_head", "embedding"] {
        assert_eq!(piece(&second, name)["cached"], false, "{name} was reused");
    }
    for name in [
        "embedding_cache",
        "block_1",
        "block_cache_0",
        "block_cache_1",
    ] {
        assert_eq!(
            piece(&second, name)["cached"],
            true,
            "{name} was recompiled"
        );
    }
    assert_eq!(masked(&second), masked(&first));
}

#[test]
fn runs_sharing_one_cache_at_once_all_succeed() {
    common::toolchain();
    let want_llama = clean_build("llama_tied");
    let want_qwen = clean_build("qwen2");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let runs: Vec<(&str, PathBuf)> = [("llama_tied", "a"), ("llama_tied", "b"), ("qwen2", "c")]
        .into_iter()
        .map(|(f, o)| (f, dir.path().join(o)))
        .collect();
    let children: Vec<_> = runs
        .iter()
        .map(|(fixture, out)| {
            let model = common::fixtures().join(fixture);
            spawn_convert(&model, out, &cache, true)
        })
        .collect();
    for ((fixture, _), child) in runs.iter().zip(children) {
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "{fixture}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let m: Value = serde_json::from_slice(&o.stdout).unwrap();
        let want = if *fixture == "qwen2" {
            &want_qwen
        } else {
            &want_llama
        };
        assert_eq!(
            masked(&m),
            masked(want),
            "{fixture} differs from a lone build"
        );
    }
}

/// Unmounts a tmpfs when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "this test mounts a small tmpfs and needs root (as CI runs)"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_full_cache_disk_fails_cleanly() {
    common::toolchain();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // Room for a few of the ~6 MB pieces, not all seven.
    let _fs = Tmpfs::mount(&cache, "14m");
    let model = common::fixtures().join("llama_tied");
    let out = dir.path().join("o");
    let o = common::llm_convert(&[
        "-m",
        model.to_str().unwrap(),
        "-s",
        "64",
        "-o",
        out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "-q",
        "w4bf16",
        "--jobs",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no space left for the piece cache"),
        "{stderr}"
    );
    assert!(stderr.contains("--cache-dir"), "{stderr}");
    assert!(!out.join("manifest.json").exists());
    // Every entry left is whole: recorded and matching its record; no temp files.
    let files = files_under(&cache);
    assert!(
        files.iter().all(|p| !p.to_string_lossy().contains(".tmp.")),
        "temp files left: {files:?}"
    );
    for p in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "bmodel"))
    {
        let recorded = std::fs::read_to_string(format!("{}.sha256", p.display())).unwrap();
        assert_eq!(recorded.trim(), llm_convert::util::sha256_file(p).unwrap());
    }
}

/// When to kill a run.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// This long after it starts (before any piece is compiled).
    After(Duration),
    /// Once this many pieces are in the cache.
    Pieces(usize),
}

#[test]
fn killed_at_any_point_a_rerun_gives_the_same_bmodel() {
    common::toolchain();
    let want = clean_build("llama_tied");
    let total = want["pieces"].as_array().unwrap().len();
    let model = common::fixtures().join("llama_tied");
    for point in [
        KillPoint::After(Duration::from_millis(300)),
        KillPoint::Pieces(1),
        KillPoint::Pieces(3),
        KillPoint::Pieces(total - 1),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (out, cache) = (dir.path().join("o"), dir.path().join("c"));
        let mut child = spawn_convert(&model, &out, &cache, false);
        let t0 = Instant::now();
        loop {
            let reached = match point {
                KillPoint::After(d) => t0.elapsed() >= d,
                KillPoint::Pieces(n) => common::count_files(&cache, "bmodel") >= n,
            };
            if reached {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "{point:?}: finished before the kill"
            );
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "{point:?}: never reached"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(
            !out.join("manifest.json").exists(),
            "{point:?}: finished anyway"
        );
        let resumed = common::convert_seq64(&model, &out, &cache, FLAGS);
        assert_eq!(masked(&resumed), masked(&want), "{point:?}");
    }
}
