//! Evaluation in the page through core: a set of problems is generated and judged by
//! `creme_core::eval::run_set` (the protocol `creme eval` runs) over the page's Pyodide judge
//! ([`crate::judge::PyodideJudge`]), and a single given completion is judged into the same typed
//! `SampleRecord`. The page only presents the records.

use creme_core::dataset::Problem;
use creme_core::eval::{self, GenSpec, Judge, SampleRecord};
use creme_core::sets::SetName;
use creme_core::ModelError;
use serde::Deserialize;
use wasm_bindgen::prelude::*;

use crate::judge::PyodideJudge;
use crate::{js_err, Session};

/// A problem as the page holds it (the JSON of core's `Problem`, from `parseTasks`), with the
/// prompt the model is given: for a perturbed set, the perturbed prompt.
#[derive(Deserialize)]
struct PageProblem {
    task_id: String,
    prompt: String,
    entry_point: String,
    test: String,
    #[serde(default)]
    original_prompt: Option<String>,
}

impl From<PageProblem> for Problem {
    fn from(p: PageProblem) -> Problem {
        Problem {
            task_id: p.task_id,
            prompt: p.prompt,
            entry_point: p.entry_point,
            test: p.test,
            original_prompt: p.original_prompt,
        }
    }
}

fn problems_of(json: &str) -> Result<Vec<Problem>, JsError> {
    let list: Vec<PageProblem> =
        serde_json::from_str(json).map_err(|e| js_err(format!("problems: {e}")))?;
    Ok(list.into_iter().map(Problem::from).collect())
}

fn set_of(name: &str) -> Result<SetName, JsError> {
    name.parse().map_err(js_err)
}

/// The records as a JSON array.
fn records_json(records: &[SampleRecord]) -> Result<String, JsError> {
    serde_json::to_string(records).map_err(js_err)
}

#[wasm_bindgen]
impl Session {
    /// Evaluate a set as `creme eval` does (core's `run_set`): greedy completions of at most
    /// `max_tokens` tokens with the HumanEval stops, generated in core's batches, each judged by
    /// the page's runner `run({source, check}) -> Promise<{outcome, kind, tail, seconds}>`
    /// (web/judge.js). `problems`: JSON [{task_id, prompt, entry_point, test}] with the prompts
    /// the model is given; `set`: "clean" or a perturbation type. `on_record(json)` is called
    /// with each `SampleRecord` as it is judged. Returns the records as JSON, in problem order.
    #[wasm_bindgen(js_name = evaluateSet)]
    pub async fn evaluate_set(
        &self,
        problems: String,
        set: String,
        max_tokens: usize,
        run: js_sys::Function,
        on_record: Option<js_sys::Function>,
    ) -> Result<String, JsError> {
        let model = self.model()?;
        let problems = problems_of(&problems)?;
        let set = set_of(&set)?;
        let spec = GenSpec {
            max_tokens,
            ..GenSpec::default()
        }
        .greedy();
        let items: Vec<(&Problem, usize)> = problems.iter().map(|p| (p, 0)).collect();
        let mut judge = PyodideJudge::new(run);
        let mut records = Vec::new();
        let mut sink = |r: SampleRecord| {
            if let Some(f) = &on_record {
                let json = serde_json::to_string(&r).unwrap_or_default();
                let _ = f.call1(&JsValue::NULL, &JsValue::from_str(&json));
            }
            records.push(r);
            Ok::<(), ModelError>(())
        };
        eval::run_set(
            &self.dev, model, set, &items, &spec, None, &mut judge, &mut sink,
        )
        .await
        .map_err(js_err)?;
        records_json(&records)
    }
}

/// Judge one given completion of `problem` (JSON, as from `parseTasks`) generated after `prompt`
/// with the page's runner (see [`Session::evaluate_set`]): the program is core's (the native
/// harness's text), the verdict the runner's, the result core's `SampleRecord` as JSON (finish
/// "given"; verdict "Error" with error_kind "sandbox" when the page has no Python to judge with).
#[wasm_bindgen(js_name = judgeCompletion)]
pub async fn judge_completion(
    problem: String,
    set: String,
    prompt: String,
    completion: String,
    run: js_sys::Function,
) -> Result<String, JsError> {
    let problem: Problem = serde_json::from_str::<PageProblem>(&problem)
        .map_err(|e| js_err(format!("problem: {e}")))?
        .into();
    let set = set_of(&set)?;
    let program = problem.program(&prompt, &completion);
    let judged = PyodideJudge::new(run)
        .judge(std::slice::from_ref(&program))
        .await;
    let j = judged
        .first()
        .ok_or_else(|| JsError::new("the page's judge returned no judgement"))?;
    let record = SampleRecord::judged(set, &problem.task_id, 0, &completion, "given", j);
    serde_json::to_string(&record).map_err(js_err)
}
