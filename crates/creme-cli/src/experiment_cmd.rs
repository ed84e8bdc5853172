//! `creme experiment`: the paper's protocol per perturbation type. A greedy baseline on the clean
//! set and on each type finds the edit-worthy tasks (clean passes, perturbed fails); for each one:
//! locate a layer, edit it from that one pair, evaluate the edited model on the type's tasks, on
//! the clean tasks (and on `--eval-types`), revert. One JSONL record per edit, appended when the
//! edit is evaluated: a killed run resumes after its last finished record; `--shard i/n` takes
//! every n-th edit so shards run on separate machines; `creme report` merges them.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use creme_core::dataset::Problem;
use creme_core::metrics;
use creme_core::model::Model;
use creme_core::model::Model as CoreModel;
use creme_core::pipeline::{locate_and_edit, CremeSettings, Locator, LogprobLocator};
use creme_core::trace::{LayerTrace, TraceSetup};
use creme_core::{Backend, Device, ModelError};
use serde_json::{json, Value};

use crate::common::{self, JsonlLog, Res};
use crate::eval_cmd::{self, GenSpec};
use crate::pass_metric::PassLocator;

/// The experiment's traced layer choices.
enum TaskLocator<'a> {
    Logprob(LogprobLocator),
    Pass(PassLocator<'a>),
}

impl Locator for TaskLocator<'_> {
    async fn locate(&mut self, dev: &Device, model: &CoreModel, setup: &TraceSetup) -> Result<LayerTrace, ModelError> {
        match self {
            TaskLocator::Logprob(l) => l.locate(dev, model, setup).await,
            TaskLocator::Pass(p) => p.locate(dev, model, setup).await,
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
    /// or mode:FILE (per type, the most frequent key layer of an earlier run's edits.jsonl)
    #[arg(long, default_value = "logprob")]
    pub layer: String,
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
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut counts: BTreeMap<String, BTreeMap<usize, usize>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("{}: {e}", path.display()))?;
        if let (Some(t), Some(l)) = (v["type"].as_str(), v["layer"].as_u64()) {
            *counts.entry(t.into()).or_default().entry(l as usize).or_default() += 1;
        }
    }
    Ok(counts.into_iter().filter_map(|(t, c)| Some((t, c.into_iter().max_by_key(|&(l, n)| (n, std::cmp::Reverse(l)))?.0))).collect())
}

/// Pass/fail per (set, task) under greedy decoding.
type Outcomes = BTreeMap<String, BTreeMap<String, bool>>;

fn outcomes_of(records: &[Value]) -> Outcomes {
    let mut o = Outcomes::new();
    for r in records.iter().filter(|r| !eval_cmd::is_infra_error(r)) {
        if let (Some(s), Some(t), Some(p)) = (r["set"].as_str(), r["task_id"].as_str(), r["passed"].as_bool()) {
            if r["sample"].as_u64().unwrap_or(0) == 0 {
                o.entry(s.into()).or_default().insert(t.into(), p);
            }
        }
    }
    o
}

/// Evaluate `sets` greedily with the model as it is now.
#[allow(clippy::too_many_arguments)]
fn evaluate(dev: &Device, model: &Model, sets: &BTreeMap<String, Vec<Problem>>, names: &[String], spec: &GenSpec, workers: usize, mut on_record: impl FnMut(Value) -> Res) -> Res {
    let lim = eval_cmd::limits(10);
    for set in names {
        let items: Vec<(&Problem, usize)> = sets[set].iter().map(|p| (p, 0)).collect();
        // A sample the sandbox could not run is no verdict: stop here (nothing of this edit is
        // recorded, so the same command redoes it) rather than count it as a failure.
        let mut checked = |rec: Value| if eval_cmd::is_infra_error(&rec) { Err(format!("{set} {}: the sandbox could not run the test program: {}", rec["task_id"], rec["stderr_tail"]).into()) } else { on_record(rec) };
        eval_cmd::run_set(dev, model, set, &items, spec, &lim, workers, &mut checked)?;
    }
    Ok(())
}

