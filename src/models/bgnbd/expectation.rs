//! Expected purchases of a BG/NBD customer who is alive now, for any a, b > 0.
//!
//! The paper's conditional expectation (its eq. 10) is P(alive) × E, with E the expected
//! purchases over t of a customer alive now whose posterior is r' = r+x, α' = α+T, a' = a,
//! b' = b+x:
//!
//! E = (a'+b'−1)/(a'−1) · [1 − ((α')/(α'+t))^r' ₂F₁(r', b'; a'+b'−1; z)],  z = t/(α'+t).
//!
//! The factor 1/(a'−1) is removable (E = E_p[(1 − (1+pt/α')^−r')/p] is smooth in a for all
//! a > 0), so for a ≤ 1 the same formula holds by analytic continuation, but evaluated as
//! written it is 0/0 near a = 1 and loses all digits for small z. After Euler's transformation
//! the ₂F₁ is 1 + (a'−1)·Σ, and with c = a'+b'−1, L = ln(1−z):
//!
//! E = c·(−L)·exprel((a'−1)L) − (1−z)^(a'−1) · Σₙ≥₁ (c−r')ₙ (a')ₙ₋₁ zⁿ / ((c+1)ₙ₋₁ n!)
//!
//! with exprel(y) = (eʸ−1)/y. Nothing divides by a'−1 or by c, the series parameters do not
//! grow with x (so x = 500 converges in a few terms), and small z costs only the mild
//! cancellation c·z − (c−r')·z = r'·z. When the series would need too many terms (z very near
//! 1 with few purchases: horizons far beyond α+T) or the two parts cancel badly, E is instead
//! computed as the Beta integral E_p[(1 − (1+p·t/α')^−r')/p] by tanh-sinh quadrature, which
//! handles the endpoint singularities of the Beta density for any a, b > 0.

use super::super::special::{exprel, ln_beta};

/// a + b beyond which p ~ Beta(a, b) is treated as the point mass at a/(a+b): its variance is
/// below 1/(a+b), so E differs from the point-mass value by a relative ~1e-5 or less, while
/// the series needs ~a terms and the quadrature's grid misses so narrow a peak. Fits on a
/// short history end there (a ≈ 9e4, b ≈ 3e6 seen: every customer took 10 ms).
const POINT_MASS: f64 = 1e5;

/// E for p fixed at a/(a+b) (see [`POINT_MASS`]): (1 − (1+p·s)^−r)/p.
fn expected_at_point_mass(r: f64, a: f64, b: f64, s: f64) -> f64 {
    let p = a / (a + b);
    -(-r * (p * s).ln_1p()).exp_m1() / p
}

/// Series terms before switching to quadrature.
const SERIES_MAX_TERMS: usize = 5_000;
/// Accept the series only when the result keeps at least ~9 of its 16 digits.
const MAX_CANCELLATION: f64 = 1e7;

/// Expected purchases over (0, t] of a customer alive at 0 with λ ~ Gamma(r, α) and
/// p ~ Beta(a, b): E_p[(1 − (1+p·t/α)^−r)/p] (see the module docs for the method).
///
/// 0 for t ≤ 0 or NaN; for t = +inf the limit (a+b−1)/(a−1) when a > 1, else +inf.
pub fn expected_if_alive(r: f64, alpha: f64, a: f64, b: f64, t: f64) -> f64 {
    if t.is_nan() || t <= 0.0 {
        return 0.0;
    }
    if t == f64::INFINITY {
        return if a > 1.0 {
            (a + b - 1.0) / (a - 1.0)
        } else {
            f64::INFINITY
        };
    }
    let s = t / alpha;
    if a + b > POINT_MASS {
        return expected_at_point_mass(r, a, b, s);
    }
    match expected_if_alive_series(r, a, b, s) {
        Some(e) => e,
        None => expected_if_alive_quadrature(r, a, b, s),
    }
}

