//! The tpuc-opt calls TPU-MLIR 1.30.2's `model_transform.py` (on an origin `.mlir`) and
//! `model_deploy.py` make for a set of flags, as pure data: [`transform_calls`] and
//! [`deploy_calls`]. Each call is kept in the token form `utils/mlir_shell.py` builds (pass
//! options in double quotes, disabled passes as empty tokens), so [`TpucCall::line`] is exactly
//! the `[Running]: …` line the Python tools log and [`TpucCall::argv`] what their shell runs.
//!
//! Only the flags llm-convert's plan (src/convert/plan.rs, templates/deploy.json) produces are
//! accepted; any other flag is an error naming it, never silently dropped.

use anyhow::{bail, Context, Result};

/// One tpuc-opt run: the step it is (for messages) and its tokens, `tokens[0] == "tpuc-opt"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpucCall {
    pub step: &'static str,
    pub tokens: Vec<String>,
}

impl TpucCall {
    pub(crate) fn new(step: &'static str, tokens: Vec<String>) -> TpucCall {
        TpucCall { step, tokens }
    }

    /// The command as model_deploy.py logs and runs it (`" ".join(cmd)`, empty tokens kept).
    pub fn line(&self) -> String {
        self.tokens.join(" ")
    }

    /// The arguments after `tpuc-opt`, split the way `sh -c line` splits them.
    pub fn argv(&self) -> Result<Vec<String>> {
        let words = shell_words(&self.line())?;
        Ok(words.into_iter().skip(1).collect())
    }
}

/// Splits a command line on blanks, honouring double quotes. Anything else the shell would
/// interpret is refused (our lines hold file names and `key=value` pass options only).
fn shell_words(line: &str) -> Result<Vec<String>> {
    if let Some(c) = line.chars().find(|c| "'\\$`;|&<>*?()".contains(*c)) {
        bail!("unsupported character {c:?} in a tpuc-opt command line (a path?): {line}");
    }
    let (mut words, mut cur, mut quoted, mut in_word) = (vec![], String::new(), false, false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            ' ' | '\t' | '\n' if !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            _ => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        bail!("unbalanced quote in a tpuc-opt command line: {line}");
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Python's `str(bool)`.
pub(crate) fn py(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// A flag parser over `--name value` / `--name=value` arguments.
struct Flags<'a> {
    tool: &'static str,
    argv: &'a [String],
    i: usize,
}

impl<'a> Flags<'a> {
    /// The next flag name and its inline `=value`, if any.
    fn next_flag(&mut self) -> Result<Option<(&'a str, Option<&'a str>)>> {
        let Some(arg) = self.argv.get(self.i) else {
            return Ok(None);
        };
        self.i += 1;
        let Some(body) = arg.strip_prefix("--") else {
            bail!("{}: unexpected argument {arg:?}", self.tool);
        };
        Ok(Some(match body.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (body, None),
        }))
    }

    fn value(&mut self, name: &str, inline: Option<&'a str>) -> Result<String> {
        if let Some(v) = inline {
            return Ok(v.to_string());
        }
        let v = self
            .argv
            .get(self.i)
            .with_context(|| format!("{}: --{name} needs a value", self.tool))?;
        self.i += 1;
        Ok(v.clone())
    }

    fn switch(&self, name: &str, inline: Option<&str>) -> Result<bool> {
        match inline {
            None => Ok(true),
            Some(v) => bail!("{}: --{name} takes no value (got {v:?})", self.tool),
        }
    }

    fn number(&mut self, name: &str, inline: Option<&'a str>) -> Result<u32> {
        let v = self.value(name, inline)?;
        v.parse()
            .with_context(|| format!("{}: --{name} {v:?} is not a number", self.tool))
    }
}

/// model_transform.py's arguments (the origin-MLIR form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformArgs {
    pub model_name: String,
    /// The origin Top MLIR (nemit's `write_origin`), or the ONNX file on the Python path.
    pub model_def: String,
    /// The Top MLIR to write, relative to the work dir.
    pub mlir: String,
    pub debug: bool,
}

