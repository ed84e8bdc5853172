//! A setting's edits beside its controls (sham, random, matched: experiment runs made with
//! `--control`), with the statistics every efficacy figure needs: L-RIR as a proportion with a
//! Clopper-Pearson interval, the setting against each control by an exact McNemar test on the
//! edited task's outcome paired by (type, task) and Holm-adjusted over the controls, fixed and
//! broken summed over edits, and the mean clean deviation with its Student-t interval.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::EditRecord;
use crate::edit::Control;
use crate::sets::PerturbationType;
use crate::stats::{self, Confidence, McNemar, MeanInterval, Proportion};

/// One run's edits (the setting, or one control), summarized.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Arm {
    pub label: String,
    pub edits: usize,
    /// Edits whose own perturbed prompt passes afterwards, of the edits that evaluated it.
    pub l_rir: Option<Proportion>,
    /// Mean G-RIR over the edits that have one.
    pub g_rir: Option<MeanInterval>,
    /// Perturbed tasks fixed / broken, summed over edits (the edited type's set).
    pub fixed: usize,
    pub broke: usize,
    pub clean_dev: Option<MeanInterval>,
    /// Clean prompts broken / fixed, summed over edits.
    pub clean_broke: usize,
    pub clean_fixed: usize,
}

/// What a run compared with the setting is: a control run (every record a control) or another
/// setting, such as the paper's (every record a real edit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Control,
    Setting,
}

/// The setting against one control (or another setting), on the pairs both edited.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Versus {
    #[serde(default = "control_role")]
    pub role: Role,
    pub control: Arm,
    pub paired: usize,
    pub mcnemar: McNemar,
    /// Holm-adjusted over the controls compared.
    pub p_holm: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub setting: Arm,
    pub controls: Vec<Versus>,
}

fn control_role() -> Role {
    Role::Control
}

fn arm(label: &str, rs: &[EditRecord], level: Confidence) -> Result<Arm, String> {
    let e = |x: stats::StatsError| x.to_string();
    let evaluated: Vec<&EditRecord> = rs.iter().filter(|r| r.l_rir.is_some()).collect();
    let passes = evaluated.iter().filter(|r| r.edited_task_passes).count();
    let g: Vec<f64> = rs.iter().filter_map(|r| r.g_rir).collect();
    let dev: Vec<f64> = rs.iter().map(|r| r.clean.dev).collect();
    let own: Vec<_> = rs.iter().map(|r| r.own()).collect();
    Ok(Arm {
        label: label.to_string(),
        edits: rs.len(),
        l_rir: stats::clopper_pearson(passes as u64, evaluated.len() as u64, level).map_err(e)?,
        g_rir: stats::mean_interval(&g, level).map_err(e)?,
        fixed: own.iter().map(|s| s.fixed).sum(),
        broke: own.iter().map(|s| s.broke).sum(),
        clean_dev: stats::mean_interval(&dev, level).map_err(e)?,
        clean_broke: rs.iter().map(|r| r.clean.broke).sum(),
        clean_fixed: rs.iter().map(|r| r.clean.fixed).sum(),
    })
}

/// An edit's pair: its type and task, and its perturbed prompt (runs on sets of other seeds edit
/// the same (type, task) from other prompts; they pool as separate pairs).
type PairKey = (PerturbationType, String, Option<String>);

fn by_pair(rs: &[EditRecord]) -> Result<BTreeMap<PairKey, bool>, String> {
    let mut m = BTreeMap::new();
    for r in rs {
        let key = (r.ptype, r.task.clone(), r.prompt_digest.clone());
        if m.insert(key, r.edited_task_passes).is_some() {
            return Err(format!("two edits of {} {} in one run", r.ptype, r.task));
        }
    }
    Ok(m)
}

/// A run's records as it is checked against its role: a control run holds controls only, a
/// setting real edits only.
fn check_role(role: Role, label: &str, rs: &[EditRecord]) -> Result<(), String> {
    let wrong = rs
        .iter()
        .find(|r| r.control.is_none() == (role == Role::Control));
    match (wrong, role) {
        (None, _) => Ok(()),
        (Some(r), Role::Control) => Err(format!(
            "control run '{label}' holds a real edit ({} {}): made without --control",
            r.ptype, r.task
        )),
        (Some(r), Role::Setting) => Err(format!(
            "setting '{label}' holds a control ({} {}): compare it as a control",
            r.ptype, r.task
        )),
    }
}

