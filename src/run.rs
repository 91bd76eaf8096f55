//! One run for one logical date: calls the stages in order, times them, publishes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use chrono::NaiveDate;
use datafusion::arrow::array::{
    ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use serde::Serialize;

use crate::clustering::{self, Clustering};
use crate::config::Pipeline;
use crate::error::{Error, Result};
use crate::features::{self, CustomerTable, Cutoff};
use crate::inputs;
use crate::models::{self, Scores};
use crate::outputs::{self, csv_field, slug, Lock, Manifest};
use crate::segments;
use crate::storage;

/// What a finished run reports back (the demo prints it).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The run id carried by every file.
    pub run_id: String,
    /// Logical date.
    pub run_date: NaiveDate,
    /// Known customers.
    pub customers: usize,
    /// One line per segment.
    pub segments: Vec<SegmentLine>,
    /// The manifest's URL.
    pub manifest: String,
    /// Output root URL.
    pub output_root: String,
}

/// One segment in the run summary.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentLine {
    /// Segment id.
    pub segment_id: i32,
    /// Segment name.
    pub segment: String,
    /// Customers in it.
    pub customers: usize,
    /// Mean churn risk score.
    pub mean_churn: f64,
    /// Total predicted value.
    pub total_value: f64,
}

/// Per-customer results assembled from the stages.
struct Assigned {
    names: Vec<String>,
    churn_band: Vec<&'static str>,
    value_band: Vec<&'static str>,
    lifecycle: Vec<&'static str>,
    loyalty: Vec<&'static str>,
}

/// A query engine configured for the pipeline: bounded memory (spilling to disk), parallelism,
/// and Parquet reading that keeps strings as Utf8 and lists files in subdirectories.
pub fn session(pipeline: &Pipeline) -> Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_target_partitions(pipeline.target_partitions)
        .with_information_schema(false);
    let opts = config.options_mut();
    opts.execution.parquet.schema_force_view_types = false;
    opts.execution.parquet.pushdown_filters = true;
    opts.execution.listing_table_ignore_subdirectory = false;
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(bytes) = pipeline.memory_limit_bytes {
        runtime = runtime.with_memory_limit(bytes, 1.0);
    }
    let runtime = runtime
        .build_arc()
        .map_err(|e| Error::engine("starting the query engine", e))?;
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

