// Per GGML format (ggml-common.h block layouts), for the 32 weights of piece s of the row that
// starts at byte rb:
//   head(rb, s): what the piece's 4-weight groups share (block scales and mins, Q5's high bits),
//   dq4h(h, rb, s, c): weights 4c .. 4c + 3 (c < 8) as a vec4, given the piece's head.
// GPU kernels use the weights straight from registers (a dequantized piece kept in a
// function-scope array, indexed in loops, lived in GPU local memory); the CPU-adapter kernels
// read the head once per piece (dq32), since there every load is dear. The registry appends the
// one section named after the format (between "//@format NAME" markers) to matmul_quant.wgsl.

//@format F32
fn head(rb: u32, s: u32) -> Head {
    return Head(vec4<f32>(0.0), vec4<u32>(0u));
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    let i = (rb >> 2u) + s * 32u + 4u * c;
    return bitcast<vec4<f32>>(vec4<u32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u]));
}

//@format F16
fn head(rb: u32, s: u32) -> Head {
    return Head(vec4<f32>(0.0), vec4<u32>(0u));
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    let o = rb + s * 64u + 8u * c;
    return vec4<f32>(unpack2x16float(word(o)), unpack2x16float(word(o + 4u)));
}

//@format BF16
fn head(rb: u32, s: u32) -> Head {
    return Head(vec4<f32>(0.0), vec4<u32>(0u));
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    let o = rb + s * 64u + 8u * c;
    let a = word(o);
    let b = word(o + 4u);
    return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xFFFF0000u, b << 16u, b & 0xFFFF0000u));
}

//@format Q8_0
// Word-aligned blocks of 36 bytes: d, 2 bytes of padding, 32 quants.
fn head(rb: u32, s: u32) -> Head {
    return Head(vec4<f32>(f16_at(rb + s * 36u), 0.0, 0.0, 0.0), vec4<u32>(0u));
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    return h.f.x * i8x4(word(rb + s * 36u + 4u + 4u * c));
}
//@format Q4_0
// Word-aligned blocks of 20 bytes: d, 2 bytes of padding, 16 bytes of quants.
fn head(rb: u32, s: u32) -> Head {
    return Head(vec4<f32>(f16_at(rb + s * 20u), 0.0, 0.0, 0.0), vec4<u32>(0u));
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    // Weights 0-15 are the low nibbles of bytes 0-15, weights 16-31 their high nibbles.
    let q = word(rb + s * 20u + 4u + 4u * (c % 4u)) >> (4u * (c / 4u));
    return h.f.x * (nib4(q) - 8.0);
}
//@format Q4_1
fn head(rb: u32, s: u32) -> Head {
    let dm = unpack2x16float(word(rb + s * 20u)); // the scale and the min
    return Head(vec4<f32>(dm, 0.0, 0.0), vec4<u32>(0u));
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    let q = word(rb + s * 20u + 4u + 4u * (c % 4u)) >> (4u * (c / 4u));
    return h.f.x * nib4(q) + h.f.y;
}
//@format Q5_0
fn head(rb: u32, s: u32) -> Head {
    // Word-aligned blocks of 24 bytes: the scale, 2 bytes of padding, the 32-bit qh whose bit i
    // is the fifth bit of weight i, 16 bytes of quants.
    let bo = rb + s * 24u;
    return Head(vec4<f32>(f16_at(bo), 0.0, 0.0, 0.0), vec4<u32>(word(bo + 4u), 0u, 0u, 0u));
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    let q = word(rb + s * 24u + 8u + 4u * (c % 4u)) >> (4u * (c / 4u));
    return h.f.x * (nib4(q) + 16.0 * bit4(h.u.x >> (4u * c)) - 16.0);
}
//@format Q5_1
fn head(rb: u32, s: u32) -> Head {
    let bo = rb + s * 24u;
    let dm = unpack2x16float(word(bo)); // the scale and the min
    return Head(vec4<f32>(dm, 0.0, 0.0), vec4<u32>(word(bo + 4u), 0u, 0u, 0u));
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    let q = word(rb + s * 24u + 8u + 4u * (c % 4u)) >> (4u * (c / 4u));
    return h.f.x * (nib4(q) + 16.0 * bit4(h.u.x >> (4u * c))) + h.f.y;
}
//@format K_SCALES
// 6-bit scale and min of sub-block j (0..8) of a Q4_K / Q5_K block whose 12 scale bytes start
// at byte sc: for j < 4 the low 6 bits of bytes j and j + 4; else the nibbles of byte j + 4 with
// the top 2 bits of bytes j - 4 and j. Read as three words, without a branch (on CPU adapters
// both sides of a branch run, each load a loop over the lanes).
fn scale_min_k4(sc: u32, j: u32) -> vec2<f32> {
    let sh = (j & 3u) * 8u;
    let b0 = (word(sc) >> sh) & 0xFFu;
    let b1 = (word(sc + 4u) >> sh) & 0xFFu;
    let b2 = (word(sc + 8u) >> sh) & 0xFFu;
    let lo = vec2<u32>(b0 & 63u, b1 & 63u);
    let hi = vec2<u32>((b2 & 15u) | ((b0 >> 6u) << 4u), (b2 >> 4u) | ((b1 >> 6u) << 4u));
    return vec2<f32>(select(hi, lo, j < 4u));
}
// Piece s is sub-block j = s % 8 of a 256-weight block: its scale d * sc and min dmin * m.
fn head_k(bo: u32, j: u32) -> Head {
    let sm = scale_min_k4(bo + 4u, j);
    let dm = unpack2x16float(word(bo)); // d and dmin
    return Head(vec4<f32>(dm * sm, 0.0, 0.0), vec4<u32>(0u));
}

