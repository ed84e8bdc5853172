//! The native CPU backend: weights stay in their GGUF blocks and are multiplied by activations
//! quantized per block to int8 (see [`qmatmul`]), SIMD kernels chosen at run time, all cores
//! through rayon. Every row's result is computed by the same code whatever the batch it is in,
//! so a row never depends on the batch or position it is computed in.

mod groups;
pub mod qmatmul;

use std::sync::Mutex;

use rayon::prelude::*;

use self::qmatmul::{axpy_f32, dot_f32, matmul, CpuWeight, MatmulScratch};
use super::{
    AdamStep, AttnStep, Backend, BackendKind, BlockShape, DType, Embedding, KvLayer, LayerWeights,
    PendingRead, PickRule, Storage, Tensor, Weight,
};
use crate::error::ModelError;
use crate::quant::GgmlType;

/// Buffers reused by every op, so a decoded token allocates nothing once they have grown.
#[derive(Default)]
struct Scratch {
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    mm: MatmulScratch,
}

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

pub struct CpuBackend {
    scratch: Mutex<Scratch>,
    /// Exact-activation mode: weights dequantized to f32 at load and multiplied with f32
    /// activations (the function wgpu and HF compute; slower, 4 bytes per weight), for checks
    /// against references where int8 activations flip near-tied greedy tokens.
    exact: bool,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend {
            scratch: Mutex::new(Scratch::default()),
            exact: false,
        }
    }

    /// The exact-activation mode (see the field).
    pub fn exact() -> CpuBackend {
        CpuBackend {
            exact: true,
            ..Self::new()
        }
    }

    fn scratch(&self) -> std::sync::MutexGuard<'_, Scratch> {
        self.scratch.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// y = x / sqrt(mean(x²) + eps) * w, row by row.
fn rmsnorm(x: &[f32], w: &[f32], y: &mut [f32], dim: usize, eps: f32) {
    for (xr, yr) in x.chunks(dim).zip(y.chunks_mut(dim)) {
        let ss = dot_f32(xr, xr);
        let inv = 1.0 / (ss / dim as f32 + eps).sqrt();
        for ((yv, xv), wv) in yr.iter_mut().zip(xr).zip(w) {
            *yv = xv * inv * wv;
        }
    }
}

/// Rotate each head of each row by its position (table: [pos][head_dim/2][cos, sin]).
fn rope(x: &mut [f32], pos: &[u32], table: &[f32], heads: usize, hd: usize, interleaved: bool) {
    let half = hd / 2;
    for (row, &p) in x.chunks_mut(heads * hd).zip(pos) {
        let t = &table[p as usize * half * 2..(p as usize + 1) * half * 2];
        for head in row.chunks_mut(hd) {
            for i in 0..half {
                let (a, b) = if interleaved {
                    (2 * i, 2 * i + 1)
                } else {
                    (i, i + half)
                };
                let (c, s) = (t[2 * i], t[2 * i + 1]);
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x1 * c + x0 * s;
            }
        }
    }
}

