//! Ops: shape checks, then a dispatch of a registered kernel. `encode_*` records into an encoder
//! (the model's forward batches many ops into one submission); the async helpers run one op
//! end to end (tests, the browser demo).

use std::borrow::Cow;

use bytemuck::{Pod, Zeroable};

use super::key::{KernelKey, Qmm, RowsSgShape};
use super::wgsl::{
    MATMUL_F32_TILE, QMM_MV_COLS_PER_WG, QMM_MV_MAX_ROWS, QMM_ROWS_PER_WG, QMM_TILE,
    QMM_TILED_MIN_ROWS, QMM_WG,
};
use super::{Gpu, QmmPolicy};
use crate::error::GpuError;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct MatmulDims {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub _pad: u32,
}

impl Gpu {
    /// Record y[m, n] = x[m, k] · w[n, k]ᵀ for f32 buffers.
    pub fn encode_matmul_f32(
        &self,
        enc: &mut crate::gpu::Recorder,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        y: &wgpu::Buffer,
        m: u32,
        n: u32,
        k: u32,
    ) -> Result<(), GpuError> {
        let need = |buf: &wgpu::Buffer, elems: u64, what: &str| -> Result<(), GpuError> {
            if buf.size() < elems * 4 {
                return Err(GpuError::Shape {
                    op: "matmul_f32",
                    detail: format!("{what} holds {} bytes, needs {}", buf.size(), elems * 4),
                });
            }
            Ok(())
        };
        need(x, m as u64 * k as u64, "x")?;
        need(w, n as u64 * k as u64, "w")?;
        need(y, m as u64 * n as u64, "y")?;
        let limit = self.max_binding_bytes();
        for (name, b) in [("x", x), ("w", w), ("y", y)] {
            if b.size() > limit {
                return Err(GpuError::TooLarge {
                    tensor: format!("matmul_f32.{name}"),
                    bytes: b.size(),
                    limit,
                });
            }
        }
        let dims = self.uniform("matmul dims", &MatmulDims { m, n, k, _pad: 0 });
        let tile = MATMUL_F32_TILE;
        let groups = [n.div_ceil(tile), m.div_ceil(tile), 1];
        let maxg = self.limits.max_compute_workgroups_per_dimension;
        if groups[0] > maxg || groups[1] > maxg {
            return Err(GpuError::Shape {
                op: "matmul_f32",
                detail: format!("grid {groups:?} over {maxg} per dimension"),
            });
        }
        self.dispatch(enc, KernelKey::MatmulF32, &[x, w, y], &dims, groups);
        Ok(())
    }

    /// y = x · wᵀ on the GPU, from host slices to a host vector.
    pub async fn matmul_f32(
        &self,
        x: &[f32],
        w: &[f32],
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<f32>, GpuError> {
        if x.len() != m * k || w.len() != n * k {
            return Err(GpuError::Shape {
                op: "matmul_f32",
                detail: format!(
                    "x has {} elements (m*k = {}), w has {} (n*k = {})",
                    x.len(),
                    m * k,
                    w.len(),
                    n * k
                ),
            });
        }
        // Ops recorded earlier run first.
        self.flush();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let xb = self.upload("x", x);
        let wb = self.upload("w", w);
        let yb = self.storage("y", (m * n * 4) as u64);
        let mut enc = self.new_recorder("ops");
        self.encode_matmul_f32(&mut enc, &xb, &wb, &yb, m as u32, n as u32, k as u32)?;
        self.submit(enc);
        if let Some(e) = scope.pop().await {
            return Err(GpuError::Validation(e.to_string()));
        }
        self.read::<f32>(&yb, m * n).await
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
pub(crate) struct QuantMatmulParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub ldy: u32,
    pub y_off: u32,
    pub has_bias: u32,
    pub row_bytes: u32,
    pub total_wg: u32,
    pub w_byte_off: u32,
    pub epilogue: u32,
    pub has_norm: u32,
    pub eps: f32,
    pub row_group: u32,
}

/// How a quantized matmul's result enters y (the fusions of the forward pass).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Epilogue {
    /// y = result
    #[default]
    Store = 0,
    /// y += result (the residual add after the O and down projections)
    Add = 1,
    /// y = silu(y) * result (y holds the gate projection; the result is the up projection)
    SiluMul = 2,
}

/// What a quantized matmul fuses around the product x · Wᵀ.
#[derive(Clone, Copy, Default)]
pub struct Fusion<'a> {
    /// Added to each output row (the qwen2 attention projections).
    pub bias: Option<&'a wgpu::Buffer>,
    pub epilogue: Epilogue,
    /// RMS-norm x's rows with this weight (k values) and epsilon before the product (the norm
    /// before the attention and MLP projections and the output head; see matmul_quant.wgsl).
    pub norm: Option<(&'a wgpu::Buffer, f32)>,
}

impl Gpu {
    /// The quantized matmul kernel for m rows of x against n weight rows. On CPU adapters
    /// (lavapipe) the row-per-thread kernel, with x shared through subgroup broadcasts where the
    /// adapter has subgroups (`main_rows_sg` in the shape for m, [`RowsSgShape::for_rows`]): on
    /// lavapipe it is 2-3x faster than `main_rows` at decode and 20x faster than `main_tiled` at pp32
    /// (docs/performance.md). On GPUs, decode (m <= 4) takes the matvec kernel (8 weight rows
    /// per workgroup, subgroup sums where there are subgroups), prompts the register-blocked tile
    /// kernel `main_gemm`, and the few rows between a workgroup per weight row; docs/performance.md
    /// has the timings behind this (`creme bench-kernels`, NVIDIA H200). `CREME_QMM` forces one.
    /// k is the length of x's rows.
    pub fn qmm_kernel(&self, m: u32, k: u32) -> Cow<'static, str> {
        self.qmm(m, k).to_string().into()
    }

