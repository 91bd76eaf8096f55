//! Scores: churn risk (P(no completed order in the next 90 days)) and value (expected net
//! revenue over the next 365 days, discounted to present value), with a built-in backtest.
//!
//! ```text
//!  backtest                                          production
//!  D−210 … D−450 (every 30 days) ──train──► trees ┐  D−120 … D−360 (every 30 days) ──train──► trees
//!  D−180 (held-out quarter) ──calibrate────────┤     D−90 (held-out quarter) ──calibrate──┤
//!  D−455 ──fit──► value trees ─────────────────┼─►   D−365 ──fit──► value trees ──────────┤
//!                     score D−90, compare with (D−90, D]                  score snapshot 0 (D)
//! ```
//! At every snapshot BG/NBD and Gamma-Gamma are fitted on that snapshot's own history; their
//! outputs are features of the trees and the baseline the backtest reports beside them.
//! Churn trees learn from several windows pooled (so sign-ups, seasons and campaigns of the
//! last months all appear in training) and are calibrated on the newest labelled window, on
//! customers that did not train them (`calibration::Smoothed`: never exactly 0 or 1).
//! Too little history for a model: BG/NBD (+ Gamma-Gamma), else a run-rate formula, and the
//! manifest says which (`method`).

pub mod backtest;
pub mod bgnbd;
pub mod calibration;
pub mod cdnow;
pub mod classical;
pub mod design;
pub mod drift;
pub mod gamma_gamma;
pub mod gbm;
pub mod kept;
pub mod metrics;
pub mod optimize;
pub mod parallel;
pub mod special;
pub mod supervised;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Pipeline;
use crate::error::Result;
use crate::features::{CustomerTable, Cutoff, SnapshotFeatures, Snapshots};
use backtest::{Backtest, ChurnMetrics, Group, GroupMetrics, Margin, ValueMetrics};
use classical::{Classical, Outputs};
use design::Design;
use supervised::{ChurnModel, Fitted, Labelled, ValueModel};

/// Days before the run's cut-off of the snapshots the models need (snapshot ids 1, 2, …).
pub const SNAPSHOT_DAYS: [i64; 15] = [
    90, 180, 365, 455, 120, 150, 210, 240, 270, 300, 330, 360, 390, 420, 450,
];
/// Calibrates the churn model (its next 90 days end at the run's cut-off); the backtest's
/// scoring point.
pub const CHURN_CAL: i32 = 1;
/// Trains the churn model, pooled: every 30 days from D−120 to D−360 (their next 90 days
/// end by D−30), so a year of seasons, sign-up waves and campaigns is in the training data.
pub const CHURN_TRAIN: [i32; 9] = [5, 6, 2, 7, 8, 9, 10, 11, 12];
/// Calibrates the churn model of the backtest (its next 90 days end at D−90).
pub const CHURN_BACKTEST_CAL: i32 = 2;
/// Trains the churn model of the backtest: the production recipe one window (90 days)
/// earlier, every 30 days from D−210 to D−450.
pub const CHURN_BACKTEST_TRAIN: [i32; 9] = [7, 8, 9, 10, 11, 12, 13, 14, 15];
/// Trains the value model (its next 365 days end at the run's cut-off).
pub const VALUE_TRAIN: i32 = 3;
/// Trains the value model of the backtest (its next 365 days end at D−90).
pub const VALUE_BACKTEST_TRAIN: i32 = 4;
/// Fewer training customers with a completed order than this: not enough to learn from.
const MIN_TRAINING_BUYERS: usize = 200;

/// The snapshots a run at `cutoff` computes features for.
pub fn snapshots(cutoff: Cutoff) -> Snapshots {
    Snapshots::new(cutoff, &SNAPSHOT_DAYS)
}

/// Scores for every customer of snapshot 0, in its row order.
#[derive(Debug, Clone)]
pub struct Scores {
    /// P(no completed order in the next 90 days), in [0, 1].
    pub churn: Vec<f64>,
    /// Expected discounted net revenue over the next 365 days (≥ 0).
    pub value: Vec<f64>,
    /// How the scoring models were made (the refit's [`ModelReport`], with its backtest), for
    /// the manifest.
    pub report: serde_json::Value,
    /// BG/NBD's P(alive) (NaN: no completed order, or no BG/NBD fit).
    pub p_alive: Vec<f64>,
    /// BG/NBD's expected purchase days in the next 365 days (NaN as above).
    pub expected_orders_365d: Vec<f64>,
    /// Days after the cut-off by which BG/NBD gives another purchase a 50 % chance (NaN: not
    /// within 365 days, or as above).
    pub next_order_days: Vec<f64>,
    /// Customers whose scores were computed ahead by an earlier run ([`kept`]), not tonight.
    pub kept: usize,
}

impl Scores {
    fn new(churn: Vec<f64>, value: Vec<f64>, report: serde_json::Value, p: &Prepared) -> Scores {
        Scores {
            churn,
            value,
            report,
            p_alive: p.outputs.p_alive.clone(),
            expected_orders_365d: p.outputs.purchases_365d.clone(),
            next_order_days: p.outputs.next_purchase_days.clone(),
            kept: 0,
        }
    }
}

