//! Warm rebuilds (issue 13): a piece's cache key comes from its graph and the stored bytes of
//! the tensors it reads, so an unchanged rerun exports nothing and compiles nothing, one
//! changed flag re-exports and recompiles only the pieces it touches, and a changed byte of a
//! checkpoint re-keys exactly the pieces that read that tensor.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// The names of the pieces a run compiled.
fn compiled(m: &Value) -> Vec<&str> {
    pieces(m)
        .iter()
        .filter(|p| p["cached"] == false)
        .map(|p| p["name"].as_str().unwrap())
        .collect()
}

/// What a rewrite of a file would change: its inode (outputs are renamed into place) and its
/// mtime.
fn identity(path: &Path) -> (u64, std::time::SystemTime) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.ino(), m.modified().unwrap())
}

/// The manifest of a run that combined again: it describes the bmodel now in place, and
/// that bmodel is the cold one's, create time aside.
fn assert_rebuilt(m: &Value, cold: &Value, what: &str) {
    assert_eq!(m["up_to_date"], false, "{what}");
    let bmodel = Path::new(m["bmodel"].as_str().unwrap());
    assert_eq!(
        m["bmodel_sha256"].as_str().unwrap(),
        llm_convert::util::sha256_file(bmodel).unwrap(),
        "{what}: the manifest's sha256 is the file's"
    );
    assert_eq!(
        m["bmodel_sha256_without_create_time"], cold["bmodel_sha256_without_create_time"],
        "{what}"
    );
}

/// A cold run exports and compiles every piece; an unchanged rerun (another process) exports
/// none and compiles none, and says so; the same command again finds its own bmodel current
/// and runs no model_tool, while an edited, truncated or deleted bmodel is combined again;
/// `plan` in a third process computes the same keys; `--do_sample` re-exports and recompiles
/// only the heads it changes or adds; one changed weight byte only the pieces reading it.
#[test]
fn an_unchanged_rerun_exports_nothing_and_one_flag_only_its_pieces() {
    common::toolchain();
    // A copy: its weights are changed at the end.
    let model_dir = common::copy_model("qwen2");
    let model = model_dir.path();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let flags = ["-q", "bf16"];
    let out = dir.path().join("out");
    let cold = common::convert_seq64(model, &out, &cache, &flags);
    for p in pieces(&cold) {
        assert!(p["exported"] == true && p["cached"] == false, "cold: {p}");
    }
    assert_eq!(cold["up_to_date"], false);

    // The rerun into another folder, as a user sees it (the summary line) and in its manifest.
    let warm_out = dir.path().join("warm");
    let m = model.to_str().unwrap();
    let run = common::llm_convert(&[
        "-m",
        m,
        "-s",
        "64",
        "-q",
        "bf16",
        "-o",
        warm_out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}");
    let n = pieces(&cold).len();
    assert!(
        stdout.contains(&format!("{n} pieces (0 compiled, {n} from cache)"))
            && stdout.contains("export 0.0 s (0 exported)")
            && stdout.contains("combine "),
        "{stdout}"
    );
    let warm: Value =
        serde_json::from_slice(&std::fs::read(warm_out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(warm["timings"]["export_s"], 0.0);
    assert_eq!(warm["up_to_date"], false, "another folder holds no bmodel");
    for (c, w) in pieces(&cold).iter().zip(pieces(&warm)) {
        assert!(w["exported"] == false && w["cached"] == true, "rerun: {w}");
        assert_eq!(c["cache_key"], w["cache_key"]);
    }
    assert_eq!(
        warm["bmodel_sha256_without_create_time"],
        cold["bmodel_sha256_without_create_time"]
    );

    // The same command again: nothing is combined; the bmodel and model.log are the cold
    // run's files, untouched (a combine writes a new file and renames it into place).
    let bmodel = PathBuf::from(cold["bmodel"].as_str().unwrap());
    let log = out.join("model.log");
    let before = (identity(&bmodel), identity(&log));
    let again = common::convert_seq64(model, &out, &cache, &flags);
    assert_eq!(again["up_to_date"], true);
    assert_eq!((identity(&bmodel), identity(&log)), before);
    assert!(compiled(&again).is_empty());
    assert!(pieces(&again).iter().all(|p| p["exported"] == false));
    for key in ["bmodel_sha256", "bmodel_bytes", "bmodel_file"] {
        assert_eq!(again[key], cold[key], "{key}");
    }
    assert_eq!(again["timings"]["export_s"], 0.0);

    // The bmodel changed behind the run's back: combined again, each time.
    let mtime = std::fs::metadata(&bmodel).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&bmodel).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&bmodel, &bytes).unwrap();
    // Same size, and the mtime put back (`touch -r`): the ctime still tells.
    std::fs::File::options()
        .write(true)
        .open(&bmodel)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let edited = common::convert_seq64(model, &out, &cache, &flags);
    assert_rebuilt(&edited, &cold, "edited");
    let len = std::fs::metadata(&bmodel).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&bmodel)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_rebuilt(
        &common::convert_seq64(model, &out, &cache, &flags),
        &cold,
        "truncated",
    );
    std::fs::remove_file(&bmodel).unwrap();
    let recreated = common::convert_seq64(model, &out, &cache, &flags);
    assert_rebuilt(&recreated, &cold, "deleted");
    for m in [&edited, &recreated] {
        assert!(compiled(m).is_empty(), "only combined: {m}");
    }
    // And current again after a rebuild.
    let again = common::convert_seq64(model, &out, &cache, &flags);
    assert_eq!(again["up_to_date"], true);
    assert_eq!(again["bmodel_sha256"], recreated["bmodel_sha256"]);

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

    // --do_sample (same bmodel name) changes the lm_head (it returns logits) and adds two
    // heads; nothing else.
    let sample_flags = ["-q", "bf16", "--do_sample"];
    let sampled = common::convert_seq64(model, &out, &cache, &sample_flags);
    assert_eq!(sampled["bmodel"], cold["bmodel"]);
    assert_eq!(sampled["up_to_date"], false);
    for p in pieces(&sampled) {
        assert_eq!(p["exported"], p["cached"] == false, "{p}");
    }
    assert_eq!(
        compiled(&sampled),
        ["lm_head", "greedy_head", "sample_head"]
    );

    // One weight byte of layer 1: its two pieces are compiled again and the bmodel combined.
    let file = model.join("model.safetensors");
    flip_middle_byte(
        &file,
        safetensors_range(&file, "model.layers.1.mlp.down_proj.weight"),
    );
    let before = identity(&bmodel);
    let reweighted = common::convert_seq64(model, &out, &cache, &sample_flags);
    assert_eq!(reweighted["up_to_date"], false);
    assert_eq!(compiled(&reweighted), ["block_1", "block_cache_1"]);
    // Combined again (a new file; the flipped low bit of an f32 weight may vanish in bf16, so
    // its bytes may be the old ones).
    assert_ne!(identity(&bmodel), before);
}
