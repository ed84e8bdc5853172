//! Evaluation of a prompt set: generate completions (or verify drafts of them), have a [`Judge`]
//! run each against its tests, and hand one typed [`SampleRecord`] per sample to the caller's
//! sink. The judge is the caller's: the native sandbox in the CLI, Pyodide in the page. No I/O
//! here; the caller stores the records.

pub mod drafts;
pub mod given;
pub mod pair;
pub mod record;
pub mod resume;
pub mod summary;

use crate::backend::Device;
use crate::dataset::{Problem, TestProgram};
use crate::draft::generate_from_drafts;
use crate::error::ModelError;
use crate::generate::{generate, humaneval_stops, Completion, GenerateOptions};
use crate::model::Model;
use crate::sets::SetName;

pub use drafts::Drafts;
pub use record::{
    outcomes_of, parse_sample_line, DraftUse, Judgement, Outcomes, SampleRecord, Verdict,
    JUDGE_ERROR_KIND, SAMPLE_RECORD_VERSION,
};

/// Wall and CPU seconds a judge gives each test program unless told otherwise (eval, the
/// experiment, the pass trace).
pub const DEFAULT_TIMEOUT_S: u64 = 10;

/// Runs test programs and says what they did. Not `Send`: the page's judge lives on its thread.
#[allow(async_fn_in_trait)]
pub trait Judge {
    /// One judgement per program, in order.
    async fn judge(&mut self, programs: &[TestProgram]) -> Vec<Judgement>;
}

/// How samples are generated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenSpec {
    /// Samples per task (1 = greedy).
    pub n: usize,
    /// Sampling temperature when n > 1.
    pub temperature: f32,
    pub top_p: f32,
    /// Most new tokens per completion.
    pub max_tokens: usize,
    /// Prompts generated together (one left-padded batch).
    pub batch: usize,
}

impl Default for GenSpec {
    fn default() -> Self {
        GenSpec {
            n: 1,
            temperature: 0.2,
            top_p: 0.95,
            max_tokens: 320,
            batch: 8,
        }
    }
}

impl GenSpec {
    /// The spec an evaluation of completions given (not generated) records: one greedy sample
    /// per task, the default budget (nothing is generated, so it only names the scoring).
    pub fn given() -> GenSpec {
        GenSpec::default().greedy()
    }

    /// Greedy decoding with this spec's budget and batch.
    pub fn greedy(self) -> GenSpec {
        GenSpec {
            n: 1,
            temperature: 0.0,
            top_p: 1.0,
            ..self
        }
    }

    /// The temperature actually used (greedy when one sample per task).
    pub fn effective_temperature(&self) -> f32 {
        if self.n > 1 {
            self.temperature
        } else {
            0.0
        }
    }

    fn options(&self, sample: usize) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.max_tokens,
            temperature: self.effective_temperature(),
            top_p: self.top_p,
            seed: 1000 + sample as u64,
            stop: humaneval_stops(),
            ignore_eos: false,
        }
    }
}

/// Where records go; an error stops the evaluation (nothing after it is generated).
pub type Sink<'a> = dyn FnMut(SampleRecord) -> Result<(), ModelError> + 'a;

/// Generate and judge the (problem, sample index) items of one set, batching prompts of the same
/// sample index (one seed per batch and sample). With `drafts` on a batch-invariant device,
/// greedy completions are verified against them instead of decoded from scratch (the same
/// completions, faster: see `crate::draft`).
#[allow(clippy::too_many_arguments)]
pub async fn run_set(
    dev: &Device,
    model: &Model,
    set: SetName,
    items: &[(&Problem, usize)],
    spec: &GenSpec,
    drafts: Option<&Drafts>,
    judge: &mut impl Judge,
    sink: &mut Sink<'_>,
) -> Result<(), ModelError> {
    let drafts = drafts.filter(|_| dev.batch_invariant() && spec.n <= 1);
    for s in 0..spec.n.max(1) {
        let these: Vec<&Problem> = items
            .iter()
            .filter(|(_, k)| *k == s)
            .map(|(p, _)| *p)
            .collect();
        for chunk in these.chunks(spec.batch.max(1)) {
            let batch = Batch {
                set,
                sample: s,
                problems: chunk,
            };
            for rec in generate_and_judge(dev, model, &batch, spec, drafts, judge).await? {
                sink(rec)?;
            }
        }
    }
    Ok(())
}

/// One generation batch: the problems of one set and sample index.
struct Batch<'a> {
    set: SetName,
    sample: usize,
    problems: &'a [&'a Problem],
}

/// A generated completion and how it used its draft.
type Generated = (Completion, Option<DraftUse>);

