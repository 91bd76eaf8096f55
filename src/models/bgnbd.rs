//! The BG/NBD model of repeat purchasing (Fader, Hardie & Lee 2005, "Counting your customers
//! the easy way"): fit by maximum likelihood, P(alive), expected purchases over a horizon,
//! P(no purchase over a horizon) and their discounted form.
//!
//! While alive a customer buys at rate λ ~ Gamma(r, α) (α is a time: rate parameter); after
//! each repeat purchase they drop out with probability p ~ Beta(a, b). Times are in whatever
//! unit the caller uses (the pipeline uses days); [`BgNbd::rescale_time`] converts.
//!
//! The conditional expectation (the paper's eq. 10) is evaluated without its removable
//! singularity at a = 1 and without NaN for large x, one-time buyers or extreme horizons;
//! [`expectation`] explains how.

pub mod expectation;

use serde::Serialize;

use super::optimize::{minimize_sampled_then_full, start_stride, FitInfo, ModelError, NelderMead};
use super::special::{ln_beta, ln_gamma, log_add_exp, CompensatedSum};
use expectation::expected_if_alive;

const MODEL: &str = "BG/NBD";
/// Fewer customers than this: refuse to fit four parameters.
const MIN_CUSTOMERS: usize = 10;
/// Log-parameters beyond ±this are treated as infeasible (e^30 ≈ 1e13).
const LOG_PARAM_BOUND: f64 = 30.0;

/// One customer's purchase summary (BG/NBD convention): x repeat purchases, t_x time of the
/// last purchase measured from the first, T time from the first purchase to the end of
/// observation (0 ≤ t_x ≤ T; t_x = 0 when x = 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rfm {
    /// Repeat purchases (purchases after the first).
    pub x: f64,
    /// Time of the last purchase, measured from the first.
    pub t_x: f64,
    /// Time from the first purchase to the end of observation.
    pub t: f64,
}

/// Fitted BG/NBD parameters: λ ~ Gamma(shape r, rate α), p ~ Beta(a, b).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BgNbd {
    /// Shape of the purchase-rate distribution.
    pub r: f64,
    /// Rate (a time, in the caller's unit) of the purchase-rate distribution.
    pub alpha: f64,
    /// First shape of the dropout-probability distribution.
    pub a: f64,
    /// Second shape of the dropout-probability distribution.
    pub b: f64,
}

impl BgNbd {
    /// Fits the four parameters by maximum likelihood.
    ///
    /// Every row enters the fit. Identical (x, t_x, T) rows are merged and weighted, so the
    /// cost per likelihood evaluation grows with the number of distinct rows, not customers
    /// (times in whole days keep them fewer). Nelder–Mead runs on the log-parameters from
    /// three fixed starting points (scaled to the data's time unit) on an evenly spaced
    /// sample of at most [`START_SAMPLE`](super::optimize::START_SAMPLE) rows, which finds the basin cheaply; Newton steps on
    /// all rows then reach the maximum of the whole data's likelihood. Deterministic.
    pub fn fit(data: &[Rfm]) -> Result<(BgNbd, FitInfo), ModelError> {
        let compressed = Compressed::new(data)?;
        let stride = start_stride(data.len());
        let sampled = if stride > 1 {
            let rows: Vec<Rfm> = data.iter().step_by(stride).copied().collect();
            Some(Compressed::new(&rows)?)
        } else {
            None
        };
        if data.len() < MIN_CUSTOMERS {
            return Err(ModelError::TooFewCustomers {
                model: MODEL,
                n: data.len(),
                min: MIN_CUSTOMERS,
            });
        }
        if compressed.total_x <= 0.0 {
            return Err(ModelError::Degenerate {
                model: MODEL,
                reason: "no customer made a repeat purchase".into(),
            });
        }
        // Scale α to the time unit: α/r is the mean time between purchases.
        let gap = if compressed.total_t > 0.0 {
            compressed.total_t / compressed.total_x
        } else {
            1.0
        };
        let starts: Vec<Vec<f64>> = [(1.0, 1.0, 1.0), (0.5, 0.5, 5.0), (3.0, 2.0, 20.0)]
            .iter()
            .map(|&(r, a, b)| vec![f64::ln(r), f64::ln(r * gap), f64::ln(a), f64::ln(b)])
            .collect();
        let objective = |data: &Compressed, theta: &[f64]| {
            if theta.iter().any(|v| v.abs() > LOG_PARAM_BOUND) {
                return f64::INFINITY;
            }
            -data.log_likelihood(&from_log(theta)) / data.total_weight
        };
        let best = minimize_sampled_then_full(
            &NelderMead::default(),
            |theta| objective(sampled.as_ref().unwrap_or(&compressed), theta),
            |theta| objective(&compressed, theta),
            &starts,
        );
        if !best.value.is_finite() || best.x.len() != 4 {
            return Err(ModelError::NonFiniteLikelihood { model: MODEL });
        }
        let model = from_log(&best.x);
        let interior = best.x.iter().all(|v| v.abs() < LOG_PARAM_BOUND - 1.0);
        let info = FitInfo {
            iterations: best.iterations,
            log_likelihood: compressed.log_likelihood(&model),
            converged: best.converged && interior,
            n: data.len(),
        };
        Ok((model, info))
    }

