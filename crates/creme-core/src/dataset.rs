//! Benchmark problems from JSONL text: HumanEval and the CREME/ReCode perturbed sets
//! (`task_id`, `prompt`, `entry_point`, `test`, optional `original_prompt`). Bytes in, records
//! out: the caller reads the files. A bad line is an error naming the source and line.

use serde::Serialize;

use crate::error::ModelError;

/// The 20 perturbation types of the CREME paper (ReCode's docstring perturbations).
pub const PERTURBATION_TYPES: [&str; 20] =
    ["A1", "A2", "A3", "C1", "C2", "C3", "D1", "D2", "D3", "D4", "E1", "E2", "E3", "E4", "E5", "E6", "P1", "P2", "S1", "S2"];

#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub task_id: String,
    pub prompt: String,
    pub entry_point: String,
    pub test: String,
    /// The clean prompt a perturbed record came from (absent or NaN in some lines).
    pub original_prompt: Option<String>,
}

impl Problem {
    /// The program that decides pass/fail: prompt + completion + test + check(entry_point).
    pub fn program(&self, prompt: &str, completion: &str) -> String {
        format!("{prompt}{completion}\n\n{}\n\ncheck({})\n", self.test, self.entry_point)
    }
}

/// Parse JSONL text; `source` names it in errors. Bare NaN values (not JSON, but present in a
/// released line) read as null.
pub fn parse_jsonl(text: &str, source: &str) -> Result<Vec<Problem>, ModelError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| ModelError::Format(format!("{source}:{}: {what}", i + 1));
        let fixed;
        let line = if line.contains("NaN") {
            fixed = replace_bare_nan(line);
            fixed.as_str()
        } else {
            line
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        let field = |k: &str| -> Result<String, ModelError> {
            v.get(k).and_then(|x| x.as_str()).map(String::from).ok_or_else(|| bad(format!("missing string field '{k}'")))
        };
        out.push(Problem {
            task_id: field("task_id")?,
            prompt: field("prompt")?,
            entry_point: field("entry_point")?,
            test: field("test")?,
            original_prompt: v.get("original_prompt").and_then(|x| x.as_str()).map(String::from),
        });
    }
    Ok(out)
}

/// Replace NaN tokens outside strings with null.
fn replace_bare_nan(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let (mut in_str, mut esc) = (false, false);
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if in_str {
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                in_str = false;
            }
        } else if c == b'"' {
            in_str = true;
        } else if line[i..].starts_with("NaN") {
            out.push_str("null");
            i += 3;
            continue;
        }
        // Copy one UTF-8 character.
        let len = line[i..].chars().next().map(|ch| ch.len_utf8()).unwrap_or(1);
        out.push_str(&line[i..i + len]);
        i += len;
    }
    out
}

/// Find a task by id.
pub fn find<'a>(problems: &'a [Problem], task_id: &str) -> Option<&'a Problem> {
    problems.iter().find(|p| p.task_id == task_id)
}
