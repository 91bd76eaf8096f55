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

fn params(cutoff: Cutoff, horizon_days: i64, pipeline: &Pipeline) -> HashMap<&'static str, String> {
    HashMap::from([
        ("cutoff", cutoff.sql()),
        ("cutoff_epoch", cutoff.epoch().to_string()),
        (
            "horizon_end",
            Cutoff(cutoff.0 + chrono::Duration::days(horizon_days)).sql(),
        ),
        (
            "monthly_discount_rate",
            format!("{:?}", pipeline.model.monthly_discount_rate),
        ),
    ])
}

/// Runs order_history.sql at `cutoff` with an outcome window of `horizon_days`.
pub async fn order_history(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    cutoff: Cutoff,
    horizon_days: i64,
) -> Result<CustomerTable> {
    let sql = render(
        &pipeline.order_history_sql,
        &params(cutoff, horizon_days, pipeline),
        "order_history",
    )?;
    let batches = engine::collect(ctx, &sql, "queries/order_history.sql").await?;
    CustomerTable::new(batches, "order_history")
}

/// Registers `order_history` at the run's cut-off and runs features.sql: one row per known
/// customer, ordered by customer_id.
pub async fn customer_features(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    cutoff: Cutoff,
) -> Result<CustomerTable> {
    let p = params(cutoff, 0, pipeline);
    let history = render(&pipeline.order_history_sql, &p, "order_history")?;
    engine::materialize(ctx, "order_history", &history, "queries/order_history.sql").await?;
    let sql = render(&pipeline.features_sql, &p, "features")?;
    let batches = engine::collect(ctx, &sql, "queries/features.sql").await?;
    CustomerTable::new(batches, "features")
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
