//! `creme perturb`: perturb one prompt, write whole perturbed sets, or compare creme's perturbator
//! with released sets (share of prompts changed, character edit distance).

use std::path::{Path, PathBuf};

use creme_core::dataset::{self, Problem};
use creme_core::perturb::perturb;
use serde_json::json;

use crate::common::{self, Res};

#[derive(clap::Args, Clone)]
pub struct PerturbArgs {
    /// Perturbation types (comma list, or all)
    #[arg(long = "types", default_value = "all")]
    pub types: String,
    /// Perturb this prompt file ('-' for stdin) and print the result
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Seed (with --prompt-file; sets use the task number)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Dataset directory (its clean prompts are perturbed; with --validate, its released sets are compared)
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Write perturbed/<TYPE>.jsonl sets into this directory
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compare with the released sets: share changed and edit-distance distribution per type
    #[arg(long)]
    pub validate: bool,
}

/// Levenshtein distance in characters (common prefix and suffix stripped first: edits are local).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let pre = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a, b) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + (ca != cb) as usize).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn seed_of(task_id: &str) -> u64 {
    task_id
        .rsplit('/')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Changed share and (mean, median, p90) edit distance over the changed prompts.
fn stats(pairs: &[(&str, &str)]) -> (f64, f64, usize, usize) {
    let mut d: Vec<usize> = pairs
        .iter()
        .filter(|(a, b)| a != b)
        .map(|(a, b)| edit_distance(a, b))
        .collect();
    d.sort();
    let share = d.len() as f64 / pairs.len().max(1) as f64;
    if d.is_empty() {
        return (share, 0.0, 0, 0);
    }
    (
        share,
        d.iter().sum::<usize>() as f64 / d.len() as f64,
        d[d.len() / 2],
        d[(d.len() * 9 / 10).min(d.len() - 1)],
    )
}

pub fn run(a: PerturbArgs) -> Res {
    let types: Vec<String> = crate::eval_cmd::parse_types(&a.types)?
        .into_iter()
        .filter_map(|s| s.perturbation())
        .map(|t| t.to_string())
        .collect();
    if let Some(f) = &a.prompt_file {
        let text = if f.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(f).map_err(|e| format!("reading {}: {e}", f.display()))?
        };
        for t in &types {
            if types.len() > 1 {
                println!("== {t}");
            }
            print!("{}", perturb(&text, t, a.seed)?);
        }
        return Ok(());
    }
    let dir = common::dataset_dir(a.dataset.as_deref())?;
    let clean = common::read_problems(&common::clean_file(&dir)?)?;
    if let Some(out) = &a.out {
        let pdir = out.join("perturbed");
        std::fs::create_dir_all(&pdir).map_err(|e| format!("creating {}: {e}", pdir.display()))?;
        for t in &types {
            let mut text = String::new();
            for c in &clean {
                let prompt = perturb(&c.prompt, t, seed_of(&c.task_id))?;
                text.push_str(&serde_json::to_string(&json!({"task_id": c.task_id, "prompt": prompt, "entry_point": c.entry_point, "test": c.test, "original_prompt": c.prompt}))?);
                text.push('\n');
            }
            common::write(&pdir.join(format!("{t}.jsonl")), &text)?;
        }
        println!(
            "wrote {} sets of {} tasks to {}",
            types.len(),
            clean.len(),
            pdir.display()
        );
    }
    if a.validate {
        validate(&dir, &clean, &types)?;
    }
    Ok(())
}

fn validate(dir: &Path, clean: &[Problem], types: &[String]) -> Res {
    println!("| type | changed (released) | changed (creme) | edit distance mean / median / p90 (released) | (creme) |");
    println!("|---|---:|---:|---|---|");
    for t in types {
        let ours: Vec<String> = clean
            .iter()
            .map(|c| perturb(&c.prompt, t, seed_of(&c.task_id)))
            .collect::<Result<_, _>>()?;
        let ours_pairs: Vec<(&str, &str)> = clean
            .iter()
            .zip(&ours)
            .map(|(c, o)| (c.prompt.as_str(), o.as_str()))
            .collect();
        let (s2, m2, med2, p2) = stats(&ours_pairs);
        let file = dir.join("perturbed").join(format!("{t}.jsonl"));
        let released = if file.exists() {
            Some(common::read_problems(&file)?)
        } else {
            None
        };
        let rel = released.as_ref().map(|r| {
            let pairs: Vec<(&str, &str)> = r
                .iter()
                .filter_map(|p| {
                    dataset::find(clean, &p.task_id).map(|c| (c.prompt.as_str(), p.prompt.as_str()))
                })
                .collect();
            stats(&pairs)
        });
        let fmt = |s: Option<(f64, f64, usize, usize)>| {
            s.map(|(_, m, med, p)| format!("{m:.1} / {med} / {p}"))
                .unwrap_or("-".into())
        };
        println!(
            "| {t} | {} | {:.0}% | {} | {} |",
            rel.map(|r| format!("{:.0}%", r.0 * 100.0))
                .unwrap_or("-".into()),
            s2 * 100.0,
            fmt(rel),
            fmt(Some((s2, m2, med2, p2)))
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn edit_distance_counts_character_edits() {
        use super::edit_distance;
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("than", "tha n"), 1);
        assert_eq!(edit_distance("ab", "ba"), 2);
        assert_eq!(edit_distance("", "xyz"), 3);
    }
}
