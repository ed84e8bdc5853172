//! `creme report`: merge the edit records of one or more `creme experiment` runs (or shards)
//! into the paper's tables, and with `--setting LABEL=DIR` write the efficacy document. The
//! tables and the document are core's (`creme_core::report`); this command reads the runs'
//! files and writes the results.

use std::path::{Path, PathBuf};

use creme_core::calibration::Calibration;
use creme_core::eval;
use creme_core::experiment::EditRecord;
use creme_core::report::efficacy::{self, EfficacyInputs};
use creme_core::report::tables::{self, Report};

use crate::common::{self, Res};

#[derive(clap::Args, Clone)]
pub struct ReportArgs {
    /// Experiment output directories
    pub dirs: Vec<PathBuf>,
    /// Where to write report.md / report.json (default: the first directory)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A setting of the efficacy document: LABEL=EXPERIMENT_DIR (repeatable; the first is the main one)
    #[arg(long = "setting", value_parser = parse_setting)]
    pub settings: Vec<(String, PathBuf)>,
    /// The baseline eval directory the settings' experiments used (for --setting)
    #[arg(long, requires = "settings")]
    pub baseline: Option<PathBuf>,
    /// A calibrate-layer output directory, for the key-layer table (for --setting)
    #[arg(long, requires = "settings")]
    pub calibration: Option<PathBuf>,
    /// Where to write the efficacy document (for --setting)
    #[arg(long, default_value = "docs/efficacy.md")]
    pub doc: PathBuf,
}

pub fn parse_setting(s: &str) -> Result<(String, PathBuf), String> {
    let (label, dir) = s
        .split_once('=')
        .ok_or_else(|| format!("--setting '{s}': LABEL=DIR"))?;
    Ok((label.trim().to_string(), PathBuf::from(dir)))
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
    let baseline = a.baseline.as_ref().ok_or(
        "--setting needs --baseline DIR (the eval run the experiments took their baseline from)",
    )?;
    let runs = a
        .settings
        .iter()
        .map(|(l, d)| Ok((l.clone(), read_records(std::slice::from_ref(d))?)))
        .collect::<Res<_>>()?;
    let calibration = match &a.calibration {
        Some(dir) => {
            let path = dir.join("calibration.json");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            Some(Calibration::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let mut commands = vec![command_of(baseline)];
    commands.extend(a.calibration.as_deref().map(command_of));
    commands.extend(a.settings.iter().map(|(_, d)| command_of(d)));
    let oracle =
        common::shared_dir().join("oracle/qwen2.5-coder-0.5b-instruct-q4km/hf_greedy_pass.json");
    Ok(efficacy::efficacy(&EfficacyInputs {
        baseline: eval::outcomes_of(&crate::run_dir::read_samples(
            &baseline.join("samples.jsonl"),
        )?),
        oracle: std::fs::read_to_string(oracle)
            .ok()
            .and_then(|t| efficacy::parse_oracle_pass(&t)),
        runs,
        calibration,
        commands,
        report_command: report_command(a, baseline),
    }))
}

/// The `creme report` line that repeats the document, paths as record_command writes them:
/// under $RUNS (the runs' parent), relative, or $HOME.
fn report_command(a: &ReportArgs, baseline: &Path) -> String {
    let mut args = vec!["report".to_string()];
    for (label, dir) in &a.settings {
        args.extend(["--setting".into(), format!("{label}={}", dir.display())]);
    }
    let mut flag = |name: &str, p: &Path| args.extend([name.into(), p.display().to_string()]);
    flag("--baseline", baseline);
    if let Some(c) = &a.calibration {
        flag("--calibration", c);
    }
    flag("--doc", &a.doc);
    common::places_for_run(baseline).command(&args)
}
