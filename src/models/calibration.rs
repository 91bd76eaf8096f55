//! Probability calibration of scores: [`Isotonic`] (pool-adjacent-violators) and [`Platt`]
//! (a sigmoid on the score's logit).
//!
//! Both are fitted with `fit(scores, labels)`: pairs are matched by index (the common prefix
//! if the lengths differ), pairs with a `NaN` score or label are skipped, labels must lie in
//! `[0, 1]` (usually 0/1; soft labels are averaged as they are), and at least two distinct
//! label values must remain, else [`CalibrationError::SingleClass`]. `apply` maps a score to
//! a probability in `[0, 1]`; a `NaN` score maps to `NaN`.

use super::gbm::json_f64;
use super::special::sigmoid;
use serde::{Deserialize, Serialize};

/// Why a calibrator could not be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalibrationError {
    /// Fewer than two distinct label values among the usable pairs (or no pair at all).
    #[error("calibration needs both classes among the labels")]
    SingleClass,
    /// A label outside `[0, 1]`.
    #[error("label {value} at index {index} is outside [0, 1]")]
    InvalidLabel {
        /// Index of the pair.
        index: usize,
        /// The label.
        value: f64,
    },
    /// A score the calibrator cannot use: infinite ([`Isotonic`]) or outside `[0, 1]`
    /// ([`Platt`], which works on probabilities).
    #[error("score {value} at index {index} is out of range")]
    InvalidScore {
        /// Index of the pair.
        index: usize,
        /// The score.
        value: f64,
    },
}

/// Usable `(score, label)` pairs: `NaN`s skipped, labels checked, two classes required.
fn usable(
    scores: &[f64],
    labels: &[f64],
    score_ok: impl Fn(f64) -> bool,
) -> Result<Vec<(f64, f64)>, CalibrationError> {
    let mut out = Vec::with_capacity(scores.len().min(labels.len()));
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (index, (&s, &y)) in scores.iter().zip(labels).enumerate() {
        if s.is_nan() || y.is_nan() {
            continue;
        }
        if !(0.0..=1.0).contains(&y) {
            return Err(CalibrationError::InvalidLabel { index, value: y });
        }
        if !score_ok(s) {
            return Err(CalibrationError::InvalidScore { index, value: s });
        }
        lo = lo.min(y);
        hi = hi.max(y);
        out.push((s, y));
    }
    if lo < hi {
        Ok(out)
    } else {
        Err(CalibrationError::SingleClass)
    }
}

/// Isotonic regression of labels on scores by pool-adjacent-violators.
///
/// Equal scores are pooled into one block before fitting (so tied scores always get one
/// value, whatever their order). The fitted map goes through each block's value at the
/// block's lowest and highest score, interpolates linearly between blocks, and is constant
/// beyond the fitted range; it is non-decreasing and clamped to `[0, 1]`.
///
/// Serializable exactly (a loaded map gives the same bits; values serde_json would not read
/// back exactly are written as strings, see `gbm::json_f64`); loading checks that there are
/// as many knot values as knot scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "IsotonicRecord")]
pub struct Isotonic {
    /// Knot scores, strictly increasing.
    #[serde(with = "json_f64::vec")]
    xs: Vec<f64>,
    /// Knot values, non-decreasing, in `[0, 1]`.
    #[serde(with = "json_f64::vec")]
    ys: Vec<f64>,
}

/// An [`Isotonic`] as read, before it is checked.
#[derive(Deserialize)]
struct IsotonicRecord {
    #[serde(with = "json_f64::vec")]
    xs: Vec<f64>,
    #[serde(with = "json_f64::vec")]
    ys: Vec<f64>,
}

impl TryFrom<IsotonicRecord> for Isotonic {
    type Error = String;

    fn try_from(r: IsotonicRecord) -> Result<Isotonic, String> {
        if r.xs.len() != r.ys.len() {
            return Err(format!(
                "isotonic map with {} knot scores but {} values",
                r.xs.len(),
                r.ys.len()
            ));
        }
        Ok(Isotonic { xs: r.xs, ys: r.ys })
    }
}

