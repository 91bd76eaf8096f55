//! Evaluation metrics for scores, as pure functions over slices.
//!
//! Conventions shared by every function here:
//! * The two slices are paired by index; if their lengths differ, only the common prefix is
//!   used.
//! * **Missing values:** a pair in which either element is `NaN` is skipped (±∞ are kept as
//!   ordinary, extreme values).
//! * A binary label is *positive* when it is `> 0.5` (so 0/1 labels work as expected);
//!   functions that average labels ([`brier`], [`calibration_table`], [`top_decile_lift`]) use
//!   the label's value itself.
//! * When a metric is undefined (no pairs left, a single class, zero variance, zero total…)
//!   the result is `NaN`.
//! * Orderings by score are deterministic: equal scores are broken by the lower index first
//!   ([`top_decile_lift`], [`top_share_capture`]) or share an average rank ([`roc_auc`],
//!   [`spearman`]).

use serde::Serialize;

/// The pairs of `a` and `b` in which neither value is `NaN`.
fn pairs(a: &[f64], b: &[f64]) -> Vec<(f64, f64)> {
    a.iter()
        .zip(b)
        .filter(|(x, y)| !x.is_nan() && !y.is_nan())
        .map(|(x, y)| (*x, *y))
        .collect()
}

/// 1-based ranks of `v` (no `NaN`), ties sharing the average of their ranks.
fn average_ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| v[i].total_cmp(&v[j]).then(i.cmp(&j)));
    let mut ranks = vec![0.0; v.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        // `==` rather than total order, so -0.0 and 0.0 tie.
        while end < order.len() && v[order[end]] == v[order[start]] {
            end += 1;
        }
        // Ranks start+1 ..= end, averaged.
        let avg = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = avg;
        }
        start = end;
    }
    ranks
}

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting one half (Mann–Whitney U with average ranks), in O(n log n).
/// `NaN` if there are no positives or no negatives.
pub fn roc_auc(scores: &[f64], labels: &[f64]) -> f64 {
    let p = pairs(scores, labels);
    let s: Vec<f64> = p.iter().map(|(s, _)| *s).collect();
    let ranks = average_ranks(&s);
    let mut n_pos = 0.0;
    let mut rank_sum = 0.0;
    for ((_, y), r) in p.iter().zip(&ranks) {
        if *y > 0.5 {
            n_pos += 1.0;
            rank_sum += r;
        }
    }
    let n_neg = p.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return f64::NAN;
    }
    (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// Brier score: the mean of `(p − y)²`. `NaN` if no pair is left.
pub fn brier(p: &[f64], y: &[f64]) -> f64 {
    let pr = pairs(p, y);
    if pr.is_empty() {
        return f64::NAN;
    }
    pr.iter().map(|(p, y)| (p - y) * (p - y)).sum::<f64>() / pr.len() as f64
}

/// One bin of a reliability (calibration) table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationBin {
    /// Lower edge of the bin (inclusive).
    pub lower: f64,
    /// Upper edge of the bin (exclusive, except 1.0 for the last bin).
    pub upper: f64,
    /// Number of predictions in the bin.
    pub count: usize,
    /// Mean prediction in the bin (`NaN`, written as JSON `null`, when empty).
    pub mean_predicted: f64,
    /// Mean label in the bin (`NaN`, written as JSON `null`, when empty).
    pub observed_rate: f64,
}

/// A reliability table with `bins` equal-width bins on `[0, 1]`, all of them (empty bins
/// included, so positions are stable). Predictions are clamped into `[0, 1]` first; `1.0`
/// falls in the last bin. `bins == 0` gives an empty table.
pub fn calibration_table(p: &[f64], y: &[f64], bins: usize) -> Vec<CalibrationBin> {
    let mut sums = vec![(0usize, 0.0f64, 0.0f64); bins];
    if bins == 0 {
        return Vec::new();
    }
    for (p, y) in pairs(p, y) {
        let p = p.clamp(0.0, 1.0);
        let i = ((p * bins as f64) as usize).min(bins - 1);
        let s = &mut sums[i];
        s.0 += 1;
        s.1 += p;
        s.2 += y;
    }
    sums.iter()
        .enumerate()
        .map(|(i, &(count, sp, sy))| {
            let (mean_predicted, observed_rate) = if count > 0 {
                (sp / count as f64, sy / count as f64)
            } else {
                (f64::NAN, f64::NAN)
            };
            CalibrationBin {
                lower: i as f64 / bins as f64,
                upper: (i + 1) as f64 / bins as f64,
                count,
                mean_predicted,
                observed_rate,
            }
        })
        .collect()
}

