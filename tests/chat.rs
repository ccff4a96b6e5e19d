//! Sampling through sample_head, `generate` and `chat` on real bmodels on the CPU simulator,
//! and the tokenizer side (chat template, streaming detokenization) against transformers.
//! Fails (never skips) without the toolchain. Simulator runs are serialised: it keeps both
//! cores busy.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

use llm_convert::bmrt::Runtime;
use llm_convert::chat::{ChatConfig, IncrementalDecoder, Message};
use llm_convert::model::ModelConfig;
use llm_convert::runner::image_prompt;
use llm_convert::runner::multimodal::PromptExtras;
use llm_convert::runner::{Pipeline, SamplingConfig};
use llm_convert::toolchain::RuntimeLibs;
use serde_json::{json, Value};

const FIXTURE: &str = "qwen2";
const PROMPT: [u32; 8] = [3, 17, 256, 999, 42, 7, 511, 128];
const SEQ: usize = 64;

fn simulator() -> MutexGuard<'static, ()> {
    static SIM: Mutex<()> = Mutex::new(());
    SIM.lock().unwrap_or_else(|e| e.into_inner())
}

/// This test process's outputs (removed once it has ended; pieces go to the run's shared cache).
fn work_dir() -> PathBuf {
    common::scratch().to_path_buf()
}

/// Converts the fixture (bf16, seq 64, static, extra flags) into `work_dir()/<name>`; returns
/// the bmodel and its config folder. (On the simulator a dynamic prefill of 16 tokens is
/// slower than a static one of 64 rows.)
fn convert(name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let out = work_dir().join(name);
    let _ = std::fs::remove_dir_all(&out);
    let mut flags = vec!["-q", "bf16"];
    flags.extend_from_slice(extra);
    let model = common::fixtures().join(FIXTURE);
    let m = common::convert_seq64(&model, &out, &common::run_dir().join("cache"), &flags);
    let bmodel = PathBuf::from(m["bmodel"].as_str().expect("manifest names the bmodel"));
    (bmodel, out.join("config"))
}

/// The `--do_sample` bf16 bmodel (lm_head logits, greedy_head, sample_head).
fn do_sample_bmodel() -> &'static (PathBuf, PathBuf) {
    static B: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    B.get_or_init(|| {
        common::toolchain();
        convert("do_sample", &["--do_sample"])
    })
}

fn load(bmodel: &Path) -> Runtime {
    let layout = common::toolchain();
    let libs = RuntimeLibs::select(&layout, Some("simulator"));
    let mut rt = Runtime::open(&libs, 0).expect("opening the simulator");
    rt.load_bmodel(bmodel).expect("loading the bmodel");
    rt
}

/// Prefill + decode: `steps` tokens; `check` sees the pipeline after each.
fn run(
    p: &mut Pipeline,
    prompt: &[u32],
    steps: usize,
    mut check: impl FnMut(&Pipeline, u32),
) -> Vec<u32> {
    let mut t = p.prefill(prompt).unwrap().token;
    check(p, t);
    let mut out = vec![t];
    while out.len() < steps {
        t = p.decode(t).unwrap().token;
        check(p, t);
        out.push(t);
    }
    out
}

/// (a) sample_head on the simulator: top_k = 1 is greedy; a fixed seed replays, another seed
/// differs; every draw is one of the offered candidates; the repetition penalty sees the
/// visited tokens.
#[test]
fn sampling_through_sample_head() {
    let (bmodel, _) = do_sample_bmodel();
    let _sim = simulator();
    let t0 = std::time::Instant::now();
    let rt = load(bmodel);
    println!("loaded in {:.1} s", t0.elapsed().as_secs_f64());
    let mut p = Pipeline::new(&rt).unwrap();
    assert!(p.nets.sample_head.is_some());
    let steps = 4;
    let greedy = run(&mut p, &PROMPT, steps, |_, _| {});

    let config = |top_k, temperature, seed| SamplingConfig {
        top_k,
        temperature,
        seed,
        ..Default::default()
    };
    p.set_sampling(Some(config(1, 0.7, 5))).unwrap();
    let top1 = run(&mut p, &PROMPT, steps, |p, t| {
        let c = p.last_candidates();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, t);
        assert!((c[0].1 - 1.0).abs() < 1e-5, "{c:?}");
    });
    assert_eq!(top1, greedy, "top_k = 1 must give the greedy tokens");

    // High temperature: flat over the 50 candidates.
    let sampled = |p: &mut Pipeline, seed| {
        p.set_sampling(Some(config(50, 5.0, seed))).unwrap();
        run(p, &PROMPT, steps, |p, t| {
            let c = p.last_candidates();
            assert_eq!(c.len(), 50);
            let sum: f32 = c.iter().map(|x| x.1).sum();
            assert!((sum - 1.0).abs() < 1e-3, "probabilities sum to {sum}");
            let ids: BTreeSet<u32> = c.iter().map(|x| x.0).collect();
            assert_eq!(ids.len(), 50, "distinct candidates");
            assert!(
                c.iter().any(|&(id, prob)| id == t && prob > 0.0),
                "token {t} is not a candidate with probability > 0: {c:?}"
            );
        })
    };
    let a = sampled(&mut p, 1);
    let b = sampled(&mut p, 1);
    let c = sampled(&mut p, 2);
    println!("greedy {greedy:?}\nseed 1 {a:?}\nseed 2 {c:?}");
    assert_eq!(a, b, "the same seed replays the same tokens");
    assert_ne!(a, c, "another seed gives another sequence");
    assert_ne!(a, greedy, "temperature 5 over 50 candidates is not greedy");

    // A huge repetition penalty with top_k = 1 never repeats a token of its window.
    let penalty = |window| SamplingConfig {
        top_k: 1,
        repetition_penalty: 1000.0,
        repetition_window: window,
        seed: 0,
        ..Default::default()
    };
    p.set_sampling(Some(penalty(64))).unwrap();
    run(&mut p, &PROMPT, steps, |p, t| {
        let visited = p.visited();
        let before = &visited[..visited.len() - 1];
        assert!(
            !before.contains(&t),
            "token {t} repeated despite the penalty: {visited:?}"
        );
    });
    // The window is exactly the last `window` tokens: find a prompt that holds its own greedy
    // next token g at position j < last; a window reaching j moves top-1 off g, one that
    // stops just short of it does not.
    p.set_sampling(None).unwrap();
    let g = greedy[0];
    let (j, prompt) = (0..PROMPT.len() - 1)
        .find_map(|j| {
            let mut v = PROMPT.to_vec();
            v[j] = g;
            (run(&mut p, &v, 1, |_, _| {})[0] == g).then_some((j, v))
        })
        .expect("no prompt variant continues with a token it contains");
    let reach = prompt.len() - j;
    p.set_sampling(Some(penalty(reach))).unwrap();
    let t = run(&mut p, &prompt, 1, |_, _| {})[0];
    assert_ne!(t, g, "window {reach} covers position {j}: {prompt:?}");
    p.set_sampling(Some(penalty(reach - 1))).unwrap();
    let t = run(&mut p, &prompt, 1, |_, _| {})[0];
    assert_eq!(
        t,
        g,
        "window {} stops short of position {j}: {prompt:?}",
        reach - 1
    );
    println!("sampling test: {:.1} s", t0.elapsed().as_secs_f64());
}

