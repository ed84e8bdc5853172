//! The paper's protocol as data: one typed record per edit (what was edited, how, and what the
//! edited model then passed), the scores of an edit from greedy pass/fail outcomes, and the
//! per-setting summaries the efficacy report prints. Pure functions: the CLI runs the models and
//! the tests, and stores these records as JSON lines.

pub mod compare;
pub mod runner;
pub mod split;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::edit::EditSettings;
pub use crate::eval::Outcomes;
use crate::metrics::{self, TaskOutcome};
use crate::sets::{PerturbationType, SetName};

/// The newest edit record version this build writes and reads. Version 0: records written before
/// versions (same fields; they load unchanged).
pub const EDIT_RECORD_VERSION: u32 = 1;

/// What an edit did to one evaluated perturbed set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SetScore {
    /// Mean RIR over the set's other edit-worthy tasks (None: there are none).
    pub g_rir: Option<f64>,
    /// Tasks that went from fail to pass / pass to fail.
    pub fixed: usize,
    pub broke: usize,
    pub passes_before: usize,
    pub passes_after: usize,
}

/// What an edit did to the clean prompts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CleanScore {
    /// (passes after - passes before) / tasks.
    pub dev: f64,
    pub passes_before: usize,
    pub passes_after: usize,
    pub fixed: usize,
    pub broke: usize,
}

/// One edit of the experiment: one JSON line of `edits.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EditRecord {
    #[serde(default)]
    pub version: u32,
    /// Perturbation type and task edited for.
    #[serde(rename = "type")]
    pub ptype: PerturbationType,
    pub task: String,
    pub layer: usize,
    /// How the layer was chosen (logprob, pass, random, from:FILE, a number).
    pub layer_choice: String,
    /// The control evaluated in place of the edit (None: the setting's own edit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<crate::edit::Control>,
    /// The task whose pair the edit was made from, when not this one (the matched control).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_from: Option<String>,
    /// The other pairs of the type fitted in the same solve (`--pairs`), left out of this
    /// record's scores of the type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stacked_with: Vec<String>,
    /// FNV-1a (hex) of the perturbed prompt edited for: tells apart runs on perturbed sets of
    /// other seeds, whose (type, task) pairs are the same (None: written before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_digest: Option<String>,
    #[serde(default)]
    pub trace_scores: Option<Vec<f64>>,
    /// The pair's logprob trace could not be normalised (its scores are log-probabilities), so
    /// this record's layer is left out of a `mode:FILE` rule's vote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_too_close: Option<crate::trace::TooClose>,
    pub settings: EditSettings,
    /// Loss evaluations made, the loss before the first update, the best and the last.
    pub steps: usize,
    #[serde(default)]
    pub loss_before: Option<f64>,
    pub best_loss: f64,
    pub final_loss: Option<f64>,
    /// 1 if the edited task's perturbed prompt passes after the edit (None: not evaluated).
    pub l_rir: Option<f64>,
    pub g_rir: Option<f64>,
    pub edited_task_passes: bool,
    /// Per evaluated perturbed set (the edited type first among equals).
    pub eval: BTreeMap<SetName, SetScore>,
    pub clean: CleanScore,
    /// Which tasks were evaluated: "all" or "edit-worthy" (the type's edit-worthy tasks only).
    pub eval_scope: String,
    /// Tasks per evaluated set.
    pub tasks_per_set: usize,
    /// Outcomes of the edited model on every evaluated set.
    pub after: Outcomes,
    /// Completions that were the baseline's draft accepted whole, of those generated.
    #[serde(default)]
    pub drafts_whole: usize,
    #[serde(default)]
    pub generated: usize,
    pub t_trace: f64,
    pub t_edit: f64,
    pub t_eval: f64,
    pub t_total: f64,
    pub adapter: String,
}

impl EditRecord {
    /// Parse one line of `edits.jsonl`, refusing versions this build does not know.
    pub fn parse_line(line: &str) -> Result<EditRecord, String> {
        let mut r: EditRecord =
            crate::versioned::parse(line, 0, EDIT_RECORD_VERSION, "an edit record")?;
        r.version = EDIT_RECORD_VERSION;
        Ok(r)
    }

