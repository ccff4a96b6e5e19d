//! Property-based tests over the parsers: arbitrary bytes and mutations of valid files give
//! an error naming the file, never a panic, never an allocation above the cap.

use std::path::Path;
use std::sync::atomic::Ordering;

use proptest::prelude::*;

use super::support::{is_bad_input, GgufBuilder};
use super::{ALLOCATION_LIMIT, LARGEST};

/// A small valid safetensors file (two F32 tensors).
fn valid_safetensors() -> Vec<u8> {
    let a = vec![0u8; 4 * 6];
    let b = vec![0u8; 4 * 4];
    let ta = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &a).unwrap();
    let tb = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &b).unwrap();
    safetensors::serialize([("a", ta), ("b", tb)], None).unwrap()
}

/// `base` with some 8-byte words overwritten by extreme values and some bytes flipped, and
/// maybe truncated.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len();
    (
        proptest::collection::vec(
            (
                0..len,
                prop_oneof![
                    Just(0u64),
                    Just(u64::MAX),
                    Just(u64::MAX - 7),
                    Just(1 << 62),
                    any::<u64>()
                ],
            ),
            0..3,
        ),
        proptest::collection::vec((0..len, any::<u8>()), 0..6),
        prop_oneof![Just(len), 0..=len],
    )
        .prop_map(move |(words, flips, cut)| {
            let mut b = base.clone();
            for (at, w) in words {
                let end = (at + 8).min(b.len());
                b[at..end].copy_from_slice(&w.to_le_bytes()[..end - at]);
            }
            for (at, x) in flips {
                b[at] ^= x;
            }
            b.truncate(cut);
            b
        })
}

/// Mutations of a JSON text: values replaced at random keys by hostile values.
fn hostile_json_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::json!(0)),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(u64::MAX)),
        Just(serde_json::json!(1u64 << 40)),
        Just(serde_json::json!(1.5)),
        Just(serde_json::json!(-0.0)),
        Just(serde_json::json!(1e308)),
        Just(serde_json::json!(null)),
        Just(serde_json::json!("x")),
        Just(serde_json::json!([])),
        Just(serde_json::json!({"rope_type": "llama3", "factor": 0})),
        (1u64..100_000).prop_map(|n| serde_json::json!(n)),
    ]
}

const CASES: u32 = 96;

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn safetensors_header_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let path = Path::new("/x/model.safetensors");
        if let Err(e) = llm_convert::model::safetensors::parse_header(&bytes, path) {
            prop_assert!(e.to_string().contains("/x/model.safetensors"), "{e}");
        }
    }

    #[test]
    fn safetensors_header_mutations(bytes in mutated(valid_safetensors())) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        match llm_convert::model::safetensors::SafetensorsWeights::open_files(std::slice::from_ref(&path)) {
            Err(e) => prop_assert!(e.to_string().contains(&path.display().to_string()), "{e}"),
            Ok(w) => {
                use llm_convert::model::WeightSource;
                for name in w.names() {
                    let _ = w.read_f32(&name);
                }
            }
        }
        prop_assert!(LARGEST.load(Ordering::Relaxed) <= ALLOCATION_LIMIT);
    }

    #[test]
    fn shard_index_arbitrary(text in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..128),
        (hostile_json_value(), proptest::collection::vec(prop_oneof![Just('a'), Just('.'), Just('/'), Just('\\')], 0..12).prop_map(String::from_iter)).prop_map(|(v, s)| serde_json::json!({"weight_map": {"t": v, "u": s}}).to_string().into_bytes()),
    ]) {
        let path = Path::new("/x/model.safetensors.index.json");
        if let Err(e) = llm_convert::model::safetensors::ShardIndex::parse(&text, path) {
            prop_assert!(e.to_string().contains("/x/model.safetensors.index.json"), "{e}");
        }
    }

    #[test]
    fn gguf_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut b = 0x4655_4747u32.to_le_bytes().to_vec();
        b.extend(bytes);
        let r = llm_convert::model::gguf_header::check(std::io::Cursor::new(&b), b.len() as u64);
        if r.is_ok() {
            let _ = candle_core::quantized::gguf_file::Content::read(&mut std::io::Cursor::new(&b));
        }
        prop_assert!(LARGEST.load(Ordering::Relaxed) <= ALLOCATION_LIMIT);
    }

    #[test]
    fn gguf_mutations(bytes in mutated(GgufBuilder::llama(0.25).bytes())) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, &bytes).unwrap();
        match llm_convert::model::Model::open(&path) {
            Err(e) => prop_assert!(is_bad_input(&e, &path), "{e:#}"),
            Ok(model) => {
                use llm_convert::model::WeightSource;
                for name in model.weights.names() {
                    let _ = model.weights.read_f32(&name);
                }
            }
        }
        prop_assert!(LARGEST.load(Ordering::Relaxed) <= ALLOCATION_LIMIT);
    }

    #[test]
    fn config_mutations(
        edits in proptest::collection::vec((prop_oneof![
            Just("hidden_size"), Just("num_attention_heads"), Just("num_key_value_heads"),
            Just("head_dim"), Just("num_hidden_layers"), Just("intermediate_size"),
            Just("vocab_size"), Just("max_position_embeddings"), Just("rope_theta"),
            Just("rms_norm_eps"), Just("rope_scaling"), Just("rope_parameters"),
            Just("eos_token_id"), Just("bos_token_id"), Just("sliding_window"),
            Just("scale_emb"), Just("scale_depth"), Just("dim_model_base"), Just("model_type"),
        ], hostile_json_value()), 1..4),
        family in prop_oneof![Just("llama"), Just("qwen2"), Just("qwen3"), Just("minicpm"), Just("mistral")],
    ) {
        let mut v = serde_json::json!({"model_type": family, "hidden_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 256});
        for (k, x) in edits {
            v[k] = x;
        }
        let path = Path::new("/x/config.json");
        match llm_convert::model::ModelConfig::from_json(&v, path) {
            Err(e) => prop_assert!(e.to_string().contains("/x/config.json"), "{e}"),
            Ok(cfg) => {
                prop_assert!(cfg.head_dim % 2 == 0 && cfg.rms_norm_eps.is_finite() && cfg.rope_theta > 0.0);
                // What is derived from it stays small.
                let n = llm_convert::model::layout::expected_tensors(&cfg).len();
                prop_assert!(n < 20_000, "{n} tensors");
            }
        }
    }

    #[test]
    fn bmodel_header_arbitrary_bytes(
        words in proptest::collection::vec(prop_oneof![any::<u32>(), 0u32..256], 0..8),
        tail in proptest::collection::vec(any::<u8>(), 0..256),
        magic in any::<bool>(),
    ) {
        let mut b: Vec<u8> = if magic { 0xFF55_AAEEu32.to_le_bytes().to_vec() } else { vec![] };
        b.extend(words.iter().flat_map(|w| w.to_le_bytes()));
        b.extend(tail);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bmodel");
        std::fs::write(&path, &b).unwrap();
        if let Err(e) = llm_convert::bmodel::check_file(&path) {
            prop_assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        if let Ok(h) = llm_convert::bmodel::Header::parse(&b) {
            let _ = llm_convert::bmodel::summarize(h.flatbuffer(&b));
        }
        prop_assert!(LARGEST.load(Ordering::Relaxed) <= ALLOCATION_LIMIT);
    }
}
