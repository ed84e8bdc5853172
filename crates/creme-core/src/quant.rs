//! GGML weight formats: block layouts, the dequantization reference and quantizers for each.
//! Both backends and the file readers/writers use this module; it depends on none of them.
//! Layouts follow ggml's `ggml-common.h` (block_q4_0, block_q4_K, ...); every block begins or
//! ends with little-endian f16 scales.

use half::{bf16, f16};

use crate::error::ModelError;

/// The tensor types this crate reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    /// From the GGUF tensor-info type id.
    pub fn from_id(id: u32) -> Result<GgmlType, ModelError> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            other => {
                return Err(ModelError::UnsupportedType {
                    id: other,
                    name: ggml_type_name(other),
                })
            }
        })
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                32
            }
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }

    /// Bytes of a row of `n` elements (n must be a multiple of the block size).
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_elems() * self.block_bytes()
    }

    pub fn name(self) -> &'static str {
        ggml_type_name(self.id())
    }

    /// How the GPU lays out this format's blocks (see [`to_gpu_layout`]).
    fn gpu_layout(self) -> GpuLayout {
        match self {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => {
                GpuLayout::Quads { quants: 16 }
            }
            GgmlType::Q8_0 => GpuLayout::Quads { quants: 32 },
            GgmlType::Q6K => GpuLayout::PadEnd { to: 224 },
            _ => GpuLayout::Same,
        }
    }

    /// Bytes of the GPU layout's unit, what a row group interleaves (see [`to_gpu_layout`]): a
    /// quad of blocks, a K block, or 32 values of a float format.
    pub fn gpu_unit_bytes(self) -> usize {
        match self.gpu_layout() {
            GpuLayout::Same if self.block_elems() == 1 => 32 * self.block_bytes(),
            GpuLayout::Same => self.block_bytes(),
            GpuLayout::PadEnd { to } => to,
            GpuLayout::Quads { quants } => 4 * (quad_head_bytes(self, quants) + quants),
        }
    }

    /// Bytes of `rows` rows of `n` elements in the GPU's layout with rows in groups of
    /// `row_group` (the last group padded to whole).
    pub fn gpu_bytes(self, rows: usize, n: usize, row_group: usize) -> usize {
        rows.next_multiple_of(row_group.max(1)) * self.gpu_row_bytes(n)
    }

    /// Bytes of a row of `n` elements in the GPU's layout (a multiple of 16).
    pub fn gpu_row_bytes(self, n: usize) -> usize {
        let blocks = n / self.block_elems();
        match self.gpu_layout() {
            GpuLayout::Same => self.row_bytes(n),
            GpuLayout::PadEnd { to } => blocks * to,
            GpuLayout::Quads { quants } => {
                blocks.div_ceil(4) * 4 * (quad_head_bytes(self, quants) + quants)
            }
        }
    }
}

/// See [`to_gpu_layout`].
#[derive(Clone, Copy)]
enum GpuLayout {
    /// GGUF's blocks as they are (Q4_K and Q5_K: 144 and 176 bytes, every field 16-byte aligned
    /// where the kernels read it as a whole; the float formats).
    Same,
    /// Each block padded at its end to `to` bytes (Q6_K: 210 -> 224).
    PadEnd { to: usize },
    /// Blocks of 32 weights with `quants` bytes of quants at their end, in groups of four per row.
    Quads { quants: usize },
}

/// Bytes of one block's header (scale, min, high bits) in a quad: GGUF's bytes before the quants,
/// with 2 bytes of padding after a lone f16 scale so that every field starts on a word.
fn quad_head_bytes(t: GgmlType, quants: usize) -> usize {
    (t.block_bytes() - quants).next_multiple_of(4)
}

