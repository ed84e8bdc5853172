//! `creme report`: merge the edit records of one or more `creme experiment` runs (or shards)
//! into the paper's tables, and with `--setting LABEL=DIR` write the efficacy document. The
//! tables and the document are core's (`creme_core::report`); this command reads the runs'
//! files and writes the results.

use std::path::{Path, PathBuf};

use creme_core::calibration::Calibration;
use creme_core::eval;
use creme_core::experiment::EditRecord;
use creme_core::report::efficacy::{self, Baseline, EfficacyInputs};
use creme_core::report::tables::{self, Report};
use creme_core::sets::SetName;
use creme_core::stats::Confidence;

use crate::common::{self, Res};

#[derive(clap::Args, Clone)]
pub struct ReportArgs {
    /// Experiment output directories
    pub dirs: Vec<PathBuf>,
    /// Where to write report.md / report.json (default: the first directory)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A setting of the efficacy document: LABEL=EXPERIMENT_DIR[,DIR...] (its runs on several
    /// datasets, or its shards, pooled; repeatable; the first is the main one, the others are
    /// tested against it like the controls)
    #[arg(long = "setting", value_parser = parse_runs)]
    pub settings: Vec<(String, Vec<PathBuf>)>,
    /// A control run of the main setting's pairs (`experiment --control`), for the efficacy
    /// document: LABEL=DIR[,DIR...] (repeatable)
    #[arg(long = "control", value_parser = parse_runs, requires = "settings")]
    pub controls: Vec<(String, Vec<PathBuf>)>,
    /// The other-seed check (`scripts/other-seed.sh`) of the main setting, then of its controls:
    /// LABEL=TSV[,TSV...] (repeatable; the first is the setting's; each run lists its files in
    /// the same order, one per direction)
    #[arg(long = "other-seed", value_parser = parse_runs, requires = "settings")]
    pub other_seed: Vec<(String, Vec<PathBuf>)>,
    /// A baseline eval directory the runs took their pairs from, [LABEL=]DIR (repeatable: one per
    /// dataset, e.g. the released prompts and other perturbator seeds; for --setting)
    #[arg(long = "baseline", value_parser = parse_baseline, requires = "settings")]
    pub baselines: Vec<(String, PathBuf)>,
    /// A calibrate-layer output directory, for the key-layer table (for --setting)
    #[arg(long, requires = "settings")]
    pub calibration: Option<PathBuf>,
    /// Findings written by hand (a markdown file) for the document's top (for --setting)
    #[arg(long, requires = "settings")]
    pub notes: Option<PathBuf>,
    /// Confidence level of the document's intervals
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// Where to write the efficacy document (for --setting)
    #[arg(long, default_value = "docs/efficacy.md")]
    pub doc: PathBuf,
}

/// LABEL=DIR[,DIR...].
pub fn parse_runs(s: &str) -> Result<(String, Vec<PathBuf>), String> {
    let (label, dirs) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}': LABEL=DIR[,DIR...]"))?;
    let dirs: Vec<PathBuf> = dirs
        .split(',')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    if label.trim().is_empty() || dirs.is_empty() {
        return Err(format!("'{s}': LABEL=DIR[,DIR...]"));
    }
    Ok((label.trim().to_string(), dirs))
}

/// [LABEL=]DIR; the label defaults to the directory's parent's name (a run directory holds its
/// baseline as `baseline/`).
fn parse_baseline(s: &str) -> Result<(String, PathBuf), String> {
    if let Some((label, dir)) = s.split_once('=') {
        return Ok((label.trim().to_string(), PathBuf::from(dir)));
    }
    let dir = PathBuf::from(s);
    let name = |p: Option<&Path>| {
        p.and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().to_string())
    };
    let label = name(dir.parent().filter(|_| dir.ends_with("baseline"))).or(name(Some(&dir)));
    Ok((label.unwrap_or_else(|| s.to_string()), dir))
}

