// dq32(rb, s, out): the 32 weights s*32 .. s*32+31 of the row starting at byte rb, one function
// per GGML format (ggml-common.h block layouts). The registry appends the one section named
// after the format (between "//@format NAME" markers) to matmul_quant.wgsl.

//@format F32
fn dq32(rb: u32, s: u32, out: ptr<function, array<f32, 32>>) {
    let base = (rb >> 2u) + s * 32u;
    for (var i = 0u; i < 32u; i++) { (*out)[i] = bitcast<f32>(w[base + i]); }
}

//@format F16
fn dq32(rb: u32, s: u32, out: ptr<function, array<f32, 32>>) {
    let base = rb + s * 64u;
    for (var i = 0u; i < 32u; i++) { (*out)[i] = f16_at(base + 2u * i); }
}

//@format BF16
fn dq32(rb: u32, s: u32, out: ptr<function, array<f32, 32>>) {
    let base = rb + s * 64u;
    for (var i = 0u; i < 32u; i++) { (*out)[i] = bitcast<f32>(u16_at(base + 2u * i) << 16u); }
}

//@format Q8_0
fn dq32(rb: u32, s: u32, out: ptr<function, array<f32, 32>>) {
    let bo = rb + s * 34u;
    let d = f16_at(bo);
    for (var j = 0u; j < 8u; j++) {
        let q = bytes4(bo + 2u + 4u * j);
        for (var k = 0u; k < 4u; k++) { (*out)[4u * j + k] = d * i8_of(q >> (8u * k)); }
    }
}
//@format Q4_0
fn dq32(rb: u32, s: u32, out: ptr<function, array<f32, 32>>) {
    let bo = rb + s * 18u;
    let d = f16_at(bo);
    for (var j = 0u; j < 4u; j++) {
        let q = bytes4(bo + 2u + 4u * j);
        for (var k = 0u; k < 4u; k++) {
            let b = (q >> (8u * k)) & 0xFFu;
            (*out)[4u * j + k] = d * (f32(b & 15u) - 8.0);
            (*out)[4u * j + k + 16u] = d * (f32(b >> 4u) - 8.0);
        }
    }
}
//@format Q4_1
fn dq32(rb: u32, s: u32, out: ptr<function, array<f32, 32>>) {
    let bo = rb + s * 20u;
    let d = f16_at(bo);
    let m = f16_at(bo + 2u);
    for (var j = 0u; j < 4u; j++) {
        let q = bytes4(bo + 4u + 4u * j);
        for (var k = 0u; k < 4u; k++) {
            let b = (q >> (8u * k)) & 0xFFu;
            (*out)[4u * j + k] = d * f32(b & 15u) + m;
            (*out)[4u * j + k + 16u] = d * f32(b >> 4u) + m;
        }
    }
}
//@format Q5_0
fn dq32(rb: u32, s: u32, out: ptr<function, array<f32, 32>>) {
    let bo = rb + s * 22u;
    let d = f16_at(bo);
    let qh = bytes4(bo + 2u);
    for (var j = 0u; j < 4u; j++) {
        let q = bytes4(bo + 6u + 4u * j);
        for (var k = 0u; k < 4u; k++) {
            let i = 4u * j + k;
            let b = (q >> (8u * k)) & 0xFFu;
            let h0 = ((qh >> i) << 4u) & 16u;
            let h1 = (qh >> (i + 12u)) & 16u;
            (*out)[i] = d * (f32((b & 15u) | h0) - 16.0);
            (*out)[i + 16u] = d * (f32((b >> 4u) | h1) - 16.0);
        }
    }
}
//@format Q5_1
fn dq32(rb: u32, s: u32, out: ptr<function, array<f32, 32>>) {
    let bo = rb + s * 24u;
    let d = f16_at(bo);
    let m = f16_at(bo + 2u);
    let qh = bytes4(bo + 4u);
    for (var j = 0u; j < 4u; j++) {
        let q = bytes4(bo + 8u + 4u * j);
        for (var k = 0u; k < 4u; k++) {
            let i = 4u * j + k;
            let b = (q >> (8u * k)) & 0xFFu;
            let h0 = ((qh >> i) << 4u) & 16u;
            let h1 = (qh >> (i + 12u)) & 16u;
            (*out)[i] = d * f32((b & 15u) | h0) + m;
            (*out)[i + 16u] = d * f32((b >> 4u) | h1) + m;
        }
    }
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
fn dq32(rb: u32, s: u32, out: ptr<function, array<f32, 32>>) {
    let bo = rb + (s / 8u) * 144u;
    let j = s % 8u;
    let d = f16_at(bo);
    let dmin = f16_at(bo + 2u);
    let sm = scale_min_k4(bo + 4u, j);
    let d1 = d * sm.x;
    let m1 = dmin * sm.y;
    let qs = bo + 16u + 32u * (j / 2u);
    let sh = (j & 1u) * 4u;
    for (var c = 0u; c < 8u; c++) {
        let q = bytes4(qs + 4u * c) >> sh;
        for (var k = 0u; k < 4u; k++) { (*out)[4u * c + k] = d1 * f32((q >> (8u * k)) & 15u) - m1; }
    }
}
//@format Q5_K
fn dq32(rb: u32, s: u32, out: ptr<function, array<f32, 32>>) {
    let bo = rb + (s / 8u) * 176u;
    let j = s % 8u;
    let d = f16_at(bo);
    let dmin = f16_at(bo + 2u);
    let sm = scale_min_k4(bo + 4u, j);
    let d1 = d * sm.x;
    let m1 = dmin * sm.y;
    let qh = bo + 16u;
    let qs = bo + 48u + 32u * (j / 2u);
    let sh = (j & 1u) * 4u;
    for (var c = 0u; c < 8u; c++) {
        let q = bytes4(qs + 4u * c) >> sh;
        let h = bytes4(qh + 4u * c) >> j;
        for (var k = 0u; k < 4u; k++) {
            let v = ((q >> (8u * k)) & 15u) + (((h >> (8u * k)) & 1u) << 4u);
            (*out)[4u * c + k] = d1 * f32(v) - m1;
        }
    }
}
//@format Q6_K
fn dq32(rb: u32, s: u32, out: ptr<function, array<f32, 32>>) {
    let bo = rb + (s / 8u) * 210u;
    let j = s % 8u;
    let half = j / 4u;
    let qi = j % 4u;
    let ql = bo + 64u * half + (qi & 1u) * 32u;
    let qh = bo + 128u + 32u * half;
    let sc = bo + 192u + 8u * half + 2u * qi;
    let d = f16_at(bo + 208u);
    let sh_lo = (qi >> 1u) * 4u;
    let sh_hi = qi * 2u;
    let d0 = d * i8_of(byte_at(sc));
    let d1 = d * i8_of(byte_at(sc + 1u));
    for (var c = 0u; c < 8u; c++) {
        let lo = bytes4(ql + 4u * c) >> sh_lo;
        let hi = bytes4(qh + 4u * c) >> sh_hi;
        let dd = select(d1, d0, c < 4u);
        for (var k = 0u; k < 4u; k++) {
            let q = ((lo >> (8u * k)) & 15u) | (((hi >> (8u * k)) & 3u) << 4u);
            (*out)[4u * c + k] = dd * (f32(q) - 32.0);
        }
    }
}
