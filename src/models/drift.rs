//! Drift of a model's input features: the population stability index (PSI) of each feature
//! between the snapshot a model was trained on (its [`Reference`]) and a later one.
//!
//! **Bins.** Per feature, from the training snapshot's finite values: the cut points are the
//! distinct deciles (nearest rank: the ⌈q·n/10⌉-th smallest value, q = 1…9) below the
//! largest value, and a value `v` falls in the first bin whose cut is `≥ v` (the last bin
//! when none is). That makes at most 10 bins; a constant column gives one. `±∞` fall in the
//! first or last bin; missing values (`NaN`) have a bin of their own. Each bin keeps its
//! share of the training rows (all shares 0 when there were none).
//!
//! **Index.** With `e` a bin's share in the reference and `a` its share in the new data,
//! both floored at [`EPSILON`] (= 10⁻⁴) so that a bin empty on one side gives a large but
//! finite term,
//!
//! ```text
//! PSI = Σ_bins (a − e) · ln(a / e)          (≥ 0; 0 for identical shares)
//! ```
//!
//! A feature absent from the new data counts as all-missing. The usual reading: below 0.1
//! stable, 0.1 to 0.25 a moderate shift worth watching, above 0.25 a large shift (refit).
//!
//! A [`Reference`] is stored with the model it describes (serde; exact, like the models).

use serde::{Deserialize, Serialize};

use super::design::Design;
use super::gbm::json_f64;

/// Shares are floored at this before the index is computed.
pub const EPSILON: f64 = 1e-4;

/// The binned distribution of every feature of a training snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    features: Vec<FeatureBins>,
}

/// One feature's bins: `cuts.len() + 1` bins of values, then the missing bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "FeatureBinsRecord")]
struct FeatureBins {
    name: String,
    /// Increasing cut points: bin k holds `cuts[k−1] < v ≤ cuts[k]`.
    #[serde(with = "json_f64::vec")]
    cuts: Vec<f64>,
    /// Share of rows per bin, the missing bin last (`cuts.len() + 2` entries).
    #[serde(with = "json_f64::vec")]
    shares: Vec<f64>,
}

/// A [`FeatureBins`] as read, before it is checked.
#[derive(Deserialize)]
struct FeatureBinsRecord {
    name: String,
    #[serde(with = "json_f64::vec")]
    cuts: Vec<f64>,
    #[serde(with = "json_f64::vec")]
    shares: Vec<f64>,
}

impl TryFrom<FeatureBinsRecord> for FeatureBins {
    type Error = String;

    fn try_from(r: FeatureBinsRecord) -> Result<FeatureBins, String> {
        if r.shares.len() != r.cuts.len() + 2 {
            return Err(format!(
                "feature {}: {} shares for {} cuts (expected cuts + 2)",
                r.name,
                r.shares.len(),
                r.cuts.len()
            ));
        }
        Ok(FeatureBins {
            name: r.name,
            cuts: r.cuts,
            shares: r.shares,
        })
    }
}

/// The distinct nearest-rank deciles of the finite values of `column`, below its maximum.
fn decile_cuts(column: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = column.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let Some(&max) = v.last() else {
        return Vec::new();
    };
    let n = v.len();
    let mut cuts: Vec<f64> = Vec::with_capacity(9);
    for q in 1..10 {
        let d = v[(q * n).div_ceil(10) - 1];
        if d < max && cuts.last().is_none_or(|&last| d > last) {
            cuts.push(d);
        }
    }
    cuts
}

/// The share of the rows of `column` in each bin given `cuts` (missing bin last); all 0
/// without rows.
pub fn shares(cuts: &[f64], column: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut counts = vec![0usize; cuts.len() + 2];
    let mut n = 0;
    for x in column {
        n += 1;
        let bin = if x.is_nan() {
            cuts.len() + 1
        } else {
            cuts.partition_point(|&c| c < x)
        };
        counts[bin] += 1;
    }
    let n = n.max(1) as f64;
    counts.into_iter().map(|c| c as f64 / n).collect()
}

/// PSI of `actual` shares against `expected` ones (same bins), both floored at [`EPSILON`].
fn index(expected: &[f64], actual: &[f64]) -> f64 {
    expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let (e, a) = (e.max(EPSILON), a.max(EPSILON));
            (a - e) * (a / e).ln()
        })
        .sum()
}

