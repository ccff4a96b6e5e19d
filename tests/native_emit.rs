//! The native backend's emitter against TPU-MLIR's own ONNX front end: for every piece of the
//! fixtures below, `native::origin::write_origin` must write the origin MLIR text and weight npz
//! that `model_transform.py` writes for the ONNX file `onnx::write` makes of the same graph (run
//! as the convert runs it, in one long-lived TPU-MLIR worker), and tpuc-opt's top passes must
//! turn both into the same `<name>.mlir` and weights.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use llm_convert::arch::{self, PieceOptions};
use llm_convert::convert::worker::{PythonWorker, ToolRunner};
use llm_convert::model::Model;
use llm_convert::native::npz::NpzWriter;
use llm_convert::native::origin::write_origin;
use llm_convert::toolchain::{env, Layout};

/// `model_transform.py`'s arguments, as `convert::plan::transform_argv` builds them.
fn transform_argv(name: &str, onnx: &Path, graph: &llm_convert::graph::Graph) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "--model_name".into(),
        name.into(),
        "--model_def".into(),
        onnx.display().to_string(),
        "--mlir".into(),
        format!("{name}.mlir"),
    ];
    if graph.is_dynamic() {
        let list: Vec<String> = graph
            .inputs
            .iter()
            .map(|i| {
                let d: Vec<String> = i.dims.iter().map(|d| d.to_string()).collect();
                format!("[{}]", d.join(","))
            })
            .collect();
        argv.extend(["--input_shapes".into(), format!("[{}]", list.join(","))]);
    }
    argv.push("--do_onnx_sim=".into());
    // Keeps the origin MLIR and npz (as `convert --debug` does); changes nothing else.
    argv.push("--debug".into());
    argv
}

/// What `convert::output_names::restore` does to a converter's MLIR: the locations of the
/// returned values are renamed to the graph's output names.
fn rename_outputs(mlir: &str, outputs: &[String]) -> String {
    let lines: Vec<&str> = mlir.lines().collect();
    let ret = lines
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("return "))
        .expect("a return");
    let operands: Vec<&str> = ret["return ".len()..]
        .split(':')
        .next()
        .unwrap()
        .split(',')
        .map(str::trim)
        .collect();
    let mut renames = BTreeMap::new();
    for (operand, wanted) in operands.iter().zip(outputs) {
        let (value, index) = match operand.split_once('#') {
            Some((v, k)) => (v, Some(k.parse::<usize>().unwrap())),
            None => (*operand, None),
        };
        let def = lines
            .iter()
            .filter_map(|l| l.trim().split_once(" = "))
            .find(|(lhs, _)| {
                lhs.split(',')
                    .map(|r| r.trim().split(':').next().unwrap())
                    .any(|r| r == value)
            })
            .expect("the returned value's definition");
        let pos = def.0.split(',').position(|r| r.trim() == value);
        let alias = def.1.rsplit_once("loc(").unwrap().1.trim_end_matches(')');
        let target = lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{alias} = ")))
            .expect("the alias");
        let alias = match target.strip_prefix("loc(fused[") {
            Some(list) => {
                let k = index.or(pos).unwrap();
                list.trim_end_matches("])")
                    .split(',')
                    .nth(k)
                    .unwrap()
                    .trim()
                    .to_string()
            }
            None => alias.to_string(),
        };
        renames.insert(alias, wanted.clone());
    }
    let mut out: Vec<String> = Vec::new();
    for l in lines {
        match l.split_once(" = ") {
            Some((a, _)) if renames.contains_key(a) => {
                out.push(format!("{a} = loc(\"{}\")", renames[a]))
            }
            _ => out.push(l.to_string()),
        }
    }
    let mut s = out.join("\n");
    if mlir.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// An npz's members in archive order, read the way tpuc-opt's cnpy reads them: local file
