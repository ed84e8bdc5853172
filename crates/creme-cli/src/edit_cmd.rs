//! `creme edit`: trace (or take a fixed layer), edit W_down from one prompt pair, write the patch,
//! and show what changed: completions and test results before and after, with an HTML report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use creme_core::dataset::Problem;
use creme_core::diagnose::{decision_margin, first_divergence};
use creme_core::edit::{EditRows, EditSettings, Keep, Solver};
use creme_core::generate::{generate, humaneval_stops, GenerateOptions};
use creme_core::model::Model;
use creme_core::pipeline::{locate_and_edit_with, CremeEdit, CremeSettings, TraceLocator};
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
    /// Extend the target this many tokens past the clean/perturbed divergence.
    pub past_divergence: Option<usize>,
    /// Write a control edit instead of the solved one.
    pub control: Option<creme_core::edit::Control>,
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
) -> Res<(Outcome, Vec<u32>)> {
    let ids = model.tokenizer.encode(prompt)?;
    let opts = GenerateOptions {
        max_new_tokens: 320,
        stop: humaneval_stops(),
        ..Default::default()
    };
    let c = pollster::block_on(generate(dev, model, &[ids], &opts, &mut |_, _| {}))?.remove(0);
    let verdict =
        problem.map(|p| run_program(&p.program(prompt, &c.text), &Limits::default()).verdict);
    Ok(((c.text, verdict), c.tokens))
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

/// A completion and its test verdict (None: no tests, or not evaluated).
type Outcome = (String, Option<Verdict>);

/// Completions of the clean and the perturbed prompt, with their verdicts and tokens.
struct Pair {
    clean: Outcome,
    pert: Outcome,
    tokens: (Vec<u32>, Vec<u32>),
}

pub fn run(dev: &Device, a: EditArgs) -> Res {
    if a.control == Some(creme_core::edit::Control::Matched) {
        return Err("--control matched needs other edit-worthy pairs: it is for `creme experiment`".into());
    }
    let (clean_text, pert_text, label) = a.pair.prompts()?;
    let problems = a.pair.problems()?;
    let model_path = common::model_path(a.pair.model.as_deref());
    let mut model = a.pair.load_model(dev)?;
    let (clean, pert) = (
        model.tokenizer.encode(&clean_text)?,
        model.tokenizer.encode(&pert_text)?,
    );
    let t_all = Instant::now();
    let both = |m: &Model| -> Res<Pair> {
        if a.no_eval {
            return Ok(Pair {
                clean: (String::new(), None),
                pert: (String::new(), None),
                tokens: Default::default(),
            });
        }
        let (clean, tc) = complete_and_test(dev, m, &clean_text, problems.as_ref().map(|p| &p.0))?;
        let (pert, tp) = complete_and_test(dev, m, &pert_text, problems.as_ref().map(|p| &p.1))?;
        Ok(Pair { clean, pert, tokens: (tc, tp) })
    };
    let before = both(&model)?;
    println!("== {label}");
    if !a.no_eval {
        println!(
            "-- clean prompt completion [{}]:\n{}\n-- perturbed prompt completion [{}]:\n{}",
            verdict_str(before.clean.1),
            before.clean.0,
            verdict_str(before.pert.1),
            before.pert.0
        );
    }
    // Target, layer (fixed, or traced with the logprob metric), edit: the core pipeline.
    let settings = CremeSettings {
        target_tokens: a.target_tokens,
        past_divergence: a.past_divergence,
        control: a.control,
        layer: a.layer,
        edit: a.settings.clone(),
    };
    let mut locator = TraceLocator::for_rows(a.settings.rows, a.restored_at);
    let mut bar = crate::progress::Reporter::new(&label);
    let meta = patch_metadata(&model_path, &label)?;
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
    print_edit(&a, &done);
    write_patch(&a.out, &done.patch.to_safetensors()?)?;
    let divergence = first_divergence(&before.tokens.0, &before.tokens.1);
    let margin = |m: &Model| -> Res<Option<f64>> {
        let Some(div) = &divergence else { return Ok(None) };
        let shared = &before.tokens.0[..div.index];
        Ok(Some(pollster::block_on(decision_margin(dev, m, &pert, shared, div))?))
    };
    let margin_before = margin(&model)?;
    done.patch.apply(dev, &mut model)?;
    let margin_after = margin(&model);
    let after = both(&model);
    creme_core::patch::revert(&mut model, &done.patch);
    let after = after?;
    if let (Some(div), Some(b), Ok(Some(a))) = (&divergence, margin_before, &margin_after) {
        println!(
            "-- decision margin at completion token {} (log p clean - log p perturbed token, perturbed prompt): {b:.3} before, {a:.3} after",
            div.index
        );
    }
    if !a.no_eval {
        println!("-- perturbed prompt completion after the edit [{}]:\n{}\n-- clean prompt completion after the edit [{}]:\n{}", verdict_str(after.pert.1), after.pert.0, verdict_str(after.clean.1), after.clean.0);
    }
    println!(
        "== total {:.1} s on {}",
        t_all.elapsed().as_secs_f64(),
        dev.describe()
    );
    if let Some(dir) = &a.report {
        let prompts = (clean_text.as_str(), pert_text.as_str());
        let run = EditRun {
            label: &label,
            prompts,
            done: &done,
            before: &before,
            after: &after,
        };
        write_report(dir, &a, &run, t_all.elapsed().as_secs_f64(), dev)?;
    }
    Ok(())
}

/// What goes into the patch's metadata besides the edit's own: the base model and the pair.
fn patch_metadata(model_path: &std::path::Path, label: &str) -> Res<BTreeMap<String, String>> {
    let mut meta = BTreeMap::new();
    meta.insert(
        "base_model_sha256".to_string(),
        common::sha256_file(model_path)?,
    );
    let name = model_path
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    meta.insert("base_model".to_string(), name);
    meta.insert("pair".to_string(), label.to_string());
    Ok(meta)
}

/// The trace and the edit's loss curve, one line each.
fn print_edit(a: &EditArgs, done: &CremeEdit) {
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
    let fit = &done.fit;
    println!(
        "   rows {:?}: {} moved, {} kept; gap left on the moved rows {:.4}; ||dW||/||W|| {:.4}",
        a.settings.rows, fit.moved_rows, fit.kept_rows, fit.remaining_gap, fit.relative_change
    );
}

/// The patch file, written whole (a temp file renamed into place).
fn write_patch(out: &std::path::Path, bytes: &[u8]) -> Res {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, out).map_err(|e| format!("writing {}: {e}", out.display()))?;
    println!(
        "-- patch written: {} ({} KiB)",
        out.display(),
        bytes.len() / 1024
    );
    Ok(())
}

