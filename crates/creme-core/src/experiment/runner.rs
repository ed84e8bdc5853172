//! The experiment runner: for each edit-worthy pair of a perturbation type, locate a layer, edit
//! it from that one pair, evaluate the edited model over a [`Judge`], revert, and score the edit
//! against the baseline. The caller keeps the records (resume, shards) and reads the files a
//! layer rule names; everything else is here, shared by the CLI and the page.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{edit_worthy, score_clean, score_set, EditRecord, Outcomes, EDIT_RECORD_VERSION};
use crate::backend::Device;
use crate::dataset::Problem;
use crate::edit::{Control, EditSettings};
use crate::error::ModelError;
use crate::eval::{self, Drafts, GenSpec, Judge, SampleRecord};
use crate::manifest::{self, FileDigest, RunKind, RunManifest};
use crate::model::Model;
use crate::pass_trace::PassLocator;
use crate::pipeline::{
    locate_and_edit_with, Clock, CremeEdit, CremeSettings, LayerRule, Locator, TraceLocator,
};
use crate::progress::{Progress, Step};
use crate::sets::{PerturbationType, SetName};
use crate::trace::{LayerTrace, TraceSetup};

/// Which tasks each edit is evaluated on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalScope {
    /// Every loaded task (the paper's fixed/broken and clean deviation over the whole set).
    All,
    /// Each evaluated type's edit-worthy tasks (enough for L-RIR and G-RIR).
    EditWorthy,
    /// The edit-worthy tasks, plus a fixed seeded sample of `sample` clean tasks and of
    /// `sample` of the edited type's perturbed tasks that pass unedited: the clean deviation and
    /// the broken count at a fraction of the whole set's cost (issue 37's development scope).
    Collateral { sample: usize },
}

impl EvalScope {
    /// The seed of the collateral sample; the same for every edit, so that every edit and
    /// control of a run is evaluated on the same tasks.
    pub const SAMPLE_SEED: u64 = 0x5a3b1e;
    /// The sample size of `--eval-scope collateral` unless given.
    pub const DEFAULT_SAMPLE: usize = 24;

    pub fn name(self) -> String {
        match self {
            EvalScope::All => "all".into(),
            EvalScope::EditWorthy => "edit-worthy".into(),
            EvalScope::Collateral { sample } => format!("collateral:{sample}"),
        }
    }
}

/// The first `n` of `tasks` that `keep` allows, in the collateral sample's seeded order.
fn collateral_sample(
    problems: &[Problem],
    n: usize,
    keep: impl Fn(&str) -> bool,
) -> HashSet<String> {
    let ids = problems
        .iter()
        .map(|p| p.task_id.as_str())
        .filter(|t| keep(t));
    super::split::seeded_order(EvalScope::SAMPLE_SEED, ids)
        .into_iter()
        .take(n)
        .map(str::to_string)
        .collect()
}

/// `--shard i/n`: take edit i of every n (None: the whole run, (0, 1)).
pub fn parse_shard(s: Option<&str>) -> Result<(usize, usize), String> {
    let Some(s) = s else { return Ok((0, 1)) };
    let (i, n) = s.split_once('/').ok_or("--shard takes i/n, e.g. 0/4")?;
    let num = |x: &str| x.parse::<usize>().map_err(|e| e.to_string());
    let (i, n) = (num(i)?, num(n)?);
    if n == 0 || i >= n {
        return Err(format!("--shard {s}: need 0 <= i < n"));
    }
    Ok((i, n))
}

/// The sets of an experiment: the perturbation types among `sets` (those edited for), and every
/// set evaluated: clean, those types, then the perturbed sets of `eval_sets` not yet among them
/// (the cross-type matrix).
pub fn experiment_sets(
    sets: Vec<SetName>,
    eval_sets: Option<Vec<SetName>>,
) -> Result<(Vec<PerturbationType>, Vec<SetName>), String> {
    let types: Vec<PerturbationType> = sets.into_iter().filter_map(SetName::perturbation).collect();
    if types.is_empty() {
        return Err("--types names no perturbation type to edit for".into());
    }
    let mut all_sets = vec![SetName::Clean];
    all_sets.extend(types.iter().map(|t| SetName::Perturbed(*t)));
    for s in eval_sets.unwrap_or_default() {
        if !s.is_clean() && !all_sets.contains(&s) {
            all_sets.push(s);
        }
    }
    Ok((types, all_sets))
}

