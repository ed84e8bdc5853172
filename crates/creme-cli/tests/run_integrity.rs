//! Runs never mix: a run directory's `manifest.json` records what its results depend on, and a
//! resumed `eval` or `experiment`, or an experiment's `--baseline`, with anything different is
//! refused with a message that names the difference, leaving what is recorded untouched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;

fn creme() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_creme"));
    c.env(
        "XDG_RUNTIME_DIR",
        std::env::var_os("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
    );
    c
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("creme-integrity-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A one-task dataset whose prompt is `prompt`, and a completions file for it.
fn dataset(root: &Path, name: &str, prompt: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let task = json!({"task_id": "T/0", "prompt": prompt, "entry_point": "f", "test": "def check(candidate):\n    assert candidate(2) == 4\n"});
    std::fs::write(dir.join("HumanEval.jsonl"), format!("{task}\n")).unwrap();
    dir
}

fn completions(root: &Path, name: &str, completion: &str) -> PathBuf {
    let f = root.join(name);
    let rec = json!({"set": "clean", "task_id": "T/0", "completion": completion});
    std::fs::write(&f, format!("{rec}\n")).unwrap();
    f
}

fn eval(data: &Path, given: &Path, out: &Path, extra: &[&str]) -> Output {
    creme()
        .args(["eval", "--types", "clean", "--dataset"])
        .arg(data)
        .arg("--completions")
        .arg(given)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn snapshot(out: &Path) -> (String, String) {
    (
        std::fs::read_to_string(out.join("manifest.json")).unwrap(),
        std::fs::read_to_string(out.join("samples.jsonl")).unwrap(),
    )
}

#[test]
fn a_resumed_eval_with_other_inputs_is_refused_and_nothing_is_overwritten() {
    let root = temp("eval");
    let a = dataset(&root, "a", "def f(x):\n");
    let b = dataset(&root, "b", "def f(x):\n    \"\"\"Twice x.\"\"\"\n");
    let good = completions(&root, "good.jsonl", "    return 2 * x\n");
    let out = root.join("run");
    let o = eval(&a, &good, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = snapshot(&out);

    // The same command again resumes (nothing to do).
    let o = eval(&a, &good, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(snapshot(&out), before);

    // Another dataset, another timeout, other completions: each refused by name.
    let other = completions(&root, "other.jsonl", "    return 3 * x\n");
    let cases: [(&Path, &Path, &[&str], &str); 3] = [
        (
            &b,
            &good,
            &[],
            "dataset clean: 1 tasks with other content (T/0)",
        ),
        (
            &a,
            &good,
            &["--timeout", "5"],
            "timeout_s: 5 here, 10 there",
        ),
        (&a, &other, &[], "completions: other.jsonl"),
    ];
    for (data, given, extra, want) in cases {
        let o = eval(data, given, &out, extra);
        assert!(!o.status.success(), "resumed with other inputs ({want})");
        let e = stderr(&o);
        assert!(
            e.contains("holds a run with other inputs") && e.contains(want),
            "{e}"
        );
        assert_eq!(snapshot(&out), before, "a refused resume changed the run");
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_resume_judged_by_another_interpreter_is_refused_once_verdicts_exist() {
    let root = temp("judge");
    let a = dataset(&root, "a", "def f(x):\n");
    let good = completions(&root, "good.jsonl", "    return 2 * x\n");
    let out = root.join("run");
    let o = eval(&a, &good, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = snapshot(&out);
    // The same interpreter under another path counts as another judge.
    let o = creme()
        .env("CREME_PYTHON", "/usr/bin/../bin/python3")
        .args(["eval", "--types", "clean", "--dataset"])
        .arg(&a)
        .arg("--completions")
        .arg(&good)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("judge:"), "{}", stderr(&o));
    assert_eq!(snapshot(&out), before);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_run_directory_from_before_manifests_is_refused() {
    let root = temp("legacy");
    let a = dataset(&root, "a", "def f(x):\n");
    let good = completions(&root, "good.jsonl", "    return 2 * x\n");
    let out = root.join("old");
    std::fs::create_dir_all(&out).unwrap();
    // A record as creme wrote it before versions and manifests.
    let old = r#"{"completion":"    return 2 * x\n","error_kind":"","exit_code":0,"finish":"given","passed":true,"sample":0,"seconds":0.05,"set":"clean","stderr_tail":"","stdout_tail":"","task_id":"T/0","verdict":"Pass"}"#;
    std::fs::write(out.join("samples.jsonl"), format!("{old}\n")).unwrap();
    let o = eval(&a, &good, &out, &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no manifest.json"), "{}", stderr(&o));
    assert!(!out.join("manifest.json").exists());
    let _ = std::fs::remove_dir_all(&root);
}

/// A tiny model, a two-task dataset and a greedy baseline of it (`creme eval`).
fn experiment_setup(root: &Path, max_tokens: &str) -> (PathBuf, PathBuf, PathBuf) {
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut text = String::new();
    for i in 0..2 {
        let prompt = format!("def value_{i}():\n    \"\"\"Return the number {i}.\"\"\"\n");
        let t = json!({"task_id": format!("Tiny/{i}"), "prompt": prompt, "entry_point": format!("value_{i}"), "test": format!("def check(f):\n    assert f() == {i}\n")});
        text.push_str(&format!("{t}\n"));
    }
    std::fs::write(data.join("HumanEval.jsonl"), text).unwrap();
    let model = root.join("tiny.gguf");
    std::fs::write(&model, creme_tests::tiny::tiny_gguf()).unwrap();
    let base = root.join(format!("baseline-{max_tokens}"));
    let o = creme()
        .args([
            "eval",
            "--types",
            "clean,C3",
            "--workers",
            "2",
            "--max-tokens",
            max_tokens,
        ])
        .arg("--dataset")
        .arg(&data)
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&base)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    (data, model, base)
}

fn experiment(data: &Path, model: &Path, base: &Path, out: &Path, layer: &str) -> Output {
    creme()
        .args([
            "experiment",
            "--types",
            "C3",
            "--max-tokens",
            "4",
            "--target-tokens",
            "8",
        ])
        .args(["--workers", "2", "--layer", layer, "--dataset"])
        .arg(data)
        .arg("--model")
        .arg(model)
        .arg("--baseline")
        .arg(base)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn an_experiment_refuses_a_baseline_or_a_resume_that_does_not_fit() {
    let root = temp("experiment");
    let (data, model, base4) = experiment_setup(&root, "4");
    let (_, _, base6) = experiment_setup(&root, "6");
    let out = root.join("exp");
    // A baseline generated with another token budget does not fit.
    let o = experiment(&data, &model, &base6, &out, "1");
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("does not fit this run") && e.contains("generation"),
        "{e}"
    );
    // The fitting one runs (the random model passes nothing: no edit-worthy task).
    let o = experiment(&data, &model, &base4, &out, "1");
    assert!(o.status.success(), "{}", stderr(&o));
    // Resuming with another layer rule is refused; the manifest stays.
    let m = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    let o = experiment(&data, &model, &base4, &out, "0");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("experiment:"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(out.join("manifest.json")).unwrap(),
        m
    );
    let _ = std::fs::remove_dir_all(&root);
}
