//! The grouped weight layout of the x86 kernels: 8 weight rows interleaved block by block.
//!
//! In a group block, 4 consecutive weights of each of the 8 rows sit side by side, so one 256-bit
//! integer dot (`vpdpbusd`) multiplies them with the same 4 activations and lane j of the result
//! belongs to row j. Scaling, converting and accumulating then happen once per block for 8 rows
//! instead of once per row and block, as in llama.cpp's repacked `q4_0_8x8` kernels. A grouped
//! matrix has the same size as its GGUF blocks (rows padded with zero rows to a multiple of 8).
//!
//! Group block b of rows 8g..8g+8, for the 32-value formats:
//!
//! ```text
//! d: 8 f16 | m: 8 f16 (Q4_1, Q5_1) | qh: 8 u32 (Q5_0, Q5_1) | quants
//! ```
//!
//! Chunk c (0..8) holds elements 4c..4c+4 of every row: its byte 4j + e is row j's element 4c + e.
//! Q8_0 stores the 8 chunks as 8 x 32 bytes. The 4-bit formats store 4 x 32 bytes: the low
//! nibbles are chunk 2p, the high nibbles chunk 2p + 1. Bit 4j + e of qh word c is the fifth bit
//! of row j's element 4c + e.
//!
//! The K formats (256 values, 8 sub-blocks t of 32) pair sub-blocks instead of chunks:
//!
//! ```text
//! Q4_K: d: 8 f16 | dmin: 8 f16 | scales [t][row] u8 | mins [t][row] u8 | quants [t/2][c] 32 bytes
//! Q5_K: as Q4_K, then fifth bits [c] 32 bytes
//! Q6_K: d: 8 f16 | scales [16ths][row] i8 | low 4 bits [t/2][c] | high 2 bits [t/4][c] 32 bytes
//! ```
//!
//! In quant vector [t/2][c], byte 4j + e holds row j's element 32t + 4c + e in its low nibble for
//! even t, its high nibble for odd t; the high bits of sub-block t sit at bit t of [c] (Q5_K) or
//! bits 2(t % 4) of [t/4][c] (Q6_K). The 6-bit scales of Q4_K and Q5_K are stored unpacked, so
//! their group blocks are 32 bytes larger than 8 GGUF blocks (1,184 against 1,152 and 1,440
//! against 1,408); the other formats' are the same size.

use crate::quant::GgmlType;

/// Weight rows per group.
pub(crate) const GROUP: usize = 8;

/// Formats stored grouped on x86: every block format.
pub(crate) fn grouped(t: GgmlType) -> bool {
    t.block_elems() > 1
}

/// Bytes of one group block (8 rows' blocks).
pub(crate) fn group_block_bytes(t: GgmlType) -> usize {
    match t {
        GgmlType::Q4K => 1184,
        GgmlType::Q5K => 1440,
        _ => GROUP * t.block_bytes(),
    }
}

/// Where the fields of a 32-value format sit in a GGUF block (`row`) and in a group block.
#[derive(Clone, Copy)]
struct Fields {
    /// Row block: offset of the min (if any), of qh (if any), of the quants.
    min: Option<usize>,
    qh: Option<usize>,
    qs: usize,
}

fn fields(t: GgmlType) -> Fields {
    match t {
        GgmlType::Q4_0 => Fields {
            min: None,
            qh: None,
            qs: 2,
        },
        GgmlType::Q4_1 => Fields {
            min: Some(2),
            qh: None,
            qs: 4,
        },
        GgmlType::Q5_0 => Fields {
            min: None,
            qh: Some(2),
            qs: 6,
        },
        GgmlType::Q5_1 => Fields {
            min: Some(2),
            qh: Some(4),
            qs: 8,
        },
        GgmlType::Q8_0 => Fields {
            min: None,
            qh: None,
            qs: 2,
        },
        _ => unreachable!("{} is not grouped", t.name()),
    }
}

/// Byte offsets in a group block: (min, qh, quants).
fn group_offsets(f: Fields) -> (usize, usize, usize) {
    let min = 2 * GROUP;
    let qh = min + if f.min.is_some() { 2 * GROUP } else { 0 };
    let qs = qh + if f.qh.is_some() { 4 * GROUP } else { 0 };
    (min, qh, qs)
}

