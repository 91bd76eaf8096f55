//! Features: runs the pipeline's SQL (queries/*.sql) with its parameters and returns typed
//! per-customer tables. Features are computed by DataFusion, never by row loops in Rust.

use std::collections::HashMap;

use chrono::{NaiveDate, NaiveDateTime};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::prelude::SessionContext;

use crate::config::Pipeline;
use crate::engine;
use crate::error::{Error, Result};

/// A point in time, as the SQL templates need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoff(pub NaiveDateTime);

impl Cutoff {
    /// The cut-off of a run for logical date `d`: `d + 1 day, 00:00 UTC` (exclusive).
    pub fn for_run_date(d: NaiveDate) -> Cutoff {
        Cutoff(d.succ_opt().unwrap_or(d).and_time(chrono::NaiveTime::MIN))
    }

    /// This cut-off moved back by `days`.
    pub fn days_before(self, days: i64) -> Cutoff {
        Cutoff(self.0 - chrono::Duration::days(days))
    }

    /// SQL literal, e.g. `TIMESTAMP '2026-11-01 00:00:00'`.
    pub fn sql(self) -> String {
        format!("TIMESTAMP '{}'", self.0.format("%Y-%m-%d %H:%M:%S"))
    }

    /// Seconds since the epoch (UTC).
    pub fn epoch(self) -> i64 {
        self.0.and_utc().timestamp()
    }
}

/// Replaces every `{{name}}` in `sql`; an unknown `{{…}}` left over is an error (a typo in an
/// analyst's query must not run silently).
pub fn render(sql: &str, params: &HashMap<&str, String>, query: &str) -> Result<String> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            Error::config(
                None,
                format!("query {query}: unterminated `{{{{` placeholder"),
            )
        })?;
        let name = after[..end].trim();
        let value = params.get(name).ok_or_else(|| {
            let mut known: Vec<_> = params.keys().copied().collect();
            known.sort_unstable();
            Error::config(
                None,
                format!(
                    "query {query}: unknown parameter {{{{{name}}}}} (known: {})",
                    known.join(", ")
                ),
            )
        })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn params(pipeline: &Pipeline) -> HashMap<&'static str, String> {
    HashMap::from([(
        "monthly_discount_rate",
        format!("{:?}", pipeline.model.monthly_discount_rate),
    )])
}

/// The as-of instants one run computes features for: 0 is the run's own cut-off, the others
/// lie `days` before it (the models train and backtest on them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshots(Vec<(i32, Cutoff)>);

impl Snapshots {
    /// Snapshot 0 at `cutoff`, and snapshot i at `cutoff − days_before[i−1]`.
    pub fn new(cutoff: Cutoff, days_before: &[i64]) -> Snapshots {
        let mut v = vec![(0, cutoff)];
        for (i, d) in days_before.iter().enumerate() {
            v.push((i as i32 + 1, cutoff.days_before(*d)));
        }
        Snapshots(v)
    }

    /// The cut-off of snapshot `id`.
    pub fn cutoff(&self, id: i32) -> Option<Cutoff> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, c)| *c)
    }

    /// The `snapshots` table the SQL joins against.
    fn batch(&self) -> Result<RecordBatch> {
        use datafusion::arrow::array::{Float64Array, Int32Array, TimestampMicrosecondArray};
        let ids = Int32Array::from_iter_values(self.0.iter().map(|(i, _)| *i));
        let ts = TimestampMicrosecondArray::from_iter_values(
            self.0.iter().map(|(_, c)| c.0.and_utc().timestamp_micros()),
        );
        let epoch = Float64Array::from_iter_values(self.0.iter().map(|(_, c)| c.epoch() as f64));
        RecordBatch::try_from_iter([
            ("snapshot", std::sync::Arc::new(ids) as _),
            ("cutoff", std::sync::Arc::new(ts) as _),
            ("cutoff_epoch", std::sync::Arc::new(epoch) as _),
        ])
        .map_err(|e| Error::engine("building the snapshots table", e.into()))
    }
}

/// Features of every snapshot, split into one table per snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotFeatures {
    tables: std::collections::BTreeMap<i32, CustomerTable>,
}

impl SnapshotFeatures {
    /// The table of snapshot `id` (customers known at that cut-off), if it has any customer.
    pub fn get(&self, id: i32) -> Option<&CustomerTable> {
        self.tables.get(&id)
    }

    /// The run's own snapshot (0): the customers to score and segment.
    pub fn current(&self) -> Result<&CustomerTable> {
        self.get(0).ok_or_else(|| {
            Error::InputRejected(
                "no known customers before the cut-off (no orders, sessions or customers rows)"
                    .into(),
            )
        })
    }
}

