//! One function per ONNX op kind: the Top ops `OnnxConverter.convert_*_op` (TPU-MLIR 1.30.2)
//! makes of it, in the order it makes them — including which operands become `top.Weight`s,
//! when a constant operand turns into an attribute, and the constants it folds.
//!
//! | ONNX | Top |
//! |---|---|
//! | Add / Mul | Add / Mul (a constant left operand is swapped right) |
//! | Sub | SubConst (scalar lhs, `is_reverse`) / AddConst (scalar rhs, negated) / Sub |
//! | Div | Reciprocal (scalar lhs) / MulConst (scalar rhs, 1/x) / Div |
//! | MatMul | MatMul (bias none) |
//! | Reshape, Transpose, Tile | Reshape `shape`, Permute `order`, Tile `tile` (×1 tiles vanish) |
//! | Slice | Slice with constant bounds (their Weights stay, dead) / SliceAxis; folded on weights |
//! | Concat | Concat; runs of constant inputs are merged into one new weight |
//! | Gather, GatherElements, ScatterElements, CumSum | same names (CumSum's axis also a Weight) |
//! | Softmax, Sigmoid, Relu, Tanh, Sqrt, Erf, Min, Max | same names |
//! | Neg | MulConst −1 |
//! | ReduceMean / ReduceMax / ReduceSum | Reduce `mode` |
//! | Less, And (and the other comparisons) | CompareConst (a scalar side) / Compare |
//! | Or | Add + CompareConst `> 0` |
//! | Where | Where, scalar branches as `x/y_const_val` |
//! | TopK | TopK (`values`, `indices`) |
//! | LayerNormalization | LayerNorm (a scale of 1s / bias of 0s is dropped) |
//! | Identity | nothing (an alias) |
//!
//! Cast never reaches here (TPU-MLIR's onnx_opt drops every Cast of our graphs; see emit_prep).

use anyhow::{bail, ensure, Result};

use super::emit::{b, f64a, i64a, ints, si32, Attrs, Emitter, Value};
use super::emit_prep::Node;
use crate::graph::Attr;

/// The ODS defaults (TopOps.td) MLIR fills in for the attributes an op is created without.
pub fn defaults(op: &str) -> &'static [(&'static str, &'static str)] {
    const RELU: [(&str, &str); 2] = [("do_relu", "false"), ("relu_limit", "-1.000000e+00 : f64")];
    const ROUND: (&str, &str) = ("round_mode", "\"HalfAwayFromZero\"");
    match op {
        "top.Add" | "top.Mul" | "top.MulConst" | "top.AddConst" => {
            &[RELU[0], RELU[1], ("is_scalar", "false")]
        }
        "top.Sub" | "top.Div" | "top.SubConst" => &[
            ("is_reverse", "false"),
            RELU[0],
            RELU[1],
            ("is_scalar", "false"),
        ],
        "top.Reciprocal" => &[("const_val", "1.000000e+00 : f64"), RELU[0], RELU[1]],
        "top.MatMul" => &[
            ("right_transpose", "false"),
            ("left_transpose", "false"),
            ("output_transpose", "false"),
            ("hdim_is_batch", "false"),
            ("keep_dims", "true"),
            RELU[0],
            RELU[1],
            ("is_lora", "false"),
            ("dq_type", "\"NONE\""),
            ("q_group_size", "0 : i64"),
        ],
        "top.Reshape" => &[("flatten_start_dim", "-1 : i64")],
        "top.A16MatMul" => &[("dq_type", "\"NONE\"")],
        "top.Slice" => &[("axes", "[]"), ("hasparamConvert_axes", "[]")],
        "top.Concat" => &[
            ("axis", "1 : si32"),
            RELU[0],
            RELU[1],
            ("only_merge", "false"),
            ROUND,
        ],
        "top.Softmax" => &[("log", "false"), ("beta", "1.000000e+00 : f64"), ROUND],
        "top.Sigmoid" => &[
            ("scale", "1.000000e+00 : f64"),
            ("bias", "0.000000e+00 : f64"),
            ("log", "false"),
            ROUND,
        ],
        "top.Relu" => &[RELU[1]],
        "top.Tanh" => &[ROUND],
        "top.Where" => &[
            ("x_is_const", "false"),
            ("y_is_const", "false"),
            ("x_const_val", "0.000000e+00 : f64"),
            ("y_const_val", "0.000000e+00 : f64"),
        ],
        "top.CompareConst" | "top.Reduce" | "top.Floor" => &[("is_scalar", "false")],
        "top.TopK" => &[
            ("K", "-1 : i64"),
            ("largest", "true"),
            ("sorted", "true"),
            ("replace_topk_indices", "false"),
            ("use_hau", "true"),
        ],
        "top.Gather" => &[
            ("keepdims", "true"),
            ("axis", "0 : si32"),
            ("is_scalar", "false"),
            ("is_lora", "false"),
        ],
        "top.GatherElements" => &[("axis", "2 : i64")],
        "top.ScatterElements" => &[("reduction", "0 : i64"), ("nc_can_split", "false")],
        _ => &[],
    }
}

