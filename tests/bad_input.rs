//! Broken input gets a precise error naming the file, exit code 2, and never a panic.

mod common;

use std::path::Path;

use common::{copy_model, llm_convert};

/// Runs `reference` on `model` and returns (exit code, stderr).
fn reference(model: &Path) -> (i32, String) {
    let out = llm_convert(&[
        "reference",
        "-m",
        model.to_str().unwrap(),
        "--tokens",
        "1,2,3",
        "--steps",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !stderr.contains("panicked"),
        "panic instead of an error: {stderr}"
    );
    (out.status.code().unwrap_or(-1), stderr)
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

#[test]
fn intact_fixture_runs() {
    let dir = copy_model("qwen2");
    let (code, err) = reference(dir.path());
    assert_eq!(code, 0, "{err}");
}

#[test]
fn truncated_safetensors() {
    let dir = copy_model("qwen2");
    let st = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&st)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (code, err) = reference(dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&st.display().to_string()) && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn header_offsets_beyond_file() {
    // Keep the header, drop the data: every offset points past the end.
    let dir = copy_model("llama_tied");
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    std::fs::write(&st, &bytes[..8 + n]).unwrap();
    let (code, err) = reference(dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("model.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
}

#[test]
fn missing_config_key() {
    let dir = copy_model("llama_tied");
    edit_config(dir.path(), |v| {
        v.as_object_mut().unwrap().remove("num_hidden_layers");
    });
    let (code, err) = reference(dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("config.json") && err.contains("num_hidden_layers") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn unknown_model_type_lists_supported() {
    let dir = copy_model("llama_tied");
    edit_config(dir.path(), |v| v["model_type"] = "mamba".into());
    let (code, err) = reference(dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("mamba") && err.contains("llama, qwen2, qwen3, minicpm"),
        "{err}"
    );
}

#[test]
fn tensor_shape_does_not_match_config() {
    let dir = copy_model("qwen3");
    edit_config(dir.path(), |v| v["intermediate_size"] = 192.into());
    let (code, err) = reference(dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("mlp.gate_proj.weight")
            && err.contains("[256, 128]")
            && err.contains("[192, 128]"),
        "{err}"
    );
}

#[test]
fn missing_tensor() {
    // The checkpoint ties embeddings; claiming it does not makes lm_head.weight required.
    let dir = copy_model("llama_tied");
    edit_config(dir.path(), |v| v["tie_word_embeddings"] = false.into());
    let (code, err) = reference(dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("\"lm_head.weight\" is missing"), "{err}");
}

#[test]
fn unsupported_dtype() {
    let dir = copy_model("llama_tied");
    let data = vec![0u8; 8 * 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![4], &data).unwrap();
    let extra = dir.path().join("extra.safetensors");
    safetensors::serialize_to_file([("model.extra", view)], None, &extra).unwrap();
    let (code, err) = reference(dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("extra.safetensors") && err.contains("unsupported dtype"),
        "{err}"
    );
}

#[test]
fn weight_stored_as_int32() {
    // A lying file: a float weight stored as I32 (the dtype of packed quantized tensors).
    let dir = copy_model("llama_tied");
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let name = "model.norm.weight";
    let n: usize = file.tensor(name).unwrap().shape().iter().product();
    let ints = vec![0u8; n * 4];
    let views: Vec<(String, safetensors::tensor::TensorView)> = file
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let v = if k == name {
                let dt = safetensors::Dtype::I32;
                safetensors::tensor::TensorView::new(dt, vec![n], &ints).unwrap()
            } else {
                v
            };
            (k, v)
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(&st, out).unwrap();
    let (code, err) = reference(dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("model.safetensors") && err.contains(name) && err.contains("int32"),
        "{err}"
    );
}

#[test]
fn no_weights_in_folder() {
    let dir = copy_model("llama_tied");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let (code, err) = reference(dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no *.safetensors"), "{err}");
}

#[test]
fn model_path_does_not_exist() {
    let (code, err) = reference(Path::new("/nonexistent/model"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/model"), "{err}");
}

#[test]
fn truncated_gguf() {
    let src = common::smollm2_gguf();
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("cut.gguf");
    let bytes = std::fs::read(&src).unwrap();
    std::fs::write(&gguf, &bytes[..bytes.len() / 2]).unwrap();
    let (code, err) = reference(&gguf);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cut.gguf") && err.contains("truncated"),
        "{err}"
    );
}
