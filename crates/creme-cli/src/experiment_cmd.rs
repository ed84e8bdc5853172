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
use creme_core::experiment::{self, EditRecord, Outcomes};
use creme_core::model::Model;
use creme_core::model::Model as CoreModel;
use creme_core::pipeline::{
    locate_and_edit_with, CremeEdit, CremeSettings, Locator, LogprobLocator,
};
use creme_core::progress::Progress;
use creme_core::trace::{LayerTrace, TraceSetup};
use creme_core::{Backend, Device, ModelError};
use serde_json::Value;

use crate::common::{self, JsonlLog, Res};
use crate::eval_cmd::{self, GenSpec};
use crate::pass_metric::PassLocator;

/// The experiment's traced layer choices.
enum TaskLocator<'a> {
    Logprob(LogprobLocator),
    Pass(PassLocator<'a>),
}

impl Locator for TaskLocator<'_> {
    async fn locate(
        &mut self,
        dev: &Device,
        model: &CoreModel,
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
    pub layer: String,
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
fn layer_modes(path: &Path) -> Res<BTreeMap<String, usize>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut counts: BTreeMap<String, BTreeMap<usize, usize>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("{}: {e}", path.display()))?;
        if let (Some(t), Some(l)) = (v["type"].as_str(), v["layer"].as_u64()) {
            *counts
                .entry(t.into())
                .or_default()
                .entry(l as usize)
                .or_default() += 1;
        }
    }
    Ok(counts
        .into_iter()
        .filter_map(|(t, c)| {
            Some((
                t,
                c.into_iter()
                    .max_by_key(|&(l, n)| (n, std::cmp::Reverse(l)))?
                    .0,
            ))
        })
        .collect())
}

/// Pass/fail per (set, task) under greedy decoding, from sample records.
pub fn outcomes_of(records: &[Value]) -> Outcomes {
    let mut o = Outcomes::new();
    for r in records.iter().filter(|r| !eval_cmd::is_infra_error(r)) {
        if let (Some(s), Some(t), Some(p)) = (
            r["set"].as_str(),
            r["task_id"].as_str(),
            r["passed"].as_bool(),
        ) {
            if r["sample"].as_u64().unwrap_or(0) == 0 {
                o.entry(s.into()).or_default().insert(t.into(), p);
            }
        }
    }
    o
}

/// Evaluate `sets` greedily with the model as it is now; every record goes to `on_record`.
fn evaluate(
    dev: &Device,
    model: &Model,
    sets: &BTreeMap<String, Vec<Problem>>,
    spec: &GenSpec,
    workers: usize,
    label: &str,
    mut on_record: impl FnMut(Value) -> Res,
) -> Res {
    let lim = eval_cmd::limits(10);
    let mut bar = crate::progress::Reporter::new(label);
    for (set, problems) in sets {
        let items: Vec<(&Problem, usize)> = problems.iter().map(|p| (p, 0)).collect();
        let (mut done, mut passed) = (0, 0);
        // A sample the sandbox could not run is no verdict: stop here (nothing of this edit is
        // recorded, so the same command redoes it) rather than count it as a failure.
        let mut checked = |rec: Value| {
            if eval_cmd::is_infra_error(&rec) {
                return Err(format!(
                    "{set} {}: the sandbox could not run the test program: {}",
                    rec["task_id"], rec["stderr_tail"]
                )
                .into());
            }
            done += 1;
            passed += (rec["passed"] == true) as usize;
            bar.step(creme_core::progress::Step {
                stage: &format!("eval {set}"),
                done,
                total: items.len(),
                note: format!("{passed} passed"),
            });
            on_record(rec)
        };
        eval_cmd::run_set(dev, model, set, &items, spec, &lim, workers, &mut checked)?;
    }
    Ok(())
}

/// The tasks an edit of type `t` is evaluated on: every loaded task, or (edit-worthy scope) the
/// edit-worthy tasks of each evaluated type, with their clean prompts those of type `t`.
fn eval_sets(
    sets: &BTreeMap<String, Vec<Problem>>,
    base: &Outcomes,
    t: &str,
    scope: EvalScope,
) -> BTreeMap<String, Vec<Problem>> {
    match scope {
        EvalScope::All => sets.clone(),
        EvalScope::EditWorthy => sets
            .iter()
            .map(|(s, ps)| {
                let worthy: HashSet<String> =
                    experiment::edit_worthy(base, if s == "clean" { t } else { s })
                        .into_iter()
                        .collect();
                (
                    s.clone(),
                    ps.iter()
                        .filter(|p| worthy.contains(&p.task_id))
                        .cloned()
                        .collect(),
                )
            })
            .collect(),
    }
}

