//! The feature transform k-means sees: per feature, log1p for heavy tails (or as is),
//! winsorised at fitted quantiles, standardised and weighted. Fitted once (at a refit) and
//! stored with the segment model, so later runs measure customers on the same scale and their
//! centroids stay comparable.

use std::collections::BTreeMap;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::config::{FeatureSpec, Missing, TransformKind};
use crate::error::{Error, Result};
use crate::features::CustomerTable;

/// One fitted feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedFeature {
    /// Column of the feature table.
    pub name: String,
    /// `log1p` or `none`.
    pub transform: TransformKind,
    /// Value used for NULL, before the transform (a configured `"median"` resolved).
    pub missing: f64,
    /// Multiplies the standardised value (its share of the distance).
    pub weight: f64,
    /// Winsorising bounds, in transformed units.
    pub lo: f64,
    /// See `lo`.
    pub hi: f64,
    /// Mean of the winsorised transformed values.
    pub mean: f64,
    /// Standard deviation of the same (1 when constant).
    pub std: f64,
}

impl FittedFeature {
    /// Transformed, winsorised value (before standardisation).
    fn units(&self, raw: f64) -> f64 {
        let v = if raw.is_nan() { self.missing } else { raw };
        let t = match self.transform {
            TransformKind::Log1p => v.max(0.0).ln_1p(),
            TransformKind::None => v,
        };
        t.clamp(self.lo, self.hi)
    }

    /// Standardised (unweighted) value of transformed units.
    fn z_of_units(&self, u: f64) -> f64 {
        (u.clamp(self.lo, self.hi) - self.mean) / self.std
    }
}

/// The fitted transform: one entry per feature, in column order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transform {
    /// The features, in the column order of the matrix and the centroids.
    pub features: Vec<FittedFeature>,
}

/// The `q`-quantile (0 ≤ q ≤ 1, nearest rank) of finite values; 0 when there are none.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let idx = (((values.len() - 1) as f64) * q).round() as usize;
    let (_, v, _) = values.select_nth_unstable_by(idx, f64::total_cmp);
    *v
}

impl Transform {
    /// Fits the transform of `specs` on every customer of `table`.
    pub fn fit(
        table: &CustomerTable,
        specs: &BTreeMap<String, FeatureSpec>,
        winsorize: [f64; 2],
    ) -> Result<Transform> {
        let mut features = Vec::with_capacity(specs.len());
        for (name, spec) in specs {
            let raw: Vec<f64> = column(table, name)?.collect();
            let missing = match spec.missing {
                Missing::Value(v) => v,
                Missing::Median => {
                    let mut known: Vec<f64> = raw.iter().copied().filter(|v| !v.is_nan()).collect();
                    quantile(&mut known, 0.5)
                }
            };
            let mut f = FittedFeature {
                name: name.clone(),
                transform: spec.transform,
                missing,
                weight: spec.weight,
                lo: f64::NEG_INFINITY,
                hi: f64::INFINITY,
                mean: 0.0,
                std: 1.0,
            };
            let mut units: Vec<f64> = raw.iter().map(|&v| f.units(v)).collect();
            f.lo = quantile(&mut units, winsorize[0]);
            f.hi = quantile(&mut units, winsorize[1]);
            let n = units.len().max(1) as f64;
            // Sum in row order (the select above only reordered a copy's positions; sums of
            // the clamped values do not depend on it, but keep them exact and ordered).
            let clamped: Vec<f64> = raw.iter().map(|&v| f.units(v)).collect();
            f.mean = clamped.iter().sum::<f64>() / n;
            let var = clamped.iter().map(|u| (u - f.mean).powi(2)).sum::<f64>() / n;
            f.std = if var.sqrt() > 1e-12 { var.sqrt() } else { 1.0 };
            features.push(f);
        }
        Ok(Transform { features })
    }

    /// Feature names in column order.
    pub fn names(&self) -> Vec<String> {
        self.features.iter().map(|f| f.name.clone()).collect()
    }

    /// The matrix k-means sees: one row per customer of `table`, standardised and weighted.
    pub fn apply(&self, table: &CustomerTable) -> Result<Array2<f64>> {
        let mut x = Array2::<f64>::zeros((table.len(), self.features.len()));
        for (j, f) in self.features.iter().enumerate() {
            for (i, v) in column(table, &f.name)?.enumerate() {
                x[[i, j]] = f.z_of_units(f.units(v)) * f.weight;
            }
        }
        Ok(x)
    }

    /// Unweighted z-scores of a point of this space (what the naming rules read).
    pub fn unweighted(&self, point: &[f64]) -> Vec<f64> {
        point
            .iter()
            .zip(&self.features)
            .map(|(v, f)| v / f.weight)
            .collect()
    }

    /// A point of `other`'s space expressed in this space (same features, by name; a feature
    /// this space lacks in `other` is at this space's mean). `None` when no feature is shared.
    pub fn convert(&self, other: &Transform, point: &[f64]) -> Option<Vec<f64>> {
        let mut shared = 0;
        let out = self
            .features
            .iter()
            .map(
                |f| match other.features.iter().position(|o| o.name == f.name) {
                    Some(j) => {
                        shared += 1;
                        let o = &other.features[j];
                        let units = point[j] / o.weight * o.std + o.mean;
                        f.z_of_units(units) * f.weight
                    }
                    None => 0.0,
                },
            )
            .collect();
        (shared > 0).then_some(out)
    }
}

/// A feature column as f64, or a configuration error naming it.
fn column<'a>(table: &'a CustomerTable, name: &str) -> Result<Box<dyn Iterator<Item = f64> + 'a>> {
    table.f64_values(name).map_err(|_| {
        Error::config(
            None,
            format!(
                "`clustering.features` names `{name}`, which the feature SQL does not produce; \
             use a numeric column of features.sql (see README \"Segments\")"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut v: Vec<f64> = (0..101).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.0), 0.0);
        assert_eq!(quantile(&mut v, 0.01), 1.0);
        assert_eq!(quantile(&mut v, 0.99), 99.0);
        assert_eq!(quantile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn convert_between_spaces_round_trips() {
        let f = |mean: f64, std: f64, weight: f64| FittedFeature {
            name: "x".into(),
            transform: TransformKind::None,
            missing: 0.0,
            weight,
            lo: -100.0,
            hi: 100.0,
            mean,
            std,
        };
        let a = Transform {
            features: vec![f(10.0, 2.0, 1.0)],
        };
        let b = Transform {
            features: vec![f(12.0, 4.0, 2.0)],
        };
        // 14 in units: a → z 2.0; b → z 0.5, weighted 1.0.
        assert_eq!(b.convert(&a, &[2.0]).unwrap(), vec![1.0]);
        assert_eq!(a.convert(&b, &[1.0]).unwrap(), vec![2.0]);
        assert_eq!(b.unweighted(&[1.0]), vec![0.5]);
    }
}
