//! Benchmark problems from JSONL text: HumanEval and the CREME/ReCode perturbed sets
//! (`task_id`, `prompt`, `entry_point`, `test`, optional `original_prompt`), and MBPP-style
//! records (`text` or `prompt`, `test_list`, optional `test_imports` and `code`), which are turned
//! into a HumanEval-style signature + docstring prompt and a `check` function. Bytes in, records
//! out: the caller reads the files. A bad line is an error naming the source and line.

use serde::Serialize;

use crate::error::ModelError;

/// The 20 perturbation types of the CREME paper (ReCode's docstring perturbations).
pub const PERTURBATION_TYPES: [&str; 20] = [
    "A1", "A2", "A3", "C1", "C2", "C3", "D1", "D2", "D3", "D4", "E1", "E2", "E3", "E4", "E5", "E6",
    "P1", "P2", "S1", "S2",
];

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
        TestProgram {
            source: source.to_string(),
            check: String::new(),
        }
    }
}

impl Problem {
    /// The program that decides pass/fail for `completion` after `prompt`.
    pub fn program(&self, prompt: &str, completion: &str) -> TestProgram {
        TestProgram {
            source: format!("{prompt}{completion}\n\n{}\n", self.test),
            check: format!("check({})\n", self.entry_point),
        }
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
        let bad = |what: String| ModelError::Dataset(format!("{source}:{}: {what}", i + 1));
        let fixed;
        let line = if line.contains("NaN") {
            fixed = replace_bare_nan(line);
            fixed.as_str()
        } else {
            line
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        if !v.is_object() {
            return Err(bad("not a JSON object".into()));
        }
        let problem = if v.get("test_list").is_some() && v.get("test").is_none() {
            mbpp_problem(&v)
        } else {
            humaneval_problem(&v)
        };
        out.push(problem.map_err(bad)?);
    }
    Ok(out)
}

fn string_field(v: &serde_json::Value, k: &str) -> Result<String, String> {
    v.get(k)
        .and_then(|x| x.as_str())
        .map(String::from)
        .ok_or_else(|| format!("missing string field '{k}'"))
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
        original_prompt: v
            .get("original_prompt")
            .and_then(|x| x.as_str())
            .map(String::from),
    })
}

/// An MBPP record as a HumanEval-style problem: the function name comes from the first test
/// (`assert name(...)`), its parameters from the reference `code` when present (else `*args`);
/// the docstring holds the task text and the first test as a `>>>` line (never perturbed).
fn mbpp_problem(v: &serde_json::Value) -> Result<Problem, String> {
    let text = string_field(v, "text")
        .or_else(|_| string_field(v, "prompt"))
        .map_err(|_| "MBPP record without 'text' or 'prompt'".to_string())?;
    let tests = string_list(
        v.get("test_list").ok_or("missing field 'test_list'")?,
        "test_list",
    )?;
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
    let imports = match v.get("test_imports") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(t) => string_list(t, "test_imports")?,
    };
    let mut head = imports.join("\n");
    if !head.is_empty() {
        head.push_str("\n\n");
    }
    let text = text.trim().replace('\n', "\n    ");
    let prompt = format!(
        "{head}def {name}({params}):\n    \"\"\"{text}\n    >>> {}\n    \"\"\"\n",
        first.trim()
    );
    let body: String = tests
        .iter()
        .map(|t| format!("    {}\n", t.trim()))
        .collect();
    let test = format!("{}\n\ndef check(candidate):\n{body}", imports.join("\n"));
    Ok(Problem {
        task_id: task_id(v, "MBPP/")?,
        prompt,
        entry_point: name,
        test,
        original_prompt: None,
    })
}

/// A list of strings given either as a JSON array or, as in the CREME authors' MBPP files, as a
/// string holding a Python list literal (`"['assert f(1) == 2', ...]"`).
fn string_list(v: &serde_json::Value, field: &str) -> Result<Vec<String>, String> {
    match v {
        serde_json::Value::Array(items) => items
            .iter()
            .map(|t| {
                t.as_str()
                    .map(String::from)
                    .ok_or(format!("'{field}' holds a non-string"))
            })
            .collect(),
        serde_json::Value::String(s) => python_string_list(s)
            .map_err(|e| format!("'{field}' is a string but not a Python list of strings: {e}")),
        _ => Err(format!("'{field}' is not a list")),
    }
}

/// Parse a Python list literal of string literals: `['a', "b\n", r'c']` (quotes ' and ", the
/// common backslash escapes, raw strings; no implicit concatenation or triple quotes).
pub fn python_string_list(s: &str) -> Result<Vec<String>, String> {
    let mut chars = s.trim().chars().peekable();
    if chars.next() != Some('[') {
        return Err("does not start with '['".into());
    }
    let mut out = Vec::new();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.peek() {
            Some(']') => {
                chars.next();
                break;
            }
            None => return Err("no closing ']'".into()),
            _ => {}
        }
        let raw = matches!(chars.peek(), Some('r' | 'R'));
        if raw {
            chars.next();
        }
        let quote = match chars.next() {
            Some(q @ ('\'' | '"')) => q,
            other => return Err(format!("expected a string literal, found {other:?}")),
        };
        let mut item = String::new();
        loop {
            match chars.next() {
                None => return Err("unterminated string".into()),
                Some(c) if c == quote => break,
                Some('\\') if raw => {
                    item.push('\\');
                    item.extend(chars.next());
                }
                Some('\\') => match chars.next() {
                    Some('n') => item.push('\n'),
                    Some('t') => item.push('\t'),
                    Some('r') => item.push('\r'),
                    Some('0') => item.push('\0'),
                    Some(c @ ('\\' | '\'' | '"')) => item.push(c),
                    Some(c) => {
                        item.push('\\');
                        item.push(c);
                    }
                    None => return Err("unterminated string".into()),
                },
                Some(c) => item.push(c),
            }
        }
        out.push(item);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            Some(',') => {}
            Some(']') => break,
            other => return Err(format!("expected ',' or ']', found {other:?}")),
        }
    }
    if chars.any(|c| !c.is_whitespace()) {
        return Err("text after the closing ']'".into());
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
        let len = line[i..]
            .chars()
            .next()
            .map(|ch| ch.len_utf8())
            .unwrap_or(1);
        out.push_str(&line[i..i + len]);
        i += len;
    }
    out
}

/// Find a task by id.
pub fn find<'a>(problems: &'a [Problem], task_id: &str) -> Option<&'a Problem> {
    problems.iter().find(|p| p.task_id == task_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_list_literals_parse_as_python_would() {
        let want = vec![
            "assert f('a\nb') == 2".to_string(),
            "it's \"q\"".into(),
            r"raw \n".into(),
            String::new(),
        ];
        let lit = r#"['assert f(\'a\nb\') == 2', "it's \"q\"", r'raw \n', '']"#;
        assert_eq!(python_string_list(lit).unwrap(), want);
        assert_eq!(python_string_list("[]").unwrap(), Vec::<String>::new());
        assert_eq!(python_string_list(" ['x', ] ").unwrap(), vec!["x"]);
        for bad in ["", "'x'", "['x'", "['x' 'y']", "[1]", "['x'] y", "['x"] {
            assert!(python_string_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dataset_errors_say_dataset() {
        let e = parse_jsonl(
            "{\"task_id\": 1, \"text\": \"t\", \"test_list\": \"not a list\"}\n",
            "MBPP.jsonl",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("dataset MBPP.jsonl:1:") && e.contains("test_list"),
            "{e}"
        );
    }
}
