//! The Gamma-Gamma model of spend per transaction (Fader, Hardie & Lee 2005, "RFM and CLV";
//! Fader & Hardie 2013, "The Gamma-Gamma Model of Monetary Value"): fit by maximum likelihood
//! and the expected spend per transaction given a customer's own average.
//!
//! A customer's transaction values are Gamma(p, ν) with ν ~ Gamma(q, γ) across customers, so
//! the mean m of x transactions satisfies x·m | ν ~ Gamma(px, ν). Only customers with at least
//! one transaction and a positive mean carry information; the literature uses the repeat
//! transactions only (the first is often atypical).

use serde::Serialize;

use super::optimize::{minimize_sampled_then_full, start_stride, FitInfo, ModelError, NelderMead};
use super::special::{ln_gamma, CompensatedSum};

const MODEL: &str = "Gamma-Gamma";
/// Fewer usable customers than this: refuse to fit three parameters.
const MIN_CUSTOMERS: usize = 10;
/// Log-parameters beyond ±this are treated as infeasible.
const LOG_PARAM_BOUND: f64 = 30.0;

/// Fitted Gamma-Gamma parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GammaGamma {
    /// Shape of each customer's transaction-value distribution.
    pub p: f64,
    /// Shape of the distribution of the customers' rate parameters ν.
    pub q: f64,
    /// Rate (in money units) of the distribution of the customers' rate parameters ν.
    pub gamma: f64,
}

impl GammaGamma {
    /// Fits p, q, γ by maximum likelihood from each customer's transaction count and mean
    /// spend; rows with fewer than one transaction, a non-positive or non-finite mean are
    /// ignored (they carry no information about spend).
    ///
    /// Every usable row enters the fit. Customers are grouped by count so the Γ functions are
    /// evaluated once per distinct count; Nelder–Mead runs on the log-parameters from three
    /// fixed starts (scaled to the data's money unit) on an evenly spaced sample of at most
    /// [`START_SAMPLE`](super::optimize::START_SAMPLE) rows, and Newton steps on all rows finish at the whole data's maximum;
    /// the result is deterministic.
    pub fn fit(frequency: &[f64], mean_spend: &[f64]) -> Result<(GammaGamma, FitInfo), ModelError> {
        if frequency.len() != mean_spend.len() {
            return Err(ModelError::InvalidData {
                model: MODEL,
                index: frequency.len().min(mean_spend.len()),
                reason: format!(
                    "{} frequencies but {} mean spends",
                    frequency.len(),
                    mean_spend.len()
                ),
            });
        }
        let data = Grouped::new(frequency, mean_spend);
        if data.n < MIN_CUSTOMERS {
            return Err(ModelError::TooFewCustomers {
                model: MODEL,
                n: data.n,
                min: MIN_CUSTOMERS,
            });
        }
        let average = data.sum_m / data.n as f64;
        // Start at p·γ/(q−1) = the average spend.
        let starts: Vec<Vec<f64>> = [(1.0, 2.0), (4.0, 4.0), (10.0, 10.0)]
            .iter()
            .map(|&(p, q)| vec![f64::ln(p), f64::ln(q), f64::ln(average * (q - 1.0) / p)])
            .collect();
        let stride = start_stride(frequency.len());
        let sampled = (stride > 1).then(|| {
            let pick = |v: &[f64]| v.iter().step_by(stride).copied().collect::<Vec<f64>>();
            Grouped::new(&pick(frequency), &pick(mean_spend))
        });
        let objective = |data: &Grouped, theta: &[f64]| {
            if theta.iter().any(|v| v.abs() > LOG_PARAM_BOUND) || data.n == 0 {
                return f64::INFINITY;
            }
            -data.log_likelihood(&from_log(theta)) / data.n as f64
        };
        let best = minimize_sampled_then_full(
            &NelderMead::default(),
            |theta| objective(sampled.as_ref().unwrap_or(&data), theta),
            |theta| objective(&data, theta),
            &starts,
        );
        if !best.value.is_finite() || best.x.len() != 3 {
            return Err(ModelError::NonFiniteLikelihood { model: MODEL });
        }
        let model = from_log(&best.x);
        let interior = best.x.iter().all(|v| v.abs() < LOG_PARAM_BOUND - 1.0);
        let info = FitInfo {
            iterations: best.iterations,
            log_likelihood: data.log_likelihood(&model),
            converged: best.converged && interior,
            n: data.n,
        };
        Ok((model, info))
    }