impl TransformArgs {
    pub fn parse(argv: &[String]) -> Result<TransformArgs> {
        let mut f = Flags {
            tool: "model_transform.py",
            argv,
            i: 0,
        };
        let (mut model_name, mut model_def, mut mlir, mut debug) = (None, None, None, false);
        while let Some((name, inline)) = f.next_flag()? {
            match name {
                "model_name" => model_name = Some(f.value(name, inline)?),
                "model_def" => model_def = Some(f.value(name, inline)?),
                "mlir" => mlir = Some(f.value(name, inline)?),
                "debug" => debug = f.switch(name, inline)?,
                // ONNX-only: the origin MLIR is already simplified and has its largest shapes.
                "do_onnx_sim" | "input_shapes" => {
                    f.value(name, inline)?;
                }
                _ => bail!("model_transform.py: the native backend does not support --{name}"),
            }
        }
        let need = |v: Option<String>, n: &str| {
            v.with_context(|| format!("model_transform.py: --{n} is required"))
        };
        let mlir = need(mlir, "mlir")?;
        if !mlir.ends_with(".mlir") {
            bail!("model_transform.py: --mlir {mlir:?} must end with .mlir");
        }
        Ok(TransformArgs {
            model_name: need(model_name, "model_name")?,
            model_def: need(model_def, "model_def")?,
            mlir,
            debug,
        })
    }

    /// The origin MLIR's name in the work dir: `<mlir stem>_origin.mlir`, where
    /// model_transform.py's ONNX front end writes it (so the logged command lines agree).
    pub fn origin_in_cwd(&self) -> String {
        self.mlir.replacen(".mlir", "_origin.mlir", 1)
    }
}

/// `mlir_opt_for_top`: the only tpuc-opt call of model_transform.py.
pub fn transform_calls(a: &TransformArgs) -> Vec<TpucCall> {
    let t = [
        "tpuc-opt",
        &a.origin_in_cwd(),
        "--struct-optimize",
        "--shape-infer",
        "--canonicalize",
        "--extra-optimize",
        "-o",
        &a.mlir,
    ];
    vec![TpucCall::new(
        "top",
        t.iter().map(|s| s.to_string()).collect(),
    )]
}

/// The quantize modes a plan can ask for (model_deploy.py accepts more: INT8 and the DYN modes
/// need calibration or are not deployable in 1.30.2).
const MODES: &[&str] = &["F32", "BF16", "F16", "W8F16", "W8BF16", "W4F16", "W4BF16"];
const ADDR_MODES: &[&str] = &["auto", "basic", "io_alone"];

/// model_deploy.py's arguments, with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployArgs {
    pub mlir: String,
    /// Lower case, as argparse's `type=str.lower` leaves it.
    pub chip: String,
    pub model: String,
    pub addr_mode: String,
    pub num_core: u32,
    pub num_device: u32,
    /// Upper case (`type=str.upper`); default F32.
    pub quantize: String,
    pub q_group_size: u32,
    pub q_symmetric: bool,
    pub quant_input: bool,
    pub quant_output: bool,
    pub quant_output_bf16: bool,
    pub high_precision: bool,
    pub dynamic: bool,
    pub debug: bool,
    pub disable_layer_group: bool,
    pub quantize_table: Option<String>,
    pub save_io_alone_config: String,
    pub use_io_alone_config: String,
    pub debug_cmd: String,
}