fn bias_add(y: &mut [f32], bias: Option<&Tensor>, width: usize) -> Result<(), ModelError> {
    if let Some(b) = bias {
        let b = b.cpu()?;
        for row in y.chunks_mut(width) {
            for (v, bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }
    Ok(())
}

fn words_u32(t: &Tensor) -> Result<Vec<u32>, ModelError> {
    Ok(t.cpu()?.iter().map(|f| f.to_bits()).collect())
}

thread_local! {
    /// One row of attention scores per worker thread (no allocation per token once grown).
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Causal attention of a chunk over the cache: query (b, t) at cache position p0 + t sees keys
/// pad[b] ..= p0 + t; query head h reads kv head h / (heads / kv_heads).
fn attention(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    out: &mut [f32],
    s: &BlockShape,
    st: &AttnStep<'_>,
    pad: &[u32],
) {
    let (hd, heads) = (s.head_dim, s.n_heads);
    let kvw = s.n_kv_heads * hd;
    let group = heads / s.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
        let (row, h) = (idx / heads, idx % heads);
        let (b, jq) = (row / st.t, st.cache_len + row % st.t);
        let qv = &q[idx * hd..(idx + 1) * hd];
        let koff = (h / group) * hd;
        let j0 = (pad[b] as usize).min(jq + 1);
        let key = |j: usize| (b * st.capacity + j) * kvw + koff;
        SCORES.with(|cell| {
            let mut scores = cell.borrow_mut();
            scores.clear();
            scores.extend((j0..=jq).map(|j| dot_f32(qv, &kc[key(j)..key(j) + hd]) * scale));
            let mx = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0;
            for sc in scores.iter_mut() {
                *sc = (*sc - mx).exp();
                total += *sc;
            }
            o.fill(0.0);
            for (j, &p) in (j0..=jq).zip(scores.iter()) {
                axpy_f32(p, &vc[key(j)..key(j) + hd], o);
            }
            let inv = if total > 0.0 { 1.0 / total } else { 0.0 };
            o.iter_mut().for_each(|v| *v *= inv);
        });
    });
}

impl Backend for CpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }
    fn describe(&self) -> String {
        let mode = if self.exact {
            ", exact f32 activations"
        } else {
            ""
        };
        format!(
            "cpu: {} threads, {} kernels{mode}",
            rayon::current_num_threads(),
            qmatmul::isa()
        )
    }
    fn max_tensor_bytes(&self) -> u64 {
        // Host memory: probe batches are bounded by their count (see trace), not by a binding.
        1 << 31
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
        let v = match data {
            Some(d) if d.len() >= n => d[..n].to_vec(),
            Some(d) => {
                return Err(ModelError::Format(format!(
                    "{label}: {} values for [{rows} x {width}]",
                    d.len()
                )))
            }
            None => vec![0.0; n],
        };
        Ok(Tensor {
            dtype,
            rows,
            width,
            storage: Storage::Cpu(v),
        })
    }

    fn write(&self, t: &mut Tensor, data: &[f32]) -> Result<(), ModelError> {
        let dst = t.cpu_mut()?;
        if data.len() > dst.len() {
            return Err(ModelError::Format(format!(
                "write: {} values into a tensor of {}",
                data.len(),
                dst.len()
            )));
        }
        dst[..data.len()].copy_from_slice(data);
        Ok(())
    }

    fn start_read(&self, t: &Tensor, n: usize) -> Result<PendingRead, ModelError> {
        let v = t.cpu()?;
        Ok(PendingRead::Ready(v[..n.min(v.len())].to_vec()))
    }

    async fn finish_read(&self, read: PendingRead) -> Result<Vec<f32>, ModelError> {
        match read {
            PendingRead::Ready(v) => Ok(v),
            PendingRead::Wgpu(_) | PendingRead::WgpuF16(..) => Err(ModelError::Format(
                "backend mismatch: a GPU readback given to the CPU backend (a bug in creme-core)"
                    .into(),
            )),
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
        let w = src.width;
        let s = &src.cpu()?[src_row * w..(src_row + n) * w];
        dst.cpu_mut()?[dst_row * w..(dst_row + n) * w].copy_from_slice(s);
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
        let err = |e: String| ModelError::Format(format!("'{name}': {e}"));
        let w = CpuWeight::new(dtype, rows, cols, bytes).map_err(err)?;
        if !self.exact || dtype == GgmlType::F32 {
            return Ok(Weight::Cpu(w));
        }
        let f32s = w.to_f32();
        Ok(Weight::Cpu(
            CpuWeight::new(GgmlType::F32, rows, cols, bytemuck::cast_slice(&f32s)).map_err(err)?,
        ))
    }

    async fn weight_f32(&self, w: &Weight) -> Result<Vec<f32>, ModelError> {
        Ok(w.cpu()?.to_f32())
    }

    fn matmul_q(&self, x: &Tensor, w: &Weight, y: &mut Tensor, m: usize) -> Result<(), ModelError> {
        x.check("matmul_q", m, w.cols())?;
        y.check("matmul_q", m, w.rows())?;
        let ldy = w.rows();
        matmul(
            w.cpu()?,
            &x.cpu()?[..m * w.cols()],
            m,
            y.cpu_mut()?,
            ldy,
            &mut self.scratch().mm,
        );
        Ok(())
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
        let d = s.d_model;
        let (qw, kvw) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
        x.check("attention_block", rows, d)?;
        let (pos, pad) = (words_u32(st.pos)?, words_u32(st.pad)?);
        let mut guard = self.scratch();
        let sc = &mut *guard;
        let xv = &mut x.cpu_mut()?[..rows * d];
        let xn = grow(&mut sc.xn, rows * d);
        rmsnorm(xv, w.attn_norm.cpu()?, xn, d, s.rms_eps);
        let (q, k, v) = (
            grow(&mut sc.q, rows * qw),
            grow(&mut sc.k, rows * kvw),
            grow(&mut sc.v, rows * kvw),
        );
        matmul(w.q.cpu()?, xn, rows, q, qw, &mut sc.mm);
        matmul(w.k.cpu()?, xn, rows, k, kvw, &mut sc.mm);
        matmul(w.v.cpu()?, xn, rows, v, kvw, &mut sc.mm);
        bias_add(q, w.q_bias.as_ref(), qw)?;
        bias_add(k, w.k_bias.as_ref(), kvw)?;
        bias_add(v, w.v_bias.as_ref(), kvw)?;
        let table = st.rope.cpu()?;
        rope(q, &pos, table, s.n_heads, s.head_dim, s.interleaved_rope);
        rope(k, &pos, table, s.n_kv_heads, s.head_dim, s.interleaved_rope);
        let (kc, vc) = (kv.k.cpu_mut()?, kv.v.cpu_mut()?);
        for b in 0..st.active {
            let dst = (b * st.capacity + st.cache_len) * kvw;
            kc[dst..dst + st.t * kvw].copy_from_slice(&k[b * st.t * kvw..(b + 1) * st.t * kvw]);
            vc[dst..dst + st.t * kvw].copy_from_slice(&v[b * st.t * kvw..(b + 1) * st.t * kvw]);
        }
        let att = grow(&mut sc.att, rows * qw);
        attention(q, kc, vc, att, s, st, &pad);
        let tmp = grow(&mut sc.tmp, rows * d);
        matmul(w.o.cpu()?, att, rows, tmp, d, &mut sc.mm);
        xv.iter_mut().zip(tmp.iter()).for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn mlp_act(
        &self,
        w: &LayerWeights,
        s: &BlockShape,
        x: &Tensor,
        act: &mut Tensor,
        rows: usize,
    ) -> Result<(), ModelError> {
        let (d, f) = (s.d_model, s.d_ff);
        x.check("mlp_act", rows, d)?;
        act.check("mlp_act", rows, f)?;
        let mut guard = self.scratch();
        let sc = &mut *guard;
        let xn = grow(&mut sc.xn, rows * d);
        rmsnorm(&x.cpu()?[..rows * d], w.ffn_norm.cpu()?, xn, d, s.rms_eps);
        let (g, u) = (grow(&mut sc.gate, rows * f), grow(&mut sc.up, rows * f));
        matmul(w.gate.cpu()?, xn, rows, g, f, &mut sc.mm);
        matmul(w.up.cpu()?, xn, rows, u, f, &mut sc.mm);
        for ((a, gv), uv) in act.cpu_mut()?[..rows * f]
            .iter_mut()
            .zip(g.iter())
            .zip(u.iter())
        {
            *a = gv / (1.0 + (-gv).exp()) * uv;
        }
        Ok(())
    }

    fn mlp_down_add(
        &self,
        w: &LayerWeights,
        act: &Tensor,
        x: &mut Tensor,
        rows: usize,
    ) -> Result<(), ModelError> {
        let (d, f) = (w.down.rows(), w.down.cols());
        act.check("mlp_down_add", rows, f)?;
        x.check("mlp_down_add", rows, d)?;
        let mut guard = self.scratch();
        let sc = &mut *guard;
        let tmp = grow(&mut sc.tmp, rows * d);
        matmul(
            w.down.cpu()?,
            &act.cpu()?[..rows * f],
            rows,
            tmp,
            d,
            &mut sc.mm,
        );
        x.cpu_mut()?[..rows * d]
            .iter_mut()
            .zip(tmp.iter())
            .for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn head(
        &self,
        norm: &Tensor,
        head: &Weight,
        eps: f32,
        x: &Tensor,
        rows: &[usize],
    ) -> Result<Tensor, ModelError> {
        let (d, vocab, n) = (head.cols(), head.rows(), rows.len());
        if let Some(&bad) = rows.iter().find(|&&r| r >= x.rows) {
            return Err(ModelError::Format(format!("head: row {bad} of {}", x.rows)));
        }
        let xv = x.cpu()?;
        let gathered: Vec<f32> = rows
            .iter()
            .flat_map(|&r| xv[r * d..(r + 1) * d].iter().cloned())
            .collect();
        let mut normed = vec![0f32; n * d];
        rmsnorm(&gathered, norm.cpu()?, &mut normed, d, eps);
        let mut logits = vec![0f32; n * vocab];
        matmul(
            head.cpu()?,
            &normed,
            n,
            &mut logits,
            vocab,
            &mut self.scratch().mm,
        );
        Ok(Tensor {
            dtype: DType::F32,
            rows: n,
            width: vocab,
            storage: Storage::Cpu(logits),
        })
    }

    fn embed(&self, table: &Embedding, ids: &Tensor, x: &mut Tensor) -> Result<(), ModelError> {
        let d = table.cols;
        x.check("embed", ids.rows, d)?;
        let ids = super::bits(&ids.cpu()?[..ids.rows]);
        for (row, id) in x.cpu_mut()?.chunks_mut(d).zip(ids) {
            row.copy_from_slice(&table.row(id)?);
        }
        Ok(())
    }

    fn pick(&self, logits: &Tensor, rule: PickRule<'_>) -> Result<Tensor, ModelError> {
        let w = logits.width;
        let rows = logits.cpu()?[..logits.rows * w].chunks(w);
        let ids: Vec<u32> = match rule {
            PickRule::Greedy => rows.map(first_max).collect(),
            PickRule::Sample {
                temperature,
                top_p,
                u,
            } => {
                super::check_draws(logits, u)?;
                rows.zip(u)
                    .map(|(row, &u)| crate::sampling::sample_row(row, temperature, top_p, u))
                    .collect()
            }
        };
        let words: Vec<f32> = ids.iter().map(|&id| f32::from_bits(id)).collect();
        self.tensor("picked", DType::U32, logits.rows, 1, Some(&words))
    }

    async fn token_logprobs(
        &self,
        logits: &Tensor,
        targets: &[u32],
    ) -> Result<Vec<f32>, ModelError> {
        let w = logits.width;
        if targets.len() > logits.rows || targets.iter().any(|&t| t as usize >= w) {
            return Err(ModelError::Format(format!(
                "token_logprobs: {} targets for {} rows of {w}",
                targets.len(),
                logits.rows
            )));
        }
        let lv = logits.cpu()?;
        Ok(targets
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let row = &lv[i * w..(i + 1) * w];
                let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let sum: f64 = row.iter().map(|&v| ((v - mx) as f64).exp()).sum();
                (row[t as usize] - mx) - sum.ln() as f32
            })
            .collect())
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
        if x.len() < m * k || w.len() < n * k || y.len() < m * n {
            return Err(ModelError::Format(format!(
                "matmul_f32: x {}, w {}, y {} for m={m} n={n} k={k}",
                x.len(),
                w.len(),
                y.len()
            )));
        }
        let (xv, wv) = (x.cpu()?, w.cpu()?);
        y.cpu_mut()?[..m * n]
            .par_chunks_mut(n)
            .enumerate()
            .for_each(|(i, yr)| {
                let xr = &xv[i * k..(i + 1) * k];
                for (j, yv) in yr.iter_mut().enumerate() {
                    *yv = dot_f32(xr, &wv[j * k..(j + 1) * k]);
                }
            });
        Ok(())
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
            return Err(ModelError::Format(format!(
                "adam: w {n}, grad {}, m {}, v {}",
                grad.len(),
                m.len(),
                v.len()
            )));
        }
        let (b1, b2) = (p.b1 as f32, p.b2 as f32);
        let bc1 = (1.0 - p.b1.powi(p.t as i32)) as f32;
        let bc2 = (1.0 - p.b2.powi(p.t as i32)) as f32;
        let g = grad.cpu()?;
        let (mv, vv) = (m.cpu_mut()?, v.cpu_mut()?);
        for (i, wi) in w.cpu_mut()?.iter_mut().enumerate() {
            let gi = g[i] * p.scale;
            mv[i] = b1 * mv[i] + (1.0 - b1) * gi;
            vv[i] = b2 * vv[i] + (1.0 - b2) * gi * gi;
            *wi -= (p.lr / bc1) * mv[i] / (vv[i].sqrt() / bc2.sqrt() + p.eps);
        }
        Ok(())
    }
}

/// Index of the first maximum of a row, NaNs aside (a row of NaNs picks 0; the GPU's rule too).
fn first_max(row: &[f32]) -> u32 {
    let mut best: Option<usize> = None;
    for (i, &v) in row.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|b| v > row[b]) {
            best = Some(i);
        }
    }
    best.unwrap_or(0) as u32
}
