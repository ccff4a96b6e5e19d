//! A small typed op graph: what `arch` builds and `onnx` serialises. Ops use ONNX operator
//! names and semantics (opset 17), but nothing here depends on protobuf. Weights are
//! referenced by checkpoint name and read only when the graph is written.

mod values;
pub use values::checkpoint_values;

/// Element type of a graph input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    I32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub op: &'static str,
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: Vec<(&'static str, Attr)>,
}

/// Where an initializer's values come from.
#[derive(Debug, Clone)]
pub enum InitData {
    /// A checkpoint tensor by its Hugging Face name; 2-D weights may be stored transposed
    /// (`[out, in]` → `[in, out]`, so `MatMul(x, W)` computes `x Wᵀ`).
    Weight {
        name: String,
        transpose: bool,
    },
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Debug, Clone)]
pub struct Initializer {
    pub name: String,
    pub dims: Vec<usize>,
    pub data: InitData,
    /// Stored as uint8 (A16MatMul's packed weights and zero points; the values are bytes).
    pub uint8: bool,
}

/// The linear layers of a pre-quantized checkpoint: which are quantized and how, so a linear
/// becomes `A16MatMul` on the checkpoint's own integers (see `model::quant`, `model::gguf`).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightOnly {
    pub bits: usize,
    pub group_size: usize,
    /// Module names (or name parts) the checkpoint keeps in float.
    pub not_converted: Vec<String>,
    /// GPTQ desc_act: each linear first gathers its input features into group order.
    pub permuted: bool,
    /// A GGUF's: exactly these layers are quantized, each with its own bits.
    pub per_layer: Option<std::collections::BTreeMap<String, usize>>,
}

impl WeightOnly {
    /// The bits linear layer `prefix` is stored on, if it is stored quantized.
    pub fn bits_of(&self, prefix: &str) -> Option<usize> {
        if let Some(layers) = &self.per_layer {
            return layers.get(prefix).copied();
        }
        let float = self
            .not_converted
            .iter()
            .any(|m| prefix.contains(m.as_str()));
        (!float).then_some(self.bits)
    }
}

/// A graph input/output: name, element type, shape.
#[derive(Debug, Clone)]
pub struct Io {
    pub name: String,
    pub elem: Elem,
    /// For a dynamic axis, its largest size (what TPU-MLIR compiles for).
    pub dims: Vec<usize>,
    /// An axis whose size varies per call, and its ONNX `dim_param` name.
    pub dynamic_axis: Option<usize>,
    pub dim_param: &'static str,
}

/// The symbol of the new-token axis of dynamic prefill graphs.
pub const SEQ_AXIS: &str = "seq_len";

