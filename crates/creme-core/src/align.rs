//! Token alignment of a clean prompt and its perturbed twin, by diff: the common prefix (equal
//! tokens from the start), the common suffix (equal tokens from the end) and, between them, the
//! changed span of each prompt, which has no twin.
//!
//! End alignment (both prompts left-padded to one frame) pairs the rows of the suffix correctly,
//! but before the change it pairs shifted tokens of identical content whenever the lengths
//! differ, and pads with tokens. The edit's prompt rows and the aligned trace use this instead.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alignment {
    pub clean_len: usize,
    pub pert_len: usize,
    /// Tokens equal from the start.
    pub prefix: usize,
    /// Tokens equal from the end, not overlapping the prefix.
    pub suffix: usize,
}

impl Alignment {
    pub fn of(clean: &[u32], pert: &[u32]) -> Alignment {
        let prefix = clean.iter().zip(pert).take_while(|(a, b)| a == b).count();
        let room = clean.len().min(pert.len()) - prefix;
        let suffix = clean
            .iter()
            .rev()
            .zip(pert.iter().rev())
            .take(room)
            .take_while(|(a, b)| a == b)
            .count();
        Alignment {
            clean_len: clean.len(),
            pert_len: pert.len(),
            prefix,
            suffix,
        }
    }

    /// The perturbed prompt's changed span (token indices), which has no clean twin.
    pub fn pert_span(&self) -> std::ops::Range<usize> {
        self.prefix..self.pert_len - self.suffix
    }

    /// The clean prompt's changed span (token indices).
    pub fn clean_span(&self) -> std::ops::Range<usize> {
        self.prefix..self.clean_len - self.suffix
    }

    /// (perturbed index, clean index) of every suffix token, in order.
    pub fn suffix_pairs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.suffix).map(|k| {
            (
                self.pert_len - self.suffix + k,
                self.clean_len - self.suffix + k,
            )
        })
    }

    /// The clean twin of perturbed token `j`: itself in the prefix, its end-aligned partner in
    /// the suffix, none in the changed span.
    pub fn clean_twin(&self, j: usize) -> Option<usize> {
        if j < self.prefix {
            Some(j)
        } else if j >= self.pert_len - self.suffix && j < self.pert_len {
            Some(j + self.clean_len - self.pert_len)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_token_leaves_prefix_and_suffix_paired() {
        let a = Alignment::of(&[1, 2, 3, 4, 5], &[1, 2, 4, 5]);
        assert_eq!((a.prefix, a.suffix), (2, 2));
        assert_eq!(a.pert_span(), 2..2);
        assert_eq!(a.clean_span(), 2..3);
        assert_eq!(a.suffix_pairs().collect::<Vec<_>>(), vec![(2, 3), (3, 4)]);
        assert_eq!(
            (0..4).map(|j| a.clean_twin(j)).collect::<Vec<_>>(),
            vec![Some(0), Some(1), Some(3), Some(4)]
        );
    }

    #[test]
    fn a_replaced_span_has_no_twin_and_repeats_do_not_overlap() {
        let a = Alignment::of(&[7, 1, 2, 9], &[7, 5, 5, 5, 9]);
        assert_eq!((a.prefix, a.suffix), (1, 1));
        assert_eq!(a.pert_span(), 1..4);
        assert_eq!(a.clean_twin(2), None);
        assert_eq!(a.clean_twin(4), Some(3));
        // Identical prompts: all prefix, nothing left for the suffix.
        let same = Alignment::of(&[3, 3, 3], &[3, 3, 3]);
        assert_eq!((same.prefix, same.suffix), (3, 0));
        // A repeated token at the seam is counted once.
        let rep = Alignment::of(&[4, 4], &[4, 4, 4]);
        assert_eq!(rep.prefix + rep.suffix, 2);
    }
}
