// Quantized matmul: y[m, y_off + n] = sum_k x[m, k] * W[n, k] (+ bias[n]), W read straight from
// GGUF blocks in the GPU layout (quant.rs, to_gpu_layout; no dequantized copy). With has_norm, x is first RMS-normed with weight g, folded in
// as rmsnorm(x) . W^T = (x . (W * g)^T) / rms(x): each piece of weights is scaled by g and the
// threads that read x also sum its squares, so the norm costs no dispatch and no pass over x. One workgroup per output column n and per MT rows of x;
// each thread dequantizes 32-weight pieces of the row into registers and reuses them for all MT
// rows, then the workgroup reduces. Decode (m = 1) is the matvec case of the same kernel.
// The per-format `dq4` is appended by the kernel registry from matmul_quant_formats.wgsl.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    ldy: u32,        // row stride of y
    y_off: u32,      // first column of y written (row-split weights)
    has_bias: u32,
    row_bytes: u32,  // bytes per weight row
    total_wg: u32,   // n * ceil(m / MT)
    w_byte_off: u32, // where this weight starts in the buffer (bytes)
    epilogue: u32,   // how a result enters y: 0 store, 1 add (residual), 2 silu(y) * result (gate-up)
    has_norm: u32,   // 1: RMS-norm x's rows with weight norm_w and epsilon eps first
    eps: f32,
    row_group: u32,  // weight rows per interleaved group (row_at)
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> norm_w: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

// WG (threads of main, main_rows, embed_rows), MT (rows of x per workgroup of main, per thread of
// main_rows), MV and MV_COLS (the matvec's rows of x and weight rows per workgroup), TILE (the
// tiles of main_tiled and main_gemm) and the format's UNIT_BYTES come from Rust (gpu/wgsl.rs):
// the kernel registry declares them before this source.
var<workgroup> red: array<f32, MT * WG>; // [MT][WG]
var<workgroup> red_ss: array<f32, MT * WG>; // [MT][WG], sums of squares of x

// Weights lie in the GPU's layout (quant.rs, to_gpu_layout): every field starts on a word, and
// what a CPU-adapter kernel reads together (a piece's quants, a block's header) lies in aligned
// 16 bytes, read with one vec4 load (`quad`). The buffer is viewed as vec4s only: naga lets an
// entry point use one view of a binding.
fn word(off: u32) -> u32 {
    return w[off >> 4u][(off >> 2u) & 3u];
}
// Where weight row `col` starts. Rows lie in groups of p.row_group whose units (UNIT_BYTES, the
// format's: a quad of blocks, a K block, 32 values of a float format) are interleaved: unit u of
// the group's row i lies at (u * row_group + i) * UNIT_BYTES from the group's start (quant.rs,
// to_gpu_layout), so that consecutive rows read by the lanes of a CPU's SIMD row are one
// sequential stream. The format functions step from unit to unit with unit_at.
fn row_at(col: u32) -> u32 {
    let g = p.row_group;
    return p.w_byte_off + (col / g) * g * p.row_bytes + (col % g) * UNIT_BYTES;
}
// Unit u of the row that starts at rb.
fn unit_at(rb: u32, u: u32) -> u32 {
    return rb + u * p.row_group * UNIT_BYTES;
}
// The 16 bytes at off (a multiple of 16).
fn quad(off: u32) -> vec4<u32> {
    return w[off >> 4u];
}
// The f16 at an even byte offset.
fn f16_at(off: u32) -> f32 {
    return unpack2x16float(word(off) >> ((off & 2u) * 8u)).x;
}
// The f16 in the low half of a word.
fn f16_lo(v: u32) -> f32 {
    return unpack2x16float(v).x;
}
// Weights 4c .. 4c + 3 of a dequantized piece.
fn put4(out: ptr<function, array<f32, 32>>, c: u32, v: vec4<f32>) {
    (*out)[4u * c] = v.x;
    (*out)[4u * c + 1u] = v.y;
    (*out)[4u * c + 2u] = v.z;
    (*out)[4u * c + 3u] = v.w;
}
fn i8_of(b: u32) -> f32 {
    return f32(bitcast<i32>(b << 24u) >> 24u);
}
// Write one result into y as the epilogue says. Modes 1 and 2 fuse the residual add and the
// SiLU-gated product into the matmul (y then holds the residual stream or the gate values).
fn store(idx: u32, v: f32) {
    if (p.epilogue == 1u) {
        y[idx] = y[idx] + v;
    } else if (p.epilogue == 2u) {
        let g = y[idx];
        y[idx] = g / (1.0 + exp(-g)) * v;
    } else {
        y[idx] = v;
    }
}