/// Converts one node (after `emit_prep`) into Top ops.
pub fn convert(e: &mut Emitter, n: &Node) -> Result<()> {
    match n.op {
        "Add" | "Mul" => add_mul(e, n),
        "Sub" => sub(e, n),
        "Div" => div(e, n),
        "MatMul" => matmul(e, n),
        "A16MatMul" => a16_matmul(e, n),
        "Reshape" => reshape(e, n),
        "Transpose" => transpose(e, n),
        "Slice" => super::emit_slice::slice(e, n),
        "Concat" => super::emit_slice::concat(e, n),
        "Gather" => gather(e, n),
        "GatherElements" => gather_elements(e, n),
        "ScatterElements" => scatter_elements(e, n),
        "CumSum" => cumsum(e, n),
        "Tile" => tile(e, n),
        "TopK" => topk(e, n),
        "Softmax" => softmax(e, n),
        "Sigmoid" => {
            let x = e.get_operand(&n.inputs[0])?;
            let attrs = vec![("scale", f64a(1.0)), ("bias", f64a(0.0))];
            unary(e, n, "top.Sigmoid", x, attrs)
        }
        "Relu" | "Tanh" | "Sqrt" | "Erf" => {
            let x = e.get_operand(&n.inputs[0])?;
            unary(e, n, &format!("top.{}", n.op), x, vec![])
        }
        "Neg" => {
            let x = e.get_operand(&n.inputs[0])?;
            unary(e, n, "top.MulConst", x, vec![("const_val", f64a(-1.0))])
        }
        "Min" | "Max" => {
            binary_ops(n)?;
            let lhs = e.get_op(&n.inputs[0])?;
            let rhs = e.get_op(&n.inputs[1])?;
            let v = e.op(&format!("top.{}", n.op), &[&lhs, &rhs], vec![], &loc(n));
            e.add_operand(&n.name, v)
        }
        "ReduceMean" | "ReduceMax" | "ReduceSum" | "ReduceMin" | "ReduceProd" => reduce(e, n),
        "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "Equal" | "And" | "Xor" => {
            compare(e, n)
        }
        "Or" => or(e, n),
        "Where" => where_(e, n),
        "LayerNormalization" => layer_norm(e, n),
        "Identity" => {
            let v = e.get_operand(&n.inputs[0])?;
            e.add_operand(&n.name, v)
        }
        other => bail!("ONNX op {other} has no native Top-dialect mapping"),
    }
}

/// `<first output>_<op type>`: the converter's op names.
pub fn loc(n: &Node) -> String {
    format!("{}_{}", n.name, n.op)
}

fn binary_ops(n: &Node) -> Result<()> {
    ensure!(n.inputs.len() == 2, "{} takes two inputs", n.op);
    Ok(())
}

