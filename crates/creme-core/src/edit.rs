//! CREME step 2: edit W_down of one layer so the perturbed prompt's hidden states at that layer's
//! output match the clean prompt's, while the clean prompt's own states stay put:
//!
//!   L(W) = MSE(h_pert(W), h_orig) + lambda * MSE(h_orig(W), h_orig),   h(W) = r + W a
//!
//! r (the residual stream before W_down's contribution) and a (the SwiGLU activation) do not
//! depend on W, so they are captured once and every optimizer step is two small matrix products
//! on the GPU; no forward pass is repeated. A closed-form ridge solver is the second solver.

use crate::progress::{Progress, Step};
use serde::Serialize;

use crate::backend::{AdamStep, Backend, Device};
use crate::error::ModelError;
use crate::generate::left_pad;
use crate::hooks::{Hooks, Site};
use crate::model::{Logits, Model};

/// What the edit fits: rows are the target positions (orig rows, then pert rows).
#[derive(Clone)]
pub struct EditData {
    pub layer: usize,
    /// Target positions per prompt.
    pub n: usize,
    pub d: usize,
    pub f: usize,
    /// [n, d] residual before W_down's contribution, clean (orig) and perturbed.
    pub r_orig: Vec<f32>,
    pub r_pert: Vec<f32>,
    /// [n, f] SwiGLU activations.
    pub a_orig: Vec<f32>,
    pub a_pert: Vec<f32>,
    /// [n, d] the clean prompt's layer output before the edit (frozen target).
    pub h_orig: Vec<f32>,
}

