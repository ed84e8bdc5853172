// Small row kernels of the forward pass (the SwiGLU product and residual adds are matmul
// epilogues now, see matmul_quant.wgsl). Index = flattened 2-D workgroup id * 256 + lane.
struct Params { n: u32, a: u32, b: u32, c: u32 }
@group(0) @binding(0) var<storage, read> src0: array<f32>;
@group(0) @binding(1) var<storage, read> src1: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

fn gid(wg: vec3<u32>, nw: vec3<u32>, lid: u32) -> u32 { return (wg.x + wg.y * nw.x) * 256u + lid; }

// Greedy pick in two passes, so that a row of 151,936 logits is scanned by many workgroups
// rather than one. Pass 1 (argmax_part): workgroup (slice, row) of the p.b slices of a row writes
// its slice's first maximum and index to dst[2 * (row * p.b + slice) ..]; pass 2 (argmax): one
// workgroup per row picks the first maximum of the row's p.b partials from src0 and writes its
// index (as f32 bits) to dst[row]. p.a = the row width in both. Ties go to the lower index.
var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

// Whether candidate (ov, oi) beats (cv, ci): a larger value, or the same at a lower index. Index
// 0xFFFFFFFF is no candidate (a lane that saw no value), whatever its value. A NaN loses to any
// number, and among NaNs the lower index wins (a row of NaNs picks 0), as on the CPU backend:
// without this, a NaN seen first by a lane stayed its best, as nothing compares above a NaN.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7FFFFFFFu) > 0x7F800000u; // by its bits: compilers may fold v != v
}
fn better(ov: f32, oi: u32, cv: f32, ci: u32) -> bool {
    if (oi == 0xFFFFFFFFu) { return false; }
    if (ci == 0xFFFFFFFFu) { return true; }
    let o_nan = is_nan(ov);
    let c_nan = is_nan(cv);
    if (o_nan || c_nan) { return c_nan && (!o_nan || oi < ci); }
    return ov > cv || (ov == cv && oi < ci);
}

