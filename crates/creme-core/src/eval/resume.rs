//! Resuming an evaluation from its records: which samples are settled, and judging again the
//! samples whose program the judge could not run (their completions are in the records).

use std::collections::{BTreeMap, HashSet};

use super::given::SampleKey;
use super::{Judge, SampleRecord};
use crate::dataset::Problem;
use crate::sets::SetName;

/// Earlier records split into the settled ones and the judge errors to judge again (one per
/// sample, none whose sample is settled, none whose task is not among `sets`: this run does not
/// ask for it), in (set, task, sample) order.
pub fn split_judge_errors(
    previous: Vec<SampleRecord>,
    sets: &BTreeMap<SetName, Vec<Problem>>,
) -> (Vec<SampleRecord>, Vec<SampleRecord>) {
    let (errors, done): (Vec<_>, Vec<_>) = previous.into_iter().partition(|r| r.is_judge_error());
    let settled: HashSet<SampleKey> = done.iter().map(SampleRecord::key).collect();
    let mut retry: BTreeMap<SampleKey, SampleRecord> = BTreeMap::new();
    let asked = |r: &SampleRecord| find_problem(sets, r.set, &r.task_id).is_some();
    for r in errors
        .into_iter()
        .filter(|r| !settled.contains(&r.key()) && asked(r))
    {
        retry.insert(r.key(), r);
    }
    (done, retry.into_values().collect())
}

/// Earlier records resumed: the settled ones, then the judge errors among them that `sets` asks
/// for judged again now (see [`split_judge_errors`], [`rejudge`]); returns the records and the
/// index of the first new one (the caller appends those). `retrying` hears how many are judged
/// again, when there are any.
pub async fn settle(
    previous: Vec<SampleRecord>,
    sets: &BTreeMap<SetName, Vec<Problem>>,
    judge: &mut impl Judge,
    retrying: &mut dyn FnMut(usize),
) -> (Vec<SampleRecord>, usize) {
    let (mut records, retry) = split_judge_errors(previous, sets);
    let first_new = records.len();
    if !retry.is_empty() {
        retrying(retry.len());
        records.extend(rejudge(&retry, sets, judge).await);
    }
    (records, first_new)
}

/// The problem of (set, task) among `sets`.
pub fn find_problem<'a>(
    sets: &'a BTreeMap<SetName, Vec<Problem>>,
    set: SetName,
    task: &str,
) -> Option<&'a Problem> {
    sets.get(&set)?.iter().find(|p| p.task_id == task)
}

/// Judge the records' completions again (those whose task is in `sets`): new records with the
/// new verdicts, the completions, tokens and draft use kept.
pub async fn rejudge(
    records: &[SampleRecord],
    sets: &BTreeMap<SetName, Vec<Problem>>,
    judge: &mut impl Judge,
) -> Vec<SampleRecord> {
    let items: Vec<(&SampleRecord, &Problem)> = records
        .iter()
        .filter_map(|r| Some((r, find_problem(sets, r.set, &r.task_id)?)))
        .collect();
    let programs: Vec<_> = items
        .iter()
        .map(|(r, p)| p.program(&p.prompt, &r.completion))
        .collect();
    let judged = judge.judge(&programs).await;
    items
        .iter()
        .zip(judged)
        .map(|((r, p), j)| {
            let mut rec =
                SampleRecord::judged(r.set, &p.task_id, r.sample, &r.completion, &r.finish, &j);
            rec.tokens = r.tokens.clone();
            rec.draft = r.draft;
            rec
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{Judgement, Verdict};
    use crate::sets::PerturbationType;

    fn record(set: SetName, task: &str, verdict: Verdict) -> SampleRecord {
        let j = Judgement {
            verdict,
            // An error of the judge, not of the program (which a retry may settle).
            error_kind: match verdict {
                crate::eval::Verdict::Error => crate::eval::JUDGE_ERROR_KIND.to_string(),
                _ => String::new(),
            },
            exit_code: None,
            seconds: 0.0,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
        };
        SampleRecord::judged(set, task, 0, "", "stop", &j)
    }

    fn problem(task: &str) -> Problem {
        Problem {
            task_id: task.into(),
            prompt: String::new(),
            entry_point: "f".into(),
            test: String::new(),
            original_prompt: None,
        }
    }

    #[test]
    fn judge_errors_are_retried_once_unless_settled_or_not_asked_for() {
        let clean = SetName::Clean;
        let sets = [(clean, vec![problem("a"), problem("b")])].into();
        let c3 = SetName::Perturbed(PerturbationType::C3);
        let previous = vec![
            record(clean, "a", Verdict::Error),
            record(clean, "a", Verdict::Pass),
            record(clean, "b", Verdict::Error),
            record(clean, "b", Verdict::Error),
            record(clean, "z", Verdict::Error),
            record(c3, "a", Verdict::Error),
        ];
        let (done, retry) = split_judge_errors(previous, &sets);
        assert_eq!(done.len(), 1);
        let retried: Vec<&str> = retry.iter().map(|r| r.task_id.as_str()).collect();
        assert_eq!(retried, vec!["b"]);
    }

    /// Passes every program.
    struct PassAll;

    impl Judge for PassAll {
        async fn judge(&mut self, programs: &[crate::dataset::TestProgram]) -> Vec<Judgement> {
            let j = record(SetName::Clean, "", Verdict::Pass);
            let pass = Judgement {
                verdict: j.verdict,
                error_kind: j.error_kind,
                exit_code: None,
                seconds: 0.0,
                stdout_tail: String::new(),
                stderr_tail: String::new(),
            };
            vec![pass; programs.len()]
        }
    }

    #[test]
    fn settling_judges_the_errors_again_and_puts_the_new_records_last() {
        let clean = SetName::Clean;
        let sets = [(clean, vec![problem("a"), problem("b")])].into();
        let previous = vec![
            record(clean, "b", Verdict::Error),
            record(clean, "a", Verdict::Fail),
        ];
        let mut heard = Vec::new();
        let (records, first_new) =
            pollster::block_on(settle(previous, &sets, &mut PassAll, &mut |n| {
                heard.push(n)
            }));
        assert_eq!((first_new, heard), (1, vec![1]));
        assert_eq!(
            (records[1].task_id.as_str(), records[1].passed),
            ("b", true)
        );
        let (again, first_new) = pollster::block_on(super::settle(
            records.clone(),
            &sets,
            &mut PassAll,
            &mut |_| panic!("nothing to retry"),
        ));
        assert_eq!((again, first_new), (records, 2));
    }
}