/// [`expected_if_alive`] at several horizons `ts` (each ≥ 0 or NaN, finite), the same numbers
/// as one call per horizon. The series' factors (c−r+n)/(c+n) and (a+n−1)/(n+1) do not depend
/// on the horizon, so they are computed once per term for all horizons; only the powers of z and
/// the convergence test are per horizon. The discounted expectation needs a dozen horizons per
/// customer, and these divisions were most of its time.
pub fn expected_if_alive_many(r: f64, alpha: f64, a: f64, b: f64, ts: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(ts.len());
    for chunk in ts.chunks(LANES) {
        out.extend_from_slice(&expected_if_alive_lanes(r, alpha, a, b, chunk)[..chunk.len()]);
    }
    out
}

/// [`expected_if_alive_many`] for at most [`LANES`] horizons, without allocating: the first
/// `ts.len()` values are the answers.
pub fn expected_if_alive_lanes(r: f64, alpha: f64, a: f64, b: f64, ts: &[f64]) -> [f64; LANES] {
    let mut out = [0.0; LANES];
    if a + b > POINT_MASS {
        for (o, &t) in out.iter_mut().zip(ts) {
            *o = expected_if_alive(r, alpha, a, b, t);
        }
        return out;
    }
    let mut series = Series::new(r, a, b, ts.iter().map(|&t| t / alpha));
    series.run();
    for ((o, &t), e) in out.iter_mut().zip(ts).zip(series.result()) {
        *o = if t.is_nan() || t <= 0.0 || t == f64::INFINITY {
            expected_if_alive(r, alpha, a, b, t)
        } else {
            e.unwrap_or_else(|| expected_if_alive_quadrature(r, a, b, t / alpha))
        };
    }
    out
}

/// The Euler-transformed closed form; `None` when it converges too slowly or cancels badly.
fn expected_if_alive_series(r: f64, a: f64, b: f64, s: f64) -> Option<f64> {
    let mut series = Series::new(r, a, b, std::iter::once(s));
    series.run();
    let e = series.result().next().flatten();
    e
}

/// Horizons one [`Series`] sums together. Fixed-size lanes (unused ones inert) let the
/// per-term loop run without branches or allocation: in the 1,000,000-customer scoring night
/// (perf), the discounted expectation was 64 % of the models stage, a fifth of it
/// allocating, growing and freeing the series' per-horizon vectors, another fifth the
/// branchy per-horizon loop.
pub const LANES: usize = 16;

/// The Euler-transformed series of [`expected_if_alive`] at up to [`LANES`] values of
/// s = t/α, summed together: Σ uₙ with u₁ = (c−r)z and uₙ₊₁/uₙ = z · (c−r+n)/(c+n) · (a+n−1)/(n+1).
/// Each horizon stops adding terms once its own bound is met, exactly as if it were alone.
struct Series {
    r: f64,
    a: f64,
    c: f64,
    /// Horizons in use (the first `len` lanes).
    len: usize,
    /// Per horizon: c·(−L)·exprel((a−1)L), with L = ln(1−z).
    head: [f64; LANES],
    /// Per horizon: (1−z)^(a−1).
    weight: [f64; LANES],
    z: [f64; LANES],
    term: [f64; LANES],
    sum: [f64; LANES],
    converged: [bool; LANES],
}

impl Series {
    /// At most [`LANES`] horizons (more is a bug of the caller).
    fn new(r: f64, a: f64, b: f64, s: impl Iterator<Item = f64>) -> Series {
        let c = a + b - 1.0;
        let mut series = Series {
            r,
            a,
            c,
            len: 0,
            head: [0.0; LANES],
            weight: [0.0; LANES],
            z: [0.0; LANES],
            term: [0.0; LANES],
            sum: [0.0; LANES],
            converged: [true; LANES],
        };
        for (k, s) in s.enumerate() {
            assert!(k < LANES, "a series of more than {LANES} horizons");
            // ln(1−z) and z for z = s/(1+s), without forming 1−z.
            let ln_1mz = -s.ln_1p();
            let z = s / (1.0 + s);
            let term = (c - r) * z;
            series.head[k] = c * (-ln_1mz) * exprel((a - 1.0) * ln_1mz);
            series.weight[k] = ((a - 1.0) * ln_1mz).exp();
            series.z[k] = z;
            series.term[k] = term;
            series.sum[k] = term;
            // Horizons the caller answers without the series (t ≤ 0, NaN, +inf) are left out.
            series.converged[k] = term == 0.0 || !(s > 0.0 && s.is_finite());
            series.len = k + 1;
        }
        series
    }