/// One row's block, decoded: scale and min as raw f16 bytes, and the 32 codes (the unsigned
/// nibble with its fifth bit, or Q8_0's signed byte as u8).
#[derive(Clone, Copy)]
struct RowBlock {
    d: [u8; 2],
    /// The min (Q4_1, Q5_1) or dmin (Q4_K).
    m: [u8; 2],
    /// K formats: the 6-bit scales (Q4_K) or the 16 signed scales (Q6_K), and Q4_K's mins.
    sc: [u8; 16],
    mn: [u8; 8],
    /// The codes, 32 or 256.
    v: [u8; 256],
}

impl Default for RowBlock {
    fn default() -> Self {
        RowBlock {
            d: [0; 2],
            m: [0; 2],
            sc: [0; 16],
            mn: [0; 8],
            v: [0; 256],
        }
    }
}

fn read_row(t: GgmlType, p: &[u8]) -> RowBlock {
    if t.block_elems() == 256 {
        return read_row_k(t, p);
    }
    let f = fields(t);
    let mut r = RowBlock {
        d: [p[0], p[1]],
        ..Default::default()
    };
    if let Some(o) = f.min {
        r.m = [p[o], p[o + 1]];
    }
    let qh = f.qh.map_or(0, |o| {
        u32::from_le_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]])
    });
    for e in 0..32 {
        r.v[e] = if t == GgmlType::Q8_0 {
            p[f.qs + e]
        } else {
            let nib = if e < 16 {
                p[f.qs + e] & 0xF
            } else {
                p[f.qs + e - 16] >> 4
            };
            nib | (((qh >> e) & 1) as u8) << 4
        };
    }
    r
}

fn write_row(t: GgmlType, r: &RowBlock, p: &mut [u8]) {
    if t.block_elems() == 256 {
        return write_row_k(t, r, p);
    }
    let f = fields(t);
    p[..2].copy_from_slice(&r.d);
    if let Some(o) = f.min {
        p[o..o + 2].copy_from_slice(&r.m);
    }
    if t == GgmlType::Q8_0 {
        p[f.qs..f.qs + 32].copy_from_slice(&r.v[..32]);
        return;
    }
    for e in 0..16 {
        p[f.qs + e] = (r.v[e] & 0xF) | (r.v[e + 16] & 0xF) << 4;
    }
    if let Some(o) = f.qh {
        let qh = (0..32).fold(0u32, |h, e| h | (((r.v[e] >> 4) & 1) as u32) << e);
        p[o..o + 4].copy_from_slice(&qh.to_le_bytes());
    }
}

/// Position of row j's element e in the chunk layout: (chunk, byte within the chunk).
fn slot(j: usize, e: usize) -> (usize, usize) {
    (e / 4, 4 * j + e % 4)
}

fn write_group(t: GgmlType, rows: &[RowBlock; GROUP], g: &mut [u8]) {
    g.fill(0);
    if t.block_elems() == 256 {
        return write_group_k(t, rows, g);
    }
    let (mo, ho, qo) = group_offsets(fields(t));
    for (j, r) in rows.iter().enumerate() {
        g[2 * j..2 * j + 2].copy_from_slice(&r.d);
        if fields(t).min.is_some() {
            g[mo + 2 * j..mo + 2 * j + 2].copy_from_slice(&r.m);
        }
        for (e, &v) in r.v[..32].iter().enumerate() {
            let (c, b) = slot(j, e);
            if t == GgmlType::Q8_0 {
                g[qo + 32 * c + b] = v;
                continue;
            }
            g[qo + 32 * (c / 2) + b] |= (v & 0xF) << (4 * (c % 2));
            if fields(t).qh.is_some() {
                g[ho + 4 * c + b / 8] |= ((v >> 4) & 1) << (b % 8);
            }
        }
    }
}