fn unary(e: &mut Emitter, n: &Node, op: &str, x: Value, attrs: Attrs) -> Result<()> {
    let v = e.op(op, &[&x], attrs, &loc(n));
    e.add_operand(&n.name, v)
}

fn add_mul(e: &mut Emitter, n: &Node) -> Result<()> {
    binary_ops(n)?;
    let (mut lhs, mut rhs) = (n.inputs[0].as_str(), n.inputs[1].as_str());
    if e.is_weight(lhs) && !e.is_weight(rhs) {
        std::mem::swap(&mut lhs, &mut rhs);
    }
    let a = e.get_op(lhs)?;
    let c = e.get_op(rhs)?;
    let v = e.op(&format!("top.{}", n.op), &[&a, &c], vec![], &loc(n));
    e.add_operand(&n.name, v)
}

fn sub(e: &mut Emitter, n: &Node) -> Result<()> {
    binary_ops(n)?;
    let (lhs, rhs) = (n.inputs[0].as_str(), n.inputs[1].as_str());
    let v = if e.is_scalar(lhs)? {
        let c = e.scalar(lhs)? as f64;
        let x = e.get_op(rhs)?;
        let attrs = vec![("const_val", f64a(c)), ("is_reverse", b(true))];
        e.op("top.SubConst", &[&x], attrs, &loc(n))
    } else if e.is_scalar(rhs)? {
        let c = -e.scalar(rhs)? as f64;
        let x = e.get_op(lhs)?;
        e.op("top.AddConst", &[&x], vec![("const_val", f64a(c))], &loc(n))
    } else {
        let a = e.get_op(lhs)?;
        let c = e.get_op(rhs)?;
        e.op("top.Sub", &[&a, &c], vec![], &loc(n))
    };
    e.add_operand(&n.name, v)
}

fn div(e: &mut Emitter, n: &Node) -> Result<()> {
    binary_ops(n)?;
    let (lhs, rhs) = (n.inputs[0].as_str(), n.inputs[1].as_str());
    let v = if e.is_scalar(lhs)? {
        let c = e.scalar(lhs)? as f64;
        let x = e.get_op(rhs)?;
        e.op(
            "top.Reciprocal",
            &[&x],
            vec![("const_val", f64a(c))],
            &loc(n),
        )
    } else if e.is_scalar(rhs)? {
        // numpy: `1 / np.float32(c)` is a float64 division. Integer-typed Divs would also get
        // a Floor, but the converter only knows types from value_info, which our files lack.
        let c = 1.0 / e.scalar(rhs)? as f64;
        let x = e.get_op(lhs)?;
        e.op("top.MulConst", &[&x], vec![("const_val", f64a(c))], &loc(n))
    } else {
        let a = e.get_op(lhs)?;
        let c = e.get_op(rhs)?;
        e.op("top.Div", &[&a, &c], vec![], &loc(n))
    };
    e.add_operand(&n.name, v)
}

fn matmul(e: &mut Emitter, n: &Node) -> Result<()> {
    binary_ops(n)?;
    let a = e.get_op(&n.inputs[0])?;
    let c = e.get_op(&n.inputs[1])?;
    let none = e.none();
    let v = e.op(
        "top.MatMul",
        &[&a, &c, &none],
        vec![("do_relu", b(false))],
        &loc(n),
    );
    e.add_operand(&n.name, v)
}

/// A pre-quantized linear (not an ONNX op): `top.A16MatMul` as llm_convert.py's `linear()`
/// creates it, weight `[N, K·bits/8]` uint8 used transposed, scales and zero points `[N, K/g]`.
fn a16_matmul(e: &mut Emitter, n: &Node) -> Result<()> {
    ensure!(
        n.inputs.len() == 4,
        "A16MatMul takes x, qweight, scales, zeros"
    );
    let x = e.get_op(&n.inputs[0])?;
    let w = e.get_weight_op(&n.inputs[1])?;
    let s = e.get_weight_op(&n.inputs[2])?;
    let z = e.get_weight_op(&n.inputs[3])?;
    let none = e.none();
    let int = |name| match n.attr(name) {
        Some(Attr::Int(v)) => Ok(*v),
        _ => bail!("A16MatMul needs {name}"),
    };
    let attrs = vec![
        ("right_transpose", b(true)),
        ("q_group_size", i64a(int("q_group_size")?)),
        ("weight_bits", i64a(int("weight_bits")?)),
    ];
    let v = e.op("top.A16MatMul", &[&x, &w, &s, &z, &none], attrs, &loc(n));
    e.add_operand(&n.name, v)
}

