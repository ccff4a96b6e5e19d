//! Running TPU-MLIR's `model_transform.py` / `model_deploy.py`.
//!
//! The default is a long-lived Python worker per parallel job that imports TPU-MLIR once and
//! runs each tool's own `__main__` in-process (support/python/tpu_worker.py): a fresh process
//! spends 6-16 s importing torch & co. before doing 0.1 s of work. `--spawn-tools` runs one
//! process per step instead, for debugging.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::toolchain::{env, Layout};

const WORKER_SOURCE: &str = include_str!("../../support/python/tpu_worker.py");

/// Process groups of every tool process we started, so fail-fast and Ctrl-C can kill them
/// (and their tpuc-opt children) without leaving orphans.
static CHILD_GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

pub(crate) fn register(pgid: i32) {
    if let Ok(mut g) = CHILD_GROUPS.lock() {
        g.push(pgid);
    }
}

pub(crate) fn unregister(pgid: i32) {
    if let Ok(mut g) = CHILD_GROUPS.lock() {
        g.retain(|&p| p != pgid);
    }
}

/// SIGKILLs every registered tool process group.
pub fn kill_all_children() {
    let groups = match CHILD_GROUPS.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    for pgid in groups {
        // SAFETY: kill(2) with a negative pid signals a process group we created.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Own process group (so a kill reaches tpuc-opt grandchildren) and death with the parent.
pub(crate) fn isolate(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

pub trait ToolRunner: Send {
    /// Runs `tool` (a script in $TPUC_ROOT/python/tools) with `argv` in `cwd`, output to `log`.
    /// Returns the wall seconds.
    fn run(&mut self, tool: &str, argv: &[String], cwd: &Path, log: &Path) -> Result<f64>;
}

/// Writes the worker script next to the toolchain (once per script version); returns its path.
pub fn worker_script(layout: &Layout) -> Result<PathBuf> {
    use sha2::{Digest, Sha256};
    let tag = crate::util::hex(&Sha256::digest(WORKER_SOURCE.as_bytes()))[..12].to_string();
    let path = layout
        .root
        .join("worker")
        .join(format!("tpu_worker-{tag}.py"));
    if !path.exists() {
        crate::util::write_atomic(&path, WORKER_SOURCE.as_bytes())?;
    }
    Ok(path)
}

#[derive(Deserialize)]
struct Ready {
    ready: bool,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    import_s: Option<f64>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Reply {
    ok: bool,
    error: Option<String>,
    seconds: f64,
}

/// One in-process TPU-MLIR worker.
pub struct PythonWorker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    log: PathBuf,
    ready: Option<f64>,
}

impl PythonWorker {
    /// Starts the worker; the import runs in the background until [`Self::wait_ready`].
    pub fn start(layout: &Layout, log: &Path) -> Result<PythonWorker> {
        let script = worker_script(layout)?;
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("creating worker log {}", log.display()))?;
        let mut cmd = Command::new(layout.python());
        cmd.arg("-u")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env::tool_env(layout) {
            cmd.env(k, v);
        }
        isolate(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", layout.python().display()))?;
        register(child.id() as i32);
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        Ok(PythonWorker {
            child,
            stdin,
            stdout,
            log: log.to_path_buf(),
            ready: None,
        })
    }

    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .context("reading from the TPU-MLIR worker")?;
        if n == 0 {
            bail!(
                "the TPU-MLIR worker exited unexpectedly; its log: {}\n{}",
                self.log.display(),
                tail(&self.log, 15)
            );
        }
        Ok(line)
    }

    /// Blocks until TPU-MLIR is imported; returns the import seconds.
    pub fn wait_ready(&mut self) -> Result<f64> {
        if let Some(s) = self.ready {
            return Ok(s);
        }
        let line = self.read_line()?;
        let r: Ready = serde_json::from_str(&line)
            .with_context(|| format!("unexpected worker greeting: {line}"))?;
        if !r.ready {
            bail!(
                "{} (worker log: {}); run `llm-convert doctor`",
                r.error.unwrap_or_default(),
                self.log.display()
            );
        }
        let version = r.version.unwrap_or_default();
        if version != crate::toolchain::TPU_MLIR_VERSION {
            bail!(
                "the worker imported TPU-MLIR {version}, expected {}",
                crate::toolchain::TPU_MLIR_VERSION
            );
        }
        let s = r.import_s.unwrap_or(0.0);
        self.ready = Some(s);
        Ok(s)
    }
}

impl ToolRunner for PythonWorker {
    fn run(&mut self, tool: &str, argv: &[String], cwd: &Path, log: &Path) -> Result<f64> {
        self.wait_ready()?;
        let req = serde_json::json!({"tool": tool, "argv": argv, "cwd": cwd, "log": log});
        writeln!(self.stdin, "{req}")
            .and_then(|_| self.stdin.flush())
            .context("sending a job to the TPU-MLIR worker")?;
        let line = self.read_line()?;
        let r: Reply = serde_json::from_str(&line)
            .with_context(|| format!("unexpected worker reply: {line}"))?;
        if !r.ok {
            bail!("{tool} failed: {}", r.error.unwrap_or_default());
        }
        Ok(r.seconds)
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: signals the process group this worker leads.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        unregister(pgid);
    }
}

/// A [`PythonWorker`] started on its first job: a run whose pieces are all cached never pays
/// the import, and a cold run still overlaps it with the export of the later pieces.
pub struct LazyWorker {
    layout: Layout,
    log: PathBuf,
    worker: Option<PythonWorker>,
}

impl LazyWorker {
    pub fn new(layout: &Layout, log: &Path) -> LazyWorker {
        LazyWorker {
            layout: layout.clone(),
            log: log.to_path_buf(),
            worker: None,
        }
    }
}

impl ToolRunner for LazyWorker {
    fn run(&mut self, tool: &str, argv: &[String], cwd: &Path, log: &Path) -> Result<f64> {
        let worker = match &mut self.worker {
            Some(w) => w,
            None => self
                .worker
                .insert(PythonWorker::start(&self.layout, &self.log)?),
        };
        worker.run(tool, argv, cwd, log)
    }
}

/// One Python process per tool step (the CLI path; slow, for debugging).
pub struct SpawnRunner {
    layout: Layout,
}

impl SpawnRunner {
    pub fn new(layout: &Layout) -> SpawnRunner {
        SpawnRunner {
            layout: layout.clone(),
        }
    }
}

impl ToolRunner for SpawnRunner {
    fn run(&mut self, tool: &str, argv: &[String], cwd: &Path, log: &Path) -> Result<f64> {
        let t0 = std::time::Instant::now();
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut args: Vec<String> = vec![self.layout.python_tool(tool).display().to_string()];
        args.extend(argv.iter().cloned());
        let handle = env::command(&self.layout, self.layout.python(), args)
            .dir(cwd)
            .stderr_to_stdout() // duct applies the outer redirect first: this is `>log 2>&1`
            .stdout_file(logf)
            .unchecked()
            .before_spawn(|c| {
                isolate(c);
                Ok(())
            })
            .start()
            .with_context(|| format!("starting {tool}"))?;
        let pids = handle.pids();
        pids.iter().for_each(|&p| register(p as i32));
        let out = handle.wait();
        pids.iter().for_each(|&p| unregister(p as i32));
        let out = out.with_context(|| format!("waiting for {tool}"))?;
        if !out.status.success() {
            bail!("{tool} failed with {}", out.status);
        }
        Ok(t0.elapsed().as_secs_f64())
    }
}

/// The last `n` lines of a text file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
