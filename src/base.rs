//! The base: the incremental state at the grain of customers, so that a night costs the
//! customers whose data changed, not the whole history.
//!
//! The per-file partials (src/state.rs) still have to be merged into sessions, every session
//! grouped per customer (queries/engagement.sql) and every order per customer
//! (queries/order_history.sql), which costs the whole history each night. So a night that has
//! to merge every partial (the first run, or when no base fits) also keeps, under
//! `_state/base/<key>/`:
//!
//! ```text
//!  sessions.parquet    the merged sessions before its cut-off C (one row per session; no
//!                      key hashes: a night hashes the rows it reads)
//!  sessions-index.parquet
//!                      each customer's run of rows in sessions.parquet (in customer order)
//!  orders.parquet      the rows of the orders files it digested, before the rules, in
//!                      customer order; orders-index.parquet locates each customer's run
//!  reasons.parquet     the merged reason rows before C (rejected and anonymous events)
//!  digests.parquet     per customer: count and bit_xor of row_digest of its orders rows and
//!                      of its customers rows, as the run at C saw them
//!  orders-tally.bin, customers-tally.bin
//!                      the counting passes' tallies of those files (src/tally.rs): a later
//!                      run counts the files added since and adds these
//!  features-J.parquet  queries/features.sql at cut-off C + J days (J = 0 … BASE_DAYS − 1)
//!                      from the data of C, every customer (snapshot set to 0)
//!  scores-J-<models>.parquet
//!                      features-J scored ahead by the models the coming nights use
//!                      (src/models/kept.rs): written after the models stage by the run
//!                      that built the base, or that first scored with new models
//! ```
//!
//! A later run at cut-off C + J reads, besides them, only the partial rows the base does not
//! hold: those of files new since the base (a new day, a late file for an old day) and those
//! of the base's files at or after C (a month's file still growing). A customer is *changed*
//! with a session in those rows before the run's cut-off, or when its orders or customers rows
//! may differ from the base's (a new order, a return, an edited address, a new sign-up): when
//! the orders and customers files only gained new ones since the base (the base records them
//! by identity) and no order id has several rows, the customers in the added files and those
//! with rows dated from C to the cut-off; otherwise those whose rows' digests differ. The
//! changed customers' features are computed as usual, from their sessions (their base
//! sessions merged with the new rows), orders (when the files only gained new ones, their
//! base orders rows and those of the added files) and customers rows. Every other customer's
//! data before the cut-off is the base's, so its features at C + J are the kept
//! `features-J` row. The reject counts are the base's reason rows merged with the new ones.
//!
//! A run uses a base only when its result cannot differ from computing everything: every
//! partial the base holds is still in use (a replaced or deleted file, an edited rollup query,
//! rules or erasure list change the partials' keys), the feature queries and their parameters
//! are unchanged (their digest is the base's `queries`), and the run's cut-off lies within the
//! base's days. The feature queries must compute a customer's row from that customer's rows
//! of `sessions`, `orders` and `customers` and the cut-off (as the shipped ones do). Runs that
//! refit the models use the base's sessions, and compute every snapshot. `--full` uses none.
//! A base is named by the run's state index (written with its outputs), so an unpublished
//! run's base is never used; a base no published index names any more is deleted after the
//! next publish.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::engine;
use crate::error::{Error, Result};
use crate::features::{Cutoff, Snapshots};
use crate::inputs::SourceFile;
use crate::outputs::ParquetSink;
use crate::state::{sha256_hex, Index, Shape};
use crate::storage::StoreRef;

/// Days of cut-offs a base keeps the engagement for (its own and the next six): a base is
/// rebuilt at least weekly, as often as the models are refitted by default.
pub const BASE_DAYS: i64 = 7;
/// Rows (customers × cut-offs) of the base's features computed in one query at most
/// (`SEGMENTER_BASE_BUCKET_ROWS` overrides it: lower for a smaller `engine.memory_limit`).
const BUCKET_ROWS: u64 = 2_000_000;
/// Version of the base's files: part of its digest (2: sessions in customer order, indexed;
/// 3: orders too; 4: sessions stored without key hashes, times and ids delta-encoded; 5:
/// sessions on a local root uncompressed, times and ids plain).
const BASE_FORMAT: u32 = 5;
/// Each customer's run of rows in the base's sessions.parquet: `customer_id`, `first_row`,
/// `rows`.
const SESSIONS_INDEX: &str = "sessions-index.parquet";
/// The orders rows of the files the base digested, in customer order (the canonical schema,
/// before the rules: a row's verdict depends on the cut-off), and their index.
const ORDERS: &str = "orders.parquet";
const ORDERS_INDEX: &str = "orders-index.parquet";
/// The customers rows, kept as the orders are.
const CUSTOMERS: &str = "customers.parquet";
const CUSTOMERS_INDEX: &str = "customers-index.parquet";
/// Where bases live, relative to the output root.
const BASE_DIR: &str = "_state/base";

/// A base, as the state index names it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BaseRef {
    /// Its directory, relative to the output root.
    pub dir: String,
    /// The run date whose cut-off it is at.
    pub run_date: String,
    /// Its cut-off, µs since the epoch.
    pub cutoff: i64,
    /// Cut-offs C … C + days − 1 have kept engagement rows.
    pub days: i64,
    /// Digest of the feature queries and their parameters.
    pub queries: String,
    /// The partials merged into it (keys).
    pub partials: Vec<String>,
    /// Those among them with rows at or after its cut-off (read again by every later run).
    pub open: Vec<String>,
    /// Sessions kept.
    pub sessions: u64,
    /// The models whose scores of the coming cut-offs' features are kept
    /// (`scores-J-<key>.parquet`, J after the run that computed them): their key
    /// ([`models_key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<String>,
    /// The orders and customers files it digested (a base from before they were recorded has
    /// none: its nights compare every row's digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<InputFiles>,
    /// The key of the orders' and customers' tallies of those files it keeps
    /// (`orders-tally.bin`, `customers-tally.bin`: src/tally.rs), with which a later run
    /// counts the files added since instead of every row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tallies: Option<String>,
}

/// The orders and customers files a base saw, by identity ([`SourceFile::identity`]): a night
/// whose files only gained new ones (a daily export) finds the customers whose orders or
/// customers rows changed from those files alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct InputFiles {
    /// The orders files.
    pub orders: Vec<String>,
    /// The customers files.
    pub customers: Vec<String>,
}

impl InputFiles {
    fn of(orders: &[SourceFile], customers: &[SourceFile]) -> InputFiles {
        InputFiles {
            orders: orders.iter().map(SourceFile::identity).collect(),
            customers: customers.iter().map(SourceFile::identity).collect(),
        }
    }
}

/// What the manifest says about the base (`state.base`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct BaseReport {
    /// The base's run date.
    pub run_date: String,
    /// Built by this run (every partial merged).
    pub built: bool,
    /// Why this run built one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Days between the base's cut-off and this run's.
    pub days_after: i64,
    /// Partial rows read besides the base (new files, and the base's files after its cut-off).
    pub new_rows: u64,
    /// Customers with a session in them before the cut-off, or whose orders or customers
    /// rows changed: their features were computed.
    pub changed_customers: u64,
    /// Whether the other customers' features came from the base (runs that refit the models
    /// compute every snapshot).
    pub features_kept: bool,
    /// Customers whose scores came from the base (scored ahead by an earlier run with the
    /// same models; the changed customers were scored tonight).
    pub scores_kept: u64,
    /// How the customers whose orders or customers rows changed were found: `added files`
    /// (the base's files are all still there, unchanged, and no order id has several rows:
    /// the customers in the files added since and those with rows dated since the base's
    /// cut-off) or `row digests` (every row's digest against the base's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs_compared_by: Option<&'static str>,
}

/// The sessions of a run, from a base: what the features read.
pub struct BaseNight {
    /// The merge to run as `sessions` (one row per session and reason).
    pub sessions_sql: String,
    /// Table `state_changed` holds the changed customers, to whom `orders` and `customers`
    /// are restricted until [`restore_inputs`]; every other customer's features are kept.
    pub features_kept: bool,
    /// The base's file of the kept features rows at this run's cut-off, when kept
    /// ([`merge_kept_features`]).
    pub kept_features: Option<String>,
    /// The base, for the run's index.
    pub reference: BaseRef,
    /// For the manifest.
    pub report: BaseReport,
}