/// Whole rows of `t` (`cols` wide) in the GPU's layout, where every 16 bytes a kernel reads
/// together lie on a 16-byte boundary, so that a shader reads them with one vec4 load (on CPU
/// adapters such as lavapipe each load instruction costs a loop over the SIMD lanes, whatever
/// its width, so four words in one load cost about a third of four loads):
/// - Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 go in quads of 4 blocks: the 4 headers (scale, min and high
///   bits; each 4 or 8 bytes, a lone f16 scale padded to a word), then the 4 blocks' quants (16 or
///   32 bytes each). A row's last quad is filled with zero blocks. Same bytes per block as GGUF
///   plus at most 2.
/// - Q6_K blocks are padded from 210 to 224 bytes.
/// - The others are borrowed as they are.
///
/// With `row_group` > 1, rows then lie in groups of that many whose units (a quad, a K block, 32
/// values of a float format: [`GgmlType::gpu_unit_bytes`]) are interleaved: unit u of the group's
/// row i at u * row_group + i. On a CPU adapter the lanes of one SIMD row take consecutive weight
/// rows, so they then read one sequential stream instead of row_group streams a row apart, which
/// the CPU's prefetcher follows (with 8 streams of 672 bytes, Qwen's 4,864 x 896 products ran at
/// 60% of their speed once the weights no longer fitted the cache). The last group is padded with
/// zero rows.
pub fn to_gpu_layout(
    t: GgmlType,
    cols: usize,
    row_group: usize,
    bytes: &[u8],
) -> std::borrow::Cow<'_, [u8]> {
    let rows = rows_to_gpu(t, cols, bytes);
    if row_group <= 1 {
        return rows;
    }
    std::borrow::Cow::Owned(interleave(
        &rows,
        t.gpu_row_bytes(cols),
        t.gpu_unit_bytes(),
        row_group,
    ))
}

/// The first `rows` rows in GGUF's layout from [`to_gpu_layout`]'s.
pub fn from_gpu_layout(
    t: GgmlType,
    cols: usize,
    row_group: usize,
    rows: usize,
    bytes: &[u8],
) -> Vec<u8> {
    let rb = t.gpu_row_bytes(cols);
    if row_group <= 1 {
        return rows_from_gpu(t, cols, &bytes[..rows * rb]).into_owned();
    }
    let (ub, rg) = (t.gpu_unit_bytes(), row_group);
    let mut plain = vec![0u8; rows * rb];
    for (r, row) in plain.chunks_exact_mut(rb).enumerate() {
        for (u, unit) in row.chunks_exact_mut(ub).enumerate() {
            let at = grouped_unit_at(r, u, rb, ub, rg);
            unit.copy_from_slice(&bytes[at..at + ub]);
        }
    }
    rows_from_gpu(t, cols, &plain).into_owned()
}

/// Rows of `rb` bytes with their units of `ub` bytes interleaved in groups of `rg` rows.
fn interleave(src: &[u8], rb: usize, ub: usize, rg: usize) -> Vec<u8> {
    let rows = src.len() / rb;
    let mut out = vec![0u8; rows.next_multiple_of(rg) * rb];
    for (r, row) in src.chunks_exact(rb).enumerate() {
        for (u, unit) in row.chunks_exact(ub).enumerate() {
            let at = grouped_unit_at(r, u, rb, ub, rg);
            out[at..at + ub].copy_from_slice(unit);
        }
    }
    out
}

/// Where unit `u` of row `r` lies with rows in groups of `rg` (the shaders' row_at and unit_at).
fn grouped_unit_at(r: usize, u: usize, rb: usize, ub: usize, rg: usize) -> usize {
    r / rg * rg * rb + (u * rg + r % rg) * ub
}

/// [`to_gpu_layout`] of each row on its own (no row groups).
fn rows_to_gpu(t: GgmlType, cols: usize, bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let (bb, nb) = (t.block_bytes(), cols / t.block_elems());
    let rows = bytes.len() / t.row_bytes(cols).max(1);
    match t.gpu_layout() {
        GpuLayout::Same => std::borrow::Cow::Borrowed(bytes),
        GpuLayout::PadEnd { to } => {
            let mut out = Vec::with_capacity(bytes.len() / bb * to);
            for b in bytes.chunks_exact(bb) {
                out.extend_from_slice(b);
                out.resize(out.len() + to - bb, 0);
            }
            std::borrow::Cow::Owned(out)
        }
        GpuLayout::Quads { quants } => {
            let head = quad_head_bytes(t, quants);
            let mut out = vec![0u8; rows * t.gpu_row_bytes(cols)];
            for (r, row) in bytes.chunks_exact(nb * bb).take(rows).enumerate() {
                let dst = &mut out[r * t.gpu_row_bytes(cols)..];
                for (i, b) in row.chunks_exact(bb).enumerate() {
                    let (h, q) = quad_offsets(i, head, quants);
                    let raw_head = bb - quants;
                    // The scale, then (past the padding, if any) the rest of the header.
                    dst[h..h + 2].copy_from_slice(&b[..2]);
                    dst[h + head - (raw_head - 2)..h + head].copy_from_slice(&b[2..raw_head]);
                    dst[q..q + quants].copy_from_slice(&b[raw_head..]);
                }
            }
            std::borrow::Cow::Owned(out)
        }
    }
}

