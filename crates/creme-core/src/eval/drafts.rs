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

/// Bytes of [`Resumes`] kept at once; past it the oldest layers go first (never the newest).
/// A row of prompt + draft holds the residual stream (d_model floats) and the keys and values
/// of every layer below the resume layer (2 * n_kv_heads * head_dim floats each): at layer 23
/// of Qwen2.5-Coder-0.5B about 27 KB, so a layer's 60 prompts of 400 rows take about 650 MB.
const RESUME_BYTES_KEPT: usize = 2 << 30;

/// The layer verification resumes at now (None: it does not), and the states kept per layer.
#[derive(Default)]
struct Resumes {
    at: Option<usize>,
    states: HashMap<(usize, SetName, String), Arc<ResumeStates>>,
    /// Layers kept, oldest first, with the bytes each holds.
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
        let bytes = states.bytes();
        match r.layers.iter_mut().find(|(l, _)| *l == layer) {
            Some((_, held)) => *held += bytes,
            None => r.layers.push((layer, bytes)),
        }
        let replaced = r.states.insert((layer, set, task.to_string()), states);
        if let Some(old) = replaced {
            let entry = r.layers.iter_mut().find(|(l, _)| *l == layer);
            entry.expect("kept above").1 -= old.bytes();
        }
        while r.layers.len() > 1
            && r.layers.iter().map(|(_, b)| b).sum::<usize>() > RESUME_BYTES_KEPT
        {
            let (oldest, _) = r.layers.remove(0);
            r.states.retain(|k, _| k.0 != oldest);
        }
    }
}
