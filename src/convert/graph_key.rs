//! What a piece's exported file is made of, as one digest computed without exporting it: the
//! graph description (`arch::build`'s [`Graph`]) in a stable encoding of our own, with each
//! checkpoint tensor it reads standing in as its [`WeightSource::fingerprint`] (hashed from
//! the stored bytes, never decoded). Equal digests mean equal ONNX bytes, as long as the code
//! that turns a graph into bytes is the same: [`EXPORTER_VERSION`] stands for that code.

use anyhow::{Context, Result};

use crate::graph::{Attr, Elem, Graph, InitData, Initializer, Io, Node};
use crate::model::fingerprint::{Fingerprint, StableHasher};
use crate::model::WeightSource;

/// The version of the code that turns a graph and its weights into the bytes a compile reads,
/// which the digest does not see: `src/onnx` (the protobuf layout, the external-data
/// threshold), `src/export.rs` (file names, the quantize table's format), our f32 conversion
/// of stored tensors, and the derived tensors' math (transposes, q/k un-permute, qkv
/// regrouping, NormHead, expert views). The digest does cover the graph itself, the ONNX IR
/// version and opset, our crate version (the file records it) and candle's (it dequantizes).
///
/// Bump rule: any change there that changes the bytes written for the same graph and the same
/// checkpoint bumps this number (the ONNX baseline check shows whether bytes changed). A change
/// to an arch graph builder needs no bump: it changes the graph, which the digest covers.
pub const EXPORTER_VERSION: u64 = 1;

/// The digest of piece `file_stem`'s export of `graph`, its weights read from `weights`.
pub fn graph_digest(
    graph: &Graph,
    file_stem: &str,
    weights: &dyn WeightSource,
) -> Result<Fingerprint> {
    let mut h = StableHasher::new("llm-convert piece graph");
    h.u64(EXPORTER_VERSION)
        .i64(crate::onnx::IR_VERSION)
        .i64(crate::onnx::OPSET)
        // The ONNX file records the producer's version.
        .str(env!("CARGO_PKG_VERSION"))
        .str(candle_version())
        // The external data file, if any, is named after the piece.
        .str(file_stem);
    graph_into(&mut h, graph, weights).with_context(|| format!("keying piece {file_stem}"))?;
    Ok(h.finish())
}

fn graph_into(h: &mut StableHasher, graph: &Graph, weights: &dyn WeightSource) -> Result<()> {
    // `..`: the rest of a Graph is its private name counter, which only names nodes.
    let Graph {
        name,
        inputs,
        outputs,
        nodes,
        initializers,
        f32_ops,
        bf16_tables,
        ..
    } = graph;
    h.str(name);
    for list in [inputs, outputs] {
        h.u64(list.len() as u64);
        for io in list {
            io_into(h, io);
        }
    }
    h.u64(nodes.len() as u64);
    for n in nodes {
        node_into(h, n);
    }
    h.u64(initializers.len() as u64);
    for init in initializers {
        initializer_into(h, init, weights).with_context(|| format!("initializer {}", init.name))?;
    }
    h.strs(f32_ops);
    // Only graphs that have some say so (the others keep the keys they had).
    if !bf16_tables.is_empty() {
        h.str("bf16 tables, rounded as lowered").strs(bf16_tables);
    }
    Ok(())
}

/// candle-core's entry in Cargo.lock: candle dequantizes GGUF blocks and converts the stored
/// dtypes into the f32 values the export writes, so its version is part of the key.
fn candle_version() -> &'static str {
    const LOCK: &str = include_str!("../../Cargo.lock");
    LOCK.split("[[package]]")
        .find_map(|entry| {
            let mut lines = entry.trim().lines();
            (lines.next()? == "name = \"candle-core\"")
                .then(|| lines.next())
                .flatten()
        })
        .unwrap_or("candle-core not in Cargo.lock")
}

// The destructuring below names every field (no `..`): a field added to the graph types fails
// to compile here until the digest covers it.

fn io_into(h: &mut StableHasher, io: &Io) {
    let Io {
        name,
        elem,
        dims,
        dynamic_axis,
        dim_param,
    } = io;
    h.str(name).u64(match elem {
        Elem::F32 => 1,
        Elem::I32 => 2,
    });
    h.usizes(dims);
    match dynamic_axis {
        Some(axis) => h.bool(true).u64(*axis as u64),
        None => h.bool(false),
    };
    h.str(dim_param);
}