pub fn run(gpu_opts: &creme_core::GpuOptions, a: ExperimentArgs) -> Res {
    let settings = a.edit.settings()?;
    let restored_at = a.edit.restored_at()?;
    let (shard, shards) = parse_shard(&a.shard)?;
    let dir = common::dataset_dir(a.input.dataset.as_deref())?;
    let types: Vec<String> = eval_cmd::parse_types(&a.types)?.into_iter().filter(|t| t != "clean").collect();
    let extra: Vec<String> = match &a.eval_types {
        Some(t) => eval_cmd::parse_types(t)?.into_iter().filter(|t| t != "clean" && !types.contains(t)).collect(),
        None => Vec::new(),
    };
    let mut all_sets = vec!["clean".to_string()];
    all_sets.extend(types.iter().cloned());
    all_sets.extend(extra.iter().cloned());
    let sets = common::load_sets(&dir, &all_sets, a.input.tasks.as_deref(), a.input.limit)?;
    let fixed_modes = match a.layer.strip_prefix("mode:") {
        Some(f) => Some(layer_modes(Path::new(f))?),
        None => None,
    };
    std::fs::create_dir_all(&a.out).map_err(|e| format!("creating {}: {e}", a.out.display()))?;
    let spec = GenSpec { n: 1, temperature: 0.0, top_p: 1.0, max_tokens: a.gen.max_tokens, batch: a.gen.batch, drafts: None };
    let workers = a.workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));

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
        let missing: BTreeMap<String, Vec<Problem>> =
            [(s.clone(), sets[s].iter().filter(|p| !base.get(s).is_some_and(|m| m.contains_key(&p.task_id))).cloned().collect())].into();
        if missing[s].is_empty() {
            continue;
        }
        eprintln!("baseline: {} {} tasks", missing[s].len(), s);
        evaluate(&dev, &model, &missing, &[s.clone()], &spec, workers, |rec| {
            base_log.append(&rec)?;
            if let (Some(set), Some(task)) = (rec["set"].as_str(), rec["task_id"].as_str()) {
            base.entry(set.into()).or_default().insert(task.into(), rec["passed"] == true);
        }
            Ok(())
        })?;
    }
    eprintln!("baseline ready ({:.0} s)", t_base.elapsed().as_secs_f64());
    // The edited model's completions are verified against the baseline's (exact on the CPU
    // backend: see creme_core::draft).
    let drafts = eval_cmd::Drafts::from_records(&eval_cmd::read_records(&base_dir.join("samples.jsonl"))?, &model)?;
    let spec = GenSpec { drafts: Some(&drafts), ..spec };

    // Edit-worthy tasks, in dataset order, this shard's share.
    let mut jobs: Vec<(String, Problem, Problem)> = Vec::new();
    for t in &types {
        for p in &sets[t] {
            let clean_ok = base["clean"].get(&p.task_id).copied().unwrap_or(false);
            let pert_ok = base[t].get(&p.task_id).copied().unwrap_or(true);
            if clean_ok && !pert_ok {
                let c = creme_core::dataset::find(&sets["clean"], &p.task_id).ok_or("edit-worthy task without a clean problem")?;
                jobs.push((t.clone(), c.clone(), p.clone()));
            }
        }
    }
    let total = jobs.len();
    let jobs: Vec<_> = jobs.into_iter().enumerate().filter(|(i, _)| i % shards == shard).map(|(_, j)| j).collect();
    let log_name = if shards > 1 { format!("edits-shard-{shard}-of-{shards}.jsonl") } else { "edits.jsonl".to_string() };
    let (mut log, previous) = JsonlLog::open(&a.out.join(&log_name))?;
    let done: HashSet<(String, String)> = previous.iter().filter_map(|r| Some((r["type"].as_str()?.to_string(), r["task"].as_str()?.to_string()))).collect();
    eprintln!("{total} edit-worthy tasks over {} types; this shard: {}, already done: {}", types.len(), jobs.len(), done.len());

    for (k, (t, clean_p, pert_p)) in jobs.iter().enumerate() {
        if done.contains(&(t.clone(), pert_p.task_id.clone())) {
            continue;
        }
        let t_all = Instant::now();
        let tok = &model.tokenizer;
        let (clean, pert) = (tok.encode(&clean_p.prompt)?, tok.encode(&pert_p.prompt)?);
        // Layer: traced (logprob or pass metric), random, the mode of an earlier run, or fixed.
        let n_layers = model.cfg.n_layers;
        let fixed = match a.layer.as_str() {
            "logprob" | "pass" => None,
            "random" => {
                let seed = pert_p.task_id.bytes().fold(t.len() as u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
                Some(creme_core::cpu::SplitMix64(seed).below(n_layers as u64) as usize)
            }
            s if s.starts_with("mode:") => {
                let modes = fixed_modes.as_ref().ok_or_else(|| format!("{s}: no layers read"))?;
                Some(*modes.get(t).ok_or_else(|| format!("{s}: no edits of type {t} to take a layer from"))?)
            }
            s => {
                let l: usize = s.parse().map_err(|_| format!("--layer '{s}': logprob, pass, random, mode:FILE or a layer number"))?;
                if l >= n_layers {
                    return Err(format!("--layer {l}: the model has {n_layers} layers").into());
                }
                Some(l)
            }
        };
        let creme = CremeSettings { target_tokens: a.edit.target_tokens, layer: fixed, edit: settings.clone() };
        let mut locator = if a.layer == "pass" {
            TaskLocator::Pass(PassLocator { clean: (&clean_p.prompt, clean_p), pert: (&pert_p.prompt, pert_p), samples: 1 })
        } else {
            TaskLocator::Logprob(LogprobLocator { restored_at })
        };
        let meta = [("pair".to_string(), format!("{} {t}", pert_p.task_id))].into();
        let done = pollster::block_on(locate_and_edit(&dev, &model, &clean, &pert, &creme, &mut locator, meta))?;
        let (layer, result, trace_s) = (done.layer, &done.result, done.timings.target_s + done.timings.trace_s);
        let scores = done.trace.as_ref().map(|tr| json!(tr.scores)).unwrap_or(Value::Null);
        done.patch.apply(&dev, &mut model)?;
        // Evaluate the edited model, then revert.
        let t_eval = Instant::now();
        let mut after_records = Vec::new();
        let eval_sets: Vec<String> = all_sets.clone();
        let evaluated = evaluate(&dev, &model, &sets, &eval_sets, &spec, workers, |rec| {
            after_records.push(rec);
            Ok(())
        });
        creme_core::patch::revert(&mut model, &done.patch);
        evaluated?;
        let after = outcomes_of(&after_records);
        let rate = |b: bool| b as u8 as f64;
        // Per evaluated perturbed set: the RIR outcomes of its tasks.
        let mut per_set = serde_json::Map::new();
        let mut local = None;
        let mut general = None;
        for s in all_sets.iter().filter(|s| *s != "clean") {
            let outcomes: Vec<metrics::TaskOutcome> = sets[s]
                .iter()
                .map(|p| metrics::TaskOutcome { task_id: p.task_id.clone(), orig: rate(base["clean"][&p.task_id]), before: rate(base[s][&p.task_id]), after: rate(after[s][&p.task_id]) })
                .collect();
            let edited = if s == t { pert_p.task_id.as_str() } else { "" };
            let (l, g) = metrics::edit_rirs(edited, &outcomes);
            let fixed = outcomes.iter().filter(|o| o.after > o.before).count();
            let broke = outcomes.iter().filter(|o| o.after < o.before).count();
            let passes = outcomes.iter().filter(|o| o.after > 0.0).count();
            if s == t {
                local = l;
                general = g;
            }
            per_set.insert(s.clone(), json!({"g_rir": g, "fixed": fixed, "broke": broke, "passes_before": outcomes.iter().filter(|o| o.before > 0.0).count(), "passes_after": passes}));
        }
        let clean_before: Vec<f64> = sets["clean"].iter().map(|p| rate(base["clean"][&p.task_id])).collect();
        let clean_after: Vec<f64> = sets["clean"].iter().map(|p| rate(after["clean"][&p.task_id])).collect();
        let rec = json!({
            "type": t, "task": pert_p.task_id, "layer": layer, "layer_choice": a.layer, "trace_scores": scores,
            "settings": settings, "steps": result.steps, "best_loss": result.best_loss, "final_loss": result.losses.last().map(|l| l.total),
            "l_rir": local, "g_rir": general, "fixed": per_set[t]["fixed"], "broke": per_set[t]["broke"],
            "pert_before": per_set[t]["passes_before"], "pert_after": per_set[t]["passes_after"],
            "clean_dev": metrics::clean_deviation(&clean_before, &clean_after),
            "clean_before": clean_before.iter().sum::<f64>(), "clean_after": clean_after.iter().sum::<f64>(),
            "edited_task_passes": after[t][&pert_p.task_id],
            "eval": per_set, "after": after,
            "t_trace": trace_s, "t_edit": result.seconds, "t_eval": t_eval.elapsed().as_secs_f64(), "t_total": t_all.elapsed().as_secs_f64(),
            "tasks_per_set": sets["clean"].len(), "adapter": dev.describe(),
        });
        log.append(&rec)?;
        eprintln!(
            "[{}/{}] {t} {}: layer {layer}, {} steps, loss {:.6}; edited task {}; fixed {} broke {}; clean {:+.3}; {:.0} s",
            k + 1,
            jobs.len(),
            pert_p.task_id,
            result.steps,
            result.best_loss,
            if rec["edited_task_passes"] == true { "PASSES" } else { "still fails" },
            rec["fixed"],
            rec["broke"],
            rec["clean_dev"].as_f64().unwrap_or(0.0),
            t_all.elapsed().as_secs_f64()
        );
    }
    let r = crate::report_cmd::report(&[a.out.clone()])?;
    common::write(&a.out.join("report.md"), &r.markdown)?;
    common::write(&a.out.join("report.json"), &serde_json::to_string_pretty(&r.json)?)?;
    print!("{}", r.markdown);
    println!("records: {}\nreport: {}", a.out.join(&log_name).display(), a.out.join("report.md").display());
    Ok(())
}
