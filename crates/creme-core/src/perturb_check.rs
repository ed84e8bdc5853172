//! How creme's perturbator compares with released perturbed sets (`creme perturb --validate`):
//! the share of prompts each changes and the character edit distance of the changes.

use crate::dataset::{self, Problem};
use crate::error::ModelError;
use crate::perturb::{perturb, task_seed};
use crate::sets::PerturbationType;

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

/// The share of (before, after) pairs that changed, and the edit distance of the changed ones.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChangeStats {
    pub share: f64,
    pub mean: f64,
    pub median: usize,
    pub p90: usize,
}

pub fn change_stats(pairs: &[(&str, &str)]) -> ChangeStats {
    let mut d: Vec<usize> = pairs
        .iter()
        .filter(|(a, b)| a != b)
        .map(|(a, b)| edit_distance(a, b))
        .collect();
    d.sort();
    let share = d.len() as f64 / pairs.len().max(1) as f64;
    if d.is_empty() {
        return ChangeStats {
            share,
            mean: 0.0,
            median: 0,
            p90: 0,
        };
    }
    ChangeStats {
        share,
        mean: d.iter().sum::<usize>() as f64 / d.len() as f64,
        median: d[d.len() / 2],
        p90: d[(d.len() * 9 / 10).min(d.len() - 1)],
    }
}

/// The markdown table of `creme perturb --validate`: per type, the released set (where there is
/// one) beside creme's perturbation of the clean prompts.
pub fn validation_table(
    clean: &[Problem],
    types: &[(PerturbationType, Option<Vec<Problem>>)],
) -> Result<String, ModelError> {
    let mut md = String::from("| type | changed (released) | changed (creme) | edit distance mean / median / p90 (released) | (creme) |\n|---|---:|---:|---|---|\n");
    let distances = |s: ChangeStats| format!("{:.1} / {} / {}", s.mean, s.median, s.p90);
    for (t, released) in types {
        let ours: Vec<String> = clean
            .iter()
            .map(|c| perturb(&c.prompt, t.name(), task_seed(&c.task_id)))
            .collect::<Result<_, _>>()?;
        let ours_pairs: Vec<(&str, &str)> = clean
            .iter()
            .zip(&ours)
            .map(|(c, o)| (c.prompt.as_str(), o.as_str()))
            .collect();
        let mine = change_stats(&ours_pairs);
        let rel = released.as_ref().map(|r| {
            let pairs: Vec<(&str, &str)> = r
                .iter()
                .filter_map(|p| {
                    dataset::find(clean, &p.task_id).map(|c| (c.prompt.as_str(), p.prompt.as_str()))
                })
                .collect();
            change_stats(&pairs)
        });
        md += &format!(
            "| {t} | {} | {:.0}% | {} | {} |\n",
            rel.map_or("-".into(), |r| format!("{:.0}%", r.share * 100.0)),
            mine.share * 100.0,
            rel.map_or("-".into(), distances),
            distances(mine)
        );
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_character_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("than", "tha n"), 1);
        assert_eq!(edit_distance("ab", "ba"), 2);
        assert_eq!(edit_distance("", "xyz"), 3);
    }

    #[test]
    fn change_stats_cover_the_changed_pairs_only() {
        let s = change_stats(&[("a", "a"), ("ab", "ba"), ("abc", "abd")]);
        assert_eq!((s.median, s.p90), (2, 2));
        assert!((s.share - 2.0 / 3.0).abs() < 1e-12 && (s.mean - 1.5).abs() < 1e-12);
    }
}
