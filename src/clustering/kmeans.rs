//! k-means itself (linfa: k-means++ or a warm start from given centroids), nearest-centroid
//! assignment and the silhouette used to choose k.

use linfa::prelude::*;
use linfa::DatasetBase;
use linfa_clustering::{KMeans, KMeansInit};
use ndarray::{Array2, ArrayView1, Axis};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256Plus;

use crate::config::ClusterParams;
use crate::error::{Error, Result};

/// Centroids (k × features) from k-means++ with `params.n_runs` seeded runs on `sample`.
pub fn fit(sample: &Array2<f64>, k: usize, params: &ClusterParams) -> Result<Array2<f64>> {
    let rng = Xoshiro256Plus::seed_from_u64(params.seed);
    let model = KMeans::params_with_rng(k, rng)
        .n_runs(params.n_runs)
        .max_n_iterations(params.max_iterations)
        .tolerance(params.tolerance)
        .fit(&DatasetBase::from(sample.clone()))
        .map_err(|e| Error::Model(format!("k-means (k = {k}) did not fit: {e}")))?;
    Ok(model.centroids().clone())
}

/// Centroids from k-means started at `init` (one run): the warm start from the previous model.
/// A centre that ends up with no finite value (no customer near it) stays where it started.
pub fn fit_from(
    sample: &Array2<f64>,
    init: Array2<f64>,
    params: &ClusterParams,
) -> Result<Array2<f64>> {
    let k = init.nrows();
    let rng = Xoshiro256Plus::seed_from_u64(params.seed);
    let model = KMeans::params_with_rng(k, rng)
        .n_runs(1)
        .init_method(KMeansInit::Precomputed(init.clone()))
        .max_n_iterations(params.max_iterations)
        .tolerance(params.tolerance)
        .fit(&DatasetBase::from(sample.clone()))
        .map_err(|e| Error::Model(format!("k-means warm start (k = {k}) did not fit: {e}")))?;
    let mut c = model.centroids().clone();
    for (mut row, start) in c.axis_iter_mut(Axis(0)).zip(init.axis_iter(Axis(0))) {
        if row.iter().any(|v| !v.is_finite()) {
            row.assign(&start);
        }
    }
    Ok(c)
}

fn sq(a: ArrayView1<f64>, b: ArrayView1<f64>) -> f64 {
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).powi(2)).sum()
}

/// Index of the nearest centroid of every row (ties: the lower index) and the squared
/// distance to it.
pub fn assign(x: &Array2<f64>, centroids: &Array2<f64>) -> Vec<(usize, f64)> {
    x.axis_iter(Axis(0))
        .map(|row| {
            let mut best = (0, f64::INFINITY);
            for (c, centroid) in centroids.axis_iter(Axis(0)).enumerate() {
                let d = sq(row, centroid);
                if d < best.1 {
                    best = (c, d);
                }
            }
            best
        })
        .collect()
}

/// Mean silhouette of `labels` on `x` (Euclidean). Points alone in their cluster count 0.
pub fn silhouette(x: &Array2<f64>, labels: &[usize], k: usize) -> f64 {
    let n = x.nrows();
    if n < 2 || k < 2 {
        return 0.0;
    }
    let mut counts = vec![0usize; k];
    for &l in labels {
        counts[l] += 1;
    }
    let mut total = 0.0;
    let mut sums = vec![0.0; k];
    for i in 0..n {
        sums.iter_mut().for_each(|s| *s = 0.0);
        let xi = x.row(i);
        for j in 0..n {
            if i != j {
                sums[labels[j]] += sq(xi, x.row(j)).sqrt();
            }
        }
        let own = labels[i];
        if counts[own] <= 1 {
            continue;
        }
        let a = sums[own] / (counts[own] - 1) as f64;
        let b = (0..k)
            .filter(|&c| c != own && counts[c] > 0)
            .map(|c| sums[c] / counts[c] as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() {
            total += (b - a) / a.max(b).max(1e-300);
        }
    }
    total / n as f64
}

/// Evenly spaced rows `0, n/s, 2n/s, …` (`s` of them, at most `n`): a deterministic sample of
/// a table ordered by customer id.
pub fn even_sample(n: usize, s: usize) -> Vec<usize> {
    let s = s.min(n);
    (0..s).map(|i| i * n / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn silhouette_of_separated_and_mixed_groups() {
        let x = array![[0.0], [0.1], [10.0], [10.1]];
        let good = silhouette(&x, &[0, 0, 1, 1], 2);
        assert!(good > 0.98, "{good}");
        let bad = silhouette(&x, &[0, 1, 0, 1], 2);
        assert!(bad < 0.0, "{bad}");
    }

    #[test]
    fn assignment_picks_the_nearest_and_the_lower_index_on_ties() {
        let c = array![[0.0], [2.0]];
        let x = array![[0.4], [1.0], [1.9]];
        let a: Vec<usize> = assign(&x, &c).into_iter().map(|p| p.0).collect();
        assert_eq!(a, vec![0, 0, 1]);
    }

    #[test]
    fn a_warm_start_keeps_a_centre_nobody_is_near() {
        let x = array![[0.0], [0.1], [0.2], [10.0], [10.1]];
        let init = array![[0.0], [10.0], [1000.0]];
        let c = fit_from(&x, init, &ClusterParams::default()).unwrap();
        assert!(c.iter().all(|v| v.is_finite()), "{c}");
        // linfa stops at its tolerance, so the means are close, not exact.
        assert!(
            (c[[0, 0]] - 0.1).abs() < 1e-3 && (c[[1, 0]] - 10.05).abs() < 1e-3,
            "{c}"
        );
        assert_eq!(c[[2, 0]], 1000.0, "{c}");
    }

    #[test]
    fn even_sample_is_spread_and_capped() {
        assert_eq!(even_sample(10, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(even_sample(3, 5), vec![0, 1, 2]);
    }
}