/// headers one after another, each member stored (no compression, no data descriptor), its
/// length following from the `.npy` header's f32 shape.
fn npz_members(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]) as usize;
    let mut out = Vec::new();
    let mut at = 0;
    while bytes[at..].starts_with(b"PK\x03\x04") {
        let (flags, method) = (u16_at(at + 6), u16_at(at + 8));
        let (name_len, extra_len) = (u16_at(at + 26), u16_at(at + 28));
        let name = String::from_utf8_lossy(&bytes[at + 30..at + 30 + name_len]).to_string();
        assert_eq!(method, 0, "{}: {name} is compressed", path.display());
        assert_eq!(
            flags & 8,
            0,
            "{}: {name} has a data descriptor",
            path.display()
        );
        let start = at + 30 + name_len + extra_len;
        let hlen = u16_at(start + 8);
        let header = String::from_utf8_lossy(&bytes[start + 10..start + 10 + hlen]).to_string();
        assert!(header.contains("'descr': '<f4'"), "{name}: {header}");
        let shape = header
            .split("'shape': (")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap();
        let elems: usize = shape
            .split(',')
            .filter(|d| !d.trim().is_empty())
            .map(|d| d.trim().parse::<usize>().unwrap())
            .product();
        let end = start + 10 + hlen + 4 * elems;
        out.push((name, bytes[start..end].to_vec()));
        at = end;
    }
    // Then the central directory (or, with no members, the end record).
    assert!(
        [&b"PK\x01\x02"[..], b"PK\x05\x06", b"PK\x06\x06"]
            .iter()
            .any(|sig| bytes[at..].starts_with(sig)),
        "{}: no central directory after the members",
        path.display()
    );
    out
}

/// The `.npy` header's dict text and the data after it.
fn npy_parts(bytes: &[u8]) -> (String, &[u8]) {
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..10 + hlen]).to_string();
    (header, &bytes[10 + hlen..])
}

/// Two npz files hold the same members in the same order, byte for byte (header and data).
fn same_npz(ours: &Path, theirs: &Path) -> Result<(), String> {
    let (a, b) = (npz_members(ours), npz_members(theirs));
    let names = |m: &[(String, Vec<u8>)]| m.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    if names(&a) != names(&b) {
        return Err(format!("members {:?} vs {:?}", names(&a), names(&b)));
    }
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let ((hx, dx), (hy, dy)) = (npy_parts(x), npy_parts(y));
        if hx != hy {
            return Err(format!("{name}: header {hx:?} vs {hy:?}"));
        }
        if dx != dy {
            return Err(format!("{name}: data differs"));
        }
    }
    Ok(())
}

/// None when two texts are equal, else their first differing line.
fn first_difference(a: &str, b: &str) -> Option<String> {
    if a == b {
        return None;
    }
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    for i in 0..la.len().max(lb.len()) {
        let (x, y) = (la.get(i).copied(), lb.get(i).copied());
        if x != y {
            return Some(format!(
                "line {}:\n  ours:   {}\n  theirs: {}",
                i + 1,
                x.unwrap_or("<end>"),
                y.unwrap_or("<end>")
            ));
        }
    }
    Some("the end (the trailing newline)".into())
}

struct Harness {
    layout: Layout,
    worker: PythonWorker,
    root: tempfile::TempDir,
    failures: Vec<String>,
    pieces: usize,
    /// How often each ONNX op kind occurred in the compared graphs.
    onnx_ops: BTreeMap<&'static str, usize>,
}

impl Harness {
    fn new() -> Harness {
        let layout = common::toolchain();
        let root = tempfile::tempdir().unwrap();
        let worker = PythonWorker::start(&layout, &root.path().join("worker.log")).unwrap();
        Harness {
            layout,
            worker,
            root,
            failures: Vec::new(),
            pieces: 0,
            onnx_ops: BTreeMap::new(),
        }
    }

    /// Every piece of `model` with `opts`, both ways.
    fn check(&mut self, label: &str, model: &Path, opts: &PieceOptions) {
        self.check_some(label, model, opts, |_| true)
    }

