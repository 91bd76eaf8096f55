//! Special functions the customer-base models need: ln Γ (Lanczos), ln B, log-sum-exp,
//! `expm1(x)/x`, the Gauss hypergeometric function ₂F₁ and Neumaier-compensated sums.
//!
//! Small and self-contained on purpose (no numerics dependency); every function is checked
//! against known values and identities in the tests below.

use std::f64::consts::PI;

/// Lanczos approximation, g = 7, n = 9 (relative error of Γ about 1e-15 on the positive axis).
const LANCZOS_G: f64 = 7.0;
const LANCZOS: [f64; 9] = [
    0.999_999_999_999_809_9,
    676.520_368_121_885_1,
    -1_259.139_216_722_402_8,
    771.323_428_777_653_1,
    -176.615_029_162_140_6,
    12.507_343_278_686_905,
    -0.138_571_095_265_720_12,
    9.984_369_578_019_572e-6,
    1.505_632_735_149_311_6e-7,
];
/// ln √(2π).
const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;

/// ln |Γ(x)|; `+inf` at the poles (0, −1, −2, …), NaN for NaN.
pub fn ln_gamma(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x == f64::INFINITY {
        return f64::INFINITY;
    }
    if x <= 0.0 && x == x.floor() {
        return f64::INFINITY;
    }
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        let s = (PI * x).sin().abs();
        if s == 0.0 {
            return f64::INFINITY;
        }
        return (PI / s).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = LANCZOS[0];
    for (i, c) in LANCZOS.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + LANCZOS_G + 0.5;
    LN_SQRT_2PI + (x + 0.5) * t.ln() - t + sum.ln()
}

