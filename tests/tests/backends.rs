//! One test suite across backends: every backend op on random and odd shapes, then whole tiny
//! models, on the CPU backend against wgpu (lavapipe here). The two are not the same function for
//! quantized weights (the CPU backend quantizes activations to int8 per 32 values, wgpu multiplies
//! in f32), so quantized results are compared within a stated tolerance and greedy tokens must
//! agree except where the wgpu run's top-2 logit margin is below a stated epsilon.

use creme_core::backend::{AdamStep, Backend, Device};
use creme_core::cpu::{max_rel_err, SplitMix64};
use creme_core::generate::{decode, GenerateOptions};
use creme_core::hooks::Hooks;
use creme_core::model::gguf_write::requantize;
use creme_core::model::{GgmlType, Logits, Model};
use creme_tests::tiny::tiny_gguf_arch;
use creme_tests::{device_on, f16_exact, kv_tolerance, model_path, random_blocks, ALL_TYPES};

/// Largest |a - b| over the largest |b| (robust where single values are near zero).
fn scaled_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn pair() -> (Device, Device) {
    (device_on("cpu"), device_on("vulkan"))
}

fn read(dev: &Device, t: &creme_core::Tensor) -> Vec<f32> {
    pollster::block_on(dev.read_all(t)).unwrap()
}

/// Quantized matmul of every format, odd row counts and batch sizes: CPU (int8 activations)
/// within 2e-2 of wgpu (f32 activations); f32-family weights within 1e-5.
#[test]
fn quantized_matmul_agrees_across_backends() {
    let (cpu, gpu) = pair();
    let mut rng = SplitMix64(11);
    for t in ALL_TYPES {
        let k = if t.block_elems() == 256 { 512 } else { 96 };
        for (rows, m) in [(1, 1), (17, 3), (67, 13)] {
            let bytes = random_blocks(t, rows * k / t.block_elems(), &mut rng);
            let x = rng.vec_f32(m * k);
            let mut outs = Vec::new();
            for dev in [&cpu, &gpu] {
                let w = dev.upload_weight("w", t, rows, k, &bytes).unwrap();
                let xt = dev.upload("x", m, k, &x).unwrap();
                let mut y = dev.zeros("y", m, rows).unwrap();
                dev.matmul_q(&xt, &w, &mut y, m).unwrap();
                outs.push(read(dev, &y));
            }
            let tol = if t.block_elems() == 1 { 1e-5 } else { 2e-2 };
            let err = scaled_err(&outs[0], &outs[1]);
            assert!(
                err < tol,
                "{} [{rows} x {k}] m={m}: cpu vs wgpu scaled error {err:.2e}",
                t.name()
            );
        }
    }
}

/// The edit's ops: f32 matmul, Adam, row copies, argmax and log-probabilities.
#[test]
fn edit_and_readout_ops_agree_across_backends() {
    let (cpu, gpu) = pair();
    let mut rng = SplitMix64(5);
    for (m, n, k) in [(1, 1, 1), (7, 13, 33), (65, 31, 130)] {
        let (x, w) = (rng.vec_f32(m * k), rng.vec_f32(n * k));
        let mut outs = Vec::new();
        for dev in [&cpu, &gpu] {
            let (xt, wt, mut y) = (
                dev.upload("x", m, k, &x).unwrap(),
                dev.upload("w", n, k, &w).unwrap(),
                dev.zeros("y", m, n).unwrap(),
            );
            dev.matmul_f32(&xt, &wt, &mut y, m, n, k).unwrap();
            outs.push(read(dev, &y));
        }
        assert!(
            max_rel_err(&outs[0], &outs[1]) < 1e-4,
            "matmul_f32 {m}x{n}x{k}"
        );
    }
    let n = 1001;
    let (w0, g) = (rng.vec_f32(n), rng.vec_f32(n));
    let mut outs = Vec::new();
    for dev in [&cpu, &gpu] {
        let (mut w, gt) = (
            dev.upload("w", 1, n, &w0).unwrap(),
            dev.upload("g", 1, n, &g).unwrap(),
        );
        let (mut m, mut v) = (dev.zeros("m", 1, n).unwrap(), dev.zeros("v", 1, n).unwrap());
        for t in 1..=3 {
            dev.adam(
                &mut w,
                &gt,
                &mut m,
                &mut v,
                AdamStep {
                    lr: 1e-2,
                    b1: 0.9,
                    b2: 0.999,
                    eps: 1e-8,
                    scale: 0.5,
                    t,
                },
            )
            .unwrap();
        }
        outs.push(read(dev, &w));
    }
    assert!(max_rel_err(&outs[0], &outs[1]) < 1e-5, "adam");
    let (rows, width) = (5, 1037);
    let logits = rng.vec_f32(rows * width);
    let targets = [0u32, 5, 1036, 77, 500];
    let mut got = Vec::new();
    for dev in [&cpu, &gpu] {
        let lt = dev.upload("logits", rows, width, &logits).unwrap();
        let mut copy = dev.zeros("copy", rows + 2, width).unwrap();
        dev.copy_rows(&lt, 1, &mut copy, 2, 3).unwrap();
        let lp = pollster::block_on(dev.token_logprobs(&lt, &targets)).unwrap();
        got.push((
            pollster::block_on(dev.argmax(&lt)).unwrap(),
            lp,
            read(dev, &copy),
        ));
    }
    assert_eq!(got[0].0, got[1].0, "argmax");
    assert!(scaled_err(&got[0].1, &got[1].1) < 1e-5, "token_logprobs");
    assert_eq!(got[0].2, got[1].2, "copy_rows");
}

