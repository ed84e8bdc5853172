//! The record of one judged sample (one line of `samples.jsonl`), typed and versioned.
//!
//! Version history:
//! - 0: records written before this type existed (no `version` field). Same fields as 1; they
//!   load unchanged.
//! - 1: `version` added.
//!
//! A record of a later version than this build knows is refused with a message naming it, never
//! read by guessing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sets::SetName;

/// The newest sample record version this build writes and reads.
pub const SAMPLE_RECORD_VERSION: u32 = 1;

/// What judging a program concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Pass,
    Fail,
    Timeout,
    /// The judge could not run the program: not a verdict on it (retried on resume).
    Error,
}

/// What a judge reports for one program.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    /// What went wrong, in a word ("" for a pass): "exit", "assertion", "memory", "recursion",
    /// "syntax", "exception", "signal", "timeout", "sandbox" (the judge failed, not the program).
    pub error_kind: String,
    pub exit_code: Option<i32>,
    pub seconds: f64,
    pub stdout_tail: String,
    pub stderr_tail: String,
}

/// The `error_kind` of a sample the judge could not run.
pub const JUDGE_ERROR_KIND: &str = "sandbox";
/// The `error_kind` of a prompt that does not fit the context with the completion budget.
pub const PROMPT_TOO_LONG_KIND: &str = "prompt too long";

/// How a draft-verified completion used its draft.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftUse {
    /// Draft tokens accepted before the first difference.
    pub accepted: usize,
    /// The completion is the draft itself.
    pub whole: bool,
}

/// One judged sample: a line of `samples.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    #[serde(default)]
    pub version: u32,
    pub set: SetName,
    pub task_id: String,
    pub sample: usize,
    pub completion: String,
    /// How generation ended: "eos", "stop", "length", "given" (scored, not generated), "error".
    pub finish: String,
    pub passed: bool,
    pub verdict: Verdict,
    pub error_kind: String,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub seconds: f64,
    #[serde(default)]
    pub stderr_tail: String,
    #[serde(default)]
    pub stdout_tail: String,
    /// The completion's token ids (generated samples; drafts for later runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<DraftUse>,
}

impl SampleRecord {
    /// The record of `completion` for (set, task, sample) as `judgement` found it.
    pub fn judged(
        set: SetName,
        task_id: &str,
        sample: usize,
        completion: &str,
        finish: &str,
        judgement: &Judgement,
    ) -> SampleRecord {
        SampleRecord {
            version: SAMPLE_RECORD_VERSION,
            set,
            task_id: task_id.to_string(),
            sample,
            completion: completion.to_string(),
            finish: finish.to_string(),
            passed: judgement.verdict == Verdict::Pass,
            verdict: judgement.verdict,
            error_kind: judgement.error_kind.clone(),
            exit_code: judgement.exit_code,
            seconds: judgement.seconds,
            stderr_tail: judgement.stderr_tail.clone(),
            stdout_tail: judgement.stdout_tail.clone(),
            tokens: None,
            draft: None,
        }
    }

    /// A prompt that could not be generated from (too long for the context): an error record,
    /// not a verdict on a program.
    pub fn not_generated(set: SetName, task_id: &str, sample: usize, why: String) -> SampleRecord {
        SampleRecord {
            version: SAMPLE_RECORD_VERSION,
            set,
            task_id: task_id.to_string(),
            sample,
            completion: String::new(),
            finish: "error".into(),
            passed: false,
            verdict: Verdict::Error,
            error_kind: PROMPT_TOO_LONG_KIND.into(),
            exit_code: None,
            seconds: 0.0,
            stderr_tail: why,
            stdout_tail: String::new(),
            tokens: None,
            draft: None,
        }
    }

    /// The judge could not run this sample's program: no verdict, retried on resume.
    pub fn is_judge_error(&self) -> bool {
        self.verdict == Verdict::Error && self.error_kind == JUDGE_ERROR_KIND
    }

    /// (set, task, sample): what a record settles.
    pub fn key(&self) -> (SetName, String, usize) {
        (self.set, self.task_id.clone(), self.sample)
    }
}

/// Parse one line of `samples.jsonl`, refusing versions this build does not know.
pub fn parse_sample_line(line: &str) -> Result<SampleRecord, String> {
    let mut r: SampleRecord =
        crate::versioned::parse(line, 0, SAMPLE_RECORD_VERSION, "a sample record")?;
    r.version = SAMPLE_RECORD_VERSION;
    Ok(r)
}

/// Greedy pass/fail per set and task id.
pub type Outcomes = BTreeMap<SetName, BTreeMap<String, bool>>;

/// Pass/fail per (set, task) of sample 0 (the greedy sample), judge errors left out.
pub fn outcomes_of(records: &[SampleRecord]) -> Outcomes {
    let mut o = Outcomes::new();
    for r in records
        .iter()
        .filter(|r| !r.is_judge_error() && r.sample == 0)
    {
        o.entry(r.set)
            .or_default()
            .insert(r.task_id.clone(), r.passed);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sets::PerturbationType;

    /// A line as `creme eval` wrote it at 4f14782 (before versions): it must still load.
    const LEGACY_LINE: &str = r#"{"completion":"    return 1\n","error_kind":"","exit_code":0,"finish":"stop","passed":true,"sample":0,"seconds":0.05,"set":"C3","stderr_tail":"","stdout_tail":"","task_id":"HumanEval/0","verdict":"Pass","tokens":[262,470,220,16,198],"draft":{"accepted":5,"whole":true}}"#;

    #[test]
    fn legacy_records_load_and_new_ones_round_trip() {
        let r = parse_sample_line(LEGACY_LINE).unwrap();
        assert_eq!(r.set, SetName::Perturbed(PerturbationType::C3));
        assert_eq!(r.version, SAMPLE_RECORD_VERSION);
        assert_eq!(
            r.draft,
            Some(DraftUse {
                accepted: 5,
                whole: true
            })
        );
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains("\"version\":1"), "{line}");
        assert_eq!(parse_sample_line(&line).unwrap(), r);
    }

    #[test]
    fn a_later_version_is_refused_by_name() {
        let line = LEGACY_LINE.replacen('{', "{\"version\":7,", 1);
        let e = parse_sample_line(&line).unwrap_err();
        assert!(e.contains("version 7"), "{e}");
        assert!(parse_sample_line(&LEGACY_LINE.replace("\"C3\"", "\"Z9\"")).is_err());
    }

    #[test]
    fn outcomes_skip_judge_errors_and_later_samples() {
        let j = |v: Verdict, kind: &str| Judgement {
            verdict: v,
            error_kind: kind.into(),
            exit_code: None,
            seconds: 0.0,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
        };
        let recs = vec![
            SampleRecord::judged(SetName::Clean, "a", 0, "", "stop", &j(Verdict::Pass, "")),
            SampleRecord::judged(
                SetName::Clean,
                "a",
                1,
                "",
                "stop",
                &j(Verdict::Fail, "exit"),
            ),
            SampleRecord::judged(
                SetName::Clean,
                "b",
                0,
                "",
                "stop",
                &j(Verdict::Error, JUDGE_ERROR_KIND),
            ),
        ];
        let o = outcomes_of(&recs);
        assert_eq!(o[&SetName::Clean].len(), 1);
        assert!(o[&SetName::Clean]["a"]);
        assert!(recs[2].is_judge_error());
    }
}