    /// Adds terms until every horizon's series has converged or the term budget is spent.
    /// Every lane is computed each term and a converged lane keeps its values (a select, not a
    /// branch), so each horizon's sum is the one it would have alone.
    fn run(&mut self) {
        let (r, a, c) = (self.r, self.a, self.c);
        for n in 1..SERIES_MAX_TERMS {
            if self.converged.iter().all(|&done| done) {
                break;
            }
            let nf = n as f64;
            let f1 = (c - r + nf) / (c + nf);
            let f2 = (a + nf - 1.0) / (nf + 1.0);
            // Once both factors are positive each moves monotonically towards 1, so every
            // later ratio is at most q = z·max(f1', 1)·max(f2', 1) (primes: the next factors)
            // and the rest of the series at most |term|·q/(1−q).
            let f1_next = (c - r + nf + 1.0) / (c + nf + 1.0);
            let f2_next = (a + nf) / (nf + 2.0);
            let bounded = f1_next > 0.0 && f2_next > 0.0;
            let growth = f1_next.max(1.0) * f2_next.max(1.0);
            for k in 0..LANES {
                let active = !self.converged[k];
                let z = self.z[k];
                let term = self.term[k] * (z * f1 * f2);
                let sum = self.sum[k] + term;
                // bound ≤ 1e-17·scale, multiplied through by 1−q > 0 (no division).
                let q = z * growth;
                let scale = self.head[k].abs().max(self.weight[k] * sum.abs());
                // `&` and `|`, not `&&` and `||`: no branches, so the lanes vectorise.
                let done = (term == 0.0)
                    | (bounded
                        & (q < 1.0)
                        & (self.weight[k] * term.abs() * q <= 1e-17 * scale * (1.0 - q)));
                self.term[k] = if active { term } else { self.term[k] };
                self.sum[k] = if active { sum } else { self.sum[k] };
                self.converged[k] = !active || done;
            }
        }
    }

    /// Per horizon, E or `None` where the series did not converge or cancels badly.
    fn result(&self) -> impl Iterator<Item = Option<f64>> + '_ {
        (0..self.len).map(|k| {
            if !self.converged[k] {
                return None;
            }
            let tail = self.weight[k] * self.sum[k];
            let e = self.head[k] - tail;
            let scale = self.head[k].abs().max(tail.abs());
            (e.is_finite() && e >= 0.0 && e * MAX_CANCELLATION >= scale).then_some(e)
        })
    }
}