/// Logits of every position of a prompt, and the greedy continuation, on one device.
fn run(dev: &Device, file: &[u8], prompt: &str, steps: usize) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let model = Model::from_gguf_bytes(dev, file, 256).unwrap();
    let ids = model.tokenizer.encode(prompt).unwrap();
    let mut cache = model.new_cache(dev, vec![0], ids.len() + steps).unwrap();
    let out = model
        .forward(
            dev,
            &mut cache,
            &[ids.clone()],
            &Hooks::default(),
            Logits::All,
        )
        .unwrap();
    let all = read(dev, out.logits.as_ref().unwrap());
    let v = model.cfg.vocab;
    let (mut tokens, mut margins) = (Vec::new(), Vec::new());
    let mut last = all[(ids.len() - 1) * v..].to_vec();
    for _ in 0..steps {
        let (best, margin) = top2(&last);
        tokens.push(best);
        margins.push(margin);
        let out = model
            .forward(
                dev,
                &mut cache,
                &[vec![best]],
                &Hooks::default(),
                Logits::Last,
            )
            .unwrap();
        last = read(dev, out.logits.as_ref().unwrap());
    }
    (all, tokens, margins)
}

fn top2(row: &[f32]) -> (u32, f32) {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
    (idx[0] as u32, row[idx[0]] - row[idx[1]])
}

/// Greedy tokens agree up to the first step where wgpu's top-2 margin is below `eps` (after
/// that the runs may follow different, equally valid paths).
fn assert_same_greedy(what: &str, cpu: &[u32], gpu: &[u32], gpu_margins: &[f32], eps: f32) {
    for i in 0..cpu.len() {
        if gpu_margins[i] < eps {
            return;
        }
        assert_eq!(
            cpu[i], gpu[i],
            "{what}: greedy token {i} differs (wgpu margin {})",
            gpu_margins[i]
        );
    }
}

/// The tiny models (f32 weights: the same function on both backends, to f32 rounding with an f32
/// KV cache and f16's with an f16 one; Q8_0 and Q4_0: int8 activations on the CPU) for both rope
/// styles.
#[test]
fn tiny_models_agree_across_backends() {
    let cpu = device_on("cpu");
    // Also with the weights' rows not in groups (as on GPUs; lavapipe's default is 8).
    for gpu in ["vulkan", "vulkan-kv16", "vulkan-rg1"].map(device_on) {
        for arch in ["qwen2", "llama"] {
            let f32_file = tiny_gguf_arch(arch);
            for (t, tol) in [
                (GgmlType::F32, kv_tolerance(&gpu, 1e-4)),
                (GgmlType::Q8_0, 3e-2),
                (GgmlType::Q4_0, 3e-2),
            ] {
                let file = if t == GgmlType::F32 {
                    f32_file.clone()
                } else {
                    requantize(&f32_file, t).unwrap()
                };
                let prompt = "def add(a, b):\n    return a + b\n";
                let (lc, tc, _) = run(&cpu, &file, prompt, 12);
                let (lg, tg, mg) = run(&gpu, &file, prompt, 12);
                let err = scaled_err(&lc, &lg);
                assert!(
                    err < tol,
                    "{arch} {} ({:?} KV cache): logits differ by {err:.2e} (tolerance {tol:.0e})",
                    t.name(),
                    gpu.kv_dtype()
                );
                assert_same_greedy(&format!("{arch} {}", t.name()), &tc, &tg, &mg, 0.05);
            }
        }
    }
}

/// A real model (SmolLM2-135M, Q4_1 + Q8_0): logits of a prompt within 5% of the logit range and
/// the same greedy tokens (margin epsilon 0.1).
#[test]
fn smollm2_agrees_across_backends() {
    let (cpu, gpu) = pair();
    let file = std::fs::read(model_path("smollm2")).unwrap();
    let prompt = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n";
    let (lc, tc, _) = run(&cpu, &file, prompt, 8);
    let (lg, tg, mg) = run(&gpu, &file, prompt, 8);
    let err = scaled_err(&lc, &lg);
    assert!(err < 5e-2, "smollm2 logits differ by {err:.2e}");
    assert_same_greedy("smollm2", &tc, &tg, &mg, 0.1);
}

