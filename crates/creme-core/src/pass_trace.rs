//! The authors' restoration metric: generate from each patched probe and have a [`Judge`] run the
//! task's tests; a probe's score is its pass ratio over n samples (greedy: n = 1). Over a judge,
//! so the CLI (the sandbox) and the page (Pyodide) share it.

use serde::{Deserialize, Serialize};

use crate::backend::Device;
use crate::dataset::{Problem, TestProgram};
use crate::error::ModelError;
use crate::eval::{Judge, Verdict};
use crate::generate::{generate, humaneval_stops, GenerateOptions};
use crate::model::Model;
use crate::pipeline::{Clock, Locator};
use crate::progress::{Progress, Step};
use crate::trace::{
    self, generate_from_probes, LayerTrace, PatchPositions, Probe, RestorationMetric, TraceSetup,
};

/// The authors generate this many tokens per patched run (fewer where the context is shorter).
pub const PASS_TRACE_MAX_TOKENS: usize = 320;

pub struct RestorationByPass<'a, J: Judge> {
    /// The perturbed task (its prompt is the one the programs start with).
    pub problem: &'a Problem,
    pub samples: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    pub judge: &'a mut J,
}

impl<J: Judge> RestorationByPass<'_, J> {
    fn opts(&self, sample: usize) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: if self.samples > 1 {
                self.temperature
            } else {
                0.0
            },
            top_p: self.top_p,
            seed: 1000 + sample as u64,
            stop: humaneval_stops(),
            ignore_eos: false,
        }
    }

    /// Pass ratio of plain generations from `prompt_text` (acc_orig and acc_pert).
    pub async fn pass_ratio(
        &mut self,
        dev: &Device,
        model: &Model,
        prompt_text: &str,
        problem: &Problem,
    ) -> Result<f64, ModelError> {
        let ids = model.tokenizer.encode(prompt_text)?;
        let mut programs = Vec::new();
        for k in 0..self.samples {
            let c = generate(dev, model, &[ids.clone()], &self.opts(k), &mut |_, _| {}).await?;
            programs.push(problem.program(prompt_text, &c[0].text));
        }
        let v = verdicts(self.judge, &programs).await?;
        Ok(v.iter().filter(|&&v| v == Verdict::Pass).count() as f64 / self.samples as f64)
    }
}

impl<J: Judge> RestorationMetric for RestorationByPass<'_, J> {
    fn name(&self) -> &'static str {
        "pass"
    }
    async fn restoration(
        &mut self,
        dev: &Device,
        model: &Model,
        setup: &TraceSetup,
        probes: &[Probe],
    ) -> Result<Vec<f64>, ModelError> {
        let mut passes = vec![0usize; probes.len()];
        for k in 0..self.samples {
            let completions =
                generate_from_probes(dev, model, setup, probes, &self.opts(k)).await?;
            let programs: Vec<_> = completions
                .iter()
                .map(|c| self.problem.program(&self.problem.prompt, &c.text))
                .collect();
            for (i, v) in verdicts(self.judge, &programs).await?.iter().enumerate() {
                passes[i] += (*v == Verdict::Pass) as usize;
            }
        }
        Ok(passes
            .iter()
            .map(|&p| p as f64 / self.samples as f64)
            .collect())
    }
}

/// The programs' verdicts; a program the judge could not run is an error, so a trace never
/// counts it as a failed test.
async fn verdicts<J: Judge>(
    judge: &mut J,
    programs: &[TestProgram],
) -> Result<Vec<Verdict>, ModelError> {
    let judged = judge.judge(programs).await;
    if judged.len() != programs.len() {
        return Err(ModelError::Format(
            "the judge returned fewer judgements than programs".into(),
        ));
    }
    if let Some(j) = judged.iter().find(|j| j.verdict == Verdict::Error) {
        return Err(ModelError::Format(format!(
            "the judge could not run a test program: {}",
            j.stderr_tail
        )));
    }
    Ok(judged.iter().map(|j| j.verdict).collect())
}

/// The authors' improvement per layer: max(0, (ratio - acc_pert) / (acc_orig - acc_pert)), and 0
/// when acc_orig <= acc_pert.
pub fn improvement(ratio: f64, acc_orig: f64, acc_pert: f64) -> f64 {
    if acc_orig <= acc_pert {
        0.0
    } else {
        ((ratio - acc_pert) / (acc_orig - acc_pert)).max(0.0)
    }
}