fn read_group(t: GgmlType, g: &[u8]) -> [RowBlock; GROUP] {
    if t.block_elems() == 256 {
        return read_group_k(t, g);
    }
    let (mo, ho, qo) = group_offsets(fields(t));
    let f = fields(t);
    std::array::from_fn(|j| {
        let mut r = RowBlock {
            d: [g[2 * j], g[2 * j + 1]],
            ..Default::default()
        };
        if f.min.is_some() {
            r.m = [g[mo + 2 * j], g[mo + 2 * j + 1]];
        }
        for e in 0..32 {
            let (c, b) = slot(j, e);
            r.v[e] = if t == GgmlType::Q8_0 {
                g[qo + 32 * c + b]
            } else {
                let nib = (g[qo + 32 * (c / 2) + b] >> (4 * (c % 2))) & 0xF;
                let hi = if f.qh.is_some() {
                    (g[ho + 4 * c + b / 8] >> (b % 8)) & 1
                } else {
                    0
                };
                nib | hi << 4
            };
        }
        r
    })
}

/// GGUF rows [rows, cols] of a grouped format -> group blocks, group after group, each group's
/// blocks in order along the row.
pub(crate) fn to_groups(t: GgmlType, src: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let (bb, nb, gb) = (
        t.block_bytes(),
        cols / t.block_elems(),
        group_block_bytes(t),
    );
    let rb = nb * bb;
    let mut out = vec![0u8; rows.div_ceil(GROUP) * nb * gb];
    for (gi, gout) in out.chunks_exact_mut(nb * gb).enumerate() {
        for (b, gblock) in gout.chunks_exact_mut(gb).enumerate() {
            let blocks: [RowBlock; GROUP] = std::array::from_fn(|j| {
                let r = gi * GROUP + j;
                if r < rows {
                    read_row(t, &src[r * rb + b * bb..r * rb + (b + 1) * bb])
                } else {
                    RowBlock::default()
                }
            });
            write_group(t, &blocks, gblock);
        }
    }
    out
}

/// The inverse of `to_groups`: the GGUF rows of the whole matrix, each group block decoded once.
pub(crate) fn to_rows(t: GgmlType, g: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let (bb, nb, gb) = (
        t.block_bytes(),
        cols / t.block_elems(),
        group_block_bytes(t),
    );
    let rb = nb * bb;
    let mut out = vec![0u8; rows * rb];
    for (gi, gin) in g.chunks_exact(nb * gb).enumerate() {
        for (b, gblock) in gin.chunks_exact(gb).enumerate() {
            for (j, r) in read_group(t, gblock).iter().enumerate() {
                let row = gi * GROUP + j;
                if row < rows {
                    write_row(t, r, &mut out[row * rb + b * bb..row * rb + (b + 1) * bb]);
                }
            }
        }
    }
    out
}

/// Row `r`'s GGUF blocks out of a grouped matrix (`out`: one row's bytes).
pub(crate) fn row_of_groups(t: GgmlType, g: &[u8], cols: usize, r: usize, out: &mut [u8]) {
    let (bb, nb, gb) = (
        t.block_bytes(),
        cols / t.block_elems(),
        group_block_bytes(t),
    );
    let gbase = (r / GROUP) * nb * gb;
    for b in 0..nb {
        let block = &g[gbase + b * gb..gbase + (b + 1) * gb];
        write_row(
            t,
            &read_group(t, block)[r % GROUP],
            &mut out[b * bb..(b + 1) * bb],
        );
    }
}

// K formats.

/// Q4_K's 12 bytes of 6-bit scales and mins (ggml's get_scale_min_k4) <-> 8 + 8 values.
pub(crate) fn unpack_scales_k4(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        (sc[j], mn[j]) = if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xF) | (q[j - 4] >> 6) << 4,
                (q[j + 4] >> 4) | (q[j] >> 6) << 4,
            )
        };
    }
    (sc, mn)
}

fn pack_scales_k4(sc: &[u8], mn: &[u8], q: &mut [u8]) {
    for j in 0..4 {
        q[j] = (sc[j] & 63) | (sc[j + 4] >> 4) << 6;
        q[j + 4] = (mn[j] & 63) | (mn[j + 4] >> 4) << 6;
        q[j + 8] = (sc[j + 4] & 0xF) | (mn[j + 4] & 0xF) << 4;
    }
}