// The workgroup's best (value, index) from each lane's, into best_v[0] / best_i[0].
fn reduce_best(lid: u32, bv: f32, bi: u32) {
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var st = 128u; st > 0u; st >>= 1u) {
        if (lid < st) {
            let ov = best_v[lid + st];
            let oi = best_i[lid + st];
            if (better(ov, oi, best_v[lid], best_i[lid])) { best_v[lid] = ov; best_i[lid] = oi; }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256, 1, 1)
fn argmax_part(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    _ = src1[0]; // every entry point uses all four bindings, so one bind group layout fits all
    let slice = wg.x;
    let row = wg.y;
    let len = (p.a + p.b - 1u) / p.b;
    let end = min(p.a, (slice + 1u) * len);
    var bv = -3.4e38;
    var bi = 0xFFFFFFFFu;
    for (var j = slice * len + lid; j < end; j += 256u) {
        let v = src0[row * p.a + j];
        if (better(v, j, bv, bi)) { bv = v; bi = j; }
    }
    reduce_best(lid, bv, bi);
    if (lid == 0u) {
        dst[2u * (row * p.b + slice)] = best_v[0];
        dst[2u * (row * p.b + slice) + 1u] = bitcast<f32>(best_i[0]);
    }
}

@compute @workgroup_size(256, 1, 1)
fn argmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    _ = src1[0];
    let row = wg.x + wg.y * nw.x;
    if (row >= p.n) { return; }
    var bv = -3.4e38;
    var bi = 0xFFFFFFFFu;
    for (var j = lid; j < p.b; j += 256u) {
        let v = src0[2u * (row * p.b + j)];
        let i = bitcast<u32>(src0[2u * (row * p.b + j) + 1u]);
        if (better(v, i, bv, bi)) { bv = v; bi = i; }
    }
    reduce_best(lid, bv, bi);
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

// Temperature and nucleus (top-p) sampling without reading the vocabulary back: one workgroup per
// row; dst[row] = the picked index (as f32 bits), given a uniform u in [0, 1) in src1[row],
// temperature bitcast(p.b) and top_p bitcast(p.c). The rule (sampling::sample_row is the same on
// the CPU): weights w_i = exp((l_i - max) / T); the nucleus is {i : l_i >= lambda} for the largest
// lambda whose weight reaches top_p of the total (all of the row when top_p >= 1), found by 32
// bisection steps on lambda between max(smallest logit, largest - 104 T) (exp(-104) is 0 in f32)
// and the largest logit; the pick is the first index, in vocabulary order, where the running
// nucleus weight passes u times the nucleus weight (the last nucleus index if rounding leaves
// none). NUCLEUS_SPAN (104) comes from Rust (sampling.rs): the kernel registry declares it.
var<workgroup> red_s: array<f32, 256>;
var<workgroup> pick_chunk: u32;
var<workgroup> pick_rest: f32;

fn wg_sum(lid: u32, v: f32) -> f32 {
    red_s[lid] = v;
    workgroupBarrier();
    for (var st = 128u; st > 0u; st >>= 1u) {
        if (lid < st) { red_s[lid] += red_s[lid + st]; }
        workgroupBarrier();
    }
    let r = red_s[0];
    workgroupBarrier();
    return r;
}

fn wg_max(lid: u32, v: f32) -> f32 {
    red_s[lid] = v;
    workgroupBarrier();
    for (var st = 128u; st > 0u; st >>= 1u) {
        if (lid < st) { red_s[lid] = max(red_s[lid], red_s[lid + st]); }
        workgroupBarrier();
    }
    let r = red_s[0];
    workgroupBarrier();
    return r;
}

// Weight of the logits at or above lambda, over the whole row.
fn nucleus_weight(lid: u32, base: u32, mx: f32, t: f32, lambda: f32) -> f32 {
    var s = 0.0;
    for (var j = lid; j < p.a; j += 256u) {
        let l = src0[base + j];
        if (l >= lambda) { s += exp((l - mx) / t); }
    }
    return wg_sum(lid, s);
}

@compute @workgroup_size(256, 1, 1)
fn sample_top_p(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * nw.x;
    if (row >= p.n) { return; }
    let base = row * p.a;
    let t = bitcast<f32>(p.b);
    let top_p = bitcast<f32>(p.c);
    var hi_l = -3.4e38;
    var lo_l = 3.4e38;
    for (var j = lid; j < p.a; j += 256u) {
        hi_l = max(hi_l, src0[base + j]);
        lo_l = min(lo_l, src0[base + j]);
    }
    let mx = wg_max(lid, hi_l);
    let mn = -wg_max(lid, -lo_l);
    var lambda = mn;
    if (top_p < 1.0) {
        let goal = top_p * nucleus_weight(lid, base, mx, t, mn);
        // Selects, not branches, on the weights: every thread must reach every barrier.
        let top_only = nucleus_weight(lid, base, mx, t, mx) >= goal;
        var lo = max(mn, mx - NUCLEUS_SPAN * t);
        var hi = mx;
        for (var step = 0u; step < 32u; step++) {
            let mid = 0.5 * (lo + hi);
            let reached = nucleus_weight(lid, base, mx, t, mid) >= goal;
            lo = select(lo, mid, reached);
            hi = select(mid, hi, reached);
        }
        lambda = select(lo, mx, top_only);
    }
    // Each thread's contiguous chunk of the row: its nucleus weight, then thread 0 finds the chunk
    // where the running weight passes u times the total, and that chunk's thread scans it.
    let chunk = (p.a + 255u) / 256u;
    let c0 = min(lid * chunk, p.a);
    let c1 = min(c0 + chunk, p.a);
    var part = 0.0;
    for (var j = c0; j < c1; j++) {
        let l = src0[base + j];
        if (l >= lambda) { part += exp((l - mx) / t); }
    }
    red_s[lid] = part;
    workgroupBarrier();
    if (lid == 0u) {
        var total = 0.0;
        for (var i = 0u; i < 256u; i++) { total += red_s[i]; }
        var r = src1[row] * total;
        var found = 0u;
        var inside = false;
        for (var i = 0u; i < 256u; i++) {
            if (red_s[i] > 0.0) {
                found = i;
                if (r < red_s[i]) { inside = true; break; }
                r -= red_s[i];
            }
        }
        pick_chunk = found;
        // Rounding left the draw past the end: the last nucleus index (the scan runs through).
        pick_rest = select(3.4e38, r, inside);
    }
    workgroupBarrier();
    if (lid == pick_chunk) {
        var r = pick_rest;
        var last = c0;
        for (var j = c0; j < c1; j++) {
            let l = src0[base + j];
            if (l >= lambda) {
                last = j;
                let w = exp((l - mx) / t);
                if (r < w) { break; }
                r -= w;
            }
        }
        dst[row] = bitcast<f32>(last);
    }
}