    /// The quantized matmul kernel for m rows of x of length k ([`Gpu::qmm_kernel`]).
    pub(crate) fn qmm(&self, m: u32, k: u32) -> Qmm {
        if self.batch_invariant {
            return self.invariant_qmm();
        }
        let prompt = m >= QMM_TILED_MIN_ROWS;
        let decode = m <= QMM_MV_MAX_ROWS;
        match self.qmm {
            QmmPolicy::Rows => Qmm::Rows,
            QmmPolicy::RowsSubgroup => self.rows_kernel(m, k),
            QmmPolicy::Workgroup => Qmm::Workgroup,
            QmmPolicy::Tiled if prompt => Qmm::Tiled,
            QmmPolicy::Gemm if prompt => Qmm::Gemm,
            QmmPolicy::Matvec if decode => self.matvec_kernel(),
            // Otherwise the adapter's own choice for this m.
            _ if self.cpu_adapter => self.rows_kernel(m, k),
            _ if prompt => Qmm::Gemm,
            _ if decode => self.matvec_kernel(),
            _ => Qmm::Workgroup,
        }
    }
}

impl Gpu {
    /// The kernel of batch-invariant mode: one kernel and shape for every m, so that a row's
    /// dot products run the same code in the same order whatever the rows beside it (each
    /// kernel sums a product along k in a fixed order of its own; only the choice between
    /// kernels and shapes moved results with m). `CREME_QMM` picks among the kernels that take
    /// any m; by default CPU adapters run the row-per-thread kernel in its prompt shape, GPUs
    /// the tile kernel (the shapes prompts, and so draft verification, run anyway).
    fn invariant_qmm(&self) -> Qmm {
        let rows_sg = || match self.fixed_subgroup_lanes() {
            Some(lanes @ (4 | 8 | 16 | 32)) if cfg!(not(target_arch = "wasm32")) => Qmm::RowsSg {
                lanes,
                shape: RowsSgShape::WIDE,
                x_len: None,
            },
            _ => Qmm::Rows,
        };
        match self.qmm {
            QmmPolicy::Rows => Qmm::Rows,
            QmmPolicy::Workgroup => Qmm::Workgroup,
            QmmPolicy::Tiled => Qmm::Tiled,
            QmmPolicy::Gemm => Qmm::Gemm,
            QmmPolicy::RowsSubgroup => rows_sg(),
            // Refused when the Gpu is made (it serves decode only).
            QmmPolicy::Matvec => unreachable!("the matvec kernel is not batch-invariant"),
            QmmPolicy::Auto if self.cpu_adapter => rows_sg(),
            QmmPolicy::Auto => Qmm::Gemm,
        }
    }