/// One edit's run, for its report.
struct EditRun<'a> {
    label: &'a str,
    /// (clean, perturbed) prompt texts.
    prompts: (&'a str, &'a str),
    done: &'a CremeEdit,
    before: &'a Pair,
    after: &'a Pair,
}

/// `edit.json` and `report.html` in `dir`.
fn write_report(
    dir: &std::path::Path,
    a: &EditArgs,
    r: &EditRun,
    total_s: f64,
    dev: &Device,
) -> Res {
    std::fs::create_dir_all(dir)?;
    let (done, result) = (r.done, &r.done.result);
    let outcome = |o: &Outcome| json!({"completion": o.0, "verdict": verdict_str(o.1)});
    let doc = json!({
        "pair": r.label, "layer": done.layer, "settings": a.settings, "edit": result, "trace": done.trace,
        "before": {"clean": outcome(&r.before.clean), "pert": outcome(&r.before.pert)},
        "after": {"clean": outcome(&r.after.clean), "pert": outcome(&r.after.pert)},
        "timings_s": {"target": done.timings.target_s, "trace": done.timings.trace_s, "capture": done.timings.capture_s, "edit": result.seconds, "total": total_s},
        "adapter": dev.describe(), "patch": a.out.display().to_string(),
    });
    let json_text = serde_json::to_string_pretty(&doc)?;
    let sections = report_sections(a, r);
    common::write(&dir.join("edit.json"), &json_text)?;
    common::write(
        &dir.join("report.html"),
        &report::html_page(&format!("CREME edit — {}", r.label), &sections, &json_text),
    )?;
    println!("-- report: {}", dir.join("report.html").display());
    Ok(())
}

