//! Scores: churn risk (P(no completed order in the next 90 days)) and value (expected net
//! revenue over the next 365 days, discounted to present value).
//!
//! First version: a transparent, point-in-time **cell model**. Customers are put in cells by
//! purchase frequency × days since the last completed order (never-buyers by days since first
//! seen). Each cell's churn rate is what happened to the customers in that cell 90 days ago
//! over the following 90 days. Value is frequency × spend: each cell learns how many completed
//! orders (each discounted to present value) customers in that cell 365 days ago placed over
//! the following 365 days, and that is multiplied by the customer's own spend per order,
//! shrunk towards the average order value as in Gamma-Gamma (a customer with one order is
//! mostly average; one with twenty is mostly themself). Cell estimates are shrunk towards
//! their frequency row and the overall rate (empirical Bayes), so small cells stay sensible.
//! Only orders before the run's cut-off are used, so nothing is fitted on the future.

use std::collections::HashMap;

use serde::Serialize;

use crate::config::Pipeline;
use crate::error::Result;
use crate::features::{CustomerTable, Cutoff, SnapshotFeatures, Snapshots};

/// The churn horizon the contract defines.
pub const CHURN_HORIZON_DAYS: i64 = 90;
/// The value horizon the contract defines.
pub const VALUE_HORIZON_DAYS: i64 = 365;
/// Days before the run's cut-off of the snapshots the models need (snapshot ids 1, 2, 3, 4).
pub const SNAPSHOT_DAYS: [i64; 4] = [90, 180, 365, 455];
/// Snapshot whose next 90 days (complete before the cut-off) train the churn model.
pub const CHURN_TRAIN: i32 = 1;
/// Snapshot whose next 365 days train the value model.
pub const VALUE_TRAIN: i32 = 3;

/// The snapshots a run at `cutoff` computes features for.
pub fn snapshots(cutoff: Cutoff) -> Snapshots {
    Snapshots::new(cutoff, &SNAPSHOT_DAYS)
}

/// Fewer training customers with an order than this: use the fallback formula.
const MIN_TRAINING_BUYERS: usize = 200;
/// Pseudo-orders pulling a customer's spend per order towards the average order value.
const SPEND_PRIOR_ORDERS: f64 = 2.0;

/// Scores for every customer of the feature table, in its row order.
#[derive(Debug, Clone)]
pub struct Scores {
    /// P(no completed order in the next 90 days), in [0, 1].
    pub churn: Vec<f64>,
    /// Expected discounted net revenue over the next 365 days (≥ 0).
    pub value: Vec<f64>,
    /// How the scores were made, for the manifest.
    pub report: ModelReport,
}

/// What the manifest records about the models.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// The churn model.
    pub churn: FitReport,
    /// The value model.
    pub value: FitReport,
}

/// One fitted model.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    /// `cell_model` or `fallback_run_rate` (not enough history to learn from).
    pub method: String,
    /// The as-of instant of the training snapshot.
    pub training_cutoff: String,
    /// Customers in the training snapshot.
    pub training_customers: usize,
    /// Overall outcome in training: churn rate, or mean discounted future orders.
    pub training_mean: f64,
    /// Cells with at least one training customer.
    pub cells: usize,
}

/// Frequency buckets: 0, 1, 2, 3, 4–5, 6–9, 10–19, 20+ completed orders.
fn frequency_bucket(f: f64) -> u8 {
    match f {
        f if f < 1.0 => 0,
        f if f < 2.0 => 1,
        f if f < 3.0 => 2,
        f if f < 4.0 => 3,
        f if f < 6.0 => 4,
        f if f < 10.0 => 5,
        f if f < 20.0 => 6,
        _ => 7,
    }
}

/// Days buckets: ≤14, ≤30, ≤60, ≤90, ≤180, ≤365, more, unknown.
fn days_bucket(d: f64) -> u8 {
    match d {
        d if d.is_nan() => 7,
        d if d <= 14.0 => 0,
        d if d <= 30.0 => 1,
        d if d <= 60.0 => 2,
        d if d <= 90.0 => 3,
        d if d <= 180.0 => 4,
        d if d <= 365.0 => 5,
        _ => 6,
    }
}

