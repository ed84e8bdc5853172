//! CPU matrix products with weights kept in their GGUF blocks.
//!
//! Activations are quantized to int8 per block of 32 (d = max|x| / 127); every weight block is
//! unpacked into unsigned bytes u with scales s and an additive term b, and its contribution is
//! dx * (s_lo * u·q[0..16] + s_hi * u·q[16..32]) + b * dx * sum(q). On x86 the weights are kept
//! in groups of 8 interleaved rows (`groups.rs`), so that one integer dot instruction serves 8
//! rows; see `simd.rs` for those kernels. The portable code here follows the same integer math.
//!
//! Invariant: y[i, j] is bit-identical whatever m, the row's tile and the thread count are
//! (parallelism splits output rows only; every tile size runs the same per-element sequence).

use std::cell::RefCell;
use std::sync::OnceLock;

use half::{bf16, f16};
use rayon::prelude::*;

use crate::quant::{dequantize, GgmlType};

use super::groups::{self, GROUP};

#[cfg(target_arch = "x86_64")]
#[path = "simd.rs"]
mod simd;

// ---------------------------------------------------------------------------------------------
// Weights.

enum Data {
    /// F32, F16 and BF16 weights, converted at construction.
    F32(Vec<f32>),
    /// GGUF blocks, rows after rows (machines without AVX2: the portable kernels).
    Blocks(Vec<u8>),
    /// Blocks of 8 rows interleaved for the x86 kernels (`groups.rs`).
    Grouped(Vec<u8>),
}

/// A weight matrix [rows, cols] (rows = output features) kept in its GGUF blocks
/// (F16/BF16 are converted to f32 at construction). Immutable after construction; Send + Sync.
pub struct CpuWeight {
    dtype: GgmlType,
    rows: usize,
    cols: usize,
    data: Data,
}

impl CpuWeight {
    /// Errors if cols is not a multiple of the block size or bytes are too short.
    pub fn new(
        dtype: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<CpuWeight, String> {
        let be = dtype.block_elems();
        if !cols.is_multiple_of(be) {
            return Err(format!(
                "{} weight: {cols} columns is not a multiple of the block size {be}",
                dtype.name()
            ));
        }
        let need = rows * dtype.row_bytes(cols);
        if bytes.len() < need {
            return Err(format!(
                "{} weight [{rows}, {cols}]: need {need} bytes, have {}",
                dtype.name(),
                bytes.len()
            ));
        }
        let b = &bytes[..need];
        let data = match dtype {
            GgmlType::F32 => Data::F32(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            GgmlType::F16 => Data::F32(
                b.chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            GgmlType::BF16 => Data::F32(
                b.chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            t if groups::grouped(t) && cur_isa() != Isa::Portable => {
                Data::Grouped(groups::to_groups(t, b, rows, cols))
            }
            _ => Data::Blocks(b.to_vec()),
        };
        Ok(CpuWeight {
            dtype,
            rows,
            cols,
            data,
        })
    }

    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Dequantized [rows * cols] f32 (row-major).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::Blocks(b) => {
                dequantize(self.dtype, b, self.rows * self.cols).expect("checked at construction")
            }
            Data::Grouped(g) => {
                let rows = groups::to_rows(self.dtype, g, self.rows, self.cols);
                dequantize(self.dtype, &rows, self.rows * self.cols)
                    .expect("checked at construction")
            }
        }
    }

    fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.cols)
    }
}

// ---------------------------------------------------------------------------------------------
// ISA choice.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum Isa {
    Vnni512,
    VnniAvx,
    Avx2,
    Portable,
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        let v512 = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni");
        if avx2 && v512 {
            return Isa::Vnni512;
        }
        if avx2 && is_x86_feature_detected!("avxvnni") {
            return Isa::VnniAvx;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

fn cur_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(detect)
}

/// Which kernel family runtime detection chose: "avx512-vnni", "avx-vnni", "avx2", "portable".
pub fn isa() -> &'static str {
    match cur_isa() {
        Isa::Vnni512 => "avx512-vnni",
        Isa::VnniAvx => "avx-vnni",
        Isa::Avx2 => "avx2",
        Isa::Portable => "portable",
    }
}

