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

use crate::quant::GgmlType;

/// Weight rows per group.
pub(crate) const GROUP: usize = 8;

/// Formats stored grouped on x86 (the K-quants keep their GGUF rows).
pub(crate) fn grouped(t: GgmlType) -> bool {
    matches!(
        t,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0
    )
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
#[derive(Clone, Copy, Default)]
struct RowBlock {
    d: [u8; 2],
    m: [u8; 2],
    v: [u8; 32],
}

fn read_row(t: GgmlType, p: &[u8]) -> RowBlock {
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
    let f = fields(t);
    p[..2].copy_from_slice(&r.d);
    if let Some(o) = f.min {
        p[o..o + 2].copy_from_slice(&r.m);
    }
    if t == GgmlType::Q8_0 {
        p[f.qs..f.qs + 32].copy_from_slice(&r.v);
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
    let (mo, ho, qo) = group_offsets(fields(t));
    g.fill(0);
    for (j, r) in rows.iter().enumerate() {
        g[2 * j..2 * j + 2].copy_from_slice(&r.d);
        if fields(t).min.is_some() {
            g[mo + 2 * j..mo + 2 * j + 2].copy_from_slice(&r.m);
        }
        for (e, &v) in r.v.iter().enumerate() {
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
    let (bb, nb) = (t.block_bytes(), cols / 32);
    let rb = nb * bb;
    let mut out = vec![0u8; rows.div_ceil(GROUP) * GROUP * rb];
    for (gi, gout) in out.chunks_exact_mut(GROUP * rb).enumerate() {
        for (b, gblock) in gout.chunks_exact_mut(GROUP * bb).enumerate() {
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

/// Row `r`'s GGUF blocks out of a grouped matrix (`out`: one row's bytes).
pub(crate) fn row_of_groups(t: GgmlType, g: &[u8], cols: usize, r: usize, out: &mut [u8]) {
    let (bb, nb) = (t.block_bytes(), cols / 32);
    let gbase = (r / GROUP) * GROUP * nb * bb;
    for b in 0..nb {
        let gb = &g[gbase + b * GROUP * bb..gbase + (b + 1) * GROUP * bb];
        write_row(
            t,
            &read_group(t, gb)[r % GROUP],
            &mut out[b * bb..(b + 1) * bb],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_round_trip_and_match_the_documented_layout() {
        let mut s = 0x9E3779B97F4A7C15u64;
        let mut byte = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        };
        for t in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
        ] {
            let (rows, cols) = (11, 96);
            let src: Vec<u8> = (0..rows * t.row_bytes(cols)).map(|_| byte()).collect();
            let g = to_groups(t, &src, rows, cols);
            assert_eq!(g.len(), 16 * t.row_bytes(cols), "{}", t.name());
            let rb = t.row_bytes(cols);
            let mut row = vec![0u8; rb];
            for r in 0..rows {
                row_of_groups(t, &g, cols, r, &mut row);
                assert_eq!(row, src[r * rb..(r + 1) * rb], "{} row {r}", t.name());
            }
            // Padding rows are zero blocks.
            row_of_groups(t, &g, cols, 15, &mut row);
            assert!(row.iter().all(|&b| b == 0), "{}", t.name());
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
