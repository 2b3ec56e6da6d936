//! The statistics the experiment report needs, by hand so they can be checked by hand:
//! Wilson score intervals for rates and a pooled two-proportion z-test.
//!
//! Wilson rather than the textbook `p ± z·√(p(1−p)/n)`: with the small counts of a young
//! cohort (4 conversions out of 40 hits) the textbook interval can reach below zero and is too
//! narrow; Wilson's stays inside [0, 1] and keeps its coverage.

use serde::Serialize;

/// The two-sided 95 % normal quantile.
pub const Z95: f64 = 1.959_963_984_540_054;

/// `successes` out of `trials`, with its 95 % Wilson interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    pub successes: u64,
    pub trials: u64,
    /// `None` when there were no trials.
    pub value: Option<f64>,
    pub ci95_low: Option<f64>,
    pub ci95_high: Option<f64>,
}

impl Rate {
    pub fn new(successes: u64, trials: u64) -> Self {
        let (value, low, high) = match wilson(successes, trials, Z95) {
            Some((lo, hi)) => (Some(successes as f64 / trials as f64), Some(lo), Some(hi)),
            None => (None, None, None),
        };
        Rate {
            successes,
            trials,
            value,
            ci95_low: low,
            ci95_high: high,
        }
    }
}

/// The Wilson score interval for `k` successes in `n` trials at normal quantile `z`.
pub fn wilson(k: u64, n: u64, z: f64) -> Option<(f64, f64)> {
    if n == 0 || k > n {
        return None;
    }
    let n = n as f64;
    let p = k as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// A two-proportion z-test of a variant against the control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ZTest {
    /// Variant rate minus control rate.
    pub difference: f64,
    pub z: f64,
    /// Two-sided.
    pub p_value: f64,
}

/// The pooled two-proportion z-test of `a` (the variant) against `b` (the control):
/// `z = (p_a − p_b) / √(p(1−p)(1/n_a + 1/n_b))` with `p` the pooled rate. `None` when either
/// side has no trials or the pooled rate is 0 or 1 (no variance to test against).
pub fn two_proportion(a: Rate, b: Rate) -> Option<ZTest> {
    if a.trials == 0 || b.trials == 0 {
        return None;
    }
    let (na, nb) = (a.trials as f64, b.trials as f64);
    let (pa, pb) = (a.successes as f64 / na, b.successes as f64 / nb);
    let pooled = (a.successes + b.successes) as f64 / (na + nb);
    let se = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    if se == 0.0 {
        return None;
    }
    let z = (pa - pb) / se;
    Some(ZTest {
        difference: pa - pb,
        z,
        p_value: erfc(z.abs() / std::f64::consts::SQRT_2),
    })
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, relative error below
/// 1.2e-7 everywhere): enough for a p-value.
pub fn erfc(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, eps: f64) -> bool {
        (a - b).abs() <= eps
    }

    #[test]
    fn wilson_matches_published_values() {
        // 4 / 40: Wilson 95 % is [0.0396, 0.2305] (e.g. Newcombe 1998's method 3).
        let (lo, hi) = wilson(4, 40, Z95).unwrap();
        assert!(
            close(lo, 0.0396, 5e-4) && close(hi, 0.2305, 5e-4),
            "{lo} {hi}"
        );
        // Zero successes still has a positive upper bound, and never a negative lower one.
        let (lo, hi) = wilson(0, 10, Z95).unwrap();
        assert_eq!(lo, 0.0);
        assert!(close(hi, 0.2775, 5e-4), "{hi}");
        assert_eq!(wilson(1, 0, Z95), None);
        assert_eq!(Rate::new(0, 0).value, None);
    }

    #[test]
    fn erfc_gives_the_familiar_p_values() {
        assert!(close(
            erfc(1.959_964 / std::f64::consts::SQRT_2),
            0.05,
            1e-6
        ));
        assert!(close(erfc(0.0), 1.0, 1e-7));
        assert!(close(erfc(-1.0), 1.842_700_79, 1e-6));
        assert!(close(erfc(3.0), 2.209_049_7e-5, 1e-9));
    }

    #[test]
    fn two_proportion_test_by_hand() {
        // 9 / 60 against 4 / 40: pooled 13 / 100.
        let z = two_proportion(Rate::new(9, 60), Rate::new(4, 40)).unwrap();
        let pooled: f64 = 0.13;
        let se = (pooled * (1.0 - pooled) * (1.0 / 60.0 + 1.0 / 40.0)).sqrt();
        assert!(close(z.z, (0.15 - 0.10) / se, 1e-12));
        assert!(close(z.difference, 0.05, 1e-12));
        assert!(close(z.p_value, 0.4664, 5e-4), "{}", z.p_value);
        // Nothing to test against.
        assert_eq!(two_proportion(Rate::new(0, 10), Rate::new(0, 10)), None);
        assert_eq!(two_proportion(Rate::new(1, 10), Rate::new(0, 0)), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