/// Everything an experiment is decided by, as the caller loaded it.
pub struct ExperimentPlan {
    pub settings: EditSettings,
    pub target_tokens: usize,
    /// Extend the target past the clean/perturbed divergence (see [`CremeSettings`]).
    pub past_divergence: Option<usize>,
    /// Evaluate a control in place of each edit.
    pub control: Option<crate::edit::Control>,
    pub layer: LayerRule,
    /// Saturating key-layer rule of the logprob trace (None: the best restoration).
    pub restored_at: Option<f64>,
    /// Pairs of the same type fitted in one solve per edit (1: the paper's one pair); see
    /// [`Job::stacked`].
    pub pairs: usize,
    pub eval_scope: EvalScope,
    /// (i, n): take edit i of every n.
    pub shard: (usize, usize),
    pub types: Vec<PerturbationType>,
    /// clean, the edited types, the further evaluated types.
    pub all_sets: Vec<SetName>,
    pub sets: BTreeMap<SetName, Vec<Problem>>,
    /// Per type, the layer of a ModeOf rule; per (type, task), the layer of a From rule.
    pub modes: Option<BTreeMap<PerturbationType, usize>>,
    pub given: Option<HashMap<(PerturbationType, String), usize>>,
    /// Greedy generation budget of every evaluation.
    pub spec: GenSpec,
    /// The clean prompts the covariance solver's metric is measured on (that solver only).
    pub preserve: Option<crate::covariance::Store>,
}

/// The edits of a run: this shard's share, how many there are over all shards, and the pairs a
/// matched control had no other pair of the same type for (left out).
pub struct JobList {
    pub jobs: Vec<Job>,
    pub total: usize,
    pub unmatched: Vec<(PerturbationType, String)>,
}

/// One edit to make: the type and the clean and perturbed problems of an edit-worthy task.
pub struct Job {
    pub ptype: PerturbationType,
    pub clean: Problem,
    pub pert: Problem,
    /// The matched control's pair (clean, perturbed): the next edit-worthy task of the same
    /// type in dataset order, cyclically. None unless the plan's control is `Matched`.
    pub partner: Option<(Problem, Problem)>,
    /// With `pairs` = k > 1: the next k - 1 edit-worthy pairs of the type after the one the edit
    /// is made from, cyclically, never this job's own (fewer where the type has fewer). Fitted in
    /// the same solve and left out of this edit's scores of the type.
    pub stacked: Vec<(Problem, Problem)>,
}

impl ExperimentPlan {
    /// The experiment directory's manifest: its baseline's (`baseline`) with the plan added;
    /// `layer_source` is the hashed file of a mode:/from: rule, `restored_at` the flag as given.
    pub fn manifest(
        &self,
        baseline: &RunManifest,
        layer_source: Option<FileDigest>,
        restored_at: &str,
    ) -> RunManifest {
        let edited: Vec<SetName> = self.types.iter().map(|t| SetName::Perturbed(*t)).collect();
        // A file rule by its file's name; its content is `layer_source`.
        let layer = match self.layer.source_file() {
            Some(f) => {
                let name = std::path::Path::new(f)
                    .file_name()
                    .map_or(f.to_string(), |n| n.to_string_lossy().into_owned());
                self.layer.to_string().replace(f, &name)
            }
            None => self.layer.to_string(),
        };
        RunManifest {
            kind: RunKind::Experiment,
            experiment: Some(manifest::ExperimentPlan {
                edit: self.settings.clone(),
                target_tokens: self.target_tokens,
                layer,
                layer_source,
                restored_at: restored_at.to_string(),
                past_divergence: self.past_divergence,
                control: self.control,
                covariance: self.preserve.as_ref().map(|s| s.key().to_string()),
                pairs: self.pairs,
                eval_scope: self.eval_scope.name(),
                eval_types: self
                    .all_sets
                    .iter()
                    .filter(|s| !s.is_clean() && !edited.contains(s))
                    .copied()
                    .collect(),
                types: edited,
            }),
            ..baseline.clone()
        }
    }

    /// Per set, the loaded tasks `base` has no outcome for.
    pub fn missing_tasks(&self, base: &Outcomes) -> Vec<(SetName, Vec<Problem>)> {
        self.all_sets
            .iter()
            .map(|s| {
                let have = base.get(s);
                let missing = self.sets[s]
                    .iter()
                    .filter(|p| !have.is_some_and(|m| m.contains_key(&p.task_id)))
                    .cloned()
                    .collect();
                (*s, missing)
            })
            .collect()
    }

    /// An error naming a set of `base` (a baseline given whole, not computed here) that lacks
    /// an outcome for some loaded task: such a baseline must be finished first.
    pub fn require_complete(&self, base: &Outcomes, name: &str) -> Result<(), String> {
        match self.missing_tasks(base).into_iter().find(|(_, ps)| !ps.is_empty()) {
            None => Ok(()),
            Some((s, ps)) => Err(format!("the baseline {name} has no verdict for {} tasks of {s} (e.g. {}); finish it with `creme eval` first", ps.len(), ps[0].task_id)),
        }
    }

