//! The CREME edit on a tiny model: the gradient matches finite differences, the GPU Adam step
//! matches a CPU Adam step, the captured-activation loss equals re-running the forward with the
//! edited weights, and the ridge solver lowers the loss.

use creme_core::edit::{
    capture, capture_rows, grad_cpu, loss_by_forward, loss_cpu, ridge_solve, solve, EditRows,
    EditSettings, Keep, Solver,
};
use creme_core::hooks::Hooks;
use creme_core::model::{Logits, Model};
use creme_core::Backend;
use creme_tests::tiny::tiny_gguf;
use creme_tests::{device_on, BACKENDS};

fn setup(backend: &str) -> (creme_core::Device, Model, Vec<u32>, Vec<u32>, Vec<u32>) {
    let dev = device_on(backend);
    let m = Model::from_gguf_bytes(&dev, &tiny_gguf(), 256).unwrap();
    let clean = m
        .tokenizer
        .encode("Return the largest element of the list.")
        .unwrap();
    let pert = m
        .tokenizer
        .encode("Retrun teh largets elemnt of the lsit.")
        .unwrap();
    let target = m.tokenizer.encode("    return max(xs)\n").unwrap();
    (dev, m, clean, pert, target)
}

/// The prompt rows of an edit at `layer` and the layer's W_down (f32).
fn prompt_rows_edit(
    dev: &creme_core::Device,
    m: &Model,
    (clean, pert, target): (&[u32], &[u32], &[u32]),
    layer: usize,
) -> (creme_core::edit::EditData, Vec<f32>) {
    let rows = EditRows::Prompt;
    let data = pollster::block_on(capture_rows(dev, m, (clean, pert), target, layer, rows));
    let w0 = pollster::block_on(m.ffn_down_f32(dev, layer)).unwrap();
    (data.unwrap(), w0)
}

/// Check `checks` seeded entries of the CPU gradient against central differences of the loss;
/// returns the gradient.
fn gradient_matches_finite_differences(
    data: &creme_core::edit::EditData,
    w0: &[f32],
    lambda: f64,
    seed: u64,
    checks: usize,
) -> Vec<f32> {
    let g = grad_cpu(data, w0, lambda);
    let mut rng = creme_core::cpu::SplitMix64(seed);
    for _ in 0..checks {
        let i = rng.below(w0.len() as u64) as usize;
        let h = 1e-2f32;
        let (mut wp, mut wm) = (w0.to_vec(), w0.to_vec());
        wp[i] += h;
        wm[i] -= h;
        let fd = (loss_cpu(data, &wp, lambda).total - loss_cpu(data, &wm, lambda).total)
            / (2.0 * h as f64);
        assert!(
            (fd - g[i] as f64).abs() <= 1e-3 * fd.abs().max(g[i].abs() as f64).max(1e-4),
            "w[{i}]: finite difference {fd} vs gradient {}",
            g[i]
        );
    }
    g
}

fn gradient_matches_finite_differences_and_gpu_adam_matches_cpu_on(backend: &str) {
    let (dev, m, clean, pert, target) = setup(backend);
    let layer = 1;
    let data = pollster::block_on(capture(&dev, &m, &clean, &pert, &target, layer)).unwrap();
    let w0 = pollster::block_on(m.ffn_down_f32(&dev, layer)).unwrap();
    let lambda = 0.1;
    let g = gradient_matches_finite_differences(&data, &w0, lambda, 3, 12);
    // One GPU Adam update (two evaluations, keep final) equals the CPU update w - lr * g/|g|.
    let s = EditSettings {
        max_steps: 2,
        patience: 10,
        keep: Keep::Final,
        lr: 1e-3,
        ..Default::default()
    };
    let r = pollster::block_on(solve(&dev, &data, &w0, &s)).unwrap();
    let cpu: Vec<f32> = w0
        .iter()
        .zip(&g)
        .map(|(w, g)| {
            // First Adam step: m = (1-b1) g, v = (1-b2) g², bias-corrected -> g / (|g| + eps').
            let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
            let (mh, vh) = (
                (1.0 - b1) * *g as f64 / (1.0 - b1),
                (1.0 - b2) * (*g as f64).powi(2) / (1.0 - b2),
            );
            (*w as f64 - 1e-3 * mh / (vh.sqrt() + eps)) as f32
        })
        .collect();
    let worst =
        r.w.iter()
            .zip(&cpu)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
    assert!(
        worst < 2e-4,
        "GPU Adam step differs from the CPU one by {worst}"
    );
    assert_eq!(r.steps, 2);
    assert!(
        (r.losses[0].total - loss_cpu(&data, &w0, lambda).total).abs()
            < 1e-4 * r.losses[0].total.max(1e-6)
    );
}