/// Version of the stored models' format ([`Stored`]); another version is refitted.
pub const STORED_FORMAT: u32 = 2;

/// The churn learner a refit chose, with what scoring needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChurnScorer {
    /// Trees + calibration.
    Trees {
        /// The model.
        model: Box<ChurnModel>,
    },
    /// BG/NBD for buyers; never-buyers at the rate never-buyers showed in training.
    Bgnbd {
        /// That rate (None: the run-rate formula).
        non_buyer_rate: Option<f64>,
    },
    /// The run-rate formula (too little history).
    Fallback,
}

/// The value learner a refit chose.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ValueScorer {
    /// Trees on log value, scaled.
    Trees {
        /// The model.
        model: ValueModel,
    },
    /// BG/NBD × Gamma-Gamma CLV.
    BgnbdGammaGamma,
    /// Last year's revenue × P(alive) (too little history).
    Fallback,
}

/// Everything a night needs to score without fitting, stored with the refit's outputs
/// (`_models/run_date=R/scoring_models-<run_id>.json`) and found through the manifests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    /// [`STORED_FORMAT`].
    pub format: u32,
    /// The run date of the refit.
    pub refit_date: String,
    /// The design's feature names at the refit: another list means refit.
    pub features: Vec<String>,
    /// BG/NBD and Gamma-Gamma fitted at the refit's cut-off: their outputs are features.
    pub classical: Classical,
    /// The churn learner.
    pub churn: ChurnScorer,
    /// The value learner.
    pub value: ValueScorer,
    /// The refit's report (learners, training snapshots, backtest), as the manifest shows it.
    pub report: serde_json::Value,
    /// The churn training snapshot's distribution of the SQL features, for drift.
    pub reference: drift::Reference,
}

/// How the features of a night compare with the stored models' training snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    /// The largest population stability index of any feature.
    pub max_psi: f64,
    /// `model.max_feature_psi`.
    pub threshold: f64,
    /// Every feature's index, largest first.
    pub psi: Vec<(String, f64)>,
}

/// What a night did with stored models.
pub enum Night {
    /// Scored; the features' drift.
    Scored(Scores, Drift),
    /// The stored models do not fit tonight's features: refit, for this reason.
    Refit(String),
}

/// Scores snapshot 0 with stored models, unless the feature list changed or a feature
/// drifted past `model.max_feature_psi` (then [`Night::Refit`]).
///
/// With `reuse`, only the customers whose features are new tonight are scored; the others'
/// classical outputs and scores are the kept ones ([`kept`]), the same numbers.
pub fn score_stored(
    pipeline: &Pipeline,
    stored: &Stored,
    features: &SnapshotFeatures,
    reuse: Option<&kept::Reuse<'_>>,
) -> Result<Night> {
    let now = features.current()?;
    let rate = pipeline.model.monthly_discount_rate;
    let threshold = pipeline.model.max_feature_psi;
    let Some(reuse) = reuse else {
        let p = Prepared::with_classical(Cow::Borrowed(now), stored.classical.clone(), rate)?;
        if let Some(why) = changed_features(&p.design.names, stored) {
            return Ok(Night::Refit(why));
        }
        let drift = drift_of(stored.reference.psi(&p.design), threshold);
        if let Some(why) = drifted(&drift) {
            return Ok(Night::Refit(why));
        }
        let (churn, value) = score_prepared(stored, &p, rate)?;
        return Ok(Night::Scored(
            Scores::new(churn, value, stored.report.clone(), &p),
            drift,
        ));
    };
    // The design's names, without the design: on a night that keeps most scores, the
    // columns of everyone are only read for the drift, in place.
    let table_features = design::table_features(now);
    let names: Vec<String> = table_features
        .iter()
        .cloned()
        .chain(classical::Outputs::NAMES.map(String::from))
        .collect();
    if let Some(why) = changed_features(&names, stored) {
        return Ok(Night::Refit(why));
    }
    let merged = kept::score_with(stored, now, rate, reuse)?;
    let kept = now.len() - merged.scored;
    tracing::info!(
        scored = merged.scored,
        kept,
        "scored the changed customers; the others' scores were computed ahead"
    );
    // A design's column of that name: the table's first, then the classical outputs.
    let psi = stored.reference.psi_by(|name, cuts| {
        if table_features.iter().any(|f| f == name) {
            Some(drift::shares(cuts, now.f64_values(name).ok()?))
        } else {
            let named = merged.outputs.named();
            let (_, column) = named.iter().find(|(n, _)| *n == name)?;
            Some(drift::shares(cuts, column.iter().copied()))
        }
    });
    let drift = drift_of(psi, threshold);
    if let Some(why) = drifted(&drift) {
        return Ok(Night::Refit(why));
    }
    let outputs = merged.outputs;
    Ok(Night::Scored(
        Scores {
            churn: merged.churn,
            value: merged.value,
            report: stored.report.clone(),
            p_alive: outputs.p_alive,
            expected_orders_365d: outputs.purchases_365d,
            next_order_days: outputs.next_purchase_days,
            kept,
        },
        drift,
    ))
}

