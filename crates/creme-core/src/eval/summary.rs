//! The summary of an evaluation: per set pass@k and, against the clean set where it was run,
//! ReCode's robustness numbers and the tasks that flipped. Typed (`summary.json`) and as a
//! markdown table (`summary.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::record::SampleRecord;
use crate::metrics::{self, Robustness};
use crate::sets::SetName;

/// The newest summary version this build writes.
pub const SUMMARY_VERSION: u32 = 1;

/// One set's line of the summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetSummary {
    pub set: SetName,
    pub tasks: usize,
    pub samples: usize,
    pub passed: usize,
    /// "pass@1", "pass@5", "pass@10" (the ks that fit the samples per task).
    #[serde(flatten)]
    pub pass_at: BTreeMap<String, f64>,
    /// Against clean (perturbed sets only, where clean was run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_vs_clean: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_vs_clean: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robust: Option<Robustness>,
}

/// `summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(default)]
    pub version: u32,
    pub sets: Vec<SetSummary>,
    /// Samples the judge could not run (not counted).
    pub sandbox_errors: usize,
    /// Draft-verified completions, and those that were the draft accepted whole.
    #[serde(default)]
    pub drafted: usize,
    #[serde(default)]
    pub drafts_whole: usize,
}

/// set -> task -> sample -> passed.
type Table = BTreeMap<SetName, BTreeMap<String, BTreeMap<usize, bool>>>;

/// Summarise `records` for `sets` (in that order), `n` samples per task.
pub fn summarize(records: &[SampleRecord], sets: &[SetName], n: usize) -> Summary {
    let mut by: Table = BTreeMap::new();
    for r in records.iter().filter(|r| !r.is_judge_error()) {
        by.entry(r.set)
            .or_default()
            .entry(r.task_id.clone())
            .or_default()
            .insert(r.sample, r.passed);
    }
    let ks: Vec<usize> = [1, 5, 10].into_iter().filter(|&k| k <= n.max(1)).collect();
    let rows = sets
        .iter()
        .filter_map(|s| by.get(s).map(|tasks| set_summary(*s, tasks, &ks, &by)))
        .collect();
    let drafted: Vec<_> = records.iter().filter_map(|r| r.draft).collect();
    Summary {
        version: SUMMARY_VERSION,
        sets: rows,
        sandbox_errors: records.iter().filter(|r| r.is_judge_error()).count(),
        drafted: drafted.len(),
        drafts_whole: drafted.iter().filter(|d| d.whole).count(),
    }
}

fn set_summary(
    set: SetName,
    tasks: &BTreeMap<String, BTreeMap<usize, bool>>,
    ks: &[usize],
    by: &Table,
) -> SetSummary {
    let counts: Vec<(usize, usize)> = tasks
        .values()
        .map(|s| (s.len(), s.values().filter(|&&p| p).count()))
        .collect();
    let mut row = SetSummary {
        set,
        tasks: tasks.len(),
        samples: counts.iter().map(|c| c.0).sum(),
        passed: counts.iter().map(|c| c.1).sum(),
        pass_at: ks
            .iter()
            .map(|&k| (format!("pass@{k}"), metrics::mean_pass_at_k(&counts, k)))
            .collect(),
        fixed_vs_clean: None,
        broken_vs_clean: None,
        robust: None,
    };
    if let (Some(clean), false) = (by.get(&SetName::Clean), set.is_clean()) {
        let (fixed, broken, robust) = against_clean(tasks, clean);
        row.fixed_vs_clean = Some(fixed);
        row.broken_vs_clean = Some(broken);
        row.robust = Some(robust);
    }
    row
}

/// Tasks present in both, samples paired by index: (fixed, broken, robustness).
fn against_clean(
    tasks: &BTreeMap<String, BTreeMap<usize, bool>>,
    clean: &BTreeMap<String, BTreeMap<usize, bool>>,
) -> (usize, usize, Robustness) {
    let mut rt = Vec::new();
    let (mut fixed, mut broken) = (0, 0);
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
        fixed += (p > c) as usize;
        broken += (p < c) as usize;
    }
    (fixed, broken, metrics::robustness(&rt))
}

