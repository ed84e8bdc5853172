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

use crate::align::Alignment;
use crate::backend::{AdamStep, Backend, Device};
use crate::covariance::Factor;
use crate::error::ModelError;
use crate::generate::left_pad;
use crate::hooks::{Hooks, Site};
use crate::model::{Logits, Model};

/// One group of rows the edit is fitted on: per row the residual before W_down's contribution
/// `r` [n, d], the SwiGLU activation `a` [n, f], the layer output the row should have `t` [n, d]
/// and the output it has now `out` [n, d] (h(W) = r + W a; `out` = r + W0 a).
#[derive(Clone, Debug, Default)]
pub struct Rows {
    pub n: usize,
    pub r: Vec<f32>,
    pub a: Vec<f32>,
    pub t: Vec<f32>,
    pub out: Vec<f32>,
}

impl Rows {
    fn row<'a>(v: &'a [f32], i: usize, width: usize) -> &'a [f32] {
        &v[i * width..(i + 1) * width]
    }

    /// `other`'s rows after these.
    fn append(&mut self, other: Rows) {
        self.n += other.n;
        self.r.extend(other.r);
        self.a.extend(other.a);
        self.t.extend(other.t);
        self.out.extend(other.out);
    }
}

/// What the edit fits: the rows it moves (the perturbed run's, towards their clean twins) and
/// the rows it keeps where they are (weight lambda).
#[derive(Clone)]
pub struct EditData {
    pub layer: usize,
    pub d: usize,
    pub f: usize,
    pub moved: Rows,
    pub kept: Rows,
}

impl EditData {
    /// Another pair's rows at the same layer, fitted in the same solve (a multi-pair edit).
    pub fn stack(&mut self, other: EditData) -> Result<(), ModelError> {
        if (other.layer, other.d, other.f) != (self.layer, self.d, self.f) {
            return Err(ModelError::Format(format!(
                "stacking rows of layer {} ({}x{}) onto layer {} ({}x{})",
                other.layer, other.d, other.f, self.layer, self.d, self.f
            )));
        }
        self.moved.append(other.moved);
        self.kept.append(other.kept);
        Ok(())
    }
}

/// Which rows of the two runs an edit is fitted on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EditRows {
    /// The paper's: the |target| continuation rows. The perturbed run's move to the clean run's
    /// states; the clean run's are kept.
    #[default]
    Continuation,
    /// The rows the trace patches, aligned by token diff ([`Alignment`]): every perturbed row
    /// after the changed span (the prompt's common suffix, its last row included, and the
    /// continuation) moves to its clean twin's state. Kept: every clean row, and the perturbed
    /// prompt's changed span (the trace leaves it perturbed). Pads are never fitted. An exact
    /// fit makes the edited prompt pass at this layer equal to the aligned probe's.
    Prompt,
}

impl EditRows {
    pub fn is_paper(&self) -> bool {
        *self == EditRows::Continuation
    }
}

/// A fitted row: (sequence, frame row) of its source, and of the state it should take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pick {
    from: (usize, usize),
    to: (usize, usize),
}

/// The moved and kept rows of one edit in the left-padded frame of clean + target (sequence 0)
/// and pert + target (sequence 1), `len` rows each.
fn pick_rows(
    rows: EditRows,
    clean: &[u32],
    pert: &[u32],
    n_target: usize,
) -> (Vec<Pick>, Vec<Pick>) {
    let frame = clean.len().max(pert.len());
    let len = frame + n_target;
    let (pad_c, pad_p) = (frame - clean.len(), frame - pert.len());
    let own = |seq: usize, row: usize| Pick {
        from: (seq, row),
        to: (seq, row),
    };
    let continuation = frame..len;
    let mut moved: Vec<Pick> = Vec::new();
    let mut kept: Vec<Pick> = Vec::new();
    match rows {
        EditRows::Continuation => {
            moved.extend(continuation.clone().map(|r| Pick {
                from: (1, r),
                to: (0, r),
            }));
            kept.extend(continuation.map(|r| own(0, r)));
        }
        EditRows::Prompt => {
            let al = Alignment::of(clean, pert);
            moved.extend(al.suffix_pairs().map(|(jp, jc)| Pick {
                from: (1, pad_p + jp),
                to: (0, pad_c + jc),
            }));
            moved.extend(continuation.map(|r| Pick {
                from: (1, r),
                to: (0, r),
            }));
            kept.extend((pad_c..len).map(|r| own(0, r)));
            kept.extend(al.pert_span().map(|j| own(1, pad_p + j)));
        }
    }
    (moved, kept)
}