/// Runs the pipeline for logical date `date` and publishes the outputs.
pub async fn run(pipeline: &Pipeline, date: NaiveDate) -> Result<RunSummary> {
    let started_at = chrono::Utc::now();
    let run_date = date.format("%Y-%m-%d").to_string();
    let run_id = format!(
        "{}-{}",
        started_at.format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let cutoff = Cutoff::for_run_date(date);
    let mut timings = BTreeMap::new();
    let ctx = session(pipeline)?;
    let root = storage::open(&ctx, &pipeline.output_root)?;
    tracing::info!(
        run_date,
        run_id,
        output = root.location.as_str(),
        "run started"
    );

    let lock = Lock::acquire(&root, &run_date, &run_id).await?;
    let result = run_locked(
        pipeline,
        &ctx,
        &root,
        &run_date,
        &run_id,
        cutoff,
        &mut timings,
        started_at,
    )
    .await;
    lock.release().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn run_locked(
    pipeline: &Pipeline,
    ctx: &SessionContext,
    root: &storage::StoreRef,
    run_date: &str,
    run_id: &str,
    cutoff: Cutoff,
    timings: &mut BTreeMap<&'static str, f64>,
    started_at: chrono::DateTime<chrono::Utc>,
) -> Result<RunSummary> {
    let mut clock = Instant::now();
    let mut lap = |name: &'static str, timings: &mut BTreeMap<&'static str, f64>| {
        let secs = clock.elapsed().as_secs_f64();
        timings.insert(name, (secs * 1000.0).round() / 1000.0);
        tracing::info!(stage = name, seconds = secs, "stage done");
        clock = Instant::now();
    };

    let inputs = inputs::register(ctx, pipeline, &cutoff.sql()).await?;
    log_inputs(&inputs);
    lap("inputs", timings);

    let features = features::customer_features(ctx, pipeline, cutoff).await?;
    tracing::info!(customers = features.len(), "features computed");
    lap("features", timings);

    let scores = models::score(ctx, pipeline, cutoff, &features).await?;
    lap("models", timings);

    let clusters = clustering::fit(&features, &pipeline.clustering)?;
    lap("clustering", timings);

    let assigned = assign(pipeline, &features, &scores, &clusters)?;
    let segments_batch = customer_segments(&features, &scores, &clusters, &assigned)?;
    let summary_batch = segment_summary(&features, &scores, &clusters, &assigned)?;
    lap("segments", timings);

    let mut files: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let part = format!("part-{run_id}.parquet");
    for (table, batch) in [
        ("customer_segments", &segments_batch),
        ("segment_summary", &summary_batch),
    ] {
        let name = format!("{table}/run_date={run_date}/{part}");
        files
            .entry(table)
            .or_default()
            .push(outputs::write_parquet(root, &name, batch).await?);
    }
    let exports = exports(ctx, &segments_batch, &assigned.names).await?;
    for (seg, csv) in exports {
        let name = format!("exports/run_date={run_date}/{seg}-{run_id}.csv");
        files
            .entry("exports")
            .or_default()
            .push(outputs::write_bytes(root, &name, csv).await?);
    }
    lap("write", timings);

    let segment_lines = summary_lines(&clusters, &scores, &assigned.names);
    let manifest = Manifest {
        run_id,
        run_date,
        cutoff: cutoff.0.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        software: BTreeMap::from([
            ("name", env!("CARGO_PKG_NAME")),
            ("version", env!("CARGO_PKG_VERSION")),
        ]),
        started_at: started_at.to_rfc3339(),
        finished_at: chrono::Utc::now().to_rfc3339(),
        inputs: &inputs,
        customers: features.len(),
        models: &scores.report,
        clustering: serde_json::json!({
            "k": clusters.centroids.len(),
            "names": assigned.names,
            "sizes": clusters.sizes,
            "sample_size": clusters.sample_size,
            "mean_squared_distance": clusters.mean_squared_distance,
            "seed": pipeline.clustering.seed,
            "model": clusters,
        }),
        pipeline: &pipeline.effective,
        outputs: files,
        timings: timings.clone(),
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Model(format!("serialising the manifest: {e}")))?;
    let manifest_name = format!("_runs/{run_date}/manifest.json");
    let manifest_url = outputs::write_bytes(root, &manifest_name, json).await?;
    tracing::info!(manifest = manifest_url, "published");

    for dir in ["customer_segments", "segment_summary", "exports"] {
        let removed =
            outputs::remove_stale(root, &format!("{dir}/run_date={run_date}/"), run_id).await?;
        if removed > 0 {
            tracing::info!(
                table = dir,
                files = removed,
                "removed files of an earlier attempt"
            );
        }
    }

    Ok(RunSummary {
        run_id: run_id.to_string(),
        run_date: NaiveDate::parse_from_str(run_date, "%Y-%m-%d").unwrap_or_default(),
        customers: features.len(),
        segments: segment_lines,
        manifest: manifest_url,
        output_root: root.location.as_str().to_string(),
    })
}

fn log_inputs(inputs: &inputs::Inputs) {
    let each = [
        ("orders", Some(&inputs.orders)),
        ("events", inputs.events.as_ref()),
        ("customers", inputs.customers.as_ref()),
    ];
    for (name, report) in each {
        if let Some(r) = report {
            tracing::info!(
                input = name,
                files = r.files,
                rows = r.rows_in_files,
                used = r.rows_used,
                after_cutoff = r.rows_after_cutoff,
                rejected = ?r.rejected,
                "input read"
            );
        }
    }
}

fn assign(pipeline: &Pipeline, f: &CustomerTable, s: &Scores, c: &Clustering) -> Result<Assigned> {
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
        names: segments::names(c),
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
fn customer_segments(
    f: &CustomerTable,
    s: &Scores,
    c: &Clustering,
    a: &Assigned,
) -> Result<RecordBatch> {
    let batch = f.batch();
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
                c.assignment.iter().map(|&k| k as i32 + 1),
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
    ];
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        if !cols.iter().any(|(n, _)| n == field.name()) {
            cols.push((field.name().clone(), Arc::clone(col)));
        }
    }
    let out = RecordBatch::try_from_iter(cols)
        .map_err(|e| Error::engine("assembling customer_segments", e.into()))?;
    outputs::portable(&out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
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

/// The profile columns of segment_summary (medians in original units).
const PROFILE: &[&str] = &[
    "recency_days",
    "frequency",
    "monetary",
    "avg_order_value",
    "tenure_days",
    "return_rate",
    "discount_share",
    "sessions_90d",
    "add_to_cart_90d",
    "days_since_last_visit",
];

/// segment_summary: one row per segment — size, share, profile, churn, value, revenue at risk.
fn segment_summary(
    f: &CustomerTable,
    s: &Scores,
    c: &Clustering,
    a: &Assigned,
) -> Result<RecordBatch> {
    let k = c.centroids.len();
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
    let size = |j: usize| c.sizes[j].max(1) as f64;
    let mut cols: Vec<(String, ArrayRef)> = vec![
        (
            "segment_id".into(),
            Arc::new(Int32Array::from_iter_values((0..k).map(|j| j as i32 + 1))),
        ),
        (
            "segment".into(),
            strings(a.names.iter().map(String::as_str)),
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
                c.sizes.iter().map(|&x| x as f64 / n),
            )),
        ),
        (
            "mean_churn_risk_score".into(),
            Arc::new(Float64Array::from_iter_values(
                (0..k).map(|j| churn_sum[j] / size(j)),
            )),
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
    for feature in PROFILE {
        let values = f.f64(feature)?;
        let mut per: Vec<Vec<f64>> = vec![Vec::new(); k];
        for (i, &seg) in c.assignment.iter().enumerate() {
            per[seg].push(values[i]);
        }
        cols.push((
            format!("median_{feature}"),
            Arc::new(Float64Array::from_iter(per.into_iter().map(|v| {
                let m = median(v);
                (!m.is_nan()).then_some(m)
            }))),
        ));
    }
    for (j, feature) in c.features.iter().enumerate() {
        cols.push((
            format!("centroid_z_{feature}"),
            Arc::new(Float64Array::from_iter_values(
                (0..k).map(|seg| c.centroids[seg][j]),
            )),
        ));
    }
    RecordBatch::try_from_iter(cols)
        .map_err(|e| Error::engine("assembling segment_summary", e.into()))
}

fn summary_lines(c: &Clustering, s: &Scores, names: &[String]) -> Vec<SegmentLine> {
    let k = c.centroids.len();
    let mut lines: Vec<SegmentLine> = (0..k)
        .map(|j| SegmentLine {
            segment_id: j as i32 + 1,
            segment: names[j].clone(),
            customers: c.sizes[j],
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

/// One CSV per segment: ids, scores and bands; the e-mail only for customers who opted in.
async fn exports(
    ctx: &SessionContext,
    segs: &RecordBatch,
    names: &[String],
) -> Result<Vec<(String, Vec<u8>)>> {
    let contacts = contacts(ctx).await?;
    let col = |name: &str| -> Result<ArrayRef> {
        segs.column_by_name(name)
            .cloned()
            .ok_or_else(|| Error::Model(format!("customer_segments lacks {name}")))
    };
    let ids = col("customer_id")?;
    let ids = ids.as_string::<i32>();
    let seg_id = col("segment_id")?;
    let seg_id = seg_id.as_primitive::<datafusion::arrow::datatypes::Int32Type>();
    let text_cols = [
        "churn_risk",
        "value_segment",
        "lifecycle_stage",
        "loyalty_tier",
    ]
    .map(&col);
    let mut text = Vec::new();
    for c in text_cols {
        text.push(c?);
    }
    let churn = col("churn_risk_score")?;
    let churn = churn.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
    let value = col("value_score")?;
    let value = value.as_primitive::<datafusion::arrow::datatypes::Float64Type>();

    let header = "customer_id,email,segment,churn_risk,value_segment,lifecycle_stage,loyalty_tier,churn_risk_score,value_score\n";
    let mut files: Vec<Vec<u8>> = names.iter().map(|_| header.as_bytes().to_vec()).collect();
    for i in 0..segs.num_rows() {
        let seg = (seg_id.value(i) - 1) as usize;
        let id = ids.value(i);
        let email = contacts.get(id).map(String::as_str).unwrap_or("");
        let mut line = format!(
            "{},{},{}",
            csv_field(id),
            csv_field(email),
            csv_field(&names[seg])
        );
        for t in &text {
            line.push(',');
            line.push_str(t.as_string::<i32>().value(i));
        }
        line.push_str(&format!(",{:.6},{:.2}\n", churn.value(i), value.value(i)));
        files[seg].extend_from_slice(line.as_bytes());
    }
    Ok(names.iter().map(|n| slug(n)).zip(files).collect())
}

/// E-mail addresses of customers who opted in to marketing (only these are exported).
async fn contacts(ctx: &SessionContext) -> Result<HashMap<String, String>> {
    let batches = ctx
        .sql(
            "SELECT customer_id, email FROM customers WHERE marketing_opt_in AND email IS NOT NULL",
        )
        .await
        .map_err(|e| Error::engine("reading contacts", e))?
        .collect()
        .await
        .map_err(|e| Error::engine("reading contacts", e))?;
    let mut out = HashMap::new();
    for b in batches {
        let ids =
            cast(b.column(0), &DataType::Utf8).map_err(|e| Error::engine("contacts", e.into()))?;
        let emails =
            cast(b.column(1), &DataType::Utf8).map_err(|e| Error::engine("contacts", e.into()))?;
        let (ids, emails) = (ids.as_string::<i32>(), emails.as_string::<i32>());
        for i in 0..b.num_rows() {
            out.insert(ids.value(i).to_string(), emails.value(i).to_string());
        }
    }
    Ok(out)
}
