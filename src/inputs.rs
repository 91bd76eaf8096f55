//! Inputs: list and check every Parquet file, register orders / events / customers as
//! DataFusion tables with one canonical schema, apply the as-of cut, clean and count.
//!
//! After [`register`], SQL sees three tables with fixed types (timestamps are zone-less
//! microseconds meaning UTC, money is Float64, text is Utf8):
//! - `orders`    — valid orders before the cut-off, one row per order_id (materialised: small);
//! - `events`    — events before the cut-off (a view over the files: large, never materialised);
//! - `customers` — one row per customer_id, signed up before the cut-off (materialised).
//!
//! Producers may disagree on timestamp unit and zone, Decimal vs Float64, string encodings:
//! each file's columns are cast to the canonical type by the engine. A missing required column
//! or a type that cannot be cast is an [`Error::InputRejected`] naming the file and column.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::compute::can_cast_types;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::MemTable;
// ParquetObjectReader is deprecated in parquet 59 in favour of a hand-written AsyncFileReader;
// it still does exactly what we need (footer only), so we keep it until DataFusion moves on.
#[allow(deprecated)]
use datafusion::parquet::arrow::async_reader::ParquetObjectReader;
use datafusion::parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::config::{Location, Pipeline};
use crate::engine;
use crate::error::{Error, Result};
use crate::storage::{self, StoreRef};

/// The canonical timestamp type: microseconds, zone-less, meaning UTC.
pub const TS: DataType = DataType::Timestamp(TimeUnit::Microsecond, None);

/// The values of `status` the contract defines.
pub const ORDER_STATUSES: [&str; 3] = ["completed", "returned", "cancelled"];
/// The values of `event_type` the contract defines; others are counted and ignored.
pub const EVENT_TYPES: [&str; 7] = [
    "page_view",
    "product_view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "checkout_start",
    "purchase",
];

