//! Perturbation invariants over all 164 HumanEval prompts: code, signature and `>>>` lines are
//! untouched; each type makes only its kind of edit; seeded runs repeat.

use creme_core::dataset::parse_jsonl;
use creme_core::dataset::PERTURBATION_TYPES;
use creme_core::perturb::perturb;
use creme_tests::require_shared;

const HUMANEVAL: &str = "datasets/humaneval-nlpert/HumanEval.jsonl";

/// The 164 HumanEval prompts, or None (the test skips) without the reference data.
fn prompts() -> Option<Vec<String>> {
    let p = require_shared(&[HUMANEVAL])?.join(HUMANEVAL);
    let problems = parse_jsonl(&std::fs::read_to_string(&p).unwrap(), "HumanEval.jsonl").unwrap();
    Some(problems.into_iter().map(|p| p.prompt).collect())
}

/// (text before the docstring, the docstring's >>> lines, text after the docstring)
fn fixed_parts(p: &str) -> (String, Vec<String>, String) {
    let close = p.rfind("\"\"\"").or_else(|| p.rfind("'''")).unwrap();
    let open = p[..close]
        .rfind("\"\"\"")
        .or_else(|| p[..close].rfind("'''"))
        .unwrap();
    let examples = p[open..close]
        .lines()
        .filter(|l| l.trim_start().starts_with(">>>"))
        .map(String::from)
        .collect();
    (p[..open].to_string(), examples, p[close..].to_string())
}

fn strip(s: &str, c: char) -> String {
    s.chars().filter(|&x| x != c).collect()
}

fn is_subsequence(short: &str, long: &str) -> bool {
    let mut it = long.chars();
    short.chars().all(|c| it.any(|d| d == c))
}

#[test]
fn every_type_keeps_code_and_examples_and_makes_its_own_kind_of_edit() {
    let Some(ps) = prompts() else { return };
    for t in PERTURBATION_TYPES {
        let mut changed = 0;
        for (i, p) in ps.iter().enumerate() {
            let q = perturb(p, t, i as u64).unwrap();
            assert_eq!(
                q,
                perturb(p, t, i as u64).unwrap(),
                "{t} is not deterministic"
            );
            assert_eq!(
                fixed_parts(p),
                fixed_parts(&q),
                "{t} touched code or examples of task {i}:\n{q}"
            );
            if q == *p {
                continue;
            }
            changed += 1;
            match t {
                "E2" => assert_eq!(p.to_lowercase(), q.to_lowercase(), "E2 task {i}"),
                "A1" | "D4" => assert_eq!(strip(p, ' '), strip(&q, ' '), "{t} task {i}"),
                "C1" => assert_eq!(
                    p.len() + q.matches(' ').count() - p.matches(' ').count(),
                    q.len()
                ),
                "D1" | "D2" | "D3" => {
                    assert!(is_subsequence(&q, p) && q.len() < p.len(), "{t} task {i}")
                }
                "A2" | "A3" => assert!(is_subsequence(p, &q) && q.len() > p.len(), "{t} task {i}"),
                "S1" | "E1" => {
                    assert_eq!(p.len(), q.len(), "{t} task {i}");
                    if t == "S1" {
                        let (mut a, mut b): (Vec<char>, Vec<char>) =
                            (p.chars().collect(), q.chars().collect());
                        a.sort();
                        b.sort();
                        assert_eq!(a, b, "S1 task {i} is not a transposition");
                    }
                }
                "S2" => {
                    let words = |s: &str| -> Vec<String> {
                        s.split(|c: char| !c.is_alphanumeric())
                            .filter(|w| !w.is_empty())
                            .map(String::from)
                            .collect()
                    };
                    let (mut a, mut b) = (words(p), words(&q));
                    a.sort();
                    b.sort();
                    assert_eq!(a, b, "S2 task {i} is not a word swap");
                }
                "E3" | "E4" | "E5" | "E6" => {
                    // Word-for-word replacements: the same number of words, a few of them changed.
                    let words = |s: &str| -> Vec<String> {
                        s.split(|c: char| !c.is_alphanumeric() && c != '_')
                            .filter(|w| !w.is_empty())
                            .map(String::from)
                            .collect()
                    };
                    let (a, b) = (words(p), words(&q));
                    assert_eq!(a.len(), b.len(), "{t} task {i}");
                    let changed = a.iter().zip(&b).filter(|(x, y)| x != y).count();
                    assert!(
                        changed >= 1 && changed <= if t == "E3" || t == "E4" { 1 } else { 4 },
                        "{t} task {i}: {changed} words changed"
                    );
                }
                "P2" => assert!(
                    q.matches('?').count() > p.matches('?').count(),
                    "P2 task {i} asks no question:\n{q}"
                ),
                _ => {}
            }
        }
        eprintln!("{t}: {changed} of {} prompts changed", ps.len());
        let min = match t {
            "D2" | "D3" => 100,
            // Rule-based linguistic types reach only prompts holding a listed word.
            "E3" | "E4" | "E5" | "E6" | "P1" => 100,
            _ => 150,
        };
        assert!(changed >= min, "{t} changed only {changed} prompts");
    }
}

#[test]
fn unknown_types_are_errors() {
    // Any prompt will do: this needs no reference data.
    let p = "def f(x):\n    \"\"\"Return x plus one.\"\"\"\n";
    assert!(perturb(p, "Z9", 0)
        .unwrap_err()
        .to_string()
        .contains("unknown"));
}