/// On the CPU backend a row's logits are bit-identical whatever batch or chunk computes them: a
/// prompt alone, the same prompt left-padded beside a longer one, and its last token fed as a
/// decode step after the rest (exact verification of drafts relies on this).
#[test]
fn cpu_rows_do_not_depend_on_their_batch_or_chunk() {
    use creme_core::generate::left_pad;
    let dev = device_on("cpu");
    let model =
        Model::from_gguf_bytes(&dev, &std::fs::read(model_path("smollm2")).unwrap(), 256).unwrap();
    let a = model
        .tokenizer
        .encode("def add(a, b):\n    return a + b\n")
        .unwrap();
    let b = model
        .tokenizer
        .encode("# A longer prompt, so that the batch left-pads the first one.\ndef mul(a, b):\n")
        .unwrap();
    let v = model.cfg.vocab;
    let last_rows = |batch: &[Vec<u32>], pads: Vec<u32>| -> Vec<f32> {
        let mut cache = model.new_cache(&dev, pads, batch[0].len()).unwrap();
        let out = model
            .forward(&dev, &mut cache, batch, &Hooks::default(), Logits::Last)
            .unwrap();
        read(&dev, out.logits.as_ref().unwrap())
    };
    let alone = last_rows(&[a.clone()], vec![0]);
    let (batch, pads, _) = left_pad(model.cfg.pad_id, &[&a, &b], &[]);
    let batched = last_rows(&batch, pads);
    let stepped = {
        let mut cache = model.new_cache(&dev, vec![0], a.len()).unwrap();
        model
            .forward(
                &dev,
                &mut cache,
                &[a[..a.len() - 1].to_vec()],
                &Hooks::default(),
                Logits::None,
            )
            .unwrap();
        let out = model
            .forward(
                &dev,
                &mut cache,
                &[vec![a[a.len() - 1]]],
                &Hooks::default(),
                Logits::Last,
            )
            .unwrap();
        read(&dev, out.logits.as_ref().unwrap())
    };
    let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
    assert_eq!(
        bits(&alone),
        bits(&batched[..v]),
        "alone vs left-padded in a batch"
    );
    assert_eq!(bits(&alone), bits(&stepped), "prompt pass vs decode step");
}

/// The logprob trace (targets' log-probabilities read after the forward that makes them) gives
/// the same restoration curve on both backends for the f32 tiny model, and a real gap.
#[test]
fn logprob_trace_agrees_across_backends() {
    use creme_core::trace::{prepare, trace_layers, PatchPositions, RestorationByLogprob};
    let (cpu, gpu) = pair();
    let file = tiny_gguf_arch("qwen2");
    let mut got = Vec::new();
    for dev in [&cpu, &gpu] {
        let m = Model::from_gguf_bytes(dev, &file, 256).unwrap();
        let clean = m
            .tokenizer
            .encode("Return the largest element of the list.")
            .unwrap();
        let pert = m
            .tokenizer
            .encode("Retrun teh largets elemnt of the lsit.")
            .unwrap();
        let target = m.tokenizer.encode("    return max(xs)\n").unwrap();
        let setup = pollster::block_on(prepare(dev, &m, &clean, &pert, &target)).unwrap();
        let tr = pollster::block_on(trace_layers(
            dev,
            &m,
            &setup,
            PatchPositions::AllPrompt,
            &mut RestorationByLogprob,
        ))
        .unwrap();
        got.push((setup.lp_clean, setup.lp_pert, tr.scores));
    }
    let (c, g) = (&got[0], &got[1]);
    assert!(
        (c.0 - c.1).abs() > 1e-3,
        "clean and perturbed log-probabilities are equal: {c:?}"
    );
    assert!(
        (c.0 - g.0).abs() < 1e-3 * c.0.abs().max(1.0)
            && (c.1 - g.1).abs() < 1e-3 * c.1.abs().max(1.0),
        "lp cpu {:?} vs wgpu {:?}",
        (c.0, c.1),
        (g.0, g.1)
    );
    for (l, (a, b)) in c.2.iter().zip(&g.2).enumerate() {
        assert!(
            (a - b).abs() < 1e-2,
            "layer {l}: restoration {a} (cpu) vs {b} (wgpu)"
        );
    }
}

/// The CPU backend's exact mode (`cpu-exact`: weights dequantized, f32 activations) computes what
/// wgpu computes for quantized weights (to f16 rounding where wgpu's KV cache is f16).
#[test]
fn cpu_exact_mode_matches_wgpu_on_quantized_weights() {
    let exact = device_on("cpu-exact");
    let file = requantize(&tiny_gguf_arch("qwen2"), GgmlType::Q4_0).unwrap();
    let prompt = "def add(a, b):\n    return a + b\n";
    let (le, te, _) = run(&exact, &file, prompt, 12);
    for gpu in [device_on("vulkan"), device_on("vulkan-kv16")] {
        let (lg, tg, mg) = run(&gpu, &file, prompt, 12);
        let err = scaled_err(&le, &lg);
        let kv = gpu.kv_dtype();
        assert!(
            err < kv_tolerance(&gpu, 1e-4),
            "cpu-exact vs wgpu ({kv:?} KV cache): logits differ by {err:.2e}"
        );
        assert_same_greedy("cpu-exact Q4_0", &te, &tg, &mg, 1e-3);
    }
}