/// Per task, the layer an earlier run chose: an `edits.jsonl` (each record's layer, by type and
/// task) or a `creme calibrate-layer` calibration.json (each row's pass-metric layer).
fn layers_from(path: &Path) -> Res<HashMap<String, usize>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut out = HashMap::new();
    if path.extension().is_some_and(|e| e == "jsonl") {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let r: EditRecord =
                serde_json::from_str(line).map_err(|e| format!("{}: {e}", path.display()))?;
            out.insert(format!("{} {}", r.ptype, r.task), r.layer);
        }
    } else {
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let t = v["type"].as_str().unwrap_or("C3");
        for row in v["rows"]
            .as_array()
            .ok_or_else(|| format!("{}: no calibration rows", path.display()))?
        {
            if let (Some(task), Some(l)) = (row["task"].as_str(), row["pass_layer"].as_u64()) {
                out.insert(format!("{t} {task}"), l as usize);
            }
        }
    }
    Ok(out)
}

/// The layer to edit for one job, unless it is traced (logprob, pass).
fn fixed_layer(
    choice: &str,
    t: &str,
    task: &str,
    n_layers: usize,
    modes: &Option<BTreeMap<String, usize>>,
    given: &Option<HashMap<String, usize>>,
) -> Res<Option<usize>> {
    let l = match choice {
        "logprob" | "pass" => return Ok(None),
        "random" => {
            let seed = task.bytes().fold(t.len() as u64, |h, b| {
                h.wrapping_mul(31).wrapping_add(b as u64)
            });
            creme_core::cpu::SplitMix64(seed).below(n_layers as u64) as usize
        }
        s if s.starts_with("mode:") => *modes
            .as_ref()
            .and_then(|m| m.get(t))
            .ok_or_else(|| format!("{s}: no edits of type {t} to take a layer from"))?,
        s if s.starts_with("from:") => *given
            .as_ref()
            .and_then(|m| m.get(&format!("{t} {task}")))
            .ok_or_else(|| format!("{s}: no layer for {t} {task}"))?,
        s => s.parse().map_err(|_| {
            format!("--layer '{s}': logprob, pass, random, mode:FILE, from:FILE or a layer number")
        })?,
    };
    if l >= n_layers {
        return Err(format!("--layer {l}: the model has {n_layers} layers").into());
    }
    Ok(Some(l))
}

