//! `export_hf`: a GGUF model with CREME patches, written as an HF checkpoint (f32 safetensors +
//! config.json + tokenizer.json), computes the same logits as the patched GGUF model — for qwen2
//! and for llama, whose GGUF Q/K rows are permuted for the interleaved rotary embedding.

use creme_core::cpu::SplitMix64;
use creme_core::edit::EditPatch;
use creme_core::hooks::Hooks;
use creme_core::model::safetensors::export_hf;
use creme_core::model::{Logits, Model};
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
