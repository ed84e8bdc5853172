//! The tables of `creme report` (and of an experiment's own report.md): per perturbation type
//! L-RIR, G-RIR, fixed/broken tasks, clean deviation, layers; the means over types; and the
//! edit-type x eval-type G-RIR matrix where edits were evaluated on other types too.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::experiment::{self, EditRecord, Summary};
use crate::metrics;
use crate::sets::{PerturbationType, SetName};

/// The markdown, and the JSON of the same figures (report.json).
pub struct Report {
    pub json: serde_json::Value,
    pub markdown: String,
}

/// What report.json holds (fields in the order of the keys the file has always had).
#[derive(Serialize)]
struct Totals {
    broke: usize,
    edits: usize,
    fixed: usize,
    matrix: BTreeMap<String, BTreeMap<String, Option<f64>>>,
    mean_g_rir: Option<f64>,
    mean_l_rir: Option<f64>,
    types: BTreeMap<PerturbationType, Summary>,
}

/// The edit log of a shard (`i` of `n`) of an experiment: edits.jsonl for a whole run.
pub fn edit_log_name((i, n): (usize, usize)) -> String {
    match n {
        1 => "edits.jsonl".to_string(),
        n => format!("edits-shard-{i}-of-{n}.jsonl"),
    }
}

/// Whether a file name is an experiment's edit log (see [`edit_log_name`]).
pub fn is_edit_log(name: &str) -> bool {
    name.starts_with("edits") && name.ends_with(".jsonl")
}

/// The edit records of several files (edits.jsonl, edits-shard-*.jsonl, of one or more runs),
/// each given as (name, text) in reading order: finished lines only (a torn last line is a run
/// still writing), one record per pair (type, task and perturbed prompt) — a record repeated
/// across shards or reruns counts once, while runs on sets of other perturbator seeds, which
/// edit the same (type, task) from other prompts, pool as separate pairs. Names appear in errors.
pub fn merge_edit_records(files: &[(String, String)]) -> Result<Vec<EditRecord>, String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (name, text) in files {
        for line in text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n') && !l.trim().is_empty())
        {
            let r = EditRecord::parse_line(line.trim_end()).map_err(|e| format!("{name}: {e}"))?;
            if seen.insert((r.ptype, r.task.clone(), r.prompt_digest.clone())) {
                out.push(r);
            }
        }
    }
    // A pair's key holds its prompt's digest, which records made before the field existed lack:
    // mixed, the same pair would count twice.
    let mut digests: BTreeMap<(PerturbationType, &str), bool> = BTreeMap::new();
    for r in &out {
        let has = r.prompt_digest.is_some();
        if *digests.entry((r.ptype, r.task.as_str())).or_insert(has) != has {
            return Err(format!("{} {}: records with and without the prompt's digest (made by builds before and after it was recorded) are mixed; rerun the older run", r.ptype, r.task));
        }
    }
    Ok(out)
}

/// A figure with three decimals, or "-" where it is undefined.
pub fn fmt(v: Option<f64>) -> String {
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

/// The summary table's head after its first column ("| type", "| setting").
pub const SUMMARY_HEAD: &str = "| edits | evaluated on | L-RIR | G-RIR | edited task fixed | perturbed fixed | perturbed broken | net | clean dev (mean) | clean dev (worst) | clean broken / fixed | layers (most frequent) | steps (mean) | s per edit |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|\n";

/// The summary table's head with a first column named `first`.
pub fn summary_head(first: &str) -> String {
    format!(
        "| {first} {}",
        SUMMARY_HEAD.replacen("|---:", "|---|---:", 1)
    )
}

/// One summary row's cells after the first column.
pub fn summary_cells(s: &Summary) -> String {
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

/// The tables of an experiment's records (all their types).
pub fn report(records: &[EditRecord]) -> Report {
    let summaries = experiment::summarize(records);
    let mut md = summary_head("type");
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
    let matrix = cross_type_matrix(records, &mut md);
    let totals = Totals {
        broke,
        edits: records.len(),
        fixed,
        matrix,
        mean_g_rir: mean_g,
        mean_l_rir: mean_l,
        types: summaries,
    };
    Report {
        // Through a Value, as before: its keys come out sorted at every level.
        json: serde_json::to_value(&totals).expect("the totals serialize"),
        markdown: md,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_write_their_own_edit_logs_and_the_report_reads_them_all() {
        assert_eq!(edit_log_name((0, 1)), "edits.jsonl");
        assert_eq!(edit_log_name((1, 4)), "edits-shard-1-of-4.jsonl");
        assert!(is_edit_log(&edit_log_name((3, 4))) && is_edit_log("edits.jsonl"));
        assert!(!is_edit_log("samples.jsonl") && !is_edit_log("edits.jsonl.tmp"));
    }

    #[test]
    fn merged_logs_keep_one_record_per_pair_and_the_pairs_of_other_seeds_apart() {
        use crate::experiment::compare::tests::rec;
        let seeded = |seed: &str| EditRecord {
            prompt_digest: Some(seed.into()),
            ..rec("HumanEval/5", true, None)
        };
        let line = |r: &EditRecord| serde_json::to_string(r).unwrap() + "\n";
        let released = line(&seeded("a")) + &line(&rec("HumanEval/6", true, None));
        let files = [
            ("released/edits.jsonl".to_string(), released.clone()),
            ("rerun/edits.jsonl".to_string(), released),
            ("seed1/edits.jsonl".to_string(), line(&seeded("b"))),
        ];
        let merged = merge_edit_records(&files).unwrap();
        let pairs: Vec<_> = merged
            .iter()
            .map(|r| (r.task.as_str(), r.prompt_digest.as_deref()))
            .collect();
        let mixed = [
            ("new/edits.jsonl".to_string(), line(&seeded("a"))),
            (
                "old/edits.jsonl".to_string(),
                line(&rec("HumanEval/5", true, None)),
            ),
        ];
        let err = merge_edit_records(&mixed).unwrap_err();
        assert!(
            err.contains("with and without the prompt's digest"),
            "{err}"
        );
        assert_eq!(
            pairs,
            [
                ("HumanEval/5", Some("a")),
                ("HumanEval/6", None),
                ("HumanEval/5", Some("b"))
            ]
        );
    }
}