impl DeployArgs {
    pub fn parse(argv: &[String]) -> Result<DeployArgs> {
        let mut f = Flags {
            tool: "model_deploy.py",
            argv,
            i: 0,
        };
        let mut a = DeployArgs {
            mlir: String::new(),
            chip: String::new(),
            model: String::new(),
            addr_mode: "auto".into(),
            num_core: 1,
            num_device: 1,
            quantize: "F32".into(),
            q_group_size: 64,
            q_symmetric: false,
            quant_input: false,
            quant_output: false,
            quant_output_bf16: false,
            high_precision: false,
            dynamic: false,
            debug: false,
            disable_layer_group: false,
            quantize_table: None,
            save_io_alone_config: String::new(),
            use_io_alone_config: String::new(),
            debug_cmd: String::new(),
        };
        while let Some((name, inline)) = f.next_flag()? {
            match name {
                "mlir" => a.mlir = f.value(name, inline)?,
                "chip" | "processor" => a.chip = f.value(name, inline)?.to_lowercase(),
                "model" => a.model = f.value(name, inline)?,
                "addr_mode" => a.addr_mode = f.value(name, inline)?.to_lowercase(),
                "num_core" => a.num_core = f.number(name, inline)?,
                "num_device" => a.num_device = f.number(name, inline)?,
                "quantize" => a.quantize = f.value(name, inline)?.to_uppercase(),
                "q_group_size" => a.q_group_size = f.number(name, inline)?,
                "q_symmetric" => a.q_symmetric = f.switch(name, inline)?,
                "quant_input" => a.quant_input = f.switch(name, inline)?,
                "quant_output" => a.quant_output = f.switch(name, inline)?,
                "quant_output_bf16" => a.quant_output_bf16 = f.switch(name, inline)?,
                "high_precision" => a.high_precision = f.switch(name, inline)?,
                "dynamic" => a.dynamic = f.switch(name, inline)?,
                "debug" => a.debug = f.switch(name, inline)?,
                "disable_layer_group" => a.disable_layer_group = f.switch(name, inline)?,
                // A no-op in 1.30.2: model_deploy hard-wires gdma_check=False.
                "disable_gdma_check" => {
                    f.switch(name, inline)?;
                }
                "quantize_table" => a.quantize_table = Some(f.value(name, inline)?),
                "save_io_alone_config" => a.save_io_alone_config = f.value(name, inline)?,
                "use_io_alone_config" => a.use_io_alone_config = f.value(name, inline)?,
                "debug_cmd" => a.debug_cmd = f.value(name, inline)?,
                _ => bail!("model_deploy.py: the native backend does not support --{name}"),
            }
        }
        for (v, n) in [(&a.mlir, "mlir"), (&a.chip, "chip"), (&a.model, "model")] {
            if v.is_empty() {
                bail!("model_deploy.py: --{n} is required");
            }
        }
        if !MODES.contains(&a.quantize.as_str()) {
            bail!(
                "model_deploy.py: the native backend does not support --quantize {} (supported: {})",
                a.quantize,
                MODES.join(", ")
            );
        }
        if !ADDR_MODES.contains(&a.addr_mode.as_str()) {
            bail!(
                "model_deploy.py: the native backend does not support --addr_mode {}",
                a.addr_mode
            );
        }
        if !a.mlir.ends_with(".mlir") {
            bail!("model_deploy.py: --mlir {:?} must end with .mlir", a.mlir);
        }
        Ok(a)
    }

    /// `<module>_<chip>_<quantize>`: the stem of every file model_deploy writes.
    pub fn prefix(&self, module_name: &str) -> String {
        format!(
            "{module_name}_{}_{}",
            self.chip,
            self.quantize.to_lowercase()
        )
    }

    /// The group size model_deploy keeps: only weight-only (and DYN) modes use one.
    pub fn effective_group_size(&self) -> u32 {
        let q = self.quantize.to_lowercase();
        let grouped = q.ends_with("dyn") || ["w4f16", "w4bf16", "w8f16", "w8bf16"].contains(&&*q);
        if grouped {
            self.q_group_size
        } else {
            0
        }
    }

    /// `--debug` also turns the layer-group debugger on (lg_debugger 0 → 1).
    fn lg_debugger(&self) -> u32 {
        u32::from(self.debug)
    }
}

/// Names of the files a deploy reads and writes in its work dir.
pub struct DeployFiles {
    pub tpu_mlir: String,
    pub tpu_opt_mlir: String,
    pub final_mlir: String,
    /// The lowered weights (`…_tpu_weights.npz`, `…_tpu_qtable_weights.npz` with a table).
    pub tpu_weights: String,
    pub layer_group_config: String,
}

pub fn deploy_files(a: &DeployArgs, module_name: &str) -> DeployFiles {
    let p = a.prefix(module_name);
    let tpu_mlir = format!("{p}_tpu.mlir");
    let stem = tpu_mlir.trim_end_matches(".mlir");
    let tpu_weights = if a.quantize_table.is_some() {
        format!("{stem}_qtable_weights.npz")
    } else {
        format!("{stem}_weights.npz")
    };
    DeployFiles {
        tpu_opt_mlir: format!("{p}_tpu_opt.mlir"),
        final_mlir: format!("{p}_final.mlir"),
        layer_group_config: format!("{p}.layer_group_config.json"),
        tpu_mlir,
        tpu_weights,
    }
}