/// Capture r, a and h at `layer` for orig = clean + target and pert = pert + target, at the
/// positions holding the target tokens (the last |target| of each sequence).
pub async fn capture(
    dev: &Device,
    model: &Model,
    clean: &[u32],
    pert: &[u32],
    target: &[u32],
    layer: usize,
) -> Result<EditData, ModelError> {
    let cfg = &model.cfg;
    if layer >= cfg.n_layers {
        return Err(ModelError::Format(format!(
            "layer {layer} of a {}-layer model",
            cfg.n_layers
        )));
    }
    if target.is_empty() || clean.is_empty() || pert.is_empty() {
        return Err(ModelError::Format(
            "edit: prompts and target must be non-empty".into(),
        ));
    }
    let (batch, pads, len) = left_pad(cfg.pad_id, &[clean, pert], target);
    let mut cache = model.new_cache(dev, pads, len)?;
    let hooks = Hooks::capture([
        Site::ResidMid(layer),
        Site::MlpAct(layer),
        Site::ResidOut(layer),
    ]);
    let out = model.forward(dev, &mut cache, &batch, &hooks, Logits::None)?;
    let (n, d, f) = (target.len(), cfg.d_model, cfg.d_ff);
    let mut sides = Vec::new();
    for (site, width) in [
        (Site::ResidMid(layer), d),
        (Site::MlpAct(layer), f),
        (Site::ResidOut(layer), d),
    ] {
        let (buf, _, _) = out.captured.get(site).expect("captured");
        let all: Vec<f32> = dev.read(buf, 2 * len * width).await?;
        let take = |b: usize| all[(b * len + len - n) * width..(b + 1) * len * width].to_vec();
        sides.push((take(0), take(1)));
    }
    let [(r_orig, r_pert), (a_orig, a_pert), (h_orig, _)]: [(Vec<f32>, Vec<f32>); 3] =
        sides.try_into().expect("three sites");
    Ok(EditData {
        layer,
        n,
        d,
        f,
        r_orig,
        r_pert,
        a_orig,
        a_pert,
        h_orig,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Keep {
    /// The weights after the last step (the paper's code).
    Final,
    /// The weights with the lowest loss seen.
    Best,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub enum Solver {
    Adam,
    /// Closed form: min L(W0 + D) + ridge * ||D||² / (d f), exact per output row.
    Ridge {
        ridge: f64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EditSettings {
    pub solver: Solver,
    pub lambda: f64,
    pub lr: f64,
    pub max_steps: usize,
    pub patience: usize,
    pub keep: Keep,
}

impl Default for EditSettings {
    /// The paper's settings.
    fn default() -> Self {
        EditSettings {
            solver: Solver::Adam,
            lambda: 0.1,
            lr: 5e-4,
            max_steps: 20,
            patience: 3,
            keep: Keep::Final,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LossParts {
    pub total: f64,
    pub pert: f64,
    pub orig: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EditResult {
    #[serde(skip)]
    pub w: Vec<f32>,
    /// Loss at each evaluation (evaluation i sees the weights after i updates).
    pub losses: Vec<LossParts>,
    /// Evaluations made (the reference's `steps`).
    pub steps: usize,
    pub best_loss: f64,
    pub best_step: usize,
    pub kept_step: usize,
    pub seconds: f64,
}

/// Loss of the weights `w` [d, f] on the captured data (f64 CPU reference).
pub fn loss_cpu(data: &EditData, w: &[f32], lambda: f64) -> LossParts {
    let (n, d, f) = (data.n, data.d, data.f);
    let mse = |r: &[f32], a: &[f32]| -> f64 {
        let mut s = 0.0;
        for i in 0..n {
            for j in 0..d {
                let mut h = r[i * d + j] as f64;
                let wr = &w[j * f..(j + 1) * f];
                let ar = &a[i * f..(i + 1) * f];
                h += wr
                    .iter()
                    .zip(ar)
                    .map(|(x, y)| *x as f64 * *y as f64)
                    .sum::<f64>();
                s += (h - data.h_orig[i * d + j] as f64).powi(2);
            }
        }
        s / (n * d) as f64
    };
    let (pert, orig) = (
        mse(&data.r_pert, &data.a_pert),
        mse(&data.r_orig, &data.a_orig),
    );
    LossParts {
        total: pert + lambda * orig,
        pert,
        orig,
    }
}

/// dL/dW [d, f] (f64 CPU reference).
pub fn grad_cpu(data: &EditData, w: &[f32], lambda: f64) -> Vec<f32> {
    let (n, d, f) = (data.n, data.d, data.f);
    let mut g = vec![0f64; d * f];
    for (r, a, coef) in [
        (&data.r_pert, &data.a_pert, 1.0),
        (&data.r_orig, &data.a_orig, lambda),
    ] {
        for i in 0..n {
            for j in 0..d {
                let wr = &w[j * f..(j + 1) * f];
                let ar = &a[i * f..(i + 1) * f];
                let h = r[i * d + j] as f64
                    + wr.iter()
                        .zip(ar)
                        .map(|(x, y)| *x as f64 * *y as f64)
                        .sum::<f64>();
                let e = coef * 2.0 * (h - data.h_orig[i * d + j] as f64) / (n * d) as f64;
                for k in 0..f {
                    g[j * f + k] += e * ar[k] as f64;
                }
            }
        }
    }
    g.into_iter().map(|x| x as f32).collect()
}

/// Run the configured solver from the file's weights `w0` [d, f].
pub async fn solve(
    dev: &Device,
    data: &EditData,
    w0: &[f32],
    s: &EditSettings,
) -> Result<EditResult, ModelError> {
    solve_with(dev, data, w0, s, &mut |_| {}).await
}

/// [`solve`], reporting each loss evaluation.
pub async fn solve_with(
    dev: &Device,
    data: &EditData,
    w0: &[f32],
    s: &EditSettings,
    progress: &mut Progress<'_>,
) -> Result<EditResult, ModelError> {
    match s.solver {
        Solver::Adam => adam(dev, data, w0, s, progress).await,
        Solver::Ridge { ridge } => {
            let t0 = now();
            let w = ridge_solve(data, w0, s.lambda, ridge);
            let l0 = loss_cpu(data, w0, s.lambda);
            let l1 = loss_cpu(data, &w, s.lambda);
            let best = l1.total.min(l0.total);
            Ok(EditResult {
                w,
                best_loss: best,
                best_step: 1,
                kept_step: 1,
                steps: 2,
                losses: vec![l0, l1],
                seconds: elapsed(t0),
            })
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn now() -> std::time::Instant {
    std::time::Instant::now()
}
#[cfg(not(target_arch = "wasm32"))]
fn elapsed(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64()
}
#[cfg(target_arch = "wasm32")]
fn now() {}
#[cfg(target_arch = "wasm32")]
fn elapsed(_: ()) -> f64 {
    0.0
}

/// Adam on the model's backend. Per step: Y = A Wᵀ (one matmul), residuals and loss on the CPU (2n x d
/// values), G = Eᵀ A (one matmul), one Adam kernel. Each step evaluates the loss, then stops
/// after `patience` evaluations without a new best, else updates.
async fn adam(
    dev: &Device,
    data: &EditData,
    w0: &[f32],
    s: &EditSettings,
    progress: &mut Progress<'_>,
) -> Result<EditResult, ModelError> {
    let t0 = now();
    let (n, d, f) = (data.n, data.d, data.f);
    let rows = 2 * n;
    // A = [A_orig; A_pert] [2n, f]; its transpose [f, 2n] for the gradient product.
    let a_cat: Vec<f32> = data.a_orig.iter().chain(&data.a_pert).cloned().collect();
    let mut a_t = vec![0f32; f * rows];
    for i in 0..rows {
        for k in 0..f {
            a_t[k * rows + i] = a_cat[i * f + k];
        }
    }
    let a_buf = dev.upload("edit A", rows, f, &a_cat)?;
    let at_buf = dev.upload("edit At", f, rows, &a_t)?;
    let mut w = dev.upload("edit W", d, f, w0)?;
    let mut best_w = dev.zeros("edit best W", d, f)?;
    let mut m = dev.zeros("adam m", d, f)?;
    let mut v = dev.zeros("adam v", d, f)?;
    let mut y = dev.zeros("edit Y", rows, d)?;
    let mut g = dev.zeros("edit G", d, f)?;
    let mut et = dev.zeros("edit Et", d, rows)?;
    let (mut losses, mut best, mut best_step, mut since) =
        (Vec::new(), f64::INFINITY, 0usize, 0usize);
    let mut t = 0u32;
    for step in 0..s.max_steps.max(1) {
        dev.matmul_f32(&a_buf, &w, &mut y, rows, d, f)?;
        let yv: Vec<f32> = dev.read(&y, rows * d).await?;
        // E = r + A Wᵀ - h_orig; rows 0..n orig (weight lambda), n..2n pert.
        let mut e_t = vec![0f32; d * rows];
        let (mut lp, mut lo) = (0f64, 0f64);
        for i in 0..rows {
            let (r, hi, coef) = if i < n {
                (&data.r_orig, i, s.lambda)
            } else {
                (&data.r_pert, i - n, 1.0)
            };
            for j in 0..d {
                let e = r[hi * d + j] + yv[i * d + j] - data.h_orig[hi * d + j];
                if i < n {
                    lo += (e as f64).powi(2);
                } else {
                    lp += (e as f64).powi(2);
                }
                e_t[j * rows + i] = (coef as f32) * e;
            }
        }
        let parts = LossParts {
            total: lp / (n * d) as f64 + s.lambda * lo / (n * d) as f64,
            pert: lp / (n * d) as f64,
            orig: lo / (n * d) as f64,
        };
        let total = parts.total;
        progress(Step {
            stage: "edit",
            done: step + 1,
            total: s.max_steps.max(1),
            note: format!("loss {total:.6}"),
        });
        losses.push(parts);
        if total < best {
            best = total;
            best_step = step;
            since = 0;
            dev.copy_rows(&w, 0, &mut best_w, 0, d)?;
        } else {
            since += 1;
            if since >= s.patience {
                break;
            }
        }
        if step + 1 == s.max_steps {
            break;
        }
        // G = Eᵀ A: x = Eᵀ [d, 2n], w = Aᵀ [f, 2n] -> [d, f]; the MSE's 2 / (n d) goes in as scale.
        dev.write(&mut et, &e_t)?;
        t += 1;
        dev.matmul_f32(&et, &at_buf, &mut g, d, f, rows)?;
        let step = AdamStep {
            lr: s.lr as f32,
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            scale: 2.0 / (n * d) as f32,
            t,
        };
        dev.adam(&mut w, &g, &mut m, &mut v, step)?;
    }
    let steps = losses.len();
    let (src, kept_step) = match s.keep {
        Keep::Final => (&w, steps - 1),
        Keep::Best => (&best_w, best_step),
    };
    let out: Vec<f32> = dev.read(src, d * f).await?;
    Ok(EditResult {
        w: out,
        losses,
        steps,
        best_loss: best,
        best_step,
        kept_step,
        seconds: elapsed(t0),
    })
}

/// Closed form. Per output row j with e_j = r + A w0_j - h (2n values, orig rows weighted by
/// lambda): min |D^½(e_j + A δ)|² + μ|δ|² gives δ = -Bᵀ (B Bᵀ + μ I)⁻¹ D^½ e_j with B = D^½ A;
/// the 2n x 2n system replaces the f x f one. μ = ridge * n (MSE scale: loss divides by n d,
/// the penalty by d f).
pub fn ridge_solve(data: &EditData, w0: &[f32], lambda: f64, ridge: f64) -> Vec<f32> {
    let (n, d, f) = (data.n, data.d, data.f);
    let rows = 2 * n;
    let sq = lambda.sqrt();
    let weight = |i: usize| if i < n { sq } else { 1.0 };
    let a_row = |i: usize| {
        if i < n {
            &data.a_orig[i * f..(i + 1) * f]
        } else {
            &data.a_pert[(i - n) * f..(i - n + 1) * f]
        }
    };
    // K = B Bᵀ + μ I
    let mu = ridge * n as f64 / f as f64;
    let mut k = vec![0f64; rows * rows];
    for i in 0..rows {
        for j in 0..=i {
            let dot: f64 = a_row(i)
                .iter()
                .zip(a_row(j))
                .map(|(x, y)| *x as f64 * *y as f64)
                .sum();
            let v = weight(i) * weight(j) * dot;
            k[i * rows + j] = v;
            k[j * rows + i] = v;
        }
        k[i * rows + i] += mu.max(1e-12);
    }
    let chol = cholesky(&k, rows);
    let mut w = w0.to_vec();
    let mut c = vec![0f64; rows];
    for j in 0..d {
        let wj = &w0[j * f..(j + 1) * f];
        for i in 0..rows {
            let (r, h) = if i < n {
                (data.r_orig[i * d + j], data.h_orig[i * d + j])
            } else {
                (data.r_pert[(i - n) * d + j], data.h_orig[(i - n) * d + j])
            };
            let aw: f64 = a_row(i)
                .iter()
                .zip(wj)
                .map(|(x, y)| *x as f64 * *y as f64)
                .sum();
            c[i] = weight(i) * (r as f64 + aw - h as f64);
        }
        let z = chol_solve(&chol, rows, &c);
        // δ = -Bᵀ z = -Σ_i weight(i) z_i a_i
        for i in 0..rows {
            let coef = (weight(i) * z[i]) as f32;
            for (wk, ak) in w[j * f..(j + 1) * f].iter_mut().zip(a_row(i)) {
                *wk -= coef * ak;
            }
        }
    }
    w
}

fn cholesky(a: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            if i == j {
                l[i * n + i] = (a[i * n + i] - s).max(1e-300).sqrt();
            } else {
                l[i * n + j] = (a[i * n + j] - s) / l[j * n + j];
            }
        }
    }
    l
}

fn chol_solve(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut y = vec![0f64; n];
    for i in 0..n {
        y[i] = (b[i] - (0..i).map(|k| l[i * n + k] * y[k]).sum::<f64>()) / l[i * n + i];
    }
    let mut x = vec![0f64; n];
    for i in (0..n).rev() {
        x[i] = (y[i] - (i + 1..n).map(|k| l[k * n + i] * x[k]).sum::<f64>()) / l[i * n + i];
    }
    x
}

/// The loss measured the slow way: apply `w` to the model and run the forward pass again (used
/// by tests to show the captured-activation loss is the same function).
#[allow(clippy::too_many_arguments)]
pub async fn loss_by_forward(
    dev: &Device,
    model: &mut Model,
    clean: &[u32],
    pert: &[u32],
    target: &[u32],
    layer: usize,
    w: &[f32],
    h_orig: &[f32],
    lambda: f64,
) -> Result<LossParts, ModelError> {
    model.set_ffn_down(dev, layer, w)?;
    let outs = layer_outputs(dev, model, clean, pert, target, layer).await;
    model.revert_ffn_down(layer);
    let (out_orig, out_pert) = outs?;
    let count = h_orig.len() as f64;
    let mse = |h: &[f32]| {
        h.iter()
            .zip(h_orig)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / count
    };
    let (p, o) = (mse(&out_pert), mse(&out_orig));
    Ok(LossParts {
        total: p + lambda * o,
        pert: p,
        orig: o,
    })
}

/// Layer outputs at the target positions of orig = clean + target and pert = pert + target.
async fn layer_outputs(
    dev: &Device,
    model: &Model,
    clean: &[u32],
    pert: &[u32],
    target: &[u32],
    layer: usize,
) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
    let (n, d) = (target.len(), model.cfg.d_model);
    let (batch, pads, len) = left_pad(model.cfg.pad_id, &[clean, pert], target);
    let mut cache = model.new_cache(dev, pads, len)?;
    let out = model.forward(
        dev,
        &mut cache,
        &batch,
        &Hooks::capture([Site::ResidOut(layer)]),
        Logits::None,
    )?;
    let (buf, _, _) = out.captured.get(Site::ResidOut(layer)).expect("captured");
    let all: Vec<f32> = dev.read(buf, 2 * len * d).await?;
    let side = |b: usize| all[(b * len + len - n) * d..(b + 1) * len * d].to_vec();
    Ok((side(0), side(1)))
}

pub use crate::patch::{EditPatch, PATCH_FORMAT};