/// Everything a run needs to use or build a base.
pub struct BaseInputs<'a> {
    /// The output root.
    pub root: &'a StoreRef,
    /// The rollup's shape.
    pub shape: &'a Shape,
    /// The run's index (its partials).
    pub index: &'a Index,
    /// The previous run's base, if it named one.
    pub previous: Option<BaseRef>,
    /// The run's cut-off and date.
    pub cutoff: Cutoff,
    /// The run date.
    pub run_date: &'a str,
    /// The merge of every partial (state.rs), to build a base from.
    pub merged_sql: &'a str,
    /// queries/engagement.sql, order_history.sql and features.sql as configured.
    pub engagement_sql: &'a str,
    /// See `engagement_sql`.
    pub order_history_sql: &'a str,
    /// See `engagement_sql`.
    pub features_sql: &'a str,
    /// The parameters (`in_sample` is replaced: every customer is kept).
    pub params: &'a HashMap<&'static str, String>,
    /// The run's snapshots; only its own (a night that scores with stored models) lets the
    /// base serve the features.
    pub snapshots: &'a Snapshots,
    /// The orders files this run reads.
    pub orders_files: &'a [SourceFile],
    /// The customers files this run reads (none when not configured).
    pub customers_files: &'a [SourceFile],
    /// Whether some order id has several valid rows tonight (then a file added can change
    /// which row an older order keeps: rows are compared by digest).
    pub order_duplicates: bool,
    /// Whether some customer id has several valid customers rows tonight (`customers` keeps
    /// the earliest sign-up of each).
    pub customer_duplicates: bool,
    /// The bounds the input rules apply.
    pub bounds: &'a crate::rules::Bounds,
    /// The orders' and customers' tallies of the files this run reads, at its cut-off.
    pub tallies: &'a crate::inputs::Tallies,
}

/// Digest of the feature queries and the parameters they may use.
fn queries_digest(input: &BaseInputs<'_>) -> String {
    let mut params: Vec<_> = input
        .params
        .iter()
        .filter(|(k, _)| **k != "in_sample" && **k != "event_reason")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    params.sort();
    sha256_hex(
        format!(
            "base {BASE_FORMAT}\nsegmenter {}\n{}\n{}\n{}\n{}",
            env!("CARGO_PKG_VERSION"),
            params.join("\n"),
            input.engagement_sql,
            input.order_history_sql,
            input.features_sql
        )
        .as_bytes(),
    )
}

/// Why `previous` cannot serve this run (None: it can).
async fn unusable(
    input: &BaseInputs<'_>,
    previous: &BaseRef,
    digest: &str,
) -> Result<Option<String>> {
    let days =
        (input.cutoff.0.and_utc().timestamp_micros() - previous.cutoff).div_euclid(86_400_000_000);
    if previous.queries != digest {
        return Ok(Some(
            "queries/engagement.sql, order_history.sql, features.sql or their parameters changed"
                .into(),
        ));
    }
    if input.cutoff.0.and_utc().timestamp_micros() < previous.cutoff || days >= previous.days {
        return Ok(Some(format!(
            "the base of {} keeps {} days of cut-offs; this run is {days} days after it",
            previous.run_date, previous.days
        )));
    }
    let now: std::collections::HashSet<&str> =
        input.index.files.iter().map(|e| e.key.as_str()).collect();
    let gone = previous
        .partials
        .iter()
        .filter(|k| !now.contains(k.as_str()))
        .count();
    if gone > 0 {
        return Ok(Some(format!(
            "{gone} of the base's per-file rows are no longer in use (files replaced or \
             deleted, or the rollup query, rules or erasure list changed)"
        )));
    }
    for name in files(&previous.dir, days) {
        match input.root.store.head(&input.root.key(&name)).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => {
                return Ok(Some(format!("{} is missing", input.root.url_of(&name))))
            }
            Err(e) => {
                return Err(Error::storage(
                    format!("reading {}", input.root.url_of(&name)),
                    e,
                ))
            }
        }
    }
    Ok(None)
}

/// The files of a base a run `days` after it reads.
fn files(dir: &str, days: i64) -> [String; 9] {
    [
        format!("{dir}/sessions.parquet"),
        format!("{dir}/{SESSIONS_INDEX}"),
        format!("{dir}/{ORDERS}"),
        format!("{dir}/{ORDERS_INDEX}"),
        format!("{dir}/{CUSTOMERS}"),
        format!("{dir}/{CUSTOMERS_INDEX}"),
        format!("{dir}/reasons.parquet"),
        format!("{dir}/digests.parquet"),
        format!("{dir}/features-{days}.parquet"),
    ]
}