/// Every tpuc-opt call model_deploy.py makes for `a` on a Top MLIR whose module is named
/// `module_name`: lowering, (with --debug: tpu optimisation alone), layer group + address
/// assignment, codegen.
pub fn deploy_calls(a: &DeployArgs, module_name: &str) -> Vec<TpucCall> {
    let files = deploy_files(a, module_name);
    let s = |v: &str| v.to_string();
    let mut calls = vec![];

    // mlir_shell.mlir_lowering / lowering_options
    let mut qw = format!("weightFileName={}", files.tpu_weights);
    if let Some(t) = &a.quantize_table {
        qw = format!("qtable={t} {qw}");
    }
    calls.push(TpucCall::new(
        "lowering",
        vec![
            s("tpuc-opt"),
            a.mlir.clone(),
            format!(
                "--processor-assign=\"chip={} mode={} num_device={} num_core={} addr_mode={} high_precision={}\"",
                a.chip, a.quantize, a.num_device, a.num_core, a.addr_mode, py(a.high_precision)
            ),
            s("--processor-top-optimize"),
            format!(
                "--convert-top-to-tpu=\"{qw} asymmetric=False doWinograd=False q_group_size={} q_symmetric={} matmul_perchannel=False gelu_mode=normal\"",
                a.effective_group_size(),
                py(a.q_symmetric)
            ),
            s("--canonicalize"),
            s("--weight-fold"),
            s("-o"),
            files.tpu_mlir.clone(),
        ],
    ));

    // mlir_shell.mlir_to_model: tpu_opt_options, then tpu_ada_options
    let debug_cmd = format!("--debug_cmd={}", a.debug_cmd);
    let tpu_opt = vec![
        s("--mlir-disable-threading"),
        format!(
            "--strip-io-quant=\"quant_input={} quant_output={} quant_input_list= quant_output_list= quant_output_bf16={} quant_input_int8=False quant_output_int8=False \"",
            py(a.quant_input),
            py(a.quant_output),
            py(a.quant_output_bf16)
        ),
        s("--processor-tpu-optimize"),
    ];
    let mut cmd = vec![s("tpuc-opt"), files.tpu_mlir.clone()];
    cmd.extend(tpu_opt);
    if a.debug {
        cmd.extend([s("-o"), files.tpu_opt_mlir.clone(), debug_cmd.clone()]);
        calls.push(TpucCall::new("tpu_opt", cmd));
        cmd = vec![s("tpuc-opt"), files.tpu_opt_mlir.clone()];
    }
    let layer_group = if a.disable_layer_group {
        String::new()
    } else {
        format!(
            "--layer-group=\"opt=2 group_by_cores=auto compress_mode=none debugger={} disable_group_overlap=false lgcache=true config_filename= enable_lghash=False lghash_dir=\"",
            a.lg_debugger()
        )
    };
    // io_alone: `use` wins over `save` (the later assignment in tpu_ada_options).
    let address_assign = if !a.use_io_alone_config.is_empty() {
        format!(
            "--address-assign=\"use_io_alone_config={}\"",
            a.use_io_alone_config
        )
    } else if !a.save_io_alone_config.is_empty() {
        format!(
            "--address-assign=\"save_io_alone_config={}\"",
            a.save_io_alone_config
        )
    } else {
        s("--address-assign")
    };
    cmd.extend([
        s("--dev-parallel"),
        s("--weight-reorder"),
        String::new(), // --op-divide (off)
        format!("--subnet-divide=\"dynamic={}\"", py(a.dynamic)),
        s("--op-reorder"),
        s("--topo-sort"),
        layer_group,
        s("--affine-opt"),
        String::new(), // --trunc-layer (off)
        s("--core-parallel"),
        String::new(), // --opt-post-processor (off)
        s("--after-layergroup-weight-reorder"),
        String::new(), // --weight-deduplicate (off)
        address_assign,
        s("-o"),
        files.final_mlir.clone(),
        debug_cmd,
    ]);
    calls.push(TpucCall::new("final", cmd));

    // codegen_options (model_version "latest", gdma_check always False in 1.30.2)
    calls.push(TpucCall::new(
        "codegen",
        vec![
            s("tpuc-opt"),
            files.final_mlir,
            format!(
                "--codegen=\"model_file={} embed_debug_info={} model_version=latest bmodel_only=False gdma_check=False rvti=False\"",
                a.model,
                py(a.debug)
            ),
            s("-o /dev/null"),
        ],
    ));
    calls
}