/// A block of pool-adjacent-violators: weight, label sum, lowest, highest and summed score.
#[derive(Clone, Copy)]
struct Block {
    weight: f64,
    labels: f64,
    lo: f64,
    hi: f64,
    scores: f64,
}

/// Pool-adjacent-violators over usable pairs: blocks of sorted scores with non-decreasing
/// label means (tied scores always in one block); with `strict`, equal means pool too, so the
/// means strictly increase.
fn pav(scores: &[f64], labels: &[f64], strict: bool) -> Result<Vec<Block>, CalibrationError> {
    let mut pairs = usable(scores, labels, f64::is_finite)?;
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut blocks: Vec<Block> = Vec::new();
    let mut i = 0;
    while i < pairs.len() {
        let x = pairs[i].0;
        let mut block = Block {
            weight: 0.0,
            labels: 0.0,
            lo: x,
            hi: x,
            scores: 0.0,
        };
        // `==` so that -0.0 and 0.0 pool.
        while i < pairs.len() && pairs[i].0 == x {
            block.weight += 1.0;
            block.labels += pairs[i].1;
            block.scores += x;
            i += 1;
        }
        blocks.push(block);
        // Pool while the previous block's mean exceeds the last one's.
        while blocks.len() >= 2 {
            let last = blocks[blocks.len() - 1];
            let prev = blocks[blocks.len() - 2];
            let (p, l) = (prev.labels / prev.weight, last.labels / last.weight);
            if p > l || (strict && p == l) {
                blocks.pop();
                let n = blocks.len();
                blocks[n - 1] = Block {
                    weight: prev.weight + last.weight,
                    labels: prev.labels + last.labels,
                    lo: prev.lo,
                    hi: last.hi,
                    scores: prev.scores + last.scores,
                };
            } else {
                break;
            }
        }
    }
    Ok(blocks)
}

impl Isotonic {
    /// Fits the map. Scores must be finite (`NaN` pairs are skipped).
    pub fn fit(scores: &[f64], labels: &[f64]) -> Result<Self, CalibrationError> {
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for b in pav(scores, labels, false)? {
            let v = (b.labels / b.weight).clamp(0.0, 1.0);
            xs.push(b.lo);
            ys.push(v);
            if b.hi > b.lo {
                xs.push(b.hi);
                ys.push(v);
            }
        }
        Ok(Isotonic { xs, ys })
    }

    /// Centred isotonic regression (Oron & Flournoy 2017) with shrunk block values: one knot
    /// per block at its mean score, valued `(Σy + ½)/(n + 1)` (so never 0 or 1, and a block
    /// of few customers claims less), made non-decreasing by a running maximum. Between knots
    /// the map is linear, so distinct scores inside the fitted range keep distinct values
    /// (plain isotonic regression gives a whole block one value).
    pub fn fit_centred(scores: &[f64], labels: &[f64]) -> Result<Self, CalibrationError> {
        let (mut xs, mut ys) = (Vec::new(), Vec::<f64>::new());
        for b in pav(scores, labels, true)? {
            let v = (b.labels + 0.5) / (b.weight + 1.0);
            let v = ys.last().map_or(v, |&last| v.max(last));
            xs.push(b.scores / b.weight);
            ys.push(v);
        }
        Ok(Isotonic { xs, ys })
    }

    /// The calibrated probability of a score.
    pub fn apply(&self, score: f64) -> f64 {
        if score.is_nan() || self.xs.is_empty() {
            return f64::NAN;
        }
        let j = self.xs.partition_point(|x| *x <= score);
        let v = if j == 0 {
            self.ys[0]
        } else if j == self.xs.len() {
            self.ys[j - 1]
        } else {
            let (x0, x1) = (self.xs[j - 1], self.xs[j]);
            let (y0, y1) = (self.ys[j - 1], self.ys[j]);
            let t = (score - x0) / (x1 - x0);
            if t.is_finite() {
                y0 + t.clamp(0.0, 1.0) * (y1 - y0)
            } else {
                y0
            }
        };
        v.clamp(0.0, 1.0)
    }

