//! Causal tracing (CREME step 1): which layer's residual stream carries the damage a perturbed
//! prompt does? The clean and perturbed prompts are aligned at the end in one left-padded frame;
//! a *probe* takes the perturbed run, replaces its residual stream after layer l at some prompt
//! positions with the clean run's, and continues. A restoration metric scores each probe.
//!
//! Probes resume from the patched layer: the clean and perturbed states are captured once, and
//! the patched runs compute only the layers above l, many probes in one batch.

use serde::Serialize;

use crate::align::Alignment;
use crate::backend::{Backend, Device, Tensor};
use crate::error::ModelError;
use crate::generate::{decode, generate, left_pad, Completion, GenerateOptions};
use crate::hooks::{Hooks, Site};
use crate::model::{Input, KvCache, Logits, Model};
use crate::progress::{Progress, Step};

/// One patched run: after layer `layer`, rows `positions` (indices in the prompt frame, 0..P)
/// of the perturbed run receive the clean run's states, from the same rows or, with `sources`,
/// from those clean rows (one per position).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Probe {
    pub layer: usize,
    pub positions: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<usize>>,
}

impl Probe {
    /// Patch `positions` from the same clean rows.
    pub fn at(layer: usize, positions: Vec<usize>) -> Probe {
        Probe {
            layer,
            positions,
            sources: None,
        }
    }

    /// (perturbed row, clean row) pairs patched.
    fn pairs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.positions
            .iter()
            .enumerate()
            .map(|(k, &i)| (i, self.sources.as_ref().map_or(i, |s| s[k])))
    }
}

/// Which prompt positions a layer trace patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum PatchPositions {
    /// Every prompt position (the authors' trace).
    AllPrompt,
    /// Only positions whose aligned tokens differ between the two prompts.
    Differing,
    /// What an exact prompt-rows edit ([`crate::edit::EditRows::Prompt`]) does at the layer:
    /// the perturbed prompt's rows after the changed span and the continuation rows take their
    /// clean twins' states, aligned by token diff; the changed span and pads are left alone.
    Aligned,
}

/// The smallest lp_clean - lp_pert, in nats, at which the logprob restoration is read as a ratio,
/// (lp_patched - lp_pert) / (lp_clean - lp_pert). Below it the clean continuation is about as
/// likely after the perturbed prompt as after the clean one, or more: the denominator is noise,
/// a small gap blows the ratio up, and a negative one turns it upside down (its best layer is the
/// one that restores least). With a gap of 1 nat, a patched log-probability that moves by 0.1
/// moves the ratio by at most 0.1.
pub const MIN_NORMALISABLE_GAP: f64 = 1.0;

/// A pair whose clean and perturbed log-probabilities of the target are too close to normalise
/// ([`MIN_NORMALISABLE_GAP`]): its logprob trace scores the patched runs' log-probabilities
/// themselves (nats), and it is left out of layer choices made from several pairs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct TooClose {
    pub lp_clean: f64,
    pub lp_pert: f64,
}

impl std::fmt::Display for TooClose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the target's log-probability after the clean prompt ({:.2}) is not {MIN_NORMALISABLE_GAP} nat above that after the perturbed one ({:.2}): too close to normalise, so the trace shows the patched runs' log-probabilities (nats) and its key layer is where they are highest",
            self.lp_clean, self.lp_pert
        )
    }
}

/// The clean/perturbed pair in one aligned frame, with the states captured once.
pub struct TraceSetup {
    pub clean: Vec<u32>,
    pub pert: Vec<u32>,
    /// The continuation both runs are scored on (the clean prompt's greedy completion).
    pub target: Vec<u32>,
    /// Prompt frame length: max(len clean, len pert); both are left-padded to it.
    pub frame: usize,
    /// Residual stream after each layer, [2 * (frame + target), d_model] (clean rows first).
    states: Vec<Tensor>,
    /// L2 norm of h_clean - h_pert after each layer over the padded prompt.
    pub distances: Vec<f64>,
    /// Log-probability of the target after the clean and the perturbed prompt.
    pub lp_clean: f64,
    pub lp_pert: f64,
    /// The first target token the perturbed run would not choose greedily (teacher-forced): its
    /// index in the target and the perturbed run's choice there. None: it chooses them all.
    pub divergence: Option<(usize, u32)>,
    /// Keys/values of both runs (sequence 0 clean, 1 perturbed), for probes that generate.
    cache: KvCache,
}