pub fn main(a: ReportArgs) -> Res {
    if a.settings.is_empty() {
        return run(&a.dirs, a.out);
    }
    if !a.dirs.is_empty() || a.out.is_some() {
        return Err("--setting writes the efficacy document: give the runs as --setting LABEL=DIR, not as directories".into());
    }
    let md = efficacy(&a)?;
    if let Some(parent) = a.doc.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    common::write(&a.doc, &md)?;
    println!("efficacy report: {}", a.doc.display());
    Ok(())
}

/// Every finished edit record in the directories (edits.jsonl and edits-shard-*.jsonl), one per
/// (type, task).
pub fn read_records(dirs: &[PathBuf]) -> Res<Vec<EditRecord>> {
    let mut files = Vec::new();
    for d in dirs {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| format!("reading {}: {e}", d.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(tables::is_edit_log)
            })
            .collect();
        paths.sort();
        for f in paths {
            files.push((f.display().to_string(), std::fs::read_to_string(&f)?));
        }
    }
    Ok(tables::merge_edit_records(&files)?)
}

/// The tables of one experiment (all its types).
pub fn report(dirs: &[PathBuf]) -> Res<Report> {
    Ok(tables::report(&read_records(dirs)?))
}

fn run(dirs: &[PathBuf], out: Option<PathBuf>) -> Res {
    if dirs.is_empty() {
        return Err("give one or more experiment directories (or --setting LABEL=DIR for the efficacy document)".into());
    }
    let out = out.unwrap_or_else(|| dirs[0].clone());
    std::fs::create_dir_all(&out)?;
    let report = write_report(dirs, &out)?;
    println!("report: {}", report.display());
    Ok(())
}

/// The tables of the runs in `dirs` as report.md and report.json in `out`, the markdown printed;
/// returns report.md's path.
pub fn write_report(dirs: &[PathBuf], out: &Path) -> Res<PathBuf> {
    let r = report(dirs)?;
    common::write(&out.join("report.md"), &r.markdown)?;
    let json = serde_json::to_string_pretty(&r.json)?;
    common::write(&out.join("report.json"), &json)?;
    print!("{}", r.markdown);
    Ok(out.join("report.md"))
}

fn command_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("command.txt"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("(no command.txt in {})", dir.display()))
}

