//! `creme experiment`: the paper's protocol per perturbation type. A greedy baseline on the clean
//! set and on each type finds the edit-worthy tasks (clean passes, perturbed fails); for each one:
//! locate a layer, edit it from that one pair, evaluate the edited model on the type's tasks, on
//! the clean tasks (and on `--eval-types`), revert. One JSONL record per edit, appended when the
//! edit is evaluated: a killed run resumes after its last finished record; `--shard i/n` takes
//! every n-th edit so shards run on separate machines; `creme report` merges them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use creme_core::dataset::Problem;
use creme_core::eval::{self, Drafts, GenSpec, Outcomes, SampleRecord};
use creme_core::experiment::{self, EditRecord};
use creme_core::manifest::{self, ExperimentPlan, RunKind, RunManifest};
use creme_core::model::Model;
use creme_core::pass_trace::PassLocator;
use creme_core::pipeline::{
    locate_and_edit_with, CremeEdit, CremeSettings, LayerRule, Locator, LogprobLocator,
};
use creme_core::progress::Progress;
use creme_core::sets::{PerturbationType, SetName};
use creme_core::trace::{LayerTrace, TraceSetup};
use creme_core::{Backend, Device, ModelError};
use serde_json::Value;

use crate::common::{self, JsonlLog, Res};
use crate::eval_cmd;
use crate::judge::SandboxJudge;
use crate::run_dir::{self, SampleLog};

/// The experiment's traced layer choices.
enum TaskLocator<'a> {
    Logprob(LogprobLocator),
    Pass(PassLocator<'a, SandboxJudge>),
}

impl Locator for TaskLocator<'_> {
    async fn locate(
        &mut self,
        dev: &Device,
        model: &Model,
        setup: &TraceSetup,
        progress: &mut Progress<'_>,
    ) -> Result<LayerTrace, ModelError> {
        match self {
            TaskLocator::Logprob(l) => l.locate(dev, model, setup, progress).await,
            TaskLocator::Pass(p) => p.locate(dev, model, setup, progress).await,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum EvalScope {
    All,
    EditWorthy,
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
    /// the whole set) or only on the type's edit-worthy tasks (enough for L-RIR and G-RIR)
    #[arg(long, value_enum, default_value = "all")]
    pub eval_scope: EvalScope,
    #[command(flatten)]
    pub edit: crate::edit_cmd::EditFlags,
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

fn parse_shard(s: &Option<String>) -> Res<(usize, usize)> {
    let Some(s) = s else { return Ok((0, 1)) };
    let (i, n) = s.split_once('/').ok_or("--shard takes i/n, e.g. 0/4")?;
    let (i, n): (usize, usize) = (i.parse()?, n.parse()?);
    if n == 0 || i >= n {
        return Err(format!("--shard {s}: need 0 <= i < n").into());
    }
    Ok((i, n))
}

/// Per type, the most frequent key layer among an earlier run's records (ties: the lower layer).
fn layer_modes(path: &Path) -> Res<BTreeMap<PerturbationType, usize>> {
    let mut counts: BTreeMap<PerturbationType, BTreeMap<usize, usize>> = BTreeMap::new();
    for r in read_edits(path)? {
        *counts.entry(r.ptype).or_default().entry(r.layer).or_default() += 1;
    }
    Ok(counts
        .into_iter()
        .filter_map(|(t, c)| Some((t, c.into_iter().max_by_key(|&(l, n)| (n, std::cmp::Reverse(l)))?.0)))
        .collect())
}

/// The records of an `edits.jsonl` file (versions this build does not know are refused).
pub fn read_edits(path: &Path) -> Res<Vec<EditRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| EditRecord::parse_line(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1).into()))
        .collect()
}

