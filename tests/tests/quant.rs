//! Weight formats: the CPU dequantization equals the `gguf` Python package's (llama.cpp's) on
//! random blocks of every format and on real tensors of both models; the GPU quantized matmul
//! equals dequantize + CPU matmul for every format, on odd row counts and several batch sizes.

use creme_core::cpu::{matmul_nt, max_rel_err, max_scaled_err, SplitMix64};
use creme_core::model::quant::dequantize;
use creme_core::model::GgmlType;
use creme_tests::{cache_dir, gpu_on, model_path, random_blocks, read_header, ALL_TYPES};

fn reference_dir() -> std::path::PathBuf {
    let d = cache_dir().join("reference/dequant");
    assert!(
        d.join("random_Q4_K.f32").exists(),
        "{} is missing: run scripts/gguf_reference.py",
        d.display()
    );
    d
}

fn read_f32(p: &std::path::Path) -> Vec<f32> {
    std::fs::read(p)
        .unwrap()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn cpu_dequant_equals_gguf_python_on_random_blocks() {
    let dir = reference_dir();
    for t in ALL_TYPES {
        let raw = std::fs::read(dir.join(format!("random_{}.bin", t.name()))).unwrap();
        let want = read_f32(&dir.join(format!("random_{}.f32", t.name())));
        let got = dequantize(t, &raw, want.len()).unwrap();
        let err = max_rel_err(&got, &want);
        assert!(err <= 1e-6, "{}: max rel err {err}", t.name());
    }
}

#[test]
fn cpu_dequant_equals_gguf_python_on_real_tensors() {
    let dir = reference_dir();
    let mut checked = Vec::new();
    for model in ["qwen", "smollm2"] {
        let path = model_path(model);
        let h = read_header(&path);
        let file = std::fs::read(&path).unwrap();
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix(&format!("{model}_")) else {
                continue;
            };
            let Some(tensor) = rest.strip_suffix(".f32") else {
                continue;
            };
            let info = h.tensor(tensor).unwrap();
            let want = read_f32(&p);
            let bytes = h.tensor_bytes(&file, info).unwrap();
            let got = dequantize(info.dtype, bytes, want.len()).unwrap();
            let err = max_rel_err(&got, &want);
            assert!(
                err <= 1e-6,
                "{model} {tensor} ({}): max rel err {err}",
                info.dtype.name()
            );
            checked.push(format!("{model}:{}", info.dtype.name()));
        }
    }
    checked.sort();
    checked.dedup();
    eprintln!("real tensors checked: {checked:?}");
    for want in [
        "qwen:Q4_K",
        "qwen:Q5_0",
        "qwen:Q6_K",
        "qwen:Q8_0",
        "smollm2:Q4_1",
        "smollm2:Q8_0",
    ] {
        assert!(
            checked.iter().any(|c| c == want),
            "no real tensor of {want} was checked"
        );
    }
}

#[test]
fn gpu_quant_matmul_equals_cpu_for_every_format() {
    // Every kernel flavour: auto, workgroup-per-row, row-per-thread, matvec (m <= 4), tiled and
    // the GPU tile kernel (m >= 16), with the adapter's weight row groups (8 on lavapipe), without
    // (GPUs), and in groups of 3 (the last one part-filled).
    for flavour in [
        None,
        Some("wg"),
        Some("rows"),
        Some("rows_sg"),
        Some("mv"),
        Some("tiled"),
        Some("gemm"),
    ] {
        for row_group in [None, Some(1), Some(3)] {
            if row_group == Some(3) && !matches!(flavour, None | Some("rows_sg")) {
                continue;
            }
            let mut o = creme_core::GpuOptions::from_env();
            o.qmm = flavour.map(String::from);
            o.weight_row_group = row_group;
            check_formats(&creme_core::Gpu::new_blocking(&o).unwrap(), flavour);
        }
    }
}

