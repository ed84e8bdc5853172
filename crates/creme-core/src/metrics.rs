//! The numbers the CREME paper and ReCode report, from pass/fail outcomes.
//!
//! - pass@k: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k).
//! - RIR (per task, CREME): (after - before) / (orig - before), where `orig` is the clean
//!   prompt's pass rate, `before`/`after` the perturbed prompt's before/after the edit; undefined
//!   (None) when orig <= before: there was nothing to repair.
//! - G-RIR: an edit's RIR averaged over the *other* tasks of its type (where defined), then over
//!   the edited tasks of the type, then over types.
//! - clean deviation: (clean passes after - before) / number of clean tasks.
//! - ReCode (Wang et al. 2022), with `s` perturbed variants per task and sample i of each variant
//!   paired with sample i of the nominal prompt: Robust Pass_s@k counts a sample as correct only
//!   when it is correct on every variant; Robust Drop_s@k = (pass@k - RP_s@k) / pass@k; Robust
//!   Relative_s@k counts samples whose outcome flips under some variant, both directions.

/// Unbiased pass@k for `n` samples of which `c` passed. k > n is clamped to n.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(c <= n, "more passes ({c}) than samples ({n})");
    let k = k.min(n);
    if n == 0 || k == 0 {
        return 0.0;
    }
    if n - c < k {
        return 1.0;
    }
    // 1 - prod_{i = n-c+1}^{n} (1 - k / i), numerically stable.
    1.0 - ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product::<f64>()
}

/// Mean pass@k over tasks, each given as (samples, passes).
pub fn mean_pass_at_k(tasks: &[(usize, usize)], k: usize) -> f64 {
    if tasks.is_empty() {
        return 0.0;
    }
    tasks.iter().map(|&(n, c)| pass_at_k(n, c, k)).sum::<f64>() / tasks.len() as f64
}

/// Relative improvement of one task: None when orig <= before (nothing to repair).
pub fn rir(orig: f64, before: f64, after: f64) -> Option<f64> {
    if orig <= before {
        None
    } else {
        Some((after - before) / (orig - before))
    }
}

/// Mean of the defined values; None when there are none.
pub fn mean_defined(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.into_iter().flatten().collect();
    if v.is_empty() {
        None
    } else {
        Some(v.iter().sum::<f64>() / v.len() as f64)
    }
}

/// One edit's outcome on one task of the edited type.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskOutcome {
    pub task_id: String,
    /// Clean pass rate before the edit.
    pub orig: f64,
    /// Perturbed pass rate before and after the edit.
    pub before: f64,
    pub after: f64,
}

/// The local RIR (the edited task) and the generalisation RIR (mean over the other tasks of the
/// type where RIR is defined) of one edit.
pub fn edit_rirs(edited_task: &str, outcomes: &[TaskOutcome]) -> (Option<f64>, Option<f64>) {
    let local = outcomes
        .iter()
        .find(|o| o.task_id == edited_task)
        .and_then(|o| rir(o.orig, o.before, o.after));
    let general = mean_defined(
        outcomes
            .iter()
            .filter(|o| o.task_id != edited_task)
            .map(|o| rir(o.orig, o.before, o.after)),
    );
    (local, general)
}

/// G-RIR over types: `per_type[t]` holds the generalisation RIRs of the edits made for type t;
/// mean over edits within a type, then over types (types with no defined value are skipped).
pub fn g_rir(per_type: &[Vec<Option<f64>>]) -> Option<f64> {
    mean_defined(
        per_type
            .iter()
            .map(|edits| mean_defined(edits.iter().cloned())),
    )
}

/// Clean deviation: (passes after - passes before) / tasks, from per-task clean pass rates.
pub fn clean_deviation(before: &[f64], after: &[f64]) -> f64 {
    assert_eq!(
        before.len(),
        after.len(),
        "clean pass rates of different task sets"
    );
    if before.is_empty() {
        return 0.0;
    }
    (after.iter().sum::<f64>() - before.iter().sum::<f64>()) / before.len() as f64
}

/// ReCode's robustness metrics for one task. `nominal[i]`: sample i on the clean prompt passed;
/// `variants[v][i]`: sample i on perturbed variant v passed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RobustTask {
    /// pass@k on the nominal prompt.
    pub pass_k: f64,
    /// Robust Pass_s@k: samples correct on every variant.
    pub robust_pass_k: f64,
    /// Robust Relative_s@k: samples whose outcome changes under some variant (both directions).
    pub robust_relative_k: f64,
}

pub fn robust_task(nominal: &[bool], variants: &[Vec<bool>], k: usize) -> RobustTask {
    let n = nominal.len();
    assert!(
        variants.iter().all(|v| v.len() == n),
        "every variant needs as many samples as the nominal prompt"
    );
    let all_pass = |i: usize| variants.iter().all(|v| v[i]);
    let any_pass = |i: usize| variants.iter().any(|v| v[i]);
    let c_nominal = nominal.iter().filter(|&&b| b).count();
    let c_robust = (0..n).filter(|&i| all_pass(i)).count();
    let c_worse = (0..n).filter(|&i| nominal[i] && !all_pass(i)).count();
    let c_better = (0..n).filter(|&i| !nominal[i] && any_pass(i)).count();
    RobustTask {
        pass_k: pass_at_k(n, c_nominal, k),
        robust_pass_k: pass_at_k(n, c_robust, k),
        robust_relative_k: pass_at_k(n, c_worse, k) + pass_at_k(n, c_better, k),
    }
}

/// ReCode's dataset-level numbers: (pass@k, Robust Pass_s@k, Robust Drop_s@k, Robust Relative_s@k).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Robustness {
    pub pass_k: f64,
    pub robust_pass_k: f64,
    /// (pass@k - RP@k) / pass@k; 0 when pass@k is 0.
    pub robust_drop_k: f64,
    pub robust_relative_k: f64,
}

