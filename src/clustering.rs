//! Clustering: transform the behavioural features (log for heavy tails, standardise), fit
//! k-means (linfa, k-means++, several seeded runs) on a deterministic sample, assign everyone.
//!
//! Clusters are put in a canonical order (by centroid, highest net revenue first) so the same
//! input and seed always give the same cluster numbers.

use linfa::prelude::*;
use linfa::DatasetBase;
use linfa_clustering::KMeans;
use ndarray::{Array1, Array2, Axis};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256Plus;
use serde::Serialize;

use crate::config::ClusterParams;
use crate::error::{Error, Result};
use crate::features::CustomerTable;

/// How one feature enters the distance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Transform {
    /// ln(1 + max(x, 0)); a missing value becomes `missing` first.
    Log1p {
        /// Value used for NULL (e.g. "never ordered" → a long recency).
        missing: f64,
    },
    /// x as is; a missing value becomes `missing`.
    Identity {
        /// Value used for NULL.
        missing: f64,
    },
}

impl Transform {
    fn apply(self, x: f64) -> f64 {
        match self {
            Transform::Log1p { missing } => {
                let x = if x.is_nan() { missing } else { x };
                x.max(0.0).ln_1p()
            }
            Transform::Identity { missing } => {
                if x.is_nan() {
                    missing
                } else {
                    x
                }
            }
        }
    }
}

/// The behavioural features k-means sees, with their transforms.
pub const FEATURES: &[(&str, Transform)] = &[
    ("recency_days", Transform::Log1p { missing: 1000.0 }),
    ("frequency", Transform::Log1p { missing: 0.0 }),
    ("monetary", Transform::Log1p { missing: 0.0 }),
    ("avg_order_value", Transform::Log1p { missing: 0.0 }),
    ("tenure_days", Transform::Log1p { missing: 0.0 }),
    ("return_rate", Transform::Identity { missing: 0.0 }),
    ("discount_share", Transform::Identity { missing: 0.0 }),
    ("sessions_90d", Transform::Log1p { missing: 0.0 }),
    ("add_to_cart_90d", Transform::Log1p { missing: 0.0 }),
    (
        "days_since_last_visit",
        Transform::Log1p { missing: 1000.0 },
    ),
    ("engagement_trend", Transform::Identity { missing: 0.0 }),
];

/// The fitted clustering.
#[derive(Debug, Clone, Serialize)]
pub struct Clustering {
    /// Feature names, in column order of the centroids.
    pub features: Vec<String>,
    /// Per-feature mean of the transformed values (the standardisation).
    pub mean: Vec<f64>,
    /// Per-feature standard deviation of the transformed values.
    pub std: Vec<f64>,
    /// Centroids in standardised units (k × features), canonical order.
    pub centroids: Vec<Vec<f64>>,
    /// Cluster of every customer (index into `centroids`), in feature-table row order.
    #[serde(skip)]
    pub assignment: Vec<usize>,
    /// Customers per cluster.
    pub sizes: Vec<usize>,
    /// Customers the model was fitted on.
    pub sample_size: usize,
    /// Sum of squared distances to the assigned centroid over all customers, per customer.
    pub mean_squared_distance: f64,
}