/// A constant's values as the integer list an I64ArrayAttr makes of its f32 copy.
pub fn int_list(e: &Emitter, name: &str) -> Result<Vec<i64>> {
    Ok(e.values(name)?.iter().map(|&v| v as i64).collect())
}

fn reshape(e: &mut Emitter, n: &Node) -> Result<()> {
    let x = e.get_operand(&n.inputs[0])?;
    let v = if e.is_weight(&n.inputs[1]) {
        let shape = int_list(e, &n.inputs[1])?;
        e.op("top.Reshape", &[&x], vec![("shape", ints(&shape))], &loc(n))
    } else {
        let s = e.get_operand(&n.inputs[1])?;
        e.op("top.Reshape", &[&x, &s], vec![], &loc(n))
    };
    e.add_operand(&n.name, v)
}

fn transpose(e: &mut Emitter, n: &Node) -> Result<()> {
    let x = e.get_op(&n.inputs[0])?;
    let perm = match n.attr("perm") {
        Some(Attr::Ints(p)) => p.clone(),
        _ => vec![],
    };
    let v = e.op("top.Permute", &[&x], vec![("order", ints(&perm))], &loc(n));
    e.add_operand(&n.name, v)
}

fn gather(e: &mut Emitter, n: &Node) -> Result<()> {
    let table = e.get_op(&n.inputs[0])?;
    let axis = n.int_attr("axis").unwrap_or(0);
    let mut attrs = vec![("axis", si32(axis))];
    let idx = n.inputs[1].as_str();
    if e.is_scalar(idx)? {
        // A 0-d initializer index drops the axis (`find_named_tensor` sees ONNX's rank).
        let rank0 = e.is_initializer(idx) && e.tensor(idx)?.onnx_rank == 0;
        attrs.push(("keepdims", b(!rank0)));
    }
    let indices = e.get_op(idx)?;
    let v = e.op("top.Gather", &[&table, &indices], attrs, &loc(n));
    e.add_operand(&n.name, v)
}

fn gather_elements(e: &mut Emitter, n: &Node) -> Result<()> {
    let x = e.get_op(&n.inputs[0])?;
    let idx = e.get_op(&n.inputs[1])?;
    let axis = n.int_attr("axis").unwrap_or(0);
    let v = e.op(
        "top.GatherElements",
        &[&x, &idx],
        vec![("axis", i64a(axis))],
        &loc(n),
    );
    e.add_operand(&n.name, v)
}

fn scatter_elements(e: &mut Emitter, n: &Node) -> Result<()> {
    ensure!(n.attr("reduction").is_none(), "reduction is not supported");
    let x = e.get_op(&n.inputs[0])?;
    let idx = e.get_op(&n.inputs[1])?;
    let upd = e.get_op(&n.inputs[2])?;
    let axis = n.int_attr("axis").unwrap_or(0);
    let v = e.op(
        "top.ScatterElements",
        &[&x, &idx, &upd],
        vec![("axis", i64a(axis))],
        &loc(n),
    );
    e.add_operand(&n.name, v)
}