pub fn run(gpu_opts: &creme_core::GpuOptions, a: ExperimentArgs) -> Res {
    let settings = a.edit.settings()?;
    let restored_at = a.edit.restored_at()?;
    let (shard, shards) = parse_shard(&a.shard)?;
    let dir = common::dataset_dir(a.input.dataset.as_deref())?;
    let types: Vec<String> = eval_cmd::parse_types(&a.types)?
        .into_iter()
        .filter(|t| t != "clean")
        .collect();
    let extra: Vec<String> = match &a.eval_types {
        Some(t) => eval_cmd::parse_types(t)?
            .into_iter()
            .filter(|t| t != "clean" && !types.contains(t))
            .collect(),
        None => Vec::new(),
    };
    let mut all_sets = vec!["clean".to_string()];
    all_sets.extend(types.iter().cloned());
    all_sets.extend(extra.iter().cloned());
    let sets = common::load_sets(&dir, &all_sets, a.input.tasks.as_deref(), a.input.limit)?;
    let modes = a
        .layer
        .strip_prefix("mode:")
        .map(|f| layer_modes(Path::new(f)))
        .transpose()?;
    let given = a
        .layer
        .strip_prefix("from:")
        .map(|f| layers_from(Path::new(f)))
        .transpose()?;
    std::fs::create_dir_all(&a.out).map_err(|e| format!("creating {}: {e}", a.out.display()))?;
    common::record_command(&a.out)?;
    let spec = GenSpec {
        n: 1,
        temperature: 0.0,
        top_p: 1.0,
        max_tokens: a.gen.max_tokens,
        batch: a.gen.batch,
        drafts: None,
    };
    let workers = a.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });

    let dev = Device::open(gpu_opts)?;
    let model_path = common::model_path(a.input.model.as_deref());
    let mut model = common::load_model(&dev, Some(&model_path), 0)?;

    // Baseline: greedy outcomes of the unedited model on every set (resumable too).
    let base_dir = a.baseline.clone().unwrap_or_else(|| a.out.join("baseline"));
    std::fs::create_dir_all(&base_dir)?;
    let (mut base_log, base_records) = JsonlLog::open(&base_dir.join("samples.jsonl"))?;
    let mut base = outcomes_of(&base_records);
    let t_base = Instant::now();
    for s in &all_sets {
        let missing: Vec<Problem> = sets[s]
            .iter()
            .filter(|p| !base.get(s).is_some_and(|m| m.contains_key(&p.task_id)))
            .cloned()
            .collect();
        if missing.is_empty() {
            continue;
        }
        eprintln!("baseline: {} {} tasks", missing.len(), s);
        evaluate(
            &dev,
            &model,
            &[(s.clone(), missing)].into(),
            &spec,
            workers,
            "baseline",
            |rec| {
                base_log.append(&rec)?;
                if let (Some(set), Some(task), Some(p)) = (
                    rec["set"].as_str(),
                    rec["task_id"].as_str(),
                    rec["passed"].as_bool(),
                ) {
                    base.entry(set.into()).or_default().insert(task.into(), p);
                }
                Ok(())
            },
        )?;
    }
    eprintln!("baseline ready ({:.0} s)", t_base.elapsed().as_secs_f64());
    // The edited model's completions are verified against the baseline's (exact on the CPU
    // backend: see creme_core::draft).
    let drafts = eval_cmd::Drafts::from_records(
        &eval_cmd::read_records(&base_dir.join("samples.jsonl"))?,
        &model,
    )?;
    let spec = GenSpec {
        drafts: Some(&drafts),
        ..spec
    };

    // Edit-worthy tasks, in dataset order, this shard's share.
    let mut jobs: Vec<(String, Problem, Problem)> = Vec::new();
    for t in &types {
        let worthy: HashSet<String> = experiment::edit_worthy(&base, t).into_iter().collect();
        for p in sets[t].iter().filter(|p| worthy.contains(&p.task_id)) {
            let c = creme_core::dataset::find(&sets["clean"], &p.task_id)
                .ok_or("edit-worthy task without a clean problem")?;
            jobs.push((t.clone(), c.clone(), p.clone()));
        }
    }
    let total = jobs.len();
    let jobs: Vec<_> = jobs
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % shards == shard)
        .map(|(_, j)| j)
        .collect();
    let log_name = if shards > 1 {
        format!("edits-shard-{shard}-of-{shards}.jsonl")
    } else {
        "edits.jsonl".to_string()
    };
    let (mut log, previous) = JsonlLog::open(&a.out.join(&log_name))?;
    let mut done = HashSet::new();
    for r in previous {
        let r: EditRecord = serde_json::from_value(r).map_err(|e| {
            format!(
                "{}: a record of another version ({e}); use a new --out",
                a.out.join(&log_name).display()
            )
        })?;
        done.insert((r.ptype, r.task));
    }
    eprintln!(
        "{total} edit-worthy tasks over {} types; this shard: {}, already done: {}",
        types.len(),
        jobs.len(),
        done.len()
    );

    for (k, (t, clean_p, pert_p)) in jobs.iter().enumerate() {
        if done.contains(&(t.clone(), pert_p.task_id.clone())) {
            continue;
        }
        let t_all = Instant::now();
        let (clean, pert) = (
            model.tokenizer.encode(&clean_p.prompt)?,
            model.tokenizer.encode(&pert_p.prompt)?,
        );
        let fixed = fixed_layer(
            &a.layer,
            t,
            &pert_p.task_id,
            model.cfg.n_layers,
            &modes,
            &given,
        )?;
        let creme = CremeSettings {
            target_tokens: a.edit.target_tokens,
            layer: fixed,
            edit: settings.clone(),
        };
        let mut locator = if a.layer == "pass" {
            TaskLocator::Pass(PassLocator {
                clean: (&clean_p.prompt, clean_p),
                pert: (&pert_p.prompt, pert_p),
                samples: 1,
            })
        } else {
            TaskLocator::Logprob(LogprobLocator { restored_at })
        };
        let meta = [("pair".to_string(), format!("{} {t}", pert_p.task_id))].into();
        let mut bar = crate::progress::Reporter::new(&format!(
            "[{}/{}] {t} {}",
            k + 1,
            jobs.len(),
            pert_p.task_id
        ));
        let edit = pollster::block_on(locate_and_edit_with(
            &dev,
            &model,
            (&clean, &pert),
            &creme,
            &mut locator,
            meta,
            &mut |s| bar.step(s),
        ))?;
        bar.finish();
        edit.patch.apply(&dev, &mut model)?;
        // Evaluate the edited model, then revert (also when the evaluation failed).
        let t_eval = Instant::now();
        let mut after_records = Vec::new();
        let label = format!("[{}/{}] {t} {}", k + 1, jobs.len(), pert_p.task_id);
        let evaluated = evaluate(
            &dev,
            &model,
            &eval_sets(&sets, &base, t, a.eval_scope),
            &spec,
            workers,
            &label,
            |rec| {
                after_records.push(rec);
                Ok(())
            },
        );
        creme_core::patch::revert(&mut model, &edit.patch);
        evaluated?;
        let rec = record(
            t,
            &pert_p.task_id,
            &a,
            &edit,
            &base,
            &after_records,
            &all_sets,
            (
                t_eval.elapsed().as_secs_f64(),
                t_all.elapsed().as_secs_f64(),
            ),
            &dev,
        )?;
        log.append(&serde_json::to_value(&rec)?)?;
        let own = rec.own();
        eprintln!(
            "[{}/{}] {t} {}: layer {}, {} steps, loss {:.6}; edited task {}; {t} fixed {} broke {}; clean {:+.3}; {:.0} s",
            k + 1,
            jobs.len(),
            pert_p.task_id,
            rec.layer,
            rec.steps,
            rec.best_loss,
            if rec.edited_task_passes { "PASSES" } else { "still fails" },
            own.fixed,
            own.broke,
            rec.clean.dev,
            rec.t_total
        );
    }
    let r = crate::report_cmd::report(&[a.out.clone()])?;
    common::write(&a.out.join("report.md"), &r.markdown)?;
    common::write(
        &a.out.join("report.json"),
        &serde_json::to_string_pretty(&r.json)?,
    )?;
    print!("{}", r.markdown);
    println!(
        "records: {}\nreport: {}",
        a.out.join(&log_name).display(),
        a.out.join("report.md").display()
    );
    Ok(())
}

