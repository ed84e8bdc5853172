//! Tracing on a tiny model: resuming from layer l with patched states equals a full forward with
//! an overwrite hook there; batched probes equal single ones; an empty patch restores nothing.

use creme_core::cpu::max_scaled_err;
use creme_core::hooks::{Hooks, Patch, Site};
use creme_core::model::{Input, Logits, Model};
use creme_core::trace::{
    choose_layer, prepare, probe_logprobs, trace_layers, PatchPositions, Probe,
    RestorationByLogprob,
};
use creme_core::Backend;
use creme_tests::tiny::{tiny_gguf, D, LAYERS};
use creme_tests::{device_on, BACKENDS};

fn model(dev: &creme_core::Device) -> Model {
    Model::from_gguf_bytes(dev, &tiny_gguf(), 256).unwrap()
}

fn resume_from_layer_equals_full_forward_with_overwrite_hook_on(backend: &str) {
    let dev = device_on(backend);
    let m = model(&dev);
    let a = m.tokenizer.encode("def add(a, b): return a + b").unwrap();
    let b = m.tokenizer.encode("def sum(x, y): return x + y").unwrap();
    assert_eq!(a.len(), b.len());
    let t = a.len();
    let v = m.cfg.vocab;
    let mut cache = m.new_cache(&dev, vec![0, 0], t).unwrap();
    let both = m
        .forward(
            &dev,
            &mut cache,
            &[a.clone(), b.clone()],
            &Hooks::capture((0..LAYERS).map(Site::ResidOut)),
            Logits::None,
        )
        .unwrap();
    let patched_rows: Vec<u32> = vec![0, 3, 4, 10];
    for l in 0..LAYERS {
        let (states, _, _) = both.captured.get(Site::ResidOut(l)).unwrap();
        // Full forward of b with a's rows written over b's at layer l's output.
        let hooks = Hooks {
            capture: vec![],
            patches: vec![Patch {
                site: Site::ResidOut(l),
                values: copy(&dev, states),
                src_rows: patched_rows.clone(),
                dst_rows: patched_rows.clone(),
            }],
        };
        let mut c1 = m.new_cache(&dev, vec![0], t).unwrap();
        let full = m
            .forward(&dev, &mut c1, &[b.clone()], &hooks, Logits::All)
            .unwrap();
        let full: Vec<f32> =
            pollster::block_on(dev.read(full.logits.as_ref().unwrap(), t * v)).unwrap();
        // Resume from layer l + 1 with the same patched state.
        let mut x = dev.zeros("x", t, D).unwrap();
        dev.copy_rows(states, t, &mut x, 0, t).unwrap();
        for &r in &patched_rows {
            dev.copy_rows(states, r as usize, &mut x, r as usize, 1)
                .unwrap();
        }
        let mut c2 = m.new_cache(&dev, vec![0], t).unwrap();
        let res = m
            .forward_ex(
                &dev,
                &mut c2,
                Input::Resume {
                    x: &x,
                    start: &[l + 1],
                    t,
                },
                &Hooks::default(),
                Logits::All,
            )
            .unwrap();
        let res: Vec<f32> =
            pollster::block_on(dev.read(res.logits.as_ref().unwrap(), t * v)).unwrap();
        let err = max_scaled_err(&res, &full);
        assert!(
            err < 1e-5,
            "layer {l}: resume differs from the hooked full forward by {err}"
        );
    }
}

#[test]
fn resume_from_layer_equals_full_forward_with_overwrite_hook() {
    for backend in BACKENDS {
        resume_from_layer_equals_full_forward_with_overwrite_hook_on(backend);
    }
}

fn copy(dev: &creme_core::Device, b: &creme_core::Tensor) -> creme_core::Tensor {
    let mut c = dev.zeros("copy", b.rows, b.width).unwrap();
    dev.copy_rows(b, 0, &mut c, 0, b.rows).unwrap();
    c
}

fn batched_probes_equal_single_probes_and_empty_patch_restores_nothing_on(backend: &str) {
    let dev = device_on(backend);
    let m = model(&dev);
    let clean = m
        .tokenizer
        .encode("Return the sum of a list of numbers.")
        .unwrap();
    let pert = m
        .tokenizer
        .encode("Retrun teh sum of a lits of numbers.")
        .unwrap();
    let target = m.tokenizer.encode("    return sum(xs)").unwrap();
    let setup = pollster::block_on(prepare(&dev, &m, &clean, &pert, &target)).unwrap();
    let frame = setup.frame;
    let probes: Vec<Probe> = vec![
        Probe::at(0, (0..frame).collect()),
        Probe::at(1, vec![2, 5]),
        Probe::at(0, vec![]),
        Probe::at(1, vec![]),
        Probe::at(1, (0..frame).collect()),
    ];
    let batched = pollster::block_on(probe_logprobs(&dev, &m, &setup, &probes)).unwrap();
    for (i, p) in probes.iter().enumerate() {
        let single = pollster::block_on(probe_logprobs(&dev, &m, &setup, std::slice::from_ref(p)))
            .unwrap()[0];
        assert!(
            (single - batched[i]).abs() < 1e-3 * single.abs().max(1.0),
            "probe {i}: {single} vs {}",
            batched[i]
        );
    }
    for i in [2, 3] {
        assert!(
            (batched[i] - setup.lp_pert).abs() < 1e-3 * setup.lp_pert.abs().max(1.0),
            "empty patch: {} vs lp_pert {}",
            batched[i],
            setup.lp_pert
        );
    }
    // At the last layer every prompt row is the clean run's; only the target rows remain perturbed.
    let trace = pollster::block_on(trace_layers(
        &dev,
        &m,
        &setup,
        PatchPositions::AllPrompt,
        &mut RestorationByLogprob,
    ))
    .unwrap();
    assert_eq!(trace.scores.len(), LAYERS);
    assert!(trace.key_layer < LAYERS);
    assert!(setup.differing_positions().len() < frame);
}

