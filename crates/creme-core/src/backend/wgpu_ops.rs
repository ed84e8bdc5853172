//! The wgpu backend: each op records its kernels into the pending encoder (one submission per
//! readback); per-op scratch buffers come from a workspace reused across layers and tokens.

use super::{
    AdamStep, AttnStep, Backend, BackendKind, BlockShape, DType, Embedding, KvLayer, LayerWeights,
    PendingRead, PickRule, Storage, Tensor, Weight,
};
use crate::error::{GpuError, ModelError};
use crate::gpu::layers::{AdamParams, AttentionParams, KvBuffers, QkvRopeParams};
use crate::gpu::ops::{Epilogue, Fusion};
use crate::gpu::{Gpu, GpuWeight};
use crate::quant::GgmlType;
use crate::quant::{dequantize, from_gpu_layout};

impl Gpu {
    /// A reusable scratch buffer of at least `bytes` (by name), grown when too small. Ops run in
    /// recording order, so reusing one across ops and tokens is safe.
    pub(crate) fn workspace(&self, name: &'static str, bytes: u64) -> wgpu::Buffer {
        let mut ws = self.workspaces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = ws.get(name) {
            if b.size() >= bytes {
                return b.clone();
            }
        }
        let b = self.storage(name, bytes);
        ws.insert(name, b.clone());
        b
    }

    /// Queries (roped) into `q`, keys (roped) and values into the cache, from the projections
    /// stored back to back (`qkv`, see `Gpu::upload_weight_group`), given the residual stream `x`:
    /// the attention norm and the projections as one matmul, then bias, rope and the cache writes
    /// in one kernel.
    #[allow(clippy::too_many_arguments)]
    fn encode_qkv_joined(
        &self,
        enc: &mut crate::gpu::Recorder,
        w: &LayerWeights,
        s: &BlockShape,
        st: &AttnStep<'_>,
        qkv: &GpuWeight,
        x: &wgpu::Buffer,
        q: &wgpu::Buffer,
        cache: KvBuffers<'_>,
    ) -> Result<(), ModelError> {
        let rows = st.active * st.t;
        let joined = self.workspace("qkv", words(rows * qkv.rows));
        let norm = Some((w.attn_norm.wgpu()?, s.rms_eps));
        self.encode_matmul_quant(
            enc,
            x,
            qkv,
            &joined,
            rows as u32,
            qkv.rows as u32,
            0,
            Fusion {
                norm,
                ..Default::default()
            },
        )?;
        let bias = w.qkv_bias.as_ref().map(|b| b.wgpu()).transpose()?;
        self.rope_into_cache(enc, &joined, bias, s, st, q, cache)
    }

    /// As [`Gpu::encode_qkv_joined`] for projections stored apart (formats that cannot share a
    /// buffer): three matmuls (each with the norm and its bias folded in) write their columns of
    /// one [q | k | v] workspace, then the same rope and cache write.
    #[allow(clippy::too_many_arguments)]
    fn encode_qkv_apart(
        &self,
        enc: &mut crate::gpu::Recorder,
        w: &LayerWeights,
        s: &BlockShape,
        st: &AttnStep<'_>,
        x: &wgpu::Buffer,
        q: &wgpu::Buffer,
        cache: KvBuffers<'_>,
    ) -> Result<(), ModelError> {
        let rows = st.active * st.t;
        let (qw, kvw) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
        let width = qw + 2 * kvw;
        let joined = self.workspace("qkv", words(rows * width));
        let norm = Some((w.attn_norm.wgpu()?, s.rms_eps));
        for (proj, bias, col0) in [
            (&w.q, &w.q_bias, 0),
            (&w.k, &w.k_bias, qw),
            (&w.v, &w.v_bias, qw + kvw),
        ] {
            let fuse = Fusion {
                bias: bias_of(bias)?,
                norm,
                ..Default::default()
            };
            let (m, ldy) = (rows as u32, width as u32);
            self.encode_matmul_quant(enc, x, proj.wgpu()?, &joined, m, ldy, col0 as u32, fuse)?;
        }
        self.rope_into_cache(enc, &joined, None, s, st, q, cache)
    }

