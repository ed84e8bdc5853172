// Causal attention over the KV cache for a chunk of T new tokens per sequence (batch B,
// left-padded). Query (b, t) sits at cache position p0 + t and sees keys pad[b] ..= p0 + t.
// One workgroup per (b, t, head); scores live in workgroup memory (context <= 4096).
// GQA: query head h reads kv head h / (heads / kv_heads).
struct Params { batch: u32, t: u32, heads: u32, kv_heads: u32, head_dim: u32, ctx: u32, p0: u32, scale: f32 }
@group(0) @binding(0) var<storage, read> q: array<f32>;       // [B*T, heads, head_dim]
@group(0) @binding(1) var<storage, read> kc: array<f32>;      // [B, ctx, kv_heads*head_dim]
@group(0) @binding(2) var<storage, read> vc: array<f32>;      // [B, ctx, kv_heads*head_dim]
@group(0) @binding(3) var<storage, read> pad: array<u32>;     // [B] left-pad length
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [B*T, heads, head_dim]
@group(0) @binding(5) var<uniform> p: Params;

const WG: u32 = 64u;
var<workgroup> sc: array<f32, 4096>;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let id = wg.x + wg.y * nw.x;
    if (id >= p.batch * p.t * p.heads) { return; }
    let h = id % p.heads;
    let row = id / p.heads;           // b * T + t
    let b = row / p.t;
    let jq = p.p0 + row % p.t;
    let kvh = h / (p.heads / p.kv_heads);
    let kvw = p.kv_heads * p.head_dim;
    let qb = (row * p.heads + h) * p.head_dim;
    let j0 = pad[b];

    var mx = -3.4e38;
    for (var j = j0 + lid; j <= jq; j += WG) {
        let kb = (b * p.ctx + j) * kvw + kvh * p.head_dim;
        var s = 0.0;
        for (var d = 0u; d < p.head_dim; d++) { s = fma(q[qb + d], kc[kb + d], s); }
        s *= p.scale;
        sc[j] = s;
        mx = max(mx, s);
    }
    red[lid] = mx;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (lid < st) { red[lid] = max(red[lid], red[lid + st]); }
        workgroupBarrier();
    }
    let m = red[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var j = j0 + lid; j <= jq; j += WG) {
        let e = exp(sc[j] - m);
        sc[j] = e;
        sum += e;
    }
    red[lid] = sum;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (lid < st) { red[lid] += red[lid + st]; }
        workgroupBarrier();
    }
    let total = red[0];
    var inv = 0.0;
    if (total > 0.0) { inv = 1.0 / total; }
    for (var d = lid; d < p.head_dim; d += WG) {
        var acc = 0.0;
        for (var j = j0; j <= jq; j++) {
            acc = fma(sc[j], vc[(b * p.ctx + j) * kvw + kvh * p.head_dim + d], acc);
        }
        out[qb + d] = acc * inv;
    }
}
