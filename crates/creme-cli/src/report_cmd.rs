//! `creme report`: merge the edit records of one or more `creme experiment` runs (or shards)
//! into the paper's tables (per type L-RIR, G-RIR, fixed/broken tasks, clean deviation, layers;
//! the edit-type x eval-type G-RIR matrix where other types were evaluated), and with
//! `--setting LABEL=DIR` the efficacy document: every setting beside the others and the paper,
//! per-edit tables, the baseline against the oracle, the key-layer agreement, and the commands
//! that made each run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use creme_core::calibration::Calibration;
use creme_core::eval::{self, Outcomes};
use creme_core::experiment::{self, EditRecord, Summary};
use creme_core::metrics;
use creme_core::sets::{PerturbationType, SetName};
use serde_json::{json, Value};

use crate::common::{self, Res};

pub struct Report {
    pub json: Value,
    pub markdown: String,
}

/// Every finished edit record in the directories (edits.jsonl and edits-shard-*.jsonl), one per
/// (type, task): a record repeated across shards or reruns counts once.
pub fn read_records(dirs: &[PathBuf]) -> Res<Vec<EditRecord>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for d in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| format!("reading {}: {e}", d.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("edits") && n.ends_with(".jsonl"))
            })
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f)?;
            for line in text
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n') && !l.trim().is_empty())
            {
                let r = EditRecord::parse_line(line.trim_end())
                    .map_err(|e| format!("{}: {e}", f.display()))?;
                if seen.insert((r.ptype, r.task.clone())) {
                    out.push(r);
                }
            }
        }
    }
    Ok(out)
}

fn fmt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into())
}

