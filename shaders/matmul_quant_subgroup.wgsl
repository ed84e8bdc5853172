// The matvec kernel (`main_mv`, in matmul_quant.wgsl) with its 32-lane reduction done by subgroup
// operations: each subgroup sums its lanes with subgroupAdd, and one workgroup-memory step (one
// barrier) adds the 32 / S subgroup sums of a weight row, where main_mv runs a five-step tree with a
// barrier per step. Appended to matmul_quant.wgsl only for adapters with subgroups of 4 to 32
// lanes (a row's 32 lanes then hold whole subgroups), so that the other kernels compile without
// the subgroup feature. It assumes what drivers do for a one-dimensional workgroup (and what
// llama.cpp's Vulkan kernels assume too): subgroup j holds invocations j*S .. j*S + S - 1, all
// active. Neither WGSL nor Vulkan without full-subgroup pipelines promises it; --no-subgroups
// is the way out where a driver differs.
var<workgroup> part_sg: array<f32, 256>;    // [MV][64 subgroups at most]
var<workgroup> part_sg_ss: array<f32, 256>; // the same for the sums of squares of x

@compute @workgroup_size(256, 1, 1)
fn main_mv_sg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
              @builtin(local_invocation_index) tid: u32, @builtin(subgroup_size) sgs: u32,
              @builtin(subgroup_invocation_id) sgi: u32) {
    let lane = tid % 32u;
    let col = (wg.x + wg.y * nw.x) * MV_COLS + tid / 32u;
    let live = col < p.n;
    let mrows = min(MV, p.m);
    let part = mv_partial(col, lane, live, mrows);
    // Every lane of the workgroup takes part in the subgroup operations and the barrier.
    let sg = tid / sgs; // this subgroup's index in the workgroup
    let a = subgroupAdd(part.acc);
    let q = subgroupAdd(part.ss);
    if (sgi == 0u) {
        for (var r = 0u; r < MV; r++) {
            part_sg[r * 64u + sg] = a[r];
            part_sg_ss[r * 64u + sg] = q[r];
        }
    }
    workgroupBarrier();
    // Lane r of each weight row writes x-row r's result from the row's 32 / S subgroup sums.
    if (live && lane < mrows) {
        let first = (tid - lane) / sgs;
        var v = 0.0;
        var q = 0.0;
        for (var j = 0u; j < 32u / sgs; j++) {
            v += part_sg[lane * 64u + first + j];
            q += part_sg_ss[lane * 64u + first + j];
        }
        v = normed(v, q);
        if (p.has_bias == 1u) { v += bias[col]; }
        store(lane * p.ldy + p.y_off + col, v);
    }
}