fn cumsum(e: &mut Emitter, n: &Node) -> Result<()> {
    ensure!(
        e.is_weight(&n.inputs[1]),
        "only a constant axis is supported"
    );
    // The converter ignores these; refuse rather than compile a different sum.
    for a in ["exclusive", "reverse"] {
        ensure!(
            n.int_attr(a).unwrap_or(0) == 0,
            "CumSum {a}=1 is not supported"
        );
    }
    let axis = int_list(e, &n.inputs[1])?;
    ensure!(axis.len() == 1, "CumSum axis must be one value");
    let x = e.get_operand(&n.inputs[0])?;
    let dim = e.get_weight_op(&n.inputs[1])?;
    let v = e.op(
        "top.CumSum",
        &[&x, &dim],
        vec![("axis", i64a(axis[0]))],
        &loc(n),
    );
    e.add_operand(&n.name, v)
}

fn tile(e: &mut Emitter, n: &Node) -> Result<()> {
    let x = e.get_op(&n.inputs[0])?;
    let v = if e.is_weight(&n.inputs[1]) {
        let reps = int_list(e, &n.inputs[1])?;
        if reps.iter().product::<i64>() == 1 {
            return e.add_operand(&n.name, x);
        }
        e.op("top.Tile", &[&x], vec![("tile", ints(&reps))], &loc(n))
    } else {
        let t = e.get_operand(&n.inputs[1])?;
        e.op("top.Tile", &[&x, &t], vec![], &loc(n))
    };
    e.add_operand(&n.name, v)
}

fn topk(e: &mut Emitter, n: &Node) -> Result<()> {
    let x = e.get_operand(&n.inputs[0])?;
    let mut k = n.int_attr("k").unwrap_or(-1);
    let mut kt = None;
    if let Some(name) = n.inputs.get(1) {
        if e.is_weight(name) {
            k = e.scalar(name)? as i64;
        } else {
            kt = Some(e.get_operand(name)?);
        }
    }
    let axis = n.int_attr("axis").unwrap_or(-1);
    let largest = n.int_attr("largest").unwrap_or(1) != 0;
    let mut names = [
        format!("{}_TopK_indices", n.name),
        format!("{}_TopK_values", n.name),
    ];
    for (i, out) in n.outputs.iter().enumerate().take(2) {
        if !out.is_empty() {
            names[i] = format!("{out}_TopK");
        }
    }
    let attrs = vec![
        ("axis", i64a(axis)),
        ("K", i64a(k)),
        ("largest", b(largest)),
        ("sorted", b(true)),
        ("replace_topk_indices", b(false)),
    ];
    ensure!(kt.is_none(), "TopK with a computed k is not supported");
    let results = e.topk(&x, attrs, [&names[0], &names[1]]);
    for (out, v) in n.outputs.iter().zip(results) {
        if !out.is_empty() {
            e.add_operand(out, v)?;
        }
    }
    Ok(())
}

fn softmax(e: &mut Emitter, n: &Node) -> Result<()> {
    let x = e.get_operand(&n.inputs[0])?;
    let axis = n.int_attr("axis").unwrap_or(-1);
    let attrs = vec![("axis", si32(axis)), ("log", b(false))];
    unary(e, n, "top.Softmax", x, attrs)
}

fn reduce(e: &mut Emitter, n: &Node) -> Result<()> {
    let x = e.get_operand(&n.inputs[0])?;
    let mut axes = match (n.inputs.get(1), n.attr("axes")) {
        (Some(a), _) => int_list(e, a)?,
        (None, Some(Attr::Ints(a))) => a.clone(),
        (None, _) => vec![],
    };
    axes.sort();
    let keepdims = n.int_attr("keepdims").unwrap_or(1) != 0;
    let attrs = vec![
        ("axes", ints(&axes)),
        ("keepdims", b(keepdims)),
        ("mode", format!("\"{}\"", n.op)),
    ];
    unary(e, n, "top.Reduce", x, attrs)
}