// The norm weight folded into the 32 weights of piece s (see the header).
fn scale_by_norm(s: u32, wv: ptr<function, array<f32, 32>>) {
    if (p.has_norm == 1u) {
        let gb = s * 32u;
        for (var i = 0u; i < 32u; i++) { (*wv)[i] *= norm_w[gb + i]; }
    }
}
// The dot product of x[xb .. xb + 32] with a piece of weights, and x's sum of squares there.
fn dot32(xb: u32, wv: ptr<function, array<f32, 32>>) -> vec2<f32> {
    var a = 0.0;
    var q = 0.0;
    for (var i = 0u; i < 32u; i++) {
        let xv = x[xb + i];
        a = fma(xv, (*wv)[i], a);
        q = fma(xv, xv, q);
    }
    return vec2<f32>(a, q);
}

// A finished dot product of one x row, given that row's sum of squares: divided by its RMS when
// the norm is folded in.
fn normed(v: f32, sumsq: f32) -> f32 {
    if (p.has_norm == 1u) {
        return v * inverseSqrt(sumsq / f32(p.k) + p.eps);
    }
    return v;
}

// Bytes 0-3 of q as signed integers, the low nibbles of its bytes, and its bits 0-3.
fn i8x4(q: u32) -> vec4<f32> {
    return vec4<f32>(i8_of(q), i8_of(q >> 8u), i8_of(q >> 16u), i8_of(q >> 24u));
}
fn nib4(q: u32) -> vec4<f32> {
    return vec4<f32>(f32(q & 15u), f32((q >> 8u) & 15u), f32((q >> 16u) & 15u), f32((q >> 24u) & 15u));
}
// The 4 bytes of v as unsigned integers.
fn u8x4(v: u32) -> vec4<f32> {
    return vec4<f32>(f32(v & 0xFFu), f32((v >> 8u) & 0xFFu), f32((v >> 16u) & 0xFFu), f32(v >> 24u));
}
// Bits 0-3 of h as the lowest bits of 4 bytes (one multiply: the shifted copies do not overlap).
fn bytes_of_bits(h: u32) -> u32 {
    return ((h & 15u) * 0x00204081u) & 0x01010101u;
}
// The 32 quants of a 32-value block of Q4 or Q5 from its 16 bytes q (values 0-15 in the low
// nibbles, 16-31 in the high ones) and, for Q5, its fifth bits qh (bit i for value i; 0 for Q4),
// less `zero` (the formats without a min are centred: their map then has no offset, and a
// decode kernel no sums of x to cancel against).
fn q5_quants(q: vec4<u32>, qh: u32, zero: f32, out: ptr<function, array<f32, 32>>) {
    for (var c = 0u; c < 4u; c++) {
        put4(out, c, u8x4((q[c] & 0x0F0F0F0Fu) | (bytes_of_bits(qh >> (4u * c)) << 4u)) - zero);
        put4(out, 4u + c, u8x4(((q[c] >> 4u) & 0x0F0F0F0Fu) | (bytes_of_bits(qh >> (16u + 4u * c)) << 4u)) - zero);
    }
}
// A piece's 32 quants from 32 bytes (a, then b; one quant per byte), less `zero`.
fn put_bytes(a: vec4<u32>, b: vec4<u32>, zero: f32, out: ptr<function, array<f32, 32>>) {
    for (var c = 0u; c < 4u; c++) {
        put4(out, c, u8x4(a[c]) - zero);
        put4(out, 4u + c, u8x4(b[c]) - zero);
    }
}
// Block i of the Q4 quad at qb (4 header words, then 4 x 16 quant bytes), given its header word
// in h.x: its quants less `zero` into out; returns the header word (the scale, or the scale and
// the min).
fn q4_piece(h: vec4<u32>, qb: u32, i: u32, zero: f32, out: ptr<function, array<f32, 32>>) -> u32 {
    q5_quants(quad(qb + 16u + 16u * i), 0u, zero, out);
    return h.x;
}
// The same for a Q5 quad (headers of 8 bytes: the scale word, then qh, given in h.xy; then 4 x 16
// quant bytes).
fn q5_piece(h: vec4<u32>, qb: u32, i: u32, zero: f32, out: ptr<function, array<f32, 32>>) -> u32 {
    q5_quants(quad(qb + 32u + 16u * i), h.y, zero, out);
    return h.x;
}
fn bit4(h: u32) -> vec4<f32> {
    return vec4<f32>(f32(h & 1u), f32((h >> 1u) & 1u), f32((h >> 2u) & 1u), f32((h >> 3u) & 1u));
}
// What a piece's weight groups share (see matmul_quant_formats.wgsl), and its 4 weights 4c ..
// 4c + 3.
struct Head {
    f: vec4<f32>,
    u: vec4<u32>,
}
fn dq4(rb: u32, s: u32, c: u32) -> vec4<f32> {
    return dq4h(head(rb, s), rb, s, c);
}
// What the pieces of a unit share, read once for all of them (matmul_quant_formats.wgsl: HQ quads).
alias Heads = array<vec4<u32>, HQ>;
// Piece s's quants and their map to weights (dq32h), reading only what the piece needs.
fn dq32q(rb: u32, s: u32, out: ptr<function, array<f32, 32>>) -> vec4<f32> {
    return dq32h(piece_heads(rb, s), rb, s, out);
}
// The 32 weights of piece s of the row at byte rb (its quants mapped as dq32q says), for the
// kernels that reuse a dequantized piece across many rows of x (on CPU adapters, where a
// function-scope array costs nothing extra).
fn dq32(rb: u32, s: u32, out: ptr<function, array<f32, 32>>) {
    let ab = dq32q(rb, s, out);
    for (var i = 0u; i < 16u; i++) {
        (*out)[i] = fma(ab.x, (*out)[i], ab.y);
        (*out)[16u + i] = fma(ab.z, (*out)[16u + i], ab.w);
    }
}