#[test]
fn batch_invariant_kernels_give_a_row_the_same_bits_whatever_rows_are_beside_it() {
    // The default kernel choice and each kernel batch-invariant mode may take for every m: a
    // row's result from a product of 37 rows, of a few, and of that row alone, bit for bit.
    for flavour in [
        None,
        Some("rows"),
        Some("rows_sg"),
        Some("wg"),
        Some("tiled"),
        Some("gemm"),
    ] {
        let mut o = creme_core::GpuOptions::from_env();
        o.qmm = flavour.map(String::from);
        o.batch_invariant = Some(true);
        let gpu = creme_core::Gpu::new_blocking(&o).unwrap();
        assert!(
            !gpu.split_attention,
            "decode attention split in batch-invariant mode"
        );
        let kernel = gpu.qmm_kernel(1, 512);
        for m in [2, 5, 16, 37] {
            assert_eq!(
                gpu.qmm_kernel(m, 512),
                kernel,
                "{flavour:?}: the kernel moved with m"
            );
        }
        let mut rng = SplitMix64(7);
        for t in ALL_TYPES {
            let (rows, k, m) = (70usize, 512usize, 37usize);
            let raw = random_blocks(t, rows * k / t.block_elems(), &mut rng);
            let w = gpu.upload_weight("w", t, rows, k, &raw).unwrap();
            let x = rng.vec_f32(m * k);
            let all = pollster::block_on(gpu.matmul_quant(&x, &w, None, m)).unwrap();
            for (start, len) in [(0, 1), (36, 1), (3, 1), (3, 4), (20, 17), (1, 16)] {
                let part = &x[start * k..(start + len) * k];
                let got = pollster::block_on(gpu.matmul_quant(part, &w, None, len)).unwrap();
                let want = &all[start * rows..(start + len) * rows];
                let same = got
                    .iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{} kernel {kernel}: rows {start}..+{len} differ alone",
                    t.name()
                );
            }
        }
    }
    // The matvec kernel serves decode only: refused in batch-invariant mode.
    let mut o = creme_core::GpuOptions::from_env();
    o.qmm = Some("mv".into());
    o.batch_invariant = Some(true);
    assert!(creme_core::Gpu::new_blocking(&o).is_err());
}

fn check_formats(gpu: &creme_core::Gpu, flavour: Option<&str>) {
    let mut rng = SplitMix64(99);
    for t in ALL_TYPES {
        for (rows, k, m) in [
            (1usize, 256usize, 1usize),
            (37, 512, 1),
            (13, 256, 3),
            (70, 768, 9),
            (5, 1024, 17),
            (130, 256, 65),
            // One row of x longer than a uniform binding (64 KiB on lavapipe): storage views.
            (3, 16640, 1),
        ] {
            let nblocks = rows * k / t.block_elems();
            let raw = random_blocks(t, nblocks, &mut rng);
            let w = gpu.upload_weight("w", t, rows, k, &raw).unwrap();
            let x = rng.vec_f32(m * k);
            let bias = rng.vec_f32(rows);
            let got = pollster::block_on(gpu.matmul_quant(&x, &w, Some(&bias), m)).unwrap();
            let wd = dequantize(t, &raw, rows * k).unwrap();
            let mut want = matmul_nt(&x, &wd, m, rows, k);
            for (i, v) in want.iter_mut().enumerate() {
                *v += bias[i % rows];
            }
            let err = max_scaled_err(&got, &want);
            assert!(
                err < 1e-5,
                "{} rows={rows} k={k} m={m} kernel {flavour:?}, row groups of {}: max rel err {err}",
                t.name(),
                gpu.weight_row_group
            );
        }
    }
}

