//! `creme diverge`: where two runs' completions of the same prompts part (e.g. creme's greedy
//! completions and llama.cpp's from `scripts/llama-check.sh`), and whether each parting is a
//! near-tie: the model's log p(A's token) - log p(B's token) there (`diagnose::parting`).

use std::path::{Path, PathBuf};

use creme_core::diagnose::parting;
use creme_core::eval::given::{parse_completions, Given};
use creme_core::Device;

use crate::common::{self, Res};

#[derive(clap::Args, Clone)]
pub struct DivergeArgs {
    /// Completions A: an eval directory (its samples.jsonl) or a JSONL file of
    /// {set, task_id, completion} records
    pub a: PathBuf,
    /// Completions B, the same way
    pub b: PathBuf,
    /// The model whose margins are measured (default: the cached Qwen2.5-Coder-0.5B)
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Dataset directory the prompts come from
    #[arg(long)]
    pub dataset: Option<PathBuf>,
}

fn read(path: &Path) -> Res<Given> {
    let file = if path.is_dir() {
        path.join("samples.jsonl")
    } else {
        path.to_path_buf()
    };
    let text =
        std::fs::read_to_string(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let (given, warnings) =
        parse_completions(&text, &file.display().to_string(), &Default::default())?;
    warnings.iter().for_each(|w| eprintln!("{w}"));
    Ok(given)
}

pub fn run(dev: &Device, a: DivergeArgs) -> Res {
    let (ga, gb) = (read(&a.a)?, read(&a.b)?);
    let mut keys: Vec<_> = ga.keys().filter(|k| gb.contains_key(*k)).cloned().collect();
    keys.sort();
    let sets: std::collections::BTreeSet<_> = keys.iter().map(|k| k.0).collect();
    let dir = common::dataset_dir(a.dataset.as_deref())?;
    let problems = common::load_sets(&dir, &Vec::from_iter(sets), None, None)?;
    let model = common::load_model(dev, Some(&common::model_path(a.model.as_deref())), 0)?;
    let tok = &model.tokenizer;
    let mut same = 0;
    for key in &keys {
        let (set, task, _) = key;
        let Some(p) = problems
            .get(set)
            .and_then(|ps| ps.iter().find(|p| &p.task_id == task))
        else {
            return Err(format!("{set} {task}: not in the dataset {}", dir.display()).into());
        };
        let (ca, cb) = (tok.encode(&ga[key])?, tok.encode(&gb[key])?);
        let prompt = tok.encode(&p.prompt)?;
        match pollster::block_on(parting(dev, &model, &prompt, &ca, &cb))? {
            None => same += 1,
            Some(part) => {
                let show = |t: Option<u32>| match t {
                    Some(t) => format!("{:?}", tok.decode(&[t]).unwrap_or_default()),
                    None => "<end>".into(),
                };
                println!(
                    "{set} {task}: part at completion token {}: A {} vs B {}, margin {:+.3} nats",
                    part.index,
                    show(part.a_token),
                    show(part.b_token),
                    part.margin
                );
            }
        }
    }
    println!("{same} of {} completions identical (margin: log p(A's token) - log p(B's) under this model)", keys.len());
    Ok(())
}
