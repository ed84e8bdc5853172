// Causal attention over the KV cache for a chunk of T new tokens per sequence (batch B,
// left-padded). Query (b, t) sits at cache position p0 + t and sees keys pad[b] ..= p0 + t.
// One workgroup per (b, t, head). Keys go in blocks of 64 with an online softmax: thread j scores
// key j of the block, every thread takes the block's maximum, thread j writes its key's weight,
// then thread d accumulates output dimension d (and d + 64, ... up to head_dim 256), its sum
// rescaled when the running maximum grows. So any context length fits in 512 bytes of workgroup
// memory (the browser's limit is 16 KiB).
// GQA: query head h reads kv head h / (heads / kv_heads).
struct Params { batch: u32, t: u32, heads: u32, kv_heads: u32, head_dim: u32, ctx: u32, p0: u32, scale: f32 }
// The KV cache's element type: the kernel registry's _kv16 variant makes it f16.
alias KV = f32;
@group(0) @binding(0) var<storage, read> q: array<f32>;       // [B*T, heads, head_dim]
@group(0) @binding(1) var<storage, read> kc: array<KV>;       // [B, ctx, kv_heads*head_dim]
@group(0) @binding(2) var<storage, read> vc: array<KV>;       // [B, ctx, kv_heads*head_dim]
@group(0) @binding(3) var<storage, read> pad: array<u32>;     // [B] left-pad length
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [B*T, heads, head_dim]
@group(0) @binding(5) var<uniform> p: Params;

// WG (threads of a workgroup; a quarter of the largest head size) comes from Rust (gpu/wgsl.rs):
// the kernel registry declares it before this source.
var<workgroup> scores: array<f32, WG>;
var<workgroup> weights: array<f32, WG>;

// What workgroup `id` (b, t, head) attends with: its sequence b, its last key jq, its kv head,
// the cache row width, where its query starts, and its first key j0 (after the left pad).
struct Query { b: u32, jq: u32, kvh: u32, kvw: u32, qb: u32, j0: u32 }
fn query_of(id: u32) -> Query {
    let h = id % p.heads;
    let row = id / p.heads;           // b * T + t
    let b = row / p.t;
    return Query(b, p.p0 + row % p.t, h / (p.heads / p.kv_heads), p.kv_heads * p.head_dim,
                 (row * p.heads + h) * p.head_dim, pad[b]);
}
// This lane's output dimensions lid, lid + 64, ... of the query at qb, normalized.
fn write_out(qb: u32, lid: u32, acc: vec4<f32>, run_sum: f32) {
    var inv = 0.0;
    if (run_sum > 0.0) { inv = 1.0 / run_sum; }
    for (var k = 0u; k < (p.head_dim + WG - 1u) / WG; k++) {
        let d = lid + k * WG;
        if (d < p.head_dim) { out[qb + d] = acc[k] * inv; }
    }
}

@compute @workgroup_size(WG, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let id = wg.x + wg.y * nw.x;
    if (id >= p.batch * p.t * p.heads) { return; }
    let qr = query_of(id);

    var run_max = -3.4e38;
    var run_sum = 0.0;
    // Output dimensions lid, lid + 64, lid + 128, lid + 192 (those below head_dim), in a vec4 so
    // that they stay in registers.
    var acc = vec4<f32>(0.0);
    for (var jb = qr.j0; jb <= qr.jq; jb += WG) {
        let j = jb + lid;
        var s = -3.4e38;
        if (j <= qr.jq) {
            let kb = (qr.b * p.ctx + j) * qr.kvw + qr.kvh * p.head_dim;
            var dot = 0.0;
            for (var d = 0u; d < p.head_dim; d++) { dot = fma(q[qr.qb + d], f32(kc[kb + d]), dot); }
            s = dot * p.scale;
        }
        scores[lid] = s;
        workgroupBarrier();
        var block_max = run_max;
        for (var i = 0u; i < WG; i++) { block_max = max(block_max, scores[i]); }
        var wj = 0.0;
        if (j <= qr.jq) { wj = exp(s - block_max); }
        weights[lid] = wj;
        workgroupBarrier();
        // Key jb is always in range, so block_max is finite and the old sums shrink (or vanish).
        let shrink = exp(run_max - block_max);
        var block_sum = 0.0;
        acc *= shrink;
        let n = min(WG, qr.jq + 1u - jb);
        for (var i = 0u; i < n; i++) {
            let wi = weights[i];
            block_sum += wi;
            let vb = (qr.b * p.ctx + jb + i) * qr.kvw + qr.kvh * p.head_dim + lid;
            if (lid < p.head_dim) { acc.x = fma(wi, f32(vc[vb]), acc.x); }
            if (lid + WG < p.head_dim) { acc.y = fma(wi, f32(vc[vb + WG]), acc.y); }
            if (lid + 2u * WG < p.head_dim) { acc.z = fma(wi, f32(vc[vb + 2u * WG]), acc.z); }
            if (lid + 3u * WG < p.head_dim) { acc.w = fma(wi, f32(vc[vb + 3u * WG]), acc.w); }
        }
        run_sum = run_sum * shrink + block_sum;
        run_max = block_max;
        // Before the next block overwrites the scores and weights.
        workgroupBarrier();
    }
    write_out(qr.qb, lid, acc, run_sum);
}
