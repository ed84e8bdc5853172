//! The development/confirmation split of the efficacy work (issue 37), fixed before any
//! confirmation run: perturbation types and tasks each go to one of two halves, drawn from a
//! fixed seed. Settings are chosen on the development half only; the confirmation half is run
//! once, with the chosen setting, and reported as it comes out.
//!
//! - **Types** are stratified by family (A, C, D, E, and P with S), so that each half holds every
//!   kind of perturbation: per family, the development half takes half the types (rounded down).
//! - **Tasks** are split too: all types share the same 164 tasks, and a near-tie task is
//!   edit-worthy under many types, so a type split alone would confirm on tasks tuned on.
//! - **What development had already looked at** before the split (docs/efficacy-dev.md) is
//!   pinned to the development half: the type C3, its candidate pairs and the 33-task clean
//!   sample on which the ridge was chosen.

use std::cmp::Reverse;

use crate::cpu::SplitMix64;
use crate::sets::PerturbationType;

/// The seed of the committed split (the number; chosen before drawing).
pub const SPLIT_SEED: u64 = 37;

/// The type development used before the split.
pub const SEEN_TYPES: [PerturbationType; 1] = [PerturbationType::C3];

/// HumanEval task numbers development used before the split: C3's candidate pairs.
const SEEN_C3_CANDIDATES: [usize; 12] = [0, 16, 46, 70, 88, 110, 113, 117, 128, 146, 157, 159];

/// Task ids development used before the split: C3's candidate pairs and the clean sample of
/// every fifth task from HumanEval/1 on which the ridge was chosen.
pub fn seen_tasks() -> Vec<String> {
    let sample = (1..164).step_by(5);
    let mut n: Vec<usize> = SEEN_C3_CANDIDATES.iter().copied().chain(sample).collect();
    n.sort_unstable();
    n.dedup();
    n.into_iter().map(|i| format!("HumanEval/{i}")).collect()
}

/// One half of the split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Half {
    pub types: Vec<PerturbationType>,
    /// Task ids in the order given to [`draw`].
    pub tasks: Vec<String>,
}

impl Half {
    /// The types as a comma list (a `--types` value).
    pub fn type_list(&self) -> String {
        let names: Vec<&str> = self.types.iter().map(|t| t.name()).collect();
        names.join(",")
    }

    /// The task ids as a comma list (a `--tasks` value).
    pub fn task_list(&self) -> String {
        self.tasks.join(",")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub seed: u64,
    pub development: Half,
    pub confirmation: Half,
}

/// The family a type is stratified by (P and S form one: two types each).
fn stratum(t: PerturbationType) -> char {
    match t.family() {
        'S' => 'P',
        f => f,
    }
}

/// FNV-1a of a string: a platform-independent key to seed per-item draws.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// `items` in a seeded order: by a hash of (seed, item), so that an item's place does not
/// depend on which other items are present (a sample of a subset is the subset of the sample).
pub fn seeded_order<'a>(seed: u64, items: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = items.into_iter().collect();
    v.sort_by_key(|s| (SplitMix64(seed ^ fnv1a(s)).next_u64(), *s));
    v
}

/// Take `want` of `pool` for the development half: the `seen` ones first (all of them, even
/// past `want`), then the rest in seeded order. Returns (development, confirmation), each in
/// `pool`'s order.
fn halve<T: Copy + PartialEq>(
    pool: &[T],
    want: usize,
    seen: impl Fn(T) -> bool,
    key: impl Fn(T) -> u64,
) -> (Vec<T>, Vec<T>) {
    let mut order: Vec<T> = pool.to_vec();
    order.sort_by_key(|&x| (Reverse(seen(x)), key(x)));
    let dev: Vec<T> = order[..want.max(pool.iter().filter(|&&x| seen(x)).count())].to_vec();
    let (d, c) = pool.iter().partition(|x| dev.contains(x));
    (d, c)
}

/// Draw the split of `types` and `tasks` (ids) from `seed`, pinning `seen_types` and
/// `seen_tasks` to the development half.
pub fn draw(
    seed: u64,
    types: &[PerturbationType],
    tasks: &[String],
    seen_types: &[PerturbationType],
    seen_tasks: &[String],
) -> Split {
    let mut development = Half {
        types: Vec::new(),
        tasks: Vec::new(),
    };
    let mut confirmation = development.clone();
    let mut strata: Vec<char> = types.iter().map(|&t| stratum(t)).collect();
    strata.dedup();
    for s in strata {
        let members: Vec<PerturbationType> =
            types.iter().copied().filter(|&t| stratum(t) == s).collect();
        let (d, c) = halve(
            &members,
            members.len() / 2,
            |t| seen_types.contains(&t),
            |t| SplitMix64(seed ^ fnv1a(t.name())).next_u64(),
        );
        development.types.extend(d);
        confirmation.types.extend(c);
    }
    let idx: Vec<usize> = (0..tasks.len()).collect();
    let (d, c) = halve(
        &idx,
        tasks.len() / 2,
        |i| seen_tasks.contains(&tasks[i]),
        |i| SplitMix64(seed ^ fnv1a(&tasks[i])).next_u64(),
    );
    development.tasks = d.into_iter().map(|i| tasks[i].clone()).collect();
    confirmation.tasks = c.into_iter().map(|i| tasks[i].clone()).collect();
    Split {
        seed,
        development,
        confirmation,
    }
}

