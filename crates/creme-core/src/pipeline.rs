//! CREME on one clean/perturbed pair, once for every caller (CLI `edit`, `experiment`, `bench`,
//! the browser): the clean prompt's greedy target, the layer (given, or located by a trace), the
//! edit of that layer's W_down, and the patch. The model is left as it was; the caller applies
//! the patch when it wants the edited model.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::backend::Device;
use crate::edit::{self, EditResult, EditSettings};
use crate::error::ModelError;
use crate::model::Model;
use crate::patch::EditPatch;
use crate::progress::{Progress, Step};
use crate::trace::{self, LayerTrace, PatchPositions, RestorationByLogprob, TraceSetup};

/// Tokens of the clean prompt's greedy continuation that trace and edit are scored on, by
/// default (the paper's 32). The one source of this default: the CLI flags and the web facade
/// read it from here.
pub const DEFAULT_TARGET_TOKENS: usize = 32;

pub use crate::progress::Clock;

/// A restoration threshold as given (`--restored-at`): a number, or "none" (None: the best
/// restoration wins, see [`TraceLocator::for_rows`]).
pub fn parse_restored_at(s: &str) -> Result<Option<f64>, String> {
    match s {
        "none" => Ok(None),
        t => t
            .parse::<f64>()
            .map(Some)
            .map_err(|_| format!("'{t}': a number or none")),
    }
}

/// How an experiment picks the layer to edit for a pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum LayerRule {
    /// The logprob trace (teacher-forced clean continuation).
    Logprob,
    /// The authors' executed trace: patched runs generate and are tested.
    Pass,
    /// A layer drawn per (type, task), seeded: the random-layer control.
    Random,
    /// This layer for every pair (the paper's lightweight variant).
    Fixed(usize),
    /// Per type, the most frequent key layer of an earlier run's `edits.jsonl` (this file).
    ModeOf(String),
    /// Per task, the layer of an earlier `edits.jsonl` or a `calibration.json` (this file).
    From(String),
}

impl LayerRule {
    /// Whether the layer comes from a trace of the pair (else it is known beforehand).
    pub fn traces(&self) -> bool {
        matches!(self, LayerRule::Logprob | LayerRule::Pass)
    }

    /// The file a ModeOf / From rule reads.
    pub fn source_file(&self) -> Option<&str> {
        match self {
            LayerRule::ModeOf(f) | LayerRule::From(f) => Some(f),
            _ => None,
        }
    }
}

impl std::str::FromStr for LayerRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "logprob" => LayerRule::Logprob,
            "pass" => LayerRule::Pass,
            "random" => LayerRule::Random,
            _ if s.starts_with("mode:") => LayerRule::ModeOf(s["mode:".len()..].to_string()),
            _ if s.starts_with("from:") => LayerRule::From(s["from:".len()..].to_string()),
            _ => LayerRule::Fixed(s.parse().map_err(|_| {
                format!("layer rule '{s}': logprob, pass, random, mode:FILE, from:FILE or a layer number")
            })?),
        })
    }
}

impl std::fmt::Display for LayerRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerRule::Logprob => f.write_str("logprob"),
            LayerRule::Pass => f.write_str("pass"),
            LayerRule::Random => f.write_str("random"),
            LayerRule::Fixed(l) => write!(f, "{l}"),
            LayerRule::ModeOf(p) => write!(f, "mode:{p}"),
            LayerRule::From(p) => write!(f, "from:{p}"),
        }
    }
}

/// Longest greedy completions compared to find where the clean and perturbed outputs part.
pub const DIVERGENCE_SEARCH_TOKENS: usize = 256;

