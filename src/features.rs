//! Features: runs the pipeline's SQL (queries/*.sql) with its parameters and returns typed
//! per-customer tables. Features are computed by DataFusion, never by row loops in Rust.

use std::collections::{BTreeMap, HashMap};

use chrono::{NaiveDate, NaiveDateTime};
use datafusion::arrow::array::{Array, AsArray, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::prelude::SessionContext;

use crate::config::Pipeline;
use crate::engine;
use crate::error::{Error, Result};
use crate::inputs::Inputs;
use crate::rules::{self, Bounds};
use crate::state::{Rollup, StateStore};

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

    /// Its day: days since 1970-01-01 (the day it begins, at midnight).
    pub fn day(self) -> i32 {
        self.epoch().div_euclid(86_400) as i32
    }

    /// Whether it falls on midnight, as a run's cut-off does.
    pub fn is_midnight(self) -> bool {
        self.epoch().rem_euclid(86_400) == 0
    }
}

/// Replaces every `{{name}}` in `sql`; an unknown `{{…}}` left over is an error (a typo in an
/// analyst's query must not run silently). `{{#each snapshot}}…{{/each}}` repeats its text once
/// per snapshot, the copies joined by commas (`{{#each snapshot sep=" "}}`: by a space), with
/// that snapshot's parameters added (`snapshot`, `cutoff`, `cutoff_epoch`).
pub fn render(sql: &str, params: &HashMap<&str, String>, query: &str) -> Result<String> {
    render_with(sql, params, &[], query)
}

fn render_with(
    sql: &str,
    params: &HashMap<&str, String>,
    each: &[HashMap<&'static str, String>],
    query: &str,
) -> Result<String> {
    const OPEN: &str = "{{#each snapshot";
    const CLOSE: &str = "{{/each}}";
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&render_plain(&rest[..start], params, query)?);
        let after = &rest[start + OPEN.len()..];
        let head_end = after
            .find("}}")
            .ok_or_else(|| Error::config(None, format!("query {query}: unterminated `{OPEN}`")))?;
        let separator = match after[..head_end].trim() {
            "" => ", ",
            opt => opt
                .strip_prefix("sep=\"")
                .and_then(|s| s.strip_suffix('"'))
                .ok_or_else(|| {
                    Error::config(
                        None,
                        format!("query {query}: `{OPEN} {opt}}}}}`: the only option is sep=\"…\""),
                    )
                })?,
        };
        let body_and_rest = &after[head_end + 2..];
        let end = body_and_rest.find(CLOSE).ok_or_else(|| {
            Error::config(
                None,
                format!("query {query}: `{OPEN}` without a closing `{CLOSE}`"),
            )
        })?;
        let body = &body_and_rest[..end];
        if each.is_empty() {
            return Err(Error::config(
                None,
                format!("query {query}: `{OPEN}` is not available in this query"),
            ));
        }
        let copies = each
            .iter()
            .map(|extra| {
                let mut p = params.clone();
                p.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
                render_plain(body, &p, query)
            })
            .collect::<Result<Vec<_>>>()?;
        out.push_str(&copies.join(separator));
        rest = &body_and_rest[end + CLOSE.len()..];
    }
    out.push_str(&render_plain(rest, params, query)?);
    Ok(out)
}

fn render_plain(sql: &str, params: &HashMap<&str, String>, query: &str) -> Result<String> {
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

    /// Snapshot i at `cutoff + i days`, i = 0 … days − 1 (the base's cut-offs).
    pub fn ahead(cutoff: Cutoff, days: i64) -> Snapshots {
        Snapshots(
            (0..days)
                .map(|i| (i as i32, Cutoff(cutoff.0 + chrono::Duration::days(i))))
                .collect(),
        )
    }

    /// How many snapshots.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never: snapshot 0 is always there.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The cut-off of snapshot `id`.
    pub fn cutoff(&self, id: i32) -> Option<Cutoff> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, c)| *c)
    }

    /// The parameters of each snapshot's copy of an `#each snapshot` block: `snapshot` (its
    /// id), `cutoff` (SQL timestamp) and `cutoff_epoch` (seconds).
    fn params(&self) -> Vec<HashMap<&'static str, String>> {
        self.0
            .iter()
            .map(|(id, c)| {
                HashMap::from([
                    ("snapshot", id.to_string()),
                    ("cutoff", c.sql()),
                    ("cutoff_epoch", format!("{:?}", c.epoch() as f64)),
                ])
            })
            .collect()
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
    tables: BTreeMap<i32, CustomerTable>,
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