    /// The matvec kernel: with its reduction in subgroup operations where the adapter's subgroups
    /// have 4 to 32 lanes (then a weight row's 32 lanes hold whole subgroups), else through
    /// workgroup memory. Native only: browsers want an `enable subgroups;` that this naga rejects.
    fn matvec_kernel(&self) -> Qmm {
        let r = &self.report;
        let fits = r.subgroups && r.subgroup_min_size >= 4 && r.subgroup_max_size <= 32;
        if fits && cfg!(not(target_arch = "wasm32")) {
            Qmm::MatvecSg
        } else {
            Qmm::Matvec
        }
    }

    /// The row-per-thread kernel: the one that shares x through subgroup broadcasts, in the
    /// shape for m rows, where every subgroup of the adapter has the same 4 to 32 lanes
    /// (lavapipe: 8), else `main_rows`. Native only, as the matvec's subgroup flavour. For one row
    /// of x (k elements) on a CPU adapter (whose tensor buffers allow uniform bindings:
    /// `tensor_usage`) it reads x through a uniform view where the adapter binds that much.
    fn rows_kernel(&self, m: u32, k: u32) -> Qmm {
        match self.fixed_subgroup_lanes() {
            Some(lanes @ (4 | 8 | 16 | 32)) if cfg!(not(target_arch = "wasm32")) => {
                let shape = RowsSgShape::for_rows(m);
                let fits =
                    self.cpu_adapter && k as u64 * 4 <= self.limits.max_uniform_buffer_binding_size;
                let view = shape.x_rows == 1 && k % 4 == 0 && fits;
                Qmm::RowsSg {
                    lanes,
                    shape,
                    x_len: view.then_some(k),
                }
            }
            _ => Qmm::Rows,
        }
    }

    /// The lanes of every subgroup, where the adapter has subgroups of one size only (the
    /// subgroup flavours of the CPU adapters' kernels unroll their broadcasts for it).
    pub(crate) fn fixed_subgroup_lanes(&self) -> Option<u32> {
        let r = &self.report;
        (r.subgroups && r.subgroup_min_size == r.subgroup_max_size).then_some(r.subgroup_max_size)
    }