/// One column of an input: name, canonical type, whether every file must have it.
struct Col(&'static str, DataType, bool);

const ORDERS: &[Col] = &[
    Col("order_id", DataType::Utf8, true),
    Col("customer_id", DataType::Utf8, true),
    Col("order_ts", TS, true),
    Col("amount", DataType::Float64, true),
    Col("status", DataType::Utf8, true),
    Col("discount_amount", DataType::Float64, false),
    Col("channel", DataType::Utf8, false),
];
const EVENTS: &[Col] = &[
    Col("event_id", DataType::Utf8, false),
    Col("customer_id", DataType::Utf8, true),
    Col("session_id", DataType::Utf8, true),
    Col("event_ts", TS, true),
    Col("event_type", DataType::Utf8, true),
];
const CUSTOMERS: &[Col] = &[
    Col("customer_id", DataType::Utf8, true),
    Col("email", DataType::Utf8, false),
    Col("signup_ts", TS, false),
    Col("country", DataType::Utf8, false),
    Col("marketing_opt_in", DataType::Boolean, false),
];

fn schema_of(cols: &[Col]) -> SchemaRef {
    Arc::new(Schema::new(
        cols.iter()
            .map(|Col(name, ty, _)| Field::new(*name, ty.clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// What was read from one input, for the manifest and logs (counts only, never values).
#[derive(Debug, Clone, Serialize, Default)]
pub struct InputReport {
    /// Where it was read from.
    pub location: String,
    /// Parquet files read.
    pub files: usize,
    /// Total bytes of those files.
    pub bytes: u64,
    /// Rows in those files (from Parquet metadata).
    pub rows_in_files: u64,
    /// Rows at or after the cut-off (not seen by this run; not an error).
    pub rows_after_cutoff: u64,
    /// Rows the run uses.
    pub rows_used: u64,
    /// Rows dropped, by reason.
    pub rejected: BTreeMap<String, u64>,
}

/// Reports for every input.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Inputs {
    /// Orders.
    pub orders: InputReport,
    /// Events (absent if not configured).
    pub events: Option<InputReport>,
    /// Customers (absent if not configured).
    pub customers: Option<InputReport>,
}

/// Registers `orders`, `events` and `customers` in `ctx`, cut at `cutoff_sql` (an SQL
/// timestamp literal: the first instant the run must not see).
pub async fn register(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    cutoff_sql: &str,
) -> Result<Inputs> {
    let orders = register_raw(ctx, "orders_raw", &pipeline.orders, "inputs.orders", ORDERS).await?;
    let orders = clean_orders(ctx, orders, cutoff_sql).await?;

    let events = match &pipeline.events {
        Some(loc) => {
            let report = register_raw(ctx, "events_raw", loc, "inputs.events", EVENTS).await?;
            Some(count_events(ctx, report, cutoff_sql).await?)
        }
        None => {
            register_empty(ctx, "events_raw", EVENTS)?;
            None
        }
    };
    let view = format!(
        "CREATE VIEW events AS SELECT customer_id, session_id, event_ts, event_type \
         FROM events_raw WHERE event_ts < {cutoff_sql} AND customer_id IS NOT NULL AND customer_id <> ''"
    );
    engine::collect(ctx, &view, "creating the events view").await?;

    let customers = match &pipeline.customers {
        Some(loc) => {
            let report =
                register_raw(ctx, "customers_raw", loc, "inputs.customers", CUSTOMERS).await?;
            Some(clean_customers(ctx, report, cutoff_sql).await?)
        }
        None => {
            register_empty(ctx, "customers_raw", CUSTOMERS)?;
            clean_customers(ctx, InputReport::default(), cutoff_sql).await?;
            None
        }
    };
    Ok(Inputs {
        orders,
        events,
        customers,
    })
}

/// Lists the Parquet files under `location`, checks each footer against `cols`, and registers
/// them as a listing table `name` with the canonical schema.
async fn register_raw(
    ctx: &SessionContext,
    name: &str,
    location: &Location,
    key: &str,
    cols: &[Col],
) -> Result<InputReport> {
    let store = storage::open(ctx, location)?;
    let files: Vec<_> = store
        .store
        .list(Some(&store.prefix))
        .try_filter(|m| futures::future::ready(is_data_file(m.location.as_ref())))
        .try_collect()
        .await
        .map_err(|e| Error::storage(format!("listing {}", location.as_str()), e))?;
    if files.is_empty() {
        return Err(Error::config(
            None,
            format!(
                "`{key}`: no Parquet files found at {} — check the path/prefix and credentials",
                location.as_str()
            ),
        ));
    }
    let checks = futures::stream::iter(files.iter().cloned().map(|meta| {
        let store = store.clone();
        async move { check_file(&store, meta, cols).await }
    }))
    .buffer_unordered(16)
    .try_collect::<Vec<_>>()
    .await?;

    let schema = schema_of(cols);
    let url = ListingTableUrl::parse(location.as_str())
        .map_err(|e| Error::engine(format!("registering {}", location.as_str()), e))?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    let table = ListingTable::try_new(config)
        .map_err(|e| Error::engine(format!("registering {}", location.as_str()), e))?;
    ctx.register_table(name, Arc::new(table))
        .map_err(|e| Error::engine(format!("registering {name}"), e))?;

    Ok(InputReport {
        location: location.as_str().to_string(),
        files: files.len(),
        bytes: files.iter().map(|m| m.size).sum(),
        rows_in_files: checks.iter().sum(),
        ..Default::default()
    })
}

/// Parquet data files: `*.parquet`, skipping hidden and `_`-prefixed names (Spark/Hadoop markers).
fn is_data_file(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.ends_with(".parquet") && !name.starts_with('.') && !name.starts_with('_')
}

/// Reads one footer; checks required columns are present and castable. Returns the row count.
async fn check_file(store: &StoreRef, meta: object_store::ObjectMeta, cols: &[Col]) -> Result<u64> {
    let file = format!(
        "{}://{}/{}",
        store.location.url().scheme(),
        store.location.url().host_str().unwrap_or_default(),
        meta.location
    );
    #[allow(deprecated)]
    let reader = ParquetObjectReader::new(Arc::clone(&store.store), meta.location.clone())
        .with_file_size(meta.size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| {
            Error::InputRejected(format!(
                "{file} is not a readable Parquet file ({e}); re-export it or remove it"
            ))
        })?;
    let schema = builder.schema();
    for Col(name, ty, required) in cols {
        match schema.field_with_name(name) {
            Ok(field) => {
                if !can_cast_types(field.data_type(), ty) {
                    return Err(Error::InputRejected(format!(
                        "{file}: column `{name}` has type {} which cannot be converted to {ty}",
                        field.data_type()
                    )));
                }
            }
            Err(_) if *required => {
                return Err(Error::InputRejected(format!(
                    "{file}: required column `{name}` is missing (columns present: {})",
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            Err(_) => {}
        }
    }
    Ok(builder.metadata().file_metadata().num_rows().max(0) as u64)
}

fn register_empty(ctx: &SessionContext, name: &str, cols: &[Col]) -> Result<()> {
    let schema = schema_of(cols);
    let table = MemTable::try_new(schema, vec![vec![]])
        .map_err(|e| Error::engine(format!("creating empty {name}"), e))?;
    ctx.register_table(name, Arc::new(table))
        .map_err(|e| Error::engine(format!("registering {name}"), e))?;
    Ok(())
}

/// The order rules, in order: the first that fails names the reason. `after_cutoff` rows are
/// not rejects: they are simply in this run's future.
fn order_reason_sql(cutoff_sql: &str) -> String {
    let statuses = ORDER_STATUSES.map(|s| format!("'{s}'")).join(", ");
    format!(
        "CASE \
           WHEN order_ts IS NULL THEN 'null_timestamp' \
           WHEN order_ts >= {cutoff_sql} THEN 'after_cutoff' \
           WHEN order_id IS NULL OR order_id = '' THEN 'null_order_id' \
           WHEN customer_id IS NULL OR customer_id = '' THEN 'null_customer_id' \
           WHEN NOT (amount >= 0 AND amount < 1e15) OR amount IS NULL THEN 'invalid_amount' \
           WHEN status IS NULL OR lower(trim(status)) NOT IN ({statuses}) THEN 'unknown_status' \
         END"
    )
}

async fn clean_orders(
    ctx: &SessionContext,
    mut report: InputReport,
    cutoff_sql: &str,
) -> Result<InputReport> {
    let reason = order_reason_sql(cutoff_sql);
    // Valid rows, one per order_id: the earliest version wins, ties broken on every column so
    // the choice does not depend on file order.
    let clean = format!(
        "SELECT order_id, customer_id, order_ts, amount, status, discount_amount, channel FROM ( \
           SELECT order_id, customer_id, order_ts, amount, lower(trim(status)) AS status, \
                  CASE WHEN discount_amount >= 0 AND discount_amount < 1e15 THEN discount_amount ELSE 0.0 END AS discount_amount, \
                  channel, \
                  row_number() OVER (PARTITION BY order_id \
                    ORDER BY order_ts, customer_id, amount, status, discount_amount, channel) AS version \
           FROM orders_raw WHERE ({reason}) IS NULL \
         ) WHERE version = 1"
    );
    let what = format!("reading orders from {}", report.location);
    let kept = engine::materialize(ctx, "orders", &clean, &what).await? as u64;

    let counts = format!("SELECT {reason} AS reason, count(*) AS n FROM orders_raw GROUP BY 1");
    let by_reason = reason_counts(ctx, &counts, "counting order rejects").await?;
    let mut valid = 0;
    for (reason, n) in by_reason {
        match reason.as_deref() {
            None => valid = n,
            Some("after_cutoff") => report.rows_after_cutoff = n,
            Some(r) => {
                report.rejected.insert(r.to_string(), n);
            }
        }
    }
    if valid > kept {
        report
            .rejected
            .insert("duplicate_order_id".into(), valid - kept);
    }
    report.rows_used = kept;
    Ok(report)
}

async fn count_events(
    ctx: &SessionContext,
    mut report: InputReport,
    cutoff_sql: &str,
) -> Result<InputReport> {
    let types = EVENT_TYPES.map(|s| format!("'{s}'")).join(", ");
    // One row of filtered counts: far cheaper than grouping 50M+ rows by a reason string.
    // The conditions mirror the rules in order (each row counts for its first failing rule).
    let rules = [
        ("null_timestamp", "event_ts IS NULL".to_string()),
        ("after_cutoff", format!("event_ts >= {cutoff_sql}")),
        (
            "anonymous",
            "customer_id IS NULL OR customer_id = ''".to_string(),
        ),
        ("null_session_id", "session_id IS NULL".to_string()),
        (
            "unknown_event_type",
            format!("event_type IS NULL OR event_type NOT IN ({types})"),
        ),
    ];
    let mut earlier = Vec::new();
    let mut columns = vec!["count(*)".to_string()];
    for (_, cond) in &rules {
        let mut all = earlier.clone();
        all.push(format!("({cond})"));
        columns.push(format!("count(*) FILTER (WHERE {})", all.join(" AND ")));
        earlier.push(format!("NOT coalesce({cond}, false)"));
    }
    let sql = format!("SELECT {} FROM events_raw", columns.join(", "));
    let counts = single_row_counts(ctx, &sql, "counting events").await?;
    let mut rejected_or_excluded = 0;
    for ((reason, _), n) in rules.iter().zip(&counts[1..]) {
        rejected_or_excluded += n;
        if *n == 0 {
            continue;
        }
        match *reason {
            "after_cutoff" => report.rows_after_cutoff = *n,
            r => {
                report.rejected.insert(r.to_string(), *n);
            }
        }
    }
    report.rows_used = counts[0].saturating_sub(rejected_or_excluded);
    Ok(report)
}

async fn clean_customers(
    ctx: &SessionContext,
    mut report: InputReport,
    cutoff_sql: &str,
) -> Result<InputReport> {
    let sql = format!(
        "SELECT customer_id, email, signup_ts, country, marketing_opt_in FROM ( \
           SELECT *, row_number() OVER (PARTITION BY customer_id \
             ORDER BY signup_ts NULLS LAST, email, country, marketing_opt_in) AS version \
           FROM customers_raw \
           WHERE customer_id IS NOT NULL AND customer_id <> '' \
             AND (signup_ts IS NULL OR signup_ts < {cutoff_sql}) \
         ) WHERE version = 1"
    );
    let what = format!("reading customers from {}", report.location);
    report.rows_used = engine::materialize(ctx, "customers", &sql, &what).await? as u64;
    Ok(report)
}

async fn reason_counts(
    ctx: &SessionContext,
    sql: &str,
    what: &str,
) -> Result<Vec<(Option<String>, u64)>> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Int64Type;
    let batches = engine::collect(ctx, sql, what).await?;
    let mut out = Vec::new();
    for b in &batches {
        let reasons = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8)
            .map_err(|e| Error::engine(what, e.into()))?;
        let reasons = reasons.as_string::<i32>();
        let counts = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let r = (!reasons.is_null(i)).then(|| reasons.value(i).to_string());
            out.push((r, counts.value(i).max(0) as u64));
        }
    }
    Ok(out)
}

async fn single_row_counts(ctx: &SessionContext, sql: &str, what: &str) -> Result<Vec<u64>> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    let batches = engine::collect(ctx, sql, what).await?;
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| Error::Model(format!("{what}: no result row")))?;
    Ok(batch
        .columns()
        .iter()
        .map(|c| c.as_primitive::<Int64Type>().value(0).max(0) as u64)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_files() {
        assert!(is_data_file("a/dt=2024-01/part-0.parquet"));
        assert!(!is_data_file("a/_SUCCESS"));
        assert!(!is_data_file("a/_tmp.parquet"));
        assert!(!is_data_file("a/.part.parquet.crc"));
        assert!(!is_data_file("a/readme.txt"));
    }

    #[test]
    fn canonical_types_accept_producer_variants() {
        for from in [
            DataType::Timestamp(TimeUnit::Millisecond, None),
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            DataType::Timestamp(TimeUnit::Second, Some("+02:00".into())),
        ] {
            assert!(can_cast_types(&from, &TS), "{from}");
        }
        for from in [
            DataType::Decimal128(12, 2),
            DataType::Float32,
            DataType::Int64,
        ] {
            assert!(can_cast_types(&from, &DataType::Float64), "{from}");
        }
        for from in [
            DataType::LargeUtf8,
            DataType::Utf8View,
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        ] {
            assert!(can_cast_types(&from, &DataType::Utf8), "{from}");
        }
    }
}
