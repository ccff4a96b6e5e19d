//! Compile a layer once (`--compile-once`): identically shaped layers compile to bmodels that
//! differ only in their coefficient blob, its sha256 and the net name (create time aside). The
//! first layer of a shape is compiled fully and kept as a template; for every later layer of
//! that shape only the passes that give its weights their final values and addresses run, in
//! one tpuc-opt call (lowering, tpu optimisation, weight reorder, address assignment: no
//! layer group, no codegen), and its blob is written into a copy of the template
//! (`bmodel::patch`).
//!
//! "Same shape" is the layer's Top MLIR with its names taken out, its deploy flags
//! and the contents of the files those name; anything that differs falls back to a full compile.
//! A template is only kept if its own blob rebuilds byte for byte from its final MLIR and
//! weights, and a patch only made if the layer's weight slots (address, type, op) are the
//! template's, so every assumption is checked on the bytes themselves.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::direct_coeff::{self, Recipe};
use super::passes::{self, py, DeployArgs, TpucCall};

/// Names the marker a patched step leaves in its work dir (the template's net name inside), so
/// the pipeline can record which pieces were patched.
pub const MARKER: &str = "compile_once_template.txt";

/// Names the marker that says how a patched step's coefficients were made: `rust`
/// ([`direct_coeff`]) or `tpuc-opt` ([`coeff_call`]).
pub const COEFF_MARKER: &str = "compile_once_coefficients.txt";

/// One `top.Weight` of an addressed MLIR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub addr: u64,
    /// The tensor type (`64x64xui8`) and the op's `path` attribute.
    pub form: String,
    /// The key of its bytes in the weight npz.
    pub name: String,
}

/// A fully compiled layer kept for the others of its shape.
pub struct Template {
    pub name: String,
    bmodel: Vec<u8>,
    slots: Vec<Slot>,
    base: u64,
    /// The io-alone config its compile saved, if it saved one.
    io_alone: Option<Vec<u8>>,
    /// How its shape's coefficients derive from Top weights without tpuc-opt, if they do.
    recipe: Option<Recipe>,
}

/// The templates of one run, shared by its workers, by shape key.
#[derive(Default)]
pub struct Templates {
    /// The nets that may share a shape with another of the run (its layers): only they are
    /// worth a template, whose checks cost a net nothing is patched from (embedding, lm_head)
    /// more than its plain compile.
    nets: HashSet<String>,
    map: Mutex<HashMap<String, State>>,
    changed: Condvar,
}

enum State {
    /// A worker is compiling this shape's first layer.
    Compiling,
    Ready(Arc<Template>),
    /// Its first layer could not be a template: every layer of the shape compiles fully.
    Unusable,
}

/// A claim on compiling the template of a key: unless [`Templates::register`] fills it, its
/// drop marks the shape unusable, so no worker waits for a template that never comes.
pub struct Claim<'a> {
    templates: &'a Templates,
    key: String,
    filled: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.filled {
            self.templates.set(&self.key, State::Unusable);
        }
    }
}

impl Templates {
    /// The templates of a run whose layers (nets that may repeat a shape) are `nets`.
    pub fn for_nets(nets: HashSet<String>) -> Templates {
        Templates {
            nets,
            ..Templates::default()
        }
    }

    /// Whether the net `module` is one of the run's layers.
    pub fn covers(&self, module: &str) -> bool {
        self.nets.contains(module)
    }

    /// The template of `key`; while another worker compiles one, waits for it (a patch is
    /// cheaper than the wait). Else a claim: the caller compiles fully and registers it.
    pub fn get_or_claim(&self, key: &str) -> (Option<Arc<Template>>, Option<Claim<'_>>) {
        let Ok(mut m) = self.map.lock() else {
            return (None, None);
        };
        loop {
            match m.get(key) {
                Some(State::Ready(t)) => return (Some(t.clone()), None),
                Some(State::Unusable) => return (None, None),
                Some(State::Compiling) => match self.changed.wait(m) {
                    Ok(g) => m = g,
                    Err(_) => return (None, None),
                },
                None => {
                    m.insert(key.to_string(), State::Compiling);
                    let claim = Claim {
                        templates: self,
                        key: key.to_string(),
                        filled: false,
                    };
                    return (None, Some(claim));
                }
            }
        }
    }