#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub name: String,
    pub inputs: Vec<Io>,
    pub outputs: Vec<Io>,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Initializer>,
    /// Nodes that must run in f32 whatever the quantization (`model_deploy.py
    /// --quantize_table`), named as TPU-MLIR's ONNX front end names its ops:
    /// `<first output>_<op type>`.
    pub f32_ops: Vec<String>,
    /// Set for the blocks of a pre-quantized checkpoint.
    pub weight_only: Option<WeightOnly>,
    /// Initializers the native backend writes to its Top weights as bf16, rounded as TPU-MLIR's
    /// BF16 lowering rounds them (see `PieceOptions::bf16_tables`).
    pub bf16_tables: Vec<String>,
    counter: usize,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Default::default()
        }
    }

    pub fn input(&mut self, name: &str, elem: Elem, dims: &[usize]) -> String {
        self.input_with_axis(name, elem, dims, None)
    }

    /// An input whose `axis` varies per call, up to `dims[axis]`.
    pub fn input_with_axis(
        &mut self,
        name: &str,
        elem: Elem,
        dims: &[usize],
        dynamic_axis: Option<usize>,
    ) -> String {
        self.input_with_param(name, elem, dims, dynamic_axis, SEQ_AXIS)
    }

    /// An input whose `axis` varies per call under its own symbol (e.g. the history length of
    /// block_kv, independent of the new-token count).
    pub fn input_with_param(
        &mut self,
        name: &str,
        elem: Elem,
        dims: &[usize],
        dynamic_axis: Option<usize>,
        dim_param: &'static str,
    ) -> String {
        self.inputs.push(Io {
            name: name.into(),
            elem,
            dims: dims.to_vec(),
            dynamic_axis,
            dim_param,
        });
        name.to_string()
    }

    /// Whether any input has a per-call axis.
    pub fn is_dynamic(&self) -> bool {
        self.inputs.iter().any(|i| i.dynamic_axis.is_some())
    }

    /// Declares `value` as a graph output called `name` (through Identity when renamed).
    pub fn output(&mut self, value: &str, name: &str, elem: Elem, dims: &[usize]) {
        self.output_with_axis(value, name, elem, dims, None)
    }

    /// An output whose `axis` varies per call.
    pub fn output_with_axis(
        &mut self,
        value: &str,
        name: &str,
        elem: Elem,
        dims: &[usize],
        dynamic_axis: Option<usize>,
    ) {
        if value != name {
            self.nodes.push(Node {
                op: "Identity",
                name: format!("{name}_identity"),
                inputs: vec![value.into()],
                outputs: vec![name.into()],
                attrs: vec![],
            });
        }
        self.outputs.push(Io {
            name: name.into(),
            elem,
            dims: dims.to_vec(),
            dynamic_axis,
            dim_param: SEQ_AXIS,
        });
    }

    /// Marks every node added since `nodes.len()` was `first` as f32-only.
    pub fn keep_f32_since(&mut self, first: usize) {
        let names: Vec<String> = self.nodes[first..]
            .iter()
            .map(|n| format!("{}_{}", n.outputs[0], n.op))
            .collect();
        self.f32_ops.extend(names);
    }

    /// The `--quantize_table` text for [`Self::f32_ops`], if any.
    pub fn quantize_table(&self) -> Option<String> {
        (!self.f32_ops.is_empty())
            .then(|| self.f32_ops.iter().map(|n| format!("{n} F32\n")).collect())
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Adds a one-output node; returns the output's name.
    pub fn op(
        &mut self,
        op: &'static str,
        inputs: &[&str],
        attrs: Vec<(&'static str, Attr)>,
    ) -> String {
        self.op_n(op, inputs, 1, attrs).remove(0)
    }

    /// Adds a node with `n` outputs.
    pub fn op_n(
        &mut self,
        op: &'static str,
        inputs: &[&str],
        n: usize,
        attrs: Vec<(&'static str, Attr)>,
    ) -> Vec<String> {
        let base = self.fresh(op);
        let outputs: Vec<String> = (0..n).map(|i| format!("{base}_out{i}")).collect();
        self.nodes.push(Node {
            op,
            name: base,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.clone(),
            attrs,
        });
        outputs
    }

    /// A checkpoint tensor as an initializer (named after it).
    pub fn weight(&mut self, name: &str, dims: &[usize], transpose: bool) -> String {
        let id = if transpose {
            format!("{name}.T")
        } else {
            name.to_string()
        };
        if !self.initializers.iter().any(|i| i.name == id) {
            self.initializers.push(Initializer {
                name: id.clone(),
                dims: dims.to_vec(),
                data: InitData::Weight {
                    name: name.into(),
                    transpose,
                },
                uint8: false,
            });
        }
        id
    }

    /// `x Wᵀ` for a linear layer stored quantized: `A16MatMul(x, qweight [out, in/2] uint8,
    /// scales [out, in/g], zero points [out, in/g] uint8)`, the tensors being the checkpoint's
    /// own integers as `model::quant` presents them (`<prefix>.a16_*`).
    pub fn a16_matmul(
        &mut self,
        x: &str,
        prefix: &str,
        inp: usize,
        out: usize,
        wo: &WeightOnly,
        bits: usize,
    ) -> String {
        let permuted;
        let x = if wo.permuted {
            // x's last axis (of [1, L, K]) in the order the quantized rows were sorted into.
            let perm = format!("{prefix}.a16_perm");
            self.initializers.push(Initializer {
                name: perm.clone(),
                dims: vec![inp],
                data: InitData::Weight {
                    name: perm.clone(),
                    transpose: false,
                },
                uint8: false,
            });
            permuted = self.op("Gather", &[x, &perm], vec![("axis", Attr::Int(2))]);
            permuted.as_str()
        } else {
            x
        };
        use crate::model::quant::A16Part;
        let mut names = Vec::new();
        for part in A16Part::ALL {
            let name = format!("{prefix}.{}", part.suffix());
            self.initializers.push(Initializer {
                name: name.clone(),
                dims: part.shape(out, inp, bits, wo.group_size),
                data: InitData::Weight {
                    name: name.clone(),
                    transpose: false,
                },
                uint8: part != A16Part::Scales,
            });
            names.push(name);
        }
        self.op(
            "A16MatMul",
            &[x, &names[0], &names[1], &names[2]],
            vec![
                ("q_group_size", Attr::Int(wo.group_size as i64)),
                ("weight_bits", Attr::Int(bits as i64)),
            ],
        )
    }

    pub fn const_f32(&mut self, hint: &str, dims: &[usize], values: Vec<f32>) -> String {
        let name = self.fresh(hint);
        self.initializers.push(Initializer {
            name: name.clone(),
            dims: dims.to_vec(),
            data: InitData::F32(values),
            uint8: false,
        });
        name
    }

    pub fn const_i64(&mut self, hint: &str, values: &[i64]) -> String {
        let name = self.fresh(hint);
        self.initializers.push(Initializer {
            name: name.clone(),
            dims: vec![values.len()],
            data: InitData::I64(values.to_vec()),
            uint8: false,
        });
        name
    }

    /// A scalar f32 constant.
    pub fn scalar(&mut self, hint: &str, v: f32) -> String {
        self.const_f32(hint, &[], vec![v])
    }

    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.const_i64("shape", shape);
        self.op("Reshape", &[x, &s], vec![])
    }

    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op("Transpose", &[x], vec![("perm", Attr::Ints(perm.to_vec()))])
    }

    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.op("Mul", &[a, b], vec![])
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.op("Add", &[a, b], vec![])
    }

    /// `x * s`, skipped when `s == 1`.
    pub fn scale(&mut self, x: &str, s: f64) -> String {
        if s == 1.0 {
            return x.to_string();
        }
        let c = self.scalar("scale", s as f32);
        self.mul(x, &c)
    }

    /// Slice along one axis.
    pub fn slice(&mut self, x: &str, axis: i64, start: i64, end: i64) -> String {
        let s = self.const_i64("starts", &[start]);
        let e = self.const_i64("ends", &[end]);
        let a = self.const_i64("axes", &[axis]);
        self.op("Slice", &[x, &s, &e, &a], vec![])
    }

    pub fn concat(&mut self, xs: &[&str], axis: i64) -> String {
        self.op("Concat", xs, vec![("axis", Attr::Int(axis))])
    }
}