/// A control is the setting's edit with one thing changed, so on every pair both made it must
/// sit at the setting's layer (a matched one at its partner's) with the setting's edit settings; a control run made with other
/// flags (another layer rule, rows or solver) is refused, not silently paired.
fn check_control_matches(
    label: &str,
    mine: &[EditRecord],
    theirs: &[EditRecord],
) -> Result<(), String> {
    let key = |r: &EditRecord| (r.ptype, r.task.clone(), r.prompt_digest.clone());
    let setting: BTreeMap<PairKey, &EditRecord> = mine.iter().map(|r| (key(r), r)).collect();
    for c in theirs {
        let Some(s) = setting.get(&key(c)) else {
            continue;
        };
        // A matched edit is another pair's edit, made at that pair's layer.
        if c.layer != s.layer && c.control != Some(Control::Matched) {
            return Err(format!("control run '{label}' edited {} {} at layer {}, the setting at {}: make controls at the setting's layers (--layer from:SETTING/edits.jsonl)", c.ptype, c.task, c.layer, s.layer));
        }
        if c.settings != s.settings || c.stacked_with.len() != s.stacked_with.len() {
            return Err(format!("control run '{label}' edited {} {} with other edit settings than the setting ({:?} against {:?}): give the control the setting's flags", c.ptype, c.task, c.settings, s.settings));
        }
    }
    Ok(())
}

/// The setting's records beside each other run's (role, label, records); the McNemar tests are
/// Holm-adjusted over all the runs compared.
pub fn compare(
    setting: (&str, &[EditRecord]),
    others: &[(Role, &str, &[EditRecord])],
    level: Confidence,
) -> Result<Comparison, String> {
    check_role(Role::Setting, setting.0, setting.1)?;
    let mine = by_pair(setting.1)?;
    let mut tests = Vec::new();
    for (role, label, rs) in others {
        check_role(*role, label, rs)?;
        if *role == Role::Control {
            check_control_matches(label, setting.1, rs)?;
        }
        let theirs = by_pair(rs)?;
        let keys: Vec<&PairKey> = mine.keys().filter(|k| theirs.contains_key(*k)).collect();
        if keys.is_empty() && !rs.is_empty() {
            return Err(format!("'{label}' shares no pair with the setting: runs of other pairs, or records made before a pair carried its prompt's digest, mixed with newer ones"));
        }
        let a: Vec<bool> = keys.iter().map(|k| mine[*k]).collect();
        let b: Vec<bool> = keys.iter().map(|k| theirs[*k]).collect();
        let mcnemar = stats::mcnemar_paired(&a, &b).map_err(|e| e.to_string())?;
        tests.push((*role, arm(label, rs, level)?, keys.len(), mcnemar));
    }
    let ps: Vec<f64> = tests.iter().map(|t| t.3.p_value).collect();
    let holm = stats::holm(&ps).map_err(|e| e.to_string())?;
    Ok(Comparison {
        setting: arm(setting.0, setting.1, level)?,
        controls: tests
            .into_iter()
            .zip(holm)
            .map(|((role, control, paired, mcnemar), p_holm)| Versus {
                role,
                control,
                paired,
                mcnemar,
                p_holm,
            })
            .collect(),
    })
}

fn prop(p: &Option<Proportion>) -> String {
    match p {
        Some(p) => format!(
            "{}/{} = {:.2} [{:.2}, {:.2}]",
            p.k, p.n, p.estimate, p.lo, p.hi
        ),
        None => "-".into(),
    }
}

fn mean(m: &Option<MeanInterval>, digits: usize) -> String {
    match m {
        Some(MeanInterval {
            mean,
            lo: Some(lo),
            hi: Some(hi),
            ..
        }) => format!("{mean:+.digits$} [{lo:+.digits$}, {hi:+.digits$}]"),
        Some(m) => format!("{:+.digits$}", m.mean),
        None => "-".into(),
    }
}

