//! Sharded safetensors checkpoints (model.safetensors.index.json) load like single files.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use llm_convert::model::Model;
use llm_convert::reference::Reference;

/// Rewrites `dir/model.safetensors` as two shards plus an index, like the Hub's big models.
fn shard(dir: &Path) {
    let single = dir.join("model.safetensors");
    let bytes = std::fs::read(&single).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut weight_map = BTreeMap::new();
    for (i, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.clone());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::remove_file(single).unwrap();
}

#[test]
fn sharded_checkpoint_gives_identical_logits() {
    let whole = Model::open(&common::fixtures().join("qwen2")).unwrap();
    let dir = common::copy_model("qwen2");
    shard(dir.path());
    let sharded = Model::open(dir.path()).unwrap();
    assert_eq!(sharded.weights.describe(), "2 safetensors shards");
    let prompt = [5, 6, 7, 8];
    let a = Reference::new(&whole)
        .unwrap()
        .prefill(&prompt)
        .unwrap()
        .logits;
    let b = Reference::new(&sharded)
        .unwrap()
        .prefill(&prompt)
        .unwrap()
        .logits;
    assert_eq!(a, b);
}

#[test]
fn missing_shard_is_named() {
    let dir = common::copy_model("qwen2");
    shard(dir.path());
    let gone = dir.path().join("model-00002-of-00002.safetensors");
    std::fs::remove_file(&gone).unwrap();
    let out = common::llm_convert(&[
        "reference",
        "-m",
        dir.path().to_str().unwrap(),
        "--tokens",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("model-00002-of-00002.safetensors") && err.contains("index.json"),
        "{err}"
    );
}