/// Uses the previous run's base, or builds one from the merge of every partial, and
/// registers the run's sessions on top of it (see the module documentation).
pub async fn night(ctx: &SessionContext, input: BaseInputs<'_>) -> Result<BaseNight> {
    let digest = queries_digest(&input);
    let why = match &input.previous {
        None => Some("no previous base".to_string()),
        Some(p) => unusable(&input, p, &digest).await?,
    };
    let (reference, built) = match (why.clone(), input.previous.clone()) {
        (None, Some(p)) => (p, false),
        _ => (build(ctx, &input, digest).await?, true),
    };
    let cut_micros = input.cutoff.0.and_utc().timestamp_micros();
    let days_after = (cut_micros - reference.cutoff).div_euclid(86_400_000_000);
    let base_cut = Cutoff(
        chrono::DateTime::from_timestamp_micros(reference.cutoff)
            .map(|t| t.naive_utc())
            .unwrap_or(input.cutoff.0),
    );
    let partial_schema = input.shape.partial_schema();
    let table = |table: &str, file: &str, schema: SchemaRef| -> Result<()> {
        engine::replace_parquet_table(
            ctx,
            table,
            &[input.root.url_of(&format!("{}/{file}", reference.dir))],
            schema,
            "the base",
        )
    };
    table(
        "base_reasons",
        "reasons.parquet",
        Arc::clone(&partial_schema),
    )?;
    // The sessions as partials: stored without their key hashes.
    table(
        "base_sessions_stored",
        "sessions.parquet",
        input.shape.stored_schema(),
    )?;
    engine::create_view(
        ctx,
        "base_sessions",
        &input.shape.with_key_hashes_sql("base_sessions_stored"),
        "the base",
    )
    .await?;

    // The partial rows the base does not hold.
    let in_base: std::collections::HashSet<&str> =
        reference.partials.iter().map(String::as_str).collect();
    let open: std::collections::HashSet<&str> = reference.open.iter().map(String::as_str).collect();
    let url = |key: &str| input.root.url_of(&crate::state::partial_name(key));
    let new: Vec<String> = input
        .index
        .files
        .iter()
        .filter(|e| !in_base.contains(e.key.as_str()))
        .map(|e| url(&e.key))
        .collect();
    let reopened: Vec<String> = input
        .index
        .files
        .iter()
        .filter(|e| open.contains(e.key.as_str()))
        .map(|e| url(&e.key))
        .collect();
    let mut arms = Vec::new();
    if !new.is_empty() {
        engine::replace_parquet_table(
            ctx,
            "state_new",
            &new,
            Arc::clone(&partial_schema),
            "the state",
        )?;
        arms.push("SELECT * FROM state_new".to_string());
    }
    if !reopened.is_empty() {
        engine::replace_parquet_table(
            ctx,
            "state_reopened",
            &reopened,
            Arc::clone(&partial_schema),
            "the state",
        )?;
        arms.push(format!(
            "SELECT * FROM state_reopened WHERE \"day\" >= {}",
            base_cut.sql()
        ));
    }
    let delta = if arms.is_empty() {
        Vec::new()
    } else {
        engine::collect(
            ctx,
            &arms.join(" UNION ALL "),
            "reading the state's new rows",
        )
        .await?
    };
    engine::register_batches(
        ctx,
        "state_delta",
        Arc::clone(&partial_schema),
        delta.clone(),
        "the state's new rows",
    )
    .await?;
    let new_rows: u64 = delta.iter().map(|b| b.num_rows() as u64).sum();

    // Customers with a session in the new rows before the cut-off, or whose orders or
    // customers rows differ from the base's (a night that scores only), and the new sessions'
    // key hashes (the sessions that may have rows in both the base and the new rows).
    let features_kept = input.snapshots.len() == 1;
    let cut = input.cutoff.sql();
    let mut sql = format!(
        "SELECT DISTINCT customer_id FROM state_delta WHERE reason IS NULL AND \"day\" < {cut}"
    );
    // A base built by this run digested the very rows this run sees: nothing to compare.
    let mut inputs_compared_by = None;
    // Some(whether orders files were added, whether customers files were) when the orders
    // and customers files only gained new ones.
    let mut appended_files = None;
    if features_kept && !built {
        let (by, changed_inputs) = match appended(&reference, &input) {
            Some(added) => {
                appended_files = Some((!added.orders.is_empty(), !added.customers.is_empty()));
                (
                    "added files",
                    added_customers_sql(ctx, &added, base_cut, input.cutoff).await?,
                )
            }
            None => (
                "row digests",
                digests_differ_sql(ctx, &input, &reference).await?,
            ),
        };
        inputs_compared_by = Some(by);
        sql = format!("{sql} UNION {changed_inputs}");
    }
    let changed = engine::collect(ctx, &sql, "finding the changed customers").await?;
    let changed_schema = Arc::new(Schema::new(vec![Field::new(
        "customer_id",
        DataType::Utf8,
        true,
    )]));
    let changed = changed
        .iter()
        .map(|b| {
            let id = cast(b.column(0), &DataType::Utf8)
                .map_err(|e| Error::engine("the changed customers", e.into()))?;
            RecordBatch::try_new(Arc::clone(&changed_schema), vec![id])
                .map_err(|e| Error::engine("the changed customers", e.into()))
        })
        .collect::<Result<Vec<_>>>()?;
    let changed_customers: u64 = changed.iter().map(|b| b.num_rows() as u64).sum();
    engine::register_batches(
        ctx,
        "state_changed",
        changed_schema,
        changed,
        "the changed customers",
    )
    .await?;
    let mut multi = Vec::new();
    for b in &delta {
        let reason = b
            .column_by_name("reason")
            .ok_or_else(|| Error::Model("the state's rows lack `reason`".into()))?;
        let hash = b.column(b.num_columns() - 1);
        let hash = cast(hash, &DataType::UInt64)
            .map_err(|e| Error::engine("reading the new sessions' keys", e.into()))?;
        let hash = hash.as_primitive::<UInt64Type>();
        multi.extend(
            (0..b.num_rows())
                .filter(|&i| reason.is_null(i) && hash.is_valid(i))
                .map(|i| hash.value(i)),
        );
    }
    let multi = crate::state::register_multi(ctx, "state_delta_multi", multi).await?;

    // A night that scores needs the changed customers' data only; a refit every session.
    let sessions = if features_kept {
        keep_inputs(ctx).await?;
        // Read once into memory: features.sql reads `orders` three times (order_history.sql
        // and its joins), each a semi-join over every order as a view (EXPLAIN ANALYZE of the
        // 1,000,000 night: three scans of 8.6 M orders for 0.8 M rows of the changed).
        // Beside the sessions' read and each other (the customers rows waited 0.1-0.2 s for
        // the orders' rules in the 1,000,000 night's log).
        let read = |table: &'static str| {
            let input = &input;
            let dir = &reference.dir;
            async move {
                let sql = match appended_files {
                    Some((orders, _)) if table == "orders" => {
                        changed_orders(ctx, input.root, dir, orders, input.bounds).await?
                    }
                    Some((_, customers)) => {
                        changed_customers_rows(ctx, input, dir, customers).await?
                    }
                    _ => format!(
                        "SELECT t.* FROM {table}_all t LEFT SEMI JOIN state_changed c \
                         ON t.customer_id = c.customer_id"
                    ),
                };
                let what = format!("reading the changed customers' {table}");
                engine::collect_into_table(ctx, table, &sql, &what).await
            }
        };
        let inputs = futures::future::try_join_all(INPUTS.map(read));
        let (sessions, inputs) =
            futures::join!(changed_sessions(ctx, input.root, &reference.dir), inputs);
        inputs?;
        // Only the sessions with rows in the new rows too are merged; the others (nearly
        // all) pass through without the anti-join that would find them, which hashed and
        // repartitioned all 3.8 M rows twice at 1,000,000 (EXPLAIN ANALYZE).
        let multi: std::collections::HashSet<u64> = multi
            .column(0)
            .as_primitive::<UInt64Type>()
            .values()
            .iter()
            .copied()
            .collect();
        let (mut singles, mut multis) = (Vec::new(), Vec::new());
        for b in &sessions?.1 {
            let (single, multi) = input.shape.split_by_key_hash(b, &multi)?;
            singles.push(single);
            multis.extend(multi);
        }
        engine::register_batches(
            ctx,
            "base_changed_singles",
            input.shape.stored_schema(),
            singles,
            "the changed customers' sessions",
        )
        .await?;
        engine::register_batches(
            ctx,
            "base_changed_sessions",
            Arc::clone(&partial_schema),
            multis,
            "the changed customers' sessions",
        )
        .await?;
        "base_changed_sessions"
    } else {
        "base_sessions"
    };
    engine::create_view(
        ctx,
        "state_rows",
        &format!(
            "SELECT * FROM base_reasons UNION ALL SELECT * FROM {sessions} \
             UNION ALL SELECT * FROM state_delta"
        ),
        "the state's rows",
    )
    .await?;
    let sessions_sql = input.shape.merge_split_with_singles_sql(
        "state_rows",
        "state_delta_multi",
        features_kept.then_some("base_changed_singles"),
        input.cutoff,
    );
    let report = BaseReport {
        run_date: reference.run_date.clone(),
        built,
        why: if built { why } else { None },
        days_after,
        new_rows,
        changed_customers,
        features_kept,
        scores_kept: 0,
        inputs_compared_by,
    };
    Ok(BaseNight {
        sessions_sql,
        features_kept,
        kept_features: features_kept
            .then(|| format!("{}/features-{days_after}.parquet", reference.dir)),
        reference,
        report,
    })
}

/// The customers whose orders or customers rows' digests differ from the base's (every row of
/// both read).
async fn digests_differ_sql(
    ctx: &SessionContext,
    input: &BaseInputs<'_>,
    base: &BaseRef,
) -> Result<String> {
    engine::replace_parquet_table(
        ctx,
        "base_digests",
        &[input.root.url_of(&format!("{}/digests.parquet", base.dir))],
        digests_schema(),
        "the base",
    )?;
    engine::create_view(ctx, "state_digests", &digests_sql(ctx).await?, "digests").await?;
    Ok(
        "SELECT coalesce(n.customer_id, b.customer_id) AS customer_id \
        FROM state_digests n FULL JOIN base_digests b ON n.customer_id = b.customer_id \
        WHERE (n.orders IS DISTINCT FROM b.orders) \
           OR (n.orders_digest IS DISTINCT FROM b.orders_digest) \
           OR (n.customers IS DISTINCT FROM b.customers) \
           OR (n.customers_digest IS DISTINCT FROM b.customers_digest)"
            .to_string(),
    )
}

/// The URLs of the orders and customers files added since a base.
struct Added {
    orders: Vec<String>,
    customers: Vec<String>,
}

/// The orders and customers files added since `base`, when those are the only change to
/// them: every file the base saw is still there, unchanged, and no order id has several valid
/// rows tonight (a new row for an old order id could displace another customer's row). None
/// when rows must be compared by digest.
fn appended(base: &BaseRef, input: &BaseInputs<'_>) -> Option<Added> {
    let seen = base.inputs.as_ref()?;
    if input.order_duplicates {
        return None;
    }
    Some(Added {
        orders: crate::inputs::added_since(&seen.orders, input.orders_files)?,
        customers: crate::inputs::added_since(&seen.customers, input.customers_files)?,
    })
}

/// The customers whose orders or customers rows may differ from the base's when files were
/// only added (`added`, URLs): every customer in the added files, and every customer with an
/// order or sign-up dated from the base's cut-off to this run's (rows of older files the base's
/// cut-off left out). A superset is harmless: a customer taken as changed has its features
/// computed from its data, the same as the kept ones.
async fn added_customers_sql(
    ctx: &SessionContext,
    added: &Added,
    base_cut: Cutoff,
    cut: Cutoff,
) -> Result<String> {
    let (from, to) = (base_cut.sql(), cut.sql());
    let mut arms = vec![
        format!("SELECT customer_id FROM orders_raw WHERE order_ts >= {from} AND order_ts < {to}"),
        format!(
            "SELECT customer_id FROM customers_raw WHERE signup_ts >= {from} AND signup_ts < {to}"
        ),
    ];
    if !added.orders.is_empty() {
        crate::inputs::register_order_files(ctx, "base_added_orders", &added.orders).await?;
        arms.push("SELECT customer_id FROM base_added_orders".into());
    }
    if !added.customers.is_empty() {
        crate::inputs::register_customer_files(ctx, "base_added_customers", &added.customers)
            .await?;
        arms.push("SELECT customer_id FROM base_added_customers".into());
    }
    Ok(format!(
        "SELECT customer_id FROM ({}) WHERE customer_id IS NOT NULL",
        arms.join(" UNION ALL ")
    ))
}

