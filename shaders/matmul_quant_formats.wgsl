// Per GGML format (ggml-common.h block layouts, in the GPU's layout: quant.rs, to_gpu_layout),
// UNIT_BYTES (the layout's unit, which rows of a group interleave: row_at, unit_at; the registry
// declares it from quant.rs, GgmlType::gpu_unit_bytes) and, for the
// 32 weights of piece s of the row that starts at byte rb (a multiple of 16):
//   head(rb, s): what the piece's 4-weight groups share (block scales and mins, Q5's high bits),
//   dq4h(h, rb, s, c): weights 4c .. 4c + 3 (c < 8) as a vec4, given the piece's head;
//   heads_of(rb, g): the HQ quads (Heads) that pieces g HEAD_PIECES .. g HEAD_PIECES +
//     HEAD_PIECES - 1 share: a K block's scales (and Q5_K's, Q6_K's high bits) for its 8 pieces;
//     for the 32-value formats the piece's own header words alone, in the first quad's x (and y)
//     (HEAD_PIECES 1: reading a quad's headers once for its 4 pieces made lavapipe's decode
//     kernel slower, not faster; reading only the piece's words instead of their quad, faster);
//   piece_heads(rb, s): what of those piece s needs, in the same places (as few loads): where a
//     section does not define it, the registry appends PIECE_HEADS (all of its group's heads);
//   dq32h(h, rb, s, out): all 32 as their quants q (as floats) and the map to weights, given the
//     heads h: weight i = a q_i + b with (a, b) the result's xy for i < 16 and zw for the rest;
//     read with as few vec4 loads as the layout allows. AFFINE says whether b can be non-zero
//     (formats with a min; the others are centred, so that b is 0). dq32q(rb, s, out) in
//     matmul_quant.wgsl is dq32h with piece_heads; the CPU adapters' row kernel reads heads_of
//     once per HEAD_PIECES pieces.
// GPU kernels take a piece 4 weights per lane (dq4h), so that neighbouring lanes read
// neighbouring words; the CPU-adapter kernels take a whole piece per lane (dq32h), since there every
// load instruction is a loop over the SIMD lanes, whatever its width, and the decode kernel
// applies the map once per half piece (a (x . q) + b sum(x)) instead of once per weight. The registry appends the
// one section named after the format (between "//@format NAME" markers) to matmul_quant.wgsl.

//@format F32
fn head(rb: u32, s: u32) -> Head {
    return Head(vec4<f32>(0.0), vec4<u32>(0u));
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(quad(unit_at(rb, s) + 16u * c));
}
const AFFINE: bool = false;
const HEAD_PIECES: u32 = 1u;
const HQ: u32 = 1u;
fn heads_of(rb: u32, g: u32) -> Heads {
    return Heads();
}
fn dq32h(h: Heads, rb: u32, s: u32, out: ptr<function, array<f32, 32>>) -> vec4<f32> {
    for (var c = 0u; c < 8u; c++) { put4(out, c, bitcast<vec4<f32>>(quad(unit_at(rb, s) + 16u * c))); }
    return vec4<f32>(1.0, 0.0, 1.0, 0.0);
}

//@format F16
fn half2(a: u32) -> vec2<f32> {
    return unpack2x16float(a);
}

//@format BF16
fn half2(a: u32) -> vec2<f32> {
    return bitcast<vec2<f32>>(vec2<u32>(a << 16u, a & 0xFFFF0000u));
}

//@format HALF
// F16 and BF16 (appended after the section that defines half2, a word's two values).
fn head(rb: u32, s: u32) -> Head {
    return Head(vec4<f32>(0.0), vec4<u32>(0u));
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    let o = unit_at(rb, s) + 8u * c;
    return vec4<f32>(half2(word(o)), half2(word(o + 4u)));
}
const AFFINE: bool = false;
const HEAD_PIECES: u32 = 1u;
const HQ: u32 = 1u;
fn heads_of(rb: u32, g: u32) -> Heads {
    return Heads();
}
fn dq32h(h: Heads, rb: u32, s: u32, out: ptr<function, array<f32, 32>>) -> vec4<f32> {
    for (var c = 0u; c < 4u; c++) {
        let v = quad(unit_at(rb, s) + 16u * c);
        put4(out, 2u * c, vec4<f32>(half2(v.x), half2(v.y)));
        put4(out, 2u * c + 1u, vec4<f32>(half2(v.z), half2(v.w)));
    }
    return vec4<f32>(1.0, 0.0, 1.0, 0.0);
}