    /// Bias (where given), rope and the cache write of one [q | k | v] row per token: queries
    /// into `q`, keys and values into the cache at the chunk's positions (shaders/qkv_rope.wgsl).
    #[allow(clippy::too_many_arguments)]
    fn rope_into_cache(
        &self,
        enc: &mut crate::gpu::Recorder,
        joined: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        s: &BlockShape,
        st: &AttnStep<'_>,
        q: &wgpu::Buffer,
        cache: KvBuffers<'_>,
    ) -> Result<(), ModelError> {
        let params = QkvRopeParams {
            rows: (st.active * st.t) as u32,
            t: st.t as u32,
            q_heads: s.n_heads as u32,
            kv_heads: s.n_kv_heads as u32,
            head_dim: s.head_dim as u32,
            style: s.interleaved_rope as u32,
            has_bias: bias.is_some() as u32,
            capacity: st.capacity as u32,
            cache_len: st.cache_len as u32,
            _p: [0; 3],
        };
        let (pos, table) = (st.pos.wgpu()?, st.rope.wgpu()?);
        let bias = bias.unwrap_or(joined);
        self.encode_qkv_rope(enc, joined, bias, pos, table, q, cache, params);
        Ok(())
    }

    /// y = x · Wᵀ with the fusions of `fuse` (the weight must be this backend's).
    fn matmul_into(
        &self,
        enc: &mut crate::gpu::Recorder,
        x: &wgpu::Buffer,
        w: &Weight,
        y: &wgpu::Buffer,
        rows: usize,
        fuse: Fusion<'_>,
    ) -> Result<(), ModelError> {
        let w = w.wgpu()?;
        Ok(self.encode_matmul_quant(enc, x, w, y, rows as u32, w.rows as u32, 0, fuse)?)
    }
}

/// An optional bias tensor's buffer.
fn bias_of(b: &Option<Tensor>) -> Result<Option<&wgpu::Buffer>, ModelError> {
    b.as_ref().map(|t| t.wgpu()).transpose()
}

fn words(n: usize) -> u64 {
    (n * 4) as u64
}

/// A layer's KV cache as the kernels bind it.
fn kv_buffers<'a>(k: &'a Tensor, v: &'a Tensor) -> Result<KvBuffers<'a>, ModelError> {
    Ok(KvBuffers {
        k: k.wgpu()?,
        v: v.wgpu()?,
        f16: k.dtype == DType::F16,
    })
}

/// Bytes of n elements of `dtype` in a buffer, rounded up to whole words.
fn device_bytes(dtype: DType, n: usize) -> u64 {
    (n * dtype.bytes()).next_multiple_of(4) as u64
}

/// f32 values (or U32 bits) as `dtype`'s bytes in device memory, whole words.
fn host_to_device(dtype: DType, data: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    match dtype {
        DType::F32 | DType::U32 => bytemuck::cast_slice(data).into(),
        DType::F16 => {
            let mut out: Vec<u8> = data
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect();
            out.resize(device_bytes(dtype, data.len()) as usize, 0);
            out.into()
        }
    }
}