    /// What a resumed baseline still has to evaluate: judge errors are dropped from `records`
    /// (evaluated again, as the sandbox could not run them), then per set the tasks with no
    /// record, sets with none left out.
    pub fn baseline_todo(&self, records: &mut Vec<SampleRecord>) -> Vec<(SetName, Vec<Problem>)> {
        records.retain(|r| !r.is_judge_error());
        let mut todo = self.missing_tasks(&eval::outcomes_of(records));
        todo.retain(|(_, ps)| !ps.is_empty());
        todo
    }

    /// Edit-worthy tasks, in dataset order, this shard's share.
    pub fn jobs(&self, base: &Outcomes) -> Result<JobList, ModelError> {
        let mut jobs = Vec::new();
        for t in &self.types {
            let set = SetName::Perturbed(*t);
            let worthy: HashSet<String> = edit_worthy(base, set).into_iter().collect();
            for p in self.sets[&set]
                .iter()
                .filter(|p| worthy.contains(&p.task_id))
            {
                let c = crate::dataset::find(&self.sets[&SetName::Clean], &p.task_id).ok_or_else(
                    || {
                        ModelError::Format(format!(
                            "{}: edit-worthy without a clean problem",
                            p.task_id
                        ))
                    },
                )?;
                jobs.push(Job {
                    ptype: *t,
                    clean: c.clone(),
                    pert: p.clone(),
                    partner: None,
                    stacked: Vec::new(),
                });
            }
        }
        let unmatched = match self.control {
            Some(Control::Matched) => match_partners(&mut jobs),
            _ => Vec::new(),
        };
        stack_pairs(&mut jobs, self.pairs);
        let total = jobs.len();
        let (shard, shards) = self.shard;
        let mine = jobs
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % shards == shard)
            .map(|(_, j)| j);
        Ok(JobList {
            jobs: mine.collect(),
            total,
            unmatched,
        })
    }

    /// The tasks an edit of type `t` is evaluated on: every loaded task, or the edit-worthy
    /// tasks of each evaluated type (with their clean prompts those of type `t`), plus under
    /// the collateral scope the clean sample and the sample of `t`'s passing perturbed tasks.
    pub fn eval_sets(
        &self,
        base: &Outcomes,
        t: PerturbationType,
    ) -> BTreeMap<SetName, Vec<Problem>> {
        if self.eval_scope == EvalScope::All {
            return self.sets.clone();
        }
        let own = SetName::Perturbed(t);
        self.sets
            .iter()
            .map(|(s, ps)| {
                let of = if s.is_clean() { own } else { *s };
                let mut chosen: HashSet<String> = edit_worthy(base, of).into_iter().collect();
                if let EvalScope::Collateral { sample } = self.eval_scope {
                    let passes =
                        |task: &str| base.get(s).and_then(|m| m.get(task)).copied() == Some(true);
                    match s {
                        SetName::Clean => chosen.extend(collateral_sample(ps, sample, |_| true)),
                        _ if *s == own => chosen.extend(collateral_sample(ps, sample, passes)),
                        _ => {}
                    }
                }
                let kept = ps.iter().filter(|p| chosen.contains(&p.task_id));
                (*s, kept.cloned().collect())
            })
            .collect()
    }

    /// The layer to edit for one job, unless the rule traces (logprob, pass).
    pub fn fixed_layer(
        &self,
        t: PerturbationType,
        task: &str,
        n_layers: usize,
    ) -> Result<Option<usize>, ModelError> {
        let err = |m: String| ModelError::Format(m);
        let rule = &self.layer;
        let l = match rule {
            LayerRule::Logprob | LayerRule::Pass => return Ok(None),
            LayerRule::Random => {
                let seed = task.bytes().fold(t.name().len() as u64, |h, b| {
                    h.wrapping_mul(31).wrapping_add(b as u64)
                });
                crate::cpu::SplitMix64(seed).below(n_layers as u64) as usize
            }
            LayerRule::ModeOf(_) => {
                *self.modes.as_ref().and_then(|m| m.get(&t)).ok_or_else(|| {
                    err(format!(
                        "--layer {rule}: no edits of type {t} to take a layer from"
                    ))
                })?
            }
            LayerRule::From(_) => *self
                .given
                .as_ref()
                .and_then(|m| m.get(&(t, task.to_string())))
                .ok_or_else(|| err(format!("--layer {rule}: no layer for {t} {task}")))?,
            LayerRule::Fixed(l) => *l,
        };
        if l >= n_layers {
            return Err(err(format!("--layer {l}: the model has {n_layers} layers")));
        }
        Ok(Some(l))
    }
}

/// Each job's (clean, perturbed) pair, and per job the indices of the jobs of its type in order
/// with its own place among them: the ring matched partners and stacked pairs are taken from.
fn type_rings(jobs: &[Job]) -> (Vec<(Problem, Problem)>, Vec<(Vec<usize>, usize)>) {
    let pairs = jobs
        .iter()
        .map(|j| (j.clean.clone(), j.pert.clone()))
        .collect();
    let rings = (jobs.iter().enumerate())
        .map(|(i, job)| {
            let same: Vec<usize> = (0..jobs.len())
                .filter(|&k| jobs[k].ptype == job.ptype)
                .collect();
            let at = same.iter().position(|&k| k == i).expect("of its type");
            (same, at)
        })
        .collect();
    (pairs, rings)
}

