//! Benchmark problems from JSONL text: HumanEval and the CREME/ReCode perturbed sets
//! (`task_id`, `prompt`, `entry_point`, `test`, optional `original_prompt`), and MBPP-style
//! records (`text` or `prompt`, `test_list`, optional `test_imports` and `code`), which are turned
//! into a HumanEval-style signature + docstring prompt and a `check` function. Bytes in, records
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

/// What decides pass/fail: `source` (prompt + completion + test) runs first, then `check`
/// (`check(entry_point)`); a PASS means both ran to their end (the sandbox's runner decides).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestProgram {
    pub source: String,
    pub check: String,
}

impl TestProgram {
    /// A plain script: it passes when it runs to its end.
    pub fn script(source: &str) -> TestProgram {
        TestProgram { source: source.to_string(), check: String::new() }
    }
}

impl Problem {
    /// The program that decides pass/fail for `completion` after `prompt`.
    pub fn program(&self, prompt: &str, completion: &str) -> TestProgram {
        TestProgram { source: format!("{prompt}{completion}\n\n{}\n", self.test), check: format!("check({})\n", self.entry_point) }
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
        if !v.is_object() {
            return Err(bad("not a JSON object".into()));
        }
        let problem = if v.get("test_list").is_some() && v.get("test").is_none() { mbpp_problem(&v) } else { humaneval_problem(&v) };
        out.push(problem.map_err(bad)?);
    }
    Ok(out)
}

fn string_field(v: &serde_json::Value, k: &str) -> Result<String, String> {
    v.get(k).and_then(|x| x.as_str()).map(String::from).ok_or_else(|| format!("missing string field '{k}'"))
}

/// A task id may be a string or (MBPP) a number.
fn task_id(v: &serde_json::Value, prefix: &str) -> Result<String, String> {
    match v.get("task_id") {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Number(n)) => Ok(format!("{prefix}{n}")),
        _ => Err("missing field 'task_id' (string or number)".into()),
    }
}

fn humaneval_problem(v: &serde_json::Value) -> Result<Problem, String> {
    Ok(Problem {
        task_id: task_id(v, "")?,
        prompt: string_field(v, "prompt")?,
        entry_point: string_field(v, "entry_point")?,
        test: string_field(v, "test")?,
        original_prompt: v.get("original_prompt").and_then(|x| x.as_str()).map(String::from),
    })
}

/// An MBPP record as a HumanEval-style problem: the function name comes from the first test
/// (`assert name(...)`), its parameters from the reference `code` when present (else `*args`);
/// the docstring holds the task text and the first test as a `>>>` line (never perturbed).
fn mbpp_problem(v: &serde_json::Value) -> Result<Problem, String> {
    let text = string_field(v, "text").or_else(|_| string_field(v, "prompt")).map_err(|_| "MBPP record without 'text' or 'prompt'".to_string())?;
    let tests: Vec<String> = v
        .get("test_list")
        .and_then(|t| t.as_array())
        .ok_or("'test_list' is not a list")?
        .iter()
        .map(|t| t.as_str().map(String::from).ok_or("'test_list' holds a non-string"))
        .collect::<Result<_, _>>()?;
    let first = tests.first().ok_or("'test_list' is empty")?;
    let name = first
        .trim_start()
        .strip_prefix("assert")
        .map(|r| r.trim_start().trim_start_matches(['(', ' ']))
        .and_then(|r| r.split('(').next())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_alphanumeric() || c == '_'))
        .ok_or_else(|| format!("cannot find the function name in the first test: {first}"))?;
    let params = v
        .get("code")
        .and_then(|c| c.as_str())
        .and_then(|code| {
            let at = code.find(&format!("def {name}("))?;
            let rest = &code[at + name.len() + 5..];
            Some(rest[..rest.find("):").or_else(|| rest.find(')'))?].to_string())
        })
        .unwrap_or_else(|| "*args".to_string());
    let imports: Vec<String> = v
        .get("test_imports")
        .and_then(|t| t.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let mut head = imports.join("\n");
    if !head.is_empty() {
        head.push_str("\n\n");
    }
    let text = text.trim().replace('\n', "\n    ");
    let prompt = format!("{head}def {name}({params}):\n    \"\"\"{text}\n    >>> {}\n    \"\"\"\n", first.trim());
    let body: String = tests.iter().map(|t| format!("    {}\n", t.trim())).collect();
    let test = format!("{}\n\ndef check(candidate):\n{body}", imports.join("\n"));
    Ok(Problem { task_id: task_id(v, "MBPP/")?, prompt, entry_point: name, test, original_prompt: None })
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
