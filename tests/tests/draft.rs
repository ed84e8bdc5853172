//! Draft-verified generation equals plain greedy generation, token for token, on the CPU backend
//! and on wgpu's batch-invariant kernels (lavapipe):
//! drafts from the unedited model, from the edited model itself, and arbitrary tokens, on the tiny
//! models and on real prompts with a real model.

use creme_core::cpu::SplitMix64;
use creme_core::draft::{generate_from_drafts, Draft, Resume};
use creme_core::generate::{generate, humaneval_stops, GenerateOptions};
use creme_core::model::Model;
use creme_core::{Backend, Device};
use creme_tests::{device_on, model_path, require_shared, tiny};

/// The model with layer `l`'s W_down moved by noise of relative size `scale` (a stand-in edit).
fn edited(dev: &Device, file: &[u8], l: usize, scale: f32, seed: u64) -> Model {
    let mut m = Model::from_gguf_bytes(dev, file, 512).unwrap();
    let mut w = pollster::block_on(m.ffn_down_f32(dev, l)).unwrap();
    let amax = w.iter().fold(0f32, |a, v| a.max(v.abs()));
    let mut rng = SplitMix64(seed);
    for v in w.iter_mut() {
        *v += scale * amax * rng.next_f32();
    }
    m.set_ffn_down(dev, l, &w).unwrap();
    m
}

