// Small row kernels of the forward pass (the SwiGLU product and residual adds are matmul
// epilogues now, see matmul_quant.wgsl). Index = flattened 2-D workgroup id * 256 + lane.
struct Params { n: u32, a: u32, b: u32, c: u32 }
@group(0) @binding(0) var<storage, read> src0: array<f32>;
@group(0) @binding(1) var<storage, read> src1: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

fn gid(wg: vec3<u32>, nw: vec3<u32>, lid: u32) -> u32 { return (wg.x + wg.y * nw.x) * 256u + lid; }

// Greedy pick: dst[row] = index of the first maximum of src0[row * p.a .. (row+1) * p.a], as f32 bits.
var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;
@compute @workgroup_size(256, 1, 1)
fn argmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    _ = src1[0]; // every entry point uses all four bindings, so one bind group layout fits all
    let row = wg.x + wg.y * nw.x;
    if (row >= p.n) { return; }
    var bv = -3.4e38;
    var bi = 0xFFFFFFFFu;
    for (var j = lid; j < p.a; j += 256u) {
        let v = src0[row * p.a + j];
        if (v > bv) { bv = v; bi = j; }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var st = 128u; st > 0u; st >>= 1u) {
        if (lid < st) {
            let ov = best_v[lid + st];
            let oi = best_i[lid + st];
            if (ov > best_v[lid] || (ov == best_v[lid] && oi < best_i[lid])) { best_v[lid] = ov; best_i[lid] = oi; }
        }
        workgroupBarrier();
    }
    if (lid == 0u) { dst[row] = bitcast<f32>(best_i[0]); }
}

// Log-probability of a target token per row: dst[row] = log_softmax(src0[row, :])[target[row]],
// targets passed as u32 bits in src1. One workgroup per row, rows of width p.a.
var<workgroup> red_lp: array<f32, 256>;
@compute @workgroup_size(256, 1, 1)
fn row_logprob(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * nw.x;
    if (row >= p.n) { return; }
    let base = row * p.a;
    var m = -3.4e38;
    for (var j = lid; j < p.a; j += 256u) { m = max(m, src0[base + j]); }
    red_lp[lid] = m;
    workgroupBarrier();
    for (var st = 128u; st > 0u; st >>= 1u) {
        if (lid < st) { red_lp[lid] = max(red_lp[lid], red_lp[lid + st]); }
        workgroupBarrier();
    }
    let mx = red_lp[0];
    workgroupBarrier();
    var s = 0.0;
    for (var j = lid; j < p.a; j += 256u) { s += exp(src0[base + j] - mx); }
    red_lp[lid] = s;
    workgroupBarrier();
    for (var st = 128u; st > 0u; st >>= 1u) {
        if (lid < st) { red_lp[lid] += red_lp[lid + st]; }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let tgt = bitcast<u32>(src1[row]);
        dst[row] = src0[base + tgt] - mx - log(red_lp[0]);
    }
}