impl Backend for Gpu {
    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }
    fn describe(&self) -> String {
        format!(
            "wgpu: {} ({}, {})",
            self.report.name, self.report.backend, self.report.device_type
        )
    }
    fn max_tensor_bytes(&self) -> u64 {
        self.max_binding_bytes()
    }
    fn kv_dtype(&self) -> DType {
        if self.kv_f16 {
            DType::F16
        } else {
            DType::F32
        }
    }

    fn tensor(
        &self,
        label: &str,
        dtype: DType,
        rows: usize,
        width: usize,
        data: Option<&[f32]>,
    ) -> Result<Tensor, ModelError> {
        let n = rows * width;
        if data.is_some_and(|d| d.len() < n) {
            return Err(ModelError::Format(format!(
                "{label}: {} values for [{rows} x {width}]",
                data.map_or(0, |d| d.len())
            )));
        }
        let buffer = self.pooled(label, device_bytes(dtype, n), data.is_none());
        if let Some(d) = data {
            // A pooled buffer is no longer used by unsubmitted commands, so the write cannot
            // overtake a reader (see the pool).
            self.queue
                .write_buffer(&buffer, 0, &host_to_device(dtype, &d[..n]));
        }
        Ok(Tensor {
            dtype,
            rows,
            width,
            storage: Storage::Wgpu(buffer),
        })
    }

    fn write(&self, t: &mut Tensor, data: &[f32]) -> Result<(), ModelError> {
        if data.len() > t.len() {
            return Err(ModelError::Format(format!(
                "write: {} values into a tensor of {}",
                data.len(),
                t.len()
            )));
        }
        // Commands recorded before this write must see the old contents.
        self.flush();
        self.queue
            .write_buffer(t.wgpu()?, 0, &host_to_device(t.dtype, data));
        Ok(())
    }

    fn start_read(&self, t: &Tensor, n: usize) -> Result<PendingRead, ModelError> {
        let n = n.min(t.len());
        let read = Gpu::start_read(self, t.wgpu()?, 0, device_bytes(t.dtype, n) as usize)?;
        Ok(match t.dtype {
            DType::F16 => PendingRead::WgpuF16(read, n),
            DType::F32 | DType::U32 => PendingRead::Wgpu(read),
        })
    }

    async fn finish_read(&self, read: PendingRead) -> Result<Vec<f32>, ModelError> {
        match read {
            PendingRead::Wgpu(r) => Ok(bytemuck::pod_collect_to_vec(
                &Gpu::finish_read(self, r).await?,
            )),
            PendingRead::WgpuF16(r, n) => {
                let bytes = Gpu::finish_read(self, r).await?;
                Ok(bytes
                    .chunks_exact(2)
                    .take(n)
                    .map(|h| half::f16::from_le_bytes([h[0], h[1]]).to_f32())
                    .collect())
            }
            PendingRead::Ready(v) => Ok(v),
        }
    }

    fn copy_rows(
        &self,
        src: &Tensor,
        src_row: usize,
        dst: &mut Tensor,
        dst_row: usize,
        n: usize,
    ) -> Result<(), ModelError> {
        if src.width != dst.width || src_row + n > src.rows || dst_row + n > dst.rows {
            return Err(ModelError::Format(format!(
                "copy_rows: {n} rows from [{} x {}] at {src_row} into [{} x {}] at {dst_row}",
                src.rows, src.width, dst.rows, dst.width
            )));
        }
        if n == 0 {
            return Ok(());
        }
        // Buffer copies move whole words: F16 rows of an odd width would need a kernel.
        let row_bytes = src.width * src.dtype.bytes();
        if src.dtype != dst.dtype || !row_bytes.is_multiple_of(4) {
            return Err(ModelError::Format(format!(
                "copy_rows: {:?} rows of {} into {:?}: not whole words",
                src.dtype, src.width, dst.dtype
            )));
        }
        let (s, d) = (src.wgpu()?, dst.wgpu()?);
        let at = |row: usize| (row * row_bytes) as u64;
        self.record(|enc| {
            enc.encoder()
                .copy_buffer_to_buffer(s, at(src_row), d, at(dst_row), at(n))
        });
        Ok(())
    }

    fn upload_weight(
        &self,
        name: &str,
        dtype: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Weight, ModelError> {
        Ok(Weight::Wgpu(Gpu::upload_weight(
            self, name, dtype, rows, cols, bytes,
        )?))
    }

    fn upload_weight_group(
        &self,
        parts: &[crate::gpu::WeightUpload<'_>],
    ) -> Result<Vec<Weight>, ModelError> {
        Ok(Gpu::upload_weight_group(self, parts)?
            .into_iter()
            .map(Weight::Wgpu)
            .collect())
    }

    async fn weight_f32(&self, w: &Weight) -> Result<Vec<f32>, ModelError> {
        let w = w.wgpu()?;
        let mut out = Vec::with_capacity(w.rows * w.cols);
        for c in &w.chunks {
            let laid = w.dtype.gpu_bytes(c.rows, w.cols, w.row_group);
            let bytes = self.read_bytes(&c.buffer, c.byte_off, laid).await?;
            let gguf = from_gpu_layout(w.dtype, w.cols, w.row_group, c.rows, &bytes);
            out.extend(dequantize(w.dtype, &gguf, c.rows * w.cols)?);
        }
        Ok(out)
    }

    fn matmul_q(&self, x: &Tensor, w: &Weight, y: &mut Tensor, m: usize) -> Result<(), ModelError> {
        x.check("matmul_q", m, w.cols())?;
        y.check("matmul_q", m, w.rows())?;
        let (xb, yb) = (x.wgpu()?, y.wgpu()?);
        self.record(|enc| self.matmul_into(enc, xb, w, yb, m, Fusion::default()))
    }

    fn attention_block(
        &self,
        w: &LayerWeights,
        s: &BlockShape,
        x: &mut Tensor,
        kv: &mut KvLayer,
        st: &AttnStep<'_>,
    ) -> Result<(), ModelError> {
        let rows = st.active * st.t;
        x.check("attention_block", rows, s.d_model)?;
        let qw = s.n_heads * s.head_dim;
        let (q, att) = (
            self.workspace("q", words(rows * qw)),
            self.workspace("att", words(rows * qw)),
        );
        let xb = x.wgpu()?;
        let cache = kv_buffers(&kv.k, &kv.v)?;
        let pad = st.pad.wgpu()?;
        self.record(|enc| -> Result<(), ModelError> {
            match GpuWeight::joined(&[w.q.wgpu()?, w.k.wgpu()?, w.v.wgpu()?]) {
                Some(qkv) => self.encode_qkv_joined(enc, w, s, st, &qkv, xb, &q, cache)?,
                None => self.encode_qkv_apart(enc, w, s, st, xb, &q, cache)?,
            }
            let params = AttentionParams {
                batch: st.active as u32,
                t: st.t as u32,
                heads: s.n_heads as u32,
                kv_heads: s.n_kv_heads as u32,
                head_dim: s.head_dim as u32,
                ctx: st.capacity as u32,
                p0: st.cache_len as u32,
                scale: 1.0 / (s.head_dim as f32).sqrt(),
            };
            self.encode_attention(enc, &q, cache, pad, &att, params);
            // The residual add is the O projection's epilogue.
            self.matmul_into(
                enc,
                &att,
                &w.o,
                xb,
                rows,
                Fusion {
                    epilogue: Epilogue::Add,
                    ..Default::default()
                },
            )?;
            Ok(())
        })
    }

    fn mlp_act(
        &self,
        w: &LayerWeights,
        s: &BlockShape,
        x: &Tensor,
        act: &mut Tensor,
        rows: usize,
    ) -> Result<(), ModelError> {
        x.check("mlp_act", rows, s.d_model)?;
        act.check("mlp_act", rows, s.d_ff)?;
        let (xb, ab) = (x.wgpu()?, act.wgpu()?);
        self.record(|enc| -> Result<(), ModelError> {
            // act = gate projection, then act = silu(act) * up projection in the up matmul's
            // epilogue; both fold in the MLP norm.
            let norm = Some((w.ffn_norm.wgpu()?, s.rms_eps));
            self.matmul_into(
                enc,
                xb,
                &w.gate,
                ab,
                rows,
                Fusion {
                    norm,
                    ..Default::default()
                },
            )?;
            self.matmul_into(
                enc,
                xb,
                &w.up,
                ab,
                rows,
                Fusion {
                    epilogue: Epilogue::SiluMul,
                    norm,
                    ..Default::default()
                },
            )
        })
    }

    fn mlp_down_add(
        &self,
        w: &LayerWeights,
        act: &Tensor,
        x: &mut Tensor,
        rows: usize,
    ) -> Result<(), ModelError> {
        let d = w.down.rows();
        act.check("mlp_down_add", rows, w.down.cols())?;
        x.check("mlp_down_add", rows, d)?;
        let (ab, xb) = (act.wgpu()?, x.wgpu()?);
        // The residual add is the down projection's epilogue.
        self.record(|enc| {
            self.matmul_into(
                enc,
                ab,
                &w.down,
                xb,
                rows,
                Fusion {
                    epilogue: Epilogue::Add,
                    ..Default::default()
                },
            )
        })
    }

    fn head(
        &self,
        norm: &Tensor,
        head: &Weight,
        eps: f32,
        x: &Tensor,
        rows: &[usize],
    ) -> Result<Tensor, ModelError> {
        let (d, n) = (head.cols(), rows.len());
        if let Some(&bad) = rows.iter().find(|&&r| r >= x.rows) {
            return Err(ModelError::Format(format!("head: row {bad} of {}", x.rows)));
        }
        let gathered = self.workspace("head rows", words(n * d));
        let logits = self.pooled("logits", words(n * head.rows()), false);
        let xb = x.wgpu()?;
        self.record(|enc| -> Result<(), ModelError> {
            for (i, &r) in rows.iter().enumerate() {
                enc.encoder().copy_buffer_to_buffer(
                    xb,
                    words(r * d),
                    &gathered,
                    words(i * d),
                    words(d),
                );
            }
            self.matmul_into(
                enc,
                &gathered,
                head,
                &logits,
                n,
                Fusion {
                    norm: Some((norm.wgpu()?, eps)),
                    ..Default::default()
                },
            )
        })?;
        Ok(Tensor {
            dtype: DType::F32,
            rows: n,
            width: head.rows(),
            storage: Storage::Wgpu(logits),
        })
    }

    fn embed(&self, table: &Embedding, ids: &Tensor, x: &mut Tensor) -> Result<(), ModelError> {
        x.check("embed", ids.rows, table.cols)?;
        let Some(Weight::Wgpu(w)) = &table.device else {
            return Err(ModelError::Format(
                "embed: the embedding table is not on the GPU (a bug in creme-core)".into(),
            ));
        };
        let (ib, xb) = (ids.wgpu()?, x.wgpu()?);
        self.record(|enc| self.encode_embed(enc, w, ib, xb, ids.rows as u32))?;
        Ok(())
    }

    fn pick(&self, logits: &Tensor, rule: PickRule<'_>) -> Result<Tensor, ModelError> {
        let ids = self.pooled("picked", words(logits.rows), false);
        let (lb, rows, width) = (logits.wgpu()?, logits.rows as u32, logits.width as u32);
        match rule {
            PickRule::Greedy => {
                self.record(|enc| self.encode_argmax(enc, lb, &ids, rows, width));
            }
            PickRule::Sample {
                temperature,
                top_p,
                u,
            } => {
                super::check_draws(logits, u)?;
                let draws = self.pooled("draws", words(logits.rows), false);
                // A pooled buffer is no longer used by unsubmitted commands (see `tensor`).
                self.queue.write_buffer(&draws, 0, bytemuck::cast_slice(u));
                self.record(|enc| {
                    self.encode_sample(enc, lb, &draws, &ids, rows, width, temperature, top_p)
                });
            }
        }
        Ok(Tensor {
            dtype: DType::U32,
            rows: logits.rows,
            width: 1,
            storage: Storage::Wgpu(ids),
        })
    }

    async fn token_logprobs(
        &self,
        logits: &Tensor,
        targets: &[u32],
    ) -> Result<Vec<f32>, ModelError> {
        if targets.len() > logits.rows {
            return Err(ModelError::Format(format!(
                "token_logprobs: {} targets for {} rows",
                targets.len(),
                logits.rows
            )));
        }
        Ok(Gpu::token_logprobs(self, logits.wgpu()?, targets, logits.width).await?)
    }

    fn matmul_f32(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &mut Tensor,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<(), ModelError> {
        let (xb, wb, yb) = (x.wgpu()?, w.wgpu()?, y.wgpu()?);
        self.record(|enc| self.encode_matmul_f32(enc, xb, wb, yb, m as u32, n as u32, k as u32))
            .map_err(ModelError::from)
    }

    fn adam(
        &self,
        w: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        p: AdamStep,
    ) -> Result<(), ModelError> {
        let n = w.len();
        if grad.len() < n || m.len() < n || v.len() < n {
            return Err(GpuError::Shape {
                op: "adam",
                detail: format!("w {n}, grad {}, m {}, v {}", grad.len(), m.len(), v.len()),
            }
            .into());
        }
        let params = AdamParams {
            n: n as u32,
            _p0: 0,
            lr: p.lr,
            b1: p.b1 as f32,
            b2: p.b2 as f32,
            eps: p.eps,
            scale: p.scale,
            bc1: (1.0 - p.b1.powi(p.t as i32)) as f32,
            bc2: (1.0 - p.b2.powi(p.t as i32)) as f32,
            _p1: [0; 3],
        };
        let (wb, gb, mb, vb) = (w.wgpu()?, grad.wgpu()?, m.wgpu()?, v.wgpu()?);
        self.record(|enc| self.encode_adam(enc, wb, gb, mb, vb, params));
        Ok(())
    }
}
