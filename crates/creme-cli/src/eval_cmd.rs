//! `creme eval`: generate completions for clean and perturbed sets, judge each against its tests
//! in the sandbox, and summarise (pass@k, ReCode's robustness numbers, flips against clean). The
//! protocol is core's (`creme_core::eval`); this command parses flags, keeps the run directory
//! and prints.
//!
//! Every sample is one JSONL record in `OUT/samples.jsonl`, appended as soon as it is judged, so a
//! killed run resumes where it stopped; `OUT/manifest.json` says what the records depend on, and
//! a resume with any of it changed is refused. `--completions FILE` scores completions made
//! elsewhere (e.g. the oracle's) without a model.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use creme_core::dataset::Problem;
use creme_core::eval::given::{
    judge_given, parse_completions, sets_without_completions, Given, SampleKey,
};
use creme_core::eval::{self, resume, summary, Drafts, GenSpec, SampleRecord, DEFAULT_TIMEOUT_S};
use creme_core::manifest::RunManifest;
use creme_core::model::Model;
use creme_core::progress::SampleTally;
use creme_core::sets::SetName;
use creme_core::{Device, ModelError};

use crate::common::{self, load_sets, Res};
use crate::run_dir::{self, SampleLog};
use crate::sandbox::SandboxJudge;

#[derive(clap::Args, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub input: common::InputFlags,
    /// Sets to run: clean, perturbation types (C3,E1,...), or all (= clean + the 20 types)
    #[arg(long, default_value = "clean")]
    pub types: String,
    /// Samples per task (1 = greedy)
    #[arg(long, default_value_t = GenSpec::default().n)]
    pub n: usize,
    /// Sampling temperature when n > 1
    #[arg(long, default_value_t = GenSpec::default().temperature)]
    pub temperature: f32,
    #[arg(long, default_value_t = GenSpec::default().top_p)]
    pub top_p: f32,
    #[command(flatten)]
    pub gen: common::GenFlags,
    /// Apply CREME patches before generating (repeatable)
    #[arg(long)]
    pub patch: Vec<PathBuf>,
    /// Drafts: an earlier greedy `eval` (its OUT dir) of the unedited model, or a completions file
    /// as for --completions; each is verified in one forward, decoding only past the first token
    /// where this model's greedy choice differs (exact on batch-invariant kernels: the CPU
    /// backend's, and wgpu's, which eval runs unless CREME_BATCH_INVARIANT=0)
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
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_S)]
    pub timeout: u64,
    /// Output directory (manifest.json, samples.jsonl, summary.md, summary.json)
    #[arg(long)]
    pub out: PathBuf,
}

/// The sets named by --types.
pub fn parse_types(spec: &str) -> Res<Vec<SetName>> {
    SetName::parse_list(spec).map_err(|e| format!("--types: {e}").into())
}

impl EvalArgs {
    fn spec(&self) -> GenSpec {
        GenSpec {
            n: self.n,
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.gen.max_tokens,
            batch: self.gen.batch,
        }
    }
}