pub fn robustness(tasks: &[RobustTask]) -> Robustness {
    let n = tasks.len().max(1) as f64;
    let pass_k = tasks.iter().map(|t| t.pass_k).sum::<f64>() / n;
    let robust_pass_k = tasks.iter().map(|t| t.robust_pass_k).sum::<f64>() / n;
    let robust_relative_k = tasks.iter().map(|t| t.robust_relative_k).sum::<f64>() / n;
    let robust_drop_k = if pass_k > 0.0 {
        (pass_k - robust_pass_k) / pass_k
    } else {
        0.0
    };
    Robustness {
        pass_k,
        robust_pass_k,
        robust_drop_k,
        robust_relative_k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn pass_at_k_matches_hand_computed_values() {
        // n=10, c=3, k=1: 3/10.
        assert!(close(pass_at_k(10, 3, 1), 0.3));
        // n=10, c=3, k=5: 1 - C(7,5)/C(10,5) = 1 - 21/252.
        assert!(close(pass_at_k(10, 3, 5), 1.0 - 21.0 / 252.0));
        // n=5, c=0 and c=5; n - c < k.
        assert_eq!(pass_at_k(5, 0, 2), 0.0);
        assert_eq!(pass_at_k(5, 5, 1), 1.0);
        assert_eq!(pass_at_k(4, 3, 2), 1.0);
        // greedy
        assert_eq!(pass_at_k(1, 1, 1), 1.0);
        assert_eq!(pass_at_k(1, 0, 1), 0.0);
        assert!(close(
            mean_pass_at_k(&[(1, 1), (1, 0), (1, 1), (1, 1)], 1),
            0.75
        ));
    }

    #[test]
    fn rir_is_undefined_without_anything_to_repair() {
        assert_eq!(rir(1.0, 0.0, 1.0), Some(1.0));
        assert_eq!(rir(1.0, 0.0, 0.0), Some(0.0));
        assert!(close(rir(0.8, 0.2, 0.5).unwrap(), 0.5));
        assert!(close(rir(0.6, 0.2, 0.0).unwrap(), -0.5));
        assert_eq!(rir(0.0, 0.0, 1.0), None);
        assert_eq!(rir(1.0, 1.0, 0.0), None);
    }

    #[test]
    fn g_rir_averages_other_tasks_then_edits_then_types() {
        let o = |id: &str, orig, before, after| TaskOutcome {
            task_id: id.into(),
            orig,
            before,
            after,
        };
        // Edit of task a: a fixed; of the others b is fixed, c not, d was never broken (undefined).
        let outcomes = [
            o("a", 1.0, 0.0, 1.0),
            o("b", 1.0, 0.0, 1.0),
            o("c", 1.0, 0.0, 0.0),
            o("d", 1.0, 1.0, 0.0),
        ];
        let (l, g) = edit_rirs("a", &outcomes);
        assert_eq!(l, Some(1.0));
        assert_eq!(g, Some(0.5));
        // Type X: edits with G 0.5 and 0.0 -> 0.25; type Y: 1.0; type Z: nothing defined -> skipped.
        assert!(close(
            g_rir(&[vec![Some(0.5), Some(0.0)], vec![Some(1.0)], vec![None]]).unwrap(),
            0.625
        ));
        assert_eq!(g_rir(&[vec![None]]), None);
    }

    #[test]
    fn clean_deviation_is_the_change_in_pass_rate() {
        assert!(close(
            clean_deviation(&[1.0, 0.0, 1.0, 0.0], &[1.0, 1.0, 1.0, 1.0]),
            0.5
        ));
        assert!(close(clean_deviation(&[1.0, 1.0], &[0.0, 1.0]), -0.5));
    }

    #[test]
    fn recode_metrics_match_hand_computed_values() {
        // Greedy, s = 2 variants, three tasks.
        // t1: nominal pass, both variants pass -> RP 1, RR 0.
        // t2: nominal pass, one variant fails -> RP 0, RR 1 (worse).
        // t3: nominal fail, one variant passes -> RP 0, RR 1 (better).
        let t1 = robust_task(&[true], &[vec![true], vec![true]], 1);
        let t2 = robust_task(&[true], &[vec![true], vec![false]], 1);
        let t3 = robust_task(&[false], &[vec![true], vec![false]], 1);
        assert_eq!((t1.robust_pass_k, t1.robust_relative_k), (1.0, 0.0));
        assert_eq!((t2.robust_pass_k, t2.robust_relative_k), (0.0, 1.0));
        assert_eq!((t3.robust_pass_k, t3.robust_relative_k), (0.0, 1.0));
        let r = robustness(&[t1, t2, t3]);
        assert!(close(r.pass_k, 2.0 / 3.0));
        assert!(close(r.robust_pass_k, 1.0 / 3.0));
        assert!(close(r.robust_drop_k, 0.5));
        assert!(close(r.robust_relative_k, 2.0 / 3.0));
        // n = 4 samples, one variant: samples 0,1 pass both; sample 2 passes nominal only.
        let t = robust_task(
            &[true, true, true, false],
            &[vec![true, true, false, false]],
            2,
        );
        assert!(close(t.pass_k, 1.0)); // c = 3, n - c = 1 < k
        assert!(close(t.robust_pass_k, 1.0 - 1.0 / 6.0)); // c = 2: 1 - C(2,2)/C(4,2)
        assert!(close(t.robust_relative_k, 0.5)); // worse c = 1: 1 - C(3,2)/C(4,2) = 0.5; better 0
    }
}
