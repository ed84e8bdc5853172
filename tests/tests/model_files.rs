//! Model files: a tiny random qwen2 model written as GGUF loads and runs, the same weights as an
//! HF safetensors checkpoint give the same logits, and broken files give clear errors.

use creme_core::generate::{generate, GenerateOptions};
use creme_core::hooks::Hooks;
use creme_core::model::gguf_write::{write_gguf, TensorOut};
use creme_core::model::{GgmlType, Logits, Model};
use creme_core::Backend;
use creme_tests::tiny::{
    bytemuck_f32, metadata, tiny_gguf, tiny_tensors, tiny_weights, D, FF, HEADS, KV, LAYERS,
};
use creme_tests::{device_on, BACKENDS};

fn logits(model: &Model, dev: &creme_core::Device, ids: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache(dev, vec![0], ids.len()).unwrap();
    let out = model
        .forward(
            dev,
            &mut cache,
            &[ids.to_vec()],
            &Hooks::default(),
            Logits::All,
        )
        .unwrap();
    pollster::block_on(dev.read(out.logits.as_ref().unwrap(), ids.len() * model.cfg.vocab)).unwrap()
}

fn tiny_gguf_loads_tokenizes_and_generates_on(backend: &str) {
    let dev = device_on(backend);
    let model = Model::from_gguf_bytes(&dev, &tiny_gguf(), 256).unwrap();
    assert_eq!(model.cfg.n_layers, LAYERS);
    assert_eq!(model.cfg.eos_ids, vec![256]);
    let ids = model.tokenizer.encode("def f(x):\n    return x").unwrap();
    assert_eq!(ids.len(), "def f(x):\n    return x".len()); // bytes only, no merges apply
    assert_eq!(
        model.tokenizer.decode(&ids).unwrap(),
        "def f(x):\n    return x"
    );
    let opts = GenerateOptions {
        max_new_tokens: 8,
        ..Default::default()
    };
    let out = pollster::block_on(generate(
        &dev,
        &model,
        &[ids.clone()],
        &opts,
        &mut |_, _| {},
    ))
    .unwrap();
    assert!(!out[0].tokens.is_empty() || out[0].finish == creme_core::generate::Finish::Eos);
    // Greedy decoding with the KV cache equals re-running the whole sequence each step.
    let all = logits(&model, &dev, &ids);
    let v = model.cfg.vocab;
    let last = &all[(ids.len() - 1) * v..];
    let argmax = last
        .iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0 as u32;
    if out[0].finish != creme_core::generate::Finish::Eos {
        assert_eq!(out[0].tokens[0], argmax);
    }
}

#[test]
fn tiny_gguf_loads_tokenizes_and_generates() {
    for backend in BACKENDS {
        tiny_gguf_loads_tokenizes_and_generates_on(backend);
    }
}

fn batched_left_padded_generation_equals_one_at_a_time_on(backend: &str) {
    let dev = device_on(backend);
    let model = Model::from_gguf_bytes(&dev, &tiny_gguf(), 256).unwrap();
    let prompts: Vec<Vec<u32>> = ["x = 1", "def add(a, b):\n    return", "import os"]
        .iter()
        .map(|p| model.tokenizer.encode(p).unwrap())
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    let batched =
        pollster::block_on(generate(&dev, &model, &prompts, &opts, &mut |_, _| {})).unwrap();
    for (p, b) in prompts.iter().zip(&batched) {
        let single =
            pollster::block_on(generate(&dev, &model, &[p.clone()], &opts, &mut |_, _| {}))
                .unwrap();
        assert_eq!(single[0].tokens, b.tokens, "prompt {p:?}");
    }
}

#[test]
fn batched_left_padded_generation_equals_one_at_a_time() {
    for backend in BACKENDS {
        batched_left_padded_generation_equals_one_at_a_time_on(backend);
    }
}

fn safetensors_checkpoint_gives_the_same_logits_as_gguf_on(backend: &str) {
    let dev = device_on(backend);
    let from_gguf = Model::from_gguf_bytes(&dev, &tiny_gguf(), 256).unwrap();
    let weights = tiny_weights();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = weights
        .iter()
        .map(|(hf, _, shape, v)| (hf.clone(), shape.clone(), bytemuck_f32(v)))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let st = safetensors::serialize(views, None).unwrap();
    let config = serde_json::json!({
        "model_type": "qwen2", "num_hidden_layers": LAYERS, "hidden_size": D, "intermediate_size": FF,
        "num_attention_heads": HEADS, "num_key_value_heads": KV, "vocab_size": 257, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6, "eos_token_id": 256, "max_position_embeddings": 256
    });
    let tok_json = from_gguf.tokenizer.to_json().unwrap();
    let from_st = Model::from_safetensors(
        &dev,
        config.to_string().as_bytes(),
        tok_json.as_bytes(),
        &[&st],
        256,
    )
    .unwrap();
    let ids = from_gguf.tokenizer.encode("for i in range(10):").unwrap();
    assert_eq!(
        from_st.tokenizer.encode("for i in range(10):").unwrap(),
        ids
    );
    assert_eq!(logits(&from_gguf, &dev, &ids), logits(&from_st, &dev, &ids));
}

#[test]
fn safetensors_checkpoint_gives_the_same_logits_as_gguf() {
    for backend in BACKENDS {
        safetensors_checkpoint_gives_the_same_logits_as_gguf_on(backend);
    }
}