/// The comparison as a markdown table: one row per arm, the tests in the control rows.
pub fn markdown(c: &Comparison) -> String {
    let level = c
        .setting
        .l_rir
        .map(|p| f64::from(p.confidence))
        .unwrap_or(Confidence::default().into());
    let mut md = format!(
        "| run | edits | L-RIR [{pct}% CI] | vs setting: b / c, McNemar p (Holm) | G-RIR mean [{pct}% CI] | perturbed fixed / broken | clean dev mean [{pct}% CI] | clean broken / fixed |\n|---|---:|---|---|---|---|---|---|\n",
        pct = (level * 100.0).round()
    );
    let row = |a: &Arm, test: String| {
        format!(
            "| {} | {} | {} | {} | {} | {} / {} | {} | {} / {} |\n",
            a.label,
            a.edits,
            prop(&a.l_rir),
            test,
            mean(&a.g_rir, 3),
            a.fixed,
            a.broke,
            mean(&a.clean_dev, 3),
            a.clean_broke,
            a.clean_fixed
        )
    };
    md += &row(&c.setting, "-".into());
    for v in &c.controls {
        let t = format!(
            "{} / {} on {} pairs, p = {:.4} ({:.4})",
            v.mcnemar.pairs.b, v.mcnemar.pairs.c, v.paired, v.mcnemar.p_value, v.p_holm
        );
        md += &row(&v.control, t);
    }
    md
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::edit::EditSettings;
    use crate::experiment::{CleanScore, Outcomes, EDIT_RECORD_VERSION};

    pub(crate) fn rec(task: &str, passes: bool, control: Option<Control>) -> EditRecord {
        EditRecord {
            version: EDIT_RECORD_VERSION,
            ptype: PerturbationType::C3,
            task: task.into(),
            layer: 3,
            layer_choice: "logprob".into(),
            control,
            edited_from: None,
            stacked_with: Vec::new(),
            trace_scores: None,
            trace_too_close: None,
            settings: EditSettings::default(),
            steps: 2,
            loss_before: None,
            best_loss: 0.0,
            final_loss: None,
            l_rir: Some(passes as u8 as f64),
            g_rir: None,
            edited_task_passes: passes,
            eval: BTreeMap::new(),
            clean: CleanScore::default(),
            eval_scope: "edit-worthy".into(),
            prompt_digest: None,
            tasks_per_set: 10,
            after: Outcomes::new(),
            drafts_whole: 0,
            generated: 0,
            t_trace: 0.0,
            t_edit: 0.0,
            t_eval: 0.0,
            t_total: 0.0,
            adapter: "cpu".into(),
        }
    }

    #[test]
    fn nine_of_ten_against_a_sham_that_fixes_none() {
        let tasks: Vec<String> = (0..10).map(|i| format!("HumanEval/{i}")).collect();
        let setting: Vec<EditRecord> = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| rec(t, i != 3, None))
            .collect();
        let sham: Vec<EditRecord> = tasks
            .iter()
            .map(|t| rec(t, false, Some(Control::Sham)))
            .collect();
        // The random control fixes task 3 only (the one the setting does not).
        let random: Vec<EditRecord> = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| rec(t, i == 3, Some(Control::Random { seed: 1 })))
            .collect();
        let c = compare(
            ("prompt rows", &setting),
            &[
                (Role::Control, "sham", &sham),
                (Role::Control, "random", &random),
            ],
            Confidence::default(),
        )
        .unwrap();
        let l = c.setting.l_rir.unwrap();
        assert_eq!((l.k, l.n), (9, 10));
        // SciPy 1.17.1: binomtest(9, 10).proportion_ci(method='exact') = (0.5550, 0.9975).
        assert!((l.lo - 0.5550).abs() < 1e-3 && (l.hi - 0.9975).abs() < 1e-3);
        let sham_test = &c.controls[0];
        assert_eq!(
            (sham_test.mcnemar.pairs.b, sham_test.mcnemar.pairs.c),
            (9, 0)
        );
        // binomtest(0, 9, 0.5).pvalue = 0.00390625; Holm over two: x2 for the smallest.
        assert!((sham_test.mcnemar.p_value - 0.00390625).abs() < 1e-12);
        assert!((sham_test.p_holm - 0.0078125).abs() < 1e-12);
        let random_test = &c.controls[1];
        assert_eq!(
            (random_test.mcnemar.pairs.b, random_test.mcnemar.pairs.c),
            (9, 1)
        );
        assert!(markdown(&c).contains("9/10 = 0.90"));
        // A control run that holds real edits is refused.
        assert!(compare(
            ("s", &setting),
            &[(Role::Control, "sham", &setting)],
            Confidence::default()
        )
        .is_err());
        // Another setting is compared the same way, and must hold real edits.
        let paper: Vec<EditRecord> = tasks
            .iter()
            .map(|t| rec(t, *t == "HumanEval/1", None))
            .collect();
        let c = compare(
            ("s", &setting),
            &[
                (Role::Setting, "paper", &paper),
                (Role::Control, "sham", &sham),
            ],
            Confidence::default(),
        )
        .unwrap();
        assert_eq!(
            (c.controls[0].role, c.controls[0].mcnemar.pairs.b),
            (Role::Setting, 8)
        );
        assert!(compare(
            ("s", &setting),
            &[(Role::Setting, "x", &sham)],
            Confidence::default()
        )
        .is_err());
    }

    #[test]
    fn a_control_at_another_layer_or_with_other_settings_is_refused() {
        let setting = [rec("HumanEval/5", true, None)];
        let sham = |r: EditRecord| {
            [EditRecord {
                control: Some(Control::Sham),
                ..r
            }]
        };
        let ok = sham(rec("HumanEval/5", false, None));
        let cmp = |c: &[EditRecord]| {
            compare(
                ("s", &setting),
                &[(Role::Control, "sham", c)],
                Confidence::default(),
            )
        };
        assert!(cmp(&ok).is_ok());
        let moved = sham(EditRecord {
            layer: 4,
            ..rec("HumanEval/5", false, None)
        });
        assert!(cmp(&moved)
            .unwrap_err()
            .contains("at layer 4, the setting at 3"));
        let mut other = rec("HumanEval/5", false, None);
        other.settings.lambda = 0.0;
        assert!(cmp(&sham(other))
            .unwrap_err()
            .contains("other edit settings"));
        // Another setting (e.g. the paper's) may choose its own layers.
        let paper = [EditRecord {
            layer: 9,
            ..rec("HumanEval/5", false, None)
        }];
        let versus = compare(
            ("s", &setting),
            &[(Role::Setting, "paper", &paper)],
            Confidence::default(),
        );
        assert!(versus.is_ok());
    }

    #[test]
    fn pairs_of_other_seeds_pool_as_separate_pairs_and_a_repeat_is_refused() {
        let seeded = |seed: &str, passes: bool, control| EditRecord {
            prompt_digest: Some(seed.into()),
            ..rec("HumanEval/5", passes, control)
        };
        let setting = [seeded("a", true, None), seeded("b", true, None)];
        let sham = [
            seeded("a", false, Some(Control::Sham)),
            seeded("b", false, Some(Control::Sham)),
        ];
        let c = compare(
            ("s", &setting),
            &[(Role::Control, "sham", &sham)],
            Confidence::default(),
        )
        .unwrap();
        assert_eq!(
            (c.controls[0].paired, c.controls[0].mcnemar.pairs.b),
            (2, 2)
        );
        // A control of other pairs (here: records without a digest) pairs with none: refused.
        let unpaired = [rec("HumanEval/5", false, Some(Control::Sham))];
        let err = compare(
            ("s", &setting),
            &[(Role::Control, "sham", &unpaired)],
            Confidence::default(),
        )
        .unwrap_err();
        assert!(err.contains("shares no pair"), "{err}");
        let twice = [seeded("a", true, None), seeded("a", false, None)];
        let err = compare(("s", &twice), &[], Confidence::default()).unwrap_err();
        assert!(err.contains("two edits"), "{err}");
    }
}