impl Summary {
    /// The markdown table of `summary.md`.
    pub fn markdown(&self) -> String {
        let ks: Vec<&String> = self
            .sets
            .first()
            .map(|s| pass_at_keys(&s.pass_at))
            .unwrap_or_default();
        let mut md = format!(
            "| set | tasks | {} | passed | fixed vs clean | broken vs clean | Robust Pass@1 | Robust Drop@1 | Robust Relative@1 |\n",
            ks.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" | ")
        );
        md.push_str(&format!(
            "|---|---:|{}---:|---:|---:|---:|---:|---:|\n",
            "---:|".repeat(ks.len())
        ));
        for s in &self.sets {
            md.push_str(&markdown_row(s));
        }
        if self.drafted > 0 {
            md.push_str(&format!("\nDraft-verified: {} of {} completions were the baseline's draft accepted whole.\n", self.drafts_whole, self.drafted));
        }
        if self.sandbox_errors > 0 {
            md.push_str(&format!("\n{} samples are not counted: the sandbox could not run them (retried on the next run).\n", self.sandbox_errors));
        }
        md
    }
}

/// The pass@k keys in order of k (pass@1, pass@5, pass@10), not of their text.
fn pass_at_keys(m: &BTreeMap<String, f64>) -> Vec<&String> {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort_by_key(|k| {
        k.trim_start_matches("pass@")
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    keys
}

fn markdown_row(s: &SetSummary) -> String {
    let opt = |v: Option<usize>| v.map_or("-".to_string(), |v| v.to_string());
    let robust = match &s.robust {
        Some(r) => {
            [r.robust_pass_k, r.robust_drop_k, r.robust_relative_k].map(|v| format!("{v:.3}"))
        }
        None => ["-", "-", "-"].map(String::from),
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        s.set,
        s.tasks,
        pass_at_keys(&s.pass_at)
            .iter()
            .map(|k| format!("{:.3}", s.pass_at[*k]))
            .collect::<Vec<_>>()
            .join(" | "),
        s.passed,
        opt(s.fixed_vs_clean),
        opt(s.broken_vs_clean),
        robust[0],
        robust[1],
        robust[2]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::record::{Judgement, Verdict};
    use crate::sets::PerturbationType;

    #[test]
    fn summary_counts_passes_and_flips_against_clean() {
        let c3 = SetName::Perturbed(PerturbationType::C3);
        let r = |set: SetName, t: &str, p: bool| {
            let j = Judgement {
                verdict: if p { Verdict::Pass } else { Verdict::Fail },
                error_kind: String::new(),
                exit_code: None,
                seconds: 0.0,
                stdout_tail: String::new(),
                stderr_tail: String::new(),
            };
            SampleRecord::judged(set, t, 0, "", "stop", &j)
        };
        let recs = vec![
            r(SetName::Clean, "a", true),
            r(SetName::Clean, "b", true),
            r(SetName::Clean, "c", false),
            r(c3, "a", true),
            r(c3, "b", false),
            r(c3, "c", true),
        ];
        let s = summarize(&recs, &[SetName::Clean, c3], 1);
        assert_eq!((s.sets[0].passed, s.sets[1].passed), (2, 2));
        assert_eq!(s.sets[1].fixed_vs_clean, Some(1));
        assert_eq!(s.sets[1].broken_vs_clean, Some(1));
        let rp = s.sets[1].robust.unwrap().robust_pass_k;
        assert!((rp - 2.0 / 3.0).abs() < 1e-12);
        let md = s.markdown();
        assert!(md.contains("| C3 | 3 |"), "{md}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["sets"][1]["pass@1"], serde_json::json!(2.0 / 3.0));
        assert_eq!(serde_json::from_value::<Summary>(json).unwrap(), s);
    }
}