fn layers_text(s: &Summary) -> String {
    s.layers
        .iter()
        .take(3)
        .map(|(l, n)| format!("{l} ({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

const SUMMARY_HEAD: &str = "| edits | evaluated on | L-RIR | G-RIR | edited task fixed | perturbed fixed | perturbed broken | net | clean dev (mean) | clean dev (worst) | clean broken / fixed | layers (most frequent) | steps (mean) | s per edit |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|\n";

fn summary_cells(s: &Summary) -> String {
    format!(
        "| {} | {} ({} per set) | {} | {} | {} | {} | {} | {:+} | {} | {} | {} / {} | {} | {} | {} |",
        s.edits,
        s.eval_scope,
        s.tasks_per_set,
        fmt(s.l_rir),
        fmt(s.g_rir),
        s.edited_fixed,
        s.fixed,
        s.broke,
        s.net,
        fmt(s.clean_dev_mean),
        fmt(s.clean_dev_worst),
        s.clean_broke,
        s.clean_fixed,
        layers_text(s),
        fmt(s.steps_mean),
        s.seconds_mean.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into())
    )
}

/// The tables of one experiment (all its types).
pub fn report(dirs: &[PathBuf]) -> Res<Report> {
    let records = read_records(dirs)?;
    let summaries = experiment::summarize(&records);
    let mut md = format!("| type {}", SUMMARY_HEAD.replacen("|---:", "|---|---:", 1));
    for (t, s) in &summaries {
        let _ = writeln!(md, "| {t} {}", summary_cells(s));
    }
    let per_type_g: Vec<Vec<Option<f64>>> = summaries
        .keys()
        .map(|t| {
            records
                .iter()
                .filter(|r| &r.ptype == t)
                .map(|r| r.g_rir)
                .collect()
        })
        .collect();
    let mean_l = metrics::mean_defined(summaries.values().map(|s| s.l_rir));
    let mean_g = metrics::g_rir(&per_type_g);
    let (fixed, broke): (usize, usize) = summaries
        .values()
        .fold((0, 0), |(f, b), s| (f + s.fixed, b + s.broke));
    let _ = write!(md, "\nmean L-RIR: {}\nmean G-RIR: {}\nedits: {}; perturbed tasks fixed {fixed} / broken {broke} (summed over edits)\n", fmt(mean_l), fmt(mean_g), records.len());
    let matrix = cross_type_matrix(&records, &mut md);
    Ok(Report {
        json: json!({"types": summaries, "mean_l_rir": mean_l, "mean_g_rir": mean_g, "edits": records.len(), "fixed": fixed, "broke": broke, "matrix": matrix}),
        markdown: md,
    })
}

/// Mean G-RIR per edit type (rows) and evaluated type (columns), where edits were evaluated on
/// more than one perturbed type.
fn cross_type_matrix(
    records: &[EditRecord],
    md: &mut String,
) -> BTreeMap<String, BTreeMap<String, Option<f64>>> {
    let eval_types: BTreeSet<&SetName> = records.iter().flat_map(|r| r.eval.keys()).collect();
    let edit_types: BTreeSet<PerturbationType> = records.iter().map(|r| r.ptype).collect();
    let mut matrix = BTreeMap::new();
    if eval_types.len() < 2 {
        return matrix;
    }
    let names: Vec<&str> = eval_types.iter().map(|s| s.name()).collect();
    let _ = write!(
        md,
        "\nG-RIR, edit type (rows) x evaluated type (columns)\n\n| edit \\ eval | {} |\n|---|{}\n",
        names.join(" | "),
        "---:|".repeat(names.len())
    );
    for t in edit_types {
        let row: BTreeMap<String, Option<f64>> = eval_types
            .iter()
            .map(|e| {
                (
                    e.to_string(),
                    metrics::mean_defined(
                        records
                            .iter()
                            .filter(|r| r.ptype == t)
                            .map(|r| r.eval.get(*e).and_then(|s| s.g_rir)),
                    ),
                )
            })
            .collect();
        let _ = writeln!(
            md,
            "| {t} | {} |",
            row.values()
                .map(|v| fmt(*v))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        matrix.insert(t.to_string(), row);
    }
    matrix
}

pub fn run(dirs: &[PathBuf], out: Option<PathBuf>) -> Res {
    if dirs.is_empty() {
        return Err("give one or more experiment directories (or --setting LABEL=DIR for the efficacy document)".into());
    }
    let r = report(dirs)?;
    let out = out.unwrap_or_else(|| dirs[0].clone());
    std::fs::create_dir_all(&out)?;
    common::write(&out.join("report.md"), &r.markdown)?;
    common::write(
        &out.join("report.json"),
        &serde_json::to_string_pretty(&r.json)?,
    )?;
    print!("{}", r.markdown);
    println!("report: {}", out.join("report.md").display());
    Ok(())
}

/// Inputs of the efficacy document.
pub struct DocArgs {
    /// (label, experiment directory), in the order the tables show them; the first is the main
    /// setting.
    pub settings: Vec<(String, PathBuf)>,
    /// The baseline eval directory the experiments used.
    pub baseline: PathBuf,
    /// A `creme calibrate-layer` output directory.
    pub calibration: Option<PathBuf>,
    pub doc: PathBuf,
}

pub fn parse_setting(s: &str) -> Result<(String, PathBuf), String> {
    let (label, dir) = s
        .split_once('=')
        .ok_or_else(|| format!("--setting '{s}': LABEL=DIR"))?;
    Ok((label.trim().to_string(), PathBuf::from(dir)))
}

fn command_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("command.txt"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("(no command.txt in {})", dir.display()))
}

/// The efficacy document (markdown), from the runs named in `a`.
pub fn efficacy(a: &DocArgs) -> Res<String> {
    let base = eval::outcomes_of(&crate::run_dir::read_samples(
        &a.baseline.join("samples.jsonl"),
    )?);
    let runs: Vec<(String, PathBuf, Vec<EditRecord>)> = a
        .settings
        .iter()
        .map(|(l, d)| Ok((l.clone(), d.clone(), read_records(std::slice::from_ref(d))?)))
        .collect::<Res<_>>()?;
    let types: BTreeSet<PerturbationType> = runs
        .iter()
        .flat_map(|(_, _, rs)| rs.iter().map(|r| r.ptype))
        .collect();
    let adapter = runs
        .iter()
        .flat_map(|(_, _, rs)| rs.first())
        .map(|r| r.adapter.clone())
        .next()
        .unwrap_or_default();
    let mut md = String::from("# CREME on Qwen2.5-Coder-0.5B-Instruct: efficacy\n\n");
    let _ = writeln!(md, "Written by `creme report --setting ...` from the runs listed under \"How to repeat\"; every verdict is an executed test in creme's sandbox (a PASS means `check` returned). Greedy decoding (n = 1), so pass@1 is pass/fail and RIR per task is 0 or 1. Device: {adapter}.\n");
    baseline_section(&mut md, &base, &types)?;
    let _ = writeln!(md, "## Settings side by side\n");
    let _ = writeln!(md, "Fixed / broken: perturbed tasks that flip fail→pass / pass→fail after an edit, summed over the edits; net = fixed − broken. Clean dev: (clean passes after − before) / tasks evaluated. \"edit-worthy\" settings were evaluated on the type's edit-worthy tasks only (enough for L-RIR and G-RIR; their fixed/broken and clean columns cover those tasks, not all 164).\n");
    for t in &types {
        let _ = write!(
            md,
            "### {t}\n\n| setting {}",
            SUMMARY_HEAD.replacen("|---:", "|---|---:", 1)
        );
        for (label, _, rs) in &runs {
            let own: Vec<EditRecord> = rs.iter().filter(|r| r.ptype == *t).cloned().collect();
            if let Some(s) = experiment::summarize(&own).get(t) {
                let _ = writeln!(md, "| {label} {}", summary_cells(s));
            }
        }
        md.push('\n');
    }
    paper_section(&mut md);
    for (label, _, rs) in &runs {
        per_edit_section(&mut md, label, rs);
    }
    if let Some(c) = &a.calibration {
        key_layer_section(&mut md, c, &runs)?;
    }
    let _ = writeln!(md, "## How to repeat\n\nFrom the repository root, with the model and `../shared` in place (`scripts/demo.sh` fetches the model). Each run resumes where it stopped; `--shard i/n` splits an experiment over machines.\n\n```sh");
    let _ = writeln!(md, "{}", command_of(&a.baseline));
    if let Some(c) = &a.calibration {
        let _ = writeln!(md, "{}", command_of(c));
    }
    for (_, d, _) in &runs {
        let _ = writeln!(md, "{}", command_of(d));
    }
    // Paths as record_command writes them: under $RUNS (the runs' parent), relative, or $HOME.
    let places = common::Places::for_run(&a.baseline);
    let path = |p: &Path| places.word(&p.display().to_string());
    let labels: Vec<String> = a
        .settings
        .iter()
        .map(|(l, d)| format!("--setting {}", places.word(&format!("{l}={}", d.display()))))
        .collect();
    let _ = writeln!(
        md,
        "creme report {} --baseline {}{} --doc {}\n```\n\n`RUNS` is the directory that holds the run directories.",
        labels.join(" "),
        path(&a.baseline),
        a.calibration
            .as_ref()
            .map(|c| format!(" --calibration {}", path(c)))
            .unwrap_or_default(),
        path(&a.doc)
    );
    Ok(md)
}

fn baseline_section(md: &mut String, base: &Outcomes, types: &BTreeSet<PerturbationType>) -> Res {
    let oracle = oracle_pass();
    let _ = writeln!(md, "## Baseline (unedited model)\n\n| set | passes | tasks | edit-worthy | oracle passes | same verdict as the oracle |\n|---|---:|---:|---|---:|---:|");
    let sets: Vec<SetName> = std::iter::once(SetName::Clean)
        .chain(types.iter().map(|t| SetName::Perturbed(*t)))
        .collect();
    for s in &sets {
        let Some(m) = base.get(s) else { continue };
        let passes = m.values().filter(|&&p| p).count();
        let worthy = if s.is_clean() {
            "-".to_string()
        } else {
            experiment::edit_worthy(base, *s).join(", ")
        };
        // Only where the oracle knows these tasks (it covers HumanEval's 164).
        let (o_pass, same) = match oracle
            .as_ref()
            .and_then(|o| o.get(s))
            .filter(|o| m.keys().all(|t| o.contains_key(t)))
        {
            Some(o) => (
                o.values().filter(|&&p| p).count().to_string(),
                format!(
                    "{}/{}",
                    m.iter().filter(|(t, p)| o.get(*t) == Some(p)).count(),
                    m.len()
                ),
            ),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            md,
            "| {s} | {passes} | {} | {worthy} | {o_pass} | {same} |",
            m.len()
        );
    }
    if let Some(o) = oracle.as_ref().filter(|o| {
        base.get(&SetName::Clean).is_some_and(|m| {
            o.get(&SetName::Clean)
                .is_some_and(|oc| m.keys().all(|t| oc.contains_key(t)))
        })
    }) {
        for t in types {
            let set = SetName::Perturbed(*t);
            let ours: BTreeSet<String> = experiment::edit_worthy(base, set).into_iter().collect();
            let theirs: BTreeSet<String> = experiment::edit_worthy(o, set).into_iter().collect();
            let only = |a: &BTreeSet<String>, b: &BTreeSet<String>| {
                a.difference(b).cloned().collect::<Vec<_>>().join(", ")
            };
            let _ = writeln!(md, "\n{t} edit-worthy tasks: creme {}, the oracle (HF transformers, f32) {}; only creme: {}; only the oracle: {}.", ours.len(), theirs.len(), or_none(only(&ours, &theirs)), or_none(only(&theirs, &ours)));
        }
    }
    md.push('\n');
    Ok(())
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

/// The oracle's greedy verdicts (`hf_greedy_pass.json`: per set, a list in HumanEval order).
fn oracle_pass() -> Option<Outcomes> {
    let path =
        common::shared_dir().join("oracle/qwen2.5-coder-0.5b-instruct-q4km/hf_greedy_pass.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    Some(
        v.as_object()?
            .iter()
            .filter_map(|(s, l)| {
                Some((
                    s.parse::<SetName>().ok()?,
                    l.as_array()?
                        .iter()
                        .enumerate()
                        .map(|(i, p)| (format!("HumanEval/{i}"), p.as_bool().unwrap_or(false)))
                        .collect(),
                ))
            })
            .collect(),
    )
}

fn paper_section(md: &mut String) {
    md.push_str(
        "### Beside the paper\n\nThe paper (arXiv 2507.16407) reports, averaged over its perturbation types, for 7B models with n = 10 samples: \
         L-RIR 0.23 (CodeLlama-7B) and 0.27 (Qwen2.5-Coder-7B), G-RIR 0.235 and 0.238, and clean pass@1 within 1% of the unedited model. \
         The rows above are one 0.5B model, one type, greedy decoding, so they show the method's behaviour on this model rather than a replication of those numbers.\n\n",
    );
}

fn per_edit_section(md: &mut String, label: &str, rs: &[EditRecord]) {
    let _ = writeln!(md, "## Edits: {label}\n\n| type | task | layer | steps | loss before → best (final) | edited task after | fixed | broken | G-RIR | clean dev | drafts whole | trace s | edit s | eval s |\n|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rs {
        let own = r.own();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} → {:.5} ({}) | {} | {} | {} | {} | {:+.3} | {}/{} | {:.0} | {:.1} | {:.0} |",
            r.ptype,
            r.task,
            r.layer,
            r.steps,
            r.loss_before.map(|l| format!("{l:.5}")).unwrap_or_else(|| "-".into()),
            r.best_loss,
            r.final_loss.map(|l| format!("{l:.5}")).unwrap_or_else(|| "-".into()),
            if r.edited_task_passes { "PASS" } else { "FAIL" },
            own.fixed,
            own.broke,
            fmt(r.g_rir),
            r.clean.dev,
            r.drafts_whole,
            r.generated,
            r.t_trace,
            r.t_edit,
            r.t_eval
        );
    }
    md.push('\n');
}

/// Per task: the pass metric's layer (creme's calibrate-layer run), the reference run's, the
/// logprob rules', and the layer each setting edited.
fn key_layer_section(
    md: &mut String,
    calib: &Path,
    runs: &[(String, PathBuf, Vec<EditRecord>)],
) -> Res {
    let path = calib.join("calibration.json");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let c = Calibration::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let n = c.rows.len();
    let _ = writeln!(md, "## Key layer\n\nThe authors' key layer comes from the pass metric: each layer's clean hidden states are patched into the perturbed prompt's forward, the patched run generates and is tested; among the layers whose patched run passes, the one with the largest clean/perturbed distance. creme computes it (`creme calibrate-layer`, `--layer pass`), and also a cheaper logprob trace.");
    let _ = writeln!(md, "Agreement with the pass metric over {n} tasks: logprob argmax {}; saturating logprob rule, threshold fitted on all {n} (same {}, within 2 layers {}), and held out one at a time (same {}, within 2 {}). Against the reference run's layers ({} tasks): creme's pass metric agrees on {}, the saturating rule on {}.\n",
        c.argmax_same, c.fit.same, c.fit.within_2, c.loo.same, c.loo.within_2, c.reference.tasks, c.reference.pass_metric_same, c.reference.same);
    let labels: Vec<&str> = runs.iter().map(|(l, ..)| l.as_str()).collect();
    let _ = writeln!(md, "| task | pass metric | reference run | logprob argmax | saturating (held out) | {} |\n|---|---:|---:|---:|---:|{}", labels.join(" | "), "---:|".repeat(labels.len()));
    for row in &c.rows {
        let used: Vec<String> = runs
            .iter()
            .map(|(_, _, rs)| {
                rs.iter()
                    .find(|r| r.ptype == c.ptype && r.task == row.task)
                    .map(|r| r.layer.to_string())
                    .unwrap_or_else(|| "-".into())
            })
            .collect();
        let reference = row
            .reference_layer
            .map_or("-".to_string(), |l| l.to_string());
        let _ = writeln!(
            md,
            "| {} | {} | {reference} | {} | {} | {} |",
            row.task,
            row.pass_layer,
            row.argmax_layer,
            row.predicted,
            used.join(" | ")
        );
    }
    md.push('\n');
    Ok(())
}

pub fn run_doc(a: DocArgs) -> Res {
    let md = efficacy(&a)?;
    if let Some(parent) = a.doc.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    common::write(&a.doc, &md)?;
    println!("efficacy report: {}", a.doc.display());
    Ok(())
}
