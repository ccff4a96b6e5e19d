//! `graph::Graph` → TPU-MLIR's Top-dialect origin MLIR text and the tensors of its weight
//! archive (`origin` writes both to their files): what `model_transform.py`'s ONNX front end
//! (`OnnxConverter`) writes for the ONNX file `onnx::write` makes of the same graph, run as the
//! convert runs it (`--do_onnx_sim=`, static shapes at each dynamic axis's largest size), with
//! the returned values named after the graph's outputs (as `convert::output_names` restores
//! them). The text is the one MLIR's printer makes: ops in conversion order, every attribute
//! with its ODS default, results `tensor<*xf32>` until the top passes infer shapes, a
//! `top.Weight` per initializer the converter touched (also the dead ones it leaves for
//! constant Slice bounds), and the `#locN` aliases.
//!
//! How each ONNX op maps to Top ops is in `emit_ops`; the ONNX-level rewrites TPU-MLIR makes
//! first in `emit_prep`. An op the converter would not produce the same way is an error naming
//! the op and the piece.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use anyhow::{bail, Context, Result};

use super::emit_prep;
use super::emit_text::{attr_dict, op_line, quoted, ranked, symbol, Loc, Locs, UNRANKED};
pub(super) use super::emit_text::{b, f64a, floats, i64a, ints, si32, Attrs, Value};
use super::emit_weights::{tensor_values, Tensor, TensorData};
use crate::graph::{Elem, Graph};
use crate::model::WeightSource;

/// The MLIR text of `graph` (with `weight_file` as its npz name) and which tensors go to the npz.
pub(super) struct Emitted {
    pub text: String,
    pub(super) tensors: Vec<Tensor>,
    pub(super) members: Vec<usize>,
}

/// The tensors named in `bf16` are `bf16` weights; every other float one is `f32`.
pub(super) fn emit(
    graph: &Graph,
    weights: &dyn WeightSource,
    weight_file: &str,
    bf16: HashSet<String>,
) -> Result<Emitted> {
    let (nodes, outputs) = emit_prep::onnx_opt(graph)?;
    let mut e = Emitter::new(graph, weights);
    e.bf16 = bf16;
    for init in &graph.initializers {
        let dims = if init.dims.is_empty() {
            vec![1]
        } else {
            init.dims.clone()
        };
        e.push_tensor(Tensor {
            name: init.name.clone(),
            dims,
            onnx_rank: init.dims.len(),
            initializer: true,
            data: TensorData::Init(e.tensors.len()),
        })?;
    }
    for (i, input) in graph.inputs.iter().enumerate() {
        let value = e.input(i, input.name.as_str(), &input.dims);
        e.add_operand(&input.name, value)?;
    }
    for node in &nodes {
        super::emit_ops::convert(&mut e, node).with_context(|| {
            format!(
                "piece {}: ONNX node {} ({})",
                graph.name, node.name, node.op
            )
        })?;
    }
    let mut returned = Vec::with_capacity(outputs.len());
    for (name, wanted) in outputs.iter().zip(graph.outputs.iter().map(|o| &o.name)) {
        let v =
            e.operands.get(name).cloned().with_context(|| {
                format!("piece {}: output {name} is never computed", graph.name)
            })?;
        e.locs.rename(v.loc, wanted);
        returned.push(v);
    }
    let text = e.print(weight_file, &returned);
    let members = (0..e.tensors.len())
        .filter(|&t| e.operands.contains_key(&e.tensors[t].name))
        .collect();
    Ok(Emitted {
        text,
        tensors: e.tensors,
        members,
    })
}

/// The converter's state: weights, the values named so far, and the function body.
pub(super) struct Emitter<'a> {
    graph: &'a Graph,
    weights: &'a dyn WeightSource,
    tensors: Vec<Tensor>,
    tensor_index: HashMap<String, usize>,
    operands: HashMap<String, Value>,
    /// `MLIRImporter.load_weight`: one `top.Weight` per weight name.
    weight_ops: HashMap<String, Value>,
    body: Vec<(String, usize)>,
    next_id: usize,
    used_names: HashSet<String>,
    conflict_id: usize,
    locs: Locs,
    args: Vec<String>,
    none: Value,
    /// Checkpoint tensors written as bf16 (see [`bf16_tables`]).
    bf16: HashSet<String>,
}

