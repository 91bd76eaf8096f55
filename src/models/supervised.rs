//! The supervised models: gradient-boosted trees on a snapshot's features (SQL features plus
//! the classical models' outputs), labelled with what happened after that snapshot.
//!
//! Churn: logistic loss, fitted on three quarters of the customers (by id hash) and
//! calibrated by isotonic regression on the remaining quarter, so the score is a probability.
//! Value: squared loss on log(1 + discounted 365-day net revenue), which ranks customers far
//! better than squared loss on the heavy-tailed revenue itself; back on the money scale, one
//! factor fitted on the held-out quarter makes the predictions sum to what those customers
//! really spent, so totals per segment are expectations, as CLV is, and the ranking is the
//! trees'.

use serde::Serialize;

use super::calibration::Isotonic;
use super::design::{rows_in_part, Design};
use super::gbm::{Gbm, GbmParams, Loss};
use crate::error::{Error, Result};

/// Training rows at most per model (a deterministic sample by id hash): more adds time, not
/// accuracy, at these model sizes.
pub const MAX_TRAINING_ROWS: usize = 40_000;

/// What the manifest records about a fitted supervised model.
#[derive(Debug, Clone, Serialize)]
pub struct Fitted {
    /// Rows used to fit the trees.
    pub training_rows: usize,
    /// Rows used to calibrate (churn: isotonic map; value: the money-scale factor).
    pub calibration_rows: usize,
    /// The most important features (share of total split gain), best first.
    pub top_features: Vec<(String, f64)>,
}

/// A churn model: trees + calibration, remembering its feature columns.
pub struct ChurnModel {
    design: Design,
    gbm: Gbm,
    calibration: Isotonic,
    /// For the manifest.
    pub fitted: Fitted,
}

/// A value model.
pub struct ValueModel {
    design: Design,
    gbm: Gbm,
    /// Money-scale factor (see the module documentation).
    scale: f64,
    /// For the manifest.
    pub fitted: Fitted,
}

fn params(loss: Loss, seed: u64) -> GbmParams {
    GbmParams {
        loss,
        n_trees: 120,
        learning_rate: 0.08,
        max_depth: 4,
        min_samples_leaf: 40,
        seed,
        ..GbmParams::default()
    }
}

fn top_features(design: &Design, gbm: &Gbm) -> Vec<(String, f64)> {
    let mut imp: Vec<(String, f64)> = design
        .names
        .iter()
        .cloned()
        .zip(gbm.feature_importance())
        .collect();
    imp.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    imp.truncate(8);
    imp
}

fn model_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Model(format!("{what}: {e}"))
}

impl ChurnModel {
    /// Fits on `design` (one row per customer of the training snapshot) with `churned` labels
    /// (1 = no completed order in the following 90 days).
    pub fn fit(design: Design, ids: &[String], churned: &[f64], seed: u64) -> Result<ChurnModel> {
        let fit_rows = rows_in_part(ids, 4, 0, 3, MAX_TRAINING_ROWS);
        let cal_rows = rows_in_part(ids, 4, 3, 4, MAX_TRAINING_ROWS / 3);
        let y: Vec<f64> = fit_rows.iter().map(|&i| churned[i]).collect();
        let gbm = Gbm::fit(&design.select(&fit_rows), &y, &params(Loss::Logistic, seed))
            .map_err(|e| model_err("fitting the churn trees", e))?;
        let raw = gbm.predict(&design.select(&cal_rows));
        let cal_y: Vec<f64> = cal_rows.iter().map(|&i| churned[i]).collect();
        let calibration =
            Isotonic::fit(&raw, &cal_y).map_err(|e| model_err("calibrating the churn score", e))?;
        let fitted = Fitted {
            training_rows: fit_rows.len(),
            calibration_rows: cal_rows.len(),
            top_features: top_features(&design, &gbm),
        };
        Ok(ChurnModel {
            design,
            gbm,
            calibration,
            fitted,
        })
    }

    /// Calibrated P(no completed order in the next 90 days) for the customers of `design`.
    pub fn predict(&self, design: &Design) -> Vec<f64> {
        let raw = self.gbm.predict(&self.design.align(design));
        self.calibration.apply_all(&raw)
    }
}

impl ValueModel {
    /// Fits on `design` with `value` = discounted net revenue over the following 365 days.
    pub fn fit(design: Design, ids: &[String], value: &[f64], seed: u64) -> Result<ValueModel> {
        let fit_rows = rows_in_part(ids, 4, 0, 3, MAX_TRAINING_ROWS);
        let cal_rows = rows_in_part(ids, 4, 3, 4, MAX_TRAINING_ROWS / 3);
        let y: Vec<f64> = fit_rows
            .iter()
            .map(|&i| value[i].max(0.0).ln_1p())
            .collect();
        let gbm = Gbm::fit(&design.select(&fit_rows), &y, &params(Loss::Squared, seed))
            .map_err(|e| model_err("fitting the value trees", e))?;
        let predicted: f64 = gbm
            .predict(&design.select(&cal_rows))
            .into_iter()
            .map(|v| v.exp_m1().max(0.0))
            .sum();
        let realised: f64 = cal_rows.iter().map(|&i| value[i].max(0.0)).sum();
        let scale = money_scale(predicted, realised);
        let fitted = Fitted {
            training_rows: fit_rows.len(),
            calibration_rows: cal_rows.len(),
            top_features: top_features(&design, &gbm),
        };
        Ok(ValueModel {
            design,
            gbm,
            scale,
            fitted,
        })
    }

    /// Expected discounted 365-day net revenue (≥ 0) for the customers of `design`.
    pub fn predict(&self, design: &Design) -> Vec<f64> {
        self.gbm
            .predict(&self.design.align(design))
            .into_iter()
            .map(|v| v.exp_m1().max(0.0) * self.scale)
            .collect()
    }
}

/// The factor that turns back-transformed log predictions into expectations: realised over
/// predicted on held-out rows; 1 when either side is empty or not finite.
fn money_scale(predicted: f64, realised: f64) -> f64 {
    let scale = realised / predicted;
    if scale.is_finite() && scale > 0.0 {
        scale
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::money_scale;

    #[test]
    fn money_scale_is_realised_over_predicted_and_safe() {
        assert_eq!(money_scale(50.0, 100.0), 2.0);
        assert_eq!(money_scale(0.0, 100.0), 1.0);
        assert_eq!(money_scale(100.0, 0.0), 1.0);
        assert_eq!(money_scale(f64::NAN, 1.0), 1.0);
    }
}
