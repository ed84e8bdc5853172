// dq4(rb, s, c): the 4 weights s*32 + 4c .. s*32 + 4c + 3 (c < 8) of the row starting at byte
// rb, one function per GGML format (ggml-common.h block layouts). They come back as a vec4 so
// that kernels use them straight from registers: a dequantized piece kept in a function-scope
// array, indexed in loops, lived in GPU local memory (and through L2 when many threads ran). The
// registry appends the one section named after the format (between "//@format NAME" markers) to
// matmul_quant.wgsl.

//@format F32
fn dq4(rb: u32, s: u32, c: u32) -> vec4<f32> {
    let i = (rb >> 2u) + s * 32u + 4u * c;
    return bitcast<vec4<f32>>(vec4<u32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u]));
}

//@format F16
fn dq4(rb: u32, s: u32, c: u32) -> vec4<f32> {
    let o = rb + s * 64u + 8u * c;
    return vec4<f32>(unpack2x16float(bytes4(o)), unpack2x16float(bytes4(o + 4u)));
}

//@format BF16
fn dq4(rb: u32, s: u32, c: u32) -> vec4<f32> {
    let o = rb + s * 64u + 8u * c;
    let a = bytes4(o);
    let b = bytes4(o + 4u);
    return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xFFFF0000u, b << 16u, b & 0xFFFF0000u));
}

//@format Q8_0
fn dq4(rb: u32, s: u32, c: u32) -> vec4<f32> {
    let bo = rb + s * 34u;
    return f16_at(bo) * i8x4(bytes4(bo + 2u + 4u * c));
}
//@format Q4_0
fn dq4(rb: u32, s: u32, c: u32) -> vec4<f32> {
    // Weights 0-15 are the low nibbles of bytes 0-15, weights 16-31 their high nibbles.
    let bo = rb + s * 18u;
    let q = bytes4(bo + 2u + 4u * (c % 4u)) >> (4u * (c / 4u));
    return f16_at(bo) * (nib4(q) - 8.0);
}
//@format Q4_1
fn dq4(rb: u32, s: u32, c: u32) -> vec4<f32> {
    let bo = rb + s * 20u;
    let q = bytes4(bo + 4u + 4u * (c % 4u)) >> (4u * (c / 4u));
    return f16_at(bo) * nib4(q) + f16_at(bo + 2u);
}
//@format Q5_0
fn dq4(rb: u32, s: u32, c: u32) -> vec4<f32> {
    // As Q4_0, with bit i of the 32-bit qh as the fifth bit of weight i.
    let bo = rb + s * 22u;
    let q = bytes4(bo + 6u + 4u * (c % 4u)) >> (4u * (c / 4u));
    let h = bytes4(bo + 2u) >> (4u * c);
    return f16_at(bo) * (nib4(q) + 16.0 * bit4(h) - 16.0);
}
//@format Q5_1
fn dq4(rb: u32, s: u32, c: u32) -> vec4<f32> {
    let bo = rb + s * 24u;
    let q = bytes4(bo + 8u + 4u * (c % 4u)) >> (4u * (c / 4u));
    let h = bytes4(bo + 4u) >> (4u * c);
    return f16_at(bo) * (nib4(q) + 16.0 * bit4(h)) + f16_at(bo + 2u);
}
//@format K_SCALES
// 6-bit scale and min of sub-block j (0..8) of a Q4_K / Q5_K block whose scales start at byte sc.
fn scale_min_k4(sc: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(byte_at(sc + j) & 63u), f32(byte_at(sc + j + 4u) & 63u));
    }
    let a = byte_at(sc + j + 4u);
    return vec2<f32>(f32((a & 15u) | ((byte_at(sc + j - 4u) >> 6u) << 4u)),
                     f32((a >> 4u) | ((byte_at(sc + j) >> 6u) << 4u)));
}

//@format Q4_K
fn dq4(rb: u32, s: u32, c: u32) -> vec4<f32> {
    // Piece s is sub-block j of a 256-weight block: the low (even j) or high nibbles of 32 bytes.
    let bo = rb + (s / 8u) * 144u;
    let j = s % 8u;
    let sm = scale_min_k4(bo + 4u, j);
    let q = bytes4(bo + 16u + 32u * (j / 2u) + 4u * c) >> ((j & 1u) * 4u);
    return f16_at(bo) * sm.x * nib4(q) - f16_at(bo + 2u) * sm.y;
}
//@format Q5_K
fn dq4(rb: u32, s: u32, c: u32) -> vec4<f32> {
    let bo = rb + (s / 8u) * 176u;
    let j = s % 8u;
    let sm = scale_min_k4(bo + 4u, j);
    let q = bytes4(bo + 48u + 32u * (j / 2u) + 4u * c) >> ((j & 1u) * 4u);
    let h = bytes4(bo + 16u + 4u * c) >> j;
    let v = nib4(q) + 16.0 * vec4<f32>(f32(h & 1u), f32((h >> 8u) & 1u), f32((h >> 16u) & 1u), f32((h >> 24u) & 1u));
    return f16_at(bo) * sm.x * v - f16_at(bo + 2u) * sm.y;
}
//@format Q6_K
fn dq4(rb: u32, s: u32, c: u32) -> vec4<f32> {
    let bo = rb + (s / 8u) * 210u;
    let j = s % 8u;
    let half = j / 4u;
    let qi = j % 4u;
    let lo = bytes4(bo + 64u * half + (qi & 1u) * 32u + 4u * c) >> ((qi >> 1u) * 4u);
    let hi = bytes4(bo + 128u + 32u * half + 4u * c) >> (qi * 2u);
    // Weights 0-15 of the piece take the first of its two scales, 16-31 the second.
    let sc = byte_at(bo + 192u + 8u * half + 2u * qi + c / 4u);
    let q = vec4<f32>(f32((lo & 15u) | ((hi & 3u) << 4u)), f32(((lo >> 8u) & 15u) | (((hi >> 8u) & 3u) << 4u)),
                      f32(((lo >> 16u) & 15u) | (((hi >> 16u) & 3u) << 4u)), f32(((lo >> 24u) & 15u) | (((hi >> 24u) & 3u) << 4u)));
    return f16_at(bo + 208u) * i8_of(sc) * (q - 32.0);
}
