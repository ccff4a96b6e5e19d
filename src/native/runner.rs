//! [`NativeRunner`]: a [`ToolRunner`] that does model_transform.py's and model_deploy.py's
//! work itself — the files they write that later steps need, and their tpuc-opt calls
//! ([`super::passes`]) — so a conversion runs without any Python process.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::compile_once::{self, Templates};
use super::merged;
use super::passes::{self, DeployArgs, TpucCall, TransformArgs};
use crate::convert::worker::{self, ToolRunner};
use crate::toolchain::{env, Layout};

pub struct NativeRunner {
    layout: Layout,
    /// Compile-once's templates, shared by a run's runners (None: every layer compiles fully).
    once: Option<Arc<Templates>>,
}

impl NativeRunner {
    pub fn new(layout: &Layout) -> NativeRunner {
        NativeRunner {
            layout: layout.clone(),
            once: None,
        }
    }

    /// A runner that compiles each shape of layer once and patches the others (`--compile-once`).
    pub fn with_templates(layout: &Layout, once: Arc<Templates>) -> NativeRunner {
        NativeRunner {
            layout: layout.clone(),
            once: Some(once),
        }
    }

    /// Runs one tpuc-opt call in `cwd`, its output appended to `log` between the
    /// `[Running]:` / `[Success]:` lines model_deploy.py prints.
    fn run_call(&self, call: &TpucCall, cwd: &Path, log: &Path) -> Result<()> {
        let line = call.line();
        let t0 = Instant::now();
        append(log, &format!("[Running]: {line}\n"))?;
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let handle = env::command(&self.layout, self.layout.tool("tpuc-opt"), call.argv()?)
            .dir(cwd)
            .stderr_to_stdout() // duct applies the outer redirect first: this is `>log 2>&1`
            .stdout_file(logf)
            .unchecked()
            .before_spawn(|c| {
                worker::isolate(c);
                Ok(())
            })
            .start()
            .with_context(|| format!("starting tpuc-opt ({} step)", call.step))?;
        let pids = handle.pids();
        pids.iter().for_each(|&p| worker::register(p as i32));
        let out = handle.wait();
        pids.iter().for_each(|&p| worker::unregister(p as i32));
        let out = out.with_context(|| format!("waiting for tpuc-opt ({} step)", call.step))?;
        if !out.status.success() {
            append(log, &format!("[!Error]: {line}\n"))?;
            bail!(
                "tpuc-opt {} step failed with {} in {}; its output is in {}",
                call.step,
                out.status,
                cwd.display(),
                log.display()
            );
        }
        append(
            log,
            &format!(
                "[Success]: {line}\n[native] {} step: {:.3} s\n",
                call.step,
                t0.elapsed().as_secs_f64()
            ),
        )
    }

    /// model_transform.py on an origin MLIR: put it and its weights into `cwd` under the names
    /// the ONNX front end would give them, then the top passes.
    fn transform(&self, argv: &[String], cwd: &Path, log: &Path) -> Result<()> {
        let a = TransformArgs::parse(argv)?;
        if !a.model_def.ends_with(".mlir") {
            bail!(
                "the native backend compiles an origin Top .mlir; --model_def is {}",
                a.model_def
            );
        }
        let origin = cwd.join(&a.model_def);
        let origin_here = cwd.join(a.origin_in_cwd());
        let text = read_head(&origin)?;
        let npz = passes::weight_file(&text).with_context(|| format!("in {}", origin.display()))?;
        if npz.contains('/') {
            if !cwd.join(&npz).is_file() {
                bail!(
                    "{}: module.weight_file {npz} does not exist relative to {}",
                    origin.display(),
                    cwd.display()
                );
            }
        } else {
            let dir = origin.parent().unwrap_or(cwd);
            link_into(&dir.join(&npz), &cwd.join(&npz))?;
        }
        link_into(&origin, &origin_here)?;
        for call in passes::transform_calls(&a) {
            self.run_call(&call, cwd, log)?;
        }
        Ok(())
    }

