//! `creme edit`: trace (or take a fixed layer), edit W_down from one prompt pair, write the patch,
//! and show what changed: completions and test results before and after, with an HTML report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use creme_core::dataset::Problem;
use creme_core::edit::{EditSettings, Keep, Solver};
use creme_core::generate::{generate, humaneval_stops, GenerateOptions};
use creme_core::model::Model;
use creme_core::pipeline::{locate_and_edit_with, CremeSettings, LogprobLocator};
use creme_core::report;
use creme_core::{Backend, Device};
use serde_json::json;

use crate::common::{self, Res};
use crate::sandbox::{run_program, Limits, Verdict};

pub struct EditArgs {
    pub pair: crate::trace_cmd::PairArgs,
    pub layer: Option<usize>,
    pub settings: EditSettings,
    pub target_tokens: usize,
    /// Saturating key-layer rule for the logprob trace (see `EditFlags::restored_at`).
    pub restored_at: Option<f64>,
    pub out: PathBuf,
    pub report: Option<PathBuf>,
    /// Skip generating and testing before/after (just trace/edit and write the patch).
    pub no_eval: bool,
}

/// Greedy HumanEval completion of `prompt` and, when a problem is known, its test verdict.
fn complete_and_test(
    dev: &Device,
    model: &Model,
    prompt: &str,
    problem: Option<&Problem>,
) -> Res<(String, Option<Verdict>)> {
    let ids = model.tokenizer.encode(prompt)?;
    let opts = GenerateOptions {
        max_new_tokens: 320,
        stop: humaneval_stops(),
        ..Default::default()
    };
    let c = pollster::block_on(generate(dev, model, &[ids], &opts, &mut |_, _| {}))?.remove(0);
    let verdict =
        problem.map(|p| run_program(&p.program(prompt, &c.text), &Limits::default()).verdict);
    Ok((c.text, verdict))
}

fn verdict_str(v: Option<Verdict>) -> &'static str {
    match v {
        Some(Verdict::Pass) => "PASS",
        Some(Verdict::Fail) => "FAIL",
        Some(Verdict::Timeout) => "TIMEOUT",
        Some(Verdict::Error) => "ERROR",
        None => "(no tests)",
    }
}

