//! The page's judge: core's [`Judge`] over the page's Python. The page hands in its runner
//! (`Judge.run` of web/judge.js: Pyodide in a Web Worker running web/judge_runner.py, which owns
//! the verdict rule and the time limit) as a JS function `run({source, check})` that resolves to
//! `{outcome, kind, tail, seconds}`. Nothing is decided here: the runner's verdict is carried
//! into core's types, so the page's evaluation runs through `creme_core::eval` like `creme eval`.

use creme_core::dataset::TestProgram;
use creme_core::eval::record::JUDGE_ERROR_KIND;
use creme_core::eval::{Judge, Judgement, Verdict};
use serde::Deserialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

/// What the page's runner resolves to for one program (web/judge.js).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PageVerdict {
    /// "PASS" only when the test's check returned (judge_runner.py's rule); else "FAIL".
    pub outcome: String,
    /// judge_runner.py's kind of failure ("assertion", "exit", "exception", ...), "timeout"
    /// when the page stopped the worker, "none" for a pass.
    pub kind: String,
    /// The traceback's last lines (or why the run was stopped).
    pub tail: String,
    pub seconds: f64,
}

/// Core's judgement of the runner's verdict. PASS only when the runner said PASS; the page's time
/// limit is core's `Timeout`; every other outcome is a `Fail` of the runner's kind.
pub fn judgement_of(v: &PageVerdict) -> Judgement {
    let (verdict, error_kind) = match (v.outcome.as_str(), v.kind.as_str()) {
        ("PASS", _) => (Verdict::Pass, String::new()),
        (_, "timeout") => (Verdict::Timeout, "timeout".to_string()),
        (_, kind) => (Verdict::Fail, kind.to_string()),
    };
    Judgement {
        verdict,
        error_kind,
        exit_code: None,
        seconds: v.seconds,
        stdout_tail: String::new(),
        stderr_tail: v.tail.clone(),
    }
}

/// The page could not judge the program (no Python in this browser, the runner failed): not a
/// verdict on the program (core's judge error, as the native sandbox reports one).
pub fn judge_error(why: String) -> Judgement {
    Judgement {
        verdict: Verdict::Error,
        error_kind: JUDGE_ERROR_KIND.to_string(),
        exit_code: None,
        seconds: 0.0,
        stdout_tail: String::new(),
        stderr_tail: why,
    }
}

/// Core's [`Judge`] over the page's runner function. Not `Send` (it holds a JS function), which
/// core's trait allows.
pub struct PyodideJudge {
    run: js_sys::Function,
}

impl PyodideJudge {
    pub fn new(run: js_sys::Function) -> PyodideJudge {
        PyodideJudge { run }
    }

    async fn judge_one(&self, program: &TestProgram) -> Judgement {
        match self.call(program).await {
            Ok(v) => judgement_of(&v),
            Err(why) => judge_error(why),
        }
    }

    /// Run one program through the page's runner; Err: why there is no verdict.
    async fn call(&self, program: &TestProgram) -> Result<PageVerdict, String> {
        let arg = js_sys::Object::new();
        for (key, value) in [("source", &program.source), ("check", &program.check)] {
            js_sys::Reflect::set(&arg, &JsValue::from_str(key), &JsValue::from_str(value))
                .map_err(|e| js_message(&e))?;
        }
        let returned = self
            .run
            .call1(&JsValue::NULL, &arg)
            .map_err(|e| js_message(&e))?;
        let resolved = JsFuture::from(js_sys::Promise::resolve(&returned))
            .await
            .map_err(|e| js_message(&e))?;
        let json = js_sys::JSON::stringify(&resolved)
            .map_err(|e| js_message(&e))?
            .as_string()
            .unwrap_or_default();
        serde_json::from_str(&json).map_err(|e| format!("the page's judge returned {json}: {e}"))
    }
}

impl Judge for PyodideJudge {
    /// One program after the other: the page's runner has one Python and queues them anyway.
    async fn judge(&mut self, programs: &[TestProgram]) -> Vec<Judgement> {
        let mut out = Vec::with_capacity(programs.len());
        for p in programs {
            out.push(self.judge_one(p).await);
        }
        out
    }
}

/// The message of a thrown JS value (an Error's message, else its text).
fn js_message(e: &JsValue) -> String {
    if let Some(err) = e.dyn_ref::<js_sys::Error>() {
        return String::from(err.message());
    }
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(outcome: &str, kind: &str) -> PageVerdict {
        PageVerdict {
            outcome: outcome.into(),
            kind: kind.into(),
            tail: "AssertionError".into(),
            seconds: 0.5,
        }
    }

    #[test]
    fn the_runners_verdict_is_carried_not_decided() {
        let pass = judgement_of(&v("PASS", "none"));
        assert_eq!(
            (pass.verdict, pass.error_kind.as_str()),
            (Verdict::Pass, "")
        );
        let fail = judgement_of(&v("FAIL", "assertion"));
        assert_eq!(
            (fail.verdict, fail.error_kind.as_str()),
            (Verdict::Fail, "assertion")
        );
        assert_eq!(fail.stderr_tail, "AssertionError");
        assert_eq!(fail.seconds, 0.5);
        let exit = judgement_of(&v("FAIL", "exit"));
        assert_eq!(
            (exit.verdict, exit.error_kind.as_str()),
            (Verdict::Fail, "exit")
        );
        let slow = judgement_of(&v("FAIL", "timeout"));
        assert_eq!(
            (slow.verdict, slow.error_kind.as_str()),
            (Verdict::Timeout, "timeout")
        );
        // Anything but PASS is never a pass, whatever the kind says.
        for outcome in ["", "pass", "Pass", "FAIL", "ERROR"] {
            assert_ne!(
                judgement_of(&v(outcome, "none")).verdict,
                Verdict::Pass,
                "{outcome}"
            );
        }
        let err = judge_error("no Web Workers".into());
        assert_eq!(
            (err.verdict, err.error_kind.as_str()),
            (Verdict::Error, JUDGE_ERROR_KIND)
        );
    }

    #[test]
    fn a_runner_reply_reads_with_missing_fields() {
        let r: PageVerdict = serde_json::from_str(r#"{"outcome":"FAIL","kind":"exit"}"#).unwrap();
        assert_eq!(
            (r.outcome.as_str(), r.kind.as_str(), r.seconds),
            ("FAIL", "exit", 0.0)
        );
    }
}
