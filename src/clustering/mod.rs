//! Segmentation: transform the behavioural features, fit k-means, and keep segment identity
//! from run to run.
//!
//! * First run (or `--refit`): fit the [`Transform`] on everyone, choose k (fixed, or the best
//!   silhouette in a range), k-means++ with several seeded runs on a deterministic sample,
//!   clusters in a canonical order (highest-spending centroid first). A refit also re-optimises
//!   the previous segments (when k is unchanged) as one more start; the lowest inertia wins.
//! * Later runs warm-start from the previous run's [`SegmentModel`]: its transform, and k-means
//!   started at its centroids.
//! * Either way the new clusters are matched one-to-one to the previous segments (Hungarian
//!   assignment on centroid distance, [`matching`]); matched clusters keep id and name, the
//!   others are new segments with new ids, and unmatched previous segments are retired.
//!
//! Everyone is assigned to the nearest centroid. The model is stored with the run's outputs
//! (`_models/run_date=D/segment_model-<run_id>.json`, named by the manifest) for the next run.

pub mod kmeans;
pub mod matching;
pub mod transform;

use ndarray::{Array2, Axis};
use serde::{Deserialize, Serialize};

use crate::config::{ClusterParams, KSetting, Missing};
use crate::error::{Error, Result};
use crate::features::CustomerTable;
use crate::segments;
pub use transform::Transform;

/// Version of the stored model's layout; other versions are not warm-started from.
pub const MODEL_FORMAT: u32 = 1;

/// One segment of a stored model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSegment {
    /// Stable id (never reused).
    pub id: i32,
    /// Stable name.
    pub name: String,
    /// Centroid in the transform's (standardised, weighted) space.
    pub centroid: Vec<f64>,
}

/// Silhouette and inertia of one candidate k.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KScore {
    /// Number of clusters.
    pub k: usize,
    /// Mean silhouette on the silhouette sample (higher is better).
    pub silhouette: f64,
    /// Mean squared distance to the nearest centroid on the fitting sample.
    pub inertia: f64,
}

/// What a run stores for the next one: transform, segments (by id), the next free id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentModel {
    /// [`MODEL_FORMAT`].
    pub format: u32,
    /// The run that wrote it.
    pub run_date: String,
    /// The run whose data the transform was fitted on (the last refit).
    pub transform_fitted_on: String,
    /// The feature transform.
    pub transform: Transform,
    /// Segments, by id.
    pub segments: Vec<StoredSegment>,
    /// The id the next new segment gets.
    pub next_id: i32,
    /// Scores per k of the last refit with `k = "auto"` (empty for a fixed k).
    pub k_scores: Vec<KScore>,
}

/// A segment carried over from the previous model.
#[derive(Debug, Clone, Serialize)]
pub struct Carried {
    /// Segment id.
    pub id: i32,
    /// Segment name.
    pub name: String,
    /// Distance between the previous and the new centroid.
    pub moved: f64,
}

/// How this run's segments relate to the previous model's.
#[derive(Debug, Clone, Serialize)]
pub struct Lineage {
    /// `first_fit`, `refit` or `warm_start`.
    pub mode: &'static str,
    /// Why that mode.
    pub reason: String,
    /// The run of the previous model, if any.
    pub previous_run_date: Option<String>,
    /// Segments matched to the previous model's.
    pub carried: Vec<Carried>,
    /// New segments (id, name).
    pub new_segments: Vec<(i32, String)>,
    /// Previous segments without a match this run (id, name).
    pub retired: Vec<(i32, String)>,
}

/// The result of [`segment`].
#[derive(Debug, Clone)]
pub struct Segmentation {
    /// The model to store (segments by id).
    pub model: SegmentModel,
    /// Segment of every customer (index into `model.segments`), in feature-table row order.
    pub assignment: Vec<usize>,
    /// Customers per segment.
    pub sizes: Vec<usize>,
    /// Relation to the previous model.
    pub lineage: Lineage,
    /// Customers k-means was fitted on.
    pub sample_size: usize,
    /// Mean squared distance of a customer to their centroid.
    pub mean_squared_distance: f64,
}

