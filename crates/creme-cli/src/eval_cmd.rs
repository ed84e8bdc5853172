//! `creme eval`: generate completions for clean and perturbed sets, run each against its tests in
//! the sandbox, and summarise (pass@k, ReCode's robustness numbers, flips against clean).
//!
//! Every sample is one JSONL record in `OUT/samples.jsonl`, appended as soon as it is tested, so a
//! killed run resumes where it stopped. `--completions FILE` scores completions made elsewhere
//! (e.g. the oracle's) without a model.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use creme_core::dataset::Problem;
use creme_core::draft::{generate_from_drafts, Draft};
use creme_core::generate::{generate, humaneval_stops, GenerateOptions};
use creme_core::metrics;
use creme_core::model::Model;
use creme_core::{Backend, Device};
use serde_json::{json, Value};

use crate::common::{self, JsonlLog, Res};
use crate::sandbox::{run_many, Limits, RunResult, Verdict};

#[derive(clap::Args, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub input: common::InputFlags,
    /// Sets to run: clean, perturbation types (C3,E1,...), or all (= clean + the 20 types)
    #[arg(long, default_value = "clean")]
    pub types: String,
    /// Samples per task (1 = greedy)
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Sampling temperature when n > 1
    #[arg(long, default_value_t = 0.2)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[command(flatten)]
    pub gen: common::GenFlags,
    /// Apply CREME patches before generating (repeatable)
    #[arg(long)]
    pub patch: Vec<PathBuf>,
    /// Drafts: an earlier greedy `eval` (its OUT dir) of the unedited model, or a completions file
    /// as for --completions; each is verified in one forward, decoding only past the first token
    /// where this model's greedy choice differs (exact on the CPU backend, which is
    /// batch-invariant; elsewhere ignored)
    /// (repeatable)
    #[arg(long)]
    pub baseline: Vec<PathBuf>,
    /// Score these completions instead of generating: JSON {set: [completion per task, dataset
    /// order]} (the oracle's format) or JSONL records {set, task_id, completion[, sample]}; every
    /// sample given is scored (--n does not apply)
    #[arg(long)]
    pub completions: Option<PathBuf>,
    /// Parallel test processes (default: the number of cores)
    #[arg(long)]
    pub workers: Option<usize>,
    /// Wall-time limit per test program, seconds
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Output directory (samples.jsonl, summary.md, summary.json)
    #[arg(long)]
    pub out: PathBuf,
}

/// The sets named by --types.
pub fn parse_types(spec: &str) -> Res<Vec<String>> {
    let mut out = Vec::new();
    for t in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if t == "all" {
            out.push("clean".to_string());
            out.extend(
                creme_core::dataset::PERTURBATION_TYPES
                    .iter()
                    .map(|s| s.to_string()),
            );
        } else if t == "clean" || creme_core::dataset::PERTURBATION_TYPES.contains(&t) {
            out.push(t.to_string());
        } else {
            return Err(format!(
                "unknown set '{t}' in --types (clean, all, or one of {})",
                creme_core::dataset::PERTURBATION_TYPES.join(", ")
            )
            .into());
        }
    }
    out.dedup();
    if out.is_empty() {
        return Err("--types names no set".into());
    }
    Ok(out)
}

/// One tested sample, as written to samples.jsonl.
pub fn sample_record(
    set: &str,
    p: &Problem,
    sample: usize,
    completion: &str,
    finish: &str,
    r: &RunResult,
) -> Value {
    json!({
        "set": set, "task_id": p.task_id, "sample": sample, "completion": completion, "finish": finish,
        "passed": r.verdict == Verdict::Pass, "verdict": r.verdict, "error_kind": r.error_kind,
        "exit_code": r.exit_code, "seconds": r.seconds, "stderr_tail": r.stderr_tail, "stdout_tail": r.stdout_tail,
    })
}

pub fn limits(timeout: u64) -> Limits {
    Limits {
        wall: std::time::Duration::from_secs(timeout),
        cpu_seconds: timeout,
        ..Limits::default()
    }
}

/// Progress of one set: samples done, passes so far (the reporter shows the ETA).
struct Progress {
    bar: crate::progress::Reporter,
    total: usize,
    done: usize,
    passed: usize,
}

