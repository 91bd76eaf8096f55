//! One-to-one matching of this run's clusters to the previous model's segments: the
//! assignment of least total squared centroid distance (Hungarian algorithm), keeping only
//! pairs closer than a threshold; the rest are new clusters and retired segments.

/// Minimum-cost assignment for a `rows × cols` cost matrix (Kuhn–Munkres with potentials,
/// O(n³), n = max(rows, cols)). Returns for each row the matched column, `None` when there
/// are more rows than columns and the row is left over. Deterministic for a given matrix.
pub fn hungarian(cost: &[Vec<f64>]) -> Vec<Option<usize>> {
    let rows = cost.len();
    let cols = cost.first().map_or(0, Vec::len);
    let n = rows.max(cols);
    if n == 0 {
        return Vec::new();
    }
    // Square matrix, padded with zeros; 1-based arrays as in the textbook version.
    let at = |i: usize, j: usize| -> f64 {
        if i < rows && j < cols {
            cost[i][j]
        } else {
            0.0
        }
    };
    let inf = f64::INFINITY;
    let mut u = vec![0.0; n + 1];
    let mut v = vec![0.0; n + 1];
    let mut p = vec![0usize; n + 1]; // p[j]: row matched to column j (1-based, 0 = none)
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        let mut minv = vec![inf; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = inf;
            let mut j1 = 0;
            for j in 1..=n {
                if !used[j] {
                    let cur = at(i0 - 1, j - 1) - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut out = vec![None; rows];
    for (j, &i) in p.iter().enumerate().skip(1) {
        if i >= 1 && i <= rows && j <= cols {
            out[i - 1] = Some(j - 1);
        }
    }
    out
}

/// Squared Euclidean distance.
pub fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

/// Matches `new` centroids to `old` ones (same space): for each new centroid the index of its
/// old partner, or `None` (a new cluster). Pairs farther apart than `max_distance` are not
/// matched.
pub fn match_centroids(
    new: &[Vec<f64>],
    old: &[Vec<f64>],
    max_distance: f64,
) -> Vec<Option<usize>> {
    let cost: Vec<Vec<f64>> = new
        .iter()
        .map(|a| old.iter().map(|b| sq_dist(a, b)).collect())
        .collect();
    hungarian(&cost)
        .into_iter()
        .enumerate()
        .map(|(i, m)| m.filter(|&j| cost[i][j].sqrt() <= max_distance))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force over all permutations (small n) for the optimum cost.
    fn brute(cost: &[Vec<f64>]) -> f64 {
        fn go(cost: &[Vec<f64>], i: usize, used: &mut Vec<bool>) -> f64 {
            if i == cost.len() {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for j in 0..cost[0].len() {
                if !used[j] {
                    used[j] = true;
                    best = best.min(cost[i][j] + go(cost, i + 1, used));
                    used[j] = false;
                }
            }
            best
        }
        go(cost, 0, &mut vec![false; cost[0].len()])
    }

    #[test]
    fn optimal_on_random_square_and_rectangular_matrices() {
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        };
        for (rows, cols) in [(1, 1), (3, 3), (5, 5), (6, 6), (3, 5), (4, 7)] {
            for _ in 0..20 {
                let cost: Vec<Vec<f64>> = (0..rows)
                    .map(|_| (0..cols).map(|_| next()).collect())
                    .collect();
                let m = hungarian(&cost);
                let total: f64 = m.iter().enumerate().map(|(i, j)| cost[i][j.unwrap()]).sum();
                let mut cols_used: Vec<usize> = m.iter().map(|j| j.unwrap()).collect();
                cols_used.sort();
                cols_used.dedup();
                assert_eq!(cols_used.len(), rows, "one-to-one");
                assert!(
                    (total - brute(&cost)).abs() < 1e-9,
                    "{rows}x{cols}: {total}"
                );
            }
        }
    }

    #[test]
    fn more_rows_than_columns_leaves_the_costliest_unmatched() {
        let cost = vec![vec![0.0], vec![5.0], vec![1.0]];
        assert_eq!(hungarian(&cost), vec![Some(0), None, None]);
    }

    #[test]
    fn far_pairs_are_new_clusters() {
        let old = vec![vec![0.0, 0.0], vec![10.0, 0.0]];
        let new = vec![vec![10.2, 0.0], vec![0.1, 0.0], vec![0.0, 50.0]];
        assert_eq!(
            match_centroids(&new, &old, 1.0),
            vec![Some(1), Some(0), None]
        );
        // A permutation that is not the greedy one: greedy would pair new 0 with old 0.
        let old = vec![vec![0.0], vec![2.0]];
        let new = vec![vec![1.0], vec![-0.5]];
        assert_eq!(match_centroids(&new, &old, 5.0), vec![Some(1), Some(0)]);
    }
}