/// What `gen_layer_group_config` writes (json.dump, indent 2) for every chip we target (cv184x,
/// the one chip with another config, is not one of them).
pub const LAYER_GROUP_CONFIG: &str = include_str!("layer_group_config.json");

/// The `module @name` of a Top MLIR's text (MlirParser.module_name).
pub fn module_name(mlir_text: &str) -> Result<String> {
    let line = mlir_text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("module @"))
        .context("no `module @name` line")?;
    let name = match line.strip_prefix('"') {
        Some(rest) => rest.split('"').next().unwrap_or_default(),
        None => line
            .split(|c: char| c.is_whitespace() || c == '{')
            .next()
            .unwrap_or_default(),
    };
    if name.is_empty() {
        bail!("empty module name in `module @{line}`");
    }
    Ok(name.to_string())
}

/// The `module.weight_file = "…"` attribute of a Top MLIR's text.
pub fn weight_file(mlir_text: &str) -> Result<String> {
    let key = "module.weight_file = \"";
    let at = mlir_text
        .find(key)
        .context("no module.weight_file attribute")?;
    let rest = &mlir_text[at + key.len()..];
    let end = rest.find('"').context("unterminated module.weight_file")?;
    Ok(rest[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn group_size_is_kept_only_for_weight_only_modes() {
        let w4 = DeployArgs::parse(&argv(
            "--mlir a.mlir --chip bm1684x --model a.bmodel --quantize w4bf16 --q_group_size 32",
        ))
        .unwrap();
        assert_eq!(w4.effective_group_size(), 32);
        let bf16 = DeployArgs::parse(&argv(
            "--mlir a.mlir --chip bm1684x --model a.bmodel --quantize bf16 --q_group_size 32",
        ))
        .unwrap();
        assert_eq!(bf16.effective_group_size(), 0);
        assert!(bf16.prefix("a").ends_with("_bm1684x_bf16"));
    }

    #[test]
    fn unknown_flags_are_named() {
        let e = DeployArgs::parse(&argv(
            "--mlir a.mlir --chip x --model a.bmodel --fuse_preprocess",
        ))
        .unwrap_err();
        assert!(format!("{e}").contains("--fuse_preprocess"), "{e}");
        let e = TransformArgs::parse(&argv(
            "--model_name a --model_def a.mlir --mlir a.mlir --test_input x.npz",
        ))
        .unwrap_err();
        assert!(format!("{e}").contains("--test_input"), "{e}");
    }

    #[test]
    fn debug_splits_tpu_opt_and_enables_the_debugger() {
        let base = "--mlir b.mlir --chip bm1684x --model b.bmodel --quantize bf16";
        let plain = deploy_calls(&DeployArgs::parse(&argv(base)).unwrap(), "b");
        let debug = deploy_calls(
            &DeployArgs::parse(&argv(&format!("{base} --debug"))).unwrap(),
            "b",
        );
        assert_eq!(plain.len(), 3);
        assert_eq!(debug.len(), 4);
        assert!(debug[2].line().contains("debugger=1"));
        assert!(plain[1].line().contains("debugger=0"));
        assert!(debug[3].line().contains("embed_debug_info=True"));
    }

    #[test]
    fn argv_unquotes_pass_options() {
        let a = DeployArgs::parse(&argv(
            "--mlir b.mlir --chip bm1684x --model b.bmodel --disable_layer_group",
        ))
        .unwrap();
        let calls = deploy_calls(&a, "b");
        assert!(calls[1].line().contains("--topo-sort  --affine-opt"));
        let v = calls[2].argv().unwrap();
        assert_eq!(v[0], "b_bm1684x_f32_final.mlir");
        assert!(v[1].starts_with("--codegen=model_file=b.bmodel embed"));
        assert_eq!(&v[2..], ["-o", "/dev/null"]);
        assert!(shell_words("a 'b'").is_err());
    }

    #[test]
    fn module_and_weight_file_are_read() {
        let t = "#loc = loc(unknown)\nmodule @\"block_0\" attributes {module.weight_file = \"x_origin.npz\"} {";
        assert_eq!(module_name(t).unwrap(), "block_0");
        assert_eq!(weight_file(t).unwrap(), "x_origin.npz");
        assert_eq!(
            module_name("module @lm_head attributes {").unwrap(),
            "lm_head"
        );
    }
}