/// The cell of a customer: buyers by recency, never-buyers by days since first seen.
fn cell(frequency: f64, recency_days: f64, first_seen_days: f64) -> (u8, u8) {
    let fb = frequency_bucket(frequency);
    let days = if fb == 0 {
        first_seen_days
    } else {
        recency_days
    };
    (fb, days_bucket(days))
}

/// Per-cell means shrunk towards the frequency row, the row towards the overall mean.
#[derive(Debug, Default)]
struct CellModel {
    cells: HashMap<(u8, u8), f64>,
    rows: HashMap<u8, f64>,
    overall: f64,
}

impl CellModel {
    fn fit(keys: &[(u8, u8)], outcomes: &[f64], prior: f64) -> CellModel {
        let n = outcomes.len().max(1) as f64;
        let overall = outcomes.iter().sum::<f64>() / n;
        let mut cell_sums: HashMap<(u8, u8), (f64, f64)> = HashMap::new();
        let mut row_sums: HashMap<u8, (f64, f64)> = HashMap::new();
        for (k, y) in keys.iter().zip(outcomes) {
            let c = cell_sums.entry(*k).or_default();
            c.0 += y;
            c.1 += 1.0;
            let r = row_sums.entry(k.0).or_default();
            r.0 += y;
            r.1 += 1.0;
        }
        let shrink =
            |(sum, count): (f64, f64), parent: f64| (sum + prior * parent) / (count + prior);
        let rows: HashMap<u8, f64> = row_sums
            .iter()
            .map(|(k, s)| (*k, shrink(*s, overall)))
            .collect();
        let cells = cell_sums
            .iter()
            .map(|(k, s)| (*k, shrink(*s, rows[&k.0])))
            .collect();
        CellModel {
            cells,
            rows,
            overall,
        }
    }

    fn predict(&self, key: (u8, u8)) -> f64 {
        self.cells
            .get(&key)
            .or_else(|| self.rows.get(&key.0))
            .copied()
            .unwrap_or(self.overall)
    }
}

/// The cells of every customer of a features table.
fn cells_of(table: &CustomerTable) -> Result<Vec<(u8, u8)>> {
    let f = table.f64("frequency")?;
    let r = table.f64("recency_days")?;
    let s = table.f64("tenure_days")?;
    Ok((0..table.len()).map(|i| cell(f[i], r[i], s[i])).collect())
}

/// Fits both models on the earlier snapshots and scores the customers of snapshot 0.
pub fn score(
    pipeline: &Pipeline,
    snapshots: &Snapshots,
    features: &SnapshotFeatures,
) -> Result<Scores> {
    let prior = pipeline.model.prior_strength;
    let current = features.current()?;
    let now_cells = cells_of(current)?;
    let cutoff_of = |id: i32| {
        snapshots
            .cutoff(id)
            .unwrap_or(Cutoff(chrono::NaiveDateTime::MIN))
    };

    let (churn, churn_report) = match features.get(CHURN_TRAIN) {
        Some(t) if buyers(t)? >= MIN_TRAINING_BUYERS => {
            let keys = cells_of(t)?;
            let labels: Vec<f64> = t
                .f64("next_90d_orders")?
                .iter()
                .map(|&n| if n > 0.0 { 0.0 } else { 1.0 })
                .collect();
            let model = CellModel::fit(&keys, &labels, prior);
            let scores = now_cells
                .iter()
                .map(|k| model.predict(*k).clamp(0.0, 1.0))
                .collect();
            (
                scores,
                fitted("cell_model", cutoff_of(CHURN_TRAIN), t, &model),
            )
        }
        // Too little history before the training cut-off: fall back.
        _ => (
            fallback_churn(current)?,
            fallback("fallback_run_rate", cutoff_of(CHURN_TRAIN)),
        ),
    };

    let (value, value_report) = match features.get(VALUE_TRAIN) {
        Some(t) if buyers(t)? >= MIN_TRAINING_BUYERS => {
            let keys = cells_of(t)?;
            let outcomes = t.f64("next_365d_orders_pv")?;
            let model = CellModel::fit(&keys, &outcomes, prior);
            let spend = spend_per_order(current)?;
            let scores = now_cells
                .iter()
                .zip(&spend)
                .map(|(k, s)| (model.predict(*k) * s).max(0.0))
                .collect();
            (
                scores,
                fitted("cell_model", cutoff_of(VALUE_TRAIN), t, &model),
            )
        }
        _ => (
            fallback_value(current, &churn, pipeline.model.monthly_discount_rate)?,
            fallback("fallback_run_rate", cutoff_of(VALUE_TRAIN)),
        ),
    };

    Ok(Scores {
        churn,
        value,
        report: ModelReport {
            churn: churn_report,
            value: value_report,
        },
    })
}

