//! Warm rebuilds (issue 13): a piece's cache key comes from its graph and the stored bytes of
//! the tensors it reads, so an unchanged rerun exports nothing and compiles nothing, one
//! changed flag re-exports and recompiles only the pieces it touches, and a changed byte of a
//! checkpoint re-keys exactly the pieces that read that tensor.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use llm_convert::arch::{self, Piece, PieceOptions};
use llm_convert::convert::graph_key;
use llm_convert::model::Model;
use serde_json::Value;

/// Every piece's `graph_key::graph_digest` (what its cache key hashes besides the tool flags),
/// with history-KV nets and decode stages so every kind of block piece is there.
fn digests(model_path: &Path) -> BTreeMap<String, (Piece, String)> {
    digests_of(&Model::open(model_path).unwrap())
}

fn digests_of(model: &Model) -> BTreeMap<String, (Piece, String)> {
    let opts = PieceOptions::new(64, Some(32))
        .unwrap()
        .with_history(true, 16);
    arch::pieces(&model.config, &opts)
        .into_iter()
        .map(|p| {
            let g = arch::build(p, &model.config, &opts);
            let stem = p.file_stem();
            let d = graph_key::graph_digest(&g, &stem, model.weights.as_ref()).unwrap();
            (stem, (p, llm_convert::util::hex(&d)))
        })
        .collect()
}

/// The layer a piece computes, if it is a decoder block.
fn layer(p: Piece) -> Option<usize> {
    match p {
        Piece::Block(i)
        | Piece::BlockCache(i)
        | Piece::BlockCacheStage(i, _)
        | Piece::BlockKv(i) => Some(i),
        _ => None,
    }
}

/// Flips the lowest bit of the byte in the middle of `range` of `file`.
fn flip_middle_byte(file: &Path, (start, end): (usize, usize)) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[(start + end) / 2] ^= 1;
    std::fs::write(file, bytes).unwrap();
}

/// The byte range of a tensor in a safetensors file.
fn safetensors_range(file: &Path, tensor: &str) -> (usize, usize) {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let offsets = &header[tensor]["data_offsets"];
    let at = |i: usize| 8 + n + offsets[i].as_u64().unwrap() as usize;
    (at(0), at(1))
}

/// The byte range of a tensor's blocks in a GGUF file.
fn gguf_range(file: &Path, tensor: &str) -> (usize, usize) {
    let mut f = std::fs::File::open(file).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let info = &content.tensor_infos[tensor];
    let t = info.ggml_dtype;
    let len = info.shape.elem_count() / t.block_size() * t.type_size();
    let start = (content.tensor_data_offset + info.offset) as usize;
    (start, start + len)
}

/// The digests of `original` and `changed` differ exactly for the pieces `reads` says read the
/// changed tensor (and at least one piece does).
fn assert_rekeyed(
    original: &BTreeMap<String, (Piece, String)>,
    changed: &BTreeMap<String, (Piece, String)>,
    reads: impl Fn(Piece) -> bool,
    what: &str,
) {
    assert_eq!(original.len(), changed.len());
    let mut rekeyed = 0;
    for (stem, (piece, key)) in original {
        let new = &changed[stem].1;
        assert_eq!(key != new, reads(*piece), "{what}: piece {stem}");
        rekeyed += usize::from(key != new);
    }
    assert!(rekeyed > 0, "{what}: no piece reads it");
}

/// Which pieces read the tensor a case changes.
type Reads = fn(Piece) -> bool;

/// Safetensors checkpoints, plain and through every derived view (fused qkv regrouped,
/// NormHead, stacked experts, tied embeddings): one flipped bit in one tensor re-keys exactly
/// the pieces reading it. No compile: the key function alone.
#[test]
fn a_flipped_bit_rekeys_exactly_the_pieces_reading_that_tensor() {
    let cases: [(&str, &str, Reads); 6] = [
        ("qwen2", "model.layers.1.mlp.down_proj.weight", |p| {
            layer(p) == Some(1)
        }),
        ("qwen2", "lm_head.weight", |p| p == Piece::LmHead),
        // Tied: the embedding pieces and the lm_head read one tensor.
        ("llama_tied", "model.embed_tokens.weight", |p| {
            matches!(p, Piece::Embedding | Piece::EmbeddingCache | Piece::LmHead)
        }),
        // Read regrouped to q | k | v rows.
        ("internlm2", "model.layers.0.attention.wqkv.weight", |p| {
            layer(p) == Some(0)
        }),
        // Read with its rows L2-normalised.
        ("baichuan", "lm_head.weight", |p| p == Piece::LmHead),
        // Read through per-expert views of the stacked tensor.
        (
            "qwen2_moe_stacked",
            "model.layers.0.mlp.experts.gate_up_proj",
            |p| layer(p) == Some(0),
        ),
    ];
    for (fixture, tensor, reads) in cases {
        let original = digests(&common::fixtures().join(fixture));
        let copy = common::copy_model(fixture);
        let file = copy.path().join("model.safetensors");
        // A copy keys like the original: the path is no part of the key.
        assert_eq!(digests(copy.path()), original, "{fixture}: a plain copy");
        flip_middle_byte(&file, safetensors_range(&file, tensor));
        let what = format!("{fixture} {tensor}");
        assert_rekeyed(&original, &digests(copy.path()), reads, &what);
    }
}

