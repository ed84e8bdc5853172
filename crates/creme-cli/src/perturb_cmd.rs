//! `creme perturb`: perturb one prompt, write whole perturbed sets, or compare creme's perturbator
//! with released sets (share of prompts changed, character edit distance).

use std::path::PathBuf;

use creme_core::perturb::{perturb, perturb_problems};
use creme_core::perturb_check::validation_table;
use creme_core::sets::PerturbationType;

use crate::common::{self, Res};

#[derive(clap::Args, Clone)]
pub struct PerturbArgs {
    /// Perturbation types (comma list, or all)
    #[arg(long = "types", default_value = "all")]
    pub types: String,
    /// Perturb this prompt file ('-' for stdin) and print the result
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Seed (with --prompt-file: of the prompt; with --out: of the sets, whose seed 0 draws
    /// each task from its number, as the sets creme writes by default)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Dataset directory (its clean prompts are perturbed; with --validate, its released sets are compared)
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Write perturbed/<TYPE>.jsonl sets into this directory
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compare with the released sets: share changed and edit-distance distribution per type
    #[arg(long)]
    pub validate: bool,
}

pub fn run(a: PerturbArgs) -> Res {
    let types: Vec<PerturbationType> = crate::eval_cmd::parse_types(&a.types)?
        .into_iter()
        .filter_map(|s| s.perturbation())
        .collect();
    if let Some(f) = &a.prompt_file {
        let text = if f.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(f).map_err(|e| format!("reading {}: {e}", f.display()))?
        };
        for t in &types {
            if types.len() > 1 {
                println!("== {t}");
            }
            print!("{}", perturb(&text, t.name(), a.seed)?);
        }
        return Ok(());
    }
    let dir = common::dataset_dir(a.dataset.as_deref())?;
    let mut files = common::dataset(&dir);
    let clean = files.clean()?;
    if let Some(out) = &a.out {
        let pdir = out.join("perturbed");
        std::fs::create_dir_all(&pdir).map_err(|e| format!("creating {}: {e}", pdir.display()))?;
        for t in &types {
            let mut text = String::new();
            for p in perturb_problems(&clean, *t, a.seed)? {
                text.push_str(&serde_json::to_string(&p)?);
                text.push('\n');
            }
            common::write(&pdir.join(format!("{t}.jsonl")), &text)?;
        }
        println!(
            "wrote {} sets of {} tasks to {}",
            types.len(),
            clean.len(),
            pdir.display()
        );
    }
    if a.validate {
        let released = types
            .iter()
            .map(|&t| Ok((t, files.released(t)?)))
            .collect::<Result<Vec<_>, String>>()?;
        print!("{}", validation_table(&clean, &released)?);
    }
    Ok(())
}
