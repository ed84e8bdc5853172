//! Kernel registry: each WGSL kernel is compiled into a pipeline once, on first use, and kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::bindings::{views, View, UNIFORM_VIEW_BASE};
use super::key::{KernelKey, KvType, Qmm, RowsSgShape};
use super::wgsl::{self, Shared};
use crate::quant::GgmlType;

/// A kernel's WGSL source and entry point: the constants it shares with Rust, then its family's
/// source from `shaders/` (sources that share helpers are assembled here, so that each `.wgsl`
/// file holds one family). None for a key no kernel is built for (a subgroup size or head size
/// the generated helpers do not take, a format without a section).
pub(crate) fn kernel_source(key: KernelKey) -> Option<(String, &'static str)> {
    let (body, entry) = body_source(key)?;
    let src = wgsl::prelude(&shared_constants(key)) + &body;
    match key.kv() {
        Some(KvType::F16) => Some((kv16_source(&src)?, entry)),
        _ => Some((src, entry)),
    }
}

/// The constants a kernel reads from Rust, by their names in its WGSL.
pub(crate) fn shared_constants(key: KernelKey) -> Vec<Shared> {
    match key {
        KernelKey::MatmulF32 => vec![
            Shared::u32("TM", wgsl::MATMUL_F32_TILE),
            Shared::u32("TN", wgsl::MATMUL_F32_TILE),
        ],
        KernelKey::Quant(_, format) => vec![
            Shared::u32("WG", wgsl::QMM_WG),
            Shared::u32("MT", wgsl::QMM_ROWS_PER_WG),
            Shared::u32("MV", wgsl::QMM_MV_MAX_ROWS),
            Shared::u32("MV_COLS", wgsl::QMM_MV_COLS_PER_WG),
            Shared::u32("TILE", wgsl::QMM_TILE),
            Shared::u32("UNIT_BYTES", format.gpu_unit_bytes() as u32),
        ],
        KernelKey::QkvRope(_) => vec![Shared::u32("WG", wgsl::QKV_ROPE_WG)],
        KernelKey::Attention(_) | KernelKey::AttentionSg { .. } => {
            vec![Shared::u32("WG", wgsl::ATTENTION_WG)]
        }
        KernelKey::AttnSplit(_) | KernelKey::AttnMerge(_) => {
            vec![Shared::u32("CH", wgsl::DECODE_ATTENTION_CHUNK)]
        }
        KernelKey::Adam => vec![Shared::u32("WG", wgsl::ADAM_WG)],
        KernelKey::Argmax
        | KernelKey::ArgmaxPart
        | KernelKey::RowLogprob
        | KernelKey::SampleTopP => {
            vec![Shared::f32("NUCLEUS_SPAN", crate::sampling::NUCLEUS_SPAN)]
        }
    }
}

/// A kernel's source from `shaders/` (and the helpers generated for it), and its entry point.
fn body_source(key: KernelKey) -> Option<(String, &'static str)> {
    let file = |src: &str, entry| Some((src.to_string(), entry));
    match key {
        KernelKey::MatmulF32 => file(include_str!("../../../../shaders/matmul_f32.wgsl"), "main"),
        KernelKey::Quant(qmm, format) => {
            let mut src = quant_matmul_source(format)?;
            match qmm {
                Qmm::MatvecSg => {
                    src += include_str!("../../../../shaders/matmul_quant_subgroup.wgsl")
                }
                Qmm::RowsSg {
                    lanes,
                    shape,
                    x_len,
                } => src += &rows_subgroup_source(lanes, shape, x_len)?,
                _ => {}
            }
            Some((src, qmm.entry()))
        }
        KernelKey::QkvRope(_) => file(include_str!("../../../../shaders/qkv_rope.wgsl"), "main"),
        KernelKey::Attention(_) => file(ATTENTION, "main"),
        KernelKey::AttentionSg {
            lanes, head_dim, ..
        } => Some((
            ATTENTION.to_string() + &attention_subgroup_source(lanes, head_dim)?,
            "main_sg",
        )),
        KernelKey::AttnSplit(_) => file(ATTENTION_DECODE, "attn_split"),
        KernelKey::AttnMerge(_) => file(ATTENTION_DECODE, "attn_merge"),
        KernelKey::Adam => file(include_str!("../../../../shaders/adam.wgsl"), "main"),
        KernelKey::Argmax => file(ELEMENTWISE, "argmax"),
        KernelKey::ArgmaxPart => file(ELEMENTWISE, "argmax_part"),
        KernelKey::RowLogprob => file(ELEMENTWISE, "row_logprob"),
        KernelKey::SampleTopP => file(ELEMENTWISE, "sample_top_p"),
    }
}