/// The inputs a night restricts to the changed customers while it computes their features.
const INPUTS: [&str; 2] = ["orders", "customers"];

/// Keeps `orders` and `customers` as they are under `<table>_all`, for
/// [`restrict_inputs`] and [`restore_inputs`].
async fn keep_inputs(ctx: &SessionContext) -> Result<()> {
    for table in INPUTS {
        engine::create_view(
            ctx,
            &format!("{table}_all"),
            &format!("SELECT * FROM {table}"),
            "the inputs",
        )
        .await?;
    }
    Ok(())
}

/// Makes `orders` and `customers` the query `sql(table)` (over `<table>_all`).
async fn restrict_inputs(ctx: &SessionContext, sql: impl Fn(&str) -> String) -> Result<()> {
    for table in INPUTS {
        engine::create_view(ctx, table, &sql(table), "the inputs").await?;
    }
    Ok(())
}

/// Gives `orders` and `customers` back all their rows after a night restricted them.
pub async fn restore_inputs(ctx: &SessionContext) -> Result<()> {
    restrict_inputs(ctx, |table| format!("SELECT * FROM {table}_all")).await
}

/// Drops what a night that keeps features held in memory for them, once they are computed:
/// the changed customers' sessions, orders and customers rows and the views over them (a view
/// holds its tables, so the tables alone would not be freed). The later stages then allocate
/// into that memory rather than fresh pages: the kernel zeroing fresh pages was the largest
/// item of a 1,000,000 night's profile, and these tables held about 0.5 GB of it to the end
/// of the run. A run that refits after all computes its features again (views included).
pub fn release_night(ctx: &SessionContext) -> Result<()> {
    for name in [
        "order_history",
        "engagement",
        "state_rows",
        "base_changed_singles",
        "base_changed_sessions",
        "base_changed_orders",
        "base_changed_customers",
        "state_delta",
    ] {
        ctx.deregister_table(name)
            .map_err(|e| Error::engine(format!("releasing {name}"), e))?;
    }
    Ok(())
}

/// The schema of a Parquet file the base wrote, as written.
async fn file_schema(
    ctx: &SessionContext,
    url: &str,
) -> Result<datafusion::arrow::datatypes::SchemaRef> {
    let df = ctx
        .read_parquet(url, datafusion::prelude::ParquetReadOptions::default())
        .await
        .map_err(|e| Error::engine(format!("reading {url}"), e))?;
    Ok(Arc::new(df.schema().as_arrow().clone()))
}

/// The digests' columns.
fn digests_schema() -> datafusion::arrow::datatypes::SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, true),
        Field::new("orders", DataType::Int64, true),
        Field::new("orders_digest", DataType::UInt64, true),
        Field::new("customers", DataType::Int64, true),
        Field::new("customers_digest", DataType::UInt64, true),
    ]))
}

/// Per customer, the count and `bit_xor` of `row_digest` of every column of its `orders` and
/// `customers` rows, as this run sees them (cut, cleaned, erasures applied).
async fn digests_sql(ctx: &SessionContext) -> Result<String> {
    let mut parts = Vec::new();
    for table in INPUTS {
        let provider = ctx
            .table_provider(table)
            .await
            .map_err(|e| Error::engine(format!("reading the columns of {table}"), e))?;
        let columns: Vec<String> = provider
            .schema()
            .fields()
            .iter()
            .map(|f| format!("\"{}\"", f.name().replace('"', "\"\"")))
            .collect();
        parts.push(format!(
            "SELECT CAST(customer_id AS VARCHAR) AS customer_id, count(*) AS n, \
             bit_xor(row_digest({})) AS d FROM {table} GROUP BY customer_id",
            columns.join(", ")
        ));
    }
    Ok(format!(
        "SELECT coalesce(o.customer_id, c.customer_id) AS customer_id, \
           CAST(o.n AS BIGINT) AS orders, o.d AS orders_digest, \
           CAST(c.n AS BIGINT) AS customers, c.d AS customers_digest \
         FROM ({}) o FULL JOIN ({}) c ON o.customer_id = c.customer_id",
        parts[0], parts[1]
    ))
}