/// What a pipeline run needs besides the prompts.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct CremeSettings {
    /// Tokens of the clean prompt's greedy continuation that trace and edit are scored on.
    pub target_tokens: usize,
    /// Extend the target to this many tokens past the first token where the clean and the
    /// perturbed greedy completions differ (None: the paper's fixed length). The decision that
    /// breaks the perturbed prompt is often past the paper's 32 tokens.
    #[serde(default)]
    pub past_divergence: Option<usize>,
    /// Replace the solved change by a control made from it (sham or random of the same norm).
    #[serde(default)]
    pub control: Option<crate::edit::Control>,
    /// Edit this layer instead of locating one.
    pub layer: Option<usize>,
    pub edit: EditSettings,
}

impl Default for CremeSettings {
    fn default() -> Self {
        CremeSettings {
            target_tokens: DEFAULT_TARGET_TOKENS,
            past_divergence: None,
            control: None,
            layer: None,
            edit: EditSettings::default(),
        }
    }
}

impl CremeSettings {
    /// These settings for an edit of one pair alone, refused where the control needs more: a
    /// matched control is made from the next edit-worthy pair, which only an experiment has.
    pub fn for_one_pair(self) -> Result<CremeSettings, String> {
        match self.control {
            Some(crate::edit::Control::Matched) => Err(
                "--control matched needs other edit-worthy pairs: it is for `creme experiment`"
                    .into(),
            ),
            _ => Ok(self),
        }
    }

    /// The best setting of the development runs (docs/efficacy-dev.md): the prompt rows after
    /// the perturbation moved to the clean prompt's states by a ridge fit (ridge 100), the target
    /// 8 tokens past the decision, the layer from the aligned trace. Not the default, so that
    /// the paper's setting stays what a plain run reproduces; the demo and the web app use this.
    pub fn recommended() -> CremeSettings {
        CremeSettings {
            past_divergence: Some(8),
            edit: EditSettings {
                solver: crate::edit::Solver::Ridge { ridge: 100.0 },
                rows: crate::edit::EditRows::Prompt,
                ..EditSettings::default()
            },
            ..CremeSettings::default()
        }
    }
}

/// How the key layer is found from a prepared trace.
#[allow(async_fn_in_trait)]
pub trait Locator {
    async fn locate(
        &mut self,
        dev: &Device,
        model: &Model,
        setup: &TraceSetup,
        progress: &mut Progress<'_>,
    ) -> Result<LayerTrace, ModelError>;
}

/// The logprob trace over every prompt position. With `restored_at`, the key layer is chosen the
/// saturating way (a layer counts as restored once its score reaches it; the restored layer with
/// the largest clean/perturbed distance wins), else by the best score.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogprobLocator {
    pub restored_at: Option<f64>,
}

impl Locator for LogprobLocator {
    async fn locate(
        &mut self,
        dev: &Device,
        model: &Model,
        setup: &TraceSetup,
        progress: &mut Progress<'_>,
    ) -> Result<LayerTrace, ModelError> {
        let mut t = trace::trace_layers_with(
            dev,
            model,
            setup,
            PatchPositions::AllPrompt,
            &mut RestorationByLogprob,
            progress,
        )
        .await?;
        // A ratio threshold says nothing about log-probabilities: a pair too close to normalise
        // keeps the best layer.
        if let (Some(th), None) = (self.restored_at, t.too_close) {
            t.key_layer = trace::choose_layer_saturating(&t.scores, &t.distances, th);
        }
        Ok(t)
    }
}

/// The aligned trace ([`PatchPositions::Aligned`]), for prompt-row edits, scored by the decision
/// margin at the divergence when the target holds it ([`trace::DecisionMargin`]): the key layer
/// is the lowest whose aligned probe takes the clean token by at least `margin_at` nats (the
/// earliest layer where an exact prompt-rows edit decides the divergence), else the best. When
/// the perturbed run chooses every target token, the logprob restoration decides, with
/// `restored_at` as its threshold.
#[derive(Clone, Copy, Debug)]
pub struct AlignedLocator {
    pub restored_at: f64,
    pub margin_at: f64,
}