const ATTENTION: &str = include_str!("../../../../shaders/attention.wgsl");
const ATTENTION_DECODE: &str = include_str!("../../../../shaders/attention_decode.wgsl");
const ELEMENTWISE: &str = include_str!("../../../../shaders/elementwise.wgsl");

/// A KV-cache kernel's source with the cache's element type switched to f16: the line
/// `alias KV = f32;` that such kernels declare becomes f16, behind `enable f16;` (the adapter has
/// shader-f16 wherever the cache is F16). None for a kernel that does not read the cache.
fn kv16_source(src: &str) -> Option<String> {
    const F32: &str = "\nalias KV = f32;\n";
    src.contains(F32).then(|| {
        format!(
            "enable f16;\n{}",
            src.replacen(F32, "\nalias KV = f16;\n", 1)
        )
    })
}

/// The quantized matmul for one GGML format: the shared body plus that format's section of
/// matmul_quant_formats.wgsl (with the sections the K formats, the half formats and the 32-value
/// formats share, and the generic piece_heads where the format has none of its own).
fn quant_matmul_source(format: GgmlType) -> Option<String> {
    let formats = include_str!("../../../../shaders/matmul_quant_formats.wgsl");
    let section = |name: &str| -> Option<&str> {
        let marker = format!("//@format {name}\n");
        let start = formats.find(&marker)? + marker.len();
        let end = formats[start..]
            .find("//@format ")
            .map(|e| start + e)
            .unwrap_or(formats.len());
        Some(&formats[start..end])
    };
    let format = format.name();
    let mut src = include_str!("../../../../shaders/matmul_quant.wgsl").to_string();
    if format.ends_with("_K") {
        src.push_str(section("K_SCALES")?);
    }
    src.push_str(section(format)?);
    match format {
        "F16" | "BF16" => src.push_str(section("HALF")?),
        "Q8_0" | "Q4_0" | "Q4_1" => src.push_str(section("QUAD_HEADS4")?),
        "Q5_0" | "Q5_1" => src.push_str(section("QUAD_HEADS8")?),
        _ => {}
    }
    if !src.contains("fn piece_heads(") {
        src.push_str(section("PIECE_HEADS")?);
    }
    Some(src)
}

