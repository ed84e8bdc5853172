//! x86-64 kernels for `qmatmul`: weights in groups of 8 rows (`groups.rs`) unpacked with AVX2 into
//! unsigned bytes, 4 weights of each row per 32-bit lane, and the u8 x s8 dot by VNNI
//! (`vpdpbusd`) or AVX2 (`maddubs` + `madd`) against 4 activations broadcast to every lane.
//!
//! Every (x row, weight row) pair goes through exactly the same instruction sequence whatever the
//! tile it falls in (`g_tile::<R>` is one generic body, and a row's lane never meets another
//! lane), so results do not depend on the batch, the thread split or the row's group.

#![allow(clippy::too_many_arguments, clippy::needless_range_loop)] // register tiles indexed by const loops

use std::arch::x86_64::*;

use super::{GgmlType, Isa, XView, YPtr};

// ---------------------------------------------------------------------------------------------
// The int8 dot product: lane k of the result = acc_k + sum of u[4k..4k+4] * q[4k..4k+4].

pub(super) trait Dot {
    /// 32 vector registers.
    const WIDE: bool = false;
    unsafe fn dot(acc: __m256i, u: __m256i, q: __m256i) -> __m256i;
}

pub(super) struct Avx2;
pub(super) struct Vnni512;
pub(super) struct VnniAvx;

impl Dot for Avx2 {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, u: __m256i, q: __m256i) -> __m256i {
        // No i16 saturation: u <= 63 (or |w| <= 128 for Q8_0 with |q| <= 127) keeps pairs < 2^15.
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), _mm256_set1_epi16(1));
        _mm256_add_epi32(acc, p)
    }
}

impl Dot for Vnni512 {
    const WIDE: bool = true;
    #[inline(always)]
    unsafe fn dot(acc: __m256i, u: __m256i, q: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, q)
    }
}

impl Dot for VnniAvx {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, u: __m256i, q: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, u, q)
    }
}

// ---------------------------------------------------------------------------------------------
// Block formats: their constants. Weights become unsigned codes u with scales; an offset
// (u = w + OFFSET) is folded into the integer dot through the activations' block sums, and
// formats with mins add min * (dx * sum q).

pub(super) trait Fmt {
    const QK: usize;
    /// Bytes of a GGUF block.
    const BB: usize;
    const OFFSET: i32 = 0;
    const MINS: bool = false;
    /// Q8_0 with the sign trick (u = |w|, q' = sign(q, w)): for maddubs, which saturates.
    const SIGN: bool = false;
}

macro_rules! format {
    ($name:ident, $qk:expr, $bb:expr, $offset:expr, $mins:expr, $sign:expr) => {
        pub(super) struct $name;
        impl Fmt for $name {
            const QK: usize = $qk;
            const BB: usize = $bb;
            const OFFSET: i32 = $offset;
            const MINS: bool = $mins;
            const SIGN: bool = $sign;
        }
    };
}
format!(Q40, 32, 18, 8, false, false);
format!(Q41, 32, 20, 0, true, false);
format!(Q50, 32, 22, 16, false, false);
format!(Q51, 32, 24, 0, true, false);
// Q8_0 on AVX2 (the sign trick), and as u = w + 128 on VNNI (i32 accumulation, no saturation).
format!(Q8s, 32, 34, 0, false, true);
format!(Q8o, 32, 34, 128, false, false);
format!(Q4K, 256, 144, 0, true, false);
format!(Q5K, 256, 176, 0, true, false);
format!(Q6K, 256, 210, 32, false, false);

/// Bit e of the 32 bits at p -> 0x10 in byte e (the fifth bit of Q5_0 / Q5_1 element e).
#[inline(always)]
unsafe fn hbits32(p: *const u8) -> __m256i {
    let x = (p as *const u32).read_unaligned() as i32;
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x), shuf);
    let bits = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_and_si256(
        _mm256_cmpeq_epi8(bits, _mm256_set1_epi64x(-1)),
        _mm256_set1_epi8(0x10),
    )
}

/// Fixed horizontal sum (the same everywhere, so tiles agree bit for bit).
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Weight rows per cache block: about 32 KB of blocks, reused by every activation tile.
fn jblock(row_bytes: usize) -> usize {
    ((32 << 10) / row_bytes.max(1)).max(2) & !1
}