/// The aligned locator's default thresholds.
pub const ALIGNED_RESTORED_AT: f64 = 0.9;
pub const ALIGNED_MARGIN_AT: f64 = 1.0;

impl Default for AlignedLocator {
    fn default() -> Self {
        AlignedLocator {
            restored_at: ALIGNED_RESTORED_AT,
            margin_at: ALIGNED_MARGIN_AT,
        }
    }
}

impl Locator for AlignedLocator {
    async fn locate(
        &mut self,
        dev: &Device,
        model: &Model,
        setup: &TraceSetup,
        progress: &mut Progress<'_>,
    ) -> Result<LayerTrace, ModelError> {
        let aligned = PatchPositions::Aligned;
        let (mut t, at) = match setup.divergence {
            Some(_) => {
                let m = &mut trace::DecisionMargin;
                let t = trace::trace_layers_with(dev, model, setup, aligned, m, progress).await?;
                (t, self.margin_at)
            }
            None => {
                let m = &mut RestorationByLogprob;
                let t = trace::trace_layers_with(dev, model, setup, aligned, m, progress).await?;
                (t, self.restored_at)
            }
        };
        let at = if t.too_close.is_some() {
            f64::INFINITY
        } else {
            at
        };
        if let Some(l) = t.scores.iter().position(|&s| s >= at) {
            t.key_layer = l;
        }
        Ok(t)
    }
}

/// The logprob trace an edit's rows call for: the aligned trace for prompt-row edits (its
/// threshold from `restored_at`, else [`ALIGNED_RESTORED_AT`]), the all-positions trace for the
/// paper's continuation rows.
#[derive(Clone, Copy, Debug)]
pub enum TraceLocator {
    AllPrompt(LogprobLocator),
    Aligned(AlignedLocator),
}

impl TraceLocator {
    pub fn for_rows(rows: crate::edit::EditRows, restored_at: Option<f64>) -> TraceLocator {
        match rows {
            crate::edit::EditRows::Continuation => {
                TraceLocator::AllPrompt(LogprobLocator { restored_at })
            }
            crate::edit::EditRows::Prompt => TraceLocator::Aligned(AlignedLocator {
                restored_at: restored_at.unwrap_or(ALIGNED_RESTORED_AT),
                ..Default::default()
            }),
        }
    }
}

impl Locator for TraceLocator {
    async fn locate(
        &mut self,
        dev: &Device,
        model: &Model,
        setup: &TraceSetup,
        progress: &mut Progress<'_>,
    ) -> Result<LayerTrace, ModelError> {
        match self {
            TraceLocator::AllPrompt(l) => l.locate(dev, model, setup, progress).await,
            TraceLocator::Aligned(l) => l.locate(dev, model, setup, progress).await,
        }
    }
}

/// The edit's target: the clean prompt's greedy continuation of `target_tokens`, or, with
/// `past_divergence`, long enough to hold the first token where the perturbed prompt's greedy
/// completion parts from it and that many more.
pub async fn edit_target(
    dev: &Device,
    model: &Model,
    (clean, pert): (&[u32], &[u32]),
    settings: &CremeSettings,
) -> Result<Vec<u32>, ModelError> {
    let Some(extra) = settings.past_divergence else {
        return trace::greedy_target(dev, model, clean, settings.target_tokens).await;
    };
    // Search as far as the context allows (the target itself must still fit).
    let room = model
        .max_positions
        .saturating_sub(clean.len().max(pert.len()));
    let n = DIVERGENCE_SEARCH_TOKENS
        .min(room)
        .max(settings.target_tokens);
    let both = trace::greedy_targets(dev, model, &[clean, pert], n).await?;
    let want = crate::diagnose::first_divergence(&both[0], &both[1])
        .map_or(settings.target_tokens, |d| {
            settings.target_tokens.max(d.index + 1 + extra)
        });
    let mut target = both[0].clone();
    target.truncate(want);
    Ok(target)
}

