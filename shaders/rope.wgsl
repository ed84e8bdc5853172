// Rotary position embedding, in place on rows of [heads, head_dim]. cos/sin come from a table
// computed on the CPU (exact f32 like the reference; GPU sin/cos are loose at large angles).
// style 0 = NeoX (pairs i, i + d/2), 1 = interleaved (pairs 2i, 2i + 1).
struct Params { rows: u32, heads: u32, head_dim: u32, style: u32 }
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> pos: array<u32>;      // position of each row
@group(0) @binding(2) var<storage, read> table: array<f32>;    // [pos][head_dim/2][cos, sin]
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let half = p.head_dim / 2u;
    let idx = (wg.x + wg.y * nw.x) * 64u + lid;
    if (idx >= p.rows * p.heads * half) { return; }
    let i = idx % half;
    let rh = idx / half;            // row * heads + head
    let row = rh / p.heads;
    let base = rh * p.head_dim;
    let t = (pos[row] * half + i) * 2u;
    let c = table[t];
    let s = table[t + 1u];
    var a = base + i;
    var b = base + i + half;
    if (p.style == 1u) { a = base + 2u * i; b = a + 1u; }
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x1 * c + x0 * s;
}
