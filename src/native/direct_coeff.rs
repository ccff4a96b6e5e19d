//! Compile-once without tpuc-opt: a layer's coefficient blob computed in Rust from its Top
//! weights, where its template shows how. At bf16, TPU-MLIR's lowering stores every weight
//! of a block as `NAME_bf16`, the Top weight `NAME` rounded to bf16 (nearest, ties to even)
//! in the same C order (an f32 operand, such as CumSum's axis, is stored as it is), and the
//! tpu passes move no byte of it. A [`Recipe`] is only learnt
//! where the template's own final weights are exactly that, slot by slot; anything else
//! (w4bf16's packed nibbles, a weight the passes made) leaves the shape on the tpuc-opt call.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};

use super::compile_once::Slot;

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
}

impl Form {
    fn apply(self, f32s: &[u8], truncate: bool) -> Result<Vec<u8>> {
        match self {
            Form::Bf16 => to_bf16(f32s, truncate),
            Form::F32 => Ok(f32s.to_vec()),
        }
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

/// The names of a Top MLIR's `top.Weight` ops (their locations), in text order.
pub fn top_weight_names(text: &str) -> Result<Vec<String>> {
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
        names.push(name.to_string());
    }
    Ok(names)
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
    let names = top_weight_names(top_text)?;
    let mut sources = Vec::with_capacity(slots.len());
    for s in slots {
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
        let at = names
            .iter()
            .position(|n| n == base)
            .with_context(|| format!("weight {} has no Top weight {base}", s.name))?;
        let want = addressed
            .get(&s.name)
            .with_context(|| format!("weight {} is not in the addressed npz", s.name))?;
        let from = top
            .get(base)
            .with_context(|| format!("Top weight {base} is not in the Top npz"))?;
        let got = form
            .apply(from, truncate)
            .with_context(|| format!("Top weight {base}"))?;
        if got != *want {
            bail!("weight {}: {}", s.name, first_difference(&got, want));
        }
        sources.push((at, form));
    }
    Ok(Recipe {
        sources,
        top_weights: names.len(),
    })
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
    let names = top_weight_names(top_text)?;
    if names.len() != recipe.top_weights || slots.len() != recipe.sources.len() {
        bail!("its Top weights are not the template's");
    }
    let mut out = HashMap::with_capacity(slots.len());
    for (s, &(at, form)) in slots.iter().zip(&recipe.sources) {
        let name = &names[at];
        let from = top
            .get(name)
            .with_context(|| format!("Top weight {name} is not in the Top npz"))?;
        out.insert(
            s.name.clone(),
            form.apply(from, false)
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
