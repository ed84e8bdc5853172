//! The covariance-preserving solver's metric (MEMIT's "mom2"): C = E[a aᵀ] of one layer's SwiGLU
//! activations (the input of W_down) over a fixed set of clean prompts. The edit then solves
//!
//!   min  |errors on the fitted rows|²  +  μ δᵀ C_s δ     (per output row δ of the change)
//!
//! instead of μ |δ|²: a change along directions that typical prompts' activations use costs more,
//! so their outputs move least. C is normalised to a mean eigenvalue of 1 (tr C = f), so μ has
//! the ridge solver's scale, and shrunk towards the identity ([`SHRINK`]), because a few thousand
//! rows estimate its smallest eigenvalues poorly.
//!
//! Cost: the Gram matrices AᵀA of every layer come from one pass over the prompts (the
//! backend's f32 matmul, blocks of [`BLOCK_ROWS`] rows), and are cached on disk per model and
//! prompt set; the Cholesky factor of one layer's C_s takes seconds and is kept in memory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::backend::{Backend, Device};
use crate::error::ModelError;
use crate::hooks::{Hooks, Site};
use crate::model::{Logits, Model};
use crate::progress::{Progress, Step};

/// Weight of the identity in C_s = (1 - SHRINK) C/(tr C/f) + SHRINK I.
pub const SHRINK: f64 = 0.01;
/// Activation rows per Gram product: the [f, rows] block stays in the cache (10 MB at f = 4864).
pub const BLOCK_ROWS: usize = 512;
/// Factors kept in memory at once (189 MB each at f = 4864).
const FACTORS_KEPT: usize = 3;

/// Σ a aᵀ over `rows` activation rows of one layer, [f, f] row-major.
pub struct Gram {
    pub rows: usize,
    pub f: usize,
    pub sum: Vec<f32>,
}

/// Gram matrices of every layer's W_down input over `prompts` (one forward per prompt, each
/// prompt alone so no pad row is counted).
pub async fn layer_grams(
    dev: &Device,
    model: &Model,
    prompts: &[Vec<u32>],
    progress: &mut Progress<'_>,
) -> Result<Vec<Gram>, ModelError> {
    let (layers, f) = (model.cfg.n_layers, model.cfg.d_ff);
    let mut grams: Vec<Gram> = (0..layers)
        .map(|_| Gram {
            rows: 0,
            f,
            sum: vec![0.0; f * f],
        })
        .collect();
    let mut pending: Vec<Vec<f32>> = vec![Vec::new(); layers];
    let sites: Vec<Site> = (0..layers).map(Site::MlpAct).collect();
    for (i, prompt) in prompts.iter().enumerate() {
        let mut cache = model.new_cache(dev, vec![0], prompt.len())?;
        let hooks = Hooks::capture(sites.iter().copied());
        let out = model.forward(
            dev,
            &mut cache,
            std::slice::from_ref(prompt),
            &hooks,
            Logits::None,
        )?;
        for (l, site) in sites.iter().enumerate() {
            let (buf, rows, _) = out.captured.get(*site).expect("captured");
            pending[l].extend(dev.read(buf, rows * f).await?);
            if pending[l].len() >= BLOCK_ROWS * f {
                add_block(dev, &mut grams[l], &std::mem::take(&mut pending[l])).await?;
            }
        }
        progress(Step {
            stage: "covariance",
            done: i + 1,
            total: prompts.len(),
            note: String::new(),
        });
    }
    for (gram, rest) in grams.iter_mut().zip(pending) {
        if !rest.is_empty() {
            add_block(dev, gram, &rest).await?;
        }
    }
    Ok(grams)
}

/// gram += Xᵀ X for the activation rows `x` [n, f], on the backend: the matmul computes
/// y = x' x'ᵀ with x' = Xᵀ [f, n].
async fn add_block(dev: &Device, gram: &mut Gram, x: &[f32]) -> Result<(), ModelError> {
    let f = gram.f;
    let n = x.len() / f;
    let mut xt = vec![0f32; f * n];
    for (r, row) in x.chunks_exact(f).enumerate() {
        for (k, v) in row.iter().enumerate() {
            xt[k * n + r] = *v;
        }
    }
    let xt = dev.upload("gram Xt", f, n, &xt)?;
    let mut y = dev.zeros("gram", f, f)?;
    dev.matmul_f32(&xt, &xt, &mut y, f, f, n)?;
    let y = dev.read(&y, f * f).await?;
    gram.sum.iter_mut().zip(y).for_each(|(s, v)| *s += v);
    gram.rows += n;
    Ok(())
}