    fn set(&self, key: &str, state: State) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(key.to_string(), state);
        }
        self.changed.notify_all();
    }

    /// Keeps a layer just compiled in `cwd` as the template of the claim's key, once its own
    /// blob is seen to rebuild from its final MLIR's weight slots, and a patch of itself from
    /// `coeff_mlir` (what [`coeff_call`] wrote for it, over the same npz name) to give its own
    /// bytes: the cheap passes must give this shape's weights the values the full pipeline
    /// does (gemma3's decode blocks: 64 bytes of coefficients differ). Returns why not, if not;
    /// else how later layers' coefficients will be made (a line for the log): in Rust where a
    /// [`Recipe`] learnt from this layer rebuilds its whole blob, else by [`coeff_call`].
    pub fn register(
        &self,
        mut claim: Claim,
        module: &str,
        a: &DeployArgs,
        cwd: &Path,
        coeff_mlir: &Path,
    ) -> Result<String> {
        let files = passes::deploy_files(a, module);
        let bmodel = read(&cwd.join(&a.model))?;
        let final_mlir = read_text(&cwd.join(&files.final_mlir))?;
        let slots = weight_slots(&final_mlir)?;
        let base = slots.iter().map(|s| s.addr).min().context("no weights")?;
        let npz = read_npz(&cwd.join(passes::weight_file(&final_mlir)?))?;
        let spans = crate::bmodel::patch::coeff_spans(&bmodel)?;
        let blob = coeff_blob(&slots, &npz, base, spans.coeff.1)?;
        let own = &bmodel[spans.coeff.0..spans.coeff.0 + spans.coeff.1];
        if blob[..] != *own {
            bail!("its coefficient blob does not rebuild from its final MLIR and weights");
        }
        let recipe = learn_recipe(&slots, &npz, base, own, a, cwd);
        let io_alone = if a.save_io_alone_config.is_empty() {
            None
        } else {
            Some(read(&cwd.join(&a.save_io_alone_config))?)
        };
        let t = Template {
            name: module.to_string(),
            bmodel,
            slots,
            base,
            io_alone,
            recipe: recipe.as_ref().ok().map(|(r, _)| r.clone()),
        };
        if patched(&t, module, coeff_mlir, cwd)? != t.bmodel {
            bail!("a patch of itself from the coefficient call is not its own bytes");
        }
        // The whole bmodel through the Rust path too, as a later layer's will be made.
        if t.recipe.is_some() && patched_direct(&t, module, a, cwd)? != t.bmodel {
            bail!("a patch of itself from Rust coefficients is not its own bytes");
        }
        self.set(&claim.key, State::Ready(Arc::new(t)));
        claim.filled = true;
        Ok(match recipe {
            Ok((_, n)) => format!("coefficients in Rust ({n} weights from Top weights)"),
            Err(e) => format!("coefficients by tpuc-opt ({e:#})"),
        })
    }
}

/// The recipe of a template whose final slots and weights (`npz`) lay out `own` blob from
/// `base`, with the number of weights it derives; Err: why its coefficients need tpuc-opt.
fn learn_recipe(
    slots: &[Slot],
    npz: &HashMap<String, Vec<u8>>,
    base: u64,
    own: &[u8],
    a: &DeployArgs,
    cwd: &Path,
) -> Result<(Recipe, usize)> {
    let top_text = read_text(&cwd.join(&a.mlir))?;
    let top = read_npz(&cwd.join(passes::weight_file(&top_text)?))?;
    let recipe = direct_coeff::learn(slots, npz, &top_text, &top)?;
    let w = direct_coeff::weights(&recipe, slots, &top_text, &top)?;
    if coeff_blob(slots, &w, base, own.len())? != own {
        bail!("the blob of Rust coefficients is not the template's");
    }
    Ok((recipe, slots.len()))
}