/// `main_rows_sg` for subgroups of `lanes` lanes in `shape`, and the dot products of a lane's 32
/// quants with a piece of x spread over the subgroup, its broadcasts unrolled (WGSL wants the
/// lane of `subgroupBroadcast` as a constant; a loop of shuffles would cost a load-like lane loop
/// each on lavapipe): x . q over the piece's two halves (lanes below SG / 2 hold the first 16
/// elements), and with `sums` the halves' sums of x from the same broadcasts. With `x_len` (k, for
/// one row of x) x and the norm weight are read through uniform views of their first k elements.
fn rows_subgroup_source(lanes: u32, shape: RowsSgShape, x_len: Option<u32>) -> Option<String> {
    let one_row = shape.x_rows == 1;
    if !matches!(lanes, 4 | 8 | 16 | 32) || x_len.is_some_and(|k| k % 4 != 0 || !one_row) {
        return None;
    }
    let (rows_per_lane, x_rows) = (shape.rows_per_lane, shape.x_rows);
    let full = shape.all_rows;
    let views = match x_len {
        Some(k) => {
            let (xb, gb, n) = (UNIFORM_VIEW_BASE, UNIFORM_VIEW_BASE + 4, k / 4);
            format!(
                "@group(0) @binding({xb}) var<uniform> x_vec4: array<vec4<f32>, {n}>;\n\
                 @group(0) @binding({gb}) var<uniform> norm_vec4: array<vec4<f32>, {n}>;\n"
            )
        }
        None => "@group(0) @binding(0) var<storage, read> x_vec4: array<vec4<f32>>;\n\
                 @group(0) @binding(4) var<storage, read> norm_vec4: array<vec4<f32>>;\n"
            .to_string(),
    };
    let mut src = format!(
        "{views}const SG: u32 = {lanes}u;\nconst RPL: u32 = {rows_per_lane}u;\nconst MTS: u32 = {x_rows}u;\n\
         const ALL_ROWS: bool = {full};\n\
         fn dot_bcast(xl: ptr<function, array<f32, XL>>, wv: ptr<function, array<array<f32, 32>, RPL>>, row: u32, sums: bool) -> vec4<f32> {{\n\
         \x20   var a = vec4<f32>(0.0);\n\
         \x20   for (var j = 0u; j < XL; j++) {{\n\
         \x20       let v = (*xl)[j];\n"
    );
    for i in 0..lanes {
        let (dot, sum) = if i < lanes / 2 {
            ("x", "z")
        } else {
            ("y", "w")
        };
        src += &format!(
            "        let b{i} = subgroupBroadcast(v, {i}u);\n\
             \x20       a.{dot} = fma(b{i}, (*wv)[row][{i}u * XL + j], a.{dot});\n\
             \x20       if (sums) {{ a.{sum} += b{i}; }}\n"
        );
    }
    src += "    }\n    return a;\n}\n";
    src += include_str!("../../../../shaders/matmul_quant_rows_subgroup.wgsl");
    Some(src)
}

/// `main_sg` of the prompt attention for subgroups of `lanes` lanes and heads of `head_dim`
/// dimensions: both as constants, and its helpers with the broadcasts unrolled. `dot_q`: a
/// query's SG dimensions spread over the subgroup (one per lane) dotted with a key's from `kb`.
/// `weigh_values`: the weights of up to SG keys (one per lane, `count` of them real) applied to
/// the values from `vb` (one key every `kvw`), this lane's output dimensions lid, lid + 64, ...
/// into acc; returns their sum. A constant head_dim matters on CPU adapters, which run both
/// sides of every branch: loops and guards sized for 256 dimensions cost Qwen's 64 four times.
fn attention_subgroup_source(lanes: u32, head_dim: u32) -> Option<String> {
    let too_wide = head_dim as usize > wgsl::MAX_ATTENTION_HEAD_DIM;
    if !matches!(lanes, 4 | 8 | 16 | 32) || head_dim == 0 || head_dim % 4 != 0 || too_wide {
        return None;
    }
    // The key's SG dimensions as SG / 4 vec4 loads (kb is a multiple of 4: rows of the cache and
    // heads start on multiples of head_dim): on lavapipe a vec4 load costs about half of four
    // scalar ones.
    let mut src = format!(
        "const SG: u32 = {lanes}u;\nconst HD: u32 = {head_dim}u;\n\
         @group(0) @binding(1) var<storage, read> kc4: array<vec4<KV>>; // kc as vec4s\n\
         fn dot_q(v: f32, kb: u32) -> f32 {{\n    var a = 0.0;\n"
    );
    for c in 0..lanes / 4 {
        src += &format!("    let k{c} = vec4<f32>(kc4[kb / 4u + {c}u]);\n");
        for (i, lane) in ["x", "y", "z", "w"].iter().enumerate() {
            let l = 4 * c + i as u32;
            src += &format!("    a = fma(subgroupBroadcast(v, {l}u), k{c}.{lane}, a);\n");
        }
    }
    src += "    return a;\n}\n";
    src += "fn weigh_values(wl: f32, count: u32, vb: u32, kvw: u32, lid: u32, acc: ptr<function, vec4<f32>>) -> f32 {\n    var sum = 0.0;\n";
    for i in 0..lanes {
        src += &format!(
            "    if ({i}u < count) {{\n\
             \x20       let wi = subgroupBroadcast(wl, {i}u);\n\
             \x20       let o = vb + {i}u * kvw;\n\
             \x20       sum += wi;\n\
             \x20       if (lid < HD) {{ (*acc).x = fma(wi, f32(vc[o]), (*acc).x); }}\n\
             \x20       if (WG < HD && lid + WG < HD) {{ (*acc).y = fma(wi, f32(vc[o + WG]), (*acc).y); }}\n\
             \x20       if (2u * WG < HD && lid + 2u * WG < HD) {{ (*acc).z = fma(wi, f32(vc[o + 2u * WG]), (*acc).z); }}\n\
             \x20       if (3u * WG < HD && lid + 3u * WG < HD) {{ (*acc).w = fma(wi, f32(vc[o + 3u * WG]), (*acc).w); }}\n\
             \x20   }}\n"
        );
    }
    src += "    return sum;\n}\n";
    src += include_str!("../../../../shaders/attention_subgroup.wgsl");
    Some(src)
}

