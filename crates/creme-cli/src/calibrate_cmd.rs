//! `creme calibrate-layer`: choose the threshold of the saturating logprob key-layer rule so that
//! it picks the layers the authors' pass metric picks. Per task: the logprob trace (every prompt
//! position) and the pass-metric trace (greedy patched runs, tests executed); then leave-one-out
//! over the tasks (fit the threshold on the others, predict the held-out task's layer), and the
//! agreement with the reference layers of the CREME reference run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use creme_core::trace::{
    self, choose_layer, choose_layer_saturating, PatchPositions, RestorationByLogprob,
};
use creme_core::{Backend, Device};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::common::{self, JsonlLog, Res};
use creme_core::pass_trace::pass_trace;

#[derive(clap::Args, Clone)]
pub struct CalibrateArgs {
    /// Model, dataset; --tasks (added to the edit-worthy tasks of --baseline when both are given)
    #[command(flatten)]
    pub input: common::InputFlags,
    /// Perturbation type of the pairs
    #[arg(long = "type", default_value = "C3")]
    pub ptype: String,
    /// An `eval` OUT dir with the greedy baseline of clean and the type
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// CREME reference run (JSON with runs[].results[] {task, key}); default: the shared oracle's
    #[arg(long)]
    pub reference: Option<PathBuf>,
    #[arg(long, default_value_t = creme_core::pipeline::DEFAULT_TARGET_TOKENS)]
    pub target_tokens: usize,
    /// Output directory (traces.jsonl, resumable; calibration.md, calibration.json)
    #[arg(long)]
    pub out: PathBuf,
}

/// Both traces of one task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskTraces {
    pub task: String,
    pub logprob: Vec<f64>,
    pub distances: Vec<f64>,
    pub pass_key: usize,
    pub pass_scores: Vec<f64>,
    pub seconds: f64,
}

pub fn run(dev: &Device, a: CalibrateArgs) -> Res {
    let dir = common::dataset_dir(a.input.dataset.as_deref())?;
    if a.input.tasks.is_none() && a.baseline.is_none() {
        return Err(
            "give --tasks or --baseline (an eval OUT dir of clean and the type), or both".into(),
        );
    }
    // The baseline's edit-worthy tasks, then the --tasks not among them (e.g. the reference run's).
    let mut tasks: Vec<String> = match &a.baseline {
        Some(b) => edit_worthy(b, &a.ptype)?
            .into_iter()
            .take(a.input.limit.unwrap_or(usize::MAX))
            .collect(),
        None => Vec::new(),
    };
    for t in a
        .input
        .tasks
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        if !tasks.iter().any(|x| x == t) {
            tasks.push(t.to_string());
        }
    }
    std::fs::create_dir_all(&a.out)?;
    common::record_command(&a.out)?;
    let model = common::load_model(dev, Some(&common::model_path(a.input.model.as_deref())), 0)?;
    let (mut log, previous) = JsonlLog::open(&a.out.join("traces.jsonl"))?;
    let mut traces: Vec<TaskTraces> = previous
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect();
    for task in &tasks {
        if traces.iter().any(|t| &t.task == task) {
            continue;
        }
        let t0 = Instant::now();
        let (c, p) = common::task_pair(&dir, task, &a.ptype)?;
        let prelude = trace::prepare_pair(dev, &model, &c.prompt, &p.prompt, a.target_tokens);
        let (_, setup) = pollster::block_on(prelude)?;
        let mut bar = crate::progress::Reporter::new(task);
        let lp = pollster::block_on(trace::trace_layers_with(
            dev,
            &model,
            &setup,
            PatchPositions::AllPrompt,
            &mut RestorationByLogprob,
            &mut |s| bar.step(s),
        ))?;
        let mut bar = crate::progress::Reporter::new(&format!("{task} pass metric"));
        let (pass, _) = pollster::block_on(pass_trace(
            dev,
            &model,
            &setup,
            (&c.prompt, &c),
            (&p.prompt, &p),
            1,
            &mut crate::judge::SandboxJudge::for_pass_trace(),
            &mut |s| bar.step(s),
        ))?;
        bar.finish();
        let t = TaskTraces {
            task: task.clone(),
            logprob: lp.scores,
            distances: setup.distances.clone(),
            pass_key: pass.key_layer,
            pass_scores: pass.scores,
            seconds: t0.elapsed().as_secs_f64(),
        };
        eprintln!(
            "{task}: pass-metric layer {}, logprob argmax layer {} ({:.0} s)",
            t.pass_key, lp.key_layer, t.seconds
        );
        log.append(&serde_json::to_value(&t)?)?;
        traces.push(t);
    }
    let traces: Vec<TaskTraces> = tasks
        .iter()
        .filter_map(|id| traces.iter().find(|t| &t.task == id).cloned())
        .collect();
    let reference = reference_layers(a.reference.as_deref())?;
    let mut cal = calibrate(&traces, &reference);
    cal.json["type"] = json!(a.ptype);
    common::write(
        &a.out.join("calibration.json"),
        &serde_json::to_string_pretty(&cal.json)?,
    )?;
    common::write(&a.out.join("calibration.md"), &cal.markdown)?;
    print!("{}", cal.markdown);
    println!(
        "threshold {:.3} (use it as --restored-at); on {}; written to {}",
        cal.threshold,
        dev.describe(),
        a.out.join("calibration.md").display()
    );
    Ok(())
}

