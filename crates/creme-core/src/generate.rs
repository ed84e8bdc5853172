//! Decoding: batched prompts (left-padded), greedy or temperature/top-p sampling with a seed,
//! stop strings, a token limit, and a per-token callback for streaming.

use crate::backend::{Backend, Device, PickRule, Tensor};
use crate::cpu::SplitMix64;
use crate::error::ModelError;
use crate::hooks::Hooks;
use crate::model::tokenizer::Tokenizer;
use crate::model::{Input, KvCache, Logits, Model};
// The sampling rule lives in `crate::sampling`, below the backends that run it.
pub use crate::sampling::sample_row;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    /// Generation of a sequence ends once its text contains one of these; the text is cut there.
    pub stop: Vec<String>,
    /// Keep generating past an end-of-sequence token (benchmarks that time a fixed count).
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 320,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// The stop strings of the HumanEval protocol (see ../shared/oracle's README).
pub fn humaneval_stops() -> Vec<String> {
    [
        "\ndef ",
        "\nclass ",
        "\nif __name__",
        "\nprint(",
        "\n#",
        "\n```",
        "\nassert",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Finish {
    Eos,
    Stop,
    Length,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Completion {
    /// Generated token ids (eos excluded).
    pub tokens: Vec<u32>,
    /// Decoded text without special tokens, cut at the first stop string.
    pub text: String,
    pub finish: Finish,
}

impl Completion {
    /// The closing line of a streamed generation: prompt and new tokens, `secs` seconds, the
    /// rate of new tokens and why it ended.
    pub fn stream_summary(&self, prompt_tokens: usize, secs: f64) -> String {
        let n = self.tokens.len();
        let rate = n as f64 / secs;
        format!("[{prompt_tokens} prompt tokens, {n} new tokens in {secs:.2} s, {rate:.1} tok/s, finish {:?}]", self.finish)
    }
}

/// Left-pad prompts (each followed by `suffix`) to one length, aligned at the end: the batch,
/// each sequence's pad length, and the common length.
pub fn left_pad(
    pad_id: u32,
    prompts: &[&[u32]],
    suffix: &[u32],
) -> (Vec<Vec<u32>>, Vec<u32>, usize) {
    let frame = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let batch = prompts
        .iter()
        .map(|p| {
            std::iter::repeat(pad_id)
                .take(frame - p.len())
                .chain(p.iter().cloned())
                .chain(suffix.iter().cloned())
                .collect()
        })
        .collect();
    let pads = prompts.iter().map(|p| (frame - p.len()) as u32).collect();
    (batch, pads, frame + suffix.len())
}

/// Cut `text` at the earliest occurrence of any stop string.
pub fn cut_at_stops(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// Whether `tokens`, one token longer than a sequence that held no stop string, holds one now (as
/// `cut_at_stops` on its whole decoded text says). A new stop string ends in the newest text, so
/// only a window of the newest tokens is decoded, and a hit there is confirmed on the whole text:
/// the cost per token no longer grows with the sequence (decoding it all each step was O(n^2)).
pub fn reaches_stop(
    tokenizer: &Tokenizer,
    tokens: &[u32],
    stops: &[String],
) -> Result<bool, ModelError> {
    let longest = stops.iter().map(|s| s.chars().count()).max().unwrap_or(0);
    if longest == 0 || tokens.is_empty() {
        return Ok(false);
    }
    // A new stop string starts within the last `longest` characters before the newest token's
    // text. Widen the window until the text before the newest token holds `longest` characters
    // plus 3 (the window's first character may be cut into up to 3 replacement characters; special
    // tokens decode to nothing), or the window covers the whole sequence.
    let newest = tokens.len() - 1;
    let mut width = longest + 8;
    loop {
        let from = tokens.len().saturating_sub(width);
        if from == 0 {
            return Ok(cut_at_stops(&tokenizer.decode(tokens)?, stops).is_some());
        }
        if tokenizer.decode(&tokens[from..newest])?.chars().count() >= longest + 3 {
            if cut_at_stops(&tokenizer.decode(&tokens[from..])?, stops).is_none() {
                return Ok(false);
            }
            return Ok(cut_at_stops(&tokenizer.decode(tokens)?, stops).is_some());
        }
        width *= 2;
    }
}

/// A uniform draw in [0, 1) with 24 random bits (exact in f32), for [`sample_row`].
fn uniform_f32(rng: &mut SplitMix64) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u32 << 24) as f32
}

/// Generate a completion for each prompt (token ids). `on_token(seq, id)` is called for every new
/// token as it is decided.
pub async fn generate(
    dev: &Device,
    model: &Model,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Completion>, ModelError> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(ModelError::Format(format!("prompt #{i} is empty")));
    }
    let longest = prompts.iter().map(|p| p.len()).max().unwrap();
    let capacity = longest + opts.max_new_tokens;
    if capacity > model.max_positions {
        return Err(ModelError::Format(format!(
            "prompt of {longest} tokens + {} new tokens is over the context of {} tokens",
            opts.max_new_tokens, model.max_positions
        )));
    }
    let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let (batch, pad, _) = left_pad(model.cfg.pad_id, &refs, &[]);
    let mut cache = model.new_cache(dev, pad, capacity)?;
    let fwd = model.forward(dev, &mut cache, &batch, &Hooks::default(), Logits::Last)?;
    decode(
        dev,
        model,
        &mut cache,
        fwd.logits.expect("asked for logits"),
        opts,
        on_token,
    )
    .await
}

/// Continue decoding from a filled cache whose last forward produced `logits` ([batch, vocab]):
/// pick, feed back, repeat until every sequence has ended. The cache may hold one step more than
/// the tokens returned (the step run while the last picks were read back).
pub async fn decode(
    dev: &Device,
    model: &Model,
    cache: &mut KvCache,
    logits: Tensor,
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Completion>, ModelError> {
    let empty = vec![Vec::new(); cache.batch];
    decode_after(dev, model, cache, logits, &empty, opts, on_token).await
}

/// [`decode`] for sequences that already generated `generated[i]` (they sit at the end of the
/// cache): those tokens count toward the token limit and the stop strings, and are part of the
/// completion, so the result is what decoding from the bare prompt would have given.
pub(crate) async fn decode_after(
    dev: &Device,
    model: &Model,
    cache: &mut KvCache,
    logits: Tensor,
    generated: &[Vec<u32>],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Completion>, ModelError> {
    let n = cache.batch;
    let mut rng = SplitMix64(opts.seed);
    let mut out: Vec<Completion> = generated
        .iter()
        .map(|g| Completion {
            tokens: g.clone(),
            text: String::new(),
            finish: Finish::Length,
        })
        .collect();
    // A sequence ends at the end of sequence, a stop string, or its token limit.
    let mut done: Vec<bool> = out
        .iter()
        .map(|c| c.tokens.len() >= opts.max_new_tokens)
        .collect();
    if done.iter().all(|&d| d) {
        return finish(model, out, opts);
    }
    // The picks stay on the device and feed the next step there; the host reads each step's
    // picks while the device runs the step after (the ids come back a step behind), so the GPU
    // waits neither for the readback nor for the host to encode the next step. A sequence that
    // has ended is fed its own last pick (it no longer matters: rows do not mix), and the step
    // run past the end of generation is thrown away.
    let mut picked = pick(dev, &logits, opts, &mut rng, n)?;
    drop(logits);
    let mut reading = dev.start_read(&picked, n)?;
    loop {
        let ahead = if cache.len < cache.capacity && !last_step(&out, &done, opts) {
            let fwd = model.forward_ex(
                dev,
                cache,
                Input::Ids(&picked),
                &Hooks::default(),
                Logits::Last,
            )?;
            let next = pick(
                dev,
                &fwd.logits.expect("asked for logits"),
                opts,
                &mut rng,
                n,
            )?;
            let read = dev.start_read(&next, n)?;
            Some((next, read))
        } else {
            None
        };
        let ids = crate::backend::bits(&dev.finish_read(reading).await?);
        take_picks(model, &ids, &mut out, &mut done, opts, on_token)?;
        match ahead {
            Some((next, read)) if !done.iter().all(|&d| d) => {
                picked = next;
                reading = read;
            }
            Some((_, read)) => {
                // The step run past the end: wait for its readback so that its staging buffer
                // goes back to the pool rather than away.
                dev.finish_read(read).await?;
                break;
            }
            None => break,
        }
    }
    finish(model, out, opts)
}

/// Each row's token from `logits` (greedy, or sampled with one draw per row made on the host, so
/// that a seed gives the same picks on every backend), left on the device.
fn pick(
    dev: &Device,
    logits: &Tensor,
    opts: &GenerateOptions,
    rng: &mut SplitMix64,
    n: usize,
) -> Result<Tensor, ModelError> {
    if opts.temperature <= 0.0 {
        return dev.pick(logits, PickRule::Greedy);
    }
    let u: Vec<f32> = (0..n).map(|_| uniform_f32(rng)).collect();
    dev.pick(
        logits,
        PickRule::Sample {
            temperature: opts.temperature,
            top_p: opts.top_p,
            u: &u,
        },
    )
}

/// Whether the picks now being made are the last any sequence can take (each live sequence is
/// one token short of its limit), so no step needs to run after them.
fn last_step(out: &[Completion], done: &[bool], opts: &GenerateOptions) -> bool {
    out.iter()
        .zip(done)
        .all(|(c, &d)| d || c.tokens.len() + 1 >= opts.max_new_tokens)
}

/// Append a step's picks to the live sequences and end those that reach an end of sequence, a
/// stop string or their token limit.
fn take_picks(
    model: &Model,
    ids: &[u32],
    out: &mut [Completion],
    done: &mut [bool],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<(), ModelError> {
    for (i, &id) in ids.iter().enumerate() {
        if done[i] {
            continue;
        }
        if model.cfg.eos_ids.contains(&id) && !opts.ignore_eos {
            done[i] = true;
            out[i].finish = Finish::Eos;
            continue;
        }
        out[i].tokens.push(id);
        on_token(i, id);
        if reaches_stop(&model.tokenizer, &out[i].tokens, &opts.stop)? {
            done[i] = true;
            out[i].finish = Finish::Stop;
        }
        done[i] |= out[i].tokens.len() >= opts.max_new_tokens;
    }
    Ok(())
}

/// The completions' texts, cut at the first stop string.
fn finish(
    model: &Model,
    mut out: Vec<Completion>,
    opts: &GenerateOptions,
) -> Result<Vec<Completion>, ModelError> {
    for c in out.iter_mut() {
        let text = model.tokenizer.decode(&c.tokens)?;
        c.text = match cut_at_stops(&text, &opts.stop) {
            Some(at) => text[..at].to_string(),
            None => text,
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_ends_with_its_rate_and_reason() {
        let c = Completion {
            tokens: vec![1, 2, 3, 4],
            text: String::new(),
            finish: Finish::Stop,
        };
        assert_eq!(
            c.stream_summary(7, 2.0),
            "[7 prompt tokens, 4 new tokens in 2.00 s, 2.0 tok/s, finish Stop]"
        );
    }
}
