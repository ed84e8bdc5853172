//! Drafts for draft-verified evaluation: the greedy completions of an earlier run, by set and
//! task.

use std::collections::HashMap;

use super::record::SampleRecord;
use crate::draft::Draft;
use crate::error::ModelError;
use crate::model::Model;
use crate::sets::SetName;

/// Drafts by (set, task_id).
#[derive(Default)]
pub struct Drafts(HashMap<(SetName, String), Draft>);

impl Drafts {
    /// The greedy sample of earlier records, by their token ids where the record holds them,
    /// else by their text tokenized again (any tokens are a valid draft).
    pub fn from_records(records: &[SampleRecord], model: &Model) -> Result<Drafts, ModelError> {
        let mut map = HashMap::new();
        for r in records
            .iter()
            .filter(|r| r.sample == 0 && !r.is_judge_error())
        {
            let tokens = match &r.tokens {
                Some(t) => t.clone(),
                None => model.tokenizer.encode(&r.completion)?,
            };
            map.insert((r.set, r.task_id.clone()), Draft { tokens });
        }
        Ok(Drafts(map))
    }

    /// Drafts from completion texts (another implementation's greedy completions are drafts
    /// too; verification keeps the result exact): ((set, task, sample), text), sample 0 used.
    pub fn from_completions<'a>(
        given: impl IntoIterator<Item = (&'a (SetName, String, usize), &'a String)>,
        model: &Model,
    ) -> Result<Drafts, ModelError> {
        let mut map = HashMap::new();
        for ((set, task, _), text) in given.into_iter().filter(|(k, _)| k.2 == 0) {
            let tokens = model.tokenizer.encode(text)?;
            map.insert((*set, task.clone()), Draft { tokens });
        }
        Ok(Drafts(map))
    }

    pub fn extend(&mut self, other: Drafts) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The draft of (set, task); an empty draft (plain decoding) where there is none.
    pub fn get(&self, set: SetName, task: &str) -> Draft {
        self.0
            .get(&(set, task.to_string()))
            .cloned()
            .unwrap_or_default()
    }
}
