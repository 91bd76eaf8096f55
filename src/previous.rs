//! The previous published run: finding it under the output root, its segment model (for the
//! warm start) and its customers (for `segment_transitions`), and the transitions since.
//!
//! "Published" means its manifest exists (`_runs/X/manifest.json`, written last). The
//! previous run of date D is the published run with the latest date before D, so reruns and
//! backfills (oldest first) see the same predecessor every time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use chrono::NaiveDate;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int32Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ProjectionMask;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use serde::Serialize;

use crate::clustering::SegmentModel;
use crate::error::{Error, Result};
use crate::publish::{legacy_model_name, manifest_name, read_object, run_dates};
use crate::storage::StoreRef;

/// The latest published run before `run_date`, if any.
pub async fn find(root: &StoreRef, run_date: NaiveDate) -> Result<Option<String>> {
    let mut dates: Vec<NaiveDate> = run_dates(root)
        .await?
        .into_iter()
        .filter(|d| *d < run_date)
        .collect();
    dates.sort_unstable_by(|a, b| b.cmp(a));
    for d in dates {
        let name = manifest_name(&d.format("%Y-%m-%d").to_string());
        match root.store.head(&root.key(&name)).await {
            Ok(_) => return Ok(Some(d.format("%Y-%m-%d").to_string())),
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(Error::storage(format!("reading {}", root.url_of(&name)), e)),
        }
    }
    Ok(None)
}

/// What the manifest of a published run says that this run needs.
#[derive(Debug, Clone)]
pub struct Published {
    /// Its run id: its data files carry it in their names.
    pub run_id: String,
    /// Usable rows per input (the row-drop gate).
    pub rows: crate::quality::PreviousRows,
    /// Its segment model, relative to the output root (`clustering.model`).
    pub model: Option<String>,
    /// The index of its incremental state, relative to the output root (`state.index`).
    pub state: Option<String>,
    /// The refit whose models scored it (`models.refit.date`)…
    pub refit_date: Option<String>,
    /// … and those models, relative to the output root (`models.refit.model`).
    pub scoring_models: Option<String>,
}

/// The manifest of the published run `run_date`; `None` if it is gone or (logged) cannot be
/// parsed.
pub async fn published(root: &StoreRef, run_date: &str) -> Result<Option<Published>> {
    let name = manifest_name(run_date);
    let Some(bytes) = read_object(root, &name).await? else {
        return Ok(None);
    };
    let manifest: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(manifest = root.url_of(&name), error = %e, "previous manifest unreadable; no row-drop gate, no transitions");
            return Ok(None);
        }
    };
    let format = manifest
        .get("format")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if format > u64::from(crate::publish::MANIFEST_FORMAT) {
        tracing::warn!(
            manifest = root.url_of(&name),
            format,
            reads = crate::publish::MANIFEST_FORMAT,
            "previous manifest written by a newer release; not used: no row-drop gate, no transitions, segments refitted"
        );
        return Ok(None);
    }
    let run_id = manifest
        .get("run_id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    let rows = manifest
        .get("inputs")
        .map(|i| crate::quality::PreviousRows::from_manifest(run_date, i))
        .unwrap_or_default();
    let model = manifest
        .pointer("/clustering/model")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string);
    let text = |pointer: &str| {
        manifest
            .pointer(pointer)
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    };
    Ok(Some(Published {
        run_id,
        rows,
        model,
        state: text("/state/index"),
        refit_date: text("/models/refit/date"),
        scoring_models: text("/models/refit/model"),
    }))
}

/// The segment model of the published run `run_date`, found through its manifest (builds
/// before run-scoped models stored it at [`legacy_model_name`]); `None` (logged) when that run
/// stored none or it cannot be read as a model (then this run refits).
pub async fn model(
    root: &StoreRef,
    run_date: &str,
    published: &Published,
) -> Result<Option<SegmentModel>> {
    let name = published
        .model
        .clone()
        .unwrap_or_else(|| legacy_model_name(run_date));
    let Some(bytes) = read_object(root, &name).await? else {
        tracing::warn!(
            model = root.url_of(&name),
            "previous run has no segment model; refitting"
        );
        return Ok(None);
    };
    match serde_json::from_slice::<SegmentModel>(&bytes) {
        Ok(m) => Ok(Some(m)),
        Err(e) => {
            tracing::warn!(model = root.url_of(&name), error = %e, "previous segment model unreadable; refitting");
            Ok(None)
        }
    }
}

/// A customer's state in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// Segment id.
    pub segment_id: i32,
    /// Segment name.
    pub segment: Arc<str>,
    /// Lifecycle stage.
    pub lifecycle_stage: Arc<str>,
    /// Churn band.
    pub churn_risk: Arc<str>,
}