/// Why the stored models cannot score a design of `names` (another feature list), if so.
fn changed_features(names: &[String], stored: &Stored) -> Option<String> {
    if names == stored.features {
        return None;
    }
    let added: Vec<&str> = names
        .iter()
        .filter(|n| !stored.features.contains(n))
        .map(String::as_str)
        .collect();
    let removed: Vec<&str> = stored
        .features
        .iter()
        .filter(|n| !names.contains(n))
        .map(String::as_str)
        .collect();
    Some(format!(
        "the feature list changed (added: [{}], removed: [{}])",
        added.join(", "),
        removed.join(", ")
    ))
}

/// Why the stored models must be refitted for `drift`, if a feature drifted past the
/// threshold.
fn drifted(drift: &Drift) -> Option<String> {
    (drift.max_psi > drift.threshold).then(|| {
        let (name, psi) = drift.psi.first().cloned().unwrap_or_default();
        format!(
            "feature drift: {name} has a population stability index of {psi:.3} against the \
             training snapshot (model.max_feature_psi = {})",
            drift.threshold
        )
    })
}

/// The drift of the features from each feature's index against the training snapshot.
fn drift_of(mut psi: Vec<(String, f64)>, threshold: f64) -> Drift {
    psi.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Drift {
        max_psi: psi.first().map_or(0.0, |p| p.1),
        threshold,
        psi,
    }
}

/// Scores a prepared snapshot with the stored learners: the one way scores are made, on
/// refit nights and the others.
fn score_prepared(stored: &Stored, p: &Prepared, rate: f64) -> Result<(Vec<f64>, Vec<f64>)> {
    let churn = match &stored.churn {
        ChurnScorer::Trees { model } => model.predict(&p.design),
        ChurnScorer::Bgnbd { non_buyer_rate } => bgnbd_churn(p, *non_buyer_rate)?,
        ChurnScorer::Fallback => fallback_churn(&p.table)?,
    };
    let value = match &stored.value {
        ValueScorer::Trees { model } => model.predict(&p.design),
        ValueScorer::BgnbdGammaGamma => zero_nan(&p.outputs.clv),
        ValueScorer::Fallback => fallback_value(&p.table, &churn, rate)?,
    };
    Ok((churn, value))
}

/// A refit: the scores, the report, and the models to store.
pub struct Fit {
    /// Snapshot 0 scored by the new models.
    pub scores: Scores,
    /// The report (what `segmenter evaluate` prints).
    pub report: ModelReport,
    /// The models, for the next nights.
    pub stored: Stored,
    /// Snapshot 0's drift against the new training snapshot (for the manifest).
    pub drift: Drift,
}

/// What the manifest records about the models.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// The churn model used for the scores.
    pub churn: FitReport,
    /// The value model used for the scores.
    pub value: FitReport,
    /// BG/NBD and Gamma-Gamma fitted at the run's cut-off.
    pub classical: Classical,
    /// The backtest.
    pub backtest: Backtest,
}

/// One model used for the scores.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    /// `gradient_boosted_trees` (+ `isotonic` for churn), `bgnbd`, `bgnbd_gamma_gamma` or
    /// `fallback_run_rate`: the learner with the better backtest, or the fallback when
    /// there is too little history.
    pub method: String,
    /// The as-of instant of the training snapshot.
    pub training_cutoff: String,
    /// Customers in the training snapshot.
    pub training_customers: usize,
    /// Details of the trees, when trees were fitted.
    pub trees: Option<Fitted>,
}

/// One snapshot ready for modelling: its table, classical fit and design matrix.
struct Prepared<'a> {
    table: Cow<'a, CustomerTable>,
    ids: Vec<String>,
    classical: Classical,
    outputs: Outputs,
    design: Design,
}

impl<'a> Prepared<'a> {
    fn new(table: Cow<'a, CustomerTable>, monthly_rate: f64) -> Result<Prepared<'a>> {
        let classical = Classical::fit(&table)?;
        Self::with_classical(table, classical, monthly_rate)
    }

    /// With classical models fitted elsewhere (stored by a refit).
    fn with_classical(
        table: Cow<'a, CustomerTable>,
        classical: Classical,
        monthly_rate: f64,
    ) -> Result<Prepared<'a>> {
        let clock = std::time::Instant::now();
        let fitted = clock.elapsed().as_secs_f64();
        let outputs = classical.outputs(&table, monthly_rate)?;
        let with_outputs = clock.elapsed().as_secs_f64();
        let ids = table.ids()?;
        let design = Design::new(&table, &outputs.columns())?;
        let p = Prepared {
            ids,
            table,
            classical,
            outputs,
            design,
        };
        tracing::debug!(
            customers = p.table.len(),
            classical = %serde_json::to_string(&p.classical).unwrap_or_default(),
            classical_fit_s = fitted,
            outputs_s = with_outputs - fitted,
            total_s = clock.elapsed().as_secs_f64(),
            "snapshot prepared"
        );
        Ok(p)
    }

    fn buyers(&self) -> Result<usize> {
        Ok(self
            .table
            .f64("frequency")?
            .iter()
            .filter(|&&f| f > 0.0)
            .count())
    }