impl TraceSetup {
    pub fn seq_len(&self) -> usize {
        self.frame + self.target.len()
    }
    /// Some when the logprob restoration cannot be read as a ratio for this pair.
    pub fn too_close(&self) -> Option<TooClose> {
        (self.lp_clean - self.lp_pert < MIN_NORMALISABLE_GAP).then_some(TooClose {
            lp_clean: self.lp_clean,
            lp_pert: self.lp_pert,
        })
    }
    pub fn pad_clean(&self) -> usize {
        self.frame - self.clean.len()
    }
    pub fn pad_pert(&self) -> usize {
        self.frame - self.pert.len()
    }
    /// Each probe's starting state, `rows` rows per probe (the frame, or frame + target): the
    /// perturbed run's stream after the probe's layer, with the probe's positions taken from the
    /// clean run.
    fn write_probe_states<'p>(
        &self,
        dev: &Device,
        x: &mut Tensor,
        probes: impl Iterator<Item = &'p Probe>,
        rows: usize,
    ) -> Result<(), ModelError> {
        let s = self.seq_len();
        for (slot, p) in probes.enumerate() {
            let st = &self.states[p.layer];
            dev.copy_rows(st, s, x, slot * rows, rows)?;
            for (i, from) in p.pairs() {
                dev.copy_rows(st, from, x, slot * rows + i, 1)?;
            }
        }
        Ok(())
    }

    /// The positions of a layer x position grid: every prompt position (`all`), else the
    /// differing ones and the last six, at most 64.
    pub fn grid_positions(&self, all: bool) -> Vec<usize> {
        if all {
            return (0..self.frame).collect();
        }
        let mut p = self.differing_positions();
        p.extend(self.frame.saturating_sub(6)..self.frame);
        p.sort();
        p.dedup();
        p.truncate(64);
        p
    }

    /// The perturbed prompt's token at each frame position ("<pad>" in its padding).
    pub fn position_labels(
        &self,
        positions: &[usize],
        tok: &crate::model::Tokenizer,
    ) -> Vec<String> {
        positions
            .iter()
            .map(|&i| match i.checked_sub(self.pad_pert()) {
                Some(j) => tok.decode(&[self.pert[j]]).unwrap_or_default(),
                None => "<pad>".into(),
            })
            .collect()
    }

    /// The token-diff alignment of the two prompts.
    pub fn alignment(&self) -> Alignment {
        Alignment::of(&self.clean, &self.pert)
    }

    /// The aligned probe at `layer` ([`PatchPositions::Aligned`]); with `continuation`, the
    /// target rows too (what the edit moves; only teacher-forced probes have them).
    pub fn aligned_probe(&self, layer: usize, continuation: bool) -> Probe {
        let (pad_c, pad_p) = (self.pad_clean(), self.pad_pert());
        let mut pairs: Vec<(usize, usize)> = self
            .alignment()
            .suffix_pairs()
            .map(|(jp, jc)| (pad_p + jp, pad_c + jc))
            .collect();
        if continuation {
            pairs.extend((self.frame..self.seq_len()).map(|r| (r, r)));
        }
        Probe {
            layer,
            positions: pairs.iter().map(|p| p.0).collect(),
            sources: Some(pairs.iter().map(|p| p.1).collect()),
        }
    }

    /// Frame positions where the aligned prompts hold different tokens (pads count as different).
    pub fn differing_positions(&self) -> Vec<usize> {
        (0..self.frame)
            .filter(|&i| {
                let c = i.checked_sub(self.pad_clean()).map(|j| self.clean[j]);
                let p = i.checked_sub(self.pad_pert()).map(|j| self.pert[j]);
                c != p
            })
            .collect()
    }
}