    /// The records of an `edits.jsonl` text (`name` in messages), refusing versions this build
    /// does not know; blank lines are skipped.
    pub fn parse_lines(text: &str, name: &str) -> Result<Vec<EditRecord>, String> {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| EditRecord::parse_line(l).map_err(|e| format!("{name}:{}: {e}", i + 1)))
            .collect()
    }

    /// One line on a finished edit, as `creme experiment` prints it.
    pub fn summary_line(&self, label: &str) -> String {
        let own = self.own();
        format!(
            "{label}: layer {}, {} steps, loss {:.6}; edited task {}; {} fixed {} broke {}; clean {:+.3}; {:.0} s",
            self.layer,
            self.steps,
            self.best_loss,
            if self.edited_task_passes { "PASSES" } else { "still fails" },
            self.ptype,
            own.fixed,
            own.broke,
            self.clean.dev,
            self.t_total
        )
    }

    /// The edited type's set score.
    pub fn own(&self) -> SetScore {
        self.eval
            .get(&SetName::Perturbed(self.ptype))
            .cloned()
            .unwrap_or_default()
    }
}

/// Per task, the layer an earlier run chose, from the text of the file `name`: an `edits.jsonl`
/// (`jsonl`: each record's layer, by type and task) or a `creme calibrate-layer`
/// calibration.json (each row's pass-metric layer): the layers of a `from:FILE` rule.
pub fn layers_given(
    text: &str,
    jsonl: bool,
    name: &str,
) -> Result<HashMap<(PerturbationType, String), usize>, String> {
    if jsonl {
        let records = EditRecord::parse_lines(text, name)?;
        return Ok(records
            .into_iter()
            .map(|r| ((r.ptype, r.task), r.layer))
            .collect());
    }
    let c = crate::calibration::Calibration::parse(text).map_err(|e| format!("{name}: {e}"))?;
    Ok(c.rows
        .into_iter()
        .map(|row| ((c.ptype, row.task), row.pass_layer))
        .collect())
}

/// Per type, the most frequent key layer among earlier records (ties: the lower layer): the
/// layers of a `mode:FILE` rule. Records whose trace was too close to normalise do not vote.
pub fn layer_modes(records: &[EditRecord]) -> BTreeMap<PerturbationType, usize> {
    let mut counts: BTreeMap<PerturbationType, BTreeMap<usize, usize>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.trace_too_close.is_none()) {
        *counts
            .entry(r.ptype)
            .or_default()
            .entry(r.layer)
            .or_default() += 1;
    }
    counts
        .into_iter()
        .filter_map(|(t, c)| {
            let mode = c
                .into_iter()
                .max_by_key(|&(l, n)| (n, std::cmp::Reverse(l)))?;
            Some((t, mode.0))
        })
        .collect()
}

/// Edit-worthy tasks of a perturbed set: the clean prompt passes and the perturbed one fails.
pub fn edit_worthy(base: &Outcomes, set: SetName) -> Vec<String> {
    let (Some(clean), Some(pert)) = (base.get(&SetName::Clean), base.get(&set)) else {
        return Vec::new();
    };
    pert.iter()
        .filter(|(t, &p)| !p && clean.get(*t) == Some(&true))
        .map(|(t, _)| t.clone())
        .collect()
}

/// Scores of an edit on one perturbed set, over the tasks evaluated after it but those of
/// `left_out` (the other pairs a multi-pair edit was fitted on: they are its training data). A
/// task missing from `base` or `after` is an error of the caller (the evaluation recorded every
/// task).
pub fn score_set(
    base: &Outcomes,
    after: &Outcomes,
    set: SetName,
    (edited, left_out): (Option<&str>, &[String]),
) -> Result<(SetScore, Option<f64>), String> {
    let get = |o: &Outcomes, s: SetName, t: &str| {
        o.get(&s)
            .and_then(|m| m.get(t))
            .copied()
            .ok_or_else(|| format!("no outcome for {s} {t}"))
    };
    let tasks: Vec<&String> = after
        .get(&set)
        .map(|m| m.keys().filter(|t| !left_out.contains(t)).collect())
        .unwrap_or_default();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        let rate = |b: bool| b as u8 as f64;
        outcomes.push(TaskOutcome {
            task_id: t.clone(),
            orig: rate(get(base, SetName::Clean, t)?),
            before: rate(get(base, set, t)?),
            after: rate(get(after, set, t)?),
        });
    }
    let (local, general) = metrics::edit_rirs(edited.unwrap_or(""), &outcomes);
    let score = SetScore {
        g_rir: general,
        fixed: outcomes.iter().filter(|o| o.after > o.before).count(),
        broke: outcomes.iter().filter(|o| o.after < o.before).count(),
        passes_before: outcomes.iter().filter(|o| o.before > 0.0).count(),
        passes_after: outcomes.iter().filter(|o| o.after > 0.0).count(),
    };
    Ok((score, edited.and(local)))
}