    /// [`Isotonic::apply`] to every score.
    pub fn apply_all(&self, scores: &[f64]) -> Vec<f64> {
        scores.iter().map(|&s| self.apply(s)).collect()
    }

    /// Number of knots of the fitted map.
    pub fn n_knots(&self) -> usize {
        self.xs.len()
    }
}

/// The churn score's calibration: centred, shrunk isotonic regression
/// ([`Isotonic::fit_centred`]) mixed with Platt scaling, `p = (1 − w)·iso(s) + w·platt(s)`
/// with `w` = [`Smoothed::PLATT_WEIGHT`], both fitted on the same held-out customers.
///
/// Isotonic regression alone is flat on whole blocks and reaches exactly 0 and 1 at the
/// edges: thousands of customers tie on one score, and a probability of 1 claims a certainty
/// no history gives. The shrunk knots keep it inside (0, 1); the Platt part is strictly
/// increasing in the score (when its slope is positive, as it is for any score that ranks), so
/// customers the trees rank apart keep different probabilities, also beyond the isotonic
/// map's range, where it is constant. The result is clamped to
/// `[`[`Smoothed::FLOOR`]`, 1 − FLOOR]` against rounding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Smoothed {
    iso: Isotonic,
    platt: Platt,
    #[serde(with = "json_f64")]
    platt_weight: f64,
}

impl Smoothed {
    /// Weight of the Platt part.
    pub const PLATT_WEIGHT: f64 = 0.2;
    /// No probability is closer to 0 or 1 than this.
    pub const FLOOR: f64 = 1e-9;

    /// Fits both parts on `scores` (probabilities in `[0, 1]`) and `labels`.
    pub fn fit(scores: &[f64], labels: &[f64]) -> Result<Self, CalibrationError> {
        Ok(Smoothed {
            iso: Isotonic::fit_centred(scores, labels)?,
            platt: Platt::fit(scores, labels)?,
            platt_weight: Self::PLATT_WEIGHT,
        })
    }

    /// The calibrated probability of a score; `NaN` for `NaN`.
    pub fn apply(&self, score: f64) -> f64 {
        let w = self.platt_weight;
        let p = (1.0 - w) * self.iso.apply(score) + w * self.platt.apply(score);
        if p.is_nan() {
            p
        } else {
            p.clamp(Self::FLOOR, 1.0 - Self::FLOOR)
        }
    }

    /// [`Smoothed::apply`] to every score.
    pub fn apply_all(&self, scores: &[f64]) -> Vec<f64> {
        scores.iter().map(|&s| self.apply(s)).collect()
    }
}

/// Scores are clamped into `[LOGIT_EPS, 1 − LOGIT_EPS]` before taking their logit.
const LOGIT_EPS: f64 = 1e-12;

fn logit(s: f64) -> f64 {
    let s = s.clamp(LOGIT_EPS, 1.0 - LOGIT_EPS);
    (s / (1.0 - s)).ln()
}

/// `ln(1 + eˣ)` without overflow.
fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// Platt scaling: `p = sigmoid(a·logit(s) + b)` for a score `s` that is a probability.
///
/// Fitted by Newton's method with a backtracking line search (Lin, Lin & Weng 2007) on the
/// cross-entropy against Platt's regularised targets: positives count as
/// `(N₊ + 1)/(N₊ + 2)` and negatives as `1/(N₋ + 2)` (a soft label `y` as the mix
/// `y·t₊ + (1 − y)·t₋`, with `N₊ = Σy`, `N₋ = Σ(1 − y)`), which keeps `a` and `b` finite
/// even on separable data. `a = 1, b = 0` is the identity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Platt {
    /// Slope on the score's logit.
    #[serde(with = "json_f64")]
    pub a: f64,
    /// Intercept.
    #[serde(with = "json_f64")]
    pub b: f64,
}