fn compare(e: &mut Emitter, n: &Node) -> Result<()> {
    binary_ops(n)?;
    let (lhs, rhs) = (n.inputs[0].as_str(), n.inputs[1].as_str());
    let mode = format!("\"{}\"", n.op);
    let rank1 = |e: &Emitter, x: &str| -> Result<bool> { Ok(e.tensor(x)?.dims.len() == 1) };
    let v = if e.is_scalar(lhs)? && rank1(e, lhs)? {
        let x = e.get_op(rhs)?;
        let c = e.scalar(lhs)? as f64;
        compare_const(e, n, &x, mode, c, true)
    } else if e.is_scalar(rhs)? && rank1(e, rhs)? {
        let x = e.get_op(lhs)?;
        let c = e.scalar(rhs)? as f64;
        compare_const(e, n, &x, mode, c, false)
    } else {
        let r = e.get_op(rhs)?;
        let l = e.get_op(lhs)?;
        e.op("top.Compare", &[&l, &r], vec![("mode", mode)], &loc(n))
    };
    e.add_operand(&n.name, v)
}

fn compare_const(e: &mut Emitter, n: &Node, x: &Value, mode: String, c: f64, inv: bool) -> Value {
    let attrs = vec![("mode", mode), ("const_val", f64a(c)), ("inversed", b(inv))];
    e.op("top.CompareConst", &[x], attrs, &loc(n))
}

fn or(e: &mut Emitter, n: &Node) -> Result<()> {
    binary_ops(n)?;
    let a = e.get_operand(&n.inputs[0])?;
    let c = e.get_operand(&n.inputs[1])?;
    let name = loc(n);
    let sum = e.op("top.Add", &[&a, &c], vec![], &format!("{name}_add"));
    let attrs = vec![
        ("mode", "\"Greater\"".into()),
        ("const_val", f64a(0.0)),
        ("inversed", b(false)),
    ];
    let v = e.op(
        "top.CompareConst",
        &[&sum],
        attrs,
        &format!("{name}_compare"),
    );
    e.add_operand(&n.name, v)
}

fn where_(e: &mut Emitter, n: &Node) -> Result<()> {
    ensure!(n.inputs.len() == 3, "Where takes three inputs");
    let cond = e.get_op(&n.inputs[0])?;
    let t = e.get_op(&n.inputs[1])?;
    let f = e.get_op(&n.inputs[2])?;
    let mut attrs = vec![];
    let mut branch = |e: &mut Emitter, name: &str, v: Value, side: [&'static str; 2]| {
        Ok::<_, anyhow::Error>(if e.is_scalar(name)? {
            attrs.push((side[0], b(true)));
            attrs.push((side[1], f64a(e.scalar(name)? as f64)));
            e.none()
        } else {
            attrs.push((side[0], b(false)));
            attrs.push((side[1], f64a(0.0)));
            v
        })
    };
    let t = branch(e, &n.inputs[1], t, ["x_is_const", "x_const_val"])?;
    let f = branch(e, &n.inputs[2], f, ["y_is_const", "y_const_val"])?;
    let v = e.op("top.Where", &[&cond, &t, &f], attrs, &loc(n));
    e.add_operand(&n.name, v)
}

fn layer_norm(e: &mut Emitter, n: &Node) -> Result<()> {
    ensure!(
        n.inputs.len() <= 3,
        "LayerNormalization takes at most three inputs"
    );
    let axis = n.int_attr("axis").unwrap_or(-1);
    let eps = match n.attr("epsilon") {
        Some(Attr::Float(f)) => *f as f64,
        _ => 1e-5,
    };
    let x = e.get_op(&n.inputs[0])?;
    let mut scale = e.none();
    let mut bias = e.none();
    if let Some(s) = n.inputs.get(1) {
        if !e.is_scalar_of(s, 1.0)? {
            scale = e.get_weight_op(s)?;
        }
    }
    if let Some(bn) = n.inputs.get(2) {
        if !e.is_scalar_of(bn, 0.0)? {
            bias = e.get_weight_op(bn)?;
        }
    }
    let attrs = vec![
        ("normalized_shape", ints(&[])),
        ("axis", si32(axis)),
        ("eps", f64a(eps)),
    ];
    let v = e.op("top.LayerNorm", &[&x, &scale, &bias], attrs, &loc(n));
    e.add_operand(&n.name, v)
}