/// Capture r, a and h at `layer` for orig = clean + target and pert = pert + target, at the
/// positions holding the target tokens (the last |target| of each sequence): the paper's rows.
pub async fn capture(
    dev: &Device,
    model: &Model,
    clean: &[u32],
    pert: &[u32],
    target: &[u32],
    layer: usize,
) -> Result<EditData, ModelError> {
    capture_rows(
        dev,
        model,
        (clean, pert),
        target,
        layer,
        EditRows::Continuation,
    )
    .await
}

/// Capture r, a, the targets and the current outputs at `layer` of the rows `rows` picks.
pub async fn capture_rows(
    dev: &Device,
    model: &Model,
    (clean, pert): (&[u32], &[u32]),
    target: &[u32],
    layer: usize,
    rows: EditRows,
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
    let sites = [
        Site::ResidMid(layer),
        Site::MlpAct(layer),
        Site::ResidOut(layer),
    ];
    let out = model.forward(
        dev,
        &mut cache,
        &batch,
        &Hooks::capture(sites),
        Logits::None,
    )?;
    let (d, f) = (cfg.d_model, cfg.d_ff);
    let mut full = Vec::new();
    for (site, width) in sites.into_iter().zip([d, f, d]) {
        let (buf, _, _) = out.captured.get(site).expect("captured");
        full.push(dev.read(buf, 2 * len * width).await?);
    }
    let [mid, act, resid]: [Vec<f32>; 3] = full.try_into().expect("three sites");
    let gather = |picks: &[Pick]| {
        let at = |v: &[f32], (seq, row): (usize, usize), w: usize| {
            Rows::row(v, seq * len + row, w).to_vec()
        };
        Rows {
            n: picks.len(),
            r: picks.iter().flat_map(|p| at(&mid, p.from, d)).collect(),
            a: picks.iter().flat_map(|p| at(&act, p.from, f)).collect(),
            t: picks.iter().flat_map(|p| at(&resid, p.to, d)).collect(),
            out: picks.iter().flat_map(|p| at(&resid, p.from, d)).collect(),
        }
    };
    let (moved, kept) = pick_rows(rows, clean, pert, target.len());
    Ok(EditData {
        layer,
        d,
        f,
        moved: gather(&moved),
        kept: gather(&kept),
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
    /// Closed form with the change measured by the layer's activation covariance (MEMIT-style):
    /// min L(W0 + D) + ridge * Σ_j δ_jᵀ C_s δ_j / (d f), C_s from clean prompts
    /// ([`crate::covariance`]). Typical prompts' outputs move least.
    Covariance {
        ridge: f64,
    },
}

impl Solver {
    pub fn needs_covariance(&self) -> bool {
        matches!(self, Solver::Covariance { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EditSettings {
    pub solver: Solver,
    /// Which rows the edit is fitted on (not written when the paper's, so that records and
    /// patches of the paper's setting read as before).
    #[serde(skip_serializing_if = "EditRows::is_paper")]
    pub rows: EditRows,
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
            rows: EditRows::Continuation,
            lambda: 0.1,
            lr: 5e-4,
            max_steps: 20,
            patience: 3,
            keep: Keep::Final,
        }
    }
}

/// A control edit: what an edit is compared with, made from the setting's own solve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Control {
    /// W_down unchanged, but through the same f32 path as an edit (the patch holds W0 in f32;
    /// the dequantized weights alone can move near-tied tokens).
    Sham,
    /// A dense random change of the same Frobenius norm as the setting's change, seeded.
    Random { seed: u64 },
    /// The setting's edit made from another edit-worthy pair of the same type (its prompts and
    /// target, same rows and solver), evaluated for this one: what an edit does that is not
    /// about this prompt. The experiment runner picks the pair; the weights are that edit's.
    Matched,
}

impl Control {
    /// The control's weights, given the file's `w0` and the setting's solution `w`.
    pub fn weights(&self, w0: &[f32], w: &[f32]) -> Vec<f32> {
        match *self {
            Control::Sham => w0.to_vec(),
            Control::Matched => w.to_vec(),
            Control::Random { seed } => {
                let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
                let target = norm(&mut w0.iter().zip(w).map(|(a, b)| (*b - *a) as f64));
                let mut rng = crate::cpu::SplitMix64(seed);
                // Entries uniform on [-1, 1): a dense direction with no preferred row or column.
                let dir: Vec<f64> = (0..w0.len()).map(|_| rng.next_f32() as f64).collect();
                let scale = target / norm(&mut dir.iter().copied()).max(f64::MIN_POSITIVE);
                w0.iter()
                    .zip(&dir)
                    .map(|(a, r)| (*a as f64 + r * scale) as f32)
                    .collect()
            }
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

impl EditData {
    /// The weight of a kept row's squared error relative to a moved row's, so that the loss is
    /// MSE(moved) + lambda * MSE(kept) with each mean over its own rows.
    fn kept_weight(&self, lambda: f64) -> f64 {
        lambda * self.moved.n as f64 / self.kept.n.max(1) as f64
    }

    /// Both groups as (rows, weight per squared error relative to the moved rows').
    fn groups(&self, lambda: f64) -> [(&Rows, f64); 2] {
        [(&self.kept, self.kept_weight(lambda)), (&self.moved, 1.0)]
    }

    /// Error of row `i` of `rows` in output `j` under weights `w`: r + w_j . a - t.
    fn error(&self, rows: &Rows, w: &[f32], i: usize, j: usize) -> f64 {
        let (d, f) = (self.d, self.f);
        let wr = &w[j * f..(j + 1) * f];
        let ar = Rows::row(&rows.a, i, f);
        rows.r[i * d + j] as f64
            + wr.iter()
                .zip(ar)
                .map(|(x, y)| *x as f64 * *y as f64)
                .sum::<f64>()
            - rows.t[i * d + j] as f64
    }
}

/// Loss of the weights `w` [d, f] on the captured data (f64 CPU reference).
pub fn loss_cpu(data: &EditData, w: &[f32], lambda: f64) -> LossParts {
    let mse = |rows: &Rows| {
        let s: f64 = (0..rows.n)
            .flat_map(|i| (0..data.d).map(move |j| (i, j)))
            .map(|(i, j)| data.error(rows, w, i, j).powi(2))
            .sum();
        s / (rows.n.max(1) * data.d) as f64
    };
    let (pert, orig) = (mse(&data.moved), mse(&data.kept));
    LossParts {
        total: pert + lambda * orig,
        pert,
        orig,
    }
}

/// dL/dW [d, f] (f64 CPU reference).
pub fn grad_cpu(data: &EditData, w: &[f32], lambda: f64) -> Vec<f32> {
    let (d, f) = (data.d, data.f);
    let mut g = vec![0f64; d * f];
    let scale = 2.0 / (data.moved.n * d) as f64;
    for (rows, coef) in data.groups(lambda) {
        for i in 0..rows.n {
            let ar = Rows::row(&rows.a, i, f);
            for j in 0..d {
                let e = coef * scale * data.error(rows, w, i, j);
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
    solve_with(dev, data, w0, s, None, &mut |_| {}).await
}

/// [`solve`], reporting each loss evaluation; `metric` is the covariance solver's factor (of
/// `data`'s layer), required by it and ignored by the others.
pub async fn solve_with(
    dev: &Device,
    data: &EditData,
    w0: &[f32],
    s: &EditSettings,
    metric: Option<&Factor>,
    progress: &mut Progress<'_>,
) -> Result<EditResult, ModelError> {
    let closed = |ridge: f64, metric: Option<&Factor>| -> EditResult {
        let t0 = now();
        let w = metric_solve(data, w0, s.lambda, ridge, metric);
        let l0 = loss_cpu(data, w0, s.lambda);
        let l1 = loss_cpu(data, &w, s.lambda);
        let best = l1.total.min(l0.total);
        EditResult {
            w,
            best_loss: best,
            best_step: 1,
            kept_step: 1,
            steps: 2,
            losses: vec![l0, l1],
            seconds: elapsed(t0),
        }
    };
    match s.solver {
        Solver::Adam => adam(dev, data, w0, s, progress).await,
        Solver::Ridge { ridge } => Ok(closed(ridge, None)),
        Solver::Covariance { ridge } => match metric {
            Some(m) if m.layer == data.layer && m.f == data.f => Ok(closed(ridge, Some(m))),
            Some(m) => Err(ModelError::Format(format!(
                "covariance solver: the factor is of layer {} (f {}), the edit of layer {} (f {})",
                m.layer, m.f, data.layer, data.f
            ))),
            None => Err(ModelError::Format(
                "the covariance solver needs the layer's activation covariance \
                 (a covariance::Store of clean prompts)"
                    .into(),
            )),
        },
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
    let (d, f) = (data.d, data.f);
    let (nk, nm) = (data.kept.n, data.moved.n);
    let rows = nk + nm;
    // A = [A_kept; A_moved] [rows, f]; its transpose [f, rows] for the gradient product.
    let a_cat: Vec<f32> = data.kept.a.iter().chain(&data.moved.a).cloned().collect();
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
    let kept_coef = data.kept_weight(s.lambda) as f32;
    let mut t = 0u32;
    for step in 0..s.max_steps.max(1) {
        dev.matmul_f32(&a_buf, &w, &mut y, rows, d, f)?;
        let yv: Vec<f32> = dev.read(&y, rows * d).await?;
        // E = r + A Wᵀ - t; rows 0..nk kept (weight lambda per row mean), then the moved rows.
        let mut e_t = vec![0f32; d * rows];
        let (mut lp, mut lo) = (0f64, 0f64);
        for i in 0..rows {
            let (grp, hi, coef) = if i < nk {
                (&data.kept, i, kept_coef)
            } else {
                (&data.moved, i - nk, 1.0)
            };
            for j in 0..d {
                let e = grp.r[hi * d + j] + yv[i * d + j] - grp.t[hi * d + j];
                if i < nk {
                    lo += (e as f64).powi(2);
                } else {
                    lp += (e as f64).powi(2);
                }
                e_t[j * rows + i] = coef * e;
            }
        }
        let parts = LossParts {
            total: lp / (nm * d) as f64 + s.lambda * lo / (nk.max(1) * d) as f64,
            pert: lp / (nm * d) as f64,
            orig: lo / (nk.max(1) * d) as f64,
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
        // G = Eᵀ A: x = Eᵀ [d, rows], w = Aᵀ [f, rows] -> [d, f]; the MSE's 2 / (nm d) goes in
        // as scale.
        dev.write(&mut et, &e_t)?;
        t += 1;
        dev.matmul_f32(&et, &at_buf, &mut g, d, f, rows)?;
        let step = AdamStep {
            lr: s.lr as f32,
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            scale: 2.0 / (nm * d) as f32,
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

/// Closed form. Per output row j with e_j = r + A w0_j - t (one value per row, kept rows weighted
/// by lambda): min |D^½(e_j + A δ)|² + μ δᵀ M δ gives δ = -M⁻¹Bᵀ (B M⁻¹Bᵀ + μ I)⁻¹ D^½ e_j with
/// B = D^½ A; the rows x rows system replaces the f x f one. M is the identity (ridge) or the
/// layer's shrunk activation covariance (`metric`). μ = ridge * n_moved / f (MSE scale: the loss
/// divides by n_moved d, the penalty by d f).
pub fn ridge_solve(data: &EditData, w0: &[f32], lambda: f64, ridge: f64) -> Vec<f32> {
    metric_solve(data, w0, lambda, ridge, None)
}

/// [`ridge_solve`] with the metric M = `metric`'s C_s (None: the identity).
pub fn metric_solve(
    data: &EditData,
    w0: &[f32],
    lambda: f64,
    ridge: f64,
    metric: Option<&Factor>,
) -> Vec<f32> {
    let (d, f) = (data.d, data.f);
    let (nk, nm) = (data.kept.n, data.moved.n);
    let rows = nk + nm;
    let sq = data.kept_weight(lambda).sqrt();
    let weight = |i: usize| if i < nk { sq } else { 1.0 };
    let group = |i: usize| {
        if i < nk {
            (&data.kept, i)
        } else {
            (&data.moved, i - nk)
        }
    };
    let a_row = |i: usize| {
        let (g, k) = group(i);
        Rows::row(&g.a, k, f)
    };
    // g_i = M⁻¹ a_i: the direction row i's coefficient moves W_down's rows in.
    let g_all: Option<Vec<f32>> = metric.map(|m| {
        let a: Vec<f32> = data.kept.a.iter().chain(&data.moved.a).copied().collect();
        m.solve_rows(&a)
    });
    let g_row = |i: usize| match &g_all {
        Some(g) => Rows::row(g, i, f),
        None => a_row(i),
    };
    // K = B M⁻¹ Bᵀ + μ I
    let mu = ridge * nm as f64 / f as f64;
    let mut k = vec![0f64; rows * rows];
    for i in 0..rows {
        for j in 0..=i {
            let dot: f64 = a_row(i)
                .iter()
                .zip(g_row(j))
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
        for (i, ci) in c.iter_mut().enumerate() {
            let (g, gi) = group(i);
            *ci = weight(i) * data.error(g, w0, gi, j);
        }
        let z = chol_solve(&chol, rows, &c);
        // δ = -M⁻¹Bᵀ z = -Σ_i weight(i) z_i g_i
        for i in 0..rows {
            let coef = (weight(i) * z[i]) as f32;
            for (wk, gk) in w[j * f..(j + 1) * f].iter_mut().zip(g_row(i)) {
                *wk -= coef * gk;
            }
        }
    }
    w
}

/// The rows x rows system's factor. Serial sums, unlike [`crate::covariance::cholesky`] (f x f):
/// the ridge solves of pinned runs stay bit-identical.
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

/// The loss measured the slow way: apply `w` to the model, run the forward pass again and
/// compare the rows' new outputs with `data`'s targets (used by tests to show the
/// captured-activation loss is the same function).
pub async fn loss_by_forward(
    dev: &Device,
    model: &mut Model,
    (clean, pert): (&[u32], &[u32]),
    target: &[u32],
    rows: EditRows,
    w: &[f32],
    data: &EditData,
    lambda: f64,
) -> Result<LossParts, ModelError> {
    let layer = data.layer;
    model.set_ffn_down(dev, layer, w)?;
    let now = capture_rows(dev, model, (clean, pert), target, layer, rows).await;
    model.revert_ffn_down(layer);
    let now = now?;
    let mse = |out: &[f32], t: &[f32]| {
        out.iter()
            .zip(t)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / t.len().max(1) as f64
    };
    let (p, o) = (
        mse(&now.moved.out, &data.moved.t),
        mse(&now.kept.out, &data.kept.t),
    );
    Ok(LossParts {
        total: p + lambda * o,
        pert: p,
        orig: o,
    })
}

pub use crate::patch::{EditPatch, PATCH_FORMAT};

#[cfg(test)]
mod tests {
    use super::Control;

    #[test]
    fn the_random_control_has_the_settings_norm_and_no_preferred_sign() {
        let w0: Vec<f32> = (0..20_000).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut w = w0.clone();
        w[5] += 3.0;
        w[9] -= 4.0; // the setting's change: norm 5
        let r = Control::Random { seed: 7 }.weights(&w0, &w);
        let d: Vec<f64> = r.iter().zip(&w0).map(|(a, b)| (*a - *b) as f64).collect();
        let norm = d.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 5.0).abs() < 1e-3, "norm {norm}");
        // A dense direction: mean near 0 against its spread (uniform on [-1, 1)).
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        let rms = norm / (d.len() as f64).sqrt();
        assert!(mean.abs() < 0.05 * rms, "mean {mean} rms {rms}");
        assert_eq!(Control::Sham.weights(&w0, &w), w0);
        assert_eq!(Control::Matched.weights(&w0, &w), w);
    }
}