pub fn run(gpu_opts: &creme_core::GpuOptions, a: EvalArgs) -> Res {
    let dir = common::dataset_dir(a.input.dataset.as_deref())?;
    let types = parse_types(&a.types)?;
    let sets = load_sets(&dir, &types, a.input.tasks.as_deref(), a.input.limit)?;
    let loaded = if a.completions.is_none() {
        let dev = Device::open(gpu_opts)?;
        let mut model = common::load_model(&dev, a.input.model.as_deref(), 0)?;
        common::apply_patches(&dev, &mut model, &a.patch)?;
        Some((dev, model))
    } else {
        None
    };
    let manifest = eval_manifest(&a, gpu_opts, &sets, loaded.as_ref().map(|(d, _)| d))?;
    let samples = a.out.join("samples.jsonl");
    let unjudged = run_dir::unjudged(&samples)?;
    run_dir::claim(&a.out, &manifest, &["samples"], unjudged)?;
    common::record_command(&a.out)?;
    let (log, previous) = SampleLog::open(&samples)?;
    let mut judge = SandboxJudge::new(a.timeout, a.workers);
    let mut rec = Recorder {
        log,
        records: Vec::new(),
        set: None,
        failure: None,
    };
    // Judge errors recorded before are judged again now (their completions are in the records).
    let mut retrying = |n| eprintln!("retrying {n} samples the sandbox could not run before");
    let settle = resume::settle(previous, &sets, &mut judge, &mut retrying);
    let (records, first_new) = pollster::block_on(settle);
    records[first_new..]
        .iter()
        .try_for_each(|r| rec.log.append(r))?;
    rec.records = records;
    let done: HashSet<SampleKey> = rec.records.iter().map(SampleRecord::key).collect();
    if !done.is_empty() {
        let n = done.len();
        eprintln!("resuming: {n} samples already in {}", samples.display());
    }
    let result = match (&a.completions, loaded) {
        (Some(path), _) => {
            let given = given_completions(path, &a, &dir, &sets)?;
            let mut sink = |set, total, recs| rec.take(set, total, recs);
            pollster::block_on(judge_given(&sets, &given, &done, &mut judge, &mut sink))
        }
        (None, Some((dev, model))) => {
            let drafts = read_drafts(&a.baseline, &dir, &types, &model, &manifest)?;
            if drafts.is_some() && !dev.batch_invariant() {
                eprintln!(
                    "note: --baseline drafts are verified only on a batch-invariant backend (CREME_BATCH_INVARIANT=0 turned it off); generating plainly on {}",
                    creme_core::Backend::describe(&dev)
                );
            }
            let mut sink = |r: SampleRecord, total| rec.take(r.set, total, vec![r]);
            let spec = a.spec();
            let d = drafts.as_ref();
            let run = eval::run_sets(&dev, &model, &sets, &spec, d, &done, &mut judge, &mut sink);
            pollster::block_on(run)
        }
        (None, None) => unreachable!("a model is loaded when there are no completions"),
    };
    run_dir::unless_failed(rec.failure, result)?;
    finish(&a, &rec.records, &types)
}

/// Records as they are judged: appended to samples.jsonl and kept, progress per set (the
/// reporter shows the ETA). A failure to write stops the evaluation and is kept to be returned
/// as it is.
struct Recorder {
    log: SampleLog,
    records: Vec<SampleRecord>,
    set: Option<(SetName, crate::progress::Reporter, SampleTally)>,
    failure: Option<Box<dyn std::error::Error>>,
}

impl Recorder {
    fn take(
        &mut self,
        set: SetName,
        total: usize,
        recs: Vec<SampleRecord>,
    ) -> Result<(), ModelError> {
        if self.set.as_ref().is_none_or(|(s, _, _)| *s != set) {
            let bar = crate::progress::Reporter::new(&format!("[{set}]"));
            self.set = Some((set, bar, SampleTally::new(total)));
        }
        let (n, passed) = (recs.len(), recs.iter().filter(|r| r.passed).count());
        for r in recs {
            run_dir::keep_failure(self.log.append(&r), &mut self.failure)?;
            self.records.push(r);
        }
        if let Some((_, bar, tally)) = &mut self.set {
            bar.step(tally.tick(n, passed));
            if tally.finished() {
                bar.finish();
            }
        }
        Ok(())
    }
}