// ---------------------------------------------------------------------------------------------
// Quantized activations.

/// Reusable buffers (quantized activations) so that no allocation happens per call once warm.
#[derive(Default)]
pub struct MatmulScratch {
    q: Vec<i8>,
    d: Vec<f32>,
    /// d * sum of the block's q (for formats with mins).
    xs: Vec<f32>,
    /// The sums of q over each half of the block (grouped formats fold their offset with them).
    qsum: Vec<i32>,
}

/// Raw view of quantized activations for the kernels (row i, block g at i * nsub + g).
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct XView {
    q: *const i8,
    d: *const f32,
    xs: *const f32,
    qsum: *const i32,
    nsub: usize,
}
unsafe impl Send for XView {}
unsafe impl Sync for XView {}

/// Strided output for disjoint writes from several threads (each writes its own columns j).
#[derive(Clone, Copy)]
pub(crate) struct YPtr {
    p: *mut f32,
    ldy: usize,
}
unsafe impl Send for YPtr {}
unsafe impl Sync for YPtr {}

impl YPtr {
    /// Safety: (i, j) in range of the checked y, and no other thread writes column j.
    #[inline(always)]
    unsafe fn put(self, i: usize, j: usize, v: f32) {
        *self.p.add(i * self.ldy + j) = v;
    }

    /// y[i, j..j + n] = the first n lanes of v. Safety: as `put`, for every column written.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn put8(self, i: usize, j: usize, n: usize, v: std::arch::x86_64::__m256) {
        let p = self.p.add(i * self.ldy + j);
        if n == 8 {
            std::arch::x86_64::_mm256_storeu_ps(p, v);
        } else {
            let mut lanes = [0f32; 8];
            std::arch::x86_64::_mm256_storeu_ps(lanes.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), p, n);
        }
    }
}

/// Scalar block quantizer: q = round_ties_even(x / d), d = max|x| / 127; returns d and the sums
/// of q over the two halves. The SIMD one gives the same bits.
fn quantize_block_scalar(x: &[f32], q: &mut [i8]) -> (f32, [i32; 2]) {
    let amax = x[..32].iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in q[..32].iter_mut().zip(x) {
        *q = ((v * id).round_ties_even() as i32).clamp(-128, 127) as i8;
    }
    let sum = |h: &[i8]| h.iter().map(|&v| v as i32).sum::<i32>();
    (d, [sum(&q[..16]), sum(&q[16..32])])
}

/// One row of quantized activations: q, and per block of 32: d, d * sum q, the sums of q over
/// its halves.
struct QRow<'a> {
    q: &'a mut [i8],
    d: &'a mut [f32],
    xs: &'a mut [f32],
    qsum: &'a mut [i32],
}

fn quantize_row(isa: Isa, x: &[f32], r: QRow) {
    for g in 0..r.d.len() {
        let (xb, qb) = (&x[32 * g..32 * g + 32], &mut r.q[32 * g..32 * g + 32]);
        let (dg, halves) = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Vnni512 | Isa::VnniAvx | Isa::Avx2 => unsafe { simd::quantize_block(xb, qb) },
            _ => quantize_block_scalar(xb, qb),
        };
        r.d[g] = dg;
        r.xs[g] = dg * (halves[0] + halves[1]) as f32;
        r.qsum[2 * g..2 * g + 2].copy_from_slice(&halves);
    }
}

impl MatmulScratch {
    /// Quantize m rows of k (a multiple of 32).
    fn quantize(&mut self, isa: Isa, x: &[f32], m: usize, k: usize) -> XView {
        let nsub = k / 32;
        grow(&mut self.q, m * k);
        grow(&mut self.d, m * nsub);
        grow(&mut self.xs, m * nsub);
        grow(&mut self.qsum, 2 * m * nsub);
        let rows = self.q[..m * k]
            .chunks_mut(k)
            .zip(self.d.chunks_mut(nsub))
            .zip(self.xs.chunks_mut(nsub))
            .zip(self.qsum.chunks_mut(2 * nsub))
            .map(|(((q, d), xs), qsum)| QRow { q, d, xs, qsum });
        let row = |(i, r): (usize, QRow)| quantize_row(isa, &x[i * k..(i + 1) * k], r);
        if m * k < 1 << 16 {
            rows.enumerate().for_each(row);
        } else {
            rows.enumerate().par_bridge().for_each(row);
        }
        XView {
            q: self.q.as_ptr(),
            d: self.d.as_ptr(),
            xs: self.xs.as_ptr(),
            qsum: self.qsum.as_ptr(),
            nsub,
        }
    }
}

