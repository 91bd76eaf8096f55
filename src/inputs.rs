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
use object_store::ObjectStoreExt;
use serde::Serialize;

use crate::config::{Location, OnCorruptFile, Pipeline};
use crate::engine;
use crate::error::{Error, Result};
use crate::features::Cutoff;
use crate::rules::{self, Bounds, Input};
use crate::storage::{self, StoreRef};
use crate::tally::{self, Tally};

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
    /// Files whose rows were counted by the base's tally, not read (src/tally.rs): the
    /// counts are the same as if they had been.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_kept: Option<usize>,
    /// When this run read some of the files only (the others counted by a base's tally):
    /// the table of the files it read and their rows rejected as errors. Their rejected
    /// rows are the ones it writes.
    #[serde(skip)]
    pub partly_read: Option<(&'static str, u64)>,
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
    /// The orders' and customers' tallies, for a base to keep.
    #[serde(skip)]
    pub tallies: Tallies,
}

/// What a run may count from a base instead of every row: the tallies it kept and the orders
/// and customers files (identities) they are of ([`crate::tally`]).
#[derive(Debug, Clone)]
pub struct KeptTallies {
    /// The output root.
    pub root: StoreRef,
    /// The base's directory under it.
    pub dir: String,
    /// The tallies' key ([`crate::tally::key`]): they serve a run whose rules give the same.
    pub key: String,
    /// The orders files they count.
    pub orders: Vec<String>,
    /// The customers files they count.
    pub customers: Vec<String>,
}

/// The base's file of the orders' tally.
pub const ORDERS_TALLY: &str = "orders-tally.bin";
/// The base's file of the customers' tally.
pub const CUSTOMERS_TALLY: &str = "customers-tally.bin";

/// The orders' and customers' tallies of a run: every file's rows at its cut-off.
#[derive(Debug, Clone, Default)]
pub struct Tallies {
    /// [`crate::tally::key`] of the run's rules.
    pub key: String,
    /// Of the orders.
    pub orders: Tally,
    /// Of the customers (empty when not configured).
    pub customers: Tally,
}

/// Registers `orders`, `events` and `customers` in `ctx`, cut at `cutoff`. The orders and
/// customers are counted from `kept` and the files added since when it fits (its key is this
/// run's and its files are all still there, unchanged), by one pass over every row otherwise;
/// `salt` is the erasure list's digest.
pub async fn register(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    cutoff: Cutoff,
    kept: Option<KeptTallies>,
    salt: &str,
) -> Result<Inputs> {
    let cutoff_sql = &cutoff.sql();
    let bounds = Bounds {
        cutoff: cutoff_sql.to_string(),
        floor: format!(
            "TIMESTAMP '{} 00:00:00'",
            pipeline.earliest_date.format("%Y-%m-%d")
        ),
    };
    let key = tally::key(
        &orders_tally_sql("", &bounds),
        &customers_tally_sql(""),
        salt,
    );
    let cut_day = cutoff.day();
    let kept = kept.filter(|k| k.key == key && cutoff.is_midnight());
    // The three inputs side by side: the orders' and customers' counting passes, and the
    // clickstream's footers, which are only listed and checked here; its one pass (rules,
    // counts, sessions) is part of the features (queries/sessions.sql), which fill in the
    // counts. Errors are reported in this order.
    let orders = async {
        let (orders, kept_tally) = futures::join!(
            register_raw(
                ctx,
                pipeline,
                "orders_raw",
                &pipeline.orders,
                "inputs.orders",
                ORDERS,
            ),
            load_tally(kept.as_ref(), ORDERS_TALLY, |k| &k.orders)
        );
        clean_orders(ctx, orders?, &bounds, cut_day, kept_tally).await
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
                let (report, kept_tally) = futures::join!(
                    register_raw(
                        ctx,
                        pipeline,
                        "customers_raw",
                        loc,
                        "inputs.customers",
                        CUSTOMERS,
                    ),
                    load_tally(kept.as_ref(), CUSTOMERS_TALLY, |k| &k.customers)
                );
                let (report, tally) =
                    clean_customers(ctx, report?, cutoff_sql, cut_day, kept_tally).await?;
                Ok((Some(report), tally))
            }
            None => {
                register_empty(ctx, "customers_raw", CUSTOMERS)?;
                let (_, tally) =
                    clean_customers(ctx, InputReport::default(), cutoff_sql, cut_day, None).await?;
                Ok((None, tally))
            }
        }
    };
    let (orders, events, customers): (Result<_>, Result<_>, Result<_>) =
        futures::join!(orders, events, customers);
    let ((orders, orders_tally), events, (customers, customers_tally)) =
        (orders?, events?, customers?);
    Ok(Inputs {
        bounds,
        orders,
        events,
        customers,
        tallies: Tallies {
            key,
            orders: orders_tally,
            customers: customers_tally,
        },
    })
}