/// What the pass trace measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PassAccount {
    pub acc_orig: f64,
    pub acc_pert: f64,
    /// Per layer: the patched run's pass ratio, and the authors' improvement from it.
    pub pass_ratio: Vec<f64>,
    pub improvement: Vec<f64>,
    pub patched_runs_passing: usize,
    pub key_layer: usize,
    pub samples: usize,
}

/// The authors' trace: acc_orig and acc_pert from plain generations, then the pass ratio of every
/// layer's patched run; scores are the improvements; key layer = best improvement (all zero: best
/// patched pass ratio), ties to the largest distance.
#[allow(clippy::too_many_arguments)]
pub async fn pass_trace<J: Judge>(
    dev: &Device,
    model: &Model,
    setup: &TraceSetup,
    clean: (&str, &Problem),
    pert: (&str, &Problem),
    samples: usize,
    judge: &mut J,
    progress: &mut Progress<'_>,
) -> Result<(LayerTrace, PassAccount), ModelError> {
    let max_new_tokens = PASS_TRACE_MAX_TOKENS.min(model.max_positions.saturating_sub(setup.frame));
    let mut pm = RestorationByPass {
        problem: pert.1,
        samples: samples.max(1),
        temperature: 0.2,
        top_p: 0.95,
        max_new_tokens,
        judge,
    };
    let acc_orig = pm.pass_ratio(dev, model, clean.0, clean.1).await?;
    let acc_pert = pm.pass_ratio(dev, model, pert.0, pert.1).await?;
    let raw = trace::trace_layers_with(
        dev,
        model,
        setup,
        PatchPositions::AllPrompt,
        &mut pm,
        progress,
    )
    .await?;
    let ratios = raw.scores.clone();
    let improvements: Vec<f64> = ratios
        .iter()
        .map(|&r| improvement(r, acc_orig, acc_pert))
        .collect();
    let key = if improvements.iter().any(|&v| v > 0.0) {
        trace::choose_layer(&improvements, &setup.distances)
    } else {
        trace::choose_layer(&ratios, &setup.distances)
    };
    let account = PassAccount {
        acc_orig,
        acc_pert,
        patched_runs_passing: ratios.iter().filter(|&&r| r > 0.0).count(),
        pass_ratio: ratios,
        improvement: improvements.clone(),
        key_layer: key,
        samples: samples.max(1),
    };
    let trace = LayerTrace {
        metric: "pass".into(),
        scores: improvements,
        key_layer: key,
        too_close: None,
        ..raw
    };
    Ok((trace, account))
}

/// The pass metric as the pipeline's locator: the task's tests decide (see [`pass_trace`]).
pub struct PassLocator<'a, J: Judge> {
    pub clean: (&'a str, &'a Problem),
    pub pert: (&'a str, &'a Problem),
    pub samples: usize,
    pub judge: &'a mut J,
}

impl<J: Judge> Locator for PassLocator<'_, J> {
    async fn locate(
        &mut self,
        dev: &Device,
        model: &Model,
        setup: &TraceSetup,
        progress: &mut Progress<'_>,
    ) -> Result<LayerTrace, ModelError> {
        let (trace, _) = pass_trace(
            dev,
            model,
            setup,
            self.clean,
            self.pert,
            self.samples,
            self.judge,
            progress,
        )
        .await?;
        Ok(trace)
    }
}

/// What the pass metric needs besides the trace setup: both prompts with their tasks (tests),
/// the samples per patched run (1 = greedy; more sample at T=0.2, top-p 0.95) and the judge.
pub struct PassInputs<'a, J: Judge> {
    pub clean: (&'a str, &'a Problem),
    pub pert: (&'a str, &'a Problem),
    pub samples: usize,
    pub judge: &'a mut J,
}

/// The layer traces of a pair, as `creme trace` reports them.
#[derive(Clone, Debug)]
pub struct PairTraces {
    /// The key-layer trace: the logprob trace over every prompt position, or with the pass
    /// metric the pass metric's.
    pub all: LayerTrace,
    /// The logprob trace over the differing positions only.
    pub diff: LayerTrace,
    /// The pass metric's account (None with the logprob metric).
    pub pass: Option<PassAccount>,
    /// Seconds of the key-layer trace (zero in the browser, which has no clock here).
    pub seconds: f64,
}