//@format Q8_0
// Quads of 144 bytes: 4 header words (d in the low half), then 4 x 32 quants. Piece s is block
// s % 4 of quad s / 4.
fn head(rb: u32, s: u32) -> Head {
    let qb = unit_at(rb, s / 4u);
    return Head(vec4<f32>(f16_lo(word(qb + 4u * (s % 4u))), 0.0, 0.0, 0.0), vec4<u32>(0u));
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    return h.f.x * i8x4(word(unit_at(rb, s / 4u) + 16u + 32u * (s % 4u) + 4u * c));
}
const AFFINE: bool = false;
fn dq32h(h: Heads, rb: u32, s: u32, out: ptr<function, array<f32, 32>>) -> vec4<f32> {
    let qb = unit_at(rb, s / 4u);
    let i = s % 4u;
    let d = f16_lo(h[0].x);
    let a = quad(qb + 16u + 32u * i);
    let b = quad(qb + 32u + 32u * i);
    for (var c = 0u; c < 4u; c++) {
        put4(out, c, i8x4(a[c]));
        put4(out, 4u + c, i8x4(b[c]));
    }
    return vec4<f32>(d, 0.0, d, 0.0);
}
//@format Q4_0
// Quads of 80 bytes: 4 header words (d in the low half), then 4 x 16 quants. Weights 0-15 of a
// block are the low nibbles of its bytes 0-15, weights 16-31 their high nibbles.
fn head(rb: u32, s: u32) -> Head {
    let qb = unit_at(rb, s / 4u);
    return Head(vec4<f32>(f16_lo(word(qb + 4u * (s % 4u))), 0.0, 0.0, 0.0), vec4<u32>(0u));
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    let q = word(unit_at(rb, s / 4u) + 16u + 16u * (s % 4u) + 4u * (c % 4u)) >> (4u * (c / 4u));
    return h.f.x * (nib4(q) - 8.0);
}
const AFFINE: bool = false;
fn dq32h(h: Heads, rb: u32, s: u32, out: ptr<function, array<f32, 32>>) -> vec4<f32> {
    let d = f16_lo(q4_piece(h[0], unit_at(rb, s / 4u), s % 4u, 8.0, out));
    return vec4<f32>(d, 0.0, d, 0.0);
}
//@format Q4_1
// Quads of 80 bytes: 4 header words (the f16 scale and min), then 4 x 16 quants.
fn head(rb: u32, s: u32) -> Head {
    let dm = unpack2x16float(word(unit_at(rb, s / 4u) + 4u * (s % 4u)));
    return Head(vec4<f32>(dm, 0.0, 0.0), vec4<u32>(0u));
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    let q = word(unit_at(rb, s / 4u) + 16u + 16u * (s % 4u) + 4u * (c % 4u)) >> (4u * (c / 4u));
    return h.f.x * nib4(q) + h.f.y;
}
const AFFINE: bool = true;
fn dq32h(h: Heads, rb: u32, s: u32, out: ptr<function, array<f32, 32>>) -> vec4<f32> {
    let dm = unpack2x16float(q4_piece(h[0], unit_at(rb, s / 4u), s % 4u, 0.0, out));
    return vec4<f32>(dm, dm);
}
//@format Q5_0
// Quads of 96 bytes: 4 headers of 8 bytes (d, 2 bytes of padding, the 32-bit qh whose bit i is
// the fifth bit of weight i), then 4 x 16 quants.
fn head(rb: u32, s: u32) -> Head {
    let hb = unit_at(rb, s / 4u) + 8u * (s % 4u);
    return Head(vec4<f32>(f16_lo(word(hb)), 0.0, 0.0, 0.0), vec4<u32>(word(hb + 4u), 0u, 0u, 0u));
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    let q = word(unit_at(rb, s / 4u) + 32u + 16u * (s % 4u) + 4u * (c % 4u)) >> (4u * (c / 4u));
    return h.f.x * (nib4(q) + 16.0 * bit4(h.u.x >> (4u * c)) - 16.0);
}
const AFFINE: bool = false;
fn dq32h(h: Heads, rb: u32, s: u32, out: ptr<function, array<f32, 32>>) -> vec4<f32> {
    let d = f16_lo(q5_piece(h[0], unit_at(rb, s / 4u), s % 4u, 16.0, out));
    return vec4<f32>(d, 0.0, d, 0.0);
}
//@format Q5_1
// Quads of 96 bytes: 4 headers of 8 bytes (the f16 scale and min, then qh), then 4 x 16 quants.
fn head(rb: u32, s: u32) -> Head {
    let hb = unit_at(rb, s / 4u) + 8u * (s % 4u);
    let dm = unpack2x16float(word(hb));
    return Head(vec4<f32>(dm, 0.0, 0.0), vec4<u32>(word(hb + 4u), 0u, 0u, 0u));
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    let q = word(unit_at(rb, s / 4u) + 32u + 16u * (s % 4u) + 4u * (c % 4u)) >> (4u * (c / 4u));
    return h.f.x * (nib4(q) + 16.0 * bit4(h.u.x >> (4u * c))) + h.f.y;
}
const AFFINE: bool = true;
fn dq32h(h: Heads, rb: u32, s: u32, out: ptr<function, array<f32, 32>>) -> vec4<f32> {
    let dm = unpack2x16float(q5_piece(h[0], unit_at(rb, s / 4u), s % 4u, 0.0, out));
    return vec4<f32>(dm, dm);
}
//@format K_SCALES
// 6-bit scale and min of sub-block j (0..8) of a Q4_K / Q5_K block, from its 12 scale bytes as
// three words: for j < 4 the low 6 bits of bytes j and j + 4; else the nibbles of byte j + 4 with
// the top 2 bits of bytes j - 4 and j. Without a branch (on CPU adapters both sides of a branch
// run).
fn scale_min_k4(s0: u32, s1: u32, s2: u32, j: u32) -> vec2<f32> {
    let sh = (j & 3u) * 8u;
    let b0 = (s0 >> sh) & 0xFFu;
    let b1 = (s1 >> sh) & 0xFFu;
    let b2 = (s2 >> sh) & 0xFFu;
    let lo = vec2<u32>(b0 & 63u, b1 & 63u);
    let hi = vec2<u32>((b2 & 15u) | ((b0 >> 6u) << 4u), (b2 >> 4u) | ((b1 >> 6u) << 4u));
    return vec2<f32>(select(hi, lo, j < 4u));
}
// Piece s is sub-block j = s % 8 of the 256-weight block at bo, whose first 16 bytes hv are d,
// dmin and the 12 scale bytes: its scale d * sc and min dmin * m.
fn scale_min_k(hv: vec4<u32>, j: u32) -> vec2<f32> {
    return unpack2x16float(hv.x) * scale_min_k4(hv.y, hv.z, hv.w, j);
}
fn head_k(bo: u32, j: u32) -> Head {
    return Head(vec4<f32>(scale_min_k(quad(bo), j), 0.0, 0.0), vec4<u32>(0u));
}