impl Reference {
    /// The bins and shares of every feature of a training snapshot's design matrix.
    pub fn new(design: &Design) -> Reference {
        let features = design
            .names
            .iter()
            .zip(&design.columns)
            .map(|(name, column)| {
                let cuts = decile_cuts(column);
                let shares = shares(&cuts, column.iter().copied());
                FeatureBins {
                    name: name.clone(),
                    cuts,
                    shares,
                }
            })
            .collect();
        Reference { features }
    }

    /// The PSI of every reference feature in `design` (matched by name; a feature `design`
    /// lacks counts as all-missing), in the reference's feature order.
    pub fn psi(&self, design: &Design) -> Vec<(String, f64)> {
        self.psi_by(|name, cuts| {
            design
                .column(name)
                .map(|column| shares(cuts, column.iter().copied()))
        })
    }

    /// As [`Reference::psi`], with `shares_of(name, cuts)` the shares ([`shares`]) of the
    /// new data's feature `name` in the bins of `cuts` (None: it lacks the feature), so that
    /// the new data need not be a design matrix.
    pub fn psi_by(
        &self,
        shares_of: impl Fn(&str, &[f64]) -> Option<Vec<f64>> + Sync,
    ) -> Vec<(String, f64)> {
        // One feature per task, on every core.
        super::parallel::map_rows(self.features.len(), |i| {
            let f = &self.features[i];
            let actual = match shares_of(&f.name, &f.cuts) {
                Some(actual) => actual,
                None => {
                    let mut all_missing = vec![0.0; f.shares.len()];
                    all_missing[f.cuts.len() + 1] = 1.0;
                    all_missing
                }
            };
            (f.name.clone(), index(&f.shares, &actual))
        })
    }