/// Q6_K element l of sub-block t: (byte of the low bits, nibble shift, byte of the high bits,
/// bit shift) in a GGUF block.
fn q6k_at(t: usize, l: usize) -> (usize, u32, usize, u32) {
    let (n, r) = (t / 4, t % 4);
    (
        64 * n + 32 * (r & 1) + l,
        4 * (r as u32 / 2),
        128 + 32 * n + l,
        2 * r as u32,
    )
}

/// Q4_K / Q5_K: where the quants start in a GGUF block, and Q5_K's fifth bits.
fn k4_quants(t: GgmlType) -> (usize, Option<usize>) {
    if t == GgmlType::Q5K {
        (48, Some(16))
    } else {
        (16, None)
    }
}

fn read_row_k(t: GgmlType, p: &[u8]) -> RowBlock {
    let mut r = RowBlock::default();
    if t != GgmlType::Q6K {
        (r.d, r.m) = ([p[0], p[1]], [p[2], p[3]]);
        let (sc, mn) = unpack_scales_k4(&p[4..16]);
        r.sc[..8].copy_from_slice(&sc);
        r.mn = mn;
        let (qs, qh) = k4_quants(t);
        for (e, v) in r.v.iter_mut().enumerate() {
            let (sb, l) = (e / 32, e % 32);
            *v = (p[qs + 32 * (sb / 2) + l] >> (4 * (sb % 2))) & 0xF;
            if let Some(h) = qh {
                *v |= ((p[h + l] >> sb) & 1) << 4;
            }
        }
    } else {
        r.d = [p[208], p[209]];
        r.sc.copy_from_slice(&p[192..208]);
        for (e, v) in r.v.iter_mut().enumerate() {
            let (lo, ls, hi, hs) = q6k_at(e / 32, e % 32);
            *v = ((p[lo] >> ls) & 0xF) | ((p[hi] >> hs) & 3) << 4;
        }
    }
    r
}

fn write_row_k(t: GgmlType, r: &RowBlock, p: &mut [u8]) {
    p.fill(0);
    if t != GgmlType::Q6K {
        p[..2].copy_from_slice(&r.d);
        p[2..4].copy_from_slice(&r.m);
        pack_scales_k4(&r.sc[..8], &r.mn, &mut p[4..16]);
        let (qs, qh) = k4_quants(t);
        for (e, &v) in r.v.iter().enumerate() {
            let (sb, l) = (e / 32, e % 32);
            p[qs + 32 * (sb / 2) + l] |= (v & 0xF) << (4 * (sb % 2));
            if let Some(h) = qh {
                p[h + l] |= ((v >> 4) & 1) << sb;
            }
        }
    } else {
        p[208..210].copy_from_slice(&r.d);
        p[192..208].copy_from_slice(&r.sc);
        for (e, &v) in r.v.iter().enumerate() {
            let (lo, ls, hi, hs) = q6k_at(e / 32, e % 32);
            p[lo] |= (v & 0xF) << ls;
            p[hi] |= (v >> 4) << hs;
        }
    }
}

/// Offsets in a K group block: (scales, mins, low bits, high bits).
fn group_offsets_k(t: GgmlType) -> (usize, usize, usize, usize) {
    match t {
        GgmlType::Q4K => (32, 96, 160, 0),
        GgmlType::Q5K => (32, 96, 160, 1184),
        _ => (16, 0, 144, 1168),
    }
}

/// High bits per weight of a K format (beside the 4 low bits).
fn k_high_bits(t: GgmlType) -> usize {
    match t {
        GgmlType::Q4K => 0,
        GgmlType::Q5K => 1,
        _ => 2,
    }
}

/// Byte of row j's element e (of 256) in its quant vector [t / pair][c].
fn k_slot(j: usize, e: usize, pair: usize) -> usize {
    let (t, c) = (e / 32, (e % 32) / 4);
    32 * (8 * (t / pair) + c) + 4 * j + e % 4
}