const STATE_COLUMNS: [&str; 5] = [
    "customer_id",
    "segment_id",
    "segment",
    "lifecycle_stage",
    "churn_risk",
];

/// Every customer's [`State`] in a `customer_segments` batch (the current run's or one read
/// back).
pub fn states(batch: &RecordBatch) -> Result<Vec<(String, State)>> {
    let col = |name: &str| -> Result<ArrayRef> {
        let c = batch
            .column_by_name(name)
            .ok_or_else(|| Error::Model(format!("customer_segments lacks `{name}`")))?;
        let to = if name == "segment_id" {
            DataType::Int32
        } else {
            DataType::Utf8
        };
        cast(c, &to).map_err(|e| Error::engine(format!("reading `{name}`"), e.into()))
    };
    let (ids, seg_id, seg, life, churn) = (
        col("customer_id")?,
        col("segment_id")?,
        col("segment")?,
        col("lifecycle_stage")?,
        col("churn_risk")?,
    );
    let (ids, seg_id) = (ids.as_string::<i32>(), seg_id.as_primitive::<Int32Type>());
    let (seg, life, churn) = (
        seg.as_string::<i32>(),
        life.as_string::<i32>(),
        churn.as_string::<i32>(),
    );
    // The labels repeat across a million customers: one allocation per distinct value.
    let mut labels: HashMap<String, Arc<str>> = HashMap::new();
    let mut label = |s: &str| -> Arc<str> {
        match labels.get(s) {
            Some(l) => Arc::clone(l),
            None => Arc::clone(labels.entry(s.to_string()).or_insert_with(|| Arc::from(s))),
        }
    };
    Ok((0..batch.num_rows())
        .filter(|&i| !ids.is_null(i))
        .map(|i| {
            (
                ids.value(i).to_string(),
                State {
                    segment_id: seg_id.value(i),
                    segment: label(seg.value(i)),
                    lifecycle_stage: label(life.value(i)),
                    churn_risk: label(churn.value(i)),
                },
            )
        })
        .collect())
}

/// Every customer's state in the published `customer_segments` of run `run_date`: only the
/// files of its published attempt `run_id` (an earlier attempt's files may still be there).
pub async fn customers(root: &StoreRef, run_date: &str, run_id: &str) -> Result<ById> {
    let dir = format!("customer_segments/run_date={run_date}/");
    let mut files: Vec<ObjectPath> = root
        .store
        .list(Some(&root.key(&dir)))
        .map_ok(|m| m.location)
        .try_filter(|p| {
            let name = p.as_ref();
            futures::future::ready(name.ends_with(".parquet") && name.contains(run_id))
        })
        .try_collect()
        .await
        .map_err(|e| Error::storage(format!("listing {}", root.url_of(&dir)), e))?;
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let what = || format!("reading the previous run's {path}");
        let bytes: Bytes = root
            .store
            .get(&path)
            .await
            .map_err(|e| Error::storage(what(), e))?
            .bytes()
            .await
            .map_err(|e| Error::storage(what(), e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| Error::Model(format!("{}: {e}", what())))?;
        let schema = builder.parquet_schema();
        let wanted: Vec<usize> = (0..schema.num_columns())
            .filter(|&i| STATE_COLUMNS.contains(&schema.column(i).name()))
            .collect();
        let mask = ProjectionMask::leaves(schema, wanted);
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(|e| Error::Model(format!("{}: {e}", what())))?;
        for batch in reader {
            let batch = batch.map_err(|e| Error::Model(format!("{}: {e}", what())))?;
            out.extend(states(&batch)?);
        }
    }
    Ok(by_id(out))
}

/// Customers' states in ascending order of id, one per id (the first of a repeated id).
pub type ById = Vec<(String, State)>;

/// `states` in ascending order of id, one per id: as customer_segments is written, so
/// usually only checked, not sorted.
pub fn by_id(mut states: Vec<(String, State)>) -> ById {
    if !states.is_sorted_by(|a, b| a.0 < b.0) {
        states.sort_by(|a, b| a.0.cmp(&b.0));
        states.dedup_by(|later, first| later.0 == first.0);
    }
    states
}

/// Per segment id: how this run's customers relate to the previous run's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// In this segment in both runs.
    pub stayed: i64,
    /// In another segment in the previous run.
    pub joined: i64,
    /// Not in the previous run.
    pub new: i64,
    /// In this segment in the previous run, in another one now.
    pub left: i64,
}

/// One cell of the transition matrix (previous segment → this run's segment).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// Previous segment id (`None`: not in the previous run).
    pub from_segment_id: Option<i32>,
    /// Previous segment name.
    pub from_segment: Option<String>,
    /// This run's segment id.
    pub to_segment_id: i32,
    /// This run's segment name.
    pub to_segment: String,
    /// Customers.
    pub customers: i64,
}

