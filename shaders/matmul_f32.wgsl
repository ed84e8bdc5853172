// Tiled f32 matmul: y[m, n] = sum_k x[m, k] * w[n, k]   (y = x · wᵀ, weights stored row-major
// as [out, in] like every linear layer of the model).
// 64x64 output tile per workgroup, 16x16 threads computing 4x4 each, K in steps of 16 through
// workgroup memory. Any m, n, k (odd sizes included): loads outside the matrix read as 0.

struct Dims { m: u32, n: u32, k: u32, _pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;

// TM and TN come from Rust (gpu/wgsl.rs): the kernel registry declares them before this source.
const TK: u32 = 16u;

var<workgroup> xs: array<f32, 1024>; // [TM][TK]
var<workgroup> ws: array<f32, 1024>; // [TN][TK]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.y * 16u + lid.x;
    let row0 = wg.y * TM;
    let col0 = wg.x * TN;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }

    for (var k0 = 0u; k0 < dims.k; k0 += TK) {
        for (var i = 0u; i < 4u; i++) {
            let e = tid + i * 256u;
            let r = e / TK;
            let c = e % TK;
            let gk = k0 + c;
            var xv = 0.0;
            if (row0 + r < dims.m && gk < dims.k) { xv = x[(row0 + r) * dims.k + gk]; }
            xs[e] = xv;
            var wv = 0.0;
            if (col0 + r < dims.n && gk < dims.k) { wv = w[(col0 + r) * dims.k + gk]; }
            ws[e] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = xs[(lid.y * 4u + i) * TK + kk];
                b[i] = ws[(lid.x * 4u + i) * TK + kk];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(a[i], b[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + lid.x * 4u + j;
            if (r < dims.m && c < dims.n) { y[r * dims.n + c] = acc[i * 4u + j]; }
        }
    }
}
