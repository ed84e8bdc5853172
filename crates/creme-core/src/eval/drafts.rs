//! Drafts for draft-verified evaluation: the greedy completions of an earlier run, by set and
//! task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::record::SampleRecord;
use crate::draft::{Draft, Resume, ResumeStates};
use crate::error::ModelError;
use crate::model::Model;
use crate::sets::SetName;

/// Drafts by (set, task_id), and the residual streams their verifications may resume from.
#[derive(Default)]
pub struct Drafts(HashMap<(SetName, String), Draft>, Mutex<Resumes>);

/// Bytes of [`Resumes`] kept at once; past it the least recently kept layers go first, and a
/// layer that alone would exceed it keeps no more.
/// A row of prompt + draft holds the residual stream (d_model floats) and the keys and values
/// of every layer below the resume layer (2 * n_kv_heads * head_dim floats each): at layer 23
/// of Qwen2.5-Coder-0.5B about 27 KB, so a layer's 60 prompts of 400 rows take about 650 MB.
const RESUME_BYTES_KEPT: usize = 2 << 30;

/// The layer verification resumes at now (None: it does not), and the states kept per layer.
#[derive(Default)]
struct Resumes {
    at: Option<usize>,
    states: HashMap<(usize, SetName, String), Arc<ResumeStates>>,
    /// Layers kept, least recently kept first, with the bytes each holds.
    layers: Vec<(usize, usize)>,
}

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
            map.insert(
                (r.set, r.task_id.clone()),
                Draft {
                    tokens,
                    resume: None,
                },
            );
        }
        Ok(Drafts(map, Default::default()))
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
            map.insert(
                (*set, task.clone()),
                Draft {
                    tokens,
                    resume: None,
                },
            );
        }
        Ok(Drafts(map, Default::default()))
    }

    pub fn extend(&mut self, other: Drafts) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The draft of (set, task); an empty draft (plain decoding) where there is none. While
    /// [`Drafts::resume_at`] is set, it carries the layer and the states kept for it.
    pub fn get(&self, set: SetName, task: &str) -> Draft {
        let mut draft = self
            .0
            .get(&(set, task.to_string()))
            .cloned()
            .unwrap_or_default();
        let resumes = self.1.lock().expect("resume states");
        draft.resume = resumes.at.map(|layer| Resume {
            layer,
            states: resumes.states.get(&(layer, set, task.to_string())).cloned(),
        });
        draft
    }

    /// Verify from `layer` on (None: from the start). The caller vouches that the model's
    /// layers below it are the same for every evaluation while it is set: an experiment that
    /// edits that layer alone, every edit reverted before the next.
    pub fn resume_at(&self, layer: Option<usize>) {
        self.1.lock().expect("resume states").at = layer;
    }

    /// Keep the states a verification captured for (set, task) at `layer`.
    pub fn keep_states(&self, set: SetName, task: &str, layer: usize, states: Arc<ResumeStates>) {
        let mut r = self.1.lock().expect("resume states");
        r.keep((layer, set, task.to_string()), states, RESUME_BYTES_KEPT);
    }
}

impl Resumes {
    /// Keep `states` under `key`: drop the least recently kept other layers while more than
    /// `budget` bytes would be held, then keep it unless its layer alone would still be over
    /// (that prompt then verifies in full at every edit, as without resuming).
    fn keep(&mut self, key: (usize, SetName, String), states: Arc<ResumeStates>, budget: usize) {
        let layer = key.0;
        let mut held = match self.layers.iter().position(|(l, _)| *l == layer) {
            Some(i) => self.layers.remove(i).1,
            None => 0,
        };
        let old = self.states.get(&key).map_or(0, |s| s.bytes());
        let after = held - old + states.bytes();
        while !self.layers.is_empty()
            && self.layers.iter().map(|(_, b)| b).sum::<usize>() + after > budget
        {
            let (oldest, _) = self.layers.remove(0);
            self.states.retain(|k, _| k.0 != oldest);
        }
        if after <= budget {
            self.states.insert(key, states);
            held = after;
        }
        // This layer is now the most recently kept (last), so it is the last to go.
        self.layers.push((layer, held));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_kept_layer_goes_first_and_the_one_being_kept_stays() {
        let states = |floats: usize| {
            Arc::new(ResumeStates {
                x: vec![0.0; floats],
                kv: None,
            })
        };
        let key = |layer, task: &str| (layer, SetName::Clean, task.to_string());
        let mut r = Resumes::default();
        let budget = 3 * 4 * 10; // three states of 10 floats
        r.keep(key(23, "a"), states(10), budget);
        r.keep(key(11, "a"), states(10), budget);
        r.keep(key(23, "b"), states(10), budget);
        assert_eq!(r.layers, vec![(11, 40), (23, 80)]);
        // A fourth state is over budget: layer 11, kept least recently, goes.
        r.keep(key(23, "c"), states(10), budget);
        assert_eq!(r.layers, vec![(23, 120)]);
        assert!(r.states.keys().all(|k| k.0 == 23));
        // Replacing a state counts its bytes once.
        r.keep(key(23, "c"), states(5), budget);
        assert_eq!(r.layers, vec![(23, 100)]);
        // A state that would take its layer alone over budget is not kept; the rest stay.
        r.keep(key(23, "d"), states(10), budget);
        assert_eq!(r.layers, vec![(23, 100)]);
        assert_eq!(r.states.len(), 3);
    }
}
