//! Diagnostics of one edit: where the clean and perturbed greedy completions part, how strongly
//! the model prefers the clean token there under the perturbed prompt (before and after an
//! edit), how much of the fitted gap an edit leaves, and how large the change of W_down is.

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Device};
use crate::edit::{EditData, Rows};
use crate::error::ModelError;
use crate::hooks::Hooks;
use crate::model::{Logits, Model};

/// The first generated token where two greedy completions differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// Tokens both completions share before it.
    pub index: usize,
    pub clean_token: u32,
    /// The perturbed completion's token there (None: it ended).
    pub pert_token: Option<u32>,
}

/// Where the clean completion and the perturbed one part (None: the same tokens, or the clean
/// one is a prefix of the perturbed one).
pub fn first_divergence(clean: &[u32], pert: &[u32]) -> Option<Divergence> {
    let index = clean.iter().zip(pert).take_while(|(a, b)| a == b).count();
    let clean_token = *clean.get(index)?;
    Some(Divergence {
        index,
        clean_token,
        pert_token: pert.get(index).copied(),
    })
}

/// The decision margin at a divergence: log p(clean token) - log p(perturbed token) after
/// `prompt` followed by the shared part of the completions, teacher-forced with the model as it
/// is now. Positive: the model would take the clean token there. When the perturbed completion
/// ended, the margin is against the model's end-of-sequence token.
pub async fn decision_margin(
    dev: &Device,
    model: &Model,
    prompt: &[u32],
    shared: &[u32],
    div: &Divergence,
) -> Result<f64, ModelError> {
    let seq: Vec<u32> = prompt.iter().chain(shared).copied().collect();
    let mut cache = model.new_cache(dev, vec![0], seq.len())?;
    let out = model.forward(dev, &mut cache, &[seq], &Hooks::default(), Logits::Last)?;
    let logits = out.logits.as_ref().expect("asked for logits");
    let other = div
        .pert_token
        .or_else(|| model.cfg.eos_ids.first().copied())
        .unwrap_or(div.clean_token);
    let lp = dev.token_logprobs(logits, &[div.clean_token]).await?[0] as f64;
    let lo = dev.token_logprobs(logits, &[other]).await?[0] as f64;
    Ok(lp - lo)
}

/// Where two completions of one prompt part: the first token index they differ at, each one's
/// token there (None: that completion ended), and the model's margin log p(a's token) - log p(b's
/// token) after the prompt and the shared tokens (an ended completion scores the end-of-sequence
/// token). Near zero: a near-tie, which any change of summation order may flip.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Parting {
    pub index: usize,
    pub a_token: Option<u32>,
    pub b_token: Option<u32>,
    pub margin: f64,
}

/// The [`Parting`] of completions `a` and `b` of `prompt` (None: the same tokens).
pub async fn parting(
    dev: &Device,
    model: &Model,
    prompt: &[u32],
    a: &[u32],
    b: &[u32],
) -> Result<Option<Parting>, ModelError> {
    // Scored from the side that has a token there (the other may have ended).
    let (div, sign) = match (first_divergence(a, b), first_divergence(b, a)) {
        (Some(d), _) => (d, 1.0),
        (None, Some(d)) => (d, -1.0),
        (None, None) => return Ok(None),
    };
    let shared = &a[..div.index];
    let margin = sign * decision_margin(dev, model, prompt, shared, &div).await?;
    Ok(Some(Parting {
        index: div.index,
        a_token: a.get(div.index).copied(),
        b_token: b.get(div.index).copied(),
        margin,
    }))
}

/// What is left of the gap on the moved rows after an edit: |r + W a - t| / |r + W0 a - t| over
/// all moved rows (0: an exact fit; 1: nothing moved).
pub fn remaining_gap(data: &EditData, w: &[f32]) -> f64 {
    let moved = &data.moved;
    let norm = |rows: &Rows, w: Option<&[f32]>| -> f64 {
        let mut s = 0.0;
        for i in 0..rows.n {
            for j in 0..data.d {
                let h = match w {
                    Some(w) => {
                        let wr = &w[j * data.f..(j + 1) * data.f];
                        let ar = &rows.a[i * data.f..(i + 1) * data.f];
                        rows.r[i * data.d + j] as f64
                            + wr.iter()
                                .zip(ar)
                                .map(|(x, y)| *x as f64 * *y as f64)
                                .sum::<f64>()
                    }
                    None => rows.out[i * data.d + j] as f64,
                };
                s += (h - rows.t[i * data.d + j] as f64).powi(2);
            }
        }
        s.sqrt()
    };
    let before = norm(moved, None);
    if before == 0.0 {
        return 0.0;
    }
    norm(moved, Some(w)) / before
}

/// ||W - W0||_F / ||W0||_F.
pub fn relative_change(w0: &[f32], w: &[f32]) -> f64 {
    let d: f64 = w0
        .iter()
        .zip(w)
        .map(|(a, b)| ((b - a) as f64).powi(2))
        .sum();
    let n: f64 = w0.iter().map(|a| (*a as f64).powi(2)).sum();
    (d / n.max(f64::MIN_POSITIVE)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divergence_is_the_first_differing_token() {
        let d = first_divergence(&[1, 2, 3, 4], &[1, 2, 5]).unwrap();
        assert_eq!((d.index, d.clean_token, d.pert_token), (2, 3, Some(5)));
        let ended = first_divergence(&[1, 2, 3], &[1, 2]).unwrap();
        assert_eq!(ended.pert_token, None);
        assert_eq!(first_divergence(&[1, 2], &[1, 2, 3]), None);
    }

    #[test]
    fn relative_change_is_a_frobenius_ratio() {
        assert!((relative_change(&[3.0, 4.0], &[3.0, 4.5]) - 0.1).abs() < 1e-12);
    }
}