    /// The log-likelihood of `data` (summed over customers); NaN if a row is invalid.
    pub fn log_likelihood(&self, data: &[Rfm]) -> f64 {
        match Compressed::new(data) {
            Ok(c) => c.log_likelihood(self),
            Err(_) => f64::NAN,
        }
    }

    /// P(the customer is still alive at T): 1 for x = 0 (BG/NBD customers only drop out
    /// right after a repeat purchase), otherwise 1/(1 + a/(b+x−1) · ((α+T)/(α+t_x))^(r+x)).
    pub fn p_alive(&self, c: &Rfm) -> f64 {
        if c.x < 1.0 {
            return 1.0;
        }
        let ln_odds = self.a.ln() - (self.b + c.x - 1.0).ln()
            + (self.r + c.x) * ((c.t - c.t_x) / (self.alpha + c.t_x)).ln_1p();
        // 1/(1+e^ln_odds) without overflow.
        if ln_odds > 0.0 {
            let e = (-ln_odds).exp();
            e / (1.0 + e)
        } else {
            1.0 / (1.0 + ln_odds.exp())
        }
    }

    /// Expected purchases in (T, T+horizon] given the customer's history (eq. 10 of the paper,
    /// evaluated as [`expectation`] describes); 0 for horizon ≤ 0, +inf for an infinite
    /// horizon when a ≤ 1 (the expectation diverges).
    pub fn expected_purchases(&self, c: &Rfm, horizon: f64) -> f64 {
        self.p_alive(c)
            * expected_if_alive(
                self.r + c.x,
                self.alpha + c.t,
                self.a,
                self.b + c.x,
                horizon,
            )
    }

    /// Expected purchases in (0, t] of a customer just acquired (eq. 9 of the paper).
    pub fn expected_purchases_new_customer(&self, t: f64) -> f64 {
        expected_if_alive(self.r, self.alpha, self.a, self.b, t)
    }

    /// P(no purchase in (T, T+horizon]) = 1 − P(alive) + P(alive)·((α+T)/(α+T+horizon))^(r+x).
    pub fn p_no_purchase(&self, c: &Rfm, horizon: f64) -> f64 {
        if horizon <= 0.0 || horizon.is_nan() {
            return 1.0;
        }
        let buys_if_alive = -(-(self.r + c.x) * (horizon / (self.alpha + c.t)).ln_1p()).exp_m1();
        (1.0 - self.p_alive(c) * buys_if_alive).clamp(0.0, 1.0)
    }

