//! `creme experiment`: the paper's protocol per perturbation type. A greedy baseline on the clean
//! set and on each type finds the edit-worthy tasks (clean passes, perturbed fails); for each one:
//! locate a layer, edit it from that one pair, evaluate the edited model on the type's tasks, on
//! the clean tasks (and on `--eval-types`), revert. One JSONL record per edit, appended when the
//! edit is evaluated: a killed run resumes after its last finished record; `--shard i/n` takes
//! every n-th edit so shards run on separate machines; `creme report` merges them.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use creme_core::eval::{self, GenSpec, Outcomes, SampleRecord};
use creme_core::experiment::runner::{self, ExperimentPlan};
use creme_core::experiment::{layer_modes, layers_given, EditRecord};
use creme_core::manifest::RunManifest;
use creme_core::model::Model;
use creme_core::pipeline::LayerRule;
use creme_core::report::tables::edit_log_name;
use creme_core::sets::PerturbationType;
use creme_core::Device;

use crate::common::{self, JsonlLog, Res};
use crate::eval_cmd;
use crate::run_dir::{self, SampleLog};
use crate::sandbox::SandboxJudge;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum EvalScope {
    All,
    EditWorthy,
    Collateral,
}

impl EvalScope {
    fn with_sample(self, sample: usize) -> runner::EvalScope {
        match self {
            EvalScope::All => runner::EvalScope::All,
            EvalScope::EditWorthy => runner::EvalScope::EditWorthy,
            EvalScope::Collateral => runner::EvalScope::Collateral { sample },
        }
    }
}

#[derive(clap::Args, Clone)]
pub struct ExperimentArgs {
    #[command(flatten)]
    pub input: common::InputFlags,
    /// Perturbation types to edit for (comma list, or all)
    #[arg(long, default_value = "C3")]
    pub types: String,
    /// Also evaluate every edit on these types (the cross-type G-RIR matrix)
    #[arg(long)]
    pub eval_types: Option<String>,
    /// Layer choice: logprob (trace), pass (the authors' executed trace), random, a layer number,
    /// mode:FILE (per type, the most frequent key layer of an earlier run's edits.jsonl), or
    /// from:FILE (per task: an earlier edits.jsonl, or calibrate-layer's calibration.json, whose
    /// pass-metric layers then serve without tracing again)
    #[arg(long, default_value = "logprob")]
    pub layer: LayerRule,
    /// Evaluate each edit on every task (all: the paper's fixed/broken and clean deviation over
    /// the whole set), only on the type's edit-worthy tasks (enough for L-RIR and G-RIR), or
    /// (collateral) on those plus a fixed seeded sample of clean and passing perturbed tasks
    #[arg(long, value_enum, default_value = "all")]
    pub eval_scope: EvalScope,
    /// Sample size of --eval-scope collateral, per set
    #[arg(long, default_value_t = runner::EvalScope::DEFAULT_SAMPLE)]
    pub sample: usize,
    #[command(flatten)]
    pub edit: crate::edit_cmd::EditFlags,
    /// Fit each edit on this many edit-worthy pairs of its type in one solve: its own and the
    /// next ones in dataset order, cyclically (a type-level edit). The other pairs are left out
    /// of the edit's scores of the type (its G-RIR, fixed and broken)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub pairs: u16,
    /// Take edit i of every n (0-based "i/n"), for separate machines
    #[arg(long)]
    pub shard: Option<String>,
    /// An earlier `creme eval` output directory to take the baseline from (else computed here)
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    #[command(flatten)]
    pub gen: common::GenFlags,
    /// Parallel test processes (default: the number of cores)
    #[arg(long)]
    pub workers: Option<usize>,
    /// Output directory (baseline/, edits.jsonl or edits-shard-I-of-N.jsonl, report.md)
    #[arg(long)]
    pub out: PathBuf,
}