/// Expected spend per future order: the customer's average order value shrunk towards the
/// average over all buyers by [`SPEND_PRIOR_ORDERS`] pseudo-orders (never-buyers: the average).
fn spend_per_order(features: &CustomerTable) -> Result<Vec<f64>> {
    let f = features.f64("frequency")?;
    let m = features.f64("monetary")?;
    let (orders, revenue) = f
        .iter()
        .zip(&m)
        .filter(|(f, m)| **f > 0.0 && m.is_finite())
        .fold((0.0, 0.0), |(o, r), (f, m)| (o + f, r + m));
    let average = if orders > 0.0 { revenue / orders } else { 0.0 };
    Ok(f.iter()
        .zip(&m)
        .map(|(&f, &m)| {
            let (f, m) = if f > 0.0 && m.is_finite() {
                (f, m)
            } else {
                (0.0, 0.0)
            };
            (m + SPEND_PRIOR_ORDERS * average) / (f + SPEND_PRIOR_ORDERS)
        })
        .collect())
}

fn buyers(t: &CustomerTable) -> Result<usize> {
    Ok(t.f64("frequency")?.iter().filter(|&&f| f > 0.0).count())
}

fn fitted(method: &str, cutoff: Cutoff, t: &CustomerTable, m: &CellModel) -> FitReport {
    FitReport {
        method: method.into(),
        training_cutoff: cutoff.0.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        training_customers: t.len(),
        training_mean: m.overall,
        cells: m.cells.len(),
    }
}

fn fallback(method: &str, cutoff: Cutoff) -> FitReport {
    FitReport {
        method: method.into(),
        training_cutoff: cutoff.0.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        training_customers: 0,
        training_mean: f64::NAN,
        cells: 0,
    }
}

/// Without history to learn from: a Poisson purchase rate from the customer's own record,
/// P(no order in 90 days) = exp(−90·λ), λ = (orders + ½) / (tenure + 90 days), damped by how
/// overdue the customer is relative to their own gap.
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
            (-(CHURN_HORIZON_DAYS as f64) * rate / (1.0 + overdue))
                .exp()
                .clamp(0.0, 1.0)
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
    fn buckets_are_monotone() {
        let f: Vec<u8> = [0.0, 1.0, 2.0, 3.0, 5.0, 9.0, 19.0, 500.0]
            .iter()
            .map(|&x| frequency_bucket(x))
            .collect();
        assert_eq!(f, vec![0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(days_bucket(f64::NAN), 7);
        assert_eq!(days_bucket(400.0), 6);
    }

    #[test]
    fn cell_model_shrinks_small_cells() {
        // 100 customers in cell (1,0) all stayed; one lone customer in (1,6) churned.
        let mut keys = vec![(1u8, 0u8); 100];
        let mut y = vec![0.0; 100];
        keys.push((1, 6));
        y.push(1.0);
        let m = CellModel::fit(&keys, &y, 20.0);
        let lone = m.predict((1, 6));
        assert!(lone > 0.0 && lone < 0.1, "{lone}");
        assert!(m.predict((1, 0)) < 0.01);
        // unseen row falls back to the overall rate
        assert!((m.predict((5, 5)) - 1.0 / 101.0).abs() < 1e-12);
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