/// The parameters every query may use.
fn query_params(
    pipeline: &Pipeline,
    sample_share: f64,
    bounds: &Bounds,
) -> HashMap<&'static str, String> {
    let mut p = params(pipeline);
    p.insert(
        "in_sample",
        format!("(sample_unit(customer_id) < {sample_share:?})"),
    );
    p.insert(
        "event_reason",
        rules::reason_sql_before_any_cutoff(rules::Input::Events, bounds),
    );
    p
}

/// Computes the features of every snapshot in one streaming plan over one read of the
/// clickstream: queries/sessions.sql rolls events up per session and counts the rule reasons,
/// queries/engagement.sql and queries/order_history.sql give one row per snapshot and customer
/// (the earlier snapshots only for the `sample_share` of customers the models use), and
/// queries/features.sql joins them. Rows are ordered by snapshot and customer_id.
/// The events' counts go into `inputs.events`. With `state`, the clickstream's rollup reuses
/// the partials of unchanged files (src/state.rs); the returned rollup says what it did.
pub async fn customer_features(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    snapshots: &Snapshots,
    inputs: &mut Inputs,
    state: Option<StateStore<'_>>,
) -> Result<(SnapshotFeatures, Rollup)> {
    // `in_sample` only ever filters the earlier snapshots: a run of its own snapshot alone
    // (a night that scores) does not estimate the customers for it.
    let sample_share = if snapshots.len() > 1 {
        sample_share(ctx, pipeline.model.training_sample).await?
    } else {
        1.0
    };
    let bounds = &inputs.bounds;
    register_snapshots(ctx, snapshots).await?;

    let p = query_params(pipeline, sample_share, bounds);
    let rendered = render_features(
        &pipeline.engagement_sql,
        &pipeline.order_history_sql,
        &pipeline.features_sql,
        &p,
        snapshots,
    )?;
    let sessions = render(&pipeline.sessions_sql, &p, "sessions")?;
    let files = inputs
        .events
        .as_ref()
        .map(|e| e.sources.as_slice())
        .unwrap_or_default();
    let cutoff = snapshots.cutoff(0).ok_or_else(|| {
        Error::Model("the run's own snapshot (0) is missing from the snapshots".into())
    })?;
    let base_inputs = state.as_ref().filter(|s| !s.full).map(|s| {
        (
            s.root,
            s.previous.as_ref().and_then(|p| p.index.base.clone()),
        )
    });
    let mut rollup = crate::state::rollup(ctx, &sessions, cutoff, files, state).await?;
    let mut merged = rollup.sql.clone();
    let mut kept = None;
    if let (Some((root, previous)), Some(index)) = (base_inputs, rollup.index.as_ref()) {
        let night = crate::base::night(
            ctx,
            crate::base::BaseInputs {
                root,
                shape: &rollup.shape,
                index,
                previous,
                cutoff,
                run_date: &cutoff.days_before(1).0.format("%Y-%m-%d").to_string(),
                merged_sql: &rollup.sql,
                engagement_sql: &pipeline.engagement_sql,
                order_history_sql: &pipeline.order_history_sql,
                features_sql: &pipeline.features_sql,
                params: &p,
                snapshots,
                orders_files: &inputs.orders.sources,
                customers_files: inputs
                    .customers
                    .as_ref()
                    .map(|c| c.sources.as_slice())
                    .unwrap_or_default(),
                bounds: &inputs.bounds,
                tallies: &inputs.tallies,
                order_duplicates: inputs
                    .orders
                    .rejected
                    .contains_key(crate::rules::DUPLICATE_ORDER_ID),
                customer_duplicates: inputs.customers.as_ref().is_some_and(|c| {
                    c.rejected
                        .contains_key(crate::inputs::DUPLICATE_CUSTOMER_ID)
                }),
            },
        )
        .await?;
        merged = night.sessions_sql;
        kept = night.kept_features.map(|file| (root, file));
        rollup.report.base = Some(night.report);
        if let Some(index) = rollup.index.as_mut() {
            index.base = Some(night.reference);
        }
    }
    // Planned after the base, which may restrict `orders` and `customers` to the changed
    // customers.
    engine::create_view(
        ctx,
        "order_history",
        &rendered.order_history,
        "queries/order_history.sql",
    )
    .await?;
    let tee = engine::tee(
        ctx,
        &merged,
        "queries/sessions.sql (merged)",
        "sessions",
        "reason",
    )
    .await?;
    let features = async {
        engine::create_view(
            ctx,
            "engagement",
            &rendered.engagement,
            "queries/engagement.sql",
        )
        .await?;
        if let Some((root, file)) = &kept {
            let changed = std::sync::Arc::new(crate::base::changed_ids(ctx).await?);
            let tables = kept_with_changed(ctx, root, file, &rendered.features, &changed).await;
            crate::base::restore_inputs(ctx).await?;
            Ok((tables?, Some(changed)))
        } else {
            Ok((
                collect_by_snapshot(ctx, &rendered.features, snapshots).await?,
                None,
            ))
        }
    }
    .await;
    // Always finish the pass (its counts), even when the features failed.
    let side = tee.finish(ctx).await;
    // The pass's own error first: it names the cause (a bad file, a type).
    let counts = event_counts(&side?)?;
    let (tables, changed) = features?;
    if kept.is_some() {
        crate::base::release_night(ctx)?;
    }
    rollup.changed = changed;
    if let Some(events) = inputs.events.as_mut() {
        events.count_reasons(counts);
        events.use_the_rest();
    }
    Ok((SnapshotFeatures { tables }, rollup))
}