    fn churned(&self) -> Result<Vec<f64>> {
        Ok(self
            .table
            .f64("next_90d_orders")?
            .iter()
            .map(|&n| if n > 0.0 { 0.0 } else { 1.0 })
            .collect())
    }

    /// Whether the snapshot's customers have `frequency` 0 (no completed order before its
    /// cut-off), and whether they were first seen at most 90 days before it.
    fn groups(&self) -> Result<(Vec<bool>, Vec<bool>)> {
        let never = self
            .table
            .f64("frequency")?
            .iter()
            .map(|&f| f.is_nan() || f <= 0.0)
            .collect();
        let new = self
            .table
            .f64("tenure_days")?
            .iter()
            .map(|&t| t.is_nan() || t <= 90.0)
            .collect();
        Ok((never, new))
    }

    /// Enough history to learn from, and both outcomes present.
    fn trainable(&self) -> Result<bool> {
        let churned = self.churned()?;
        let rate = churned.iter().sum::<f64>() / churned.len().max(1) as f64;
        Ok(self.buyers()? >= MIN_TRAINING_BUYERS && rate > 0.0 && rate < 1.0)
    }
}

/// Prepares every snapshot (classical fits, outputs, design), one thread each: the
/// snapshots are independent, so the result does not depend on scheduling. The snapshots that
/// only train churn trees keep only the rows the trees learn from
/// ([`supervised::churn_training_rows`]): the classical models' outputs cost about 10 µs a
/// customer.
fn prepare_all(features: &SnapshotFeatures, rate: f64) -> Result<BTreeMap<i32, Prepared<'_>>> {
    let only_training = |id: i32| {
        (CHURN_TRAIN.contains(&id) || CHURN_BACKTEST_TRAIN.contains(&id))
            && ![
                CHURN_CAL,
                CHURN_BACKTEST_CAL,
                VALUE_TRAIN,
                VALUE_BACKTEST_TRAIN,
                0,
            ]
            .contains(&id)
    };
    // (id, the snapshot's table, the rows to prepare when not all).
    let mut tables: Vec<(i32, &CustomerTable, Option<Vec<usize>>)> = Vec::new();
    for id in 0..=SNAPSHOT_DAYS.len() as i32 {
        let Some(t) = features.get(id) else { continue };
        let rows = only_training(id)
            .then(|| {
                t.ids()
                    .map(|ids| supervised::churn_training_rows(&ids, CHURN_TRAIN.len()))
            })
            .transpose()?;
        tables.push((id, t, rows));
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = tables
            .into_iter()
            .map(|(id, t, rows)| {
                (
                    id,
                    scope.spawn(move || match rows {
                        // BG/NBD is fitted on the whole snapshot, as everywhere else.
                        Some(rows) => Prepared::with_classical(
                            Cow::Owned(t.take(&rows)?),
                            Classical::fit(t)?,
                            rate,
                        ),
                        None => Prepared::new(Cow::Borrowed(t), rate),
                    }),
                )
            })
            .collect();
        let mut out = BTreeMap::new();
        for (id, handle) in handles {
            let prepared = handle
                .join()
                .map_err(|_| crate::Error::Model(format!("preparing snapshot {id} panicked")))??;
            out.insert(id, prepared);
        }
        Ok(out)
    })
}

/// Runs `a` and `b` on two threads and returns both results (a panic in either resumes here).
/// The churn trees of one recipe: trained on the `train` snapshots that can be learnt from,
/// calibrated on `cal`. `None` when there is nothing to learn from.
fn fit_churn(
    prepared: &BTreeMap<i32, Prepared>,
    train: &[i32],
    cal: i32,
    seed: u64,
) -> Result<Option<ChurnModel>> {
    let Some(cal) = prepared.get(&cal) else {
        return Ok(None);
    };
    if !cal.trainable()? {
        return Ok(None);
    }
    let parts: Vec<(&Prepared, Vec<f64>)> = train
        .iter()
        .filter_map(|id| prepared.get(id))
        .map(|p| Ok((p, p.churned()?)))
        .collect::<Result<Vec<_>>>()?;
    let buyers: usize = parts
        .iter()
        .map(|(p, _)| p.buyers())
        .sum::<Result<usize>>()?;
    let labels: Vec<f64> = parts.iter().flat_map(|(_, y)| y.iter().copied()).collect();
    let rate = labels.iter().sum::<f64>() / labels.len().max(1) as f64;
    if buyers < MIN_TRAINING_BUYERS || !(rate > 0.0 && rate < 1.0) {
        return Ok(None);
    }
    let cal_y = cal.churned()?;
    let labelled: Vec<Labelled> = parts
        .iter()
        .map(|(p, y)| Labelled {
            design: &p.design,
            ids: &p.ids,
            labels: y,
        })
        .collect();
    let calibrate = Labelled {
        design: &cal.design,
        ids: &cal.ids,
        labels: &cal_y,
    };
    Ok(Some(ChurnModel::fit(&labelled, &calibrate, seed)?))
}

fn both<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    std::thread::scope(|scope| {
        let b = scope.spawn(b);
        let a = a();
        let b = b
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (a, b)
    })
}