    /// The days h after T by which P(at least one purchase in (T, T+h]) reaches ½:
    /// P(alive)·(1 − ((α+T)/(α+T+h))^(r+x)) = ½, so h = (α+T)·((1 − ½/P(alive))^(−1/(r+x)) − 1).
    /// NaN when that does not happen within `within` days (P(alive) ≤ ½ never gets there).
    pub fn median_days_to_next_purchase(&self, c: &Rfm, within: f64) -> f64 {
        let alive = self.p_alive(c);
        if alive <= 0.5 {
            return f64::NAN;
        }
        let h = (self.alpha + c.t) * ((-(1.0 - 0.5 / alive).ln() / (self.r + c.x)).exp_m1());
        if h.is_finite() && h >= 0.0 && h <= within {
            h
        } else {
            f64::NAN
        }
    }

    /// Expected purchases in (T, T+horizon], each period's expected purchases discounted by
    /// (1+rate_per_period)^−m with m the midpoint of the period in periods (k−½ for the k-th
    /// full period; the midpoint of a final partial period).
    ///
    /// `period` ≤ 0 or non-finite, or a zero rate, gives the undiscounted expectation. The
    /// first 600 periods are summed exactly; beyond that (horizons of decades when periods are
    /// months) the steps double in length, each still discounted at its midpoint, and with a
    /// positive rate the sum stops once the rest cannot add more than 1e-13 of it.
    pub fn discounted_expected_purchases(
        &self,
        c: &Rfm,
        horizon: f64,
        period: f64,
        rate_per_period: f64,
    ) -> f64 {
        self.expected_purchases_discounted_and_not(c, horizon, period, rate_per_period)
            .0
    }

    /// [`BgNbd::discounted_expected_purchases`] and [`BgNbd::expected_purchases`] over the
    /// same horizon, from one evaluation of the latter (the discounted sum needs it anyway).
    pub fn expected_purchases_discounted_and_not(
        &self,
        c: &Rfm,
        horizon: f64,
        period: f64,
        rate_per_period: f64,
    ) -> (f64, f64) {
        const EXACT_PERIODS: usize = 600;
        if horizon <= 0.0 || horizon.is_nan() {
            return (0.0, 0.0);
        }
        let undiscounted = self.expected_purchases(c, horizon);
        if !(period > 0.0 && period.is_finite())
            || rate_per_period == 0.0
            || rate_per_period.is_nan()
        {
            return (undiscounted, undiscounted);
        }
        let ln_discount = rate_per_period.max(-0.999_999).ln_1p();
        // The end of the k-th period (from 1), which starts at `start`: k·period for the first
        // EXACT_PERIODS, then twice its start.
        let end_of = |k: usize, start: f64| {
            if k <= EXACT_PERIODS {
                k as f64 * period
            } else {
                start + start
            }
            .min(horizon)
        };
        // Expected purchases up to the ends, computed a block of periods ahead with one shared
        // series (expectation::expected_if_alive_lanes); the sum usually stops early only for
        // horizons of decades.
        const BLOCK: usize = expectation::LANES;
        let p_alive = self.p_alive(c);
        // The block's ends, and P(alive)·E at them; `next` of `filled` is the next to use.
        let (mut block, mut ahead) = ([0.0; BLOCK], [0.0; BLOCK]);
        let (mut next, mut filled) = (0, 0);
        let mut total = 0.0;
        let (mut start, mut before) = (0.0, 0.0);
        let mut k = 0;
        while start < horizon {
            k += 1;
            let end = end_of(k, start);
            if next == filled {
                block[0] = end;
                let mut len = 1;
                while len < BLOCK && block[len - 1] < horizon {
                    block[len] = end_of(k + len, block[len - 1]);
                    len += 1;
                }
                let expected = expectation::expected_if_alive_lanes(
                    self.r + c.x,
                    self.alpha + c.t,
                    self.a,
                    self.b + c.x,
                    &block[..len],
                );
                for (a, e) in ahead.iter_mut().zip(&expected[..len]) {
                    *a = p_alive * e;
                }
                (next, filled) = (0, len);
            }
            let at_end = ahead[next];
            next += 1;
            let after = if end >= horizon { undiscounted } else { at_end };
            let mid_in_periods = 0.5 * (start + end) / period;
            total += (after - before).max(0.0) * (-mid_in_periods * ln_discount).exp();
            let rest_bound =
                (undiscounted - after).max(0.0) * (-(end / period) * ln_discount).exp();
            if rate_per_period > 0.0 && rest_bound <= 1e-13 * total {
                break;
            }
            before = after;
            start = end;
        }
        (total, undiscounted)
    }

