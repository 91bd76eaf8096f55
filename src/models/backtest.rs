//! The built-in backtest: each run evaluates its models on the newest window it can label
//! honestly: the production recipe replayed one window (90 days) earlier, scored as of D−90
//! and compared with what customers did in (D−90, D]. The trees and the classical BG/NBD +
//! Gamma-Gamma are scored side by side on the same customers, overall and per group (buyers,
//! never-buyers, new customers): a group the overall figures hide shows here. Nothing is
//! scored on data it was fitted on.

use serde::Serialize;

use super::metrics::{
    brier, calibration_table, expected_calibration_error, roc_auc, spearman, top_decile_lift,
    top_share_capture, CalibrationBin,
};

/// Churn metrics of one scorer.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnMetrics {
    /// ROC AUC of the score vs "no completed order in the window".
    pub auc: f64,
    /// Brier score (mean squared error of the probability).
    pub brier: f64,
    /// Brier score of always predicting the base rate (the bar to beat).
    pub base_rate_brier: f64,
    /// Mean score: beside the observed churn rate, the calibration in one number.
    pub mean_score: f64,
    /// Expected calibration error (10 equal-width bins, count-weighted).
    pub ece: f64,
    /// Churn rate among the top 10 % by score ÷ overall churn rate.
    pub top_decile_lift: f64,
    /// The calibration table.
    pub calibration: Vec<CalibrationBin>,
}

impl ChurnMetrics {
    /// Metrics of probabilities `p` against outcomes `y` (1 = churned).
    pub fn new(p: &[f64], y: &[f64]) -> ChurnMetrics {
        let rate = y.iter().sum::<f64>() / y.len().max(1) as f64;
        let table = calibration_table(p, y, 10);
        ChurnMetrics {
            auc: roc_auc(p, y),
            brier: brier(p, y),
            base_rate_brier: rate * (1.0 - rate),
            mean_score: p.iter().sum::<f64>() / p.len().max(1) as f64,
            ece: expected_calibration_error(&table),
            top_decile_lift: top_decile_lift(p, y),
            calibration: table,
        }
    }
}

/// Value metrics of one scorer.
#[derive(Debug, Clone, Serialize)]
pub struct ValueMetrics {
    /// Spearman rank correlation of the score with realised net revenue.
    pub spearman: f64,
    /// Share of realised revenue held by the top 20 % of customers by score.
    pub top20_capture: f64,
}

impl ValueMetrics {
    /// Metrics of scores `v` against realised revenue `r`.
    pub fn new(v: &[f64], r: &[f64]) -> ValueMetrics {
        ValueMetrics {
            spearman: spearman(v, r),
            top20_capture: top_share_capture(v, r, 0.2),
        }
    }
}

/// The backtest report (manifest `models.backtest`, and `segmenter evaluate`).
#[derive(Debug, Clone, Serialize)]
pub struct Backtest {
    /// The as-of instant the models were scored at (D−90).
    pub scored_at: String,
    /// Length of the outcome window compared with, in days.
    pub window_days: i64,
    /// Customers scored.
    pub customers: usize,
    /// Share of them with no completed order in the window.
    pub churn_rate: f64,
    /// Churn: the gradient-boosted trees (trained as of D−210 … D−450, calibrated as
    /// of D−180).
    pub churn_trees: Option<ChurnMetrics>,
    /// Churn: BG/NBD P(no purchase in 90 days) (never-buyers: the training non-buyer rate).
    pub churn_bgnbd: Option<ChurnMetrics>,
    /// Value: the gradient-boosted trees (fitted as of D−455), against realised net revenue.
    pub value_trees: Option<ValueMetrics>,
    /// Value: BG/NBD × Gamma-Gamma discounted CLV.
    pub value_bgnbd_gg: Option<ValueMetrics>,
    /// Churn per group of the scored customers (see [`Group`]).
    pub groups: Vec<GroupMetrics>,
    /// BG/NBD's Brier score minus the trees' (positive: the trees are better), and its 5th
    /// percentile over 200 paired bootstrap resamples of the scored customers: the trees are
    /// chosen only when that percentile is above 0, i.e. when they beat BG/NBD by more than
    /// the backtest's noise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn_brier_gain: Option<Margin>,
    /// What was left out and why.
    pub notes: Vec<String>,
}

/// How much better one scorer is than another, with the noise of the estimate.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Margin {
    /// The gain on all scored customers.
    pub gain: f64,
    /// Its 5th percentile over the bootstrap resamples.
    pub p05: f64,
}

impl Margin {
    /// Resamples in [`Margin::brier_gain`].
    pub const RESAMPLES: usize = 200;