fn plain(
    dev: &Device,
    m: &Model,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Vec<creme_core::generate::Completion> {
    // Batched and left-padded, as `creme eval` generates.
    pollster::block_on(generate(dev, m, prompts, opts, &mut |_, _| {})).unwrap()
}

/// Each verified completion equals plain generation's: tokens, finish and text.
fn assert_completions(
    got: &[creme_core::draft::Verified],
    truth: &[creme_core::generate::Completion],
    what: &str,
) {
    for (i, (g, t)) in got.iter().zip(truth).enumerate() {
        let c = &g.completion;
        assert_eq!(
            (&c.tokens, c.finish, &c.text),
            (&t.tokens, t.finish, &t.text),
            "prompt {i}, {what}"
        );
    }
}

/// Checks all three kinds of drafts; returns (drafts of the unedited model accepted whole, noisy
/// drafts accepted whole, prompts).
fn check_equal(
    dev: &Device,
    base: &Model,
    edit: &Model,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> (usize, usize, usize) {
    let truth = plain(dev, edit, prompts, opts);
    let drafts_base: Vec<Draft> = plain(dev, base, prompts, opts)
        .iter()
        .map(Draft::from)
        .collect();
    let drafts_self: Vec<Draft> = truth.iter().map(Draft::from).collect();
    let mut rng = SplitMix64(9);
    let drafts_noise: Vec<Draft> = truth
        .iter()
        .map(|c| Draft {
            tokens: c
                .tokens
                .iter()
                .map(|&t| if rng.below(5) == 0 { (t + 1) % 200 } else { t })
                .collect(),
            resume: None,
        })
        .collect();
    let mut whole = (0, 0, prompts.len());
    for (name, drafts) in [
        ("unedited", &drafts_base),
        ("itself", &drafts_self),
        ("noisy", &drafts_noise),
    ] {
        let got =
            pollster::block_on(generate_from_drafts(dev, edit, prompts, drafts, opts)).unwrap();
        assert_completions(&got, &truth, &format!("drafts from {name}"));
        if name == "itself" {
            assert!(
                got.iter().all(|g| g.whole),
                "its own completions are accepted whole"
            );
        }
        check_resumed(dev, edit, prompts, drafts, opts, (&truth, name));
        let n_whole = got.iter().filter(|g| g.whole).count();
        match name {
            "unedited" => whole.0 = n_whole,
            "noisy" => whole.1 = n_whole,
            _ => {}
        }
    }
    whole
}

/// Verification resumed at the edited layer (`EDITED_LAYER` of the model `edited` made) equals
/// plain generation: a first pass captures the states entering that layer and the keys and values
/// below it (and must say so), a second resumes from them, decoding on from there where the draft
/// differs.
fn check_resumed(
    dev: &Device,
    edit: &Model,
    prompts: &[Vec<u32>],
    drafts: &[Draft],
    opts: &GenerateOptions,
    (truth, name): (&[creme_core::generate::Completion], &str),
) {
    let layer = *edit.edited_layers().first().expect("an edited layer");
    type Kept = Option<std::sync::Arc<creme_core::draft::ResumeStates>>;
    let with = |states: &dyn Fn(usize) -> Kept| -> Vec<Draft> {
        let resume = |i| {
            Some(Resume {
                layer,
                states: states(i),
            })
        };
        (drafts.iter().enumerate())
            .map(|(i, d)| Draft {
                resume: resume(i),
                ..d.clone()
            })
            .collect()
    };
    let verify = |ds: &[Draft]| {
        pollster::block_on(generate_from_drafts(dev, edit, prompts, ds, opts)).unwrap()
    };
    let first = verify(&with(&|_| None));
    let kept: Vec<_> = first.iter().map(|v| v.states.clone()).collect();
    if opts.max_new_tokens > 0 {
        assert!(
            kept.iter()
                .all(|s| s.as_ref().is_some_and(|(l, _)| *l == layer)),
            "{name}: states captured"
        );
    }
    let second = verify(&with(&|i| kept[i].as_ref().map(|(_, x)| x.clone())));
    for (pass, got) in [("capturing", &first), ("resumed", &second)] {
        let what = format!("drafts from {name}, {pass} pass at layer {layer}");
        assert_completions(got, truth, &what);
    }
    // Every prompt of the second pass ran from the layer on, drafts not accepted whole included:
    // they decoded on from the kept keys and values, with no full pass.
    if opts.max_new_tokens > 0 {
        assert!(
            second.iter().all(|g| g.resumed),
            "{name}: a resumed verification fell back to a full pass"
        );
    }
    if name == "itself" {
        assert!(
            second.iter().all(|g| g.whole && g.states.is_none()),
            "resumed whole"
        );
    }
}

/// The CPU backend, and wgpu's batch-invariant kernels on lavapipe: the adapter's own (the
/// row-per-thread kernel) and the GPUs' tile kernel.
const INVARIANT_DEVICES: [&str; 3] = ["cpu", "vulkan-invariant", "vulkan-invariant-gemm"];

#[test]
fn draft_verified_generation_equals_plain_generation_on_the_tiny_models() {
    for name in INVARIANT_DEVICES {
        let dev = device_on(name);
        assert!(dev.batch_invariant(), "{name}");
        check_tiny_models(&dev);
    }
}

fn check_tiny_models(dev: &Device) {
    for arch in ["qwen2", "llama"] {
        let file = tiny::tiny_gguf_arch(arch);
        let base = Model::from_gguf_bytes(dev, &file, 512).unwrap();
        let edit = edited(dev, &file, 1, 0.05, 3);
        let mut rng = SplitMix64(5);
        let prompts: Vec<Vec<u32>> = (0..6)
            .map(|k| {
                (0..3 + 4 * k)
                    .map(|_| (rng.next_u64() % 250) as u32)
                    .collect()
            })
            .collect();
        let mut diverged = 0;
        for stop in [vec![], vec!["a".to_string(), "\n".to_string()]] {
            for max in [0, 1, 7, 24] {
                let opts = GenerateOptions {
                    max_new_tokens: max,
                    stop: stop.clone(),
                    ..Default::default()
                };
                let (base_whole, noisy_whole, n) = check_equal(dev, &base, &edit, &prompts, &opts);
                diverged += (n - base_whole) + (n - noisy_whole);
            }
        }
        // The drafts did differ, so decoding on from a difference was exercised.
        assert!(
            diverged > 10,
            "{arch}: only {diverged} drafts were not accepted whole"
        );
    }
}

#[test]
fn draft_verified_generation_equals_plain_generation_on_real_prompts() {
    const HUMANEVAL: &str = "datasets/humaneval-nlpert/HumanEval.jsonl";
    let Some(shared) = require_shared(&[HUMANEVAL]) else {
        return;
    };
    // The CPU backend, and lavapipe's batch-invariant kernels on fewer and shorter completions
    // (it is some 10x slower; the prompts still span several of attention's key blocks).
    for (name, n, tokens) in [("cpu", 4, 48), ("vulkan-invariant", 2, 24)] {
        check_real_prompts(&device_on(name), &shared.join(HUMANEVAL), n, tokens);
    }
}

fn check_real_prompts(dev: &Device, humaneval: &std::path::Path, n: usize, tokens: usize) {
    let file = std::fs::read(model_path("smollm2")).unwrap();
    let base = Model::from_gguf_bytes(dev, &file, 512).unwrap();
    let edit = edited(dev, &file, 12, 0.02, 11);
    let text = std::fs::read_to_string(humaneval).unwrap();
    let problems = creme_core::dataset::parse_jsonl(&text, "HumanEval.jsonl").unwrap();
    let prompts: Vec<Vec<u32>> = problems
        .iter()
        .take(n)
        .map(|p| base.tokenizer.encode(&p.prompt).unwrap())
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: tokens,
        stop: humaneval_stops(),
        ..Default::default()
    };
    let (whole, noisy_whole, n) = check_equal(dev, &base, &edit, &prompts, &opts);
    eprintln!(
        "{}: drafts accepted whole: of the unedited model {whole}/{n}, noisy {noisy_whole}/{n}",
        dev.describe()
    );
    assert!(noisy_whole < n);
}

#[test]
fn more_diverging_drafts_than_decode_together_in_one_batch_still_equal_plain_generation() {
    // 19 prompts with noisy drafts: the continuations go in batches of 8, 8 and 3, flushed both
    // inside the verification loop and after it.
    let dev = device_on("cpu");
    let file = tiny::tiny_gguf_arch("qwen2");
    let edit = edited(&dev, &file, 1, 0.05, 3);
    let mut rng = SplitMix64(21);
    let prompts: Vec<Vec<u32>> = (0..19)
        .map(|k| (0..2 + k).map(|_| (rng.next_u64() % 250) as u32).collect())
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: 16,
        ..Default::default()
    };
    let truth = plain(&dev, &edit, &prompts, &opts);
    let drafts: Vec<Draft> = (truth.iter())
        .map(|c| Draft {
            tokens: c.tokens.iter().map(|&t| (t + 1) % 200).collect(),
            resume: None,
        })
        .collect();
    let got =
        pollster::block_on(generate_from_drafts(&dev, &edit, &prompts, &drafts, &opts)).unwrap();
    assert_completions(&got, &truth, "drafts wrong from the first token");
    assert!(
        got.iter().filter(|g| !g.whole).count() > 16,
        "most drafts diverge"
    );
}

#[test]
fn draft_verification_refuses_sampling() {
    let dev = device_on("cpu");
    let m = Model::from_gguf_bytes(&dev, &tiny::tiny_gguf(), 64).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 4,
        temperature: 0.7,
        ..Default::default()
    };
    assert!(pollster::block_on(generate_from_drafts(
        &dev,
        &m,
        &[vec![1, 2]],
        &[Draft::default()],
        &opts
    ))
    .is_err());
}