/// The efficacy document of the runs named in `a`.
fn efficacy(a: &ReportArgs) -> Res<String> {
    if a.baselines.is_empty() {
        return Err("--setting needs --baseline DIR (the eval run the experiments took their pairs from; one per dataset)".into());
    }
    let confidence = Confidence::new(a.confidence).map_err(|e| e.to_string())?;
    let read = |runs: &[(String, Vec<PathBuf>)]| -> Res<Vec<(String, Vec<EditRecord>)>> {
        runs.iter()
            .map(|(l, dirs)| Ok((l.clone(), read_records(dirs)?)))
            .collect()
    };
    let calibration = match &a.calibration {
        Some(dir) => {
            let path = dir.join("calibration.json");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            Some(Calibration::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let notes = match &a.notes {
        Some(p) => {
            Some(std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?)
        }
        None => None,
    };
    // Each run's command names its directories under its own $RUNS: say which that is.
    let places = places();
    let with_runs = |d: &Path| {
        let runs = d
            .parent()
            .map_or(".".into(), |p| places.word(&p.display().to_string()));
        format!("RUNS={runs}\n{}", command_of(d))
    };
    let run_dirs = a.settings.iter().chain(&a.controls).flat_map(|(_, d)| d);
    let mut commands: Vec<String> = a.baselines.iter().map(|(_, d)| with_runs(d)).collect();
    commands.extend(a.calibration.as_deref().map(with_runs));
    commands.extend(run_dirs.map(|d| with_runs(d)));
    Ok(efficacy::efficacy(&EfficacyInputs {
        baselines: a
            .baselines
            .iter()
            .map(|(l, d)| baseline(l, d))
            .collect::<Res<_>>()?,
        runs: read(&a.settings)?,
        controls: read(&a.controls)?,
        other_seed: a
            .other_seed
            .iter()
            .map(|(l, files)| Ok((l.clone(), other_seed_rows(files)?)))
            .collect::<Res<_>>()?,
        confidence,
        calibration,
        notes,
        commands,
        report_command: report_command(a),
    }))
}

/// The rows of other-seed.tsv files, each file its own source.
fn other_seed_rows(files: &[PathBuf]) -> Res<Vec<efficacy::OtherSeedRow>> {
    let mut rows = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("reading {}: {e}", f.display()))?;
        rows.extend(efficacy::parse_other_seed(
            &text,
            &f.display().to_string(),
            i,
        )?);
    }
    Ok(rows)
}

/// A baseline eval's verdicts, with the oracle's on the sets whose prompts are the released
/// ones the oracle ran (checked by the manifest's prompt digests).
fn baseline(label: &str, dir: &Path) -> Res<Baseline> {
    let outcomes = eval::outcomes_of(&crate::run_dir::read_samples(&dir.join("samples.jsonl"))?);
    let oracle_dir = common::shared_dir().join("oracle/qwen2.5-coder-0.5b-instruct-q4km");
    let oracle = std::fs::read_to_string(oracle_dir.join("hf_greedy_pass.json"))
        .ok()
        .and_then(|t| efficacy::parse_oracle_pass(&t));
    let released = common::shared_dir().join("datasets/humaneval-nlpert");
    let manifest = crate::run_dir::read_manifest(dir)?;
    // A set's prompts are the ones the oracle ran where the released directory has its file
    // (not a set creme's perturbator would make in its place) and its digests match.
    let released_file = |s: &SetName| match s {
        SetName::Perturbed(t) => released.join(creme_core::dataset_files::perturbed_file(*t)),
        _ => released.join("HumanEval.jsonl"),
    };
    let same_prompts = |s: &SetName| {
        let Some(mine) = manifest
            .dataset
            .get(s)
            .filter(|_| released_file(s).is_file())
        else {
            return false;
        };
        let theirs = common::load_sets(&released, &[*s], None, None)
            .map(|sets| creme_core::manifest::dataset_digests(&sets));
        theirs
            .ok()
            .and_then(|mut t| t.remove(s))
            .is_some_and(|t| mine.iter().all(|(task, d)| t.get(task) == Some(d)))
    };
    let oracle = oracle.map(|o| o.into_iter().filter(|(s, _)| same_prompts(s)).collect());
    Ok(Baseline {
        label: label.to_string(),
        outcomes,
        oracle,
    })
}

/// The `creme report` line that repeats the document, its paths relative (or under $HOME).
fn report_command(a: &ReportArgs) -> String {
    let places = places();
    let list = |label: &str, dirs: &[PathBuf]| {
        let mut words = dirs.iter().map(|d| places.word(&d.display().to_string()));
        let first = places.word(&format!("{label}={}", dirs[0].display()));
        std::iter::once(first)
            .chain(words.by_ref().skip(1))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut words = vec!["creme report".to_string()];
    for (flag, runs) in [
        ("--setting", &a.settings),
        ("--control", &a.controls),
        ("--other-seed", &a.other_seed),
    ] {
        for (label, dirs) in runs {
            words.extend([flag.to_string(), list(label, dirs)]);
        }
    }
    for (label, dir) in &a.baselines {
        words.extend([
            "--baseline".into(),
            places.word(&format!("{label}={}", dir.display())),
        ]);
    }
    let mut flag =
        |name: &str, p: &Path| words.extend([name.into(), places.word(&p.display().to_string())]);
    if let Some(c) = &a.calibration {
        flag("--calibration", c);
    }
    if let Some(n) = &a.notes {
        flag("--notes", n);
    }
    flag("--doc", &a.doc);
    if a.confidence != f64::from(Confidence::default()) {
        words.extend(["--confidence".into(), a.confidence.to_string()]);
    }
    words.join(" ")
}

/// Where the document's commands put their paths: relative to the current directory (or under
/// $HOME); each run's own command names its directories under $RUNS, set before it.
fn places() -> creme_core::command_line::Places {
    let cwd = std::env::current_dir().ok();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    creme_core::command_line::Places::new(None, cwd, home)
}
