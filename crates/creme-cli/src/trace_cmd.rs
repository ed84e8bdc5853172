//! `creme trace`: locate the robustness-sensitive layer of one clean/perturbed prompt pair.

use std::path::PathBuf;
use std::time::Instant;

use creme_core::dataset::Problem;
use creme_core::model::Model;
use creme_core::progress::Step;
use creme_core::report;
use creme_core::report::trace::TraceRun;
use creme_core::sets::PerturbationType;
use creme_core::trace::{self, GridTrace, RestorationByLogprob, TraceSetup};
use creme_core::{Backend, Device};

use crate::common::{self, Res};
use creme_core::pass_trace::{pair_traces, PairTraces, PassInputs};

/// The model and the clean/perturbed prompt pair, shared by `trace` and `edit`.
#[derive(clap::Args, Clone)]
pub struct PairArgs {
    /// GGUF model file (default: the cached Qwen2.5-Coder-0.5B-Instruct Q4_K_M)
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// HumanEval task id, e.g. HumanEval/0
    #[arg(long)]
    pub task: Option<String>,
    /// Perturbation type (A1..S2)
    #[arg(long = "type")]
    pub ptype: Option<PerturbationType>,
    /// Dataset directory (HumanEval.jsonl + perturbed/<TYPE>.jsonl)
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Clean prompt file (instead of --task/--type)
    #[arg(long)]
    pub clean_file: Option<PathBuf>,
    /// Perturbed prompt file
    #[arg(long)]
    pub pert_file: Option<PathBuf>,
    /// Apply CREME patches to the model first (repeatable; e.g. to trace or edit an edited model)
    #[arg(long)]
    pub patch: Vec<PathBuf>,
}

/// How a trace scores a patched run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum TraceMetric {
    /// Teacher-forced log-probability of the clean continuation
    Logprob,
    /// Generate and execute the task's tests (needs --task/--type)
    Pass,
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl PairArgs {
    /// The model, with the patches applied.
    pub fn load_model(&self, dev: &Device) -> Res<creme_core::model::Model> {
        let mut model =
            common::load_model(dev, Some(&common::model_path(self.model.as_deref())), 0)?;
        common::apply_patches(dev, &mut model, &self.patch)?;
        Ok(model)
    }
}

/// A pair as given: the clean and perturbed prompt texts, a label and (with --task/--type) the
/// problems with tests.
pub struct PairInput {
    pub texts: (String, String),
    pub label: String,
    pub problems: Option<(Problem, Problem)>,
}

impl PairInput {
    pub fn prompts(&self) -> (&str, &str) {
        (&self.texts.0, &self.texts.1)
    }
}

impl PairArgs {
    /// The pair, from a task or from two files.
    pub fn pair(&self) -> Res<PairInput> {
        let read = |f: &std::path::Path| {
            std::fs::read_to_string(f).map_err(|e| format!("reading {}: {e}", f.display()))
        };
        match (&self.task, &self.ptype, &self.clean_file, &self.pert_file) {
            (Some(t), Some(ty), None, None) => {
                let dir = common::dataset_dir(self.dataset.as_deref())?;
                let (c, p) = common::task_pair(&dir, t, *ty)?;
                let texts = (c.prompt.clone(), p.prompt.clone());
                let (label, problems) = (format!("{t} {ty}"), Some((c, p)));
                Ok(PairInput {
                    texts,
                    label,
                    problems,
                })
            }
            // The label goes into patches and reports: file names only, no machine paths.
            (None, None, Some(c), Some(p)) => Ok(PairInput {
                texts: (read(c)?, read(p)?),
                label: format!("{} vs {}", file_name(c), file_name(p)),
                problems: None,
            }),
            _ => Err(
                "give --task ID --type T (with --dataset DIR) or --clean-file F --pert-file F"
                    .into(),
            ),
        }
    }
}

