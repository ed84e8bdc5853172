//! Draft-verified greedy generation: fast and exact evaluation of an edited model.
//!
//! An edit changes one layer a little, so the edited model's greedy completion mostly equals the
//! unedited one's. That completion is a draft: the edited model runs one forward over prompt +
//! draft and accepts draft tokens up to the first position where its own argmax differs; from
//! there it decodes on its own. Plain decoding's end rules are replayed over the accepted tokens (an
//! end-of-sequence token, a stop string, the token limit), and a draft accepted whole still needs
//! its end checked: the token after it must be the end of sequence, or decoding goes on. So any
//! token sequence is a valid draft (the unedited model's tokens, or a stored completion's text
//! tokenized again); a better draft is only faster. One prefill replaces hundreds of decode steps.
//!
//! This equals plain greedy generation only where a row's result does not depend on the batch or
//! position it is computed in (`Device::batch_invariant`: the CPU backend, and wgpu with its
//! batch-invariant kernels, `GpuOptions::batch_invariant`); elsewhere
//! [`generate_from_drafts`] refuses, and callers generate plainly.
//!
//! Resuming at the edited layer: an edit of layer L leaves layers 0..L unchanged, so the residual
//! stream entering layer L over prompt + draft, and the keys and values of layers 0..L there, are
//! the same for every edit at L. A draft may carry them ([`Resume`]): verification then runs
//! layers L.. only, and where the draft is not accepted to its end, decoding goes on from that
//! cache: its layers below L hold the kept keys and values, the rest the resumed pass's. Without
//! kept keys and values (an f16 cache), such a prompt is verified again in full (the outcome is
//! the same either way). A draft asked to resume without states has them captured by its full
//! verification, for the caller to keep ([`Verified::states`]).

use crate::backend::{Backend, Device};
use crate::error::ModelError;
use crate::generate::{decode_after, Completion, Finish, GenerateOptions};
use crate::hooks::{Hooks, Site};
use crate::model::{Input, KvCache, KvPrefix, Logits, Model};

/// Proposed completion tokens for a prompt (usually the unedited model's greedy completion; how
/// it ended does not matter: plain decoding's end rules are replayed).
#[derive(Clone, Debug, Default)]
pub struct Draft {
    pub tokens: Vec<u32>,
    /// Verify from layer `Resume::layer` on (see the module's notes).
    pub resume: Option<Resume>,
}

/// Where a draft's verification may start, and what it starts from (None: capture it). Valid
/// only while the model's layers below `layer` are those the states were computed with.
#[derive(Clone, Debug)]
pub struct Resume {
    pub layer: usize,
    pub states: Option<std::sync::Arc<ResumeStates>>,
}

/// What layers below a resume layer computed over prompt + draft tokens.
#[derive(Debug)]
pub struct ResumeStates {
    /// The residual stream entering the layer, [rows, d_model].
    pub x: Vec<f32>,
    /// The keys and values of the layers below (None: not kept; see the module's notes).
    pub kv: Option<KvPrefix>,
}

impl ResumeStates {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.x.len() * std::mem::size_of::<f32>() + self.kv.as_ref().map_or(0, |p| p.bytes())
    }
}

impl From<&Completion> for Draft {
    fn from(c: &Completion) -> Draft {
        Draft {
            tokens: c.tokens.clone(),
            resume: None,
        }
    }
}

/// A completion and how much of its draft it kept.
#[derive(Clone, Debug)]
pub struct Verified {
    pub completion: Completion,
    /// Draft tokens accepted before the first difference.
    pub accepted: usize,
    /// The completion is the draft itself (no decoding was needed).
    pub whole: bool,
    /// What the draft's resume layer starts from, where this verification captured it (the
    /// draft asked to resume and had none).
    pub states: Option<(usize, std::sync::Arc<ResumeStates>)>,
    /// The verification ran from the resume layer only: no full pass.
    pub resumed: bool,
}

