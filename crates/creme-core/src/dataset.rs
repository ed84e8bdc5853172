//! Benchmark problems from JSONL text: HumanEval and the CREME/ReCode perturbed sets
//! (`task_id`, `prompt`, `entry_point`, `test`, optional `original_prompt`), and MBPP-style
//! records (`text` or `prompt`, `test_list`, optional `test_imports` and `code`), which are turned
//! into a HumanEval-style signature + docstring prompt and a `check` function. Bytes in, records
//! out: the caller reads the files. A bad line is an error naming the source and line.

use std::collections::HashMap;

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
/// released line) read as null. A text with no record, and a task id given twice, are errors.
pub fn parse_jsonl(text: &str, source: &str) -> Result<Vec<Problem>, ModelError> {
    let mut out = Vec::new();
    // Task id -> the line that gave it: a repeated id would make `find` answer for one of two.
    let mut lines_of = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| ModelError::Dataset(format!("{source}:{}: {what}", i + 1));
        let problem = parse_line(line).map_err(bad)?;
        if let Some(first) = lines_of.insert(problem.task_id.clone(), i + 1) {
            return Err(bad(format!(
                "task id '{}' was already given on line {first}",
                problem.task_id
            )));
        }
        out.push(problem);
    }
    if out.is_empty() {
        return Err(ModelError::Dataset(format!(
            "{source}: no problems in it ({} lines, none holding a record)",
            text.lines().count()
        )));
    }
    Ok(out)
}

/// One record, HumanEval or MBPP by its fields.
fn parse_line(line: &str) -> Result<Problem, String> {
    let fixed;
    let line = if line.contains("NaN") {
        fixed = replace_bare_nan(line);
        fixed.as_str()
    } else {
        line
    };
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not valid JSON ({e})"))?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    if v.get("test_list").is_some() && v.get("test").is_none() {
        mbpp_problem(&v)
    } else {
        humaneval_problem(&v)
    }
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
    let task_id = task_id(v, "")?;
    let entry_point = string_field(v, "entry_point")?;
    // It is pasted into the check line `check(<entry_point>)`: anything but a name would be code.
    if !is_python_name(&entry_point) {
        return Err(format!(
            "task {task_id}: entry_point {entry_point:?} is not a Python function name"
        ));
    }
    Ok(Problem {
        task_id,
        prompt: string_field(v, "prompt")?,
        entry_point,
        test: string_field(v, "test")?,
        original_prompt: v
            .get("original_prompt")
            .and_then(|x| x.as_str())
            .map(String::from),
    })
}

/// An MBPP record as a HumanEval-style problem: the function is the one the tests call that the
/// reference `code` defines (see [`mbpp_entry_point`]), with its parameters from that code (else
/// `*args`); the docstring holds the task text and the first test as a `>>>` line (never perturbed).
fn mbpp_problem(v: &serde_json::Value) -> Result<Problem, String> {
    let task_id = task_id(v, "MBPP/")?;
    mbpp_fields(v, &task_id).map_err(|e| format!("task {task_id}: {e}"))
}

fn mbpp_fields(v: &serde_json::Value, task_id: &str) -> Result<Problem, String> {
    let text = string_field(v, "text")
        .or_else(|_| string_field(v, "prompt"))
        .map_err(|_| "MBPP record without 'text' or 'prompt'".to_string())?;
    let tests = string_list(
        v.get("test_list").ok_or("missing field 'test_list'")?,
        "test_list",
    )?;
    let first = tests.first().ok_or("'test_list' is empty")?;
    let code = match v.get("code") {
        None | Some(serde_json::Value::Null) => None,
        Some(c) => Some(c.as_str().ok_or("'code' is not a string")?),
    };
    // Line ends as Python reads them, for a signature that spans lines.
    let code = code.map(|c| c.replace("\r\n", "\n"));
    let (name, params) = mbpp_entry_point(&tests, code.as_deref())?;
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
    // The harness calls `check` too (`check(<entry point>)`): a task asking for a function of that
    // name (MBPP 56 does) gets it bound as a default, evaluated while `check` is still the solution.
    let signature = match name.as_str() {
        "check" => "check(candidate, check=check)",
        _ => "check(candidate)",
    };
    let test = format!("{}\n\ndef {signature}:\n{body}", imports.join("\n"));
    Ok(Problem {
        task_id: task_id.to_string(),
        prompt,
        entry_point: name,
        test,
        original_prompt: None,
    })
}