/// Evaluate `sets` greedily with the model as it is now; every record goes to `on_record`. A
/// sample the judge could not run is no verdict: the evaluation stops there (nothing of this
/// edit is recorded, so the same command redoes it) rather than count it as a failure.
fn evaluate(
    dev: &Device,
    model: &Model,
    sets: &BTreeMap<SetName, Vec<Problem>>,
    ctx: &EvalContext,
    label: &str,
    on_record: &mut dyn FnMut(SampleRecord) -> Res,
) -> Res {
    let mut judge = SandboxJudge::new(eval_cmd::DEFAULT_TIMEOUT_S, ctx.workers);
    let mut bar = crate::progress::Reporter::new(label);
    for (set, problems) in sets {
        let items: Vec<(&Problem, usize)> = problems.iter().map(|p| (p, 0)).collect();
        let (mut done, mut passed) = (0, 0);
        let mut failure: Option<Box<dyn std::error::Error>> = None;
        let mut checked = |rec: SampleRecord| {
            let r = if rec.is_judge_error() {
                Err(format!("{set} {}: the sandbox could not run the test program: {}", rec.task_id, rec.stderr_tail).into())
            } else {
                done += 1;
                passed += rec.passed as usize;
                bar.step(creme_core::progress::Step {
                    stage: &format!("eval {set}"),
                    done,
                    total: items.len(),
                    note: format!("{passed} passed"),
                });
                on_record(rec)
            };
            r.map_err(|e: Box<dyn std::error::Error>| {
                let msg = e.to_string();
                failure = Some(e);
                ModelError::Format(msg)
            })
        };
        let r = pollster::block_on(eval::run_set(dev, model, *set, &items, &ctx.spec, ctx.drafts.as_ref(), &mut judge, &mut checked));
        if let Some(e) = failure {
            return Err(e);
        }
        r?;
    }
    Ok(())
}

/// What every evaluation of the experiment shares.
struct EvalContext {
    spec: GenSpec,
    drafts: Option<Drafts>,
    workers: Option<usize>,
}

/// The tasks an edit of type `t` is evaluated on: every loaded task, or (edit-worthy scope) the
/// edit-worthy tasks of each evaluated type, with their clean prompts those of type `t`.
fn eval_sets(
    sets: &BTreeMap<SetName, Vec<Problem>>,
    base: &Outcomes,
    t: PerturbationType,
    scope: EvalScope,
) -> BTreeMap<SetName, Vec<Problem>> {
    match scope {
        EvalScope::All => sets.clone(),
        EvalScope::EditWorthy => sets
            .iter()
            .map(|(s, ps)| {
                let of = if s.is_clean() { SetName::Perturbed(t) } else { *s };
                let worthy: HashSet<String> = experiment::edit_worthy(base, of).into_iter().collect();
                (*s, ps.iter().filter(|p| worthy.contains(&p.task_id)).cloned().collect())
            })
            .collect(),
    }
}