/// Merges every partial (`merged_sql`), keeps the sessions and reason rows before the cut-off,
/// every customer's digests and features at the next [`BASE_DAYS`] cut-offs.
async fn build(ctx: &SessionContext, input: &BaseInputs<'_>, digest: String) -> Result<BaseRef> {
    let cut_micros = input.cutoff.0.and_utc().timestamp_micros();
    let partials: Vec<String> = input.index.files.iter().map(|e| e.key.clone()).collect();
    let key = sha256_hex(
        format!(
            "{digest}\n{}\n{cut_micros}\n{}",
            input.index.shape,
            partials.join("\n")
        )
        .as_bytes(),
    );
    let dir = format!("{BASE_DIR}/{}", &key[..24]);
    let schema = input.shape.partial_schema();
    let what = "merging the state into a base";

    // The sessions and reason rows, dated the day before the cut-off. The sessions in
    // customer order, each customer's rows one run that sessions-index.parquet locates: a
    // night reads its changed customers' runs alone ([`changed_sessions`]).
    let day = cut_micros - 86_400_000_000;
    // Stored without their key hashes (a night hashes the few it reads), for reading a
    // customer's rows here and there: a night reads nearly every page of this file.
    let sessions_name = format!("{dir}/sessions.parquet");
    let stored = input.shape.stored_schema();
    let mut sink = ParquetSink::open_compact(
        input.root,
        &sessions_name,
        Arc::clone(&stored),
        &input.shape.unique_columns(),
    )?;
    let mut reasons = vec![RecordBatch::new_empty(Arc::clone(&schema))];
    let mut runs = Runs::default();
    let sorted = format!(
        "SELECT * FROM ({}) ORDER BY customer_id, session_id",
        input.merged_sql
    );
    let mut running = engine::stream(ctx, &sorted, what).await?;
    while let Some(batch) = running.stream.next().await {
        let batch = batch.map_err(|e| Error::engine(what, e))?;
        let (r, s) = input.shape.merged_as_partial(&batch, day)?;
        runs.add(&s)?;
        sink.write(
            &s.project(&(0..stored.fields().len()).collect::<Vec<_>>())
                .map_err(|e| Error::engine(what, e.into()))?,
        )
        .await?;
        reasons.push(r);
    }
    running.done();
    let sessions = sink.close().await?;
    crate::outputs::write_parquet_groups(input.root, &format!("{dir}/reasons.parquet"), &reasons)
        .await?;
    crate::outputs::write_parquet(
        input.root,
        &format!("{dir}/{SESSIONS_INDEX}"),
        &runs.batch()?,
    )
    .await?;

    // The orders and customers rows in customer order, indexed like the sessions: a night
    // whose orders and customers files only gained new ones reads its changed customers'
    // rows alone ([`changed_orders`], [`changed_customers_rows`]).
    for (table, file, index) in [
        ("orders_raw", ORDERS, ORDERS_INDEX),
        ("customers_raw", CUSTOMERS, CUSTOMERS_INDEX),
    ] {
        keep_in_customer_order(ctx, input.root, &dir, table, file, index).await?;
    }

    // Each customer's orders and customers rows as this run saw them.
    let what = "digesting each customer's orders and customers rows";
    let mut sink = ParquetSink::open(
        input.root,
        &format!("{dir}/digests.parquet"),
        digests_schema(),
    )?;
    let mut running = engine::stream(ctx, &digests_sql(ctx).await?, what).await?;
    while let Some(batch) = running.stream.next().await {
        let batch = batch.map_err(|e| Error::engine(what, e))?;
        let schema = digests_schema();
        let columns = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| cast(c, f.data_type()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::engine(what, e.into()))?;
        let batch =
            RecordBatch::try_new(schema, columns).map_err(|e| Error::engine(what, e.into()))?;
        sink.write(&batch).await?;
    }
    running.done();
    let customers = sink.close().await?;

    // The features at each kept cut-off from the data of this one, for every customer:
    // queries/features.sql over those sessions and this run's orders and customers. In
    // buckets of customers (by sample_unit), so that no join holds more than about
    // BUCKET_ROWS rows: all the cut-offs of a million customers at once exceeded the default
    // 2 GiB pool.
    let ahead = Snapshots::ahead(input.cutoff, BASE_DAYS);
    crate::features::register_snapshots(ctx, &ahead).await?;
    engine::replace_parquet_table(
        ctx,
        "base_built_sessions",
        &[input.root.url_of(&sessions_name)],
        stored,
        "the base",
    )?;
    let mut params = input.params.clone();
    params.insert("in_sample", "true".into());
    let r = crate::features::render_features(
        input.engagement_sql,
        input.order_history_sql,
        input.features_sql,
        &params,
        &ahead,
    )?;
    let per_query = std::env::var("SEGMENTER_BASE_BUCKET_ROWS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(BUCKET_ROWS);
    let buckets = (customers * BASE_DAYS as u64).div_ceil(per_query).max(1);
    let mut sinks = Vec::new();
    let what = "queries/features.sql (the base)";
    for bucket in 0..buckets {
        let filter = if buckets == 1 {
            String::new()
        } else {
            let (lo, hi) = (
                bucket as f64 / buckets as f64,
                (bucket + 1) as f64 / buckets as f64,
            );
            format!(
                " WHERE sample_unit(customer_id) >= {lo:?} AND sample_unit(customer_id) < {hi:?}"
            )
        };
        engine::create_view(
            ctx,
            "sessions",
            &format!("SELECT * FROM base_built_sessions{filter}"),
            "the base",
        )
        .await?;
        if bucket == 0 {
            keep_inputs(ctx).await?;
        }
        restrict_inputs(ctx, |table| format!("SELECT * FROM {table}_all{filter}")).await?;
        engine::create_view(ctx, "engagement", &r.engagement, "queries/engagement.sql").await?;
        engine::create_view(
            ctx,
            "order_history",
            &r.order_history,
            "queries/order_history.sql",
        )
        .await?;
        let mut running = engine::stream(ctx, &r.features, what).await?;
        let out_schema = running.stream.schema();
        if sinks.is_empty() {
            sinks = (0..BASE_DAYS)
                .map(|j| {
                    ParquetSink::open(
                        input.root,
                        &format!("{dir}/features-{j}.parquet"),
                        Arc::clone(&out_schema),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
        }
        let snapshot_at = out_schema.index_of("snapshot").map_err(|_| {
            Error::config(None, "queries/features.sql must return a column `snapshot`")
        })?;
        while let Some(batch) = running.stream.next().await {
            let batch = batch.map_err(|e| Error::engine(what, e))?;
            let ids = cast(batch.column(snapshot_at), &DataType::Int64)
                .map_err(|e| Error::engine(what, e.into()))?;
            let ids = ids.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            for (j, sink) in sinks.iter_mut().enumerate() {
                let mask: datafusion::arrow::array::BooleanArray =
                    ids.iter().map(|v| Some(v == Some(j as i64))).collect();
                if mask.true_count() == 0 {
                    continue;
                }
                let rows = filter_record_batch(&batch, &mask)
                    .map_err(|e| Error::engine(what, e.into()))?;
                let zero = datafusion::arrow::array::Int64Array::from(vec![0i64; rows.num_rows()]);
                let zero = cast(&zero, out_schema.field(snapshot_at).data_type())
                    .map_err(|e| Error::engine(what, e.into()))?;
                let mut columns = rows.columns().to_vec();
                columns[snapshot_at] = zero;
                let rows = RecordBatch::try_new(Arc::clone(&out_schema), columns)
                    .map_err(|e| Error::engine(what, e.into()))?;
                sink.write(&rows).await?;
            }
        }
        running.done();
    }
    for sink in sinks {
        sink.close().await?;
    }
    restore_inputs(ctx).await?;
    crate::features::register_snapshots(ctx, input.snapshots).await?;
    for (file, tally) in [
        (crate::inputs::ORDERS_TALLY, &input.tallies.orders),
        (crate::inputs::CUSTOMERS_TALLY, &input.tallies.customers),
    ] {
        let name = format!("{dir}/{file}");
        input
            .root
            .store
            .put(&input.root.key(&name), tally.to_bytes().into())
            .await
            .map_err(|e| Error::storage(format!("writing {}", input.root.url_of(&name)), e))?;
    }

    let open = input
        .index
        .files
        .iter()
        .filter(|e| e.max_day.is_none_or(|d| d >= cut_micros))
        .map(|e| e.key.clone())
        .collect();
    Ok(BaseRef {
        dir,
        run_date: input.run_date.to_string(),
        cutoff: cut_micros,
        days: BASE_DAYS,
        queries: digest,
        partials,
        open,
        sessions,
        scores: None,
        inputs: Some(InputFiles::of(input.orders_files, input.customers_files)),
        tallies: Some(input.tallies.key.clone()),
    })
}

/// Writes every row of `table` in customer order as the base's `file`, and each customer's
/// run of rows in it as `index` ([`Runs`]).
async fn keep_in_customer_order(
    ctx: &SessionContext,
    root: &StoreRef,
    dir: &str,
    table: &str,
    file: &str,
    index: &str,
) -> Result<()> {
    let what = format!("keeping {table} in customer order");
    let sql = format!("SELECT * FROM {table} ORDER BY customer_id");
    let mut running = engine::stream(ctx, &sql, &what).await?;
    let mut sink = ParquetSink::open(root, &format!("{dir}/{file}"), running.stream.schema())?;
    let mut runs = Runs::default();
    while let Some(batch) = running.stream.next().await {
        let batch = batch.map_err(|e| Error::engine(&what, e))?;
        runs.add(&batch)?;
        sink.write(&batch).await?;
    }
    running.done();
    sink.close().await?;
    crate::outputs::write_parquet(root, &format!("{dir}/{index}"), &runs.batch()?).await?;
    Ok(())
}

/// The runs of rows of each customer in rows written in customer order (sessions, orders), as
/// they are written: [`SESSIONS_INDEX`], [`ORDERS_INDEX`].
#[derive(Default)]
struct Runs {
    ids: Vec<String>,
    first_rows: Vec<u64>,
    rows: Vec<u64>,
    /// Rows seen so far.
    seen: u64,
    /// Whether the last row seen had the last run's customer (a row without a customer ends a
    /// run).
    open: bool,
}

impl Runs {
    /// Adds the next rows written.
    fn add(&mut self, rows: &RecordBatch) -> Result<()> {
        let what = "indexing the base's rows";
        let ids = rows
            .column_by_name("customer_id")
            .ok_or_else(|| Error::Model("the base's rows lack `customer_id`".into()))?;
        let ids = cast(ids, &DataType::Utf8).map_err(|e| Error::engine(what, e.into()))?;
        let ids = ids.as_string::<i32>();
        for i in 0..ids.len() {
            if ids.is_null(i) {
                self.open = false;
            } else if self.open && self.ids.last().map(String::as_str) == Some(ids.value(i)) {
                *self.rows.last_mut().expect("an open run") += 1;
            } else {
                self.ids.push(ids.value(i).to_string());
                self.first_rows.push(self.seen + i as u64);
                self.rows.push(1);
                self.open = true;
            }
        }
        self.seen += ids.len() as u64;
        Ok(())
    }

    fn batch(self) -> Result<RecordBatch> {
        RecordBatch::try_new(
            runs_schema(),
            vec![
                Arc::new(datafusion::arrow::array::StringArray::from(self.ids)),
                Arc::new(datafusion::arrow::array::UInt64Array::from(self.first_rows)),
                Arc::new(datafusion::arrow::array::UInt64Array::from(self.rows)),
            ],
        )
        .map_err(|e| Error::engine("indexing the base's rows", e.into()))
    }
}

fn runs_schema() -> datafusion::arrow::datatypes::SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("first_row", DataType::UInt64, false),
        Field::new("rows", DataType::UInt64, false),
    ]))
}

/// The base's sessions of the changed customers (table `state_changed`): their runs, found in
/// [`SESSIONS_INDEX`], read from sessions.parquet as a row selection, in parallel parts of about
/// equal rows. Only those rows are decoded (and only the pages holding them fetched): the
/// semi-join this replaces decoded and hashed every kept session's customer id, 0.89 s of a
/// 3.3 s night at 200,000 customers.
async fn changed_sessions(
    ctx: &SessionContext,
    root: &StoreRef,
    dir: &str,
) -> Result<(datafusion::arrow::datatypes::SchemaRef, Vec<RecordBatch>)> {
    changed_rows(
        ctx,
        root,
        dir,
        "sessions.parquet",
        SESSIONS_INDEX,
        "sessions",
    )
    .await
}