/// GGUF rows back from [`rows_to_gpu`]'s layout.
fn rows_from_gpu(t: GgmlType, cols: usize, bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let (bb, nb) = (t.block_bytes(), cols / t.block_elems());
    let gpu_row = t.gpu_row_bytes(cols).max(1);
    match t.gpu_layout() {
        GpuLayout::Same => std::borrow::Cow::Borrowed(bytes),
        GpuLayout::PadEnd { to } => {
            let mut out = Vec::with_capacity(bytes.len() / to * bb);
            for b in bytes.chunks_exact(to) {
                out.extend_from_slice(&b[..bb]);
            }
            std::borrow::Cow::Owned(out)
        }
        GpuLayout::Quads { quants } => {
            let head = quad_head_bytes(t, quants);
            let raw_head = bb - quants;
            let mut out = Vec::with_capacity(bytes.len() / gpu_row * nb * bb);
            for row in bytes.chunks_exact(gpu_row) {
                for i in 0..nb {
                    let (h, q) = quad_offsets(i, head, quants);
                    out.extend_from_slice(&row[h..h + 2]);
                    out.extend_from_slice(&row[h + head - (raw_head - 2)..h + head]);
                    out.extend_from_slice(&row[q..q + quants]);
                }
            }
            std::borrow::Cow::Owned(out)
        }
    }
}

/// Where block `i` of a row's quads keeps its header and its quants.
fn quad_offsets(i: usize, head: usize, quants: usize) -> (usize, usize) {
    let base = i / 4 * 4 * (head + quants);
    (base + i % 4 * head, base + 4 * head + i % 4 * quants)
}

/// ggml's names for every type id (so an unsupported one is named in the error).
pub fn ggml_type_name(id: u32) -> &'static str {
    match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K / Q5_K block (ggml's get_scale_min_k4).
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        (
            ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)) as f32,
            ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as f32,
        )
    }
}

/// Blocks of Q4_0 or Q5_0 re-encoded as Q8_0 without loss (Q8_0 returned as is; None for other
/// formats): both hold d * (a signed integer of 4 or 5 bits) per value with one f16 scale per 32,
/// which Q8_0 stores exactly as the same d and the integers as i8. The GPU uses it to put
/// projections of mixed formats (Qwen's Q5_0 queries and keys beside Q8_0 values) in one weight.
pub fn repack_as_q8_0(t: GgmlType, bytes: &[u8]) -> Option<Vec<u8>> {
    if t == GgmlType::Q8_0 {
        return Some(bytes.to_vec());
    }
    if t != GgmlType::Q4_0 && t != GgmlType::Q5_0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / t.block_bytes() * 34);
    for b in bytes.chunks_exact(t.block_bytes()) {
        let mut q = [0i32; 32];
        if t == GgmlType::Q4_0 {
            for j in 0..16 {
                q[j] = (b[2 + j] & 0xF) as i32 - 8;
                q[j + 16] = (b[2 + j] >> 4) as i32 - 8;
            }
        } else {
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..16 {
                q[j] = ((b[6 + j] & 0xF) as u32 | (((qh >> j) << 4) & 0x10)) as i32 - 16;
                q[j + 16] = ((b[6 + j] >> 4) as u32 | ((qh >> (j + 12)) & 0x10)) as i32 - 16;
            }
        }
        out.extend_from_slice(&b[..2]);
        out.extend(q.iter().map(|&v| v as i8 as u8));
    }
    Some(out)
}