/// The clean prompt's greedy continuation used as the target: `n` tokens, no stop strings, ends
/// early only at an end-of-sequence token (as the authors' edit target).
pub async fn greedy_target(
    dev: &Device,
    model: &Model,
    clean: &[u32],
    n: usize,
) -> Result<Vec<u32>, ModelError> {
    let opts = GenerateOptions {
        max_new_tokens: n,
        ..Default::default()
    };
    Ok(
        generate(dev, model, &[clean.to_vec()], &opts, &mut |_, _| {})
            .await?
            .remove(0)
            .tokens,
    )
}

/// [`greedy_target`] of several prompts in one batch.
pub async fn greedy_targets(
    dev: &Device,
    model: &Model,
    prompts: &[&[u32]],
    n: usize,
) -> Result<Vec<Vec<u32>>, ModelError> {
    let opts = GenerateOptions {
        max_new_tokens: n,
        ..Default::default()
    };
    let batch: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
    Ok(generate(dev, model, &batch, &opts, &mut |_, _| {})
        .await?
        .into_iter()
        .map(|c| c.tokens)
        .collect())
}

fn sum(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64).sum()
}

/// Rows of sequence `b` (of length `s`) whose logits predict the target tokens.
fn target_rows(b: usize, s: usize, frame: usize, n: usize) -> Vec<usize> {
    (0..n).map(|i| b * s + frame - 1 + i).collect()
}

/// The trace prelude every front end runs (CLI trace, calibration, the page): tokenize both
/// prompts, take the clean prompt's greedy continuation of `target_tokens` tokens as the target,
/// and capture both runs. Returns the target and the setup.
pub async fn prepare_pair(
    dev: &Device,
    model: &Model,
    clean: &str,
    pert: &str,
    target_tokens: usize,
) -> Result<(Vec<u32>, TraceSetup), ModelError> {
    let (c, p) = (
        model.tokenizer.encode(clean)?,
        model.tokenizer.encode(pert)?,
    );
    let target = greedy_target(dev, model, &c, target_tokens).await?;
    let setup = prepare(dev, model, &c, &p, &target).await?;
    Ok((target, setup))
}