/// The changed customers' orders (table `state_changed`), as `orders` holds them, when the
/// orders files only gained new ones since the base (`added`: some were added): their rows in
/// the base's [`ORDERS`], read as [`changed_sessions`] reads sessions, and those of the added
/// files, with the rules applied at this run's `bounds`. The SQL over every order it replaces
/// decoded, checked and hashed them all (EXPLAIN ANALYZE of the 1,000,000 night: 1.1 s).
async fn changed_orders(
    ctx: &SessionContext,
    root: &StoreRef,
    dir: &str,
    added: bool,
    bounds: &crate::rules::Bounds,
) -> Result<String> {
    let (schema, batches) = changed_rows(ctx, root, dir, ORDERS, ORDERS_INDEX, "orders").await?;
    engine::register_batches(
        ctx,
        "base_changed_orders",
        schema,
        batches,
        "the changed customers' orders",
    )
    .await?;
    let mut rows = "SELECT * FROM base_changed_orders".to_string();
    if added {
        rows.push_str(
            " UNION ALL SELECT a.* FROM base_added_orders a LEFT SEMI JOIN state_changed c \
             ON a.customer_id = c.customer_id",
        );
    }
    Ok(crate::inputs::orders_without_duplicates_sql(
        &format!("({rows})"),
        bounds,
    ))
}

/// The changed customers' customers rows (table `state_changed`), as `customers` holds them,
/// when the customers files only gained new ones since the base (`added`: some were added):
/// read as [`changed_orders`] reads orders. The semi-join over every customers row it replaces
/// took 0.46-0.61 s of the 1,000,000 night.
async fn changed_customers_rows(
    ctx: &SessionContext,
    input: &BaseInputs<'_>,
    dir: &str,
    added: bool,
) -> Result<String> {
    let (schema, batches) = changed_rows(
        ctx,
        input.root,
        dir,
        CUSTOMERS,
        CUSTOMERS_INDEX,
        "customers",
    )
    .await?;
    engine::register_batches(
        ctx,
        "base_changed_customers",
        schema,
        batches,
        "the changed customers' customers rows",
    )
    .await?;
    let mut rows = "SELECT * FROM base_changed_customers".to_string();
    if added {
        rows.push_str(
            " UNION ALL SELECT a.* FROM base_added_customers a LEFT SEMI JOIN state_changed c \
             ON a.customer_id = c.customer_id",
        );
    }
    Ok(crate::inputs::customers_sql(
        &format!("({rows})"),
        &input.cutoff.sql(),
        input.customer_duplicates,
    ))
}

/// The rows of the changed customers (table `state_changed`) in the base's `file`, written in
/// customer order: their runs, found in its index `index`, read as a row selection, in parallel
/// parts of about equal rows. Only those rows are decoded (and only the pages holding them
/// fetched).
async fn changed_rows(
    ctx: &SessionContext,
    root: &StoreRef,
    dir: &str,
    file: &str,
    index: &str,
    rows_of: &str,
) -> Result<(datafusion::arrow::datatypes::SchemaRef, Vec<RecordBatch>)> {
    let what = format!("reading the changed customers' {rows_of}");
    let table = format!("base_{rows_of}_index");
    engine::replace_parquet_table(
        ctx,
        &table,
        &[root.url_of(&format!("{dir}/{index}"))],
        runs_schema(),
        "the base",
    )?;
    let found = engine::collect(
        ctx,
        &format!(
            "SELECT i.first_row, i.\"rows\" FROM {table} i \
             LEFT SEMI JOIN state_changed c ON i.customer_id = c.customer_id ORDER BY i.first_row"
        ),
        &format!("finding the changed customers' {rows_of}"),
    )
    .await?;
    let mut runs = Vec::new();
    for b in &found {
        let first = b.column(0).as_primitive::<UInt64Type>();
        let rows = b.column(1).as_primitive::<UInt64Type>();
        runs.extend(
            (0..b.num_rows())
                .map(|i| first.value(i) as usize..(first.value(i) + rows.value(i)) as usize),
        );
    }
    let parts = ctx.state().config().target_partitions().max(1);
    let name = format!("{dir}/{file}");
    let (schema, batches) = read_rows(root, &name, Some(runs.as_slice()), parts, &what).await?;
    tracing::debug!(
        customers = runs.len(),
        rows = batches.iter().map(|b| b.num_rows()).sum::<usize>(),
        "{what}"
    );
    Ok((schema, batches))
}

/// Rows per batch of [`read_rows`]: DataFusion's default `batch_size`. The Parquet reader's
/// own default (1,024) made 3,650 batches of the 1,000,000 night's changed sessions, and
/// planning the query over them (its statistics, computed per batch and column at every
/// optimizer pass) took 0.43-0.56 s on one core (`perf record`: 130 of its 194 samples in
/// `compute_record_batch_statistics`), before every operator's per-batch work.
const READ_BATCH_ROWS: usize = 8192;

/// Reads the rows `runs` (in row order; None: all) of the base's Parquet file `name`, in row
/// order, in up to `parts` reads at once.
async fn read_rows(
    root: &StoreRef,
    name: &str,
    runs: Option<&[std::ops::Range<usize>]>,
    parts: usize,
    what: &str,
) -> Result<(datafusion::arrow::datatypes::SchemaRef, Vec<RecordBatch>)> {
    use datafusion::parquet::arrow::arrow_reader::{
        ArrowReaderMetadata, ArrowReaderOptions, RowSelection,
    };
    use datafusion::parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
    use datafusion::parquet::file::metadata::PageIndexPolicy;
    use futures::TryStreamExt;

    let url = root.url_of(name);
    let parquet = |e| Error::parquet(format!("reading {url}"), e);
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let mut reader = match root.local_path(name) {
        Some(path) => {
            BaseFile::Mapped(mapped(&path).map_err(|e| Error::io(format!("reading {url}"), e))?)
        }
        None => {
            let meta = root
                .store
                .head(&root.key(name))
                .await
                .map_err(|e| Error::storage(format!("reading {url}"), e))?;
            #[allow(deprecated)]
            let reader = datafusion::parquet::arrow::async_reader::ParquetObjectReader::new(
                Arc::clone(&root.store),
                meta.location,
            )
            .with_file_size(meta.size);
            BaseFile::Store(reader)
        }
    };
    let metadata = ArrowReaderMetadata::load_async(&mut reader, options)
        .await
        .map_err(parquet)?;
    let schema = Arc::clone(metadata.schema());
    let total = metadata.metadata().file_metadata().num_rows().max(0) as usize;
    let whole;
    let runs = match runs {
        Some(runs) => runs,
        None => {
            whole = equal_ranges(total, parts);
            whole.as_slice()
        }
    };
    if runs.last().is_some_and(|r| r.end > total) {
        return Err(Error::Model(format!(
            "{url} holds {total} rows, fewer than its index names: the base is damaged"
        )));
    }
    let reads = split_runs(runs, parts).into_iter().map(|part| {
        let selection = RowSelection::from_consecutive_ranges(part.iter().cloned(), total);
        let (reader, metadata) = (reader.clone(), metadata.clone());
        tokio::spawn(async move {
            ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata)
                .with_row_selection(selection)
                .with_batch_size(READ_BATCH_ROWS)
                .build()?
                .try_collect::<Vec<_>>()
                .await
        })
    });
    let mut batches = Vec::new();
    for read in futures::future::join_all(reads.collect::<Vec<_>>()).await {
        let read = read.map_err(|e| Error::Model(format!("{what}: {e}")))?;
        batches.extend(read.map_err(parquet)?);
    }
    Ok((schema, batches))
}

/// A base file as [`read_rows`] reads it: mapped when the output root is a local directory,
/// otherwise through the object store. Mapped, the pages the reader decodes are the page
/// cache's own: a read through the store copies every fetched byte into fresh memory, and the
/// kernel zeroing those fresh pages was the largest item of a 1,000,000 night's profile
/// (`perf record -e cpu-clock`: `object_store::local::read_range` under 602 of the 4,097
/// samples in `clear_page_erms`). The base's files are written once under a new name and
/// never modified in place (a later base is a new directory; an old one is deleted, which
/// leaves a mapping valid), and the run's lease keeps a second run from writing beside it.
#[derive(Clone)]
enum BaseFile {
    Mapped(bytes::Bytes),
    #[allow(deprecated)]
    Store(datafusion::parquet::arrow::async_reader::ParquetObjectReader),
}