    /// Record y[m, y_off + n] = x[m, k] · Wᵀ for a weight in any supported GGUF format, one
    /// dispatch per row-chunk of the weight, with the bias and epilogue of `fuse`. `ldy` is
    /// y's row stride.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_matmul_quant(
        &self,
        enc: &mut crate::gpu::Recorder,
        x: &wgpu::Buffer,
        w: &super::GpuWeight,
        y: &wgpu::Buffer,
        m: u32,
        ldy: u32,
        y_off: u32,
        fuse: Fusion<'_>,
    ) -> Result<(), GpuError> {
        let Fusion {
            bias,
            epilogue,
            norm,
        } = fuse;
        let k = w.cols as u32;
        if let Some((g, _)) = norm {
            if g.size() < k as u64 * 4 {
                return Err(GpuError::Shape {
                    op: "matmul_quant",
                    detail: format!(
                        "'{}': a norm weight of {} bytes for rows of {k}",
                        w.name,
                        g.size()
                    ),
                });
            }
        }
        if x.size() < m as u64 * k as u64 * 4
            || y.size() < ((m as u64 - 1) * ldy as u64 + y_off as u64 + w.rows as u64) * 4
        {
            return Err(GpuError::Shape {
                op: "matmul_quant",
                detail: format!(
                    "'{}' [{}x{}]: x {} bytes, y {} bytes for m={m}, ldy={ldy}",
                    w.name,
                    w.rows,
                    w.cols,
                    x.size(),
                    y.size()
                ),
            });
        }
        if bias.is_some() && w.chunks.len() > 1 {
            return Err(GpuError::Shape {
                op: "matmul_quant",
                detail: format!("'{}': a bias on a row-split weight", w.name),
            });
        }
        let flavour = self.qmm(m, k);
        let kernel = KernelKey::Quant(flavour, w.dtype);
        for c in &w.chunks {
            let total = c.rows as u32 * m.div_ceil(QMM_ROWS_PER_WG);
            let groups = match flavour {
                Qmm::Rows => self.grid(total.div_ceil(QMM_WG)),
                Qmm::RowsSg { shape, .. } => [
                    (c.rows as u32).div_ceil(QMM_WG * shape.rows_per_lane),
                    m.div_ceil(shape.x_rows),
                    1,
                ],
                Qmm::Tiled | Qmm::Gemm => {
                    [(c.rows as u32).div_ceil(QMM_TILE), m.div_ceil(QMM_TILE), 1]
                }
                Qmm::Matvec | Qmm::MatvecSg => {
                    self.grid((c.rows as u32).div_ceil(QMM_MV_COLS_PER_WG))
                }
                Qmm::Workgroup | Qmm::Embed => self.grid(total),
            };
            let params = self.uniform(
                "qmm params",
                &QuantMatmulParams {
                    m,
                    n: c.rows as u32,
                    k,
                    ldy,
                    y_off: y_off + c.row0 as u32,
                    has_bias: bias.is_some() as u32,
                    row_bytes: w.row_bytes() as u32,
                    row_group: w.row_group as u32,
                    total_wg: total,
                    w_byte_off: c.byte_off as u32,
                    epilogue: epilogue as u32,
                    has_norm: norm.is_some() as u32,
                    eps: norm.map_or(0.0, |(_, eps)| eps),
                },
            );
            // Bindings 2 and 4 must hold something; the kernel reads them only when has_bias /
            // has_norm is 1.
            let g = norm.map_or(x, |(g, _)| g);
            self.dispatch_for(
                enc,
                kernel,
                Some(&w.name),
                &[x, &c.buffer, bias.unwrap_or(x), y, g],
                &params,
                groups,
            );
        }
        Ok(())
    }

    /// Record x[i] = table[ids[i]] (dequantized) for `rows` token ids (u32) on the GPU: one
    /// dispatch per row-chunk of the table, each writing the rows whose ids fall in its chunk.
    pub fn encode_embed(
        &self,
        enc: &mut crate::gpu::Recorder,
        table: &super::GpuWeight,
        ids: &wgpu::Buffer,
        x: &wgpu::Buffer,
        rows: u32,
    ) -> Result<(), GpuError> {
        let k = table.cols as u32;
        if ids.size() < rows as u64 * 4 || x.size() < rows as u64 * k as u64 * 4 {
            return Err(GpuError::Shape {
                op: "embed",
                detail: format!(
                    "{rows} ids of '{}' [{}x{k}]: ids {} bytes, x {} bytes",
                    table.name,
                    table.rows,
                    ids.size(),
                    x.size()
                ),
            });
        }
        let kernel = KernelKey::Quant(Qmm::Embed, table.dtype);
        for c in &table.chunks {
            // The kernel's reading of the matmul parameters: m ids, a chunk of n table rows from
            // row y_off, rows of k values.
            let params = self.uniform(
                "embed params",
                &QuantMatmulParams {
                    m: rows,
                    n: c.rows as u32,
                    k,
                    ldy: k,
                    y_off: c.row0 as u32,
                    row_bytes: table.row_bytes() as u32,
                    row_group: table.row_group as u32,
                    w_byte_off: c.byte_off as u32,
                    ..Default::default()
                },
            );
            self.dispatch(
                enc,
                kernel,
                &[ids, &c.buffer, ids, x, ids],
                &params,
                self.grid(rows),
            );
        }
        Ok(())
    }

    /// y = x · Wᵀ (+ bias) for a quantized weight, from host slices to a host vector.
    pub async fn matmul_quant(
        &self,
        x: &[f32],
        w: &super::GpuWeight,
        bias: Option<&[f32]>,
        m: usize,
    ) -> Result<Vec<f32>, GpuError> {
        if x.len() != m * w.cols {
            return Err(GpuError::Shape {
                op: "matmul_quant",
                detail: format!("x has {} values, m*k = {}", x.len(), m * w.cols),
            });
        }
        // Ops recorded earlier run first.
        self.flush();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let xb = self.upload("x", x);
        let bb = bias.map(|b| self.upload("bias", b));
        let yb = self.storage("y", (m * w.rows * 4) as u64);
        let mut enc = self.new_recorder("ops");
        self.encode_matmul_quant(
            &mut enc,
            &xb,
            w,
            &yb,
            m as u32,
            w.rows as u32,
            0,
            Fusion {
                bias: bb.as_ref(),
                ..Default::default()
            },
        )?;
        self.submit(enc);
        if let Some(e) = scope.pop().await {
            return Err(GpuError::Validation(e.to_string()));
        }
        self.read::<f32>(&yb, m * w.rows).await
    }
}
