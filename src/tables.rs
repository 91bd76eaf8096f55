//! Output tables: assembles customer_segments and segment_summary from the stages' results
//! (features, scores, clusters). Pure assembly; writing and publishing are in
//! [`crate::outputs`], the CSV exports in [`crate::exports`].

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;

use crate::clustering::Segmentation;
use crate::config::{ActionRules, Pipeline};
use crate::error::{Error, Result};
use crate::features::CustomerTable;
use crate::models::Scores;
use crate::outputs;
use crate::previous::{self, Transitions};
use crate::run::SegmentLine;
use crate::segments;

/// Per-customer results assembled from the stages.
pub struct Assigned {
    /// Segment name of each cluster.
    pub names: Vec<String>,
    /// `churn_risk` of each customer.
    pub churn_band: Vec<&'static str>,
    /// `value_segment` of each customer.
    pub value_band: Vec<&'static str>,
    /// `lifecycle_stage` of each customer.
    pub lifecycle: Vec<&'static str>,
    /// `loyalty_tier` of each customer.
    pub loyalty: Vec<&'static str>,
}

/// Names the clusters and gives every customer their bands, lifecycle stage and loyalty tier.
pub fn assign(
    pipeline: &Pipeline,
    f: &CustomerTable,
    s: &Scores,
    c: &Segmentation,
) -> Result<Assigned> {
    let (freq, rec, ten) = (
        f.f64("frequency")?,
        f.f64("recency_days")?,
        f.f64("tenure_days")?,
    );
    let (f365, disc, ret) = (
        f.f64("frequency_365d")?,
        f.f64("discount_share")?,
        f.f64("return_rate")?,
    );
    let m = &pipeline.model;
    let cut = segments::value_cutoffs(m, &s.value);
    let n = f.len();
    Ok(Assigned {
        names: c.names(),
        churn_band: s
            .churn
            .iter()
            .map(|&p| segments::churn_band(m, p))
            .collect(),
        value_band: s
            .value
            .iter()
            .map(|&v| segments::value_band(cut, v))
            .collect(),
        lifecycle: (0..n)
            .map(|i| {
                segments::lifecycle_stage(
                    &pipeline.lifecycle,
                    freq[i],
                    rec[i],
                    ten[i],
                    s.churn[i],
                    m.churn_high,
                )
            })
            .collect(),
        loyalty: (0..n)
            .map(|i| {
                segments::loyalty_tier(&pipeline.loyalty, f365[i], disc[i], ret[i], s.churn[i])
            })
            .collect(),
    })
}

fn strings<'a>(values: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

/// customer_segments: the CONTRACT columns first, then every feature column.
pub fn customer_segments(
    f: &CustomerTable,
    s: &Scores,
    c: &Segmentation,
    a: &Assigned,
    cutoff: chrono::NaiveDate,
) -> Result<RecordBatch> {
    let nullable = |v: &[f64]| -> ArrayRef {
        Arc::new(Float64Array::from_iter(
            v.iter().map(|x| x.is_finite().then_some(*x)),
        ))
    };
    let epoch_day = (cutoff - chrono::DateTime::UNIX_EPOCH.date_naive()).num_days();
    // The date by which another order has a 50 % chance: the day the instant cut-off + h
    // falls on (cut-offs are midnight UTC).
    let next_order_date: ArrayRef =
        Arc::new(Date32Array::from_iter(s.next_order_days.iter().map(|d| {
            d.is_finite().then(|| (epoch_day + d.floor() as i64) as i32)
        })));
    let batch = f.batch();
    let ids: Vec<i32> = c.model.segments.iter().map(|s| s.id).collect();
    let mut cols: Vec<(String, ArrayRef)> = vec![
        (
            "customer_id".into(),
            cast(
                batch
                    .column_by_name("customer_id")
                    .ok_or_else(|| Error::Model("customer_id missing".into()))?,
                &DataType::Utf8,
            )
            .map_err(|e| Error::engine("customer_id", e.into()))?,
        ),
        (
            "segment".into(),
            strings(c.assignment.iter().map(|&k| a.names[k].as_str())),
        ),
        (
            "segment_id".into(),
            Arc::new(Int32Array::from_iter_values(
                c.assignment.iter().map(|&k| ids[k]),
            )),
        ),
        (
            "churn_risk_score".into(),
            Arc::new(Float64Array::from(s.churn.clone())),
        ),
        ("churn_risk".into(), strings(a.churn_band.iter().copied())),
        (
            "value_score".into(),
            Arc::new(Float64Array::from(s.value.clone())),
        ),
        (
            "value_segment".into(),
            strings(a.value_band.iter().copied()),
        ),
        (
            "lifecycle_stage".into(),
            strings(a.lifecycle.iter().copied()),
        ),
        ("loyalty_tier".into(), strings(a.loyalty.iter().copied())),
        ("p_alive".into(), nullable(&s.p_alive)),
        (
            "expected_orders_365d".into(),
            nullable(&s.expected_orders_365d),
        ),
        ("expected_next_order_date".into(), next_order_date),
    ];
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        // `snapshot` is always 0 here, and next_* are outcomes (model labels), not features.
        let internal = field.name() == "snapshot" || field.name().starts_with("next_");
        if !internal && !cols.iter().any(|(n, _)| n == field.name()) {
            cols.push((field.name().clone(), Arc::clone(col)));
        }
    }
    let out = RecordBatch::try_from_iter(cols)
        .map_err(|e| Error::engine("assembling customer_segments", e.into()))?;
    outputs::portable(&out)
}