/// The report's sections: prompts with the perturbation marked, the trace, the loss curve, the
/// completions before and after.
fn report_sections(a: &EditArgs, r: &EditRun) -> Vec<(String, String)> {
    let (done, result) = (r.done, &r.done.result);
    let cell = |o: &Outcome| {
        let class = if o.1 == Some(Verdict::Pass) {
            "ok"
        } else {
            "bad"
        };
        format!(
            "<td><b class='{class}'>{}</b><pre>{}</pre></td>",
            verdict_str(o.1),
            report::escape(&o.0)
        )
    };
    let (clean_marked, pert_marked) = report::diff_marked(r.prompts.0, r.prompts.1);
    let mut sections = vec![(
        "Prompts (the characters that differ are marked)".to_string(),
        format!("<table class='cols'><tr><th>clean</th><th>perturbed</th></tr><tr><td><pre class='prompt'>{clean_marked}</pre></td><td><pre class='prompt'>{pert_marked}</pre></td></tr></table>"),
    )];
    if let Some(t) = &done.trace {
        let title = format!("{}: restoration by layer", r.label);
        sections.push((
            "Causal trace".to_string(),
            report::layer_curve_svg(t, &title),
        ));
    }
    let title = format!("layer {} W_down, {:?}", done.layer, a.settings.solver);
    let curve = report::loss_curve_svg(&result.losses, a.settings.lambda, result.kept_step, &title);
    sections.push(("Edit loss".to_string(), curve));
    sections.push((
        "Completions before and after the edit".to_string(),
        format!(
            "<table class='cols'><tr><th style='width:5em'></th><th>before</th><th>after</th></tr><tr><th>perturbed</th>{}{}</tr><tr><th>clean</th>{}{}</tr></table>",
            cell(&r.before.pert),
            cell(&r.after.pert),
            cell(&r.before.clean),
            cell(&r.after.clean)
        ),
    ));
    sections
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

/// Which rows an edit is fitted on, as a flag.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum RowsFlag {
    /// The |target| continuation rows (the paper's)
    Continuation,
    /// The prompt rows after the changed span (aligned by token diff) and the continuation;
    /// the clean rows and the changed span are kept
    Prompt,
}

/// A control edit, as a flag.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum ControlFlag {
    /// W_down unchanged, through the edit's f32 path
    Sham,
    /// A dense random change of the solved change's norm
    Random,
    /// (experiment only) the edit made from the next edit-worthy pair of the same type
    Matched,
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
    /// Which rows the edit is fitted on
    #[arg(long, value_enum, default_value_t = RowsFlag::Continuation)]
    pub rows: RowsFlag,
    /// Ridge weight on the change (ridge solver)
    #[arg(long, default_value_t = 1.0)]
    pub ridge: f64,
    /// Length of the clean greedy continuation the edit (and the logprob trace) works on
    #[arg(long, default_value_t = creme_core::pipeline::DEFAULT_TARGET_TOKENS)]
    pub target_tokens: usize,
    /// Extend the target to this many tokens past the first token where the clean and the
    /// perturbed greedy completions differ (default: the paper's fixed --target-tokens)
    #[arg(long)]
    pub past_divergence: Option<usize>,
    /// Write (evaluate) a control instead of the solved edit: sham (W_down unchanged, through the
    /// edit's f32 path), random (a dense random change of the solved change's norm,
    /// --control-seed) or, in `experiment`, matched (another edit-worthy pair's edit)
    #[arg(long, value_enum)]
    pub control: Option<ControlFlag>,
    #[arg(long, default_value_t = 1)]
    pub control_seed: u64,
    /// Logprob trace: a layer counts as restored once its restoration reaches this, and the
    /// restored layer with the largest clean/perturbed distance is the key layer (as the authors'
    /// pass metric decides); "none" takes the best restoration. With --rows prompt the trace is
    /// the aligned one and the key layer the lowest that reaches this (none: 0.9)
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
        let rows = match self.rows {
            RowsFlag::Continuation => EditRows::Continuation,
            RowsFlag::Prompt => EditRows::Prompt,
        };
        Ok(EditSettings {
            solver,
            rows,
            lambda: self.lambda,
            lr: self.lr,
            max_steps: self.steps,
            patience: self.patience,
            keep,
        })
    }

    /// --control with its seed.
    pub fn control(&self) -> Option<creme_core::edit::Control> {
        use creme_core::edit::Control;
        self.control.map(|c| match c {
            ControlFlag::Sham => Control::Sham,
            ControlFlag::Random => Control::Random {
                seed: self.control_seed,
            },
            ControlFlag::Matched => Control::Matched,
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
