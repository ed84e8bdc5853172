//! The authors' restoration metric: generate from each patched probe and execute the task's tests
//! in the sandbox; a probe's score is its pass ratio over n samples (greedy: n = 1).

use creme_core::dataset::Problem;
use creme_core::generate::{generate, humaneval_stops, GenerateOptions};
use creme_core::model::Model;
use creme_core::trace::{
    self, generate_from_probes, LayerTrace, PatchPositions, Probe, RestorationMetric, TraceSetup,
};
use creme_core::{Device, ModelError};

use crate::sandbox::{run_many, Limits, TestProgram, Verdict};

pub struct RestorationByPass<'a> {
    /// The perturbed task (its prompt is the one the programs start with).
    pub problem: &'a Problem,
    pub samples: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    pub workers: usize,
}

impl RestorationByPass<'_> {
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

    /// Pass ratio of plain generations from `prompt` (to measure acc_orig and acc_pert).
    pub async fn pass_ratio(
        &self,
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
        let r = verdicts(&programs, self.workers)?;
        Ok(r.iter().filter(|&&v| v == Verdict::Pass).count() as f64 / self.samples as f64)
    }
}

impl RestorationMetric for RestorationByPass<'_> {
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
            for (i, v) in verdicts(&programs, self.workers)?.iter().enumerate() {
                passes[i] += (*v == Verdict::Pass) as usize;
            }
        }
        Ok(passes
            .iter()
            .map(|&p| p as f64 / self.samples as f64)
            .collect())
    }
}

/// The programs' verdicts; a sandbox failure (not a verdict on the program) is an error, so a
/// trace never counts it as a failed test.
fn verdicts(programs: &[TestProgram], workers: usize) -> Result<Vec<Verdict>, ModelError> {
    let results = run_many(programs, &Limits::default(), workers);
    if let Some(r) = results.iter().find(|r| r.verdict == Verdict::Error) {
        return Err(ModelError::Format(format!(
            "the sandbox could not run a test program: {}",
            r.stderr_tail
        )));
    }
    Ok(results.iter().map(|r| r.verdict).collect())
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

/// The authors' trace: acc_orig and acc_pert from plain generations, then the pass ratio of every
/// layer's patched run; scores are the improvements; key layer = best improvement (all zero: best
/// patched pass ratio), ties to the largest distance. Returns the trace and a JSON account.
pub async fn pass_trace(
    dev: &Device,
    model: &Model,
    setup: &TraceSetup,
    clean: (&str, &Problem),
    pert: (&str, &Problem),
    samples: usize,
    progress: &mut creme_core::progress::Progress<'_>,
) -> Result<(LayerTrace, serde_json::Value), ModelError> {
    let t0 = std::time::Instant::now();
    // The authors generate 320 tokens; a model with a shorter context gets what fits.
    let max_new_tokens = 320.min(model.max_positions.saturating_sub(setup.frame));
    let mut pm = RestorationByPass {
        problem: pert.1,
        samples: samples.max(1),
        temperature: 0.2,
        top_p: 0.95,
        max_new_tokens,
        workers: 4,
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
    let passing = ratios.iter().filter(|&&r| r > 0.0).count();
    let account = serde_json::json!({"acc_orig": acc_orig, "acc_pert": acc_pert, "pass_ratio": ratios, "improvement": improvements,
        "patched_runs_passing": passing, "key_layer": key, "samples": samples.max(1), "seconds": t0.elapsed().as_secs_f64()});
    Ok((
        LayerTrace {
            metric: "pass".into(),
            scores: improvements,
            key_layer: key,
            ..raw
        },
        account,
    ))
}

/// The pass metric as the pipeline's locator: the task's tests decide (see [`pass_trace`]).
pub struct PassLocator<'a> {
    pub clean: (&'a str, &'a Problem),
    pub pert: (&'a str, &'a Problem),
    pub samples: usize,
}

impl creme_core::pipeline::Locator for PassLocator<'_> {
    async fn locate(
        &mut self,
        dev: &Device,
        model: &Model,
        setup: &TraceSetup,
        progress: &mut creme_core::progress::Progress<'_>,
    ) -> Result<LayerTrace, ModelError> {
        Ok(pass_trace(
            dev,
            model,
            setup,
            self.clean,
            self.pert,
            self.samples,
            progress,
        )
        .await?
        .0)
    }
}