// ---------------------------------------------------------------------------------------------
// Grouped weights (`groups.rs`): one vector holds 4 weights of each of 8 rows, so lane j of an
// integer dot is row j's and the float work is done once per block for 8 rows.

/// Sub-block t of a group block: 8 chunks of unsigned codes (chunk c: elements 4c..4c+4 of the 8
/// rows), the 8 rows' scales of its two halves (the same twice but for Q6_K) and their mins.
#[derive(Clone, Copy)]
pub(super) struct GSub {
    u: [__m256i; 8],
    s: [__m256; 2],
    m: __m256,
}

/// A grouped format (`groups.rs`); `Fmt` gives its GGUF block, offset and mins.
pub(super) trait GFmt: Fmt {
    /// Bytes of a group block.
    const GB: usize = 8 * Self::BB;
    /// Two scales per sub-block, one per 16 values (Q6_K).
    const HALVES: bool = false;
    type GPre: Copy;
    unsafe fn g_pre(p: *const u8) -> Self::GPre;
    unsafe fn g_sub(p: *const u8, pre: &Self::GPre, t: usize) -> GSub;
}

/// Offset of the quants in a 32-value group block (after d, the mins and qh).
const fn g_quants(mins: bool, high: bool) -> usize {
    16 + if mins { 16 } else { 0 } + if high { 32 } else { 0 }
}

/// The one sub-block of a 32-value group block (`bytes`: Q8_0; `high`: a fifth bit).
#[inline(always)]
unsafe fn g_sub32<F: Fmt>(p: *const u8, bytes: bool, high: bool) -> GSub {
    let s = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
    let m = if F::MINS {
        _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const __m128i))
    } else {
        _mm256_setzero_ps()
    };
    let q = p.add(g_quants(F::MINS, high));
    let mut u = [_mm256_setzero_si256(); 8];
    if bytes {
        for (c, uc) in u.iter_mut().enumerate() {
            let w = _mm256_loadu_si256(q.add(32 * c) as *const __m256i);
            *uc = if F::SIGN {
                _mm256_abs_epi8(w)
            } else {
                _mm256_xor_si256(w, _mm256_set1_epi8(-128))
            };
        }
    } else {
        let lo = _mm256_set1_epi8(0xF);
        for h in 0..4 {
            let l = _mm256_loadu_si256(q.add(32 * h) as *const __m256i);
            u[2 * h] = _mm256_and_si256(l, lo);
            u[2 * h + 1] = _mm256_and_si256(_mm256_srli_epi16(l, 4), lo);
        }
        if high {
            let qh = p.add(16 + if F::MINS { 16 } else { 0 });
            for (c, uc) in u.iter_mut().enumerate() {
                *uc = _mm256_or_si256(*uc, hbits32(qh.add(4 * c)));
            }
        }
    }
    GSub { u, s: [s, s], m }
}

macro_rules! grouped32 {
    ($t:ty, $bytes:expr, $high:expr) => {
        impl GFmt for $t {
            type GPre = ();
            #[inline(always)]
            unsafe fn g_pre(_: *const u8) {}
            #[inline(always)]
            unsafe fn g_sub(p: *const u8, _: &(), _: usize) -> GSub {
                g_sub32::<$t>(p, $bytes, $high)
            }
        }
    };
}
grouped32!(Q40, false, false);
grouped32!(Q41, false, false);
grouped32!(Q50, false, true);
grouped32!(Q51, false, true);
grouped32!(Q8s, true, false);
grouped32!(Q8o, true, false);

/// The nibbles of sub-block t in a K group block's low-bit vectors at `q` ([t/2][c]).
#[inline(always)]
unsafe fn g_nibbles(q: *const u8, t: usize) -> [__m256i; 8] {
    let shift = _mm_cvtsi32_si128(4 * (t % 2) as i32);
    std::array::from_fn(|c| {
        let l = _mm256_loadu_si256(q.add(32 * (8 * (t / 2) + c)) as *const __m256i);
        _mm256_and_si256(_mm256_srl_epi16(l, shift), _mm256_set1_epi8(0xF))
    })
}