/// Flags of `creme trace`.
#[derive(clap::Args, Clone)]
pub struct TraceArgs {
    #[command(flatten)]
    pub pair: PairArgs,
    /// Restoration metric
    #[arg(long, value_enum, default_value_t = TraceMetric::Logprob)]
    pub metric: TraceMetric,
    /// Also trace a layer x position grid (one position patched at a time)
    #[arg(long)]
    pub grid: bool,
    /// Grid over every prompt position (default: differing positions and the last six)
    #[arg(long)]
    pub grid_all: bool,
    /// Length of the clean greedy continuation scored by the logprob metric
    #[arg(long, default_value_t = creme_core::pipeline::DEFAULT_TARGET_TOKENS)]
    pub target_tokens: usize,
    /// Samples per patched run for the pass metric (1 = greedy; >1 samples at T=0.2, top-p 0.95)
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Output directory (trace.json, trace.svg, grid.svg, report.html)
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(dev: &Device, a: TraceArgs) -> Res {
    if a.metric == TraceMetric::Pass && a.pair.task.is_none() {
        return Err("--metric pass needs --task/--type (the task's tests decide pass/fail)".into());
    }
    let pair = a.pair.pair()?;
    let label = &pair.label;
    let model = a.pair.load_model(dev)?;
    std::fs::create_dir_all(&a.out)?;
    let t0 = Instant::now();
    let (clean_text, pert_text) = pair.prompts();
    let prelude = trace::prepare_pair(dev, &model, clean_text, pert_text, a.target_tokens);
    let (target, setup) = pollster::block_on(prelude)?;
    let t_prelude = t0.elapsed().as_secs_f64();
    let tr = layer_traces(dev, &model, &setup, &a, &pair)?;
    eprintln!("{}", tr.summary(label, &setup, t_prelude));
    std::fs::write(
        a.out.join("trace.svg"),
        report::trace::trace_svg(&tr.all, label),
    )?;
    let grid = match a.grid {
        true => Some(grid(dev, &model, &setup, &a, label)?),
        false => None,
    };
    let target_text = model.tokenizer.decode(&target)?;
    let (dev_name, metric) = (dev.describe(), format!("{:?}", a.metric).to_lowercase());
    let run = TraceRun {
        model: &model.cfg.name,
        label,
        metric: &metric,
        target_tokens: a.target_tokens,
        prompts: (clean_text, pert_text),
        setup: &setup,
        target: (&target_text, target.len()),
        all: &tr.all,
        diff: &tr.diff,
        grid: grid.as_ref().map(|g| &g.0),
        pass: serde_json::to_value(&tr.pass)?,
        timings: (t_prelude, tr.seconds),
        adapter: &dev_name,
    };
    let sections = report::trace::trace_sections(&run, grid.as_ref().map(|g| g.1.clone()));
    let json_text = serde_json::to_string_pretty(&report::trace::trace_document(&run))?;
    common::write(&a.out.join("trace.json"), &json_text)?;
    common::write(
        &a.out.join("report.html"),
        report::html_page(&format!("CREME trace — {label}"), &sections, &json_text),
    )?;
    println!(
        "key layer {} (differing positions: {}); report: {}",
        tr.all.key_layer,
        tr.diff.key_layer,
        a.out.join("report.html").display()
    );
    Ok(())
}

/// The logprob traces (all prompt positions, differing positions), and with `--metric pass` the
/// pass metric's trace in place of the first (core's `pair_traces`), with progress.
fn layer_traces(
    dev: &Device,
    model: &Model,
    setup: &TraceSetup,
    a: &TraceArgs,
    pair: &PairInput,
) -> Res<PairTraces> {
    let problems = match a.metric {
        TraceMetric::Pass => Some(
            pair.problems
                .as_ref()
                .ok_or("--metric pass needs --task/--type")?,
        ),
        TraceMetric::Logprob => None,
    };
    let (clean_text, pert_text) = pair.prompts();
    let mut judge = crate::sandbox::SandboxJudge::for_pass_trace();
    let pass = problems.map(|(c, p)| PassInputs {
        clean: (clean_text, c),
        pert: (pert_text, p),
        samples: a.samples,
        judge: &mut judge,
    });
    let mut bars = crate::progress::Parts::default();
    let mut on_step = |part: &str, s: Step<'_>| bars.step(part, s);
    let tr = pollster::block_on(pair_traces(dev, model, setup, pass, &mut on_step))?;
    drop(bars);
    if let Some(line) = tr.pass_summary() {
        eprintln!("{line}");
    }
    Ok(tr)
}

/// The layer x position grid, written as grid.svg (returned with its SVG).
fn grid(
    dev: &Device,
    model: &Model,
    setup: &TraceSetup,
    a: &TraceArgs,
    label: &str,
) -> Res<(GridTrace, String)> {
    let positions = setup.grid_positions(a.grid_all);
    let t3 = Instant::now();
    let grid = pollster::block_on(trace::trace_grid(
        dev,
        model,
        setup,
        &positions,
        &mut RestorationByLogprob,
    ))?;
    eprintln!("{}", grid.summary(t3.elapsed().as_secs_f64()));
    let labels = setup.position_labels(&positions, &model.tokenizer);
    let svg = report::trace::grid_svg(&grid, &labels, label);
    std::fs::write(a.out.join("grid.svg"), &svg)?;
    Ok((grid, svg))
}
