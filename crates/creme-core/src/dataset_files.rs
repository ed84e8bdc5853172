//! A dataset directory's layout: which file holds which set, and what stands in for a perturbed
//! set the directory lacks (creme's perturbator over the clean prompts, seeded by task number).
//! The caller reads the files, so the CLI reads a directory and a page could fetch them.

use std::collections::BTreeMap;

use crate::dataset::{self, Problem};
use crate::sets::{PerturbationType, SetName};

/// The clean problem files a dataset directory may hold, in the order they are looked for.
pub const CLEAN_FILES: [&str; 3] = ["HumanEval.jsonl", "MBPP.jsonl", "mbpp.jsonl"];

/// The file of a released perturbed set, relative to the directory.
pub fn perturbed_file(t: PerturbationType) -> String {
    format!("perturbed/{t}.jsonl")
}

/// The problems of one set.
#[derive(Clone, Debug)]
pub struct LoadedSet {
    pub problems: Vec<Problem>,
    /// Creme's perturbator made the set: the directory has no file for it.
    pub made_by_creme: bool,
}

/// A dataset directory named `name` (in messages), its files read by `read`: the text of a
/// file given relative to the directory, None where there is no such file.
pub struct DatasetFiles<F> {
    name: String,
    read: F,
}

impl<F: FnMut(&str) -> Result<Option<String>, String>> DatasetFiles<F> {
    pub fn new(name: impl Into<String>, read: F) -> DatasetFiles<F> {
        DatasetFiles {
            name: name.into(),
            read,
        }
    }