fn grow<T: Default + Clone>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

// ---------------------------------------------------------------------------------------------
// matmul.

/// y[i * ldy + j] = sum_kk x[i * k + kk] * W[j, kk]   for i < m, j < w.rows(), k = w.cols().
/// Other entries of y are untouched. Uses all rayon threads (split over output rows j).
pub fn matmul(
    w: &CpuWeight,
    x: &[f32],
    m: usize,
    y: &mut [f32],
    ldy: usize,
    scratch: &mut MatmulScratch,
) {
    matmul_isa(cur_isa(), w, x, m, y, ldy, scratch)
}

pub(crate) fn matmul_isa(
    isa: Isa,
    w: &CpuWeight,
    x: &[f32],
    m: usize,
    y: &mut [f32],
    ldy: usize,
    scratch: &mut MatmulScratch,
) {
    let (n, k) = (w.rows, w.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        x.len() >= m * k,
        "matmul: x has {} values, need {m} x {k}",
        x.len()
    );
    assert!(m == 1 || ldy >= n, "matmul: ldy {ldy} < rows {n}");
    assert!(y.len() >= (m - 1) * ldy + n, "matmul: y too short");
    let yp = YPtr {
        p: y.as_mut_ptr(),
        ldy,
    };
    let rows = match &w.data {
        Data::F32(wf) => {
            return for_chunks(n, m * n * k, |j0, j1| {
                f32_chunk(isa, wf, k, x, m, j0, j1, yp)
            })
        }
        Data::Blocks(wb) => Rows::Plain(wb, w.row_bytes()),
        Data::Grouped(wg) => Rows::Grouped(wg, k),
    };
    let xv = scratch.quantize(isa, x, m, k);
    for_chunks(n, m * n * k, |j0, j1| {
        quant_chunk(isa, w.dtype, rows, &xv, m, j0, j1, yp)
    });
}

/// Where a quantized weight's rows are: GGUF rows of `row bytes`, or groups of `cols` columns.
#[derive(Clone, Copy)]
enum Rows<'a> {
    Plain(&'a [u8], usize),
    Grouped(&'a [u8], usize),
}

impl Rows<'_> {
    /// Row j's GGUF blocks (a grouped row is copied out into `buf`).
    fn row<'b>(&'b self, t: GgmlType, j: usize, buf: &'b mut Vec<u8>) -> &'b [u8] {
        match *self {
            Rows::Plain(w, rb) => &w[j * rb..(j + 1) * rb],
            Rows::Grouped(g, cols) => {
                grow(buf, t.row_bytes(cols));
                groups::row_of_groups(t, g, cols, j, buf);
                &buf[..t.row_bytes(cols)]
            }
        }
    }
}

/// Run f over output-row ranges: a few chunks per thread (multiples of 16 rows, so of GROUP), or one call
/// when the work is too small to pay for the threads.
fn for_chunks(n: usize, work: usize, f: impl Fn(usize, usize) + Sync) {
    const { assert!(16 % GROUP == 0) };
    let threads = rayon::current_num_threads();
    if threads == 1 || work < 1 << 18 || n < 32 {
        return f(0, n);
    }
    let chunk = n.div_ceil(threads * 4).next_multiple_of(16);
    (0..n.div_ceil(chunk))
        .into_par_iter()
        .for_each(|c| f(c * chunk, (c * chunk + chunk).min(n)));
}

#[allow(clippy::too_many_arguments)]
fn quant_chunk(
    isa: Isa,
    t: GgmlType,
    rows: Rows,
    x: &XView,
    m: usize,
    j0: usize,
    j1: usize,
    y: YPtr,
) {
    #[cfg(target_arch = "x86_64")]
    if let (Rows::Grouped(wg, k), false) = (rows, isa == Isa::Portable) {
        // Safety: isa was detected (or is a subset of it in tests); shapes checked by matmul.
        return unsafe { simd::chunk_grouped(isa, t, wg, k / t.block_elems(), x, m, j0, j1, y) };
    }
    let _ = isa;
    portable_chunk(t, rows, x, m, j0, j1, y)
}