/// E_p[(1 − (1+p·s)^−r)/p] for p ~ Beta(a, b) by tanh-sinh quadrature over p ∈ (0, 1).
///
/// With p = 1/(1+e^−v), v = π·sinh u, the Beta density times dp/du is
/// exp(a·ln p + b·ln(1−p) − ln B(a,b))·π·cosh u, evaluated in logs so neither tail underflows
/// early; the trapezoidal rule in u converges double-exponentially for these integrands.
fn expected_if_alive_quadrature(r: f64, a: f64, b: f64, s: f64) -> f64 {
    let ln_b = ln_beta(a, b);
    let ln_s = s.ln();
    let softplus = |v: f64| v.max(0.0) + (-v.abs()).exp().ln_1p();
    let integrand = |u: f64| -> f64 {
        let v = std::f64::consts::PI * u.sinh();
        let ln_p = -softplus(-v);
        let ln_q = -softplus(v);
        let ln_ps = ln_p + ln_s;
        let f = if ln_ps < -25.0 {
            let ps = ln_ps.exp();
            r * s * (1.0 - 0.5 * (r + 1.0) * ps)
        } else {
            -(-r * ln_ps.exp().ln_1p()).exp_m1() / ln_p.exp()
        };
        let w = (a * ln_p + b * ln_q - ln_b).exp() * std::f64::consts::PI * u.cosh();
        let g = f * w;
        if g.is_finite() {
            g
        } else {
            0.0
        }
    };
    // Far enough out that p^a (left) and (1−p)^b (right) are below e^−60.
    let reach = |shape: f64| {
        (60.0 / (shape.min(1.0) * std::f64::consts::PI))
            .asinh()
            .max(3.0)
    };
    let (lo, hi) = (-reach(a), reach(b));
    // Σ integrand(±k·h) for k = 1, 1 + step, 1 + 2·step, … inside [lo, hi].
    let sweep = |h: f64, step: f64| {
        let mut sum = 0.0;
        let mut k = 1.0;
        while -k * h >= lo || k * h <= hi {
            if -k * h >= lo {
                sum += integrand(-k * h);
            }
            if k * h <= hi {
                sum += integrand(k * h);
            }
            k += step;
        }
        sum
    };
    let mut h = 0.5;
    let mut sum = integrand(0.0) + sweep(h, 1.0);
    let mut estimate = sum * h;
    for _ in 0..10 {
        h *= 0.5;
        // Add the midpoints of the previous level.
        sum += sweep(h, 2.0);
        let next = sum * h;
        // Each halving roughly doubles the correct digits, so a change of 1e-8 between levels
        // means the new estimate is good to far better than that.
        let done = (next - estimate).abs() <= 1e-8 * next.abs();
        estimate = next;
        if done {
            break;
        }
    }
    estimate.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::super::{BgNbd, Rfm};
    use super::*;
    use crate::models::special::hyp2f1;

    use super::super::tests::{close, rfm, CDNOW};

    /// The paper's eq. 10, evaluated literally (valid away from a = 1).
    fn paper_expected(m: &BgNbd, c: &Rfm, t: f64) -> f64 {
        let (r, alpha, a, b, x) = (m.r, m.alpha, m.a, m.b, c.x);
        let z = t / (alpha + c.t + t);
        let f = hyp2f1(r + x, b + x, a + b + x - 1.0, z).unwrap_or(f64::NAN);
        let g = ((alpha + c.t) / (alpha + c.t + t)).powf(r + x);
        (a + b + x - 1.0) / (a - 1.0) * (1.0 - g * f) * m.p_alive(c)
    }

    #[test]
    fn many_horizons_equal_one_call_each() {
        let shapes = [
            (0.243, 4.414, 0.793, 2.426),
            (2.0, 30.0, 1.7, 9.0),
            (0.05, 0.5, 0.2, 0.4),
            (12.0, 80.0, 1.0, 1.0),
            (40.5, 400.0, 0.9, 45.0),
        ];
        let ts = [
            0.0,
            -1.0,
            f64::NAN,
            1e-9,
            0.5,
            30.4375,
            60.875,
            91.3,
            182.6,
            365.0,
            3650.0,
            1e6,
            1e9,
            f64::INFINITY,
        ];
        for &(r, alpha, a, b) in &shapes {
            let many = expected_if_alive_many(r, alpha, a, b, &ts);
            for (&t, &e) in ts.iter().zip(&many) {
                let one = expected_if_alive(r, alpha, a, b, t);
                assert!(
                    e.to_bits() == one.to_bits(),
                    "r={r} alpha={alpha} a={a} b={b} t={t}: {e} vs {one}"
                );
            }
        }
    }

    #[test]
    fn series_matches_the_papers_formula() {
        let models = [
            CDNOW,
            BgNbd {
                r: 2.0,
                alpha: 30.0,
                a: 1.7,
                b: 9.0,
            },
            BgNbd {
                r: 0.05,
                alpha: 0.5,
                a: 0.2,
                b: 0.4,
            },
        ];
        let customers = [
            rfm(0.0, 0.0, 30.0),
            rfm(2.0, 30.43, 38.86),
            rfm(7.0, 20.0, 25.0),
            rfm(40.0, 300.0, 310.0),
        ];
        for m in &models {
            for c in &customers {
                for &t in &[0.01, 1.0, 10.0, 39.0, 100.0] {
                    let ours = m.expected_purchases(c, t);
                    let paper = paper_expected(m, c, t);
                    assert!(
                        close(ours, paper, 1e-8),
                        "{m:?} {c:?} t={t}: {ours} vs {paper}"
                    );
                }
            }
        }
    }

    #[test]
    fn series_matches_quadrature() {
        for &(r, a, b) in &[
            (0.243, 0.793, 2.426),
            (0.243, 1.0, 2.426),
            (1.0, 1.0 + 1e-9, 1.0),
            (3.0, 0.1, 0.3),
            (0.5, 4.0, 500.0),
            (500.2, 0.793, 502.4),
        ] {
            for &s in &[1e-6, 0.01, 0.3, 1.0, 7.0, 80.0] {
                let series = expected_if_alive_series(r, a, b, s);
                let quad = expected_if_alive_quadrature(r, a, b, s);
                assert!(
                    series.is_some_and(|v| close(v, quad, 1e-8)),
                    "r={r} a={a} b={b} s={s}: {series:?} vs {quad}"
                );
            }
        }
    }

    /// A fit with a concentrated dropout probability (a + b in the millions, as fits on a
    /// short history give) is answered at the point mass, fast, and close to the series
    /// where the series still converges (a + b ≈ 6e3; the gap shrinks like 1/(a+b)).
    #[test]
    fn concentrated_dropout_uses_the_point_mass() {
        let (r, alpha) = (0.9, 31.0);
        for &t in &[1.0, 30.0, 365.0] {
            let s = t / alpha;
            let point = expected_at_point_mass(r, 200.0, 6_000.0, s);
            let series = expected_if_alive_series(r, 200.0, 6_000.0, s);
            assert!(
                series.is_some_and(|v| close(v, point, 1e-3)),
                "t={t}: {series:?} vs {point}"
            );
        }
        let clock = std::time::Instant::now();
        let e = expected_if_alive_many(r, alpha, 92_972.0, 3_409_837.0, &[30.0, 365.0]);
        assert!(clock.elapsed().as_millis() < 50, "{:?}", clock.elapsed());
        let p: f64 = 92_972.0 / (92_972.0 + 3_409_837.0);
        assert!(close(
            e[1],
            -(-r * (p * 365.0 / alpha).ln_1p()).exp_m1() / p,
            1e-12
        ));
    }

    #[test]
    fn a_near_and_below_one_is_continuous() {
        let c = rfm(3.0, 20.0, 30.0);
        let at = |a: f64| BgNbd { a, ..CDNOW }.expected_purchases(&c, 52.0);
        let (below, one, above) = (at(1.0 - 1e-10), at(1.0), at(1.0 + 1e-10));
        assert!(
            close(below, one, 1e-8) && close(above, one, 1e-8),
            "{below} {one} {above}"
        );
        // Smooth across a = 1: the midpoint of a symmetric pair is the value at 1.
        let (l, h) = (at(0.99), at(1.01));
        assert!(close(0.5 * (l + h), one, 1e-4), "{l} {one} {h}");
    }

    #[test]
    fn far_horizons_fall_back_to_quadrature_smoothly() {
        let (r, a, b) = (0.243, 0.793, 2.426);
        // Horizons ~10⁶ times α+T: the series would need millions of terms.
        assert!(expected_if_alive_series(r, a, b, 1e6).is_none());
        let mut previous = 0.0;
        for k in 0..=50 {
            let s = 10f64.powf(1.0 + k as f64 * 0.1);
            let e = expected_if_alive(r, 1.0, a, b, s);
            let quad = expected_if_alive_quadrature(r, a, b, s);
            assert!(close(e, quad, 1e-8) && e > previous, "s={s}: {e} vs {quad}");
            previous = e;
        }
    }
}