    /// model_deploy.py: its layer-group config, the tpuc-opt calls, the files it moves after
    /// codegen, and (without --debug) its clean-up of the lowered weights.
    fn deploy(&self, argv: &[String], cwd: &Path, log: &Path) -> Result<()> {
        let a = DeployArgs::parse(argv)?;
        let module = module_of(&cwd.join(&a.mlir))?;
        let files = passes::deploy_files(&a, &module);
        let config = cwd.join(&files.layer_group_config);
        std::fs::write(&config, passes::LAYER_GROUP_CONFIG)
            .with_context(|| format!("writing {}", config.display()))?;
        append(
            log,
            &format!(
                "[Success] Create config file '{}'.\n",
                files.layer_group_config
            ),
        )?;
        let model = cwd.join(&a.model);
        let context_dir = model.with_extension("");
        std::fs::create_dir_all(&context_dir)
            .with_context(|| format!("creating {}", context_dir.display()))?;
        let once = self.once.as_deref().filter(|o| o.covers(&module));
        let patched_from = match once {
            Some(once) => self.deploy_once(once, &a, &module, cwd, log)?,
            None => {
                self.deploy_calls(&a, &passes::deploy_calls(&a, &module), &files, cwd, log)?;
                None
            }
        };
        if let Some((t, how)) = patched_from {
            for (name, text) in [(compile_once::MARKER, t), (compile_once::COEFF_MARKER, how)] {
                let marker = cwd.join(name);
                std::fs::write(&marker, text)
                    .with_context(|| format!("writing {}", marker.display()))?;
            }
            return Ok(());
        }
        // mlir_to_model's epilogue: the debug copies next to the bmodel.
        let copy = |from: &Path, to: &Path| {
            std::fs::copy(from, to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))
        };
        copy(
            &cwd.join(&files.final_mlir),
            &context_dir.join("final.mlir"),
        )?;
        if !a.dynamic {
            let profile = cwd.join("net_0.profile");
            if profile.exists() {
                let to = PathBuf::from(format!("{}.net_0.profile", model.display()));
                std::fs::rename(&profile, &to)
                    .with_context(|| format!("moving {}", profile.display()))?;
            }
            let tensor_loc = PathBuf::from(format!("{}.json", model.display()));
            if tensor_loc.exists() {
                copy(&tensor_loc, &context_dir.join("tensor_location.json"))?;
            }
        }
        if !a.debug {
            // file_clean(): the lowered weights of the marked tpu.mlir.
            let _ = std::fs::remove_file(cwd.join(&files.tpu_weights));
        }
        Ok(())
    }

    /// A full compile's tpuc-opt calls: the calls after the lowering merged into one process
    /// where that gives the same bytes (see `merged::applies`); --debug keeps model_deploy.py's
    /// steps and their intermediate files.
    fn deploy_calls(
        &self,
        a: &DeployArgs,
        calls: &[TpucCall],
        files: &passes::DeployFiles,
        cwd: &Path,
        log: &Path,
    ) -> Result<()> {
        match calls.split_first() {
            Some((lowering, rest)) if !a.debug && merged::applies(a) && !rest.is_empty() => {
                self.run_call(lowering, cwd, log)?;
                self.run_call(&merged::merged_call(rest, &files.final_mlir)?, cwd, log)
            }
            _ => calls
                .iter()
                .try_for_each(|call| self.run_call(call, cwd, log)),
        }
    }

    /// The deploy calls with compile-once: a patch of this shape's template (returning its
    /// name and how its coefficients were made), or else a full compile, which becomes the template when none exists yet.
    fn deploy_once(
        &self,
        once: &Templates,
        a: &DeployArgs,
        module: &str,
        cwd: &Path,
        log: &Path,
    ) -> Result<Option<(String, String)>> {
        let calls = passes::deploy_calls(a, module);
        let key = compile_once::shape_key(a, module, cwd)?;
        let (template, claim) = match key.as_deref() {
            Some(k) => once.get_or_claim(k),
            None => (None, None),
        };
        if let (Some(t), [lowering, final_call, ..]) = (template, calls.as_slice()) {
            match self.patch(&t, lowering, final_call, a, module, cwd, log) {
                Ok(how) => return Ok(Some((t.name.clone(), how.to_string()))),
                Err(e) => append(
                    log,
                    &format!("[native] compile-once: full compile ({e:#})\n"),
                )?,
            }
        }
        let files = passes::deploy_files(a, module);
        self.deploy_calls(a, &calls, &files, cwd, log)?;
        if let (Some(claim), [lowering, final_call, ..]) = (claim, calls.as_slice()) {
            let out = compile_once::coeff_mlir(a, module);
            let check = compile_once::coeff_call(lowering, final_call, a, &out)
                .and_then(|call| self.run_call(&call, cwd, log))
                .and_then(|()| once.register(claim, module, a, cwd, &cwd.join(&out)));
            let line = match check {
                Ok(how) => format!("[native] compile-once: a template, {how}\n"),
                Err(e) => format!("[native] compile-once: not a template ({e:#})\n"),
            };
            append(log, &line)?;
        }
        Ok(None)
    }

    /// Patches this layer into `t`'s bmodel, its coefficients made in Rust where `t` has a
    /// recipe and the layer's weights follow it, else by the coefficient call; returns which.
    #[allow(clippy::too_many_arguments)]
    fn patch(
        &self,
        t: &compile_once::Template,
        lowering: &TpucCall,
        final_call: &TpucCall,
        a: &DeployArgs,
        module: &str,
        cwd: &Path,
        log: &Path,
    ) -> Result<&'static str> {
        let t0 = Instant::now();
        let (bytes, how) = match compile_once::patched_direct(t, module, a, cwd) {
            Ok(bytes) => (bytes, "rust"),
            Err(e) => {
                append(
                    log,
                    &format!("[native] compile-once: coefficients by tpuc-opt ({e:#})\n"),
                )?;
                let out = compile_once::coeff_mlir(a, module);
                let call = compile_once::coeff_call(lowering, final_call, a, &out)?;
                self.run_call(&call, cwd, log)?;
                let bytes = compile_once::patched(t, module, &cwd.join(&out), cwd)?;
                (bytes, "tpuc-opt")
            }
        };
        compile_once::save_io_alone(t, a, cwd)?;
        let model = cwd.join(&a.model);
        std::fs::write(&model, bytes).with_context(|| format!("writing {}", model.display()))?;
        append(
            log,
            &format!(
                "[native] compile-once: patched template {} (coefficients by {how}): {:.3} s\n",
                t.name,
                t0.elapsed().as_secs_f64()
            ),
        )?;
        Ok(how)
    }
}