impl Progress {
    fn new(set: &str, total: usize) -> Progress {
        Progress {
            bar: crate::progress::Reporter::new(&format!("[{set}]")),
            total,
            done: 0,
            passed: 0,
        }
    }
    fn tick(&mut self, n: usize, passed: usize) {
        self.done += n;
        self.passed += passed;
        self.bar.step(creme_core::progress::Step {
            stage: "samples",
            done: self.done,
            total: self.total,
            note: format!("{} passed", self.passed),
        });
        if self.done == self.total {
            self.bar.finish();
        }
    }
}

/// Completions given on the command line: (set, task_id, sample) -> text.
fn read_completions(
    path: &Path,
    sets: &BTreeMap<String, Vec<Problem>>,
) -> Res<HashMap<(String, String, usize), String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut out = HashMap::new();
    // By content: one JSON object of lists is the {set: [...]} form; anything else is JSONL (a
    // one-record JSONL file is also a single object, but of strings).
    let set_map = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) if !map.is_empty() && map.values().all(Value::is_array) => Some(map),
        _ => None,
    };
    if let Some(map) = set_map {
        for (set, list) in map {
            let Some(problems) = sets.get(&set) else {
                continue;
            };
            let list = list
                .as_array()
                .ok_or_else(|| format!("{}: '{set}' is not a list", path.display()))?;
            if list.len() != problems.len() {
                return Err(format!(
                    "{}: '{set}' has {} completions for {} tasks",
                    path.display(),
                    list.len(),
                    problems.len()
                )
                .into());
            }
            for (p, c) in problems.iter().zip(list) {
                out.insert(
                    (set.clone(), p.task_id.clone(), 0),
                    c.as_str()
                        .ok_or_else(|| {
                            format!("{}: non-string completion in '{set}'", path.display())
                        })?
                        .to_string(),
                );
            }
        }
        return Ok(out);
    }
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |w: &str| format!("{}:{}: {w}", path.display(), i + 1);
        let v: Value =
            serde_json::from_str(line).map_err(|e| bad(&format!("not valid JSON ({e})")))?;
        let get = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(String::from)
                .ok_or_else(|| bad(&format!("missing string field '{k}'")))
        };
        let sample = v.get("sample").and_then(|x| x.as_u64()).unwrap_or(0) as usize;
        out.insert((get("set")?, get("task_id")?, sample), get("completion")?);
    }
    Ok(out)
}