/// The records of an `edits.jsonl` file (versions this build does not know are refused).
pub fn read_edits(path: &Path) -> Res<Vec<EditRecord>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(EditRecord::parse_lines(&text, &path.display().to_string())?)
}

/// Per task, the layer an earlier run chose (core's `layers_given`): an `edits.jsonl` or a
/// `creme calibrate-layer` calibration.json.
fn layers_from(path: &Path) -> Res<HashMap<(PerturbationType, String), usize>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    Ok(layers_given(&text, jsonl, &path.display().to_string())?)
}

/// The plan of the flags, with the sets and layer files read.
fn plan(a: &ExperimentArgs) -> Res<ExperimentPlan> {
    let dir = common::dataset_dir(a.input.dataset.as_deref())?;
    let eval_types = a
        .eval_types
        .as_deref()
        .map(eval_cmd::parse_types)
        .transpose()?;
    let (types, all_sets) = runner::experiment_sets(eval_cmd::parse_types(&a.types)?, eval_types)?;
    Ok(ExperimentPlan {
        settings: a.edit.settings()?,
        target_tokens: a.edit.target_tokens,
        past_divergence: a.edit.past_divergence,
        control: a.edit.control(),
        layer: a.layer.clone(),
        restored_at: a.edit.restored_at()?,
        pairs: a.pairs as usize,
        eval_scope: a.eval_scope.with_sample(a.sample),
        shard: runner::parse_shard(a.shard.as_deref())?,
        sets: common::load_sets(&dir, &all_sets, a.input.tasks.as_deref(), a.input.limit)?,
        modes: match &a.layer {
            LayerRule::ModeOf(f) => Some(layer_modes(&read_edits(Path::new(f))?)),
            _ => None,
        },
        given: match &a.layer {
            LayerRule::From(f) => Some(layers_from(Path::new(f))?),
            _ => None,
        },
        types,
        all_sets,
        spec: GenSpec {
            max_tokens: a.gen.max_tokens,
            batch: a.gen.batch,
            ..GenSpec::default()
        }
        .greedy(),
        preserve: None,
    })
}

/// The manifest of the experiment directory, and the one its baseline must fit.
fn manifests(
    a: &ExperimentArgs,
    plan: &ExperimentPlan,
    dev: &Device,
    gpu_opts: &creme_core::GpuOptions,
) -> Res<(RunManifest, RunManifest)> {
    let model = common::model_path(a.input.model.as_deref());
    let baseline = RunManifest {
        device: Some(run_dir::results_device(dev, gpu_opts, plan.spec.batch)),
        judge: Some(crate::sandbox::judge_identity()),
        model: Some(run_dir::file_digest(&model)?),
        ..RunManifest::eval(
            run_dir::build_id()?,
            &plan.sets,
            &plan.spec,
            eval::DEFAULT_TIMEOUT_S,
        )
    };
    let layer_source = plan.layer.source_file().map(Path::new);
    let layer_source = layer_source.map(run_dir::file_digest).transpose()?;
    let experiment = plan.manifest(&baseline, layer_source, &a.edit.restored_at);
    Ok((experiment, baseline))
}