    /// The names of the reference's features, in order.
    pub fn features(&self) -> impl Iterator<Item = &str> {
        self.features.iter().map(|f| f.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn design(columns: Vec<(&str, Vec<f64>)>) -> Design {
        let (names, columns) = columns.into_iter().map(|(n, c)| (n.to_string(), c)).unzip();
        Design { names, columns }
    }

    /// `n` rows: a uniform on [shift, shift + 1), a skewed count, 10% missing in the first.
    fn sample(n: usize, shift: f64, seed: u64) -> Design {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let u = (0..n)
            .map(|_| {
                if rng.gen::<f64>() < 0.1 {
                    f64::NAN
                } else {
                    shift + rng.gen::<f64>()
                }
            })
            .collect();
        let count = (0..n)
            .map(|_| (rng.gen::<f64>().powi(3) * 20.0).floor())
            .collect();
        design(vec![("u", u), ("count", count)])
    }

    fn psi_of(r: &Reference, d: &Design) -> Vec<f64> {
        r.psi(d).into_iter().map(|(_, p)| p).collect()
    }

    #[test]
    fn bins_are_distinct_deciles() {
        let r = Reference::new(&sample(10_000, 0.0, 1));
        let u = &r.features[0];
        assert_eq!(u.cuts.len(), 9);
        assert_eq!(u.shares.len(), 11);
        assert!((u.shares[10] - 0.1).abs() < 0.01, "{:?}", u.shares);
        assert!(u.shares[..10].iter().all(|s| (s - 0.09).abs() < 0.01));
        assert!((u.shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // A skewed count has fewer distinct deciles; a constant column one bin.
        assert!(r.features[1].cuts.len() < 9);
        let c = Reference::new(&design(vec![("c", vec![3.0; 50])]));
        assert_eq!(c.features[0].cuts, Vec::<f64>::new());
        assert_eq!(c.features[0].shares, vec![1.0, 0.0]);
        assert_eq!(psi_of(&c, &design(vec![("c", vec![3.0; 7])])), vec![0.0]);
        // Values equal to a cut go to its bin; ±∞ to the ends.
        assert_eq!(decile_cuts(&[1.0, 2.0, f64::INFINITY]), vec![1.0]);
        assert_eq!(
            shares(&[1.0, 2.0], [1.0, 2.0, 2.5, f64::NEG_INFINITY]),
            vec![0.5, 0.25, 0.25, 0.0]
        );
    }

    #[test]
    fn identical_data_is_stable_and_a_shift_is_not() {
        let train = sample(5_000, 0.0, 2);
        let r = Reference::new(&train);
        assert_eq!(psi_of(&r, &train), vec![0.0, 0.0]);
        let names: Vec<String> = r.psi(&train).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["u", "count"]);
        assert_eq!(r.features().collect::<Vec<_>>(), ["u", "count"]);
        // Another sample of the same distribution: stable.
        let same = psi_of(&r, &sample(5_000, 0.0, 3));
        assert!(same.iter().all(|p| *p < 0.02), "{same:?}");
        // Half a unit to the right: half the mass leaves the reference's range.
        let shifted = psi_of(&r, &sample(5_000, 0.5, 4));
        assert!(shifted[0] > 1.0 && shifted[1] < 0.02, "{shifted:?}");
        // Entirely outside: every row in one end bin, the others empty: large but finite.
        let far = psi_of(&r, &sample(5_000, 10.0, 5));
        assert!(far[0].is_finite() && far[0] > shifted[0], "{far:?}");
        // Deterministic.
        assert_eq!(psi_of(&r, &sample(5_000, 0.5, 4)), shifted);
    }

    #[test]
    fn missing_values_have_their_own_bin() {
        let train = sample(5_000, 0.0, 6);
        let r = Reference::new(&train);
        // The same values, but half of them missing now.
        let mut d = train.clone();
        for (i, v) in d.columns[0].iter_mut().enumerate() {
            if i % 2 == 0 {
                *v = f64::NAN;
            }
        }
        let p = psi_of(&r, &d);
        assert!(p[0] > 0.25 && p[1] == 0.0, "{p:?}");
        // A feature the new data lacks is all-missing; one it adds is ignored.
        let lacking = design(vec![
            ("count", train.columns[1].clone()),
            ("new", vec![1.0; 5_000]),
        ]);
        let p = r.psi(&lacking);
        assert_eq!(p[0].0, "u");
        let e = r.features[0].shares[10];
        let expected: f64 = r.features[0].shares[..10]
            .iter()
            .map(|&s| (EPSILON - s) * (EPSILON / s).ln())
            .sum::<f64>()
            + (1.0 - e) * (1.0 / e).ln();
        assert!((p[0].1 - expected).abs() < 1e-12, "{p:?} vs {expected}");
        assert_eq!(p[1], ("count".to_string(), 0.0));
        // A column that was never missing in training and is all missing now: finite.
        let full = Reference::new(&design(vec![("x", (0..100).map(f64::from).collect())]));
        let p = psi_of(&full, &design(vec![("x", vec![f64::NAN; 100])]));
        assert!(p[0].is_finite() && p[0] > 1.0, "{p:?}");
        // Nothing but missing values in training: one empty value bin and the missing bin.
        let none = Reference::new(&design(vec![("x", vec![f64::NAN; 10])]));
        assert_eq!(none.features[0].shares, vec![0.0, 1.0]);
        assert_eq!(
            psi_of(&none, &design(vec![("x", vec![f64::NAN; 3])])),
            vec![0.0]
        );
    }

    #[test]
    fn empty_bins_stay_finite() {
        // Training values 0..9 in ten bins; the new data fills only two of them.
        let r = Reference::new(&design(vec![(
            "x",
            (0..1_000).map(|i| (i % 10) as f64).collect(),
        )]));
        assert_eq!(r.features[0].cuts.len(), 9);
        let p = psi_of(&r, &design(vec![("x", vec![0.0, 9.0, 9.0])]));
        assert!(p[0].is_finite() && p[0] > 1.0, "{p:?}");
        // And no rows at all: every share 0, floored.
        let p = psi_of(&r, &design(vec![("x", vec![])]));
        assert!(p[0].is_finite(), "{p:?}");
    }

    #[test]
    fn reference_round_trips_through_json() {
        let mut train = sample(3_000, 0.0, 7);
        train.columns[1][0] = f64::INFINITY;
        let r = Reference::new(&train);
        let json = serde_json::to_string(&r).unwrap();
        let loaded: Reference = serde_json::from_str(&json).unwrap();
        assert_eq!(loaded, r);
        assert_eq!(serde_json::to_string(&loaded).unwrap(), json);
        let now = sample(2_000, 0.3, 8);
        let bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(psi_of(&loaded, &now)), bits(psi_of(&r, &now)));
        let bad = r#"{"features":[{"name":"x","cuts":[1.0],"shares":[0.5,0.5]}]}"#;
        assert!(serde_json::from_str::<Reference>(bad).is_err());
    }
}