/// Tasks whose clean prompt passes and whose `ptype` prompt fails in an eval's records.
fn edit_worthy(baseline: &Path, ptype: &str) -> Res<Vec<String>> {
    let records = crate::run_dir::read_samples(&baseline.join("samples.jsonl"))?;
    Ok(creme_core::experiment::edit_worthy(
        &creme_core::eval::outcomes_of(&records),
        ptype.parse()?,
    ))
}

/// Key layers of the reference run's first setting, by task.
fn reference_layers(path: Option<&Path>) -> Res<BTreeMap<String, usize>> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => common::shared_dir()
            .join("oracle/qwen2.5-coder-0.5b-instruct-q4km/creme_reference_C3.json"),
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(BTreeMap::new());
    };
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let results = doc["runs"][0]["results"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(results
        .iter()
        .filter_map(|r| Some((r["task"].as_str()?.to_string(), r["key"].as_u64()? as usize)))
        .collect())
}

pub struct Calibration {
    pub threshold: f64,
    pub json: serde_json::Value,
    pub markdown: String,
}

/// (layers equal, layers within 2) of the rule with `threshold` against the pass metric.
fn agreement(traces: &[&TaskTraces], threshold: f64) -> (usize, usize) {
    traces.iter().fold((0, 0), |(same, near), t| {
        let l = choose_layer_saturating(&t.logprob, &t.distances, threshold);
        (
            same + (l == t.pass_key) as usize,
            near + (l.abs_diff(t.pass_key) <= 2) as usize,
        )
    })
}