    /// Brier(`base`) − Brier(`p`) against `y`, and its 5th percentile over paired bootstrap
    /// resamples of the customers (deterministic for a `seed`).
    pub fn brier_gain(p: &[f64], base: &[f64], y: &[f64], seed: u64) -> Margin {
        use rand::{Rng, SeedableRng};
        // Per customer: the gain in squared error; the Brier gain is their mean.
        let d: Vec<f64> = p
            .iter()
            .zip(base)
            .zip(y)
            .map(|((p, b), y)| (b - y).powi(2) - (p - y).powi(2))
            .collect();
        let n = d.len();
        let gain = d.iter().sum::<f64>() / n.max(1) as f64;
        if n == 0 {
            return Margin { gain, p05: gain };
        }
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut gains: Vec<f64> = (0..Self::RESAMPLES)
            .map(|_| (0..n).map(|_| d[rng.gen_range(0..n)]).sum::<f64>() / n as f64)
            .collect();
        gains.sort_by(f64::total_cmp);
        Margin {
            gain,
            p05: gains[Self::RESAMPLES / 20],
        }
    }
}

/// The groups the backtest reports churn for, as of the scored snapshot's cut-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// With at least one completed order before the cut-off.
    Buyers,
    /// Without a completed order before the cut-off (sign-ups, browsers, customers whose
    /// orders were all returned or cancelled).
    NeverBuyers,
    /// First seen (order, visit or sign-up) at most 90 days before the cut-off.
    New,
}

/// Churn metrics of one group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupMetrics {
    /// The group.
    pub group: Group,
    /// Its customers.
    pub customers: usize,
    /// Share of them with no completed order in the window (NaN, JSON null, when none).
    pub churn_rate: f64,
    /// The trees' scores.
    pub trees: Option<ChurnMetrics>,
    /// BG/NBD's.
    pub bgnbd: Option<ChurnMetrics>,
}

impl GroupMetrics {
    /// The metrics of the rows in `member` (one flag per scored customer).
    pub fn new(
        group: Group,
        member: &[bool],
        y: &[f64],
        trees: Option<&[f64]>,
        bgnbd: Option<&[f64]>,
    ) -> GroupMetrics {
        let pick = |v: &[f64]| -> Vec<f64> {
            v.iter()
                .zip(member)
                .filter(|(_, m)| **m)
                .map(|(x, _)| *x)
                .collect()
        };
        let gy = pick(y);
        let metrics = |p: Option<&[f64]>| {
            p.filter(|_| !gy.is_empty())
                .map(|p| ChurnMetrics::new(&pick(p), &gy))
        };
        GroupMetrics {
            group,
            customers: gy.len(),
            churn_rate: if gy.is_empty() {
                f64::NAN
            } else {
                gy.iter().sum::<f64>() / gy.len() as f64
            },
            trees: metrics(trees),
            bgnbd: metrics(bgnbd),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The margin says "better" only when the gain stands out from resampling noise: a scorer
    /// better on every customer clears it, the same scores do not, and a tiny gain on a few
    /// customers (as one backtest's luck gives) does not either.
    #[test]
    fn brier_margin_needs_a_gain_beyond_the_noise() {
        let n = 2_000;
        let y: Vec<f64> = (0..n).map(|i| f64::from(u8::from(i % 3 == 0))).collect();
        let base: Vec<f64> = vec![0.5; n];
        let better: Vec<f64> = y.iter().map(|&y| 0.2 + 0.6 * y).collect();
        let m = Margin::brier_gain(&better, &base, &y, 1);
        assert!(m.gain > 0.0 && m.p05 > 0.0, "{m:?}");
        let same = Margin::brier_gain(&base, &base, &y, 1);
        assert_eq!((same.gain, same.p05), (0.0, 0.0));
        // Better on 10 customers, worse on 10 others by almost as much (a net gain of 0.0002
        // with a resampling spread of about 0.0005): no margin.
        let mut lucky = base.clone();
        for i in 0..10 {
            lucky[i] = if y[i] > 0.5 { 0.9 } else { 0.1 };
            lucky[n - 1 - i] = if y[n - 1 - i] > 0.5 { 0.33 } else { 0.67 };
        }
        let m = Margin::brier_gain(&lucky, &base, &y, 1);
        assert!(m.gain > 0.0 && m.p05 < 0.0, "{m:?}");
        // Deterministic for a seed.
        assert_eq!(
            Margin::brier_gain(&lucky, &base, &y, 7).p05,
            Margin::brier_gain(&lucky, &base, &y, 7).p05
        );
    }
}
