// Rotary position embedding, in place, on the queries and keys of a chunk in one dispatch: rows
// of [q_heads, head_dim] in q and of [kv_heads, head_dim] in k. cos/sin come from a table
// computed on the CPU (exact f32 like the reference; GPU sin/cos are loose at large angles).
// style 0 = NeoX (pairs i, i + d/2), 1 = interleaved (pairs 2i, 2i + 1).
struct Params { rows: u32, q_heads: u32, kv_heads: u32, head_dim: u32, style: u32, _p0: u32, _p1: u32, _p2: u32 }
@group(0) @binding(0) var<storage, read_write> q: array<f32>;
@group(0) @binding(1) var<storage, read_write> k: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<u32>;      // position of each row
@group(0) @binding(3) var<storage, read> table: array<f32>;    // [pos][head_dim/2][cos, sin]
@group(0) @binding(4) var<uniform> p: Params;

// The two elements of pair i of a head starting at `base`.
fn pair(base: u32, i: u32, half: u32) -> vec2<u32> {
    if (p.style == 1u) { return vec2<u32>(base + 2u * i, base + 2u * i + 1u); }
    return vec2<u32>(base + i, base + i + half);
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let half = p.head_dim / 2u;
    let heads = p.q_heads + p.kv_heads;
    let idx = (wg.x + wg.y * nw.x) * 64u + lid;
    if (idx >= p.rows * heads * half) { return; }
    let i = idx % half;
    let rh = idx / half;            // row * heads + head
    let row = rh / heads;
    let h = rh % heads;
    let t = (pos[row] * half + i) * 2u;
    let c = table[t];
    let s = table[t + 1u];
    if (h < p.q_heads) {
        let e = pair((row * p.q_heads + h) * p.head_dim, i, half);
        let x0 = q[e.x];
        let x1 = q[e.y];
        q[e.x] = x0 * c - x1 * s;
        q[e.y] = x1 * c + x0 * s;
    } else {
        let e = pair((row * p.kv_heads + h - p.q_heads) * p.head_dim, i, half);
        let x0 = k[e.x];
        let x1 = k[e.y];
        k[e.x] = x0 * c - x1 * s;
        k[e.y] = x1 * c + x0 * s;
    }
}
