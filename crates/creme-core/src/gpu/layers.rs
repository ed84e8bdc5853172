//! Encoders for the transformer's small kernels (rope, attention, argmax, log-probabilities,
//! Adam).
//! Each records one dispatch into the caller's encoder; the forward pass chains them into a
//! single submission.

use bytemuck::{Pod, Zeroable};

use super::key::{KernelKey, KvType};
use super::wgsl::{ADAM_WG, DECODE_ATTENTION_CHUNK, QKV_ROPE_WG};
use super::Gpu;

/// Where the joined projections of a chunk go (see `shaders/qkv_rope.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct QkvRopeParams {
    pub rows: u32,
    pub t: u32,
    pub q_heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub style: u32,
    pub has_bias: u32,
    pub capacity: u32,
    pub cache_len: u32,
    pub _p: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct DecodeAttentionParams {
    pub batch: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub ctx: u32,
    pub p0: u32,
    pub scale: f32,
    pub splits: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct AttentionParams {
    pub batch: u32,
    pub t: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub ctx: u32,
    pub p0: u32,
    pub scale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct EwParams {
    pub n: u32,
    pub a: u32,
    pub b: u32,
    pub c: u32,
}

// Where the model's loader checks head sizes against it.
pub use super::wgsl::MAX_ATTENTION_HEAD_DIM;

/// One layer's KV cache as the attention kernels bind it: keys, values, and whether they hold
/// f16s (then the kernels' `_kv16` variants run).
#[derive(Clone, Copy)]
pub(crate) struct KvBuffers<'a> {
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub f16: bool,
}

impl KvBuffers<'_> {
    /// The cache's element type, which picks the kernels' variant.
    fn kv(&self) -> KvType {
        if self.f16 {
            KvType::F16
        } else {
            KvType::F32
        }
    }
}