#[test]
fn gradient_matches_finite_differences_and_gpu_adam_matches_cpu() {
    for backend in BACKENDS {
        gradient_matches_finite_differences_and_gpu_adam_matches_cpu_on(backend);
    }
}

fn captured_activation_loss_equals_rerunning_the_forward_on(backend: &str) {
    let (dev, mut m, clean, pert, target) = setup(backend);
    let layer = 1;
    let data = pollster::block_on(capture(&dev, &m, &clean, &pert, &target, layer)).unwrap();
    let w0 = pollster::block_on(m.ffn_down_f32(&dev, layer)).unwrap();
    for steps in 1..=5 {
        let s = EditSettings {
            max_steps: steps,
            patience: 100,
            keep: Keep::Final,
            lr: 2e-3,
            ..Default::default()
        };
        let r = pollster::block_on(solve(&dev, &data, &w0, &s)).unwrap();
        let fast = r.losses.last().unwrap().total;
        let slow = pollster::block_on(loss_by_forward(
            &dev,
            &mut m,
            (&clean, &pert),
            &target,
            EditRows::Continuation,
            &r.w,
            &data,
            0.1,
        ))
        .unwrap()
        .total;
        assert!(
            (fast - slow).abs() <= 1e-3 * slow.max(1e-9),
            "after {} updates: captured {fast} vs forward {slow}",
            steps - 1
        );
        if steps > 1 {
            assert!(fast < r.losses[0].total, "Adam did not lower the loss");
        }
    }
    assert!(
        m.edited_layers().is_empty(),
        "the forward check left an edit applied"
    );
}

#[test]
fn captured_activation_loss_equals_rerunning_the_forward() {
    for backend in BACKENDS {
        captured_activation_loss_equals_rerunning_the_forward_on(backend);
    }
}

fn ridge_solver_lowers_the_loss_and_interpolates_when_unregularised_on(backend: &str) {
    let (dev, m, clean, pert, target) = setup(backend);
    let layer = 0;
    let data = pollster::block_on(capture(&dev, &m, &clean, &pert, &target, layer)).unwrap();
    let w0 = pollster::block_on(m.ffn_down_f32(&dev, layer)).unwrap();
    let before = loss_cpu(&data, &w0, 0.1);
    let strong = pollster::block_on(solve(
        &dev,
        &data,
        &w0,
        &EditSettings {
            solver: Solver::Ridge { ridge: 10.0 },
            ..Default::default()
        },
    ))
    .unwrap();
    let weak = pollster::block_on(solve(
        &dev,
        &data,
        &w0,
        &EditSettings {
            solver: Solver::Ridge { ridge: 1e-6 },
            ..Default::default()
        },
    ))
    .unwrap();
    let (ls, lw) = (
        loss_cpu(&data, &strong.w, 0.1),
        loss_cpu(&data, &weak.w, 0.1),
    );
    assert!(
        ls.total < before.total && lw.total < ls.total,
        "before {} strong {} weak {}",
        before.total,
        ls.total,
        lw.total
    );
    assert!(
        lw.pert < 1e-3 * before.pert.max(1e-9),
        "nearly unregularised ridge should interpolate: {} vs {}",
        lw.pert,
        before.pert
    );
}

#[test]
fn ridge_solver_lowers_the_loss_and_interpolates_when_unregularised() {
    for backend in BACKENDS {
        ridge_solver_lowers_the_loss_and_interpolates_when_unregularised_on(backend);
    }
}

