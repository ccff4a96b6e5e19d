//! The native backend's pass pipeline against TPU-MLIR's own tools: for tiny fixtures converted
//! with `--debug` (the ONNX path, which keeps every work dir and logs each tpuc-opt call as
//! `[Running]: tpuc-opt …`), the calls `NativeRunner` would make for each piece's recorded
//! model_transform / model_deploy arguments must be exactly the logged ones, and its
//! model_deploy rerun on a piece's Top MLIR must write the same bmodel (create time aside).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use llm_convert::convert::worker::ToolRunner;
use llm_convert::native::passes;
use llm_convert::native::runner::{planned_calls, NativeRunner};

type Memo = HashMap<Vec<String>, Arc<OnceLock<PathBuf>>>;

/// `convert --debug` of `model` at seq 64 with `flags` and a cache of its own (a cached piece
/// would not be compiled, so not logged), once per test process. Returns the folder holding
/// one work dir and one `.log` per piece.
fn debug_conversion(model: &Path, flags: &[&str]) -> PathBuf {
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let mut key = vec![model.display().to_string()];
    key.extend(flags.iter().map(|f| f.to_string()));
    let slot = MEMO
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default()
        .clone();
    slot.get_or_init(|| {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let out = common::scratch().join(format!("npass-out-{n}"));
        let cache = common::scratch().join(format!("npass-cache-{n}"));
        let _ = std::fs::remove_dir_all(&out);
        let (o, c) = (out.display().to_string(), cache.display().to_string());
        let mut args = vec!["-m", model.to_str().unwrap(), "-s", "64", "-o", &o];
        // The reference is what TPU-MLIR's Python tools log: the onnx backend.
        args.extend(["--cache-dir", &c, "--debug", "--json", "--backend", "onnx"]);
        args.extend(flags);
        let r = common::llm_convert(&args);
        assert!(
            r.status.success(),
            "llm-convert {args:?} failed:\n{}",
            String::from_utf8_lossy(&r.stderr)
        );
        let manifest: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        PathBuf::from(manifest["bmodel"].as_str().unwrap()).with_extension("")
    })
    .clone()
}

/// One compiled step of a debug conversion.
struct Piece {
    stem: String,
    work: PathBuf,
    log: PathBuf,
    /// The net name (a decode stage's is its block_cache_i's).
    name: String,
    transform_argv: Vec<String>,
    deploy_argv: Vec<String>,
}

