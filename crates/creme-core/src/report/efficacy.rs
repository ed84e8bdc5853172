//! The efficacy document (`creme report --setting LABEL=DIR ...`): every setting beside the
//! others and the paper, per-edit tables, the baseline against the oracle, the key-layer
//! agreement, and the commands that made each run. Built from typed records; the caller reads
//! the files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::tables::{fmt, summary_cells, summary_head};
use crate::calibration::Calibration;
use crate::eval::Outcomes;
use crate::experiment::compare::{compare, markdown, Role};
use crate::experiment::{self, EditRecord};
use crate::sets::{PerturbationType, SetName};
use crate::stats::Confidence;

/// What the document is made from.
pub struct EfficacyInputs {
    /// The baseline evals the runs took their pairs from, one per dataset (the released prompts,
    /// other perturbator seeds), in the order the document shows them.
    pub baselines: Vec<Baseline>,
    /// (label, edit records) per setting, in the order the tables show them; the first is the
    /// main setting, the others are tested against it like the controls (e.g. the paper's).
    pub runs: Vec<(String, Vec<EditRecord>)>,
    /// Control runs of the main setting's pairs (`experiment --control`): (label, records).
    pub controls: Vec<(String, Vec<EditRecord>)>,
    /// The other-seed check (`scripts/other-seed.sh`) of the main setting's edits, then of its
    /// controls made the same way: (label, rows).
    pub other_seed: Vec<(String, Vec<OtherSeedRow>)>,
    /// Confidence level of the intervals.
    pub confidence: Confidence,
    /// A `creme calibrate-layer` result, for the key-layer table.
    pub calibration: Option<Calibration>,
    /// Findings written by hand (markdown), placed after the introduction: what the tables
    /// cannot say themselves.
    pub notes: Option<String>,
    /// The commands that made the baselines, the calibration (where given) and each run, in
    /// that order.
    pub commands: Vec<String>,
    /// The `creme report` command that writes this document.
    pub report_command: String,
}

/// One edit's other-seed check: another seed's perturbed prompt of the edited pair's task and
/// type, its verdict unedited and under the edit. `source` tells the check's files apart (one
/// per direction, e.g. the released edits on seed 1's prompts and back): rows pair across runs
/// by (source, type, task).
#[derive(Clone, Debug, PartialEq)]
pub struct OtherSeedRow {
    pub source: usize,
    pub ptype: PerturbationType,
    pub task: String,
    pub before: bool,
    pub after: bool,
}

/// The rows of an `other-seed.tsv` (type, task, layer, recorded loss, loss again, verdict
/// before, verdict after; PASS or FAIL); `name` appears in errors.
pub fn parse_other_seed(
    text: &str,
    name: &str,
    source: usize,
) -> Result<Vec<OtherSeedRow>, String> {
    let verdict = |v: &str, line: usize| match v {
        "PASS" => Ok(true),
        "FAIL" => Ok(false),
        other => Err(format!(
            "{name}:{line}: verdict '{other}', expected PASS or FAIL"
        )),
    };
    (text.lines().enumerate())
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() != 7 {
                return Err(format!("{name}:{}: {} fields, expected 7", i + 1, f.len()));
            }
            Ok(OtherSeedRow {
                source,
                ptype: f[0].parse().map_err(|e| format!("{name}:{}: {e}", i + 1))?,
                task: f[1].to_string(),
                before: verdict(f[5], i + 1)?,
                after: verdict(f[6], i + 1)?,
            })
        })
        .collect()
}

/// A baseline eval: its label (the dataset), its verdicts, and the oracle's greedy verdicts on
/// the sets whose prompts are the ones the oracle ran (the released sets), where known.
pub struct Baseline {
    pub label: String,
    pub outcomes: Outcomes,
    pub oracle: Option<Outcomes>,
}