/// What an edit did to the clean prompts it was evaluated on.
pub fn score_clean(base: &Outcomes, after: &Outcomes) -> Result<CleanScore, String> {
    let empty = BTreeMap::new();
    let now = after.get(&SetName::Clean).unwrap_or(&empty);
    let was = base.get(&SetName::Clean).ok_or("no clean baseline")?;
    let mut before = Vec::with_capacity(now.len());
    for t in now.keys() {
        before.push(
            *was.get(t)
                .ok_or_else(|| format!("no clean baseline for {t}"))? as u8 as f64,
        );
    }
    let after_v: Vec<f64> = now.values().map(|&p| p as u8 as f64).collect();
    let pairs = || before.iter().zip(&after_v);
    Ok(CleanScore {
        dev: metrics::clean_deviation(&before, &after_v),
        passes_before: before.iter().filter(|&&b| b > 0.0).count(),
        passes_after: after_v.iter().filter(|&&a| a > 0.0).count(),
        fixed: pairs().filter(|(b, a)| a > b).count(),
        broke: pairs().filter(|(b, a)| a < b).count(),
    })
}

/// One setting's edits of one type, summarized as the report prints them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub edits: usize,
    pub l_rir: Option<f64>,
    pub g_rir: Option<f64>,
    /// Edits whose own task passes afterwards.
    pub edited_fixed: usize,
    /// Perturbed tasks fixed / broken, summed over edits, and the difference.
    pub fixed: usize,
    pub broke: usize,
    pub net: i64,
    pub clean_dev_mean: Option<f64>,
    /// The clean deviation of largest magnitude.
    pub clean_dev_worst: Option<f64>,
    pub clean_broke: usize,
    pub clean_fixed: usize,
    /// (layer, edits), most frequent first.
    pub layers: Vec<(usize, usize)>,
    pub steps_mean: Option<f64>,
    pub eval_scope: String,
    pub tasks_per_set: usize,
    /// Seconds per edit (trace + edit + evaluation), mean.
    pub seconds_mean: Option<f64>,
}

fn mean(v: impl IntoIterator<Item = f64>) -> Option<f64> {
    metrics::mean_defined(v.into_iter().map(Some))
}

/// Summaries per edited type.
pub fn summarize(records: &[EditRecord]) -> BTreeMap<PerturbationType, Summary> {
    let mut by_type: BTreeMap<PerturbationType, Vec<&EditRecord>> = BTreeMap::new();
    for r in records {
        by_type.entry(r.ptype).or_default().push(r);
    }
    by_type
        .into_iter()
        .map(|(t, rs)| (t, summarize_type(&rs)))
        .collect()
}