/// The median of the values of `v` that are not NaN (NaN when there are none): the middle
/// one, or the mean of the middle two, found by selection rather than a sort (13 sorts of a
/// million values were most of segment_summary's time at 1,000,000 customers).
fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    let (mid, odd) = (v.len() / 2, v.len() % 2 == 1);
    let (lower, upper, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    if odd {
        *upper
    } else {
        // The largest of the lower half is the other middle value.
        let below = lower
            .iter()
            .copied()
            .max_by(f64::total_cmp)
            .unwrap_or(*upper);
        (below + *upper) / 2.0
    }
}

/// The profile columns of segment_summary (medians in original units).
const PROFILE: &[&str] = &[
    "recency_days",
    "frequency",
    "monetary",
    "avg_order_value",
    "tenure_days",
    "repeat_purchase_rate",
    "complaint_rate",
    "return_rate",
    "discount_share",
    "sessions_90d",
    "add_to_cart_90d",
    "days_since_last_visit",
    "engagement_trend",
];

/// Per-segment medians of every [`PROFILE`] feature (NaN when a segment has no value).
fn profile_medians(f: &CustomerTable, c: &Segmentation) -> Result<Vec<Vec<f64>>> {
    let k = c.k();
    let values = PROFILE
        .iter()
        .map(|feature| f.f64(feature))
        .collect::<Result<Vec<_>>>()?;
    // One feature per task, on every core.
    Ok(crate::models::parallel::map_rows(PROFILE.len(), |p| {
        let mut per: Vec<Vec<f64>> = c.sizes.iter().map(|&n| Vec::with_capacity(n)).collect();
        per.resize_with(k, Vec::new);
        for (i, &seg) in c.assignment.iter().enumerate() {
            per[seg].push(values[p][i]);
        }
        per.into_iter().map(median).collect()
    }))
}

/// Each segment's play ([`segments::recommended_action`]) from its mean churn and value, median
/// discount share, and most common lifecycle stage and loyalty tier.
fn recommended_actions(
    s: &Scores,
    c: &Segmentation,
    a: &Assigned,
    mean_churn: &[f64],
    value_sum: &[f64],
    median_of: &dyn Fn(&str, usize) -> f64,
    rules: &ActionRules,
) -> Vec<&'static str> {
    let k = c.k();
    let mean_value = s.value.iter().sum::<f64>() / s.value.len().max(1) as f64;
    let mut stages: Vec<Vec<&str>> = vec![Vec::new(); k];
    let mut tiers: Vec<Vec<&str>> = vec![Vec::new(); k];
    for (i, &seg) in c.assignment.iter().enumerate() {
        stages[seg].push(a.lifecycle[i]);
        tiers[seg].push(a.loyalty[i]);
    }
    (0..k)
        .map(|j| {
            let segment_value = value_sum[j] / c.sizes[j].max(1) as f64;
            let profile = segments::ActionProfile {
                mean_churn: mean_churn[j],
                value_ratio: if mean_value > 0.0 {
                    segment_value / mean_value
                } else {
                    0.0
                },
                median_discount_share: median_of("discount_share", j),
                lifecycle_stage: segments::most_common(
                    stages[j].iter().copied(),
                    &segments::LIFECYCLE_STAGES,
                ),
                loyalty_tier: segments::most_common(
                    tiers[j].iter().copied(),
                    &segments::LOYALTY_TIERS,
                ),
            };
            segments::recommended_action(&profile, rules)
        })
        .collect()
}