/// The oracle's greedy verdicts (`hf_greedy_pass.json`: per set, a list in HumanEval order);
/// None where the text is not that.
pub fn parse_oracle_pass(text: &str) -> Option<Outcomes> {
    let lists: BTreeMap<String, Vec<bool>> = serde_json::from_str(text).ok()?;
    Some(
        lists
            .into_iter()
            .filter_map(|(s, l)| {
                let set = s.parse::<SetName>().ok()?;
                let tasks = l.into_iter().enumerate();
                Some((
                    set,
                    tasks.map(|(i, p)| (format!("HumanEval/{i}"), p)).collect(),
                ))
            })
            .collect(),
    )
}

/// The efficacy document (markdown).
pub fn efficacy(inp: &EfficacyInputs) -> String {
    let all_runs: Vec<&(String, Vec<EditRecord>)> = inp.runs.iter().chain(&inp.controls).collect();
    let types: BTreeSet<PerturbationType> = all_runs
        .iter()
        .flat_map(|(_, rs)| rs.iter().map(|r| r.ptype))
        .collect();
    let adapter = all_runs
        .iter()
        .flat_map(|(_, rs)| rs.first())
        .map(|r| r.adapter.clone())
        .next()
        .unwrap_or_default();
    let mut md = String::from("# CREME on Qwen2.5-Coder-0.5B-Instruct: efficacy\n\n");
    let _ = writeln!(md, "Written by `creme report --setting ...` from the runs listed under \"How to repeat\"; every verdict is an executed test in creme's sandbox (a PASS means `check` returned). Greedy decoding (n = 1), so pass@1 is pass/fail and RIR per task is 0 or 1. Device: {adapter}.\n");
    if let Some(notes) = &inp.notes {
        let _ = writeln!(md, "{}\n", notes.trim_end());
    }
    for b in &inp.baselines {
        baseline_section(&mut md, b, &types, inp.baselines.len() > 1);
    }
    damage_section(&mut md, &inp.baselines);
    controls_section(&mut md, inp, &types);
    other_seed_section(&mut md, &inp.other_seed, inp.confidence);
    let _ = writeln!(md, "## Settings side by side\n");
    let _ = writeln!(md, "Fixed / broken: perturbed tasks that flip fail→pass / pass→fail after an edit, summed over the edits; net = fixed − broken. Clean dev: (clean passes after − before) / tasks evaluated. \"edit-worthy\" settings were evaluated on the type's edit-worthy tasks only (enough for L-RIR and G-RIR; their fixed/broken and clean columns cover those tasks, not all 164).\n");
    for t in &types {
        let _ = write!(md, "### {t}\n\n{}", summary_head("setting"));
        for (label, rs) in &all_runs {
            let own: Vec<EditRecord> = rs.iter().filter(|r| r.ptype == *t).cloned().collect();
            if let Some(s) = experiment::summarize(&own).get(t) {
                let _ = writeln!(md, "| {label} {}", summary_cells(s));
            }
        }
        md.push('\n');
    }
    md.push_str(PAPER);
    for (label, rs) in &inp.runs {
        per_edit_section(&mut md, label, rs);
    }
    if let Some(c) = &inp.calibration {
        key_layer_section(&mut md, c, &inp.runs);
    }
    let _ = writeln!(md, "## How to repeat\n\nFrom the repository root, with the model and `../shared` in place (`scripts/demo.sh` fetches the model). Each run resumes where it stopped; `--shard i/n` splits an experiment over machines.\n\n```sh");
    for c in &inp.commands {
        let _ = writeln!(md, "{c}");
    }
    let _ = writeln!(
        md,
        "{}\n```\n\nEach run's command names its directories under `RUNS`, set on the line before it.",
        inp.report_command
    );
    md
}