//@format Q4_K
// Blocks of 144 bytes as in GGUF: the 16-byte head, then 128 bytes of quants (sub-blocks 2i and
// 2i + 1 in the low and high nibbles of 32 bytes).
fn head(rb: u32, s: u32) -> Head {
    return head_k(unit_at(rb, s / 8u), s % 8u);
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    let j = s % 8u;
    let q = word(unit_at(rb, s / 8u) + 16u + 32u * (j / 2u) + 4u * c) >> ((j & 1u) * 4u);
    return h.f.x * nib4(q) - h.f.y;
}
const AFFINE: bool = true;
const HEAD_PIECES: u32 = 8u;
const HQ: u32 = 1u;
fn heads_of(rb: u32, g: u32) -> Heads {
    return Heads(quad(unit_at(rb, g)));
}
fn dq32h(h: Heads, rb: u32, s: u32, out: ptr<function, array<f32, 32>>) -> vec4<f32> {
    let bo = unit_at(rb, s / 8u);
    let j = s % 8u;
    let dm = scale_min_k(h[0], j);
    let qo = bo + 16u + 32u * (j / 2u);
    let sh = vec4<u32>((j & 1u) * 4u);
    let a = (quad(qo) >> sh) & vec4<u32>(0x0F0F0F0Fu);
    let b = (quad(qo + 16u) >> sh) & vec4<u32>(0x0F0F0F0Fu);
    put_bytes(a, b, 0.0, out);
    return vec4<f32>(dm.x, -dm.y, dm.x, -dm.y);
}
//@format Q5_K
// Blocks of 176 bytes as in GGUF: the 16-byte head, 32 bytes of high bits (bit j of byte i is
// the fifth bit of weight i of sub-block j), then 128 bytes of quants as in Q4_K.
fn head(rb: u32, s: u32) -> Head {
    return head_k(unit_at(rb, s / 8u), s % 8u);
}
fn q5k4(h: Head, q: u32, hb: u32) -> vec4<f32> {
    let v = nib4(q) + 16.0 * vec4<f32>(f32(hb & 1u), f32((hb >> 8u) & 1u), f32((hb >> 16u) & 1u), f32((hb >> 24u) & 1u));
    return h.f.x * v - h.f.y;
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    let bo = unit_at(rb, s / 8u);
    let j = s % 8u;
    let q = word(bo + 48u + 32u * (j / 2u) + 4u * c) >> ((j & 1u) * 4u);
    return q5k4(h, q, word(bo + 16u + 4u * c) >> j);
}
const AFFINE: bool = true;
const HEAD_PIECES: u32 = 8u;
const HQ: u32 = 3u;
// The head and the 32 bytes of high bits (bit j for sub-block j: every piece needs both quads).
fn heads_of(rb: u32, g: u32) -> Heads {
    let bo = unit_at(rb, g);
    return Heads(quad(bo), quad(bo + 16u), quad(bo + 32u));
}
fn dq32h(h: Heads, rb: u32, s: u32, out: ptr<function, array<f32, 32>>) -> vec4<f32> {
    let bo = unit_at(rb, s / 8u);
    let j = s % 8u;
    let dm = scale_min_k(h[0], j);
    let qo = bo + 48u + 32u * (j / 2u);
    let sh = vec4<u32>((j & 1u) * 4u);
    let lo = vec4<u32>(0x0F0F0F0Fu);
    let hi = vec4<u32>(0x01010101u);
    let a = ((quad(qo) >> sh) & lo) | (((h[1] >> vec4<u32>(j)) & hi) << vec4<u32>(4u));
    let b = ((quad(qo + 16u) >> sh) & lo) | (((h[2] >> vec4<u32>(j)) & hi) << vec4<u32>(4u));
    put_bytes(a, b, 0.0, out);
    return vec4<f32>(dm.x, -dm.y, dm.x, -dm.y);
}
//@format Q6_K
// Blocks of 224 bytes: GGUF's 210 (ql 128, qh 64, 16 scales, d) and 14 bytes of padding.
// Piece s is sub-block j = s % 8: half j / 4 of the block, quarter j % 4 of that half.
fn head(rb: u32, s: u32) -> Head {
    // The piece's two scales: weights 0-15 take the first, 16-31 the second.
    let bo = unit_at(rb, s / 8u);
    let j = s % 8u;
    let sc = bo + 192u + 8u * (j / 4u) + 2u * (j % 4u);
    let d = f16_at(bo + 208u);
    let scs = (word(sc) >> ((sc & 2u) * 8u)) & 0xFFFFu; // sc is even: within one word
    return Head(vec4<f32>(d * i8_of(scs & 0xFFu), d * i8_of(scs >> 8u), 0.0, 0.0), vec4<u32>(0u));
}
// 4 weights from their low 4 bits (the bytes of lo) and high 2 bits (the bytes of hi), scaled.
fn q6k4(sc: f32, lo: u32, hi: u32) -> vec4<f32> {
    let q = vec4<f32>(f32((lo & 15u) | ((hi & 3u) << 4u)), f32(((lo >> 8u) & 15u) | (((hi >> 8u) & 3u) << 4u)),
                      f32(((lo >> 16u) & 15u) | (((hi >> 16u) & 3u) << 4u)), f32(((lo >> 24u) & 15u) | (((hi >> 24u) & 3u) << 4u)));
    return sc * (q - 32.0);
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    let bo = unit_at(rb, s / 8u);
    let j = s % 8u;
    let half = j / 4u;
    let qi = j % 4u;
    let lo = word(bo + 64u * half + (qi & 1u) * 32u + 4u * c) >> ((qi >> 1u) * 4u);
    let hi = word(bo + 128u + 32u * half + 4u * c) >> (qi * 2u);
    return q6k4(select(h.f.y, h.f.x, c < 4u), lo, hi);
}
const AFFINE: bool = false;
const HEAD_PIECES: u32 = 8u;
const HQ: u32 = 6u;
// The 16 scales, d, and the 64 bytes of high bits: quads 2, 3 for the block's first half (bits
// 2 qi of their bytes for its quarter qi), 4, 5 for the second.
fn heads_of(rb: u32, g: u32) -> Heads {
    let bo = unit_at(rb, g);
    let hb = bo + 128u;
    return Heads(quad(bo + 192u), quad(bo + 208u), quad(hb), quad(hb + 16u), quad(hb + 32u), quad(hb + 48u));
}
// A piece reads its half's high bits only (into both halves' places).
fn piece_heads(rb: u32, s: u32) -> Heads {
    let bo = unit_at(rb, s / 8u);
    let hi_at = bo + 128u + 32u * ((s % 8u) / 4u);
    let a = quad(hi_at);
    let b = quad(hi_at + 16u);
    return Heads(quad(bo + 192u), quad(bo + 208u), a, b, a, b);
}
fn dq32h(h: Heads, rb: u32, s: u32, out: ptr<function, array<f32, 32>>) -> vec4<f32> {
    let bo = unit_at(rb, s / 8u);
    let j = s % 8u;
    let half = j / 4u;
    let qi = j % 4u;
    // Scale bytes 8 half + 2 qi and the next, in word 2 half + qi / 2 of the scales.
    let scw = h[0][2u * half + qi / 2u] >> (16u * (qi % 2u));
    let d = f16_lo(h[1].x);
    let s0 = d * i8_of(scw & 0xFFu);
    let s1 = d * i8_of((scw >> 8u) & 0xFFu);
    let lo_at = bo + 64u * half + (qi & 1u) * 32u;
    let lsh = vec4<u32>((qi >> 1u) * 4u);
    let hsh = vec4<u32>(qi * 2u);
    let lo = vec4<u32>(0x0F0F0F0Fu);
    let hi = vec4<u32>(0x03030303u);
    let ha = select(h[4], h[2], half == 0u);
    let hb = select(h[5], h[3], half == 0u);
    let a = ((quad(lo_at) >> lsh) & lo) | (((ha >> hsh) & hi) << vec4<u32>(4u));
    let b = ((quad(lo_at + 16u) >> lsh) & lo) | (((hb >> hsh) & hi) << vec4<u32>(4u));
    put_bytes(a, b, 32.0, out);
    return vec4<f32>(s0, 0.0, s1, 0.0);
}