/// The function an MBPP task asks for, and its parameter text: of the functions the reference
/// `code` defines at top level, the one called in the most tests (the first called on a tie). The
/// first test alone does not say: it may wrap the call (`assert set(f(..)) == ..`, `assert not
/// f(..)`, `assert math.isclose(f(..), ..)`), and the reference may define helpers first. Without
/// `code`, the candidates are the names the tests call that are not Python builtins.
fn mbpp_entry_point(tests: &[String], code: Option<&str>) -> Result<(String, String), String> {
    let calls: Vec<Vec<&str>> = tests.iter().map(|t| called_names(t)).collect();
    let defs: Vec<(&str, String)> = match code {
        Some(code) => top_level_defs(code),
        None => calls
            .iter()
            .flatten()
            .filter(|n| !listed(PYTHON_BUILTINS, n) && !listed(PYTHON_KEYWORDS, n))
            .map(|n| (*n, "*args".to_string()))
            .collect(),
    };
    // (tests calling it, -(first test calling it), -(its place there)): the largest wins.
    let score = |name: &str| {
        let mut hits = calls
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.iter().position(|n| *n == name).map(|at| (i, at)));
        let first = hits.next()?;
        Some((1 + hits.count(), std::cmp::Reverse(first)))
    };
    let best = defs
        .iter()
        .filter_map(|(name, params)| Some((score(name)?, *name, params)))
        .max_by_key(|(s, _, _)| *s);
    match best {
        Some((_, name, params)) => Ok((name.to_string(), params.clone())),
        None if code.is_some() => Err(format!(
            "the tests call none of the functions the reference code defines ({})",
            defs.iter().map(|d| d.0).collect::<Vec<_>>().join(", ")
        )),
        None => Err(format!(
            "the tests call no function but builtins (first test: {})",
            tests[0].trim()
        )),
    }
}

/// The functions `code` defines at top level (`def name(params):` at column 0), in order, with
/// their parameter text (up to the matching parenthesis, across lines).
fn top_level_defs(code: &str) -> Vec<(&str, String)> {
    let mut out = Vec::new();
    let mut at = 0;
    for line in code.split_inclusive('\n') {
        let start = at;
        at += line.len();
        let Some(rest) = line
            .strip_prefix("def ")
            .or_else(|| line.strip_prefix("async def "))
        else {
            continue;
        };
        let rest = rest.trim_start();
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..name_len];
        let after = rest[name_len..].trim_start();
        if !is_python_name(name) || !after.starts_with('(') {
            continue;
        }
        // `after` is a suffix of `line`: where it sits in `code`, to read parameters past this line.
        let open = start + line.len() - after.len();
        if let Some(params) = parenthesized(&code[open..]) {
            out.push((name, params.trim().to_string()));
        }
    }
    out
}

/// The text inside the parenthesis `s` starts with, up to its match (nesting counted, string
/// literals skipped); None when it is not closed.
fn parenthesized(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let (mut depth, mut i) = (0usize, 0);
    while i < b.len() {
        match b[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(&s[1..i]);
                }
            }
            q @ (b'\'' | b'"') => i = skip_string(b, i, q),
            _ => {}
        }
        i += 1;
    }
    None
}

/// From the opening quote at `i`, the index of the closing one (or the end): backslash escapes
/// skipped; triple quotes end at the next triple.
fn skip_string(b: &[u8], i: usize, q: u8) -> usize {
    let triple = b.len() >= i + 3 && b[i + 1] == q && b[i + 2] == q;
    let mut j = if triple { i + 3 } else { i + 1 };
    while j < b.len() {
        match b[j] {
            b'\\' => j += 1,
            c if c == q && !triple => return j,
            c if c == q && b.len() >= j + 3 && b[j + 1] == q && b[j + 2] == q => return j + 2,
            b'\n' if !triple => return j,
            _ => {}
        }
        j += 1;
    }
    b.len()
}