@compute @workgroup_size(WG, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let wid = wg.x + wg.y * nw.x;
    if (wid >= p.total_wg) {
        return;
    }
    let col = wid % p.n;
    let m0 = (wid / p.n) * MT;
    let rb = row_at(col);
    var acc: array<f32, MT>;
    var ss: array<f32, MT>;
    for (var r = 0u; r < MT; r++) { acc[r] = 0.0; ss[r] = 0.0; }
    var wv: array<f32, 32>;
    let nsub = p.k / 32u;
    for (var s = tid; s < nsub; s += WG) {
        dq32(rb, s, &wv);
        scale_by_norm(s, &wv);
        for (var r = 0u; r < MT; r++) {
            let row = m0 + r;
            if (row < p.m) {
                let xb = row * p.k + s * 32u;
                let d = dot32(xb, &wv);
                acc[r] += d.x;
                ss[r] += d.y;
            }
        }
    }
    for (var r = 0u; r < MT; r++) { red[r * WG + tid] = acc[r]; red_ss[r * WG + tid] = ss[r]; }
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (tid < st) {
            for (var r = 0u; r < MT; r++) {
                red[r * WG + tid] += red[r * WG + tid + st];
                red_ss[r * WG + tid] += red_ss[r * WG + tid + st];
            }
        }
        workgroupBarrier();
    }
    if (tid < MT) {
        let row = m0 + tid;
        if (row < p.m) {
            var v = normed(red[tid * WG], red_ss[tid * WG]);
            if (p.has_bias == 1u) { v += bias[col]; }
            store(row * p.ldy + p.y_off + col, v);
        }
    }
}

// Embedding lookup: y[i, :] = W[id_i, :] for the token ids in x (u32 bits), dequantized from the
// table's format, where id_i falls in this dispatch's chunk of the table (rows y_off .. y_off + n;
// a table split over buffers takes a dispatch per chunk). One workgroup per id, a thread per piece.
@compute @workgroup_size(WG, 1, 1)
fn embed_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
              @builtin(local_invocation_index) tid: u32) {
    let i = wg.x + wg.y * nw.x;
    if (i >= p.m) {
        return;
    }
    let id = bitcast<u32>(x[i]);
    if (id < p.y_off || id - p.y_off >= p.n) {
        return;
    }
    let rb = row_at(id - p.y_off);
    var wv: array<f32, 32>;
    for (var s = tid; s < p.k / 32u; s += WG) {
        dq32(rb, s, &wv);
        for (var j = 0u; j < 32u; j++) { y[i * p.k + s * 32u + j] = wv[j]; }
    }
}