/// Transforms, standardises, fits and assigns.
pub fn fit(table: &CustomerTable, params: &ClusterParams) -> Result<Clustering> {
    let n = table.len();
    if n < params.k {
        return Err(Error::InputRejected(format!(
            "only {n} known customers, fewer than clustering.k = {}; lower k or check the inputs",
            params.k
        )));
    }
    let mut x = Array2::<f64>::zeros((n, FEATURES.len()));
    for (j, (name, transform)) in FEATURES.iter().enumerate() {
        let col = table.f64(name)?;
        for (i, v) in col.into_iter().enumerate() {
            x[[i, j]] = transform.apply(v);
        }
    }
    let mean: Vec<f64> = x.mean_axis(Axis(0)).map_or_else(Vec::new, |m| m.to_vec());
    let std: Vec<f64> = x
        .std_axis(Axis(0), 0.0)
        .iter()
        .map(|&s| if s > 1e-12 { s } else { 1.0 })
        .collect();
    for mut row in x.rows_mut() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (*v - mean[j]) / std[j];
        }
    }

    // Deterministic sample: evenly spaced customers of the (customer_id-ordered) table.
    let s = params.sample_size.min(n);
    let sample_rows: Vec<usize> = (0..s).map(|i| i * n / s).collect();
    let sample = x.select(Axis(0), &sample_rows);
    let rng = Xoshiro256Plus::seed_from_u64(params.seed);
    let model = KMeans::params_with_rng(params.k, rng)
        .n_runs(params.n_runs)
        .max_n_iterations(params.max_iterations)
        .tolerance(params.tolerance)
        .fit(&DatasetBase::from(sample.clone()))
        .map_err(|e| Error::Model(format!("k-means did not fit: {e}")))?;
    let raw_labels: Array1<usize> = model.predict(&x);

    // Canonical order: by centroid net revenue, then frequency, then recency (ascending).
    let c = model.centroids();
    let col = |name: &str| FEATURES.iter().position(|(f, _)| *f == name).unwrap_or(0);
    let (mon, freq, rec) = (col("monetary"), col("frequency"), col("recency_days"));
    let mut order: Vec<usize> = (0..c.nrows()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| (-c[[i, mon]], -c[[i, freq]], c[[i, rec]]);
        key(a)
            .partial_cmp(&key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut rank = vec![0usize; c.nrows()];
    for (new, &old) in order.iter().enumerate() {
        rank[old] = new;
    }
    let assignment: Vec<usize> = raw_labels.iter().map(|&l| rank[l]).collect();
    let centroids: Vec<Vec<f64>> = order.iter().map(|&i| c.row(i).to_vec()).collect();
    let mut sizes = vec![0usize; centroids.len()];
    let mut sq = 0.0;
    for (i, &a) in assignment.iter().enumerate() {
        sizes[a] += 1;
        sq += x
            .row(i)
            .iter()
            .zip(&centroids[a])
            .map(|(v, c)| (v - c).powi(2))
            .sum::<f64>();
    }
    Ok(Clustering {
        features: FEATURES.iter().map(|(f, _)| f.to_string()).collect(),
        mean,
        std,
        centroids,
        assignment,
        sizes,
        sample_size: sample_rows.len(),
        mean_squared_distance: sq / n as f64,
    })
}

impl Clustering {
    /// The standardised centroid value of `feature` for cluster `c` (its z-score), 0 if absent.
    pub fn z(&self, c: usize, feature: &str) -> f64 {
        self.features
            .iter()
            .position(|f| f == feature)
            .map_or(0.0, |j| self.centroids[c][j])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
    use rand::Rng;
    use std::sync::Arc;

    /// Two obvious groups: frequent recent buyers and lapsed one-timers.
    fn table(n: usize, seed: u64) -> CustomerTable {
        let mut rng = Xoshiro256Plus::seed_from_u64(seed);
        let mut cols: Vec<Vec<f64>> = vec![Vec::new(); FEATURES.len()];
        let ids: Vec<String> = (0..n).map(|i| format!("c{i:05}")).collect();
        for i in 0..n {
            let good = i % 2 == 0;
            for (j, (name, _)) in FEATURES.iter().enumerate() {
                let base = match (*name, good) {
                    ("recency_days", true) => 10.0,
                    ("recency_days", false) => 400.0,
                    ("frequency", true) => 12.0,
                    ("frequency", false) => 1.0,
                    ("monetary", true) => 900.0,
                    ("monetary", false) => 40.0,
                    _ => 1.0,
                };
                cols[j].push(base * rng.gen_range(0.8..1.2));
            }
        }
        let mut arrays: Vec<(&str, ArrayRef)> =
            vec![("customer_id", Arc::new(StringArray::from(ids)) as ArrayRef)];
        for (j, (name, _)) in FEATURES.iter().enumerate() {
            arrays.push((
                name,
                Arc::new(Float64Array::from(cols[j].clone())) as ArrayRef,
            ));
        }
        CustomerTable::new(vec![RecordBatch::try_from_iter(arrays).unwrap()], "test").unwrap()
    }

    #[test]
    fn finds_planted_groups_in_canonical_order() {
        let t = table(400, 7);
        let p = ClusterParams {
            k: 2,
            ..Default::default()
        };
        let c = fit(&t, &p).unwrap();
        assert_eq!(c.sizes, vec![200, 200]);
        // Cluster 0 is the high-revenue one, and holds the even (good) customers.
        assert!(c.z(0, "monetary") > c.z(1, "monetary"));
        assert!(c.assignment.iter().step_by(2).all(|&a| a == 0));
    }

    #[test]
    fn deterministic_for_a_seed_and_sampled() {
        let t = table(1000, 3);
        let p = ClusterParams {
            k: 3,
            sample_size: 300,
            ..Default::default()
        };
        let a = fit(&t, &p).unwrap();
        let b = fit(&t, &p).unwrap();
        assert_eq!(a.assignment, b.assignment);
        assert_eq!(a.centroids, b.centroids);
        assert_eq!(a.sample_size, 300);
    }

    #[test]
    fn too_few_customers_is_an_input_error() {
        let t = table(3, 1);
        let err = fit(&t, &ClusterParams::default()).unwrap_err();
        assert_eq!(err.exit_code(), 3);
    }

    #[test]
    fn transforms() {
        assert_eq!(Transform::Log1p { missing: 0.0 }.apply(f64::NAN), 0.0);
        assert_eq!(Transform::Log1p { missing: 0.0 }.apply(-5.0), 0.0);
        assert_eq!(Transform::Identity { missing: 2.0 }.apply(f64::NAN), 2.0);
    }
}