/// A night's features when the base keeps every unchanged customer's (src/base.rs):
/// features.sql over the changed customers' data, merged with the base's rows in `file`
/// but those of `changed_ids`.
async fn kept_with_changed(
    ctx: &SessionContext,
    root: &crate::storage::StoreRef,
    file: &str,
    features_sql: &str,
    changed_ids: &std::collections::HashSet<String>,
) -> Result<BTreeMap<i32, CustomerTable>> {
    use futures::StreamExt;
    let parts = ctx.state().config().target_partitions();
    let changed = async {
        let what = "queries/features.sql (the changed customers)";
        let mut running = engine::stream(ctx, features_sql, what).await?;
        let schema = running.stream.schema();
        let mut batches = Vec::new();
        while let Some(b) = running.stream.next().await {
            batches.push(b.map_err(|e| Error::engine(what, e))?);
        }
        running.done();
        Ok((schema, batches))
    };
    let batches = crate::base::merge_kept_features(root, file, parts, changed, changed_ids).await?;
    // A night has one snapshot, its own (0), as do the base's rows.
    Ok(BTreeMap::from([(
        0,
        CustomerTable::new(batches, "features")?,
    )]))
}

/// Registers `snapshots` as table `snapshots` in `ctx`.
pub(crate) async fn register_snapshots(ctx: &SessionContext, snapshots: &Snapshots) -> Result<()> {
    let batch = snapshots.batch()?;
    engine::register_batches(ctx, "snapshots", batch.schema(), vec![batch], "snapshots").await
}

/// The feature queries rendered for `snapshots` with parameters `p`.
pub(crate) struct Rendered {
    pub engagement: String,
    pub order_history: String,
    pub features: String,
}

/// Renders queries/engagement.sql, order_history.sql and features.sql.
pub(crate) fn render_features(
    engagement: &str,
    order_history: &str,
    features: &str,
    p: &HashMap<&'static str, String>,
    snapshots: &Snapshots,
) -> Result<Rendered> {
    Ok(Rendered {
        engagement: render_with(engagement, p, &snapshots.params(), "engagement")?,
        order_history: render(order_history, p, "order_history")?,
        features: render(features, p, "features")?,
    })
}

/// The share of customers the earlier snapshots keep so that about `customers` remain: the
/// number of customers is estimated (HyperLogLog: deterministic, and exact is not needed) from
/// the ids in the orders and customers files.
async fn sample_share(ctx: &SessionContext, customers: usize) -> Result<f64> {
    let sql = "SELECT approx_distinct(customer_id) AS n FROM \
               (SELECT customer_id FROM orders_raw UNION ALL SELECT customer_id FROM customers_raw)";
    let batches = engine::collect(ctx, sql, "estimating the number of customers").await?;
    let known = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| {
            cast(b.column(0), &DataType::Float64)
                .map(|c| c.as_primitive::<Float64Type>().value(0))
                .unwrap_or(0.0)
        })
        .unwrap_or(0.0);
    Ok(if known <= customers as f64 {
        1.0
    } else {
        customers as f64 / known
    })
}