/// Registers `snapshots` and `order_history`, runs features.sql once for all snapshots (one
/// scan of the events) and splits the result by snapshot. Rows are ordered by customer_id.
pub async fn customer_features(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    snapshots: &Snapshots,
) -> Result<SnapshotFeatures> {
    let batch = snapshots.batch()?;
    let table = datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]])
        .map_err(|e| Error::engine("registering snapshots", e))?;
    ctx.deregister_table("snapshots")
        .map_err(|e| Error::engine("registering snapshots", e))?;
    ctx.register_table("snapshots", std::sync::Arc::new(table))
        .map_err(|e| Error::engine("registering snapshots", e))?;

    let p = params(pipeline);
    let history = render(&pipeline.order_history_sql, &p, "order_history")?;
    engine::materialize(ctx, "order_history", &history, "queries/order_history.sql").await?;
    let sql = render(&pipeline.features_sql, &p, "features")?;
    let batches = engine::collect(ctx, &sql, "queries/features.sql").await?;
    let mut tables = std::collections::BTreeMap::new();
    for (id, _) in &snapshots.0 {
        let mut part = Vec::new();
        for b in &batches {
            let col = b.column_by_name("snapshot").ok_or_else(|| {
                Error::config(None, "query features must return a column `snapshot`")
            })?;
            let col = cast(col, &DataType::Int32)
                .map_err(|e| Error::engine("reading snapshot", e.into()))?;
            let mask = datafusion::arrow::compute::kernels::cmp::eq(
                &col,
                &datafusion::arrow::array::Int32Array::new_scalar(*id),
            )
            .map_err(|e| Error::engine("splitting snapshots", e.into()))?;
            let rows = datafusion::arrow::compute::filter_record_batch(b, &mask)
                .map_err(|e| Error::engine("splitting snapshots", e.into()))?;
            if rows.num_rows() > 0 {
                part.push(rows);
            }
        }
        if !part.is_empty() {
            tables.insert(*id, CustomerTable::new(part, "features")?);
        }
    }
    Ok(SnapshotFeatures { tables })
}

/// A per-customer table in one RecordBatch, with typed column access by name.
#[derive(Debug, Clone)]
pub struct CustomerTable {
    batch: RecordBatch,
    query: &'static str,
}

impl CustomerTable {
    /// Wraps query results; requires a non-null Utf8-compatible `customer_id`.
    pub fn new(batches: Vec<RecordBatch>, query: &'static str) -> Result<Self> {
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => {
                return Err(Error::InputRejected(format!(
                    "query {query} returned no rows: no known customers before the cut-off"
                )))
            }
        };
        let batch = concat_batches(&schema, &batches)
            .map_err(|e| Error::engine(format!("collecting {query}"), e.into()))?;
        let table = CustomerTable { batch, query };
        let ids = table.column_by_name("customer_id")?;
        if ids.null_count() > 0 {
            return Err(Error::config(
                None,
                format!("query {query} returned rows with a null customer_id"),
            ));
        }
        Ok(table)
    }

    /// Number of customers.
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    /// True when there are no customers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole table.
    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }

    fn column_by_name(&self, name: &str) -> Result<&dyn Array> {
        self.batch
            .column_by_name(name)
            .map(|a| a.as_ref())
            .ok_or_else(|| {
                Error::config(
                    None,
                    format!(
                        "query {} must return a column `{name}` (it returned: {})",
                        self.query,
                        self.batch
                            .schema()
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }

    /// Customer ids as owned strings.
    pub fn ids(&self) -> Result<Vec<String>> {
        let col = cast(self.column_by_name("customer_id")?, &DataType::Utf8)
            .map_err(|e| Error::engine("reading customer_id", e.into()))?;
        let col = col.as_string::<i32>();
        Ok((0..col.len()).map(|i| col.value(i).to_string()).collect())
    }

    /// A numeric column as f64, nulls as NaN.
    pub fn f64(&self, name: &str) -> Result<Vec<f64>> {
        let col = cast(self.column_by_name(name)?, &DataType::Float64).map_err(|e| {
            Error::config(
                None,
                format!("query {}: column `{name}` is not numeric: {e}", self.query),
            )
        })?;
        let col = col.as_primitive::<Float64Type>();
        Ok((0..col.len())
            .map(|i| {
                if col.is_null(i) {
                    f64::NAN
                } else {
                    col.value(i)
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_is_the_day_after() {
        let c = Cutoff::for_run_date(NaiveDate::from_ymd_opt(2026, 10, 31).unwrap());
        assert_eq!(c.sql(), "TIMESTAMP '2026-11-01 00:00:00'");
        assert_eq!(c.epoch(), 1_793_491_200);
        assert_eq!(c.days_before(90).sql(), "TIMESTAMP '2026-08-03 00:00:00'");
    }

    #[test]
    fn render_substitutes_and_rejects_unknown() {
        let p = HashMap::from([("a", "1".to_string())]);
        assert_eq!(render("x {{a}} {{ a }}", &p, "q").unwrap(), "x 1 1");
        let err = render("{{b}}", &p, "q").unwrap_err().to_string();
        assert!(err.contains("{{b}}") && err.contains("a"), "{err}");
        assert!(render("{{a", &p, "q").is_err());
    }
}