fn patch_round_trips_applies_and_reverts_on(backend: &str) {
    use creme_core::edit::EditPatch;
    let (dev, mut m, clean, pert, target) = setup(backend);
    let layer = 1;
    let data = pollster::block_on(capture(&dev, &m, &clean, &pert, &target, layer)).unwrap();
    let w0 = pollster::block_on(m.ffn_down_f32(&dev, layer)).unwrap();
    let r = pollster::block_on(solve(
        &dev,
        &data,
        &w0,
        &EditSettings {
            solver: Solver::Ridge { ridge: 1.0 },
            ..Default::default()
        },
    ))
    .unwrap();
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("base_model_sha256".to_string(), "abc".to_string());
    let patch = EditPatch {
        layer,
        rows: data.d,
        cols: data.f,
        w: r.w.clone(),
        metadata: meta,
    };
    let bytes = patch.to_safetensors().unwrap();
    let back = EditPatch::from_safetensors(&bytes).unwrap();
    assert_eq!((back.layer, back.rows, back.cols), (layer, data.d, data.f));
    assert_eq!(back.w, r.w);
    assert_eq!(back.metadata["gguf_name"], "blk.1.ffn_down.weight");
    assert_eq!(back.metadata["base_model_sha256"], "abc");
    // Any safetensors reader sees the HF name and shape.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("model.layers.1.mlp.down_proj.weight")
            .unwrap()
            .shape(),
        &[data.d, data.f]
    );

    let logits = |m: &Model| {
        let mut c = m.new_cache(&dev, vec![0], pert.len()).unwrap();
        let out = m
            .forward(
                &dev,
                &mut c,
                &[pert.clone()],
                &Hooks::default(),
                Logits::Last,
            )
            .unwrap();
        pollster::block_on(dev.read(out.logits.as_ref().unwrap(), m.cfg.vocab)).unwrap()
    };
    let before = logits(&m);
    back.apply(&dev, &mut m).unwrap();
    assert_eq!(m.edited_layers(), vec![layer]);
    let edited = logits(&m);
    assert_ne!(before, edited);
    m.revert_ffn_down(layer);
    assert_eq!(logits(&m), before);
    assert!(EditPatch::from_safetensors(b"not a patch").is_err());
}

#[test]
fn patch_round_trips_applies_and_reverts() {
    for backend in BACKENDS {
        patch_round_trips_applies_and_reverts_on(backend);
    }
}

/// Prompt rows on a pair short enough for an exact fit (rows < d_ff).
fn short_pair(m: &Model) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let enc = |s: &str| m.tokenizer.encode(s).unwrap();
    (enc("Sum the list."), enc("Sum teh lits."), enc(" ok"))
}

fn prompt_rows_loss_is_the_forward_loss_and_its_gradient_is_right_on(backend: &str) {
    let dev = device_on(backend);
    let mut m = Model::from_gguf_bytes(&dev, &tiny_gguf(), 256).unwrap();
    let (clean, pert, target) = short_pair(&m);
    let layer = 1;
    let data = pollster::block_on(capture_rows(
        &dev,
        &m,
        (&clean, &pert),
        &target,
        layer,
        EditRows::Prompt,
    ))
    .unwrap();
    let al = creme_core::align::Alignment::of(&clean, &pert);
    assert_eq!(data.moved.n, al.suffix + target.len());
    assert_eq!(
        data.kept.n,
        clean.len() + target.len() + al.pert_span().len()
    );
    let w0 = pollster::block_on(m.ffn_down_f32(&dev, layer)).unwrap();
    let lambda = 0.1;
    gradient_matches_finite_differences(&data, &w0, lambda, 5, 8);
    let w = ridge_solve(&data, &w0, lambda, 0.5);
    let fast = loss_cpu(&data, &w, lambda).total;
    let slow = pollster::block_on(loss_by_forward(
        &dev,
        &mut m,
        (&clean, &pert),
        &target,
        EditRows::Prompt,
        &w,
        &data,
        lambda,
    ))
    .unwrap()
    .total;
    assert!(
        (fast - slow).abs() <= 1e-3 * slow.max(1e-9),
        "captured {fast} vs forward {slow}"
    );
}

