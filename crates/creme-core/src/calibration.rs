//! Key-layer calibration: choose the threshold of the saturating logprob key-layer rule so that
//! it picks the layers the authors' pass metric picks, and say how well it agrees (on all tasks,
//! held out one at a time, and against a reference run's layers). `calibration.json` is
//! [`Calibration`], typed and versioned; `creme report` and `experiment --layer from:` read it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dataset::Problem;
use crate::eval::Judge;
use crate::model::Model;
use crate::pass_trace::pass_trace;
use crate::progress::Clock;
use crate::progress::Step;
use crate::sets::PerturbationType;
use crate::trace::{
    self, choose_layer, choose_layer_saturating, PatchPositions, RestorationByLogprob,
};
use crate::{Device, ModelError};

/// The newest calibration version this build writes and reads (0: files written before versions;
/// same fields).
pub const CALIBRATION_VERSION: u32 = 1;

/// Both traces of one task (a line of `traces.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskTraces {
    pub task: String,
    pub logprob: Vec<f64>,
    pub distances: Vec<f64>,
    pub pass_key: usize,
    pub pass_scores: Vec<f64>,
    pub seconds: f64,
    /// The pair is too close to normalise: `logprob` holds log-probabilities, no threshold
    /// applies to it, and it gives no threshold candidates (its key layer is the best one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub too_close: Option<crate::trace::TooClose>,
}

impl TaskTraces {
    /// The saturating rule's key layer at `threshold`; the best layer for a pair too close to
    /// normalise.
    fn key_layer(&self, threshold: f64) -> usize {
        match self.too_close {
            Some(_) => choose_layer(&self.logprob, &self.distances),
            None => choose_layer_saturating(&self.logprob, &self.distances, threshold),
        }
    }
}

/// (same layer, within 2 layers) counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agreement {
    pub same: usize,
    pub within_2: usize,
}

/// Leave-one-out agreement over `tasks` tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldOut {
    pub same: usize,
    pub within_2: usize,
    pub tasks: usize,
}

/// Agreement with a reference run's layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgainstReference {
    pub tasks: usize,
    pub same: usize,
    pub within_2: usize,
    pub pass_metric_same: usize,
}

/// One task's layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationRow {
    pub task: String,
    pub pass_layer: usize,
    pub threshold_fit_on_others: f64,
    pub predicted: usize,
    pub argmax_layer: usize,
    pub reference_layer: Option<usize>,
}

/// `calibration.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    #[serde(default)]
    pub version: u32,
    #[serde(rename = "type")]
    pub ptype: PerturbationType,
    pub threshold: f64,
    pub fit: Agreement,
    pub loo: HeldOut,
    pub argmax_same: usize,
    pub reference: AgainstReference,
    pub rows: Vec<CalibrationRow>,
}

impl Calibration {
    /// Parse `calibration.json`, refusing versions this build does not know.
    pub fn parse(text: &str) -> Result<Calibration, String> {
        let mut c: Calibration =
            crate::versioned::parse(text, 0, CALIBRATION_VERSION, "a calibration")?;
        c.version = CALIBRATION_VERSION;
        Ok(c)
    }
}