/// The main setting beside the other settings and the controls, pooled over every pair the runs
/// share (`experiment::compare`: intervals, exact McNemar tests, Holm), then L-RIR per type.
fn controls_section(md: &mut String, inp: &EfficacyInputs, types: &BTreeSet<PerturbationType>) {
    let Some((main, mine)) = inp.runs.first() else {
        return;
    };
    let others: Vec<(Role, &str, &[EditRecord])> = (inp.runs[1..].iter())
        .map(|(l, rs)| (Role::Setting, l.as_str(), rs.as_slice()))
        .chain((inp.controls.iter()).map(|(l, rs)| (Role::Control, l.as_str(), rs.as_slice())))
        .collect();
    if others.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Against the controls\n\nEvery pair of every baseline above, pooled. L-RIR: the edited pair's own perturbed prompt passes after the edit, with a Clopper-Pearson interval. The paired test compares each run with {main} on the pairs both edited: b = pairs only {main} repairs, c = pairs only the other run repairs (exact McNemar). Two Holm families: the controls (whether the edit beats them), and the other settings (e.g. the paper's), each adjusted over its own runs. G-RIR: the mean over edits of the other edit-worthy tasks of the type repaired. Fixed / broken: perturbed prompts of the evaluated tasks that flip, summed over edits. Clean dev: the mean over edits of the change in clean pass rate on the evaluated tasks, with a t interval.\n");
    for role in [Role::Control, Role::Setting] {
        let family: Vec<(Role, &str, &[EditRecord])> =
            others.iter().filter(|o| o.0 == role).copied().collect();
        if family.is_empty() {
            continue;
        }
        match compare((main, mine), &family, inp.confidence) {
            Ok(c) => md.push_str(&markdown(&c)),
            Err(e) => {
                let _ = writeln!(md, "(not compared: {e})");
            }
        }
        md.push('\n');
    }
    let arms: Vec<(&str, &[EditRecord])> = std::iter::once((main.as_str(), mine.as_slice()))
        .chain(others.iter().map(|(_, l, rs)| (*l, *rs)))
        .collect();
    let _ = writeln!(
        md,
        "L-RIR per type (edited pairs repaired / edits):\n\n| type | {} |\n|---|{}",
        arms.iter().map(|(l, _)| *l).collect::<Vec<_>>().join(" | "),
        "---:|".repeat(arms.len())
    );
    for t in types {
        let cells: Vec<String> = arms
            .iter()
            .map(|(_, rs)| {
                // As L-RIR counts them: the edits whose own pair was evaluated.
                let own: Vec<&EditRecord> = (rs.iter())
                    .filter(|r| r.ptype == *t && r.l_rir.is_some())
                    .collect();
                let k = own.iter().filter(|r| r.edited_task_passes).count();
                format!("{k}/{}", own.len())
            })
            .collect();
        let _ = writeln!(md, "| {t} | {} |", cells.join(" | "));
    }
    let hours = |rs: &[EditRecord]| {
        rs.iter()
            .map(|r| r.t_trace + r.t_edit + r.t_eval)
            .sum::<f64>()
            / 3600.0
    };
    let total: f64 = arms.iter().map(|(_, rs)| hours(rs)).sum();
    let edits: usize = arms.iter().map(|(_, rs)| rs.len()).sum();
    let _ = writeln!(md, "\nCompute: {edits} edits (trace, edit and evaluation) took {total:.1} hours on the device above; {main}: {:.0} s per edit.\n", hours(mine) * 3600.0 / mine.len().max(1) as f64);
}