/// Issue 15's resource cache: after warm-up, a decoded token on wgpu makes no buffer, no bind group
/// and no pipeline, and is one submission (the readback of its token rides with the forward);
/// wgpu's own count of live buffers and bind groups stays where it was. The tokens still equal a
/// fresh run's (reused buffers hold nothing stale that matters).
#[test]
fn a_decoded_token_reuses_every_gpu_object() {
    let gpu = device_on("vulkan");
    let file = requantize(&tiny_gguf_arch("qwen2"), GgmlType::Q8_0).unwrap();
    let model = Model::from_gguf_bytes(&gpu, &file, 256).unwrap();
    let ids = model.tokenizer.encode("def add(a, b):").unwrap();
    // Generation's own decode loop: picks stay on the GPU and feed the next step there, and come
    // back a step behind. `observe(k)` runs as the k-th pick comes back.
    let decode = |steps: usize, observe: &mut dyn FnMut(usize)| -> Vec<u32> {
        let mut cache = model
            .new_cache(&gpu, vec![0], ids.len() + steps + 1)
            .unwrap();
        let out = model
            .forward(
                &gpu,
                &mut cache,
                &[ids.clone()],
                &Hooks::default(),
                Logits::Last,
            )
            .unwrap();
        let opts = GenerateOptions {
            max_new_tokens: steps,
            ignore_eos: true,
            ..Default::default()
        };
        let mut k = 0;
        let mut on_token = |_: usize, _: u32| {
            k += 1;
            observe(k);
        };
        let logits = out.logits.unwrap();
        let done = decode(&gpu, &model, &mut cache, logits, &opts, &mut on_token);
        pollster::block_on(done).unwrap().remove(0).tokens
    };
    let g = gpu.gpu().unwrap();
    let (warmup, steps) = (4, 24);
    let mut marks = Vec::new();
    // Both marks fall while the next step is submitted (the last pick has none after it); wgpu
    // frees the staging of finished work when polled, so the live counts are taken idle.
    let tokens = decode(warmup + steps + 1, &mut |k| {
        if k == warmup || k == warmup + steps {
            g.wait_idle();
            marks.push((g.counts(), g.live_objects()));
        }
    });
    assert_eq!(tokens.len(), warmup + steps + 1);
    let ((c0, live0), (c1, live1)) = (marks[0], marks[1]);
    let c = c1.since(&c0);
    let n = steps as u64;
    assert_eq!(
        (c.buffers, c.bind_groups, c.pipelines),
        (0, 0, 0),
        "objects made over {n} decoded tokens: {c:?}"
    );
    assert_eq!(c.submissions, n, "one submission per decoded token: {c:?}");
    // Per token: the embedding lookup of the last pick; per layer the QKV projections (norm
    // folded in), bias/rope/cache writes, attention, the O projection (+ residual), gate, up
    // (+ SiLU product), down (+ residual); then the head (norm folded in) and the argmax (two
    // passes: slices of the row, then their bests). Attention split over the context (GPUs)
    // adds its merge pass.
    let layers = model.cfg.n_layers as u64;
    let per_layer = 7 + g.split_attention as u64;
    assert_eq!(
        c.dispatches,
        n * (per_layer * layers + 4),
        "dispatches over {n} decoded tokens of {layers} layers: {c:?}"
    );
    assert_eq!(
        (live0, live1),
        (live0, live0),
        "wgpu's live buffers and bind groups"
    );
    let again = decode(warmup + steps + 1, &mut |_| {});
    assert_eq!(
        tokens, again,
        "a second run over reused buffers decodes the same tokens"
    );
}

