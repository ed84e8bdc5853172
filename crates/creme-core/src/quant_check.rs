//! What re-quantizing a model cost (`creme quantize`'s check): on a prompt, how many greedy
//! tokens the quantized model agrees on before the first difference, and the mean
//! log-probability of the source model's greedy continuation under both models.

use crate::generate::{generate, GenerateOptions};
use crate::hooks::Hooks;
use crate::model::{Logits, Model};
use crate::{Backend, Device, ModelError};

/// One prompt's comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PromptCheck {
    /// Greedy tokens the two agree on before the first difference.
    pub agree: usize,
    /// Tokens of the source's continuation.
    pub tokens: usize,
    /// Mean log-probability of the source's continuation under the source and the quantized model.
    pub lp_source: f64,
    pub lp_quant: f64,
}

/// Compare `source` and `quant` on `prompt`, `tokens` greedy tokens each.
pub async fn check_prompt(
    dev: &Device,
    source: &Model,
    quant: &Model,
    prompt: &str,
    tokens: usize,
) -> Result<PromptCheck, ModelError> {
    let opts = GenerateOptions {
        max_new_tokens: tokens,
        ..Default::default()
    };
    let ids = source.tokenizer.encode(prompt)?;
    let prompts = [ids.clone()];
    let cs = generate(dev, source, &prompts, &opts, &mut |_, _| {})
        .await?
        .remove(0);
    let cq = generate(dev, quant, &prompts, &opts, &mut |_, _| {})
        .await?
        .remove(0);
    let agree = cs
        .tokens
        .iter()
        .zip(&cq.tokens)
        .take_while(|(a, b)| a == b)
        .count();
    Ok(PromptCheck {
        agree,
        tokens: cs.tokens.len(),
        lp_source: mean_logprob(dev, source, &ids, &cs.tokens).await?,
        lp_quant: mean_logprob(dev, quant, &ids, &cs.tokens).await?,
    })
}

/// Mean log-probability of `cont` after `prompt` under `model` (teacher forcing).
pub async fn mean_logprob(
    dev: &Device,
    model: &Model,
    prompt: &[u32],
    cont: &[u32],
) -> Result<f64, ModelError> {
    if cont.is_empty() {
        return Ok(0.0);
    }
    let seq: Vec<u32> = prompt.iter().chain(cont).cloned().collect();
    let mut cache = model.new_cache(dev, vec![0], seq.len())?;
    // Rows predicting each continuation token: positions prompt.len()-1 .. seq.len()-2.
    let rows: Vec<usize> = (prompt.len() - 1..seq.len() - 1).collect();
    let out = model.forward(
        dev,
        &mut cache,
        &[seq.clone()],
        &Hooks::default(),
        Logits::Rows(rows),
    )?;
    let lp = dev
        .token_logprobs(out.logits.as_ref().expect("asked for logits"), cont)
        .await?;
    Ok(lp.iter().map(|&x| x as f64).sum::<f64>() / cont.len() as f64)
}