/// Both traces of one task: the logprob trace over every prompt position and the pass metric's
/// (greedy patched runs judged by `judge`), with `target_tokens` of clean continuation.
/// `progress(false, ..)` reports the logprob trace, `progress(true, ..)` the pass metric.
pub async fn trace_task(
    dev: &Device,
    model: &Model,
    (clean, pert): (&Problem, &Problem),
    target_tokens: usize,
    judge: &mut impl Judge,
    progress: &mut dyn FnMut(bool, Step<'_>),
) -> Result<TaskTraces, ModelError> {
    let clock = Clock::start();
    let prelude = trace::prepare_pair(dev, model, &clean.prompt, &pert.prompt, target_tokens);
    let (_, setup) = prelude.await?;
    let lp = trace::trace_layers_with(
        dev,
        model,
        &setup,
        PatchPositions::AllPrompt,
        &mut RestorationByLogprob,
        &mut |s| progress(false, s),
    )
    .await?;
    let (pass, _) = pass_trace(
        dev,
        model,
        &setup,
        (&clean.prompt, clean),
        (&pert.prompt, pert),
        1,
        judge,
        &mut |s| progress(true, s),
    )
    .await?;
    Ok(TaskTraces {
        task: clean.task_id.clone(),
        too_close: lp.too_close,
        logprob: lp.scores,
        distances: setup.distances.clone(),
        pass_key: pass.key_layer,
        pass_scores: pass.scores,
        seconds: clock.lap(),
    })
}

/// How the rule with `threshold` agrees with the pass metric on `traces`.
fn agreement(traces: &[&TaskTraces], threshold: f64) -> Agreement {
    traces.iter().fold(Agreement::default(), |a, t| {
        let l = t.key_layer(threshold);
        Agreement {
            same: a.same + (l == t.pass_key) as usize,
            within_2: a.within_2 + (l.abs_diff(t.pass_key) <= 2) as usize,
        }
    })
}

/// The threshold that agrees best with the pass metric on `traces` (exact matches first, then
/// within 2 layers); among equally good ones the median candidate.
fn fit(traces: &[&TaskTraces]) -> f64 {
    let mut candidates: Vec<f64> = traces
        .iter()
        .filter(|t| t.too_close.is_none())
        .flat_map(|t| t.logprob.iter().cloned())
        .filter(|v| v.is_finite())
        .collect();
    candidates.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    candidates.dedup();
    let key = |a: Agreement| (a.same, a.within_2);
    let best = candidates
        .iter()
        .map(|&c| key(agreement(traces, c)))
        .max()
        .unwrap_or((0, 0));
    let tied: Vec<f64> = candidates
        .into_iter()
        .filter(|&c| key(agreement(traces, c)) == best)
        .collect();
    tied.get(tied.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(1.0)
}

/// Per task, the threshold fitted on the others and the layer it predicts.
fn held_out_rows(
    traces: &[TaskTraces],
    reference: &BTreeMap<String, usize>,
) -> Vec<CalibrationRow> {
    let all: Vec<&TaskTraces> = traces.iter().collect();
    traces
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let others: Vec<&TaskTraces> = all
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, t)| *t)
                .collect();
            let th = fit(&others);
            CalibrationRow {
                task: t.task.clone(),
                pass_layer: t.pass_key,
                threshold_fit_on_others: th,
                predicted: t.key_layer(th),
                argmax_layer: choose_layer(&t.logprob, &t.distances),
                reference_layer: reference.get(&t.task).copied(),
            }
        })
        .collect()
}

/// The key layers of a CREME reference run's first setting, by task, from its JSON
/// (`{runs: [{results: [{task, key, ...}]}]}`); results without a task or a layer are skipped.
pub fn reference_layers(text: &str) -> Result<BTreeMap<String, usize>, String> {
    #[derive(Deserialize)]
    struct Reference {
        #[serde(default)]
        runs: Vec<Run>,
    }
    #[derive(Deserialize)]
    struct Run {
        #[serde(default)]
        results: Vec<Result>,
    }
    #[derive(Deserialize)]
    struct Result {
        task: Option<String>,
        key: Option<usize>,
    }
    let doc: Reference = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let first = doc.runs.into_iter().next().map(|r| r.results);
    Ok(first
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| Some((r.task?, r.key?)))
        .collect())
}

/// Fit and evaluate the threshold on `traces`; `reference`: a reference run's layers by task.
pub fn calibrate(
    ptype: PerturbationType,
    traces: &[TaskTraces],
    reference: &BTreeMap<String, usize>,
) -> Calibration {
    let all: Vec<&TaskTraces> = traces.iter().collect();
    let rows = held_out_rows(traces, reference);
    let threshold = fit(&all);
    let on_ref: Vec<(usize, usize)> = traces
        .iter()
        .filter_map(|t| Some((*reference.get(&t.task)?, t.key_layer(threshold))))
        .collect();
    Calibration {
        version: CALIBRATION_VERSION,
        ptype,
        threshold,
        fit: agreement(&all, threshold),
        loo: HeldOut {
            same: rows.iter().filter(|r| r.predicted == r.pass_layer).count(),
            within_2: rows
                .iter()
                .filter(|r| r.predicted.abs_diff(r.pass_layer) <= 2)
                .count(),
            tasks: rows.len(),
        },
        argmax_same: rows
            .iter()
            .filter(|r| r.argmax_layer == r.pass_layer)
            .count(),
        reference: AgainstReference {
            tasks: on_ref.len(),
            same: on_ref.iter().filter(|(r, p)| r == p).count(),
            within_2: on_ref.iter().filter(|(r, p)| r.abs_diff(*p) <= 2).count(),
            pass_metric_same: traces
                .iter()
                .filter(|t| reference.get(&t.task) == Some(&t.pass_key))
                .count(),
        },
        rows,
    }
}