/// The transitions since the previous run.
pub struct Transitions {
    /// `segment_transitions` rows.
    pub batch: RecordBatch,
    /// Per segment id.
    pub flows: BTreeMap<i32, Flow>,
    /// Non-empty cells, by (from, to).
    pub matrix: Vec<Cell>,
    /// Share of the customers of both runs who kept their segment id.
    pub kept_segment_share: f64,
}

/// Customers whose segment, lifecycle stage or churn band changed between `previous` (run
/// `previous_date`) and `current`, customers new since then (from = null) and customers no
/// longer present (to = null), plus the per-segment flows and the transition matrix. Both
/// sides are in ascending order of id ([`by_id`]): one merge, rows in id order.
pub fn transitions(previous_date: &str, previous: &ById, current: &ById) -> Result<Transitions> {
    type Row<'a> = (&'a str, Option<&'a State>, Option<&'a State>);
    let mut rows: Vec<Row> = Vec::new();
    let mut flows: BTreeMap<i32, Flow> = BTreeMap::new();
    let mut cells: BTreeMap<(Option<i32>, i32), Cell> = BTreeMap::new();
    let (mut both, mut kept) = (0usize, 0usize);
    fn gone<'a>(
        id: &'a str,
        b: &'a State,
        rows: &mut Vec<Row<'a>>,
        flows: &mut BTreeMap<i32, Flow>,
    ) {
        flows.entry(b.segment_id).or_default().left += 1;
        rows.push((id, Some(b), None));
    }
    let (mut i, mut j) = (0, 0);
    while i < current.len() {
        let (id, now) = (&current[i].0, &current[i].1);
        if let Some((p, b)) = previous.get(j) {
            if p < id {
                gone(p, b, &mut rows, &mut flows);
                j += 1;
                continue;
            }
        }
        i += 1;
        let before = match previous.get(j) {
            Some((p, b)) if p == id => {
                j += 1;
                Some(b)
            }
            _ => None,
        };
        let cell = cells
            .entry((before.map(|b| b.segment_id), now.segment_id))
            .or_insert_with(|| Cell {
                from_segment_id: before.map(|b| b.segment_id),
                from_segment: before.map(|b| b.segment.to_string()),
                to_segment_id: now.segment_id,
                to_segment: now.segment.to_string(),
                customers: 0,
            });
        cell.customers += 1;
        match before {
            None => {
                flows.entry(now.segment_id).or_default().new += 1;
                rows.push((id, None, Some(now)));
            }
            Some(b) => {
                both += 1;
                if b.segment_id == now.segment_id {
                    kept += 1;
                    flows.entry(now.segment_id).or_default().stayed += 1;
                } else {
                    flows.entry(now.segment_id).or_default().joined += 1;
                    flows.entry(b.segment_id).or_default().left += 1;
                }
                if b != now {
                    rows.push((id, Some(b), Some(now)));
                }
            }
        }
    }
    for (p, b) in &previous[j..] {
        gone(p, b, &mut rows, &mut flows);
    }

    let from: Vec<Option<&State>> = rows.iter().map(|r| r.1).collect();
    let to: Vec<Option<&State>> = rows.iter().map(|r| r.2).collect();
    fn text(side: &[Option<&State>], f: fn(&State) -> &str) -> ArrayRef {
        Arc::new(StringArray::from_iter(side.iter().map(|s| s.map(f))))
    }
    fn id_of(side: &[Option<&State>]) -> ArrayRef {
        Arc::new(Int32Array::from_iter(
            side.iter().map(|s| s.map(|s| s.segment_id)),
        ))
    }
    let changed = |f: fn(&State, &State) -> bool| -> ArrayRef {
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| {
            Some(match (r.1, r.2) {
                (Some(a), Some(b)) => f(a, b),
                _ => true,
            })
        })))
    };
    let batch = RecordBatch::try_from_iter([
        (
            "customer_id",
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
        ),
        (
            "previous_run_date",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|_| previous_date),
            )) as ArrayRef,
        ),
        ("from_segment_id", id_of(&from)),
        ("from_segment", text(&from, |s| &s.segment)),
        ("to_segment_id", id_of(&to)),
        ("to_segment", text(&to, |s| &s.segment)),
        ("from_lifecycle_stage", text(&from, |s| &s.lifecycle_stage)),
        ("to_lifecycle_stage", text(&to, |s| &s.lifecycle_stage)),
        ("from_churn_risk", text(&from, |s| &s.churn_risk)),
        ("to_churn_risk", text(&to, |s| &s.churn_risk)),
        (
            "segment_changed",
            changed(|a, b| a.segment_id != b.segment_id),
        ),
        (
            "lifecycle_changed",
            changed(|a, b| a.lifecycle_stage != b.lifecycle_stage),
        ),
        (
            "churn_risk_changed",
            changed(|a, b| a.churn_risk != b.churn_risk),
        ),
    ])
    .map_err(|e| Error::engine("assembling segment_transitions", e.into()))?;
    Ok(Transitions {
        batch,
        flows,
        matrix: cells.into_values().collect(),
        kept_segment_share: if both == 0 {
            f64::NAN
        } else {
            kept as f64 / both as f64
        },
    })
}