/// A base's tally `file` with the files it counts (`files` of `kept`), or None when there is
/// none or it cannot be read (then every row is counted: a cache never fails a run).
async fn load_tally(
    kept: Option<&KeptTallies>,
    file: &str,
    files: impl Fn(&KeptTallies) -> &Vec<String>,
) -> Option<(Tally, Vec<String>)> {
    let kept = kept?;
    let name = format!("{}/{file}", kept.dir);
    let read = async {
        kept.root
            .store
            .get(&kept.root.key(&name))
            .await?
            .bytes()
            .await
    };
    let read: std::result::Result<bytes::Bytes, object_store::Error> = read.await;
    match read {
        Ok(bytes) => match Tally::from_bytes(bytes) {
            Some(tally) => Some((tally, files(kept).clone())),
            None => {
                tracing::warn!(file = name, "a base's tally is damaged; counting every row");
                None
            }
        },
        Err(e) => {
            tracing::warn!(file = name, error = %e, "a base's tally cannot be read; counting every row");
            None
        }
    }
}

/// The tally of an input at `cut_day`: the kept one (with the files it counts) combined with
/// a pass over the files added since (registered as `counting.added_table`), when the files
/// it counts are all still there, unchanged; a pass over `counting.all_table` otherwise.
/// Also, when not every file was read, how many were counted by the kept tally and how many
/// rows of the others were rejected as errors.
async fn tally_input(
    ctx: &SessionContext,
    sources: &[SourceFile],
    kept: Option<(Tally, Vec<String>)>,
    cut_day: i32,
    counting: &Counting,
    sql: impl Fn(&str) -> String,
) -> Result<(Tally, Option<(usize, u64)>)> {
    let Counting {
        cols,
        all_table,
        added_table,
        what,
    } = *counting;
    if let Some((kept, files)) = kept {
        let added = added_since(&files, sources).filter(|_| kept.cut_day() <= cut_day);
        if let Some(added) = added {
            let tally = if added.is_empty() {
                Tally::empty(cut_day)
            } else {
                register_files(ctx, added_table, &added, cols).await?;
                tally::pass(ctx, &sql(added_table), what, cut_day).await?
            };
            let errors = tally
                .counts()
                .reasons
                .iter()
                .filter(|(r, _)| rules::is_error(r))
                .map(|(_, n)| n)
                .sum();
            tracing::debug!(
                kept_files = files.len(),
                added_files = added.len(),
                "{what}: the base's tally and the files added since"
            );
            if let Some(combined) = kept.combine(tally) {
                return Ok((combined, Some((files.len(), errors))));
            }
        }
    }
    Ok((
        tally::pass(ctx, &sql(all_table), what, cut_day).await?,
        None,
    ))
}

/// The URLs of the files of `now` (in listing order) that `before` (identities) lacks; None
/// when a file of `before` is gone or changed.
pub fn added_since(before: &[String], now: &[SourceFile]) -> Option<Vec<String>> {
    let now: Vec<(String, &SourceFile)> = now.iter().map(|f| (f.identity(), f)).collect();
    let present: std::collections::HashSet<&str> = now.iter().map(|(id, _)| id.as_str()).collect();
    if before.iter().any(|id| !present.contains(id.as_str())) {
        return None;
    }
    let before: std::collections::HashSet<&str> = before.iter().map(String::as_str).collect();
    Some(
        now.iter()
            .filter(|(id, _)| !before.contains(id.as_str()))
            .map(|(_, f)| f.url.clone())
            .collect(),
    )
}

/// One input's counting pass: its columns, the table of every file and the table the added
/// files are registered as, what the pass is called.
#[derive(Clone, Copy)]
struct Counting {
    cols: &'static [Col],
    all_table: &'static str,
    added_table: &'static str,
    what: &'static str,
}

const COUNTING_ORDERS: Counting = Counting {
    cols: ORDERS,
    all_table: "orders_raw",
    added_table: "orders_added",
    what: "counting orders",
};

const COUNTING_CUSTOMERS: Counting = Counting {
    cols: CUSTOMERS,
    all_table: "customers_raw",
    added_table: "customers_added",
    what: "counting customers",
};

