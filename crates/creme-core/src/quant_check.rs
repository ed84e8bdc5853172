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

/// The checks of several prompts together.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CheckTotals {
    /// Greedy tokens agreeing before each prompt's first difference, and tokens compared.
    pub agree: usize,
    pub tokens: usize,
    pub prompts: usize,
    lp_source: f64,
    lp_quant: f64,
}

impl CheckTotals {
    pub fn add(&mut self, c: &PromptCheck) {
        self.agree += c.agree;
        self.tokens += c.tokens;
        self.prompts += 1;
        self.lp_source += c.lp_source;
        self.lp_quant += c.lp_quant;
    }

    /// The perplexity of the source's continuations under the source and the quantized model
    /// (exp of minus the mean over prompts of each prompt's mean log-probability).
    pub fn perplexities(&self) -> (f64, f64) {
        let k = self.prompts.max(1) as f64;
        ((-self.lp_source / k).exp(), (-self.lp_quant / k).exp())
    }
}

/// The re-quantization target named by `name` (`creme quantize --type`).
pub fn target_type(name: &str) -> Result<crate::model::GgmlType, String> {
    use crate::model::GgmlType;
    match name.to_lowercase().as_str() {
        "q8_0" => Ok(GgmlType::Q8_0),
        "q4_0" => Ok(GgmlType::Q4_0),
        "f16" => Ok(GgmlType::F16),
        "f32" => Ok(GgmlType::F32),
        t => Err(format!("--type {t}: q8_0, q4_0, f16 or f32")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_the_prompts_and_average_their_log_probabilities() {
        let mut t = CheckTotals::default();
        assert_eq!(t.perplexities(), (1.0, 1.0));
        for (agree, lp_source, lp_quant) in [(3, -1.0, -2.0), (5, -3.0, -2.0)] {
            let c = PromptCheck {
                agree,
                tokens: 8,
                lp_source,
                lp_quant,
            };
            t.add(&c);
        }
        assert_eq!((t.agree, t.tokens, t.prompts), (8, 16, 2));
        let (s, q) = t.perplexities();
        assert!((s - 2f64.exp()).abs() < 1e-12 && (q - 2f64.exp()).abs() < 1e-12);
    }

    #[test]
    fn target_types_are_named_in_any_case() {
        assert_eq!(target_type("Q8_0"), Ok(crate::model::GgmlType::Q8_0));
        assert_eq!(target_type("f16"), Ok(crate::model::GgmlType::F16));
        assert!(target_type("q5_k").unwrap_err().contains("q8_0, q4_0"));
    }
}