/// The attention block on wgpu with the projections joined in one buffer (one matmul, then bias,
/// rope and the cache writes in one kernel) and stored apart (three matmuls into one workspace,
/// then the same kernel), against the CPU backend: GQA 4:1 with head_dim 8, both rope styles, with
/// and without biases, two sequences of 5 new tokens entering a cache that already holds 3 (the
/// CPU backend in f32 mode, within 1e-4 with an f32 KV cache and f16 rounding with an f16 one).
/// Mixed Q5_0/Q8_0
/// projections are joined by repacking as Q8_0 (lossless: the joined and apart results agree to
/// float rounding).
#[test]
fn attention_block_joined_and_apart_agree_with_cpu() {
    use creme_core::backend::{AttnStep, BlockShape, KvLayer, LayerWeights, Tensor};
    use creme_core::gpu::WeightUpload;
    // The reference is the CPU backend in its f32 mode (the default mode quantizes activations).
    let cpu = device_on("cpu-exact");
    // Row groups of 3 do not divide the projections' rows: their QKV weights cannot be joined.
    let gpus = ["vulkan", "vulkan-kv16", "vulkan-rg1", "vulkan-rg3"].map(device_on);
    let (d, heads, kv_heads, hd, batch, t, cache_len, cap) = (
        64usize, 4usize, 1usize, 8usize, 2usize, 5usize, 3usize, 11usize,
    );
    let (qw, kvw) = (heads * hd, kv_heads * hd);
    let mut rng = SplitMix64(21);
    for (interleaved, with_bias, formats) in [
        (
            false,
            true,
            [GgmlType::Q5_0, GgmlType::Q5_0, GgmlType::Q8_0],
        ),
        (true, false, [GgmlType::Q8_0; 3]),
        (
            false,
            false,
            [GgmlType::Q4K, GgmlType::Q8_0, GgmlType::Q8_0],
        ),
    ] {
        let d = if formats[0] == GgmlType::Q4K { 256 } else { d };
        let raws: Vec<Vec<u8>> = [qw, kvw, kvw]
            .iter()
            .zip(formats)
            .map(|(&r, f)| random_blocks(f, r * d / f.block_elems(), &mut rng))
            .collect();
        let o_raw = creme_tests::tiny::bytemuck_f32(&rng.vec_f32(d * qw));
        let unused: Vec<u8> = vec![0; 32 * d * 4];
        let (norm, x0) = (rng.vec_f32(d), rng.vec_f32(batch * t * d));
        let biases: Vec<Vec<f32>> = [qw, kvw, kvw].iter().map(|&n| rng.vec_f32(n)).collect();
        let (k0, v0) = (
            f16_exact(rng.vec_f32(batch * cap * kvw)),
            f16_exact(rng.vec_f32(batch * cap * kvw)),
        );
        let pos: Vec<u32> = (0..batch * t).map(|r| (cache_len + r % t) as u32).collect();
        let rope: Vec<f32> = (0..cap * hd / 2)
            .flat_map(|i| [(i as f32 * 0.37).cos(), (i as f32 * 0.37).sin()])
            .collect();
        let shape = BlockShape {
            d_model: d,
            d_ff: 32,
            n_heads: heads,
            n_kv_heads: kv_heads,
            head_dim: hd,
            rms_eps: 1e-6,
            interleaved_rope: interleaved,
        };
        let run = |dev: &Device, joined: bool| -> (Vec<f32>, Vec<f32>, Vec<f32>, u64) {
            let uploads: Vec<WeightUpload> = ["q", "k", "v"]
                .iter()
                .zip(&raws)
                .zip([qw, kvw, kvw])
                .zip(formats)
                .map(|(((n, b), r), f)| WeightUpload {
                    name: n,
                    dtype: f,
                    rows: r,
                    cols: d,
                    bytes: b,
                })
                .collect();
            let mut w = if joined {
                dev.upload_weight_group(&uploads).unwrap()
            } else {
                uploads
                    .iter()
                    .map(|u| {
                        dev.upload_weight(u.name, u.dtype, u.rows, u.cols, u.bytes)
                            .unwrap()
                    })
                    .collect()
            };
            let (v, k, q) = (w.pop().unwrap(), w.pop().unwrap(), w.pop().unwrap());
            let vec = |v: &[f32]| dev.upload("v", 1, v.len(), v).unwrap();
            let bias = |i: usize| with_bias.then(|| vec(&biases[i]));
            let all: Vec<f32> = biases.concat();
            let lw = LayerWeights {
                attn_norm: vec(&norm),
                q,
                k,
                v,
                o: dev
                    .upload_weight("o", GgmlType::F32, d, qw, &o_raw)
                    .unwrap(),
                q_bias: bias(0),
                k_bias: bias(1),
                v_bias: bias(2),
                qkv_bias: with_bias.then(|| vec(&all)),
                ffn_norm: vec(&norm),
                // The MLP is not run here.
                gate: dev
                    .upload_weight("gate", GgmlType::F32, 32, d, &unused)
                    .unwrap(),
                up: dev
                    .upload_weight("up", GgmlType::F32, 32, d, &unused)
                    .unwrap(),
                down: dev
                    .upload_weight("down", GgmlType::F32, d, 32, &unused)
                    .unwrap(),
            };
            let mut x = dev.upload("x", batch * t, d, &x0).unwrap();
            let mut kv = KvLayer {
                k: dev.kv_tensor("k", batch * cap, kvw, Some(&k0)).unwrap(),
                v: dev.kv_tensor("v", batch * cap, kvw, Some(&v0)).unwrap(),
            };
            let (pos_t, pad_t): (Tensor, Tensor) = (
                dev.upload_u32("pos", &pos).unwrap(),
                dev.upload_u32("pad", &[0, 1]).unwrap(),
            );
            let rope_t = dev.upload("rope", cap, hd, &rope).unwrap();
            let step = AttnStep {
                active: batch,
                t,
                cache_len,
                capacity: cap,
                pos: &pos_t,
                pad: &pad_t,
                rope: &rope_t,
            };
            let before = dev.gpu().map(|g| g.counts());
            dev.attention_block(&lw, &shape, &mut x, &mut kv, &step)
                .unwrap();
            let dispatches = dev
                .gpu()
                .map_or(0, |g| g.counts().since(&before.unwrap()).dispatches);
            (
                read(dev, &x),
                read(dev, &kv.k),
                read(dev, &kv.v),
                dispatches,
            )
        };
        let want = run(&cpu, false);
        for gpu in &gpus {
            let what = format!(
                "{formats:?} interleaved={interleaved} bias={with_bias}, {:?} cache",
                gpu.kv_dtype()
            );
            let apart = run(gpu, false);
            let joined = run(gpu, true);
            for (name, got) in [("apart", &apart), ("joined", &joined)] {
                let errs: Vec<(&str, f32)> = [
                    ("x", &got.0, &want.0),
                    ("k cache", &got.1, &want.1),
                    ("v cache", &got.2, &want.2),
                ]
                .iter()
                .map(|(p, g, c)| (*p, scaled_err(g, c)))
                .collect();
                let tol = kv_tolerance(gpu, 1e-4);
                assert!(
                    errs.iter().all(|e| e.1 < tol),
                    "{what} {name}: differs from the CPU backend by {errs:?}"
                );
            }
            let err = scaled_err(&joined.0, &apart.0)
                .max(scaled_err(&joined.1, &apart.1))
                .max(scaled_err(&joined.2, &apart.2));
            let tol = kv_tolerance(gpu, 1e-5);
            assert!(err < tol, "{what}: joined and apart differ by {err:.2e}");
            // The norm is folded into the projections. Joined: one projection matmul and one
            // bias/rope/cache kernel instead of three and that kernel; K-quants cannot share a buffer
            // with Q8_0, so that group stays apart, and so do rows that are not whole row groups.
            // Then attention and the O projection.
            let row_group = gpu.gpu().unwrap().weight_row_group;
            let can_join = formats[0] != GgmlType::Q4K
                && qw.is_multiple_of(row_group)
                && kvw.is_multiple_of(row_group);
            assert_eq!(
                (apart.3, joined.3),
                (6, if can_join { 4 } else { 6 }),
                "{what}: dispatches apart / joined"
            );
        }
    }
}

