//! The supervised models: gradient-boosted trees on a snapshot's features (SQL features plus
//! the classical models' outputs), labelled with what happened after that snapshot.
//!
//! Churn: logistic loss, fitted on three quarters of the customers (by id hash) of several
//! snapshots pooled, and calibrated on the remaining quarter at a newer snapshot (centred
//! isotonic regression mixed with Platt scaling, `calibration::Smoothed`), so the score is a
//! probability as of the newest labelled window, never exactly 0 or 1.
//! Value: squared loss on log(1 + discounted 365-day net revenue), which ranks customers far
//! better than squared loss on the heavy-tailed revenue itself; back on the money scale, one
//! factor fitted on the held-out quarter makes the predictions sum to what those customers
//! really spent, so totals per segment are expectations, as CLV is, and the ranking is the
//! trees'.
//!
//! Both models can be stored and loaded with serde (`serde_json::to_string(&model)`,
//! `serde_json::from_str::<ChurnModel>(&text)`): a model keeps its feature names, not the
//! training data, and a loaded model's predictions are bit-for-bit those of the model that
//! was saved (see `gbm::json_f64` for how values are written).

use serde::{Deserialize, Serialize};

use super::calibration::Smoothed;
use super::design::{rows_in_part, Design};
use super::gbm::{json_f64, Gbm, GbmParams, Loss};
use crate::error::{Error, Result};

/// Training rows at most per model (a deterministic sample by id hash): more adds time, not
/// accuracy, at these model sizes.
pub const MAX_TRAINING_ROWS: usize = 40_000;

/// What the manifest records about a fitted supervised model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fitted {
    /// Rows used to fit the trees.
    pub training_rows: usize,
    /// Rows used to calibrate (churn: the calibration map; value: the money-scale factor).
    pub calibration_rows: usize,
    /// The most important features (share of total split gain), best first; each share is
    /// a value serde_json reads back exactly (`json_f64::json_exact`), so a loaded record
    /// equals the saved one while staying plain JSON numbers.
    pub top_features: Vec<(String, f64)>,
}

/// A churn model: trees + calibration, remembering the names of its feature columns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnModel {
    /// The design's feature names, in the trees' column order.
    features: Vec<String>,
    gbm: Gbm,
    calibration: Smoothed,
    /// For the manifest.
    pub fitted: Fitted,
}

/// A value model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValueModel {
    /// The design's feature names, in the trees' column order.
    features: Vec<String>,
    gbm: Gbm,
    /// Money-scale factor (see the module documentation).
    #[serde(with = "json_f64")]
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
        .zip(
            gbm.feature_importance()
                .into_iter()
                .map(json_f64::json_exact),
        )
        .collect();
    imp.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    imp.truncate(8);
    imp
}

fn model_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Model(format!("{what}: {e}"))
}

/// One snapshot's customers with their labels, for fitting.
pub struct Labelled<'a> {
    /// Their features.
    pub design: &'a Design,
    /// Their ids (row order of `design`).
    pub ids: &'a [String],
    /// Their labels.
    pub labels: &'a [f64],
}

/// The rows of a churn training snapshot the trees learn from, of `snapshots` pooled ones:
/// three quarters of the ids by hash, evenly spaced, at most [`MAX_TRAINING_ROWS`] in all.
pub fn churn_training_rows(ids: &[String], snapshots: usize) -> Vec<usize> {
    rows_in_part(ids, 4, 0, 3, MAX_TRAINING_ROWS / snapshots.max(1))
}

impl ChurnModel {
    /// Fits the trees on the customers of the `train` snapshots, pooled (three quarters of
    /// the ids by hash; at most [`MAX_TRAINING_ROWS`] rows, shared evenly), and calibrates
    /// them on the other quarter of `calibrate`, a newer snapshot none of whose customers
    /// trained the trees: so the calibration is that of the newest labelled window, as a new
    /// cohort or season shapes it. Labels: 1 = no completed order in the following 90 days.
    /// Feature columns are matched by name (`calibrate`'s names are the model's).
    pub fn fit(train: &[Labelled], calibrate: &Labelled, seed: u64) -> Result<ChurnModel> {
        let names = &calibrate.design.names;
        let mut x: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        let mut y: Vec<f64> = Vec::new();
        for part in train {
            let rows = churn_training_rows(part.ids, train.len());
            for (column, c) in x.iter_mut().zip(part.design.columns_for(names)) {
                column.extend(rows.iter().map(|&i| c[i]));
            }
            y.extend(rows.iter().map(|&i| part.labels[i]));
        }
        let gbm = Gbm::fit(&x, &y, &params(Loss::Logistic, seed))
            .map_err(|e| model_err("fitting the churn trees", e))?;
        let cal_rows = rows_in_part(calibrate.ids, 4, 3, 4, MAX_TRAINING_ROWS / 3);
        let raw = gbm.predict(&calibrate.design.select(&cal_rows));
        let cal_y: Vec<f64> = cal_rows.iter().map(|&i| calibrate.labels[i]).collect();
        let calibration =
            Smoothed::fit(&raw, &cal_y).map_err(|e| model_err("calibrating the churn score", e))?;
        let fitted = Fitted {
            training_rows: y.len(),
            calibration_rows: cal_rows.len(),
            top_features: top_features(calibrate.design, &gbm),
        };
        Ok(ChurnModel {
            features: names.clone(),
            gbm,
            calibration,
            fitted,
        })
    }