/// The same for a GGUF checkpoint (the bundled SmolLM2, Q4_1 blocks), for a plain tensor and
/// for a q projection whose rows are un-permuted on read.
#[test]
fn a_flipped_bit_in_a_gguf_block_rekeys_exactly_its_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let original_path = common::smollm2_gguf();
    let original = digests(&original_path);
    for (tensor, at_layer) in [("blk.3.ffn_down.weight", 3), ("blk.7.attn_q.weight", 7)] {
        let copy = dir.path().join("copy.gguf");
        std::fs::copy(&original_path, &copy).unwrap();
        flip_middle_byte(&copy, gguf_range(&copy, tensor));
        assert_rekeyed(
            &original,
            &digests(&copy),
            |p| layer(p) == Some(at_layer),
            tensor,
        );
    }
}

/// A run that lets NaN / Inf through keys its pieces apart: a run that refuses them never
/// reuses what it compiled.
#[test]
fn allowing_non_finite_weights_rekeys_every_piece_with_weights() {
    let path = common::fixtures().join("llama_tied");
    let refusing = digests(&path);
    let mut model = Model::open(&path).unwrap();
    model.allow_non_finite();
    // Every piece of this model reads a checkpoint tensor.
    assert_rekeyed(
        &refusing,
        &digests_of(&model),
        |_| true,
        "--allow-non-finite",
    );
}

fn pieces(m: &Value) -> &Vec<Value> {
    m["pieces"].as_array().unwrap()
}

/// A cold run exports and compiles every piece; an unchanged rerun (another process) exports
/// none and compiles none, and says so; `plan` in a third process computes the same keys;
/// `--do_sample` re-exports and recompiles only the heads it changes or adds.
#[test]
fn an_unchanged_rerun_exports_nothing_and_one_flag_only_its_pieces() {
    common::toolchain();
    let model = common::fixtures().join("qwen2");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let flags = ["-q", "bf16"];
    let cold = common::convert_seq64(&model, &dir.path().join("cold"), &cache, &flags);
    for p in pieces(&cold) {
        assert!(p["exported"] == true && p["cached"] == false, "cold: {p}");
    }

    // The rerun, as a user sees it (the summary line) and in its manifest.
    let out = dir.path().join("warm");
    let m = model.to_str().unwrap();
    let run = common::llm_convert(&[
        "-m",
        m,
        "-s",
        "64",
        "-q",
        "bf16",
        "-o",
        out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}");
    let n = pieces(&cold).len();
    assert!(
        stdout.contains(&format!("{n} pieces (0 compiled, {n} from cache)"))
            && stdout.contains("export 0.0 s (0 exported)"),
        "{stdout}"
    );
    let warm: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(warm["timings"]["export_s"], 0.0);
    for (c, w) in pieces(&cold).iter().zip(pieces(&warm)) {
        assert!(w["exported"] == false && w["cached"] == true, "rerun: {w}");
        assert_eq!(c["cache_key"], w["cache_key"]);
    }
    assert_eq!(
        warm["bmodel_sha256_without_create_time"],
        cold["bmodel_sha256_without_create_time"]
    );

    // Keys are the same in another process, and `plan` finds every piece without exporting.
    let plan = common::llm_convert(&[
        "plan",
        "-m",
        m,
        "-s",
        "64",
        "-q",
        "bf16",
        "-o",
        dir.path().join("plan").to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--json",
    ]);
    assert!(plan.status.success());
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let planned: Vec<&Value> = pieces(&plan).iter().map(|p| &p["key"]).collect();
    let built: Vec<&Value> = pieces(&cold).iter().map(|p| &p["cache_key"]).collect();
    assert_eq!(planned, built);
    assert!(pieces(&plan).iter().all(|p| p["cached"] == true));

    // --do_sample changes the lm_head (it returns logits) and adds two heads; nothing else.
    let sampled = common::convert_seq64(
        &model,
        &dir.path().join("sample"),
        &cache,
        &["-q", "bf16", "--do_sample"],
    );
    let mut redone = Vec::new();
    for p in pieces(&sampled) {
        assert_eq!(p["exported"], p["cached"] == false, "{p}");
        if p["cached"] == false {
            redone.push(p["name"].as_str().unwrap());
        }
    }
    assert_eq!(redone, ["lm_head", "greedy_head", "sample_head"]);
}
