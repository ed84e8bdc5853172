//! Statistics for the experiment's controls: is an edit's effect bigger than what a sham or
//! random edit of the same size does, and how sure are we?
//!
//! At 0.5B and greedy decoding many pass/fail flips are near-tie noise in both directions, so a
//! repair rate means little without an interval and a paired test against a control. This module
//! gives the pieces a report needs:
//! - [`clopper_pearson`]: a pass (or repair) rate with its exact binomial interval;
//! - [`mcnemar_exact`] / [`mcnemar_paired`]: does the setting fix tasks the control does not
//!   (paired outcomes on the same tasks), two-sided exact test on the discordant pairs;
//! - [`holm`]: Holm-Bonferroni adjusted p-values when several settings or types are tested;
//! - [`mean_interval`]: a mean (e.g. RIR over tasks) with its Student-t interval.
//!
//! The distributions come from `statrs` (Beta, Binomial, Student's t); nothing here hand-rolls a
//! special function. All results are serde structs so they can go into typed report records.

use serde::{Deserialize, Serialize};
use statrs::distribution::{Beta, Binomial, ContinuousCDF, DiscreteCDF, StudentsT};
use thiserror::Error;

/// Bad input to a statistic: says what was wrong.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum StatsError {
    /// A confidence level must lie strictly between 0 and 1.
    #[error("confidence level {0} is not strictly between 0 and 1")]
    InvalidConfidence(f64),
    /// More successes than trials.
    #[error("{k} successes out of {n} trials")]
    CountExceedsTotal { k: u64, n: u64 },
    /// Paired outcomes must cover the same tasks.
    #[error("paired outcomes of unequal length: setting has {setting}, control has {control}")]
    UnequalLengths { setting: usize, control: usize },
    /// A p-value outside [0, 1] or NaN.
    #[error("p-value {value} at index {index} is not in [0, 1]")]
    InvalidPValue { index: usize, value: f64 },
    /// A NaN or infinite value where a finite number is needed.
    #[error("value {value} at index {index} is not finite")]
    NonFinite { index: usize, value: f64 },
}

/// A confidence level in (0, 1), e.g. 0.95 for a 95% interval. Checked once at construction (and
/// when read from a record), so the functions that take one cannot be handed a bad level.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Confidence(f64);

impl Confidence {
    /// 95%, the level the reports use unless told otherwise.
    pub const NINETY_FIVE: Confidence = Confidence(0.95);

    /// A level strictly between 0 and 1.
    pub fn new(level: f64) -> Result<Self, StatsError> {
        if level > 0.0 && level < 1.0 {
            Ok(Confidence(level))
        } else {
            Err(StatsError::InvalidConfidence(level))
        }
    }

    /// The level, e.g. 0.95.
    pub fn level(self) -> f64 {
        self.0
    }

    /// The two-sided tail mass on each side, (1 - level) / 2.
    fn tail(self) -> f64 {
        (1.0 - self.0) / 2.0
    }
}

impl Default for Confidence {
    fn default() -> Self {
        Confidence::NINETY_FIVE
    }
}

impl TryFrom<f64> for Confidence {
    type Error = StatsError;
    fn try_from(level: f64) -> Result<Self, StatsError> {
        Confidence::new(level)
    }
}

impl From<Confidence> for f64 {
    fn from(c: Confidence) -> f64 {
        c.0
    }
}

/// A proportion k/n (e.g. tasks repaired out of tasks edited) with a two-sided interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proportion {
    /// Successes.
    pub k: u64,
    /// Trials (> 0).
    pub n: u64,
    /// k / n.
    pub estimate: f64,
    /// Lower end of the interval (0 when k = 0).
    pub lo: f64,
    /// Upper end of the interval (1 when k = n).
    pub hi: f64,
    /// The interval's confidence level.
    pub confidence: Confidence,
}