/// Names called in a line of Python: identifiers followed by `(`, in order, attributes
/// (`math.isclose`) and string contents left out.
fn called_names(src: &str) -> Vec<&str> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' || c == b'"' {
            i = skip_string(b, i, c) + 1;
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == b'_') {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let attribute = src[..start].trim_end().ends_with('.');
        let called = src[i..].trim_start().starts_with('(');
        if called && !attribute {
            out.push(&src[start..i]);
        }
    }
    out
}

/// A Python name (ASCII: every released task's is) that is not a keyword.
fn is_python_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !listed(PYTHON_KEYWORDS, s)
}

/// Python's keywords, space-separated.
const PYTHON_KEYWORDS: &str = "False None True and as assert async await break class continue def \
     del elif else except finally for from global if import in is lambda nonlocal not or pass \
     raise return try while with yield";

/// The builtins a test may wrap a call in (never the function a task asks for), space-separated.
const PYTHON_BUILTINS: &str = "abs all any ascii bin bool bytearray bytes callable chr complex \
     dict divmod enumerate filter float format frozenset hash hex int isinstance iter len list map \
     max min next oct ord pow print range repr reversed round set sorted str sum tuple type zip";

fn listed(words: &str, name: &str) -> bool {
    words.split_whitespace().any(|w| w == name)
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

/// The problems among `problems` whose ids are in `tasks` (a comma list; None: all), cut to the
/// first `limit`.
pub fn select(
    mut problems: Vec<Problem>,
    tasks: Option<&str>,
    limit: Option<usize>,
) -> Vec<Problem> {
    if let Some(only) = tasks {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        problems.retain(|p| only.contains(&p.task_id.as_str()));
    }
    if let Some(n) = limit {
        problems.truncate(n);
    }
    problems
}

/// The task ids of `first` (cut to `limit`), then those of the comma list `more` not among them.
pub fn merge_task_ids(first: Vec<String>, limit: Option<usize>, more: Option<&str>) -> Vec<String> {
    let mut tasks: Vec<String> = first
        .into_iter()
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    for t in more.iter().flat_map(|t| t.split(',')).map(str::trim) {
        if !t.is_empty() && !tasks.iter().any(|x| x == t) {
            tasks.push(t.to_string());
        }
    }
    tasks
}

/// Find a task by id.
pub fn find<'a>(problems: &'a [Problem], task_id: &str) -> Option<&'a Problem> {
    problems.iter().find(|p| p.task_id == task_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_lists_merge_without_repeats_after_the_first_list_is_cut() {
        let first = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let merged = merge_task_ids(first, Some(2), Some(" b, d,,a ,e"));
        assert_eq!(merged, ["a", "b", "d", "e"]);
        assert!(merge_task_ids(Vec::new(), None, None).is_empty());
    }

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
    const AUTHORS_SHAPE: &str = include_str!("../../../tests/fixtures/mbpp-authors-shape.jsonl");
    const AUTHORS_HELPERS: &str =
        include_str!("../../../tests/fixtures/mbpp-authors-helpers.jsonl");

    fn entry_points(text: &str) -> Vec<(String, String)> {
        parse_jsonl(text, "fixture")
            .unwrap()
            .into_iter()
            .map(|p| (p.task_id, p.entry_point))
            .collect()
    }

    #[test]
    fn mbpp_entry_points_are_the_tested_function_the_reference_defines() {
        let want: Vec<(String, String)> = [
            ("MBPP/901", "shared_elements"),
            ("MBPP/902", "is_perfect_square"),
            ("MBPP/903", "fib"),
            ("MBPP/904", "count_lines"),
            // assert math.isclose(f(..), ..) / assert not f(..) / assert set(f(..)) == set(..)
            ("MBPP/905", "sector_area"),
            ("MBPP/906", "has_odd_parity"),
            ("MBPP/907", "common_items"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .into();
        assert_eq!(entry_points(AUTHORS_SHAPE), want);
        // The reference defines a helper first; 913's first test calls the helper too.
        let want: Vec<(String, String)> = [
            ("MBPP/911", "count_primes"),
            ("MBPP/912", "sort_by_vowels"),
            ("MBPP/913", "lcm"),
            ("MBPP/914", "check"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .into();
        assert_eq!(entry_points(AUTHORS_HELPERS), want);
    }

    #[test]
    fn mbpp_prompts_hold_the_entry_points_signature() {
        let ps = parse_jsonl(AUTHORS_HELPERS, "fixture").unwrap();
        assert!(
            ps[0].prompt.starts_with("def count_primes(nums):\n"),
            "{}",
            ps[0].prompt
        );
        // A signature across lines keeps its parameters; a '(' in a test's string is no call.
        assert!(
            ps[1]
                .prompt
                .starts_with("def sort_by_vowels(words,\n                   reverse=False):\n"),
            "{}",
            ps[1].prompt
        );
        let set = &parse_jsonl(AUTHORS_SHAPE, "fixture").unwrap()[6];
        assert!(
            set.prompt.starts_with("def common_items(a, b):\n"),
            "{}",
            set.prompt
        );
        assert!(
            set.prompt.contains(">>> assert set(common_items("),
            "{}",
            set.prompt
        );
        assert_eq!(set.program("", "").check, "check(common_items)\n");
        // A function named as the harness's test function is bound before the test redefines it.
        assert!(ps[3]
            .test
            .contains("def check(candidate, check=check):\n    assert check(4)"));
    }

    fn mbpp_line(code: Option<&str>, tests: &[&str]) -> String {
        let mut v = serde_json::json!({"task_id": 7, "text": "t", "test_list": tests});
        if let Some(c) = code {
            v["code"] = c.into();
        }
        v.to_string()
    }

    #[test]
    fn mbpp_without_code_takes_the_tested_name_that_is_not_a_builtin() {
        let line = mbpp_line(
            None,
            &["assert set(f((1, 2))) == set((1,))", "assert not g(0)"],
        );
        let p = &parse_jsonl(&line, "m").unwrap()[0];
        assert_eq!(p.entry_point, "f");
        assert!(p.prompt.starts_with("def f(*args):"), "{}", p.prompt);
        let line = mbpp_line(None, &["assert math.isclose(sorted([1])[0], 1)"]);
        let e = parse_jsonl(&line, "m").unwrap_err().to_string();
        assert!(
            e.contains("m:1: task MBPP/7: the tests call no function but builtins"),
            "{e}"
        );
    }

    #[test]
    fn mbpp_tests_calling_no_defined_function_are_an_error_naming_the_task() {
        let line = mbpp_line(
            Some("def helper(x):\n    return x\n"),
            &["assert f(1) == 1"],
        );
        let e = parse_jsonl(&line, "MBPP.jsonl").unwrap_err().to_string();
        assert!(
            e.contains("MBPP.jsonl:1: task MBPP/7: the tests call none of the functions the reference code defines (helper)"),
            "{e}"
        );
    }

    fn humaneval_line(id: &str, entry_point: &str) -> String {
        serde_json::json!({"task_id": id, "prompt": "def f():\n", "entry_point": entry_point,
                           "test": "def check(candidate):\n    assert candidate() == 1\n"})
        .to_string()
    }

    #[test]
    fn an_entry_point_that_is_not_a_name_is_refused() {
        // Pasted into `check(...)`, this one made every completion pass.
        for bad in [
            "has_close_elements) if 0 else None #",
            "f()",
            "",
            "1f",
            "def",
            "f g",
            "f\n",
        ] {
            let e = parse_jsonl(&humaneval_line("H/0", bad), "H.jsonl")
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("dataset H.jsonl:1: task H/0: entry_point")
                    && e.contains("not a Python function name"),
                "{bad:?}: {e}"
            );
        }
        for good in ["f", "_f2", "has_close_elements"] {
            assert_eq!(
                parse_jsonl(&humaneval_line("H/0", good), "H").unwrap()[0].entry_point,
                good
            );
        }
    }

    #[test]
    fn empty_datasets_and_repeated_task_ids_are_errors_with_the_line() {
        for empty in ["", "\n  \n"] {
            let e = parse_jsonl(empty, "E.jsonl").unwrap_err().to_string();
            assert!(e.starts_with("dataset E.jsonl: no problems"), "{e}");
        }
        let text = [
            humaneval_line("H/0", "f"),
            humaneval_line("H/1", "f"),
            String::new(),
            humaneval_line("H/0", "g"),
        ]
        .join("\n");
        let e = parse_jsonl(&text, "D.jsonl").unwrap_err().to_string();
        assert!(
            e.starts_with("dataset D.jsonl:4: task id 'H/0' was already given on line 1"),
            "{e}"
        );
    }
}
