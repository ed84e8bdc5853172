// After the joined query/key/value projection: from each row of [q | k | v] (bias added here),
// the queries are roped into `q`, and the keys (roped) and values written into the KV cache at the
// chunk's positions; this replaces a rope pass and the cache copies. One thread per rope pair of
// a query or key head and per value element. style 0 = NeoX pairs (i, i + d/2), 1 = interleaved.
struct Params {
    rows: u32, t: u32, q_heads: u32, kv_heads: u32,
    head_dim: u32, style: u32, has_bias: u32, capacity: u32,
    cache_len: u32, _p0: u32, _p1: u32, _p2: u32,
}
// The KV cache's element type: the kernel registry's _kv16 variant makes it f16.
alias KV = f32;
@group(0) @binding(0) var<storage, read> qkv: array<f32>;      // [rows, (q_heads + 2 kv_heads) * head_dim]
@group(0) @binding(1) var<storage, read> bias: array<f32>;     // [(q_heads + 2 kv_heads) * head_dim]
@group(0) @binding(2) var<storage, read> pos: array<u32>;      // rope position of each row
@group(0) @binding(3) var<storage, read> table: array<f32>;    // [pos][head_dim/2][cos, sin]
@group(0) @binding(4) var<storage, read_write> q: array<f32>;  // [rows, q_heads * head_dim]
@group(0) @binding(5) var<storage, read_write> kc: array<KV>;  // [batch, capacity, kv_heads * head_dim]
@group(0) @binding(6) var<storage, read_write> vc: array<KV>;  // as kc
@group(0) @binding(7) var<uniform> p: Params;

fn value(row: u32, col: u32) -> f32 {
    let width = (p.q_heads + 2u * p.kv_heads) * p.head_dim;
    var v = qkv[row * width + col];
    if (p.has_bias == 1u) { v += bias[col]; }
    return v;
}

// WG comes from Rust (gpu/wgsl.rs): the kernel registry declares it before this source.
@compute @workgroup_size(WG, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let half = p.head_dim / 2u;
    let qw = p.q_heads * p.head_dim;
    let kvw = p.kv_heads * p.head_dim;
    let pairs = (p.q_heads + p.kv_heads) * half;
    let per_row = pairs + kvw;
    let idx = (wg.x + wg.y * nw.x) * WG + lid;
    if (idx >= p.rows * per_row) { return; }
    let row = idx / per_row;
    let e = idx % per_row;
    // This row's place in the cache: sequence row / t, position cache_len + row % t.
    let crow = ((row / p.t) * p.capacity + p.cache_len + row % p.t) * kvw;
    if (e >= pairs) {
        let j = e - pairs;
        vc[crow + j] = KV(value(row, qw + kvw + j));
        return;
    }
    let h = e / half;
    let i = e % half;
    var a = i;
    var b = i + half;
    if (p.style == 1u) { a = 2u * i; b = a + 1u; }
    let t = (pos[row] * half + i) * 2u;
    let c = table[t];
    let s = table[t + 1u];
    if (h < p.q_heads) {
        let base = h * p.head_dim;
        let x0 = value(row, base + a);
        let x1 = value(row, base + b);
        q[row * qw + base + a] = x0 * c - x1 * s;
        q[row * qw + base + b] = x1 * c + x0 * s;
    } else {
        let base = (h - p.q_heads) * p.head_dim;
        let x0 = value(row, qw + base + a);
        let x1 = value(row, qw + base + b);
        kc[crow + base + a] = KV(x0 * c - x1 * s);
        kc[crow + base + b] = KV(x1 * c + x0 * s);
    }
}