/// Give every job the next job of its type (cyclically) as the matched control's pair. A type
/// with one edit-worthy task has no other pair to match: its job is dropped and returned, so
/// that the control run says which pairs it lacks instead of failing the whole run.
fn match_partners(jobs: &mut Vec<Job>) -> Vec<(PerturbationType, String)> {
    let (pairs, rings) = type_rings(jobs);
    for (job, (same, at)) in jobs.iter_mut().zip(rings) {
        if same.len() >= 2 {
            job.partner = Some(pairs[same[(at + 1) % same.len()]].clone());
        }
    }
    let (matched, alone): (Vec<Job>, Vec<Job>) = std::mem::take(jobs)
        .into_iter()
        .partition(|j| j.partner.is_some());
    *jobs = matched;
    alone
        .into_iter()
        .map(|j| (j.ptype, j.pert.task_id))
        .collect()
}

/// Give every job its [`Job::stacked`] pairs: the `k - 1` jobs of its type that follow the pair
/// its edit is made from (its partner's place for a matched control), cyclically, stopping
/// before its own.
fn stack_pairs(jobs: &mut [Job], k: usize) {
    let (pairs, rings) = type_rings(jobs);
    for (job, (same, at)) in jobs.iter_mut().zip(rings) {
        let own = same[at];
        let from = at + job.partner.is_some() as usize;
        job.stacked = (1..k)
            .map(|o| same[(from + o) % same.len()])
            .take_while(|&n| n != own)
            .map(|n| pairs[n].clone())
            .collect();
    }
}

/// Evaluate `sets` greedily with the model as it is now (drafts verified where given); every
/// record goes to `sink`. A sample the judge could not run is no verdict: the evaluation stops
/// with an error (nothing of it is kept by the caller, so the same run redoes it).
pub async fn evaluate<J: Judge>(
    dev: &Device,
    model: &Model,
    sets: &BTreeMap<SetName, Vec<Problem>>,
    spec: &GenSpec,
    drafts: Option<&Drafts>,
    judge: &mut J,
    progress: &mut Progress<'_>,
    sink: &mut eval::Sink<'_>,
) -> Result<(), ModelError> {
    for (set, problems) in sets {
        let items: Vec<(&Problem, usize)> = problems.iter().map(|p| (p, 0)).collect();
        let (mut done, mut passed) = (0, 0);
        let stage = format!("eval {set}");
        let mut checked = |rec: SampleRecord| {
            if rec.is_judge_error() {
                return Err(ModelError::Format(format!(
                    "{set} {}: the judge could not run the test program: {}",
                    rec.task_id, rec.stderr_tail
                )));
            }
            done += 1;
            passed += rec.passed as usize;
            progress(Step {
                stage: &stage,
                done,
                total: items.len(),
                note: format!("{passed} passed"),
            });
            sink(rec)
        };
        eval::run_set(dev, model, *set, &items, spec, drafts, judge, &mut checked).await?;
    }
    Ok(())
}

/// The baseline, resumed: the unedited model's greedy records of every task, from the finished
/// `records` (a killed run's) and the tasks they lack (see [`ExperimentPlan::baseline_todo`]),
/// evaluated set by set; each new record goes to `sink` (which appends it) before it is kept.
/// `on_set` hears each set begun with the number of its tasks to evaluate.
#[allow(clippy::too_many_arguments)]
pub async fn complete_baseline<J: Judge>(
    dev: &Device,
    model: &Model,
    plan: &ExperimentPlan,
    mut records: Vec<SampleRecord>,
    judge: &mut J,
    on_set: &mut dyn FnMut(SetName, usize),
    progress: &mut Progress<'_>,
    sink: &mut eval::Sink<'_>,
) -> Result<Vec<SampleRecord>, ModelError> {
    for (s, missing) in plan.baseline_todo(&mut records) {
        on_set(s, missing.len());
        let sets = [(s, missing)].into();
        let mut keep = |rec: SampleRecord| {
            sink(rec.clone())?;
            records.push(rec);
            Ok(())
        };
        evaluate(
            dev, model, &sets, &plan.spec, None, judge, progress, &mut keep,
        )
        .await?;
    }
    Ok(records)
}

/// The jobs still to run, with their labels (`[k/n] type task`, k of all `jobs`): those whose
/// type and task no record of `done` (a killed run's) has, in order.
pub fn pending<'a>(
    jobs: &'a [Job],
    done: &HashSet<(PerturbationType, String)>,
) -> Vec<(String, &'a Job)> {
    let n = jobs.len();
    let label = |k: usize, j: &Job| format!("[{}/{n}] {} {}", k + 1, j.ptype, j.pert.task_id);
    jobs.iter()
        .enumerate()
        .filter(|(_, j)| !done.contains(&(j.ptype, j.pert.task_id.clone())))
        .map(|(k, j)| (label(k, j), j))
        .collect()
}