/// What this run's records depend on.
fn eval_manifest(
    a: &EvalArgs,
    gpu_opts: &creme_core::GpuOptions,
    sets: &BTreeMap<SetName, Vec<Problem>>,
    dev: Option<&Device>,
) -> Res<RunManifest> {
    let model = common::model_path(a.input.model.as_deref());
    let model = dev.map(|_| run_dir::file_digest(&model)).transpose()?;
    let spec = dev.map_or_else(GenSpec::given, |_| a.spec());
    let digests = |ps: &[PathBuf]| {
        ps.iter()
            .map(|p| run_dir::file_digest(p))
            .collect::<Res<_>>()
    };
    Ok(RunManifest {
        device: dev.map(|d| run_dir::results_device(d, gpu_opts, a.gen.batch)),
        judge: Some(crate::sandbox::judge_identity()),
        model,
        patches: digests(&a.patch)?,
        completions: a
            .completions
            .as_deref()
            .map(run_dir::file_digest)
            .transpose()?,
        ..RunManifest::eval(run_dir::build_id()?, sets, &spec, a.timeout)
    })
}

/// Drafts from --baseline: earlier eval directories (checked to fit this run) or completion
/// files.
fn read_drafts(
    paths: &[PathBuf],
    dir: &Path,
    types: &[SetName],
    model: &Model,
    m: &RunManifest,
) -> Res<Option<Drafts>> {
    if paths.is_empty() {
        return Ok(None);
    }
    let mut drafts = Drafts::default();
    for path in paths {
        let more = if path.is_dir() {
            // A baseline from before manifests is taken as it is.
            match run_dir::read_manifest(path).map(|base| m.drafts_misfit(&base)) {
                Ok(Some(e)) => return Err(format!("--baseline {}: {e}", path.display()).into()),
                Ok(None) => {}
                Err(e) => eprintln!(
                    "note: --baseline {}: {e}; its drafts are used unchecked (verification keeps results exact)",
                    path.display()
                ),
            }
            Drafts::from_records(&run_dir::read_samples(&path.join("samples.jsonl"))?, model)?
        } else {
            let whole = load_sets(dir, types, None, None)?;
            Drafts::from_completions(&read_completions(path, &whole)?, model)?
        };
        drafts.extend(more);
    }
    Ok(Some(drafts))
}

/// The completions of --completions for the sets asked for (warning about sets it lacks).
fn given_completions(
    path: &Path,
    a: &EvalArgs,
    dir: &Path,
    sets: &BTreeMap<SetName, Vec<Problem>>,
) -> Res<Given> {
    // Completions given per set as one list are in the order of the whole set.
    let whole = if a.input.tasks.is_some() || a.input.limit.is_some() {
        load_sets(dir, &sets.keys().copied().collect::<Vec<_>>(), None, None)?
    } else {
        sets.clone()
    };
    let given = read_completions(path, &whole)?;
    for set in sets_without_completions(&given, sets, &path.display().to_string())? {
        eprintln!(
            "warning: {} holds no completions for set '{set}'",
            path.display()
        );
    }
    Ok(given)
}

/// Write and print the summary; an error while judge errors remain (the same command retries
/// them).
fn finish(a: &EvalArgs, records: &[SampleRecord], types: &[SetName]) -> Res {
    let summary = summary::summarize(records, types, a.n);
    common::write(
        &a.out.join("summary.json"),
        &serde_json::to_string_pretty(&summary)?,
    )?;
    let markdown = summary.markdown();
    common::write(&a.out.join("summary.md"), &markdown)?;
    print!("{markdown}");
    println!(
        "records: {}\nsummary: {}",
        a.out.join("samples.jsonl").display(),
        a.out.join("summary.md").display()
    );
    if summary.sandbox_errors > 0 {
        return Err(format!("{} samples could not be run by the sandbox (not failures; see their stderr_tail in samples.jsonl); run the same command again to retry them", summary.sandbox_errors).into());
    }
    Ok(())
}

/// Completions given on the command line (see `creme_core::eval::given`).
pub fn read_completions(path: &Path, sets: &BTreeMap<SetName, Vec<Problem>>) -> Res<Given> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let (given, warnings) = parse_completions(&text, &path.display().to_string(), sets)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    Ok(given)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse() {
        assert_eq!(parse_types("clean,C3").unwrap().len(), 2);
        assert_eq!(parse_types("all").unwrap().len(), 21);
        assert!(parse_types("X9").is_err());
    }
}