// Row-per-thread variant: each invocation computes whole dot products for one weight row and MT
// rows of x; no workgroup memory and no barriers. Faster where workgroups are expensive
// (CPU adapters such as lavapipe/SwiftShader) and for small m.
@compute @workgroup_size(WG, 1, 1)
fn main_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
             @builtin(local_invocation_index) tid: u32) {
    let gid = (wg.x + wg.y * nw.x) * WG + tid;
    if (gid >= p.total_wg) {
        return;
    }
    let col = gid % p.n;
    let m0 = (gid / p.n) * MT;
    let rb = row_at(col);
    var acc: array<f32, MT>;
    var ss: array<f32, MT>;
    for (var r = 0u; r < MT; r++) { acc[r] = 0.0; ss[r] = 0.0; }
    var wv: array<f32, 32>;
    let nsub = p.k / 32u;
    let mrows = min(MT, p.m - m0);
    for (var s = 0u; s < nsub; s++) {
        dq32(rb, s, &wv);
        scale_by_norm(s, &wv);
        for (var r = 0u; r < mrows; r++) {
            let xb = (m0 + r) * p.k + s * 32u;
            let d = dot32(xb, &wv);
            acc[r] += d.x;
            ss[r] += d.y;
        }
    }
    for (var r = 0u; r < mrows; r++) {
        var v = normed(acc[r], ss[r]);
        if (p.has_bias == 1u) { v += bias[col]; }
        store((m0 + r) * p.ldy + p.y_off + col, v);
    }
}

// Tiled variant for prompts (m >= 16): a 64 x 64 tile of y per workgroup of 256 threads. For each
// 32-wide slice of k, 64 threads dequantize one weight row's 32 values each into workgroup memory
// (so each weight is dequantized once per 64 rows of x), all threads stage x, then each thread
// accumulates a 4 x 4 block. Dispatch: (ceil(n / 64), ceil(m / 64)).
var<workgroup> xs_t: array<f32, 2048>; // [64][32]
var<workgroup> ws_t: array<f32, 2048>; // [64][32]

@compute @workgroup_size(256, 1, 1)
fn main_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let lx = tid % 16u;
    let ly = tid / 16u;
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }
    var ss: array<f32, 4>; // sums of squares of this thread's 4 rows of x
    for (var i = 0u; i < 4u; i++) { ss[i] = 0.0; }
    var wv: array<f32, 32>;
    let nsub = p.k / 32u;
    for (var s = 0u; s < nsub; s++) {
        if (tid < 64u) {
            let col = col0 + tid;
            if (col < p.n) {
                dq32(row_at(col), s, &wv);
                scale_by_norm(s, &wv);
            } else {
                for (var i = 0u; i < 32u; i++) { wv[i] = 0.0; }
            }
            for (var i = 0u; i < 32u; i++) { ws_t[tid * 32u + i] = wv[i]; }
        }
        for (var e = tid; e < 2048u; e += 256u) {
            let r = row0 + e / 32u;
            var v = 0.0;
            if (r < p.m) { v = x[r * p.k + s * 32u + e % 32u]; }
            xs_t[e] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = xs_t[(ly * 4u + i) * 32u + kk];
                b[i] = ws_t[(lx * 4u + i) * 32u + kk];
                ss[i] = fma(a[i], a[i], ss[i]);
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) { acc[i * 4u + j] = fma(a[i], b[j], acc[i * 4u + j]); }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + ly * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + lx * 4u + j;
            if (r < p.m && c < p.n) {
                var v = normed(acc[i * 4u + j], ss[i]);
                if (p.has_bias == 1u) { v += bias[c]; }
                store(r * p.ldy + p.y_off + c, v);
            }
        }
    }
}

// Tiled variant for prompts on GPUs: a 64 x 64 tile of y per workgroup of 128 threads, each
// thread a block of 8 rows x 4 columns held in registers. Per 32-wide slice of k, threads 0-63
// dequantize the 64 weight rows' pieces into workgroup memory (each weight once per 64 rows of
// x) while threads 64-127 stage the 64 x 32 slice of x; then every thread accumulates its block.
// Both tiles are stored k-major so that the threads of a subgroup read consecutive words of ws_g
// (the columns j of a thread are lx + 16 j) and one word of xs_g (rows ly + 8 i); within a row
// of k, entry i sits at i ^ k (tile_at), so that the stores while staging, which run along k, hit
// 32 banks too, in the 16 KiB of workgroup memory every WebGPU adapter has (main_tiled, tuned for
// CPU adapters, reads its tiles 32 words apart: 16-way bank conflicts on a GPU). Dispatch:
// (ceil(n / 64), ceil(m / 64)).
var<workgroup> xs_g: array<f32, 2048>; // [32 k][64 rows]
var<workgroup> ws_g: array<f32, 2048>; // [32 k][64 columns]

