//! `graph::Graph` → ONNX `ModelProto` (prost), written atomically.
//!
//! IR version 8 and opset 17: TPU-MLIR 1.30.2 pins onnx 1.14.1. Weights are read one at a time
//! from the checkpoint while the file is written; a piece whose weights would pass protobuf's
//! 2 GiB limit keeps them in an external data file next to it.

#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use prost::Message;

use crate::graph::{Attr, Elem, Graph, InitData, Io};
use crate::model::WeightSource;
use proto::tensor_proto::DataType;

pub const IR_VERSION: i64 = 8;
pub const OPSET: i64 = 17;
/// Above this many initializer bytes, weights go to external data (protobuf caps at 2 GiB).
const INLINE_LIMIT: usize = 1 << 30;

/// Where the weights of the ONNX file at `path` go when they are external: `<file>.data`.
pub fn external_data_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".data");
    path.with_file_name(name)
}

/// Writes `graph` to `path` (and `path.data` when external), reading weights from `weights`.
/// Returns the bytes of weights written.
pub fn write(graph: &Graph, weights: &dyn WeightSource, path: &Path) -> Result<u64> {
    write_with_inline_limit(graph, weights, path, INLINE_LIMIT)
}

/// [`write`] with weights going to external data above `inline_limit` bytes (tests use a
/// small limit to exercise the external-data path on tiny models).
pub fn write_with_inline_limit(
    graph: &Graph,
    weights: &dyn WeightSource,
    path: &Path,
    inline_limit: usize,
) -> Result<u64> {
    let total: usize = graph
        .initializers
        .iter()
        .map(|i| i.dims.iter().product::<usize>() * 4)
        .sum();
    let external = total > inline_limit;
    let data_path = external_data_path(path);
    let data_name = data_path
        .file_name()
        .context("file name")?
        .to_string_lossy()
        .into_owned();
    let tmp_data = data_path.with_extension("data.tmp");
    let mut data_file = if external {
        Some(std::io::BufWriter::new(
            std::fs::File::create(&tmp_data)
                .with_context(|| format!("creating {}", tmp_data.display()))?,
        ))
    } else {
        None
    };
    let mut offset = 0u64;
    let mut initializers = Vec::with_capacity(graph.initializers.len());
    for init in &graph.initializers {
        let (data_type, raw) = initializer_bytes(&init.data, &init.dims, weights)
            .with_context(|| format!("initializer {} of piece {}", init.name, graph.name))?;
        let mut t = proto::TensorProto {
            name: Some(init.name.clone()),
            data_type: Some(data_type as i32),
            dims: init.dims.iter().map(|d| *d as i64).collect(),
            ..Default::default()
        };
        match data_file.as_mut().filter(|_| raw.len() >= 1024) {
            Some(f) => {
                f.write_all(&raw)?;
                t.data_location = Some(proto::tensor_proto::DataLocation::External as i32);
                t.external_data = [
                    ("location", data_name.clone()),
                    ("offset", offset.to_string()),
                    ("length", raw.len().to_string()),
                ]
                .into_iter()
                .map(|(k, v)| proto::StringStringEntryProto {
                    key: Some(k.into()),
                    value: Some(v),
                })
                .collect();
                offset += raw.len() as u64;
            }
            None => t.raw_data = Some(raw),
        }
        initializers.push(t);
    }
    let model = proto::ModelProto {
        ir_version: Some(IR_VERSION),
        producer_name: Some("llm-convert".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        opset_import: vec![proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        graph: Some(proto::GraphProto {
            name: Some(graph.name.clone()),
            node: graph.nodes.iter().map(node_proto).collect(),
            initializer: initializers,
            input: graph.inputs.iter().map(value_info).collect(),
            output: graph.outputs.iter().map(value_info).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Some(mut f) = data_file {
        f.flush()?;
        drop(f);
        std::fs::rename(&tmp_data, &data_path)?;
    } else {
        let _ = std::fs::remove_file(&data_path);
    }
    crate::util::write_atomic(path, &model.encode_to_vec())?;
    Ok(total as u64)
}

fn initializer_bytes(
    data: &InitData,
    dims: &[usize],
    weights: &dyn WeightSource,
) -> Result<(DataType, Vec<u8>)> {
    Ok(match data {
        InitData::F32(v) => (DataType::Float, le_bytes(v)),
        InitData::I64(v) => (DataType::Int64, le_bytes(v)),
        InitData::Weight { name, transpose } => {
            let v = crate::graph::checkpoint_values(weights, name, *transpose, dims)?;
            (DataType::Float, le_bytes(&v))
        }
    })
}

// ONNX raw_data is little-endian; so is every machine TPU-MLIR runs on.
#[cfg(target_endian = "big")]
compile_error!("ONNX raw_data is written by casting memory, which needs a little-endian target");

/// The raw little-endian bytes of a numeric slice (a memory cast, fast even unoptimised).
fn le_bytes<T: bytemuck::Pod>(v: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

fn elem_type(e: Elem) -> i32 {
    match e {
        Elem::F32 => DataType::Float as i32,
        Elem::I32 => DataType::Int32 as i32,
    }
}

fn value_info(io: &Io) -> proto::ValueInfoProto {
    use proto::tensor_shape_proto::{dimension::Value, Dimension};
    use proto::type_proto::{Tensor, Value as TypeValue};
    proto::ValueInfoProto {
        name: Some(io.name.clone()),
        r#type: Some(proto::TypeProto {
            value: Some(TypeValue::TensorType(Tensor {
                elem_type: Some(elem_type(io.elem)),
                shape: Some(proto::TensorShapeProto {
                    dim: io
                        .dims
                        .iter()
                        .enumerate()
                        .map(|(axis, d)| Dimension {
                            value: Some(if io.dynamic_axis == Some(axis) {
                                Value::DimParam(io.dim_param.into())
                            } else {
                                Value::DimValue(*d as i64)
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node_proto(n: &crate::graph::Node) -> proto::NodeProto {
    use proto::attribute_proto::AttributeType;
    proto::NodeProto {
        op_type: Some(n.op.into()),
        name: Some(n.name.clone()),
        input: n.inputs.clone(),
        output: n.outputs.clone(),
        attribute: n
            .attrs
            .iter()
            .map(|(k, v)| {
                let mut a = proto::AttributeProto {
                    name: Some(k.to_string()),
                    ..Default::default()
                };
                match v {
                    Attr::Int(i) => {
                        a.r#type = Some(AttributeType::Int as i32);
                        a.i = Some(*i);
                    }
                    Attr::Ints(is) => {
                        a.r#type = Some(AttributeType::Ints as i32);
                        a.ints = is.clone();
                    }
                    Attr::Float(f) => {
                        a.r#type = Some(AttributeType::Float as i32);
                        a.f = Some(*f);
                    }
                }
                a
            })
            .collect(),
        ..Default::default()
    }
}
