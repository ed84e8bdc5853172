//! `creme compare`: an experiment run (the setting) beside control runs of the same pairs
//! (`experiment --control sham|random|matched`) and other settings' runs (`--versus`, e.g. the
//! paper's), with intervals and paired tests (creme_core::experiment::compare).

use std::path::PathBuf;

use creme_core::experiment::compare::{compare, markdown, Role};
use creme_core::stats::Confidence;

use crate::common::{self, Res};

#[derive(clap::Args, Clone, Debug)]
pub struct CompareArgs {
    /// The setting's experiment directory (or directories of its shards)
    #[arg(required = true)]
    pub setting: Vec<PathBuf>,
    /// A control run: LABEL=DIR[,DIR...] (repeatable)
    #[arg(long = "control", value_parser = crate::report_cmd::parse_runs)]
    pub controls: Vec<(String, Vec<PathBuf>)>,
    /// Another setting's run of the same pairs (e.g. the paper's): LABEL=DIR[,DIR...]
    /// (repeatable); tested like a control, in the same Holm family
    #[arg(long = "versus", value_parser = crate::report_cmd::parse_runs)]
    pub versus: Vec<(String, Vec<PathBuf>)>,
    /// The setting's label in the table
    #[arg(long, default_value = "setting")]
    pub label: String,
    /// Confidence level of the intervals
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// Also write the comparison as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(a: CompareArgs) -> Res {
    let level = Confidence::new(a.confidence).map_err(|e| e.to_string())?;
    let setting = crate::report_cmd::read_records(&a.setting)?;
    let mut others = Vec::new();
    let roles = (a.versus.iter().map(|v| (Role::Setting, v)))
        .chain(a.controls.iter().map(|c| (Role::Control, c)));
    for (role, (label, dirs)) in roles {
        others.push((role, label.as_str(), crate::report_cmd::read_records(dirs)?));
    }
    let refs: Vec<(Role, &str, &[creme_core::experiment::EditRecord])> = others
        .iter()
        .map(|(k, l, r)| (*k, *l, r.as_slice()))
        .collect();
    let c = compare((&a.label, &setting), &refs, level)?;
    print!("{}", markdown(&c));
    if let Some(path) = &a.json {
        common::write(path, &serde_json::to_string_pretty(&c)?)?;
    }
    Ok(())
}