/// segment_summary: one row per segment (by id): size, share, description, distinguishing
/// features, profile, churn, value, revenue at risk, flows since the previous run, centroid.
pub fn segment_summary(
    f: &CustomerTable,
    s: &Scores,
    c: &Segmentation,
    a: &Assigned,
    transitions: Option<&Transitions>,
    rules: &ActionRules,
) -> Result<RecordBatch> {
    let k = c.k();
    let n = f.len() as f64;
    let m365 = f.f64("monetary_365d")?;
    let mut churn_sum = vec![0.0; k];
    let mut value_sum = vec![0.0; k];
    let mut at_risk = vec![0.0; k];
    let mut high = vec![0i64; k];
    for (i, &seg) in c.assignment.iter().enumerate() {
        churn_sum[seg] += s.churn[i];
        value_sum[seg] += s.value[i];
        at_risk[seg] += s.churn[i] * m365[i].max(0.0);
        high[seg] += i64::from(a.churn_band[i] == "high");
    }
    let mean_churn: Vec<f64> = (0..k)
        .map(|j| churn_sum[j] / c.sizes[j].max(1) as f64)
        .collect();
    let medians = profile_medians(f, c)?;
    let median_of = |feature: &str, j: usize| {
        PROFILE
            .iter()
            .position(|p| *p == feature)
            .map_or(f64::NAN, |p| medians[p][j])
    };
    let features = c.model.transform.names();
    let standout: Vec<Vec<String>> = (0..k)
        .map(|j| {
            let profile: Vec<(String, f64)> = features
                .iter()
                .map(|name| (name.clone(), c.z(j, name)))
                .collect();
            segments::distinguishing(&profile, 3)
        })
        .collect();
    let descriptions: Vec<String> = (0..k)
        .map(|j| {
            let m = segments::Medians {
                orders: median_of("frequency", j),
                recency_days: median_of("recency_days", j),
                spend: median_of("monetary", j),
                sessions_90d: median_of("sessions_90d", j),
            };
            segments::describe(
                &a.names[j],
                c.sizes[j],
                c.sizes[j] as f64 / n.max(1.0),
                m,
                mean_churn[j],
                &standout[j],
            )
        })
        .collect();
    let actions = recommended_actions(s, c, a, &mean_churn, &value_sum, &median_of, rules);
    let ids: Vec<i32> = c.model.segments.iter().map(|x| x.id).collect();
    let mut cols: Vec<(String, ArrayRef)> = vec![
        ("segment_id".into(), Arc::new(Int32Array::from(ids.clone()))),
        (
            "segment".into(),
            strings(a.names.iter().map(String::as_str)),
        ),
        (
            "description".into(),
            strings(descriptions.iter().map(String::as_str)),
        ),
        ("recommended_action".into(), strings(actions)),
        (
            "distinguishing_features".into(),
            strings(
                standout
                    .iter()
                    .map(|v| v.join("; "))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str),
            ),
        ),
        (
            "customers".into(),
            Arc::new(Int64Array::from_iter_values(
                c.sizes.iter().map(|&x| x as i64),
            )),
        ),
        (
            "share".into(),
            Arc::new(Float64Array::from_iter_values(
                c.sizes.iter().map(|&x| x as f64 / n.max(1.0)),
            )),
        ),
        (
            "mean_churn_risk_score".into(),
            Arc::new(Float64Array::from(mean_churn)),
        ),
        (
            "high_churn_customers".into(),
            Arc::new(Int64Array::from(high)),
        ),
        (
            "total_value".into(),
            Arc::new(Float64Array::from(value_sum)),
        ),
        (
            "revenue_at_risk".into(),
            Arc::new(Float64Array::from(at_risk)),
        ),
    ];
    for (p, feature) in PROFILE.iter().enumerate() {
        cols.push((
            format!("median_{feature}"),
            Arc::new(Float64Array::from_iter(
                medians[p].iter().map(|m| (!m.is_nan()).then_some(*m)),
            )),
        ));
    }
    cols.extend(previous::flow_columns(&ids, transitions));
    for feature in &features {
        cols.push((
            format!("centroid_z_{feature}"),
            Arc::new(Float64Array::from_iter_values(
                (0..k).map(|seg| c.z(seg, feature)),
            )),
        ));
    }
    RecordBatch::try_from_iter(cols)
        .map_err(|e| Error::engine("assembling segment_summary", e.into()))
}

/// One line per segment for the run summary (the demo prints them).
pub fn summary_lines(c: &Segmentation, s: &Scores) -> Vec<SegmentLine> {
    let mut lines: Vec<SegmentLine> = c
        .model
        .segments
        .iter()
        .zip(&c.sizes)
        .map(|(seg, &size)| SegmentLine {
            segment_id: seg.id,
            segment: seg.name.clone(),
            customers: size,
            mean_churn: 0.0,
            total_value: 0.0,
        })
        .collect();
    for (i, &seg) in c.assignment.iter().enumerate() {
        lines[seg].mean_churn += s.churn[i];
        lines[seg].total_value += s.value[i];
    }
    for l in &mut lines {
        l.mean_churn /= l.customers.max(1) as f64;
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The median of a sorted copy, as segment_summary computed it before selection.
    fn sorted_median(v: &[f64]) -> f64 {
        let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        }
    }

    #[test]
    fn median_by_selection_equals_the_sorted_median() {
        assert!(median(vec![]).is_nan());
        assert!(median(vec![f64::NAN, f64::NAN]).is_nan());
        assert_eq!(median(vec![3.0]), 3.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert_eq!(median(vec![5.0, f64::NAN, 1.0, 3.0]), 3.0);
        // Repeated values, both signs of zero, infinities, odd and even lengths.
        let mut state = 7u64;
        for n in 1..200 {
            let v: Vec<f64> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    match state >> 60 {
                        0 => f64::NAN,
                        1 => -0.0,
                        2 => 0.0,
                        3 => f64::INFINITY,
                        _ => ((state >> 33) % 17) as f64 - 8.0,
                    }
                })
                .collect();
            let (a, b) = (median(v.clone()), sorted_median(&v));
            assert!(
                a == b || (a.is_nan() && b.is_nan()),
                "{v:?}: {a} against {b}"
            );
        }
    }
}