/// The attention kernel takes keys in blocks of 64 with an online softmax: contexts of one block,
/// several blocks and more than the 4,096 positions the kernel once held in workgroup memory,
/// with left padding, a chunk of several queries, GQA and head dimensions that are not a
/// multiple of the 64 threads, agree with the CPU backend in f32 mode; so does decode (one query)
/// through both the one-pass kernel and the split over the context; with an f32 KV cache and an
/// f16 one (`--kv-f16`).
#[test]
fn attention_over_long_contexts_agrees_with_cpu() {
    use creme_core::backend::{AttnStep, BlockShape, KvLayer, LayerWeights};
    let cpu = device_on("cpu-exact");
    // Decode (one query per sequence) runs split over the context on GPUs; both ways here. The
    // prompt kernel with and without subgroups (lavapipe takes the subgroup flavour).
    let gpu_split = |split: bool, no_subgroups: bool, kv_f16: bool| {
        let mut o = creme_core::GpuOptions::from_env();
        o.backends = Some("vulkan".into());
        o.split_attention = Some(split);
        o.no_subgroups = no_subgroups;
        o.kv_f16 = kv_f16;
        Device::Wgpu(creme_core::Gpu::new_blocking(&o).unwrap())
    };
    let gpus = [
        gpu_split(false, false, false),
        gpu_split(true, false, false),
        gpu_split(false, true, false),
        gpu_split(false, false, true),
        gpu_split(true, false, true),
    ];
    if let Some(g) = gpus[3].gpu().filter(|g| g.report.name.contains("llvmpipe")) {
        assert!(
            g.report.shader_f16 && gpus[3].kv_dtype() == creme_core::backend::DType::F16,
            "lavapipe has shader-f16: the f16 KV cache must be tested here"
        );
    }
    let mut rng = SplitMix64(77);
    for (cache_len, hd, heads, kv_heads, t) in [
        (20usize, 8usize, 4usize, 2usize, 3usize),
        (150, 80, 2, 1, 3),
        (70, 256, 2, 1, 3),
        (4200, 16, 2, 2, 3),
        (30, 12, 8, 2, 3),
        (25, 6, 16, 4, 3), // not a multiple of 4: the plain kernel on CPU adapters
        (20, 8, 4, 2, 1),
        (150, 80, 2, 1, 1),
        (70, 256, 2, 1, 1),
        (4200, 16, 2, 2, 1),
    ] {
        let (d, batch) = (32usize, 2usize);
        let cap = cache_len + t;
        let (qw, kvw) = (heads * hd, kv_heads * hd);
        let f32w = |dev: &Device, name: &str, rows: usize, cols: usize, v: &[f32]| {
            dev.upload_weight(
                name,
                GgmlType::F32,
                rows,
                cols,
                &creme_tests::tiny::bytemuck_f32(v),
            )
            .unwrap()
        };
        let (wq, wk, wv, wo) = (
            rng.vec_f32(qw * d),
            rng.vec_f32(kvw * d),
            rng.vec_f32(kvw * d),
            rng.vec_f32(d * qw),
        );
        let (norm, x0) = (rng.vec_f32(d), rng.vec_f32(batch * t * d));
        let (k0, v0) = (
            f16_exact(rng.vec_f32(batch * cap * kvw)),
            f16_exact(rng.vec_f32(batch * cap * kvw)),
        );
        let pos: Vec<u32> = (0..batch * t).map(|r| (cache_len + r % t) as u32).collect();
        let rope: Vec<f32> = (0..cap * hd / 2)
            .flat_map(|i| [(i as f32 * 0.01).cos(), (i as f32 * 0.01).sin()])
            .collect();
        let shape = BlockShape {
            d_model: d,
            d_ff: 32,
            n_heads: heads,
            n_kv_heads: kv_heads,
            head_dim: hd,
            rms_eps: 1e-6,
            interleaved_rope: false,
        };
        let run = |dev: &Device| -> Vec<f32> {
            let vec = |v: &[f32]| dev.upload("v", 1, v.len(), v).unwrap();
            let lw = LayerWeights {
                attn_norm: vec(&norm),
                q: f32w(dev, "q", qw, d, &wq),
                k: f32w(dev, "k", kvw, d, &wk),
                v: f32w(dev, "v", kvw, d, &wv),
                o: f32w(dev, "o", d, qw, &wo),
                q_bias: None,
                k_bias: None,
                v_bias: None,
                qkv_bias: None,
                ffn_norm: vec(&norm),
                gate: f32w(dev, "gate", 32, d, &[0.0; 32 * 32]),
                up: f32w(dev, "up", 32, d, &[0.0; 32 * 32]),
                down: f32w(dev, "down", d, 32, &[0.0; 32 * 32]),
            };
            let mut x = dev.upload("x", batch * t, d, &x0).unwrap();
            let mut kv = KvLayer {
                k: dev.kv_tensor("k", batch * cap, kvw, Some(&k0)).unwrap(),
                v: dev.kv_tensor("v", batch * cap, kvw, Some(&v0)).unwrap(),
            };
            let (pos_t, pad_t) = (
                dev.upload_u32("pos", &pos).unwrap(),
                dev.upload_u32("pad", &[0, 13]).unwrap(),
            );
            let rope_t = dev.upload("rope", cap, hd, &rope).unwrap();
            let step = AttnStep {
                active: batch,
                t,
                cache_len,
                capacity: cap,
                pos: &pos_t,
                pad: &pad_t,
                rope: &rope_t,
            };
            dev.attention_block(&lw, &shape, &mut x, &mut kv, &step)
                .unwrap();
            read(dev, &x)
        };
        let want = run(&cpu);
        let ways = ["one pass", "split", "one pass, no subgroups"];
        let ways = ways.iter().chain(&ways[..2]);
        assert_eq!(gpus.len(), ways.clone().count());
        for (gpu, way) in gpus.iter().zip(ways) {
            let err = scaled_err(&run(gpu), &want);
            let split = format!("{way}, {:?} cache", gpu.kv_dtype());
            assert!(
                err < kv_tolerance(gpu, 1e-4),
                "context {cache_len} + {t}, head_dim {hd}, {split}: differs from the CPU backend by {err:.2e}"
            );
        }
    }
}