/// The prompts a covariance is measured on: the clean prompts of the committed split's
/// development tasks, so that no confirmation prompt enters the metric.
pub fn preserve_prompts(clean: &[crate::dataset::Problem]) -> Vec<&str> {
    let dev = crate::experiment::split::committed().development.tasks;
    clean
        .iter()
        .filter(|p| dev.contains(&p.task_id))
        .map(|p| p.prompt.as_str())
        .collect()
}

/// The Cholesky factor L of one layer's C_s (lower, row-major, f64): solves C_s x = b.
pub struct Factor {
    pub layer: usize,
    pub f: usize,
    l: Vec<f64>,
}

impl Factor {
    pub fn from_gram(layer: usize, gram: &Gram) -> Factor {
        let f = gram.f;
        let trace: f64 = (0..f).map(|i| gram.sum[i * f + i] as f64).sum();
        let scale = (1.0 - SHRINK) * f as f64 / trace.max(f64::MIN_POSITIVE);
        let mut c: Vec<f64> = gram.sum.iter().map(|v| *v as f64 * scale).collect();
        for i in 0..f {
            c[i * f + i] += SHRINK;
        }
        Factor {
            layer,
            f,
            l: cholesky(&c, f),
        }
    }

    /// C_s⁻¹ b for each row b of `rows` [n, f].
    pub fn solve_rows(&self, rows: &[f32]) -> Vec<f32> {
        let f = self.f;
        let n = rows.len() / f;
        // X [f, n]: column j is row j's right-hand side, so each substitution step is an axpy over
        // the n columns (contiguous, vectorised) rather than a reduction.
        let mut x = vec![0f64; f * n];
        for (j, row) in rows.chunks_exact(f).enumerate() {
            for (k, v) in row.iter().enumerate() {
                x[k * n + j] = *v as f64;
            }
        }
        let l = &self.l;
        // L y = b
        for i in 0..f {
            let (done, rest) = x.split_at_mut(i * n);
            let xi = &mut rest[..n];
            for k in 0..i {
                let c = l[i * f + k];
                if c != 0.0 {
                    xi.iter_mut()
                        .zip(&done[k * n..(k + 1) * n])
                        .for_each(|(a, b)| *a -= c * b);
                }
            }
            xi.iter_mut().for_each(|a| *a /= l[i * f + i]);
        }
        // Lᵀ x = y
        for i in (0..f).rev() {
            let (head, tail) = x.split_at_mut((i + 1) * n);
            let xi = &mut head[i * n..];
            for k in i + 1..f {
                let c = l[k * f + i];
                if c != 0.0 {
                    let xk = &tail[(k - i - 1) * n..(k - i) * n];
                    xi.iter_mut().zip(xk).for_each(|(a, b)| *a -= c * b);
                }
            }
            xi.iter_mut().for_each(|a| *a /= l[i * f + i]);
        }
        let mut out = vec![0f32; n * f];
        for j in 0..n {
            for k in 0..f {
                out[j * f + k] = x[k * n + j] as f32;
            }
        }
        out
    }
}

/// Cholesky factor of the symmetric positive definite `a` [n, n] (lower, row-major). The dot
/// products run in 8 lanes so that they vectorise (an f64 `sum()` is a serial chain).
pub fn cholesky(a: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s = dot8(&l[i * n..i * n + j], &l[j * n..j * n + j]);
            if i == j {
                l[i * n + i] = (a[i * n + i] - s).max(1e-300).sqrt();
            } else {
                l[i * n + j] = (a[i * n + j] - s) / l[j * n + j];
            }
        }
    }
    l
}