#[test]
fn batched_probes_equal_single_probes_and_empty_patch_restores_nothing() {
    for backend in BACKENDS {
        batched_probes_equal_single_probes_and_empty_patch_restores_nothing_on(backend);
    }
}

#[test]
fn ties_go_to_the_largest_distance() {
    assert_eq!(
        choose_layer(&[0.5, 1.0, 1.0, 0.2], &[9.0, 1.0, 3.0, 100.0]),
        2
    );
    assert_eq!(choose_layer(&[0.0, 0.0, 0.0], &[1.0, 5.0, 2.0]), 1);
}

fn generating_from_an_unpatched_probe_equals_generating_from_the_perturbed_prompt_on(
    backend: &str,
) {
    use creme_core::generate::{generate, GenerateOptions};
    use creme_core::trace::generate_from_probes;
    let dev = device_on(backend);
    let m = model(&dev);
    let clean = m.tokenizer.encode("Return the sum of a list.").unwrap();
    let pert = m
        .tokenizer
        .encode("Retrun teh sum of a lits of numbers.")
        .unwrap();
    let target = m.tokenizer.encode("  return sum(xs)").unwrap();
    let setup = pollster::block_on(prepare(&dev, &m, &clean, &pert, &target)).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 10,
        ..Default::default()
    };
    let plain =
        pollster::block_on(generate(&dev, &m, &[pert.clone()], &opts, &mut |_, _| {})).unwrap();
    let probes: Vec<Probe> = (0..LAYERS).map(|layer| Probe::at(layer, vec![])).collect();
    let from_probes =
        pollster::block_on(generate_from_probes(&dev, &m, &setup, &probes, &opts)).unwrap();
    for (l, c) in from_probes.iter().enumerate() {
        assert_eq!(c.tokens, plain[0].tokens, "probe at layer {l}");
    }
}

#[test]
fn generating_from_an_unpatched_probe_equals_generating_from_the_perturbed_prompt() {
    for backend in BACKENDS {
        generating_from_an_unpatched_probe_equals_generating_from_the_perturbed_prompt_on(backend);
    }
}

/// A pair whose target is not at least `MIN_NORMALISABLE_GAP` more likely after the clean prompt
/// is flagged: its logprob trace scores the patched log-probabilities themselves, its key layer is
/// where they are highest, and a ratio threshold does not move it. Of a pair and its swap (whose
/// gap is the negative), at least one is too close.
fn a_pair_too_close_to_normalise_is_traced_in_log_probabilities_on(backend: &str) {
    use creme_core::pipeline::{Locator, LogprobLocator};
    use creme_core::trace::MIN_NORMALISABLE_GAP;
    let dev = device_on(backend);
    let m = model(&dev);
    let a = m.tokenizer.encode("Return the sum of a list.").unwrap();
    let b = m.tokenizer.encode("Retrun teh sum of a lits.").unwrap();
    let target = m.tokenizer.encode("    return sum(xs)").unwrap();
    let mut flagged = 0;
    for (clean, pert) in [(&a, &b), (&b, &a)] {
        let setup = pollster::block_on(prepare(&dev, &m, clean, pert, &target)).unwrap();
        let close = setup.lp_clean - setup.lp_pert < MIN_NORMALISABLE_GAP;
        assert_eq!(setup.too_close().is_some(), close);
        let probes: Vec<Probe> = (0..LAYERS)
            .map(|l| Probe::at(l, (0..setup.frame).collect()))
            .collect();
        let raw = pollster::block_on(probe_logprobs(&dev, &m, &setup, &probes)).unwrap();
        let mut locator = LogprobLocator {
            restored_at: Some(-1e9),
        };
        let t = pollster::block_on(locator.locate(&dev, &m, &setup, &mut |_| {})).unwrap();
        let gap = setup.lp_clean - setup.lp_pert;
        for (l, (&s, &lp)) in t.scores.iter().zip(&raw).enumerate() {
            let want = if close {
                lp
            } else {
                (lp - setup.lp_pert) / gap
            };
            assert!((s - want).abs() < 1e-9, "layer {l}: {s} vs {want}");
        }
        assert_eq!(t.too_close, setup.too_close());
        if close {
            flagged += 1;
            // Every layer passes a threshold of -1e9; flagged, the best layer stands.
            assert_eq!(t.key_layer, choose_layer(&t.scores, &t.distances));
            let svg = creme_core::report::layer_curve_svg(&t, "pair");
            assert!(svg.contains("too close to normalise"), "{svg}");
        }
    }
    assert!(flagged >= 1);
}

#[test]
fn a_pair_too_close_to_normalise_is_traced_in_log_probabilities() {
    for backend in BACKENDS {
        a_pair_too_close_to_normalise_is_traced_in_log_probabilities_on(backend);
    }
}