impl Gpu {
    /// Bias and rope of the joined projections `qkv`: queries into `q`, keys and values into the
    /// cache; one dispatch. `bias` is read only when `params.has_bias` is 1.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode_qkv_rope(
        &self,
        enc: &mut crate::gpu::Recorder,
        qkv: &wgpu::Buffer,
        bias: &wgpu::Buffer,
        pos: &wgpu::Buffer,
        table: &wgpu::Buffer,
        q: &wgpu::Buffer,
        kv: KvBuffers<'_>,
        params: QkvRopeParams,
    ) {
        let per_row = (params.q_heads + params.kv_heads) * params.head_dim / 2
            + params.kv_heads * params.head_dim;
        let p = self.uniform("qkv_rope", &params);
        self.dispatch(
            enc,
            KernelKey::QkvRope(kv.kv()),
            &[qkv, bias, pos, table, q, kv.k, kv.v],
            &p,
            self.grid((params.rows * per_row).div_ceil(QKV_ROPE_WG)),
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode_attention(
        &self,
        enc: &mut crate::gpu::Recorder,
        q: &wgpu::Buffer,
        kv: KvBuffers<'_>,
        pad: &wgpu::Buffer,
        out: &wgpu::Buffer,
        params: AttentionParams,
    ) {
        if params.t == 1 && self.split_attention {
            return self.encode_decode_attention(enc, q, kv, pad, out, params);
        }
        let groups = params.batch * params.t * params.heads;
        let p = self.uniform("attention", &params);
        self.dispatch(
            enc,
            self.attention_kernel(params.head_dim, kv.kv()),
            &[q, kv.k, kv.v, pad, out],
            &p,
            self.grid(groups),
        );
    }

    /// The prompt attention kernel: on CPU adapters whose subgroups have one size, the flavour
    /// that shares what every lane reads through subgroup operations, built for the head size
    /// (a multiple of 4: it reads keys as vec4s; native only).
    fn attention_kernel(&self, head_dim: u32, kv: KvType) -> KernelKey {
        match self.fixed_subgroup_lanes() {
            Some(lanes @ (4 | 8 | 16 | 32))
                if self.cpu_adapter && head_dim % 4 == 0 && cfg!(not(target_arch = "wasm32")) =>
            {
                KernelKey::AttentionSg {
                    lanes,
                    head_dim,
                    kv,
                }
            }
            _ => KernelKey::Attention(kv),
        }
    }

    /// Attention of one query per sequence split over the context in chunks of
    /// DECODE_ATTENTION_CHUNK keys: a workgroup per (chunk, head, sequence), then a pass that
    /// merges the chunks (shaders/attention_decode.wgsl).
    #[allow(clippy::too_many_arguments)]
    fn encode_decode_attention(
        &self,
        enc: &mut crate::gpu::Recorder,
        q: &wgpu::Buffer,
        kv: KvBuffers<'_>,
        pad: &wgpu::Buffer,
        out: &wgpu::Buffer,
        a: AttentionParams,
    ) {
        let splits = (a.p0 + 1).div_ceil(DECODE_ATTENTION_CHUNK);
        // Sized for the whole cache, so that one buffer (and bind group) serves every step.
        let most = a.ctx.div_ceil(DECODE_ATTENTION_CHUNK).max(splits) as u64;
        let part_words = a.batch as u64 * a.heads as u64 * most * (2 + a.head_dim as u64);
        let part = self.workspace("attention splits", part_words * 4);
        let p = self.uniform(
            "decode attention",
            &DecodeAttentionParams {
                batch: a.batch,
                heads: a.heads,
                kv_heads: a.kv_heads,
                head_dim: a.head_dim,
                ctx: a.ctx,
                p0: a.p0,
                scale: a.scale,
                splits,
            },
        );
        let buffers = [q, kv.k, kv.v, pad, &part, out];
        let (split, merge) = (KernelKey::AttnSplit(kv.kv()), KernelKey::AttnMerge(kv.kv()));
        self.dispatch(enc, split, &buffers, &p, [splits, a.heads, a.batch]);
        self.dispatch(enc, merge, &buffers, &p, [a.heads, a.batch, 1]);
    }

    /// dst[row] = log_softmax(logits[row])[targets[row]] for `rows` rows of `width`.
    pub(crate) fn encode_row_logprob(
        &self,
        enc: &mut crate::gpu::Recorder,
        logits: &wgpu::Buffer,
        targets: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        rows: u32,
        width: u32,
    ) {
        let pb = self.uniform(
            "row_logprob",
            &EwParams {
                n: rows,
                a: width,
                b: 0,
                c: 0,
            },
        );
        self.dispatch(
            enc,
            KernelKey::RowLogprob,
            &[logits, targets, dst],
            &pb,
            self.grid(rows),
        );
    }

    /// Log-probabilities of `targets` under `rows` rows of logits, read back.
    pub async fn token_logprobs(
        &self,
        logits: &wgpu::Buffer,
        targets: &[u32],
        width: usize,
    ) -> Result<Vec<f32>, crate::error::GpuError> {
        let tb = self.upload("targets", targets);
        let out = self.storage("logprobs", (targets.len() * 4) as u64);
        // Recorded after the pending ops that produce the logits.
        self.record(|enc| {
            self.encode_row_logprob(enc, logits, &tb, &out, targets.len() as u32, width as u32)
        });
        self.read::<f32>(&out, targets.len()).await
    }

    /// dst[row] = a token sampled from the row with temperature and top-p, given the uniform draw
    /// draws[row] (the rule of `sampling::sample_row`), for `rows` rows of `width`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode_sample(
        &self,
        enc: &mut crate::gpu::Recorder,
        logits: &wgpu::Buffer,
        draws: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        rows: u32,
        width: u32,
        temperature: f32,
        top_p: f32,
    ) {
        let pb = self.uniform(
            "sample_top_p",
            &EwParams {
                n: rows,
                a: width,
                b: temperature.to_bits(),
                c: top_p.to_bits(),
            },
        );
        self.dispatch(
            enc,
            KernelKey::SampleTopP,
            &[logits, draws, dst],
            &pb,
            self.grid(rows),
        );
    }

    /// dst[row] = index of the first maximum of the row (as u32 bits), for `rows` rows of `width`:
    /// each row's slices of ARGMAX_SLICE values by a workgroup each, then a pass over their bests.
    pub(crate) fn encode_argmax(
        &self,
        enc: &mut crate::gpu::Recorder,
        logits: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        rows: u32,
        width: u32,
    ) {
        let slices = width.div_ceil(ARGMAX_SLICE).clamp(1, 256);
        let parts = self.workspace("argmax partials", rows as u64 * slices as u64 * 8);
        let pb = self.uniform(
            "argmax",
            &EwParams {
                n: rows,
                a: width,
                b: slices,
                c: 0,
            },
        );
        self.dispatch(
            enc,
            KernelKey::ArgmaxPart,
            &[logits, logits, &parts],
            &pb,
            [slices, rows, 1],
        );
        self.dispatch(
            enc,
            KernelKey::Argmax,
            &[&parts, &parts, dst],
            &pb,
            self.grid(rows),
        );
    }
}

/// Values of a row one workgroup of the greedy pick's first pass scans.
const ARGMAX_SLICE: u32 = 4096;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct AdamParams {
    pub n: u32,
    pub _p0: u32,
    pub lr: f32,
    pub b1: f32,
    pub b2: f32,
    pub eps: f32,
    /// Multiplies the raw gradient (e.g. the MSE's 2 / count).
    pub scale: f32,
    pub bc1: f32,
    pub bc2: f32,
    pub _p1: [u32; 3],
}

impl Gpu {
    /// One Adam update of `w` from `grad` with moment buffers `m`, `v`.
    pub fn encode_adam(
        &self,
        enc: &mut crate::gpu::Recorder,
        w: &wgpu::Buffer,
        grad: &wgpu::Buffer,
        m: &wgpu::Buffer,
        v: &wgpu::Buffer,
        p: AdamParams,
    ) {
        let pb = self.uniform("adam", &p);
        self.dispatch(
            enc,
            KernelKey::Adam,
            &[w, grad, m, v],
            &pb,
            self.grid(p.n.div_ceil(ADAM_WG)),
        );
    }
}