/// Run clean and perturbed (+ target) once, capturing every layer's output.
pub async fn prepare(
    dev: &Device,
    model: &Model,
    clean: &[u32],
    pert: &[u32],
    target: &[u32],
) -> Result<TraceSetup, ModelError> {
    if clean.is_empty() || pert.is_empty() || target.is_empty() {
        return Err(ModelError::Format(
            "trace: clean prompt, perturbed prompt and target must be non-empty".into(),
        ));
    }
    let cfg = &model.cfg;
    let (batch, pads, s) = left_pad(cfg.pad_id, &[clean, pert], target);
    let frame = s - target.len();
    let mut cache = model.new_cache(dev, pads, s)?;
    let hooks = Hooks::capture((0..cfg.n_layers).map(Site::ResidOut));
    let mut rows = target_rows(0, s, frame, target.len());
    rows.extend(target_rows(1, s, frame, target.len()));
    let mut out = model.forward(dev, &mut cache, &batch, &hooks, Logits::Rows(rows))?;
    let mut targets = target.to_vec();
    targets.extend_from_slice(target);
    let lps = dev
        .token_logprobs(out.logits.as_ref().unwrap(), &targets)
        .await?;
    let (lp_clean, lp_pert) = (sum(&lps[..target.len()]), sum(&lps[target.len()..]));
    let choices = dev.argmax(out.logits.as_ref().unwrap()).await?;
    let divergence = choices[target.len()..]
        .iter()
        .zip(target)
        .position(|(c, t)| c != t)
        .map(|i| (i, choices[target.len() + i]));
    let d = cfg.d_model;
    let mut states = Vec::new();
    let mut distances = Vec::new();
    // Each layer's captured states are kept as they are (taken out of the forward's output).
    let mut by_site: std::collections::HashMap<Site, Tensor> = out
        .captured
        .items
        .drain(..)
        .map(|(site, t, _, _)| (site, t))
        .collect();
    for l in 0..cfg.n_layers {
        let buf = by_site
            .remove(&Site::ResidOut(l))
            .ok_or_else(|| ModelError::Missing(format!("captured states of layer {l}")))?;
        let h: Vec<f32> = dev.read(&buf, 2 * s * d).await?;
        let dist: f64 = (0..frame * d)
            .map(|i| ((h[i] - h[s * d + i]) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        distances.push(dist);
        states.push(buf);
    }
    Ok(TraceSetup {
        clean: clean.to_vec(),
        pert: pert.to_vec(),
        target: target.to_vec(),
        frame,
        states,
        distances,
        lp_clean,
        lp_pert,
        divergence,
        cache,
    })
}

/// Log-probability of the target under each probe. Probes are sorted by layer and run in batches
/// that fit the adapter's binding limit; each batch resumes every probe from its own layer.
pub async fn probe_logprobs(
    dev: &Device,
    model: &Model,
    setup: &TraceSetup,
    probes: &[Probe],
) -> Result<Vec<f64>, ModelError> {
    let picks: Vec<(usize, u32)> = setup.target.iter().copied().enumerate().collect();
    let lps = probe_token_logprobs(dev, model, setup, probes, &picks).await?;
    Ok(lps.iter().map(|l| sum(l)).collect())
}

/// Per probe, the log-probability of each pick (i, token): `token` at target position i (the
/// row that predicts target token i), teacher-forced.
pub async fn probe_token_logprobs(
    dev: &Device,
    model: &Model,
    setup: &TraceSetup,
    probes: &[Probe],
    picks: &[(usize, u32)],
) -> Result<Vec<Vec<f32>>, ModelError> {
    let cfg = &model.cfg;
    let (s, d, frame, n) = (setup.seq_len(), cfg.d_model, setup.frame, picks.len());
    // Teacher-forced probes may patch continuation rows too (the aligned probe of an edit).
    check_probes(probes, cfg.n_layers, s)?;
    if let Some(&(i, _)) = picks.iter().find(|p| p.0 >= setup.target.len()) {
        return Err(ModelError::Format(format!(
            "target position {i} of {}",
            setup.target.len()
        )));
    }
    let mut order: Vec<usize> = (0..probes.len()).collect();
    order.sort_by_key(|&i| probes[i].layer);
    // A probe's largest buffers: its MLP activations (s x d_ff) and its logits (n x vocab).
    // Batch as many probes as keep every buffer under the binding limit.
    let per_probe = ((s * cfg.d_ff).max(n * cfg.vocab) * 4) as u64;
    let fit = ((dev.max_tensor_bytes() / per_probe.max(1)) as usize).clamp(1, 64);
    let mut scores = vec![Vec::new(); probes.len()];
    for group in order.chunks(fit) {
        let g = group.len();
        let mut x = dev.zeros("probe states", g * s, d)?;
        setup.write_probe_states(dev, &mut x, group.iter().map(|&pi| &probes[pi]), s)?;
        let start: Vec<usize> = group.iter().map(|&pi| probes[pi].layer + 1).collect();
        let mut cache = model.new_cache(dev, vec![setup.pad_pert() as u32; g], s)?;
        let rows: Vec<usize> = (0..g)
            .flat_map(|slot| picks.iter().map(move |&(i, _)| slot * s + frame - 1 + i))
            .collect();
        let out = model.forward_ex(
            dev,
            &mut cache,
            Input::Resume {
                x: &x,
                start: &start,
                t: s,
            },
            &Hooks::default(),
            Logits::Rows(rows),
        )?;
        let tokens: Vec<u32> = (0..g).flat_map(|_| picks.iter().map(|p| p.1)).collect();
        let lps = dev
            .token_logprobs(out.logits.as_ref().unwrap(), &tokens)
            .await?;
        for (slot, &pi) in group.iter().enumerate() {
            scores[pi] = lps[slot * n..(slot + 1) * n].to_vec();
        }
    }
    Ok(scores)
}

/// Every probe's layer and rows inside the model and the `rows` rows of a sequence.
fn check_probes(probes: &[Probe], n_layers: usize, rows: usize) -> Result<(), ModelError> {
    match probes.iter().find(|p| {
        p.layer >= n_layers
            || p.pairs().any(|(i, from)| i >= rows || from >= rows)
            || p.sources
                .as_ref()
                .is_some_and(|s| s.len() != p.positions.len())
    }) {
        Some(p) => Err(ModelError::Format(format!(
            "probe at layer {} positions {:?} is outside {n_layers} layers x {rows} rows",
            p.layer, p.positions
        ))),
        None => Ok(()),
    }
}

/// A restoration metric: how much of the clean behaviour each probe brings back (1 = all).
/// `restoration_by_logprob` needs no code execution (works in the browser); the CLI adds a
/// metric that generates from each probe and executes the tests.
#[allow(async_fn_in_trait)]
pub trait RestorationMetric {
    fn name(&self) -> &'static str;
    /// Probes per `restoration` call in a layer trace (progress is reported between calls).
    fn batch_hint(&self) -> usize {
        usize::MAX
    }
    /// Whether the scores are a ratio normalised by lp_clean - lp_pert, which pairs that are
    /// [`TraceSetup::too_close`] cannot have.
    fn normalises(&self) -> bool {
        false
    }
    async fn restoration(
        &mut self,
        dev: &Device,
        model: &Model,
        setup: &TraceSetup,
        probes: &[Probe],
    ) -> Result<Vec<f64>, ModelError>;
}

/// (lp_patched - lp_pert) / (lp_clean - lp_pert) of the clean greedy continuation; lp_patched
/// itself (nats) for a pair that is [`TraceSetup::too_close`].
pub struct RestorationByLogprob;

impl RestorationMetric for RestorationByLogprob {
    fn name(&self) -> &'static str {
        "logprob"
    }
    fn batch_hint(&self) -> usize {
        4
    }
    fn normalises(&self) -> bool {
        true
    }
    async fn restoration(
        &mut self,
        dev: &Device,
        model: &Model,
        setup: &TraceSetup,
        probes: &[Probe],
    ) -> Result<Vec<f64>, ModelError> {
        let lps = probe_logprobs(dev, model, setup, probes).await?;
        if setup.too_close().is_some() {
            return Ok(lps);
        }
        let gap = setup.lp_clean - setup.lp_pert;
        Ok(lps.iter().map(|lp| (lp - setup.lp_pert) / gap).collect())
    }
}

/// The decision margin at the setup's divergence: log p(clean token) - log p(the perturbed run's
/// token) at the first target position the perturbed run would not choose, under each probe
/// (nats, not a ratio: positive means the probe takes the clean token there).
pub struct DecisionMargin;

impl RestorationMetric for DecisionMargin {
    fn name(&self) -> &'static str {
        "margin"
    }
    fn batch_hint(&self) -> usize {
        4
    }
    async fn restoration(
        &mut self,
        dev: &Device,
        model: &Model,
        setup: &TraceSetup,
        probes: &[Probe],
    ) -> Result<Vec<f64>, ModelError> {
        let Some((i, other)) = setup.divergence else {
            return Err(ModelError::Format(
                "decision margin: the perturbed run chooses every target token".into(),
            ));
        };
        let picks = [(i, setup.target[i]), (i, other)];
        let lps = probe_token_logprobs(dev, model, setup, probes, &picks).await?;
        Ok(lps.iter().map(|l| (l[0] - l[1]) as f64).collect())
    }
}