fn iso(c: Cutoff) -> String {
    c.0.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// BG/NBD churn for everyone: buyers from the model; never-buyers at the rate never-buyers
/// showed in training, or by the run-rate formula when there was nothing to learn from.
fn bgnbd_churn(p: &Prepared, non_buyer_rate: Option<f64>) -> Result<Vec<f64>> {
    let fallback = fallback_churn(&p.table)?;
    Ok(p.outputs
        .p_no_purchase_90d
        .iter()
        .zip(&fallback)
        .map(|(b, f)| {
            if b.is_nan() {
                non_buyer_rate.unwrap_or(*f)
            } else {
                *b
            }
        })
        .collect())
}

/// Share of never-buyers of a (training) snapshot who then did not buy within 90 days (None
/// when it had no never-buyers to learn from).
fn non_buyer_churn(p: &Prepared) -> Result<Option<f64>> {
    let churned = p.churned()?;
    let (n, k) = p
        .outputs
        .p_no_purchase_90d
        .iter()
        .zip(&churned)
        .filter(|(x, _)| x.is_nan())
        .fold((0.0, 0.0), |(n, k), (_, c)| (n + 1.0, k + c));
    Ok((n > 0.0).then(|| k / n))
}

fn zero_nan(v: &[f64]) -> Vec<f64> {
    v.iter()
        .map(|x| if x.is_finite() { *x } else { 0.0 })
        .collect()
}

/// The learners the backtest chooses between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Learner {
    /// Gradient-boosted trees on the SQL features and the classical outputs.
    Trees,
    /// BG/NBD (churn) or BG/NBD × Gamma-Gamma (value).
    Classical,
}

/// The learner to use given each candidate's backtest metric: the trees only when they are
/// measurably better (strictly, and never on a NaN); the classical model otherwise.
fn choose(trees: Option<f64>, classical: Option<f64>, lower_is_better: bool) -> Learner {
    let ordering = match (trees, classical) {
        (Some(t), Some(c)) => t.partial_cmp(&c),
        (Some(t), None) if t.is_finite() => return Learner::Trees,
        _ => return Learner::Classical,
    };
    let wanted = if lower_is_better {
        std::cmp::Ordering::Less
    } else {
        std::cmp::Ordering::Greater
    };
    if ordering == Some(wanted) {
        Learner::Trees
    } else {
        Learner::Classical
    }
}

/// Fits the models on the earlier snapshots, backtests them, and scores snapshot 0 with the
/// learner that did better in the backtest (Brier score for churn, Spearman for value; the
/// classical model wins ties and stands in where the trees cannot be backtested). The fitted
/// models are returned for storing (`refit_date`: this run's date).
pub fn fit(
    pipeline: &Pipeline,
    snapshots: &Snapshots,
    features: &SnapshotFeatures,
    refit_date: &str,
) -> Result<Fit> {
    let rate = pipeline.model.monthly_discount_rate;
    let seed = pipeline.clustering.seed;
    let prepared = prepare_all(features, rate)?;
    let now = prepared.get(&0).ok_or_else(|| {
        crate::Error::InputRejected("no known customers before the cut-off".into())
    })?;
    let cutoff_of = |id: i32| snapshots.cutoff(id).map(iso).unwrap_or_default();
    let clock = std::time::Instant::now();
    let backtest = run_backtest(&prepared, snapshots, seed)?;
    tracing::debug!(seconds = clock.elapsed().as_secs_f64(), "backtest done");

    // The two production models are independent: fitted side by side.
    // Trees only when they beat BG/NBD by more than the backtest's noise.
    let churn_learner = match (&backtest.churn_trees, &backtest.churn_brier_gain) {
        (Some(_), Some(margin)) if margin.p05 > 0.0 => Learner::Trees,
        (Some(t), None) if backtest.churn_bgnbd.is_none() && t.brier.is_finite() => Learner::Trees,
        _ => Learner::Classical,
    };
    let value_learner = choose(
        backtest.value_trees.as_ref().map(|m| m.spearman),
        backtest.value_bgnbd_gg.as_ref().map(|m| m.spearman),
        false,
    );
    let churn_cal = prepared.get(&CHURN_CAL);
    let value_train = prepared.get(&VALUE_TRAIN);
    let (churn, value_trees) = both(
        || -> Result<(ChurnScorer, FitReport)> {
            let trees = match churn_learner {
                Learner::Trees => fit_churn(&prepared, &CHURN_TRAIN, CHURN_CAL, seed)?,
                Learner::Classical => None,
            };
            match trees {
                Some(m) => {
                    let mut report = fit_report(
                        "gradient_boosted_trees+calibration",
                        cutoff_of(CHURN_CAL),
                        m.fitted.training_rows,
                    );
                    report.trees = Some(m.fitted.clone());
                    Ok((ChurnScorer::Trees { model: Box::new(m) }, report))
                }
                None if now.classical.has_bgnbd() => {
                    // Never-buyers: the share of never-buyers 90 days ago who still had not
                    // bought.
                    let non_buyer_rate = match churn_cal {
                        Some(t) if t.trainable()? => non_buyer_churn(t)?,
                        _ => None,
                    };
                    Ok((
                        ChurnScorer::Bgnbd { non_buyer_rate },
                        fit_report("bgnbd", cutoff_of(0), now.ids.len()),
                    ))
                }
                None => Ok((
                    ChurnScorer::Fallback,
                    fit_report("fallback_run_rate", cutoff_of(0), 0),
                )),
            }
        },
        || -> Result<Option<(ValueScorer, FitReport)>> {
            match (value_learner, value_train) {
                (Learner::Trees, Some(t)) if t.buyers()? >= MIN_TRAINING_BUYERS => {
                    let m = ValueModel::fit(
                        t.design.clone(),
                        &t.ids,
                        &t.table.f64("next_365d_value")?,
                        seed,
                    )?;
                    let report = trees_report(
                        "gradient_boosted_trees",
                        cutoff_of(VALUE_TRAIN),
                        t,
                        &m.fitted,
                    );
                    Ok(Some((ValueScorer::Trees { model: m }, report)))
                }
                _ => Ok(None),
            }
        },
    );
    let (churn, churn_report) = churn?;
    let (value, value_report) = match value_trees? {
        Some(trees) => trees,
        None if now.classical.has_bgnbd() => (
            ValueScorer::BgnbdGammaGamma,
            fit_report("bgnbd_gamma_gamma", cutoff_of(0), now.ids.len()),
        ),
        None => (
            ValueScorer::Fallback,
            fit_report("fallback_run_rate", cutoff_of(0), 0),
        ),
    };
    let report = ModelReport {
        churn: churn_report,
        value: value_report,
        classical: now.classical.clone(),
        backtest,
    };
    // Drift is watched on the SQL features only: the classical outputs move with their own
    // refits (each snapshot fits its own BG/NBD), not with the customers.
    let training = &prepared.get(&CHURN_CAL).unwrap_or(now).table;
    let reference = drift::Reference::new(&Design::new(training, &[])?);
    let stored = Stored {
        format: STORED_FORMAT,
        refit_date: refit_date.to_string(),
        features: now.design.names.clone(),
        classical: now.classical.clone(),
        churn,
        value,
        report: serde_json::to_value(&report)
            .map_err(|e| crate::Error::Model(format!("recording the models: {e}")))?,
        reference,
    };
    let drift = drift_of(
        stored.reference.psi(&now.design),
        pipeline.model.max_feature_psi,
    );
    let (churn, value) = score_prepared(&stored, now, rate)?;
    Ok(Fit {
        scores: Scores::new(churn, value, stored.report.clone(), now),
        report,
        stored,
        drift,
    })
}

