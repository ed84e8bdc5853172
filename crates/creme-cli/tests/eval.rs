//! `creme eval` end to end without a model: completions given on the command line are tested in
//! the sandbox. On the oracle's HumanEval completions the verdicts must equal the oracle's, task by
//! task; MBPP records from the fixture must pass with their reference code and fail without it.

use std::path::{Path, PathBuf};
use std::process::Command;

use creme_tests::{repo_root, require_shared};
use serde_json::Value;

fn creme() -> Command {
    Command::new(env!("CARGO_BIN_EXE_creme"))
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("creme-eval-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn records(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn oracle_completions_get_the_oracle_verdicts_on_every_set() {
    let (oracle, dataset) = (
        "oracle/qwen2.5-coder-0.5b-instruct-q4km",
        "datasets/humaneval-nlpert",
    );
    let Some(shared) = require_shared(&[oracle, dataset]) else {
        return;
    };
    let (oracle, dataset) = (shared.join(oracle), shared.join(dataset));
    let mut all: serde_json::Map<String, Value> = serde_json::from_str(
        &std::fs::read_to_string(oracle.join("hf_greedy_clean_completions.json")).unwrap(),
    )
    .unwrap();
    let pert: serde_json::Map<String, Value> = serde_json::from_str(
        &std::fs::read_to_string(oracle.join("hf_greedy_perturbed_completions.json")).unwrap(),
    )
    .unwrap();
    all.extend(pert);
    let out = temp("oracle");
    let completions = out.join("completions.json");
    std::fs::write(&completions, serde_json::to_string(&all).unwrap()).unwrap();
    let sets: Vec<&str> = all.keys().map(|s| s.as_str()).collect();
    let res = out.join("eval");
    let st = creme()
        .args(["eval", "--types", &sets.join(","), "--dataset"])
        .arg(&dataset)
        .arg("--completions")
        .arg(&completions)
        .arg("--out")
        .arg(&res)
        .status()
        .unwrap();
    assert!(st.success());
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(oracle.join("hf_greedy_pass.json")).unwrap())
            .unwrap();
    let ids: Vec<String> = std::fs::read_to_string(dataset.join("HumanEval.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["task_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let recs = records(&res);
    for set in &sets {
        let mut agree = 0;
        for (i, id) in ids.iter().enumerate() {
            let r = recs
                .iter()
                .find(|r| r["set"] == *set && r["task_id"] == id.as_str())
                .unwrap_or_else(|| panic!("no record for {set} {id}"));
            if r["passed"] == want[set][i] {
                agree += 1;
            } else {
                eprintln!(
                    "{set} {id}: oracle {} here {} ({} {}: {})",
                    want[set][i], r["passed"], r["verdict"], r["error_kind"], r["stderr_tail"]
                );
            }
        }
        eprintln!("{set}: {agree}/164 verdicts as the oracle's");
        assert_eq!(agree, 164, "{set}");
    }
    // The summary reproduces the oracle's pass count on clean (71 of 164).
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(res.join("summary.json")).unwrap()).unwrap();
    let clean = summary["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["set"] == "clean")
        .unwrap()
        .clone();
    assert_eq!(clean["passed"], 71);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn mbpp_records_become_problems_that_their_reference_code_passes() {
    // JSON arrays, and the CREME authors' shape (Python list literals in strings).
    for name in ["mbpp-sample", "mbpp-authors-shape"] {
        mbpp_fixture_passes_with_its_reference_code(name);
    }
}

fn mbpp_fixture_passes_with_its_reference_code(name: &str) {
    let fixture = repo_root().join(format!("tests/fixtures/{name}.jsonl"));
    let dir = temp(name);
    std::fs::copy(&fixture, dir.join("MBPP.jsonl")).unwrap();
    // Completions: the body of each reference solution (the prompt already holds the signature).
    let mut good = String::new();
    let mut bad = String::new();
    for line in std::fs::read_to_string(&fixture).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let code = v["code"].as_str().unwrap().replace("\r\n", "\n");
        let body: String = code
            .lines()
            .skip_while(|l| !l.starts_with("def "))
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect();
        let id = format!("MBPP/{}", v["task_id"]);
        good.push_str(
            &serde_json::json!({"set": "clean", "task_id": id, "completion": body}).to_string(),
        );
        good.push('\n');
        bad.push_str(
            &serde_json::json!({"set": "clean", "task_id": id, "completion": "    return None\n"})
                .to_string(),
        );
        bad.push('\n');
    }
    for (name, text, want) in [("good", good, true), ("bad", bad, false)] {
        let file = dir.join(format!("{name}.jsonl"));
        std::fs::write(&file, text).unwrap();
        let out = dir.join(format!("out-{name}"));
        let st = creme()
            .args(["eval", "--types", "clean", "--dataset"])
            .arg(&dir)
            .arg("--completions")
            .arg(&file)
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        let recs = records(&out);
        assert_eq!(
            recs.len(),
            std::fs::read_to_string(&fixture).unwrap().lines().count()
        );
        for r in &recs {
            assert_eq!(r["passed"], want, "{name}: {r}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_sample_of_a_completions_file_is_scored() {
    // Three samples for one task: a correct body, a wrong one, and one that exits early.
    let Some(shared) = require_shared(&["datasets/humaneval-nlpert"]) else {
        return;
    };
    let dataset = shared.join("datasets/humaneval-nlpert");
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(dataset.join("HumanEval.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let bodies = [
        first["canonical_solution"].as_str().unwrap(),
        "    return False\n",
        "    return True\nimport sys\nsys.exit(0)\n",
    ];
    let dir = temp("samples");
    let file = dir.join("completions.jsonl");
    let lines: Vec<String> = bodies
        .iter()
        .enumerate()
        .map(|(i, c)| {
            serde_json::json!({"set": "C3", "task_id": "HumanEval/0", "completion": c, "sample": i})
                .to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = dir.join("out");
    let st = creme()
        .args([
            "eval",
            "--types",
            "C3",
            "--tasks",
            "HumanEval/0",
            "--dataset",
        ])
        .arg(&dataset)
        .arg("--completions")
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let mut recs = records(&out);
    recs.sort_by_key(|r| r["sample"].as_u64());
    let got: Vec<(u64, bool)> = recs
        .iter()
        .map(|r| {
            (
                r["sample"].as_u64().unwrap(),
                r["passed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, vec![(0, true), (1, false), (2, false)]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_malformed_dataset_line_is_an_error_naming_file_and_line() {
    let dir = temp("malformed");
    std::fs::write(dir.join("HumanEval.jsonl"), "{\"task_id\": \"X/0\", \"prompt\": \"p\", \"entry_point\": \"f\", \"test\": \"t\"}\n{\"task_id\": \"X/1\", \"prompt\": \n").unwrap();
    let o = creme()
        .args(["eval", "--dataset"])
        .arg(&dir)
        .arg("--completions")
        .arg(dir.join("none.json"))
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("dataset") && err.contains("HumanEval.jsonl:2") && !err.contains("model file"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A one-task HumanEval-style dataset: `f(x)` must return `2 * x`.
fn one_task_dataset(name: &str) -> PathBuf {
    let dir = temp(name);
    let task = serde_json::json!({"task_id": "T/0", "prompt": "def f(x):\n", "entry_point": "f", "test": "def check(candidate):\n    assert candidate(2) == 4\n"});
    std::fs::write(dir.join("HumanEval.jsonl"), format!("{task}\n")).unwrap();
    dir
}

fn eval_one(dir: &Path, completion: &str, out: &str, env: &[(&str, &str)]) -> (bool, Vec<Value>) {
    let file = dir.join(format!("{out}.jsonl"));
    std::fs::write(
        &file,
        format!(
            "{}\n",
            serde_json::json!({"set": "clean", "task_id": "T/0", "completion": completion})
        ),
    )
    .unwrap();
    let mut cmd = creme();
    cmd.args(["eval", "--types", "clean", "--dataset"])
        .arg(dir)
        .arg("--completions")
        .arg(&file)
        .arg("--out")
        .arg(dir.join(out));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let st = cmd.status().unwrap();
    (st.success(), records(&dir.join(out)))
}

#[test]
fn a_one_record_jsonl_file_is_scored_and_early_exits_fail() {
    let dir = one_task_dataset("one-record");
    let (ok, recs) = eval_one(&dir, "    return 2 * x\n", "good", &[]);
    assert!(ok);
    assert_eq!((recs.len(), &recs[0]["passed"]), (1, &Value::Bool(true)));
    let (ok, recs) = eval_one(
        &dir,
        "    return False\nimport sys\nsys.exit(0)\n",
        "exit",
        &[],
    );
    assert!(ok, "a failing program is a verdict, not an error");
    assert_eq!(
        (&recs[0]["passed"], &recs[0]["error_kind"]),
        (&Value::Bool(false), &Value::from("exit"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sandbox_errors_are_not_verdicts_and_are_retried_on_resume() {
    let dir = one_task_dataset("infra");
    // No interpreter: the sandbox cannot run the program.
    let (ok, recs) = eval_one(
        &dir,
        "    return 2 * x\n",
        "run",
        &[("CREME_PYTHON", "/nonexistent/python3")],
    );
    assert!(!ok, "creme must exit non-zero while sandbox errors remain");
    assert_eq!(
        (&recs[0]["verdict"], &recs[0]["error_kind"]),
        (&Value::from("Error"), &Value::from("sandbox"))
    );
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["sandbox_errors"], 1);
    // The same command again, with the interpreter back: the sample runs and passes.
    let (ok, recs) = eval_one(&dir, "    return 2 * x\n", "run", &[]);
    assert!(ok);
    assert_eq!(recs.last().unwrap()["passed"], true, "{recs:?}");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            summary["sandbox_errors"].as_u64(),
            summary["sets"][0]["passed"].as_u64()
        ),
        (Some(0), Some(1))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether any process on this machine has `needle` in its command line.
fn process_running_with(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
    })
}

#[test]
fn programs_die_with_creme_on_sigterm_and_on_sigkill() {
    let dir = one_task_dataset("die");
    for (i, signal) in [15, 9].into_iter().enumerate() {
        let marker = format!("creme-die-test-{}-{i}", std::process::id());
        let completion = format!("    return 2 * x\nimport subprocess, time\nsubprocess.Popen(['sh', '-c', 'sleep 60', '{marker}'])\ntime.sleep(60)\n");
        let file = dir.join(format!("c{i}.jsonl"));
        std::fs::write(
            &file,
            format!(
                "{}\n",
                serde_json::json!({"set": "clean", "task_id": "T/0", "completion": completion})
            ),
        )
        .unwrap();
        let mut child = creme()
            .args(["eval", "--types", "clean", "--timeout", "120", "--dataset"])
            .arg(&dir)
            .arg("--completions")
            .arg(&file)
            .arg("--out")
            .arg(dir.join(format!("o{i}")))
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while !process_running_with(&marker) {
            assert!(t0.elapsed().as_secs() < 30, "the program never started");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let _ = child.wait();
        let t1 = std::time::Instant::now();
        while process_running_with(&marker) {
            assert!(
                t1.elapsed().as_secs() < 5,
                "signal {signal}: the program outlived creme"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The 164 HumanEval tasks with their canonical solutions as completions: all pass in the sandbox
/// (its fresh root holds the whole runtime: HumanEval/162 imports hashlib).
#[test]
fn every_canonical_solution_passes_in_the_sandbox() {
    let Some(shared) = require_shared(&["datasets/humaneval-nlpert"]) else {
        return;
    };
    let dataset = shared.join("datasets/humaneval-nlpert");
    let lines: Vec<String> = std::fs::read_to_string(dataset.join("HumanEval.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let t: Value = serde_json::from_str(l).unwrap();
            serde_json::json!({"set": "clean", "task_id": t["task_id"], "completion": t["canonical_solution"]})
                .to_string()
        })
        .collect();
    assert_eq!(lines.len(), 164);
    let dir = temp("canonical");
    let file = dir.join("completions.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = dir.join("out");
    let st = creme()
        .args(["eval", "--types", "clean", "--dataset"])
        .arg(&dataset)
        .arg("--completions")
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let recs = records(&out);
    let failed: Vec<String> = recs
        .iter()
        .filter(|r| r["passed"] != true)
        .map(|r| {
            format!(
                "{} {} {}: {}",
                r["task_id"], r["verdict"], r["error_kind"], r["stderr_tail"]
            )
        })
        .collect();
    assert_eq!((recs.len(), failed.len()), (164, 0), "{failed:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A wrong answer that reads the dataset, finds its task's canonical solution and runs it (a PASS
/// before the sandbox had a root of its own): the dataset is not there.
#[test]
fn a_program_cannot_read_the_dataset_for_its_answer() {
    let Some(shared) = require_shared(&["datasets/humaneval-nlpert"]) else {
        return;
    };
    let dataset = shared.join("datasets/humaneval-nlpert");
    let jsonl = std::fs::canonicalize(dataset.join("HumanEval.jsonl")).unwrap();
    let completion = format!(
        "    import json\n    for line in open({:?}):\n        t = json.loads(line)\n        if t['task_id'] == 'HumanEval/0':\n            ns = {{}}\n            exec(t['prompt'] + t['canonical_solution'], ns)\n            return ns['has_close_elements'](numbers, threshold)\n    return False\n",
        jsonl.display().to_string()
    );
    let dir = temp("dataset-read");
    let file = dir.join("completions.jsonl");
    let line =
        serde_json::json!({"set": "clean", "task_id": "HumanEval/0", "completion": completion});
    std::fs::write(&file, format!("{line}\n")).unwrap();
    let out = dir.join("out");
    let st = creme()
        .args([
            "eval",
            "--types",
            "clean",
            "--tasks",
            "HumanEval/0",
            "--dataset",
        ])
        .arg(&dataset)
        .arg("--completions")
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let recs = records(&out);
    assert_eq!(recs[0]["passed"], false, "{}", recs[0]);
    assert!(
        recs[0]["stderr_tail"]
            .as_str()
            .unwrap()
            .contains("FileNotFoundError"),
        "{}",
        recs[0]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
