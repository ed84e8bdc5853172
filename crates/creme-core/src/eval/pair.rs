//! One prompt pair's greedy completions and their verdicts, as `creme edit` shows them before
//! and after an edit.

use crate::backend::Device;
use crate::dataset::Problem;
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