impl Calibration {
    /// `calibration.md`.
    pub fn markdown(&self) -> String {
        let n = self.rows.len();
        let (th, fit, loo, r) = (self.threshold, self.fit, self.loo, self.reference);
        let mut md = format!("# Key-layer calibration\n\nSaturating logprob rule: a layer counts as restored once its logprob restoration reaches the threshold; the restored layer with the largest clean/perturbed distance is the key layer. Threshold fitted on all {n} tasks: **{th:.3}**.\n\n");
        md.push_str(&format!("- With that threshold on the same tasks: same layer as the pass metric {}/{n}, within 2 layers {}/{n}.\n", fit.same, fit.within_2));
        md.push_str(&format!("- Leave-one-out against the pass metric's layers (threshold fitted on the other {} tasks): same layer {}/{n}, within 2 layers {}/{n}.\n", n.saturating_sub(1), loo.same, loo.within_2));
        md.push_str(&format!("- The plain argmax of the logprob restoration: same layer as the pass metric {}/{n}.\n", self.argmax_same));
        md.push_str(&format!("- Against the reference run's layers ({} tasks): same {}, within 2 layers {}; creme's own pass metric equals the reference on {}.\n\n", r.tasks, r.same, r.within_2, r.pass_metric_same));
        md.push_str("| task | pass-metric layer | reference layer | LOO threshold | predicted | logprob argmax |\n|---|---:|---:|---:|---:|---:|\n");
        for row in &self.rows {
            let reference = row
                .reference_layer
                .map_or("null".to_string(), |l| l.to_string());
            md.push_str(&format!(
                "| {} | {} | {reference} | {:.3} | {} | {} |\n",
                row.task,
                row.pass_layer,
                row.threshold_fit_on_others,
                row.predicted,
                row.argmax_layer
            ));
        }
        md
    }
}

/// Calibration resumed: the earlier traces `done` (a killed run's) and, made by `trace` in the
/// order of `tasks`, those of the tasks they lack; returned in the order of `tasks`, traces of
/// other tasks left out.
pub fn resume_traces<E>(
    tasks: &[String],
    mut done: Vec<TaskTraces>,
    mut trace: impl FnMut(&str) -> Result<TaskTraces, E>,
) -> Result<Vec<TaskTraces>, E> {
    for task in tasks {
        if !done.iter().any(|t| &t.task == task) {
            done.push(trace(task)?);
        }
    }
    Ok(tasks
        .iter()
        .filter_map(|id| done.iter().find(|t| &t.task == id).cloned())
        .collect())
}

#[cfg(test)]
mod tests {

