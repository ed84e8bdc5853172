//! `creme edit`: trace (or take a fixed layer), edit W_down from one prompt pair, write the patch,
//! and show what changed: completions and test results before and after, with an HTML report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use creme_core::dataset::Problem;
use creme_core::edit::{self, EditPatch, EditSettings, Keep, Solver};
use creme_core::generate::{generate, humaneval_stops, GenerateOptions};
use creme_core::model::Model;
use creme_core::report;
use creme_core::trace::{self, PatchPositions, RestorationByLogprob};
use creme_core::{Backend, Device};
use serde_json::json;

use crate::common::{self, Res};
use crate::sandbox::{run_program, Limits, Verdict};

pub struct EditArgs {
    pub pair: crate::trace_cmd::PairArgs,
    pub layer: Option<usize>,
    pub settings: EditSettings,
    pub target_tokens: usize,
    pub out: PathBuf,
    pub report: Option<PathBuf>,
    /// Skip generating and testing before/after (just trace/edit and write the patch).
    pub no_eval: bool,
}

/// Greedy HumanEval completion of `prompt` and, when a problem is known, its test verdict.
fn complete_and_test(dev: &Device, model: &Model, prompt: &str, problem: Option<&Problem>) -> Res<(String, Option<Verdict>)> {
    let ids = model.tokenizer.encode(prompt)?;
    let opts = GenerateOptions { max_new_tokens: 320, stop: humaneval_stops(), ..Default::default() };
    let c = pollster::block_on(generate(dev, model, &[ids], &opts, &mut |_, _| {}))?.remove(0);
    let verdict = problem.map(|p| run_program(&p.program(prompt, &c.text), &Limits::default()).verdict);
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
    let (clean, pert) = (model.tokenizer.encode(&clean_text)?, model.tokenizer.encode(&pert_text)?);
    let t_all = Instant::now();

    // Before: both completions and their tests.
    let skip = |_: &Model, _: &str, _: Option<&Problem>| -> Res<(String, Option<Verdict>)> { Ok((String::new(), None)) };
    let eval: &dyn Fn(&Model, &str, Option<&Problem>) -> Res<(String, Option<Verdict>)> = if a.no_eval { &skip } else { &|m, p, pr| complete_and_test(dev, m, p, pr) };
    let (clean_before, clean_v0) = eval(&model, &clean_text, problems.as_ref().map(|p| &p.0))?;
    let (pert_before, pert_v0) = eval(&model, &pert_text, problems.as_ref().map(|p| &p.1))?;
    println!("== {label}");
    if !a.no_eval {
        println!("-- clean prompt completion [{}]:\n{clean_before}\n-- perturbed prompt completion [{}]:\n{pert_before}", verdict_str(clean_v0), verdict_str(pert_v0));
    }

    // Target: the clean prompt's greedy continuation.
    let target = pollster::block_on(trace::greedy_target(dev, &model, &clean, a.target_tokens))?;

    // Layer: fixed, or traced with the logprob metric.
    let t_trace = Instant::now();
    let (layer, layer_trace) = match a.layer {
        Some(l) => (l, None),
        None => {
            let setup = pollster::block_on(trace::prepare(dev, &model, &clean, &pert, &target))?;
            let t = pollster::block_on(trace::trace_layers(dev, &model, &setup, PatchPositions::AllPrompt, &mut RestorationByLogprob))?;
            (t.key_layer, Some(t))
        }
    };
    let trace_s = t_trace.elapsed().as_secs_f64();
    if let Some(t) = &layer_trace {
        let row: Vec<String> = t.scores.iter().map(|s| format!("{s:.2}")).collect();
        println!("-- causal trace (logprob restoration per layer, {trace_s:.1} s): [{}]\n   key layer {layer}", row.join(" "));
    }

    // Edit.
    let t_cap = Instant::now();
    let data = pollster::block_on(edit::capture(dev, &model, &clean, &pert, &target, layer))?;
    let w0 = pollster::block_on(model.ffn_down_f32(dev, layer))?;
    let capture_s = t_cap.elapsed().as_secs_f64();
    let result = pollster::block_on(edit::solve(dev, &data, &w0, &a.settings))?;
    let curve: Vec<String> = result.losses.iter().map(|l| format!("{:.6}", l.total)).collect();
    println!(
        "-- edit of layer {layer} W_down ({:?}, lambda {}): {} evaluations, loss {} -> kept step {} (best {:.6} at step {}); {:.3} s (+{capture_s:.2} s capture)",
        a.settings.solver, a.settings.lambda, result.steps, curve.join(" "), result.kept_step, result.best_loss, result.best_step, result.seconds
    );

    let mut meta = BTreeMap::new();
    meta.insert("base_model_sha256".to_string(), common::sha256_file(&model_path)?);
    meta.insert("base_model".to_string(), model_path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default());
    meta.insert("pair".to_string(), label.clone());
    meta.insert("solver".to_string(), format!("{:?}", a.settings.solver));
    meta.insert("settings".to_string(), serde_json::to_string(&a.settings)?);
    meta.insert("loss_curve".to_string(), serde_json::to_string(&result.losses)?);
    meta.insert("target_tokens".to_string(), target.len().to_string());
    let patch = EditPatch { layer, rows: data.d, cols: data.f, w: result.w.clone(), metadata: meta };
    let bytes = patch.to_safetensors()?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let tmp = a.out.with_extension("tmp");
    std::fs::write(&tmp, &bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &a.out).map_err(|e| format!("writing {}: {e}", a.out.display()))?;
    println!("-- patch written: {} ({} KiB)", a.out.display(), bytes.len() / 1024);

    // After.
    patch.apply(dev, &mut model)?;
    let (pert_after, pert_v1) = eval(&model, &pert_text, problems.as_ref().map(|p| &p.1))?;
    let (clean_after, clean_v1) = eval(&model, &clean_text, problems.as_ref().map(|p| &p.0))?;
    model.revert_ffn_down(layer);
    if !a.no_eval {
        println!("-- perturbed prompt completion after the edit [{}]:\n{pert_after}\n-- clean prompt completion after the edit [{}]:\n{clean_after}", verdict_str(pert_v1), verdict_str(clean_v1));
    }
    println!("== total {:.1} s on {}", t_all.elapsed().as_secs_f64(), dev.describe());

    if let Some(dir) = &a.report {
        std::fs::create_dir_all(dir)?;
        let doc = json!({
            "pair": label, "layer": layer, "settings": a.settings, "edit": result, "trace": layer_trace,
            "before": {"clean": {"completion": clean_before, "verdict": verdict_str(clean_v0)}, "pert": {"completion": pert_before, "verdict": verdict_str(pert_v0)}},
            "after": {"clean": {"completion": clean_after, "verdict": verdict_str(clean_v1)}, "pert": {"completion": pert_after, "verdict": verdict_str(pert_v1)}},
            "timings_s": {"trace": trace_s, "capture": capture_s, "edit": result.seconds, "total": t_all.elapsed().as_secs_f64()},
            "adapter": dev.describe(), "patch": a.out.display().to_string(),
        });
        let json_text = serde_json::to_string_pretty(&doc)?;
        let cell = |text: &str, v: Option<Verdict>| format!("<td><b class='{}'>{}</b><pre>{}</pre></td>", if v == Some(Verdict::Pass) { "ok" } else { "bad" }, verdict_str(v), report::escape(text));
        let mut sections = vec![(
            "Prompts".to_string(),
            format!("<table><tr><th>clean</th><th>perturbed</th></tr><tr><td><pre>{}</pre></td><td><pre>{}</pre></td></tr></table>", report::escape(&clean_text), report::escape(&pert_text)),
        )];
        if let Some(t) = &layer_trace {
            sections.push(("Causal trace".to_string(), report::layer_curve_svg(t, &format!("{label}: restoration by layer"))));
        }
        let lambda = a.settings.lambda;
        sections.push(("Edit loss".to_string(), report::loss_curve_svg(&result.losses, lambda, result.kept_step, &format!("layer {layer} W_down, {:?}", a.settings.solver))));
        sections.push((
            "Completions before and after the edit".to_string(),
            format!(
                "<table><tr><th></th><th>before</th><th>after</th></tr><tr><th>perturbed</th>{}{}</tr><tr><th>clean</th>{}{}</tr></table>",
                cell(&pert_before, pert_v0),
                cell(&pert_after, pert_v1),
                cell(&clean_before, clean_v0),
                cell(&clean_after, clean_v1)
            ),
        ));
        common::write(&dir.join("edit.json"), &json_text)?;
        common::write(&dir.join("report.html"), &report::html_page(&format!("CREME edit — {label}"), &sections, &json_text))?;
        println!("-- report: {}", dir.join("report.html").display());
    }
    Ok(())
}