/// The exact (Clopper-Pearson) binomial interval for k successes in n trials: the quantiles
/// Beta(k, n-k+1) at (1-level)/2 and Beta(k+1, n-k) at (1+level)/2, with lo = 0 when k = 0 and
/// hi = 1 when k = n. Conservative (coverage at least the level), which is what a small set of
/// tasks calls for.
///
/// `Ok(None)` when n = 0: there is no proportion to estimate. An error when k > n.
pub fn clopper_pearson(
    k: u64,
    n: u64,
    confidence: Confidence,
) -> Result<Option<Proportion>, StatsError> {
    if k > n {
        return Err(StatsError::CountExceedsTotal { k, n });
    }
    if n == 0 {
        return Ok(None);
    }
    let tail = confidence.tail();
    let (kf, nf) = (k as f64, n as f64);
    // Both shapes are >= 1 in each branch, so Beta::new cannot fail.
    let lo = if k == 0 {
        0.0
    } else {
        Beta::new(kf, nf - kf + 1.0)
            .expect("shapes are positive")
            .inverse_cdf(tail)
    };
    let hi = if k == n {
        1.0
    } else {
        Beta::new(kf + 1.0, nf - kf)
            .expect("shapes are positive")
            .inverse_cdf(1.0 - tail)
    };
    Ok(Some(Proportion {
        k,
        n,
        estimate: kf / nf,
        lo,
        hi,
        confidence,
    }))
}

/// The discordant pairs of two paired outcome lists over the same tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscordantPairs {
    /// Tasks the setting fixes (passes) and the control does not.
    pub b: u64,
    /// Tasks the control fixes and the setting does not.
    pub c: u64,
}

/// Counts the discordant pairs of `setting[i]` against `control[i]` (true = the task passes /
/// was repaired). An error when the two lists have different lengths: they must be the same
/// tasks in the same order.
pub fn discordant_pairs(setting: &[bool], control: &[bool]) -> Result<DiscordantPairs, StatsError> {
    if setting.len() != control.len() {
        return Err(StatsError::UnequalLengths {
            setting: setting.len(),
            control: control.len(),
        });
    }
    let mut pairs = DiscordantPairs::default();
    for (&s, &c) in setting.iter().zip(control) {
        match (s, c) {
            (true, false) => pairs.b += 1,
            (false, true) => pairs.c += 1,
            _ => {}
        }
    }
    Ok(pairs)
}

/// Two-sided exact McNemar p-value on the discordant pairs: under "the setting does no better
/// than the control" each discordant pair goes either way with probability 1/2, so
/// p = min(1, 2 * P[Binom(b + c, 1/2) <= min(b, c)]). p = 1 when there are no discordant pairs
/// (b + c = 0): no evidence either way.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let binom = Binomial::new(0.5, n).expect("p = 1/2 is a valid probability");
    (2.0 * binom.cdf(b.min(c))).min(1.0)
}

/// A paired comparison of a setting against a control on the same tasks.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct McNemar {
    /// The discordant pairs (b: setting only, c: control only).
    pub pairs: DiscordantPairs,
    /// Two-sided exact p-value ([`mcnemar_exact`]).
    pub p_value: f64,
}

/// Counts the discordant pairs of two paired outcome lists and tests them ([`mcnemar_exact`]).
pub fn mcnemar_paired(setting: &[bool], control: &[bool]) -> Result<McNemar, StatsError> {
    let pairs = discordant_pairs(setting, control)?;
    Ok(McNemar {
        pairs,
        p_value: mcnemar_exact(pairs.b, pairs.c),
    })
}

/// Holm-Bonferroni adjusted p-values, in the input order: with m tests sorted ascending,
/// adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) * p_(j)) (1-based ranks). Controls the
/// family-wise error rate at any level without assuming independence; reject test i at level
/// alpha when its adjusted value is <= alpha. The result is monotone in the raw p-values (equal
/// raw values get equal adjusted values) and capped at 1. An empty input gives an empty output;
/// an error for a NaN or a value outside [0, 1].
pub fn holm(p_values: &[f64]) -> Result<Vec<f64>, StatsError> {
    if let Some((index, &value)) = p_values
        .iter()
        .enumerate()
        .find(|(_, p)| !(0.0..=1.0).contains(*p))
    {
        return Err(StatsError::InvalidPValue { index, value });
    }
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    // All values are in [0, 1] (no NaN), so the comparison is total.
    order.sort_by(|&i, &j| p_values[i].partial_cmp(&p_values[j]).expect("no NaN"));
    let mut adjusted = vec![0.0; m];
    let mut running_max: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        let scaled = ((m - rank) as f64 * p_values[i]).min(1.0);
        running_max = running_max.max(scaled);
        adjusted[i] = running_max;
    }
    Ok(adjusted)
}