//@format QUAD_HEADS4
// Heads of Q8_0, Q4_0, Q4_1 (quads of 4 blocks whose 4-byte headers fill the first 16 bytes):
// each piece reads its own header word (HEAD_PIECES 1, see the top of this file).
const HEAD_PIECES: u32 = 1u;
const HQ: u32 = 1u;
fn heads_of(rb: u32, g: u32) -> Heads {
    return Heads(vec4<u32>(word(unit_at(rb, g / 4u) + 4u * (g % 4u)), 0u, 0u, 0u));
}

//@format QUAD_HEADS8
// Heads of Q5_0, Q5_1 (quads of 4 blocks with 8-byte headers in the first 32 bytes): the piece's
// own header (block i = g % 4 at byte 8 i of its quad) as one vec2 load, through a second view of
// the weights (binding STORAGE_VIEW_BASE + 1: gpu/resources.rs binds it from w's buffer).
@group(0) @binding(33) var<storage, read> w_pairs: array<vec2<u32>>;
const HEAD_PIECES: u32 = 1u;
const HQ: u32 = 1u;
fn heads_of(rb: u32, g: u32) -> Heads {
    return Heads(vec4<u32>(w_pairs[(unit_at(rb, g / 4u) + 8u * (g % 4u)) >> 3u], 0u, 0u));
}

//@format PIECE_HEADS
// Appended to the sections that do not define piece_heads: a piece reads all its group's heads.
fn piece_heads(rb: u32, s: u32) -> Heads {
    return heads_of(rb, s / HEAD_PIECES);
}