#[allow(clippy::too_many_arguments)]
fn f32_chunk(isa: Isa, w: &[f32], k: usize, x: &[f32], m: usize, j0: usize, j1: usize, y: YPtr) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        return unsafe { simd::chunk_f32(w, k, x, m, j0, j1, y) };
    }
    let _ = isa;
    for j in j0..j1 {
        let wr = &w[j * k..(j + 1) * k];
        for i in 0..m {
            let s = wr
                .iter()
                .zip(&x[i * k..(i + 1) * k])
                .fold(0f32, |s, (a, b)| s + a * b);
            unsafe { y.put(i, j, s) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Portable kernels: unpack a weight row to integers w (u, or signed for Q8_0), per-16 scales and
// per-32 additive terms, then integer dots with the int8 activations.

fn portable_offset(t: GgmlType) -> i32 {
    match t {
        GgmlType::Q4_0 => 8,
        GgmlType::Q5_0 => 16,
        GgmlType::Q6K => 32,
        _ => 0,
    }
}

#[derive(Default)]
struct RowBuf {
    /// A grouped row's GGUF blocks.
    bytes: Vec<u8>,
    w: Vec<i32>,
    s: Vec<f32>,
    b: Vec<f32>,
}

thread_local! {
    static ROW: RefCell<RowBuf> = RefCell::new(RowBuf::default());
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// One block: w (QK integers), s (2 per 32), b (1 per 32).
fn unpack_block(t: GgmlType, p: &[u8], w: &mut [i32], s: &mut [f32], b: &mut [f32]) {
    let nib = |qs: &[u8], e: usize| if e < 16 { qs[e] & 0xF } else { qs[e - 16] >> 4 } as i32;
    let hb = |qh: &[u8], e: usize| {
        ((u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]) >> e) & 1) as i32 * 16
    };
    match t {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
            let d = f16_at(p, 0);
            (s[0], s[1], b[0]) = (d, d, 0.0);
            for (e, w) in w[..32].iter_mut().enumerate() {
                *w = match t {
                    GgmlType::Q4_0 => nib(&p[2..], e),
                    GgmlType::Q4_1 => nib(&p[4..], e),
                    GgmlType::Q5_0 => nib(&p[6..], e) | hb(&p[2..], e),
                    GgmlType::Q5_1 => nib(&p[8..], e) | hb(&p[4..], e),
                    _ => p[2 + e] as i8 as i32,
                };
            }
            if matches!(t, GgmlType::Q4_1 | GgmlType::Q5_1) {
                b[0] = f16_at(p, 2);
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let (d, dmin) = (f16_at(p, 0), f16_at(p, 2));
            let qs = if t == GgmlType::Q4K {
                &p[16..144]
            } else {
                &p[48..176]
            };
            let (scs, mns) = groups::unpack_scales_k4(&p[4..16]);
            for sb in 0..8 {
                let (sc, mn) = (scs[sb] as f32, mns[sb] as f32);
                (s[2 * sb], s[2 * sb + 1], b[sb]) = (d * sc, d * sc, -dmin * mn);
                for l in 0..32 {
                    let q = qs[32 * (sb / 2) + l];
                    let h = if t == GgmlType::Q5K {
                        ((p[16 + l] >> sb) & 1) as i32 * 16
                    } else {
                        0
                    };
                    w[32 * sb + l] = (if sb % 2 == 0 { q & 0xF } else { q >> 4 }) as i32 | h;
                }
            }
        }
        GgmlType::Q6K => {
            let d = f16_at(p, 208);
            for sb in 0..8 {
                let (n, r) = (sb / 4, sb % 4);
                b[sb] = 0.0;
                s[2 * sb] = d * (p[192 + 8 * n + 2 * r] as i8) as f32;
                s[2 * sb + 1] = d * (p[192 + 8 * n + 2 * r + 1] as i8) as f32;
                for l in 0..32 {
                    let ql = p[64 * n + 32 * (r & 1) + l];
                    let ql = if r < 2 { ql & 0xF } else { ql >> 4 };
                    let qh = (p[128 + 32 * n + l] >> (2 * r)) & 3;
                    w[32 * sb + l] = (ql | (qh << 4)) as i32;
                }
            }
        }
        _ => unreachable!("float weights have no blocks"),
    }
}

#[allow(clippy::too_many_arguments)]
fn portable_chunk(t: GgmlType, rows: Rows, x: &XView, m: usize, j0: usize, j1: usize, y: YPtr) {
    let (k, bb, qk) = (x.nsub * 32, t.block_bytes(), t.block_elems());
    let c = portable_offset(t);
    ROW.with(|buf| {
        let buf = &mut *buf.borrow_mut();
        grow(&mut buf.w, k);
        grow(&mut buf.s, 2 * x.nsub);
        grow(&mut buf.b, x.nsub);
        for j in j0..j1 {
            let row = rows.row(t, j, &mut buf.bytes);
            for (blk, p) in row.chunks_exact(bb).enumerate() {
                let g = blk * qk / 32;
                unpack_block(
                    t,
                    p,
                    &mut buf.w[blk * qk..],
                    &mut buf.s[2 * g..],
                    &mut buf.b[g..],
                );
            }
            for i in 0..m {
                // Safety: the view holds m rows of nsub blocks; y checked by matmul.
                unsafe { y.put(i, j, portable_dot(buf, x, i, c)) };
            }
        }
    });
}

unsafe fn portable_dot(buf: &RowBuf, x: &XView, i: usize, c: i32) -> f32 {
    let (mut acc, mut accb) = (0f32, 0f32);
    for g in 0..x.nsub {
        let xg = i * x.nsub + g;
        let q = std::slice::from_raw_parts(x.q.add(xg * 32), 32);
        let dx = *x.d.add(xg);
        let half = |h: usize| {
            let r = 16 * h..16 * h + 16;
            let dot: i32 = buf.w[32 * g..][r.clone()]
                .iter()
                .zip(&q[r.clone()])
                .map(|(&w, &q)| w * q as i32)
                .sum();
            dot - c * q[r].iter().map(|&q| q as i32).sum::<i32>()
        };
        acc += half(0) as f32 * dx * buf.s[2 * g] + half(1) as f32 * dx * buf.s[2 * g + 1];
        accb += buf.b[g] * *x.xs.add(xg);
    }
    acc + accb
}

// ---------------------------------------------------------------------------------------------
// f32 vector helpers.

/// Fixed-order SIMD f32 dot product (for attention scores / weighted sums).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if cur_isa() != Isa::Portable {
        return unsafe { simd::dot_f32(a, b) };
    }
    a.iter().zip(b).fold(0f32, |s, (x, y)| s + x * y)
}