/// The arguments a tool was run with, as TPU-MLIR recorded them (`" ".join(sys.argv)`; our
/// paths hold no blanks).
fn recorded(file: &Path, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cmd = v["commands"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{} has no {key}", file.display()));
    cmd.split_whitespace().skip(1).map(String::from).collect()
}

fn pieces(folder: &Path) -> Vec<Piece> {
    let mut out = vec![];
    for e in std::fs::read_dir(folder).unwrap().flatten() {
        let work = e.path();
        let stem = e.file_name().to_string_lossy().into_owned();
        let log = folder.join(format!("{stem}.log"));
        if !work.is_dir() || !log.is_file() {
            continue;
        }
        let name = std::fs::read_dir(&work)
            .unwrap()
            .flatten()
            .find_map(|f| {
                let n = f.file_name().to_string_lossy().into_owned();
                n.strip_suffix(".ref_files.json").map(String::from)
            })
            .unwrap_or_else(|| panic!("{}: no <name>.ref_files.json", work.display()));
        out.push(Piece {
            transform_argv: recorded(
                &work.join(format!("{name}.ref_files.json")),
                "transform_cmd",
            ),
            deploy_argv: recorded(&work.join(&name).join("ref_files.json"), "deploy_cmd"),
            stem,
            work,
            log,
            name,
        });
    }
    out.sort_by(|a, b| a.stem.cmp(&b.stem));
    out
}

/// The piece's kind from its file stem: `block_cache_0_1` → `block_cache_stage`.
fn kind(stem: &str) -> String {
    let parts: Vec<&str> = stem.split('_').collect();
    let digits = parts
        .iter()
        .filter(|p| p.chars().all(|c| c.is_ascii_digit()))
        .count();
    let base: Vec<&str> = parts
        .iter()
        .copied()
        .filter(|p| !p.chars().all(|c| c.is_ascii_digit()))
        .collect();
    let base = base.join("_");
    if digits == 2 {
        format!("{base}_stage")
    } else {
        base
    }
}

/// Asserts that every piece's planned calls are its logged ones; returns every planned line
/// and the piece kinds seen.
fn check_commands(folder: &Path) -> (Vec<String>, BTreeSet<String>) {
    let (mut all, mut kinds) = (vec![], BTreeSet::new());
    let ps = pieces(folder);
    assert!(!ps.is_empty(), "no pieces in {}", folder.display());
    for p in &ps {
        let log = std::fs::read_to_string(&p.log).unwrap();
        let logged: Vec<&str> = log
            .lines()
            .filter_map(|l| l.strip_prefix("[Running]: "))
            .filter(|l| l.starts_with("tpuc-opt "))
            .collect();
        let mut mine = planned_calls("model_transform.py", &p.transform_argv, &p.work).unwrap();
        mine.extend(planned_calls("model_deploy.py", &p.deploy_argv, &p.work).unwrap());
        let mine: Vec<String> = mine.iter().map(|c| c.line()).collect();
        assert_eq!(mine, logged, "piece {} ({})", p.stem, p.log.display());
        kinds.insert(kind(&p.stem));
        all.extend(mine);
    }
    (all, kinds)
}

fn has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

fn qwen2_history() -> PathBuf {
    let model = common::fixtures().join("qwen2");
    let flags = [
        "-q",
        "w4bf16",
        "-g",
        "32",
        "--use_history_kv",
        "--do_sample",
    ];
    debug_conversion(&model, &[&flags[..], &["--symmetric"]].concat())
}

fn gemma2_bf16() -> PathBuf {
    debug_conversion(&common::fixtures().join("gemma2"), &["-q", "bf16"])
}

#[test]
fn native_calls_are_model_deploys_w4bf16_history_sample_symmetric() {
    let (lines, kinds) = check_commands(&qwen2_history());
    let want = [
        "block",
        "block_cache",
        "block_cache_stage",
        "block_kv",
        "embedding",
        "embedding_cache",
        "greedy_head",
        "lm_head",
        "sample_head",
    ];
    assert_eq!(kinds, want.iter().map(|s| s.to_string()).collect());
    for needle in [
        "mode=W4BF16",
        "q_group_size=32",
        "q_symmetric=True",
        "mode=F32",
        "dynamic=True",
        "--topo-sort  --affine-opt", // --disable_layer_group on the dynamic prefill blocks
        "save_io_alone_config=",
        "use_io_alone_config=",
        "embed_debug_info=True",
    ] {
        assert!(has(&lines, needle), "no planned call has {needle:?}");
    }
}

#[test]
fn native_calls_are_model_deploys_bf16_quantize_table() {
    let (lines, kinds) = check_commands(&gemma2_bf16());
    assert!(kinds.contains("block_cache"), "{kinds:?}");
    assert!(
        has(&lines, "qtable="),
        "gemma2's window pieces have a table"
    );
    assert!(has(&lines, "_tpu_qtable_weights.npz"));
    assert!(has(&lines, "q_group_size=0"));
}

#[test]
fn native_calls_are_model_deploys_vit() {
    let model = common::vlm::vlm_fixtures().join("qwen25vl");
    let folder = debug_conversion(&model, &["-q", "bf16", "--max_pixels", "140,224"]);
    let (lines, kinds) = check_commands(&folder);
    assert!(kinds.contains("vit"), "{kinds:?}");
    assert!(has(&lines, "vit.mlir --processor-assign"));
}

/// The bmodel bytes with the header's create-time `ctime()` string zeroed (as
/// convert::combine::mask_create_time does) and the dynamic IR's padding zeroed.
fn normalised(path: &Path) -> Vec<u8> {
    let mut b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    llm_convert::bmodel::zero_timestep_padding(&mut b).unwrap();
    let window = b.len().min(64 * 1024);
    for i in 0..window.saturating_sub(29) {
        let s = &b[i + 4..i + 29];
        if b[i..i + 4] == [25, 0, 0, 0]
            && s[3] == b' '
            && s[13] == b':'
            && s[16] == b':'
            && s[24] == b'\n'
        {
            b[i + 4..i + 28].fill(0);
            break;
        }
    }
    b
}

/// Differing byte spans `(start, len)` of two equally long buffers.
fn spans(a: &[u8], b: &[u8]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = vec![];
    for i in (0..a.len().min(b.len())).filter(|&i| a[i] != b[i]) {
        match out.last_mut() {
            Some((s, n)) if *s + *n + 16 >= i => *n = i + 1 - *s,
            _ => out.push((i, 1)),
        }
    }
    out
}

/// Reruns model_deploy natively on a copy of the piece's Top MLIR and its weights.
fn redeploy(p: &Piece) -> (PathBuf, f64) {
    let dir = common::scratch().join(format!("npass-redeploy-{}", p.stem));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mlir = format!("{}.mlir", p.name);
    let text = std::fs::read_to_string(p.work.join(&mlir)).unwrap();
    let npz = passes::weight_file(&text).unwrap();
    for f in [&mlir, &npz] {
        std::fs::copy(p.work.join(f), dir.join(f)).unwrap();
    }
    let log = dir.join("deploy.log");
    let mut runner = NativeRunner::new(&common::toolchain());
    let s = runner
        .run("model_deploy.py", &p.deploy_argv, &dir, &log)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e:#}\n{}",
                p.stem,
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    (dir.join(format!("{}.bmodel", p.name)), s)
}

/// The piece's record in its conversion's manifest (the Python worker's bmodel, moved into
/// the piece cache, and its model_deploy seconds).
fn manifest_record(p: &Piece) -> serde_json::Value {
    let manifest = p
        .work
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("manifest.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    v["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == p.stem.as_str())
        .unwrap_or_else(|| panic!("no manifest record for {}", p.stem))
        .clone()
}

#[test]
fn native_deploy_writes_model_deploys_bmodel() {
    let a = pieces(&qwen2_history());
    let b = pieces(&gemma2_bf16());
    let pick = |ps: &[Piece], stem: &str| -> usize {
        ps.iter()
            .position(|p| p.stem == stem)
            .unwrap_or_else(|| panic!("no piece {stem}"))
    };
    let chosen = [
        (&b, pick(&b, "block_cache_0")), // bf16, quantize table, io_alone
        (&a, pick(&a, "block_0")),       // w4bf16 -g 32 symmetric, dynamic
        (&a, pick(&a, "lm_head")),
    ];
    for (ps, i) in chosen {
        let p = &ps[i];
        let (bmodel, native_s) = redeploy(p);
        let record = manifest_record(p);
        let reference = PathBuf::from(record["bmodel"].as_str().unwrap());
        let (want, got) = (normalised(&reference), normalised(&bmodel));
        eprintln!(
            "{}: model_deploy {native_s:.2} s native, {:.2} s in the Python worker; {} bytes",
            p.stem,
            record["deploy_s"].as_f64().unwrap_or(f64::NAN),
            got.len()
        );
        let config = |d: &Path| {
            let f = std::fs::read_dir(d)
                .unwrap()
                .flatten()
                .find(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .ends_with(".layer_group_config.json")
                })
                .unwrap_or_else(|| panic!("no layer group config in {}", d.display()));
            std::fs::read(f.path()).unwrap()
        };
        assert!(
            config(&p.work) == config(bmodel.parent().unwrap()),
            "{}: layer_group_config.json differs from model_deploy's",
            p.stem
        );
        assert_eq!(want.len(), got.len(), "{}: bmodel sizes differ", p.stem);
        let diff = spans(&want, &got);
        assert!(diff.is_empty(), "{}: bytes differ at {diff:?}", p.stem);
    }
}