#[test]
fn prompt_rows_loss_is_the_forward_loss_and_its_gradient_is_right() {
    for backend in BACKENDS {
        prompt_rows_loss_is_the_forward_loss_and_its_gradient_is_right_on(backend);
    }
}

/// The point of prompt rows: an exact fit makes the edited model's teacher-forced
/// log-probability of the target equal the aligned probe's at that layer, and the trace's
/// decision margin of an unpatched probe is the edited model's own margin.
fn exact_prompt_rows_fit_reproduces_the_aligned_probe_on(backend: &str) {
    use creme_core::trace::{prepare, probe_logprobs, DecisionMargin, Probe, RestorationMetric};
    let dev = device_on(backend);
    let mut m = Model::from_gguf_bytes(&dev, &tiny_gguf(), 256).unwrap();
    let (clean, pert, target) = short_pair(&m);
    let setup = pollster::block_on(prepare(&dev, &m, &clean, &pert, &target)).unwrap();
    let teacher_forced = |m: &Model| {
        let seq: Vec<u32> = pert.iter().chain(&target).copied().collect();
        let mut c = m.new_cache(&dev, vec![0], seq.len()).unwrap();
        let rows = (pert.len() - 1..seq.len() - 1).collect();
        let out = m
            .forward(&dev, &mut c, &[seq], &Hooks::default(), Logits::Rows(rows))
            .unwrap();
        let lps = pollster::block_on(dev.token_logprobs(out.logits.as_ref().unwrap(), &target));
        lps.unwrap().iter().map(|&x| x as f64).sum::<f64>()
    };
    let plain = teacher_forced(&m);
    assert!((plain - setup.lp_pert).abs() < 1e-3 * plain.abs().max(1.0));
    for layer in 0..m.cfg.n_layers {
        let probe = setup.aligned_probe(layer, true);
        let lp_probe = pollster::block_on(probe_logprobs(&dev, &m, &setup, &[probe])).unwrap()[0];
        let (data, w0) = prompt_rows_edit(&dev, &m, (&clean, &pert, &target), layer);
        let w = ridge_solve(&data, &w0, 1.0, 1e-9);
        assert!(creme_core::diagnose::remaining_gap(&data, &w) < 1e-3);
        m.set_ffn_down(&dev, layer, &w).unwrap();
        let lp_edit = teacher_forced(&m);
        m.revert_ffn_down(layer);
        assert!(
            (lp_edit - lp_probe).abs() < 2e-3 * lp_probe.abs().max(1.0),
            "layer {layer}: edited {lp_edit} vs aligned probe {lp_probe} (unpatched {plain}, clean {})",
            setup.lp_clean
        );
    }
    if let Some((i, other)) = setup.divergence {
        let unpatched = Probe::at(0, vec![]);
        let traced = pollster::block_on(DecisionMargin.restoration(&dev, &m, &setup, &[unpatched]));
        let div = creme_core::diagnose::Divergence {
            index: i,
            clean_token: target[i],
            pert_token: Some(other),
        };
        let direct = pollster::block_on(creme_core::diagnose::decision_margin(
            &dev,
            &m,
            &pert,
            &target[..i],
            &div,
        ))
        .unwrap();
        assert!((traced.unwrap()[0] - direct).abs() < 1e-3, "{direct}");
    }
}

#[test]
fn exact_prompt_rows_fit_reproduces_the_aligned_probe() {
    for backend in BACKENDS {
        exact_prompt_rows_fit_reproduces_the_aligned_probe_on(backend);
    }
}