pub fn run(dev: &Device, a: EditArgs) -> Res {
    let (clean_text, pert_text, label) = a.pair.prompts()?;
    let problems = a.pair.problems()?;
    let model_path = common::model_path(a.pair.model.as_deref());
    let mut model = a.pair.load_model(dev)?;
    let (clean, pert) = (
        model.tokenizer.encode(&clean_text)?,
        model.tokenizer.encode(&pert_text)?,
    );
    let t_all = Instant::now();

    // Before: both completions and their tests.
    let skip = |_: &Model, _: &str, _: Option<&Problem>| -> Res<(String, Option<Verdict>)> {
        Ok((String::new(), None))
    };
    let eval: &dyn Fn(&Model, &str, Option<&Problem>) -> Res<(String, Option<Verdict>)> =
        if a.no_eval {
            &skip
        } else {
            &|m, p, pr| complete_and_test(dev, m, p, pr)
        };
    let (clean_before, clean_v0) = eval(&model, &clean_text, problems.as_ref().map(|p| &p.0))?;
    let (pert_before, pert_v0) = eval(&model, &pert_text, problems.as_ref().map(|p| &p.1))?;
    println!("== {label}");
    if !a.no_eval {
        println!("-- clean prompt completion [{}]:\n{clean_before}\n-- perturbed prompt completion [{}]:\n{pert_before}", verdict_str(clean_v0), verdict_str(pert_v0));
    }

    // Target, layer (fixed, or traced with the logprob metric), edit: the core pipeline.
    let mut meta = BTreeMap::new();
    meta.insert(
        "base_model_sha256".to_string(),
        common::sha256_file(&model_path)?,
    );
    meta.insert(
        "base_model".to_string(),
        model_path
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default(),
    );
    meta.insert("pair".to_string(), label.clone());
    let settings = CremeSettings {
        target_tokens: a.target_tokens,
        layer: a.layer,
        edit: a.settings.clone(),
    };
    let mut locator = LogprobLocator {
        restored_at: a.restored_at,
    };
    let mut bar = crate::progress::Reporter::new(&label);
    let done = pollster::block_on(locate_and_edit_with(
        dev,
        &model,
        (&clean, &pert),
        &settings,
        &mut locator,
        meta,
        &mut |s| bar.step(s),
    ))?;
    bar.finish();
    let (layer, result) = (done.layer, &done.result);
    if let Some(t) = &done.trace {
        let row: Vec<String> = t.scores.iter().map(|s| format!("{s:.2}")).collect();
        println!(
            "-- causal trace (logprob restoration per layer, {:.1} s): [{}]\n   key layer {layer}",
            done.timings.trace_s,
            row.join(" ")
        );
    }
    let curve: Vec<String> = result
        .losses
        .iter()
        .map(|l| format!("{:.6}", l.total))
        .collect();
    println!(
        "-- edit of layer {layer} W_down ({:?}, lambda {}): {} evaluations, loss {} -> kept step {} (best {:.6} at step {}); {:.3} s (+{:.2} s capture)",
        a.settings.solver, a.settings.lambda, result.steps, curve.join(" "), result.kept_step, result.best_loss, result.best_step, result.seconds, done.timings.capture_s
    );
    let patch = &done.patch;
    let bytes = patch.to_safetensors()?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let tmp = a.out.with_extension("tmp");
    std::fs::write(&tmp, &bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &a.out).map_err(|e| format!("writing {}: {e}", a.out.display()))?;
    println!(
        "-- patch written: {} ({} KiB)",
        a.out.display(),
        bytes.len() / 1024
    );

    // After.
    patch.apply(dev, &mut model)?;
    let (pert_after, pert_v1) = eval(&model, &pert_text, problems.as_ref().map(|p| &p.1))?;
    let (clean_after, clean_v1) = eval(&model, &clean_text, problems.as_ref().map(|p| &p.0))?;
    creme_core::patch::revert(&mut model, patch);
    if !a.no_eval {
        println!("-- perturbed prompt completion after the edit [{}]:\n{pert_after}\n-- clean prompt completion after the edit [{}]:\n{clean_after}", verdict_str(pert_v1), verdict_str(clean_v1));
    }
    println!(
        "== total {:.1} s on {}",
        t_all.elapsed().as_secs_f64(),
        dev.describe()
    );

    if let Some(dir) = &a.report {
        std::fs::create_dir_all(dir)?;
        let doc = json!({
            "pair": label, "layer": layer, "settings": a.settings, "edit": result, "trace": done.trace,
            "before": {"clean": {"completion": clean_before, "verdict": verdict_str(clean_v0)}, "pert": {"completion": pert_before, "verdict": verdict_str(pert_v0)}},
            "after": {"clean": {"completion": clean_after, "verdict": verdict_str(clean_v1)}, "pert": {"completion": pert_after, "verdict": verdict_str(pert_v1)}},
            "timings_s": {"target": done.timings.target_s, "trace": done.timings.trace_s, "capture": done.timings.capture_s, "edit": result.seconds, "total": t_all.elapsed().as_secs_f64()},
            "adapter": dev.describe(), "patch": a.out.display().to_string(),
        });
        let json_text = serde_json::to_string_pretty(&doc)?;
        let cell = |text: &str, v: Option<Verdict>| {
            format!(
                "<td><b class='{}'>{}</b><pre>{}</pre></td>",
                if v == Some(Verdict::Pass) {
                    "ok"
                } else {
                    "bad"
                },
                verdict_str(v),
                report::escape(text)
            )
        };
        let (clean_marked, pert_marked) = report::diff_marked(&clean_text, &pert_text);
        let mut sections = vec![(
            "Prompts (the characters that differ are marked)".to_string(),
            format!("<table class='cols'><tr><th>clean</th><th>perturbed</th></tr><tr><td><pre class='prompt'>{clean_marked}</pre></td><td><pre class='prompt'>{pert_marked}</pre></td></tr></table>"),
        )];
        if let Some(t) = &done.trace {
            sections.push((
                "Causal trace".to_string(),
                report::layer_curve_svg(t, &format!("{label}: restoration by layer")),
            ));
        }
        let lambda = a.settings.lambda;
        sections.push((
            "Edit loss".to_string(),
            report::loss_curve_svg(
                &result.losses,
                lambda,
                result.kept_step,
                &format!("layer {layer} W_down, {:?}", a.settings.solver),
            ),
        ));
        sections.push((
            "Completions before and after the edit".to_string(),
            format!(
                "<table class='cols'><tr><th style='width:5em'></th><th>before</th><th>after</th></tr><tr><th>perturbed</th>{}{}</tr><tr><th>clean</th>{}{}</tr></table>",
                cell(&pert_before, pert_v0),
                cell(&pert_after, pert_v1),
                cell(&clean_before, clean_v0),
                cell(&clean_after, clean_v1)
            ),
        ));
        common::write(&dir.join("edit.json"), &json_text)?;
        common::write(
            &dir.join("report.html"),
            &report::html_page(&format!("CREME edit — {label}"), &sections, &json_text),
        )?;
        println!("-- report: {}", dir.join("report.html").display());
    }
    Ok(())
}