impl Platt {
    /// Fits `a` and `b`. Scores must lie in `[0, 1]` (`NaN` pairs are skipped); they are
    /// clamped to `[1e-12, 1 − 1e-12]` before taking the logit.
    pub fn fit(scores: &[f64], labels: &[f64]) -> Result<Self, CalibrationError> {
        let pairs = usable(scores, labels, |s| (0.0..=1.0).contains(&s))?;
        let n_pos: f64 = pairs.iter().map(|(_, y)| y).sum();
        let n_neg = pairs.len() as f64 - n_pos;
        let t_pos = (n_pos + 1.0) / (n_pos + 2.0);
        let t_neg = 1.0 / (n_neg + 2.0);
        let data: Vec<(f64, f64)> = pairs
            .iter()
            .map(|&(s, y)| (logit(s), y * t_pos + (1.0 - y) * t_neg))
            .collect();
        let objective = |a: f64, b: f64| {
            data.iter()
                .map(|&(f, t)| {
                    let z = a * f + b;
                    t * softplus(-z) + (1.0 - t) * softplus(z)
                })
                .sum::<f64>()
        };

        const MAX_ITER: usize = 100;
        const MIN_STEP: f64 = 1e-10;
        const RIDGE: f64 = 1e-12;
        let tol = 1e-9 * (data.len() as f64).max(1.0);
        let mut a = 0.0;
        let mut b = ((n_pos + 1.0) / (n_neg + 1.0)).ln();
        let mut obj = objective(a, b);
        for _ in 0..MAX_ITER {
            let (mut g1, mut g2, mut h11, mut h12, mut h22) = (0.0, 0.0, RIDGE, 0.0, RIDGE);
            for &(f, t) in &data {
                let p = sigmoid(a * f + b);
                let d = p - t;
                let w = p * (1.0 - p);
                g1 += d * f;
                g2 += d;
                h11 += w * f * f;
                h12 += w * f;
                h22 += w;
            }
            if g1.abs() < tol && g2.abs() < tol {
                break;
            }
            let det = h11 * h22 - h12 * h12;
            // Also stops on a NaN determinant.
            if det.is_nan() || det <= 0.0 {
                break;
            }
            let da = -(h22 * g1 - h12 * g2) / det;
            let db = -(-h12 * g1 + h11 * g2) / det;
            let slope = g1 * da + g2 * db;
            let mut step = 1.0;
            let mut moved = false;
            while step >= MIN_STEP {
                let (na, nb) = (a + step * da, b + step * db);
                let nobj = objective(na, nb);
                if nobj <= obj + 1e-4 * step * slope {
                    a = na;
                    b = nb;
                    obj = nobj;
                    moved = true;
                    break;
                }
                step /= 2.0;
            }
            if !moved {
                break;
            }
        }
        Ok(Platt { a, b })
    }

    /// The calibrated probability of a score (clamped into `[0, 1]` first).
    pub fn apply(&self, score: f64) -> f64 {
        if score.is_nan() {
            return f64::NAN;
        }
        sigmoid(self.a * logit(score) + self.b).clamp(0.0, 1.0)
    }