    #[test]
    fn reference_layers_come_from_the_first_run() {
        let text = r#"{"runs": [{"results": [{"task": "HumanEval/0", "key": 16, "fixed": 1},
            {"task": "HumanEval/1"}]}, {"results": [{"task": "HumanEval/2", "key": 3}]}]}"#;
        let l = reference_layers(text).unwrap();
        assert_eq!(l, BTreeMap::from([("HumanEval/0".to_string(), 16)]));
        assert!(reference_layers("{}").unwrap().is_empty());
    }

    use super::*;

    fn task(name: &str, logprob: Vec<f64>, distances: Vec<f64>, pass_key: usize) -> TaskTraces {
        TaskTraces {
            task: name.into(),
            logprob,
            distances,
            pass_key,
            pass_scores: vec![],
            seconds: 0.0,
            too_close: None,
        }
    }

    #[test]
    fn the_fitted_threshold_reproduces_saturated_choices() {
        // Early layers restore fully; the pass metric picks the deepest restored layer (largest
        // distance). Restoration above ~0.9 means restored in these tasks.
        let d: Vec<f64> = (0..6).map(|l| l as f64).collect();
        let ts = vec![
            task("a", vec![1.5, 1.2, 0.95, 0.3, 0.1, 0.0], d.clone(), 2),
            task("b", vec![1.1, 0.97, 0.92, 0.91, 0.2, 0.0], d.clone(), 3),
            task("c", vec![2.0, 0.99, 0.5, 0.2, 0.1, 0.0], d.clone(), 1),
        ];
        let cal = calibrate(PerturbationType::C3, &ts, &BTreeMap::new());
        assert!(
            cal.threshold > 0.5 && cal.threshold <= 0.95,
            "{}",
            cal.threshold
        );
        assert_eq!(cal.fit.same, 3, "{}", cal.markdown());
        assert!(cal.loo.same >= 2, "{}", cal.markdown());
        // The plain argmax picks layer 0 everywhere.
        assert_eq!(cal.argmax_same, 0);
        let text = serde_json::to_string(&cal).unwrap();
        assert_eq!(Calibration::parse(&text).unwrap(), cal);
    }

    #[test]
    fn a_pair_too_close_to_normalise_gives_no_threshold_and_keeps_its_best_layer() {
        let d: Vec<f64> = (0..6).map(|l| l as f64).collect();
        let mut flagged = task("f", vec![-9.0, -8.0, -7.5, -7.0, -8.5, -9.5], d.clone(), 3);
        flagged.too_close = Some(crate::trace::TooClose {
            lp_clean: -7.2,
            lp_pert: -7.0,
        });
        let ts = vec![
            task("a", vec![1.5, 1.2, 0.95, 0.3, 0.1, 0.0], d.clone(), 2),
            task("b", vec![1.1, 0.97, 0.92, 0.91, 0.2, 0.0], d.clone(), 3),
            flagged,
        ];
        let cal = calibrate(PerturbationType::C3, &ts, &BTreeMap::new());
        assert!(
            cal.threshold > 0.0,
            "log-probabilities are no candidates: {}",
            cal.threshold
        );
        let f = cal.rows.iter().find(|r| r.task == "f").unwrap();
        assert_eq!(f.predicted, 3, "the highest patched log-probability");
    }

    #[test]
    fn an_unversioned_calibration_loads_and_a_later_one_is_refused() {
        let legacy = r#"{"threshold":0.9,"fit":{"same":1,"within_2":1},"loo":{"same":0,"within_2":1,"tasks":1},"argmax_same":0,
            "reference":{"tasks":0,"same":0,"within_2":0,"pass_metric_same":0},
            "rows":[{"task":"HumanEval/1","pass_layer":3,"threshold_fit_on_others":1.0,"predicted":2,"argmax_layer":0,"reference_layer":null}],"type":"C3"}"#;
        let c = Calibration::parse(legacy).unwrap();
        assert_eq!((c.version, c.rows[0].pass_layer), (CALIBRATION_VERSION, 3));
        let later = legacy.replacen('{', "{\"version\":5,", 1);
        assert!(Calibration::parse(&later)
            .unwrap_err()
            .contains("version 5"));
    }

    #[test]
    fn resumed_traces_trace_only_the_missing_tasks_and_keep_the_task_order() {
        let traces = |task: &str| TaskTraces {
            task: task.to_string(),
            logprob: Vec::new(),
            distances: Vec::new(),
            pass_key: 0,
            pass_scores: Vec::new(),
            seconds: 0.0,
            too_close: None,
        };
        let tasks: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut traced = Vec::new();
        let done = vec![traces("c"), traces("z"), traces("a")];
        let r = resume_traces(&tasks, done, |t| {
            traced.push(t.to_string());
            Ok::<_, ()>(traces(t))
        })
        .unwrap();
        assert_eq!(traced, vec!["b"]);
        let order: Vec<&str> = r.iter().map(|t| t.task.as_str()).collect();
        assert_eq!(order, vec!["a", "b", "c"]);
        assert_eq!(resume_traces(&tasks, Vec::new(), |_| Err("x")), Err("x"));
    }
}
