//! The real Qwen2.5-Coder-0.5B-Instruct (Q4_K_M) reproduces HF transformers' greedy HumanEval
//! completions (../shared/oracle), prompting and stops as there: on the CPU backend (int8
//! activations) and, for one prompt, on wgpu (lavapipe here, f32 activations).

use creme_core::generate::{generate, humaneval_stops, GenerateOptions};
use creme_core::model::Model;
use std::path::Path;

use creme_tests::{device_on, model_path, require_shared};
use serde_json::Value;

const HUMANEVAL: &str = "datasets/humaneval-nlpert/HumanEval.jsonl";
const ORACLE: &str = "oracle/qwen2.5-coder-0.5b-instruct-q4km";
/// What every test here reads from the reference data.
const NEEDS: [&str; 2] = [HUMANEVAL, ORACLE];

fn humaneval(shared: &Path) -> Vec<Value> {
    std::fs::read_to_string(shared.join(HUMANEVAL))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn oracle_clean(shared: &Path) -> Vec<String> {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(shared.join(ORACLE).join("hf_greedy_clean_completions.json"))
            .unwrap(),
    )
    .unwrap();
    v["clean"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Greedy completions of the given HumanEval tasks, `batch` prompts at a time.
fn complete(backend: &str, shared: &Path, tasks: &[usize], batch: usize) -> Vec<String> {
    let gpu = device_on(backend);
    let model =
        Model::from_gguf_bytes(&gpu, &std::fs::read(model_path("qwen")).unwrap(), 4096).unwrap();
    let he = humaneval(shared);
    let opts = GenerateOptions {
        max_new_tokens: 320,
        stop: humaneval_stops(),
        ..Default::default()
    };
    let mut out = Vec::new();
    for group in tasks.chunks(batch) {
        let prompts: Vec<Vec<u32>> = group
            .iter()
            .map(|&i| {
                model
                    .tokenizer
                    .encode(he[i]["prompt"].as_str().unwrap())
                    .unwrap()
            })
            .collect();
        let done =
            pollster::block_on(generate(&gpu, &model, &prompts, &opts, &mut |_, _| {})).unwrap();
        out.extend(done.into_iter().map(|c| c.text));
    }
    out
}

/// CI check: one real prompt, greedy, on wgpu (lavapipe here), equals the oracle's completion.
#[test]
fn qwen_greedy_humaneval_2_equals_hf_on_wgpu() {
    let Some(shared) = require_shared(&NEEDS) else {
        return;
    };
    let got = complete("vulkan", &shared, &[2], 1);
    assert_eq!(got[0], oracle_clean(&shared)[2]);
}

/// CI check: the same on the CPU backend, for a few prompts in one batch.
#[test]
fn qwen_greedy_humaneval_equals_hf_on_cpu() {
    let Some(shared) = require_shared(&NEEDS) else {
        return;
    };
    let tasks = [2, 7, 12, 29];
    let got = complete("cpu", &shared, &tasks, 4);
    let want = oracle_clean(&shared);
    for (g, &i) in got.iter().zip(&tasks) {
        assert_eq!(g, &want[i], "HumanEval/{i}");
    }
}

/// Run `prompt + completion + test + check(entry_point)` under python3 with a 10 s limit in a
/// fresh temp dir (the harness's sandbox proper lives in creme-cli; this mirrors the oracle's rule).
fn passes(task: &Value, completion: &str) -> bool {
    let dir = std::env::temp_dir().join(format!(
        "creme-oracle-{}-{}",
        std::process::id(),
        task["task_id"].as_str().unwrap().replace('/', "_")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let program = format!(
        "{}{}\n\n{}\n\ncheck({})\n",
        task["prompt"].as_str().unwrap(),
        completion,
        task["test"].as_str().unwrap(),
        task["entry_point"].as_str().unwrap()
    );
    std::fs::write(dir.join("prog.py"), program).unwrap();
    let ok = std::process::Command::new("timeout")
        .args(["10", "python3", "prog.py"])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let _ = std::fs::remove_dir_all(&dir);
    ok
}

/// Slow: the first N HumanEval tasks (CREME_ORACLE_TASKS, default 164 = all) on the CPU backend
/// (CREME_ORACLE_BACKEND to change), batched 8 at a time, against the oracle: >= 90% identical
/// completions (80% on `cpu`, whose activations are int8) and >= 95% pass/fail agreement (on all
/// 164: 71 +- 2 passes).
#[test]
#[ignore]
fn qwen_greedy_humaneval_subset_matches_hf() {
    let Some(shared) = require_shared(&NEEDS) else {
        return;
    };
    let n: usize = std::env::var("CREME_ORACLE_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(164)
        .min(164);
    let backend = std::env::var("CREME_ORACLE_BACKEND").unwrap_or_else(|_| "cpu".into());
    let tasks: Vec<usize> = (0..n).collect();
    let t0 = std::time::Instant::now();
    let got = complete(&backend, &shared, &tasks, 8);
    let secs = t0.elapsed().as_secs_f64();
    let want = oracle_clean(&shared);
    let he = humaneval(&shared);
    let pass_ref: Value = serde_json::from_str(
        &std::fs::read_to_string(shared.join(ORACLE).join("hf_greedy_pass.json")).unwrap(),
    )
    .unwrap();
    let (mut same, mut agree, mut passed, mut ref_passed) = (0, 0, 0, 0);
    for (i, text) in got.iter().enumerate() {
        let ok = passes(&he[i], text);
        let ref_ok = pass_ref["clean"][i].as_bool().unwrap();
        same += (text == &want[i]) as usize;
        agree += (ok == ref_ok) as usize;
        passed += ok as usize;
        ref_passed += ref_ok as usize;
        if text != &want[i] {
            eprintln!("HumanEval/{i} differs (pass {ok}, oracle pass {ref_ok})");
        }
    }
    eprintln!(
        "{backend}: {n} tasks in {secs:.0} s: identical {same}/{n} ({:.1}%), pass/fail agreement {agree}/{n} ({:.1}%), passes {passed} (oracle {ref_passed})",
        100.0 * same as f64 / n as f64,
        100.0 * agree as f64 / n as f64
    );
    // int8 activations (`cpu`) flip near-tied greedy tokens: 139/164 identical (README); the
    // exact backends (`cpu-exact`, wgpu) compute HF's function.
    let min_same = if backend == "cpu" { 0.8 } else { 0.9 };
    assert!(
        same as f64 >= min_same * n as f64,
        "only {same}/{n} completions identical"
    );
    assert!(
        agree as f64 >= 0.95 * n as f64,
        "pass/fail agreement {agree}/{n}"
    );
    if n == 164 {
        assert!((69..=73).contains(&passed), "{passed} passes, oracle 71");
    }
}