/// The experiment's edits, resumed: each [`pending`] job, in order, by [`run_job`] (the model is
/// edited and reverted in place); its progress steps and its record go to `progress` and `sink`
/// (which appends it) with the job's label.
#[allow(clippy::too_many_arguments)]
pub async fn run_jobs<J: Judge>(
    dev: &Device,
    model: &mut Model,
    plan: &ExperimentPlan,
    (jobs, done): (&[Job], &HashSet<(PerturbationType, String)>),
    base: &Outcomes,
    drafts: Option<&Drafts>,
    judge: &mut J,
    progress: &mut dyn FnMut(&str, Step<'_>),
    sink: &mut dyn FnMut(&str, EditRecord) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let mut shams = ShamCache::default();
    for (label, job) in pending(jobs, done) {
        let mut step = |s: Step<'_>| progress(&label, s);
        let shams = &mut shams;
        let rec = run_job(dev, model, plan, job, base, drafts, judge, shams, &mut step).await?;
        sink(&label, rec)?;
    }
    Ok(())
}

/// The experiment's traced layer choices.
enum JobLocator<'a, J: Judge> {
    Logprob(TraceLocator),
    Pass(PassLocator<'a, J>),
}

impl<J: Judge> Locator for JobLocator<'_, J> {
    async fn locate(
        &mut self,
        dev: &Device,
        model: &Model,
        setup: &TraceSetup,
        progress: &mut Progress<'_>,
    ) -> Result<LayerTrace, ModelError> {
        match self {
            JobLocator::Logprob(l) => l.locate(dev, model, setup, progress).await,
            JobLocator::Pass(p) => p.locate(dev, model, setup, progress).await,
        }
    }
}

/// Locate, edit, evaluate and revert one job; its record. The model is back to its state before
/// the call whether the evaluation succeeded or not.
#[allow(clippy::too_many_arguments)]
pub async fn run_job<J: Judge>(
    dev: &Device,
    model: &mut Model,
    plan: &ExperimentPlan,
    job: &Job,
    base: &Outcomes,
    drafts: Option<&Drafts>,
    judge: &mut J,
    shams: &mut ShamCache,
    progress: &mut Progress<'_>,
) -> Result<EditRecord, ModelError> {
    let total = Clock::start();
    // The pair the edit is made from: this job's, or the matched control's partner.
    let (from_clean, from_pert) = match &job.partner {
        Some((c, p)) => (c, p),
        None => (&job.clean, &job.pert),
    };
    let sources =
        std::iter::once((from_clean, from_pert)).chain(job.stacked.iter().map(|(c, p)| (c, p)));
    let mut tokens = Vec::with_capacity(1 + job.stacked.len());
    for (c, p) in sources {
        let enc = |t: &str| model.tokenizer.encode(t);
        tokens.push((enc(&c.prompt)?, enc(&p.prompt)?));
    }
    let pairs: Vec<(&[u32], &[u32])> = tokens.iter().map(|(c, p)| (&c[..], &p[..])).collect();
    let creme = CremeSettings {
        target_tokens: plan.target_tokens,
        past_divergence: plan.past_divergence,
        control: plan.control,
        layer: plan.fixed_layer(job.ptype, &from_pert.task_id, model.cfg.n_layers)?,
        edit: plan.settings.clone(),
    };
    let meta = [(
        "pair".to_string(),
        format!("{} {}", job.pert.task_id, job.ptype),
    )]
    .into();
    let edit = {
        let mut locator = match plan.layer {
            LayerRule::Pass => JobLocator::Pass(PassLocator {
                clean: (&from_clean.prompt, from_clean),
                pert: (&from_pert.prompt, from_pert),
                samples: 1,
                judge: &mut *judge,
            }),
            _ => JobLocator::Logprob(TraceLocator::for_rows(plan.settings.rows, plan.restored_at)),
        };
        locate_and_edit_with(
            dev,
            model,
            &pairs,
            &creme,
            (&mut locator, plan.preserve.as_ref()),
            meta,
            progress,
        )
        .await?
    };
    let eval_clock = Clock::start();
    let sets = plan.eval_sets(base, job.ptype);
    let sham_key = (plan.control == Some(Control::Sham)).then_some((job.ptype, edit.layer));
    let after = match sham_key.and_then(|k| shams.0.get(&k)) {
        Some(records) => records.clone(),
        None => {
            let after = evaluate_patched(
                dev,
                model,
                &edit.patch,
                &sets,
                plan,
                drafts,
                judge,
                progress,
            )
            .await?;
            if let Some(k) = sham_key {
                shams.0.insert(k, after.clone());
            }
            after
        }
    };
    let timing = (eval_clock.lap(), total.lap());
    record(plan, job, &edit, base, &after, timing, dev).map_err(ModelError::Format)
}

