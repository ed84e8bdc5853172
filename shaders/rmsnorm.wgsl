// RMSNorm per row: y = x / sqrt(mean(x²) + eps) * weight. One workgroup per row.
struct Params { rows: u32, dim: u32, eps: f32, _p: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const WG: u32 = 256u;
var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let row = wg.x + wg.y * nw.x;
    if (row >= p.rows) { return; }
    let base = row * p.dim;
    var s = 0.0;
    for (var i = tid; i < p.dim; i += WG) { let v = x[base + i]; s = fma(v, v, s); }
    part[tid] = s;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (tid < st) { part[tid] += part[tid + st]; }
        workgroupBarrier();
    }
    let inv = inverseSqrt(part[0] / f32(p.dim) + p.eps);
    for (var i = tid; i < p.dim; i += WG) { y[base + i] = x[base + i] * inv * weight[i]; }
}