fn push_line(out: &mut String, line: String) {
    out.push_str(&line);
    out.push('\n');
}

/// The report as a readable table (what `segmenter evaluate` prints).
pub fn report_table(r: &ModelReport) -> String {
    let b = &r.backtest;
    let mut out = String::new();
    push_line(
        &mut out,
        format!(
            "churn model: {} (trained as of {})",
            r.churn.method, r.churn.training_cutoff
        ),
    );
    push_line(
        &mut out,
        format!(
            "value model: {} (trained as of {})",
            r.value.method, r.value.training_cutoff
        ),
    );
    push_line(&mut out, format!("\nbacktest: scored as of {}, compared with the next {} days; {} customers, churn rate {:.3}",
        b.scored_at, b.window_days, b.customers, b.churn_rate));
    push_line(
        &mut out,
        format!(
            "\n{:<22} {:>8} {:>8} {:>10} {:>8} {:>8}",
            "churn", "AUC", "Brier", "base Brier", "ECE", "lift@10"
        ),
    );
    for (name, m) in [("trees", &b.churn_trees), ("BG/NBD", &b.churn_bgnbd)] {
        match m {
            Some(m) => {
                push_line(
                    &mut out,
                    format!(
                        "{name:<22} {:>8.4} {:>8.4} {:>10.4} {:>8.4} {:>8.2}",
                        m.auc, m.brier, m.base_rate_brier, m.ece, m.top_decile_lift
                    ),
                );
            }
            None => {
                push_line(&mut out, format!("{name:<22} {:>8}", "n/a"));
            }
        }
    }
    if let Some(m) = &b.churn_brier_gain {
        push_line(
            &mut out,
            format!(
                "trees' Brier gain over BG/NBD: {:.4} (5th percentile of {} bootstrap resamples: \
                 {:.4}; the trees are chosen only above 0)",
                m.gain,
                Margin::RESAMPLES,
                m.p05
            ),
        );
    }
    push_line(
        &mut out,
        format!("\n{:<22} {:>8} {:>12}", "value", "Spearman", "top-20% cap"),
    );
    for (name, m) in [
        ("trees", &b.value_trees),
        ("BG/NBD × Gamma-Gamma", &b.value_bgnbd_gg),
    ] {
        match m {
            Some(m) => {
                push_line(
                    &mut out,
                    format!("{name:<22} {:>8.4} {:>12.4}", m.spearman, m.top20_capture),
                );
            }
            None => {
                push_line(&mut out, format!("{name:<22} {:>8}", "n/a"));
            }
        }
    }
    if !b.groups.is_empty() {
        push_line(
            &mut out,
            format!(
                "\n{:<14} {:>9} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8}",
                "churn by group", "customers", "rate", "AUC", "Brier", "ECE", "mean p", "BG/NBD"
            ),
        );
        for g in b.groups.iter().filter(|g| g.customers > 0) {
            let name = serde_json::to_value(g.group)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let mean_p = g.trees.as_ref().map_or(f64::NAN, |m| m.mean_score);
            let (auc, brier, ece) = g
                .trees
                .as_ref()
                .map_or((f64::NAN, f64::NAN, f64::NAN), |m| (m.auc, m.brier, m.ece));
            push_line(
                &mut out,
                format!(
                    "{name:<14} {:>9} {:>7.3} {auc:>8.4} {brier:>8.4} {ece:>8.4} {mean_p:>9.3} {:>8.4}",
                    g.customers,
                    g.churn_rate,
                    g.bgnbd.as_ref().map_or(f64::NAN, |m| m.auc)
                ),
            );
        }
    }
    if let Some(m) = &b.churn_trees {
        push_line(
            &mut out,
            "\ncalibration of the trees (bin: count, predicted, observed)".to_string(),
        );
        for bin in m.calibration.iter().filter(|c| c.count > 0) {
            push_line(
                &mut out,
                format!(
                    "  [{:.1}, {:.1}) {:>8} {:>8.3} {:>8.3}",
                    bin.lower, bin.upper, bin.count, bin.mean_predicted, bin.observed_rate
                ),
            );
        }
    }
    for note in &b.notes {
        push_line(&mut out, format!("note: {note}"));
    }
    out
}