/// The greedy pick on the GPU (slices of a row by many workgroups, then a pass over their bests)
/// picks the CPU's first maximum: rows narrower than a slice, one value past a slice, the
/// vocabulary's width; ties across slices (the first wins), -inf everywhere but one place, and a
/// row of -inf only (index 0, as on the CPU).
#[test]
fn gpu_argmax_picks_the_first_maximum() {
    // Ties, -inf and NaN rows: the GPU's two passes pick what the CPU backend picks.
    let (cpu, gpu) = (device_on("cpu"), device_on("vulkan"));
    let mut rng = SplitMix64(23);
    for width in [1usize, 7, 4096, 4097, 151_936] {
        let rows = 7;
        let mut logits: Vec<f32> = (0..rows * width).map(|_| rng.next_f32()).collect();
        // Row 5: NaNs first in every lane's stride and in the first slice, and a maximum after
        // them (NaNs never win); row 6: NaN only (index 0).
        for i in (0..width).step_by(3).chain(0..width.min(300)) {
            logits[5 * width + i] = f32::NAN;
        }
        logits[5 * width + width - 1] = 5.0;
        for l in &mut logits[6 * width..7 * width] {
            *l = f32::NAN;
        }
        // Row 1: the same maximum in the last and the first slice (the first one wins).
        logits[width + width - 1] = 2.0;
        logits[width + width / 3] = 2.0;
        logits[width] = 2.0;
        // Row 2: -inf everywhere but one value; row 3: -inf only.
        for l in &mut logits[2 * width..4 * width] {
            *l = f32::NEG_INFINITY;
        }
        logits[2 * width + width / 2] = -1e30;
        let on = |dev: &Device| {
            let l = dev.upload("logits", rows, width, &logits).unwrap();
            pollster::block_on(dev.argmax(&l)).unwrap()
        };
        let want = on(&cpu);
        assert_eq!(want[1], 0, "width {width}");
        assert_eq!(want[2], (width / 2) as u32, "width {width}");
        assert_eq!(want[5..], [width as u32 - 1, 0], "width {width}");
        assert_eq!(on(&gpu), want, "width {width}");
    }
}