impl<'a> Emitter<'a> {
    fn new(graph: &'a Graph, weights: &'a dyn WeightSource) -> Emitter<'a> {
        let mut locs = Locs::default();
        locs.entries.push(Loc::Unknown);
        let mut e = Emitter {
            graph,
            weights,
            tensors: Vec::new(),
            tensor_index: HashMap::new(),
            operands: HashMap::new(),
            weight_ops: HashMap::new(),
            body: Vec::new(),
            next_id: 0,
            used_names: HashSet::new(),
            conflict_id: 0,
            locs,
            args: Vec::new(),
            none: Value {
                name: String::new(),
                ty: String::new(),
                loc: 0,
            },
            bf16: HashSet::new(),
        };
        let id = e.number();
        e.body
            .push((format!("{id} = \"top.None\"() : () -> none"), 0));
        e.none = Value {
            name: id,
            ty: "none".into(),
            loc: 0,
        };
        e
    }

    fn number(&mut self) -> String {
        let n = self.next_id;
        self.next_id += 1;
        format!("%{n}")
    }

    /// MLIR's `SSANameState::uniqueValueName` for results the op names itself.
    fn unique_name(&mut self, name: &str) -> String {
        let mut out = name.to_string();
        if self.used_names.contains(&out) {
            loop {
                out = format!("{name}_{}", self.conflict_id);
                self.conflict_id += 1;
                if !self.used_names.contains(&out) {
                    break;
                }
            }
        }
        self.used_names.insert(out.clone());
        format!("%{out}")
    }

    fn push_tensor(&mut self, t: Tensor) -> Result<()> {
        if self.tensor_index.contains_key(&t.name) {
            bail!("weight {} defined twice", t.name);
        }
        self.tensor_index.insert(t.name.clone(), self.tensors.len());
        self.tensors.push(t);
        Ok(())
    }

    /// A derived weight (`addWeight`); an existing one of that name must hold the same data.
    pub fn add_weight(&mut self, name: &str, dims: Vec<usize>, values: Vec<f32>) -> Result<()> {
        if let Some(&i) = self.tensor_index.get(name) {
            let old = self.values(name)?;
            if old.as_ref() == values.as_slice() {
                return Ok(());
            }
            drop(old);
            bail!("weight {name} conflicts with {}", self.tensors[i].name);
        }
        let dims = if dims.is_empty() { vec![1] } else { dims };
        self.push_tensor(Tensor {
            name: name.to_string(),
            onnx_rank: dims.len(),
            dims,
            initializer: false,
            data: TensorData::Derived(values),
        })
    }

    /// A weight `name` = `source` sliced by `ranges` (values computed when they are needed).
    pub fn add_slice_weight(
        &mut self,
        name: &str,
        source: &str,
        ranges: Vec<(usize, i64, i64, i64)>,
    ) -> Result<()> {
        let src = self.tensor_index[source];
        let mut dims = self.tensors[src].dims.clone();
        for &(axis, s, en, st) in &ranges {
            dims[axis] = super::emit_slice::slice_indices(dims[axis], s, en, st).len();
        }
        if self.is_weight(name) {
            let values = {
                let t = Tensor {
                    name: name.to_string(),
                    onnx_rank: dims.len(),
                    dims: dims.clone(),
                    initializer: false,
                    data: TensorData::SliceOf {
                        source: src,
                        ranges,
                    },
                };
                tensor_values(self.graph, self.weights, &self.tensors, &t)?.into_owned()
            };
            return self.add_weight(name, dims, values);
        }
        self.push_tensor(Tensor {
            name: name.to_string(),
            onnx_rank: dims.len(),
            dims,
            initializer: false,
            data: TensorData::SliceOf {
                source: src,
                ranges,
            },
        })
    }

    /// Overwrites a weight's values (the converter clamps Slice bounds in place).
    pub fn replace_values(&mut self, name: &str, values: Vec<f32>) -> Result<()> {
        let i = *self
            .tensor_index
            .get(name)
            .with_context(|| format!("no weight {name}"))?;
        self.tensors[i].data = TensorData::Derived(values);
        Ok(())
    }

    pub fn is_initializer(&self, name: &str) -> bool {
        self.tensor_index
            .get(name)
            .is_some_and(|&i| self.tensors[i].initializer)
    }

    pub fn is_weight(&self, name: &str) -> bool {
        self.tensor_index.contains_key(name)
    }

    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .with_context(|| format!("no weight {name}"))
    }

    /// A weight's values (reads a checkpoint tensor; only the converter's value checks need it).
    pub fn values(&self, name: &str) -> Result<Cow<'_, [f32]>> {
        let t = self.tensor(name)?;
        tensor_values(self.graph, self.weights, &self.tensors, t)
            .with_context(|| format!("weight {name}"))
    }

    /// `BaseConverter.isScalar`: one element, or all elements equal.
    pub fn is_scalar(&self, name: &str) -> Result<bool> {
        if !self.is_weight(name) {
            return Ok(false);
        }
        if self.tensor(name)?.dims.iter().product::<usize>() == 1 {
            return Ok(true);
        }
        let v = self.values(name)?;
        Ok(v.first().is_some_and(|&f| v.iter().all(|&x| x == f)))
    }

    /// `BaseConverter.isScalar_`: one element, or all elements equal to `x`.
    pub fn is_scalar_of(&self, name: &str, x: f32) -> Result<bool> {
        if !self.is_weight(name) {
            return Ok(false);
        }
        if self.tensor(name)?.dims.iter().product::<usize>() == 1 {
            return Ok(true);
        }
        Ok(self.values(name)?.iter().all(|&v| v == x))
    }

    pub fn scalar(&self, name: &str) -> Result<f32> {
        anyhow::ensure!(self.is_scalar(name)?, "{name} is not a scalar");
        Ok(self.values(name)?[0])
    }

    pub fn add_operand(&mut self, name: &str, v: Value) -> Result<()> {
        if let Some(old) = self.operands.get(name) {
            anyhow::ensure!(old.name == v.name, "operand {name} conflict");
            return Ok(());
        }
        self.operands.insert(name.to_string(), v);
        Ok(())
    }

    pub fn get_operand(&self, name: &str) -> Result<Value> {
        self.operands
            .get(name)
            .cloned()
            .with_context(|| format!("operand {name} not found"))
    }

    /// `getOp`: a weight's `top.Weight` (created on first use), else the named value.
    pub fn get_op(&mut self, name: &str) -> Result<Value> {
        if self.is_weight(name) {
            self.get_weight_op(name)
        } else {
            self.get_operand(name)
        }
    }

    /// `getWeightOp`: the weight's `top.Weight`, inserted at the current end of the body.
    pub fn get_weight_op(&mut self, name: &str) -> Result<Value> {
        if let Some(v) = self.weight_ops.get(name) {
            let v = v.clone();
            self.add_operand(name, v.clone())?;
            return Ok(v);
        }
        let t = self.tensor(name)?;
        let dims = t.dims.clone();
        let elem = if t.uint8(self.graph) {
            "ui8"
        } else if self.bf16.contains(name) {
            "bf16"
        } else {
            "f32"
        };
        let id = self.number();
        let loc = self.locs.name(name);
        let ty = ranked(&dims, elem);
        self.body
            .push((format!("{id} = \"top.Weight\"() : () -> {ty}"), loc));
        let v = Value { name: id, ty, loc };
        self.weight_ops.insert(name.to_string(), v.clone());
        self.add_operand(name, v.clone())?;
        Ok(v)
    }

    pub fn none(&self) -> Value {
        self.none.clone()
    }

    /// `top.Input` of argument `i`, with the attributes model_transform's preprocessing
    /// defaults give it (`MLIRImporter.create_input_op`).
    fn input(&mut self, i: usize, name: &str, dims: &[usize]) -> Value {
        let elem = match self.graph.inputs[i].elem {
            Elem::F32 => "f32",
            Elem::I32 => "si32",
        };
        let arg_ty = ranked(dims, elem);
        self.args.push(format!("%arg{i}: {arg_ty} loc(unknown)"));
        let mut attrs: Attrs = vec![("do_preprocess", "true".into())];
        if dims.len() == 3 || (dims.len() == 4 && dims[1] <= 4) {
            attrs.extend([
                ("channel_format", "\"nchw\"".into()),
                ("keep_aspect_ratio", "false".into()),
                ("keep_ratio_mode", "\"letterbox\"".into()),
                ("mean", floats(&[0.0; 3])),
                ("pad_type", "\"center\"".into()),
                ("pad_value", "0 : i64".into()),
                ("pixel_format", "\"bgr\"".into()),
                ("scale", floats(&[1.0; 3])),
                ("yuv_type", "\"\"".into()),
            ]);
            // `--input_shapes` (dynamic graphs) makes the preprocessor's resize_dims the first
            // input's last two dims.
            if self.graph.is_dynamic() {
                let first = &self.graph.inputs[0].dims;
                let tail: Vec<i64> = first[first.len().saturating_sub(2)..]
                    .iter()
                    .map(|&d| d as i64)
                    .collect();
                attrs.push(("resize_dims", ints(&tail)));
            }
        }
        let loc = self.locs.name(name);
        let id = self.number();
        let ty = ranked(dims, "f32");
        let line = format!(
            "{id} = \"top.Input\"(%arg{i}) {} : ({arg_ty}) -> {ty}",
            attr_dict(attrs)
        );
        self.body.push((line, loc));
        Value { name: id, ty, loc }
    }

    /// Appends a one-result op (result `tensor<*xf32>`) named `loc`; `attrs` are merged over
    /// the op's ODS defaults.
    pub fn op(&mut self, op: &str, operands: &[&Value], attrs: Attrs, loc: &str) -> Value {
        let loc = self.locs.name(loc);
        let id = self.number();
        let line = op_line(&id, op, operands, attrs, UNRANKED);
        self.body.push((line, loc));
        Value {
            name: id,
            ty: UNRANKED.into(),
            loc,
        }
    }

    /// `top.TopK`: two results the op names `values` and `indices`, one fused location.
    pub fn topk(&mut self, operand: &Value, attrs: Attrs, locs: [&str; 2]) -> [Value; 2] {
        let parts = [self.locs.name(locs[0]), self.locs.name(locs[1])];
        let fused = self.locs.fused(parts.to_vec());
        let values = self.unique_name("values");
        let indices = self.unique_name("indices");
        let lhs = format!("{values}, {indices}");
        let line = op_line(
            &lhs,
            "top.TopK",
            &[operand],
            attrs,
            &format!("({UNRANKED}, {UNRANKED})"),
        );
        self.body.push((line, fused));
        [(values, parts[0]), (indices, parts[1])].map(|(name, loc)| Value {
            name,
            ty: UNRANKED.into(),
            loc,
        })
    }

    /// The whole module text.
    fn print(&self, weight_file: &str, returned: &[Value]) -> String {
        let alias = self.locs.aliases();
        let loc_ref = |i: usize| match alias[i] {
            0 => "#loc".to_string(),
            n => format!("#loc{n}"),
        };
        let mut s = String::from("#loc = loc(unknown)\n");
        let _ = writeln!(
            s,
            "module @{} attributes {{module.chip = \"ALL\", module.platform = \"ONNX\", \
             module.state = \"TOP_F32\", module.top_run_mode = \"STATIC\", \
             module.weight_file = {}}} {{",
            symbol(&self.graph.name),
            quoted(weight_file)
        );
        let results: Vec<&str> = returned.iter().map(|_| UNRANKED).collect();
        let result_ty = match results.len() {
            1 => results[0].to_string(),
            _ => format!("({})", results.join(", ")),
        };
        let _ = writeln!(
            s,
            "  func.func @main({}) -> {result_ty} {{",
            self.args.join(", ")
        );
        for (line, loc) in &self.body {
            let _ = writeln!(s, "    {line} loc({})", loc_ref(*loc));
        }
        let names: Vec<&str> = returned.iter().map(|v| v.name.as_str()).collect();
        let types: Vec<&str> = returned.iter().map(|v| v.ty.as_str()).collect();
        let _ = writeln!(
            s,
            "    return {} : {} loc(#loc)",
            names.join(", "),
            types.join(", ")
        );
        s.push_str("  } loc(#loc)\n} loc(#loc)\n");
        let mut defs: Vec<(usize, String)> = Vec::new();
        for (i, l) in self.locs.entries.iter().enumerate() {
            let text = match l {
                Loc::Unknown => continue,
                Loc::Name(n) => format!("loc({})", quoted(n)),
                Loc::Fused(parts) => {
                    let p: Vec<String> = parts.iter().map(|&p| loc_ref(p)).collect();
                    format!("loc(fused[{}])", p.join(", "))
                }
            };
            defs.push((alias[i], text));
        }
        defs.sort_by_key(|(a, _)| *a);
        let lines: Vec<String> = defs
            .into_iter()
            .map(|(a, t)| format!("#loc{a} = {t}"))
            .collect();
        s.push_str(&lines.join("\n"));
        s.push('\n');
        s
    }
}
