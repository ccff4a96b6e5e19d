//! Compile-once without tpuc-opt: a layer's coefficient blob computed in Rust from its Top
//! weights, where its template shows how. At bf16, TPU-MLIR's lowering stores every weight
//! of a block as `NAME_bf16`, the Top weight `NAME` rounded to bf16 (nearest, ties to even)
//! in the same C order (an f32 operand, such as CumSum's axis, is stored as it is), and the
//! tpu passes move no byte of it. At w4bf16 a MatMul's weight, scale and zp are its Top
//! weight quantized ([`direct_w4`]). A [`Recipe`] is only learnt where the template's own
//! final weights are exactly that, slot by slot; anything else (a weight the passes made)
//! leaves the shape on the tpuc-opt call.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use anyhow::{bail, Context, Result};

use super::compile_once::Slot;
use super::direct_w4::{self, Quantized};

/// How each of a template's weight slots derives from its layer's Top weights: the position,
/// among the Top MLIR's `top.Weight` ops, of the weight each slot takes, and whether it is
/// rounded to bf16 or copied. Layers of one shape have the same Top MLIR but for names, so a
/// position names the same weight in each.
#[derive(Debug, Clone)]
pub struct Recipe {
    sources: Vec<(usize, Form)>,
    top_weights: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Bf16,
    F32,
    /// One of the three weights of a W4BF16 MatMul whose K×N Top weight is quantized in
    /// groups of `group`; `sign` is the template's (see [`direct_w4::Quantized::sign`]).
    W4 {
        part: Part,
        k: usize,
        n: usize,
        group: usize,
        sign: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Packed,
    Scale,
    Zp,
}

impl Form {
    /// The slot's bytes from its Top weight `at`; `w4` keeps each MatMul's quantization for
    /// its other two slots.
    fn apply(
        self,
        at: usize,
        f32s: &[u8],
        truncate: bool,
        w4: &mut HashMap<usize, Quantized>,
    ) -> Result<Vec<u8>> {
        let Form::W4 {
            part,
            k,
            n,
            group,
            sign,
        } = self
        else {
            return match self {
                Form::F32 => Ok(f32s.to_vec()),
                _ => to_bf16(f32s, truncate),
            };
        };
        let q = match w4.entry(at) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(direct_w4::quantize(&f32_values(f32s), k, n, group)?),
        };
        if q.sign != sign {
            bail!("its sign attribute would not be the template's");
        }
        Ok(match part {
            Part::Packed => q.packed.clone(),
            Part::Scale => q.scale.clone(),
            Part::Zp => q.zp.clone(),
        })
    }
}

/// Selects the rounding [`learn`] tries; only a test's control asks for truncation, to show a
/// wrong transform is caught by the template's own bytes.
const TRUNCATE_ENV: &str = "LLM_CONVERT_TEST_BF16_TRUNCATE";

/// f32 bits to bf16 bits as TPU-MLIR rounds weights: nearest, ties to even. Non-finite values
/// are refused: their bf16 forms were never checked on a template.
fn bf16(bits: u32, truncate: bool) -> Option<u16> {
    if bits & 0x7f80_0000 == 0x7f80_0000 {
        return None;
    }
    if truncate {
        return Some((bits >> 16) as u16);
    }
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    Some((rounded >> 16) as u16)
}

/// f32 bits to bf16 bits, rounded as TPU-MLIR does; None for a non-finite value.
pub fn bf16_bits(bits: u32) -> Option<u16> {
    bf16(bits, false)
}

/// The values of an f32 array's little-endian bytes.
fn f32_values(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The bf16 bytes of an f32 array's bytes.
fn to_bf16(f32s: &[u8], truncate: bool) -> Result<Vec<u8>> {
    if f32s.len() % 4 != 0 {
        bail!("{} bytes are not f32 values", f32s.len());
    }
    let mut out = Vec::with_capacity(f32s.len() / 2);
    for (i, c) in f32s.chunks_exact(4).enumerate() {
        let bits = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let h = bf16(bits, truncate).with_context(|| format!("value {i} is not finite"))?;
        out.extend_from_slice(&h.to_le_bytes());
    }
    Ok(out)
}

/// The names of a Top MLIR's `top.Weight` ops (their locations) and their shapes, in text
/// order.
pub fn top_weights(text: &str) -> Result<Vec<(String, Vec<usize>)>> {
    let mut locs = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("#loc")) {
        if let Some((id, rest)) = line.split_once(" = loc(\"") {
            if let Some(name) = rest.strip_suffix("\")") {
                locs.insert(id.trim_start_matches('#'), name);
            }
        }
    }
    let mut names = vec![];
    for line in text.lines().filter(|l| l.contains("\"top.Weight\"()")) {
        let loc = line
            .rsplit_once("loc(#")
            .and_then(|(_, r)| r.strip_suffix(')'))
            .with_context(|| format!("a top.Weight without a location: {line}"))?;
        let name = locs
            .get(loc)
            .with_context(|| format!("location {loc} has no name"))?;
        let shape = line
            .split_once("-> tensor<")
            .and_then(|(_, r)| r.split_once('>'))
            .map(|(t, _)| dims(t))
            .unwrap_or_default();
        names.push((name.to_string(), shape));
    }
    Ok(names)
}

