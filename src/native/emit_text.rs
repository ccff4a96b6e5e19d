//! MLIR's generic text form as TPU-MLIR's importer prints it: SSA values, types, attribute
//! values, string literals and the `#locN` location aliases.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::mlir_float::f64_text;

/// An SSA value: its printed name and type, and the location naming it.
#[derive(Debug, Clone)]
pub struct Value {
    pub name: String,
    pub ty: String,
    /// Its entry in [`Locs`].
    pub loc: usize,
}

/// `tensor<AxBxf32>`.
pub fn ranked(dims: &[usize], elem: &str) -> String {
    let mut s = String::from("tensor<");
    for d in dims {
        let _ = write!(s, "{d}x");
    }
    s.push_str(elem);
    s.push('>');
    s
}

pub const UNRANKED: &str = "tensor<*xf32>";

/// Location aliases. MLIR numbers name locations in order of first use, and prints the fused
/// ones (which refer to other aliases) after all of them.
#[derive(Default)]
pub struct Locs {
    pub entries: Vec<Loc>,
    pub by_name: HashMap<String, usize>,
}

pub enum Loc {
    Unknown,
    Name(String),
    Fused(Vec<usize>),
}

impl Locs {
    pub fn name(&mut self, name: &str) -> usize {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        self.entries.push(Loc::Name(name.to_string()));
        self.by_name
            .insert(name.to_string(), self.entries.len() - 1);
        self.entries.len() - 1
    }

    pub fn fused(&mut self, parts: Vec<usize>) -> usize {
        self.entries.push(Loc::Fused(parts));
        self.entries.len() - 1
    }

    pub fn rename(&mut self, i: usize, to: &str) {
        if let Loc::Name(n) = &mut self.entries[i] {
            *n = to.to_string();
        }
    }

    /// Alias numbers (`#loc` is index 0, the unknown location).
    pub fn aliases(&self) -> Vec<usize> {
        let mut alias = vec![0; self.entries.len()];
        let mut next = 1;
        for pass_fused in [false, true] {
            for (i, l) in self.entries.iter().enumerate() {
                match (l, pass_fused) {
                    (Loc::Name(_), false) | (Loc::Fused(_), true) => {
                        alias[i] = next;
                        next += 1;
                    }
                    _ => {}
                }
            }
        }
        alias
    }
}

/// Attributes of one op: name and printed value.
pub type Attrs = Vec<(&'static str, String)>;

/// `%id = "op"(operands) {attrs} : (operand types) -> result`.
pub fn op_line(lhs: &str, op: &str, operands: &[&Value], attrs: Attrs, result: &str) -> String {
    let mut merged: Attrs = super::emit_ops::defaults(op)
        .iter()
        .map(|&(k, v)| (k, v.to_string()))
        .collect();
    for (k, v) in attrs {
        match merged.iter_mut().find(|(mk, _)| *mk == k) {
            Some(slot) => slot.1 = v,
            None => merged.push((k, v)),
        }
    }
    let names: Vec<&str> = operands.iter().map(|v| v.name.as_str()).collect();
    let types: Vec<&str> = operands.iter().map(|v| v.ty.as_str()).collect();
    let dict = if merged.is_empty() {
        String::new()
    } else {
        format!(" {}", attr_dict(merged))
    };
    format!(
        "{lhs} = \"{op}\"({}){dict} : ({}) -> {result}",
        names.join(", "),
        types.join(", ")
    )
}

/// `{a = 1, b = 2}`, sorted by name as MLIR's dictionary attributes are.
pub fn attr_dict(mut attrs: Attrs) -> String {
    attrs.sort_by(|a, b| a.0.cmp(b.0));
    let parts: Vec<String> = attrs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    format!("{{{}}}", parts.join(", "))
}

/// A module symbol: bare when it is an identifier, else quoted.
pub fn symbol(name: &str) -> String {
    let bare = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.'));
    if bare {
        name.to_string()
    } else {
        quoted(name)
    }
}

/// A string literal as MLIR prints it (non-printable bytes, `"` and `\` as `\XX`).
pub fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for &b in s.as_bytes() {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\{b:02X}");
        }
    }
    out.push('"');
    out
}

pub fn b(v: bool) -> String {
    v.to_string()
}

pub fn f64a(v: f64) -> String {
    format!("{} : f64", f64_text(v))
}

pub fn si32(v: i64) -> String {
    format!("{v} : si32")
}

pub fn i64a(v: i64) -> String {
    format!("{v} : i64")
}

pub fn ints(v: &[i64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

pub fn floats(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|&x| f64_text(x)).collect();
    format!("[{}]", parts.join(", "))
}