/// The GPU's layout: rows of every format are whole 16-byte units (also rows whose last quad
/// of blocks is part-filled), the layout goes back out losslessly with and without row groups
/// (also a last group that is part-filled), formats kept as in GGUF are not copied, a Q8_0 quad
/// holds the four scales first and then the quants, and a row group interleaves rows by unit.
#[test]
fn gpu_layout_round_trips() {
    use creme_core::quant::{from_gpu_layout, to_gpu_layout};
    let mut rng = SplitMix64(23);
    for t in ALL_TYPES {
        for (rows, cols) in [(3, 3 * 256), (2, 5 * 32), (1, 32), (11, 512)] {
            if cols % t.block_elems() != 0 {
                continue;
            }
            let raw = random_blocks(t, rows * cols / t.block_elems(), &mut rng);
            for group in [1, 8, 3] {
                let gpu = to_gpu_layout(t, cols, group, &raw);
                let what = format!("{} {rows}x{cols} in groups of {group}", t.name());
                assert_eq!(gpu.len(), t.gpu_bytes(rows, cols, group), "{what}");
                assert_eq!(t.gpu_row_bytes(cols) % 16, 0, "{what}");
                assert_eq!(t.gpu_row_bytes(cols) % t.gpu_unit_bytes(), 0, "{what}");
                assert_eq!(from_gpu_layout(t, cols, group, rows, &gpu), raw, "{what}");
                let copied = matches!(gpu, std::borrow::Cow::Owned(_));
                let same = [
                    GgmlType::F32,
                    GgmlType::F16,
                    GgmlType::BF16,
                    GgmlType::Q4K,
                    GgmlType::Q5K,
                ];
                assert_eq!(copied, group > 1 || !same.contains(&t), "{what}");
            }
        }
    }
    let raw = random_blocks(GgmlType::Q8_0, 2, &mut rng);
    let gpu = to_gpu_layout(GgmlType::Q8_0, 64, 1, &raw);
    assert_eq!(gpu.len(), 144);
    assert_eq!(&gpu[4..6], &raw[34..36], "block 1's scale in header word 1");
    assert_eq!(
        &gpu[48..80],
        &raw[36..68],
        "block 1's quants after block 0's"
    );
    assert!(
        gpu[80..].iter().all(|&b| b == 0),
        "the quad's missing blocks are zeros"
    );
    // Two rows of two K blocks in a group of 2: row 0's block 0, row 1's block 0, row 0's block 1.
    let raw = random_blocks(GgmlType::Q4K, 4, &mut rng);
    let gpu = to_gpu_layout(GgmlType::Q4K, 512, 2, &raw);
    assert_eq!(&gpu[..144], &raw[..144]);
    assert_eq!(&gpu[144..288], &raw[288..432]);
    assert_eq!(&gpu[288..432], &raw[144..288]);
}

#[test]
fn weight_split_across_bindings_gives_the_same_result() {
    let gpu = gpu_on(None).unwrap();
    let mut rng = SplitMix64(5);
    let (rows, k) = (300, 256);
    let t = GgmlType::Q8_0;
    let raw = random_blocks(t, rows * k / 32, &mut rng);
    let whole = gpu.upload_weight("whole", t, rows, k, &raw).unwrap();
    // Force small chunks, as upload_weight makes for tensors over the binding limit.
    let split = split_weight(&gpu, t, rows, k, &raw, 64);
    let x = rng.vec_f32(2 * k);
    let a = pollster::block_on(gpu.matmul_quant(&x, &whole, None, 2)).unwrap();
    let b = pollster::block_on(gpu.matmul_quant(&x, &split, None, 2)).unwrap();
    assert_eq!(a, b);
}

/// The embedding lookup on the GPU (the ids a decode step picked, looked up without a trip
/// through the host) equals the CPU backend's for every format: 37 rows of a table whole and split
/// over buffers of 8 rows (as a head over the binding limit is), ids in any order and repeated.
#[test]
fn gpu_embedding_lookup_equals_cpu_for_every_format() {
    use creme_core::backend::{Backend, Device, Weight};
    use creme_core::model::Embedding;
    let cpu = creme_tests::device_on("cpu");
    let mut rng = SplitMix64(17);
    let ids: Vec<u32> = vec![0, 36, 5, 5, 8, 7, 15, 16, 31, 1, 24];
    let lookup = |dev: &Device, t, raw: &[u8], shared: Option<&Weight>| -> Vec<f32> {
        let table = Embedding::new(dev, t, 37, 256, raw, shared).unwrap();
        let ids = dev.upload_ids("ids", &ids).unwrap();
        let mut x = dev.zeros("x", ids.rows, 256).unwrap();
        dev.embed(&table, &ids, &mut x).unwrap();
        pollster::block_on(dev.read(&x, x.len())).unwrap()
    };
    // With the adapter's weight row groups, without, and in groups of 3 (part-filled).
    for name in ["vulkan", "vulkan-rg1", "vulkan-rg3"] {
        let gpu = creme_tests::device_on(name);
        for t in ALL_TYPES {
            let (rows, cols) = (37, 256);
            let raw = random_blocks(t, rows * cols / t.block_elems(), &mut rng);
            let split = Weight::Wgpu(split_weight(gpu.gpu().unwrap(), t, rows, cols, &raw, 8));
            // Within float rounding: a driver may fuse d * q + m into one multiply-add.
            let want = lookup(&cpu, t, &raw, None);
            for (got, how) in [
                (lookup(&gpu, t, &raw, None), "whole"),
                (lookup(&gpu, t, &raw, Some(&split)), "split"),
            ] {
                let err = max_scaled_err(&got, &want);
                assert!(
                    err < 1e-6,
                    "{} {how} on {name}: differs by {err:.2e}",
                    t.name()
                );
            }
        }
    }
}