/// Dequantize one block of `t` (bytes `b`) into `out` (block_elems values).
fn dequant_block(t: GgmlType, b: &[u8], out: &mut [f32]) {
    match t {
        GgmlType::F32 => out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => out[0] = f16_at(b, 0),
        GgmlType::BF16 => out[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            for i in 0..32 {
                out[i] = d * (b[2 + i] as i8) as f32;
            }
        }
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            for j in 0..16 {
                let q = b[2 + j];
                out[j] = d * ((q & 0xF) as i32 - 8) as f32;
                out[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for j in 0..16 {
                let q = b[4 + j];
                out[j] = d * (q & 0xF) as f32 + m;
                out[j + 16] = d * (q >> 4) as f32 + m;
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let d = f16_at(b, 0);
            let (m, qh_at) = if t == GgmlType::Q5_1 {
                (f16_at(b, 2), 4)
            } else {
                (0.0, 2)
            };
            let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
            let qs = &b[qh_at + 4..qh_at + 20];
            for j in 0..16 {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                let q0 = ((qs[j] & 0xF) as u32 | h0) as i32;
                let q1 = ((qs[j] >> 4) as u32 | h1) as i32;
                if t == GgmlType::Q5_0 {
                    out[j] = d * (q0 - 16) as f32;
                    out[j + 16] = d * (q1 - 16) as f32;
                } else {
                    out[j] = d * q0 as f32 + m;
                    out[j + 16] = d * q1 as f32 + m;
                }
            }
        }
        GgmlType::Q4K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let qs = &b[16..144];
            for c in 0..4 {
                let (sc1, m1) = scale_min_k4(2 * c, scales);
                let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
                let q = &qs[32 * c..32 * c + 32];
                for l in 0..32 {
                    out[64 * c + l] = d * sc1 * (q[l] & 0xF) as f32 - dmin * m1;
                    out[64 * c + 32 + l] = d * sc2 * (q[l] >> 4) as f32 - dmin * m2;
                }
            }
        }
        GgmlType::Q5K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let qh = &b[16..48];
            let qs = &b[48..176];
            for c in 0..4 {
                let (sc1, m1) = scale_min_k4(2 * c, scales);
                let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
                let q = &qs[32 * c..32 * c + 32];
                let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
                for l in 0..32 {
                    let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                    let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                    out[64 * c + l] = d * sc1 * ((q[l] & 0xF) + h1) as f32 - dmin * m1;
                    out[64 * c + 32 + l] = d * sc2 * ((q[l] >> 4) + h2) as f32 - dmin * m2;
                }
            }
        }
        GgmlType::Q6K => {
            let ql = &b[0..128];
            let qh = &b[128..192];
            let sc = &b[192..208];
            let d = f16_at(b, 208);
            for n in 0..2 {
                let (ql, qh, sc, y) = (
                    &ql[64 * n..],
                    &qh[32 * n..],
                    &sc[8 * n..],
                    &mut out[128 * n..],
                );
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
    }
}

/// Dequantize `n` elements of type `t` from `bytes` (the CPU reference every GPU kernel is tested
/// against). `n` must be a multiple of the block size and `bytes` must hold them.
pub fn dequantize(t: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, ModelError> {
    let be = t.block_elems();
    if n % be != 0 {
        return Err(ModelError::Format(format!(
            "{} tensor of {n} elements is not a whole number of {be}-element blocks",
            t.name()
        )));
    }
    let need = t.row_bytes(n);
    if bytes.len() < need {
        return Err(ModelError::Truncated {
            what: format!("{} data", t.name()),
            need: need as u64,
            have: bytes.len() as u64,
        });
    }
    let mut out = vec![0f32; n];
    let bb = t.block_bytes();
    for (i, chunk) in out.chunks_mut(be).enumerate() {
        dequant_block(t, &bytes[i * bb..(i + 1) * bb], chunk);
    }
    Ok(out)
}

/// Quantize f32 values to Q8_0 (round to nearest, ggml's reference quantizer): used by tests and
/// by `creme quantize`.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for blk in x.chunks(32) {
        let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        for i in 0..32 {
            let v = blk.get(i).copied().unwrap_or(0.0);
            out.push((v * id).round() as i8 as u8);
        }
    }
    out
}

/// Quantize f32 values to Q4_0 (ggml's reference quantizer: the scale comes from the value of
/// largest magnitude, d = max / -8, q = round(x / d + 8.5) clamped to 0..15; low nibbles hold
/// elements 0..15 of a block, high nibbles 16..31).
pub fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 18);
    for blk in x.chunks(32) {
        let v = |i: usize| blk.get(i).copied().unwrap_or(0.0);
        let max = (0..32)
            .map(v)
            .fold(0f32, |m, a| if a.abs() > m.abs() { a } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        for j in 0..16 {
            let q = |x: f32| ((x * id + 8.5) as i32).clamp(0, 15) as u8;
            out.push(q(v(j)) | (q(v(j + 16)) << 4));
        }
    }
    out
}
