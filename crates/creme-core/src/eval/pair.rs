//! One prompt pair's greedy completions and their verdicts, as `creme edit` shows them before
//! and after an edit, and the decision margin the edit moved.

use crate::backend::Device;
use crate::dataset::Problem;
use crate::diagnose::{decision_margin, first_divergence, Divergence};
use crate::edit::EditPatch;
use crate::error::ModelError;
use crate::generate::{generate, humaneval_stops, GenerateOptions};
use crate::model::Model;

use super::{Judge, Verdict};

/// Most new tokens of a pair's completion.
pub const PAIR_MAX_TOKENS: usize = 320;

/// A completion and its test verdict (None: no tests, or not evaluated).
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub completion: String,
    pub verdict: Option<Verdict>,
}

/// Completions of the clean and the perturbed prompt, with their verdicts and tokens.
#[derive(Clone, Debug, Default)]
pub struct PairOutcome {
    pub clean: Outcome,
    pub pert: Outcome,
    /// (clean, perturbed) completion tokens.
    pub tokens: (Vec<u32>, Vec<u32>),
}

/// A verdict as the reports and the edit's output write it.
pub fn verdict_label(v: Option<Verdict>) -> &'static str {
    match v {
        Some(Verdict::Pass) => "PASS",
        Some(Verdict::Fail) => "FAIL",
        Some(Verdict::Timeout) => "TIMEOUT",
        Some(Verdict::Error) => "ERROR",
        None => "(no tests)",
    }
}

/// Greedy HumanEval completion of `prompt` and, when a problem is known, its test verdict.
pub async fn complete_and_judge(
    dev: &Device,
    model: &Model,
    prompt: &str,
    problem: Option<&Problem>,
    judge: &mut impl Judge,
) -> Result<(Outcome, Vec<u32>), ModelError> {
    let ids = model.tokenizer.encode(prompt)?;
    let opts = GenerateOptions {
        max_new_tokens: PAIR_MAX_TOKENS,
        stop: humaneval_stops(),
        ..Default::default()
    };
    let c = generate(dev, model, &[ids], &opts, &mut |_, _| {})
        .await?
        .remove(0);
    let verdict = match problem {
        Some(p) => {
            let program = p.program(prompt, &c.text);
            Some(judge.judge(&[program]).await.remove(0).verdict)
        }
        None => None,
    };
    let outcome = Outcome {
        completion: c.text,
        verdict,
    };
    Ok((outcome, c.tokens))
}

/// Both prompts of a pair, clean first (`problems`: the (clean, perturbed) tasks with tests).
pub async fn pair_outcome(
    dev: &Device,
    model: &Model,
    (clean, pert): (&str, &str),
    problems: Option<&(Problem, Problem)>,
    judge: &mut impl Judge,
) -> Result<PairOutcome, ModelError> {
    let (c, tc) = complete_and_judge(dev, model, clean, problems.map(|p| &p.0), judge).await?;
    let (p, tp) = complete_and_judge(dev, model, pert, problems.map(|p| &p.1), judge).await?;
    Ok(PairOutcome {
        clean: c,
        pert: p,
        tokens: (tc, tp),
    })
}

/// [`pair_outcome`] with a judge; without one (nothing is to be evaluated) the empty outcome.
pub async fn pair_outcome_if(
    dev: &Device,
    model: &Model,
    prompts: (&str, &str),
    problems: Option<&(Problem, Problem)>,
    judge: Option<&mut impl Judge>,
) -> Result<PairOutcome, ModelError> {
    match judge {
        Some(judge) => pair_outcome(dev, model, prompts, problems, judge).await,
        None => Ok(PairOutcome::default()),
    }
}

/// The decision margin (log p clean - log p perturbed token, perturbed prompt) at the first
/// completion token where the unedited pair's greedy completions part, before and after an edit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MarginChange {
    /// Completion tokens both completions share before they part.
    pub index: usize,
    pub before: f64,
    pub after: f64,
}

/// What an edit changes on its pair: with `patch` applied, both completions and verdicts (none
/// without a judge) and the decision margin at `before`'s divergence, beside the unedited
/// model's (None where `before`'s completions do not part). The model is reverted before this
/// returns, whatever failed after the patch was applied.
pub async fn outcome_after_edit(
    dev: &Device,
    model: &mut Model,
    patch: &EditPatch,
    prompts: (&str, &str),
    problems: Option<&(Problem, Problem)>,
    before: &PairOutcome,
    judge: Option<&mut impl Judge>,
) -> Result<(PairOutcome, Option<MarginChange>), ModelError> {
    let pert = model.tokenizer.encode(prompts.1)?;
    let div = first_divergence(&before.tokens.0, &before.tokens.1);
    let margin_before = margin_at(dev, model, &pert, before, div.as_ref()).await?;
    patch.apply(dev, model)?;
    let margin_after = margin_at(dev, model, &pert, before, div.as_ref()).await;
    let after = pair_outcome_if(dev, model, prompts, problems, judge).await;
    crate::patch::revert(model, patch);
    let change = match (div, margin_before, margin_after?) {
        (Some(d), Some(before), Some(after)) => Some(MarginChange {
            index: d.index,
            before,
            after,
        }),
        _ => None,
    };
    Ok((after?, change))
}

/// The margin at `div` after `pert` and the completions' shared part, with the model as it is.
async fn margin_at(
    dev: &Device,
    model: &Model,
    pert: &[u32],
    before: &PairOutcome,
    div: Option<&Divergence>,
) -> Result<Option<f64>, ModelError> {
    let Some(div) = div else {
        return Ok(None);
    };
    let shared = &before.tokens.0[..div.index];
    Ok(Some(decision_margin(dev, model, pert, shared, div).await?))
}