pub fn run(gpu_opts: &creme_core::GpuOptions, a: EvalArgs) -> Res {
    let dir = common::dataset_dir(a.input.dataset.as_deref())?;
    let types = parse_types(&a.types)?;
    let sets = common::load_sets(&dir, &types, a.input.tasks.as_deref(), a.input.limit)?;
    // Completions given per set as one list are in the order of the whole set.
    let whole_sets = if a.input.tasks.is_some() || a.input.limit.is_some() {
        common::load_sets(&dir, &types, None, None)?
    } else {
        sets.clone()
    };
    std::fs::create_dir_all(&a.out).map_err(|e| format!("creating {}: {e}", a.out.display()))?;
    common::record_command(&a.out)?;
    let settings = json!({
        "dataset": dir, "types": types, "n": a.n, "temperature": if a.n > 1 { a.temperature } else { 0.0 }, "top_p": a.top_p,
        "max_tokens": a.gen.max_tokens, "patches": a.patch, "completions": a.completions, "timeout_s": a.timeout,
        "model": if a.completions.is_some() { Value::Null } else { json!(common::model_path(a.input.model.as_deref())) },
    });
    let settings_path = a.out.join("settings.json");
    if let Ok(old) = std::fs::read_to_string(&settings_path) {
        let old: Value = serde_json::from_str(&old)?;
        let keys = [
            "n",
            "temperature",
            "top_p",
            "max_tokens",
            "patches",
            "model",
            "completions",
        ];
        if keys.iter().any(|k| old.get(k) != settings.get(k)) {
            return Err(format!(
                "{} holds a run with other settings; use another --out",
                a.out.display()
            )
            .into());
        }
    }
    common::write(&settings_path, &serde_json::to_string_pretty(&settings)?)?;
    let (mut log, previous) = JsonlLog::open(&a.out.join("samples.jsonl"))?;
    let key = |v: &Value| -> Option<(String, String, usize)> {
        Some((
            v["set"].as_str()?.to_string(),
            v["task_id"].as_str()?.to_string(),
            v["sample"].as_u64()? as usize,
        ))
    };
    let workers = a.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let lim = limits(a.timeout);
    // Sandbox errors are not verdicts: their programs run again now.
    let (mut records, retry) = split_infra_errors(previous);
    for rec in retry_infra_errors(&retry, &sets, &lim, workers)? {
        log.append(&rec)?;
        records.push(rec);
    }
    let done: std::collections::HashSet<_> = records.iter().filter_map(key).collect();
    if !done.is_empty() {
        eprintln!(
            "resuming: {} samples already in {}",
            done.len(),
            a.out.join("samples.jsonl").display()
        );
    }

    if let Some(path) = &a.completions {
        let given = read_completions(path, &whole_sets)?;
        if !sets.keys().any(|set| given.keys().any(|k| &k.0 == set)) {
            return Err(format!(
                "{} holds no completion for the sets asked for ({})",
                path.display(),
                types.join(", ")
            )
            .into());
        }
        for set in sets.keys() {
            if !given.keys().any(|k| &k.0 == set) {
                eprintln!(
                    "warning: {} holds no completions for set '{set}'",
                    path.display()
                );
            }
        }
        for (set, problems) in &sets {
            // Every sample given for a task, in sample order (JSONL records may hold several).
            let mut samples: Vec<usize> =
                given.keys().filter(|k| &k.0 == set).map(|k| k.2).collect();
            samples.sort_unstable();
            samples.dedup();
            let todo: Vec<(&Problem, usize, &String)> = problems
                .iter()
                .flat_map(|p| samples.iter().map(move |&s| (p, s)))
                .filter(|(p, s)| !done.contains(&(set.clone(), p.task_id.clone(), *s)))
                .filter_map(|(p, s)| {
                    given
                        .get(&(set.clone(), p.task_id.clone(), s))
                        .map(|c| (p, s, c))
                })
                .collect();
            if todo.is_empty() {
                continue;
            }
            let mut prog = Progress::new(set, todo.len());
            for chunk in todo.chunks(64) {
                let programs: Vec<_> = chunk
                    .iter()
                    .map(|(p, _, c)| p.program(&p.prompt, c))
                    .collect();
                let results = run_many(&programs, &lim, workers);
                for ((p, sample, c), r) in chunk.iter().zip(&results) {
                    let rec = sample_record(set, p, *sample, c, "given", r);
                    log.append(&rec)?;
                    records.push(rec);
                }
                prog.tick(
                    chunk.len(),
                    results
                        .iter()
                        .filter(|r| r.verdict == Verdict::Pass)
                        .count(),
                );
            }
        }
    } else {
        let dev = Device::open(gpu_opts)?;
        let mut model = common::load_model(&dev, a.input.model.as_deref(), 0)?;
        common::apply_patches(&dev, &mut model, &a.patch)?;
        let mut drafts: Option<Drafts> = None;
        for path in &a.baseline {
            let more = if path.is_dir() {
                Drafts::from_records(&read_records(&path.join("samples.jsonl"))?, &model)?
            } else {
                Drafts::from_completions(&read_completions(path, &whole_sets)?, &model)?
            };
            drafts
                .get_or_insert_with(|| Drafts(HashMap::new()))
                .0
                .extend(more.0);
        }
        if drafts.is_some() && !dev.batch_invariant() {
            eprintln!("note: --baseline drafts are verified only on the CPU backend (batch-invariant); generating plainly on {}", dev.describe());
        }
        let spec = GenSpec {
            drafts: drafts.as_ref(),
            ..GenSpec::from(&a)
        };
        for (set, problems) in &sets {
            let todo: Vec<(&Problem, usize)> = problems
                .iter()
                .flat_map(|p| (0..a.n).map(move |s| (p, s)))
                .filter(|(p, s)| !done.contains(&(set.clone(), p.task_id.clone(), *s)))
                .collect();
            if todo.is_empty() {
                continue;
            }
            let mut prog = Progress::new(set, todo.len());
            run_set(&dev, &model, set, &todo, &spec, &lim, workers, &mut |rec| {
                prog.tick(1, (rec["passed"] == true) as usize);
                log.append(&rec)?;
                records.push(rec);
                Ok(())
            })?;
        }
    }
    let summary = summarize(&records, &types, a.n);
    common::write(
        &a.out.join("summary.json"),
        &serde_json::to_string_pretty(&summary.json)?,
    )?;
    common::write(&a.out.join("summary.md"), &summary.markdown)?;
    print!("{}", summary.markdown);
    println!(
        "records: {}\nsummary: {}",
        a.out.join("samples.jsonl").display(),
        a.out.join("summary.md").display()
    );
    let infra = records.iter().filter(|r| is_infra_error(r)).count();
    if infra > 0 {
        return Err(format!("{infra} samples could not be run by the sandbox (not failures; see their stderr_tail in samples.jsonl); run the same command again to retry them").into());
    }
    Ok(())
}