/// Greedy completions of `prompts` by `model`, each checked against its draft; equal to
/// [`crate::generate::generate`] with the same options on a batch-invariant device.
pub async fn generate_from_drafts(
    dev: &Device,
    model: &Model,
    prompts: &[Vec<u32>],
    drafts: &[Draft],
    opts: &GenerateOptions,
) -> Result<Vec<Verified>, ModelError> {
    if !dev.batch_invariant() {
        return Err(ModelError::Format(format!("draft verification is exact only on a batch-invariant backend (the CPU backend, or wgpu with CREME_BATCH_INVARIANT=1), not {}", dev.describe())));
    }
    if opts.temperature > 0.0 {
        return Err(ModelError::Format(
            "draft verification is for greedy decoding (temperature 0)".into(),
        ));
    }
    if prompts.len() != drafts.len() {
        return Err(ModelError::Format(format!(
            "{} prompts but {} drafts",
            prompts.len(),
            drafts.len()
        )));
    }
    let mut out: Vec<Option<Verified>> = vec![None; prompts.len()];
    let mut pending = Vec::new();
    for (i, (prompt, draft)) in prompts.iter().zip(drafts).enumerate() {
        match verify_one(dev, model, prompt, draft, opts).await? {
            Step::Done(v) => out[i] = Some(v),
            Step::Continue(p) => pending.push((i, p)),
        }
        if pending.len() == CONTINUED_TOGETHER {
            continue_together(dev, model, std::mem::take(&mut pending), opts, &mut out).await?;
        }
    }
    continue_together(dev, model, pending, opts, &mut out).await?;
    Ok(out
        .into_iter()
        .map(|v| v.expect("every prompt verified"))
        .collect())
}

/// Drafts not settled by their verification decode on together, this many at a time: decoding
/// reads the weights once per step for the whole batch, so a batch of continuations costs about
/// one continuation's time on the CPU backend, and a GPU is kept busy.
const CONTINUED_TOGETHER: usize = 8;

/// What one prompt's verification leaves: its outcome, or a draft to decode on from.
enum Step {
    Done(Verified),
    Continue(Pending),
}

/// A draft accepted up to a difference: the verifying forward's cache (every layer's keys and
/// values over the prompt and the accepted tokens), and the verification's facts.
struct Pending {
    cache: KvCache,
    prompt_len: usize,
    /// The prompt's last token or the last accepted one: fed again for its logits.
    last: u32,
    accepted: Vec<u32>,
    states: Option<(usize, std::sync::Arc<ResumeStates>)>,
    resumed: bool,
}

/// Decode on from each pending draft's first difference, all in one left-padded batch: each
/// sequence's keys and values are copied from its own cache, ends aligned, and plain decoding
/// runs from there (equal to decoding each alone on a batch-invariant device). Where the
/// aligned batch would be longer than the model's context, each decodes alone.
async fn continue_together(
    dev: &Device,
    model: &Model,
    pending: Vec<(usize, Pending)>,
    opts: &GenerateOptions,
    out: &mut [Option<Verified>],
) -> Result<(), ModelError> {
    if pending.is_empty() {
        return Ok(());
    }
    let groups: Vec<Vec<(usize, Pending)>> =
        if Shape::of(&pending, opts).capacity > model.max_positions {
            pending.into_iter().map(|p| vec![p]).collect()
        } else {
            vec![pending]
        };
    for group in groups {
        let completions = decode_group(dev, model, &group, opts).await?;
        for ((i, p), completion) in group.into_iter().zip(completions) {
            out[i] = Some(Verified {
                completion,
                accepted: p.accepted.len(),
                whole: false,
                states: p.states,
                resumed: p.resumed,
            });
        }
    }
    Ok(())
}

/// The left-padded batch a group of pending drafts decodes on in.
struct Shape {
    /// Rows each sequence has filled before its last token is fed again.
    filled: Vec<usize>,
    /// The longest of them: the batch cache's length, ends aligned.
    len: usize,
    /// Room for that and the longest continuation still allowed.
    capacity: usize,
}

impl Shape {
    fn of(group: &[(usize, Pending)], opts: &GenerateOptions) -> Shape {
        let filled: Vec<usize> = (group.iter())
            .map(|(_, p)| p.prompt_len + p.accepted.len() - 1)
            .collect();
        let len = *filled.iter().max().expect("not empty");
        let left = group
            .iter()
            .map(|(_, p)| opts.max_new_tokens - p.accepted.len());
        let capacity = len + 1 + left.max().expect("not empty");
        Shape {
            filled,
            len,
            capacity,
        }
    }
}

/// Plain greedy decoding of a group of pending drafts as one batch (see [`continue_together`]).
async fn decode_group(
    dev: &Device,
    model: &Model,
    group: &[(usize, Pending)],
    opts: &GenerateOptions,
) -> Result<Vec<Completion>, ModelError> {
    let Shape {
        filled,
        len,
        capacity,
    } = Shape::of(group, opts);
    let pads: Vec<u32> = filled.iter().map(|&f| (len - f) as u32).collect();
    let mut cache = model.new_cache(dev, pads.clone(), capacity)?;
    for (slot, ((_, p), &f)) in group.iter().zip(&filled).enumerate() {
        cache.copy_shifted(dev, &p.cache, slot, 0..f, pads[slot] as usize)?;
    }
    cache.len = len;
    let lasts: Vec<Vec<u32>> = group.iter().map(|(_, p)| vec![p.last]).collect();
    let fwd = model.forward(dev, &mut cache, &lasts, &Hooks::default(), Logits::Last)?;
    let logits = fwd.logits.expect("asked for logits");
    let accepted: Vec<Vec<u32>> = group.iter().map(|(_, p)| p.accepted.clone()).collect();
    decode_after(
        dev,
        model,
        &mut cache,
        logits,
        &accepted,
        opts,
        &mut |_, _| {},
    )
    .await
}