    /// The pieces `keep` selects.
    fn check_some(
        &mut self,
        label: &str,
        model: &Path,
        opts: &PieceOptions,
        keep: impl Fn(&arch::Piece) -> bool,
    ) {
        let model = Model::open(model).unwrap();
        for piece in arch::pieces(&model.config, opts)
            .into_iter()
            .filter(|p| keep(p))
        {
            let graph = arch::build(piece, &model.config, opts);
            for n in &graph.nodes {
                *self.onnx_ops.entry(n.op).or_default() += 1;
            }
            let name = piece.name();
            assert_eq!(graph.name, name, "{label}: graph name");
            let dir = self.root.path().join(label).join(piece.file_stem());
            let (theirs, ours) = (dir.join("theirs"), dir.join("ours"));
            std::fs::create_dir_all(&theirs).unwrap();
            let onnx = dir.join(format!("{name}.onnx"));
            llm_convert::onnx::write(&graph, &model.weights, &onnx).unwrap();
            let log = dir.join("transform.log");
            let argv = transform_argv(&name, &onnx, &graph);
            if let Err(e) = self.worker.run("model_transform.py", &argv, &theirs, &log) {
                panic!("{label}/{name}: model_transform.py: {e:#}");
            }
            let origin = match write_origin(&graph, &model.weights, &ours, None) {
                Ok(o) => o,
                Err(e) => {
                    self.failures.push(format!("{label}/{name}: {e:#}"));
                    continue;
                }
            };
            self.pieces += 1;
            let outputs: Vec<String> = graph.outputs.iter().map(|o| o.name.clone()).collect();
            let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap();
            let want = rename_outputs(&read(theirs.join(format!("{name}_origin.mlir"))), &outputs);
            let have = read(origin.mlir.clone());
            if let Some(d) = first_difference(&have, &want) {
                self.failures
                    .push(format!("{label}/{name}: origin MLIR differs at {d}"));
                continue;
            }
            let npz = theirs.join(format!("{name}_top_f32_all_origin_weight.npz"));
            if let Err(e) = same_npz(&origin.npz, &npz) {
                self.failures
                    .push(format!("{label}/{name}: origin npz differs: {e}"));
                continue;
            }
            self.top_passes(label, &name, &ours, &theirs, &outputs);
        }
    }

    /// model_transform's top passes on our origin give its `<name>.mlir` and weights.
    fn top_passes(&mut self, label: &str, name: &str, ours: &Path, theirs: &Path, outs: &[String]) {
        let out = env::command(
            &self.layout,
            self.layout.tool("tpuc-opt"),
            [
                format!("{name}_origin.mlir"),
                "--struct-optimize".into(),
                "--shape-infer".into(),
                "--canonicalize".into(),
                "--extra-optimize".into(),
                "-o".into(),
                format!("{name}.mlir"),
            ],
        )
        .dir(ours)
        .stderr_to_stdout()
        .stdout_capture()
        .unchecked()
        .run()
        .unwrap();
        if !out.status.success() {
            self.failures.push(format!(
                "{label}/{name}: tpuc-opt on our origin failed:\n{}",
                String::from_utf8_lossy(&out.stdout)
            ));
            return;
        }
        let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap();
        let have = read(ours.join(format!("{name}.mlir")));
        let want = rename_outputs(&read(theirs.join(format!("{name}.mlir"))), outs);
        if let Some(d) = first_difference(&have, &want) {
            self.failures
                .push(format!("{label}/{name}: top MLIR differs at {d}"));
            return;
        }
        let npz = format!("{name}_top_f32_all_weight.npz");
        let (a, b) = (ours.join(&npz), theirs.join(&npz));
        if (a.exists(), b.exists()) == (false, false) {
            return; // a piece without weights
        }
        if let Err(e) = same_npz(&a, &b) {
            self.failures
                .push(format!("{label}/{name}: top npz differs: {e}"));
        }
    }
}

