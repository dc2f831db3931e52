//! The sequential tests the detectors use. Both stay valid when looked at after every window:
//! the chance that a candidate as good as its baseline is *ever* flagged is at most `alpha`.
//!
//! **Rates of rare events** (crashes per session): [`log_rate_ratio_mixture`]. Given the crashes
//! seen in a candidate and its baseline, and the sessions of each, a crash falls in the candidate
//! with probability `π = n_c / (n_c + n_b)` if both crash alike, and `π_r = r n_c / (r n_c + n_b)`
//! if the candidate crashes `r` times as often. The likelihood ratio of the crashes' split,
//! `Λ_r = (π_r/π)^x_c ((1−π_r)/(1−π))^x_b`, is Wald's sequential probability ratio for the
//! alternative `r`; conditioning on the total crashes makes it account for the baseline's own
//! sampling error, and it is exact for small counts. An equal-weight mixture over a grid of
//! ratios (from the smallest effect worth reporting up to 16 times it) is again a martingale
//! under "no difference", so by Ville's inequality `P(ever Λ ≥ 1/α) ≤ α`; the mixture costs
//! `ln(grid size)` against knowing the true ratio in advance.
//!
//! **Proportions that are not rare** (the share of samples above a percentile):
//! [`log_mixture_ratio`], a mixture sequential probability ratio test (mSPRT) for the
//! difference of two proportions, in its normal approximation.
//!
//! Johari, Pekelis and Walsh ("Always valid inference", 2017) show that with a normal mixing
//! distribution `N(0, τ²)` over the difference `θ = p_candidate − p_baseline`, the mixture
//! likelihood ratio after `n` observations is
//!
//! ```text
//! Λ = sqrt(V / (V + τ²)) · exp(τ² θ̂² / (2 V (V + τ²)))
//! ```
//!
//! where `θ̂` is the observed difference and `V` its variance. Under the null hypothesis
//! (`θ = 0`) `Λ` is a martingale, so by Ville's inequality the chance that it *ever* exceeds
//! `1/α` is at most `α`, however often it is looked at: a detector may evaluate after every
//! window and stop at the first crossing without inflating its false-positive rate. That is the
//! property a fixed-sample z-test lacks (peeking at it every minute for an hour multiplies its
//! error rate several times).
//!
//! `τ` is the difference the test is most sensitive to (`perf_prior_effect` for performance).
//! The statistic reported is `ln Λ`, compared with `ln(1/α)`.

/// Counts of one proportion: `events` out of `trials`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Proportion {
    /// Successes (crashed sessions, for example).
    pub events: i64,
    /// Trials (sessions).
    pub trials: i64,
}

impl Proportion {
    /// The observed rate, or 0 with no trials.
    pub fn rate(self) -> f64 {
        if self.trials <= 0 {
            0.0
        } else {
            self.events as f64 / self.trials as f64
        }
    }
}

/// `ln Λ` of the mSPRT for `candidate − baseline > 0`, with mixing standard deviation `tau`.
///
/// One-sided: a candidate that is not worse than its baseline scores 0. The variance is pooled
/// under the null hypothesis (both groups share one rate), floored so that zero events in both
/// groups do not divide by zero.
pub fn log_mixture_ratio(candidate: Proportion, baseline: Proportion, tau: f64) -> f64 {
    if candidate.trials <= 0 || baseline.trials <= 0 || tau <= 0.0 {
        return 0.0;
    }
    let theta = candidate.rate() - baseline.rate();
    if theta <= 0.0 {
        return 0.0;
    }
    let pooled =
        (candidate.events + baseline.events) as f64 / (candidate.trials + baseline.trials) as f64;
    let pooled = pooled.clamp(1e-9, 1.0 - 1e-9);
    let v =
        pooled * (1.0 - pooled) * (1.0 / candidate.trials as f64 + 1.0 / baseline.trials as f64);
    let t2 = tau * tau;
    0.5 * (v / (v + t2)).ln() + t2 * theta * theta / (2.0 * v * (v + t2))
}

/// `ln Λ` of the equal-weight mixture over `ratios` of Wald's SPRTs for "the candidate's rate is
/// `r` times the baseline's", on the split of events between candidate and baseline given their
/// trials. One-sided: ratios at or below 1 are not in the grid, and no evidence scores 0.
pub fn log_rate_ratio_mixture(candidate: Proportion, baseline: Proportion, ratios: &[f64]) -> f64 {
    if candidate.trials <= 0 || baseline.trials <= 0 || ratios.is_empty() {
        return 0.0;
    }
    let (n_c, n_b) = (candidate.trials as f64, baseline.trials as f64);
    let (x_c, x_b) = (candidate.events as f64, baseline.events as f64);
    let pi = n_c / (n_c + n_b);
    let logs: Vec<f64> = ratios
        .iter()
        .map(|&r| {
            let pi_r = r * n_c / (r * n_c + n_b);
            x_c * (pi_r / pi).ln() + x_b * ((1.0 - pi_r) / (1.0 - pi)).ln()
        })
        .collect();
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logs.iter().map(|l| (l - max).exp()).sum();
    (max + (sum / ratios.len() as f64).ln()).max(0.0)
}

