// One Adam step (PyTorch's formulation, no weight decay) over n parameters:
//   g = grad * scale; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g²
//   w -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),  bc1 = 1 - b1^t, bc2 = 1 - b2^t
struct Params { n: u32, _p0: u32, lr: f32, b1: f32, b2: f32, eps: f32, scale: f32, bc1: f32, bc2: f32, _p1: u32, _p2: u32, _p3: u32 }
@group(0) @binding(0) var<storage, read_write> w: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

// WG comes from Rust (gpu/wgsl.rs): the kernel registry declares it before this source.
@compute @workgroup_size(WG, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nw.x) * WG + lid;
    if (i >= p.n) { return; }
    let g = grad[i] * p.scale;
    let mi = p.b1 * m[i] + (1.0 - p.b1) * g;
    let vi = p.b2 * v[i] + (1.0 - p.b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    w[i] = w[i] - (p.lr / p.bc1) * mi / (sqrt(vi) / sqrt(p.bc2) + p.eps);
}
