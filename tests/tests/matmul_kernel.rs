//! Differential test of the tiled f32 matmul kernel against the CPU reference, over random shapes
//! (odd sizes, 1-sized dimensions and sizes straddling the 64-wide tiles), on every native
//! backend this machine has: Vulkan (lavapipe here) and GL (llvmpipe).

use creme_core::cpu::{matmul_nt, max_rel_err, SplitMix64};
use creme_tests::gpu_on;

fn run_shapes(backend: &str) {
    let gpu = match gpu_on(Some(backend)) {
        Ok(g) => g,
        Err(e) if backend == "gl" && std::env::var_os("CREME_REQUIRE_GL").is_none() => {
            eprintln!("SKIP gl backend: {e}");
            return;
        }
        Err(e) => panic!("no {backend} adapter: {e}"),
    };
    eprintln!("{backend}: {}", gpu.report.name);
    let mut rng = SplitMix64(0xC0FFEE ^ backend.len() as u64);
    let mut shapes = vec![
        (1, 1, 1),
        (1, 896, 896),
        (63, 65, 17),
        (64, 64, 64),
        (65, 129, 33),
        (3, 7, 1000),
        (200, 1, 5),
    ];
    for _ in 0..10 {
        shapes.push((
            1 + rng.below(130) as usize,
            1 + rng.below(260) as usize,
            1 + rng.below(300) as usize,
        ));
    }
    for (m, n, k) in shapes {
        let x = rng.vec_f32(m * k);
        let w = rng.vec_f32(n * k);
        let got = pollster::block_on(gpu.matmul_f32(&x, &w, m, n, k)).unwrap();
        let want = matmul_nt(&x, &w, m, n, k);
        let err = max_rel_err(&got, &want);
        assert!(err < 2e-5, "{backend} m={m} n={n} k={k}: max rel err {err}");
    }
}

#[test]
fn matmul_f32_matches_cpu_on_vulkan() {
    run_shapes("vulkan");
}

#[test]
fn matmul_f32_matches_cpu_on_gl() {
    run_shapes("gl");
}

#[test]
fn matmul_rejects_bad_shapes() {
    let gpu = gpu_on(None).unwrap();
    let err = pollster::block_on(gpu.matmul_f32(&[1.0; 5], &[1.0; 6], 2, 3, 2)).unwrap_err();
    assert!(err.to_string().contains("matmul_f32"), "{err}");
}