/// Runs the features query and splits its rows by snapshot as they stream in.
async fn collect_by_snapshot(
    ctx: &SessionContext,
    sql: &str,
    snapshots: &Snapshots,
) -> Result<BTreeMap<i32, CustomerTable>> {
    use futures::StreamExt;
    let what = "queries/features.sql";
    let mut running = engine::stream(ctx, sql, what).await?;
    let mut parts: BTreeMap<i32, Vec<RecordBatch>> = BTreeMap::new();
    while let Some(b) = running.stream.next().await {
        let b = b.map_err(|e| Error::engine(what, e))?;
        let col = b
            .column_by_name("snapshot")
            .ok_or_else(|| Error::config(None, "query features must return a column `snapshot`"))?;
        let col =
            cast(col, &DataType::Int32).map_err(|e| Error::engine("reading snapshot", e.into()))?;
        for (id, _) in &snapshots.0 {
            let mask = datafusion::arrow::compute::kernels::cmp::eq(
                &col,
                &datafusion::arrow::array::Int32Array::new_scalar(*id),
            )
            .map_err(|e| Error::engine("splitting snapshots", e.into()))?;
            if mask.true_count() == 0 {
                continue;
            }
            let rows = if mask.true_count() == b.num_rows() {
                b.clone()
            } else {
                datafusion::arrow::compute::filter_record_batch(&b, &mask)
                    .map_err(|e| Error::engine("splitting snapshots", e.into()))?
            };
            parts.entry(*id).or_default().push(rows);
        }
    }
    running.done();
    let mut tables = BTreeMap::new();
    for (id, batches) in parts {
        tables.insert(id, CustomerTable::new(batches, "features")?);
    }
    Ok(tables)
}