/// 8 bytes (one per row) as floats times `d`.
#[inline(always)]
unsafe fn g_scale8(p: *const u8, signed: bool, d: __m256) -> __m256 {
    let b = _mm_loadl_epi64(p as *const __m128i);
    let i = if signed {
        _mm256_cvtepi8_epi32(b)
    } else {
        _mm256_cvtepu8_epi32(b)
    };
    _mm256_mul_ps(_mm256_cvtepi32_ps(i), d)
}

impl GFmt for Q4K {
    const GB: usize = 1184;
    /// d and -dmin of the 8 rows.
    type GPre = [__m256; 2];
    #[inline(always)]
    unsafe fn g_pre(p: *const u8) -> [__m256; 2] {
        let dmin = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const __m128i));
        [
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
            _mm256_sub_ps(_mm256_setzero_ps(), dmin),
        ]
    }
    #[inline(always)]
    unsafe fn g_sub(p: *const u8, pre: &[__m256; 2], t: usize) -> GSub {
        let s = g_scale8(p.add(32 + 8 * t), false, pre[0]);
        GSub {
            u: g_nibbles(p.add(160), t),
            s: [s, s],
            m: g_scale8(p.add(96 + 8 * t), false, pre[1]),
        }
    }
}

impl GFmt for Q5K {
    const GB: usize = 1440;
    type GPre = [__m256; 2];
    #[inline(always)]
    unsafe fn g_pre(p: *const u8) -> [__m256; 2] {
        Q4K::g_pre(p)
    }
    #[inline(always)]
    unsafe fn g_sub(p: *const u8, pre: &[__m256; 2], t: usize) -> GSub {
        let mut sub = Q4K::g_sub(p, pre, t);
        let shift = _mm_cvtsi32_si128(t as i32);
        for (c, uc) in sub.u.iter_mut().enumerate() {
            let h = _mm256_loadu_si256(p.add(1184 + 32 * c) as *const __m256i);
            let h = _mm256_and_si256(_mm256_srl_epi16(h, shift), _mm256_set1_epi8(1));
            *uc = _mm256_or_si256(*uc, _mm256_slli_epi16(h, 4));
        }
        sub
    }
}