    /// [`Platt::apply`] to every score.
    pub fn apply_all(&self, scores: &[f64]) -> Vec<f64> {
        scores.iter().map(|&s| self.apply(s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::metrics::brier;
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    /// Scores that separate perfectly at the top and bottom: plain isotonic regression gives
    /// the edges exactly 0 and 1 and whole blocks one value; the smoothed map does neither,
    /// stays calibrated on average and reads back exactly.
    #[test]
    fn smoothed_calibration_is_never_certain_and_keeps_the_ranking() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let n = 20_000;
        let scores: Vec<f64> = (0..n).map(|_| rng.gen::<f64>()).collect();
        // True probability: 0 below 0.2, 1 above 0.8, linear between.
        let labels: Vec<f64> = scores
            .iter()
            .map(|&s| {
                let p = ((s - 0.2) / 0.6).clamp(0.0, 1.0);
                f64::from(u8::from(rng.gen::<f64>() < p))
            })
            .collect();
        let plain = Isotonic::fit(&scores, &labels).unwrap();
        let plain_p = plain.apply_all(&scores);
        assert!(plain_p.contains(&0.0) && plain_p.contains(&1.0));
        let cal = Smoothed::fit(&scores, &labels).unwrap();
        let p = cal.apply_all(&scores);
        assert!(
            p.iter().all(|&v| v > 0.0 && v < 1.0),
            "a probability of 0 or 1"
        );
        // Strictly increasing in the score: the ranking is the score's.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        for w in order.windows(2) {
            if scores[w[1]] > scores[w[0]] {
                assert!(
                    p[w[1]] > p[w[0]],
                    "{} -> {} but {} -> {}",
                    scores[w[0]],
                    p[w[0]],
                    scores[w[1]],
                    p[w[1]]
                );
            }
        }
        // Still calibrated: the mean probability is the observed rate, per fifth of scores.
        for k in 0..5 {
            let part: Vec<usize> = order[k * n / 5..(k + 1) * n / 5].to_vec();
            let mean_p = part.iter().map(|&i| p[i]).sum::<f64>() / part.len() as f64;
            let rate = part.iter().map(|&i| labels[i]).sum::<f64>() / part.len() as f64;
            assert!(
                (mean_p - rate).abs() < 0.03,
                "fifth {k}: {mean_p} vs {rate}"
            );
        }
        let back: Smoothed = serde_json::from_str(&serde_json::to_string(&cal).unwrap()).unwrap();
        assert_eq!(back, cal);
        assert!(p
            .iter()
            .zip(back.apply_all(&scores))
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn isotonic_pools_violators_and_ties() {
        // Sorted scores 1,2,3,4 with labels 0,1,0,1: blocks (1:0), (2,3: ½), (4: 1).
        let iso = Isotonic::fit(&[3.0, 1.0, 4.0, 2.0], &[0.0, 0.0, 1.0, 1.0]).unwrap();
        assert_eq!(iso.apply(1.0), 0.0);
        assert_eq!(iso.apply(2.0), 0.5);
        assert_eq!(iso.apply(2.5), 0.5);
        assert_eq!(iso.apply(3.0), 0.5);
        assert_eq!(iso.apply(4.0), 1.0);
        assert_eq!(iso.apply(3.5), 0.75, "linear between blocks");
        assert_eq!(iso.apply(-10.0), 0.0);
        assert_eq!(iso.apply(10.0), 1.0);
        assert!(iso.apply(f64::NAN).is_nan());
        // Tied scores get one value whatever their order.
        let a = Isotonic::fit(&[1.0, 1.0, 1.0, 2.0], &[1.0, 0.0, 0.0, 1.0]).unwrap();
        let b = Isotonic::fit(&[1.0, 1.0, 1.0, 2.0], &[0.0, 0.0, 1.0, 1.0]).unwrap();
        assert_eq!(a, b);
        assert!((a.apply(1.0) - 1.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn isotonic_is_monotone_and_improves_brier() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let mut draw = |n: usize| {
            let mut s = Vec::with_capacity(n);
            let mut y = Vec::with_capacity(n);
            for _ in 0..n {
                let p: f64 = rng.gen();
                // Badly calibrated but monotone score: p².
                s.push(p * p);
                y.push(if rng.gen::<f64>() < p { 1.0 } else { 0.0 });
            }
            (s, y)
        };
        let (s_train, y_train) = draw(20_000);
        let (s_test, y_test) = draw(20_000);
        let iso = Isotonic::fit(&s_train, &y_train).unwrap();
        let grid: Vec<f64> = (0..=1000).map(|i| i as f64 / 1000.0).collect();
        let out = iso.apply_all(&grid);
        assert!(out.windows(2).all(|w| w[0] <= w[1]), "not monotone");
        assert!(out.iter().all(|p| (0.0..=1.0).contains(p)));
        let before = brier(&s_test, &y_test);
        let after = brier(&iso.apply_all(&s_test), &y_test);
        // E[(p²−y)²] − E[(p−y)²] = E[(p − p²)²] = 1/30 ≈ 0.033: isotonic should recover
        // most of that gap on held-out data.
        assert!(after < before - 0.025, "before {before}, after {after}");
    }

    #[test]
    fn isotonic_round_trips_exactly() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let s: Vec<f64> = (0..2_000).map(|_| rng.gen::<f64>()).collect();
        let y: Vec<f64> = s
            .iter()
            .map(|&p| if rng.gen::<f64>() < p { 1.0 } else { 0.0 })
            .collect();
        let iso = Isotonic::fit(&s, &y).unwrap();
        let json = serde_json::to_string(&iso).unwrap();
        let loaded: Isotonic = serde_json::from_str(&json).unwrap();
        assert_eq!(loaded, iso);
        let mut probe: Vec<f64> = (0..3_000).map(|_| rng.gen_range(-0.5..1.5)).collect();
        probe.extend([f64::NAN, f64::INFINITY, f64::NEG_INFINITY]);
        let bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(loaded.apply_all(&probe)), bits(iso.apply_all(&probe)));
        // Knot values at the edge of what JSON can say survive too; a damaged map does not load.
        let odd = Isotonic {
            xs: vec![f64::NEG_INFINITY, 0.1 + 0.2],
            ys: vec![0.0, f64::NAN],
        };
        let back: Isotonic = serde_json::from_str(&serde_json::to_string(&odd).unwrap()).unwrap();
        assert_eq!(back.xs, odd.xs);
        assert!(back.ys[1].is_nan());
        assert!(serde_json::from_str::<Isotonic>(r#"{"xs":[0.5,1.0],"ys":[0.2]}"#).is_err());
    }

    #[test]
    fn platt_recovers_a_known_sigmoid() {
        let (a_true, b_true) = (2.0, -0.5);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
        let mut s = Vec::new();
        let mut y = Vec::new();
        for _ in 0..50_000 {
            let u: f64 = rng.gen_range(-3.0..3.0);
            let score = sigmoid(u);
            let p = sigmoid(a_true * u + b_true);
            s.push(score);
            y.push(if rng.gen::<f64>() < p { 1.0 } else { 0.0 });
        }
        let platt = Platt::fit(&s, &y).unwrap();
        assert!((platt.a - a_true).abs() < 0.1, "{platt:?}");
        assert!((platt.b - b_true).abs() < 0.1, "{platt:?}");
        let x = platt.apply(0.7);
        assert!((x - sigmoid(a_true * logit(0.7) + b_true)).abs() < 0.02);
    }

    #[test]
    fn platt_stays_finite_on_separable_data() {
        let s = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9];
        let y = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let platt = Platt::fit(&s, &y).unwrap();
        assert!(platt.a.is_finite() && platt.a > 0.0 && platt.b.is_finite());
        // Targets are 1/5 and 4/5, so the fit cannot be more confident than that by much.
        assert!(
            platt.apply(0.9) < 0.95 && platt.apply(0.1) > 0.05,
            "{platt:?}"
        );
    }

    #[test]
    fn both_need_two_classes_and_valid_input() {
        let s = [0.1, 0.2, 0.3];
        assert_eq!(
            Isotonic::fit(&s, &[1.0, 1.0, 1.0]),
            Err(CalibrationError::SingleClass)
        );
        assert_eq!(
            Platt::fit(&s, &[0.0, 0.0, 0.0]),
            Err(CalibrationError::SingleClass)
        );
        assert_eq!(Platt::fit(&[], &[]), Err(CalibrationError::SingleClass));
        // The only positive is paired with a NaN score: skipped, so one class.
        assert_eq!(
            Platt::fit(&[0.1, f64::NAN], &[0.0, 1.0]),
            Err(CalibrationError::SingleClass)
        );
        assert!(matches!(
            Isotonic::fit(&s, &[0.0, 2.0, 1.0]),
            Err(CalibrationError::InvalidLabel { index: 1, .. })
        ));
        assert!(matches!(
            Platt::fit(&[0.1, 1.5], &[0.0, 1.0]),
            Err(CalibrationError::InvalidScore { index: 1, .. })
        ));
        assert!(matches!(
            Isotonic::fit(&[0.1, f64::INFINITY], &[0.0, 1.0]),
            Err(CalibrationError::InvalidScore { index: 1, .. })
        ));
    }
}