/// The dimensions of a tensor type `64x2x2xbf16` (its element type dropped).
fn dims(ty: &str) -> Vec<usize> {
    let mut d: Vec<&str> = ty.split('x').collect();
    d.pop();
    d.iter().filter_map(|v| v.parse().ok()).collect()
}

/// The recipe of a template: its final `slots` and their bytes (`addressed`, its addressed
/// weight npz) against its Top MLIR text and Top weights. Err says which slot does not follow
/// and, where bytes differ, how many and the first.
pub fn learn(
    slots: &[Slot],
    addressed: &HashMap<String, Vec<u8>>,
    top_text: &str,
    top: &HashMap<String, Vec<u8>>,
) -> Result<Recipe> {
    let truncate = std::env::var_os(TRUNCATE_ENV).is_some();
    let weights = top_weights(top_text)?;
    let bytes_of = |name: &str| {
        addressed
            .get(name)
            .with_context(|| format!("weight {name} is not in the addressed npz"))
    };
    let mut sources: Vec<Option<(usize, Form)>> = vec![None; slots.len()];
    for (i, s) in slots.iter().enumerate() {
        // A scale or zp is learnt with its weight, which may come later.
        let with_weight = [" tpu.A16MatMul.scale", " tpu.A16MatMul.zp"];
        if sources[i].is_some() || with_weight.iter().any(|p| s.form.ends_with(p)) {
            continue;
        }
        if s.form.ends_with(" tpu.A16MatMul.weight") {
            // Its scale and zp: the weight reorder's names for the op's other two operands.
            let op = s.name.strip_suffix("_uint").unwrap_or(&s.name);
            let find = |suffix: &str| {
                let name = format!("{op}{suffix}");
                slots
                    .iter()
                    .position(|t| t.name == name)
                    .with_context(|| format!("A16MatMul weight {} has no {name}", s.name))
            };
            let at = [i, find("_reordered")?, find("_1_reordered")?];
            let three = at.map(|j| slots[j].clone());
            for (j, src) in at.iter().zip(learn_w4(&three, &bytes_of, &weights, top)?) {
                sources[*j] = Some(src);
            }
            continue;
        }
        let elem = s.form.split(' ').next().unwrap_or_default();
        let bf16_of = s
            .name
            .strip_suffix("_bf16")
            .filter(|_| elem.ends_with("xbf16"));
        let (base, form) = match bf16_of {
            Some(base) => (base, Form::Bf16),
            None if elem.ends_with("xf32") => (s.name.as_str(), Form::F32),
            None => bail!(
                "weight {} ({}) is not made from one Top weight",
                s.name,
                s.form
            ),
        };
        let at = weights
            .iter()
            .position(|(n, _)| n == base)
            .with_context(|| format!("weight {} has no Top weight {base}", s.name))?;
        let want = bytes_of(&s.name)?;
        let from = top
            .get(base)
            .with_context(|| format!("Top weight {base} is not in the Top npz"))?;
        let got = form
            .apply(at, from, truncate, &mut HashMap::new())
            .with_context(|| format!("Top weight {base}"))?;
        if got != *want {
            bail!("weight {}: {}", s.name, first_difference(&got, want));
        }
        sources[i] = Some((at, form));
    }
    let sources: Option<Vec<_>> = sources.into_iter().collect();
    Ok(Recipe {
        sources: sources.context("an A16MatMul scale or zp without its weight")?,
        top_weights: weights.len(),
    })
}

/// The sources of one A16MatMul's weight, scale and zp slots: the one Top weight whose
/// quantization gives all three slots' bytes (its shape N×K/2, scale lanes×blocks×groups).
fn learn_w4<'a>(
    three: &[Slot],
    bytes_of: &dyn Fn(&str) -> Result<&'a Vec<u8>>,
    weights: &[(String, Vec<usize>)],
    top: &HashMap<String, Vec<u8>>,
) -> Result<Vec<(usize, Form)>> {
    let [w, sc, zp] = three else {
        bail!("an A16MatMul without scale and zp");
    };
    if !sc.form.ends_with(" tpu.A16MatMul.scale") || !zp.form.ends_with(" tpu.A16MatMul.zp") {
        bail!("weight {} is not followed by its scale and zp", w.name);
    }
    let want = [bytes_of(&w.name)?, bytes_of(&sc.name)?, bytes_of(&zp.name)?];
    let sd = dims(sc.form.split(' ').next().unwrap_or_default());
    let [lanes, blocks, groups] = sd[..] else {
        bail!("scale {} has the form {}", sc.name, sc.form);
    };
    let n = lanes * blocks;
    let mut found = vec![];
    for (at, (name, shape)) in weights.iter().enumerate() {
        let [k, wn] = shape[..] else { continue };
        if wn != n || k * n != 2 * want[0].len() || groups == 0 || k % groups != 0 {
            continue;
        }
        let Some(from) = top.get(name) else { continue };
        let group = k / groups;
        let mut cache = HashMap::new();
        let form = |part, sign| Form::W4 {
            part,
            k,
            n,
            group,
            sign,
        };
        let Ok(q) = direct_w4::quantize(&f32_values(from), k, n, group) else {
            continue;
        };
        let sign = q.sign;
        cache.insert(at, q);
        let parts = [Part::Packed, Part::Scale, Part::Zp];
        let mut same = true;
        for (p, want) in parts.iter().zip(&want) {
            same &= form(*p, sign).apply(at, from, false, &mut cache)? == **want;
        }
        if same {
            found.push(parts.map(|p| (at, form(p, sign))));
        }
    }
    match found.as_slice() {
        [one] => Ok(one.to_vec()),
        [] => bail!("no Top weight quantizes to A16MatMul weight {}", w.name),
        _ => bail!(
            "several Top weights quantize to A16MatMul weight {}",
            w.name
        ),
    }
}