/// ln B(a, b) = ln Γ(a) + ln Γ(b) − ln Γ(a + b), for a, b > 0.
pub fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// ln(eᵃ + eᵇ) without overflow or underflow.
pub fn log_add_exp(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        return f64::NAN;
    }
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if hi.is_infinite() {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// The logistic function 1 / (1 + e^−x), without overflow for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// ln Σ exp(vᵢ) without overflow or underflow; `-inf` for an empty slice.
pub fn log_sum_exp(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max.is_infinite() {
        return max;
    }
    if values.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// `expm1(x) / x`, equal to 1 at x = 0 and accurate near it.
pub fn exprel(x: f64) -> f64 {
    if x.abs() < 1e-5 {
        1.0 + x / 2.0 * (1.0 + x / 3.0)
    } else {
        x.exp_m1() / x
    }
}

/// A sum that keeps the low-order bits (Neumaier's variant of Kahan summation).
#[derive(Debug, Clone, Copy, Default)]
pub struct CompensatedSum {
    sum: f64,
    compensation: f64,
}

impl CompensatedSum {
    /// Adds one term.
    pub fn add(&mut self, v: f64) {
        let t = self.sum + v;
        if self.sum.abs() >= v.abs() {
            self.compensation += (self.sum - t) + v;
        } else {
            self.compensation += (v - t) + self.sum;
        }
        self.sum = t;
    }

    /// The sum so far.
    pub fn total(&self) -> f64 {
        self.sum + self.compensation
    }
}

/// Most series terms [`hyp2f1`] sums before giving up.
pub const HYP2F1_MAX_TERMS: usize = 100_000;

/// The Gauss hypergeometric function ₂F₁(a, b; c; z) for real z < 1 and c not a non-positive
/// integer; `None` where the series does not converge in [`HYP2F1_MAX_TERMS`] terms or the
/// value is not finite.
///
/// For z < 0 the Pfaff transformation ₂F₁(a,b;c;z) = (1−z)^(−a) ₂F₁(a, c−b; c; z/(z−1)) maps
/// the argument into [0, 1). On [0, 1) the Euler transformation
/// ₂F₁(a,b;c;z) = (1−z)^(c−a−b) ₂F₁(c−a, c−b; c; z) is used when it makes the series
/// parameters smaller (it does for the large-count BG/NBD case, where a, b and c all grow with
/// the number of purchases but c−a and c−b do not). Near z = 1 convergence is geometric with
/// ratio z, so z within ~1e-4 of 1 with small c may return `None`.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Option<f64> {
    if !(a.is_finite() && b.is_finite() && c.is_finite() && z.is_finite()) || z >= 1.0 {
        return None;
    }
    if c <= 0.0 && c == c.floor() {
        return None;
    }
    if z < 0.0 {
        let w = z / (z - 1.0);
        let ln_prefactor = -a * (-z).ln_1p();
        let (s, ln_scale) = hyp2f1_series_scaled(a, c - b, c, w)?;
        return finite(s * (ln_prefactor + ln_scale).exp());
    }
    let direct_size = a.abs() + b.abs();
    let euler_size = (c - a).abs() + (c - b).abs();
    if euler_size < direct_size {
        let ln_prefactor = (c - a - b) * (-z).ln_1p();
        let (s, ln_scale) = hyp2f1_series_scaled(c - a, c - b, c, z)?;
        finite(s * (ln_prefactor + ln_scale).exp())
    } else {
        let (s, ln_scale) = hyp2f1_series_scaled(a, b, c, z)?;
        finite(s * ln_scale.exp())
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Σ (a)ₙ(b)ₙ/((c)ₙ n!) zⁿ for 0 ≤ z < 1, returned as (s, ln_scale) with value s·e^ln_scale so
/// that sums far beyond f64's range (large parameters) can still be combined in log space.
fn hyp2f1_series_scaled(a: f64, b: f64, c: f64, z: f64) -> Option<(f64, f64)> {
    let mut term = 1.0_f64;
    let mut sum = 1.0_f64;
    let mut ln_scale = 0.0_f64;
    for n in 0..HYP2F1_MAX_TERMS {
        let nf = n as f64;
        let ratio = (a + nf) * (b + nf) / ((c + nf) * (nf + 1.0)) * z;
        if ratio == 0.0 {
            return Some((sum, ln_scale));
        }
        term *= ratio;
        sum += term;
        if !sum.is_finite() || !term.is_finite() {
            return None;
        }
        // Rescale before anything overflows; both term and sum share the scale.
        if sum.abs() > 1e250 {
            sum *= 1e-250;
            term *= 1e-250;
            ln_scale += 250.0 * std::f64::consts::LN_10;
        }
        // Once (a+n)/(c+n) and (b+n)/(n+1) are positive each moves monotonically towards 1,
        // so every later ratio is at most q = z·max(next factors, 1) and the rest of the
        // series at most |term|·q/(1−q).
        let f1 = (a + nf + 1.0) / (c + nf + 1.0);
        let f2 = (b + nf + 1.0) / (nf + 2.0);
        if a + nf + 1.0 > 0.0 && b + nf + 1.0 > 0.0 && c + nf + 1.0 > 0.0 {
            let q = z * f1.max(1.0) * f2.max(1.0);
            if q < 1.0 && term.abs() * q / (1.0 - q) <= 1e-17 * sum.abs() {
                return Some((sum, ln_scale));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn ln_gamma_known_values() {
        assert!(ln_gamma(1.0).abs() < 1e-14);
        assert!(ln_gamma(2.0).abs() < 1e-14);
        assert!(close(ln_gamma(0.5), 0.5 * PI.ln(), 1e-14));
        assert!(close(ln_gamma(10.0), 362_880f64.ln(), 1e-14));
        assert!(close(ln_gamma(100.0), 359.134_205_369_575_4, 1e-14));
        // ln Γ(x) = −ln x − γx + O(x²) near 0.
        let euler = 0.577_215_664_901_532_9;
        assert!(close(ln_gamma(1e-8), -(1e-8f64).ln() - euler * 1e-8, 1e-14));
        // Γ(−0.5) = −2√π.
        assert!(close(ln_gamma(-0.5), (2.0 * PI.sqrt()).ln(), 1e-13));
        assert_eq!(ln_gamma(0.0), f64::INFINITY);
        assert_eq!(ln_gamma(-3.0), f64::INFINITY);
        // Stirling for a large argument: (x−½)ln x − x + ½ln 2π + 1/(12x).
        let x = 1e7f64;
        let stirling = (x - 0.5) * x.ln() - x + LN_SQRT_2PI + 1.0 / (12.0 * x);
        assert!(close(ln_gamma(x), stirling, 1e-14));
    }

    #[test]
    fn ln_gamma_recurrence() {
        for &x in &[
            1e-6, 0.013, 0.243, 0.793, 1.5, 2.426, 4.414, 17.3, 512.25, 1e5,
        ] {
            let lhs = ln_gamma(x + 1.0);
            let rhs = ln_gamma(x) + f64::ln(x);
            assert!(
                (lhs - rhs).abs() <= 1e-13 * (1.0 + lhs.abs()),
                "x = {x}: {lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn ln_beta_values() {
        // B(a, 1) = 1/a; B(2, 3) = 1/12; B(½, ½) = π.
        assert!(close(ln_beta(3.7, 1.0), -(3.7f64).ln(), 1e-14));
        assert!(close(ln_beta(2.0, 3.0), -(12f64).ln(), 1e-14));
        assert!(close(ln_beta(0.5, 0.5), PI.ln(), 1e-14));
        assert!(close(ln_beta(0.793, 2.426), ln_beta(2.426, 0.793), 1e-15));
    }

    #[test]
    fn log_sum_exp_is_stable() {
        assert!(close(log_sum_exp(&[0.0, 0.0]), 2f64.ln(), 1e-15));
        assert!(close(
            log_sum_exp(&[1000.0, 1000.0]),
            1000.0 + 2f64.ln(),
            1e-15
        ));
        assert!(close(
            log_sum_exp(&[-1000.0, -1000.0]),
            -1000.0 + 2f64.ln(),
            1e-15
        ));
        assert_eq!(log_sum_exp(&[]), f64::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[f64::NEG_INFINITY, 3.0]), 3.0);
        assert!(close(
            log_add_exp(-1000.0, -1001.0),
            log_sum_exp(&[-1000.0, -1001.0]),
            1e-15
        ));
        assert_eq!(log_add_exp(f64::NEG_INFINITY, -2.0), -2.0);
        assert_eq!(
            log_add_exp(f64::NEG_INFINITY, f64::NEG_INFINITY),
            f64::NEG_INFINITY
        );
    }

    #[test]
    fn exprel_is_continuous() {
        assert_eq!(exprel(0.0), 1.0);
        for &x in &[1e-12_f64, -1e-12, 9.9e-6, 1.01e-5, -0.3, 2.0, -40.0] {
            let direct = if x.abs() > 1e-3 {
                x.exp_m1() / x
            } else {
                1.0 + x / 2.0 + x * x / 6.0
            };
            assert!(close(exprel(x), direct, 1e-12), "x = {x}");
        }
    }

    #[test]
    fn compensated_sum_keeps_small_terms() {
        let mut s = CompensatedSum::default();
        s.add(1e16);
        for _ in 0..1000 {
            s.add(1.0);
        }
        s.add(-1e16);
        assert_eq!(s.total(), 1000.0);
    }

    #[test]
    fn hyp2f1_closed_forms() {
        // ₂F₁(1,1;2;z) = −ln(1−z)/z.
        for &z in &[1e-9_f64, 0.1, 0.5, 0.9, 0.99, -0.5, -3.0, -100.0] {
            let expect = -(-z).ln_1p() / z;
            let got = hyp2f1(1.0, 1.0, 2.0, z);
            assert!(
                got.is_some_and(|g| close(g, expect, 1e-12)),
                "z = {z}: {got:?} vs {expect}"
            );
        }
        // ₂F₁(a,b;b;z) = (1−z)^(−a).
        for &(a, b, z) in &[(0.5, 3.0, 0.7), (2.5, 0.1, -2.0), (500.2, 502.4, 0.3)] {
            let expect = (1.0f64 - z).powf(-a);
            let got = hyp2f1(a, b, b, z);
            assert!(
                got.is_some_and(|g| close(g, expect, 1e-11)),
                "{a} {b} {z}: {got:?}"
            );
        }
        // ₂F₁(a,b;c;1) = Γ(c)Γ(c−a−b)/(Γ(c−a)Γ(c−b)) (Gauss), approached from below.
        let (a, b, c) = (0.3, 0.6, 2.5);
        let gauss = (ln_gamma(c) + ln_gamma(c - a - b) - ln_gamma(c - a) - ln_gamma(c - b)).exp();
        let near = hyp2f1(a, b, c, 0.999);
        assert!(
            near.is_some_and(|g| g < gauss && close(g, gauss, 1e-3)),
            "{near:?} vs {gauss}"
        );
        // Terminating series: ₂F₁(−2, b; c; z) = 1 − 2bz/c + b(b+1)z²/(c(c+1)).
        let (b, c, z) = (1.7, 3.1, 0.4);
        let expect = 1.0 - 2.0 * b * z / c + b * (b + 1.0) * z * z / (c * (c + 1.0));
        assert!(hyp2f1(-2.0, b, c, z).is_some_and(|g| close(g, expect, 1e-14)));
        assert!(hyp2f1(1.0, 1.0, 2.0, 1.0).is_none());
        assert!(hyp2f1(1.0, 1.0, -2.0, 0.5).is_none());
    }

    #[test]
    fn hyp2f1_large_parameters_do_not_overflow_to_nan() {
        // BG/NBD with x = 500: ₂F₁(r+x, b+x; a+b+x−1; z) is astronomically large, but finite
        // in log space; the transformed value times (1−z)^(r+x) stays moderate.
        let (r, a, b, x) = (0.243, 0.793, 2.426, 500.0);
        let z = 0.2;
        let v = hyp2f1(r + x, b + x, a + b + x - 1.0, z);
        assert!(v.is_some_and(|v| v.is_finite() && v > 1.0), "{v:?}");
    }
}