/// y[i] += a * x[i]  (SIMD axpy, for attention's weighted V sum).
pub fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy_f32: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if cur_isa() != Isa::Portable {
        return unsafe { simd::axpy_f32(a, x, y) };
    }
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[cfg(test)]
pub(super) mod tests {
    // The format list lives with the lower module's tests, which use it too.
    use super::*;
    use crate::backend::cpu::groups::tests::ALL;
    use crate::cpu::SplitMix64;

    /// Offsets of the f16 scale fields in a block (random bytes elsewhere are valid quants).
    fn f16_fields(t: GgmlType) -> &'static [usize] {
        match t {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
            GgmlType::Q6K => &[208],
            _ => &[],
        }
    }

    /// Random weight bytes with sane scales.
    fn random_weight(t: GgmlType, rows: usize, cols: usize, rng: &mut SplitMix64) -> Vec<u8> {
        let n = rows * cols;
        match t {
            GgmlType::F32 => rng
                .vec_f32(n)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            GgmlType::F16 => rng
                .vec_f32(n)
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
            GgmlType::BF16 => rng
                .vec_f32(n)
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => {
                let mut b: Vec<u8> = (0..t.row_bytes(n)).map(|_| rng.next_u64() as u8).collect();
                for blk in b.chunks_exact_mut(t.block_bytes()) {
                    for &o in f16_fields(t) {
                        blk[o..o + 2]
                            .copy_from_slice(&f16::from_f32(0.1 * rng.next_f32()).to_le_bytes());
                    }
                }
                b
            }
        }
    }

    fn widths(t: GgmlType) -> Vec<usize> {
        match t.block_elems() {
            256 => vec![256, 512, 768],
            _ => vec![32, 96, 160],
        }
    }

    /// f64 reference from the dequantized weights; `xq` replaces x by its int8 quantization.
    /// The last entry is the typical magnitude of a dot (max of sum |terms| / sqrt(k)), which
    /// scales the error when few outputs happen to be small.
    fn reference(w: &CpuWeight, x: &[f32], m: usize, xq: bool) -> Vec<f64> {
        let (n, k) = (w.rows(), w.cols());
        let wf = w.to_f32();
        let mut xr = x[..m * k].to_vec();
        if xq && w.dtype().block_elems() > 1 {
            for blk in xr.chunks_exact_mut(32) {
                let mut q = [0i8; 32];
                let (d, _) = quantize_block_scalar(blk, &mut q);
                blk.iter_mut().zip(q).for_each(|(v, q)| *v = q as f32 * d);
            }
        }
        let (mut y, mut typical) = (vec![0f64; m * n], 0f64);
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|kk| xr[i * k + kk] as f64 * wf[j * k + kk] as f64);
                y[i * n + j] = terms.clone().sum();
                typical = typical.max(terms.map(f64::abs).sum::<f64>() / (k as f64).sqrt());
            }
        }
        y.push(typical);
        y
    }

    fn rel_err(y: &[f32], r: &[f64]) -> f64 {
        let scale = r.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        y.iter()
            .zip(r)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max)
            / scale
    }

    fn run(isa: Isa, w: &CpuWeight, x: &[f32], m: usize, ldy: usize) -> Vec<f32> {
        let mut y = vec![f32::NAN; (m - 1) * ldy + w.rows()];
        matmul_isa(isa, w, x, m, &mut y, ldy, &mut MatmulScratch::default());
        y
    }

    fn dense(y: &[f32], m: usize, n: usize, ldy: usize) -> Vec<f32> {
        (0..m)
            .flat_map(|i| y[i * ldy..i * ldy + n].to_vec())
            .collect()
    }

    #[test]
    fn matches_reference_all_formats() {
        let mut rng = SplitMix64(7);
        for t in ALL {
            let float = t.block_elems() == 1;
            for &k in &widths(t) {
                for rows in [1, 3, 17, 67] {
                    let w =
                        CpuWeight::new(t, rows, k, &random_weight(t, rows, k, &mut rng)).unwrap();
                    for m in [1, 2, 5, 9, 13] {
                        let x = rng.vec_f32(m * k);
                        let y = run(cur_isa(), &w, &x, m, rows);
                        let e = rel_err(&y, &reference(&w, &x, m, false));
                        // int8 activations: per-element error up to max|x| / 254, ~1e-2 of a 32-term dot at 2.5 sigma.
                        assert!(
                            e < if float { 1e-5 } else { 2e-2 },
                            "{} [{rows}x{k}] m={m}: err {e}",
                            t.name()
                        );
                        let eq = rel_err(&y, &reference(&w, &x, m, true));
                        assert!(
                            eq < 1e-5,
                            "{} [{rows}x{k}] m={m}: err vs int8 ref {eq}",
                            t.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn batch_invariance() {
        let mut rng = SplitMix64(11);
        for t in ALL {
            let (n, k, m) = (67, *widths(t).last().unwrap(), 29);
            let wb = random_weight(t, n, k, &mut rng);
            let w = CpuWeight::new(t, n, k, &wb).unwrap();
            let x = rng.vec_f32(m * k);
            let y = run(cur_isa(), &w, &x, m, n);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            for i in 0..m {
                let y1 = run(cur_isa(), &w, &x[i * k..(i + 1) * k], 1, n);
                assert_eq!(
                    bits(&y1),
                    bits(&y[i * n..(i + 1) * n]),
                    "{} row {i}",
                    t.name()
                );
            }
            let wide = run(cur_isa(), &w, &x, m, n + 7);
            assert_eq!(
                bits(&dense(&wide, m, n, n + 7)),
                bits(&y),
                "{} ldy",
                t.name()
            );
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let yt = pool.install(|| run(cur_isa(), &w, &x, m, n));
                assert_eq!(bits(&yt), bits(&y), "{} {threads} threads", t.name());
            }
            // Drop the first weight row: every row changes partner in the two-row tiles.
            let rb = t.row_bytes(k);
            let ws = CpuWeight::new(t, n - 1, k, &wb[rb..]).unwrap();
            let ys = run(cur_isa(), &ws, &x, m, n - 1);
            for i in 0..m {
                assert_eq!(
                    bits(&ys[i * (n - 1)..(i + 1) * (n - 1)]),
                    bits(&y[i * n + 1..(i + 1) * n]),
                    "{} shifted",
                    t.name()
                );
            }
        }
    }

    #[test]
    fn portable_and_every_simd_isa_agree() {
        let mut rng = SplitMix64(13);
        let mut isas = vec![cur_isa()];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                isas.push(Isa::Avx2);
                if is_x86_feature_detected!("avxvnni") {
                    isas.push(Isa::VnniAvx);
                }
            }
        }
        for t in ALL {
            let (n, k, m) = (37, widths(t)[1], 6);
            let w = CpuWeight::new(t, n, k, &random_weight(t, n, k, &mut rng)).unwrap();
            let x = rng.vec_f32(m * k);
            let yp = run(Isa::Portable, &w, &x, m, n);
            let yp64: Vec<f64> = yp.iter().map(|v| *v as f64).collect();
            for &isa in &isas {
                let y = run(isa, &w, &x, m, n);
                let e = rel_err(&y, &yp64);
                assert!(e < 1e-5, "{} {isa:?} vs portable: {e}", t.name());
                // All SIMD paths compute the same integer dots and the same float sequence.
                let y0 = run(isas[0], &w, &x, m, n);
                if isa != Isa::Portable && isas[0] != Isa::Portable {
                    assert!(
                        y.iter().zip(&y0).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{} {isa:?} vs {:?}",
                        t.name(),
                        isas[0]
                    );
                }
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_quantizer_matches_scalar() {
        let mut rng = SplitMix64(17);
        for case in 0..200 {
            let mut x = rng.vec_f32(32);
            if case % 7 == 0 {
                x.iter_mut().for_each(|v| *v = (*v * 8.0).round() / 4.0); // exact ties
            }
            if case == 1 {
                x.fill(0.0);
            }
            let (mut q0, mut q1) = ([0i8; 32], [0i8; 32]);
            let r0 = quantize_block_scalar(&x, &mut q0);
            if cur_isa() != Isa::Portable {
                let r1 = unsafe { simd::quantize_block(&x, &mut q1) };
                assert_eq!((r0.0.to_bits(), r0.1, q0), (r1.0.to_bits(), r1.1, q1));
            }
        }
    }

    #[test]
    fn dot_and_axpy() {
        let mut rng = SplitMix64(19);
        for n in 1..=70 {
            let (a, b) = (rng.vec_f32(n), rng.vec_f32(n));
            let r: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let scale: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (*x as f64 * *y as f64).abs())
                .sum::<f64>()
                .max(1e-30);
            assert!(
                (dot_f32(&a, &b) as f64 - r).abs() / scale < 1e-5,
                "dot n={n}"
            );
            let mut y = b.clone();
            axpy_f32(0.37, &a, &mut y);
            for i in 0..n {
                let r = b[i] as f64 + 0.37 * a[i] as f64;
                assert!(
                    (y[i] as f64 - r).abs() <= 1e-5 * r.abs().max(1.0),
                    "axpy n={n} i={i}"
                );
            }
        }
    }

    /// CPU seconds of the calling thread (immune to other processes sharing the cores).
    #[cfg(target_os = "linux")]
    fn thread_cpu_s() -> f64 {
        extern "C" {
            fn clock_gettime(clk: i32, ts: *mut [i64; 2]) -> i32;
        }
        let mut ts = [0i64; 2];
        unsafe { clock_gettime(3, &mut ts) }; // CLOCK_THREAD_CPUTIME_ID
        ts[0] as f64 + ts[1] as f64 * 1e-9
    }

    #[cfg(not(target_os = "linux"))]
    fn thread_cpu_s() -> f64 {
        f64::NAN // min() then keeps the wall time
    }

    /// Fastest (wall, thread CPU) seconds of a call of f: the minimum filters out the other
    /// processes sharing the cores.
    fn time(f: &mut dyn FnMut()) -> (f64, f64) {
        use std::time::Instant;
        f();
        let (t0, mut best, mut n) = (Instant::now(), (f64::MAX, f64::MAX), 0);
        while n < 10 || t0.elapsed().as_secs_f64() < 0.5 {
            let (t, c) = (Instant::now(), thread_cpu_s());
            f();
            best = (
                best.0.min(t.elapsed().as_secs_f64()),
                best.1.min(thread_cpu_s() - c),
            );
            n += 1;
        }
        best
    }

    /// Throughput report: `cargo test --release -p creme-core --lib qmatmul::tests::speed -- --ignored --nocapture`.
    /// m = 1 cycles through copies of the weight (> 600 MB, beyond the L3) so that it streams
    /// from memory as in decoding; single-thread lines also give the thread-CPU-time figure.
    #[test]
    #[ignore]
    fn speed() {
        println!("isa {}", isa());
        let shapes = [
            (GgmlType::Q5_0, 4864, 896),
            (GgmlType::Q5_0, 896, 4864),
            (GgmlType::Q8_0, 896, 896),
            (GgmlType::Q4K, 896, 4864),
            (GgmlType::Q6K, 896, 4864),
        ];
        let only = std::env::var("SPEED_ONLY").unwrap_or_default();
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                if std::env::var("SPEED_M").is_ok() {
                    return;
                }
                let mem = vec![1u64; 100 << 20];
                let (s, c) = time(&mut || {
                    let v = mem
                        .par_chunks(1 << 14)
                        .map(|c| c.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
                        .reduce(|| 0, u64::wrapping_add);
                    std::hint::black_box(v);
                });
                println!(
                    "{threads} thread(s): sum of 800 MB: {:.1} GB/s (cpu {:.1})",
                    0.8388608 / s,
                    0.8388608 / c
                );
            });
            let mut rng = SplitMix64(3);
            for (t, n, k) in shapes {
                if !only.is_empty() && !t.name().contains(&only) {
                    continue;
                }
                let wb = random_weight(t, n, k, &mut rng);
                let copies: Vec<CpuWeight> = (0..(600 << 20) / wb.len() + 1)
                    .take(if std::env::var("SPEED_M").is_ok_and(|v| v != "1") {
                        1
                    } else {
                        usize::MAX
                    })
                    .map(|_| CpuWeight::new(t, n, k, &wb).unwrap())
                    .collect();
                for m in [1, 64] {
                    if std::env::var("SPEED_M").is_ok_and(|v| v != m.to_string()) {
                        continue;
                    }
                    let x = rng.vec_f32(m * k);
                    let mut y = vec![0f32; m * n];
                    let mut sc = MatmulScratch::default();
                    let mut c = 0;
                    let (s, cpu) = pool.install(|| {
                        time(&mut || {
                            c = if m == 1 { (c + 1) % copies.len() } else { 0 };
                            matmul(&copies[c], &x, m, &mut y, n, &mut sc)
                        })
                    });
                    let s = if threads == 1 { s.min(cpu) } else { s };
                    let gbs = wb.len() as f64 / s / 1e9;
                    let gops = 2.0 * (m * n * k) as f64 / s / 1e9;
                    println!("{threads} thread(s): {:5} [{n:4} x {k:4}] m={m:2}: {:8.1} us  {gbs:6.1} GB/s  {gops:6.1} GOP/s", t.name(), s * 1e6);
                }
            }
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(CpuWeight::new(GgmlType::Q4_0, 2, 48, &[0; 100]).is_err());
        assert!(CpuWeight::new(GgmlType::Q4_0, 2, 32, &[0; 35]).is_err());
        assert!(CpuWeight::new(GgmlType::Q4_0, 2, 32, &[0; 36]).is_ok());
    }
}