/// One prompt: verify its draft in one forward, replay plain decoding's end rules over the
/// accepted tokens, and decode on from the first difference.
async fn verify_one(
    dev: &Device,
    model: &Model,
    prompt: &[u32],
    draft: &Draft,
    opts: &GenerateOptions,
) -> Result<Step, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::Format("empty prompt".into()));
    }
    if prompt.len() + opts.max_new_tokens > model.max_positions {
        return Err(ModelError::Format(format!(
            "prompt of {} tokens + {} new tokens is over the context of {} tokens",
            prompt.len(),
            opts.max_new_tokens,
            model.max_positions
        )));
    }
    if opts.max_new_tokens == 0 {
        return Ok(Step::Done(Verified {
            completion: Completion {
                tokens: Vec::new(),
                text: String::new(),
                finish: Finish::Length,
            },
            accepted: 0,
            whole: draft.tokens.is_empty(),
            states: None,
            resumed: false,
        }));
    }
    let tokens = &draft.tokens[..draft.tokens.len().min(opts.max_new_tokens)];
    let resume = draft.resume.as_ref().filter(|r| r.layer > 0);
    if let Some(Resume {
        layer,
        states: Some(kept),
    }) = resume
    {
        let rows = prompt.len() + tokens.len();
        if kept.x.len() == rows * model.cfg.d_model {
            let seq = (prompt, tokens);
            let (picks, cache) =
                resumed_picks(dev, model, seq, (*layer, kept), opts.max_new_tokens).await?;
            if let Some(v) = settled(model, draft, tokens, &picks, opts)? {
                return Ok(Step::Done(Verified { resumed: true, ..v }));
            }
            if let Some(cache) = cache {
                let done = &tokens[..accepted_count(tokens, &picks)];
                return Ok(Step::Continue(pending(cache, prompt, done, None, true)));
            }
        }
    }
    let capture = resume.filter(|r| r.states.is_none()).map(|r| r.layer);
    let (picks, cache, states) =
        greedy_picks(dev, model, (prompt, tokens), opts.max_new_tokens, capture).await?;
    let states = capture
        .zip(states)
        .map(|(l, s)| (l, std::sync::Arc::new(s)));
    if let Some(v) = settled(model, draft, tokens, &picks, opts)? {
        return Ok(Step::Done(Verified { states, ..v }));
    }
    let done = &tokens[..accepted_count(tokens, &picks)];
    Ok(Step::Continue(pending(cache, prompt, done, states, false)))
}

/// A draft to decode on from: its cache holds prompt + `accepted`, whose last token is fed again.
fn pending(
    cache: KvCache,
    prompt: &[u32],
    accepted: &[u32],
    states: Option<(usize, std::sync::Arc<ResumeStates>)>,
    resumed: bool,
) -> Pending {
    let last = *accepted
        .last()
        .or(prompt.last())
        .expect("prompt is not empty");
    Pending {
        cache,
        prompt_len: prompt.len(),
        last,
        accepted: accepted.to_vec(),
        states,
        resumed,
    }
}

/// Draft tokens equal to the model's picks, from the start.
fn accepted_count(tokens: &[u32], picks: &[u32]) -> usize {
    tokens.iter().zip(picks).take_while(|(d, p)| d == p).count()
}

/// The outcome, where the picks settle it without decoding on: plain decoding ends among the
/// accepted tokens, or the whole draft is accepted and the model ends the sequence after it.
fn settled(
    model: &Model,
    draft: &Draft,
    tokens: &[u32],
    picks: &[u32],
    opts: &GenerateOptions,
) -> Result<Option<Verified>, ModelError> {
    let accepted = accepted_count(tokens, picks);
    let whole = |n: usize| n == draft.tokens.len();
    let done = |tokens: Vec<u32>, finish, n: usize| -> Result<Option<Verified>, ModelError> {
        Ok(Some(Verified {
            completion: finish_completion(model, tokens, finish, opts)?,
            accepted: n,
            whole: whole(n),
            states: None,
            resumed: false,
        }))
    };
    // Plain decoding would have produced exactly these tokens: does it end among them?
    if let Some((n, finish)) = plain_end_within(model, &tokens[..accepted], opts)? {
        return done(tokens[..n].to_vec(), finish, n);
    }
    if accepted == tokens.len() && model.cfg.eos_ids.contains(&picks[accepted]) {
        return done(tokens.to_vec(), Finish::Eos, accepted);
    }
    Ok(None)
}