/// The sham control's evaluations by (type, layer): a sham is W_down unchanged, so it depends
/// only on the layer (whose f32 path it takes) and on the tasks, which are the same for every
/// edit of a type; each is evaluated once per run.
#[derive(Default)]
pub struct ShamCache(HashMap<(PerturbationType, usize), Vec<SampleRecord>>);

/// Apply `patch`, evaluate `sets`, revert: the model is back to its state before the call
/// whether the evaluation succeeded or not.
#[allow(clippy::too_many_arguments)]
async fn evaluate_patched<J: Judge>(
    dev: &Device,
    model: &mut Model,
    patch: &crate::patch::EditPatch,
    sets: &BTreeMap<SetName, Vec<Problem>>,
    plan: &ExperimentPlan,
    drafts: Option<&Drafts>,
    judge: &mut J,
    progress: &mut Progress<'_>,
) -> Result<Vec<SampleRecord>, ModelError> {
    patch.apply(dev, model)?;
    // Verification resumes at the edited layer where the patch is the model's only edit: the
    // layers below it are the file's for every edit of the run.
    let resume = drafts.filter(|_| model.edited_layers() == [patch.layer]);
    if let Some(d) = resume {
        d.resume_at(Some(patch.layer));
    }
    let mut after = Vec::new();
    let evaluated = evaluate(
        dev,
        model,
        sets,
        &plan.spec,
        drafts,
        judge,
        progress,
        &mut |rec| {
            after.push(rec);
            Ok(())
        },
    )
    .await;
    crate::patch::revert(model, patch);
    if let Some(d) = resume {
        d.resume_at(None);
    }
    evaluated.map(|()| after)
}

