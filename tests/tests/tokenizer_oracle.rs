//! Token ids from the GGUF-built tokenizer equal HF transformers' (../shared/oracle/tokenizers)
//! on all 3,444 prompts and the edge-case strings, for both models; decoding gives the text back.

use std::collections::BTreeMap;
use std::path::Path;

use creme_core::model::Tokenizer;
use creme_tests::{model_path, read_header, require_shared};
use serde_json::Value;

const DATASET: &str = "datasets/humaneval-nlpert";

fn prompts(shared: &Path) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    let ds = shared.join(DATASET);
    let mut files = vec![("clean".to_string(), ds.join("HumanEval.jsonl"))];
    for e in std::fs::read_dir(ds.join("perturbed")).unwrap() {
        let p = e.unwrap().path();
        files.push((p.file_stem().unwrap().to_string_lossy().to_string(), p));
    }
    for (set, path) in files {
        for line in std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            // One line of A2 carries a NaN original_prompt, which is not strict JSON.
            let line = line.replace(": NaN", ": null");
            let v: Value = serde_json::from_str(&line).unwrap();
            out.insert(
                (set.clone(), v["task_id"].as_str().unwrap().to_string()),
                v["prompt"].as_str().unwrap().to_string(),
            );
        }
    }
    out
}

fn check(model: &str, oracle_file: &str) {
    let oracle_path = format!("oracle/tokenizers/{oracle_file}");
    let Some(shared) = require_shared(&[DATASET, &oracle_path]) else {
        return;
    };
    let h = read_header(&model_path(model));
    let tok = Tokenizer::from_gguf(&h).unwrap();
    let oracle: Value =
        serde_json::from_str(&std::fs::read_to_string(shared.join(&oracle_path)).unwrap()).unwrap();
    let mut n = 0;
    let mut bad = Vec::new();
    for ((set, task), prompt) in prompts(&shared) {
        let want: Vec<u32> = match oracle[&set][&task].as_array() {
            Some(a) => a.iter().map(|v| v.as_u64().unwrap() as u32).collect(),
            None => continue,
        };
        let got = tok.encode(&prompt).unwrap();
        n += 1;
        if got != want {
            bad.push(format!("{set}/{task}"));
        }
        if set == "clean" {
            assert_eq!(
                tok.decode(&got).unwrap(),
                prompt,
                "decode round trip {task}"
            );
        }
    }
    for (text, ids) in oracle["extra"].as_object().unwrap() {
        let want: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text).unwrap();
        if got != want {
            bad.push(format!("extra {text:?}: got {got:?} want {want:?}"));
        }
        n += 1;
    }
    eprintln!("{model}: {n} strings compared, {} differ", bad.len());
    assert!(n >= 3444, "only {n} prompts compared");
    assert!(
        bad.is_empty(),
        "{} of {n} differ, first: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}

#[test]
fn qwen_token_ids_equal_hf() {
    check("qwen", "qwen2.5-coder-0.5b-instruct-q4km_token_ids.json");
}

#[test]
fn smollm2_token_ids_equal_hf() {
    check("smollm2", "smollm2-135m-instruct-q4_1_token_ids.json");
}

/// The windowed stop-string check of decoding (`reaches_stop`) agrees, token by token, with
/// `cut_at_stops` on the whole decoded text, for both tokenizers: on every HumanEval prompt's
/// canonical solution followed by text that reaches a stop string, and on random ids (byte-level
/// fragments, special tokens) where a stop string is spliced in.
#[test]
fn windowed_stop_check_equals_the_whole_text_check() {
    use creme_core::cpu::SplitMix64;
    use creme_core::generate::{cut_at_stops, humaneval_stops, reaches_stop};
    let Some(shared) = require_shared(&[DATASET]) else {
        return;
    };
    let stops = humaneval_stops();
    let tasks: Vec<Value> = std::fs::read_to_string(shared.join(DATASET).join("HumanEval.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for model in ["qwen", "smollm2"] {
        let tok = Tokenizer::from_gguf(&read_header(&model_path(model))).unwrap();
        let mut rng = SplitMix64(7);
        let stop_ids = tok.encode("\n    return x\n\nassert f(1)\n").unwrap();
        let mut sequences: Vec<Vec<u32>> = tasks
            .iter()
            .map(|t| {
                tok.encode(&format!(
                    "{}\n\ndef check(candidate):\n    pass\n",
                    t["canonical_solution"].as_str().unwrap()
                ))
                .unwrap()
            })
            .collect();
        // Windows that decode to little: a run of special tokens (they decode to nothing) and
        // characters split into byte-level pieces, right before a stop string.
        let special = (0..tok.vocab_size() as u32)
            .rev()
            .find(|&i| tok.is_special(i))
            .unwrap();
        let mut specials = tok.encode("x = 1\n").unwrap();
        specials.extend(std::iter::repeat_n(special, 30));
        specials.extend(tok.encode("# done\n").unwrap());
        sequences.push(specials);
        sequences.push(tok.encode("s = '𝔘𝔫𝔦𝔠𝔬𝔡𝔢𝔘𝔫𝔦𝔠𝔬𝔡𝔢'\n# x\n").unwrap());
        for _ in 0..40 {
            let mut ids: Vec<u32> = (0..60)
                .map(|_| (rng.next_u64() % tok.vocab_size() as u64) as u32)
                .collect();
            let at = (rng.next_u64() % 50) as usize;
            ids.splice(at..at, stop_ids.iter().copied());
            sequences.push(ids);
        }
        let mut hits = 0;
        for ids in &sequences {
            for j in 1..=ids.len() {
                let whole = cut_at_stops(&tok.decode(&ids[..j]).unwrap(), &stops).is_some();
                assert_eq!(
                    reaches_stop(&tok, &ids[..j], &stops).unwrap(),
                    whole,
                    "{model}: {:?}",
                    &ids[..j]
                );
                if whole {
                    hits += 1;
                    break;
                }
            }
        }
        assert!(
            hits >= sequences.len() * 9 / 10,
            "{model}: only {hits} of {} sequences reach a stop string",
            sequences.len()
        );
    }
}