/// Events per reason (a rule that rejected them, `after_cutoff` or `anonymous`): the sums of
/// the reason rows of queries/sessions.sql (`reason`, `events`).
fn event_counts(rows: &[RecordBatch]) -> Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for b in rows {
        let (Some(reason), Some(events)) = (b.column_by_name("reason"), b.column_by_name("events"))
        else {
            return Err(Error::config(
                None,
                "query sessions must return columns `reason` and `events`",
            ));
        };
        let reason = cast(reason, &DataType::Utf8)
            .map_err(|e| Error::engine("reading reason counts", e.into()))?;
        let events = cast(events, &DataType::Int64)
            .map_err(|e| Error::engine("reading reason counts", e.into()))?;
        let (reason, events) = (
            reason.as_string::<i32>(),
            events.as_primitive::<datafusion::arrow::datatypes::Int64Type>(),
        );
        for i in 0..b.num_rows() {
            let n = events.value(i).max(0) as u64;
            *counts.entry(reason.value(i).to_string()).or_default() += n;
        }
    }
    Ok(counts)
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

    /// Only the customers at `rows` (indices into this table), in that order.
    pub fn take(&self, rows: &[usize]) -> Result<CustomerTable> {
        let indices =
            datafusion::arrow::array::UInt32Array::from_iter_values(rows.iter().map(|&r| r as u32));
        let batch = datafusion::arrow::compute::take_record_batch(&self.batch, &indices)
            .map_err(|e| Error::engine(format!("sampling {}", self.query), e.into()))?;
        Ok(CustomerTable {
            batch,
            query: self.query,
        })
    }

    /// Customer ids as owned strings.
    pub fn ids(&self) -> Result<Vec<String>> {
        let col = self.id_array()?;
        Ok((0..col.len()).map(|i| col.value(i).to_string()).collect())
    }

    /// The customer ids as one string array, in row order (no copy when they are `Utf8`).
    pub fn id_array(&self) -> Result<StringArray> {
        let col = cast(self.column_by_name("customer_id")?, &DataType::Utf8)
            .map_err(|e| Error::engine("reading customer_id", e.into()))?;
        Ok(col.as_string::<i32>().clone())
    }

    /// A numeric column as an f64 array, nulls kept (no copy when it is `Float64`).
    pub fn numeric(&self, name: &str) -> Result<Float64Array> {
        let col = cast(self.column_by_name(name)?, &DataType::Float64).map_err(|e| {
            Error::config(
                None,
                format!("query {}: column `{name}` is not numeric: {e}", self.query),
            )
        })?;
        Ok(col.as_primitive::<Float64Type>().clone())
    }

    /// A numeric column as f64, nulls as NaN.
    pub fn f64(&self, name: &str) -> Result<Vec<f64>> {
        Ok(self.f64_values(name)?.collect())
    }

    /// A numeric column's values as f64 in row order, nulls as NaN: the same values as
    /// [`CustomerTable::numeric`] gives, without a `Float64` copy of a million-row integer
    /// column first (`as` is the cast arrow applies to them).
    pub fn f64_values(&self, name: &str) -> Result<Box<dyn Iterator<Item = f64> + '_>> {
        let col = self.column_by_name(name)?;
        fn values<T>(
            a: &datafusion::arrow::array::PrimitiveArray<T>,
            to: fn(T::Native) -> f64,
        ) -> Box<dyn Iterator<Item = f64> + '_>
        where
            T: datafusion::arrow::datatypes::ArrowPrimitiveType,
        {
            Box::new(a.iter().map(move |v| v.map_or(f64::NAN, to)))
        }
        use datafusion::arrow::datatypes::{Int32Type, Int64Type};
        Ok(match col.data_type() {
            DataType::Float64 => values(col.as_primitive::<Float64Type>(), |v| v),
            DataType::Int64 => values(col.as_primitive::<Int64Type>(), |v| v as f64),
            DataType::Int32 => values(col.as_primitive::<Int32Type>(), f64::from),
            _ => {
                let col = self.numeric(name)?;
                Box::new((0..col.len()).map(move |i| {
                    if col.is_null(i) {
                        f64::NAN
                    } else {
                        col.value(i)
                    }
                }))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f64_values_are_the_cast_values_without_the_cast() {
        use datafusion::arrow::array::{
            ArrayRef, Decimal128Array, Float32Array, Int32Array, Int64Array,
        };
        use std::sync::Arc;
        let batch = RecordBatch::try_from_iter([
            (
                "customer_id",
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef,
            ),
            (
                "i64",
                Arc::new(Int64Array::from(vec![Some(i64::MAX), None, Some(-3)])) as ArrayRef,
            ),
            (
                "i32",
                Arc::new(Int32Array::from(vec![Some(7), Some(i32::MIN), None])) as ArrayRef,
            ),
            (
                "f64",
                Arc::new(Float64Array::from(vec![Some(0.1), None, Some(-0.0)])) as ArrayRef,
            ),
            (
                "f32",
                Arc::new(Float32Array::from(vec![Some(0.1), Some(2.5), None])) as ArrayRef,
            ),
            (
                "dec",
                Arc::new(
                    Decimal128Array::from(vec![Some(12345), None, Some(-1)])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ) as ArrayRef,
            ),
        ])
        .unwrap();
        let table = CustomerTable::new(vec![batch], "test").unwrap();
        for name in ["i64", "i32", "f64", "f32", "dec"] {
            let cast: Vec<u64> = table
                .numeric(name)
                .unwrap()
                .iter()
                .map(|v| v.unwrap_or(f64::NAN).to_bits())
                .collect();
            let direct: Vec<u64> = table.f64_values(name).unwrap().map(f64::to_bits).collect();
            assert_eq!(direct, cast, "{name}");
            assert!(
                table.f64_values(name).unwrap().any(|v| v.is_nan()),
                "{name}"
            );
        }
        assert!(table.f64_values("missing").is_err());
    }

    #[test]
    fn cutoff_is_the_day_after() {
        let c = Cutoff::for_run_date(NaiveDate::from_ymd_opt(2026, 10, 31).unwrap());
        assert_eq!(c.sql(), "TIMESTAMP '2026-11-01 00:00:00'");
        assert_eq!(c.epoch(), 1_793_491_200);
        assert_eq!(c.days_before(90).sql(), "TIMESTAMP '2026-08-03 00:00:00'");
    }

    #[test]
    fn each_snapshot_blocks_repeat_with_their_parameters() {
        let p = HashMap::from([("rate", "0.01".to_string())]);
        let each: Vec<HashMap<&'static str, String>> = (0..3)
            .map(|i| HashMap::from([("snapshot", i.to_string())]))
            .collect();
        let sql = "SELECT {{#each snapshot}}x_{{snapshot}} * {{rate}}{{/each}} FROM t";
        assert_eq!(
            render_with(sql, &p, &each, "q").unwrap(),
            "SELECT x_0 * 0.01, x_1 * 0.01, x_2 * 0.01 FROM t"
        );
        let sql = "CASE s {{#each snapshot sep=\" \"}}WHEN {{snapshot}} THEN 1{{/each}} END";
        assert_eq!(
            render_with(sql, &p, &each, "q").unwrap(),
            "CASE s WHEN 0 THEN 1 WHEN 1 THEN 1 WHEN 2 THEN 1 END"
        );
        for bad in [
            "{{#each snapshot}}x",
            "{{#each snapshot sep=,}}x{{/each}}",
            "{{#each snapshot}}{{nope}}{{/each}}",
        ] {
            assert!(render_with(bad, &p, &each, "q").is_err(), "{bad}");
        }
        // Only queries that get snapshots may use the block.
        let err = render("{{#each snapshot}}x{{/each}}", &p, "q").unwrap_err();
        assert!(err.to_string().contains("not available"), "{err}");
    }

    /// A customers row without a sign-up date is a known customer at the run's own cut-off
    /// (snapshot 0) but, at an earlier snapshot, only with an order or a visit before it: a
    /// customer who arrives later must not train the models as a zero-history row.
    #[tokio::test]
    async fn customers_without_a_signup_date_are_not_known_before_they_show_up() {
        use crate::config::{
            DEFAULT_ENGAGEMENT_SQL, DEFAULT_FEATURES_SQL, DEFAULT_ORDER_HISTORY_SQL,
        };
        let ctx = SessionContext::new();
        crate::engine::register_functions(&ctx);
        for sql in [
            // c_old signed up long ago; c_null has no sign-up date and nothing else; c_late has
            // no sign-up date and a first order after the earlier snapshot; c_visit has no
            // sign-up date and a visit before it.
            "CREATE TABLE customers AS SELECT column1 AS customer_id, CAST(column2 AS TIMESTAMP) AS signup_ts \
             FROM (VALUES ('c_old', '2025-01-01 00:00:00'), ('c_null', NULL), ('c_late', NULL), ('c_visit', NULL))",
            "CREATE TABLE orders AS SELECT column1 AS order_id, column2 AS customer_id, \
             CAST(column3 AS TIMESTAMP) AS order_ts, column4 AS amount, 'completed' AS status, \
             0.0 AS discount_amount FROM (VALUES ('o1', 'c_late', '2026-10-01 12:00:00', 10.0))",
            "CREATE TABLE sessions AS SELECT column1 AS customer_id, 's1' AS session_id, \
             CAST(column2 AS TIMESTAMP) AS started, CAST(column2 AS TIMESTAMP) AS ended, \
             1 AS product_views, 0 AS add_to_carts, 0 AS checkouts, 0 AS purchases \
             FROM (VALUES ('c_visit', '2026-06-01 10:00:00'))",
        ] {
            crate::engine::collect(&ctx, sql, "test table").await.unwrap();
        }
        let cutoff = Cutoff::for_run_date(NaiveDate::from_ymd_opt(2026, 10, 31).unwrap());
        let snapshots = Snapshots::new(cutoff, &[90]);
        let batch = snapshots.batch().unwrap();
        let table =
            datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
        ctx.register_table("snapshots", std::sync::Arc::new(table))
            .unwrap();
        let mut p = HashMap::from([("monthly_discount_rate", "0.01".to_string())]);
        p.insert("in_sample", "true".to_string());
        let each = snapshots.params();
        for (name, sql) in [
            (
                "order_history",
                render(DEFAULT_ORDER_HISTORY_SQL, &p, "h").unwrap(),
            ),
            (
                "engagement",
                render_with(DEFAULT_ENGAGEMENT_SQL, &p, &each, "e").unwrap(),
            ),
        ] {
            crate::engine::create_view(&ctx, name, &sql, name)
                .await
                .unwrap();
        }
        let features = render(DEFAULT_FEATURES_SQL, &p, "f").unwrap();
        let rows = crate::engine::collect(
            &ctx,
            &format!(
                "SELECT snapshot, customer_id FROM ({features}) ORDER BY snapshot, customer_id"
            ),
            "features",
        )
        .await
        .unwrap();
        let mut known: Vec<(i32, String)> = Vec::new();
        for b in &rows {
            let snap = b
                .column(0)
                .as_primitive::<datafusion::arrow::datatypes::Int32Type>();
            let id = b.column(1).as_string::<i32>();
            for i in 0..b.num_rows() {
                known.push((snap.value(i), id.value(i).to_string()));
            }
        }
        let at = |s: i32| -> Vec<&str> {
            known
                .iter()
                .filter(|(k, _)| *k == s)
                .map(|(_, id)| id.as_str())
                .collect()
        };
        assert_eq!(at(0), ["c_late", "c_null", "c_old", "c_visit"], "{known:?}");
        assert_eq!(at(1), ["c_old", "c_visit"], "{known:?}");
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