/// The records of a JSONL file (read only; a torn last line is skipped).
pub fn read_records(path: &Path) -> Res<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let lines: Vec<&str> = text
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && !l.trim().is_empty())
        .collect();
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l.trim_end())
                .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1).into())
        })
        .collect()
}

/// A record of a program the sandbox could not run (not a verdict on the program).
pub fn is_infra_error(r: &Value) -> bool {
    r["verdict"] == "Error" && r["error_kind"] == "sandbox"
}

/// Previous records split into verdicts and sandbox errors still to retry (one per sample, none
/// that a later record already settled).
fn split_infra_errors(previous: Vec<Value>) -> (Vec<Value>, Vec<Value>) {
    let key = |v: &Value| (v["set"].clone(), v["task_id"].clone(), v["sample"].clone());
    let (infra, done): (Vec<Value>, Vec<Value>) = previous.into_iter().partition(is_infra_error);
    let settled: std::collections::HashSet<_> = done.iter().map(key).collect();
    let mut retry: BTreeMap<String, Value> = BTreeMap::new();
    for r in infra.into_iter().filter(|r| !settled.contains(&key(r))) {
        retry.insert(format!("{:?}", key(&r)), r);
    }
    (done, retry.into_values().collect())
}

/// Run the programs of earlier sandbox errors again (their completions are in the records).
fn retry_infra_errors(
    retry: &[Value],
    sets: &BTreeMap<String, Vec<Problem>>,
    lim: &Limits,
    workers: usize,
) -> Res<Vec<Value>> {
    let mut items = Vec::new();
    for r in retry {
        let (set, task, completion) = (
            r["set"].as_str().unwrap_or(""),
            r["task_id"].as_str().unwrap_or(""),
            r["completion"].as_str().unwrap_or(""),
        );
        if let Some(p) = sets
            .get(set)
            .and_then(|ps| ps.iter().find(|p| p.task_id == task))
        {
            items.push((
                set.to_string(),
                p,
                r["sample"].as_u64().unwrap_or(0) as usize,
                completion.to_string(),
                r["finish"].as_str().unwrap_or("given").to_string(),
            ));
        }
    }
    if items.is_empty() {
        return Ok(Vec::new());
    }
    eprintln!(
        "retrying {} samples the sandbox could not run before",
        items.len()
    );
    let programs: Vec<_> = items
        .iter()
        .map(|(_, p, _, c, _)| p.program(&p.prompt, c))
        .collect();
    let results = run_many(&programs, lim, workers);
    Ok(items
        .iter()
        .zip(&results)
        .map(|((set, p, k, c, finish), r)| sample_record(set, p, *k, c, finish, r))
        .collect())
}

/// How samples are generated.
#[derive(Clone, Copy)]
pub struct GenSpec<'a> {
    /// Samples per task (1 = greedy).
    pub n: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
    pub batch: usize,
    /// Greedy completions of the unedited model: verified instead of decoded from scratch where
    /// the device is batch-invariant (the same completions, faster; see creme_core::draft).
    pub drafts: Option<&'a Drafts>,
}

impl From<&EvalArgs> for GenSpec<'_> {
    fn from(a: &EvalArgs) -> Self {
        GenSpec {
            n: a.n,
            temperature: a.temperature,
            top_p: a.top_p,
            max_tokens: a.gen.max_tokens,
            batch: a.gen.batch,
            drafts: None,
        }
    }
}