/// Temperature and top-p sampling on the GPU (one workgroup per row, only the picks read back)
/// picks what the CPU rule `sampling::sample_row` picks, for rows of 7, 1,000 and 151,936 logits,
/// several temperatures and top-p values, wherever the pick is not within float rounding of a
/// boundary (the nucleus threshold or the drawn point falling within 1e-4 of a weight boundary,
/// measured in f64 here; the rows are peaked as a model's are, so most picks are clear). The rule itself is checked against a sorted-order nucleus in f64: the
/// picked token lies in the nucleus.
#[test]
fn gpu_sampling_picks_what_the_cpu_rule_picks() {
    use creme_core::sampling::sample_row;
    let (cpu, gpu) = (device_on("cpu-exact"), device_on("vulkan"));
    let mut rng = SplitMix64(5);
    let (mut compared, mut cases) = (0, 0);
    for width in [7usize, 1000, 151_936] {
        for (t, top_p) in [
            (0.2f32, 0.5f32),
            (0.8, 0.9),
            (1.5, 1.0),
            (1.0, 0.0),
            (0.7, 0.95),
        ] {
            let rows = 3;
            // Peaked rows, as a model's are: noise plus a few clearly preferred tokens.
            let mut logits: Vec<f32> = (0..rows * width).map(|_| rng.next_f32() * 3.0).collect();
            for _ in 0..5 * rows {
                let i = rng.below((rows * width) as u64) as usize;
                logits[i] = 8.0 + 4.0 * rng.next_f32();
            }
            if top_p == 0.9 {
                // Masked tokens: -inf logits take no part (and must not stall the bisection).
                for l in logits.iter_mut().step_by(3).filter(|l| **l < 8.0) {
                    *l = f32::NEG_INFINITY;
                }
            }
            let u: Vec<f32> = (0..rows).map(|_| (rng.next_f32() + 1.0) / 2.0).collect();
            let on = |dev: &Device| {
                let l = dev.upload("logits", rows, width, &logits).unwrap();
                pollster::block_on(dev.sample(&l, t, top_p, &u)).unwrap()
            };
            let (want, got) = (on(&cpu), on(&gpu));
            for r in 0..rows {
                let row = &logits[r * width..(r + 1) * width];
                assert_eq!(want[r], sample_row(row, t, top_p, u[r]));
                let (nucleus, margin) =
                    nucleus_and_margin(row, t as f64, top_p as f64, u[r] as f64);
                assert!(
                    nucleus.contains(&(want[r] as usize)),
                    "width {width} T {t} top_p {top_p}: CPU pick {} outside the nucleus",
                    want[r]
                );
                cases += 1;
                if margin > 1e-4 {
                    compared += 1;
                    assert_eq!(
                        got[r], want[r],
                        "width {width} T {t} top_p {top_p} row {r} (margin {margin:.2e})"
                    );
                }
            }
        }
    }
    assert!(
        compared * 2 >= cases,
        "only {compared} of {cases} picks away from a boundary"
    );
    eprintln!("{compared} of {cases} picks compared");
}

/// The nucleus of a row in f64 by sorting (the tokens whose weights, largest first, first reach
/// top_p of the total; all of them at top_p >= 1), and how far (relative) the threshold and the
/// drawn point lie from a boundary.
fn nucleus_and_margin(row: &[f32], t: f64, top_p: f64, u: f64) -> (Vec<usize>, f64) {
    let mx = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let w: Vec<f64> = row.iter().map(|&l| ((l as f64 - mx) / t).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap());
    let (mut keep, mut acc, mut margin) = (row.len(), 0.0, f64::INFINITY);
    if top_p < 1.0 {
        for (i, &j) in order.iter().enumerate() {
            let before = acc;
            acc += w[j];
            if acc >= top_p * total {
                keep = i + 1;
                margin = ((acc - top_p * total).min(top_p * total - before)) / total;
                break;
            }
        }
    }
    let mut nucleus: Vec<usize> = order[..keep].to_vec();
    nucleus.sort();
    let kept: f64 = nucleus.iter().map(|&j| w[j]).sum();
    let (r, mut run) = (u * kept, 0.0);
    for &j in &nucleus {
        run += w[j];
        margin = margin.min((run - r).abs() / kept);
    }
    (nucleus, margin)
}