/// The shape key of a layer whose Top MLIR is `a.mlir` in `cwd`; None
/// where compile-once does not apply (--debug embeds per-layer names in the bmodel).
pub fn shape_key(a: &DeployArgs, module: &str, cwd: &Path) -> Result<Option<String>> {
    if a.debug {
        return Ok(None);
    }
    let mut h = Sha256::new();
    h.update(normalise(&read_text(&cwd.join(&a.mlir))?, module));
    let mut flags = a.clone();
    flags.mlir.clear();
    flags.model.clear();
    for f in [&a.quantize_table, &Some(a.use_io_alone_config.clone())] {
        if let Some(p) = f.as_ref().filter(|p| !p.is_empty()) {
            h.update(read_text(&cwd.join(p))?.replace(module, "\0M"));
        }
    }
    flags.quantize_table = flags.quantize_table.map(|_| String::new());
    flags.use_io_alone_config = (!a.use_io_alone_config.is_empty()).to_string();
    flags.save_io_alone_config = (!a.save_io_alone_config.is_empty()).to_string();
    // The net name's length places every later byte of the bmodel's description.
    h.update(format!("{flags:?} name length {}", module.len()));
    Ok(Some(crate::util::hex(&h.finalize())))
}

/// The MLIR text without what names a layer: its module name and the quoted names of its
/// locations (they reach the bmodel only with --debug).
fn normalise(text: &str, module: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("#loc") {
            let mut quoted = false;
            line.chars().for_each(|c| {
                if c == '"' {
                    quoted = !quoted;
                }
                if !quoted {
                    out.push(c);
                }
            });
        } else {
            out.push_str(&line.replace(module, "\0M"));
        }
        out.push('\n');
    }
    out
}

/// Where [`coeff_call`] writes its MLIR, in the step's work dir.
pub fn coeff_mlir(a: &DeployArgs, module: &str) -> String {
    format!("{}_coeff.mlir", a.prefix(module))
}

/// The one call that gives a layer's weights their final values and addresses: model_deploy's
/// lowering call (`calls[0]` of a non-debug [`passes::deploy_calls`]) and its final call
/// (`calls[1]`) through the tpu optimisation, chained, then the final call's passes up to
/// address assignment without layer group (which moves no weight: [`patched`] checks the
/// slots are the template's) and codegen. No io-alone config is saved (the template's is, by
/// [`save_io_alone`]).
pub fn coeff_call(
    lowering: &TpucCall,
    final_call: &TpucCall,
    a: &DeployArgs,
    out: &str,
) -> Result<TpucCall> {
    let lowered = lowering
        .tokens
        .len()
        .checked_sub(2)
        .filter(|&n| lowering.tokens.get(n).map(String::as_str) == Some("-o"))
        .context("the lowering call does not end in -o FILE")?;
    let opt_end = final_call
        .tokens
        .iter()
        .position(|t| t == "--processor-tpu-optimize")
        .context("the final call has no --processor-tpu-optimize")?;
    let mut tokens = lowering.tokens[..lowered].to_vec();
    tokens.extend_from_slice(final_call.tokens.get(2..=opt_end).unwrap_or_default());
    let address_assign = if a.use_io_alone_config.is_empty() {
        "--address-assign".to_string()
    } else {
        format!(
            "--address-assign=\"use_io_alone_config={}\"",
            a.use_io_alone_config
        )
    };
    tokens.extend([
        "--dev-parallel".to_string(),
        "--weight-reorder".to_string(),
        format!("--subnet-divide=\"dynamic={}\"", py(a.dynamic)),
        "--op-reorder".to_string(),
        "--topo-sort".to_string(),
        address_assign,
        "-o".to_string(),
        out.to_string(),
    ]);
    Ok(TpucCall::new("coeff", tokens))
}

