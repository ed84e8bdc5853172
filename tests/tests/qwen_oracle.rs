//! The real Qwen2.5-Coder-0.5B-Instruct (Q4_K_M) on this machine's adapter reproduces HF
//! transformers' greedy HumanEval completions (../shared/oracle), prompting and stops as there.

use creme_core::generate::{generate, humaneval_stops, GenerateOptions};
use creme_core::model::Model;
use creme_tests::{gpu_on, model_path, shared_dir};
use serde_json::Value;

fn humaneval() -> Vec<Value> {
    std::fs::read_to_string(shared_dir().join("datasets/humaneval-nlpert/HumanEval.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn oracle_clean() -> Vec<String> {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(shared_dir().join("oracle/qwen2.5-coder-0.5b-instruct-q4km/hf_greedy_clean_completions.json")).unwrap(),
    )
    .unwrap();
    v["clean"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// Greedy completions of the given HumanEval tasks, `batch` prompts at a time.
fn complete(tasks: &[usize], batch: usize) -> Vec<String> {
    let gpu = gpu_on(None).unwrap();
    let model = Model::from_gguf_bytes(&gpu, &std::fs::read(model_path("qwen")).unwrap(), 4096).unwrap();
    let he = humaneval();
    let opts = GenerateOptions { max_new_tokens: 320, stop: humaneval_stops(), ..Default::default() };
    let mut out = Vec::new();
    for group in tasks.chunks(batch) {
        let prompts: Vec<Vec<u32>> = group.iter().map(|&i| model.tokenizer.encode(he[i]["prompt"].as_str().unwrap()).unwrap()).collect();
        let done = pollster::block_on(generate(&gpu, &model, &prompts, &opts, &mut |_, _| {})).unwrap();
        out.extend(done.into_iter().map(|c| c.text));
    }
    out
}

/// CI check: one real prompt, greedy, on lavapipe, equals the oracle's completion.
#[test]
fn qwen_greedy_humaneval_2_equals_hf() {
    let got = complete(&[2], 1);
    assert_eq!(got[0], oracle_clean()[2]);
}
