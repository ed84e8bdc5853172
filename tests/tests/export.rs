//! `export_hf`: a GGUF model with CREME patches, written as an HF checkpoint (f32 safetensors +
//! config.json + tokenizer.json), computes the same logits as the patched GGUF model — for qwen2
//! and for llama, whose GGUF Q/K rows are permuted for the interleaved rotary embedding.
//! `export_gguf` likewise, as a GGUF; and patches stack only in the order they were made.

use creme_core::cpu::SplitMix64;
use creme_core::edit::EditPatch;
use creme_core::hooks::Hooks;
use creme_core::model::gguf_write::export_gguf;
use creme_core::model::safetensors::export_hf;
use creme_core::model::{DownState, Logits, Model};
use creme_core::patch::{check_stack, MADE_ON};
use creme_core::Backend;
use creme_tests::tiny::{tiny_gguf_arch, D, FF};
use creme_tests::{device_on, BACKENDS};

fn last_logits(m: &Model, dev: &creme_core::Device, ids: &[u32]) -> Vec<f32> {
    let mut cache = m.new_cache(dev, vec![0], ids.len()).unwrap();
    let out = m
        .forward(
            dev,
            &mut cache,
            &[ids.to_vec()],
            &Hooks::default(),
            Logits::Last,
        )
        .unwrap();
    pollster::block_on(dev.read(out.logits.as_ref().unwrap(), m.cfg.vocab)).unwrap()
}

fn exported_checkpoints_compute_what_the_patched_gguf_computes_on(backend: &str) {
    let dev = device_on(backend);
    let mut rng = SplitMix64(3);
    let patch = EditPatch {
        layer: 1,
        rows: D,
        cols: FF,
        w: (0..D * FF).map(|_| rng.next_f32() * 0.2 - 0.1).collect(),
        metadata: Default::default(),
    };
    for arch in ["qwen2", "llama"] {
        let file = tiny_gguf_arch(arch);
        let mut from_gguf = Model::from_gguf_bytes(&dev, &file, 64).unwrap();
        patch.apply(&dev, &mut from_gguf).unwrap();
        let (st, config, tokenizer) = export_hf(&file, std::slice::from_ref(&patch)).unwrap();
        let from_hf =
            Model::from_safetensors(&dev, config.as_bytes(), tokenizer.as_bytes(), &[&st], 64)
                .unwrap();
        let ids = from_gguf
            .tokenizer
            .encode("def f(x): return x * 2")
            .unwrap();
        assert_eq!(
            from_hf.tokenizer.encode("def f(x): return x * 2").unwrap(),
            ids,
            "{arch}"
        );
        let (a, b) = (
            last_logits(&from_gguf, &dev, &ids),
            last_logits(&from_hf, &dev, &ids),
        );
        let err = creme_core::cpu::max_rel_err(&b, &a);
        assert!(
            err < 1e-4,
            "{arch}: exported logits differ (max rel err {err:.2e})"
        );
        // And the patch really is in it: the unpatched model differs.
        let plain = Model::from_gguf_bytes(&dev, &file, 64).unwrap();
        assert!(
            creme_core::cpu::max_rel_err(&last_logits(&plain, &dev, &ids), &a) > 1e-3,
            "{arch}: the patch changed nothing"
        );
        let cfg: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(cfg["model_type"], arch);
    }
}

#[test]
fn exported_checkpoints_compute_what_the_patched_gguf_computes() {
    for backend in BACKENDS {
        exported_checkpoints_compute_what_the_patched_gguf_computes_on(backend);
    }
}

/// A random patch of `layer` made on `on` (a W_down state).
fn patch_on(seed: u64, layer: usize, on: &DownState) -> EditPatch {
    let mut rng = SplitMix64(seed);
    EditPatch {
        layer,
        rows: D,
        cols: FF,
        w: (0..D * FF).map(|_| rng.next_f32() * 0.2 - 0.1).collect(),
        metadata: [(MADE_ON.to_string(), on.to_string())].into(),
    }
}

#[test]
fn patches_stack_in_the_order_they_were_made_and_revert_one_at_a_time() {
    let dev = device_on("cpu");
    let file = tiny_gguf_arch("qwen2");
    let mut m = Model::from_gguf_bytes(&dev, &file, 64).unwrap();
    let first = patch_on(1, 1, &DownState::File);
    let second = patch_on(2, 1, &DownState::of_edit(&first.w));
    let rival = patch_on(3, 1, &DownState::File);
    let ids = m.tokenizer.encode("def f(x): return x * 2").unwrap();
    let plain = last_logits(&m, &dev, &ids);
    first.apply(&dev, &mut m).unwrap();
    let after_first = last_logits(&m, &dev, &ids);
    // A patch made on the file's weights does not go onto another edit of its layer.
    let err = rival.apply(&dev, &mut m).unwrap_err().to_string();
    assert!(err.contains("order they were made"), "{err}");
    second.apply(&dev, &mut m).unwrap();
    assert_eq!(m.ffn_down_state(1), Some(&DownState::of_edit(&second.w)));
    // Reverting the second brings the first back, then the file's weights.
    creme_core::patch::revert(&mut m, &second);
    assert_eq!(last_logits(&m, &dev, &ids), after_first);
    creme_core::patch::revert(&mut m, &first);
    assert_eq!(last_logits(&m, &dev, &ids), plain);
    assert!(m.edited_layers().is_empty());
    // The same rules for files: exports refuse a stack the model would refuse.
    assert!(check_stack(&[first.clone(), second.clone()]).is_ok());
    assert!(check_stack(&[second.clone()]).is_err());
    assert!(check_stack(&[first.clone(), rival.clone()]).is_err());
    assert!(export_gguf(&file, &[first, rival]).is_err());
}

#[test]
fn an_exported_gguf_computes_what_the_patched_model_computes() {
    let dev = device_on("cpu");
    for arch in ["qwen2", "llama"] {
        let file = tiny_gguf_arch(arch);
        let first = patch_on(4, 1, &DownState::File);
        let second = patch_on(5, 1, &DownState::of_edit(&first.w));
        let other = patch_on(6, 0, &DownState::File);
        let patches = [first, other, second];
        let mut patched = Model::from_gguf_bytes(&dev, &file, 64).unwrap();
        for p in &patches {
            p.apply(&dev, &mut patched).unwrap();
        }
        let exported = export_gguf(&file, &patches).unwrap();
        let loaded = Model::from_gguf_bytes(&dev, &exported, 64).unwrap();
        let ids = patched.tokenizer.encode("def f(x): return x * 2").unwrap();
        // The patched layers' weights are the patches' exactly (F32), so the logits are equal.
        assert_eq!(
            last_logits(&loaded, &dev, &ids),
            last_logits(&patched, &dev, &ids),
            "{arch}"
        );
        let plain = Model::from_gguf_bytes(&dev, &file, 64).unwrap();
        assert_ne!(
            last_logits(&plain, &dev, &ids),
            last_logits(&loaded, &dev, &ids)
        );
        let h = creme_core::model::GgufHeader::parse(&exported).unwrap();
        let down = h
            .tensors
            .iter()
            .find(|t| t.name == "blk.1.ffn_down.weight")
            .unwrap();
        assert_eq!(down.dtype, creme_core::model::GgmlType::F32);
        assert!(h.metadata.contains_key("creme.patches"));
    }
}