/// The generalisation check a lookup cannot pass: of the other seed's prompts that fail
/// unedited, how many pass under the edit, beside the controls made the same way (paired on
/// the prompts failing for both).
fn other_seed_section(md: &mut String, runs: &[(String, Vec<OtherSeedRow>)], level: Confidence) {
    let Some((main, mine)) = runs.first() else {
        return;
    };
    let _ = writeln!(md, "## Another typo of the same prompt\n\nEach edit of {main} made again and tested on another perturbator seed's prompt of its task and type (`scripts/other-seed.sh`); the controls the same way. Repaired: the other prompt fails unedited and passes under the edit. Broken: it passes unedited and fails under the edit. The paired test (exact McNemar) compares with {main} on the prompts failing unedited in both.\n\n| run | other prompts failing unedited | repaired [{}% CI] | vs {main}: b / c, p | broken |\n|---|---:|---|---|---:|", (f64::from(level) * 100.0).round());
    let key = |r: &OtherSeedRow| (r.source, r.ptype, r.task.clone());
    // Verdicts after, by prompt, of the prompts failing (or passing) unedited.
    let after = |rs: &[OtherSeedRow], failing: bool| -> BTreeMap<_, bool> {
        (rs.iter())
            .filter(|r| r.before != failing)
            .map(|r| (key(r), r.after))
            .collect()
    };
    let base = after(mine, true);
    for (label, rs) in runs {
        let fail = after(rs, true);
        let repaired = fail.values().filter(|&&a| a).count() as u64;
        let broken = after(rs, false).values().filter(|&&a| !a).count();
        let interval = crate::stats::clopper_pearson(repaired, fail.len() as u64, level);
        let shown = match interval {
            Ok(Some(p)) => format!(
                "{}/{} = {:.2} [{:.2}, {:.2}]",
                p.k, p.n, p.estimate, p.lo, p.hi
            ),
            _ => "-".into(),
        };
        let paired: Vec<(bool, bool)> = (base.iter())
            .filter_map(|(k, &a)| fail.get(k).map(|&b| (a, b)))
            .collect();
        let (a, b): (Vec<bool>, Vec<bool>) = paired.into_iter().unzip();
        let test = match crate::stats::mcnemar_paired(&a, &b) {
            Ok(t) if label != main => format!(
                "{} / {} on {}, p = {:.4}",
                t.pairs.b,
                t.pairs.c,
                a.len(),
                t.p_value
            ),
            _ => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {label} | {} | {shown} | {test} | {broken} |",
            fail.len()
        );
    }
    md.push('\n');
}

/// Per baseline: how the perturbation changes verdicts, type by type (the tasks both sets hold).
fn damage_section(md: &mut String, baselines: &[Baseline]) {
    let _ = writeln!(md, "## What the perturbations do to the unedited model\n\nPer type: passes of the clean and the perturbed prompts over the tasks of both; edit-worthy = clean passes and perturbed fails (the pairs edited); reverse = clean fails and perturbed passes (a flip the other way, as likely a near-tie as damage).\n\n| baseline | type | tasks | clean passes | perturbed passes | edit-worthy | reverse |\n|---|---|---:|---:|---:|---:|---:|");
    for b in baselines {
        let Some(clean) = b.outcomes.get(&SetName::Clean) else {
            continue;
        };
        for (set, pert) in b.outcomes.iter().filter(|(s, _)| !s.is_clean()) {
            let both: Vec<(bool, bool)> = (pert.iter())
                .filter_map(|(t, &p)| clean.get(t).map(|&c| (c, p)))
                .collect();
            let count = |f: fn(&(bool, bool)) -> bool| both.iter().filter(|x| f(x)).count();
            let _ = writeln!(
                md,
                "| {} | {set} | {} | {} | {} | {} | {} |",
                b.label,
                both.len(),
                count(|x| x.0),
                count(|x| x.1),
                count(|x| x.0 && !x.1),
                count(|x| !x.0 && x.1)
            );
        }
    }
    md.push('\n');
}