fn dot8(x: &[f64], y: &[f64]) -> f64 {
    let mut acc = [0f64; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f64 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        for k in 0..8 {
            acc[k] += a[k] * b[k];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// The clean prompts a covariance is measured on, and the layers' Gram matrices and factors
/// made from them: computed on first use, kept on disk under `dir` (keyed by `key`, which names
/// the model and the prompts) and in memory.
pub struct Store {
    key: String,
    prompts: Vec<Vec<u32>>,
    dir: Option<PathBuf>,
    factors: Mutex<HashMap<usize, Arc<Factor>>>,
}

impl Store {
    /// `model_id` names the model file (its digest); the key adds the prompts' token ids.
    pub fn new(model_id: &str, prompts: Vec<Vec<u32>>, dir: Option<PathBuf>) -> Store {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(model_id.as_bytes());
        for p in &prompts {
            h.update((p.len() as u64).to_le_bytes());
            p.iter().for_each(|t| h.update(t.to_le_bytes()));
        }
        let key = h
            .finalize()
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect();
        Store {
            key,
            prompts,
            dir,
            factors: Mutex::new(HashMap::new()),
        }
    }

    /// Names the prompt set and model in records.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn prompts(&self) -> usize {
        self.prompts.len()
    }

    /// The factor of `layer`'s C_s.
    pub async fn factor(
        &self,
        dev: &Device,
        model: &Model,
        layer: usize,
        progress: &mut Progress<'_>,
    ) -> Result<Arc<Factor>, ModelError> {
        if let Some(f) = self.factors.lock().expect("factor cache").get(&layer) {
            return Ok(f.clone());
        }
        let gram = match self.read_gram(layer, model.cfg.d_ff)? {
            Some(g) => g,
            None => {
                let grams = layer_grams(dev, model, &self.prompts, progress).await?;
                for (l, g) in grams.iter().enumerate() {
                    self.write_gram(l, g)?;
                }
                grams
                    .into_iter()
                    .nth(layer)
                    .ok_or_else(|| ModelError::Format(format!("covariance: no layer {layer}")))?
            }
        };
        let factor = Arc::new(Factor::from_gram(layer, &gram));
        let mut kept = self.factors.lock().expect("factor cache");
        if kept.len() >= FACTORS_KEPT {
            kept.clear();
        }
        kept.insert(layer, factor.clone());
        Ok(factor)
    }

    fn path(&self, layer: usize) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{}-L{layer}.gram", self.key)))
    }

    /// A cached Gram: rows (u64 LE), f (u64 LE), then f*f f32 LE. A file of the wrong size is
    /// an error, not a silent recompute: it names the file to delete.
    fn read_gram(&self, layer: usize, f: usize) -> Result<Option<Gram>, ModelError> {
        let Some(path) = self.path(layer) else {
            return Ok(None);
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ModelError::Format(format!("{}: {e}", path.display()))),
        };
        let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        if bytes.len() != 16 + 4 * f * f || word(1) as usize != f {
            return Err(ModelError::Format(format!(
                "{}: not a covariance cache for f = {f}; delete it to recompute",
                path.display()
            )));
        }
        let sum = bytes[16..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()));
        Ok(Some(Gram {
            rows: word(0) as usize,
            f,
            sum: sum.collect(),
        }))
    }

    fn write_gram(&self, layer: usize, g: &Gram) -> Result<(), ModelError> {
        let Some(path) = self.path(layer) else {
            return Ok(());
        };
        let err = |e: std::io::Error| ModelError::Format(format!("{}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut bytes = Vec::with_capacity(16 + 4 * g.sum.len());
        bytes.extend((g.rows as u64).to_le_bytes());
        bytes.extend((g.f as u64).to_le_bytes());
        g.sum.iter().for_each(|v| bytes.extend(v.to_le_bytes()));
        let tmp = path.with_extension("part");
        std::fs::write(&tmp, bytes).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::cpu::SplitMix64(seed);
        let b: Vec<f64> = (0..n * n).map(|_| rng.next_f32() as f64).collect();
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| b[i * n + k] * b[j * n + k]).sum::<f64>();
            }
            a[i * n + i] += 0.5;
        }
        a
    }

    #[test]
    fn the_factor_solves_the_shrunk_covariance() {
        let f = 13;
        let a = spd(f, 7);
        let gram = Gram {
            rows: 40,
            f,
            sum: a.iter().map(|v| *v as f32).collect(),
        };
        let factor = Factor::from_gram(3, &gram);
        let trace: f64 = (0..f).map(|i| gram.sum[i * f + i] as f64).sum();
        let c = |i: usize, j: usize| {
            gram.sum[i * f + j] as f64 * (1.0 - SHRINK) * f as f64 / trace
                + if i == j { SHRINK } else { 0.0 }
        };
        let mut rng = crate::cpu::SplitMix64(9);
        let b: Vec<f32> = (0..3 * f).map(|_| rng.next_f32()).collect();
        let x = factor.solve_rows(&b);
        for r in 0..3 {
            for i in 0..f {
                let cx: f64 = (0..f).map(|j| c(i, j) * x[r * f + j] as f64).sum();
                assert!(
                    (cx - b[r * f + i] as f64).abs() < 1e-4,
                    "row {r} entry {i}: {cx}"
                );
            }
        }
    }
}