/// The edit's settings as flags, shared by `edit` and `experiment`.
#[derive(clap::Args, Clone, Debug)]
pub struct EditFlags {
    /// adam (the paper's) or ridge (closed form)
    #[arg(long, default_value = "adam")]
    pub solver: String,
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// Most optimizer evaluations
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Stop after this many evaluations without a new best loss
    #[arg(long, default_value_t = 3)]
    pub patience: usize,
    /// Weight of the preservation term (0 = no preservation loss)
    #[arg(long, default_value_t = 0.1)]
    pub lambda: f64,
    /// Keep the final weights (the paper) or the best-scoring ones
    #[arg(long, default_value = "final")]
    pub keep: String,
    /// Ridge weight on the change (ridge solver)
    #[arg(long, default_value_t = 1.0)]
    pub ridge: f64,
    /// Length of the clean greedy continuation the edit (and the logprob trace) works on
    #[arg(long, default_value_t = 32)]
    pub target_tokens: usize,
}

impl EditFlags {
    pub fn settings(&self) -> Res<EditSettings> {
        let solver = match self.solver.as_str() {
            "adam" => Solver::Adam,
            "ridge" => Solver::Ridge { ridge: self.ridge },
            s => return Err(format!("unknown solver '{s}' (adam or ridge)").into()),
        };
        let keep = match self.keep.as_str() {
            "final" => Keep::Final,
            "best" => Keep::Best,
            k => return Err(format!("unknown --keep '{k}' (final or best)").into()),
        };
        Ok(EditSettings { solver, lambda: self.lambda, lr: self.lr, max_steps: self.steps, patience: self.patience, keep })
    }
}