/// The solver, as a flag.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum SolverFlag {
    /// Adam on the edit's loss (the paper's)
    Adam,
    /// The closed form, with --ridge
    Ridge,
}

/// Which weights an Adam edit keeps, as a flag.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum KeepFlag {
    /// The weights after the last step (the paper's)
    Final,
    /// The weights with the lowest loss seen
    Best,
}

/// The defaults of the flags below: core's (the paper's settings).
fn paper() -> EditSettings {
    EditSettings::default()
}

/// The edit's settings as flags, shared by `edit` and `experiment`.
#[derive(clap::Args, Clone, Debug)]
pub struct EditFlags {
    #[arg(long, value_enum, default_value_t = SolverFlag::Adam)]
    pub solver: SolverFlag,
    #[arg(long, default_value_t = paper().lr)]
    pub lr: f64,
    /// Most optimizer evaluations
    #[arg(long, default_value_t = paper().max_steps)]
    pub steps: usize,
    /// Stop after this many evaluations without a new best loss
    #[arg(long, default_value_t = paper().patience)]
    pub patience: usize,
    /// Weight of the preservation term (0 = no preservation loss)
    #[arg(long, default_value_t = paper().lambda)]
    pub lambda: f64,
    #[arg(long, value_enum, default_value_t = KeepFlag::Final)]
    pub keep: KeepFlag,
    /// Ridge weight on the change (ridge solver)
    #[arg(long, default_value_t = 1.0)]
    pub ridge: f64,
    /// Length of the clean greedy continuation the edit (and the logprob trace) works on
    #[arg(long, default_value_t = creme_core::pipeline::DEFAULT_TARGET_TOKENS)]
    pub target_tokens: usize,
    /// Logprob trace: a layer counts as restored once its restoration reaches this, and the
    /// restored layer with the largest clean/perturbed distance is the key layer (as the authors'
    /// pass metric decides); "none" takes the best restoration
    #[arg(long, default_value = "none")]
    pub restored_at: String,
}

impl EditFlags {
    pub fn settings(&self) -> Res<EditSettings> {
        let solver = match self.solver {
            SolverFlag::Adam => Solver::Adam,
            SolverFlag::Ridge => Solver::Ridge { ridge: self.ridge },
        };
        let keep = match self.keep {
            KeepFlag::Final => Keep::Final,
            KeepFlag::Best => Keep::Best,
        };
        Ok(EditSettings {
            solver,
            lambda: self.lambda,
            lr: self.lr,
            max_steps: self.steps,
            patience: self.patience,
            keep,
        })
    }

    /// --restored-at as a threshold (None: the best restoration wins).
    pub fn restored_at(&self) -> Res<Option<f64>> {
        match self.restored_at.as_str() {
            "none" => Ok(None),
            t => t
                .parse::<f64>()
                .map(Some)
                .map_err(|_| format!("--restored-at '{t}': a number or none").into()),
        }
    }
}
