//! Families added on the registry, quantized: a w4bf16 bmodel converts on the real TPU-MLIR and
//! its nets, I/O names, shapes and dtypes (`model_tool --info`) are the runtime contract's.
//! (A small local version of tests/convert.rs's check: static nets, no `--do_sample`.)

mod common;

use std::collections::BTreeMap;

use serde_json::Value;

const SEQ: usize = 64;

/// name → (inputs, outputs), each `name [dims] dtype`, as `model_tool --info` prints them.
type Nets = BTreeMap<String, (Vec<String>, Vec<String>)>;

fn parse_info(text: &str) -> Nets {
    let mut nets = Nets::new();
    let (mut current, mut stage) = (String::new(), 0);
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("stage ") {
            stage = rest.split(',').next().unwrap().parse().unwrap();
        } else if line.starts_with("net ") {
            current = line
                .split('[')
                .nth(1)
                .unwrap()
                .split(']')
                .next()
                .unwrap()
                .into();
            assert!(nets.insert(current.clone(), Default::default()).is_none());
        } else if stage == 0 {
            let (is_input, rest) =
                match (line.strip_prefix("input: "), line.strip_prefix("output: ")) {
                    (Some(r), _) => (true, r),
                    (_, Some(r)) => (false, r),
                    _ => continue,
                };
            let (name, rest) = rest.split_once(", [").unwrap();
            let (dims, rest) = rest.split_once("], ").unwrap();
            let dtype = rest.split(',').next().unwrap();
            let io = format!("{name} [{dims}] {dtype}");
            let net = nets.get_mut(&current).unwrap();
            if is_input { &mut net.0 } else { &mut net.1 }.push(io);
        }
    }
    nets
}

/// The static contract for `config` at S = MAX_INPUT_LENGTH = 64 in bf16 activations.
fn contract(config: &Value) -> Nets {
    let u = |k: &str| config[k].as_u64().unwrap() as usize;
    // Multi-head families (baichuan) have no num_key_value_heads.
    let kvh = config["num_key_value_heads"]
        .as_u64()
        .map_or(u("num_attention_heads"), |k| k as usize);
    let h = u("hidden_size");
    let d = config["head_dim"]
        .as_u64()
        .map_or(h / u("num_attention_heads"), |d| d as usize);
    let io = |v: &[(&str, Vec<usize>, &str)]| -> Vec<String> {
        v.iter()
            .map(|(n, d, t)| {
                let d: Vec<String> = d.iter().map(usize::to_string).collect();
                format!("{n} [{}] {t}", d.join(", "))
            })
            .collect()
    };
    let (b, s) = ("bfloat16", SEQ);
    let mut nets = Nets::new();
    nets.insert(
        "embedding".into(),
        (
            io(&[("input_ids", vec![1, s], "int32")]),
            io(&[("embedding", vec![1, s, h], b)]),
        ),
    );
    nets.insert(
        "embedding_cache".into(),
        (
            io(&[("input_ids", vec![1, 1], "int32")]),
            io(&[("embedding_cache", vec![1, 1, h], b)]),
        ),
    );
    nets.insert(
        "lm_head".into(),
        (
            io(&[("hidden_states", vec![1, h], b)]),
            io(&[("token_id", vec![1, 1], "int32")]),
        ),
    );
    for i in 0..u("num_hidden_layers") {
        let outputs = |l: usize| {
            io(&[
                ("output_states", vec![1, l, h], b),
                ("k_cache", vec![1, l, kvh, d], b),
                ("v_cache", vec![1, l, kvh, d], b),
            ])
        };
        let block_in = io(&[
            ("input_states", vec![1, s, h], b),
            ("position_ids", vec![1, s], "int32"),
            ("attention_mask", vec![1, 1, s, s], b),
        ]);
        nets.insert(format!("block_{i}"), (block_in, outputs(s)));
        let cache_in = io(&[
            ("input_states", vec![1, 1, h], b),
            ("position_ids", vec![1, 1], "int32"),
            ("attention_mask", vec![1, 1, 1, s + 1], b),
            ("history_k", vec![1, s, kvh, d], b),
            ("history_v", vec![1, s, kvh, d], b),
        ]);
        nets.insert(format!("block_cache_{i}"), (cache_in, outputs(1)));
    }
    nets
}