    /// The log-likelihood of the usable rows (x ≥ 1, mean spend > 0), summed.
    pub fn log_likelihood(&self, frequency: &[f64], mean_spend: &[f64]) -> f64 {
        Grouped::new(frequency, mean_spend).log_likelihood(self)
    }

    /// The population mean spend per transaction p·γ/(q−1); `None` when q ≤ 1 (infinite).
    pub fn population_mean(&self) -> Option<f64> {
        (self.q > 1.0).then(|| self.p * self.gamma / (self.q - 1.0))
    }

    /// Expected spend per transaction of a customer with `x` transactions averaging
    /// `mean_spend`: p(γ + x·m)/(p·x + q − 1), a weighted average of the population mean and
    /// the customer's own; the population mean when x ≤ 0. Infinite when q ≤ 1 and the
    /// customer's data cannot make the denominator positive.
    pub fn expected_spend(&self, x: f64, mean_spend: f64) -> f64 {
        if x.is_nan() || x <= 0.0 || !mean_spend.is_finite() {
            return self.population_mean().unwrap_or(f64::INFINITY);
        }
        let denominator = self.p * x + self.q - 1.0;
        if denominator <= 0.0 {
            return f64::INFINITY;
        }
        self.p * (self.gamma + x * mean_spend) / denominator
    }
}

fn from_log(theta: &[f64]) -> GammaGamma {
    let p = |i: usize| theta.get(i).copied().unwrap_or(0.0).exp();
    GammaGamma {
        p: p(0),
        q: p(1),
        gamma: p(2),
    }
}

/// Usable customers grouped by transaction count: per count, how many and Σ ln m.
struct Grouped {
    /// (x, customers, Σ ln m).
    groups: Vec<(f64, f64, f64)>,
    /// (x, m) of every usable customer, for the term that couples γ with m.
    rows: Vec<(f64, f64)>,
    n: usize,
    sum_m: f64,
}

impl Grouped {
    fn new(frequency: &[f64], mean_spend: &[f64]) -> Self {
        let mut rows: Vec<(f64, f64)> = frequency
            .iter()
            .zip(mean_spend)
            .filter(|(x, m)| x.is_finite() && **x >= 1.0 && m.is_finite() && **m > 0.0)
            .map(|(&x, &m)| (x, m))
            .collect();
        rows.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut groups: Vec<(f64, f64, f64)> = Vec::new();
        for &(x, m) in &rows {
            match groups.last_mut() {
                Some(g) if g.0 == x => {
                    g.1 += 1.0;
                    g.2 += m.ln();
                }
                _ => groups.push((x, 1.0, m.ln())),
            }
        }
        Grouped {
            n: rows.len(),
            sum_m: rows.iter().map(|r| r.1).sum(),
            groups,
            rows,
        }
    }

    fn log_likelihood(&self, m: &GammaGamma) -> f64 {
        let GammaGamma { p, q, gamma } = *m;
        let mut sum = CompensatedSum::default();
        let per_customer = -ln_gamma(q) + q * gamma.ln();
        for &(x, count, sum_ln_m) in &self.groups {
            let px = p * x;
            sum.add(
                count * (ln_gamma(px + q) - ln_gamma(px) + per_customer + px * x.ln())
                    + (px - 1.0) * sum_ln_m,
            );
        }
        for &(x, spend) in &self.rows {
            sum.add(-(p * x + q) * (gamma + x * spend).ln());
        }
        sum.total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Gamma};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn likelihood_matches_the_formula() {
        let m = GammaGamma {
            p: 6.25,
            q: 3.74,
            gamma: 15.44,
        };
        let (x, s) = (3.0, 42.5);
        let direct = ln_gamma(m.p * x + m.q) - ln_gamma(m.p * x) - ln_gamma(m.q)
            + m.q * m.gamma.ln()
            + (m.p * x - 1.0) * f64::ln(s)
            + m.p * x * f64::ln(x)
            - (m.p * x + m.q) * (m.gamma + x * s).ln();
        assert!(close(m.log_likelihood(&[x], &[s]), direct, 1e-14));
        // Unusable rows are ignored.
        assert_eq!(
            m.log_likelihood(&[x, 0.0, 2.0, f64::NAN], &[s, 10.0, 0.0, 3.0]),
            m.log_likelihood(&[x], &[s])
        );
        // It is a density of m: it integrates to 1 over m (x = 2, trapezoid in log m).
        let (lo, hi, steps) = (-8.0f64, 12.0f64, 20_000);
        let h = (hi - lo) / steps as f64;
        let total: f64 = (0..=steps)
            .map(|i| {
                let u = lo + i as f64 * h;
                let w = if i == 0 || i == steps { 0.5 } else { 1.0 };
                w * (m.log_likelihood(&[2.0], &[u.exp()]) + u).exp() * h
            })
            .sum();
        assert!(close(total, 1.0, 1e-6), "{total}");
    }

