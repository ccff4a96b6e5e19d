//! The bmrt wrapper on the real TPU-MLIR 1.30.2 CPU simulator: converts the tiny qwen2 fixture
//! (bf16, seq 64), loads it, checks what bmrt reports about its nets against the runtime
//! contract (shared/reference/llm-tpu.md §1), and runs `embedding_cache` and `lm_head` against
//! host math on the checkpoint's own weights. Fails (never skips) without the toolchain.
//! The simulator keeps both cores busy: run with `--test-threads=1`.

mod common;

use std::time::Instant;

use llm_convert::bmrt::{
    bf16_to_f32, f32_to_bf16, DType, Runtime, ADDR_MODE_BASIC, ADDR_MODE_IO_ALONE,
};
use llm_convert::model::Model;
use llm_convert::toolchain::RuntimeLibs;

const SEQ: usize = 64;
const HIDDEN: usize = 128;
const VOCAB: usize = 1024;
const TOKEN: usize = 17;

/// A `[rows, cols]` weight as f32 rows.
fn weight_rows(model: &Model, name: &str) -> Vec<Vec<f32>> {
    model.tensor(name).unwrap().to_vec2::<f32>().unwrap()
}

#[test]
fn simulator_loads_and_runs_a_converted_bmodel() {
    let layout = common::toolchain();
    let fixture = common::fixtures().join("qwen2");
    let tmp = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let bmodel = common::converted(&fixture, SEQ, &["-q", "bf16"])
        .bmodel
        .clone();
    eprintln!("converted in {:.1} s", t0.elapsed().as_secs_f64());

    // Explicitly the simulator, whatever LLM_CONVERT_RUNTIME says.
    let libs = RuntimeLibs::select(&layout, Some("simulator"));
    let mut rt = Runtime::open(&libs, 0).expect("opening the simulator runtime");
    let err = rt.net("embedding").unwrap_err().to_string();
    assert!(err.contains("no bmodel loaded"), "{err}");
    let missing = rt.load_bmodel(&tmp.path().join("nope.bmodel")).unwrap_err();
    assert!(
        format!("{missing:#}").contains("nope.bmodel"),
        "{missing:#}"
    );

    let t1 = Instant::now();
    rt.load_bmodel(&bmodel).expect("loading the bmodel");
    eprintln!("loaded in {:.1} s", t1.elapsed().as_secs_f64());

    // 1. Nets and what bmrt says about them.
    let mut names = rt.net_names().unwrap();
    names.sort();
    assert_eq!(
        names,
        [
            "block_0",
            "block_1",
            "block_cache_0",
            "block_cache_1",
            "embedding",
            "embedding_cache",
            "lm_head"
        ]
    );
    let cache = rt.net("block_cache_0").unwrap();
    assert_eq!(
        cache.input_names,
        [
            "input_states",
            "position_ids",
            "attention_mask",
            "history_k",
            "history_v"
        ]
    );
    assert_eq!(cache.stages.len(), 1);
    let stage = &cache.stages[0];
    assert_eq!(
        stage.input_shapes,
        [
            vec![1, 1, HIDDEN],
            vec![1, 1],
            vec![1, 1, 1, SEQ + 1],
            vec![1, SEQ, 2, 32],
            vec![1, SEQ, 2, 32],
        ]
    );
    assert_eq!(
        cache.input_dtypes,
        [
            DType::BF16,
            DType::I32,
            DType::BF16,
            DType::BF16,
            DType::BF16
        ]
    );
    assert_eq!(cache.addr_mode, ADDR_MODE_IO_ALONE);
    assert!(cache.is_io_alone() && !cache.is_dynamic);
    assert_eq!(stage.input_mems.len(), 5);
    // The KV cache is the history inputs' own memory: [SEQ, 2, 32] bf16 each.
    assert_eq!(stage.input_mems[3].size(), SEQ * 2 * 32 * 2);
    // One token's new K (output 1) is the slot size of the in-place append.
    let kv_bytes = stage.output_mems[1].size();
    assert_eq!(kv_bytes, 2 * 32 * 2);
    let slot = stage.input_mems[3].sub(5 * kv_bytes, kv_bytes).unwrap();
    assert_eq!(
        slot.addr(),
        stage.input_mems[3].addr() + 5 * kv_bytes as u64
    );
    assert!(stage.input_mems[3].sub(SEQ * kv_bytes, 1).is_err());
    assert_eq!(cache.max_input_bytes[3], SEQ * 2 * 32 * 2);
    let block = rt.net("block_0").unwrap();
    assert!(!block.is_dynamic);
    // The fields after the arrays (read at their C offsets) agree with the deploy flags.
    assert_eq!((block.addr_mode, block.core_num), (ADDR_MODE_BASIC, 1));
    assert_eq!(cache.core_num, 1);

    // 4. A net that does not exist is an error naming it, not a panic.
    let err = format!("{:#}", rt.net("block_7").unwrap_err());
    assert!(
        err.contains("block_7") && err.contains(bmodel.to_str().unwrap()),
        "{err}"
    );
    assert!(!rt.has_net("block_7").unwrap());

    let model = Model::open(&fixture).unwrap();
    assert!(!model.config.tie_word_embeddings, "qwen2 fixture is untied");
    let embed = weight_rows(&model, "model.embed_tokens.weight");
    let head = weight_rows(&model, "lm_head.weight");
    assert_eq!((embed.len(), head.len()), (VOCAB, VOCAB));

    // 2. embedding_cache on one token id, against the checkpoint's row.
    let t2 = Instant::now();
    let emb = rt.net("embedding_cache").unwrap();
    assert_eq!(emb.input_dtypes, [DType::I32]);
    assert_eq!(emb.output_dtypes, [DType::BF16]);
    let (inputs, outputs) = (
        emb.input_tensors(0).unwrap(),
        emb.output_tensors(0).unwrap(),
    );
    rt.s2d(&inputs[0].mem, &[TOKEN as i32]).unwrap();
    let shapes = rt.launch(&emb, &inputs, &outputs).unwrap();
    assert_eq!(shapes, [vec![1, 1, HIDDEN]]);
    let bits: Vec<u16> = rt.read(&outputs[0].mem, HIDDEN).unwrap();
    let got = bf16_to_f32(&bits);
    let want = &embed[TOKEN];
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    assert!(
        diff <= 1e-2 * scale,
        "embedding row {TOKEN}: max |diff| {diff} > 1e-2 x {scale}\n got {got:?}\nwant {want:?}"
    );
    eprintln!("embedding_cache ok in {:.2} s", t2.elapsed().as_secs_f64());

    // 3. lm_head on h = that embedding row: its token must be the host argmax of W·h.
    let t3 = Instant::now();
    let lm = rt.net("lm_head").unwrap();
    assert_eq!(lm.input_dtypes, [DType::BF16]);
    assert_eq!(lm.stages[0].input_shapes, [vec![1, HIDDEN]]);
    assert_eq!(lm.output_dtypes, [DType::I32]);
    let (inputs, outputs) = (lm.input_tensors(0).unwrap(), lm.output_tensors(0).unwrap());
    // The device's bf16 output is exactly what the head would get in a real pipeline.
    let h_bits = f32_to_bf16(&got);
    assert_eq!(h_bits, bits, "bf16 values survive the f32 round trip");
    rt.s2d(&inputs[0].mem, &h_bits).unwrap();
    rt.launch(&lm, &inputs, &outputs).unwrap();
    let mut token = [0i32; 1];
    rt.d2s(&mut token, &outputs[0].mem).unwrap();
    let logits: Vec<f32> = head
        .iter()
        .map(|w| w.iter().zip(&got).map(|(a, b)| a * b).sum())
        .collect();
    let mut order: Vec<usize> = (0..VOCAB).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let (top1, top2) = (order[0], order[1]);
    let token = token[0] as usize;
    if logits[top1] - logits[top2] < 1e-2 {
        assert!(
            token == top1 || token == top2,
            "lm_head gave {token}, host top-2 {top1} ({}) / {top2} ({})",
            logits[top1],
            logits[top2]
        );
    } else {
        assert_eq!(
            token, top1,
            "lm_head gave {token} (logit {}), host argmax {top1} (logit {})",
            logits[token], logits[top1]
        );
    }
    eprintln!(
        "lm_head ok in {:.2} s (token {token}, top-2 margin {:.4})",
        t3.elapsed().as_secs_f64(),
        logits[top1] - logits[top2]
    );

    // Owned device memory: round trip, zero, d2d, freed on drop before the runtime.
    let buf = rt.alloc(64).unwrap();
    let data: Vec<u8> = (0..64).collect();
    rt.s2d(&buf, &data).unwrap();
    let other = rt.alloc(64).unwrap();
    rt.memset_zero(&other).unwrap();
    rt.d2d(&other, 8, &buf, 0, 16).unwrap();
    let back: Vec<u8> = rt.read(&other, 64).unwrap();
    assert!(back[..8].iter().all(|&b| b == 0) && back[24..].iter().all(|&b| b == 0));
    assert_eq!(&back[8..24], &data[..16]);
    assert!(
        rt.s2d(&buf, &data[..10]).is_err(),
        "size mismatch is refused"
    );
    assert!(
        rt.d2d(&other, 60, &buf, 0, 16).is_err(),
        "overrun is refused"
    );
    drop((buf, other));
    rt.sync().unwrap();
    rt.stat().unwrap();
    eprintln!("total {:.1} s", t0.elapsed().as_secs_f64());
}