/// Seconds per stage (the machine's clock; zero in the browser, which has none here).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    pub target_s: f64,
    pub trace_s: f64,
    pub capture_s: f64,
    pub solve_s: f64,
}

/// How an edit sits on its data (see [`crate::diagnose`]).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct FitDiagnostics {
    /// Rows moved and kept by the fit.
    pub moved_rows: usize,
    pub kept_rows: usize,
    /// |gap after| / |gap before| on the moved rows.
    pub remaining_gap: f64,
    /// ||dW||_F / ||W0||_F.
    pub relative_change: f64,
}

/// What one pipeline run made.
#[derive(Clone, Debug, Serialize)]
pub struct CremeEdit {
    pub layer: usize,
    /// The trace that chose the layer (None for a given layer).
    pub trace: Option<LayerTrace>,
    pub target: Vec<u32>,
    /// Loss curve, steps, kept step (the weights are in `patch`).
    pub result: EditResult,
    #[serde(skip)]
    pub patch: EditPatch,
    pub timings: Timings,
    pub fit: FitDiagnostics,
}

/// Locate (unless the settings fix the layer) and edit; `metadata` goes into the patch.
pub async fn locate_and_edit<L: Locator>(
    dev: &Device,
    model: &Model,
    clean: &[u32],
    pert: &[u32],
    settings: &CremeSettings,
    locator: &mut L,
    metadata: BTreeMap<String, String>,
) -> Result<CremeEdit, ModelError> {
    locate_and_edit_with(
        dev,
        model,
        &[(clean, pert)],
        settings,
        (locator, None),
        metadata,
        &mut |_| {},
    )
    .await
}

/// [`locate_and_edit`], reporting its stages (target, trace, capture, edit) as it goes; the
/// covariance solver takes its layer's factor from `preserve`. `pairs` (clean, perturbed) are
/// fitted in one solve: the first decides the layer and the patch's target; the others' rows,
/// each at its own target, are stacked at that layer (a multi-pair edit).
pub async fn locate_and_edit_with<L: Locator>(
    dev: &Device,
    model: &Model,
    pairs: &[(&[u32], &[u32])],
    settings: &CremeSettings,
    (locator, preserve): (&mut L, Option<&crate::covariance::Store>),
    metadata: BTreeMap<String, String>,
    progress: &mut Progress<'_>,
) -> Result<CremeEdit, ModelError> {
    let Some(&(clean, pert)) = pairs.first() else {
        return Err(ModelError::Format("an edit needs at least one pair".into()));
    };
    let clock = Clock::start();
    let stage = |stage: &'static str, done: usize| Step {
        stage,
        done,
        total: 1,
        note: String::new(),
    };
    progress(stage("target", 0));
    let target = edit_target(dev, model, (clean, pert), settings).await?;
    progress(stage("target", 1));
    let target_s = clock.lap();
    let (layer, layer_trace) = match settings.layer {
        Some(l) if l < model.cfg.n_layers => (l, None),
        Some(l) => {
            return Err(ModelError::Format(format!(
                "layer {l}: the model has {} layers",
                model.cfg.n_layers
            )))
        }
        None => {
            let setup = trace::prepare(dev, model, clean, pert, &target).await?;
            let t = locator.locate(dev, model, &setup, progress).await?;
            (t.key_layer, Some(t))
        }
    };
    let trace_s = clock.lap();
    progress(stage("capture", 0));
    let rows = settings.edit.rows;
    let mut data = edit::capture_rows(dev, model, (clean, pert), &target, layer, rows).await?;
    for &other in &pairs[1..] {
        let target = edit_target(dev, model, other, settings).await?;
        data.stack(edit::capture_rows(dev, model, other, &target, layer, rows).await?)?;
    }
    let w0 = model.ffn_down_f32(dev, layer).await?;
    let metric = match preserve.filter(|_| settings.edit.solver.needs_covariance()) {
        Some(store) => Some(store.factor(dev, model, layer, progress).await?),
        None => None,
    };
    progress(stage("capture", 1));
    let capture_s = clock.lap();
    let metric = metric.as_deref();
    let mut result = edit::solve_with(dev, &data, &w0, &settings.edit, metric, progress).await?;
    if let Some(control) = settings.control {
        result.w = control.weights(&w0, &result.w);
    }
    let solve_s = clock.lap();
    let fit = FitDiagnostics {
        moved_rows: data.moved.n,
        kept_rows: data.kept.n,
        remaining_gap: crate::diagnose::remaining_gap(&data, &result.w),
        relative_change: crate::diagnose::relative_change(&w0, &result.w),
    };
    let mut meta = metadata;
    let made_on = model.ffn_down_state(layer).map(|s| s.to_string());
    meta.insert(crate::patch::MADE_ON.into(), made_on.unwrap_or_default());
    meta.insert(
        "settings".into(),
        serde_json::to_string(&settings.edit).map_err(|e| ModelError::Format(e.to_string()))?,
    );
    meta.insert("solver".into(), format!("{:?}", settings.edit.solver));
    meta.insert(
        "loss_curve".into(),
        serde_json::to_string(&result.losses).map_err(|e| ModelError::Format(e.to_string()))?,
    );
    meta.insert("target_tokens".into(), target.len().to_string());
    if let Some(control) = settings.control {
        meta.insert("control".into(), format!("{control:?}"));
    }
    if let Some(m) = metric.and(preserve) {
        meta.insert(
            "covariance".into(),
            format!("{} ({} prompts)", m.key(), m.prompts()),
        );
    }
    let patch = EditPatch {
        layer,
        rows: data.d,
        cols: data.f,
        w: result.w.clone(),
        metadata: meta,
    };
    Ok(CremeEdit {
        layer,
        trace: layer_trace,
        target,
        result,
        patch,
        timings: Timings {
            target_s,
            trace_s,
            capture_s,
            solve_s,
        },
        fit,
    })
}

