//! The graph rewrites TPU-MLIR's ONNX front end makes before it converts a single node
//! (`OnnxOpt.onnx_opt`, run because model_transform's graphs are static), replayed on our graph
//! as the ONNX file `onnx::write` makes of it reaches them:
//!
//! - `remove_cast`: our ONNX files carry no `value_info` (and `--do_onnx_sim=` skips shape
//!   inference), so no Cast's input type is known and *every* Cast is dropped, its consumers
//!   reading the Cast's input instead. (Cast to bool feeding a Cast to float would first become
//!   Equal + Not; we refuse that pattern rather than replay it.)
//! - `remove_invalid_slice`: needs `value_info`; a no-op for us.
//! - `remove_duplicate`: attribute-less nodes of one op type with the same inputs are merged
//!   into the first, and consumers (and graph outputs) read its outputs.
//! - the fusion patterns (LayerNorm, PixelNorm, GELU, HardSigmoid, HardSwish): each needs an op
//!   we never emit (Pow, Clip, HardSigmoid) except GELU's `Div → Erf`; graphs with one of
//!   these are refused so a fusion can never silently differ.

use std::collections::HashMap;

use anyhow::{bail, Result};

use crate::graph::{Attr, Graph};

/// A node as the converter sees it after the rewrites (`OnnxNode`: named by its first output):
/// the graph's own node type.
pub use crate::graph::Node;

impl Node {
    pub fn attr(&self, key: &str) -> Option<&Attr> {
        self.attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn int_attr(&self, key: &str) -> Option<i64> {
        match self.attr(key) {
            Some(Attr::Int(i)) => Some(*i),
            _ => None,
        }
    }
}

/// ONNX's `TensorProto.BOOL` / `FLOAT` element types (a Cast's `to`).
const ONNX_BOOL: i64 = 9;
const ONNX_FLOAT: i64 = 1;

/// The nodes and graph outputs `onnx_opt` leaves of `graph`.
pub fn onnx_opt(graph: &Graph) -> Result<(Vec<Node>, Vec<String>)> {
    let mut nodes: Vec<Node> = graph
        .nodes
        .iter()
        .map(|n| Node {
            op: n.op,
            name: n.outputs.first().cloned().unwrap_or_default(),
            inputs: n.inputs.clone(),
            outputs: n.outputs.clone(),
            attrs: n.attrs.clone(),
        })
        .collect();
    let mut outputs: Vec<String> = graph.outputs.iter().map(|o| o.name.clone()).collect();
    refuse_unreplayed(graph, &nodes)?;
    remove_cast(&mut nodes, &outputs)?;
    remove_duplicate(&mut nodes, &mut outputs);
    Ok((nodes, outputs))
}

fn refuse_unreplayed(graph: &Graph, nodes: &[Node]) -> Result<()> {
    let producer: HashMap<&str, &Node> = nodes
        .iter()
        .flat_map(|n| n.outputs.iter().map(move |o| (o.as_str(), n)))
        .collect();
    for n in nodes {
        if matches!(n.op, "Pow" | "Clip" | "HardSigmoid") {
            bail!(
                "piece {}: node {} ({}) could take part in one of TPU-MLIR's ONNX fusions \
                 (LayerNorm/GELU/HardSwish), which the native backend does not replay",
                graph.name,
                n.name,
                n.op
            );
        }
        if n.op == "Erf"
            && n.inputs
                .first()
                .and_then(|i| producer.get(i.as_str()))
                .is_some_and(|p| p.op == "Div")
        {
            bail!(
                "piece {}: Div → Erf at {} would be fused into GELU by TPU-MLIR's onnx_opt, \
                 which the native backend does not replay",
                graph.name,
                n.name
            );
        }
    }
    Ok(())
}

/// `ReForm.remove_cast` with no known input types.
fn remove_cast(nodes: &mut Vec<Node>, outputs: &[String]) -> Result<()> {
    let mut consumers: HashMap<&str, Vec<&Node>> = HashMap::new();
    for n in nodes.iter() {
        for i in &n.inputs {
            consumers.entry(i.as_str()).or_default().push(n);
        }
    }
    for n in nodes.iter().filter(|n| n.op == "Cast") {
        if n.int_attr("to") != Some(ONNX_BOOL) {
            continue;
        }
        let cons = consumers
            .get(n.name.as_str())
            .map_or(&[][..], |v| v.as_slice());
        if let [next] = cons {
            if next.op == "Cast" && next.int_attr("to") == Some(ONNX_FLOAT) {
                bail!(
                    "Cast {} to bool then to float: TPU-MLIR rewrites it to Not(Equal(x, 0)), \
                     which the native backend does not replay",
                    n.name
                );
            }
        }
    }
    let source: HashMap<String, String> = nodes
        .iter()
        .filter(|n| n.op == "Cast")
        .map(|n| (n.name.clone(), n.inputs[0].clone()))
        .collect();
    let find = |name: &str| -> String {
        let mut name = name.to_string();
        while let Some(s) = source.get(&name) {
            name = s.clone();
        }
        name
    };
    for n in nodes.iter_mut().filter(|n| n.op != "Cast") {
        for i in n.inputs.iter_mut() {
            if source.contains_key(i.as_str()) {
                *i = find(i);
            }
        }
    }
    // A Cast that produces a graph output is replaced by an Identity of its source; that only
    // renames a value, which the converter's Identity (an alias) does too.
    let mut kept = Vec::with_capacity(nodes.len());
    for n in nodes.drain(..) {
        if n.op != "Cast" {
            kept.push(n);
        } else if outputs.contains(&n.name) {
            kept.push(Node {
                op: "Identity",
                name: n.name.clone(),
                inputs: vec![find(&n.name)],
                outputs: n.outputs,
                attrs: vec![],
            });
        }
    }
    *nodes = kept;
    Ok(())
}

/// `ReForm.remove_duplicate`.
fn remove_duplicate(nodes: &mut Vec<Node>, outputs: &mut [String]) {
    let mut kept: HashMap<(&'static str, Vec<String>), Vec<String>> = HashMap::new();
    let mut rename: HashMap<String, String> = HashMap::new();
    let mut keep = vec![true; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        if !n.attrs.is_empty() {
            continue;
        }
        match kept.get(&(n.op, n.inputs.clone())) {
            Some(first) => {
                for (o, f) in n.outputs.iter().zip(first) {
                    rename.insert(o.clone(), f.clone());
                }
                keep[i] = false;
            }
            None => {
                kept.insert((n.op, n.inputs.clone()), n.outputs.clone());
            }
        }
    }
    let mut it = keep.iter();
    nodes.retain(|_| *it.next().unwrap_or(&true));
    for n in nodes.iter_mut() {
        for i in n.inputs.iter_mut() {
            if let Some(r) = rename.get(i.as_str()) {
                *i = r.clone();
            }
        }
    }
    for o in outputs.iter_mut() {
        if let Some(r) = rename.get(o.as_str()) {
            *o = r.clone();
        }
    }
}