    #[test]
    fn expected_spend_shrinks_towards_the_population_mean() {
        let m = GammaGamma {
            p: 6.25,
            q: 3.74,
            gamma: 15.44,
        };
        let mean = m.population_mean().unwrap_or(f64::NAN);
        assert!(close(mean, 6.25 * 15.44 / 2.74, 1e-14));
        assert_eq!(m.expected_spend(0.0, 0.0), mean);
        assert_eq!(m.expected_spend(0.0, 100.0), mean);
        for &spend in &[5.0, 35.0, 500.0] {
            let mut previous = mean;
            for x in 1..50 {
                let e = m.expected_spend(x as f64, spend);
                // Between the population mean and the customer's own, moving towards the latter.
                assert!(e >= mean.min(spend) && e <= mean.max(spend));
                assert!((e - spend).abs() <= (previous - spend).abs());
                previous = e;
            }
        }
        let heavy = GammaGamma { q: 0.8, ..m };
        assert_eq!(heavy.population_mean(), None);
        assert_eq!(heavy.expected_spend(0.0, 1.0), f64::INFINITY);
        assert!(heavy.expected_spend(2.0, 30.0).is_finite());
    }

    #[test]
    fn fit_recovers_simulated_parameters() {
        let truth = GammaGamma {
            p: 6.0,
            q: 4.0,
            gamma: 15.0,
        };
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(42);
        let (Ok(nu), Ok(counts)) = (Gamma::new(truth.q, 1.0 / truth.gamma), Gamma::new(1.5, 2.0))
        else {
            panic!("bad parameters");
        };
        let (mut xs, mut ms) = (Vec::new(), Vec::new());
        for _ in 0..5_000 {
            let draw: f64 = counts.sample(&mut rng);
            let x = (1.0 + draw).floor();
            let Ok(spend) = Gamma::new(truth.p * x, 1.0 / nu.sample(&mut rng)) else {
                panic!()
            };
            xs.push(x);
            ms.push(spend.sample(&mut rng) / x);
        }
        let fit = GammaGamma::fit(&xs, &ms);
        let Ok((m, info)) = fit else {
            panic!("{fit:?}")
        };
        assert!(info.converged && info.n == 5_000, "{info:?}");
        for (got, want) in [(m.p, truth.p), (m.q, truth.q), (m.gamma, truth.gamma)] {
            assert!(close(got, want, 0.10), "{m:?}");
        }
        let theta = [m.p.ln(), m.q.ln(), m.gamma.ln()];
        for i in 0..3 {
            let (mut up, mut down) = (theta, theta);
            up[i] += 1e-5;
            down[i] -= 1e-5;
            let g = (from_log(&up).log_likelihood(&xs, &ms)
                - from_log(&down).log_likelihood(&xs, &ms))
                / 2e-5
                / 5_000.0;
            assert!(g.abs() < 1e-6, "d/dθ{i} = {g}");
        }
        assert_eq!(GammaGamma::fit(&xs, &ms).map(|f| f.0), Ok(m));
    }

    #[test]
    fn fit_rejects_bad_input() {
        assert!(matches!(
            GammaGamma::fit(&[1.0, 2.0], &[3.0]),
            Err(ModelError::InvalidData { index: 1, .. })
        ));
        let xs = vec![0.0; 50];
        let ms = vec![10.0; 50];
        assert!(matches!(
            GammaGamma::fit(&xs, &ms),
            Err(ModelError::TooFewCustomers { n: 0, .. })
        ));
    }
}