/// Drafts by (set, task_id): the greedy sample of earlier records, by their token ids where the
/// record holds them, else by their text tokenized again (any tokens are a valid draft).
pub struct Drafts(HashMap<(String, String), Draft>);

impl Drafts {
    pub fn from_records(records: &[Value], model: &Model) -> Res<Drafts> {
        let mut map = HashMap::new();
        for r in records
            .iter()
            .filter(|r| r["sample"].as_u64() == Some(0) && !is_infra_error(r))
        {
            let (Some(set), Some(task), Some(text)) = (
                r["set"].as_str(),
                r["task_id"].as_str(),
                r["completion"].as_str(),
            ) else {
                continue;
            };
            let tokens = match r["tokens"].as_array() {
                Some(t) => t
                    .iter()
                    .filter_map(|x| x.as_u64().map(|v| v as u32))
                    .collect(),
                None => model.tokenizer.encode(text)?,
            };
            map.insert((set.to_string(), task.to_string()), Draft { tokens });
        }
        Ok(Drafts(map))
    }

    /// Drafts from completion texts (a `--completions` file: another implementation's greedy
    /// completions are drafts too; verification keeps the result exact).
    pub fn from_completions(
        given: &HashMap<(String, String, usize), String>,
        model: &Model,
    ) -> Res<Drafts> {
        let mut map = HashMap::new();
        for ((set, task, _), text) in given.iter().filter(|(k, _)| k.2 == 0) {
            map.insert(
                (set.clone(), task.clone()),
                Draft {
                    tokens: model.tokenizer.encode(text)?,
                },
            );
        }
        Ok(Drafts(map))
    }

    fn get(&self, set: &str, task: &str) -> Draft {
        self.0
            .get(&(set.to_string(), task.to_string()))
            .cloned()
            .unwrap_or_default()
    }
}

/// Generate and test the (problem, sample index) items of one set, batching prompts of the same
/// sample index (one seed per batch and sample); `on_record` gets each tested sample.
#[allow(clippy::too_many_arguments)]
pub fn run_set(
    dev: &Device,
    model: &Model,
    set: &str,
    items: &[(&Problem, usize)],
    spec: &GenSpec,
    lim: &Limits,
    workers: usize,
    on_record: &mut dyn FnMut(Value) -> Res,
) -> Res {
    for s in 0..spec.n.max(1) {
        let these: Vec<&Problem> = items
            .iter()
            .filter(|(_, k)| *k == s)
            .map(|(p, _)| *p)
            .collect();
        for chunk in these.chunks(spec.batch.max(1)) {
            for rec in generate_and_test(dev, model, set, chunk, s, spec, lim, workers)? {
                on_record(rec)?;
            }
        }
    }
    Ok(())
}