/// Expected calibration error of a table: the count-weighted mean of
/// `|mean_predicted − observed_rate|` over non-empty bins. `NaN` if every bin is empty.
pub fn expected_calibration_error(table: &[CalibrationBin]) -> f64 {
    let (mut total, mut weighted) = (0.0, 0.0);
    for b in table.iter().filter(|b| b.count > 0) {
        total += b.count as f64;
        weighted += b.count as f64 * (b.mean_predicted - b.observed_rate).abs();
    }
    if total > 0.0 {
        weighted / total
    } else {
        f64::NAN
    }
}

/// Indices of the pairs ordered by descending score, equal scores by ascending index.
fn descending(p: &[(f64, f64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&i, &j| p[j].0.total_cmp(&p[i].0).then(i.cmp(&j)));
    order
}

/// Number of rows in the top `share` of `n` rows: `⌈share·n⌉`, at least 1 when `n > 0`.
fn top_count(n: usize, share: f64) -> usize {
    if n == 0 {
        return 0;
    }
    ((share * n as f64).ceil() as usize).clamp(1, n)
}

/// Top-decile lift: the mean label among the top `⌈n/10⌉` rows by score (ties broken by
/// lower index first) divided by the mean label overall. `NaN` if the overall mean is 0 or
/// no pair is left.
pub fn top_decile_lift(scores: &[f64], labels: &[f64]) -> f64 {
    let p = pairs(scores, labels);
    let n = p.len();
    let overall = p.iter().map(|(_, y)| y).sum::<f64>() / n as f64;
    if n == 0 || overall == 0.0 {
        return f64::NAN;
    }
    let k = top_count(n, 0.1);
    let top = descending(&p)[..k].iter().map(|&i| p[i].1).sum::<f64>() / k as f64;
    top / overall
}

/// Spearman rank correlation: the Pearson correlation of the average ranks. `NaN` with
/// fewer than two pairs or when either side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let p = pairs(a, b);
    if p.len() < 2 {
        return f64::NAN;
    }
    let ra = average_ranks(&p.iter().map(|(x, _)| *x).collect::<Vec<_>>());
    let rb = average_ranks(&p.iter().map(|(_, y)| *y).collect::<Vec<_>>());
    let n = p.len() as f64;
    let ma = ra.iter().sum::<f64>() / n;
    let mb = rb.iter().sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 {
        return f64::NAN;
    }
    sab / (saa * sbb).sqrt()
}