#[test]
fn missing_adapter_is_a_clear_error() {
    let mut o = creme_core::GpuOptions::from_env();
    o.adapter = Some("no-such-adapter-xyz".into());
    let err = match creme_core::Gpu::new_blocking(&o) {
        Ok(_) => panic!("expected no adapter"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("no GPU adapter") && err.contains("no-such-adapter-xyz"),
        "{err}"
    );
}

/// The GPU counters (issue 15's measure) see every object and submission: a kernel's pipeline is
/// built on its first use only, each call records one dispatch, and kernel parameters make no
/// buffer of their own (they are slots of the uniform arena).
#[test]
fn gpu_counters_see_pipelines_once_and_every_dispatch() {
    let gpu = gpu_on(Some("vulkan")).expect("a vulkan adapter (lavapipe)");
    let (m, n, k) = (3, 5, 7);
    let (x, w) = (vec![0.5f32; m * k], vec![0.25f32; n * k]);
    let start = gpu.counts();
    pollster::block_on(gpu.matmul_f32(&x, &w, m, n, k)).unwrap();
    let first = gpu.counts().since(&start);
    let mid = gpu.counts();
    pollster::block_on(gpu.matmul_f32(&x, &w, m, n, k)).unwrap();
    let second = gpu.counts().since(&mid);
    assert_eq!(
        first.pipelines, 1,
        "first call builds the pipeline: {first:?}"
    );
    assert_eq!(second.pipelines, 0, "second call reuses it: {second:?}");
    for c in [first, second] {
        assert_eq!(c.dispatches, 1, "{c:?}");
        assert!(c.bind_groups == 1 && c.submissions >= 1, "{c:?}");
    }
    // x, w and y; the parameters go to the uniform arena and the readback's staging buffer is
    // the first call's, reused.
    assert_eq!(second.buffers, 3, "{second:?}");
}

/// Kernel parameters are slots of one uniform arena written before the submission runs: 1,500
/// dispatches with different shapes recorded into one encoder (more slots than the first arena
/// holds, so it grows mid-encoder) must each see their own parameters.
#[test]
fn parameters_of_many_dispatches_in_one_submission_stay_apart() {
    let gpu = gpu_on(Some("vulkan")).expect("a vulkan adapter (lavapipe)");
    let mut rng = SplitMix64(7);
    let (m, n, kmax) = (2usize, 3usize, 40usize);
    let (x, w) = (rng.vec_f32(m * kmax), rng.vec_f32(n * kmax));
    let (xb, wb) = (gpu.upload("x", &x), gpu.upload("w", &w));
    let ks: Vec<usize> = (0..1500).map(|i| 1 + i % kmax).collect();
    let ys: Vec<_> = ks
        .iter()
        .map(|_| gpu.storage("y", (m * n * 4) as u64))
        .collect();
    let mut rec = gpu.new_recorder("test");
    for (k, y) in ks.iter().zip(&ys) {
        gpu.encode_matmul_f32(&mut rec, &xb, &wb, y, m as u32, n as u32, *k as u32)
            .unwrap();
    }
    gpu.submit(rec);
    for (i, (k, y)) in ks.iter().zip(&ys).enumerate().step_by(7) {
        // The first m*k and n*k values, read as [m, k] and [n, k].
        let want = matmul_nt(&x[..m * k], &w[..n * k], m, n, *k);
        let got = pollster::block_on(gpu.read::<f32>(y, m * n)).unwrap();
        assert!(
            max_rel_err(&got, &want) < 2e-5,
            "dispatch {i} (k = {k}): {got:?} vs {want:?}"
        );
    }
}

/// `creme bench`'s per-kernel GPU time: while profiling, every dispatch is timed under its kernel
/// and, for weights, the weight's kind ("blk.3.ffn_up.weight" -> "ffn_up"); once stopped, nothing
/// more is timed.
#[test]
fn profiling_times_every_dispatch_under_its_kernel_and_weight() {
    use creme_core::model::GgmlType;
    let gpu = gpu_on(Some("vulkan")).expect("a vulkan adapter (lavapipe)");
    assert!(gpu.report.timestamp_query, "lavapipe has timestamp queries");
    let mut rng = SplitMix64(11);
    let (rows, cols) = (40, 64);
    let bytes = creme_tests::random_blocks(GgmlType::Q8_0, rows * cols / 32, &mut rng);
    let w = gpu
        .upload_weight("blk.3.ffn_up.weight", GgmlType::Q8_0, rows, cols, &bytes)
        .unwrap();
    let x = rng.vec_f32(cols);
    assert!(gpu.start_profiling());
    for _ in 0..30 {
        pollster::block_on(gpu.matmul_quant(&x, &w, None, 1)).unwrap();
    }
    for _ in 0..5 {
        pollster::block_on(gpu.matmul_f32(&[1.0; 2], &[2.0; 3], 2, 3, 1)).unwrap();
    }
    let (times, untimed) = gpu.stop_profiling();
    assert_eq!(untimed, 0);
    let find = |pred: &dyn Fn(&str) -> bool| {
        times
            .iter()
            .find(|t| pred(&t.kernel))
            .unwrap_or_else(|| panic!("{times:?}"))
    };
    let up = find(&|k| k.starts_with("matmul_q") && k.ends_with(":Q8_0 ffn_up"));
    let f32 = find(&|k| k == "matmul_f32");
    assert_eq!((up.dispatches, f32.dispatches), (30, 5), "{times:?}");
    assert!(
        times.iter().all(|t| t.gpu_ns.is_finite() && t.gpu_ns > 0.0),
        "{times:?}"
    );
    pollster::block_on(gpu.matmul_f32(&[1.0; 2], &[2.0; 3], 2, 3, 1)).unwrap();
    assert!(
        gpu.stop_profiling().0.is_empty(),
        "timing stops with stop_profiling"
    );
}
