//! A build split across machines: `plan --shards 3` assigns every piece a shard, three
//! `--shard I/3` runs (separate processes, separate caches) compile only their pieces, a
//! `combine` refuses a cache that lacks some and, on the merged caches, writes the same bmodel
//! as one unsharded run — on the real TPU-MLIR.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

const FIXTURE: &str = "qwen2_bf16";
const FLAGS: [&str; 2] = ["-q", "bf16"];

/// `llm-convert <pre> -m FIXTURE -s 64 FLAGS -o OUT --cache-dir CACHE <post>`.
fn run(pre: &[&str], out: &Path, cache: &Path, post: &[&str]) -> std::process::Output {
    let model = common::fixtures().join(FIXTURE);
    let mut args: Vec<&str> = pre.to_vec();
    args.extend(["-m", model.to_str().unwrap(), "-s", "64"]);
    args.extend(FLAGS);
    args.extend([
        "-o",
        out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    args.extend(post);
    common::llm_convert(&args)
}

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn three_shards_combine_to_the_unsharded_bmodel() {
    common::toolchain();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The plan: every piece once, with its key and one of three shards, each shard non-empty.
    let plan: Value = serde_json::from_str(&ok(&run(
        &["plan"],
        &d.join("plan"),
        &d.join("plan-cache"),
        &["--shards", "3", "--json"],
    )))
    .unwrap();
    let pieces = plan["pieces"].as_array().unwrap();
    let shard_of = |s: &str| -> BTreeSet<String> {
        pieces
            .iter()
            .filter(|p| p["shard"] == s)
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    for s in ["1/3", "2/3", "3/3"] {
        assert!(!shard_of(s).is_empty(), "shard {s} is empty: {plan}");
    }
    assert!(pieces.iter().all(|p| p["cached"] == false));
    assert!(!d.join("plan").exists(), "plan leaves no output folder");

    // Three shards, each into its own cache: each compiles exactly its pieces.
    for i in 1..=3 {
        let cache = d.join(format!("cache{i}"));
        let out = ok(&run(
            &[],
            &d.join(format!("out{i}")),
            &cache,
            &["--shard", &format!("{i}/3")],
        ));
        let want = shard_of(&format!("{i}/3"));
        assert!(
            out.contains(&format!("shard {i}/3: {} of", want.len())),
            "{out}"
        );
        assert_eq!(
            common::count_files(&cache, "bmodel"),
            want.len(),
            "shard {i}"
        );
        assert!(
            !d.join(format!("out{i}")).read_dir().unwrap().any(|e| e
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "bmodel")),
            "a shard writes no bmodel"
        );
    }

    // One shard's cache is not enough: exit 2, naming what is missing.
    let partial = run(&["combine"], &d.join("partial"), &d.join("cache1"), &[]);
    assert_eq!(partial.status.code(), Some(2));
    let err = String::from_utf8_lossy(&partial.stderr);
    for name in shard_of("2/3").iter().chain(&shard_of("3/3")) {
        assert!(err.contains(name.as_str()), "{name} not named in: {err}");
    }
    assert!(err.contains("--shard"), "{err}");

    // The merged caches combine, compiling nothing, into the unsharded build's bmodel.
    let merged = d.join("merged");
    for i in 1..=3 {
        copy_tree(&d.join(format!("cache{i}")), &merged);
    }
    let combined: Value = serde_json::from_str(&ok(&run(
        &["combine"],
        &d.join("combined"),
        &merged,
        &["--json"],
    )))
    .unwrap();
    let records = combined["pieces"].as_array().unwrap();
    assert!(records.iter().all(|p| p["cached"] == true));
    let plan_keys: BTreeSet<&str> = pieces.iter().map(|p| p["key"].as_str().unwrap()).collect();
    let used_keys: BTreeSet<&str> = records
        .iter()
        .map(|p| p["cache_key"].as_str().unwrap())
        .collect();
    assert!(used_keys.is_subset(&plan_keys) && used_keys.len() == plan_keys.len());
    let unsharded = common::converted(&common::fixtures().join(FIXTURE), 64, &FLAGS);
    assert_eq!(
        combined["bmodel_sha256_without_create_time"],
        unsharded.manifest["bmodel_sha256_without_create_time"],
        "the sharded build differs from the unsharded one"
    );
}

/// Bad shard specs and flag mixes are refused before anything runs.
#[test]
fn bad_shard_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for spec in ["0/3", "4/3", "x"] {
        let o = run(&[], &d.join("o"), &d.join("c"), &["--shard", spec]);
        assert_eq!(o.status.code(), Some(2), "--shard {spec}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("I/N"), "{err}");
    }
    let o = run(
        &["combine"],
        &d.join("o"),
        &d.join("c"),
        &["--shard", "1/2"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--shard cannot be combined"));
}