/// Sampling on a bmodel without sample_head fails and says to convert with --do_sample.
#[test]
fn sampling_needs_a_do_sample_bmodel() {
    let (bmodel, config) = {
        let _sim = simulator();
        common::toolchain();
        convert("top1", &[])
    };
    let config = tokenizer_config_dir(&config);
    let _sim = simulator();
    let o = common::llm_convert(&[
        "generate",
        bmodel.to_str().unwrap(),
        "-m",
        config.path().to_str().unwrap(),
        "--prompt",
        "hi",
        "--temperature",
        "0.8",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--do_sample") && err.contains("sample_head"),
        "{err}"
    );
}

/// GPT-2's bytes_to_unicode.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A copy of convert's config folder with a byte-level BPE tokenizer covering the fixture's
/// 1024 ids (256 bytes, 766 merges of letter pairs, <|im_start|> and <|im_end|>) and a
/// ChatML template, so every id the model produces decodes.
fn tokenizer_config_dir(config: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(config).unwrap().flatten() {
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(byte_char(b).to_string(), json!(b));
    }
    let letters: Vec<char> = ('a'..='z').chain('A'..='Z').collect();
    let mut merges = Vec::new();
    'outer: for &x in &letters {
        for &y in &letters {
            if vocab.len() == 1022 {
                break 'outer;
            }
            vocab.insert(format!("{x}{y}"), json!(vocab.len()));
            merges.push(format!("{x} {y}"));
        }
    }
    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    vocab.insert("<|im_start|>".into(), json!(1022));
    vocab.insert("<|im_end|>".into(), json!(1023));
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(1022, "<|im_start|>"), special(1023, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).unwrap();
    let tc = json!({"chat_template": CHATML, "eos_token": "<|im_end|>", "bos_token": null});
    std::fs::write(dir.path().join("tokenizer_config.json"), tc.to_string()).unwrap();
    dir
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// `llm-convert generate --json`; returns the report.
fn generate(bmodel: &Path, config: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "generate",
        bmodel.to_str().unwrap(),
        "-m",
        config.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = common::llm_convert(&args);
    assert!(
        o.status.success(),
        "generate failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "generate printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// The generated tokens are the runner's greedy ones, cut at the first EOS id.
fn assert_greedy(report: &Value, greedy: &[u32], eos: &BTreeSet<u32>, max_tokens: usize) {
    let got = ids(&report["tokens"]);
    let cut = greedy
        .iter()
        .position(|t| eos.contains(t))
        .map_or(greedy.len(), |i| i + 1)
        .min(max_tokens);
    assert_eq!(
        got,
        greedy[..cut],
        "generate vs the runner's greedy tokens: {report}"
    );
}

/// (b) `generate --json` (chat template, byte-level tokenizer) gives the runner's greedy
/// tokens and stops at --max-tokens; a prompt that nearly fills the KV cache stops there.
#[test]
fn generate_json_is_the_runners_greedy_output() {
    let (bmodel, config) = do_sample_bmodel();
    let config = tokenizer_config_dir(config);
    let cfg = ChatConfig::load(config.path()).unwrap();
    assert!(cfg.eos_ids.contains(&1023), "{:?}", cfg.eos_ids);
    let _sim = simulator();
    let t0 = std::time::Instant::now();

    let max = 4;
    let r = generate(
        bmodel,
        config.path(),
        &["--prompt", "hi there", "--max-tokens", &max.to_string()],
    );
    let prompt = ids(&r["prompt_ids"]);
    let expected_prompt = cfg
        .encode(
            "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .unwrap();
    assert_eq!(prompt, expected_prompt, "the ChatML prompt");
    assert_eq!(r["timings"]["simulated"], true);
    assert!(r["timings"]["first_token_s"].as_f64().unwrap() > 0.0);
    assert_eq!(r["sampling"], Value::Null, "greedy by default");

    let rt = load(bmodel);
    let mut p = Pipeline::new(&rt).unwrap();
    let greedy = run(&mut p, &prompt, max, |_, _| {});
    assert_greedy(&r, &greedy, &cfg.eos_ids, max);
    if r["stop_reason"] == "max_tokens" {
        assert_eq!(ids(&r["tokens"]).len(), max);
        assert!(r["timings"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    } else {
        assert_eq!(r["stop_reason"], "eos", "{r}");
    }
    let text_ids: Vec<u32> = ids(&r["tokens"])
        .into_iter()
        .filter(|t| !cfg.eos_ids.contains(t))
        .collect();
    assert_eq!(r["text"].as_str().unwrap(), cfg.decode(&text_ids).unwrap());

    // 62 raw prompt tokens (digits do not merge): SEQLEN 64 leaves room for 3 tokens.
    let long: String = "0123456789".repeat(7)[..62].to_string();
    let r = generate(
        bmodel,
        config.path(),
        &["--prompt", &long, "--no-template", "--max-tokens", "100"],
    );
    assert_eq!(ids(&r["prompt_ids"]).len(), 62);
    let greedy = run(&mut p, &ids(&r["prompt_ids"]), SEQ - 62 + 1, |_, _| {});
    assert_greedy(&r, &greedy, &cfg.eos_ids, 100);
    if r["stop_reason"] != "eos" {
        assert_eq!(r["stop_reason"], "kv_cache_full", "{r}");
        assert_eq!(ids(&r["tokens"]).len(), SEQ - 62 + 1);
        assert!(r["stop_message"].as_str().unwrap().contains("KV cache"));
    }

    // Sampling flags with a seed replay through the CLI too.
    let args = [
        "--prompt",
        "hi",
        "--max-tokens",
        "3",
        "--temperature",
        "3",
        "--seed",
        "11",
    ];
    let s1 = generate(bmodel, config.path(), &args);
    let s2 = generate(bmodel, config.path(), &args);
    assert_eq!(s1["tokens"], s2["tokens"]);
    assert_eq!(s1["sampling"]["seed"], 11);
    assert_eq!(s1["sampling"]["top_k"], 50);
    println!("generate test: {:.1} s", t0.elapsed().as_secs_f64());
}

/// `llm-convert chat BMODEL -m CONFIG ARGS...` with `input` as the user's lines on stdin.
fn run_chat(bmodel: &Path, config: &Path, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_llm-convert"))
        .arg("chat")
        .arg(bmodel)
        .arg("-m")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// `chat` on stdin: turns, /clear, and a conversation that outgrows MAX_INPUT_LENGTH.
#[test]
fn chat_turns_clear_and_overflow() {
    let (bmodel, config) = do_sample_bmodel();
    let config = tokenizer_config_dir(config);
    let _sim = simulator();
    // Each 25-digit turn is ~35 tokens with the template: the second one overflows 63.
    let digits = "1234567890".repeat(3);
    let input = format!("hello\n/clear\n{d}\n{d}\n{d}{d}{d}\n", d = &digits[..25]);
    let o = run_chat(
        bmodel,
        config.path(),
        &["--max-tokens", "2"],
        input.as_bytes(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("(conversation cleared)"), "{err}");
    assert!(err.contains("dropped the oldest 1 exchange"), "{err}");
    assert!(err.contains("the bmodel takes at most 63"), "{err}");
    assert_eq!(
        err.matches("prompt tokens,").count(),
        3,
        "three answered turns: {err}"
    );
    assert!(err.contains("SIMULATED"), "{err}");
}

/// The SmolLM2 tokenizer (rebuilt from the bundled GGUF) and its chat template render and
/// tokenize conversations exactly as transformers' `apply_chat_template` does.
#[test]
fn smollm2_chat_template_matches_transformers() {
    let layout = common::toolchain();
    let gguf = common::smollm2_gguf();
    let cfg = ChatConfig::load(&gguf).unwrap();
    let template = cfg.template.as_ref().expect("SmolLM2 has a chat template");
    let conversations = [
        (
            vec![Message::new("user", "What is the capital of France?")],
            true,
        ),
        (
            vec![
                Message::new("system", "Be brief."),
                Message::new("user", "Hi!"),
                Message::new("assistant", "Hello. ✓"),
                Message::new("user", "  Grüße, 世界 🦀 "),
            ],
            true,
        ),
        (vec![Message::new("user", "no prompt")], false),
    ];
    let payload: Vec<Value> = conversations
        .iter()
        .map(|(m, g)| json!({"messages": m.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(), "add_generation_prompt": g}))
        .collect();
    let script = r#"
import importlib.metadata, json, os, sys
import gguf
gguf.__version__ = importlib.metadata.version("gguf")
from transformers import AutoTokenizer
folder, name = os.path.split(sys.argv[1])
tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
out = []
for c in json.loads(sys.argv[2]):
    text = tok.apply_chat_template(c["messages"], tokenize=False, add_generation_prompt=c["add_generation_prompt"])
    ids = tok(text, add_special_tokens=False)["input_ids"]
    out.append({"text": text, "ids": ids})
print(json.dumps(out))
"#;
    let o = Command::new(layout.python())
        .args([
            "-c",
            script,
            gguf.to_str().unwrap(),
            &Value::from(payload).to_string(),
        ])
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let expected: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    for ((messages, gen), want) in conversations.iter().zip(&expected) {
        let text = template.render(messages, *gen).unwrap();
        assert_eq!(text, want["text"].as_str().unwrap());
        assert_eq!(
            cfg.encode(&text, false).unwrap(),
            ids(&want["ids"]),
            "{text:?}"
        );
    }
    // EOS: <|im_end|> is SmolLM2's eos token.
    assert_eq!(cfg.tokenizer.id_to_token(2).as_deref(), Some("<|im_end|>"));
    assert!(cfg.eos_ids.contains(&2));
}

/// Streaming with the SmolLM2 tokenizer: characters whose bytes are spread over several
/// byte-level tokens never print broken; the stream adds up to the full decode.
#[test]
fn smollm2_streaming_never_breaks_characters() {
    let cfg = ChatConfig::load(&common::smollm2_gguf()).unwrap();
    let text = "Grüße aus 東京 🦀🦀, ½ ∑ ok";
    let ids = cfg.encode(text, false).unwrap();
    let split = ids
        .iter()
        .filter(|&&id| cfg.decode(&[id]).unwrap().contains('\u{FFFD}'))
        .count();
    assert!(
        split >= 2,
        "the text must put characters across tokens: {ids:?}"
    );
    let mut d = IncrementalDecoder::new(&cfg.tokenizer);
    let mut out = String::new();
    for &id in &ids {
        let piece = d.push(id).unwrap();
        assert!(
            !piece.contains('\u{FFFD}'),
            "broken character printed: {piece:?}"
        );
        out += &piece;
    }
    out += &d.finish().unwrap();
    assert_eq!(out, cfg.decode(&ids).unwrap());
    assert_eq!(out, text);
}

/// A history-KV bmodel keeps the conversation in its KV cache: the next turn's prompt (the
/// cached tokens plus new ones) prefills only the new tokens, through block_kv, and gives the
/// same next tokens and last-block outputs as prefilling the whole prompt afresh.
#[test]
fn history_kv_turns_reuse_the_cache() {
    common::toolchain();
    let (bmodel, _) = convert("history_kv", &["--use_history_kv"]);
    let _sim = simulator();
    let rt = load(&bmodel);
    let mut p = Pipeline::new(&rt).unwrap();
    assert!(p.nets.history_kv());
    p.capture = true;
    // Turn 1: the prompt and three generated tokens (the last one not fed yet).
    let reply = run(&mut p, &PROMPT, 3, |_, _| {});
    let mut turn2: Vec<u32> = PROMPT.to_vec();
    turn2.extend_from_slice(&reply);
    turn2.extend_from_slice(&[5, 6, 7, 8, 9]);
    let (reused, cached) = p.prefill_reusing(&turn2).unwrap();
    assert_eq!(
        cached,
        PROMPT.len() + 2,
        "the prompt and the fed reply tokens"
    );
    assert_eq!(reused.chunks, 1);
    assert!(
        reused.launches.iter().any(|(n, _)| n == "block_kv_0"),
        "the new tokens go through block_kv"
    );
    let after_reuse: Vec<u32> = (0..3)
        .scan(reused.token, |t, _| {
            let out = *t;
            *t = p.decode(out).unwrap().token;
            Some(out)
        })
        .collect();

    let (fresh, cached) = p.prefill_reusing(&[1, 2]).unwrap();
    assert_eq!(
        cached, 0,
        "a prompt that does not extend the cache starts over"
    );
    drop(fresh);
    let fresh = p.prefill(&turn2).unwrap();
    let last = p.nets.layers() - 1;
    let new_rows = |r: &llm_convert::runner::StepResult| -> Vec<f32> {
        let h = p.nets.hidden_size;
        let rows = &r.block_outputs[last];
        rows[rows.len() - 5 * h..].to_vec()
    };
    let cos = llm_convert::runner::verify::cosine(&new_rows(&reused), &new_rows(&fresh));
    assert!(
        cos > 0.999,
        "new tokens' last-block output, reused vs fresh: cosine {cos}"
    );
    let after_fresh: Vec<u32> = (0..3)
        .scan(fresh.token, |t, _| {
            let out = *t;
            *t = p.decode(out).unwrap().token;
            Some(out)
        })
        .collect();
    assert_eq!(after_reuse, after_fresh, "same continuation");
}

/// `chat --json` on a history-KV bmodel: one report per turn; the second turn reuses the KV
/// cache exactly when its prompt extends the cached tokens (else it prefills afresh).
#[test]
fn chat_json_on_history_kv_bmodel() {
    common::toolchain();
    let (bmodel, config) = convert("history_kv_chat", &["--use_history_kv"]);
    let config = tokenizer_config_dir(&config);
    let _sim = simulator();
    let o = run_chat(
        &bmodel,
        config.path(),
        &["--max-tokens", "2", "--json"],
        b"hello\nhow are you\n",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("keeps the conversation in its KV cache"),
        "{err}"
    );
    let turns: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(turns.len(), 2, "{turns:?}");
    assert_eq!(turns[0]["cached_prompt_tokens"], 0);
    // In the cache after turn 1: its prompt and every reply token but the last (never fed).
    let (p1, reply, p2) = (
        ids(&turns[0]["prompt_ids"]),
        ids(&turns[0]["tokens"]),
        ids(&turns[1]["prompt_ids"]),
    );
    let mut cached = p1.clone();
    cached.extend_from_slice(&reply[..reply.len() - 1]);
    // Turn 2 re-renders the conversation from text: the cache is reused exactly when that
    // re-tokenizes to the cached ids (this random model's reply may be bytes that do not).
    let want = if p2.len() > cached.len() && p2.starts_with(&cached) {
        cached.len()
    } else {
        0
    };
    println!(
        "turn 2: {} prompt tokens, {} from the cache",
        p2.len(),
        turns[1]["cached_prompt_tokens"]
    );
    assert_eq!(turns[1]["cached_prompt_tokens"].as_u64(), Some(want as u64));
}

// ---- chat --image / bench --image (issue 12) ----

/// The tiny Qwen2.5-VL converted as tests/vlm_convert.rs converts it (bf16, static, seq 256),
/// and a config folder whose tokenizer knows its vision tokens (ids 1000-1002) as special
/// tokens, with the ChatML template.
fn qwen25vl_chat() -> &'static (PathBuf, tempfile::TempDir) {
    static B: OnceLock<(PathBuf, tempfile::TempDir)> = OnceLock::new();
    B.get_or_init(|| vlm_chat_bmodel("qwen25vl", &[]))
}

/// The same with `--use_history_kv --chunk_length 128`: block_kv nets, and a MAX_INPUT_LENGTH
/// (128) that holds a two-turn conversation with the image in one block_i prefill, the
/// re-prefill the block_kv continuation is compared with.
fn qwen25vl_history_chat() -> &'static (PathBuf, tempfile::TempDir) {
    static B: OnceLock<(PathBuf, tempfile::TempDir)> = OnceLock::new();
    B.get_or_init(|| vlm_chat_bmodel("qwen25vl", &["--use_history_kv", "--chunk_length", "128"]))
}

/// The tiny Qwen2.5-VL with `--do_sample` (greedy_head and sample_head after lm_head).
fn qwen25vl_sample_chat() -> &'static (PathBuf, tempfile::TempDir) {
    static B: OnceLock<(PathBuf, tempfile::TempDir)> = OnceLock::new();
    B.get_or_init(|| vlm_chat_bmodel("qwen25vl", &["--do_sample"]))
}

/// The tiny Qwen2-VL (LayerNorm vit, full attention) with `--use_history_kv --chunk_length
/// 128`, as [`qwen25vl_history_chat`].
fn qwen2vl_history_chat() -> &'static (PathBuf, tempfile::TempDir) {
    static B: OnceLock<(PathBuf, tempfile::TempDir)> = OnceLock::new();
    B.get_or_init(|| vlm_chat_bmodel("qwen2vl", &["--use_history_kv", "--chunk_length", "128"]))
}

/// A tiny Qwen VL fixture at bf16, seq 256, `--max_pixels 140,224` and `extra`: the bmodel,
/// and its config folder with the vision tokens in the tokenizer.
fn vlm_chat_bmodel(fixture: &str, extra: &[&str]) -> (PathBuf, tempfile::TempDir) {
    let src = common::vlm::vlm_fixtures().join(fixture);
    let model = common::scratch().join(format!("chat-vlm-{fixture}"));
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        if src.join(f).exists() && !model.join(f).exists() {
            std::fs::copy(src.join(f), model.join(f)).unwrap();
        }
    }
    let mut flags = vec!["-q", "bf16", "--max_pixels", "140,224"];
    flags.extend_from_slice(extra);
    let c = common::converted(&model, 256, &flags);
    let dir = tokenizer_config_dir(&c.out.join("config"));
    let path = dir.path().join("tokenizer.json");
    let mut tok: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let special = [
        (1000, "<|vision_start|>"),
        (1001, "<|vision_end|>"),
        (1002, "<|image_pad|>"),
    ];
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    let taken: Vec<String> = vocab
        .iter()
        .filter(|(_, v)| special.iter().any(|(id, _)| v.as_u64() == Some(*id)))
        .map(|(k, _)| k.clone())
        .collect();
    for k in &taken {
        vocab.remove(k);
    }
    for (id, content) in special {
        vocab.insert(content.into(), json!(id));
    }
    let merges = tok["model"]["merges"].as_array_mut().unwrap();
    merges.retain(|m| !taken.contains(&m.as_str().unwrap().replace(' ', "")));
    for (id, content) in special {
        tok["added_tokens"].as_array_mut().unwrap().push(json!({
            "id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}));
    }
    std::fs::write(&path, tok.to_string()).unwrap();
    (c.bmodel.clone(), dir)
}

fn photo() -> PathBuf {
    common::vlm::vlm_fixtures().join("qwen25vl/photo.png")
}

/// `chat --image`, two turns: the second turn's prompt holds the image (its 35 tokens in the
/// first user turn) and its tokens are those of one `generate --image` over the whole
/// conversation written out by hand in ChatML, so the image stays in the conversation.
#[test]
fn chat_image_keeps_the_image_in_the_conversation() {
    common::toolchain();
    let (bmodel, config) = qwen25vl_chat();
    let _sim = simulator();
    let image = photo();
    let o = run_chat(
        bmodel,
        config.path(),
        &[
            "--image",
            image.to_str().unwrap(),
            "--max-tokens",
            "3",
            "--json",
        ],
        b"what is it\nand the colour\n",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("image: 35 tokens"), "{err}");
    let turns: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(turns.len(), 2, "{turns:?}");
    let p2 = ids(&turns[1]["prompt_ids"]);
    let image_at = p2.iter().position(|&t| t == 1002).unwrap();
    assert_eq!(p2.iter().filter(|&&t| t == 1002).count(), 35);
    assert_eq!((p2[image_at - 1], p2[image_at + 35]), (1000, 1001));
    let reply = turns[0]["text"].as_str().unwrap();
    let whole = format!(
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>what is it<|im_end|>\n\
         <|im_start|>assistant\n{reply}<|im_end|>\n<|im_start|>user\nand the colour<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    let photo = photo();
    let g = generate(
        bmodel,
        config.path(),
        &[
            "--no-template",
            "--prompt",
            &whole,
            "--image",
            photo.to_str().unwrap(),
            "--max-tokens",
            "3",
        ],
    );
    assert_eq!(ids(&g["prompt_ids"]), p2);
    assert_eq!(ids(&g["tokens"]), ids(&turns[1]["tokens"]));
}

/// `--use_history_kv` for an M-RoPE model (issue 12): block_kv_i takes the runtime's
/// inputs (vlm.md §1.2) in the runtime's dtypes: input_states `[1, MIL, H]` bf16,
/// position_ids `[3, MIL]` INT32 as block_i's, history_k/v `[1, S, KVH, D]` bf16, and gives
/// block_i's outputs; all dynamic.
#[test]
fn qwen25vl_history_kv_contract() {
    common::toolchain();
    let (bmodel, _) = qwen25vl_history_chat();
    let out = bmodel.parent().unwrap();
    let max = |dims: &[usize]| {
        let d: Vec<String> = dims.iter().map(|d| format!("max:{d}")).collect();
        format!("[{}]", d.join(", "))
    };
    // model_tool prints a dynamic net's input shapes as their maxima.
    let input =
        |name: &str, dims: &[usize], dtype: &str| format!("input: {name}, {}, {dtype}", max(dims));
    let output = |name: &str, dims: &[usize]| format!("output: {name}, {dims:?}, bfloat16");
    assert_eq!(
        common::net_io(out, "block_kv_0"),
        [
            input("input_states", &[1, 128, 128], "bfloat16"),
            input("position_ids", &[3, 128], "int32"),
            input("history_k", &[1, 256, 2, 32], "bfloat16"),
            input("history_v", &[1, 256, 2, 32], "bfloat16"),
            output("output_states", &[1, 128, 128]),
            output("k_cache", &[1, 128, 2, 32]),
            output("v_cache", &[1, 128, 2, 32]),
        ]
    );
    assert_eq!(
        common::net_io(out, "block_0")[1],
        input("position_ids", &[3, 128], "int32")
    );
    // Every layer's block_kv has that I/O.
    assert_eq!(
        common::net_io(out, "block_kv_1"),
        common::net_io(out, "block_kv_0")
    );
}

/// An image conversation on a `--use_history_kv` bmodel (issue 12): turn 2 (turn 1's prompt
/// with the image, its reply, new tokens) prefills only its new tokens, through block_kv at
/// the whole conversation's M-RoPE positions (the text after the image continues at its
/// largest position + 1, not at the history slot), and decodes on from there: the same
/// tokens and new rows as one block_i prefill of turn 2. At the slot positions (the text
/// models' rule) the continuation is different.
#[test]
fn image_conversation_continues_through_block_kv() {
    common::toolchain();
    let (bmodel, config) = qwen25vl_history_chat();
    image_conversation_through_block_kv(bmodel, config.path());
}

/// The same for Qwen2-VL (issue 12: its `--use_history_kv` was only dry-run tested).
#[test]
fn qwen2vl_image_conversation_continues_through_block_kv() {
    common::toolchain();
    let (bmodel, config) = qwen2vl_history_chat();
    image_conversation_through_block_kv(bmodel, config.path());
}

fn image_conversation_through_block_kv(bmodel: &Path, config: &Path) {
    let _sim = simulator();
    let rt = load(bmodel);
    let model = ModelConfig::from_file(&config.join("config.json")).unwrap();
    let turn1 = [3, 17, 1002, 42, 7];
    let image = image_prompt::prepare(&rt, &model, config, &photo(), &turn1).unwrap();
    assert_eq!(image.placement.tokens, 35);
    let mut p = Pipeline::new(&rt).unwrap();
    assert!(p.nets.history_kv());
    p.capture = true;
    p.set_extras(image.extras.clone());
    let reply = run(&mut p, &image.ids, 3, |_, _| {});
    assert!(
        reply.iter().all(|t| !(1000..=1002).contains(t)),
        "{reply:?}"
    );
    let mut turn2 = turn1.to_vec();
    turn2.extend_from_slice(&reply);
    turn2.extend_from_slice(&[5, 6, 7, 8, 9]);
    let (ids, extras) = image.place(&turn2).unwrap();
    let in_cache = image.ids.len() + 2;
    let continued = |p: &mut Pipeline, extras: PromptExtras| {
        p.set_extras(extras);
        let (first, cached) = p.prefill_reusing(&ids).unwrap();
        assert_eq!(cached, in_cache, "turn 1's prompt and the fed reply tokens");
        assert!(
            first.launches.iter().any(|(n, _)| n == "block_kv_0"),
            "the new tokens go through block_kv"
        );
        let rows = new_rows(p, &first, 6);
        let tokens = decode_on(p, first.token, 3);
        // Back to turn 1's end for the next continuation.
        p.clear().unwrap();
        (rows, tokens)
    };
    let (reused_rows, after_reuse) = continued(&mut p, extras.clone());

    // Slot positions instead (0..L on every row, as for text), from turn 1's end again.
    p.set_extras(image.extras.clone());
    run(&mut p, &image.ids, 3, |_, _| {});
    let slots = PromptExtras {
        positions: Some((0..ids.len() as i32).map(|i| [i; 3]).collect()),
        ..extras.clone()
    };
    let (slot_rows, after_slots) = continued(&mut p, slots);

    p.set_extras(extras);
    let fresh = p.prefill(&ids).unwrap();
    assert!(!fresh.launches.iter().any(|(n, _)| n == "block_kv_0"));
    let fresh_rows = new_rows(&p, &fresh, 6);
    let after_fresh = decode_on(&mut p, fresh.token, 3);
    let cos = llm_convert::runner::verify::cosine(&reused_rows, &fresh_rows);
    let cos_slots = llm_convert::runner::verify::cosine(&slot_rows, &fresh_rows);
    println!("turn 2 ({} tokens, {in_cache} cached): new rows' cosine {cos:.6} (slot positions {cos_slots:.6}); tokens {after_reuse:?}, fresh {after_fresh:?}, slots {after_slots:?}", ids.len());
    assert!(cos > 0.999, "reused vs fresh: cosine {cos}");
    assert_eq!(after_reuse, after_fresh, "same continuation");
    assert!(
        cos_slots < cos && after_slots != after_fresh,
        "slot positions: cosine {cos_slots}, tokens {after_slots:?}"
    );
}

/// The last block's output rows of a step's last `n` tokens.
fn new_rows(p: &Pipeline, r: &llm_convert::runner::StepResult, n: usize) -> Vec<f32> {
    let h = p.nets.hidden_size;
    let rows = &r.block_outputs[p.nets.layers() - 1];
    rows[rows.len() - n * h..].to_vec()
}

/// `first`, then `steps - 1` greedy decode steps from it.
fn decode_on(p: &mut Pipeline, first: u32, steps: usize) -> Vec<u32> {
    let mut out = vec![first];
    while out.len() < steps {
        let t = p.decode(*out.last().unwrap()).unwrap().token;
        out.push(t);
    }
    out
}

/// `chat --image` on a `--use_history_kv` bmodel: turn 2 prefills only its new tokens
/// through block_kv, and gives the token of one `generate --image` (a single block_i
/// prefill) over the whole conversation. One token per turn: a longer reply of this random
/// model re-tokenizes otherwise, and then turn 2 starts afresh by design.
#[test]
fn chat_image_on_history_kv_bmodel_continues_through_block_kv() {
    common::toolchain();
    let (bmodel, config) = qwen25vl_history_chat();
    let _sim = simulator();
    let image = photo();
    let o = run_chat(
        bmodel,
        config.path(),
        &[
            "--image",
            image.to_str().unwrap(),
            "--max-tokens",
            "1",
            "--json",
        ],
        b"what is it\nand the colour\n",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("keeps the conversation in its KV cache"),
        "{err}"
    );
    let turns: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(turns.len(), 2, "{turns:?}");
    let (p1, p2) = (ids(&turns[0]["prompt_ids"]), ids(&turns[1]["prompt_ids"]));
    assert_eq!(p2.iter().filter(|&&t| t == 1002).count(), 35);
    assert!(p2.starts_with(&p1), "{p2:?} vs {p1:?}");
    assert_eq!(turns[0]["cached_prompt_tokens"], 0);
    assert_eq!(
        turns[1]["cached_prompt_tokens"].as_u64(),
        Some(p1.len() as u64),
        "turn 2 continues the cache: {}",
        turns[1]
    );
    let text = turns[0]["text"].as_str().unwrap();
    let whole = format!(
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>what is it<|im_end|>\n\
         <|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>user\nand the colour<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    let g = generate(
        bmodel,
        config.path(),
        &[
            "--no-template",
            "--prompt",
            &whole,
            "--image",
            image.to_str().unwrap(),
            "--max-tokens",
            "1",
        ],
    );
    assert_eq!(ids(&g["prompt_ids"]), p2);
    assert_eq!(g["cached_prompt_tokens"], 0);
    assert_eq!(ids(&g["tokens"]), ids(&turns[1]["tokens"]));
}

/// `bench --image` times the vit apart from prefill (text and JSON); `--image` on a text-only
/// bmodel is a usage error (exit 2) that says why.
#[test]
fn bench_image_reports_the_vit_and_bad_image_uses_exit_2() {
    common::toolchain();
    let (bmodel, config) = qwen25vl_chat();
    let photo = photo();
    let bench = |bmodel: &Path, config: &Path, json: bool| {
        let mut args = vec![
            "bench",
            bmodel.to_str().unwrap(),
            "-m",
            config.to_str().unwrap(),
            "--image",
            photo.to_str().unwrap(),
            "--prompt-tokens",
            "4",
            "--decode-tokens",
            "2",
        ];
        if json {
            args.push("--json");
        }
        common::llm_convert(&args)
    };
    let _sim = simulator();
    let o = bench(bmodel, config.path(), true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["vit"]["total_s"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["vit"]["tiles"], 1, "{r}");
    assert_eq!(r["vit"]["image_tokens"], 35, "{r}");
    // The prefill holds the image (35 tokens in its frame) and the 4 text tokens.
    assert_eq!(r["prompt_tokens"], 4 + 37, "{r}");
    assert!(r["nets"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["net"] != "vit"));
    let text = bench(bmodel, config.path(), false);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("vit: ") && text.contains("per tile"),
        "{text}"
    );

    let (text_bmodel, text_config) = do_sample_bmodel();
    let text_config = tokenizer_config_dir(text_config);
    let text_config = text_config.path();
    let o = bench(text_bmodel, text_config, false);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--image needs a vision-language model"),
        "{err}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_llm-convert"))
        .args(["chat", text_bmodel.to_str().unwrap(), "-m"])
        .arg(text_config)
        .arg("--image")
        .arg(&photo)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--image needs a vision-language model"),
        "{err}"
    );
}

// ---- several images, sampling (issue 12) ----

/// The qwen25vl fixture's two-image case (expected.json `two_images`, transformers 5.6.2):
/// the prompt ids with each image's run expanded, and transformers' greedy tokens.
fn two_images_expected() -> (Vec<u32>, Vec<u32>) {
    let dir = common::vlm::vlm_fixtures().join("qwen25vl");
    let e: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    (
        ids(&e["two_images"]["prompt"]),
        ids(&e["two_images"]["tokens"]),
    )
}

fn photo2() -> PathBuf {
    common::vlm::vlm_fixtures().join("qwen25vl/photo2.png")
}

/// The lengths of the runs of the image token (1002) in `ids`, in order.
fn image_runs(ids: &[u32]) -> Vec<usize> {
    let mut runs = Vec::new();
    let mut prev = None;
    for &t in ids {
        if t == 1002 {
            if prev == Some(1002) {
                *runs.last_mut().unwrap() += 1;
            } else {
                runs.push(1);
            }
        }
        prev = Some(t);
    }
    runs
}

/// `generate --image A --image B` (issue 12): one vit call per image (our preprocessing gives
/// transformers' grids: the prompt ids equal its expanded prompt), each image's embeddings at
/// its own placeholder, M-RoPE positions over both (get_rope_index), and the tokens
/// transformers picks. Control: the images the other way round give other runs and tokens.
/// A placeholder count other than the --image count is exit 2.
#[test]
fn generate_two_images_gives_transformers_tokens() {
    common::toolchain();
    let (bmodel, config) = qwen25vl_chat();
    let _sim = simulator();
    let (prompt, want) = two_images_expected();
    let runs = image_runs(&prompt);
    assert!(runs.len() == 2 && runs[0] != runs[1], "{runs:?}");
    let steps = 4;
    let tokens = common::tokens_arg(&prompt);
    let (a, b) = (photo(), photo2());
    let run = |first: &Path, second: &Path| {
        let t0 = std::time::Instant::now();
        let g = generate(
            bmodel,
            config.path(),
            &[
                "--tokens",
                &tokens,
                "--image",
                first.to_str().unwrap(),
                "--image",
                second.to_str().unwrap(),
                "--max-tokens",
                &steps.to_string(),
            ],
        );
        println!("two-image generate: {:.1} s", t0.elapsed().as_secs_f64());
        g
    };
    let g = run(&a, &b);
    assert_eq!(
        ids(&g["prompt_ids"]),
        prompt,
        "transformers' expanded prompt"
    );
    let got = ids(&g["tokens"]);
    println!("tokens {got:?}, transformers {:?}", &want[..steps]);
    assert_eq!(got, want[..steps], "transformers' greedy tokens");

    let swapped = run(&b, &a);
    let swapped_ids = ids(&swapped["prompt_ids"]);
    assert_eq!(image_runs(&swapped_ids), [runs[1], runs[0]]);
    let other = ids(&swapped["tokens"]);
    println!("swapped: tokens {other:?}");
    assert_ne!(other, got, "swapping the two images changes nothing");

    // Two placeholders, one image: a usage error naming the counts.
    let o = common::llm_convert(&[
        "generate",
        bmodel.to_str().unwrap(),
        "-m",
        config.path().to_str().unwrap(),
        "--tokens",
        &tokens,
        "--image",
        a.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("2 image placeholder(s)") && err.contains("1 --image"),
        "{err}"
    );
    // An id outside the vocabulary (1024) is a usage error too.
    let o = common::llm_convert(&[
        "generate",
        bmodel.to_str().unwrap(),
        "-m",
        config.path().to_str().unwrap(),
        "--tokens",
        "3,5000",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("id 5000") && err.contains("config.json"),
        "{err}"
    );
}

/// `chat --image A --image B`: both images in the first user turn, in order, each expanded
/// to its own tokens; the prompt is the one `generate` builds from the same conversation.
#[test]
fn chat_takes_two_images() {
    common::toolchain();
    let (bmodel, config) = qwen25vl_chat();
    let _sim = simulator();
    let (a, b) = (photo(), photo2());
    let o = run_chat(
        bmodel,
        config.path(),
        &[
            "--image",
            a.to_str().unwrap(),
            "--image",
            b.to_str().unwrap(),
            "--max-tokens",
            "2",
            "--json",
        ],
        b"what are they\n<|image_pad|> and this\n",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("for 2 images"), "{err}");
    // The second line brings a placeholder of its own: that turn is skipped, the chat goes on.
    assert!(err.contains("3 image placeholder(s)"), "{err}");
    let turn: Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    let p = ids(&turn["prompt_ids"]);
    let (want_prompt, _) = two_images_expected();
    assert_eq!(image_runs(&p), image_runs(&want_prompt));
    let whole = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>\
                 <|vision_start|><|image_pad|><|vision_end|>what are they<|im_end|>\n\
                 <|im_start|>assistant\n";
    let g = generate(
        bmodel,
        config.path(),
        &[
            "--no-template",
            "--prompt",
            whole,
            "--image",
            a.to_str().unwrap(),
            "--image",
            b.to_str().unwrap(),
            "--max-tokens",
            "2",
        ],
    );
    assert_eq!(ids(&g["prompt_ids"]), p);
    assert_eq!(ids(&g["tokens"]), ids(&turn["tokens"]));
}

/// A VLM converted with `--do_sample` (issue 12): `generate --image` with top_k 1 through
/// sample_head gives the greedy tokens (and transformers'); temperature 5 over 50 candidates
/// does not (the sampling path is the one running).
#[test]
fn vlm_do_sample_top_k_1_is_greedy() {
    common::toolchain();
    let (bmodel, config) = qwen25vl_sample_chat();
    let _sim = simulator();
    let (prompt, want) = two_images_expected();
    let tokens = common::tokens_arg(&prompt);
    let (a, b) = (photo(), photo2());
    let steps = "4";
    let base = [
        "--tokens",
        &tokens,
        "--image",
        a.to_str().unwrap(),
        "--image",
        b.to_str().unwrap(),
        "--max-tokens",
        steps,
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        generate(bmodel, config.path(), &args)
    };
    let greedy = with(&[]);
    assert_eq!(greedy["sampling"], Value::Null);
    let top1 = with(&["--top-k", "1", "--temperature", "0.7", "--seed", "3"]);
    assert_eq!(top1["sampling"]["top_k"], 1, "{top1}");
    let hot = with(&["--top-k", "50", "--temperature", "5", "--seed", "3"]);
    let (g, t, h) = (
        ids(&greedy["tokens"]),
        ids(&top1["tokens"]),
        ids(&hot["tokens"]),
    );
    println!(
        "greedy {g:?}, top_k 1 {t:?}, temperature 5 {h:?}, transformers {:?}",
        &want[..4]
    );
    assert_eq!(t, g, "top_k 1 samples the greedy tokens");
    assert_eq!(g, want[..4], "transformers' tokens");
    assert_ne!(h, g, "temperature 5 over 50 candidates is not greedy");
}