fn trees_report(method: &str, cutoff: String, trained_on: &Prepared, fitted: &Fitted) -> FitReport {
    FitReport {
        method: method.into(),
        training_cutoff: cutoff,
        training_customers: trained_on.ids.len(),
        trees: Some(fitted.clone()),
    }
}

fn fit_report(method: &str, cutoff: String, customers: usize) -> FitReport {
    FitReport {
        method: method.into(),
        training_cutoff: cutoff,
        training_customers: customers,
        trees: None,
    }
}

/// Fit before D−90, score at D−90 (snapshot 1), compare with (D−90, D].
fn run_backtest(
    prepared: &BTreeMap<i32, Prepared>,
    snapshots: &Snapshots,
    seed: u64,
) -> Result<Backtest> {
    let mut report = Backtest {
        scored_at: snapshots.cutoff(CHURN_CAL).map(iso).unwrap_or_default(),
        window_days: 90,
        customers: 0,
        churn_rate: f64::NAN,
        churn_trees: None,
        churn_bgnbd: None,
        value_trees: None,
        value_bgnbd_gg: None,
        groups: Vec::new(),
        churn_brier_gain: None,
        notes: Vec::new(),
    };
    let Some(scored) = prepared.get(&CHURN_CAL) else {
        report
            .notes
            .push("no customers 90 days before the run date: no backtest".into());
        return Ok(report);
    };
    let churned = scored.churned()?;
    report.customers = churned.len();
    report.churn_rate = churned.iter().sum::<f64>() / churned.len().max(1) as f64;

    // The two backtest models are independent: fitted side by side.
    let (churn_scores, value_scores) = both(
        || -> Result<Option<Vec<f64>>> {
            Ok(
                fit_churn(prepared, &CHURN_BACKTEST_TRAIN, CHURN_BACKTEST_CAL, seed)?
                    .map(|m| m.predict(&scored.design)),
            )
        },
        || -> Result<Option<Vec<f64>>> {
            match prepared.get(&VALUE_BACKTEST_TRAIN) {
                Some(t) if t.buyers()? >= MIN_TRAINING_BUYERS => {
                    let value = t.table.f64("next_365d_value")?;
                    let m = ValueModel::fit(t.design.clone(), &t.ids, &value, seed)?;
                    Ok(Some(m.predict(&scored.design)))
                }
                _ => Ok(None),
            }
        },
    );
    let churn_scores = churn_scores?;
    match &churn_scores {
        Some(scores) => report.churn_trees = Some(ChurnMetrics::new(scores, &churned)),
        None => report
            .notes
            .push("churn model: too little history before D−180 to fit the backtest model".into()),
    }
    let bgnbd_scores = if scored.classical.has_bgnbd() {
        let base = match prepared.get(&CHURN_BACKTEST_CAL) {
            Some(t) => non_buyer_churn(t)?,
            None => None,
        };
        let scores = bgnbd_churn(scored, base)?;
        report.churn_bgnbd = Some(ChurnMetrics::new(&scores, &churned));
        Some(scores)
    } else {
        None
    };
    if let (Some(t), Some(b)) = (&churn_scores, &bgnbd_scores) {
        report.churn_brier_gain = Some(Margin::brier_gain(t, b, &churned, seed));
    }
    let (never, new) = scored.groups()?;
    let buyers: Vec<bool> = never.iter().map(|n| !n).collect();
    for (group, member) in [
        (Group::Buyers, &buyers),
        (Group::NeverBuyers, &never),
        (Group::New, &new),
    ] {
        report.groups.push(GroupMetrics::new(
            group,
            member,
            &churned,
            churn_scores.as_deref(),
            bgnbd_scores.as_deref(),
        ));
    }

    let realised = scored.table.f64("next_90d_revenue")?;
    match value_scores? {
        Some(scores) => report.value_trees = Some(ValueMetrics::new(&scores, &realised)),
        None => report
            .notes
            .push("value model: too little history before D−455 to fit the backtest model".into()),
    }
    if scored.classical.has_bgnbd() {
        report.value_bgnbd_gg = Some(ValueMetrics::new(&zero_nan(&scored.outputs.clv), &realised));
    }
    report.notes.push(
        "value is compared with realised net revenue in the 90-day window (the newest window labelled honestly)".into(),
    );
    Ok(report)
}