/// An empty `segment_transitions` batch (first run: nothing to compare with), same schema.
pub fn no_transitions() -> Result<RecordBatch> {
    let t = transitions("", &ById::new(), &ById::new())?;
    Ok(t.batch)
}

/// The per-segment flow columns of segment_summary for `ids` (null without a previous run).
pub fn flow_columns(ids: &[i32], t: Option<&Transitions>) -> Vec<(String, ArrayRef)> {
    let col = |f: fn(&Flow) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter(
            ids.iter().map(|id| t.map(|t| t.flows.get(id).map_or(0, f))),
        ))
    };
    vec![
        ("customers_stayed".into(), col(|f| f.stayed)),
        ("customers_joined".into(), col(|f| f.joined)),
        ("customers_new".into(), col(|f| f.new)),
        ("customers_left".into(), col(|f| f.left)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(id: i32, life: &str, churn: &str) -> State {
        State {
            segment_id: id,
            segment: format!("S{id}").into(),
            lifecycle_stage: life.into(),
            churn_risk: churn.into(),
        }
    }

    #[test]
    fn changes_new_and_gone_customers_with_flows() {
        // Out of order on purpose: by_id sorts.
        let previous = by_id(
            [
                ("gone", st(2, "decline", "high")),
                ("a", st(1, "growth", "low")),
                ("c", st(2, "decline", "high")),
                ("b", st(1, "growth", "low")),
                ("0", st(2, "decline", "high")), // gone, before every current id
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        );
        let current = by_id(vec![
            ("a".to_string(), st(1, "growth", "low")), // unchanged: no row
            ("new".to_string(), st(2, "potential", "high")),
            ("b".to_string(), st(1, "maturity", "low")), // lifecycle changed
            ("c".to_string(), st(1, "growth", "low")),   // segment 2 → 1
        ]);
        let t = transitions("2026-01-01", &previous, &current).unwrap();
        let ids: Vec<&str> = t
            .batch
            .column(0)
            .as_string::<i32>()
            .iter()
            .flatten()
            .collect();
        assert_eq!(ids, vec!["0", "b", "c", "gone", "new"]);
        let seg_changed = t
            .batch
            .column_by_name("segment_changed")
            .unwrap()
            .as_boolean()
            .clone();
        assert_eq!(
            seg_changed.iter().collect::<Vec<_>>(),
            vec![Some(true), Some(false), Some(true), Some(true), Some(true)]
        );
        assert!(t.batch.column_by_name("to_segment_id").unwrap().is_null(0));
        assert!(t.batch.column_by_name("to_segment_id").unwrap().is_null(3));
        assert!(t
            .batch
            .column_by_name("from_segment_id")
            .unwrap()
            .is_null(4));
        assert_eq!(
            t.flows[&1],
            Flow {
                stayed: 2,
                joined: 1,
                new: 0,
                left: 0
            }
        );
        assert_eq!(
            t.flows[&2],
            Flow {
                stayed: 0,
                joined: 0,
                new: 1,
                left: 3
            }
        );
        assert!((t.kept_segment_share - 2.0 / 3.0).abs() < 1e-12);
        let total: i64 = t.matrix.iter().map(|c| c.customers).sum();
        assert_eq!(total, 4);
    }

    #[test]
    fn states_round_trip_through_a_batch() {
        let b = RecordBatch::try_from_iter([
            (
                "customer_id",
                Arc::new(StringArray::from(vec!["x"])) as ArrayRef,
            ),
            (
                "segment_id",
                Arc::new(Int32Array::from(vec![3])) as ArrayRef,
            ),
            (
                "segment",
                Arc::new(StringArray::from(vec!["S3"])) as ArrayRef,
            ),
            (
                "lifecycle_stage",
                Arc::new(StringArray::from(vec!["growth"])) as ArrayRef,
            ),
            (
                "churn_risk",
                Arc::new(StringArray::from(vec!["low"])) as ArrayRef,
            ),
        ])
        .unwrap();
        assert_eq!(
            states(&b).unwrap(),
            vec![("x".to_string(), st(3, "growth", "low"))]
        );
        assert_eq!(no_transitions().unwrap().num_rows(), 0);
    }
}