impl GFmt for Q6K {
    const HALVES: bool = true;
    type GPre = __m256;
    #[inline(always)]
    unsafe fn g_pre(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn g_sub(p: *const u8, d: &__m256, t: usize) -> GSub {
        let mut u = g_nibbles(p.add(144), t);
        let shift = _mm_cvtsi32_si128(2 * (t % 4) as i32);
        for (c, uc) in u.iter_mut().enumerate() {
            let h = _mm256_loadu_si256(p.add(1168 + 32 * (8 * (t / 4) + c)) as *const __m256i);
            let h = _mm256_and_si256(_mm256_srl_epi16(h, shift), _mm256_set1_epi8(3));
            *uc = _mm256_or_si256(*uc, _mm256_slli_epi16(h, 4));
        }
        GSub {
            u,
            s: [
                g_scale8(p.add(16 + 16 * t), true, *d),
                g_scale8(p.add(24 + 16 * t), true, *d),
            ],
            m: _mm256_setzero_ps(),
        }
    }
}

/// The integer dot of chunks `cs` with row `xq` of x (4 bytes broadcast per chunk), from `init`.
#[inline(always)]
unsafe fn g_dot<F: GFmt, D: Dot>(
    sub: &GSub,
    cs: std::ops::Range<usize>,
    xq: *const i32,
    signs: *const u8,
    init: i32,
) -> __m256i {
    let mut dot = _mm256_set1_epi32(init);
    for c in cs {
        let xb = _mm256_set1_epi32(xq.add(c).read_unaligned());
        let xb = if F::SIGN {
            _mm256_sign_epi8(xb, _mm256_loadu_si256(signs.add(32 * c) as *const __m256i))
        } else {
            xb
        };
        dot = D::dot(dot, sub.u[c], xb);
    }
    dot
}

/// Rows i0..i0+R of x against the 8 rows of the group at `g` (nb group blocks): lane j of entry
/// i is y[i0 + i, row j]. Every (row of x, weight row) pair runs the same sequence whatever R.
#[inline(always)]
unsafe fn g_tile<F: GFmt, D: Dot, const R: usize>(
    g: *const u8,
    nb: usize,
    x: &XView,
    i0: usize,
) -> [__m256; R] {
    let ns = F::QK / 32;
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let p = g.add(b * F::GB);
        if R <= 2 {
            // Decode streams the weights from memory: ask for them ~4 KB ahead.
            for line in (0..F::GB).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(p.add(4096 + line) as *const i8);
            }
        }
        let pre = F::g_pre(p);
        // Q8_0's sign trick (AVX2) reads the signed weights again.
        let signs = p.add(16);
        for t in 0..ns {
            let sub = F::g_sub(p, &pre, t);
            for i in 0..R {
                let row = (i0 + i) * x.nsub + b * ns + t;
                let xq = x.q.add(32 * row) as *const i32;
                let (lo, hi) = (*x.qsum.add(2 * row), *x.qsum.add(2 * row + 1));
                let dx = _mm256_set1_ps(*x.d.add(row));
                if F::HALVES {
                    let d0 = g_dot::<F, D>(&sub, 0..4, xq, signs, -F::OFFSET * lo);
                    let d1 = g_dot::<F, D>(&sub, 4..8, xq, signs, -F::OFFSET * hi);
                    let s0 = _mm256_mul_ps(sub.s[0], dx);
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), s0, acc[i]);
                    let s1 = _mm256_mul_ps(sub.s[1], dx);
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), s1, acc[i]);
                } else {
                    let d = g_dot::<F, D>(&sub, 0..8, xq, signs, -F::OFFSET * (lo + hi));
                    let s = _mm256_mul_ps(sub.s[0], dx);
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), s, acc[i]);
                }
                if F::MINS {
                    acc[i] = _mm256_fmadd_ps(sub.m, _mm256_set1_ps(*x.xs.add(row)), acc[i]);
                }
            }
        }
    }
    acc
}

/// Rows i0..i0+R of y for the groups of weight rows ja..je (ja a multiple of 8).
#[inline(always)]
unsafe fn g_rows<F: GFmt, D: Dot, const R: usize>(
    w: &[u8],
    nb: usize,
    x: &XView,
    i0: usize,
    ja: usize,
    je: usize,
    y: YPtr,
) {
    for j in (ja..je).step_by(8) {
        let acc = g_tile::<F, D, R>(w.as_ptr().add(j / 8 * nb * F::GB), nb, x, i0);
        for (i, a) in acc.iter().enumerate() {
            y.put8(i0 + i, j, (je - j).min(8), *a);
        }
    }
}