impl PairTraces {
    /// `creme trace`'s line on the pair: both prompts' logprobs (from `setup`), both key layers,
    /// and the seconds of the prelude (`prelude_s`: target and capture) and of the trace.
    pub fn summary(&self, label: &str, setup: &TraceSetup, prelude_s: f64) -> String {
        let (all, diff) = (self.all.key_layer, self.diff.key_layer);
        let note = match self.all.too_close.or(self.diff.too_close) {
            Some(c) => format!("\nnote: {c}"),
            None => String::new(),
        };
        format!(
            "{label}: lp(clean) {:.3}, lp(pert) {:.3}; key layer {all} (all prompt positions), {diff} (differing positions only); \
             target and capture {prelude_s:.2} s, layer trace {:.2} s{note}",
            setup.lp_clean, setup.lp_pert, self.seconds
        )
    }

    /// The pass metric's line (None with the logprob metric).
    pub fn pass_summary(&self) -> Option<String> {
        let a = self.pass.as_ref()?;
        Some(format!(
            "pass metric: acc_orig {:.2}, acc_pert {:.2}, {} of {} patched runs pass, key layer {}",
            a.acc_orig,
            a.acc_pert,
            a.patched_runs_passing,
            self.all.scores.len(),
            self.all.key_layer
        ))
    }
}

/// Both logprob traces of a pair ([`trace::logprob_traces`]) and, with `pass`, the pass
/// metric's trace in place of the first. `progress` gets each trace's name with its steps.
pub async fn pair_traces<J: Judge>(
    dev: &Device,
    model: &Model,
    setup: &TraceSetup,
    pass: Option<PassInputs<'_, J>>,
    progress: &mut dyn FnMut(&str, Step<'_>),
) -> Result<PairTraces, ModelError> {
    let (all, diff, seconds) = trace::logprob_traces(dev, model, setup, progress).await?;
    let mut traces = PairTraces {
        all,
        diff,
        pass: None,
        seconds,
    };
    let Some(p) = pass else {
        return Ok(traces);
    };
    let clock = Clock::start();
    let mut on_step = |s: Step<'_>| progress(PASS_METRIC, s);
    let traced = pass_trace(
        dev,
        model,
        setup,
        p.clean,
        p.pert,
        p.samples,
        p.judge,
        &mut on_step,
    );
    let (all, account) = traced.await?;
    traces.seconds = clock.lap();
    traces.all = all;
    traces.pass = Some(account);
    Ok(traces)
}

/// The name [`pair_traces`] reports the pass metric's progress under.
pub const PASS_METRIC: &str = "pass metric";

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_trace(key_layer: usize) -> LayerTrace {
        LayerTrace {
            metric: "pass".into(),
            positions: PatchPositions::AllPrompt,
            patched_positions: vec![],
            scores: vec![0.0; 4],
            distances: vec![0.0; 4],
            key_layer,
            too_close: None,
        }
    }

    #[test]
    fn the_grid_line_gives_its_size_and_key_layer() {
        let g = crate::trace::GridTrace {
            metric: "logprob".into(),
            positions: vec![3, 5, 8],
            scores: vec![vec![0.0; 3]; 24],
            key_layer: 7,
            too_close: None,
        };
        let line = "grid: 24 layers x 3 positions in 1.25 s, key layer 7";
        assert_eq!(g.summary(1.25), line);
    }

    #[test]
    fn the_pass_line_counts_the_passing_patched_runs_of_every_layer() {
        let mut t = PairTraces {
            all: layer_trace(2),
            diff: layer_trace(1),
            pass: None,
            seconds: 1.5,
        };
        assert_eq!(t.pass_summary(), None);
        t.pass = Some(PassAccount {
            acc_orig: 1.0,
            acc_pert: 0.0,
            pass_ratio: vec![],
            improvement: vec![],
            patched_runs_passing: 3,
            key_layer: 2,
            samples: 1,
        });
        assert_eq!(
            t.pass_summary().unwrap(),
            "pass metric: acc_orig 1.00, acc_pert 0.00, 3 of 4 patched runs pass, key layer 2"
        );
    }

    #[test]
    fn improvement_is_the_restored_share_and_zero_without_a_gap() {
        assert_eq!(improvement(0.5, 1.0, 0.0), 0.5);
        assert_eq!(improvement(0.0, 1.0, 0.5), 0.0);
        assert_eq!(improvement(1.0, 0.5, 0.5), 0.0);
    }
}