/// Generate one sample for each problem of the batch and judge them; prompts too long for the
/// context are recorded as errors, not fatal.
async fn generate_and_judge(
    dev: &Device,
    model: &Model,
    batch: &Batch<'_>,
    spec: &GenSpec,
    drafts: Option<&Drafts>,
    judge: &mut impl Judge,
) -> Result<Vec<SampleRecord>, ModelError> {
    let mut ids = Vec::new();
    for p in batch.problems {
        ids.push(model.tokenizer.encode(&p.prompt)?);
    }
    let fits: Vec<bool> = ids
        .iter()
        .map(|t| !t.is_empty() && t.len() + spec.max_tokens <= model.max_positions)
        .collect();
    let fitting: Vec<(&Problem, Vec<u32>)> = batch
        .problems
        .iter()
        .zip(&ids)
        .zip(&fits)
        .filter(|(_, f)| **f)
        .map(|((p, t), _)| (*p, t.clone()))
        .collect();
    let generated = generate_batch(dev, model, batch, &fitting, spec, drafts).await?;
    let programs: Vec<TestProgram> = fitting
        .iter()
        .zip(&generated)
        .map(|((p, _), (c, _))| p.program(&p.prompt, &c.text))
        .collect();
    let mut judged = judge.judge(&programs).await.into_iter();
    let mut generated = generated.into_iter();
    let mut out = Vec::new();
    for ((p, fit), toks) in batch.problems.iter().zip(&fits).zip(&ids) {
        out.push(if *fit {
            let (c, draft) = generated.next().expect("one completion per fitting prompt");
            let j = judged.next().ok_or_else(|| {
                ModelError::Format("the judge returned fewer judgements than programs".into())
            })?;
            let finish = format!("{:?}", c.finish).to_lowercase();
            let mut rec =
                SampleRecord::judged(batch.set, &p.task_id, batch.sample, &c.text, &finish, &j);
            rec.tokens = Some(c.tokens);
            rec.draft = draft;
            rec
        } else {
            let why = format!(
                "prompt of {} tokens + {} new tokens is over the context of {} tokens",
                toks.len(),
                spec.max_tokens,
                model.max_positions
            );
            SampleRecord::not_generated(batch.set, &p.task_id, batch.sample, why)
        });
    }
    Ok(out)
}

/// Completions of the fitting prompts: verified against drafts where given, else generated.
async fn generate_batch(
    dev: &Device,
    model: &Model,
    batch: &Batch<'_>,
    fitting: &[(&Problem, Vec<u32>)],
    spec: &GenSpec,
    drafts: Option<&Drafts>,
) -> Result<Vec<Generated>, ModelError> {
    let prompts: Vec<Vec<u32>> = fitting.iter().map(|(_, t)| t.clone()).collect();
    let opts = spec.options(batch.sample);
    match drafts {
        Some(drafts) => {
            let ds: Vec<_> = fitting
                .iter()
                .map(|(p, _)| drafts.get(batch.set, &p.task_id))
                .collect();
            let verified = generate_from_drafts(dev, model, &prompts, &ds, &opts).await?;
            for ((p, _), v) in fitting.iter().zip(&verified) {
                if let Some((layer, states)) = &v.states {
                    drafts.keep_states(batch.set, &p.task_id, *layer, states.clone());
                }
            }
            Ok(verified
                .into_iter()
                .map(|v| {
                    let used = DraftUse {
                        accepted: v.accepted,
                        whole: v.whole,
                    };
                    (v.completion, Some(used))
                })
                .collect())
        }
        None => Ok(generate(dev, model, &prompts, &opts, &mut |_, _| {})
            .await?
            .into_iter()
            .map(|c| (c, None))
            .collect()),
    }
}

/// Generate (or verify drafts of) and judge every sample of `sets` not in `done`, set by set;
/// `sink(record, the set's samples to do)` gets each record.
#[allow(clippy::too_many_arguments)]
pub async fn run_sets(
    dev: &Device,
    model: &Model,
    sets: &std::collections::BTreeMap<SetName, Vec<Problem>>,
    spec: &GenSpec,
    drafts: Option<&Drafts>,
    done: &std::collections::HashSet<given::SampleKey>,
    judge: &mut impl Judge,
    sink: &mut dyn FnMut(SampleRecord, usize) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    for (set, problems) in sets {
        let todo: Vec<(&Problem, usize)> = problems
            .iter()
            .flat_map(|p| (0..spec.n).map(move |s| (p, s)))
            .filter(|(p, s)| !done.contains(&(*set, p.task_id.clone(), *s)))
            .collect();
        if todo.is_empty() {
            continue;
        }
        let total = todo.len();
        let mut to_sink = |rec: SampleRecord| sink(rec, total);
        run_set(dev, model, *set, &todo, spec, drafts, judge, &mut to_sink).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_completions_are_scored_as_one_greedy_sample() {
        let g = GenSpec::given();
        assert_eq!((g.n, g.temperature, g.top_p), (1, 0.0, 1.0));
        assert_eq!(g.max_tokens, GenSpec::default().max_tokens);
    }
}