#[test]
fn origin_mlir_and_weights_match_tpu_mlir_onnx_front_end() {
    let t0 = Instant::now();
    let mut h = Harness::new();
    let fixtures = common::fixtures();
    let static64 = || PieceOptions::new(64, None).unwrap();
    h.check("qwen2", &fixtures.join("qwen2"), &static64());
    h.check(
        "qwen2_dynamic",
        &fixtures.join("qwen2"),
        &static64().with_dynamic(true),
    );
    h.check(
        "qwen2_history_sample",
        &fixtures.join("qwen2"),
        &static64().with_do_sample(true).with_history(true, 16),
    );
    // qwen3_moe: the normalised top-k routing (ReduceSum over an axes input).
    for name in [
        "llama_tied",
        "gemma2",
        "qwen2_moe",
        "qwen3_moe",
        "phi3_longrope",
        "chatglm",
    ] {
        h.check(name, &fixtures.join(name), &static64());
    }
    // Vision towers: Qwen2.5-VL's (RMSNorm, SiLU MLP) and Qwen2-VL's (LayerNorm, QuickGELU).
    for name in ["qwen25vl", "qwen2vl"] {
        let vlm = common::vlm::vlm_fixtures().join(name);
        let opts = PieceOptions::new(256, None)
            .unwrap()
            .with_max_pixels(Some(140 * 224));
        h.check(name, &vlm, &opts);
    }
    println!(
        "{} pieces compared in {:.1} s; ONNX ops: {:?}",
        h.pieces,
        t0.elapsed().as_secs_f64(),
        h.onnx_ops
    );
    assert!(
        h.failures.is_empty(),
        "{} of the pieces differ:\n{}",
        h.failures.len(),
        h.failures.join("\n\n")
    );
}

