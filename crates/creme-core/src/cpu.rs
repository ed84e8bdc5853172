//! CPU references for the GPU kernels: plain, obviously-correct loops that tests compare against.

/// y[m, n] = sum_k x[m, k] * w[n, k]  (y = x · wᵀ), accumulated in f64.
pub fn matmul_nt(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "x must be m*k");
    assert_eq!(w.len(), n * k, "w must be n*k");
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            y[i * n + j] = xr
                .iter()
                .zip(wr)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>() as f32;
        }
    }
    y
}

/// Small deterministic generator for test data (SplitMix64): the same numbers on every platform.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn next_f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn vec_f32(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.next_f32()).collect()
    }
}

/// Largest |a - b| relative to max(1, |b|) over two equal-length slices.
pub fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f32::max)
}

/// Largest |a - b| divided by max(1, largest |b|): the error relative to the result's scale, for
/// sums whose terms cancel (a small entry of a large-magnitude result carries the whole sum's
/// rounding).
pub fn max_scaled_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

/// Check a backend's f32 matmul against [`matmul_nt`] on `cases` random shapes (up to 150 x 300
/// x 400) drawn from `seed`; `on_case(m, n, k, max relative error)` sees each. The largest error.
pub async fn check_matmul_f32(
    dev: &crate::Device,
    cases: usize,
    seed: u64,
    on_case: &mut dyn FnMut(usize, usize, usize, f32),
) -> Result<f32, crate::ModelError> {
    use crate::Backend;
    let mut rng = SplitMix64(seed);
    let mut worst = 0f32;
    for _ in 0..cases {
        let (m, n, k) = (
            1 + rng.below(150) as usize,
            1 + rng.below(300) as usize,
            1 + rng.below(400) as usize,
        );
        let x = rng.vec_f32(m * k);
        let w = rng.vec_f32(n * k);
        let (xt, wt, mut yt) = (
            dev.upload("x", m, k, &x)?,
            dev.upload("w", n, k, &w)?,
            dev.zeros("y", m, n)?,
        );
        dev.matmul_f32(&xt, &wt, &mut yt, m, n, k)?;
        let got = dev.read_all(&yt).await?;
        let err = max_rel_err(&got, &matmul_nt(&x, &w, m, n, k));
        on_case(m, n, k, err);
        worst = worst.max(err);
    }
    Ok(worst)
}