    /// The same model with time measured in a unit `factor` times longer (days → weeks is
    /// `rescale_time(7.0)`): α is a time, so it is divided by `factor`; r, a, b are unchanged.
    pub fn rescale_time(&self, factor: f64) -> BgNbd {
        BgNbd {
            alpha: self.alpha / factor,
            ..*self
        }
    }
}

fn from_log(theta: &[f64]) -> BgNbd {
    let p = |i: usize| theta.get(i).copied().unwrap_or(0.0).exp();
    BgNbd {
        r: p(0),
        alpha: p(1),
        a: p(2),
        b: p(3),
    }
}

/// Customers merged by identical (x, t_x, T), with the distinct values indexed so each
/// likelihood evaluation computes every Γ and logarithm once per distinct value.
struct Compressed {
    xs: Vec<f64>,
    ts: Vec<f64>,
    txs: Vec<f64>,
    /// (x index, t_x index, T index, weight).
    rows: Vec<(u32, u32, u32, f64)>,
    total_weight: f64,
    total_x: f64,
    total_t: f64,
}

impl Compressed {
    fn new(data: &[Rfm]) -> Result<Self, ModelError> {
        for (index, c) in data.iter().enumerate() {
            let reason = if !(c.x.is_finite() && c.t_x.is_finite() && c.t.is_finite()) {
                Some("non-finite value")
            } else if c.x < 0.0 || c.x != c.x.floor() {
                Some("x is not a whole number ≥ 0")
            } else if c.t_x < 0.0 {
                Some("negative t_x")
            } else if c.t_x > c.t {
                Some("t_x after T")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(ModelError::InvalidData {
                    model: MODEL,
                    index,
                    reason: reason.into(),
                });
            }
        }
        let distinct = |f: fn(&Rfm) -> f64| {
            let mut v: Vec<f64> = data.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v.dedup();
            v
        };
        let xs = distinct(|c| c.x);
        let ts = distinct(|c| c.t);
        let txs = distinct(|c| if c.x > 0.0 { c.t_x } else { 0.0 });
        let index =
            |v: &[f64], key: f64| v.binary_search_by(|p| p.total_cmp(&key)).unwrap_or(0) as u32;
        let mut keys: Vec<(u32, u32, u32)> = data
            .iter()
            .map(|c| {
                let tx = if c.x > 0.0 { c.t_x } else { 0.0 };
                (index(&xs, c.x), index(&txs, tx), index(&ts, c.t))
            })
            .collect();
        keys.sort_unstable();
        let mut rows: Vec<(u32, u32, u32, f64)> = Vec::new();
        for k in keys {
            match rows.last_mut() {
                Some(last) if (last.0, last.1, last.2) == k => last.3 += 1.0,
                _ => rows.push((k.0, k.1, k.2, 1.0)),
            }
        }
        Ok(Compressed {
            total_weight: data.len() as f64,
            total_x: data.iter().map(|c| c.x).sum(),
            total_t: data.iter().map(|c| c.t).sum(),
            xs,
            ts,
            txs,
            rows,
        })
    }