fn tile_at(k: u32, i: u32) -> u32 {
    return k * 64u + (i ^ k);
}

@compute @workgroup_size(128, 1, 1)
fn main_gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let lx = tid % 16u;
    let ly = tid / 16u;
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    // Row i of this thread's block in a vec4 per row (its 4 columns), x's sums of squares of the
    // 8 rows in two vec4s: all in registers (no function-scope arrays, see matmul_quant_formats).
    var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0); var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0); var a5 = vec4<f32>(0.0); var a6 = vec4<f32>(0.0); var a7 = vec4<f32>(0.0);
    var ss_lo = vec4<f32>(0.0);
    var ss_hi = vec4<f32>(0.0);
    let nsub = p.k / 32u;
    for (var s = 0u; s < nsub; s++) {
        if (tid < 64u) {
            // 8 threads per weight row, 4 consecutive weights each: neighbouring threads read
            // neighbouring bytes of a row.
            let c = tid % 8u;
            for (var q = 0u; q < 8u; q++) {
                let lc = q * 8u + tid / 8u;
                let col = col0 + lc;
                var v = vec4<f32>(0.0);
                if (col < p.n) {
                    v = dq4(row_at(col), s, c);
                    if (p.has_norm == 1u) {
                        let i = s * 32u + 4u * c;
                        v *= vec4<f32>(norm_w[i], norm_w[i + 1u], norm_w[i + 2u], norm_w[i + 3u]);
                    }
                }
                ws_g[tile_at(4u * c, lc)] = v.x;
                ws_g[tile_at(4u * c + 1u, lc)] = v.y;
                ws_g[tile_at(4u * c + 2u, lc)] = v.z;
                ws_g[tile_at(4u * c + 3u, lc)] = v.w;
            }
        } else {
            let u = tid - 64u;
            let kk = u % 32u;
            for (var q = 0u; q < 32u; q++) {
                let r = u / 32u + 2u * q;
                var v = 0.0;
                if (row0 + r < p.m) { v = x[(row0 + r) * p.k + s * 32u + kk]; }
                xs_g[tile_at(kk, r)] = v;
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk++) {
            let b = vec4<f32>(ws_g[tile_at(kk, lx)], ws_g[tile_at(kk, lx + 16u)],
                              ws_g[tile_at(kk, lx + 32u)], ws_g[tile_at(kk, lx + 48u)]);
            let lo = vec4<f32>(xs_g[tile_at(kk, ly)], xs_g[tile_at(kk, ly + 8u)],
                               xs_g[tile_at(kk, ly + 16u)], xs_g[tile_at(kk, ly + 24u)]);
            let hi = vec4<f32>(xs_g[tile_at(kk, ly + 32u)], xs_g[tile_at(kk, ly + 40u)],
                               xs_g[tile_at(kk, ly + 48u)], xs_g[tile_at(kk, ly + 56u)]);
            a0 = fma(vec4<f32>(lo.x), b, a0);
            a1 = fma(vec4<f32>(lo.y), b, a1);
            a2 = fma(vec4<f32>(lo.z), b, a2);
            a3 = fma(vec4<f32>(lo.w), b, a3);
            a4 = fma(vec4<f32>(hi.x), b, a4);
            a5 = fma(vec4<f32>(hi.y), b, a5);
            a6 = fma(vec4<f32>(hi.z), b, a6);
            a7 = fma(vec4<f32>(hi.w), b, a7);
            ss_lo = fma(lo, lo, ss_lo);
            ss_hi = fma(hi, hi, ss_hi);
        }
        workgroupBarrier();
    }
    let r = row0 + ly;
    gemm_store(r, col0 + lx, a0, ss_lo.x);
    gemm_store(r + 8u, col0 + lx, a1, ss_lo.y);
    gemm_store(r + 16u, col0 + lx, a2, ss_lo.z);
    gemm_store(r + 24u, col0 + lx, a3, ss_lo.w);
    gemm_store(r + 32u, col0 + lx, a4, ss_hi.x);
    gemm_store(r + 40u, col0 + lx, a5, ss_hi.y);
    gemm_store(r + 48u, col0 + lx, a6, ss_hi.z);
    gemm_store(r + 56u, col0 + lx, a7, ss_hi.w);
}

