//! Resuming an evaluation from its records: which samples are settled, and judging again the
//! samples whose program the judge could not run (their completions are in the records).

use std::collections::{BTreeMap, HashSet};

use super::given::SampleKey;
use super::{Judge, SampleRecord};
use crate::dataset::Problem;
use crate::sets::SetName;

/// Earlier records split into the settled ones and the judge errors to judge again (one per
/// sample, none whose sample is settled), in (set, task, sample) order.
pub fn split_judge_errors(previous: Vec<SampleRecord>) -> (Vec<SampleRecord>, Vec<SampleRecord>) {
    let (errors, done): (Vec<_>, Vec<_>) = previous.into_iter().partition(|r| r.is_judge_error());
    let settled: HashSet<SampleKey> = done.iter().map(SampleRecord::key).collect();
    let mut retry: BTreeMap<SampleKey, SampleRecord> = BTreeMap::new();
    for r in errors.into_iter().filter(|r| !settled.contains(&r.key())) {
        retry.insert(r.key(), r);
    }
    (done, retry.into_values().collect())
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