/// The committed split: HumanEval's 164 tasks and the 20 types, [`SPLIT_SEED`], with what
/// development had seen pinned to its half.
pub fn committed() -> Split {
    let tasks: Vec<String> = (0..164).map(|i| format!("HumanEval/{i}")).collect();
    draw(
        SPLIT_SEED,
        &PerturbationType::ALL,
        &tasks,
        &SEEN_TYPES,
        &seen_tasks(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use PerturbationType::*;

    #[test]
    fn the_committed_split_is_the_one_drawn_before_confirmation() {
        let s = committed();
        // Pinned: a change of the draw, the seed or the seen lists would move the confirmation
        // half after the fact, which this test refuses.
        assert_eq!(
            s.development.types,
            vec![A1, C3, D1, D4, E1, E2, E5, P1, S2]
        );
        assert_eq!(
            s.confirmation.types,
            vec![A2, A3, C1, C2, D2, D3, E3, E4, E6, P2, S1]
        );
        assert_eq!(
            (s.development.tasks.len(), s.confirmation.tasks.len()),
            (82, 82)
        );
        let first: Vec<&str> = s
            .confirmation
            .tasks
            .iter()
            .take(6)
            .map(|t| t.as_str())
            .collect();
        assert_eq!(first, CONFIRMATION_HEAD);
    }

    const CONFIRMATION_HEAD: [&str; 6] = [
        "HumanEval/2",
        "HumanEval/5",
        "HumanEval/9",
        "HumanEval/10",
        "HumanEval/12",
        "HumanEval/13",
    ];

    #[test]
    fn halves_are_disjoint_stratified_and_keep_what_was_seen_in_development() {
        let s = committed();
        let seen = seen_tasks();
        assert_eq!(seen.len(), 42);
        for t in &seen {
            assert!(
                s.development.tasks.contains(t),
                "{t} seen but not in development"
            );
        }
        for t in &s.confirmation.tasks {
            assert!(!s.development.tasks.contains(t), "{t} in both halves");
        }
        assert!(s.development.types.contains(&C3));
        for fam in ['A', 'C', 'D', 'E', 'P'] {
            let n = |h: &Half| h.types.iter().filter(|&&t| stratum(t) == fam).count();
            let (d, c) = (n(&s.development), n(&s.confirmation));
            assert!(d >= 1 && c >= 1 && c >= d && c - d <= 1, "{fam}: {d} / {c}");
        }
    }

    #[test]
    fn another_seed_draws_another_split_with_the_same_constraints() {
        let tasks: Vec<String> = (0..20).map(|i| format!("T/{i}")).collect();
        let seen = vec!["T/3".to_string()];
        let a = draw(1, &PerturbationType::ALL, &tasks, &[C3], &seen);
        let b = draw(2, &PerturbationType::ALL, &tasks, &[C3], &seen);
        assert_ne!(a.confirmation.tasks, b.confirmation.tasks);
        for s in [&a, &b] {
            assert!(s.development.tasks.contains(&seen[0]) && s.development.types.contains(&C3));
            assert_eq!(s.development.tasks.len(), 10);
        }
    }

    #[test]
    fn seeded_order_of_a_subset_is_the_subset_of_the_order() {
        let all = ["a", "b", "c", "d", "e", "f", "g"];
        let full = seeded_order(5, all);
        let sub = seeded_order(5, ["g", "c", "a"]);
        let expect: Vec<&str> = full.into_iter().filter(|x| sub.contains(x)).collect();
        assert_eq!(sub, expect);
    }

    #[test]
    fn a_half_lists_its_types_and_tasks_as_flag_values() {
        let h = Half {
            types: vec![PerturbationType::C3, PerturbationType::E1],
            tasks: vec!["HumanEval/1".into(), "HumanEval/7".into()],
        };
        assert_eq!(h.type_list(), "C3,E1");
        assert_eq!(h.task_list(), "HumanEval/1,HumanEval/7");
    }
}