/// Generate one sample for each problem of `chunk` (one left-padded batch) and test them.
#[allow(clippy::too_many_arguments)]
fn generate_and_test(
    dev: &Device,
    model: &Model,
    set: &str,
    chunk: &[&Problem],
    sample: usize,
    a: &GenSpec,
    lim: &Limits,
    workers: usize,
) -> Res<Vec<Value>> {
    let opts = GenerateOptions {
        max_new_tokens: a.max_tokens,
        temperature: if a.n > 1 { a.temperature } else { 0.0 },
        top_p: a.top_p,
        seed: 1000 + sample as u64,
        stop: humaneval_stops(),
        ignore_eos: false,
    };
    // Prompts too long for the context are recorded as errors, not fatal.
    let mut ids = Vec::new();
    let mut fits = Vec::new();
    for p in chunk {
        let t = model.tokenizer.encode(&p.prompt)?;
        fits.push(t.len() + a.max_tokens <= model.max_positions && !t.is_empty());
        ids.push(t);
    }
    let batch: Vec<Vec<u32>> = ids
        .iter()
        .zip(&fits)
        .filter(|(_, f)| **f)
        .map(|(t, _)| t.clone())
        .collect();
    let fitting: Vec<&Problem> = chunk
        .iter()
        .zip(&fits)
        .filter(|(_, f)| **f)
        .map(|(p, _)| *p)
        .collect();
    let (completions, verified) = match a.drafts.filter(|_| dev.batch_invariant() && a.n <= 1) {
        Some(drafts) => {
            let ds: Vec<Draft> = fitting
                .iter()
                .map(|p| drafts.get(set, &p.task_id))
                .collect();
            let v = pollster::block_on(generate_from_drafts(dev, model, &batch, &ds, &opts))?;
            let info: Vec<Value> = v
                .iter()
                .map(|v| json!({"accepted": v.accepted, "whole": v.whole}))
                .collect();
            (
                v.into_iter().map(|v| v.completion).collect::<Vec<_>>(),
                Some(info),
            )
        }
        None => (
            pollster::block_on(generate(dev, model, &batch, &opts, &mut |_, _| {}))?,
            None,
        ),
    };
    let mut verified = verified.map(|v| v.into_iter());
    let mut completions = completions.into_iter();
    let mut out = Vec::new();
    let mut programs = Vec::new();
    let mut texts = Vec::new();
    for (p, fit) in chunk.iter().zip(&fits) {
        if *fit {
            let c = completions.next().expect("one completion per prompt");
            programs.push(p.program(&p.prompt, &c.text));
            let draft = verified.as_mut().and_then(|v| v.next());
            texts.push(Some((
                c.text,
                format!("{:?}", c.finish).to_lowercase(),
                c.tokens,
                draft,
            )));
        } else {
            texts.push(None);
        }
    }
    let mut results = run_many(&programs, lim, workers).into_iter();
    for ((p, t), toks) in chunk.iter().zip(texts).zip(&ids) {
        let rec = match t {
            Some((text, finish, tokens, draft)) => {
                let mut rec = sample_record(
                    set,
                    p,
                    sample,
                    &text,
                    &finish,
                    &results.next().expect("one result per program"),
                );
                rec["tokens"] = json!(tokens);
                if let Some(d) = draft {
                    rec["draft"] = d;
                }
                rec
            }
            None => {
                let msg = format!(
                    "prompt of {} tokens + {} new tokens is over the context of {} tokens",
                    toks.len(),
                    a.max_tokens,
                    model.max_positions
                );
                json!({"set": set, "task_id": p.task_id, "sample": sample, "completion": "", "finish": "error", "passed": false, "verdict": "Error", "error_kind": "prompt too long", "stderr_tail": msg})
            }
        };
        out.push(rec);
    }
    Ok(out)
}

pub struct Summary {
    pub json: Value,
    pub markdown: String,
}