/// Share of the total outcome captured by the top `share` of rows by score: the sum of
/// `outcome` over the top `⌈share·n⌉` rows (at least one; ties broken by lower index first)
/// divided by the sum over all rows. `share` is clamped to `[0, 1]`; `NaN` if `share` is
/// `NaN`, no pair is left, or the total outcome is 0.
pub fn top_share_capture(scores: &[f64], outcome: &[f64], share: f64) -> f64 {
    if share.is_nan() {
        return f64::NAN;
    }
    let p = pairs(scores, outcome);
    let total: f64 = p.iter().map(|(_, y)| y).sum();
    if p.is_empty() || total == 0.0 {
        return f64::NAN;
    }
    let k = top_count(p.len(), share.clamp(0.0, 1.0));
    let top: f64 = descending(&p)[..k].iter().map(|&i| p[i].1).sum();
    top / total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn auc_extremes_and_ties() {
        let y = [0.0, 0.0, 1.0, 1.0];
        assert!(close(roc_auc(&[0.1, 0.2, 0.8, 0.9], &y), 1.0));
        assert!(close(roc_auc(&[0.9, 0.8, 0.2, 0.1], &y), 0.0));
        // All tied: every pair gets half credit.
        assert!(close(roc_auc(&[0.5; 4], &y), 0.5));
        // Hand count: positives {0.8, 0.4}, negatives {0.4, 0.1}:
        // (0.8>0.4)=1, (0.8>0.1)=1, (0.4=0.4)=½, (0.4>0.1)=1 → 3.5/4.
        assert!(close(roc_auc(&[0.4, 0.1, 0.8, 0.4], &y), 0.875));
        // NaN pairs are skipped; single class is undefined.
        assert!(close(
            roc_auc(&[0.1, f64::NAN, 0.8, 0.9], &[0.0, 1.0, 1.0, f64::NAN]),
            1.0
        ));
        assert!(roc_auc(&[0.1, 0.2], &[1.0, 1.0]).is_nan());
    }

    #[test]
    fn brier_by_hand() {
        // (0.1² + 0.2² + 0.5²)/3 = 0.3/3
        assert!(close(brier(&[0.1, 0.8, 0.5], &[0.0, 1.0, 1.0]), 0.1));
        assert!(brier(&[], &[]).is_nan());
    }

    #[test]
    fn calibration_table_and_ece() {
        // Bin [0.2,0.3): predictions 0.25 ×4 with 1 positive → perfectly calibrated.
        // Bin [0.7,0.8): 0.75 ×4 with 3 positives → perfectly calibrated. 1.0 → last bin.
        let p = [0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75, 1.0];
        let y = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0];
        let t = calibration_table(&p, &y, 10);
        assert_eq!(t.len(), 10);
        assert_eq!(t[2].count, 4);
        assert!(close(t[2].lower, 0.2) && close(t[2].upper, 0.3));
        assert!(close(t[2].mean_predicted, 0.25) && close(t[2].observed_rate, 0.25));
        assert_eq!(t[7].count, 4);
        assert_eq!(t[9].count, 1);
        assert_eq!(t[0].count, 0);
        assert!(t[0].mean_predicted.is_nan());
        assert!(expected_calibration_error(&t).abs() < 1e-12);
        // Now miscalibrate: the 0.75 bin observes 1/4 → |0.75−0.25| weighted 4/9.
        let y2 = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let t2 = calibration_table(&p, &y2, 10);
        assert!(close(expected_calibration_error(&t2), 0.5 * 4.0 / 9.0));
        assert!(expected_calibration_error(&calibration_table(&[], &[], 10)).is_nan());
        assert!(calibration_table(&p, &y, 0).is_empty());
        // Serialises for the manifest; empty bins become null.
        let json = serde_json::to_string(&t[0]).unwrap_or_default();
        assert!(json.contains("\"mean_predicted\":null"), "{json}");
    }

    #[test]
    fn lift_by_hand() {
        // 20 rows, 4 positives (rate 0.2); top 2 by score are rows 0 and 1: one positive.
        let mut s: Vec<f64> = (0..20).map(|i| 1.0 - i as f64 / 20.0).collect();
        let mut y = vec![0.0; 20];
        y[0] = 1.0;
        y[5] = 1.0;
        y[6] = 1.0;
        y[7] = 1.0;
        assert!(close(top_decile_lift(&s, &y), 0.5 / 0.2));
        // Ties at the top are broken by index: rows 0..3 tie, rows 0 and 1 are taken.
        s[2] = s[0];
        s[1] = s[0];
        y[1] = 1.0; // rate 0.25; top two both positive
        assert!(close(top_decile_lift(&s, &y), 1.0 / 0.25));
        assert!(top_decile_lift(&s, &[0.0; 20]).is_nan());
    }

    #[test]
    fn spearman_known_values() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!(close(spearman(&a, &[10.0, 20.0, 30.0, 40.0, 50.0]), 1.0));
        assert!(close(spearman(&a, &[5.0, 4.0, 3.0, 2.0, 1.0]), -1.0));
        // Rank differences d = (0,0,-1,1,0), no ties: ρ = 1 − 6·2/(5·24) = 0.9.
        assert!(close(spearman(&a, &[1.0, 2.0, 4.0, 3.0, 5.0]), 0.9));
        // Ties get average ranks: a → (1, 2.5, 2.5, 4), b → (1, 2, 3, 4); centred,
        // Σdadb = 4.5, Σda² = 4.5, Σdb² = 5, so ρ = 4.5/√22.5.
        let r = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]);
        assert!((r - 0.948_683_298_050_513_8).abs() < 1e-12, "{r}");
        assert!(spearman(&a, &[1.0; 5]).is_nan());
    }

    #[test]
    fn capture_by_hand() {
        let s = [0.9, 0.1, 0.5, 0.7, 0.3];
        let v = [10.0, 50.0, 0.0, 30.0, 10.0];
        // top 20% of 5 = 1 row (score 0.9): 10 / 100.
        assert!(close(top_share_capture(&s, &v, 0.2), 0.1));
        // top 40% = rows with 0.9 and 0.7: 40 / 100.
        assert!(close(top_share_capture(&s, &v, 0.4), 0.4));
        assert!(close(top_share_capture(&s, &v, 1.0), 1.0));
        assert!(top_share_capture(&s, &[0.0; 5], 0.2).is_nan());
    }
}