/// The threshold that agrees best with the pass metric on `traces` (exact matches first, then
/// within 2 layers); among equally good ones the median candidate.
fn fit(traces: &[&TaskTraces]) -> f64 {
    let mut candidates: Vec<f64> = traces
        .iter()
        .flat_map(|t| t.logprob.iter().cloned())
        .filter(|v| v.is_finite())
        .collect();
    candidates.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    candidates.dedup();
    let best = candidates
        .iter()
        .map(|&c| agreement(traces, c))
        .max()
        .unwrap_or((0, 0));
    let tied: Vec<f64> = candidates
        .into_iter()
        .filter(|&c| agreement(traces, c) == best)
        .collect();
    tied.get(tied.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(1.0)
}

pub fn calibrate(traces: &[TaskTraces], reference: &BTreeMap<String, usize>) -> Calibration {
    let all: Vec<&TaskTraces> = traces.iter().collect();
    let mut rows = Vec::new();
    let (mut same, mut near) = (0, 0);
    for (i, t) in traces.iter().enumerate() {
        let others: Vec<&TaskTraces> = all
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, t)| *t)
            .collect();
        let th = fit(&others);
        let predicted = choose_layer_saturating(&t.logprob, &t.distances, th);
        same += (predicted == t.pass_key) as usize;
        near += (predicted.abs_diff(t.pass_key) <= 2) as usize;
        rows.push(json!({"task": t.task, "pass_layer": t.pass_key, "threshold_fit_on_others": th, "predicted": predicted,
            "argmax_layer": choose_layer(&t.logprob, &t.distances), "reference_layer": reference.get(&t.task)}));
    }
    let threshold = fit(&all);
    let (fit_same, fit_near) = agreement(&all, threshold);
    let argmax = traces
        .iter()
        .filter(|t| choose_layer(&t.logprob, &t.distances) == t.pass_key)
        .count();
    let on_ref: Vec<(String, usize, usize)> = traces
        .iter()
        .filter_map(|t| {
            Some((
                t.task.clone(),
                *reference.get(&t.task)?,
                choose_layer_saturating(&t.logprob, &t.distances, threshold),
            ))
        })
        .collect();
    let ref_same = on_ref.iter().filter(|(_, r, p)| r == p).count();
    let ref_near = on_ref
        .iter()
        .filter(|(_, r, p)| r.abs_diff(*p) <= 2)
        .count();
    let pass_vs_ref = traces
        .iter()
        .filter(|t| reference.get(&t.task) == Some(&t.pass_key))
        .count();
    let n = traces.len();
    let mut md = format!("# Key-layer calibration\n\nSaturating logprob rule: a layer counts as restored once its logprob restoration reaches the threshold; the restored layer with the largest clean/perturbed distance is the key layer. Threshold fitted on all {n} tasks: **{threshold:.3}**.\n\n");
    md.push_str(&format!("- With that threshold on the same tasks: same layer as the pass metric {fit_same}/{n}, within 2 layers {fit_near}/{n}.\n"));
    md.push_str(&format!("- Leave-one-out against the pass metric's layers (threshold fitted on the other {} tasks): same layer {same}/{n}, within 2 layers {near}/{n}.\n", n.saturating_sub(1)));
    md.push_str(&format!("- The plain argmax of the logprob restoration: same layer as the pass metric {argmax}/{n}.\n"));
    md.push_str(&format!("- Against the reference run's layers ({} tasks): same {ref_same}, within 2 layers {ref_near}; creme's own pass metric equals the reference on {pass_vs_ref}.\n\n", on_ref.len()));
    md.push_str("| task | pass-metric layer | reference layer | LOO threshold | predicted | logprob argmax |\n|---|---:|---:|---:|---:|---:|\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {:.3} | {} | {} |\n",
            r["task"].as_str().unwrap_or(""),
            r["pass_layer"],
            r["reference_layer"],
            r["threshold_fit_on_others"].as_f64().unwrap_or(f64::NAN),
            r["predicted"],
            r["argmax_layer"]
        ));
    }
    let json = json!({"threshold": threshold, "fit": {"same": fit_same, "within_2": fit_near}, "loo": {"same": same, "within_2": near, "tasks": n}, "argmax_same": argmax,
        "reference": {"tasks": on_ref.len(), "same": ref_same, "within_2": ref_near, "pass_metric_same": pass_vs_ref}, "rows": rows});
    Calibration {
        threshold,
        json,
        markdown: md,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, logprob: Vec<f64>, distances: Vec<f64>, pass_key: usize) -> TaskTraces {
        TaskTraces {
            task: name.into(),
            logprob,
            distances,
            pass_key,
            pass_scores: vec![],
            seconds: 0.0,
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
        let cal = calibrate(&ts, &BTreeMap::new());
        assert!(
            cal.threshold > 0.5 && cal.threshold <= 0.95,
            "{}",
            cal.threshold
        );
        assert_eq!(cal.json["fit"]["same"], 3, "{}", cal.markdown);
        assert!(
            cal.json["loo"]["same"].as_u64().unwrap() >= 2,
            "{}",
            cal.markdown
        );
        // The plain argmax picks layer 0 everywhere.
        assert_eq!(cal.json["argmax_same"], 0);
    }
}