fn baseline_section(
    md: &mut String,
    b: &Baseline,
    types: &BTreeSet<PerturbationType>,
    labelled: bool,
) {
    let base = &b.outcomes;
    // The oracle on this baseline's tasks only (a run may take a subset, e.g. a split's half).
    let oracle: Option<Outcomes> = b.oracle.as_ref().map(|o| {
        (o.iter())
            .filter_map(|(s, verdicts)| {
                let mine = base.get(s)?;
                let kept = verdicts.iter().filter(|(t, _)| mine.contains_key(*t));
                Some((*s, kept.map(|(t, p)| (t.clone(), *p)).collect()))
            })
            .collect()
    });
    let oracle = oracle.as_ref();
    let title = match labelled {
        true => format!("Baseline (unedited model): {}", b.label),
        false => "Baseline (unedited model)".to_string(),
    };
    let _ = writeln!(md, "## {title}\n\n| set | passes | tasks | edit-worthy | oracle passes | same verdict as the oracle |\n|---|---:|---:|---|---:|---:|");
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
    if let Some(o) = oracle.filter(|o| {
        base.get(&SetName::Clean).is_some_and(|m| {
            o.get(&SetName::Clean)
                .is_some_and(|oc| m.keys().all(|t| oc.contains_key(t)))
        })
    }) {
        for t in types
            .iter()
            .filter(|t| o.contains_key(&SetName::Perturbed(**t)))
        {
            let set = SetName::Perturbed(*t);
            let ours: BTreeSet<String> = experiment::edit_worthy(base, set).into_iter().collect();
            let theirs: BTreeSet<String> = experiment::edit_worthy(o, set).into_iter().collect();
            let only = |a: &BTreeSet<String>, b: &BTreeSet<String>| {
                or_none(a.difference(b).cloned().collect::<Vec<_>>().join(", "))
            };
            let _ = writeln!(md, "\n{t} edit-worthy tasks: creme {}, the oracle (HF transformers, f32) {}; only creme: {}; only the oracle: {}.", ours.len(), theirs.len(), only(&ours, &theirs), only(&theirs, &ours));
        }
    }
    md.push('\n');
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

const PAPER: &str = "### Beside the paper\n\nThe paper (arXiv 2507.16407) reports, averaged over its perturbation types, for 7B models with n = 10 samples: \
    L-RIR 0.23 (CodeLlama-7B) and 0.27 (Qwen2.5-Coder-7B), G-RIR 0.235 and 0.238, and clean pass@1 within 1% of the unedited model. \
    The rows above are one 0.5B model with greedy decoding, so they show the method's behaviour on this model rather than a replication of those numbers.\n\n";

fn per_edit_section(md: &mut String, label: &str, rs: &[EditRecord]) {
    let _ = writeln!(md, "## Edits: {label}\n\n| type | task | layer | steps | loss before → best (final) | edited task after | fixed | broken | G-RIR | clean dev | drafts whole | trace s | edit s | eval s |\n|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let loss = |l: Option<f64>| l.map(|l| format!("{l:.5}")).unwrap_or_else(|| "-".into());
    for r in rs {
        let own = r.own();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} → {:.5} ({}) | {} | {} | {} | {} | {:+.3} | {}/{} | {:.0} | {:.1} | {:.0} |",
            r.ptype,
            r.task,
            layer_cell(r),
            r.steps,
            loss(r.loss_before),
            r.best_loss,
            loss(r.final_loss),
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
    let flagged = rs.iter().filter(|r| r.trace_too_close.is_some()).count();
    if flagged > 0 {
        let _ = writeln!(md, "\n† {flagged} of {} pairs: the target's log-probabilities after the clean and the perturbed prompt were less than {} nat apart, too close to normalise; the trace scored the patched log-probabilities, and the layer is where they are highest.", rs.len(), crate::trace::MIN_NORMALISABLE_GAP);
    }
    md.push('\n');
}

/// The edited layer, marked † where the pair's trace was too close to normalise.
fn layer_cell(r: &EditRecord) -> String {
    match r.trace_too_close {
        Some(_) => format!("{}†", r.layer),
        None => r.layer.to_string(),
    }
}

/// Per task: the pass metric's layer (creme's calibrate-layer run), the reference run's, the
/// logprob rules', and the layer each setting edited.
fn key_layer_section(md: &mut String, c: &Calibration, runs: &[(String, Vec<EditRecord>)]) {
    let n = c.rows.len();
    let _ = writeln!(md, "## Key layer\n\nThe authors' key layer comes from the pass metric: each layer's clean hidden states are patched into the perturbed prompt's forward, the patched run generates and is tested; among the layers whose patched run passes, the one with the largest clean/perturbed distance. creme computes it (`creme calibrate-layer`, `--layer pass`), and also a cheaper logprob trace.");
    let _ = writeln!(md, "Agreement with the pass metric over {n} tasks: logprob argmax {}; saturating logprob rule, threshold fitted on all {n} (same {}, within 2 layers {}), and held out one at a time (same {}, within 2 {}). Against the reference run's layers ({} tasks): creme's pass metric agrees on {}, the saturating rule on {}.\n",
        c.argmax_same, c.fit.same, c.fit.within_2, c.loo.same, c.loo.within_2, c.reference.tasks, c.reference.pass_metric_same, c.reference.same);
    let labels: Vec<&str> = runs.iter().map(|(l, _)| l.as_str()).collect();
    let _ = writeln!(md, "| task | pass metric | reference run | logprob argmax | saturating (held out) | {} |\n|---|---:|---:|---:|---:|{}", labels.join(" | "), "---:|".repeat(labels.len()));
    for row in &c.rows {
        let used: Vec<String> = runs
            .iter()
            .map(|(_, rs)| {
                // Runs pooled over datasets edit a task once per prompt: every layer, in order.
                let layers: Vec<String> = (rs.iter())
                    .filter(|r| r.ptype == c.ptype && r.task == row.task)
                    .map(|r| r.layer.to_string())
                    .collect();
                if layers.is_empty() {
                    "-".into()
                } else {
                    layers.join(" / ")
                }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oracle_lists_read_in_humaneval_order() {
        let o =
            parse_oracle_pass(r#"{"clean": [true, false], "C3": [false], "X9": [true]}"#).unwrap();
        assert_eq!(o[&SetName::Clean]["HumanEval/1"], false);
        assert_eq!(o.len(), 2);
        assert!(parse_oracle_pass("[]").is_none());
    }

    #[test]
    fn a_document_without_runs_still_has_its_sections() {
        let base = Outcomes::from([(SetName::Clean, BTreeMap::from([("T/0".to_string(), true)]))]);
        let md = efficacy(&EfficacyInputs {
            baselines: vec![Baseline {
                label: "released".into(),
                outcomes: base,
                oracle: None,
            }],
            runs: Vec::new(),
            controls: Vec::new(),
            other_seed: Vec::new(),
            confidence: Confidence::default(),
            notes: None,
            calibration: None,
            commands: vec!["creme eval --out base".into()],
            report_command: "creme report --baseline base".into(),
        });
        assert!(md.contains("| clean | 1 | 1 | - | - | - |"), "{md}");
        assert!(
            !md.contains("## Against the controls"),
            "no controls, no comparison"
        );
        assert!(md.contains("```sh\ncreme eval --out base\ncreme report --baseline base\n```"));
    }

    #[test]
    fn pooled_pairs_of_two_baselines_against_a_control_and_the_oracle_on_the_released_tasks_only() {
        use crate::edit::Control;
        use crate::experiment::compare::tests::rec;
        let verdicts = |v: &[(&str, bool)]| -> BTreeMap<String, bool> {
            v.iter().map(|(t, p)| (t.to_string(), *p)).collect()
        };
        let c3 = SetName::Perturbed(PerturbationType::C3);
        let tasks = [("HumanEval/0", true), ("HumanEval/1", true)];
        let outcomes = |pert: &[(&str, bool)]| {
            Outcomes::from([(SetName::Clean, verdicts(&tasks)), (c3, verdicts(pert))])
        };
        // The oracle knows 3 tasks, one of them outside the baseline's.
        let oracle = Outcomes::from([(
            SetName::Clean,
            verdicts(&[
                ("HumanEval/0", true),
                ("HumanEval/1", false),
                ("HumanEval/2", true),
            ]),
        )]);
        let seeded = |task: &str, seed: &str, passes, control| EditRecord {
            prompt_digest: Some(seed.into()),
            ..rec(task, passes, control)
        };
        let setting = vec![
            seeded("HumanEval/0", "a", true, None),
            seeded("HumanEval/0", "b", true, None),
            seeded("HumanEval/1", "b", false, None),
        ];
        let sham: Vec<EditRecord> = (setting.iter())
            .map(|r| EditRecord {
                control: Some(Control::Sham),
                edited_task_passes: false,
                ..r.clone()
            })
            .collect();
        let other = |v: &[(bool, bool)]| -> Vec<OtherSeedRow> {
            (v.iter().enumerate())
                .map(|(i, &(before, after))| OtherSeedRow {
                    source: 0,
                    ptype: PerturbationType::C3,
                    task: format!("HumanEval/{i}"),
                    before,
                    after,
                })
                .collect()
        };
        let md = efficacy(&EfficacyInputs {
            baselines: vec![
                Baseline {
                    label: "released".into(),
                    outcomes: outcomes(&[("HumanEval/0", false), ("HumanEval/1", true)]),
                    oracle: Some(oracle),
                },
                Baseline {
                    label: "seed1".into(),
                    outcomes: outcomes(&[("HumanEval/0", false), ("HumanEval/1", false)]),
                    oracle: None,
                },
            ],
            runs: vec![("setting".into(), setting)],
            controls: vec![("sham".into(), sham)],
            other_seed: vec![
                (
                    "setting".into(),
                    other(&[(false, true), (false, true), (true, false)]),
                ),
                (
                    "sham".into(),
                    other(&[(false, false), (false, true), (true, true)]),
                ),
            ],
            confidence: Confidence::default(),
            notes: Some("Findings by hand.".into()),
            calibration: None,
            commands: Vec::new(),
            report_command: "creme report".into(),
        });
        assert!(
            md.contains("## Baseline (unedited model): released")
                && md.contains("Findings by hand.")
        );
        // The oracle's clean passes count over the baseline's 2 tasks: 1, not 2.
        assert!(md.contains("| clean | 2 | 2 | - | 1 | 1/2 |"), "{md}");
        assert!(md.contains("| seed1 | C3 | 2 | 2 | 0 | 2 | 0 |"), "{md}");
        assert!(md.contains("| setting | 3 | 2/3 = 0.67"), "{md}");
        assert!(
            md.contains("| sham | 3 | 0/3 = 0.00") && md.contains("2 / 0 on 3 pairs"),
            "{md}"
        );
        assert!(md.contains("| C3 | 2/3 | 0/3 |"), "{md}");
        assert!(
            md.contains("| setting | 2 | 2/2 = 1.00 [0.16, 1.00] | - | 1 |"),
            "{md}"
        );
        assert!(
            md.contains("| sham | 2 | 1/2 = 0.50 [0.01, 0.99] | 1 / 0 on 2, p = 1.0000 | 0 |"),
            "{md}"
        );
    }

    #[test]
    fn other_seed_rows_read_from_the_script_and_a_missing_verdict_is_refused() {
        let rows = parse_other_seed(
            "A2\tHumanEval/149\t15\t5.7e-05\t0.000058\tFAIL\tPASS\n",
            "t.tsv",
            1,
        )
        .unwrap();
        assert_eq!(
            rows[0],
            OtherSeedRow {
                source: 1,
                ptype: PerturbationType::A2,
                task: "HumanEval/149".into(),
                before: false,
                after: true
            }
        );
        let err = parse_other_seed("A2\tHumanEval/149\t15\t5.7e-05\t?\t-\tPASS\n", "t.tsv", 0)
            .unwrap_err();
        assert!(err.contains("t.tsv:1"), "{err}");
    }
}