fn write_group_k(t: GgmlType, rows: &[RowBlock; GROUP], g: &mut [u8]) {
    let (so, mo, lo, ho) = group_offsets_k(t);
    for (j, r) in rows.iter().enumerate() {
        g[2 * j..2 * j + 2].copy_from_slice(&r.d);
        let nsc = if t != GgmlType::Q6K {
            g[16 + 2 * j..18 + 2 * j].copy_from_slice(&r.m);
            for (s, &m) in r.mn.iter().enumerate() {
                g[mo + 8 * s + j] = m;
            }
            8
        } else {
            16
        };
        for (s, &v) in r.sc[..nsc].iter().enumerate() {
            g[so + 8 * s + j] = v;
        }
        let hb = k_high_bits(t);
        for (e, &v) in r.v.iter().enumerate() {
            let sb = e / 32;
            g[lo + k_slot(j, e, 2)] |= (v & 0xF) << (4 * (sb % 2));
            // Sub-blocks per high-bit vector: 8 (Q5_K), 4 (Q6_K); none for Q4_K.
            if let Some(per) = 8usize.checked_div(hb) {
                g[ho + k_slot(j, e, per)] |= (v >> 4) << (hb * (sb % per));
            }
        }
    }
}

fn read_group_k(t: GgmlType, g: &[u8]) -> [RowBlock; GROUP] {
    let (so, mo, lo, ho) = group_offsets_k(t);
    std::array::from_fn(|j| {
        let mut r = RowBlock {
            d: [g[2 * j], g[2 * j + 1]],
            ..Default::default()
        };
        let nsc = if t != GgmlType::Q6K {
            r.m = [g[16 + 2 * j], g[17 + 2 * j]];
            for s in 0..8 {
                r.mn[s] = g[mo + 8 * s + j];
            }
            8
        } else {
            16
        };
        for s in 0..nsc {
            r.sc[s] = g[so + 8 * s + j];
        }
        let hb = k_high_bits(t);
        for (e, v) in r.v.iter_mut().enumerate() {
            let sb = e / 32;
            *v = (g[lo + k_slot(j, e, 2)] >> (4 * (sb % 2))) & 0xF;
            if let Some(per) = 8usize.checked_div(hb) {
                let bits = g[ho + k_slot(j, e, per)] >> (hb * (sb % per));
                *v |= (bits & ((1 << hb) - 1)) << 4;
            }
        }
        r
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Every format the CPU backend multiplies.
    pub(crate) const ALL: [GgmlType; 11] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    #[test]
    fn groups_round_trip_and_match_the_documented_layout() {
        let mut s = 0x9E3779B97F4A7C15u64;
        let mut byte = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        };
        for t in ALL.into_iter().filter(|&t| grouped(t)) {
            let (rows, cols) = (11, 3 * t.block_elems());
            let src: Vec<u8> = (0..rows * t.row_bytes(cols)).map(|_| byte()).collect();
            let g = to_groups(t, &src, rows, cols);
            assert_eq!(g.len(), 2 * 3 * group_block_bytes(t), "{}", t.name());
            let rb = t.row_bytes(cols);
            assert_eq!(to_rows(t, &g, rows, cols), src, "{}", t.name());
            let mut row = vec![0u8; rb];
            for r in 0..rows {
                row_of_groups(t, &g, cols, r, &mut row);
                assert_eq!(row, src[r * rb..(r + 1) * rb], "{} row {r}", t.name());
            }
            // Padding rows are zero blocks.
            row_of_groups(t, &g, cols, 15, &mut row);
            assert!(row.iter().all(|&b| b == 0), "{}", t.name());
            if t.block_elems() == 256 {
                continue;
            }
            // Row 3's element 4c + e of block 1 is byte 12 + e of chunk c.
            let (_, _, qo) = group_offsets(fields(t));
            let gb = &g[t.block_bytes() * GROUP..];
            let want = read_row(t, &src[3 * rb + t.block_bytes()..]);
            for e in 0..32 {
                let (c, b) = (e / 4, 12 + e % 4);
                let code = if t == GgmlType::Q8_0 {
                    gb[qo + 32 * c + b]
                } else {
                    (gb[qo + 32 * (c / 2) + b] >> (4 * (c % 2))) & 0xF
                };
                assert_eq!(
                    code,
                    if t == GgmlType::Q8_0 {
                        want.v[e]
                    } else {
                        want.v[e] & 0xF
                    }
                );
            }
        }
    }
}