impl Segmentation {
    /// The manifest's `clustering` record: how the segments were fitted and matched, their
    /// sizes, the transition summary since `previous_run` (share kept, matrix) and the stored
    /// model's name.
    pub fn manifest_record<M: serde::Serialize>(
        &self,
        previous_run: Option<&str>,
        seed: u64,
        transitions: Option<(f64, &M)>,
        model_name: &str,
    ) -> serde_json::Value {
        serde_json::json!({
            "k": self.k(),
            "mode": self.lineage.mode,
            "reason": self.lineage.reason,
            "previous_run_date": previous_run,
            "segments": self.model.segments.iter().zip(&self.sizes)
                .map(|(s, n)| serde_json::json!({"id": s.id, "name": s.name, "customers": n}))
                .collect::<Vec<_>>(),
            "carried": self.lineage.carried,
            "new_segments": self.lineage.new_segments,
            "retired_segments": self.lineage.retired,
            "k_scores": self.model.k_scores,
            "transform_fitted_on": self.model.transform_fitted_on,
            "sample_size": self.sample_size,
            "mean_squared_distance": self.mean_squared_distance,
            "seed": seed,
            "kept_segment_share": transitions.map(|t| t.0),
            "transition_matrix": transitions.map(|t| t.1),
            "model": model_name,
        })
    }

    /// Number of segments.
    pub fn k(&self) -> usize {
        self.model.segments.len()
    }

    /// Segment names, by index.
    pub fn names(&self) -> Vec<String> {
        self.model.segments.iter().map(|s| s.name.clone()).collect()
    }

    /// The unweighted z-score of `feature` in the centroid of segment `seg` (0 if absent).
    pub fn z(&self, seg: usize, feature: &str) -> f64 {
        centroid_z(
            &self.model.transform,
            &self.model.segments[seg].centroid,
            feature,
        )
    }
}

fn centroid_z(t: &Transform, centroid: &[f64], feature: &str) -> f64 {
    t.features
        .iter()
        .position(|f| f.name == feature)
        .map_or(0.0, |j| centroid[j] / t.features[j].weight)
}

/// Whether `previous` can be warm-started from under `params`, or why not.
fn warm_start_refusal(previous: &SegmentModel, params: &ClusterParams) -> Option<String> {
    if previous.format != MODEL_FORMAT {
        return Some(format!(
            "the previous model has format {} (this version writes {MODEL_FORMAT})",
            previous.format
        ));
    }
    let same_features = previous.transform.features.len() == params.features.len()
        && previous.transform.features.iter().all(|f| {
            params.features.get(&f.name).is_some_and(|s| {
                s.transform == f.transform
                    && s.weight == f.weight
                    && match s.missing {
                        Missing::Value(v) => v == f.missing,
                        Missing::Median => true,
                    }
            })
        });
    if !same_features {
        return Some("`clustering.features` changed since the previous model".into());
    }
    match params.k {
        KSetting::Fixed(k) if k != previous.segments.len() => Some(format!(
            "`clustering.k` = {k} but the previous model has {} segments",
            previous.segments.len()
        )),
        _ => None,
    }
}

fn rows(a: &Array2<f64>) -> Vec<Vec<f64>> {
    a.axis_iter(Axis(0)).map(|r| r.to_vec()).collect()
}

fn to_array(rows: &[Vec<f64>]) -> Result<Array2<f64>> {
    let cols = rows.first().map_or(0, Vec::len);
    Array2::from_shape_vec((rows.len(), cols), rows.concat())
        .map_err(|e| Error::Model(format!("centroid matrix: {e}")))
}

/// Mean squared distance of the rows of `x` to their nearest centroid.
fn inertia(x: &Array2<f64>, centroids: &Array2<f64>) -> f64 {
    kmeans::assign(x, centroids)
        .iter()
        .map(|p| p.1)
        .sum::<f64>()
        / x.nrows().max(1) as f64
}

/// Chooses k by silhouette (ties: the smaller k) and returns its centroids and every score.
fn choose_k(sample: &Array2<f64>, params: &ClusterParams) -> Result<(Array2<f64>, Vec<KScore>)> {
    let sil_rows = kmeans::even_sample(sample.nrows(), params.silhouette_sample);
    let sil_x = sample.select(Axis(0), &sil_rows);
    let k_max = params.k_max.min(sample.nrows());
    let mut best: Option<(f64, Array2<f64>)> = None;
    let mut scores = Vec::new();
    for k in params.k_min..=k_max {
        let c = kmeans::fit(sample, k, params)?;
        let inertia = inertia(sample, &c);
        let labels: Vec<usize> = kmeans::assign(&sil_x, &c)
            .into_iter()
            .map(|p| p.0)
            .collect();
        let s = kmeans::silhouette(&sil_x, &labels, k);
        tracing::debug!(k, silhouette = s, inertia, "k scored");
        scores.push(KScore {
            k,
            silhouette: s,
            inertia,
        });
        if best.as_ref().is_none_or(|(b, _)| s > *b) {
            best = Some((s, c));
        }
    }
    let (_, c) = best.ok_or_else(|| Error::Model("no k to choose from".into()))?;
    Ok((c, scores))
}