/// Without history to learn from: a Poisson purchase rate from the customer's own record,
/// P(no order in 90 days) = exp(−90·λ/(1 + overdue)), λ = (orders + ½) / (tenure + 90 days).
fn fallback_churn(features: &CustomerTable) -> Result<Vec<f64>> {
    let f = features.f64("frequency")?;
    let r = features.f64("recency_days")?;
    let t = features.f64("tenure_days")?;
    Ok((0..features.len())
        .map(|i| {
            let rate = (f[i] + 0.5) / (t[i].max(0.0) + 90.0);
            let overdue = if r[i].is_nan() {
                1.0
            } else {
                (r[i] * rate).min(5.0)
            };
            (-90.0 * rate / (1.0 + overdue)).exp().clamp(0.0, 1.0)
        })
        .collect())
}

/// Without history: last year's net revenue × P(still buying) × the mean discount factor of
/// the next 12 months.
fn fallback_value(features: &CustomerTable, churn: &[f64], monthly_rate: f64) -> Result<Vec<f64>> {
    let m = features.f64("monetary_365d")?;
    let discount = (0..12)
        .map(|k| (1.0 + monthly_rate).powf(-(k as f64 + 0.5)))
        .sum::<f64>()
        / 12.0;
    Ok(m.iter()
        .zip(churn)
        .map(|(m, c)| (m.max(0.0) * (1.0 - c) * discount).max(0.0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_snapshots_are_every_30_days_one_window_apart() {
        let days = |ids: &[i32]| -> Vec<i64> {
            let mut d: Vec<i64> = ids.iter().map(|&i| SNAPSHOT_DAYS[i as usize - 1]).collect();
            d.sort_unstable();
            d
        };
        assert_eq!(
            days(&CHURN_TRAIN),
            (120..=360).step_by(30).collect::<Vec<i64>>()
        );
        assert_eq!(
            days(&CHURN_BACKTEST_TRAIN),
            (210..=450).step_by(30).collect::<Vec<i64>>()
        );
        assert_eq!(days(&[CHURN_CAL, CHURN_BACKTEST_CAL]), [90, 180]);
        assert_eq!(days(&[VALUE_TRAIN, VALUE_BACKTEST_TRAIN]), [365, 455]);
        let mut all = SNAPSHOT_DAYS.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), SNAPSHOT_DAYS.len(), "one snapshot per day count");
    }

    #[test]
    fn trees_must_be_measurably_better() {
        assert_eq!(choose(Some(0.10), Some(0.12), true), Learner::Trees);
        assert_eq!(
            choose(Some(0.12), Some(0.12), true),
            Learner::Classical,
            "ties"
        );
        assert_eq!(choose(Some(f64::NAN), Some(0.12), true), Learner::Classical);
        assert_eq!(choose(Some(0.7), Some(0.6), false), Learner::Trees);
        assert_eq!(choose(Some(0.5), Some(0.6), false), Learner::Classical);
        assert_eq!(choose(None, Some(0.6), false), Learner::Classical);
        assert_eq!(choose(Some(0.6), None, false), Learner::Trees);
        assert_eq!(choose(Some(f64::NAN), None, false), Learner::Classical);
    }

    #[test]
    fn fallback_scores_are_probabilities() {
        use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray};
        use std::sync::Arc;
        let batch = RecordBatch::try_from_iter([
            (
                "customer_id",
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as _,
            ),
            (
                "frequency",
                Arc::new(Float64Array::from(vec![0.0, 10.0, 10.0])) as _,
            ),
            (
                "recency_days",
                Arc::new(Float64Array::from(vec![None, Some(5.0), Some(400.0)])) as _,
            ),
            (
                "tenure_days",
                Arc::new(Float64Array::from(vec![10.0, 365.0, 700.0])) as _,
            ),
            (
                "monetary_365d",
                Arc::new(Float64Array::from(vec![0.0, 500.0, 0.0])) as _,
            ),
        ])
        .unwrap();
        let t = CustomerTable::new(vec![batch], "test").unwrap();
        let c = fallback_churn(&t).unwrap();
        assert!(c.iter().all(|p| (0.0..=1.0).contains(p)), "{c:?}");
        assert!(
            c[1] < c[2],
            "a frequent recent buyer is less likely to churn: {c:?}"
        );
        let v = fallback_value(&t, &c, 0.01).unwrap();
        assert!(v[1] > 0.0 && v[1] < 500.0 && v[0] == 0.0, "{v:?}");
    }
}