fn node_into(h: &mut StableHasher, n: &Node) {
    let Node {
        op,
        name,
        inputs,
        outputs,
        attrs,
    } = n;
    h.str(op).str(name).strs(inputs).strs(outputs);
    h.u64(attrs.len() as u64);
    for (key, value) in attrs {
        h.str(key);
        match value {
            Attr::Int(i) => {
                h.u64(1).i64(*i);
            }
            Attr::Ints(is) => {
                h.u64(2).u64(is.len() as u64);
                for i in is {
                    h.i64(*i);
                }
            }
            // Bit patterns: what the file stores (and -0.0 != 0.0, NaN == NaN).
            Attr::Float(f) => {
                h.u64(3).u64(f.to_bits() as u64);
            }
        }
    }
}

fn initializer_into(
    h: &mut StableHasher,
    init: &Initializer,
    weights: &dyn WeightSource,
) -> Result<()> {
    let Initializer {
        name,
        dims,
        data,
        uint8,
    } = init;
    h.str(name).usizes(dims);
    // Only uint8 ones say so (float initializers keep the keys they had).
    if *uint8 {
        h.str("uint8");
    }
    match data {
        InitData::Weight {
            name: tensor,
            transpose,
        } => {
            let fp = weights
                .fingerprint(tensor)
                .with_context(|| format!("fingerprinting tensor \"{tensor}\""))?;
            h.u64(1).str(tensor).bool(*transpose).bytes(&fp);
        }
        InitData::F32(v) => {
            h.u64(2).u64(v.len() as u64);
            for x in v {
                h.u64(x.to_bits() as u64);
            }
        }
        InitData::I64(v) => {
            h.u64(3).u64(v.len() as u64);
            for x in v {
                h.i64(*x);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fingerprint;
    use crate::model::{StoredDtype, TensorMeta};
    use candle_core::Tensor;

    /// Two tensors whose fingerprints are their names' (so a test can change one).
    struct Named(&'static str);

    impl WeightSource for Named {
        fn meta(&self, _: &str) -> Option<TensorMeta> {
            Some(TensorMeta {
                shape: vec![4, 2],
                dtype: StoredDtype::F32,
            })
        }
        fn names(&self) -> Vec<String> {
            vec!["w".into(), "v".into()]
        }
        fn read_f32(&self, name: &str) -> Result<Tensor> {
            anyhow::bail!("{name} is never read to key a graph")
        }
        fn fingerprint(&self, name: &str) -> Result<Fingerprint> {
            Ok(fingerprint::derived(self.0, &[], &[[name.len() as u8; 32]]))
        }
        fn describe(&self) -> String {
            "test".into()
        }
    }

    fn graph(scale: f32) -> Graph {
        let mut g = Graph::new("g");
        let x = g.input("x", Elem::F32, &[1, 4]);
        let w = g.weight("w", &[4, 2], true);
        let y = g.op("MatMul", &[&x, &w], vec![]);
        let y = g.scale(&y, scale as f64);
        g.output(&y, "y", Elem::F32, &[1, 2]);
        g
    }

    fn digest(g: &Graph, w: &dyn WeightSource) -> String {
        crate::util::hex(&graph_digest(g, "g", w).unwrap())
    }

    #[test]
    fn the_digest_follows_graph_and_weights() {
        let base = digest(&graph(0.5), &Named("a"));
        assert_eq!(base, digest(&graph(0.5), &Named("a")));
        assert_ne!(base, digest(&graph(0.25), &Named("a")), "a constant");
        assert_ne!(base, digest(&graph(0.5), &Named("b")), "a weight's bytes");
        let mut renamed = graph(0.5);
        renamed.outputs[0].name = "z".into();
        assert_ne!(base, digest(&renamed, &Named("a")), "an output name");
        let mut f32_ops = graph(0.5);
        f32_ops.keep_f32_since(0);
        assert_ne!(base, digest(&f32_ops, &Named("a")), "the f32 ops");
        assert_ne!(
            base,
            crate::util::hex(&graph_digest(&graph(0.5), "h", &Named("a")).unwrap()),
            "the file stem"
        );
    }

    #[test]
    fn candle_is_found_in_the_lock_file() {
        assert!(
            candle_version().starts_with("version = \""),
            "{}",
            candle_version()
        );
    }

    /// The encoding is our own and fixed: the same digest in every process and build (a
    /// change here changes every cache key, so it must be deliberate).
    #[test]
    fn the_encoding_is_stable() {
        let mut h = StableHasher::new("test");
        graph_into(&mut h, &graph(0.5), &Named("a")).unwrap();
        assert_eq!(
            crate::util::hex(&h.finish()),
            "d273fc2c659741ba27c8ed4e224456034a44df6d6adc3eb8e7c08a3c403eba3c"
        );
    }
}