/// Per-set pass@k and, against `clean` where it was run, ReCode's robustness numbers and flips.
pub fn summarize(records: &[Value], types: &[String], n: usize) -> Summary {
    // set -> task -> sample -> passed
    let mut by: BTreeMap<String, BTreeMap<String, BTreeMap<usize, bool>>> = BTreeMap::new();
    let infra = records.iter().filter(|r| is_infra_error(r)).count();
    for r in records.iter().filter(|r| !is_infra_error(r)) {
        if let (Some(s), Some(t), Some(k), Some(p)) = (
            r["set"].as_str(),
            r["task_id"].as_str(),
            r["sample"].as_u64(),
            r["passed"].as_bool(),
        ) {
            by.entry(s.into())
                .or_default()
                .entry(t.into())
                .or_default()
                .insert(k as usize, p);
        }
    }
    let ks: Vec<usize> = [1, 5, 10].into_iter().filter(|&k| k <= n.max(1)).collect();
    let clean = by.get("clean");
    let mut rows = Vec::new();
    let mut md = String::new();
    md.push_str(&format!("| set | tasks | {} | passed | fixed vs clean | broken vs clean | Robust Pass@1 | Robust Drop@1 | Robust Relative@1 |\n", ks.iter().map(|k| format!("pass@{k}")).collect::<Vec<_>>().join(" | ")));
    md.push_str(&format!(
        "|---|---:|{}---:|---:|---:|---:|---:|---:|\n",
        "---:|".repeat(ks.len())
    ));
    for set in types {
        let Some(tasks) = by.get(set) else { continue };
        let counts: Vec<(usize, usize)> = tasks
            .values()
            .map(|s| (s.len(), s.values().filter(|&&p| p).count()))
            .collect();
        let pass_k: Vec<f64> = ks
            .iter()
            .map(|&k| metrics::mean_pass_at_k(&counts, k))
            .collect();
        let passed: usize = counts.iter().map(|c| c.1).sum();
        let mut row = json!({"set": set, "tasks": tasks.len(), "samples": counts.iter().map(|c| c.0).sum::<usize>(), "passed": passed});
        for (k, v) in ks.iter().zip(&pass_k) {
            row[format!("pass@{k}")] = json!(v);
        }
        let (mut fixed, mut broken, mut robust) = (
            String::from("-"),
            String::from("-"),
            [String::from("-"), String::from("-"), String::from("-")],
        );
        if let (Some(clean), true) = (clean, set != "clean") {
            // Tasks present in both, samples paired by index.
            let mut rt = Vec::new();
            let (mut f, mut b) = (0, 0);
            for (task, samples) in tasks {
                let Some(cs) = clean.get(task) else { continue };
                let idx: Vec<usize> = samples
                    .keys()
                    .filter(|k| cs.contains_key(k))
                    .cloned()
                    .collect();
                if idx.is_empty() {
                    continue;
                }
                let nominal: Vec<bool> = idx.iter().map(|k| cs[k]).collect();
                let pert: Vec<bool> = idx.iter().map(|k| samples[k]).collect();
                rt.push(metrics::robust_task(&nominal, &[pert.clone()], 1));
                let rate = |v: &[bool]| v.iter().filter(|&&x| x).count() as f64 / v.len() as f64;
                let (c, p) = (rate(&nominal), rate(&pert));
                f += (p > c) as usize;
                b += (p < c) as usize;
            }
            let r = metrics::robustness(&rt);
            row["fixed_vs_clean"] = json!(f);
            row["broken_vs_clean"] = json!(b);
            row["robust"] = serde_json::to_value(r).unwrap();
            fixed = f.to_string();
            broken = b.to_string();
            robust = [
                format!("{:.3}", r.robust_pass_k),
                format!("{:.3}", r.robust_drop_k),
                format!("{:.3}", r.robust_relative_k),
            ];
        }
        md.push_str(&format!(
            "| {set} | {} | {} | {passed} | {fixed} | {broken} | {} | {} | {} |\n",
            tasks.len(),
            pass_k
                .iter()
                .map(|v| format!("{:.3}", v))
                .collect::<Vec<_>>()
                .join(" | "),
            robust[0],
            robust[1],
            robust[2]
        ));
        rows.push(row);
    }
    let drafted: Vec<&Value> = records
        .iter()
        .filter(|r| r.get("draft").is_some())
        .collect();
    if !drafted.is_empty() {
        let whole = drafted
            .iter()
            .filter(|r| r["draft"]["whole"] == true)
            .count();
        md.push_str(&format!("\nDraft-verified: {whole} of {} completions were the baseline's draft accepted whole.\n", drafted.len()));
    }
    if infra > 0 {
        md.push_str(&format!("\n{infra} samples are not counted: the sandbox could not run them (retried on the next run).\n"));
    }
    Summary {
        json: json!({"sets": rows, "sandbox_errors": infra}),
        markdown: md,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_passes_and_flips_against_clean() {
        let r = |set: &str, t: &str, p: bool| json!({"set": set, "task_id": t, "sample": 0, "passed": p});
        let recs = vec![
            r("clean", "a", true),
            r("clean", "b", true),
            r("clean", "c", false),
            r("C3", "a", true),
            r("C3", "b", false),
            r("C3", "c", true),
        ];
        let s = summarize(&recs, &["clean".into(), "C3".into()], 1);
        let sets = s.json["sets"].as_array().unwrap();
        assert_eq!(sets[0]["passed"], 2);
        assert_eq!(sets[1]["passed"], 2);
        assert_eq!(sets[1]["fixed_vs_clean"], 1);
        assert_eq!(sets[1]["broken_vs_clean"], 1);
        assert!((sets[1]["robust"]["robust_pass_k"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!(s.markdown.contains("| C3 | 3 |"), "{}", s.markdown);
    }

    #[test]
    fn types_parse() {
        assert_eq!(parse_types("clean,C3").unwrap(), vec!["clean", "C3"]);
        assert_eq!(parse_types("all").unwrap().len(), 21);
        assert!(parse_types("X9").is_err());
    }
}