/// The record of one evaluated edit.
#[allow(clippy::too_many_arguments)]
fn record(
    t: &str,
    task: &str,
    a: &ExperimentArgs,
    edit: &CremeEdit,
    base: &Outcomes,
    after_records: &[Value],
    all_sets: &[String],
    (t_eval, t_total): (f64, f64),
    dev: &Device,
) -> Res<EditRecord> {
    let after = outcomes_of(after_records);
    let mut eval = BTreeMap::new();
    let mut local = None;
    for s in all_sets.iter().filter(|s| *s != "clean") {
        let (score, l) = experiment::score_set(base, &after, s, (s == t).then_some(task))?;
        if s == t {
            local = l;
        }
        eval.insert(s.clone(), score);
    }
    let result = &edit.result;
    Ok(EditRecord {
        ptype: t.to_string(),
        task: task.to_string(),
        layer: edit.layer,
        layer_choice: a.layer.clone(),
        trace_scores: edit.trace.as_ref().map(|tr| tr.scores.clone()),
        settings: a.edit.settings()?,
        steps: result.steps,
        loss_before: result.losses.first().map(|l| l.total),
        best_loss: result.best_loss,
        final_loss: result.losses.last().map(|l| l.total),
        l_rir: local,
        g_rir: eval.get(t).and_then(|s| s.g_rir),
        edited_task_passes: after
            .get(t)
            .and_then(|m| m.get(task))
            .copied()
            .unwrap_or(false),
        eval,
        clean: experiment::score_clean(base, &after)?,
        eval_scope: match a.eval_scope {
            EvalScope::All => "all",
            EvalScope::EditWorthy => "edit-worthy",
        }
        .to_string(),
        tasks_per_set: after.get(t).map(|m| m.len()).unwrap_or(0),
        drafts_whole: after_records
            .iter()
            .filter(|r| r["draft"]["whole"] == true)
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
