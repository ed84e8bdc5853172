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