    fn log_likelihood(&self, m: &BgNbd) -> f64 {
        let BgNbd { r, alpha, a, b } = *m;
        let ln_b_ab = ln_beta(a, b);
        let ln_gamma_r = ln_gamma(r);
        let r_ln_alpha = r * alpha.ln();
        // Per distinct x: the terms of both likelihood parts that do not involve time.
        let parts: Vec<(f64, f64)> = self
            .xs
            .iter()
            .map(|&x| {
                let common = ln_gamma(r + x) - ln_gamma_r + r_ln_alpha - ln_b_ab;
                let alive = common + ln_beta(a, b + x);
                let dropped = if x > 0.0 {
                    common + ln_beta(a + 1.0, b + x - 1.0)
                } else {
                    f64::NEG_INFINITY
                };
                (alive, dropped)
            })
            .collect();
        let ln_t: Vec<f64> = self.ts.iter().map(|t| (alpha + t).ln()).collect();
        let ln_tx: Vec<f64> = self.txs.iter().map(|t| (alpha + t).ln()).collect();
        let mut sum = CompensatedSum::default();
        for &(xi, txi, ti, w) in &self.rows {
            let (xi, txi, ti) = (xi as usize, txi as usize, ti as usize);
            let x = self.xs[xi];
            let (alive, dropped) = parts[xi];
            let ll_alive = alive - (r + x) * ln_t[ti];
            let ll = if x > 0.0 {
                log_add_exp(ll_alive, dropped - (r + x) * ln_tx[txi])
            } else {
                ll_alive
            };
            sum.add(w * ll);
        }
        sum.total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_distr::{Beta, Distribution, Exp, Gamma};
    use rand_xoshiro::Xoshiro256PlusPlus;

    /// The published weekly CDNOW parameters.
    pub(super) const CDNOW: BgNbd = BgNbd {
        r: 0.243,
        alpha: 4.414,
        a: 0.793,
        b: 2.426,
    };

    pub(super) fn rfm(x: f64, t_x: f64, t: f64) -> Rfm {
        Rfm { x, t_x, t }
    }

    pub(super) fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn edge_cases_stay_finite() {
        let models = [
            CDNOW,
            BgNbd { a: 1.0, ..CDNOW },
            BgNbd {
                r: 0.01,
                alpha: 0.001,
                a: 0.05,
                b: 0.05,
            },
            BgNbd {
                r: 50.0,
                alpha: 1e4,
                a: 40.0,
                b: 300.0,
            },
        ];
        let customers = [
            rfm(0.0, 0.0, 0.0),
            rfm(0.0, 0.0, 38.0),
            rfm(1.0, 0.0, 0.0),
            rfm(1.0, 38.0, 38.0),
            rfm(500.0, 270.0, 273.0),
            rfm(500.0, 10.0, 5000.0),
        ];
        for m in &models {
            for c in &customers {
                for &h in &[0.0, 1e-12, 1e-3, 1.0, 39.0, 365.0, 1e5, 1e9] {
                    let e = m.expected_purchases(c, h);
                    let d = m.discounted_expected_purchases(c, h, 30.0, 0.01);
                    let p0 = m.p_no_purchase(c, h);
                    let pa = m.p_alive(c);
                    for v in [e, d, p0, pa] {
                        assert!(
                            v.is_finite() && v >= 0.0,
                            "{m:?} {c:?} h={h}: {e} {d} {p0} {pa}"
                        );
                    }
                    assert!(p0 <= 1.0 && pa <= 1.0);
                    assert!(d <= e * (1.0 + 1e-9), "{m:?} {c:?} h={h}: {d} > {e}");
                }
            }
        }
    }

    #[test]
    fn one_time_buyers_are_alive() {
        assert_eq!(CDNOW.p_alive(&rfm(0.0, 0.0, 38.0)), 1.0);
        assert_eq!(CDNOW.p_alive(&rfm(0.0, 0.0, 0.0)), 1.0);
        // Someone who bought often and then stopped long ago is probably gone.
        assert!(CDNOW.p_alive(&rfm(10.0, 5.0, 38.0)) < 0.01);
        assert!(CDNOW.p_alive(&rfm(10.0, 37.0, 38.0)) > 0.9);
    }

    #[test]
    fn p_no_purchase_is_a_decreasing_probability() {
        for c in [
            rfm(0.0, 0.0, 10.0),
            rfm(4.0, 20.0, 38.0),
            rfm(500.0, 270.0, 273.0),
        ] {
            let mut previous = 1.0;
            for k in 0..60 {
                let h = 1e-3 * 1.4f64.powi(k);
                let p = CDNOW.p_no_purchase(&c, h);
                assert!(
                    (0.0..=1.0).contains(&p) && p <= previous,
                    "{c:?} h={h}: {p} after {previous}"
                );
                previous = p;
            }
            // It tends to 1 − P(alive): the dead never buy again.
            assert!(
                close(CDNOW.p_no_purchase(&c, 1e12), 1.0 - CDNOW.p_alive(&c), 1e-3)
                    || CDNOW.p_alive(&c) > 0.999
            );
        }
    }

    #[test]
    fn median_days_to_next_purchase_is_where_half_have_bought() {
        // CDNOW's time unit is weeks: within 52 weeks.
        for c in [
            rfm(0.0, 0.0, 10.0),
            rfm(4.0, 20.0, 38.0),
            rfm(10.0, 37.0, 38.0),
            rfm(500.0, 270.0, 273.0),
        ] {
            let h = CDNOW.median_days_to_next_purchase(&c, 52.0);
            if h.is_nan() {
                // Then not even 52 weeks get half-way.
                assert!(CDNOW.p_no_purchase(&c, 52.0) > 0.5 - 1e-12, "{c:?}");
            } else {
                assert!(close(CDNOW.p_no_purchase(&c, h), 0.5, 1e-9), "{c:?} h={h}");
            }
        }
        // A frequent buyer: within weeks; someone long gone: never (P(alive) below ½).
        assert!(CDNOW.median_days_to_next_purchase(&rfm(10.0, 37.0, 38.0), 52.0) < 10.0);
        assert!(CDNOW
            .median_days_to_next_purchase(&rfm(10.0, 5.0, 38.0), 52.0)
            .is_nan());
    }

    #[test]
    fn expected_purchases_increase_with_the_horizon() {
        for m in [CDNOW, BgNbd { a: 1.0, ..CDNOW }, BgNbd { a: 3.0, ..CDNOW }] {
            for c in [
                rfm(0.0, 0.0, 0.0),
                rfm(2.0, 30.0, 38.0),
                rfm(500.0, 270.0, 273.0),
            ] {
                let mut previous = 0.0;
                for k in 0..70 {
                    let h = 1e-3 * 1.4f64.powi(k);
                    let e = m.expected_purchases(&c, h);
                    assert!(e > previous, "{m:?} {c:?} h={h}: {e} after {previous}");
                    previous = e;
                }
            }
        }
    }

    #[test]
    fn short_horizon_rate_is_the_posterior_mean_rate() {
        // With α huge and T small nobody has learnt anything: E ≈ horizon · r/α.
        let m = BgNbd {
            r: 2.0,
            alpha: 1e6,
            a: 1.5,
            b: 4.0,
        };
        let c = rfm(0.0, 0.0, 0.0);
        for &h in &[1.0, 10.0, 100.0] {
            let e = m.expected_purchases(&c, h);
            assert!(close(e, h * m.r / m.alpha, 1e-3), "h={h}: {e}");
        }
        // Same for a repeat buyer over a short horizon: rate (r+x)/(α+T) times P(alive).
        let c = rfm(3.0, 9.0, 10.0);
        let e = m.expected_purchases(&c, 1.0);
        let rate = (m.r + c.x) / (m.alpha + c.t) * m.p_alive(&c);
        assert!(close(e, rate, 1e-3), "{e} vs {rate}");
    }

    #[test]
    fn long_horizons_approach_the_expected_remaining_purchases() {
        // For a > 1 a customer alive now makes (a+b+x−1)/(a−1) purchases on average before
        // dropping out (E[1/p] under Beta(a, b+x)).
        let m = BgNbd {
            r: 1.0,
            alpha: 10.0,
            a: 2.5,
            b: 6.0,
        };
        let c = rfm(2.0, 30.0, 40.0);
        let limit = m.p_alive(&c) * (m.a + m.b + c.x - 1.0) / (m.a - 1.0);
        assert!(close(m.expected_purchases(&c, 1e9), limit, 1e-4));
        assert!(m.expected_purchases(&c, 1e9) < limit);
    }

    #[test]
    fn discounting_matches_a_direct_sum_and_lowers_the_value() {
        let c = rfm(3.0, 25.0, 38.0);
        let (period, rate) = (4.0, 0.02_f64);
        let direct: f64 = (1..=13)
            .map(|k| {
                let k = k as f64;
                let inc = CDNOW.expected_purchases(&c, k * period)
                    - CDNOW.expected_purchases(&c, (k - 1.0) * period);
                inc * (1.0 + rate).powf(-(k - 0.5))
            })
            .sum();
        let ours = CDNOW.discounted_expected_purchases(&c, 52.0, period, rate);
        assert!(close(ours, direct, 1e-12), "{ours} vs {direct}");
        assert!(ours < CDNOW.expected_purchases(&c, 52.0));
        assert!(close(
            CDNOW.discounted_expected_purchases(&c, 52.0, period, 0.0),
            CDNOW.expected_purchases(&c, 52.0),
            1e-12
        ));
    }

    #[test]
    fn rescaling_time_leaves_predictions_unchanged() {
        let days = BgNbd {
            alpha: CDNOW.alpha * 7.0,
            ..CDNOW
        };
        let weeks = days.rescale_time(7.0);
        assert!(
            close(weeks.alpha, CDNOW.alpha, 1e-15)
                && weeks.r == CDNOW.r
                && weeks.a == CDNOW.a
                && weeks.b == CDNOW.b
        );
        let cw = rfm(2.0, 30.43, 38.86);
        let cd = rfm(2.0, 30.43 * 7.0, 38.86 * 7.0);
        assert!(close(
            weeks.expected_purchases(&cw, 52.0),
            days.expected_purchases(&cd, 364.0),
            1e-10
        ));
        assert!(close(weeks.p_alive(&cw), days.p_alive(&cd), 1e-12));
        assert!(close(
            weeks.p_no_purchase(&cw, 13.0),
            days.p_no_purchase(&cd, 91.0),
            1e-12
        ));
    }

    #[test]
    fn fit_rejects_bad_input() {
        let ok = vec![rfm(1.0, 2.0, 3.0); 20];
        let mut bad = ok.clone();
        bad[3].t_x = 4.0;
        assert!(matches!(
            BgNbd::fit(&bad),
            Err(ModelError::InvalidData { index: 3, .. })
        ));
        bad[3] = rfm(f64::NAN, 0.0, 1.0);
        assert!(matches!(
            BgNbd::fit(&bad),
            Err(ModelError::InvalidData { index: 3, .. })
        ));
        bad[3] = rfm(1.5, 0.0, 1.0);
        assert!(matches!(
            BgNbd::fit(&bad),
            Err(ModelError::InvalidData { index: 3, .. })
        ));
        assert!(matches!(
            BgNbd::fit(&ok[..3]),
            Err(ModelError::TooFewCustomers { n: 3, .. })
        ));
        assert!(matches!(
            BgNbd::fit(&vec![rfm(0.0, 0.0, 3.0); 20]),
            Err(ModelError::Degenerate { .. })
        ));
        assert!(CDNOW.log_likelihood(&bad).is_nan());
    }

    #[test]
    fn compression_does_not_change_the_likelihood() {
        let data = vec![
            rfm(0.0, 0.0, 30.0),
            rfm(2.0, 10.0, 30.0),
            rfm(2.0, 10.0, 30.0),
            rfm(5.0, 29.0, 30.0),
            rfm(0.0, 0.0, 30.0),
            rfm(1.0, 3.0, 12.0),
        ];
        let one_by_one: f64 = data
            .iter()
            .map(|c| CDNOW.log_likelihood(std::slice::from_ref(c)))
            .sum();
        assert!(close(CDNOW.log_likelihood(&data), one_by_one, 1e-14));
        // Direct, from the paper's formula.
        let c = rfm(2.0, 10.0, 30.0);
        let BgNbd { r, alpha, a, b } = CDNOW;
        let g = ln_gamma(r + c.x) - ln_gamma(r) + r * alpha.ln();
        let l = (ln_beta(a, b + c.x) - ln_beta(a, b) + g - (r + c.x) * (alpha + c.t).ln()).exp()
            + (ln_beta(a + 1.0, b + c.x - 1.0) - ln_beta(a, b) + g
                - (r + c.x) * (alpha + c.t_x).ln())
            .exp();
        assert!(close(CDNOW.log_likelihood(&[c]), l.ln(), 1e-13));
    }

    /// Simulates BG/NBD customers observed for T whole days, times rounded to days.
    fn simulate(m: &BgNbd, n: usize, seed: u64) -> Vec<Rfm> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let (Ok(lambda), Ok(p)) = (Gamma::new(m.r, 1.0 / m.alpha), Beta::new(m.a, m.b)) else {
            panic!("bad simulation parameters");
        };
        (0..n)
            .map(|_| {
                let t = rng.gen_range(180..=730) as f64;
                let (l, p) = (lambda.sample(&mut rng), p.sample(&mut rng));
                let Ok(gap) = Exp::new(l) else {
                    panic!("bad rate {l}")
                };
                let (mut now, mut x, mut t_x) = (0.0, 0.0, 0.0);
                loop {
                    now += gap.sample(&mut rng);
                    if now > t {
                        break;
                    }
                    x += 1.0;
                    t_x = now;
                    if rng.gen::<f64>() < p {
                        break;
                    }
                }
                rfm(x, f64::min(t_x.round(), t), t)
            })
            .collect()
    }