fn w4bf16_converts_to_contract(fixture: &str) {
    w4bf16_converts_to(fixture, |_| {});
}

/// [`w4bf16_converts_to_contract`] with the contract as `edit` changes it.
fn w4bf16_converts_to(fixture: &str, edit: impl FnOnce(&mut Nets)) {
    common::toolchain();
    let model = common::fixtures().join(fixture);
    let config: Value =
        serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
    let config = generic_keys(config);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let m = common::convert_seq64(&model, &out, &dir.path().join("cache"), &["-q", "w4bf16"]);
    let bmodel = m["bmodel"].as_str().unwrap();
    assert!(
        bmodel.ends_with(&format!(
            "{fixture}_w4bf16_seq{SEQ}_bm1684x_1dev_static.bmodel"
        )),
        "{bmodel}"
    );
    let nets = parse_info(&std::fs::read_to_string(out.join("model.log")).unwrap());
    let mut want = contract(&config);
    edit(&mut want);
    assert_eq!(
        nets.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{fixture}: net names"
    );
    for (name, io) in &want {
        assert_eq!(&nets[name], io, "{fixture} {name}: inputs, outputs");
    }
}

#[test]
fn gemma_w4bf16_contract() {
    w4bf16_converts_to_contract("gemma");
}

#[test]
fn phi3_w4bf16_contract() {
    w4bf16_converts_to_contract("phi3");
}

#[test]
fn glm4_w4bf16_contract() {
    w4bf16_converts_to_contract("glm4");
}

#[test]
fn glm_w4bf16_contract() {
    w4bf16_converts_to_contract("glm");
}

/// qwen2_moe / qwen3_moe: the expert MatMuls quantize to w4 like the dense MLP's.
#[test]
fn qwen2_moe_w4bf16_contract() {
    w4bf16_converts_to_contract("qwen2_moe");
}

#[test]
fn qwen3_moe_w4bf16_contract() {
    w4bf16_converts_to_contract("qwen3_moe");
}
/// Windowed blocks keep the runtime's 16-bit `attention_mask` input (the window's f32 ops end
/// before the mask add; LLM-TPU's runtime writes 16-bit masks).
#[test]
fn mistral_w4bf16_contract() {
    w4bf16_converts_to_contract("mistral");
}

#[test]
fn gemma2_w4bf16_contract() {
    w4bf16_converts_to_contract("gemma2");
}

#[test]
fn gemma3_text_w4bf16_contract() {
    w4bf16_converts_to_contract("gemma3_text");
}

#[test]
fn internlm2_w4bf16_contract() {
    w4bf16_converts_to_contract("internlm2");
}

#[test]
fn baichuan_w4bf16_contract() {
    w4bf16_converts_to_contract("baichuan");
}

#[test]
fn baichuan_alibi_w4bf16_contract() {
    w4bf16_converts_to_contract("baichuan_alibi");
}

/// chatglm follows llm_convert.py's contract for it: block_cache returns the whole KV cache
/// shifted by one, `[1,S,KVH,D]`.
#[test]
fn chatglm_w4bf16_contract() {
    w4bf16_converts_to("chatglm", |nets| {
        for (name, (_, outputs)) in nets.iter_mut() {
            if name.starts_with("block_cache") {
                for io in outputs.iter_mut().skip(1) {
                    *io = io.replace("[1, 1, ", &format!("[1, {SEQ}, "));
                }
            }
        }
    });
}

/// ChatGLMConfig's names for the keys the contract needs, under transformers' names (other
/// configs pass unchanged).
fn generic_keys(mut config: Value) -> Value {
    for (from, to) in [
        ("num_layers", "num_hidden_layers"),
        ("kv_channels", "head_dim"),
        ("multi_query_group_num", "num_key_value_heads"),
    ] {
        if let Some(v) = config.get(from).cloned() {
            config[to] = v;
        }
    }
    config
}
