// Decode attention split over the context (flash-decoding): one query per sequence (T = 1) at
// cache position p0, keys pad[b] ..= p0. Pass 1 (attn_split): workgroup (split, head, b) scores
// the CH keys of its split, one thread per key, and writes its split's maximum score, sum of
// weights and weighted sum of values to part; pass 2 (attn_merge): workgroup (head, b) rescales
// the splits to their common maximum and divides. Where one workgroup per head walked the whole
// context (14 workgroups for Qwen2.5-0.5B at decode), the splits spread it over the GPU.
// GQA: query head h reads kv head h / (heads / kv_heads).
struct Params { batch: u32, heads: u32, kv_heads: u32, head_dim: u32, ctx: u32, p0: u32, scale: f32, splits: u32 }
// The KV cache's element type: the kernel registry's _kv16 variant makes it f16.
alias KV = f32;
@group(0) @binding(0) var<storage, read> q: array<f32>;          // [B, heads, head_dim]
@group(0) @binding(1) var<storage, read> kc: array<KV>;          // [B, ctx, kv_heads*head_dim]
@group(0) @binding(2) var<storage, read> vc: array<KV>;          // [B, ctx, kv_heads*head_dim]
@group(0) @binding(3) var<storage, read> pad: array<u32>;        // [B] left-pad length
@group(0) @binding(4) var<storage, read_write> part: array<f32>; // [B, heads, splits, 2 + head_dim]
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // [B, heads, head_dim]
@group(0) @binding(6) var<uniform> p: Params;

const WG: u32 = 64u;
// CH (keys per split) comes from Rust (gpu/wgsl.rs): the kernel registry declares it before this
// source.
var<workgroup> weights_d: array<f32, CH>;
var<workgroup> stat: array<f32, 2>; // the split's maximum score and sum of weights

@compute @workgroup_size(WG, 1, 1)
fn attn_split(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let split = wg.x;
    let h = wg.y;
    let b = wg.z;
    let kvh = h / (p.heads / p.kv_heads);
    let kvw = p.kv_heads * p.head_dim;
    let qb = (b * p.heads + h) * p.head_dim;
    let k0 = pad[b] + split * CH;
    let k1 = min(p.p0 + 1u, k0 + CH); // keys k0 .. k1 - 1 (none when k0 > p0)
    var s = -3.4e38;
    if (lid < CH && k0 + lid < k1) {
        let kb = (b * p.ctx + k0 + lid) * kvw + kvh * p.head_dim;
        var sc = 0.0;
        var d = 0u;
        for (; d + 4u <= p.head_dim; d += 4u) {
            sc += dot(vec4<f32>(q[qb + d], q[qb + d + 1u], q[qb + d + 2u], q[qb + d + 3u]),
                      vec4<f32>(f32(kc[kb + d]), f32(kc[kb + d + 1u]), f32(kc[kb + d + 2u]), f32(kc[kb + d + 3u])));
        }
        for (; d < p.head_dim; d++) { sc = fma(q[qb + d], f32(kc[kb + d]), sc); }
        s = sc * p.scale;
    }
    if (lid < CH) { weights_d[lid] = s; }
    workgroupBarrier();
    if (lid == 0u) {
        var m = -3.4e38;
        for (var i = 0u; i < CH; i++) { m = max(m, weights_d[i]); }
        stat[0] = m;
    }
    workgroupBarrier();
    let m = stat[0];
    if (lid < CH) {
        var wj = 0.0;
        if (k0 + lid < k1) { wj = exp(s - m); }
        weights_d[lid] = wj;
    }
    workgroupBarrier();
    let n = select(0u, k1 - k0, k1 > k0);
    let pb = ((b * p.heads + h) * p.splits + split) * (2u + p.head_dim);
    if (lid == 0u) {
        var sum = 0.0;
        for (var i = 0u; i < n; i++) { sum += weights_d[i]; }
        part[pb] = m;
        part[pb + 1u] = sum;
    }
    for (var d = lid; d < p.head_dim; d += WG) {
        var acc = 0.0;
        for (var i = 0u; i < n; i++) {
            acc = fma(weights_d[i], f32(vc[(b * p.ctx + k0 + i) * kvw + kvh * p.head_dim + d]), acc);
        }
        part[pb + 2u + d] = acc;
    }
}

@compute @workgroup_size(WG, 1, 1)
fn attn_merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    _ = pad[0]; _ = kc[0]; _ = vc[0]; _ = q[0]; // one layout for both entry points
    let h = wg.x;
    let b = wg.y;
    let base = (b * p.heads + h) * p.splits * (2u + p.head_dim);
    var m = -3.4e38;
    for (var sp = 0u; sp < p.splits; sp++) { m = max(m, part[base + sp * (2u + p.head_dim)]); }
    var total = 0.0;
    for (var sp = 0u; sp < p.splits; sp++) {
        let pb = base + sp * (2u + p.head_dim);
        total += exp(part[pb] - m) * part[pb + 1u];
    }
    var inv = 0.0;
    if (total > 0.0) { inv = 1.0 / total; }
    for (var d = lid; d < p.head_dim; d += WG) {
        var acc = 0.0;
        for (var sp = 0u; sp < p.splits; sp++) {
            let pb = base + sp * (2u + p.head_dim);
            acc += exp(part[pb] - m) * part[pb + 2u + d];
        }
        out[(b * p.heads + h) * p.head_dim + d] = acc * inv;
    }
}