/// Result of a layer trace.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct LayerTrace {
    pub metric: String,
    pub positions: PatchPositions,
    pub patched_positions: Vec<usize>,
    /// Restoration per layer (metric units).
    pub scores: Vec<f64>,
    pub distances: Vec<f64>,
    pub key_layer: usize,
    /// Set when the metric normalises and the pair is too close to: the scores are then
    /// log-probabilities (nats), and thresholds on the ratio do not apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub too_close: Option<TooClose>,
}

/// Best score wins; ties (within 1e-9) go to the largest distance (the authors' tie-break).
pub fn choose_layer(scores: &[f64], distances: &[f64]) -> usize {
    let best = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (0..scores.len())
        .filter(|&l| scores[l] >= best - 1e-9)
        .max_by(|&a, &b| {
            distances[a]
                .partial_cmp(&distances[b])
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .unwrap_or(0)
}

/// The key layer with a saturating score, as the authors' pass metric behaves: a layer counts as
/// restored once its score reaches `threshold`, and among the restored layers the one with the
/// largest clean/perturbed distance wins. With no layer restored, the best score wins (ties by
/// distance). With every prompt position patched, early layers restore nearly everything, so the
/// plain argmax of an unsaturated logprob score picks a different layer than the pass metric.
pub fn choose_layer_saturating(scores: &[f64], distances: &[f64], threshold: f64) -> usize {
    let restored = (0..scores.len()).filter(|&l| scores[l] >= threshold);
    match restored.max_by(|&a, &b| {
        distances[a]
            .partial_cmp(&distances[b])
            .unwrap_or(std::cmp::Ordering::Equal)
    }) {
        Some(l) => l,
        None => choose_layer(scores, distances),
    }
}

/// The names [`logprob_traces`] reports its two traces' progress under.
pub const ALL_PROMPT_POSITIONS: &str = "all prompt positions";
pub const DIFFERING_POSITIONS: &str = "differing positions";

/// The logprob layer traces of a pair: every prompt position patched, then only the differing
/// ones, and the first trace's seconds (zero in the browser). `progress` gets each trace's name
/// with its steps.
pub async fn logprob_traces(
    dev: &Device,
    model: &Model,
    setup: &TraceSetup,
    progress: &mut dyn FnMut(&str, Step<'_>),
) -> Result<(LayerTrace, LayerTrace, f64), ModelError> {
    let clock = crate::progress::Clock::start();
    let mut trace_of = async |which, name: &str| {
        let mut on_step = |s: Step<'_>| progress(name, s);
        let mut metric = RestorationByLogprob;
        trace_layers_with(dev, model, setup, which, &mut metric, &mut on_step).await
    };
    let all = trace_of(PatchPositions::AllPrompt, ALL_PROMPT_POSITIONS).await?;
    let seconds = clock.lap();
    let diff = trace_of(PatchPositions::Differing, DIFFERING_POSITIONS).await?;
    Ok((all, diff, seconds))
}

/// Trace every layer with one probe each and pick the key layer.
pub async fn trace_layers<M: RestorationMetric>(
    dev: &Device,
    model: &Model,
    setup: &TraceSetup,
    which: PatchPositions,
    metric: &mut M,
) -> Result<LayerTrace, ModelError> {
    trace_layers_with(dev, model, setup, which, metric, &mut |_| {}).await
}

/// [`trace_layers`], reporting layers done and the scores so far as it goes.
pub async fn trace_layers_with<M: RestorationMetric>(
    dev: &Device,
    model: &Model,
    setup: &TraceSetup,
    which: PatchPositions,
    metric: &mut M,
    progress: &mut Progress<'_>,
) -> Result<LayerTrace, ModelError> {
    let probes: Vec<Probe> = (0..model.cfg.n_layers)
        .map(|layer| match which {
            PatchPositions::AllPrompt => Probe::at(layer, (0..setup.frame).collect()),
            PatchPositions::Differing => Probe::at(layer, setup.differing_positions()),
            PatchPositions::Aligned => setup.aligned_probe(layer, true),
        })
        .collect();
    let positions = probes
        .first()
        .map(|p| p.positions.clone())
        .unwrap_or_default();
    let mut scores = Vec::with_capacity(probes.len());
    progress(Step {
        stage: "trace",
        done: 0,
        total: probes.len(),
        note: String::new(),
    });
    for chunk in probes.chunks(metric.batch_hint().max(1)) {
        scores.extend(metric.restoration(dev, model, setup, chunk).await?);
        let note = scores
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" ");
        progress(Step {
            stage: "trace",
            done: scores.len(),
            total: probes.len(),
            note,
        });
    }
    let key_layer = choose_layer(&scores, &setup.distances);
    Ok(LayerTrace {
        metric: metric.name().into(),
        positions: which,
        patched_positions: positions,
        scores,
        distances: setup.distances.clone(),
        key_layer,
        too_close: setup.too_close().filter(|_| metric.normalises()),
    })
}

/// Layer x position grid (ROME style): patch one prompt position at one layer.
#[derive(Clone, Debug, Serialize)]
pub struct GridTrace {
    pub metric: String,
    pub positions: Vec<usize>,
    /// scores[layer][i] for positions[i].
    pub scores: Vec<Vec<f64>>,
    /// The layer whose best cell is highest.
    pub key_layer: usize,
    /// As [`LayerTrace::too_close`]: the cells are log-probabilities (nats).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub too_close: Option<TooClose>,
}

impl GridTrace {
    /// `creme trace --grid`'s line: its size, `secs` seconds, the key layer.
    pub fn summary(&self, secs: f64) -> String {
        let (layers, positions) = (self.scores.len(), self.positions.len());
        format!(
            "grid: {layers} layers x {positions} positions in {secs:.2} s, key layer {}",
            self.key_layer
        )
    }
}

pub async fn trace_grid<M: RestorationMetric>(
    dev: &Device,
    model: &Model,
    setup: &TraceSetup,
    positions: &[usize],
    metric: &mut M,
) -> Result<GridTrace, ModelError> {
    let l = model.cfg.n_layers;
    let probes: Vec<Probe> = (0..l)
        .flat_map(|layer| positions.iter().map(move |&p| Probe::at(layer, vec![p])))
        .collect();
    let flat = metric.restoration(dev, model, setup, &probes).await?;
    let scores: Vec<Vec<f64>> = flat
        .chunks(positions.len().max(1))
        .map(|c| c.to_vec())
        .collect();
    let best: Vec<f64> = scores
        .iter()
        .map(|r| r.iter().cloned().fold(f64::NEG_INFINITY, f64::max))
        .collect();
    Ok(GridTrace {
        metric: metric.name().into(),
        positions: positions.to_vec(),
        key_layer: choose_layer(&best, &setup.distances),
        scores,
        too_close: setup.too_close().filter(|_| metric.normalises()),
    })
}

/// Generate from each probe's patched prompt (the authors' pass-metric runs): only the prompt
/// pass is patched; layers up to the probe's keep the perturbed run's keys and values; decoding
/// then continues normally. Returns one completion per probe.
pub async fn generate_from_probes(
    dev: &Device,
    model: &Model,
    setup: &TraceSetup,
    probes: &[Probe],
    opts: &GenerateOptions,
) -> Result<Vec<Completion>, ModelError> {
    let cfg = &model.cfg;
    let (d, frame) = (cfg.d_model, setup.frame);
    let capacity = frame + opts.max_new_tokens;
    if capacity > model.max_positions {
        return Err(ModelError::Format(format!(
            "{frame} prompt tokens + {} new tokens exceed the context of {}",
            opts.max_new_tokens, model.max_positions
        )));
    }
    let mut order: Vec<usize> = (0..probes.len()).collect();
    order.sort_by_key(|&i| probes[i].layer);
    let kvw = cfg.n_kv_heads * cfg.head_dim;
    let per_probe = ((frame * cfg.d_ff).max(capacity * kvw).max(cfg.vocab) * 4) as u64;
    let fit = ((dev.max_tensor_bytes() / per_probe.max(1)) as usize).clamp(1, 32);
    check_probes(probes, cfg.n_layers, frame)?;
    let mut out: Vec<Option<Completion>> = vec![None; probes.len()];
    for group in order.chunks(fit) {
        let g = group.len();
        let mut x = dev.zeros("probe states", g * frame, d)?;
        let mut cache = model.new_cache(dev, vec![setup.pad_pert() as u32; g], capacity)?;
        setup.write_probe_states(dev, &mut x, group.iter().map(|&pi| &probes[pi]), frame)?;
        for (slot, &pi) in group.iter().enumerate() {
            cache.copy_from(
                dev,
                &setup.cache,
                1,
                slot,
                0..probes[pi].layer + 1,
                0..frame,
            )?;
        }
        let start: Vec<usize> = group.iter().map(|&pi| probes[pi].layer + 1).collect();
        let fwd = model.forward_ex(
            dev,
            &mut cache,
            Input::Resume {
                x: &x,
                start: &start,
                t: frame,
            },
            &Hooks::default(),
            Logits::Last,
        )?;
        let done = decode(
            dev,
            model,
            &mut cache,
            fwd.logits.expect("asked for logits"),
            opts,
            &mut |_, _| {},
        )
        .await?;
        for (slot, c) in done.into_iter().enumerate() {
            out[group[slot]] = Some(c);
        }
    }
    Ok(out
        .into_iter()
        .map(|c| c.expect("every probe generated"))
        .collect())
}