#[test]
fn unsupported_and_truncated_data_are_clear_errors() {
    let e = GgmlType::from_id(10).unwrap_err().to_string();
    assert!(e.contains("Q2_K"), "{e}");
    let e = dequantize(GgmlType::Q4K, &[0u8; 100], 256)
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn q4_0_quantizer_round_trips_within_half_a_step() {
    use creme_core::model::quant::{dequantize, quantize_q4_0};
    let mut rng = creme_core::cpu::SplitMix64(5);
    let x: Vec<f32> = (0..32 * 64).map(|_| rng.next_f32() * 4.0 - 2.0).collect();
    let y = dequantize(GgmlType::Q4_0, &quantize_q4_0(&x), x.len()).unwrap();
    for (bx, by) in x.chunks(32).zip(y.chunks(32)) {
        let amax = bx.iter().fold(0f32, |m, v| m.max(v.abs()));
        let step = amax / 8.0;
        for (a, b) in bx.iter().zip(by) {
            assert!(
                (a - b).abs() <= step * 0.5 + 1e-3 * amax,
                "{a} vs {b} (step {step})"
            );
        }
    }
}

#[test]
fn requantize_re_encodes_weights_and_keeps_vectors_and_metadata() {
    use creme_core::model::gguf_write::requantize;
    use creme_core::model::GgufHeader;
    let src = creme_tests::tiny::tiny_gguf();
    let out = requantize(&src, GgmlType::Q8_0).unwrap();
    let (a, b) = (
        GgufHeader::parse(&src).unwrap(),
        GgufHeader::parse(&out).unwrap(),
    );
    b.check_len(out.len() as u64).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (ta, tb) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!((&ta.name, &ta.dims), (&tb.name, &tb.dims));
        let want = if ta.dims.len() == 2 {
            GgmlType::Q8_0
        } else {
            ta.dtype
        };
        assert_eq!(tb.dtype, want, "{}", ta.name);
        // Values survive to Q8_0 precision.
        let xa = creme_core::model::quant::dequantize(
            ta.dtype,
            a.tensor_bytes(&src, ta).unwrap(),
            ta.elems() as usize,
        )
        .unwrap();
        let xb = creme_core::model::quant::dequantize(
            tb.dtype,
            b.tensor_bytes(&out, tb).unwrap(),
            tb.elems() as usize,
        )
        .unwrap();
        let amax = xa.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            xa.iter()
                .zip(&xb)
                .all(|(p, q)| (p - q).abs() <= amax / 127.0),
            "{}",
            ta.name
        );
    }
    assert_eq!(
        a.get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|t| t.len()),
        b.get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|t| t.len())
    );
}

#[test]
fn keep_layers_drops_the_upper_blocks_and_sets_the_block_count() {
    use creme_core::model::gguf_write::requantize_layers;
    use creme_core::model::GgufHeader;
    let src = creme_tests::tiny::tiny_gguf();
    let out = requantize_layers(&src, GgmlType::Q8_0, Some(1)).unwrap();
    let h = GgufHeader::parse(&out).unwrap();
    h.check_len(out.len() as u64).unwrap();
    assert_eq!(h.get("qwen2.block_count").and_then(|v| v.as_u64()), Some(1));
    assert!(h
        .tensors
        .iter()
        .all(|t| !t.name.starts_with("blk.") || t.name.starts_with("blk.0.")));
    assert!(h.tensors.iter().any(|t| t.name == "token_embd.weight"));
    // The truncated model loads and runs.
    let dev = creme_core::Device::Cpu(creme_core::backend::cpu::CpuBackend::new());
    let model = creme_core::model::Model::from_gguf_bytes(&dev, &out, 64).unwrap();
    assert_eq!(model.cfg.n_layers, 1);
    assert!(requantize_layers(&src, GgmlType::Q8_0, Some(99)).is_err());
    assert!(requantize_layers(&src, GgmlType::Q8_0, Some(0)).is_err());
}

