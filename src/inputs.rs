//! Inputs: list and check every Parquet file, register orders / events / customers as
//! DataFusion tables with one canonical schema, apply the as-of cut, clean and count.
//!
//! After [`register`], SQL sees these tables with fixed types (timestamps are zone-less
//! microseconds meaning UTC, money is Float64, text is Utf8), all views over the files,
//! nothing held in memory:
//! - `orders`     — valid orders before the cut-off, one row per order_id (counted here);
//! - `events_raw` — every event in the files: the rules, the counts and the as-of cut are
//!   applied by the clickstream's single pass (queries/sessions.sql, run by the features);
//! - `customers`  — one row per customer_id, signed up before the cut-off (counted here).
//!
//! Producers may disagree on timestamp unit and zone, Decimal vs Float64, string encodings:
//! each file's columns are cast to the canonical type by the engine. A missing required column
//! or a type that cannot be cast is an [`Error::InputRejected`] naming the file and column.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::compute::can_cast_types;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
// ParquetObjectReader is deprecated in parquet 59 in favour of a hand-written AsyncFileReader;
// it still does exactly what we need (footer only), so we keep it until DataFusion moves on.
#[allow(deprecated)]
use datafusion::parquet::arrow::async_reader::ParquetObjectReader;
use datafusion::parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::config::{Location, OnCorruptFile, Pipeline};
use crate::engine;
use crate::error::{Error, Result};
use crate::rules::{self, Bounds, Input};
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
/// Events. Strings stay Utf8: reading them as Utf8View or `event_type` as a dictionary was not
/// faster here (200,000 customers: the rollup's partial aggregate 7.2 s with views against
/// 7.0 s; the dictionary is built by a cast after decoding, which tripled the scan).
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
    /// Rows dropped, by reason (`anonymous` events are counted here but are not errors).
    pub rejected: BTreeMap<String, u64>,
    /// Unreadable files left out (`quality.on_corrupt_file = "skip"`).
    pub skipped_files: Vec<String>,
    /// The readable files, in listing order (the incremental state is keyed by them).
    #[serde(skip)]
    pub sources: Vec<SourceFile>,
}

/// One readable input file: its URL, identity (path, size, e-tag, last modified) and rows.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Its URL, as the engine reads it.
    pub url: String,
    /// What the store says of it.
    pub meta: object_store::ObjectMeta,
    /// Rows in it (Parquet metadata).
    pub rows: u64,
}

impl SourceFile {
    /// Its identity: URL, size, e-tag and last-modified time (a file rewritten in place gets
    /// another).
    pub fn identity(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}",
            self.url,
            self.meta.size,
            self.meta.e_tag.as_deref().unwrap_or("-"),
            self.meta.last_modified.to_rfc3339()
        )
    }
}

impl InputReport {
    /// Rows the run looked at: every row in the files before the cut-off.
    pub fn rows_before_cutoff(&self) -> u64 {
        self.rows_in_files.saturating_sub(self.rows_after_cutoff)
    }

