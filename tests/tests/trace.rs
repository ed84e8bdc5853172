//! Tracing on a tiny model: resuming from layer l with patched states equals a full forward with
//! an overwrite hook there; batched probes equal single ones; an empty patch restores nothing.

use creme_core::cpu::max_scaled_err;
use creme_core::hooks::{Hooks, Patch, Site};
use creme_core::model::{Input, Logits, Model};
use creme_core::trace::{choose_layer, prepare, probe_logprobs, trace_layers, PatchPositions, Probe, RestorationByLogprob};
use creme_tests::gpu_on;
use creme_tests::tiny::{tiny_gguf, D, LAYERS};

fn model(gpu: &creme_core::Gpu) -> Model {
    Model::from_gguf_bytes(gpu, &tiny_gguf(), 256).unwrap()
}

#[test]
fn resume_from_layer_equals_full_forward_with_overwrite_hook() {
    let gpu = gpu_on(None).unwrap();
    let m = model(&gpu);
    let a = m.tokenizer.encode("def add(a, b): return a + b").unwrap();
    let b = m.tokenizer.encode("def sum(x, y): return x + y").unwrap();
    assert_eq!(a.len(), b.len());
    let t = a.len();
    let v = m.cfg.vocab;
    let mut cache = m.new_cache(&gpu, vec![0, 0], t).unwrap();
    let both = m.forward(&gpu, &mut cache, &[a.clone(), b.clone()], &Hooks::capture((0..LAYERS).map(Site::ResidOut)), Logits::None).unwrap();
    let patched_rows: Vec<u32> = vec![0, 3, 4, 10];
    for l in 0..LAYERS {
        let (states, _, _) = both.captured.get(Site::ResidOut(l)).unwrap();
        // Full forward of b with a's rows written over b's at layer l's output.
        let hooks = Hooks { capture: vec![], patches: vec![Patch { site: Site::ResidOut(l), values: copy(&gpu, states), src_rows: patched_rows.clone(), dst_rows: patched_rows.clone() }] };
        let mut c1 = m.new_cache(&gpu, vec![0], t).unwrap();
        let full = m.forward(&gpu, &mut c1, &[b.clone()], &hooks, Logits::All).unwrap();
        let full: Vec<f32> = pollster::block_on(gpu.read(full.logits.as_ref().unwrap(), t * v)).unwrap();
        // Resume from layer l + 1 with the same patched state.
        let x = gpu.storage("x", (t * D * 4) as u64);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(states, (t * D * 4) as u64, &x, 0, (t * D * 4) as u64);
        for &r in &patched_rows {
            enc.copy_buffer_to_buffer(states, (r as usize * D * 4) as u64, &x, (r as usize * D * 4) as u64, (D * 4) as u64);
        }
        gpu.queue.submit([enc.finish()]);
        let mut c2 = m.new_cache(&gpu, vec![0], t).unwrap();
        let res = m.forward_ex(&gpu, &mut c2, Input::Resume { x: &x, start: &[l + 1], t }, &Hooks::default(), Logits::All).unwrap();
        let res: Vec<f32> = pollster::block_on(gpu.read(res.logits.as_ref().unwrap(), t * v)).unwrap();
        let err = max_scaled_err(&res, &full);
        assert!(err < 1e-5, "layer {l}: resume differs from the hooked full forward by {err}");
    }
}

fn copy(gpu: &creme_core::Gpu, b: &creme_core::wgpu::Buffer) -> creme_core::wgpu::Buffer {
    let c = gpu.storage("copy", b.size());
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(b, 0, &c, 0, b.size());
    gpu.queue.submit([enc.finish()]);
    c
}

#[test]
fn batched_probes_equal_single_probes_and_empty_patch_restores_nothing() {
    let gpu = gpu_on(None).unwrap();
    let m = model(&gpu);
    let clean = m.tokenizer.encode("Return the sum of a list of numbers.").unwrap();
    let pert = m.tokenizer.encode("Retrun teh sum of a lits of numbers.").unwrap();
    let target = m.tokenizer.encode("    return sum(xs)").unwrap();
    let setup = pollster::block_on(prepare(&gpu, &m, &clean, &pert, &target)).unwrap();
    let frame = setup.frame;
    let probes: Vec<Probe> = vec![
        Probe { layer: 0, positions: (0..frame).collect() },
        Probe { layer: 1, positions: vec![2, 5] },
        Probe { layer: 0, positions: vec![] },
        Probe { layer: 1, positions: vec![] },
        Probe { layer: 1, positions: (0..frame).collect() },
    ];
    let batched = pollster::block_on(probe_logprobs(&gpu, &m, &setup, &probes)).unwrap();
    for (i, p) in probes.iter().enumerate() {
        let single = pollster::block_on(probe_logprobs(&gpu, &m, &setup, std::slice::from_ref(p))).unwrap()[0];
        assert!((single - batched[i]).abs() < 1e-3 * single.abs().max(1.0), "probe {i}: {single} vs {}", batched[i]);
    }
    for i in [2, 3] {
        assert!((batched[i] - setup.lp_pert).abs() < 1e-3 * setup.lp_pert.abs().max(1.0), "empty patch: {} vs lp_pert {}", batched[i], setup.lp_pert);
    }
    // At the last layer every prompt row is the clean run's; only the target rows remain perturbed.
    let trace = pollster::block_on(trace_layers(&gpu, &m, &setup, PatchPositions::AllPrompt, &mut RestorationByLogprob)).unwrap();
    assert_eq!(trace.scores.len(), LAYERS);
    assert!(trace.key_layer < LAYERS);
    assert!(setup.differing_positions().len() < frame);
}

#[test]
fn ties_go_to_the_largest_distance() {
    assert_eq!(choose_layer(&[0.5, 1.0, 1.0, 0.2], &[9.0, 1.0, 3.0, 100.0]), 2);
    assert_eq!(choose_layer(&[0.0, 0.0, 0.0], &[1.0, 5.0, 2.0]), 1);
}

#[test]
fn generating_from_an_unpatched_probe_equals_generating_from_the_perturbed_prompt() {
    use creme_core::generate::{generate, GenerateOptions};
    use creme_core::trace::generate_from_probes;
    let gpu = gpu_on(None).unwrap();
    let m = model(&gpu);
    let clean = m.tokenizer.encode("Return the sum of a list.").unwrap();
    let pert = m.tokenizer.encode("Retrun teh sum of a lits of numbers.").unwrap();
    let target = m.tokenizer.encode("  return sum(xs)").unwrap();
    let setup = pollster::block_on(prepare(&gpu, &m, &clean, &pert, &target)).unwrap();
    let opts = GenerateOptions { max_new_tokens: 10, ..Default::default() };
    let plain = pollster::block_on(generate(&gpu, &m, &[pert.clone()], &opts, &mut |_, _| {})).unwrap();
    let probes: Vec<Probe> = (0..LAYERS).map(|layer| Probe { layer, positions: vec![] }).collect();
    let from_probes = pollster::block_on(generate_from_probes(&gpu, &m, &setup, &probes, &opts)).unwrap();
    for (l, c) in from_probes.iter().enumerate() {
        assert_eq!(c.tokens, plain[0].tokens, "probe at layer {l}");
    }
}
