//! `creme edit`: trace (or take a fixed layer), edit W_down from one prompt pair, write the patch,
//! and show what changed: completions and test results before and after, with an HTML report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use creme_core::edit::{EditRows, EditSettings, Keep, Solver};
use creme_core::eval::pair::{outcome_after_edit, pair_outcome_if};
use creme_core::eval::DEFAULT_TIMEOUT_S;
use creme_core::model::Model;
use creme_core::pipeline::{
    locate_and_edit_with, patch_metadata, CremeEdit, CremeSettings, TraceLocator,
};
use creme_core::report::{self, edit::EditRun};
use creme_core::{Backend, Device};

use crate::common::{self, Res};
use crate::sandbox::SandboxJudge;
use crate::trace_cmd::PairInput;

/// Flags of `creme edit`.
#[derive(clap::Args, Clone)]
pub struct EditArgs {
    #[command(flatten)]
    pub pair: crate::trace_cmd::PairArgs,
    /// Edit this layer without tracing (the paper's lightweight variant)
    #[arg(long)]
    pub layer: Option<usize>,
    #[command(flatten)]
    pub edit: EditFlags,
    /// Where to write the patch (safetensors)
    #[arg(long)]
    pub out: PathBuf,
    /// Also write an HTML report (trace curve, loss curve, completions) into this directory
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Do not generate and test before/after the edit
    #[arg(long)]
    pub no_eval: bool,
}

pub fn run(dev: &Device, a: EditArgs) -> Res {
    let settings = a.edit.creme_settings(a.layer)?.for_one_pair()?;
    let p = a.pair.pair()?;
    let model_path = common::model_path(a.pair.model.as_deref());
    let mut model = a.pair.load_model(dev)?;
    let t_all = Instant::now();
    // Without a judge (--no-eval) nothing is generated or tested before or after.
    let mut judge = (!a.no_eval).then(|| SandboxJudge::new(DEFAULT_TIMEOUT_S, Some(1)));
    let problems = p.problems.as_ref();
    let before = pair_outcome_if(dev, &model, p.prompts(), problems, judge.as_mut());
    let before = pollster::block_on(before)?;
    println!("== {}", p.label);
    if !a.no_eval {
        print!("{}", report::edit::before_lines(&before));
    }
    let meta = patch_metadata(&common::file_digest(&model_path)?, &p.label);
    let preserve = match settings.edit.solver.needs_covariance() {
        true => {
            let dir = common::dataset_dir(a.pair.dataset.as_deref())?;
            Some(common::covariance_store(&dir, &model, &model_path)?)
        }
        false => None,
    };
    let located = (a.edit.restored_at()?, preserve.as_ref());
    let done = locate_and_edit(dev, &model, &settings, located, &p, meta)?;
    print!("{}", report::edit::edit_lines(&settings.edit, &done));
    write_patch(&a.out, &done.patch.to_safetensors()?)?;
    let (after, margin) = pollster::block_on(outcome_after_edit(
        dev,
        &mut model,
        &done.patch,
        p.prompts(),
        problems,
        &before,
        judge.as_mut(),
    ))?;
    if let Some(m) = margin {
        print!("{}", report::edit::margin_line(&m));
    }
    if !a.no_eval {
        print!("{}", report::edit::after_lines(&after));
    }
    let total_s = t_all.elapsed().as_secs_f64();
    println!("== total {total_s:.1} s on {}", dev.describe());
    if let Some(dir) = &a.report {
        let run = EditRun {
            label: &p.label,
            prompts: p.prompts(),
            settings: &settings.edit,
            done: &done,
            before: &before,
            after: &after,
        };
        write_report(dir, &a, &run, t_all.elapsed().as_secs_f64(), dev)?;
    }
    Ok(())
}

/// Target, layer (fixed, or traced with the logprob metric), edit: the core pipeline.
fn locate_and_edit(
    dev: &Device,
    model: &Model,
    settings: &CremeSettings,
    (restored_at, preserve): (Option<f64>, Option<&creme_core::covariance::Store>),
    p: &PairInput,
    meta: BTreeMap<String, String>,
) -> Res<CremeEdit> {
    let (clean, pert) = (
        model.tokenizer.encode(&p.texts.0)?,
        model.tokenizer.encode(&p.texts.1)?,
    );
    let mut locator = TraceLocator::for_rows(settings.edit.rows, restored_at);
    let mut bar = crate::progress::Reporter::new(&p.label);
    let done = pollster::block_on(locate_and_edit_with(
        dev,
        model,
        &[(&clean, &pert)],
        settings,
        (&mut locator, preserve),
        meta,
        &mut |s| bar.step(s),
    ))?;
    bar.finish();
    Ok(done)
}

/// The patch file, written whole (a temp file renamed into place).
fn write_patch(out: &std::path::Path, bytes: &[u8]) -> Res {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    common::write(out, bytes)?;
    println!(
        "-- patch written: {} ({} KiB)",
        out.display(),
        bytes.len() / 1024
    );
    Ok(())
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
    let doc =
        report::edit::edit_document(r, total_s, &dev.describe(), &a.out.display().to_string());
    let json_text = serde_json::to_string_pretty(&doc)?;
    let sections = report::edit::edit_sections(r);
    common::write(&dir.join("edit.json"), &json_text)?;
    common::write(
        &dir.join("report.html"),
        report::html_page(&format!("CREME edit — {}", r.label), &sections, &json_text),
    )?;
    println!("-- report: {}", dir.join("report.html").display());
    Ok(())
}

/// The solver, as a flag.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum SolverFlag {
    /// Adam on the edit's loss (the paper's)
    Adam,
    /// The closed form, with --ridge
    Ridge,
    /// The closed form with the change measured by the layer's activation covariance over the
    /// development half's clean prompts (MEMIT-style), with --ridge
    Covariance,
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
            SolverFlag::Covariance => Solver::Covariance { ridge: self.ridge },
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

    /// The pipeline's settings: these flags, and `layer` to edit without tracing.
    pub fn creme_settings(&self, layer: Option<usize>) -> Res<CremeSettings> {
        Ok(CremeSettings {
            target_tokens: self.target_tokens,
            past_divergence: self.past_divergence,
            control: self.control(),
            layer,
            edit: self.settings()?,
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
        let t = creme_core::pipeline::parse_restored_at(&self.restored_at);
        Ok(t.map_err(|e| format!("--restored-at {e}"))?)
    }
}