impl ToolRunner for NativeRunner {
    fn run(&mut self, tool: &str, argv: &[String], cwd: &Path, log: &Path) -> Result<f64> {
        let t0 = Instant::now();
        match tool {
            "model_transform.py" => self.transform(argv, cwd, log),
            "model_deploy.py" => self.deploy(argv, cwd, log),
            _ => bail!("the native backend has no replacement for {tool}"),
        }
        .with_context(|| format!("{tool} (native)"))?;
        Ok(t0.elapsed().as_secs_f64())
    }
}

/// The tpuc-opt calls [`NativeRunner`] makes for `tool argv` in `cwd` (the deploy reads the
/// module name from the Top MLIR there).
pub fn planned_calls(tool: &str, argv: &[String], cwd: &Path) -> Result<Vec<TpucCall>> {
    match tool {
        "model_transform.py" => Ok(passes::transform_calls(&TransformArgs::parse(argv)?)),
        "model_deploy.py" => {
            let a = DeployArgs::parse(argv)?;
            let module = module_of(&cwd.join(&a.mlir))?;
            Ok(passes::deploy_calls(&a, &module))
        }
        _ => bail!("the native backend has no replacement for {tool}"),
    }
}

fn module_of(mlir: &Path) -> Result<String> {
    passes::module_name(&read_head(mlir)?).with_context(|| format!("in {}", mlir.display()))
}

/// The first 64 KiB of a text file: the module header of an MLIR file is there.
fn read_head(path: &Path) -> Result<String> {
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .take(64 * 1024)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Makes `to` the same file as `from` (a hard link, a copy across file systems); nothing to
/// do when they already are one path.
fn link_into(from: &Path, to: &Path) -> Result<()> {
    if !from.is_file() {
        bail!("{} does not exist", from.display());
    }
    if let (Ok(a), Ok(b)) = (from.canonicalize(), to.canonicalize()) {
        if a == b {
            return Ok(());
        }
    }
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

fn append(log: &Path, text: &str) -> Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", log.display()))
}

#[cfg(test)]
mod tests {
    /// The redirect idiom [`super::NativeRunner`] (and the worker's SpawnRunner) use must put
    /// both streams into the log: duct applies the outermost redirect first.
    #[test]
    fn stderr_and_stdout_both_reach_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let f = std::fs::File::create(&log).unwrap();
        duct::cmd!("sh", "-c", "echo out; echo err >&2")
            .stderr_to_stdout()
            .stdout_file(f)
            .run()
            .unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "out\nerr\n");
    }
}