/// The record of one evaluated edit.
fn record(
    plan: &ExperimentPlan,
    job: &Job,
    edit: &CremeEdit,
    base: &Outcomes,
    after_records: &[SampleRecord],
    (t_eval, t_total): (f64, f64),
    dev: &Device,
) -> Result<EditRecord, String> {
    use crate::backend::Backend;
    let after = eval::outcomes_of(after_records);
    let own_set = SetName::Perturbed(job.ptype);
    let task = job.pert.task_id.as_str();
    let stacked: Vec<String> = job.stacked.iter().map(|(_, p)| p.task_id.clone()).collect();
    // Every pair the edit was fitted on but this one's own is its training data, left out of
    // its scores of the type: a matched control's partner, and the stacked pairs.
    let partner = job.partner.as_ref().map(|(_, p)| p.task_id.clone());
    let fitted_on: Vec<String> = partner.into_iter().chain(stacked.iter().cloned()).collect();
    let mut scores = BTreeMap::new();
    let mut local = None;
    for s in plan.all_sets.iter().filter(|s| !s.is_clean()) {
        let own = *s == own_set;
        let left_out = if own { &fitted_on[..] } else { &[] };
        let (score, l) = score_set(base, &after, *s, (own.then_some(task), left_out))?;
        if *s == own_set {
            local = l;
        }
        scores.insert(*s, score);
    }
    let result = &edit.result;
    Ok(EditRecord {
        version: EDIT_RECORD_VERSION,
        ptype: job.ptype,
        task: task.to_string(),
        layer: edit.layer,
        layer_choice: plan.layer.to_string(),
        control: plan.control,
        edited_from: job.partner.as_ref().map(|(_, p)| p.task_id.clone()),
        stacked_with: stacked,
        prompt_digest: Some(format!("{:016x}", super::split::fnv1a(&job.pert.prompt))),
        trace_scores: edit.trace.as_ref().map(|tr| tr.scores.clone()),
        trace_too_close: edit.trace.as_ref().and_then(|tr| tr.too_close),
        settings: plan.settings.clone(),
        steps: result.steps,
        loss_before: result.losses.first().map(|l| l.total),
        best_loss: result.best_loss,
        final_loss: result.losses.last().map(|l| l.total),
        l_rir: local,
        g_rir: scores.get(&own_set).and_then(|s| s.g_rir),
        edited_task_passes: after
            .get(&own_set)
            .and_then(|m| m.get(task))
            .copied()
            .unwrap_or(false),
        eval: scores,
        clean: score_clean(base, &after)?,
        eval_scope: plan.eval_scope.name(),
        tasks_per_set: after.get(&own_set).map(|m| m.len()).unwrap_or(0),
        drafts_whole: after_records
            .iter()
            .filter(|r| r.draft.is_some_and(|d| d.whole))
            .count(),
        generated: after_records.len(),
        after,
        t_trace: edit.timings.target_s + edit.timings.trace_s,
        t_edit: edit.timings.capture_s + edit.timings.solve_s,
        t_eval,
        t_total,
        adapter: dev.describe(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_as_i_of_n() {
        assert_eq!(parse_shard(None), Ok((0, 1)));
        assert_eq!(parse_shard(Some("1/4")), Ok((1, 4)));
        for bad in ["4/4", "0/0", "1", "a/2"] {
            assert!(parse_shard(Some(bad)).is_err(), "{bad}");
        }
    }

    fn job(t: PerturbationType, task: &str) -> Job {
        let p = Problem {
            task_id: task.into(),
            prompt: format!("{task} prompt"),
            entry_point: "f".into(),
            test: String::new(),
            original_prompt: None,
        };
        Job {
            ptype: t,
            clean: p.clone(),
            pert: p,
            partner: None,
            stacked: Vec::new(),
        }
    }

    #[test]
    fn pending_jobs_keep_their_place_in_the_labels_and_skip_finished_ones() {
        use PerturbationType::{C3, E1};
        let jobs = vec![job(C3, "a"), job(E1, "a"), job(C3, "b")];
        let done = [(C3, "a".to_string())].into();
        let labels: Vec<String> = pending(&jobs, &done).into_iter().map(|(l, _)| l).collect();
        assert_eq!(labels, vec!["[2/3] E1 a", "[3/3] C3 b"]);
    }

    #[test]
    fn matched_partners_are_the_next_task_of_the_same_type_cyclically() {
        use PerturbationType::{C3, E1};
        let mut jobs = vec![
            job(C3, "a"),
            job(E1, "x"),
            job(C3, "b"),
            job(E1, "y"),
            job(C3, "c"),
        ];
        assert!(match_partners(&mut jobs).is_empty());
        let partner = |i: usize| jobs[i].partner.as_ref().unwrap().1.task_id.clone();
        assert_eq!(
            (0..5).map(partner).collect::<Vec<_>>(),
            vec!["b", "y", "c", "x", "a"]
        );
        let mut alone = vec![job(C3, "a"), job(E1, "x"), job(E1, "y")];
        let dropped = match_partners(&mut alone);
        assert_eq!(dropped, vec![(C3, "a".to_string())]);
        let kept: Vec<&str> = alone.iter().map(|j| j.pert.task_id.as_str()).collect();
        assert_eq!(kept, vec!["x", "y"]);
    }

    #[test]
    fn stacked_pairs_follow_the_source_pair_in_its_type_and_never_hold_the_job_itself() {
        use PerturbationType::{C3, E1};
        let fresh = || {
            vec![
                job(C3, "a"),
                job(E1, "x"),
                job(C3, "b"),
                job(C3, "c"),
                job(E1, "y"),
            ]
        };
        let stacked = |jobs: &[Job]| -> Vec<Vec<String>> {
            jobs.iter()
                .map(|j| j.stacked.iter().map(|(_, p)| p.task_id.clone()).collect())
                .collect()
        };
        let mut jobs = fresh();
        stack_pairs(&mut jobs, 1);
        assert!(stacked(&jobs).iter().all(|s| s.is_empty()), "k = 1: none");
        stack_pairs(&mut jobs, 3);
        let want = [
            vec!["b", "c"],
            vec!["y"],
            vec!["c", "a"],
            vec!["a", "b"],
            vec!["x"],
        ];
        assert_eq!(
            stacked(&jobs),
            want.map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        );
        // A matched control's edit starts at its partner: the next pairs follow the partner.
        let mut matched = fresh();
        match_partners(&mut matched);
        stack_pairs(&mut matched, 2);
        // x's partner is y, and the pair after y is x itself: nothing to stack.
        let want: [&[&str]; 5] = [&["c"], &[], &["a"], &["b"], &[]];
        assert_eq!(
            stacked(&matched),
            want.map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        );
    }

    /// Ten tasks; clean passes on 0..=7; C3 fails on 0..=2 (edit-worthy) and passes on 3..=7.
    fn collateral_plan(sample: usize) -> (ExperimentPlan, Outcomes) {
        use PerturbationType::C3;
        let tasks: Vec<Problem> = (0..10).map(|i| job(C3, &format!("T/{i}")).pert).collect();
        let (clean, c3) = (SetName::Clean, SetName::Perturbed(C3));
        let mut base = Outcomes::new();
        for p in &tasks {
            let i: usize = p.task_id[2..].parse().unwrap();
            base.entry(clean)
                .or_default()
                .insert(p.task_id.clone(), i <= 7);
            base.entry(c3)
                .or_default()
                .insert(p.task_id.clone(), (3..=7).contains(&i));
        }
        let plan = ExperimentPlan {
            settings: EditSettings::default(),
            target_tokens: 8,
            past_divergence: None,
            control: None,
            layer: LayerRule::Logprob,
            restored_at: None,
            pairs: 1,
            eval_scope: EvalScope::Collateral { sample },
            shard: (0, 1),
            types: vec![C3],
            all_sets: vec![clean, c3],
            sets: [(clean, tasks.clone()), (c3, tasks)].into(),
            modes: None,
            given: None,
            spec: GenSpec::default(),
            preserve: None,
        };
        (plan, base)
    }

    fn record(set: SetName, task: &str, verdict: eval::Verdict) -> SampleRecord {
        let j = eval::Judgement {
            verdict,
            // An error of the judge, not of the program (which a retry may settle).
            error_kind: match verdict {
                eval::Verdict::Error => eval::JUDGE_ERROR_KIND.to_string(),
                _ => String::new(),
            },
            exit_code: None,
            seconds: 0.0,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
        };
        SampleRecord::judged(set, task, 0, "", "stop", &j)
    }

    #[test]
    fn a_resumed_baseline_evaluates_the_tasks_lacking_a_verdict_judge_errors_included() {
        use eval::Verdict::{Error, Fail, Pass};
        let (plan, _) = collateral_plan(3);
        let c3 = SetName::Perturbed(PerturbationType::C3);
        let mut records: Vec<SampleRecord> = (0..10)
            .map(|i| record(SetName::Clean, &format!("T/{i}"), Pass))
            .collect();
        records.push(record(c3, "T/0", Fail));
        records.push(record(c3, "T/1", Error));
        let todo = plan.baseline_todo(&mut records);
        // Clean is complete, so only C3 is left, without T/0 (a verdict) but with T/1.
        assert_eq!(todo.len(), 1);
        assert_eq!(todo[0].0, c3);
        let ids: Vec<&str> = todo[0].1.iter().map(|p| p.task_id.as_str()).collect();
        assert_eq!(ids, (1..10).map(|i| format!("T/{i}")).collect::<Vec<_>>());
        assert_eq!(records.len(), 11);
        let e = plan.require_complete(&eval::outcomes_of(&records), "B");
        assert!(e.unwrap_err().contains("9 tasks of C3 (e.g. T/1)"));
        records.extend((1..10).map(|i| record(c3, &format!("T/{i}"), Pass)));
        assert!(plan.baseline_todo(&mut records).is_empty());
        assert!(plan
            .require_complete(&eval::outcomes_of(&records), "B")
            .is_ok());
    }

    #[test]
    fn an_experiment_evaluates_clean_its_types_and_the_other_sets_once() {
        use PerturbationType::{C3, E1, S2};
        let (c3, e1, s2) = (
            SetName::Perturbed(C3),
            SetName::Perturbed(E1),
            SetName::Perturbed(S2),
        );
        let (types, all) = experiment_sets(
            vec![SetName::Clean, c3],
            Some(vec![SetName::Clean, e1, c3, s2]),
        )
        .unwrap();
        assert_eq!(types, vec![C3]);
        assert_eq!(all, vec![SetName::Clean, c3, e1, s2]);
        assert!(experiment_sets(vec![SetName::Clean], None).is_err());
    }

    #[test]
    fn the_collateral_scope_adds_a_fixed_sample_of_clean_and_passing_perturbed_tasks() {
        let ids = |sets: &BTreeMap<SetName, Vec<Problem>>, s: SetName| -> Vec<String> {
            sets[&s].iter().map(|p| p.task_id.clone()).collect()
        };
        let c3 = SetName::Perturbed(PerturbationType::C3);
        let (plan, base) = collateral_plan(3);
        let sets = plan.eval_sets(&base, PerturbationType::C3);
        let (clean, pert) = (ids(&sets, SetName::Clean), ids(&sets, c3));
        for t in ["T/0", "T/1", "T/2"] {
            assert!(
                clean.contains(&t.to_string()) && pert.contains(&t.to_string()),
                "{t}"
            );
        }
        // Three more of each at most (a sampled task may be edit-worthy already); the
        // perturbed sample only from tasks that pass unedited (T/3..=T/7).
        assert!(
            (3..=6).contains(&clean.len()) && pert.len() == 6,
            "{clean:?} {pert:?}"
        );
        assert!(pert.iter().all(
            |t| ["T/0", "T/1", "T/2", "T/3", "T/4", "T/5", "T/6", "T/7"].contains(&t.as_str())
        ));
        // The same sample for every edit and a larger sample contains the smaller one.
        let again = plan.eval_sets(&base, PerturbationType::C3);
        assert_eq!(
            (ids(&again, SetName::Clean), ids(&again, c3)),
            (clean.clone(), pert.clone())
        );
        let (big, base) = collateral_plan(5);
        let bigger = big.eval_sets(&base, PerturbationType::C3);
        assert!(clean
            .iter()
            .all(|t| ids(&bigger, SetName::Clean).contains(t)));
        assert_eq!(EvalScope::Collateral { sample: 3 }.name(), "collateral:3");
    }
}
