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

/// What a pipeline run needs besides the prompts.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct CremeSettings {
    /// Tokens of the clean prompt's greedy continuation that trace and edit are scored on.
    pub target_tokens: usize,
    /// Edit this layer instead of locating one.
    pub layer: Option<usize>,
    pub edit: EditSettings,
}

impl Default for CremeSettings {
    fn default() -> Self {
        CremeSettings {
            target_tokens: DEFAULT_TARGET_TOKENS,
            layer: None,
            edit: EditSettings::default(),
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
        if let Some(th) = self.restored_at {
            t.key_layer = trace::choose_layer_saturating(&t.scores, &t.distances, th);
        }
        Ok(t)
    }
}

/// Seconds per stage (the machine's clock; zero in the browser, which has none here).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    pub target_s: f64,
    pub trace_s: f64,
    pub capture_s: f64,
    pub solve_s: f64,
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
        (clean, pert),
        settings,
        locator,
        metadata,
        &mut |_| {},
    )
    .await
}

/// [`locate_and_edit`], reporting its stages (target, trace, capture, edit) as it goes.
pub async fn locate_and_edit_with<L: Locator>(
    dev: &Device,
    model: &Model,
    (clean, pert): (&[u32], &[u32]),
    settings: &CremeSettings,
    locator: &mut L,
    metadata: BTreeMap<String, String>,
    progress: &mut Progress<'_>,
) -> Result<CremeEdit, ModelError> {
    let clock = Clock::start();
    let stage = |stage: &'static str, done: usize| Step {
        stage,
        done,
        total: 1,
        note: String::new(),
    };
    progress(stage("target", 0));
    let target = trace::greedy_target(dev, model, clean, settings.target_tokens).await?;
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
    let data = edit::capture(dev, model, clean, pert, &target, layer).await?;
    let w0 = model.ffn_down_f32(dev, layer).await?;
    progress(stage("capture", 1));
    let capture_s = clock.lap();
    let result = edit::solve_with(dev, &data, &w0, &settings.edit, progress).await?;
    let solve_s = clock.lap();
    let mut meta = metadata;
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
    })
}

/// Stage timer: wall clock natively; the browser has no std clock, so its laps read 0.
pub struct Clock {
    #[cfg(not(target_arch = "wasm32"))]
    last: std::cell::Cell<std::time::Instant>,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            #[cfg(not(target_arch = "wasm32"))]
            last: std::cell::Cell::new(std::time::Instant::now()),
        }
    }
    /// Seconds since the start or the previous lap.
    pub fn lap(&self) -> f64 {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let now = std::time::Instant::now();
            let s = (now - self.last.get()).as_secs_f64();
            self.last.set(now);
            s
        }
        #[cfg(target_arch = "wasm32")]
        0.0
    }
}

#[cfg(test)]
mod layer_rule_tests {
    use super::LayerRule;

    #[test]
    fn layer_rules_parse_and_print_back() {
        for s in ["logprob", "pass", "random", "11", "mode:a/edits.jsonl", "from:c.json"] {
            let r: LayerRule = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
        }
        assert_eq!("7".parse::<LayerRule>().unwrap(), LayerRule::Fixed(7));
        assert!("seven".parse::<LayerRule>().unwrap_err().contains("seven"));
        assert!(LayerRule::Pass.traces() && !LayerRule::Random.traces());
    }
}