    /// Rejected rows that are errors (everything but `anonymous` events).
    pub fn rows_rejected(&self) -> u64 {
        self.rejected
            .iter()
            .filter(|(r, _)| rules::is_error(r))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Reports for every input.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Inputs {
    /// The cut-off and floor the rules used.
    #[serde(skip)]
    pub bounds: Bounds,
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
    let bounds = Bounds {
        cutoff: cutoff_sql.to_string(),
        floor: format!(
            "TIMESTAMP '{} 00:00:00'",
            pipeline.earliest_date.format("%Y-%m-%d")
        ),
    };
    // The three inputs side by side: the orders' and customers' counting passes, and the
    // clickstream's footers, which are only listed and checked here; its one pass (rules,
    // counts, sessions) is part of the features (queries/sessions.sql), which fill in the
    // counts. Errors are reported in this order.
    let orders = async {
        let orders = register_raw(
            ctx,
            pipeline,
            "orders_raw",
            &pipeline.orders,
            "inputs.orders",
            ORDERS,
        )
        .await?;
        clean_orders(ctx, orders, &bounds).await
    };
    let events = async {
        match &pipeline.events {
            Some(loc) => Ok(Some(
                register_raw(ctx, pipeline, "events_raw", loc, "inputs.events", EVENTS).await?,
            )),
            None => register_empty(ctx, "events_raw", EVENTS).map(|()| None),
        }
    };
    let customers = async {
        match &pipeline.customers {
            Some(loc) => {
                let report = register_raw(
                    ctx,
                    pipeline,
                    "customers_raw",
                    loc,
                    "inputs.customers",
                    CUSTOMERS,
                )
                .await?;
                Ok(Some(clean_customers(ctx, report, cutoff_sql).await?))
            }
            None => {
                register_empty(ctx, "customers_raw", CUSTOMERS)?;
                clean_customers(ctx, InputReport::default(), cutoff_sql).await?;
                Ok(None)
            }
        }
    };
    let (orders, events, customers): (Result<_>, Result<_>, Result<_>) =
        futures::join!(orders, events, customers);
    let (orders, events, customers) = (orders?, events?, customers?);
    Ok(Inputs {
        bounds,
        orders,
        events,
        customers,
    })
}

/// Lists the Parquet files under `location`, checks each footer against `cols`, and registers
/// them as a listing table `name` with the canonical schema.
async fn register_raw(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    name: &str,
    location: &Location,
    key: &str,
    cols: &[Col],
) -> Result<InputReport> {
    let skip_corrupt = pipeline.quality.on_corrupt_file == OnCorruptFile::Skip;
    let store = storage::open(ctx, location, &pipeline.storage)?;
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
    // In listing order, so that skipped files are reported in a stable order.
    let checks = futures::stream::iter(files.iter().cloned().map(|meta| {
        let store = store.clone();
        async move { check_file(&store, meta, cols).await }
    }))
    .buffered(16)
    .collect::<Vec<_>>()
    .await;
    let mut rows = Vec::with_capacity(checks.len());
    let mut good = Vec::with_capacity(checks.len());
    let mut skipped = Vec::new();
    for (meta, check) in files.iter().zip(checks) {
        match check {
            Ok(n) => {
                rows.push(n);
                good.push(meta.clone());
            }
            Err(FileProblem::Unreadable(file, e)) if skip_corrupt => {
                tracing::warn!(file, error = e, "skipping an unreadable Parquet file");
                skipped.push(file);
            }
            Err(FileProblem::Unreadable(file, e)) => {
                return Err(Error::InputRejected(format!(
                    "{file} is not a readable Parquet file ({e}); re-export it, remove it, or set \
                     quality.on_corrupt_file = \"skip\" to leave such files out"
                )))
            }
            Err(FileProblem::Schema(msg)) => return Err(Error::InputRejected(msg)),
        }
    }
    if good.is_empty() {
        return Err(Error::InputRejected(format!(
            "`{key}`: none of the {} Parquet files at {} is readable",
            files.len(),
            location.as_str()
        )));
    }

    let urls = if skipped.is_empty() {
        vec![location.as_str().to_string()]
    } else {
        // Only the readable files.
        good.iter().map(|m| file_url(&store, &m.location)).collect()
    };
    register_files(ctx, name, &urls, cols).await?;
    let sources = good
        .iter()
        .zip(&rows)
        .map(|(meta, &rows)| SourceFile {
            url: file_url(&store, &meta.location),
            meta: meta.clone(),
            rows,
        })
        .collect();

    Ok(InputReport {
        location: location.as_str().to_string(),
        files: good.len(),
        bytes: good.iter().map(|m| m.size).sum(),
        rows_in_files: rows.iter().sum(),
        skipped_files: skipped,
        sources,
        ..Default::default()
    })
}

/// Registers the Parquet files (or directories) at `urls` as table `name` with the canonical
/// schema of `cols`; with an erasure list in force, `name` is a view that leaves the erased
/// customers out, over `<name>_files`.
async fn register_files(
    ctx: &SessionContext,
    name: &str,
    urls: &[String],
    cols: &[Col],
) -> Result<()> {
    let schema = schema_of(cols);
    let table = engine::parquet_table(urls, Arc::clone(&schema), name)?;
    let files = format!("{name}_files");
    match crate::privacy::filtered_view(ctx, &files, &schema, urls) {
        Some(view) => {
            // The erased customers leave here, before anything reads the input.
            engine::replace_table(ctx, &files, table)?;
            ctx.deregister_table(name)
                .map_err(|e| Error::engine(format!("registering {name}"), e))?;
            engine::create_view(ctx, name, &view, "leaving out the erased customers").await?;
        }
        None => engine::replace_table(ctx, name, table)?,
    }
    Ok(())
}

/// Registers orders files (URLs of single files) as table `name`, as [`register`] registers
/// `orders_raw`: the canonical schema, erased customers left out.
pub async fn register_order_files(ctx: &SessionContext, name: &str, urls: &[String]) -> Result<()> {
    register_files(ctx, name, urls, ORDERS).await
}

/// Registers customers files (URLs of single files) as table `name`, as [`register`]
/// registers `customers_raw`.
pub async fn register_customer_files(
    ctx: &SessionContext,
    name: &str,
    urls: &[String],
) -> Result<()> {
    register_files(ctx, name, urls, CUSTOMERS).await
}

/// Registers event files (URLs of single files) as table `name`, as [`register`] registers
/// `events_raw`: the canonical schema, erased customers left out.
pub async fn register_event_files(ctx: &SessionContext, name: &str, urls: &[String]) -> Result<()> {
    register_files(ctx, name, urls, EVENTS).await
}

/// Registers an empty `events_raw` (the canonical schema, no rows).
pub fn register_no_events(ctx: &SessionContext) -> Result<()> {
    ctx.deregister_table("events_raw")
        .map_err(|e| Error::engine("registering events_raw", e))?;
    register_empty(ctx, "events_raw", EVENTS)
}

/// Why a file cannot be used.
enum FileProblem {
    /// Not Parquet, or truncated: (file URL, reason).
    Unreadable(String, String),
    /// A required column missing or of an unconvertible type (the whole message).
    Schema(String),
}

/// The URL of an object of `store`, for messages and for the engine.
fn file_url(store: &StoreRef, path: &object_store::path::Path) -> String {
    format!(
        "{}://{}/{}",
        store.location.url().scheme(),
        store.location.url().host_str().unwrap_or_default(),
        path
    )
}

/// Parquet data files: `*.parquet`, skipping hidden and `_`-prefixed names (Spark/Hadoop markers).
fn is_data_file(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.ends_with(".parquet") && !name.starts_with('.') && !name.starts_with('_')
}

/// Reads one footer; checks required columns are present and castable. Returns the row count.
async fn check_file(
    store: &StoreRef,
    meta: object_store::ObjectMeta,
    cols: &[Col],
) -> std::result::Result<u64, FileProblem> {
    let file = file_url(store, &meta.location);
    #[allow(deprecated)]
    let reader = ParquetObjectReader::new(Arc::clone(&store.store), meta.location.clone())
        .with_file_size(meta.size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| FileProblem::Unreadable(file.clone(), e.to_string()))?;
    check_schema(&file, builder.schema(), cols).map_err(FileProblem::Schema)?;
    Ok(builder.metadata().file_metadata().num_rows().max(0) as u64)
}

/// Checks a file's schema against an input's columns: every required column present, every
/// present column convertible to its canonical type; extra columns are ignored.
fn check_schema(file: &str, schema: &Schema, cols: &[Col]) -> std::result::Result<(), String> {
    for Col(name, ty, required) in cols {
        match schema.field_with_name(name) {
            Ok(field) => {
                if !can_cast_types(field.data_type(), ty) {
                    return Err(format!(
                        "{file}: column `{name}` has type {} which cannot be converted to {ty}",
                        field.data_type()
                    ));
                }
            }
            Err(_) if *required => {
                return Err(format!(
                    "{file}: required column `{name}` is missing (columns present: {})",
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
            Err(_) => {}
        }
    }
    Ok(())
}

fn register_empty(ctx: &SessionContext, name: &str, cols: &[Col]) -> Result<()> {
    let schema = schema_of(cols);
    // An EmptyTable, not a MemTable: a cluster can be sent one.
    let table = datafusion::datasource::empty::EmptyTable::new(schema);
    ctx.register_table(name, Arc::new(table))
        .map_err(|e| Error::engine(format!("registering {name}"), e))?;
    Ok(())
}

/// Valid orders numbered per `order_id` (`version` 1 is kept; the others are duplicates): the
/// earliest version wins, ties broken on every column so the choice does not depend on file
/// order. One definition for the kept rows and the rejected ones.
fn order_versions_sql(b: &Bounds) -> String {
    format!(
        "SELECT *, row_number() OVER (PARTITION BY order_id \
           ORDER BY order_ts, customer_id, amount, status, discount_amount, channel) AS version \
         FROM orders_raw WHERE ({}) IS NULL",
        rules::reason_sql(Input::Orders, b)
    )
}

/// The valid rows of `source` (orders in the canonical schema) as `orders` holds them.
fn clean_orders_sql(source: &str) -> String {
    format!(
        "SELECT order_id, customer_id, order_ts, amount, lower(trim(status)) AS status, \
                CASE WHEN discount_amount >= 0 AND discount_amount < 1e15 THEN discount_amount ELSE 0.0 END AS discount_amount, \
                channel \
         FROM {source}"
    )
}

/// `orders` as [`register`] defines it, over table `table` (rows of orders files in the
/// canonical schema) instead of every file, when no order id has several valid rows: a row
/// is kept or rejected on its own values alone.
pub fn orders_without_duplicates_sql(table: &str, bounds: &Bounds) -> String {
    clean_orders_sql(&format!(
        "{table} WHERE ({}) IS NULL",
        rules::reason_sql(Input::Orders, bounds)
    ))
}

/// Counts the orders by reason and registers `orders` as a view over the files: the valid
/// rows, one per order_id. Only when some order_id has several valid rows is the versions
/// window (a sort of every order) part of the view; otherwise it is a plain filter.
async fn clean_orders(
    ctx: &SessionContext,
    mut report: InputReport,
    bounds: &Bounds,
) -> Result<InputReport> {
    let reason = rules::reason_sql(Input::Orders, bounds);
    let (counted_reasons, valid_rows, distinct) = order_counts(ctx, &reason).await?;
    let mut counted = counted_reasons;
    let mut valid = (valid_rows, distinct);
    if valid.0 > valid.1 {
        let exact =
            format!("SELECT count(DISTINCT order_id) FROM orders_raw WHERE ({reason}) IS NULL");
        valid.1 = single_row_counts(ctx, &exact, "counting distinct order ids").await?[0];
    }
    let (rows, kept) = valid;
    let view = if rows > kept {
        counted.insert(rules::DUPLICATE_ORDER_ID.into(), rows - kept);
        clean_orders_sql(&format!(
            "({}) WHERE version = 1",
            order_versions_sql(bounds)
        ))
    } else {
        // The definition a night applies to its changed customers' rows (src/base.rs).
        orders_without_duplicates_sql("orders_raw", bounds)
    };
    engine::create_view(ctx, "orders", &view, "registering orders").await?;
    report.count_reasons(counted);
    report.rows_used = kept;
    Ok(report)
}

impl InputReport {
    /// Records rows per reason: `after_cutoff` as [`InputReport::rows_after_cutoff`], every
    /// other reason (a rejection, or `anonymous`) in [`InputReport::rejected`].
    pub fn count_reasons(&mut self, counts: BTreeMap<String, u64>) {
        for (reason, n) in counts {
            if n == 0 {
                continue;
            }
            if reason == rules::AFTER_CUTOFF {
                self.rows_after_cutoff = n;
            } else {
                self.rejected.insert(reason, n);
            }
        }
    }

    /// For an input whose rows are all counted by reason: the rows used are the others.
    pub fn use_the_rest(&mut self) {
        let excluded: u64 = self.rows_after_cutoff + self.rejected.values().sum::<u64>();
        self.rows_used = self.rows_in_files.saturating_sub(excluded);
    }
}

/// Writes the rejected rows of orders and events (with a `reason` column) under `dir`
/// (e.g. `_rejected/run_date=D/`), one file per input named with `run_id`. Events are scanned
/// again only from table `events_scan` (the files this run read, when their counts found
/// errors: src/state.rs); `anonymous` and `after_cutoff` rows are not rejects and are not
/// written. Returns the URLs written.
pub async fn write_rejected(
    ctx: &SessionContext,
    root: &StoreRef,
    dir: &str,
    run_id: &str,
    inputs: &Inputs,
    events_scan: Option<&str>,
) -> Result<Vec<String>> {
    let bounds = &inputs.bounds;
    let mut written = Vec::new();
    if inputs.orders.rows_rejected() > 0 {
        let reason = rules::reason_sql(Input::Orders, bounds);
        let sql = format!(
            "SELECT order_id, customer_id, order_ts, amount, status, discount_amount, channel, reason FROM ( \
               SELECT *, {reason} AS reason FROM orders_raw) \
             WHERE reason IS NOT NULL AND reason <> '{after}' \
             UNION ALL \
             SELECT order_id, customer_id, order_ts, amount, status, discount_amount, channel, \
                    '{duplicate}' AS reason FROM ({versions}) \
             WHERE version > 1 \
             ORDER BY reason, order_id, order_ts",
            after = rules::AFTER_CUTOFF,
            duplicate = rules::DUPLICATE_ORDER_ID,
            versions = order_versions_sql(bounds)
        );
        written.push(
            write_query(
                ctx,
                root,
                &format!("{dir}orders/part-{run_id}.parquet"),
                &sql,
            )
            .await?,
        );
    }
    if let Some(table) = events_scan {
        let sql = format!(
            "SELECT event_id, customer_id, session_id, event_ts, event_type, reason FROM ( \
               SELECT *, {} AS reason FROM {table}) \
             WHERE reason IS NOT NULL AND reason NOT IN ('{after}', '{anonymous}') \
             ORDER BY reason, event_ts, event_id",
            rules::reason_sql(Input::Events, bounds),
            after = rules::AFTER_CUTOFF,
            anonymous = rules::ANONYMOUS
        );
        written.push(
            write_query(
                ctx,
                root,
                &format!("{dir}events/part-{run_id}.parquet"),
                &sql,
            )
            .await?,
        );
    }
    Ok(written)
}

/// Runs `sql` and writes its result as one Parquet file `name` under `root`, streaming.
async fn write_query(
    ctx: &SessionContext,
    root: &StoreRef,
    name: &str,
    sql: &str,
) -> Result<String> {
    use datafusion::dataframe::DataFrameWriteOptions;
    let url = root.url_of(name);
    let what = format!("writing {url}");
    ctx.sql(sql)
        .await
        .map_err(|e| Error::engine(format!("planning {what}"), e))?
        .write_parquet(
            &url,
            DataFrameWriteOptions::new().with_single_file_output(true),
            None,
        )
        .await
        .map_err(|e| Error::engine(what, e))?;
    Ok(url)
}

/// The reject reason of customers rows beyond the first of their id.
pub const DUPLICATE_CUSTOMER_ID: &str = "duplicate_customer_id";

/// The condition a valid customers row meets.
fn valid_customers_sql(cutoff_sql: &str) -> String {
    format!(
        "customer_id IS NOT NULL AND customer_id <> '' \
         AND (signup_ts IS NULL OR signup_ts < {cutoff_sql})"
    )
}

/// `customers` as [`register`] defines it over table `table` (rows of customers files in the
/// canonical schema): the valid rows, the earliest sign-up of each id when some id has several
/// (`duplicates`). The same rows per customer over any table holding all of its rows.
pub fn customers_sql(table: &str, cutoff_sql: &str, duplicates: bool) -> String {
    let valid = valid_customers_sql(cutoff_sql);
    let source = if duplicates {
        format!(
            "(SELECT *, row_number() OVER (PARTITION BY customer_id \
                ORDER BY signup_ts NULLS LAST, email, country, marketing_opt_in) AS version \
              FROM {table} WHERE {valid}) WHERE version = 1"
        )
    } else {
        format!("{table} WHERE {valid}")
    };
    format!("SELECT customer_id, email, signup_ts, country, marketing_opt_in FROM {source}")
}

/// Counts the customers rows and registers `customers` as a view over the files: one row per
/// customer_id signed up before the cut-off (the earliest sign-up wins; the versions window
/// only when some id has several rows).
async fn clean_customers(
    ctx: &SessionContext,
    mut report: InputReport,
    cutoff_sql: &str,
) -> Result<InputReport> {
    let c = customer_counts(ctx, cutoff_sql, &valid_customers_sql(cutoff_sql)).await?;
    let (rows, ids) = (c[3], c[4]);
    let view = customers_sql("customers_raw", cutoff_sql, rows > ids);
    engine::create_view(ctx, "customers", &view, "registering customers").await?;
    report.rows_used = ids;
    report.rows_after_cutoff = c[1];
    for (reason, n) in [
        ("null_customer_id", c[2]),
        (DUPLICATE_CUSTOMER_ID, rows - ids),
    ] {
        if n > 0 {
            report.rejected.insert(reason.to_string(), n);
        }
    }
    Ok(report)
}

/// Counts (never values) of the customers rows: all, signed up after the cut-off, without an
/// id, valid, and the valid rows' distinct ids. One pass, as [`order_counts`]: the distinct
/// ids are counted from 64-bit digests (as many as rows proves them distinct; otherwise
/// `count(DISTINCT …)` counts them exactly), not by `count(DISTINCT …)` over one group, which
/// hashed every id on one core (0.18 s of the 200,000 night's 0.30 s inputs stage).
async fn customer_counts(ctx: &SessionContext, cutoff_sql: &str, valid: &str) -> Result<[u64; 5]> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::UInt64Type;
    let what = "counting customers";
    let sql = format!(
        "SELECT coalesce(signup_ts >= {cutoff_sql}, false) AS after, \
                coalesce((customer_id IS NULL OR customer_id = '') \
                  AND (signup_ts IS NULL OR signup_ts < {cutoff_sql}), false) AS no_id, \
                coalesce({valid}, false) AS valid, \
                row_digest(customer_id) AS h \
         FROM customers_raw"
    );
    let mut running = engine::stream(ctx, &sql, what).await?;
    let (mut rows, mut after, mut no_id) = (0u64, 0u64, 0u64);
    let mut digests: Vec<u64> = Vec::new();
    while let Some(batch) = running.stream.next().await {
        let batch = batch.map_err(|e| Error::engine(what, e))?;
        let flag = |c: usize| batch.column(c).as_boolean().clone();
        let (late, missing, ok) = (flag(0), flag(1), flag(2));
        let hashes = batch.column(3).as_primitive::<UInt64Type>().values();
        rows += batch.num_rows() as u64;
        after += late.true_count() as u64;
        no_id += missing.true_count() as u64;
        digests.extend((0..ok.len()).filter(|&i| ok.value(i)).map(|i| hashes[i]));
    }
    running.done();
    let valid_rows = digests.len() as u64;
    let mut ids = distinct(digests);
    if ids < valid_rows {
        let exact = format!("SELECT count(DISTINCT customer_id) FROM customers_raw WHERE {valid}");
        ids = single_row_counts(ctx, &exact, "counting distinct customer ids").await?[0];
    }
    Ok([rows, after, no_id, valid_rows, ids])
}

/// One pass over the orders: rows per rejection reason, the valid rows, and how many distinct
/// 64-bit digests of their order_ids there are. As many digests as rows proves the ids
/// distinct; fewer (duplicates, or a collision) are counted again exactly by the caller.
/// The digests are sorted here rather than counted by `count(DISTINCT …)`, whose single group
/// merged two hash sets of 4 M digests on one core: 3.1 s of a 4.2 s inputs stage at
/// 1,000,000 customers (EXPLAIN ANALYZE, FinalPartitioned aggregation_time).
async fn order_counts(
    ctx: &SessionContext,
    reason: &str,
) -> Result<(BTreeMap<String, u64>, u64, u64)> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::UInt64Type;
    let what = "counting orders";
    let sql = format!(
        "SELECT arrow_cast({reason}, 'Utf8') AS reason, row_digest(order_id) AS h FROM orders_raw"
    );
    let mut running = engine::stream(ctx, &sql, what).await?;
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    let mut digests: Vec<u64> = Vec::new();
    while let Some(batch) = running.stream.next().await {
        let batch = batch.map_err(|e| Error::engine(what, e))?;
        let reasons = batch.column(0).as_string::<i32>();
        let hashes = batch.column(1).as_primitive::<UInt64Type>().values();
        if reasons.null_count() == reasons.len() {
            digests.extend_from_slice(hashes);
            continue;
        }
        for (i, h) in hashes.iter().enumerate() {
            if reasons.is_null(i) {
                digests.push(*h);
            } else {
                *counted.entry(reasons.value(i).to_string()).or_default() += 1;
            }
        }
    }
    running.done();
    let rows = digests.len() as u64;
    Ok((counted, rows, distinct(digests)))
}

/// How many distinct values `digests` holds: bucketed by their top byte (digests are uniform),
/// each bucket sorted on its own, the buckets shared among the cores. One sort of them all
/// was 13% of the inputs stage's CPU at 200,000 customers (`perf record`), on one core.
fn distinct(digests: Vec<u64>) -> u64 {
    let mut buckets: Vec<Vec<u64>> = (0..256)
        .map(|_| Vec::with_capacity(digests.len() / 200))
        .collect();
    for h in digests {
        buckets[(h >> 56) as usize].push(h);
    }
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per_thread = buckets.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let counts: Vec<_> = buckets
            .chunks_mut(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter_mut()
                        .map(|b| {
                            b.sort_unstable();
                            b.dedup();
                            b.len() as u64
                        })
                        .sum::<u64>()
                })
            })
            .collect();
        counts
            .into_iter()
            .map(|c| c.join().expect("counting distinct digests"))
            .sum()
    })
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

    #[tokio::test]
    async fn customers_rows_are_counted_by_reason_and_distinct_id() {
        use datafusion::arrow::array::{BooleanArray, StringArray, TimestampMicrosecondArray};
        let ctx = SessionContext::new();
        crate::engine::register_functions(&ctx);
        let day = 86_400_000_000i64;
        let cutoff_sql = "TIMESTAMP '1970-01-11 00:00:00'";
        // ids: a, b twice (a duplicate), c after the cut-off, null and '' (no id), d with no
        // sign-up date, '' after the cut-off (counted after the cut-off only).
        let ids = [
            Some("a"),
            Some("b"),
            Some("b"),
            Some("c"),
            None,
            Some(""),
            Some("d"),
            Some(""),
        ];
        let signups = [
            Some(day),
            Some(2 * day),
            Some(3 * day),
            Some(12 * day),
            Some(day),
            Some(day),
            None,
            Some(11 * day),
        ];
        let schema = schema_of(CUSTOMERS);
        let columns: Vec<datafusion::arrow::array::ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> datafusion::arrow::array::ArrayRef {
                match f.name().as_str() {
                    "customer_id" => Arc::new(StringArray::from(ids.to_vec())),
                    "signup_ts" => Arc::new(
                        TimestampMicrosecondArray::from(signups.to_vec()).with_timezone("UTC"),
                    ),
                    "marketing_opt_in" => Arc::new(BooleanArray::from(vec![true; ids.len()])),
                    _ => Arc::new(StringArray::from(vec![Some("x"); ids.len()])),
                }
            })
            .collect();
        let columns = columns
            .into_iter()
            .zip(schema.fields())
            .map(|(c, f)| datafusion::arrow::compute::cast(&c, f.data_type()).unwrap())
            .collect();
        let batch =
            datafusion::arrow::array::RecordBatch::try_new(Arc::clone(&schema), columns).unwrap();
        crate::engine::register_batches(&ctx, "customers_raw", schema, vec![batch], "test")
            .await
            .unwrap();
        let report = clean_customers(&ctx, InputReport::default(), cutoff_sql)
            .await
            .unwrap();
        assert_eq!(report.rows_after_cutoff, 2);
        assert_eq!(report.rows_used, 3, "a, b and d");
        let want: BTreeMap<String, u64> = [
            ("duplicate_customer_id".to_string(), 1),
            ("null_customer_id".to_string(), 2),
        ]
        .into();
        assert_eq!(report.rejected, want);
        assert_eq!(
            customer_counts(
                &ctx,
                cutoff_sql,
                "customer_id IS NOT NULL AND customer_id <> '' \
                 AND (signup_ts IS NULL OR signup_ts < TIMESTAMP '1970-01-11 00:00:00')"
            )
            .await
            .unwrap(),
            [8, 2, 2, 4, 3]
        );
    }

    #[test]
    fn distinct_counts_repeats_once() {
        assert_eq!(distinct(Vec::new()), 0);
        let mut v: Vec<u64> = (0..10_000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        v.extend_from_within(..777);
        v.push(u64::MAX);
        v.push(u64::MAX);
        v.push(0);
        assert_eq!(distinct(v), 10_000 + 1);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Types producers write, castable or not.
        fn data_type() -> impl Strategy<Value = DataType> {
            prop::sample::select(vec![
                DataType::Utf8,
                DataType::LargeUtf8,
                DataType::Utf8View,
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                DataType::Dictionary(Box::new(DataType::UInt8), Box::new(DataType::LargeUtf8)),
                DataType::Int32,
                DataType::Int64,
                DataType::UInt64,
                DataType::Float32,
                DataType::Float64,
                DataType::Decimal128(12, 2),
                DataType::Decimal256(40, 4),
                DataType::Boolean,
                DataType::Date32,
                DataType::Timestamp(TimeUnit::Second, None),
                DataType::Timestamp(TimeUnit::Millisecond, Some("+02:00".into())),
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                DataType::Binary,
                DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
                DataType::Struct(vec![Field::new("a", DataType::Utf8, true)].into()),
                DataType::Null,
            ])
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any mix of present, missing, extra and oddly typed columns: a verdict, never a
            /// panic; an accepted file has every required column, each convertible.
            #[test]
            fn schema_unification_never_panics(
                which in prop::sample::select(vec![0usize, 1, 2]),
                cols in prop::collection::vec((any::<bool>(), data_type()), 7),
                extra in prop::collection::vec(data_type(), 0..3),
            ) {
                let input = [ORDERS, EVENTS, CUSTOMERS][which];
                let mut fields: Vec<Field> = input
                    .iter()
                    .zip(&cols)
                    .filter(|(_, (present, _))| *present)
                    .map(|(Col(name, _, _), (_, ty))| Field::new(*name, ty.clone(), true))
                    .collect();
                for (i, ty) in extra.iter().enumerate() {
                    fields.push(Field::new(format!("extra_{i}"), ty.clone(), true));
                }
                let schema = Schema::new(fields);
                match check_schema("f.parquet", &schema, input) {
                    Ok(()) => {
                        for Col(name, ty, required) in input {
                            match schema.field_with_name(name) {
                                Ok(f) => prop_assert!(can_cast_types(f.data_type(), ty)),
                                Err(_) => prop_assert!(!required),
                            }
                        }
                    }
                    Err(msg) => prop_assert!(msg.starts_with("f.parquet: ")),
                }
            }
        }
    }

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