/// The layer's bmodel from `t`, given the MLIR `coeff_call` wrote in `cwd`; Err (and the
/// caller compiles fully) where its weight slots are not the template's.
pub fn patched(t: &Template, module: &str, coeff_mlir: &Path, cwd: &Path) -> Result<Vec<u8>> {
    let text = read_text(coeff_mlir)?;
    let slots = weight_slots(&text)?;
    let same = slots.len() == t.slots.len()
        && slots
            .iter()
            .zip(&t.slots)
            .all(|(a, b)| a.addr == b.addr && a.form == b.form);
    if !same {
        bail!("its weight slots are not those of template {}", t.name);
    }
    let npz = read_npz(&cwd.join(passes::weight_file(&text)?))?;
    let spans = crate::bmodel::patch::coeff_spans(&t.bmodel)?;
    let blob = coeff_blob(&slots, &npz, t.base, spans.coeff.1)?;
    crate::bmodel::patch::patch(&t.bmodel, &blob, module)
}

/// The layer's bmodel from `t` with coefficients made in Rust from its Top MLIR (`a.mlir`)
/// and weights in `cwd`; Err (and the caller runs [`coeff_call`]) where `t` has no recipe or
/// the layer's weights do not follow it.
pub fn patched_direct(t: &Template, module: &str, a: &DeployArgs, cwd: &Path) -> Result<Vec<u8>> {
    let recipe = t
        .recipe
        .as_ref()
        .context("no Rust recipe for its coefficients")?;
    let top_text = read_text(&cwd.join(&a.mlir))?;
    let top = read_npz(&cwd.join(passes::weight_file(&top_text)?))?;
    let w = direct_coeff::weights(recipe, &t.slots, &top_text, &top)?;
    let spans = crate::bmodel::patch::coeff_spans(&t.bmodel)?;
    let blob = coeff_blob(&t.slots, &w, t.base, spans.coeff.1)?;
    crate::bmodel::patch::patch(&t.bmodel, &blob, module)
}

/// Writes the io-alone config the template's compile saved where this layer's would go.
pub fn save_io_alone(t: &Template, a: &DeployArgs, cwd: &Path) -> Result<()> {
    match (&t.io_alone, a.save_io_alone_config.is_empty()) {
        (_, true) => Ok(()),
        (Some(bytes), false) => {
            let p = cwd.join(&a.save_io_alone_config);
            std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
        }
        (None, false) => bail!("template {} saved no io-alone config", t.name),
    }
}

/// The coefficient blob of `size` bytes: each weight's bytes at its address − `base`, zeros
/// between (as codegen lays it out).
fn coeff_blob(
    slots: &[Slot],
    npz: &HashMap<String, Vec<u8>>,
    base: u64,
    size: usize,
) -> Result<Vec<u8>> {
    let mut blob = vec![0u8; size];
    for s in slots {
        let data = npz
            .get(&s.name)
            .with_context(|| format!("weight {} is not in the npz", s.name))?;
        let at = usize::try_from(s.addr.checked_sub(base).context("address below base")?)?;
        let end = at.checked_add(data.len()).context("weight overflows")?;
        blob.get_mut(at..end)
            .with_context(|| format!("weight {} lies beyond the {size}-byte blob", s.name))?
            .copy_from_slice(data);
    }
    Ok(blob)
}

/// Every `top.Weight` of an addressed MLIR text, in order.
pub fn weight_slots(text: &str) -> Result<Vec<Slot>> {
    let mut locs = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("#loc")) {
        if let Some((id, rest)) = line.split_once(" = loc(\"") {
            if let Some(name) = rest.strip_suffix("\")") {
                locs.insert(id.trim_start_matches('#').to_string(), name.to_string());
            }
        }
    }
    let mut slots = vec![];
    for line in text.lines().filter(|l| l.contains("\"top.Weight\"()")) {
        let bad = || format!("an unexpected top.Weight line: {line}");
        let (_, after) = line.split_once("\"top.Weight\"()").with_context(bad)?;
        let (attrs, ty) = after.split_once(" : () -> tensor<").with_context(bad)?;
        let (ty, loc) = ty.split_once("> loc(#").with_context(bad)?;
        let (shape, addr) = ty.rsplit_once(", ").with_context(bad)?;
        let addr = addr.strip_suffix(" : i64").with_context(bad)?;
        let loc = loc.strip_suffix(')').with_context(bad)?;
        slots.push(Slot {
            addr: addr.parse().with_context(bad)?,
            form: format!("{shape} {}", path_attr(attrs)),
            name: locs.get(loc).with_context(bad)?.clone(),
        });
    }
    Ok(slots)
}