/// How two byte strings differ: their lengths, or the count of differing bytes and the first.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    if got.len() != want.len() {
        return format!("{} bytes where TPU-MLIR has {}", got.len(), want.len());
    }
    let diff: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    match diff.first() {
        Some(&i) => format!(
            "{} of {} bytes differ, the first at byte {i} ({:#04x}, TPU-MLIR {:#04x})",
            diff.len(),
            got.len(),
            got[i],
            want[i]
        ),
        None => "no byte differs".to_string(),
    }
}

/// Each slot's bytes for a layer of the recipe's shape, from that layer's Top MLIR text and
/// Top weights, by slot name as `slots` (the template's) has them.
pub fn weights(
    recipe: &Recipe,
    slots: &[Slot],
    top_text: &str,
    top: &HashMap<String, Vec<u8>>,
) -> Result<HashMap<String, Vec<u8>>> {
    let weights = top_weights(top_text)?;
    if weights.len() != recipe.top_weights || slots.len() != recipe.sources.len() {
        bail!("its Top weights are not the template's");
    }
    let mut out = HashMap::with_capacity(slots.len());
    let mut w4 = HashMap::new();
    for (s, &(at, form)) in slots.iter().zip(&recipe.sources) {
        let name = &weights[at].0;
        let from = top
            .get(name)
            .with_context(|| format!("Top weight {name} is not in the Top npz"))?;
        out.insert(
            s.name.clone(),
            form.apply(at, from, false, &mut w4)
                .with_context(|| format!("Top weight {name}"))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_ties_to_even() {
        // 1.0 + half an ulp of bf16: a tie, kept even (down); one bit more rounds up.
        assert_eq!(bf16(0x3f80_8000, false), Some(0x3f80));
        assert_eq!(bf16(0x3f81_8000, false), Some(0x3f82));
        assert_eq!(bf16(0x3f80_8001, false), Some(0x3f81));
        assert_eq!(bf16(0x3f80_ffff, true), Some(0x3f80));
        assert_eq!(bf16(0x7fc0_0000, false), None);
        assert_eq!(bf16(0xff80_0000, false), None);
    }

    #[test]
    fn a_slot_that_is_not_a_rounded_top_weight_is_refused() {
        let top_text =
            "#loc3 = loc(\"w\")\n%0 = \"top.Weight\"() : () -> tensor<2xf32> loc(#loc3)\n";
        let top = HashMap::from([(
            "w".to_string(),
            [1.0f32, 2.5].iter().flat_map(|f| f.to_le_bytes()).collect(),
        )]);
        let slot = |name: &str| Slot {
            addr: 0,
            form: "1x2xbf16 tpu.Mul.1".to_string(),
            name: name.to_string(),
        };
        let good = HashMap::from([("w_bf16".to_string(), vec![0x80, 0x3f, 0x20, 0x40])]);
        let r = learn(&[slot("w_bf16")], &good, top_text, &top).unwrap();
        let w = weights(&r, &[slot("w_bf16")], top_text, &top).unwrap();
        assert_eq!(w["w_bf16"], good["w_bf16"]);
        let bad = HashMap::from([("w_bf16".to_string(), vec![0x80, 0x3f, 0x21, 0x40])]);
        let e = learn(&[slot("w_bf16")], &bad, top_text, &top).unwrap_err();
        assert!(format!("{e:#}").contains("1 of 4 bytes differ"), "{e:#}");
        assert!(learn(&[slot("w_uint")], &good, top_text, &top).is_err());
        let f32_slot = Slot {
            form: "2xf32 tpu.CumSum.1".to_string(),
            ..slot("w")
        };
        let copied = HashMap::from([("w".to_string(), top["w"].clone())]);
        let r = learn(std::slice::from_ref(&f32_slot), &copied, top_text, &top).unwrap();
        assert_eq!(
            weights(&r, &[f32_slot], top_text, &top).unwrap()["w"],
            top["w"]
        );
    }
}