/// Per task, the layer an earlier run chose: an `edits.jsonl` (each record's layer, by type and
/// task) or a `creme calibrate-layer` calibration.json (each row's pass-metric layer).
fn layers_from(path: &Path) -> Res<HashMap<(PerturbationType, String), usize>> {
    if path.extension().is_some_and(|e| e == "jsonl") {
        return Ok(read_edits(path)?.into_iter().map(|r| ((r.ptype, r.task), r.layer)).collect());
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let t: PerturbationType = v["type"].as_str().unwrap_or("C3").parse()?;
    let rows = v["rows"].as_array().ok_or_else(|| format!("{}: no calibration rows", path.display()))?;
    Ok(rows
        .iter()
        .filter_map(|row| Some(((t, row["task"].as_str()?.to_string()), row["pass_layer"].as_u64()? as usize)))
        .collect())
}

/// The layer to edit for one job, unless it is traced (logprob, pass).
fn fixed_layer(
    rule: &LayerRule,
    t: PerturbationType,
    task: &str,
    n_layers: usize,
    modes: &Option<BTreeMap<PerturbationType, usize>>,
    given: &Option<HashMap<(PerturbationType, String), usize>>,
) -> Res<Option<usize>> {
    let l = match rule {
        LayerRule::Logprob | LayerRule::Pass => return Ok(None),
        LayerRule::Random => {
            let seed = task.bytes().fold(t.name().len() as u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
            creme_core::cpu::SplitMix64(seed).below(n_layers as u64) as usize
        }
        LayerRule::ModeOf(_) => *modes
            .as_ref()
            .and_then(|m| m.get(&t))
            .ok_or_else(|| format!("--layer {rule}: no edits of type {t} to take a layer from"))?,
        LayerRule::From(_) => *given
            .as_ref()
            .and_then(|m| m.get(&(t, task.to_string())))
            .ok_or_else(|| format!("--layer {rule}: no layer for {t} {task}"))?,
        LayerRule::Fixed(l) => *l,
    };
    if l >= n_layers {
        return Err(format!("--layer {l}: the model has {n_layers} layers").into());
    }
    Ok(Some(l))
}

/// Everything the flags decide before the model is loaded.
struct Plan {
    settings: creme_core::edit::EditSettings,
    restored_at: Option<f64>,
    shard: (usize, usize),
    types: Vec<PerturbationType>,
    eval_types: Vec<SetName>,
    /// clean, the edited types, the further evaluated types.
    all_sets: Vec<SetName>,
    sets: BTreeMap<SetName, Vec<Problem>>,
    modes: Option<BTreeMap<PerturbationType, usize>>,
    given: Option<HashMap<(PerturbationType, String), usize>>,
}

impl Plan {
    fn new(a: &ExperimentArgs) -> Res<Plan> {
        let dir = common::dataset_dir(a.input.dataset.as_deref())?;
        let types: Vec<PerturbationType> = eval_cmd::parse_types(&a.types)?.into_iter().filter_map(SetName::perturbation).collect();
        if types.is_empty() {
            return Err("--types names no perturbation type to edit for".into());
        }
        let eval_types: Vec<SetName> = match &a.eval_types {
            Some(t) => eval_cmd::parse_types(t)?
                .into_iter()
                .filter(|s| s.perturbation().is_some_and(|t| !types.contains(&t)))
                .collect(),
            None => Vec::new(),
        };
        let mut all_sets = vec![SetName::Clean];
        all_sets.extend(types.iter().map(|t| SetName::Perturbed(*t)));
        all_sets.extend(eval_types.iter().copied());
        Ok(Plan {
            settings: a.edit.settings()?,
            restored_at: a.edit.restored_at()?,
            shard: parse_shard(&a.shard)?,
            sets: eval_cmd::load_sets(&dir, &all_sets, a.input.tasks.as_deref(), a.input.limit)?,
            modes: match &a.layer {
                LayerRule::ModeOf(f) => Some(layer_modes(Path::new(f))?),
                _ => None,
            },
            given: match &a.layer {
                LayerRule::From(f) => Some(layers_from(Path::new(f))?),
                _ => None,
            },
            types,
            eval_types,
            all_sets,
        })
    }

    /// The manifest of the experiment directory, and the one its baseline must fit.
    fn manifests(&self, a: &ExperimentArgs, dev: &Device, spec: &GenSpec) -> Res<(RunManifest, RunManifest)> {
        let layer_file = a.layer.source_file();
        let baseline = RunManifest {
            version: manifest::MANIFEST_VERSION,
            kind: RunKind::Eval,
            build: run_dir::build_id()?,
            device: Some(run_dir::results_device(dev)),
            model: Some(run_dir::file_digest(&common::model_path(a.input.model.as_deref()))?),
            dataset: manifest::dataset_digests(&self.sets),
            generation: spec.into(),
            timeout_s: eval_cmd::DEFAULT_TIMEOUT_S,
            patches: Vec::new(),
            completions: None,
            experiment: None,
        };
        let experiment = RunManifest {
            kind: RunKind::Experiment,
            experiment: Some(ExperimentPlan {
                edit: self.settings.clone(),
                target_tokens: a.edit.target_tokens,
                layer: a.layer.to_string(),
                layer_source: layer_file.map(|f| run_dir::file_digest(Path::new(f))).transpose()?,
                restored_at: a.edit.restored_at.clone(),
                eval_scope: scope_name(a.eval_scope).into(),
                types: self.types.iter().map(|t| SetName::Perturbed(*t)).collect(),
                eval_types: self.eval_types.clone(),
            }),
            ..baseline.clone()
        };
        Ok((experiment, baseline))
    }
}

fn scope_name(s: EvalScope) -> &'static str {
    match s {
        EvalScope::All => "all",
        EvalScope::EditWorthy => "edit-worthy",
    }
}

pub fn run(gpu_opts: &creme_core::GpuOptions, a: ExperimentArgs) -> Res {
    let plan = Plan::new(&a)?;
    let spec = GenSpec { max_tokens: a.gen.max_tokens, batch: a.gen.batch, ..GenSpec::default() }.greedy();
    let dev = Device::open(gpu_opts)?;
    let mut model = common::load_model(&dev, Some(&common::model_path(a.input.model.as_deref())), 0)?;
    let (manifest, base_manifest) = plan.manifests(&a, &dev, &spec)?;
    run_dir::claim(&a.out, &manifest, &["edits.jsonl"])?;
    common::record_command(&a.out)?;
    let mut ctx = EvalContext { spec, drafts: None, workers: a.workers };
    let (base, base_records) = baseline(&a, &plan, &dev, &model, &ctx, &base_manifest)?;
    // The edited model's completions are verified against the baseline's (exact on the CPU
    // backend: see creme_core::draft).
    ctx.drafts = Some(Drafts::from_records(&base_records, &model)?);
    let (jobs, total) = jobs(&plan, &base)?;
    let log_name = match plan.shard {
        (_, 1) => "edits.jsonl".to_string(),
        (i, n) => format!("edits-shard-{i}-of-{n}.jsonl"),
    };
    let (mut log, previous) = JsonlLog::open(&a.out.join(&log_name))?;
    let mut done = HashSet::new();
    for r in previous {
        let r = EditRecord::parse_line(&r.to_string()).map_err(|e| format!("{}: {e}", a.out.join(&log_name).display()))?;
        done.insert((r.ptype, r.task));
    }
    eprintln!("{total} edit-worthy tasks over {} types; this shard: {}, already done: {}", plan.types.len(), jobs.len(), done.len());
    for (k, job) in jobs.iter().enumerate() {
        if done.contains(&(job.ptype, job.pert.task_id.clone())) {
            continue;
        }
        let label = format!("[{}/{}] {} {}", k + 1, jobs.len(), job.ptype, job.pert.task_id);
        let rec = run_job(&a, &plan, &dev, &mut model, job, &base, &ctx, &label)?;
        log.append(&serde_json::to_value(&rec)?)?;
        print_edit(&label, &rec);
    }
    let r = crate::report_cmd::report(&[a.out.clone()])?;
    common::write(&a.out.join("report.md"), &r.markdown)?;
    common::write(&a.out.join("report.json"), &serde_json::to_string_pretty(&r.json)?)?;
    print!("{}", r.markdown);
    println!("records: {}\nreport: {}", a.out.join(&log_name).display(), a.out.join("report.md").display());
    Ok(())
}

/// Greedy outcomes and records of the unedited model on every set: from `--baseline DIR` (which
/// must fit this run and hold every task), else computed into OUT/baseline (resumable).
fn baseline(
    a: &ExperimentArgs,
    plan: &Plan,
    dev: &Device,
    model: &Model,
    ctx: &EvalContext,
    m: &RunManifest,
) -> Res<(Outcomes, Vec<SampleRecord>)> {
    if let Some(dir) = &a.baseline {
        run_dir::check_baseline(dir, m)?;
        let records = run_dir::read_samples(&dir.join("samples.jsonl"))?;
        let base = eval::outcomes_of(&records);
        let missing = missing_tasks(plan, &base);
        if let Some((s, ps)) = missing.iter().find(|(_, ps)| !ps.is_empty()) {
            return Err(format!("the baseline {} has no verdict for {} tasks of {s} (e.g. {}); finish it with `creme eval` first", dir.display(), ps.len(), ps[0].task_id).into());
        }
        return Ok((base, records));
    }
    let dir = a.out.join("baseline");
    run_dir::claim(&dir, m, &["samples.jsonl"])?;
    let (mut log, mut records) = SampleLog::open(&dir.join("samples.jsonl"))?;
    records.retain(|r| !r.is_judge_error());
    let t0 = Instant::now();
    for (s, missing) in missing_tasks(plan, &eval::outcomes_of(&records)) {
        if missing.is_empty() {
            continue;
        }
        eprintln!("baseline: {} {s} tasks", missing.len());
        evaluate(dev, model, &[(s, missing)].into(), ctx, "baseline", &mut |rec| {
            log.append(&rec)?;
            records.push(rec);
            Ok(())
        })?;
    }
    eprintln!("baseline ready ({:.0} s)", t0.elapsed().as_secs_f64());
    Ok((eval::outcomes_of(&records), records))
}

/// Per set, the loaded tasks `base` has no outcome for.
fn missing_tasks(plan: &Plan, base: &Outcomes) -> Vec<(SetName, Vec<Problem>)> {
    plan.all_sets
        .iter()
        .map(|s| {
            let have = base.get(s);
            let missing = plan.sets[s].iter().filter(|p| !have.is_some_and(|m| m.contains_key(&p.task_id))).cloned().collect();
            (*s, missing)
        })
        .collect()
}

/// One edit to make: the type and the clean and perturbed problems of an edit-worthy task.
struct Job {
    ptype: PerturbationType,
    clean: Problem,
    pert: Problem,
}

/// Edit-worthy tasks, in dataset order, this shard's share; and how many there are in all.
fn jobs(plan: &Plan, base: &Outcomes) -> Res<(Vec<Job>, usize)> {
    let mut jobs = Vec::new();
    for t in &plan.types {
        let set = SetName::Perturbed(*t);
        let worthy: HashSet<String> = experiment::edit_worthy(base, set).into_iter().collect();
        for p in plan.sets[&set].iter().filter(|p| worthy.contains(&p.task_id)) {
            let c = creme_core::dataset::find(&plan.sets[&SetName::Clean], &p.task_id)
                .ok_or("edit-worthy task without a clean problem")?;
            jobs.push(Job { ptype: *t, clean: c.clone(), pert: p.clone() });
        }
    }
    let total = jobs.len();
    let (shard, shards) = plan.shard;
    Ok((jobs.into_iter().enumerate().filter(|(i, _)| i % shards == shard).map(|(_, j)| j).collect(), total))
}

/// Locate, edit, evaluate and revert one job; its record.
#[allow(clippy::too_many_arguments)]
fn run_job(
    a: &ExperimentArgs,
    plan: &Plan,
    dev: &Device,
    model: &mut Model,
    job: &Job,
    base: &Outcomes,
    ctx: &EvalContext,
    label: &str,
) -> Res<EditRecord> {
    let t_all = Instant::now();
    let (clean, pert) = (model.tokenizer.encode(&job.clean.prompt)?, model.tokenizer.encode(&job.pert.prompt)?);
    let fixed = fixed_layer(&a.layer, job.ptype, &job.pert.task_id, model.cfg.n_layers, &plan.modes, &plan.given)?;
    let creme = CremeSettings { target_tokens: a.edit.target_tokens, layer: fixed, edit: plan.settings.clone() };
    let mut judge = SandboxJudge::for_pass_trace();
    let mut locator = if a.layer == LayerRule::Pass {
        TaskLocator::Pass(PassLocator { clean: (&job.clean.prompt, &job.clean), pert: (&job.pert.prompt, &job.pert), samples: 1, judge: &mut judge })
    } else {
        TaskLocator::Logprob(LogprobLocator { restored_at: plan.restored_at })
    };
    let meta = [("pair".to_string(), format!("{} {}", job.pert.task_id, job.ptype))].into();
    let mut bar = crate::progress::Reporter::new(label);
    let edit = pollster::block_on(locate_and_edit_with(dev, model, (&clean, &pert), &creme, &mut locator, meta, &mut |s| bar.step(s)))?;
    bar.finish();
    edit.patch.apply(dev, model)?;
    // Evaluate the edited model, then revert (also when the evaluation failed).
    let t_eval = Instant::now();
    let mut after = Vec::new();
    let evaluated = evaluate(dev, model, &eval_sets(&plan.sets, base, job.ptype, a.eval_scope), ctx, label, &mut |rec| {
        after.push(rec);
        Ok(())
    });
    creme_core::patch::revert(model, &edit.patch);
    evaluated?;
    let timing = (t_eval.elapsed().as_secs_f64(), t_all.elapsed().as_secs_f64());
    record(job, a, plan, &edit, base, &after, timing, dev)
}

fn print_edit(label: &str, rec: &EditRecord) {
    let own = rec.own();
    eprintln!(
        "{label}: layer {}, {} steps, loss {:.6}; edited task {}; {} fixed {} broke {}; clean {:+.3}; {:.0} s",
        rec.layer,
        rec.steps,
        rec.best_loss,
        if rec.edited_task_passes { "PASSES" } else { "still fails" },
        rec.ptype,
        own.fixed,
        own.broke,
        rec.clean.dev,
        rec.t_total
    );
}

/// The record of one evaluated edit.
#[allow(clippy::too_many_arguments)]
fn record(
    job: &Job,
    a: &ExperimentArgs,
    plan: &Plan,
    edit: &CremeEdit,
    base: &Outcomes,
    after_records: &[SampleRecord],
    (t_eval, t_total): (f64, f64),
    dev: &Device,
) -> Res<EditRecord> {
    let after = eval::outcomes_of(after_records);
    let own_set = SetName::Perturbed(job.ptype);
    let task = job.pert.task_id.as_str();
    let mut scores = BTreeMap::new();
    let mut local = None;
    for s in plan.all_sets.iter().filter(|s| !s.is_clean()) {
        let (score, l) = experiment::score_set(base, &after, *s, (*s == own_set).then_some(task))?;
        if *s == own_set {
            local = l;
        }
        scores.insert(*s, score);
    }
    let result = &edit.result;
    Ok(EditRecord {
        version: experiment::EDIT_RECORD_VERSION,
        ptype: job.ptype,
        task: task.to_string(),
        layer: edit.layer,
        layer_choice: a.layer.to_string(),
        trace_scores: edit.trace.as_ref().map(|tr| tr.scores.clone()),
        settings: plan.settings.clone(),
        steps: result.steps,
        loss_before: result.losses.first().map(|l| l.total),
        best_loss: result.best_loss,
        final_loss: result.losses.last().map(|l| l.total),
        l_rir: local,
        g_rir: scores.get(&own_set).and_then(|s| s.g_rir),
        edited_task_passes: after.get(&own_set).and_then(|m| m.get(task)).copied().unwrap_or(false),
        eval: scores,
        clean: experiment::score_clean(base, &after)?,
        eval_scope: scope_name(a.eval_scope).to_string(),
        tasks_per_set: after.get(&own_set).map(|m| m.len()).unwrap_or(0),
        drafts_whole: after_records.iter().filter(|r| r.draft.is_some_and(|d| d.whole)).count(),
        generated: after_records.len(),
        after,
        t_trace: edit.timings.target_s + edit.timings.trace_s,
        t_edit: edit.timings.capture_s + edit.timings.solve_s,
        t_eval,
        t_total,
        adapter: dev.describe(),
    })
}