/// The fusions of the quantized matmul, for every kernel flavour on odd shapes and four formats,
/// against the CPU reference on the dequantized weight: the epilogues `Add` (y += x·Wᵀ, the
/// residual add) and `SiluMul` (y = silu(y) * x·Wᵀ, the SwiGLU product), a bias (as the qwen2
/// attention projections have), and the RMS norm of x folded into the product (with each of the
/// others: the norm before the attention and MLP projections).
#[test]
fn matmul_fusions_for_every_flavour() {
    use creme_core::gpu::ops::{Epilogue, Fusion};
    // The matvec with and without subgroups (lavapipe has subgroups of 8 lanes).
    for (flavour, no_subgroups) in [
        (None, false),
        (Some("wg"), false),
        (Some("rows"), false),
        (Some("rows_sg"), false),
        (Some("rows_sg"), true),
        (Some("mv"), false),
        (Some("mv"), true),
        (Some("tiled"), false),
        (Some("gemm"), false),
    ] {
        let mut o = creme_core::GpuOptions::from_env();
        o.backends = Some("vulkan".into());
        o.qmm = flavour.map(String::from);
        o.no_subgroups = no_subgroups;
        let gpu = creme_core::Gpu::new_blocking(&o).unwrap();
        if gpu.report.name.contains("llvmpipe") {
            assert_eq!(
                gpu.report.subgroups, !no_subgroups,
                "lavapipe has subgroups: the subgroup matvec must be tested here"
            );
        }
        if flavour == Some("mv") {
            let want = if gpu.report.subgroups {
                "matmul_q_mv_sg"
            } else {
                "matmul_q_mv"
            };
            assert_eq!(
                gpu.qmm_kernel(1, 37),
                want,
                "no_subgroups={no_subgroups}, {:?}",
                gpu.report
            );
            assert!(!no_subgroups || want == "matmul_q_mv");
        }
        if flavour == Some("rows_sg") && gpu.report.name.contains("llvmpipe") {
            // lavapipe's subgroups have 8 lanes (AVX2) or 4 (SSE only). One row of x that fits
            // a uniform binding is read through uniform views (the cases below with m = 1 run
            // that kernel, with and without the norm), a longer one through storage views.
            let long = gpu.report.max_uniform_buffer_binding_size as u32 / 4 + 32;
            let want = match (no_subgroups, gpu.report.subgroup_max_size) {
                (true, _) => ["matmul_q_rows"; 4],
                (false, 4) => [
                    "matmul_q_rows_sg4_m1_x512",
                    "matmul_q_rows_sg4_m1",
                    "matmul_q_rows_sg4",
                    "matmul_q_rows_sg4_wide",
                ],
                _ => [
                    "matmul_q_rows_sg8_m1_x512",
                    "matmul_q_rows_sg8_m1",
                    "matmul_q_rows_sg8",
                    "matmul_q_rows_sg8_wide",
                ],
            };
            let got = [
                gpu.qmm_kernel(1, 512),
                gpu.qmm_kernel(1, long),
                gpu.qmm_kernel(15, 512),
                gpu.qmm_kernel(16, 512),
            ];
            assert_eq!(got, want, "{:?}", gpu.report);
        }
        let mut rng = SplitMix64(123);
        for t in [GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4K, GgmlType::Q6K] {
            for (rows, k, m) in [(37usize, 512usize, 1usize), (13, 256, 3), (70, 768, 17)] {
                let raw = random_blocks(t, rows * k / t.block_elems(), &mut rng);
                let w = gpu.upload_weight("w", t, rows, k, &raw).unwrap();
                let wd = dequantize(t, &raw, rows * k).unwrap();
                let (x, y0, bias, g) = (
                    rng.vec_f32(m * k),
                    rng.vec_f32(m * rows),
                    rng.vec_f32(rows),
                    rng.vec_f32(k),
                );
                // Large enough to matter (mean x^2 is about 1/3): a dropped eps fails.
                let eps = 0.05;
                let xn = rmsnorm_rows(&x, &g, k, eps);
                let (bb, gb) = (gpu.upload("bias", &bias), gpu.upload("norm", &g));
                for case in [
                    "add",
                    "silu-mul",
                    "bias",
                    "norm+add",
                    "norm+silu-mul",
                    "norm+bias",
                ] {
                    let norm = case.starts_with("norm+").then_some((&gb, eps));
                    let op = case.trim_start_matches("norm+");
                    let fuse = match op {
                        "add" => Fusion {
                            epilogue: Epilogue::Add,
                            norm,
                            ..Default::default()
                        },
                        "silu-mul" => Fusion {
                            epilogue: Epilogue::SiluMul,
                            norm,
                            ..Default::default()
                        },
                        _ => Fusion {
                            bias: Some(&bb),
                            norm,
                            ..Default::default()
                        },
                    };
                    let prod = matmul_nt(if norm.is_some() { &xn } else { &x }, &wd, m, rows, k);
                    let want: Vec<f32> = (0..m * rows)
                        .map(|i| match op {
                            "add" => y0[i] + prod[i],
                            "silu-mul" => y0[i] / (1.0 + (-y0[i]).exp()) * prod[i],
                            _ => prod[i] + bias[i % rows],
                        })
                        .collect();
                    let (xb, yb) = (gpu.upload("x", &x), gpu.upload("y", &y0));
                    let mut rec = gpu.new_recorder("test");
                    gpu.encode_matmul_quant(&mut rec, &xb, &w, &yb, m as u32, rows as u32, 0, fuse)
                        .unwrap();
                    gpu.submit(rec);
                    let got = pollster::block_on(gpu.read::<f32>(&yb, m * rows)).unwrap();
                    let err = max_scaled_err(&got, &want);
                    assert!(
                        err < 1e-5,
                        "{} {case} rows={rows} k={k} m={m} kernel {flavour:?}: max rel err {err}",
                        t.name()
                    );
                }
            }
        }
    }
}