/// The activation Gram matrices equal Σ a aᵀ of the captured activations (f64 on the CPU), and
/// the covariance solver's change satisfies its normal equations: the gradient of
/// |errors|² + μ Σ_j δ_jᵀ C_s δ_j vanishes at its solution, while it does not at the ridge's.
fn covariance_solver_solves_its_objective_on(backend: &str) {
    use creme_core::covariance::{layer_grams, Factor, SHRINK};
    use creme_core::hooks::Site;
    let (dev, m, clean, pert, target) = setup(backend);
    let layer = 1;
    let prompts = vec![clean.clone(), pert.clone(), target.clone()];
    let grams = pollster::block_on(layer_grams(&dev, &m, &prompts, &mut |_| {})).unwrap();
    let f = m.cfg.d_ff;
    let mut naive = vec![0f64; f * f];
    for p in &prompts {
        let mut cache = m.new_cache(&dev, vec![0], p.len()).unwrap();
        let hooks = Hooks::capture([Site::MlpAct(layer)]);
        let out = m
            .forward(
                &dev,
                &mut cache,
                std::slice::from_ref(p),
                &hooks,
                Logits::None,
            )
            .unwrap();
        let (buf, rows, _) = out.captured.get(Site::MlpAct(layer)).unwrap();
        let a = pollster::block_on(dev.read(buf, rows * f)).unwrap();
        for r in a.chunks_exact(f) {
            for i in 0..f {
                for j in 0..f {
                    naive[i * f + j] += r[i] as f64 * r[j] as f64;
                }
            }
        }
    }
    let gram = &grams[layer];
    assert_eq!(gram.rows, prompts.iter().map(Vec::len).sum::<usize>());
    for (g, n) in gram.sum.iter().zip(&naive) {
        assert!(
            (*g as f64 - n).abs() <= 1e-4 * n.abs().max(1.0),
            "gram {g} vs {n}"
        );
    }

    let (data, w0) = prompt_rows_edit(&dev, &m, (&clean, &pert, &target), layer);
    let (ridge, lambda) = (3.0, 0.1);
    let factor = Factor::from_gram(layer, gram);
    let settings = |solver| EditSettings {
        solver,
        rows: EditRows::Prompt,
        lambda,
        ..Default::default()
    };
    let solve_as = |solver, metric| {
        let s = settings(solver);
        pollster::block_on(creme_core::edit::solve_with(
            &dev,
            &data,
            &w0,
            &s,
            metric,
            &mut |_| {},
        ))
    };
    assert!(
        solve_as(Solver::Covariance { ridge }, None).is_err(),
        "the covariance solver without a factor must refuse"
    );
    let cov = solve_as(Solver::Covariance { ridge }, Some(&factor))
        .unwrap()
        .w;
    let plain = solve_as(Solver::Ridge { ridge }, None).unwrap().w;
    let d = m.cfg.d_model;
    let trace: f64 = (0..f).map(|i| gram.sum[i * f + i] as f64).sum();
    let c = |i: usize, j: usize| {
        gram.sum[i * f + j] as f64 * (1.0 - SHRINK) * f as f64 / trace
            + if i == j { SHRINK } else { 0.0 }
    };
    let mu = ridge * data.moved.n as f64 / f as f64;
    let objective_gradient = |w: &[f32]| -> f64 {
        let g = grad_cpu(&data, w, lambda);
        let mut worst = 0f64;
        for j in 0..d {
            for k in 0..f {
                let penalty: f64 = (0..f)
                    .map(|l| (w[j * f + l] - w0[j * f + l]) as f64 * c(l, k))
                    .sum();
                let total = (data.moved.n * d) as f64 * g[j * f + k] as f64 + 2.0 * mu * penalty;
                worst = worst.max(total.abs());
            }
        }
        worst
    };
    let start = objective_gradient(&w0);
    let (at_cov, at_plain) = (objective_gradient(&cov), objective_gradient(&plain));
    assert!(
        at_cov < 1e-3 * start,
        "{backend}: gradient {at_cov} at the solution, {start} at W0"
    );
    assert!(
        at_plain > 1e-2 * start,
        "{backend}: the ridge solution solves another objective"
    );
}

#[test]
fn covariance_solver_solves_its_objective() {
    for backend in BACKENDS {
        covariance_solver_solves_its_objective_on(backend);
    }
}