    #[test]
    fn fit_recovers_simulated_parameters() {
        let truth = BgNbd {
            r: 0.8,
            alpha: 40.0,
            a: 1.2,
            b: 4.0,
        };
        let data = simulate(&truth, 20_000, 42);
        let started = std::time::Instant::now();
        let fit = BgNbd::fit(&data);
        let Ok((m, info)) = fit else {
            panic!("{fit:?}")
        };
        eprintln!("simulated fit: {m:?} {info:?} in {:?}", started.elapsed());
        assert!(info.converged && info.n == 20_000);
        for (got, want) in [
            (m.r, truth.r),
            (m.alpha, truth.alpha),
            (m.a, truth.a),
            (m.b, truth.b),
        ] {
            assert!(close(got, want, 0.10), "{m:?} vs {truth:?}");
        }
        // At the optimum the likelihood is flat in every log-parameter.
        let theta = [m.r.ln(), m.alpha.ln(), m.a.ln(), m.b.ln()];
        let ll = |th: &[f64]| from_log(th).log_likelihood(&data) / data.len() as f64;
        for i in 0..4 {
            let (mut up, mut down) = (theta, theta);
            up[i] += 1e-5;
            down[i] -= 1e-5;
            let g = (ll(&up) - ll(&down)) / 2e-5;
            assert!(g.abs() < 1e-6, "d/dθ{i} = {g}");
        }
    }

    #[test]
    fn fit_is_deterministic() {
        let data = simulate(
            &BgNbd {
                r: 0.8,
                alpha: 40.0,
                a: 1.2,
                b: 4.0,
            },
            2_000,
            7,
        );
        let first = BgNbd::fit(&data);
        assert!(first.is_ok());
        assert_eq!(first, BgNbd::fit(&data));
    }

    #[test]
    fn autotraits() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Rfm>();
        send_sync::<BgNbd>();
        send_sync::<FitInfo>();
        send_sync::<ModelError>();
    }
}