/// A mean with its Student-t interval (e.g. RIR over tasks, or a per-seed score).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeanInterval {
    /// Number of values (> 0).
    pub n: usize,
    /// Sample mean.
    pub mean: f64,
    /// Sample standard deviation (n - 1 denominator); None when n < 2.
    pub sd: Option<f64>,
    /// Lower and upper ends of mean -/+ t_{n-1} * sd / sqrt(n); None when n < 2 (one value has no
    /// spread to estimate). When all values are equal the interval is [mean, mean].
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    /// The interval's confidence level.
    pub confidence: Confidence,
}

/// The mean of `values` and its two-sided Student-t interval with n - 1 degrees of freedom.
/// `Ok(None)` for no values; for one value the mean has no interval (`lo`/`hi`/`sd` are None).
/// An error for a NaN or infinite value.
pub fn mean_interval(
    values: &[f64],
    confidence: Confidence,
) -> Result<Option<MeanInterval>, StatsError> {
    if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(StatsError::NonFinite { index, value });
    }
    let n = values.len();
    if n == 0 {
        return Ok(None);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return Ok(Some(MeanInterval {
            n,
            mean,
            sd: None,
            lo: None,
            hi: None,
            confidence,
        }));
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let sd = var.sqrt();
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64)
        .expect("n - 1 >= 1 degrees of freedom")
        .inverse_cdf(1.0 - confidence.tail());
    let half = t * sd / (n as f64).sqrt();
    Ok(Some(MeanInterval {
        n,
        mean,
        sd: Some(sd),
        lo: Some(mean - half),
        hi: Some(mean + half),
        confidence,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values below were computed with SciPy 1.17.1 (NumPy 2.4.6, Python 3 venv), an
    // implementation independent of statrs; the script is quoted in each comment.

    fn close(got: f64, want: f64, tol: f64, what: &str) {
        assert!(
            (got - want).abs() <= tol,
            "{what}: got {got:.17}, want {want:.17} (diff {:e})",
            (got - want).abs()
        );
    }

    fn conf(level: f64) -> Confidence {
        Confidence::new(level).unwrap()
    }

    #[test]
    fn clopper_pearson_matches_scipy() {
        // scipy.stats.binomtest(k, n).proportion_ci(confidence_level=c, method='exact')
        let cases: &[(u64, u64, f64, f64, f64)] = &[
            (0, 10, 0.95, 0.0, 0.30849710781876294),
            (10, 10, 0.95, 0.6915028921812371, 1.0),
            (1, 11, 0.95, 0.002298972213815338, 0.4127799169883827),
            (3, 11, 0.95, 0.06021773417275722, 0.6097425595724212),
            (0, 1, 0.95, 0.0, 0.975),
            (1, 1, 0.95, 0.025000000000000022, 1.0),
            (5, 20, 0.90, 0.10408083591013606, 0.45558240400174993),
            (132, 242, 0.95, 0.48042604107802034, 0.6093559845391913),
            (7, 164, 0.99, 0.012575751289423932, 0.10127929091029768),
            (1, 2, 0.5, 0.13397459621556138, 0.8660254037844386),
        ];
        for &(k, n, c, lo, hi) in cases {
            let p = clopper_pearson(k, n, conf(c)).unwrap().unwrap();
            let what = format!("{k}/{n} at {c}");
            assert_eq!((p.k, p.n), (k, n));
            close(p.estimate, k as f64 / n as f64, 0.0, &what);
            close(p.lo, lo, 1e-12, &format!("{what} lo"));
            close(p.hi, hi, 1e-12, &format!("{what} hi"));
            assert_eq!(p.confidence.level(), c);
        }
    }

    #[test]
    fn clopper_pearson_edges() {
        // k = 0 and k = n pin the open end exactly.
        let zero = clopper_pearson(0, 7, Confidence::NINETY_FIVE)
            .unwrap()
            .unwrap();
        assert_eq!((zero.lo, zero.estimate), (0.0, 0.0));
        let all = clopper_pearson(7, 7, Confidence::NINETY_FIVE)
            .unwrap()
            .unwrap();
        assert_eq!((all.hi, all.estimate), (1.0, 1.0));
        // No trials: no proportion.
        assert_eq!(clopper_pearson(0, 0, Confidence::NINETY_FIVE), Ok(None));
        assert_eq!(
            clopper_pearson(3, 2, Confidence::NINETY_FIVE),
            Err(StatsError::CountExceedsTotal { k: 3, n: 2 })
        );
    }

    #[test]
    fn confidence_is_checked() {
        for bad in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
            assert!(Confidence::new(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(Confidence::default().level(), 0.95);
        // A record with a bad level is refused when read.
        assert!(serde_json::from_str::<Confidence>("1.2").is_err());
        assert_eq!(
            serde_json::from_str::<Confidence>("0.9").unwrap().level(),
            0.9
        );
    }

    #[test]
    fn mcnemar_matches_scipy() {
        // scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue
        let cases: &[(u64, u64, f64)] = &[
            (1, 0, 1.0),
            (0, 1, 1.0),
            (5, 5, 1.0),
            (6, 1, 0.125),
            (1, 6, 0.125),
            (10, 2, 0.03857421875),
            (132, 110, 0.17691589201058056),
            (0, 7, 0.015625),
            (20, 3, 0.00048828125),
            (3, 4, 1.0),
        ];
        for &(b, c, p) in cases {
            close(mcnemar_exact(b, c), p, 1e-12, &format!("b={b} c={c}"));
        }
        // No discordant pairs: no evidence either way.
        assert_eq!(mcnemar_exact(0, 0), 1.0);
    }

    #[test]
    fn mcnemar_paired_counts_discordant_pairs() {
        let setting = [true, true, false, false, true, true, true, true];
        let control = [true, false, true, false, false, false, false, false];
        let m = mcnemar_paired(&setting, &control).unwrap();
        assert_eq!(m.pairs, DiscordantPairs { b: 5, c: 1 });
        // scipy.stats.binomtest(1, 6, 0.5).pvalue
        close(m.p_value, 0.21875, 1e-12, "b=5 c=1");
        assert_eq!(
            discordant_pairs(&[true], &[true, false]),
            Err(StatsError::UnequalLengths {
                setting: 1,
                control: 2
            })
        );
        assert_eq!(
            discordant_pairs(&[], &[]),
            Ok(DiscordantPairs { b: 0, c: 0 })
        );
    }

    #[test]
    fn holm_matches_reference() {
        // Holm by hand in Python (sort ascending; running max of min(1, (m - rank) * p)),
        // independent of this code; statsmodels is not used.
        let cases: &[(&[f64], &[f64])] = &[
            (&[0.01, 0.04, 0.03, 0.005], &[0.03, 0.06, 0.06, 0.02]),
            // ties get equal adjusted values
            (&[0.01, 0.01, 0.04], &[0.03, 0.03, 0.04]),
            (&[0.5, 0.2, 0.9], &[1.0, 0.6000000000000001, 1.0]),
            (&[0.3], &[0.3]),
            (&[0.02, 0.02, 0.02, 0.02], &[0.08, 0.08, 0.08, 0.08]),
            (
                &[0.001, 0.6, 0.02, 0.6, 0.04],
                &[0.005, 1.0, 0.08, 1.0, 0.12],
            ),
        ];
        for &(p, want) in cases {
            let got = holm(p).unwrap();
            assert_eq!(got.len(), want.len());
            for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                close(g, w, 1e-15, &format!("holm {p:?}[{i}]"));
            }
        }
        assert_eq!(holm(&[]), Ok(vec![]));
        assert!(matches!(
            holm(&[0.1, f64::NAN]),
            Err(StatsError::InvalidPValue { index: 1, .. })
        ));
        assert!(matches!(
            holm(&[0.1, 1.5]),
            Err(StatsError::InvalidPValue { index: 1, .. })
        ));
    }

    #[test]
    fn holm_is_monotone_and_capped() {
        let p = [0.9, 0.001, 0.3, 0.02, 0.02, 0.7, 0.05];
        let adj = holm(&p).unwrap();
        for i in 0..p.len() {
            assert!(adj[i] >= p[i] && adj[i] <= 1.0);
            for j in 0..p.len() {
                if p[i] <= p[j] {
                    assert!(
                        adj[i] <= adj[j],
                        "p[{i}] <= p[{j}] but adjusted {} > {}",
                        adj[i],
                        adj[j]
                    );
                }
            }
        }
    }

    #[test]
    fn mean_interval_matches_scipy() {
        // scipy.stats.t.interval(c, n - 1, loc=mean, scale=scipy.stats.sem(values));
        // sd = numpy.std(values, ddof=1)
        // (values, confidence, mean, sd, lo, hi)
        type Case = (&'static [f64], f64, f64, f64, f64, f64);
        let cases: &[Case] = &[
            (
                &[1.0, 2.0, 3.0, 4.0],
                0.95,
                2.5,
                1.2909944487358056,
                0.4457397432394794,
                4.554260256760521,
            ),
            (
                &[0.5, -0.25],
                0.95,
                0.125,
                0.5303300858899106,
                -4.63982677606551,
                4.88982677606551,
            ),
            (
                &[0.1, 0.4, 0.35, 0.8, -0.2, 0.0, 1.0],
                0.9,
                0.35000000000000003,
                0.4310839052125854,
                0.03338908484956432,
                0.6666109151504356,
            ),
            (
                &[2.5, 2.5, 3.5],
                0.99,
                2.8333333333333335,
                0.5773502691896258,
                -0.47494773363942944,
                6.141614400306096,
            ),
        ];
        for &(values, c, mean, sd, lo, hi) in cases {
            let m = mean_interval(values, conf(c)).unwrap().unwrap();
            let what = format!("{values:?} at {c}");
            assert_eq!(m.n, values.len());
            close(m.mean, mean, 1e-14, &what);
            close(m.sd.unwrap(), sd, 1e-14, &format!("{what} sd"));
            close(m.lo.unwrap(), lo, 1e-10, &format!("{what} lo"));
            close(m.hi.unwrap(), hi, 1e-10, &format!("{what} hi"));
        }
    }

    #[test]
    fn mean_interval_edges() {
        assert_eq!(mean_interval(&[], Confidence::NINETY_FIVE), Ok(None));
        let one = mean_interval(&[0.4], Confidence::NINETY_FIVE)
            .unwrap()
            .unwrap();
        assert_eq!(
            (one.n, one.mean, one.sd, one.lo, one.hi),
            (1, 0.4, None, None, None)
        );
        let flat = mean_interval(&[2.0, 2.0, 2.0], Confidence::NINETY_FIVE)
            .unwrap()
            .unwrap();
        assert_eq!(
            (flat.sd, flat.lo, flat.hi),
            (Some(0.0), Some(2.0), Some(2.0))
        );
        assert!(matches!(
            mean_interval(&[1.0, f64::INFINITY], Confidence::NINETY_FIVE),
            Err(StatsError::NonFinite { index: 1, .. })
        ));
    }

    #[test]
    fn results_round_trip_through_serde() {
        let p = clopper_pearson(3, 11, Confidence::NINETY_FIVE)
            .unwrap()
            .unwrap();
        let back: Proportion = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let m = mcnemar_paired(&[true, false, true], &[false, false, false]).unwrap();
        let back: McNemar = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        let mi = mean_interval(&[1.0, 2.0, 4.0], conf(0.9)).unwrap().unwrap();
        let json = serde_json::to_string(&mi).unwrap();
        assert!(json.contains("\"confidence\":0.9"), "{json}");
        let back: MeanInterval = serde_json::from_str(&json).unwrap();
        // serde_json (without its float_roundtrip feature) may read a float back one ulp off.
        assert_eq!((back.n, back.confidence), (mi.n, mi.confidence));
        for (got, want) in [
            (back.mean, mi.mean),
            (back.sd.unwrap(), mi.sd.unwrap()),
            (back.lo.unwrap(), mi.lo.unwrap()),
            (back.hi.unwrap(), mi.hi.unwrap()),
        ] {
            close(got, want, 4.0 * f64::EPSILON * want.abs(), "round trip");
        }
        let single = mean_interval(&[1.0], conf(0.9)).unwrap().unwrap();
        let back: MeanInterval =
            serde_json::from_str(&serde_json::to_string(&single).unwrap()).unwrap();
        assert_eq!(back, single);
    }
}
