//! The sampling rule: one token from a row of logits, with temperature and nucleus (top-p)
//! sampling, given a uniform draw. A leaf module: generation calls it, the CPU backend runs it,
//! and the wgpu backend runs the same rule in WGSL (`sample_top_p` in shaders/elementwise.wgsl).

/// Pick a token from one row of logits with temperature and nucleus (top-p) sampling, given a
/// uniform `u` in [0, 1). Weights w_i = exp((l_i - max) / T); the nucleus is {i : l_i >= lambda}
/// for the largest lambda whose weight reaches `top_p` of the total (the whole row when top_p >= 1),
/// found by 32 bisection steps on lambda between max(smallest logit, largest - 104 T) (below that a
/// weight is 0 in f32) and the largest logit, which end within 104 T / 2^32 of each other (adjacent
/// floats for logits of ordinary size, so the nucleus is the tokens above a logit); the pick is the first index,
/// in vocabulary order, where the running nucleus weight passes u times the nucleus weight. The
/// wgpu backend runs the same rule on the GPU (`sample_top_p` in shaders/elementwise.wgsl).
pub fn sample_row(logits: &[f32], temperature: f32, top_p: f32, u: f32) -> u32 {
    let mx = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mn = logits.iter().cloned().fold(f32::INFINITY, f32::min);
    // The bisection's floor: -inf or huge negative logits (masks) would leave it unconverged.
    let floor = mn.max(mx - NUCLEUS_SPAN * temperature);
    // Weights and their sums in f64: this is the reference the GPU's f32 tree sums are held to.
    let weight = |l: f32| (((l - mx) / temperature) as f64).exp();
    let nucleus_weight = |lambda: f32| -> f64 {
        logits
            .iter()
            .filter(|&&l| l >= lambda)
            .map(|&l| weight(l))
            .sum()
    };
    let mut lambda = mn;
    if top_p < 1.0 {
        let target = top_p as f64 * nucleus_weight(mn);
        let (mut lo, mut hi) = (floor, mx);
        for _ in 0..32 {
            let mid = 0.5 * (lo + hi);
            if nucleus_weight(mid) >= target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lambda = if nucleus_weight(mx) >= target { mx } else { lo };
    }
    let mut r = u as f64 * nucleus_weight(lambda);
    let mut last = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l >= lambda {
            last = i;
            let w = weight(l);
            if r < w {
                break;
            }
            r -= w;
        }
    }
    last as u32
}

/// How far below the largest logit, in units of the temperature, the nucleus bisection starts:
/// exp(-104) is 0 in f32, so nothing below counts on the GPU. The same in `sample_top_p`.
pub const NUCLEUS_SPAN: f32 = 104.0;