/// The ratio grid for a smallest reported effect `min_relative_effect` (0.25: 25% worse):
/// `1 + e·2^k` for k = 0..5 (1.25, 1.5, 2, 3, 5, 9 for 0.25).
pub fn ratio_grid(min_relative_effect: f64) -> Vec<f64> {
    let e = min_relative_effect.max(0.05);
    (0..6).map(|k| 1.0 + e * f64::from(1u32 << k)).collect()
}

/// The decision threshold on `ln Λ` for a false-positive budget `alpha`: `ln(1/α)`.
pub fn threshold(alpha: f64) -> f64 {
    (1.0 / alpha).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(events: i64, trials: i64) -> Proportion {
        Proportion { events, trials }
    }

    #[test]
    fn no_evidence_scores_zero() {
        assert_eq!(log_mixture_ratio(p(0, 0), p(10, 1000), 0.01), 0.0);
        assert_eq!(log_mixture_ratio(p(5, 1000), p(10, 1000), 0.01), 0.0);
        assert_eq!(log_mixture_ratio(p(10, 1000), p(10, 1000), 0.01), 0.0);
    }

    #[test]
    fn the_statistic_grows_with_the_evidence_for_the_same_rates() {
        let small = log_mixture_ratio(p(20, 1000), p(200, 20_000), 0.01);
        let large = log_mixture_ratio(p(200, 10_000), p(2000, 200_000), 0.01);
        assert!(small > 0.0 && large > small, "{small} {large}");
        // A doubled 1% rate over 10,000 sessions is far past a 1-in-1000 budget.
        assert!(large > threshold(0.001), "{large}");
        // Over 1,000 sessions it is not yet.
        assert!(small < threshold(0.001), "{small}");
    }

    #[test]
    fn the_rate_mixture_grows_with_evidence_and_ignores_a_better_candidate() {
        let grid = ratio_grid(0.25);
        assert_eq!(grid, [1.25, 1.5, 2.0, 3.0, 5.0, 9.0]);
        assert_eq!(
            log_rate_ratio_mixture(p(5, 1000), p(200, 20_000), &grid),
            0.0
        );
        let small = log_rate_ratio_mixture(p(20, 1000), p(200, 20_000), &grid);
        let large = log_rate_ratio_mixture(p(200, 10_000), p(2000, 200_000), &grid);
        assert!(
            small > 0.0 && large > threshold(0.001) && small < large,
            "{small} {large}"
        );
    }

    #[test]
    fn rate_mixture_crossings_under_the_null_stay_within_alpha() {
        // 400 streams of equal 1% rates, the candidate a twentieth of the trials, looked at after
        // every 100 candidate trials up to 10,000.
        let mut rng = fastrand::Rng::with_seed(5);
        let (alpha, streams, grid) = (0.05, 400, ratio_grid(0.25));
        let mut crossed = 0;
        for _ in 0..streams {
            let (mut c, mut b) = (p(0, 0), p(0, 0));
            for _ in 0..100 {
                for _ in 0..100 {
                    c.trials += 1;
                    c.events += i64::from(rng.f64() < 0.01);
                }
                for _ in 0..2000 {
                    b.trials += 1;
                    b.events += i64::from(rng.f64() < 0.01);
                }
                if log_rate_ratio_mixture(c, b, &grid) >= threshold(alpha) {
                    crossed += 1;
                    break;
                }
            }
        }
        assert!(
            crossed < streams * 5 / 100,
            "{crossed} of {streams} crossed"
        );
    }

    #[test]
    fn under_the_null_hypothesis_crossings_stay_within_alpha() {
        // 400 simulated streams of equal 2% rates, looked at after every 100 trials up to
        // 20,000: the fraction that ever crosses ln(1/α) must stay below α = 5%.
        let mut rng = fastrand::Rng::with_seed(11);
        let (alpha, streams) = (0.05, 400);
        let mut crossed = 0;
        for _ in 0..streams {
            let (mut c, mut b) = (p(0, 0), p(0, 0));
            for _ in 0..200 {
                for _ in 0..100 {
                    c.trials += 1;
                    c.events += i64::from(rng.f64() < 0.02);
                    b.trials += 1;
                    b.events += i64::from(rng.f64() < 0.02);
                }
                if log_mixture_ratio(c, b, 0.02) >= threshold(alpha) {
                    crossed += 1;
                    break;
                }
            }
        }
        assert!(
            crossed < streams * 5 / 100,
            "{crossed} of {streams} crossed"
        );
    }
}