impl datafusion::parquet::arrow::async_reader::AsyncFileReader for BaseFile {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, datafusion::parquet::errors::Result<bytes::Bytes>> {
        match self {
            BaseFile::Mapped(bytes) => {
                let slice = slice_of(bytes, range);
                Box::pin(async move { slice })
            }
            BaseFile::Store(reader) => reader.get_bytes(range),
        }
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> futures::future::BoxFuture<'_, datafusion::parquet::errors::Result<Vec<bytes::Bytes>>>
    {
        match self {
            BaseFile::Mapped(bytes) => {
                let slices = ranges.into_iter().map(|r| slice_of(bytes, r)).collect();
                Box::pin(async move { slices })
            }
            BaseFile::Store(reader) => reader.get_byte_ranges(ranges),
        }
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<
        'a,
        datafusion::parquet::errors::Result<
            Arc<datafusion::parquet::file::metadata::ParquetMetaData>,
        >,
    > {
        match self {
            BaseFile::Mapped(bytes) => {
                let options = options.cloned().unwrap_or_default();
                let metadata = datafusion::parquet::arrow::arrow_reader::ArrowReaderMetadata::load(
                    bytes, options,
                )
                .map(|m| Arc::clone(m.metadata()));
                Box::pin(async move { metadata })
            }
            BaseFile::Store(reader) => reader.get_metadata(options),
        }
    }
}

/// `range` of the mapped `bytes`, without copying; an error past its end.
fn slice_of(
    bytes: &bytes::Bytes,
    range: std::ops::Range<u64>,
) -> datafusion::parquet::errors::Result<bytes::Bytes> {
    let (start, end) = (range.start as usize, range.end as usize);
    if start > end || end > bytes.len() {
        return Err(datafusion::parquet::errors::ParquetError::EOF(format!(
            "bytes {start}..{end} of a file of {}",
            bytes.len()
        )));
    }
    Ok(bytes.slice(start..end))
}

/// The file at `path`, mapped read-only.
fn mapped(path: &std::path::Path) -> std::io::Result<bytes::Bytes> {
    let file = std::fs::File::open(path)?;
    // An empty file cannot be mapped (and is no Parquet file: the reader says so).
    if file.metadata()?.len() == 0 {
        return Ok(bytes::Bytes::new());
    }
    // SAFETY: the mapping is read-only, and the base's files are never modified in place while
    // a run may read them (see `BaseFile`).
    let map = unsafe { memmap2::Mmap::map(&file)? };
    Ok(bytes::Bytes::from_owner(map))
}

/// `0..total` in `parts` consecutive ranges of about equal length, none empty.
fn equal_ranges(total: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, total.max(1));
    (0..parts)
        .map(|p| p * total / parts..(p + 1) * total / parts)
        .filter(|r| !r.is_empty())
        .collect()
}

/// Every customer's features at a night's cut-off, in customer order (as queries/features.sql
/// orders them): `changed`, the rows computed tonight for the changed customers (`changed_ids`),
/// and the base's rows in file `name` of every other customer. The same rows as
/// `changed UNION ALL (kept LEFT ANTI JOIN state_changed) ORDER BY customer_id`, which sorted
/// every row (EXPLAIN ANALYZE of the 1,000,000 night: 1.5 s in two sorts and a merge). The
/// base's rows are in customer order within each bucket it computed them in, and so are the
/// changed rows: a stable sort of the row keys merges those few runs in about n·log(runs)
/// comparisons. Reading the file runs beside the caller's `changed` query.
pub async fn merge_kept_features(
    root: &StoreRef,
    name: &str,
    parts: usize,
    changed: impl std::future::Future<
        Output = Result<(datafusion::arrow::datatypes::SchemaRef, Vec<RecordBatch>)>,
    >,
    changed_ids: &std::collections::HashSet<String>,
) -> Result<Vec<RecordBatch>> {
    let what = "reading the base's kept features";
    let kept = {
        let (root, name, what) = (root.clone(), name.to_string(), what.to_string());
        tokio::spawn(async move { read_rows(&root, &name, None, parts, &what).await })
    };
    let (schema, changed) = changed.await?;
    let computed: usize = changed.iter().map(|b| b.num_rows()).sum();
    let (_, kept) = kept
        .await
        .map_err(|e| Error::Model(format!("{what}: {e}")))??;
    let started = std::time::Instant::now();
    let changed_batches = changed.len();
    let batches = changed
        .into_iter()
        .map(Ok)
        .chain(kept.iter().map(|b| conform(b, &schema)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::engine(what, e.into()))?;
    let keys = batches
        .iter()
        .map(string_ids)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::engine(what, e.into()))?;
    // Every changed row, and the kept rows of the customers not changed, by (batch, row).
    let mut order: Vec<(usize, usize)> = Vec::with_capacity(keys.iter().map(|k| k.len()).sum());
    for (b, ids) in keys.iter().enumerate() {
        let is_kept = |r: usize| ids.is_valid(r) && !changed_ids.contains(ids.value(r));
        order.extend(
            (0..ids.len())
                .filter(|&r| b < changed_batches || is_kept(r))
                .map(|r| (b, r)),
        );
    }
    order.sort_by(|&(a, i), &(b, j)| keys[a].value(i).cmp(keys[b].value(j)));
    let merged = if order.is_empty() {
        Vec::new()
    } else {
        // Column by column, on every core.
        let columns = crate::models::parallel::map_rows(schema.fields().len(), |c| {
            let column: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
            datafusion::arrow::compute::interleave(&column, &order)
        })
        .into_iter()
        .collect::<std::result::Result<Vec<_>, _>>()
        .and_then(|columns| RecordBatch::try_new(Arc::clone(&schema), columns))
        .map_err(|e| Error::engine(what, e.into()))?;
        vec![columns]
    };
    tracing::debug!(
        rows = order.len(),
        changed = computed,
        seconds = started.elapsed().as_secs_f64(),
        "merged the kept features with the changed"
    );
    Ok(merged)
}

/// `b`'s columns named as in `schema`, cast to its types where they differ.
fn conform(
    b: &RecordBatch,
    schema: &datafusion::arrow::datatypes::SchemaRef,
) -> std::result::Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let c = b.column_by_name(f.name()).ok_or_else(|| {
                datafusion::arrow::error::ArrowError::SchemaError(format!(
                    "the base's features lack column {}",
                    f.name()
                ))
            })?;
            if c.data_type() == f.data_type() {
                Ok(Arc::clone(c))
            } else {
                cast(c, f.data_type())
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
}

/// `b`'s `customer_id` as Utf8.
fn string_ids(
    b: &RecordBatch,
) -> std::result::Result<datafusion::arrow::array::StringArray, datafusion::arrow::error::ArrowError>
{
    let ids = b.column_by_name("customer_id").ok_or_else(|| {
        datafusion::arrow::error::ArrowError::SchemaError("no column customer_id".into())
    })?;
    Ok(cast(ids, &DataType::Utf8)?.as_string::<i32>().clone())
}

/// `runs` (in row order) in at most `parts` consecutive slices of about equal rows, none empty.
fn split_runs(runs: &[std::ops::Range<usize>], parts: usize) -> Vec<&[std::ops::Range<usize>]> {
    let total: usize = runs.iter().map(|r| r.len()).sum();
    let per_part = total.div_ceil(parts.max(1)).max(1);
    let mut out = Vec::new();
    let (mut start, mut rows) = (0, 0);
    for (i, run) in runs.iter().enumerate() {
        rows += run.len();
        if rows >= per_part {
            out.push(&runs[start..=i]);
            (start, rows) = (i + 1, 0);
        }
    }
    if start < runs.len() {
        out.push(&runs[start..]);
    }
    out
}

/// The key of a stored models file (its name names the refit's run): what kept scores are
/// named by.
pub fn models_key(models_file: &str) -> String {
    sha256_hex(models_file.as_bytes())[..16].to_string()
}

fn scores_file(reference: &BaseRef, days: i64, key: &str) -> String {
    format!("{}/scores-{days}-{key}.parquet", reference.dir)
}

/// The customers whose features this night computed (table `state_changed`).
pub async fn changed_ids(ctx: &SessionContext) -> Result<std::collections::HashSet<String>> {
    let what = "reading the changed customers";
    let batches = engine::collect(ctx, "SELECT customer_id FROM state_changed", what).await?;
    let mut ids = std::collections::HashSet::new();
    for b in &batches {
        let col = cast(b.column(0), &DataType::Utf8).map_err(|e| Error::engine(what, e.into()))?;
        let col = col.as_string::<i32>();
        ids.extend(
            (0..col.len())
                .filter(|&i| col.is_valid(i))
                .map(|i| col.value(i).to_string()),
        );
    }
    Ok(ids)
}

/// The scores computed ahead for this run's cut-off (`days` after the base's) by the models
/// `key`; None when the base names other models or the file is gone (then everyone is scored).
pub async fn kept_scores(
    ctx: &SessionContext,
    root: &StoreRef,
    reference: &BaseRef,
    days: i64,
    key: &str,
) -> Result<Option<crate::models::kept::Kept>> {
    if reference.scores.as_deref() != Some(key) {
        return Ok(None);
    }
    let name = scores_file(reference, days, key);
    match root.store.head(&root.key(&name)).await {
        Ok(_) => {}
        Err(object_store::Error::NotFound { .. }) => {
            tracing::warn!(
                file = root.url_of(&name),
                "kept scores missing: scoring everyone"
            );
            return Ok(None);
        }
        Err(e) => return Err(Error::storage(format!("reading {}", root.url_of(&name)), e)),
    }
    let what = "reading the kept scores";
    let started = std::time::Instant::now();
    let parts = ctx.state().config().target_partitions();
    let (schema, batches) = read_rows(root, &name, None, parts, what).await?;
    // Kept::from_batches takes the columns by position: they must be the ones it wrote.
    let expected = crate::models::kept::schema();
    if schema
        .fields()
        .iter()
        .map(|f| f.name())
        .ne(expected.fields().iter().map(|f| f.name()))
    {
        return Err(Error::Model(format!(
            "{} does not hold the kept scores' columns: the base is damaged",
            root.url_of(&name)
        )));
    }
    let kept = crate::models::kept::Kept::from_batches(&batches)?;
    tracing::debug!(
        rows = kept.len(),
        seconds = started.elapsed().as_secs_f64(),
        "{what}"
    );
    Ok(Some(kept))
}

/// Scores the base's features of the cut-offs after this run's (`days` after the base's) with
/// `stored` and keeps them for the coming nights; records the models' `key` in `reference`.
/// Nothing to do when the base already keeps that key's scores or has no later cut-off.
pub async fn score_ahead(
    ctx: &SessionContext,
    root: &StoreRef,
    reference: &mut BaseRef,
    days: i64,
    stored: &crate::models::Stored,
    key: &str,
    monthly_rate: f64,
) -> Result<()> {
    if reference.scores.as_deref() == Some(key) || days + 1 >= reference.days {
        return Ok(());
    }
    let clock = std::time::Instant::now();
    for j in days + 1..reference.days {
        let url = root.url_of(&format!("{}/features-{j}.parquet", reference.dir));
        engine::replace_parquet_table(
            ctx,
            "base_ahead",
            std::slice::from_ref(&url),
            file_schema(ctx, &url).await?,
            "the base",
        )?;
        let batches = engine::collect(
            ctx,
            "SELECT * FROM base_ahead",
            "reading the base's features",
        )
        .await?;
        let batch = if batches.iter().all(|b| b.num_rows() == 0) {
            RecordBatch::new_empty(crate::models::kept::schema())
        } else {
            let table = crate::features::CustomerTable::new(batches, "features.sql (the base)")?;
            crate::models::kept::score_ahead(stored, &table, monthly_rate)?
        };
        crate::outputs::write_parquet(root, &scores_file(reference, j, key), &batch).await?;
    }
    tracing::info!(
        days = reference.days - days - 1,
        seconds = clock.elapsed().as_secs_f64(),
        "scored the base's coming cut-offs ahead"
    );
    reference.scores = Some(key.to_string());
    Ok(())
}

/// After this run published: deletes the previous base when this run's index names another.
/// Failures are logged; the next run does not depend on them.
pub async fn remove_superseded(root: &StoreRef, previous: Option<&BaseRef>, now: Option<&BaseRef>) {
    let Some(old) = previous else { return };
    if now.is_some_and(|n| n.dir == old.dir) {
        return;
    }
    let listed: Vec<_> = match futures::TryStreamExt::try_collect(
        root.store.list(Some(&root.key(&old.dir))),
    )
    .await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(base = root.url_of(&old.dir), error = %e, "could not list a superseded base");
            return;
        }
    };
    for meta in listed {
        let m: object_store::ObjectMeta = meta;
        if let Err(e) = root.store.delete(&m.location).await {
            tracing::warn!(file = %m.location, error = %e, "could not remove a superseded base's file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_ranges_cover_every_row_once() {
        assert_eq!(equal_ranges(10, 3), [0..3, 3..6, 6..10]);
        assert_eq!(equal_ranges(2, 4), [0..1, 1..2]);
        assert!(equal_ranges(0, 4).is_empty());
    }

    #[tokio::test]
    async fn kept_features_merge_in_customer_order_without_the_changed() {
        let ctx = SessionContext::new();
        let root = crate::storage::open(
            &ctx,
            &crate::config::Location::parse("memory://merge/", std::path::Path::new("/")).unwrap(),
            &crate::config::StorageParams::default(),
        )
        .unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Utf8, false),
            Field::new("x", DataType::Int64, true),
        ]));
        let batch = |ids: &[&str], x: &[i64]| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(datafusion::arrow::array::StringArray::from(ids.to_vec())),
                    Arc::new(datafusion::arrow::array::Int64Array::from(x.to_vec())),
                ],
            )
            .unwrap()
        };
        // The base's file: two runs in customer order (two buckets), as the base writes them.
        let mut sink = ParquetSink::open(&root, "features-0.parquet", Arc::clone(&schema)).unwrap();
        sink.write(&batch(&["b", "d", "f"], &[1, 2, 3]))
            .await
            .unwrap();
        sink.write(&batch(&["a", "c", "e"], &[4, 5, 6]))
            .await
            .unwrap();
        sink.close().await.unwrap();
        let changed_ids: std::collections::HashSet<String> =
            ["c", "d", "g"].iter().map(|s| s.to_string()).collect();
        // "c" has no row tonight (its data went), "d" and "g" have new ones.
        let changed = batch(&["d", "g"], &[20, 30]);
        for parts in [1, 2, 5] {
            let out = merge_kept_features(
                &root,
                "features-0.parquet",
                parts,
                async { Ok((Arc::clone(&schema), vec![changed.clone()])) },
                &changed_ids,
            )
            .await
            .unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].schema(), schema);
            let ids: Vec<&str> = out[0]
                .column(0)
                .as_string::<i32>()
                .iter()
                .flatten()
                .collect();
            let x: Vec<i64> = out[0]
                .column(1)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .values()
                .to_vec();
            assert_eq!(ids, ["a", "b", "d", "e", "f", "g"], "{parts} parts");
            assert_eq!(x, [4, 1, 20, 6, 3, 30], "{parts} parts");
        }
    }

    #[test]
    fn runs_follow_each_customer_across_batches() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "customer_id",
            DataType::Utf8,
            true,
        )]));
        let batch = |ids: Vec<Option<&str>>| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(datafusion::arrow::array::StringArray::from(ids))],
            )
            .unwrap()
        };
        let mut runs = Runs::default();
        runs.add(&batch(vec![Some("a"), Some("a"), Some("b")]))
            .unwrap();
        runs.add(&batch(vec![Some("b"), None, Some("b"), Some("c")]))
            .unwrap();
        let b = runs.batch().unwrap();
        let ids: Vec<&str> = b.column(0).as_string::<i32>().iter().flatten().collect();
        let first: Vec<u64> = b.column(1).as_primitive::<UInt64Type>().values().to_vec();
        let rows: Vec<u64> = b.column(2).as_primitive::<UInt64Type>().values().to_vec();
        // A row without a customer ends b's run: b has two.
        assert_eq!(ids, ["a", "b", "b", "c"]);
        assert_eq!(first, [0, 2, 5, 6]);
        assert_eq!(rows, [2, 2, 1, 1]);
    }

    #[test]
    fn split_runs_balances_rows_and_keeps_order() {
        let runs = vec![0..10, 12..14, 20..30, 40..41, 50..60];
        let parts = split_runs(&runs, 2);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts.concat(), runs);
        assert_eq!(parts[0], &runs[..3]);
        assert_eq!(split_runs(&runs, 1), vec![&runs[..]]);
        assert_eq!(split_runs(&runs, 100).len(), runs.len());
        assert!(split_runs(&[], 2).is_empty());
    }
}
