//! Completions made elsewhere (`creme eval --completions`, or drafts from a file): one JSON
//! object `{set: [completion per task, in the set's order]}` (the oracle's format), or JSONL
//! records `{set, task_id, completion[, sample]}`.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use super::{Judge, SampleRecord};
use crate::dataset::Problem;
use crate::error::ModelError;
use crate::sets::SetName;

/// (set, task, sample): what a record settles.
pub type SampleKey = (SetName, String, usize);

/// Completion text per sample.
pub type Given = HashMap<SampleKey, String>;

/// Parse a completions file; `source` names it in messages, `sets` are the whole sets (a list
/// per set is in the order of the whole set). Sets not in `sets` are skipped; JSONL lines of a
/// set this build does not know are skipped with a warning (returned).
pub fn parse_completions(
    text: &str,
    source: &str,
    sets: &BTreeMap<SetName, Vec<Problem>>,
) -> Result<(Given, Vec<String>), String> {
    // A one-record JSONL file is also a single object, but of strings.
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) if !map.is_empty() && map.values().all(Value::is_array) => {
            Ok((completions_by_set(source, map, sets)?, Vec::new()))
        }
        _ => completions_jsonl(source, text),
    }
}

fn completions_by_set(
    source: &str,
    by_set: serde_json::Map<String, Value>,
    sets: &BTreeMap<SetName, Vec<Problem>>,
) -> Result<Given, String> {
    let mut out = HashMap::new();
    for (name, list) in by_set {
        let Some((set, problems)) = name
            .parse::<SetName>()
            .ok()
            .and_then(|s| Some((s, sets.get(&s)?)))
        else {
            continue;
        };
        let list: Vec<String> = serde_json::from_value(list)
            .map_err(|e| format!("{source}: '{name}' is not a list of strings ({e})"))?;
        if list.len() != problems.len() {
            return Err(format!(
                "{source}: '{name}' has {} completions for {} tasks",
                list.len(),
                problems.len()
            ));
        }
        for (p, c) in problems.iter().zip(list) {
            out.insert((set, p.task_id.clone(), 0), c);
        }
    }
    Ok(out)
}

fn completions_jsonl(source: &str, text: &str) -> Result<(Given, Vec<String>), String> {
    #[derive(serde::Deserialize)]
    struct Line {
        set: String,
        task_id: String,
        completion: String,
        #[serde(default)]
        sample: Option<usize>,
    }
    let (mut out, mut warnings) = (HashMap::new(), Vec::new());
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let g: Line = serde_json::from_str(line).map_err(|e| {
            format!(
                "{source}:{}: not a completion record {{set, task_id, completion[, sample]}} ({e})",
                i + 1
            )
        })?;
        // A set this build does not know is no set asked for: skipped, as other sets are.
        let Ok(set) = g.set.parse::<SetName>() else {
            warnings.push(format!(
                "{source}:{}: unknown set '{}' skipped",
                i + 1,
                g.set
            ));
            continue;
        };
        out.insert((set, g.task_id, g.sample.unwrap_or(0)), g.completion);
    }
    Ok((out, warnings))
}

/// Every sample given for a task of `set` and not yet done, in task then sample order.
pub fn given_todo<'a>(
    set: SetName,
    problems: &'a [Problem],
    given: &'a Given,
    done: &HashSet<SampleKey>,
) -> Vec<(&'a Problem, usize, &'a String)> {
    let mut samples: Vec<usize> = given.keys().filter(|k| k.0 == set).map(|k| k.2).collect();
    samples.sort_unstable();
    samples.dedup();
    problems
        .iter()
        .flat_map(|p| samples.iter().map(move |&s| (p, s)))
        .filter(|(p, s)| !done.contains(&(set, p.task_id.clone(), *s)))
        .filter_map(|(p, s)| given.get(&(set, p.task_id.clone(), s)).map(|c| (p, s, c)))
        .collect()
}

/// Judge the given completions of every set not yet done, 64 programs at a time: each chunk's
/// records go to `sink(set, the set's samples to do, records)` as they are judged.
pub async fn judge_given(
    sets: &BTreeMap<SetName, Vec<Problem>>,
    given: &Given,
    done: &HashSet<SampleKey>,
    judge: &mut impl Judge,
    sink: &mut dyn FnMut(SetName, usize, Vec<SampleRecord>) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    for (set, problems) in sets {
        let todo = given_todo(*set, problems, given, done);
        for chunk in todo.chunks(64) {
            let programs: Vec<_> = chunk
                .iter()
                .map(|(p, _, c)| p.program(&p.prompt, c))
                .collect();
            let judged = judge.judge(&programs).await;
            let records = chunk
                .iter()
                .zip(&judged)
                .map(|((p, sample, c), j)| {
                    SampleRecord::judged(*set, &p.task_id, *sample, c, "given", j)
                })
                .collect();
            sink(*set, todo.len(), records)?;
        }
    }
    Ok(())
}

/// The sets asked for that `given` holds no completion for; an error when it holds none for
/// any of them.
pub fn sets_without_completions(
    given: &Given,
    sets: &BTreeMap<SetName, Vec<Problem>>,
    source: &str,
) -> Result<Vec<SetName>, String> {
    let has = |set: &SetName| given.keys().any(|k| &k.0 == set);
    if !sets.keys().any(has) {
        let names: Vec<String> = sets.keys().map(|s| s.to_string()).collect();
        return Err(format!(
            "{source} holds no completion for the sets asked for ({})",
            names.join(", ")
        ));
    }
    Ok(sets.keys().filter(|s| !has(s)).copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets() -> BTreeMap<SetName, Vec<Problem>> {
        let p = |id: &str| Problem {
            task_id: id.into(),
            prompt: String::new(),
            entry_point: "f".into(),
            test: String::new(),
            original_prompt: None,
        };
        BTreeMap::from([(SetName::Clean, vec![p("T/0"), p("T/1")])])
    }

    #[test]
    fn lists_per_set_and_records_both_read() {
        let (g, w) =
            parse_completions(r#"{"clean": ["a", "b"], "X9": ["c"]}"#, "f", &sets()).unwrap();
        assert_eq!(g[&(SetName::Clean, "T/1".into(), 0)], "b");
        assert_eq!((g.len(), w.len()), (2, 0));
        let jsonl = "{\"set\":\"clean\",\"task_id\":\"T/0\",\"completion\":\"x\",\"sample\":2}\n{\"set\":\"X9\",\"task_id\":\"T/0\",\"completion\":\"y\"}\n";
        let (g, w) = parse_completions(jsonl, "f", &sets()).unwrap();
        assert_eq!(g[&(SetName::Clean, "T/0".into(), 2)], "x");
        assert_eq!(w, ["f:2: unknown set 'X9' skipped"]);
        let sets = sets();
        let todo = given_todo(SetName::Clean, &sets[&SetName::Clean], &g, &HashSet::new());
        assert_eq!(todo.len(), 1);
    }

    #[test]
    fn a_list_of_the_wrong_length_or_type_is_refused() {
        let e = parse_completions(r#"{"clean": ["a"]}"#, "f", &sets()).unwrap_err();
        assert!(e.contains("'clean' has 1 completions for 2 tasks"), "{e}");
        assert!(parse_completions(r#"{"clean": [1, 2]}"#, "f", &sets()).is_err());
        assert!(parse_completions("not json\n", "f", &sets())
            .unwrap_err()
            .contains("f:1:"));
    }
}