fn summarize_type(rs: &[&EditRecord]) -> Summary {
    let own: Vec<SetScore> = rs.iter().map(|r| r.own()).collect();
    let mut layers: BTreeMap<usize, usize> = BTreeMap::new();
    for r in rs {
        *layers.entry(r.layer).or_default() += 1;
    }
    let mut layers: Vec<(usize, usize)> = layers.into_iter().collect();
    layers.sort_by_key(|&(l, n)| (std::cmp::Reverse(n), l));
    let (fixed, broke) = (
        own.iter().map(|s| s.fixed).sum::<usize>(),
        own.iter().map(|s| s.broke).sum::<usize>(),
    );
    let scopes: std::collections::BTreeSet<&str> =
        rs.iter().map(|r| r.eval_scope.as_str()).collect();
    Summary {
        edits: rs.len(),
        l_rir: metrics::mean_defined(rs.iter().map(|r| r.l_rir)),
        g_rir: metrics::mean_defined(rs.iter().map(|r| r.g_rir)),
        edited_fixed: rs.iter().filter(|r| r.edited_task_passes).count(),
        fixed,
        broke,
        net: fixed as i64 - broke as i64,
        clean_dev_mean: mean(rs.iter().map(|r| r.clean.dev)),
        clean_dev_worst: rs
            .iter()
            .map(|r| r.clean.dev)
            .fold(None, |w: Option<f64>, d| {
                Some(match w {
                    Some(w) if w.abs() >= d.abs() => w,
                    _ => d,
                })
            }),
        clean_broke: rs.iter().map(|r| r.clean.broke).sum(),
        clean_fixed: rs.iter().map(|r| r.clean.fixed).sum(),
        layers,
        steps_mean: mean(rs.iter().map(|r| r.steps as f64)),
        eval_scope: scopes.into_iter().collect::<Vec<_>>().join("+"),
        tasks_per_set: rs.iter().map(|r| r.tasks_per_set).max().unwrap_or(0),
        seconds_mean: mean(rs.iter().map(|r| r.t_total)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C3: SetName = SetName::Perturbed(PerturbationType::C3);

    fn outcomes(sets: &[(&str, &[(&str, bool)])]) -> Outcomes {
        sets.iter()
            .map(|(s, ts)| {
                (
                    s.parse().unwrap(),
                    ts.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn edit_worthy_tasks_pass_clean_and_fail_perturbed() {
        let base = outcomes(&[
            ("clean", &[("a", true), ("b", true), ("c", false)]),
            ("C3", &[("a", false), ("b", true), ("c", false)]),
        ]);
        assert_eq!(edit_worthy(&base, C3), vec!["a".to_string()]);
        assert!(edit_worthy(&base, "E1".parse().unwrap()).is_empty());
    }

    #[test]
    fn an_edit_is_scored_on_the_tasks_it_was_evaluated_on() {
        // Edit-worthy: a, b, c. The edit fixes a (its own) and b, breaks d, leaves c failing.
        let base = outcomes(&[
            (
                "clean",
                &[
                    ("a", true),
                    ("b", true),
                    ("c", true),
                    ("d", true),
                    ("e", false),
                ],
            ),
            (
                "C3",
                &[
                    ("a", false),
                    ("b", false),
                    ("c", false),
                    ("d", true),
                    ("e", false),
                ],
            ),
        ]);
        let after = outcomes(&[
            (
                "clean",
                &[
                    ("a", true),
                    ("b", false),
                    ("c", true),
                    ("d", true),
                    ("e", true),
                ],
            ),
            (
                "C3",
                &[
                    ("a", true),
                    ("b", true),
                    ("c", false),
                    ("d", false),
                    ("e", false),
                ],
            ),
        ]);
        let (s, l) = score_set(&base, &after, C3, (Some("a"), &[])).unwrap();
        assert_eq!(l, Some(1.0));
        assert_eq!(
            s.g_rir,
            Some(0.5),
            "b fixed, c not: the other edit-worthy tasks"
        );
        assert_eq!(
            (s.fixed, s.broke, s.passes_before, s.passes_after),
            (2, 1, 1, 2)
        );
        let c = score_clean(&base, &after).unwrap();
        assert_eq!(
            (c.fixed, c.broke, c.passes_before, c.passes_after),
            (1, 1, 4, 4)
        );
        assert_eq!(c.dev, 0.0);
        // A multi-pair edit's other pairs are left out: b's fix no longer counts.
        let (s, l) = score_set(&base, &after, C3, (Some("a"), &["b".to_string()])).unwrap();
        assert_eq!((l, s.g_rir, s.fixed, s.broke), (Some(1.0), Some(0.0), 1, 1));
        // A set evaluated without the edited task has no local score.
        let (_, l) = score_set(&base, &after, C3, (None, &[])).unwrap();
        assert_eq!(l, None);
        // A task the baseline lacks is an error, not a silent zero.
        let short = outcomes(&[("clean", &[("a", true)]), ("C3", &[("a", false)])]);
        assert!(score_set(&short, &after, C3, (Some("a"), &[])).is_err());
    }

    /// A C3 record of `task` edited at `layer`: its own outcome `l`, clean deviation `dev`, and
    /// the C3 prompts it fixed and broke.
    fn rec(task: &str, layer: usize, l: f64, dev: f64, fixed: usize, broke: usize) -> EditRecord {
        EditRecord {
            version: EDIT_RECORD_VERSION,
            ptype: PerturbationType::C3,
            task: task.into(),
            layer,
            layer_choice: "logprob".into(),
            control: None,
            edited_from: None,
            stacked_with: Vec::new(),
            trace_scores: None,
            trace_too_close: None,
            settings: EditSettings::default(),
            steps: 4,
            loss_before: Some(1.0),
            best_loss: 0.1,
            final_loss: Some(0.1),
            l_rir: Some(l),
            g_rir: Some(0.0),
            edited_task_passes: l > 0.0,
            eval: [(
                C3,
                SetScore {
                    fixed,
                    broke,
                    ..Default::default()
                },
            )]
            .into(),
            clean: CleanScore {
                dev,
                ..Default::default()
            },
            eval_scope: "all".into(),
            prompt_digest: None,
            tasks_per_set: 164,
            after: Outcomes::new(),
            drafts_whole: 0,
            generated: 0,
            t_trace: 1.0,
            t_edit: 1.0,
            t_eval: 1.0,
            t_total: 3.0,
            adapter: "cpu".into(),
        }
    }

    #[test]
    fn summaries_count_over_edits_and_keep_the_worst_clean_deviation() {
        let s = &summarize(&[
            rec("a", 11, 1.0, 0.01, 2, 1),
            rec("b", 11, 0.0, -0.03, 0, 3),
            rec("c", 2, 0.0, 0.02, 1, 0),
        ])[&PerturbationType::C3];
        assert_eq!(
            (s.edits, s.edited_fixed, s.fixed, s.broke, s.net),
            (3, 1, 3, 4, -1)
        );
        assert_eq!(s.layers, vec![(11, 2), (2, 1)]);
        assert_eq!(s.clean_dev_worst, Some(-0.03));
        assert!((s.l_rir.unwrap() - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn traces_too_close_to_normalise_do_not_vote_for_a_mode_layer() {
        let mut close = [rec("a", 3, 0.0, 0.0, 0, 0), rec("b", 3, 0.0, 0.0, 0, 0)];
        for r in &mut close {
            r.trace_too_close = Some(crate::trace::TooClose {
                lp_clean: -2.16,
                lp_pert: -1.92,
            });
        }
        let records = [close.to_vec(), vec![rec("c", 9, 0.0, 0.0, 0, 0)]].concat();
        assert_eq!(layer_modes(&records)[&PerturbationType::C3], 9);
        assert!(layer_modes(&close).is_empty(), "no vote: no mode layer");
    }

    #[test]
    fn given_layers_come_from_a_calibration_or_name_the_bad_line_of_an_edits_file() {
        use crate::calibration::{Calibration, CalibrationRow};
        let row = |task: &str, pass_layer| CalibrationRow {
            task: task.into(),
            pass_layer,
            threshold_fit_on_others: 0.5,
            predicted: 0,
            argmax_layer: 0,
            reference_layer: None,
        };
        let c = Calibration {
            version: 0,
            ptype: PerturbationType::C3,
            threshold: 0.5,
            fit: Default::default(),
            loo: Default::default(),
            argmax_same: 0,
            reference: Default::default(),
            rows: vec![row("a", 7), row("b", 12)],
        };
        let text = serde_json::to_string(&c).unwrap();
        let layers = layers_given(&text, false, "calibration.json").unwrap();
        assert_eq!(layers[&(PerturbationType::C3, "b".to_string())], 12);
        assert_eq!(layers.len(), 2);
        assert!(layers_given("", true, "e.jsonl").unwrap().is_empty());
        let e = layers_given("\nnot a record\n", true, "e.jsonl").unwrap_err();
        assert!(e.starts_with("e.jsonl:2:"), "{e}");
    }
}