/// A weight's `path = "…"` attribute (the name bmodel's coeff locations carry); the others,
/// such as layer group's `allow_split`, do not reach the coefficient bytes.
fn path_attr(attrs: &str) -> &str {
    attrs
        .split_once("path = \"")
        .and_then(|(_, r)| r.split('"').next())
        .unwrap_or_default()
}

/// The data bytes of every array of an npz (C order, as numpy stores them). Its members are
/// walked by their local headers, as tpuc-opt's cnpy does: cnpy's end-of-archive records are
/// not ones a zip reader accepts.
pub fn read_npz(path: &Path) -> Result<HashMap<String, Vec<u8>>> {
    let b = read(path)?;
    let u16_at = |i: usize| -> Result<usize> {
        let s = b.get(i..i + 2).context("truncated")?;
        Ok(u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let u32_at = |i: usize| -> Result<u64> {
        let s = b.get(i..i + 4).context("truncated")?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as u64)
    };
    let mut out = HashMap::new();
    let mut at = 0usize;
    while u32_at(at).ok() == Some(0x0403_4b50) {
        if u16_at(at + 8)? != 0 {
            bail!("{}: a compressed member", path.display());
        }
        let mut size = u32_at(at + 18)?;
        let (name_len, extra_len) = (u16_at(at + 26)?, u16_at(at + 28)?);
        let name_at = at + 30;
        let name = b
            .get(name_at..name_at + name_len)
            .context("truncated name")?;
        let name = String::from_utf8_lossy(name)
            .trim_end_matches(".npy")
            .to_string();
        if size == u32::MAX as u64 {
            // zip64: the extra field's first record holds (uncompressed, compressed) sizes.
            let e = name_at + name_len;
            let s = b.get(e + 12..e + 20).context("truncated zip64 record")?;
            size = u64::from_le_bytes(s.try_into()?);
        }
        let data_at = name_at + name_len + extra_len;
        let end = data_at
            .checked_add(usize::try_from(size)?)
            .context("member overflows")?;
        let data = b.get(data_at..end).context("truncated member")?;
        let arr = npy_data(data).with_context(|| format!("{} in {}", name, path.display()))?;
        out.insert(name, arr);
        at = end;
    }
    if out.is_empty() {
        bail!("{}: no arrays", path.display());
    }
    Ok(out)
}

fn npy_data(b: &[u8]) -> Result<Vec<u8>> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        bail!("not a .npy array");
    }
    let (len, at) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => bail!(".npy format version {v}"),
    };
    let header = b.get(at..at + len).context("truncated .npy header")?;
    if String::from_utf8_lossy(header).contains("'fortran_order': True") {
        bail!("a Fortran-order array");
    }
    Ok(b[at + len..].to_vec())
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

fn read_text(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_lines_are_read_with_their_names() {
        let t = "#loc4 = loc(\"w.a\")\n%0 = \"top.Weight\"() {path = \"tpu.Mul.1\"} : () -> tensor<1x1x128xbf16, 4294967296 : i64> loc(#loc4)\n";
        let s = weight_slots(t).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].addr, 4294967296);
        assert_eq!(s[0].name, "w.a");
        assert_eq!(s[0].form, "1x1x128xbf16 tpu.Mul.1");
        assert!(weight_slots("%0 = \"top.Weight\"() : () -> tensor<1xf32> loc(#loc9)").is_err());
    }

    #[test]
    fn names_do_not_change_the_normalised_text() {
        let a = "#loc1 = loc(\"model.layers.1.w\")\nmodule @block_1 attributes {x} {\n";
        let b = "#loc1 = loc(\"model.layers.2.w\")\nmodule @block_2 attributes {x} {\n";
        assert_eq!(normalise(a, "block_1"), normalise(b, "block_2"));
        let c = "#loc1 = loc(\"model.layers.2.w\")\nmodule @block_2 attributes {y} {\n";
        assert_ne!(normalise(a, "block_1"), normalise(c, "block_2"));
    }
}
