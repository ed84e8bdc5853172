//! Hostile or odd input files through the `creme` binary: a model path that is a FIFO, a device
//! or a directory is refused at once (reading one whole hung or ran out of memory), as is a file
//! that is no GGUF or is shorter than its tensor table; a dataset's entry point cannot carry code
//! into the check line; MBPP tasks whose reference defines helpers are scored on their real
//! function.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use creme_tests::repo_root;
use serde_json::Value;

fn creme() -> Command {
    Command::new(env!("CARGO_BIN_EXE_creme"))
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "creme-untrusted-test-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run `cmd`, killing it if it outlives `limit` (the failure this file guards against is a hang).
fn run_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("{cmd:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `creme generate` on `model`: it must fail within 30 s with `want` in its error.
fn generate_refuses(model: &Path, want: &str) {
    let mut cmd = creme();
    cmd.args([
        "generate",
        "--backend",
        "cpu",
        "--prompt",
        "def f():",
        "--model",
    ])
    .arg(model);
    let out = run_within(cmd, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}: {err}", model.display());
    assert!(
        err.contains(&model.display().to_string()) && err.contains(want),
        "{}: expected '{want}' in: {err}",
        model.display()
    );
}

#[test]
fn model_paths_that_are_no_regular_file_are_refused_at_once() {
    let dir = temp("special");
    let fifo = dir.join("model.gguf");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success(), "mkfifo failed");
    generate_refuses(&fifo, "not a regular file but a FIFO");
    generate_refuses(Path::new("/dev/zero"), "not a regular file but a device");
    generate_refuses(&dir, "not a regular file but a directory");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn model_files_are_checked_from_their_header() {
    let dir = temp("header");
    let text = dir.join("notes.gguf");
    std::fs::write(&text, "these are notes, not a model\n".repeat(1000)).unwrap();
    generate_refuses(&text, "not a GGUF file");
    let model = creme_tests::tiny::tiny_gguf();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &model[..model.len() - 100]).unwrap();
    generate_refuses(&cut, "file truncated: tensor");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `creme eval` of `completions` (task id -> completion) on the dataset in `dir`: the records.
fn eval(dir: &Path, completions: &[(String, String)]) -> Result<Vec<Value>, String> {
    let file = dir.join("completions.jsonl");
    let lines: Vec<String> = completions
        .iter()
        .map(|(id, c)| {
            serde_json::json!({"set": "clean", "task_id": id, "completion": c}).to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    let mut cmd = creme();
    cmd.args(["eval", "--types", "clean", "--dataset"])
        .arg(dir)
        .arg("--completions")
        .arg(&file)
        .arg("--out")
        .arg(&out);
    let res = run_within(cmd, Duration::from_secs(120));
    if !res.status.success() {
        return Err(String::from_utf8_lossy(&res.stderr).into_owned());
    }
    Ok(std::fs::read_to_string(out.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect())
}

#[test]
fn an_entry_point_carrying_code_is_refused() {
    let dir = temp("inject");
    let task = serde_json::json!({
        "task_id": "T/0",
        "prompt": "def f(x):\n",
        "entry_point": "f) if 0 else None #",
        "test": "def check(candidate):\n    assert candidate(2) == 4\n"
    });
    std::fs::write(dir.join("HumanEval.jsonl"), format!("{task}\n")).unwrap();
    let err = eval(&dir, &[("T/0".into(), "    return None\n".into())]).unwrap_err();
    assert!(
        err.contains("HumanEval.jsonl:1: task T/0: entry_point")
            && err.contains("is not a Python function name"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The fixture's references define a helper before the tested function: given whole after the
/// prompt's signature (they redefine it), they pass; a body returning None fails.
#[test]
fn mbpp_tasks_whose_reference_defines_helpers_are_scored_on_the_tested_function() {
    let fixture = repo_root().join("tests/fixtures/mbpp-authors-helpers.jsonl");
    let dir = temp("helpers");
    std::fs::copy(&fixture, dir.join("MBPP.jsonl")).unwrap();
    let rows: Vec<Value> = std::fs::read_to_string(&fixture)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let id = |v: &Value| format!("MBPP/{}", v["task_id"]);
    let good: Vec<(String, String)> = rows
        .iter()
        .map(|v| {
            let code = v["code"].as_str().unwrap().replace("\r\n", "\n");
            (id(v), format!("    pass\n\n{code}\n"))
        })
        .collect();
    let bad: Vec<(String, String)> = rows
        .iter()
        .map(|v| (id(v), "    return None\n".to_string()))
        .collect();
    for (name, completions, want) in [("reference", good, true), ("None", bad, false)] {
        let recs = eval(&dir, &completions).unwrap();
        assert_eq!(recs.len(), rows.len(), "{name}");
        for r in &recs {
            assert_eq!(r["passed"], want, "{name}: {r}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