#[inline(always)]
unsafe fn g_chunk_body<F: GFmt, D: Dot>(
    w: &[u8],
    nb: usize,
    x: &XView,
    m: usize,
    j0: usize,
    j1: usize,
    y: YPtr,
) {
    // 32 vector registers hold 16 accumulators beside the 8 chunks; 16 hold 4.
    let rmax = if D::WIDE { 16 } else { 4 };
    let jb = jblock(nb * F::BB).next_multiple_of(8);
    for ja in (j0..j1).step_by(jb) {
        let je = (ja + jb).min(j1);
        let mut i = 0;
        while i < m {
            // Tiles of 16, 8, 4, 2, 1 rows: the same per-pair sequence in each.
            let r = [16, 8, 4, 2, 1]
                .into_iter()
                .find(|&r| r <= rmax && r <= m - i)
                .unwrap();
            match r {
                16 => g_rows::<F, D, 16>(w, nb, x, i, ja, je, y),
                8 => g_rows::<F, D, 8>(w, nb, x, i, ja, je, y),
                4 => g_rows::<F, D, 4>(w, nb, x, i, ja, je, y),
                2 => g_rows::<F, D, 2>(w, nb, x, i, ja, je, y),
                _ => g_rows::<F, D, 1>(w, nb, x, i, ja, je, y),
            }
            i += r;
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn g_chunk_vnni512<F: GFmt>(
    w: &[u8],
    nb: usize,
    x: &XView,
    m: usize,
    j0: usize,
    j1: usize,
    y: YPtr,
) {
    g_chunk_body::<F, Vnni512>(w, nb, x, m, j0, j1, y)
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn g_chunk_vnniavx<F: GFmt>(
    w: &[u8],
    nb: usize,
    x: &XView,
    m: usize,
    j0: usize,
    j1: usize,
    y: YPtr,
) {
    g_chunk_body::<F, VnniAvx>(w, nb, x, m, j0, j1, y)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn g_chunk_avx2<F: GFmt>(
    w: &[u8],
    nb: usize,
    x: &XView,
    m: usize,
    j0: usize,
    j1: usize,
    y: YPtr,
) {
    g_chunk_body::<F, Avx2>(w, nb, x, m, j0, j1, y)
}

unsafe fn g_chunk_fmt<F: GFmt>(
    isa: Isa,
    w: &[u8],
    nb: usize,
    x: &XView,
    m: usize,
    j0: usize,
    j1: usize,
    y: YPtr,
) {
    match isa {
        Isa::Vnni512 => g_chunk_vnni512::<F>(w, nb, x, m, j0, j1, y),
        Isa::VnniAvx => g_chunk_vnniavx::<F>(w, nb, x, m, j0, j1, y),
        _ => g_chunk_avx2::<F>(w, nb, x, m, j0, j1, y),
    }
}

/// Grouped weights (`groups::to_groups`, nb blocks per row): y rows 0..m, output columns j0..j1
/// (j0 a multiple of 8). Safety: `isa` must be supported, and x, y must hold what
/// `qmatmul::matmul` checked.
pub(super) unsafe fn chunk_grouped(
    isa: Isa,
    t: GgmlType,
    w: &[u8],
    nb: usize,
    x: &XView,
    m: usize,
    j0: usize,
    j1: usize,
    y: YPtr,
) {
    match t {
        GgmlType::Q4_0 => g_chunk_fmt::<Q40>(isa, w, nb, x, m, j0, j1, y),
        GgmlType::Q4_1 => g_chunk_fmt::<Q41>(isa, w, nb, x, m, j0, j1, y),
        GgmlType::Q5_0 => g_chunk_fmt::<Q50>(isa, w, nb, x, m, j0, j1, y),
        GgmlType::Q5_1 => g_chunk_fmt::<Q51>(isa, w, nb, x, m, j0, j1, y),
        GgmlType::Q8_0 if isa == Isa::Avx2 => g_chunk_fmt::<Q8s>(isa, w, nb, x, m, j0, j1, y),
        GgmlType::Q8_0 => g_chunk_fmt::<Q8o>(isa, w, nb, x, m, j0, j1, y),
        GgmlType::Q4K => g_chunk_fmt::<Q4K>(isa, w, nb, x, m, j0, j1, y),
        GgmlType::Q5K => g_chunk_fmt::<Q5K>(isa, w, nb, x, m, j0, j1, y),
        GgmlType::Q6K => g_chunk_fmt::<Q6K>(isa, w, nb, x, m, j0, j1, y),
        _ => unreachable!("{} is not grouped", t.name()),
    }
}

// ---------------------------------------------------------------------------------------------
// f32 weights.

#[inline(always)]
unsafe fn tile_f32<const R: usize, const J: usize>(
    w: [*const f32; J],
    x: [*const f32; R],
    k: usize,
) -> [[f32; J]; R] {
    let mut acc = [[_mm256_setzero_ps(); J]; R];
    let k8 = k / 8 * 8;
    for kk in (0..k8).step_by(8) {
        let mut wv = [_mm256_loadu_ps(w[0].add(kk)); J];
        for j in 1..J {
            wv[j] = _mm256_loadu_ps(w[j].add(kk));
        }
        for i in 0..R {
            let xv = _mm256_loadu_ps(x[i].add(kk));
            for j in 0..J {
                acc[i][j] = _mm256_fmadd_ps(wv[j], xv, acc[i][j]);
            }
        }
    }
    let mut out = [[0f32; J]; R];
    for i in 0..R {
        for j in 0..J {
            let mut s = hsum(acc[i][j]);
            for kk in k8..k {
                s += *w[j].add(kk) * *x[i].add(kk);
            }
            out[i][j] = s;
        }
    }
    out
}

#[inline(always)]
unsafe fn rows_f32<const R: usize>(
    w: &[f32],
    k: usize,
    x: &[f32],
    i0: usize,
    j0: usize,
    j1: usize,
    y: YPtr,
) {
    let xp: [*const f32; R] = std::array::from_fn(|i| x.as_ptr().add((i0 + i) * k));
    let wp = |j: usize| w.as_ptr().add(j * k);
    let mut j = j0;
    while j + 1 < j1 {
        let o = tile_f32::<R, 2>([wp(j), wp(j + 1)], xp, k);
        for (i, r) in o.iter().enumerate() {
            y.put(i0 + i, j, r[0]);
            y.put(i0 + i, j + 1, r[1]);
        }
        j += 2;
    }
    if j < j1 {
        let o = tile_f32::<R, 1>([wp(j)], xp, k);
        for (i, r) in o.iter().enumerate() {
            y.put(i0 + i, j, r[0]);
        }
    }
}

/// f32 weights [rows, k]: y rows 0..m, output columns j0..j1. Safety: AVX2 + FMA present.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn chunk_f32(
    w: &[f32],
    k: usize,
    x: &[f32],
    m: usize,
    j0: usize,
    j1: usize,
    y: YPtr,
) {
    let mut i = 0;
    while i < m {
        let r = 4.min(m - i);
        match r {
            4 => rows_f32::<4>(w, k, x, i, j0, j1, y),
            3 => rows_f32::<3>(w, k, x, i, j0, j1, y),
            2 => rows_f32::<2>(w, k, x, i, j0, j1, y),
            _ => rows_f32::<1>(w, k, x, i, j0, j1, y),
        }
        i += r;
    }
}

// ---------------------------------------------------------------------------------------------
// Activation quantization (bit-identical to the scalar `quantize_block`).

/// One block of 32: q, returns d and the sums of q over the two halves.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, [i32; 2]) {
    let xp = x.as_ptr();
    let v = [
        _mm256_loadu_ps(xp),
        _mm256_loadu_ps(xp.add(8)),
        _mm256_loadu_ps(xp.add(16)),
        _mm256_loadu_ps(xp.add(24)),
    ];
    let sign = _mm256_set1_ps(-0.0);
    let a = |t: usize| _mm256_andnot_ps(sign, v[t]);
    let m = _mm256_max_ps(_mm256_max_ps(a(0), a(1)), _mm256_max_ps(a(2), a(3)));
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    // Round to nearest even (the default MXCSR mode), as `round_ties_even` in the scalar code.
    let iv = |t: usize| _mm256_cvtps_epi32(_mm256_mul_ps(v[t], id));
    let p = _mm256_packs_epi16(
        _mm256_packs_epi32(iv(0), iv(1)),
        _mm256_packs_epi32(iv(2), iv(3)),
    );
    let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, p);
    let s4 = _mm256_madd_epi16(
        _mm256_maddubs_epi16(_mm256_set1_epi8(1), p),
        _mm256_set1_epi16(1),
    );
    // Lanes 0-3 of s4 sum elements 0..16 in fours, lanes 4-7 elements 16..32.
    let half = |s: __m128i| {
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
    };
    (
        d,
        [
            half(_mm256_castsi256_si128(s4)),
            half(_mm256_extracti128_si256(s4, 1)),
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// f32 vector helpers.

#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (u, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8 * u)),
                _mm256_loadu_ps(pb.add(i + 8 * u)),
                *a,
            );
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i)),
            _mm256_loadu_ps(pb.add(i)),
            acc[0],
        );
        i += 8;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut s = hsum(v);
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// y += a * x, every element by one fused multiply-add (so its value does not depend on its
/// position in the slice).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(
            py.add(i),
            _mm256_fmadd_ps(av, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i))),
        );
        i += 8;
    }
    while i < n {
        let r = _mm_fmadd_ss(
            _mm_set_ss(a),
            _mm_set_ss(*px.add(i)),
            _mm_set_ss(*py.add(i)),
        );
        *py.add(i) = _mm_cvtss_f32(r);
        i += 1;
    }
}