/// Each row of x [.., k] RMS-normed with weight g (the CPU reference of the folded norm).
fn rmsnorm_rows(x: &[f32], g: &[f32], k: usize, eps: f32) -> Vec<f32> {
    x.chunks(k)
        .flat_map(|row| {
            let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f32>() / k as f32 + eps).sqrt();
            row.iter().zip(g).map(move |(v, w)| v * inv * w)
        })
        .collect()
}

/// Q4_0 and Q5_0 blocks re-encoded as Q8_0 (how the GPU joins a layer's mixed-format projections)
/// dequantize to exactly the same values; other formats are not repacked.
#[test]
fn repack_as_q8_0_is_lossless() {
    use creme_core::model::quant::repack_as_q8_0;
    let mut rng = SplitMix64(8);
    for t in [GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0] {
        let raw = random_blocks(t, 40, &mut rng);
        let repacked = repack_as_q8_0(t, &raw).unwrap();
        assert_eq!(repacked.len(), 40 * 34);
        assert_eq!(
            dequantize(GgmlType::Q8_0, &repacked, 40 * 32).unwrap(),
            dequantize(t, &raw, 40 * 32).unwrap(),
            "{}",
            t.name()
        );
    }
    for t in [GgmlType::Q4_1, GgmlType::Q5_1, GgmlType::Q4K, GgmlType::F16] {
        assert!(
            repack_as_q8_0(t, &random_blocks(t, 2, &mut rng)).is_none(),
            "{}",
            t.name()
        );
    }
}

/// A weight uploaded in chunks of `per` rows, one buffer each, as `upload_weight` splits a tensor
/// over the binding limit.
fn split_weight(
    gpu: &creme_core::Gpu,
    t: GgmlType,
    rows: usize,
    cols: usize,
    raw: &[u8],
    per: usize,
) -> creme_core::gpu::GpuWeight {
    let part = creme_core::gpu::WeightUpload {
        name: "split",
        dtype: t,
        rows,
        cols,
        bytes: raw,
    };
    gpu.upload_weight_in_chunks(&part, per).unwrap()
}