/// The npz writer's archives read back with numpy (what model_transform itself uses), stored
/// and with the shapes and values written.
#[test]
fn npz_members_read_back_with_numpy() {
    let layout = common::toolchain();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.npz");
    let mut w = NpzWriter::create(&path).unwrap();
    w.add("scalar", &[], &[2.5]).unwrap();
    w.add("model.layers.0.v", &[5], &[0., 1., 2., 3., -4.5])
        .unwrap();
    let cube: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
    w.add("cube", &[2, 3, 4], &cube).unwrap();
    assert_eq!(w.finish().unwrap(), 4 * (1 + 5 + 24));
    assert!(!dir.path().join("w.npz.tmp").exists());
    let script = "import sys, numpy as np\n\
        z = np.load(sys.argv[1])\n\
        for k in z.files:\n\
        \x20   a = z[k]\n\
        \x20   print(k, a.dtype, a.shape, repr(a.ravel().tolist()), a.flags['C_CONTIGUOUS'])\n";
    let out = std::process::Command::new(layout.python())
        .args(["-c", script, path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "scalar float32 () [2.5] True");
    assert_eq!(
        lines[1],
        "model.layers.0.v float32 (5,) [0.0, 1.0, 2.0, 3.0, -4.5] True"
    );
    assert!(
        lines[2].starts_with("cube float32 (2, 3, 4) [0.0, 0.5, 1.0,"),
        "{}",
        lines[2]
    );
    assert!(lines[2].ends_with("11.5] True"), "{}", lines[2]);
    // Every member stored, as tpuc-opt's cnpy needs.
    for (name, _) in npz_members(&path) {
        assert!(name.ends_with(".npy"), "{name}");
    }
}

/// A graph using an op the emitter has no mapping for is refused, naming the op and the piece;
/// so is a pattern TPU-MLIR would fuse (never a silently different graph).
#[test]
fn unmapped_ops_are_errors_naming_op_and_piece() {
    use llm_convert::graph::{Elem, Graph};
    let weights = llm_convert::model::Model::open(&common::fixtures().join("qwen2")).unwrap();
    for (op, says) in [("Einsum", "ONNX op Einsum has no native"), ("Pow", "Pow")] {
        let mut g = Graph::new("odd_piece");
        let x = g.input("x", Elem::F32, &[1, 4]);
        let two = g.scalar("two", 2.0);
        let y = g.op(op, &[&x, &two], vec![]);
        g.output(&y, "y", Elem::F32, &[1, 4]);
        let dir = tempfile::tempdir().unwrap();
        let err = match write_origin(&g, &weights.weights, dir.path(), None) {
            Ok(_) => panic!("{op}: emitted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains(says) && err.contains("odd_piece"),
            "{op}: {err}"
        );
        assert!(!dir.path().join("odd_piece_origin.mlir").exists());
    }
}

/// The same on the bundled SmolLM2 (real weights from a Q4_1 GGUF, tied embeddings): the heads
/// and the first and last layers' pieces, static and dynamic. Run by hand (~1 min):
/// `cargo test --test native_emit -- --ignored smollm2_pieces`.
#[test]
#[ignore]
fn smollm2_pieces_match_tpu_mlir_onnx_front_end() {
    let mut h = Harness::new();
    let gguf = common::smollm2_gguf();
    let last = Model::open(&gguf).unwrap().config.num_hidden_layers - 1;
    let keep = |p: &arch::Piece| match p {
        arch::Piece::Block(i) | arch::Piece::BlockCache(i) => *i == 0 || *i == last,
        _ => true,
    };
    let opts = PieceOptions::new(512, None).unwrap();
    h.check_some("smollm2", &gguf, &opts, keep);
    h.check_some("smollm2_dynamic", &gguf, &opts.with_dynamic(true), keep);
    println!("{} pieces compared; ONNX ops: {:?}", h.pieces, h.onnx_ops);
    assert!(h.failures.is_empty(), "{}", h.failures.join("\n\n"));
}

/// `write_origin` against `onnx::write` on SmolLM2's largest piece (a measurement, run by hand:
/// `cargo test --release --test native_emit -- --ignored --nocapture`).
#[test]
#[ignore]
fn time_write_origin_against_onnx_write_on_smollm2() {
    let model = Model::open(&common::smollm2_gguf()).unwrap();
    let opts = PieceOptions::new(512, None).unwrap();
    let mut largest = None;
    for piece in arch::pieces(&model.config, &opts) {
        let g = arch::build(piece, &model.config, &opts);
        let bytes: usize = g
            .initializers
            .iter()
            .map(|i| i.dims.iter().product::<usize>())
            .sum();
        if largest.as_ref().is_none_or(|(b, _)| bytes > *b) {
            largest = Some((bytes, g));
        }
    }
    let (elems, g) = largest.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let t0 = Instant::now();
        llm_convert::onnx::write(&g, &model.weights, &dir.path().join("p.onnx")).unwrap();
        let onnx_s = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        write_origin(&g, &model.weights, dir.path(), None).unwrap();
        let native_s = t0.elapsed().as_secs_f64();
        // Of which reading (dequantising) the checkpoint tensors.
        let t0 = Instant::now();
        for i in &g.initializers {
            if let llm_convert::graph::InitData::Weight { name, .. } = &i.data {
                use llm_convert::model::WeightSource;
                model.weights.read_f32(name).unwrap();
            }
        }
        let read_s = t0.elapsed().as_secs_f64();
        println!(
            "round {round}: {} ({:.1} MB of weights): onnx::write {onnx_s:.3} s, \
             write_origin {native_s:.3} s (reading the checkpoint alone: {read_s:.3} s)",
            g.name,
            elems as f64 * 4e-6
        );
    }
}

/// An archive past zip's 4 GiB offsets (three 1.5 GB members) still reads back with numpy and
/// member by member from the local headers as cnpy reads it. Writes 4.5 GB: run by hand,
/// `cargo test --test native_emit -- --ignored npz_past`.
#[test]
#[ignore]
fn npz_past_4_gib_reads_back() {
    let layout = common::toolchain();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.npz");
    let rows = 375_000_000 / 1000;
    let mut w = NpzWriter::create(&path).unwrap();
    for k in 0..3 {
        let v: Vec<f32> = (0..rows * 1000)
            .map(|i| (i % 977) as f32 + k as f32)
            .collect();
        w.add(&format!("m{k}"), &[rows, 1000], &v).unwrap();
    }
    w.finish().unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 1 << 32);
    let members = npz_members(&path);
    assert_eq!(members.len(), 3);
    let script = "import sys, numpy as np\n\
        z = np.load(sys.argv[1])\n\
        for k in z.files:\n\
        \x20   a = z[k]\n\
        \x20   print(k, a.shape, float(a[-1, -1]))\n";
    let out = std::process::Command::new(layout.python())
        .args(["-c", script, path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = ((rows * 1000 - 1) % 977) as f32;
    let text = String::from_utf8_lossy(&out.stdout);
    for k in 0..3 {
        let want = format!("m{k} ({rows}, 1000) {:.1}", last + k as f32);
        assert!(text.contains(&want), "{want} not in {text}");
    }
}