/// Canonical order of fresh clusters: highest net revenue first, then frequency, then the
/// most recent.
fn canonical_order(t: &Transform, c: &[Vec<f64>]) -> Vec<usize> {
    let key = |i: usize| {
        (
            -centroid_z(t, &c[i], "monetary"),
            -centroid_z(t, &c[i], "frequency"),
            centroid_z(t, &c[i], "recency_days"),
        )
    };
    let mut order: Vec<usize> = (0..c.len()).collect();
    order.sort_by(|&a, &b| {
        key(a)
            .partial_cmp(&key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    order
}

/// Segments the customers of `table` (see the module documentation). `previous` is the model
/// of the previous published run; `refit` forces a fresh transform and k-means.
pub fn segment(
    table: &CustomerTable,
    params: &ClusterParams,
    previous: Option<&SegmentModel>,
    refit: bool,
    run_date: &str,
) -> Result<Segmentation> {
    let n = table.len();
    let min_k = match params.k {
        KSetting::Fixed(k) => k,
        KSetting::Auto => params.k_min,
    };
    if n < min_k {
        return Err(Error::InputRejected(format!(
            "only {n} known customers, fewer than the {min_k} segments asked for \
             (clustering.k); lower k or check the inputs"
        )));
    }
    let refusal = previous.and_then(|p| warm_start_refusal(p, params));
    let warm = previous.filter(|_| !refit && refusal.is_none());
    let sample_rows = kmeans::even_sample(n, params.sample_size);

    let transform = match warm {
        Some(p) => p.transform.clone(),
        None => Transform::fit(table, &params.features, params.winsorize)?,
    };
    let x = transform.apply(table)?;
    let sample = x.select(Axis(0), &sample_rows);
    // The previous segments in this run's space (`None`: no feature in common).
    let old: Vec<(StoredSegment, Option<Vec<f64>>)> = previous
        .map(|p| {
            p.segments
                .iter()
                .map(|s| (s.clone(), transform.convert(&p.transform, &s.centroid)))
                .collect()
        })
        .unwrap_or_default();

    let (centroids, k_scores, transform_fitted_on, mode, reason);
    if let Some(p) = warm {
        let init = to_array(
            &p.segments
                .iter()
                .map(|s| s.centroid.clone())
                .collect::<Vec<_>>(),
        )?;
        centroids = rows(&kmeans::fit_from(&sample, init, params)?);
        k_scores = p.k_scores.clone();
        transform_fitted_on = p.transform_fitted_on.clone();
        mode = "warm_start";
        reason = format!("started from the model of {}", p.run_date);
    } else {
        let (mut c, scores) = match params.k {
            KSetting::Fixed(k) => (kmeans::fit(&sample, k, params)?, Vec::new()),
            KSetting::Auto => choose_k(&sample, params)?,
        };
        // The previous segments, re-optimised on today's data, are one more start: when no
        // fresh start does better (lower inertia), the refit keeps that solution.
        let starts: Option<Vec<Vec<f64>>> = old.iter().map(|(_, c)| c.clone()).collect();
        if let Some(starts) = starts.filter(|s| !s.is_empty() && s.len() == c.nrows()) {
            let warm = kmeans::fit_from(&sample, to_array(&starts)?, params)?;
            if inertia(&sample, &warm) < inertia(&sample, &c) {
                c = warm;
            }
        }
        let c = rows(&c);
        centroids = canonical_order(&transform, &c)
            .into_iter()
            .map(|i| c[i].clone())
            .collect();
        k_scores = scores;
        transform_fitted_on = run_date.to_string();
        (mode, reason) = match (previous, refit, &refusal) {
            (None, _, _) => ("first_fit", "no previous model".to_string()),
            (Some(_), true, _) => ("refit", "--refit".to_string()),
            (Some(_), false, r) => ("refit", r.clone().unwrap_or_default()),
        };
    }

    // Match to the previous segments, in this run's space.
    let comparable: Vec<usize> = (0..old.len()).filter(|&j| old[j].1.is_some()).collect();
    let old_points: Vec<Vec<f64>> = comparable
        .iter()
        .filter_map(|&j| old[j].1.clone())
        .collect();
    let matches: Vec<Option<usize>> =
        matching::match_centroids(&centroids, &old_points, params.max_match_distance)
            .into_iter()
            .map(|m| m.map(|j| comparable[j]))
            .collect();

    let mut next_id = previous.map_or(1, |p| p.next_id);
    let mut ids = Vec::with_capacity(centroids.len());
    let mut fixed_names = Vec::with_capacity(centroids.len());
    let mut carried = Vec::new();
    for (i, m) in matches.iter().enumerate() {
        match m {
            Some(j) => {
                let s = &old[*j].0;
                ids.push(s.id);
                fixed_names.push(Some(s.name.clone()));
                let moved = old[*j]
                    .1
                    .as_ref()
                    .map_or(f64::NAN, |p| matching::sq_dist(p, &centroids[i]).sqrt());
                carried.push(Carried {
                    id: s.id,
                    name: s.name.clone(),
                    moved,
                });
            }
            None => {
                ids.push(next_id);
                next_id += 1;
                fixed_names.push(None);
            }
        }
    }
    let z = |c: usize, f: &str| centroid_z(&transform, &centroids[c], f);
    let names = segments::names(centroids.len(), &z, &fixed_names);
    let new_segments: Vec<(i32, String)> = (0..centroids.len())
        .filter(|&i| matches[i].is_none())
        .map(|i| (ids[i], names[i].clone()))
        .collect();
    let retired: Vec<(i32, String)> = old
        .iter()
        .enumerate()
        .filter(|(j, _)| !matches.contains(&Some(*j)))
        .map(|(_, (s, _))| (s.id, s.name.clone()))
        .collect();

    // Segments by id; everyone to the nearest centroid.
    let mut order: Vec<usize> = (0..centroids.len()).collect();
    order.sort_by_key(|&i| ids[i]);
    let segments: Vec<StoredSegment> = order
        .iter()
        .map(|&i| StoredSegment {
            id: ids[i],
            name: names[i].clone(),
            centroid: centroids[i].clone(),
        })
        .collect();
    let c = to_array(
        &segments
            .iter()
            .map(|s| s.centroid.clone())
            .collect::<Vec<_>>(),
    )?;
    let nearest = kmeans::assign(&x, &c);
    let mut sizes = vec![0usize; segments.len()];
    let mut sq = 0.0;
    let assignment: Vec<usize> = nearest
        .iter()
        .map(|&(s, d)| {
            sizes[s] += 1;
            sq += d;
            s
        })
        .collect();

    carried.sort_by_key(|c| c.id);
    Ok(Segmentation {
        model: SegmentModel {
            format: MODEL_FORMAT,
            run_date: run_date.to_string(),
            transform_fitted_on,
            transform,
            segments,
            next_id,
            k_scores,
        },
        assignment,
        sizes,
        lineage: Lineage {
            mode,
            reason,
            previous_run_date: previous.map(|p| p.run_date.clone()),
            carried,
            new_segments,
            retired,
        },
        sample_size: sample_rows.len(),
        mean_squared_distance: sq / n.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FeatureSpec, TransformKind};
    use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256Plus;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    const F: [&str; 3] = ["recency_days", "frequency", "monetary"];

    /// Three obvious groups (frequent big spenders, regulars, lapsed one-timers); `shift` moves
    /// everyone's recency by days (the next day's data).
    fn table(n: usize, seed: u64, shift: f64) -> CustomerTable {
        let mut rng = Xoshiro256Plus::seed_from_u64(seed);
        let mut cols: Vec<Vec<f64>> = vec![Vec::new(); F.len()];
        let ids: Vec<String> = (0..n).map(|i| format!("c{i:05}")).collect();
        for i in 0..n {
            let base = match i % 3 {
                0 => [10.0, 20.0, 3000.0],
                1 => [40.0, 6.0, 400.0],
                _ => [400.0, 1.0, 40.0],
            };
            for j in 0..F.len() {
                let mut v = base[j] * rng.gen_range(0.7..1.3);
                if j == 0 {
                    v += shift;
                }
                cols[j].push(v);
            }
        }
        let mut arrays: Vec<(&str, ArrayRef)> =
            vec![("customer_id", Arc::new(StringArray::from(ids)) as ArrayRef)];
        for (j, name) in F.iter().enumerate() {
            arrays.push((
                name,
                Arc::new(Float64Array::from(cols[j].clone())) as ArrayRef,
            ));
        }
        CustomerTable::new(vec![RecordBatch::try_from_iter(arrays).unwrap()], "test").unwrap()
    }

    fn params(k: usize) -> ClusterParams {
        let features: BTreeMap<String, FeatureSpec> = F
            .iter()
            .map(|f| {
                (
                    f.to_string(),
                    FeatureSpec {
                        transform: TransformKind::Log1p,
                        weight: 1.0,
                        missing: Missing::Value(0.0),
                    },
                )
            })
            .collect();
        ClusterParams {
            k: KSetting::Fixed(k),
            features,
            ..Default::default()
        }
    }

    #[test]
    fn first_fit_finds_the_groups_in_canonical_order() {
        let s = segment(&table(600, 7, 0.0), &params(3), None, false, "2026-01-01").unwrap();
        assert_eq!(s.sizes, vec![200, 200, 200]);
        assert_eq!(s.lineage.mode, "first_fit");
        let ids: Vec<i32> = s.model.segments.iter().map(|x| x.id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(s.model.next_id, 4);
        // Id 1 is the biggest spender and holds customers 0, 3, 6, …
        assert!(s.z(0, "monetary") > s.z(1, "monetary"));
        assert!(s.assignment.iter().step_by(3).all(|&a| a == 0));
        let mut names = s.names();
        names.dedup();
        assert_eq!(names.len(), 3, "names are unique");
    }

    #[test]
    fn the_next_day_keeps_ids_and_names_warm_or_refit() {
        let day1 = segment(&table(600, 7, 0.0), &params(3), None, false, "2026-01-01").unwrap();
        let t2 = table(600, 7, 1.0);
        for refit in [false, true] {
            let day2 = segment(&t2, &params(3), Some(&day1.model), refit, "2026-01-02").unwrap();
            assert_eq!(
                day2.lineage.mode,
                if refit { "refit" } else { "warm_start" }
            );
            assert_eq!(day2.names(), day1.names());
            let same = day1
                .assignment
                .iter()
                .zip(&day2.assignment)
                .filter(|(a, b)| day1.model.segments[**a].id == day2.model.segments[**b].id)
                .count();
            assert_eq!(same, 600, "refit = {refit}");
            assert!(day2.lineage.retired.is_empty() && day2.lineage.new_segments.is_empty());
            assert_eq!(day2.model.next_id, 4);
        }
    }

    #[test]
    fn a_changed_k_refits_with_new_and_retired_segments() {
        let day1 = segment(&table(600, 7, 0.0), &params(3), None, false, "2026-01-01").unwrap();
        let day2 = segment(
            &table(600, 7, 0.0),
            &params(2),
            Some(&day1.model),
            false,
            "d2",
        )
        .unwrap();
        assert_eq!(day2.lineage.mode, "refit");
        assert!(day2.lineage.reason.contains("clustering.k"));
        assert_eq!(day2.k(), 2);
        assert_eq!(day2.lineage.retired.len() + day2.lineage.carried.len(), 3);
        // Ids are never reused.
        for (id, _) in &day2.lineage.new_segments {
            assert!(*id >= 4);
        }
    }

    #[test]
    fn deterministic_and_sampled() {
        let t = table(1500, 3, 0.0);
        let p = ClusterParams {
            sample_size: 300,
            ..params(3)
        };
        let a = segment(&t, &p, None, false, "d").unwrap();
        let b = segment(&t, &p, None, false, "d").unwrap();
        assert_eq!(a.assignment, b.assignment);
        assert_eq!(a.model, b.model);
        assert_eq!(a.sample_size, 300);
    }

    #[test]
    fn auto_k_scores_every_k_and_picks_the_planted_three() {
        let p = ClusterParams {
            k: KSetting::Auto,
            k_min: 2,
            k_max: 5,
            // Not 300: the planted groups repeat every 3 rows, and every third row would all
            // be of one group.
            silhouette_sample: 299,
            ..params(3)
        };
        let s = segment(&table(900, 5, 0.0), &p, None, false, "d").unwrap();
        let ks: Vec<usize> = s.model.k_scores.iter().map(|k| k.k).collect();
        assert_eq!(ks, vec![2, 3, 4, 5]);
        assert_eq!(s.k(), 3, "{:?}", s.model.k_scores);
    }

    #[test]
    fn too_few_customers_is_an_input_error() {
        let err = segment(&table(2, 1, 0.0), &params(3), None, false, "d").unwrap_err();
        assert_eq!(err.exit_code(), 3);
    }

    #[test]
    fn a_missing_feature_column_is_a_config_error() {
        let mut p = params(2);
        p.features
            .insert("no_such_column".into(), FeatureSpec::default());
        let err = segment(&table(30, 1, 0.0), &p, None, false, "d").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("no_such_column"), "{err}");
    }
}