// Row r of main_gemm's results: columns c, c + 16, c + 32, c + 48 (those in range).
fn gemm_store(r: u32, c: u32, acc: vec4<f32>, sumsq: f32) {
    if (r >= p.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let col = c + 16u * j;
        if (col < p.n) {
            var v = normed(acc[j], sumsq);
            if (p.has_bias == 1u) { v += bias[col]; }
            store(r * p.ldy + p.y_off + col, v);
        }
    }
}

// Matvec variant for decode on GPUs (m <= MV rows of x): 8 weight rows per workgroup of 256
// threads, 32 lanes per row, each lane dequantizing every 32nd piece of its row, then a 32-wide
// tree per row. Fewer and fuller workgroups than `main`, which gives each weight row a workgroup
// of 64 threads (28 busy at k = 896) and reduces 8 rows of x even when m = 1.
// Dispatch: ceil(n / 8) workgroups.
var<workgroup> red_mv: array<f32, MV * 256u>; // [MV][256]
var<workgroup> red_mv_ss: array<f32, MV * 256u>; // [MV][256], sums of squares of x

// One lane's share of weight row `col` in the matvec kernels (main_mv, main_mv_sg): its dot
// products with the m <= MV rows of x (norm folded in) and x's sums of squares, one per vec4
// component. The row's 32 lanes take 4 pieces at a time, 8 lanes per piece and 4 consecutive
// weights (dq4) per lane, so that neighbouring lanes read neighbouring bytes of the weights, x
// and the norm weight. (With a lane per piece, a subgroup's every load of x touched 32 cache
// lines 128 bytes apart: on the H200 such a matvec over a 3 MB weight took ~45 us.) Everything
// stays in registers: the weights are used as they are dequantized.
struct MvPartial {
    acc: vec4<f32>,
    ss: vec4<f32>,
}

fn x4(i: u32) -> vec4<f32> {
    return vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
}

fn mv_partial(col: u32, lane: u32, live: bool, mrows: u32) -> MvPartial {
    var out = MvPartial(vec4<f32>(0.0), vec4<f32>(0.0));
    if (!live) {
        return out;
    }
    let rb = row_at(col);
    let nsub = p.k / 32u;
    let c = lane % 8u;
    for (var s = lane / 8u; s < nsub; s += 4u) {
        let i = s * 32u + 4u * c;
        var wv = dq4(rb, s, c);
        if (p.has_norm == 1u) {
            wv *= vec4<f32>(norm_w[i], norm_w[i + 1u], norm_w[i + 2u], norm_w[i + 3u]);
        }
        let x0 = x4(i);
        out.acc.x += dot(wv, x0);
        out.ss.x += dot(x0, x0);
        if (mrows > 1u) {
            let x1 = x4(p.k + i);
            out.acc.y += dot(wv, x1);
            out.ss.y += dot(x1, x1);
        }
        if (mrows > 2u) {
            let x2 = x4(2u * p.k + i);
            out.acc.z += dot(wv, x2);
            out.ss.z += dot(x2, x2);
        }
        if (mrows > 3u) {
            let x3 = x4(3u * p.k + i);
            out.acc.w += dot(wv, x3);
            out.ss.w += dot(x3, x3);
        }
    }
    return out;
}

@compute @workgroup_size(256, 1, 1)
fn main_mv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
    let lane = tid % 32u;
    let col = (wg.x + wg.y * nw.x) * MV_COLS + tid / 32u;
    // No early return: every thread must reach the barriers.
    let live = col < p.n;
    let mrows = min(MV, p.m);
    let part = mv_partial(col, lane, live, mrows);
    for (var r = 0u; r < mrows; r++) {
        red_mv[r * 256u + tid] = part.acc[r];
        red_mv_ss[r * 256u + tid] = part.ss[r];
    }
    workgroupBarrier();
    for (var st = 16u; st > 0u; st >>= 1u) {
        if (lane < st) {
            for (var r = 0u; r < mrows; r++) {
                red_mv[r * 256u + tid] += red_mv[r * 256u + tid + st];
                red_mv_ss[r * 256u + tid] += red_mv_ss[r * 256u + tid + st];
            }
        }
        workgroupBarrier();
    }
    // Lane r of each row writes x-row r's result (the row's sum sits at its lane 0).
    if (live && lane < mrows) {
        let at = lane * 256u + tid - lane;
        var v = normed(red_mv[at], red_mv_ss[at]);
        if (p.has_bias == 1u) { v += bias[col]; }
        store(lane * p.ldy + p.y_off + col, v);
    }
}