fn load_err(bytes: &[u8]) -> String {
    // Files are checked before anything reaches a backend: the CPU one is enough here.
    let dev = device_on("cpu");
    match Model::from_gguf_bytes(&dev, bytes, 256) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_model_files_give_clear_errors() {
    let good = tiny_gguf();
    let e = load_err(b"PK\x03\x04 this is a zip");
    assert!(e.contains("not a GGUF file"), "{e}");
    let e = load_err(&good[..good.len() / 2]);
    assert!(e.contains("truncated") && e.contains("tensor '"), "{e}");
    let e = load_err(&good[..40]);
    assert!(e.contains("truncated") && e.contains("GGUF header"), "{e}");
    let mut v3 = good.clone();
    v3[4] = 9;
    assert!(load_err(&v3).contains("unsupported GGUF version 9"));

    // A tensor of a type this reader does not know (Q2_K).
    let mut tensors: Vec<TensorOut> = vec![TensorOut {
        name: "blk.0.ffn_down.weight".into(),
        dims: vec![256, 2],
        dtype: GgmlType::Q4K,
        data: vec![0; 288],
    }];
    let mut bytes = write_gguf(&metadata("qwen2"), &tensors);
    let pos = bytes
        .windows(21)
        .position(|w| w == b"blk.0.ffn_down.weight")
        .unwrap()
        + 21
        + 4
        + 16;
    bytes[pos..pos + 4].copy_from_slice(&10u32.to_le_bytes());
    let e = load_err(&bytes);
    assert!(
        e.contains("Q2_K") && e.contains("blk.0.ffn_down.weight"),
        "{e}"
    );

    // A complete file that lacks a tensor the architecture needs.
    tensors[0].dtype = GgmlType::Q4K;
    let all: Vec<TensorOut> = tiny_weights()
        .into_iter()
        .filter(|(_, gg, ..)| gg != "blk.1.ffn_up.weight")
        .map(|(_, gg, shape, v)| TensorOut {
            name: gg,
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            dtype: GgmlType::F32,
            data: bytemuck_f32(&v),
        })
        .collect();
    let e = load_err(&write_gguf(&metadata("qwen2"), &all));
    assert!(
        e.contains("missing") && e.contains("blk.1.ffn_up.weight"),
        "{e}"
    );

    // An architecture this runtime does not implement.
    let e = load_err(&write_gguf(&metadata("mamba"), &[]));
    assert!(e.contains("unsupported architecture 'mamba'"), "{e}");
}

fn prompt_longer_than_the_context_is_an_error_on(backend: &str) {
    let dev = device_on(backend);
    let model = Model::from_gguf_bytes(&dev, &tiny_gguf(), 64).unwrap();
    let ids = vec![65u32; 60];
    let opts = GenerateOptions {
        max_new_tokens: 10,
        ..Default::default()
    };
    let e = pollster::block_on(generate(&dev, &model, &[ids], &opts, &mut |_, _| {}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("over the context of 64"), "{e}");
    let e = pollster::block_on(generate(&dev, &model, &[vec![]], &opts, &mut |_, _| {}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn prompt_longer_than_the_context_is_an_error() {
    for backend in BACKENDS {
        prompt_longer_than_the_context_is_an_error_on(backend);
    }
}

/// Model files are read header first (`creme` reads them so): what is no regular file is refused
/// before it is opened, and a file that is no GGUF or is shorter than its header or tensor table
/// before it is read whole; a good one, with a header longer than the first read, reads as it is.
#[test]
fn model_files_are_read_header_first() {
    use creme_core::model::gguf::{read_gguf_file, Value};
    use std::io::ErrorKind;
    let dir = std::env::temp_dir().join(format!("creme-model-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let err = |path: &std::path::Path, kind: ErrorKind, want: &str| {
        let e = read_gguf_file(path).expect_err(want);
        assert!(
            e.kind() == kind && e.to_string().contains(want),
            "{}: {e:?}",
            path.display()
        );
    };
    // A header of 3 MB: more than the first read.
    let mut meta = metadata("qwen2");
    meta.push((
        "test.padding".into(),
        Value::Array(vec![7u8; 3 << 20].into()),
    ));
    let tensors: Vec<TensorOut> = tiny_tensors();
    let model = write_gguf(&meta, &tensors);
    let path = dir.join("model.gguf");
    std::fs::write(&path, &model).unwrap();
    assert!(read_gguf_file(&path).unwrap() == model);
    for (cut, want) in [(2 << 20, "GGUF header"), (model.len() - 100, "tensor '")] {
        std::fs::write(&path, &model[..cut]).unwrap();
        err(&path, ErrorKind::InvalidData, want);
    }
    std::fs::write(&path, b"PK\x03\x04 a zip, not a model".repeat(100_000)).unwrap();
    err(&path, ErrorKind::InvalidData, "not a GGUF file");
    let fifo = dir.join("fifo.gguf");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    err(
        &fifo,
        ErrorKind::InvalidInput,
        "not a regular file but a FIFO",
    );
    let zero = std::path::Path::new("/dev/zero");
    err(
        zero,
        ErrorKind::InvalidInput,
        "not a regular file but a device",
    );
    err(
        &dir,
        ErrorKind::InvalidInput,
        "not a regular file but a directory",
    );
    err(&dir.join("absent.gguf"), ErrorKind::NotFound, "");
    let _ = std::fs::remove_dir_all(&dir);
}