/// Where plain decoding, producing `tokens` one by one, would stop among them: (tokens kept,
/// why). The rules of `generate::decode_after`: an end-of-sequence token is not kept; a stop
/// string or the token limit end after the token that reaches them.
fn plain_end_within(
    model: &Model,
    tokens: &[u32],
    opts: &GenerateOptions,
) -> Result<Option<(usize, Finish)>, ModelError> {
    for (j, t) in tokens.iter().enumerate() {
        if model.cfg.eos_ids.contains(t) {
            return Ok(Some((j, Finish::Eos)));
        }
        if crate::generate::reaches_stop(&model.tokenizer, &tokens[..=j], &opts.stop)? {
            return Ok(Some((j + 1, Finish::Stop)));
        }
        if j + 1 >= opts.max_new_tokens {
            return Ok(Some((j + 1, Finish::Length)));
        }
    }
    Ok(None)
}

/// The model's greedy pick after the prompt and after each draft token: [draft.len() + 1], the
/// cache that forward filled (room for `max_new` tokens after the prompt) and, with `capture`
/// = Some(L), what layers below L computed over all rows.
async fn greedy_picks(
    dev: &Device,
    model: &Model,
    (prompt, draft): (&[u32], &[u32]),
    max_new: usize,
    capture: Option<usize>,
) -> Result<(Vec<u32>, KvCache, Option<ResumeStates>), ModelError> {
    let seq: Vec<u32> = prompt.iter().chain(draft).copied().collect();
    let mut cache = model.new_cache(dev, vec![0], prompt.len() + max_new)?;
    let rows: Vec<usize> = (prompt.len() - 1..seq.len()).collect();
    // Layer L's input is layer L - 1's output.
    let site = capture.map(|l| Site::ResidOut(l - 1));
    let hooks = Hooks::capture(site);
    let n = seq.len();
    let fwd = model.forward(dev, &mut cache, &[seq], &hooks, Logits::Rows(rows))?;
    let states = match (capture, site.and_then(|s| fwd.captured.get(s))) {
        (Some(l), Some((buf, _, _))) => Some(ResumeStates {
            x: dev.read(buf, n * model.cfg.d_model).await?,
            kv: cache.read_prefix(dev, l, n).await?,
        }),
        _ => None,
    };
    let logits = fwd.logits.as_ref().expect("asked for logits");
    Ok((dev.argmax(logits).await?, cache, states))
}

/// [`greedy_picks`] from layer `layer` on, given what the layers below computed; the cache is
/// returned where it holds every layer's keys and values (the kept ones below `layer`).
async fn resumed_picks(
    dev: &Device,
    model: &Model,
    (prompt, draft): (&[u32], &[u32]),
    (layer, kept): (usize, &ResumeStates),
    max_new: usize,
) -> Result<(Vec<u32>, Option<KvCache>), ModelError> {
    let n = prompt.len() + draft.len();
    let kv = kept
        .kv
        .as_ref()
        .filter(|p| p.rows == n && p.layers.len() == layer);
    // Room to decode on only where decoding on can use this cache.
    let capacity = if kv.is_some() {
        prompt.len() + max_new
    } else {
        n
    };
    let mut cache = model.new_cache(dev, vec![0], capacity.max(n))?;
    if let Some(p) = kv {
        cache.write_prefix(dev, p)?;
    }
    let x = dev.upload("resume states", n, model.cfg.d_model, &kept.x)?;
    let input = Input::Resume {
        x: &x,
        start: &[layer],
        t: n,
    };
    let rows: Vec<usize> = (prompt.len() - 1..n).collect();
    let fwd = model.forward_ex(
        dev,
        &mut cache,
        input,
        &Hooks::default(),
        Logits::Rows(rows),
    )?;
    let picks = dev
        .argmax(fwd.logits.as_ref().expect("asked for logits"))
        .await?;
    Ok((picks, kv.map(|_| cache)))
}

fn finish_completion(
    model: &Model,
    tokens: Vec<u32>,
    finish: Finish,
    opts: &GenerateOptions,
) -> Result<Completion, ModelError> {
    let text = model.tokenizer.decode(&tokens)?;
    let text = match crate::generate::cut_at_stops(&text, &opts.stop) {
        Some(at) => text[..at].to_string(),
        None => text,
    };
    Ok(Completion {
        tokens,
        text,
        finish,
    })
}