#[test]
fn native_transform_places_the_origin_and_writes_model_transforms_weights() {
    let ps = pieces(&qwen2_history());
    let p = ps.iter().find(|p| p.stem == "block_1").unwrap();
    // The origin MLIR and its npz elsewhere, as nemit's write_origin leaves them.
    let src = common::scratch().join("npass-origin-block_1");
    let cwd = common::scratch().join("npass-transform-block_1");
    for d in [&src, &cwd] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).unwrap();
    }
    let origin = format!("{}_origin.mlir", p.name);
    let npz = passes::weight_file(&std::fs::read_to_string(p.work.join(&origin)).unwrap()).unwrap();
    for f in [&origin, &npz] {
        std::fs::copy(p.work.join(f), src.join(f)).unwrap();
    }
    let argv: Vec<String> = [
        "--model_name",
        &p.name,
        "--model_def",
        src.join(&origin).to_str().unwrap(),
        "--mlir",
        &format!("{}.mlir", p.name),
        "--do_onnx_sim=",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log = cwd.join("transform.log");
    NativeRunner::new(&common::toolchain())
        .run("model_transform.py", &argv, &cwd, &log)
        .unwrap();
    assert!(cwd.join(&origin).is_file() && cwd.join(&npz).is_file());
    let top_npz = format!("{}_top_f32_all_weight.npz", p.name);
    assert!(
        std::fs::read(cwd.join(&top_npz)).unwrap() == std::fs::read(p.work.join(&top_npz)).unwrap(),
        "{top_npz} differs from model_transform.py's"
    );
    let bad: Vec<String> = [
        "--model_name",
        "x",
        "--model_def",
        "x.onnx",
        "--mlir",
        "x.mlir",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let e = NativeRunner::new(&common::toolchain())
        .run("model_transform.py", &bad, &cwd, &log)
        .unwrap_err();
    assert!(format!("{e:#}").contains("origin Top .mlir"), "{e:#}");
}