    /// The problems of `file` (None: no such file); errors name the file and line.
    pub fn problems_of(&mut self, file: &str) -> Result<Option<Vec<Problem>>, String> {
        let Some(text) = (self.read)(file)? else {
            return Ok(None);
        };
        let source = format!("{}/{file}", self.name);
        dataset::parse_jsonl(&text, &source)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// The clean problems: the first of [`CLEAN_FILES`] there is.
    pub fn clean(&mut self) -> Result<Vec<Problem>, String> {
        for file in CLEAN_FILES {
            if let Some(problems) = self.problems_of(file)? {
                return Ok(problems);
            }
        }
        Err(format!(
            "{} holds no HumanEval.jsonl or MBPP.jsonl",
            self.name
        ))
    }

    /// The released perturbed set of type `t` (None: the directory has none).
    pub fn released(&mut self, t: PerturbationType) -> Result<Option<Vec<Problem>>, String> {
        self.problems_of(&perturbed_file(t))
    }

    /// The problems of `set`: the clean file, or the released perturbed set, else the clean
    /// prompts perturbed by creme's own perturbator.
    pub fn set(&mut self, set: SetName) -> Result<LoadedSet, String> {
        let clean = self.clean()?;
        let Some(t) = set.perturbation() else {
            return Ok(LoadedSet {
                problems: clean,
                made_by_creme: false,
            });
        };
        if let Some(problems) = self.released(t)? {
            return Ok(LoadedSet {
                problems,
                made_by_creme: false,
            });
        }
        let problems = crate::perturb::perturb_problems(&clean, t, 0).map_err(|e| e.to_string())?;
        Ok(LoadedSet {
            problems,
            made_by_creme: true,
        })
    }

    /// The named sets, each cut to the task ids in `tasks` (a comma list) and to its first
    /// `limit` tasks; `made(set)` is told of each set creme's perturbator made.
    pub fn sets(
        &mut self,
        sets: &[SetName],
        tasks: Option<&str>,
        limit: Option<usize>,
        made: &mut dyn FnMut(SetName),
    ) -> Result<BTreeMap<SetName, Vec<Problem>>, String> {
        let mut out = BTreeMap::new();
        for &set in sets {
            let loaded = self.set(set)?;
            if loaded.made_by_creme {
                made(set);
            }
            out.insert(set, dataset::select(loaded.problems, tasks, limit));
        }
        Ok(out)
    }

    /// The clean and the perturbed problem of `task`; `made(set)` is told where creme's
    /// perturbator made the perturbed set.
    pub fn pair(
        &mut self,
        task: &str,
        t: PerturbationType,
        made: &mut dyn FnMut(SetName),
    ) -> Result<(Problem, Problem), String> {
        let set = SetName::Perturbed(t);
        let sets = self.sets(&[SetName::Clean, set], Some(task), None, made)?;
        let one = |s: SetName, place: String| {
            sets[&s]
                .first()
                .cloned()
                .ok_or_else(|| format!("task '{task}' is not in {place}"))
        };
        Ok((
            one(SetName::Clean, self.name.clone())?,
            one(set, format!("the {t} set"))?,
        ))
    }

    /// The note to show where creme's perturbator made `set`.
    pub fn made_note(&self, set: SetName) -> String {
        format!(
            "{} has no perturbed/{set}.jsonl: {set} made by creme's perturbator",
            self.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn line(id: &str, prompt: &str) -> String {
        format!(
            "{{\"task_id\": \"{id}\", \"prompt\": {}, \"entry_point\": \"f\", \"test\": \"def check(f):\\n    pass\\n\"}}\n",
            serde_json::to_string(prompt).unwrap()
        )
    }

    /// A directory of `files`; reading "broken" fails as a disk would.
    fn dir(
        files: &[(&str, String)],
    ) -> DatasetFiles<impl FnMut(&str) -> Result<Option<String>, String>> {
        let files: HashMap<String, String> = files
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        DatasetFiles::new("data", move |name: &str| match name {
            "perturbed/E1.jsonl" if files.contains_key("broken") => {
                Err("reading data/perturbed/E1.jsonl: I/O error".to_string())
            }
            _ => Ok(files.get(name).cloned()),
        })
    }

    const PROMPT: &str =
        "def f(x):\n    \"\"\"Return the sum of the numbers in the given list.\"\"\"\n";

    fn humaneval() -> String {
        line("HumanEval/0", PROMPT) + &line("HumanEval/1", PROMPT)
    }

    #[test]
    fn the_clean_file_is_the_first_there_is_and_none_is_an_error() {
        let mbpp = dir(&[("mbpp.jsonl", line("Mbpp/2", "x"))]).clean().unwrap();
        assert_eq!(mbpp[0].task_id, "Mbpp/2");
        let both = [
            ("HumanEval.jsonl", humaneval()),
            ("mbpp.jsonl", line("Mbpp/2", "x")),
        ];
        assert_eq!(dir(&both).clean().unwrap().len(), 2);
        let e = dir(&[]).clean().unwrap_err();
        assert!(e.contains("data holds no HumanEval.jsonl"), "{e}");
    }

    #[test]
    fn a_released_set_is_read_and_a_missing_one_is_made_by_creme() {
        let released = line("HumanEval/0", "released prompt");
        let mut d = dir(&[
            ("HumanEval.jsonl", humaneval()),
            ("perturbed/C3.jsonl", released),
        ]);
        let c3 = d.set(SetName::Perturbed(PerturbationType::C3)).unwrap();
        assert!(!c3.made_by_creme);
        assert_eq!(c3.problems[0].prompt, "released prompt");
        let e1 = d.set(SetName::Perturbed(PerturbationType::E1)).unwrap();
        assert!(e1.made_by_creme);
        assert_eq!(e1.problems.len(), 2);
        assert!(d
            .made_note(SetName::Perturbed(PerturbationType::E1))
            .contains("E1 made by"));
    }

    #[test]
    fn sets_are_cut_to_the_tasks_and_the_limit_and_name_the_sets_creme_made() {
        let mut d = dir(&[("HumanEval.jsonl", humaneval())]);
        let e1 = SetName::Perturbed(PerturbationType::E1);
        let mut made = Vec::new();
        let sets = d
            .sets(&[SetName::Clean, e1], None, Some(1), &mut |s| made.push(s))
            .unwrap();
        assert_eq!((sets[&SetName::Clean].len(), sets[&e1].len()), (1, 1));
        assert_eq!(made, [e1]);
        let only = d
            .sets(&[SetName::Clean], Some("HumanEval/1"), None, &mut |_| {})
            .unwrap();
        assert_eq!(only[&SetName::Clean][0].task_id, "HumanEval/1");
    }

    #[test]
    fn a_pair_is_found_by_task_and_a_missing_task_is_named() {
        let mut d = dir(&[("HumanEval.jsonl", humaneval())]);
        let (c, p) = d
            .pair("HumanEval/1", PerturbationType::C3, &mut |_| {})
            .unwrap();
        assert_eq!(
            (c.task_id.as_str(), p.task_id.as_str()),
            ("HumanEval/1", "HumanEval/1")
        );
        let e = d
            .pair("HumanEval/9", PerturbationType::C3, &mut |_| {})
            .unwrap_err();
        assert_eq!(e, "task 'HumanEval/9' is not in data");
    }

    #[test]
    fn read_and_parse_errors_name_the_file() {
        let mut broken = dir(&[("HumanEval.jsonl", humaneval()), ("broken", String::new())]);
        let e = broken.released(PerturbationType::E1).unwrap_err();
        assert!(e.contains("data/perturbed/E1.jsonl"), "{e}");
        let mut bad = dir(&[("HumanEval.jsonl", "{not json}\n".into())]);
        let e = bad.clean().unwrap_err();
        assert!(e.contains("data/HumanEval.jsonl:1"), "{e}");
    }
}