#[cfg(test)]
mod layer_rule_tests {
    use super::{parse_restored_at, CremeSettings, LayerRule};
    use crate::edit::Control;

    #[test]
    fn a_matched_control_needs_an_experiment() {
        let with = |control| CremeSettings {
            control,
            ..CremeSettings::default()
        };
        assert!(with(Some(Control::Matched)).for_one_pair().is_err());
        assert!(with(Some(Control::Sham)).for_one_pair().is_ok());
        assert!(with(None).for_one_pair().is_ok());
    }

    #[test]
    fn layer_rules_parse_and_print_back() {
        for s in [
            "logprob",
            "pass",
            "random",
            "11",
            "mode:a/edits.jsonl",
            "from:c.json",
        ] {
            let r: LayerRule = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
        }
        assert_eq!("7".parse::<LayerRule>().unwrap(), LayerRule::Fixed(7));
        assert!("seven".parse::<LayerRule>().unwrap_err().contains("seven"));
        assert!(LayerRule::Pass.traces() && !LayerRule::Random.traces());
    }

    #[test]
    fn a_restoration_threshold_is_a_number_or_none() {
        assert_eq!(parse_restored_at("none"), Ok(None));
        assert_eq!(parse_restored_at("0.9"), Ok(Some(0.9)));
        assert_eq!(parse_restored_at("x").unwrap_err(), "'x': a number or none");
    }
}

/// What goes into an edit patch's metadata besides the edit's own: the base model (its file
/// name and SHA-256) and the pair.
pub fn patch_metadata(
    model: &crate::manifest::FileDigest,
    pair: &str,
) -> std::collections::BTreeMap<String, String> {
    [
        ("base_model_sha256", model.sha256.clone()),
        ("base_model", model.name.clone()),
        ("pair", pair.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