    /// Calibrated P(no completed order in the next 90 days) for the customers of `design`
    /// (matched by feature name; a feature `design` lacks counts as missing).
    pub fn predict(&self, design: &Design) -> Vec<f64> {
        let raw = self.gbm.predict(&design.columns_for(&self.features));
        self.calibration.apply_all(&raw)
    }

    /// The feature names the model reads, in its column order.
    pub fn features(&self) -> &[String] {
        &self.features
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
            features: design.names,
            gbm,
            scale,
            fitted,
        })
    }

    /// Expected discounted 365-day net revenue (≥ 0) for the customers of `design`
    /// (matched by feature name; a feature `design` lacks counts as missing).
    pub fn predict(&self, design: &Design) -> Vec<f64> {
        self.gbm
            .predict(&design.columns_for(&self.features))
            .into_iter()
            .map(|v| v.exp_m1().max(0.0) * self.scale)
            .collect()
    }

    /// The feature names the model reads, in its column order.
    pub fn features(&self) -> &[String] {
        &self.features
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
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    /// A design of `n` customers (five features, some missing), their ids, a churn label
    /// and a heavy-tailed value that both depend on the features.
    fn synthetic(n: usize, seed: u64) -> (Design, Vec<String>, Vec<f64>, Vec<f64>) {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let names: Vec<String> = ["frequency", "recency_days", "tenure_days", "aov", "noise"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut columns = vec![Vec::with_capacity(n); names.len()];
        let (mut churned, mut value) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let f = rng.gen_range(0.0..20.0f64).floor();
            let r = if f == 0.0 || rng.gen::<f64>() < 0.1 {
                f64::NAN
            } else {
                rng.gen_range(0.0..400.0)
            };
            let t = rng.gen_range(30.0..900.0);
            let aov = rng.gen_range(5.0..200.0);
            let noise = if rng.gen::<f64>() < 0.05 {
                f64::NAN
            } else {
                rng.gen::<f64>()
            };
            for (c, v) in columns.iter_mut().zip([f, r, t, aov, noise]) {
                c.push(v);
            }
            let active = (f / 20.0) * (1.0 - if r.is_nan() { 1.0 } else { r / 400.0 });
            churned.push(if rng.gen::<f64>() < 0.9 - 0.8 * active {
                1.0
            } else {
                0.0
            });
            let spend = if rng.gen::<f64>() < active {
                aov * f * rng.gen_range(0.5..2.0)
            } else {
                0.0
            };
            value.push(spend);
        }
        let ids = (0..n).map(|i| format!("C{seed}{i:07}")).collect();
        (Design { names, columns }, ids, churned, value)
    }

    fn bits(v: &[f64]) -> Vec<u64> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Another snapshot's design: other customers, its columns in another order, one
    /// feature the models were not fitted on and one of theirs absent.
    fn scoring_design() -> Design {
        let (d, ..) = synthetic(1_500, 8);
        let mut names = d.names.clone();
        let mut columns = d.columns.clone();
        names.reverse();
        columns.reverse();
        names[0] = "not_a_model_feature".into();
        Design { names, columns }
    }

    #[test]
    fn stored_churn_model_scores_the_same_bits() {
        let (design, ids, churned, _) = synthetic(4_000, 7);
        let part = Labelled {
            design: &design,
            ids: &ids,
            labels: &churned,
        };
        let model = ChurnModel::fit(std::slice::from_ref(&part), &part, 3).unwrap();
        let json = serde_json::to_string(&model).unwrap();
        assert!(!json.contains("columns"), "a stored model keeps no data");
        let loaded: ChurnModel = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&loaded).unwrap(), json);
        assert_eq!(loaded.features(), &design.names[..]);
        assert_eq!(loaded.fitted, model.fitted);
        let now = scoring_design();
        let p = model.predict(&now);
        assert!(p.iter().all(|p| (0.0..=1.0).contains(p)), "{p:?}");
        assert_eq!(bits(&loaded.predict(&now)), bits(&p));
        assert_eq!(
            bits(&loaded.predict(&design)),
            bits(&model.predict(&design))
        );
    }

    #[test]
    fn stored_value_model_scores_the_same_bits() {
        let (design, ids, _, value) = synthetic(4_000, 9);
        let model = ValueModel::fit(design.clone(), &ids, &value, 3).unwrap();
        let json = serde_json::to_string(&model).unwrap();
        let loaded: ValueModel = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&loaded).unwrap(), json);
        assert_eq!(loaded.scale.to_bits(), model.scale.to_bits());
        assert_eq!(loaded.fitted, model.fitted);
        let now = scoring_design();
        let v = model.predict(&now);
        assert!(v.iter().all(|v| *v >= 0.0) && v.iter().any(|v| *v > 0.0));
        assert_eq!(bits(&loaded.predict(&now)), bits(&v));
        assert_eq!(
            bits(&loaded.predict(&design)),
            bits(&model.predict(&design))
        );
    }

    #[test]
    fn money_scale_is_realised_over_predicted_and_safe() {
        assert_eq!(money_scale(50.0, 100.0), 2.0);
        assert_eq!(money_scale(0.0, 100.0), 1.0);
        assert_eq!(money_scale(100.0, 0.0), 1.0);
        assert_eq!(money_scale(f64::NAN, 1.0), 1.0);
    }
}