//@format Q4_K
fn head(rb: u32, s: u32) -> Head {
    return head_k(rb + (s / 8u) * 144u, s % 8u);
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    // The low (even j) or high nibbles of the sub-block pair's 32 bytes.
    let j = s % 8u;
    let q = word(rb + (s / 8u) * 144u + 16u + 32u * (j / 2u) + 4u * c) >> ((j & 1u) * 4u);
    return h.f.x * nib4(q) - h.f.y;
}
//@format Q5_K
fn head(rb: u32, s: u32) -> Head {
    return head_k(rb + (s / 8u) * 176u, s % 8u);
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    let bo = rb + (s / 8u) * 176u;
    let j = s % 8u;
    let q = word(bo + 48u + 32u * (j / 2u) + 4u * c) >> ((j & 1u) * 4u);
    let hb = word(bo + 16u + 4u * c) >> j;
    let v = nib4(q) + 16.0 * vec4<f32>(f32(hb & 1u), f32((hb >> 8u) & 1u), f32((hb >> 16u) & 1u), f32((hb >> 24u) & 1u));
    return h.f.x * v - h.f.y;
}
//@format Q6_K
// Word-aligned blocks of 212 bytes: GGUF's 210 and 2 bytes of padding after d.
fn head(rb: u32, s: u32) -> Head {
    // The piece's two scales: weights 0-15 take the first, 16-31 the second.
    let bo = rb + (s / 8u) * 212u;
    let j = s % 8u;
    let sc = bo + 192u + 8u * (j / 4u) + 2u * (j % 4u);
    let d = f16_at(bo + 208u);
    let scs = (word(sc) >> ((sc & 2u) * 8u)) & 0xFFFFu; // sc is even: within one word
    return Head(vec4<f32>(d * i8_of(scs & 0xFFu), d * i8_of(scs >> 8u), 0.0, 0.0), vec4<u32>(0u));
}
fn dq4h(h: Head, rb: u32, s: u32, c: u32) -> vec4<f32> {
    let bo = rb + (s / 8u) * 212u;
    let j = s % 8u;
    let half = j / 4u;
    let qi = j % 4u;
    let lo = word(bo + 64u * half + (qi & 1u) * 32u + 4u * c) >> ((qi >> 1u) * 4u);
    let hi = word(bo + 128u + 32u * half + 4u * c) >> (qi * 2u);
    let q = vec4<f32>(f32((lo & 15u) | ((hi & 3u) << 4u)), f32(((lo >> 8u) & 15u) | (((hi >> 8u) & 3u) << 4u)),
                      f32(((lo >> 16u) & 15u) | (((hi >> 16u) & 3u) << 4u)), f32(((lo >> 24u) & 15u) | (((hi >> 24u) & 3u) << 4u)));
    return select(h.f.y, h.f.x, c < 4u) * (q - 32.0);
}