pub fn run(gpu_opts: &creme_core::GpuOptions, a: ExperimentArgs) -> Res {
    let mut plan = plan(&a)?;
    let dev = Device::open(gpu_opts)?;
    let model_path = common::model_path(a.input.model.as_deref());
    let mut model = common::load_model(&dev, Some(&model_path), 0)?;
    if plan.settings.solver.needs_covariance() {
        let dir = common::dataset_dir(a.input.dataset.as_deref())?;
        plan.preserve = Some(common::covariance_store(&dir, &model, &model_path)?);
    }
    let (manifest, base_manifest) = manifests(&a, &plan, &dev, gpu_opts)?;
    run_dir::claim(&a.out, &manifest, &["edits"], false)?;
    common::record_command(&a.out)?;
    let mut judge = SandboxJudge::new(eval::DEFAULT_TIMEOUT_S, a.workers);
    let (base, base_records) = baseline(&a, &plan, &dev, &model, &mut judge, &base_manifest)?;
    // The edited model's completions are verified against the baseline's (exact on the CPU
    // backend: see creme_core::draft).
    let drafts = eval::Drafts::from_records(&base_records, &model)?;
    let runner::JobList {
        jobs,
        total,
        unmatched,
    } = plan.jobs(&base)?;
    for (t, task) in &unmatched {
        eprintln!("matched control: {task} is the only edit-worthy task of {t}; left out");
    }
    let log_path = a.out.join(edit_log_name(plan.shard));
    let (mut log, previous) = JsonlLog::open_with(&log_path, EditRecord::parse_line)?;
    let done: HashSet<_> = previous.into_iter().map(|r| (r.ptype, r.task)).collect();
    eprintln!(
        "{total} edit-worthy tasks over {} types; this shard: {}, already done: {}",
        plan.types.len(),
        jobs.len(),
        done.len()
    );
    // One bar per job, finished before the job's summary line.
    let bars = RefCell::new(crate::progress::Parts::default());
    let mut failure = None;
    let mut sink = |label: &str, rec: EditRecord| {
        bars.borrow_mut().finish();
        // As a JSON value: the record's keys sorted, as edits.jsonl files always were.
        let line = serde_json::to_value(&rec).map_err(Into::into);
        run_dir::keep_failure(line.and_then(|v| log.append(&v)), &mut failure)?;
        eprintln!("{}", rec.summary_line(label));
        Ok(())
    };
    let result = pollster::block_on(runner::run_jobs(
        &dev,
        &mut model,
        &plan,
        (&jobs, &done),
        &base,
        Some(&drafts),
        &mut judge,
        &mut |label, s| bars.borrow_mut().step(label, s),
        &mut sink,
    ));
    run_dir::unless_failed(failure, result)?;
    let report = crate::report_cmd::write_report(std::slice::from_ref(&a.out), &a.out)?;
    let records = log_path.display();
    println!("records: {records}\nreport: {}", report.display());
    Ok(())
}

/// Greedy outcomes and records of the unedited model on every set: from `--baseline DIR` (which
/// must fit this run and hold every task), else computed into OUT/baseline (resumable: core's
/// `complete_baseline`).
fn baseline(
    a: &ExperimentArgs,
    plan: &ExperimentPlan,
    dev: &Device,
    model: &Model,
    judge: &mut SandboxJudge,
    m: &RunManifest,
) -> Res<(Outcomes, Vec<SampleRecord>)> {
    if let Some(dir) = &a.baseline {
        run_dir::check_baseline(dir, m)?;
        let records = run_dir::read_samples(&dir.join("samples.jsonl"))?;
        let base = eval::outcomes_of(&records);
        plan.require_complete(&base, &dir.display().to_string())?;
        return Ok((base, records));
    }
    let dir = a.out.join("baseline");
    let samples = dir.join("samples.jsonl");
    run_dir::claim(&dir, m, &["samples"], run_dir::unjudged(&samples)?)?;
    let (mut log, records) = SampleLog::open(&samples)?;
    let t0 = std::time::Instant::now();
    let mut bar = crate::progress::Reporter::new("baseline");
    let mut failure = None;
    let mut sink = |rec: SampleRecord| run_dir::keep_failure(log.append(&rec), &mut failure);
    let records = pollster::block_on(runner::complete_baseline(
        dev,
        model,
        plan,
        records,
        judge,
        &mut |s, n| eprintln!("baseline: {n} {s} tasks"),
        &mut |st| bar.step(st),
        &mut sink,
    ));
    let records = run_dir::unless_failed(failure, records)?;
    eprintln!("baseline ready ({:.0} s)", t0.elapsed().as_secs_f64());
    Ok((eval::outcomes_of(&records), records))
}
