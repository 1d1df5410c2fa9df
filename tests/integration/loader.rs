//! Checkpoint loading: sharded indexes, dtype conversion, and errors that name what is wrong.

use std::collections::BTreeMap;

use crate::common::{copy_fixture, fixture, max_abs_diff};
use fomaml::model::{load_weights, ModelConfig, ModelError};
use fomaml::tensor_io::{read_safetensors, write_safetensors};
use tch::{Device, Kind, Tensor};

fn load(dir: &std::path::Path) -> Result<fomaml::model::Weights, ModelError> {
    let cfg = ModelConfig::from_dir(dir)?;
    load_weights(dir, &cfg, Kind::Float, Device::Cpu)
}

fn rewrite(dir: &std::path::Path, tensors: &[(String, Tensor)]) {
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_safetensors(&dir.join("model.safetensors"), &refs, None).unwrap();
}

#[test]
fn a_sharded_checkpoint_loads_the_same_tensors_as_a_single_file() {
    let single = load(&fixture("qwen2")).unwrap();
    let dir = copy_fixture("qwen2");
    let tensors = read_safetensors(&dir.path().join("model.safetensors")).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let mut weight_map = BTreeMap::new();
    let half = tensors.len() / 2;
    for (shard, chunk) in [&tensors[..half], &tensors[half..]].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", shard + 1);
        let refs: Vec<(&str, &Tensor)> = chunk.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_safetensors(&dir.path().join(&file), &refs, None).unwrap();
        for (name, _) in chunk {
            weight_map.insert(name.clone(), file.clone());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();

    let sharded = load(dir.path()).unwrap();
    assert_eq!(sharded.names(), single.names());
    for (name, t) in single.iter() {
        assert_eq!(max_abs_diff(t, &sharded.get(name).unwrap()), 0.0, "{name}");
    }
}

#[test]
fn a_bf16_checkpoint_is_converted_on_load() {
    let dir = copy_fixture("llama");
    let tensors = read_safetensors(&dir.path().join("model.safetensors")).unwrap();
    let bf16: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t.to_kind(Kind::BFloat16))).collect();
    rewrite(dir.path(), &bf16);
    let weights = load(dir.path()).unwrap();
    for (name, t) in &bf16 {
        let loaded = weights.get(name).unwrap();
        assert_eq!(loaded.kind(), Kind::Float);
        assert_eq!(max_abs_diff(&loaded, &t.to_kind(Kind::Float)), 0.0, "{name}");
    }
}

#[test]
fn missing_unexpected_and_misshaped_tensors_are_reported_together() {
    let dir = copy_fixture("llama");
    let mut tensors = read_safetensors(&dir.path().join("model.safetensors")).unwrap();
    tensors.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight");
    tensors.push(("model.layers.7.mlp.extra.weight".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu))));
    for (name, t) in tensors.iter_mut() {
        if name == "model.norm.weight" {
            *t = Tensor::zeros([63], (Kind::Float, Device::Cpu));
        }
    }
    // Buffers older checkpoints carry are not parameters and are ignored.
    tensors
        .push(("model.layers.0.self_attn.rotary_emb.inv_freq".into(), Tensor::zeros([8], (Kind::Float, Device::Cpu))));
    rewrite(dir.path(), &tensors);

    let err = load(dir.path()).unwrap_err();
    let ModelError::Mismatch(m) = &err else { panic!("expected a mismatch, got {err}") };
    assert_eq!(m.missing, ["model.layers.1.mlp.up_proj.weight"]);
    assert_eq!(m.unexpected, ["model.layers.7.mlp.extra.weight"]);
    assert_eq!(m.misshaped, [("model.norm.weight".to_string(), vec![64], vec![63])]);
    let text = err.to_string();
    assert!(
        text.contains("1 missing") && text.contains("1 unexpected") && text.contains("expected [64], found [63]"),
        "{text}"
    );
}

#[test]
fn a_truncated_file_names_the_file() {
    let dir = copy_fixture("qwen3");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::BadSafetensors { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors is truncated"), "{err}");
}

#[test]
fn an_index_naming_an_absent_shard_is_an_error() {
    let dir = copy_fixture("qwen3");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let index = r#"{"weight_map": {"model.norm.weight": "model-00001-of-00009.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    let err = load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("model-00001-of-00009.safetensors") && err.contains("does not exist"), "{err}");
}

#[test]
fn a_directory_without_weights_says_so_and_refuses_pickle() {
    let dir = copy_fixture("qwen3");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not loaded").unwrap();
    let err = load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("no model.safetensors") && err.contains("pickle"), "{err}");
}
