//! `creme calibrate-layer`: choose the threshold of the saturating logprob key-layer rule so that
//! it picks the layers the authors' pass metric picks. Per task: the logprob trace (every prompt
//! position) and the pass-metric trace (greedy patched runs, tests executed); then leave-one-out
//! over the tasks (fit the threshold on the others, predict the held-out task's layer), and the
//! agreement with the reference layers of the CREME reference run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use creme_core::calibration::{self, calibrate, TaskTraces};
use creme_core::model::Model;
use creme_core::sets::{PerturbationType, SetName};
use creme_core::trace::choose_layer;
use creme_core::{Backend, Device};

use crate::common::{self, JsonlLog, Res};

#[derive(clap::Args, Clone)]
pub struct CalibrateArgs {
    /// Model, dataset; --tasks (added to the edit-worthy tasks of --baseline when both are given)
    #[command(flatten)]
    pub input: common::InputFlags,
    /// Perturbation type of the pairs
    #[arg(long = "type", default_value = "C3")]
    pub ptype: PerturbationType,
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

pub fn run(dev: &Device, a: CalibrateArgs) -> Res {
    let dir = common::dataset_dir(a.input.dataset.as_deref())?;
    let tasks = task_list(&a)?;
    std::fs::create_dir_all(&a.out)?;
    common::record_command(&a.out)?;
    let model = common::load_model(dev, a.input.model.as_deref(), 0)?;
    let (mut log, previous) = JsonlLog::open(&a.out.join("traces.jsonl"))?;
    // Lines that are not a task's traces are left out (traced again).
    let previous = previous
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok());
    let traces = calibration::resume_traces(&tasks, previous.collect(), |task| {
        let t = trace_task(dev, &model, &dir, task, &a)?;
        log.append(&t)?;
        Ok::<_, Box<dyn std::error::Error>>(t)
    })?;
    let cal = calibrate(a.ptype, &traces, &reference_layers(a.reference.as_deref())?);
    common::write(
        &a.out.join("calibration.json"),
        &serde_json::to_string_pretty(&cal)?,
    )?;
    let markdown = cal.markdown();
    common::write(&a.out.join("calibration.md"), &markdown)?;
    print!("{markdown}");
    println!(
        "threshold {:.3} (use it as --restored-at); on {}; written to {}",
        cal.threshold,
        dev.describe(),
        a.out.join("calibration.md").display()
    );
    Ok(())
}

/// The baseline's edit-worthy tasks, then the --tasks not among them (e.g. the reference run's).
fn task_list(a: &CalibrateArgs) -> Res<Vec<String>> {
    if a.input.tasks.is_none() && a.baseline.is_none() {
        return Err(
            "give --tasks or --baseline (an eval OUT dir of clean and the type), or both".into(),
        );
    }
    let worthy = match &a.baseline {
        Some(b) => edit_worthy(b, a.ptype)?,
        None => Vec::new(),
    };
    let (limit, more) = (a.input.limit, a.input.tasks.as_deref());
    Ok(creme_core::dataset::merge_task_ids(worthy, limit, more))
}

/// Both traces of one task (core's `calibration::trace_task`), with progress.
fn trace_task(
    dev: &Device,
    model: &Model,
    dir: &Path,
    task: &str,
    a: &CalibrateArgs,
) -> Res<TaskTraces> {
    let (c, p) = common::task_pair(dir, task, a.ptype)?;
    let mut bars = (
        crate::progress::Reporter::new(task),
        crate::progress::Reporter::new(&format!("{task} pass metric")),
    );
    let mut progress = |pass: bool, s: creme_core::progress::Step<'_>| match pass {
        false => bars.0.step(s),
        true => bars.1.step(s),
    };
    let t = pollster::block_on(calibration::trace_task(
        dev,
        model,
        (&c, &p),
        a.target_tokens,
        &mut crate::sandbox::SandboxJudge::for_pass_trace(),
        &mut progress,
    ))?;
    eprintln!(
        "{task}: pass-metric layer {}, logprob argmax layer {} ({:.0} s)",
        t.pass_key,
        choose_layer(&t.logprob, &t.distances),
        t.seconds
    );
    Ok(t)
}

/// Tasks whose clean prompt passes and whose `ptype` prompt fails in an eval's records.
fn edit_worthy(baseline: &Path, ptype: PerturbationType) -> Res<Vec<String>> {
    let records = crate::run_dir::read_samples(&baseline.join("samples.jsonl"))?;
    Ok(creme_core::experiment::edit_worthy(
        &creme_core::eval::outcomes_of(&records),
        SetName::Perturbed(ptype),
    ))
}

/// Key layers of the reference run's first setting, by task (none where there is no file).
fn reference_layers(path: Option<&Path>) -> Res<BTreeMap<String, usize>> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => common::shared_dir()
            .join("oracle/qwen2.5-coder-0.5b-instruct-q4km/creme_reference_C3.json"),
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(BTreeMap::new());
    };
    Ok(calibration::reference_layers(&text).map_err(|e| format!("{}: {e}", path.display()))?)
}