/// A compiled kernel: its pipeline and the layout of its bindings.
pub(crate) struct Kernel {
    /// The key's name (labels, profiles).
    pub(crate) name: String,
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) bind_layout: wgpu::BindGroupLayout,
    /// Its views of storage bindings (bound from the same buffers).
    pub(crate) views: Vec<View>,
}

pub(crate) struct KernelRegistry {
    kernels: Mutex<HashMap<KernelKey, Arc<Kernel>>>,
}

impl KernelRegistry {
    pub(crate) fn new() -> Self {
        KernelRegistry {
            kernels: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, gpu: &super::Gpu, key: KernelKey) -> Arc<Kernel> {
        let mut map = self.kernels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = map.get(&key) {
            return k.clone();
        }
        let name = key.to_string();
        let (src, entry) = kernel_source(key)
            .unwrap_or_else(|| panic!("no kernel '{name}' ({key:?}; a bug in creme-core)"));
        let views = views(&src);
        let (pipeline, bind_layout) = gpu.new_pipeline(&name, src, entry);
        let kernel = Arc::new(Kernel {
            name,
            pipeline,
            bind_layout,
            views,
        });
        map.insert(key, kernel.clone());
        kernel
    }
}

impl super::Gpu {
    /// Record one dispatch of kernel `key` over `storage` (bindings 0..) with `params` (the last
    /// binding), through a cached bind group.
    pub(crate) fn dispatch(
        &self,
        enc: &mut crate::gpu::Recorder,
        key: KernelKey,
        storage: &[&wgpu::Buffer],
        params: &super::ParamSlot,
        groups: [u32; 3],
    ) {
        self.dispatch_for(enc, key, None, storage, params, groups)
    }

    /// [`Gpu::dispatch`] on behalf of `role` (a weight's name), which profiles keep apart.
    pub(crate) fn dispatch_for(
        &self,
        enc: &mut crate::gpu::Recorder,
        key: KernelKey,
        role: Option<&str>,
        storage: &[&wgpu::Buffer],
        params: &super::ParamSlot,
        groups: [u32; 3],
    ) {
        // A binding over the adapter's limit would be a wgpu validation error: refuse it by name.
        let limit = self.limits.max_storage_buffer_binding_size as u64;
        if let Some((i, b)) = storage.iter().enumerate().find(|(_, b)| b.size() > limit) {
            self.set_fault(crate::GpuError::TooLarge {
                tensor: format!("binding {i} of kernel {key}"),
                bytes: b.size(),
                limit,
            });
            return;
        }
        let kernel = self.kernels.get(self, key);
        let bind = self.bind_group(&kernel, storage, params);
        // Consecutive dispatches share one compute pass; a profiled one gets a pass of its own
        // (timestamps are written per pass).
        let stamps = self.pass_timestamps(&kernel.name, role);
        let pass = match &stamps {
            Some((set, i)) => enc.timed_pass(&kernel.name, set, *i),
            None => enc.pass(),
        };
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bind, &[params.offset()]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        if stamps.is_some() {
            enc.end_pass();
        }
        self.count_dispatch();
    }

    /// Split `total` workgroups into a 2-D grid within the per-dimension limit.
    pub(crate) fn grid(&self, total: u32) -> [u32; 3] {
        let max = self.limits.max_compute_workgroups_per_dimension.max(1);
        if total <= max {
            [total.max(1), 1, 1]
        } else {
            [max, total.div_ceil(max), 1]
        }
    }
}