/// The orders' rows of `table` as a tally reads them: class, day, the order id's digest.
fn orders_tally_sql(table: &str, bounds: &Bounds) -> String {
    format!(
        "SELECT arrow_cast({}, 'Utf8') AS class, \
                arrow_cast(CAST(order_ts AS DATE), 'Int32') AS day, \
                row_digest(order_id) AS h FROM {table}",
        rules::reason_sql_before_any_cutoff(Input::Orders, bounds)
    )
}

/// The customers rows of `table` as a tally reads them: class (`null_customer_id` or valid),
/// the sign-up's day, the customer id's digest.
fn customers_tally_sql(table: &str) -> String {
    format!(
        "SELECT CASE WHEN customer_id IS NULL OR customer_id = '' THEN 'null_customer_id' END \
                  AS class, \
                arrow_cast(CAST(signup_ts AS DATE), 'Int32') AS day, \
                row_digest(customer_id) AS h FROM {table}"
    )
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
    cut_day: i32,
    kept: Option<(Tally, Vec<String>)>,
) -> Result<(InputReport, Tally)> {
    let (tally, read) = tally_input(
        ctx,
        &report.sources,
        kept,
        cut_day,
        &COUNTING_ORDERS,
        |table| orders_tally_sql(table, bounds),
    )
    .await?;
    let counts = tally.counts();
    let rows = counts.valid;
    let reason = rules::reason_sql(Input::Orders, bounds);
    let exact = format!("SELECT count(DISTINCT order_id) FROM orders_raw WHERE ({reason}) IS NULL");
    let kept = tally::distinct_ids(ctx, &counts, &exact, "counting distinct order ids").await?;
    let mut counted = counts.reasons;
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
    // Duplicates are written from every row.
    report.files_kept = read.map(|(files, _)| files);
    report.partly_read = read
        .filter(|_| rows == kept)
        .map(|(_, errors)| (COUNTING_ORDERS.added_table, errors));
    Ok((report, tally))
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
    let (orders_read, orders_rejected) = match inputs.orders.partly_read {
        Some((table, errors)) => (table, errors),
        None => ("orders_raw", inputs.orders.rows_rejected()),
    };
    if orders_rejected > 0 {
        let reason = rules::reason_sql(Input::Orders, bounds);
        // Duplicates only when every file was read (a base's tally counts none otherwise).
        let duplicates = if inputs.orders.partly_read.is_none() {
            format!(
                " UNION ALL \
                 SELECT order_id, customer_id, order_ts, amount, status, discount_amount, channel, \
                        '{duplicate}' AS reason FROM ({versions}) \
                 WHERE version > 1",
                duplicate = rules::DUPLICATE_ORDER_ID,
                versions = order_versions_sql(bounds)
            )
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT order_id, customer_id, order_ts, amount, status, discount_amount, channel, reason FROM ( \
               SELECT *, {reason} AS reason FROM {orders_read}) \
             WHERE reason IS NOT NULL AND reason <> '{after}'{duplicates} \
             ORDER BY reason, order_id, order_ts",
            after = rules::AFTER_CUTOFF,
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
    cut_day: i32,
    kept: Option<(Tally, Vec<String>)>,
) -> Result<(InputReport, Tally)> {
    let (tally, read) = tally_input(
        ctx,
        &report.sources,
        kept,
        cut_day,
        &COUNTING_CUSTOMERS,
        customers_tally_sql,
    )
    .await?;
    let counts = tally.counts();
    let valid = valid_customers_sql(cutoff_sql);
    let rows = counts.valid;
    let exact = format!("SELECT count(DISTINCT customer_id) FROM customers_raw WHERE {valid}");
    let ids = tally::distinct_ids(ctx, &counts, &exact, "counting distinct customer ids").await?;
    let view = customers_sql("customers_raw", cutoff_sql, rows > ids);
    engine::create_view(ctx, "customers", &view, "registering customers").await?;
    report.rows_used = ids;
    report.files_kept = read.map(|(files, _)| files);
    let reason = |r: &str| counts.reasons.get(r).copied().unwrap_or(0);
    report.rows_after_cutoff = reason(rules::AFTER_CUTOFF);
    for (reason, n) in [
        ("null_customer_id", reason("null_customer_id")),
        (DUPLICATE_CUSTOMER_ID, rows - ids),
    ] {
        if n > 0 {
            report.rejected.insert(reason.to_string(), n);
        }
    }
    Ok((report, tally))
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
        let (report, tally) = clean_customers(&ctx, InputReport::default(), cutoff_sql, 10, None)
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
        let counts = tally.counts();
        assert_eq!((counts.rows, counts.valid, counts.distinct), (8, 4, 3));
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
