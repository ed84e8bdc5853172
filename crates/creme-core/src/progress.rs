//! Progress of long operations. Core reports through a callback and knows no terminal: the CLI
//! draws bars or prints lines (crates/creme-cli/src/progress.rs), the browser updates its page.

/// One report: `done` of `total` units of `stage` (trace: layers; edit: optimizer evaluations;
/// eval: samples), with a short note (running scores, the loss, passes so far).
#[derive(Clone, Debug)]
pub struct Step<'a> {
    pub stage: &'a str,
    pub done: usize,
    pub total: usize,
    pub note: String,
}

/// Where reports go: any `FnMut(Step)`; `&mut |_| {}` ignores them.
pub type Progress<'a> = dyn FnMut(Step<'_>) + 'a;

/// Samples judged of one set and the passes among them, as progress steps.
#[derive(Clone, Debug)]
pub struct SampleTally {
    pub total: usize,
    pub done: usize,
    pub passed: usize,
}

impl SampleTally {
    pub fn new(total: usize) -> SampleTally {
        SampleTally {
            total,
            done: 0,
            passed: 0,
        }
    }

    /// Count `n` more samples, `passed` of them passing; the step to report.
    pub fn tick(&mut self, n: usize, passed: usize) -> Step<'static> {
        self.done += n;
        self.passed += passed;
        Step {
            stage: "samples",
            done: self.done,
            total: self.total,
            note: format!("{} passed", self.passed),
        }
    }

    pub fn finished(&self) -> bool {
        self.done == self.total
    }
}
