//! The incremental state of the clickstream rollup: a cache that can never change a result.
//!
//! queries/sessions.sql rolls events up into one row per (customer, session, UTC day), and it
//! is mergeable (counts, sums, min, max: checked in its plan, [`Shape`]). So each input file's
//! rows ("partial") are computed once and kept under `output.root/_state/sessions/<key>.parquet`,
//! where the key is a SHA-256 of the file's identity (URL, size, e-tag, last modified) and of
//! everything that shapes a partial (the rendered query with its row rules and
//! `quality.earliest_date`, the erasure list, [`STATE_FORMAT`], the build's version):
//!
//! ```text
//!  events files ──(new or changed: sessions.sql, one file at a time)──► _state/sessions/<key>.parquet
//!  unchanged files ─────────────────(their partial, from the index)──┘        │
//!                                                                             ▼
//!        merge: GROUP BY every key column but `day`; count/sum → sum, min → min, max → max;
//!        rows of days at or after the cut-off become one `after_cutoff` row. Only sessions
//!        whose key hash may occur in several rows are grouped (the index keeps that set);
//!        every other session's single row passes through an anti join
//!                                                                             ▼
//!                                          one row per session (what sessions.sql used to be)
//! ```
//! A run keeps an index of the partials it used (`_state/run_date=D/index-<run_id>.json`,
//! named by its manifest's `state.index`), written with its outputs; the next run reads the
//! index of the latest published run before it. So a killed run leaves the previous state in
//! force, a replaced, new or late file is recomputed, a deleted one drops out, an edited query
//! changes every key, and deleting `_state/` only costs time. Since cut-offs are at midnight
//! UTC, per-day rows apply the run's cut-off (and every snapshot's) exactly.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt64Array,
};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine;
use crate::error::{Error, Result};
use crate::features::Cutoff;
use crate::inputs::{self, SourceFile};
use crate::rules;
use crate::storage::StoreRef;

/// Version of the partials' and the index's format: part of every key.
pub const STATE_FORMAT: u32 = 2;
/// The partials' extra column: the session key's `key_hash` (NULL on reason rows), stored so
/// that no night hashes the keys of the reused partials again.
const KEY_HASH: &str = "_segmenter_key_hash";
/// Where the partials live, relative to the output root.
const PARTIALS_DIR: &str = "_state/sessions";
/// Files rolled up at the same time, per core.
const FILES_PER_CORE: usize = 2;
/// Names of read files listed in the manifest at most.
const LISTED_READS: usize = 50;

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How one column of the rollup merges across days and files.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    /// A GROUP BY column, or an expression of them.
    Key,
    /// The `day` key: merged away.
    Day,
    /// An aggregate merged by this function (`sum` for counts and sums, `min`, `max`).
    Merge(&'static str),
}

/// The rollup's output columns and how each merges, read from the query's logical plan.
#[derive(Debug, Clone)]
pub struct Shape {
    columns: Vec<(String, Role)>,
    schema: SchemaRef,
}

impl Shape {
    /// Plans `sql` (the rendered rollup) in `ctx` and checks it is mergeable: every column a
    /// GROUP BY column or count/sum/min/max, with `day` among the keys. Anything else is a
    /// configuration error (exit 2) naming the column.
    pub async fn of(ctx: &SessionContext, sql: &str) -> Result<Shape> {
        let what = "queries/sessions.sql";
        let df = ctx
            .sql(sql)
            .await
            .map_err(|e| Error::engine(format!("planning {what}"), e))?;
        let columns = roles(df.logical_plan()).map_err(|problem| {
            Error::config(
                None,
                format!(
                    "{what} cannot be kept as incremental state: {problem}. Every column must be a \
                     GROUP BY column or count(…), sum(…), min(…) or max(…) of the day's events, \
                     so that days and files merge exactly (README, \"Incremental runs\")"
                ),
            )
        })?;
        if columns.iter().any(|(n, _)| n == KEY_HASH) {
            return Err(Error::config(
                None,
                format!("{what} must not return a column named `{KEY_HASH}` (segmenter's own)"),
            ));
        }
        for (name, role) in [
            ("reason", Role::Key),
            ("customer_id", Role::Key),
            ("session_id", Role::Key),
            ("day", Role::Day),
            ("events", Role::Merge("sum")),
        ] {
            if !columns.iter().any(|(n, r)| n == name && *r == role) {
                let want = match role {
                    Role::Day => {
                        "the UTC day (date_trunc('day', event_ts)) among the GROUP BY keys"
                    }
                    Role::Key => "a GROUP BY column",
                    Role::Merge(_) => "count(*)",
                };
                return Err(Error::config(
                    None,
                    format!("{what} must return a column `{name}`: {want}"),
                ));
            }
        }
        Ok(Shape {
            columns,
            schema: Arc::new(df.schema().as_arrow().clone()),
        })
    }

    /// The merge of the per-day rows in `from` (a parenthesised query) into one row per
    /// session, cut at `cutoff`: rows of later days count as `after_cutoff` events. One pass:
    /// the cut is part of the keys (for the direct rollup of `segmenter evaluate`).
    pub fn merge_sql(&self, from: &str, cutoff: Cutoff) -> String {
        let late = format!("\"day\" >= {}", cutoff.sql());
        let mut select = Vec::new();
        let mut group = Vec::new();
        for (name, role) in &self.columns {
            let q = quoted(name);
            match role {
                Role::Day => {}
                Role::Key => {
                    let expr = if name == "reason" {
                        format!(
                            "CASE WHEN {late} THEN '{}' ELSE {q} END",
                            rules::AFTER_CUTOFF
                        )
                    } else {
                        format!("CASE WHEN {late} THEN NULL ELSE {q} END")
                    };
                    select.push(format!("{expr} AS {q}"));
                    group.push(expr);
                }
                Role::Merge(f) => select.push(format!("{f}({q}) AS {q}")),
            }
        }
        format!(
            "SELECT {} FROM {from} GROUP BY {}",
            select.join(", "),
            group.join(", ")
        )
    }

    /// [`Shape::merge_sql`] over a table: the rows before the cut-off grouped by their plain
    /// keys, and the later ones summed into one `after_cutoff` row (the reference the split
    /// merge is tested against).
    #[cfg(test)]
    fn merge_table_sql(&self, table: &str, cutoff: Cutoff) -> String {
        let l = self.merge_lists();
        let cut = cutoff.sql();
        format!(
            "SELECT {order} FROM ( \
               SELECT {keys}, {aggs} FROM {table} \
               WHERE \"day\" < {cut} OR \"day\" IS NULL GROUP BY {keys} \
               UNION ALL \
               SELECT {late_keys}, {aggs} FROM {table} WHERE \"day\" >= {cut} HAVING count(*) > 0)",
            order = l.order,
            keys = l.keys,
            aggs = l.aggs,
            late_keys = l.late_keys,
        )
    }

    /// The SELECT lists both table merges are made of.
    fn merge_lists(&self) -> MergeLists {
        let (mut keys, mut late_keys, mut aggs, mut raw, mut order) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (name, role) in &self.columns {
            let q = quoted(name);
            match role {
                Role::Day => continue,
                Role::Key if name == "reason" => {
                    keys.push(q.clone());
                    late_keys.push(format!("'{}' AS {q}", rules::AFTER_CUTOFF));
                }
                Role::Key => {
                    keys.push(q.clone());
                    late_keys.push(format!("NULL AS {q}"));
                }
                Role::Merge(f) => {
                    aggs.push(format!("{f}({q}) AS {q}"));
                    raw.push(format!("p.{q}"));
                }
            }
            order.push(q);
        }
        MergeLists {
            p_keys: keys
                .iter()
                .map(|k| format!("p.{k}"))
                .collect::<Vec<_>>()
                .join(", "),
            keys: keys.join(", "),
            late_keys: late_keys.join(", "),
            aggs: aggs.join(", "),
            raw: raw.join(", "),
            order: order.join(", "),
        }
    }
}

/// The SELECT lists of a merge, each joined by commas: the key columns (`keys`, and `p.`-
/// qualified in `p_keys`), the keys of the `after_cutoff` row (`late_keys`), the merged
/// aggregates (`aggs`) and the unmerged ones (`raw`, `p.`-qualified), and every output column
/// in the query's order (`order`).
struct MergeLists {
    keys: String,
    p_keys: String,
    late_keys: String,
    aggs: String,
    raw: String,
    order: String,
}

impl Shape {
    /// The key columns that identify a session (every key but `reason` and `day`).
    pub(crate) fn session_keys(&self) -> Vec<&str> {
        self.columns
            .iter()
            .filter(|(n, r)| *r == Role::Key && n != "reason")
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The merge of the per-day rows in `table` (partials: with [`KEY_HASH`]) when only the
    /// sessions whose key hash (`key_hash`, src/engine.rs) is in table `multi` (column `hash`)
    /// can have several rows: those and
    /// the reason rows are grouped, every other session row before the cut-off passes through
    /// as it is, and the rows at or after the cut-off are summed into one `after_cutoff` row.
    pub fn merge_split_sql(&self, table: &str, multi: &str, cutoff: Cutoff) -> String {
        self.merge_split_with_singles_sql(table, multi, None, cutoff)
    }

    /// [`Shape::merge_split_sql`] of `table`, plus the session rows of table `singles` (in
    /// [`Shape::stored_schema`]: no key hash), known to be their sessions' only rows: they
    /// pass through without the join that tells them from the others (a night's changed
    /// customers' base sessions, split from those of the new rows' sessions in Rust).
    pub fn merge_split_with_singles_sql(
        &self,
        table: &str,
        multi: &str,
        singles: Option<&str>,
        cutoff: Cutoff,
    ) -> String {
        let l = self.merge_lists();
        let on = format!("p.{} = m.\"hash\"", quoted(KEY_HASH));
        let cut = cutoff.sql();
        let singles = singles
            .map(|t| {
                format!(
                    "SELECT {p_keys}, {raw} FROM {t} p \
                     WHERE p.\"reason\" IS NULL AND p.\"day\" < {cut} UNION ALL ",
                    p_keys = l.p_keys,
                    raw = l.raw,
                )
            })
            .unwrap_or_default();
        format!(
            "SELECT {order} FROM ( {singles}\
               SELECT {p_keys}, {raw} FROM {table} p LEFT ANTI JOIN {multi} m ON {on} \
               WHERE p.\"reason\" IS NULL AND p.\"day\" < {cut} \
               UNION ALL \
               SELECT {keys}, {aggs} FROM ( \
                 SELECT p.* FROM {table} p LEFT SEMI JOIN {multi} m ON {on} \
                 WHERE p.\"reason\" IS NULL AND p.\"day\" < {cut} \
                 UNION ALL \
                 SELECT * FROM {table} WHERE \"reason\" IS NOT NULL AND (\"day\" < {cut} OR \"day\" IS NULL)) \
               GROUP BY {keys} \
               UNION ALL \
               SELECT {late_keys}, {aggs} FROM {table} WHERE \"day\" >= {cut} HAVING count(*) > 0)",
            order = l.order,
            p_keys = l.p_keys,
            raw = l.raw,
            keys = l.keys,
            aggs = l.aggs,
            late_keys = l.late_keys,
        )
    }

    /// The partial's schema: the rollup's columns and [`KEY_HASH`].
    pub(crate) fn partial_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(KEY_HASH, DataType::UInt64, true));
        Arc::new(Schema::new(fields))
    }

    /// The partial's schema without [`KEY_HASH`]: the base's sessions as stored (src/base.rs),
    /// which [`Shape::with_key_hashes`] and [`Shape::key_hash_sql`] give their hashes back.
    pub(crate) fn stored_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// The nearly unique columns of stored sessions, which take no dictionary
    /// ([`crate::outputs::ParquetSink::open_compact`]): the merged timestamps (min and max of
    /// event times) and the text session keys other than `customer_id` (unique ids sharing
    /// prefixes). `day` and counts repeat and keep their dictionaries.
    pub(crate) fn unique_columns(&self) -> Vec<&str> {
        self.columns
            .iter()
            .filter(|(name, role)| {
                let data_type = self.schema.field_with_name(name).map(|f| f.data_type());
                match (role, data_type) {
                    (Role::Merge(_), Ok(DataType::Timestamp(_, _))) => true,
                    (Role::Key, Ok(DataType::Utf8 | DataType::LargeUtf8)) => {
                        !matches!(name.as_str(), "reason" | "customer_id")
                    }
                    _ => false,
                }
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Stored session rows `sessions` split by their [`KEY_HASH`]: those whose hash is not in
    /// `multi` (as they are, no copy when none is), and those whose hash is, as partials (with
    /// their hash), or None when there are none.
    pub(crate) fn split_by_key_hash(
        &self,
        sessions: &RecordBatch,
        multi: &HashSet<u64>,
    ) -> Result<(RecordBatch, Option<RecordBatch>)> {
        let hashes = self.session_key_hashes(sessions)?;
        let in_multi = BooleanArray::from_iter(hashes.iter().map(|h| Some(multi.contains(h))));
        if in_multi.true_count() == 0 {
            return Ok((sessions.clone(), None));
        }
        let error = |e: datafusion::arrow::error::ArrowError| {
            Error::engine("splitting the stored sessions by key", e.into())
        };
        let not_in_multi = datafusion::arrow::compute::not(&in_multi).map_err(error)?;
        let singles = filter_record_batch(sessions, &not_in_multi).map_err(error)?;
        let mut columns = sessions.columns().to_vec();
        columns.push(Arc::new(UInt64Array::from(hashes)) as ArrayRef);
        let partials = RecordBatch::try_new(self.partial_schema(), columns).map_err(error)?;
        let partials = filter_record_batch(&partials, &in_multi).map_err(error)?;
        Ok((singles, Some(partials)))
    }

    /// `SELECT` of table `table` (session rows in [`Shape::stored_schema`]) as partials: its
    /// columns and their [`KEY_HASH`], as [`Shape::split_by_key_hash`] computes it.
    pub(crate) fn with_key_hashes_sql(&self, table: &str) -> String {
        let keys: Vec<String> = self.session_keys().iter().map(|k| quoted(k)).collect();
        format!(
            "SELECT *, key_hash({}) AS {} FROM {table}",
            keys.join(", "),
            quoted(KEY_HASH)
        )
    }

    /// The [`KEY_HASH`] of each of the session rows `sessions` (rollup columns).
    fn session_key_hashes(&self, sessions: &RecordBatch) -> Result<Vec<u64>> {
        let keys = self
            .session_keys()
            .iter()
            .map(|k| {
                sessions.column_by_name(k).cloned().ok_or_else(|| {
                    Error::config(None, format!("queries/sessions.sql must return `{k}`"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        engine::key_hashes(&keys)
    }

    /// Rows of the merge ([`Shape::merge_split_sql`]: one per session and per reason, no
    /// `day`) in the partials' schema, every row dated `day` (µs) and the sessions given their
    /// [`KEY_HASH`]: the reason rows other than `after_cutoff`, and the session rows. How the
    /// base keeps a merge as rows that merge again (src/base.rs).
    pub(crate) fn merged_as_partial(
        &self,
        batch: &RecordBatch,
        day: i64,
    ) -> Result<(RecordBatch, RecordBatch)> {
        let err = |e: datafusion::arrow::error::ArrowError| {
            Error::engine("keeping the merged sessions", e.into())
        };
        let schema = self.partial_schema();
        let rows = batch.num_rows();
        let mut columns = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let column: ArrayRef = if field.name() == "day" {
                let days =
                    datafusion::arrow::array::TimestampMicrosecondArray::from(vec![day; rows]);
                cast(&days, field.data_type()).map_err(err)?
            } else if field.name() == KEY_HASH {
                new_null_array(&DataType::UInt64, rows)
            } else {
                let c = batch.column_by_name(field.name()).ok_or_else(|| {
                    Error::Model(format!("the merged sessions lack `{}`", field.name()))
                })?;
                cast(c, field.data_type()).map_err(err)?
            };
            columns.push(column);
        }
        let all = RecordBatch::try_new(Arc::clone(&schema), columns).map_err(err)?;
        let reason = all
            .column_by_name("reason")
            .ok_or_else(|| Error::config(None, "queries/sessions.sql must return `reason`"))?;
        let reason = cast(reason, &DataType::Utf8).map_err(err)?;
        let reason = reason.as_string::<i32>();
        let is_session = datafusion::arrow::compute::is_null(reason).map_err(err)?;
        let is_kept_reason: datafusion::arrow::array::BooleanArray = reason
            .iter()
            .map(|r| Some(r.is_some_and(|r| r != rules::AFTER_CUTOFF)))
            .collect();
        let reasons = filter_record_batch(&all, &is_kept_reason).map_err(err)?;
        let sessions = filter_record_batch(&all, &is_session).map_err(err)?;
        let hashes: ArrayRef = Arc::new(UInt64Array::from(self.session_key_hashes(&sessions)?));
        let mut columns = sessions.columns().to_vec();
        let last = columns.len() - 1;
        columns[last] = hashes;
        let sessions = RecordBatch::try_new(schema, columns).map_err(err)?;
        Ok((reasons, sessions))
    }

    /// A file's rollup rows as its partial: the reason rows and the session rows apart (each
    /// its own row group, so the merge's scans of one kind skip the other's by their
    /// statistics), with [`KEY_HASH`] added; and the session rows' key hashes.
    fn partial_of(&self, batch: &RecordBatch) -> Result<(Vec<RecordBatch>, Vec<u64>)> {
        let err = |e: datafusion::arrow::error::ArrowError| {
            Error::engine("splitting the rollup's rows", e.into())
        };
        let reason = batch
            .column_by_name("reason")
            .ok_or_else(|| Error::config(None, "queries/sessions.sql must return `reason`"))?;
        let is_session = datafusion::arrow::compute::is_null(reason).map_err(err)?;
        let is_reason = datafusion::arrow::compute::not(&is_session).map_err(err)?;
        let sessions = filter_record_batch(batch, &is_session).map_err(err)?;
        let reasons = filter_record_batch(batch, &is_reason).map_err(err)?;
        let hashes = self.session_key_hashes(&sessions)?;
        let schema = self.partial_schema();
        let with = |b: &RecordBatch, hash: ArrayRef| {
            let mut columns = b.columns().to_vec();
            columns.push(hash);
            RecordBatch::try_new(Arc::clone(&schema), columns).map_err(err)
        };
        let parts = vec![
            with(
                &reasons,
                new_null_array(&DataType::UInt64, reasons.num_rows()),
            )?,
            with(&sessions, Arc::new(UInt64Array::from(hashes.clone())))?,
        ];
        Ok((parts, hashes))
    }
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

/// Each output column's role in `plan` (a SELECT over one GROUP BY), or what is not mergeable.
fn roles(plan: &LogicalPlan) -> std::result::Result<Vec<(String, Role)>, String> {
    let mut top = plan;
    while let LogicalPlan::Sort(s) = top {
        top = s.input.as_ref();
    }
    let LogicalPlan::Projection(projection) = top else {
        return Err("it must be one SELECT … GROUP BY …".into());
    };
    let LogicalPlan::Aggregate(agg) = projection.input.as_ref() else {
        return Err("it must be one SELECT … GROUP BY … (no HAVING, no outer query)".into());
    };
    let fields = agg.schema.columns();
    let n_groups = agg.group_expr.len();
    let out = plan.schema();
    let mut roles = Vec::new();
    for (i, expr) in projection.expr.iter().enumerate() {
        let name = out.field(i).name().clone();
        let role = match unalias(expr) {
            Expr::Column(c) => match fields.iter().position(|f| f == c) {
                Some(j) if j >= n_groups => merge_role(&agg.aggr_expr[j - n_groups])
                    .map_err(|p| format!("`{name}`: {p}"))?,
                Some(_) => Role::Key,
                None => return Err(format!("`{name}` is neither grouped nor aggregated")),
            },
            other => {
                let grouped = &fields[..n_groups];
                if other.column_refs().iter().all(|c| grouped.contains(c)) {
                    Role::Key
                } else {
                    return Err(format!(
                        "`{name}` = {other} computes with aggregates, which cannot be merged"
                    ));
                }
            }
        };
        let role = if name == "day" && role == Role::Key {
            Role::Day
        } else {
            role
        };
        roles.push((name, role));
    }
    Ok(roles)
}

fn merge_role(e: &Expr) -> std::result::Result<Role, String> {
    match unalias(e) {
        Expr::AggregateFunction(f) if f.params.distinct => Err(format!(
            "{}(DISTINCT …) cannot be merged across days and files",
            f.func.name()
        )),
        Expr::AggregateFunction(f) => match f.func.name() {
            "count" | "sum" => Ok(Role::Merge("sum")),
            "min" => Ok(Role::Merge("min")),
            "max" => Ok(Role::Merge("max")),
            other => Err(format!("{other}(…) cannot be merged across days and files")),
        },
        other => Err(format!("{other} is not an aggregate function")),
    }
}

/// One file's partial, as the index keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// The source file's URL.
    pub source: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its e-tag, when the store gives one.
    pub e_tag: Option<String>,
    /// Its last modification (RFC 3339).
    pub last_modified: String,
    /// Rows in the source file.
    pub rows: u64,
    /// The partial's key: its file is `_state/sessions/<key>.parquet`.
    pub key: String,
    /// Rows in the partial.
    pub partial_rows: u64,
    /// The partial's latest `day` (µs since the epoch; None: no day, or not recorded by an
    /// older index). The base reads one of its partials again only when this lies at
    /// or after its cut-off (src/base.rs).
    #[serde(default)]
    pub max_day: Option<i64>,
}

impl Entry {
    fn partial(&self) -> String {
        partial_name(&self.key)
    }
}

pub(crate) fn partial_name(key: &str) -> String {
    format!("{PARTIALS_DIR}/{key}.parquet")
}

/// The partials a run used: what the next run may reuse.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    /// [`STATE_FORMAT`] when written.
    pub format: u32,
    /// Digest of everything that shapes a partial (see the module documentation).
    pub shape: String,
    /// One entry per source file, in listing order.
    pub files: Vec<Entry>,
    /// A Parquet file (relative to the output root; one UInt64 column `hash`) of the session
    /// key hashes (`key_hash`) that may occur in more than one per-day row among these
    /// partials: every one that does is in it (one that does not may be too: a night adds
    /// its new sessions' hashes; a full read keeps only the repeated ones). The merge groups
    /// only these sessions; the others pass through.
    #[serde(default)]
    pub multi: Option<String>,
    /// Its rows.
    #[serde(default)]
    pub multi_rows: u64,
    /// The base these partials are merged into (src/base.rs), if any.
    #[serde(default)]
    pub base: Option<crate::base::BaseRef>,
}

/// What the manifest says about the state (`state`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// `incremental` (partials kept; some reused when `reused_files` > 0), `full` (`--full`:
    /// every file read again) or `off` (no output root to keep state in).
    pub mode: &'static str,
    /// Why nothing was reused, when nothing was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The index this run wrote (relative to the output root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// The run whose index was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_run_date: Option<String>,
    /// Source files whose partial was reused, and their rows.
    pub reused_files: usize,
    /// Rows of the reused files (not read).
    pub reused_rows: u64,
    /// Source files read (new, changed, or without a usable partial), and their rows.
    pub read_files: usize,
    /// Rows of the files read.
    pub read_rows: u64,
    /// Files in the previous index that are gone from the input.
    pub dropped_files: usize,
    /// Per-day rows merged (all partials).
    pub partial_rows: u64,
    /// Session key hashes that may have several rows (grouped by the next night's merge).
    pub multi_keys: u64,
    /// The files read (the first 50).
    pub read: Vec<String>,
    /// How the sessions and the features came from the base (src/base.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<crate::base::BaseReport>,
}

/// What the previous run left: its index and its date.
#[derive(Debug, Clone)]
pub struct Previous {
    /// Its date.
    pub run_date: String,
    /// Its index.
    pub index: Index,
}

/// The rollup of this run: the merge query to run, and the state it leaves.
pub struct Rollup {
    /// One row per session (and per reason): what the features read as `sessions`.
    pub sql: String,
    /// For the manifest.
    pub report: Report,
    /// The index to write with the outputs (None without state).
    pub index: Option<Index>,
    /// A table of the files read whose rows include rejects (for `_rejected/`), if any.
    pub rejects_table: Option<&'static str>,
    /// The keys for the index's `multi`, to write with it.
    pub multi: Option<RecordBatch>,
    /// The rollup's columns and how they merge.
    pub shape: Shape,
    /// The changed customers' ids, when a base kept every other customer's features
    /// (src/base.rs): their scores are computed tonight, the others' kept too.
    pub changed: Option<std::sync::Arc<std::collections::HashSet<String>>>,
}

/// Where the state lives and what may be reused.
pub struct StateStore<'a> {
    /// The output root.
    pub root: &'a StoreRef,
    /// The latest published run's index (None: nothing to reuse).
    pub previous: Option<Previous>,
    /// `--full`: reuse nothing.
    pub full: bool,
    /// Anything else that shapes a partial (the erasure list's digest).
    pub salt: String,
}

/// The rollup for a run cut at `cutoff`: `sql` is the rendered queries/sessions.sql (rules
/// without the cut-off), `files` the events input's readable files. With a store, partials
/// of unchanged files are reused and new ones written; without one (e.g. `evaluate`), the
/// merge runs straight over the query.
pub async fn rollup(
    ctx: &SessionContext,
    sql: &str,
    cutoff: Cutoff,
    files: &[SourceFile],
    store: Option<StateStore<'_>>,
) -> Result<Rollup> {
    let shape = Shape::of(ctx, sql).await?;
    let Some(store) = store.filter(|_| !files.is_empty()) else {
        return Ok(Rollup {
            sql: shape.merge_sql(&format!("({sql})"), cutoff),
            report: Report {
                mode: "off",
                ..Report::default()
            },
            index: None,
            rejects_table: None,
            multi: None,
            shape,
            changed: None,
        });
    };
    let digest = sha256_hex(
        format!(
            "format {STATE_FORMAT}\nsegmenter {}\nsalt {}\n{sql}",
            env!("CARGO_PKG_VERSION"),
            store.salt
        )
        .as_bytes(),
    );
    let mut report = Report {
        mode: if store.full { "full" } else { "incremental" },
        ..Report::default()
    };
    let reusable: HashMap<&str, &Entry> = match (&store.previous, store.full) {
        (_, true) => {
            report.why = Some("--full: every file read again".into());
            HashMap::new()
        }
        (None, false) => {
            report.why = Some("no previous state".into());
            HashMap::new()
        }
        (Some(p), false) if p.index.format != STATE_FORMAT || p.index.shape != digest => {
            report.why = Some(format!(
                "the state of {} was made by another rollup query, rules, erasure list or \
                 release: every file read again",
                p.run_date
            ));
            HashMap::new()
        }
        (Some(p), false) => {
            report.from_run_date = Some(p.run_date.clone());
            p.index.files.iter().map(|e| (e.key.as_str(), e)).collect()
        }
    };
    let existing = if reusable.is_empty() {
        HashSet::new()
    } else {
        existing_partials(store.root).await?
    };

    let mut entries: Vec<Option<Entry>> = Vec::with_capacity(files.len());
    let mut to_read = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let entry = Entry {
            source: file.url.clone(),
            size: file.meta.size,
            e_tag: file.meta.e_tag.clone(),
            last_modified: file.meta.last_modified.to_rfc3339(),
            rows: file.rows,
            key: String::new(),
            partial_rows: 0,
            max_day: None,
        };
        let key = sha256_hex(
            format!(
                "{digest}\n{}\n{}\n{}\n{}",
                entry.source,
                entry.size,
                entry.e_tag.as_deref().unwrap_or("-"),
                entry.last_modified
            )
            .as_bytes(),
        );
        match reusable.get(key.as_str()) {
            Some(kept) if existing.contains(&key) => {
                report.reused_files += 1;
                report.reused_rows += kept.rows;
                entries.push(Some((*kept).clone()));
            }
            _ => {
                to_read.push((i, Entry { key, ..entry }));
                entries.push(None);
            }
        }
    }
    if let Some(p) = &store.previous {
        let now: HashSet<&str> = files.iter().map(|f| f.url.as_str()).collect();
        report.dropped_files = p
            .index
            .files
            .iter()
            .filter(|e| !now.contains(e.source.as_str()))
            .count();
    }

    let bounds_cutoff = cutoff.0.and_utc().timestamp_micros();
    // Which sessions the merge must group: those whose key hash may occur more than once.
    // A night (few new rows): the new sessions' hashes and the previous state's; otherwise
    // every hash, sorted, and the repeated ones.
    let reused_partial_rows: u64 = entries.iter().flatten().map(|e| e.partial_rows).sum();
    let limit = (reused_partial_rows / 20).max(100_000) as usize;
    let previous_multi = match (&store.previous, reusable.is_empty()) {
        (Some(p), false) => match &p.index.multi {
            // Gone (e.g. `_state/` deleted by hand): every key hash is looked at again.
            Some(m) => match store.root.store.head(&store.root.key(m)).await {
                Ok(_) => Some((m.clone(), p.index.multi_rows)),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => {
                    return Err(Error::storage(
                        format!("reading {}", store.root.url_of(m)),
                        e,
                    ))
                }
            },
            None => None,
        },
        _ => None,
    };
    let mut new_hashes: Vec<u64> = Vec::new();
    let mut stream = futures::stream::iter(to_read.into_iter().map(|(i, entry)| {
        let shape = &shape;
        let root = store.root;
        async move {
            let (rows, rejects, hashes, max_day) =
                compute_partial(ctx, sql, shape, &entry, root, bounds_cutoff).await?;
            Ok::<_, Error>((
                i,
                Entry {
                    partial_rows: rows,
                    max_day,
                    ..entry
                },
                rejects,
                hashes,
            ))
        }
    }))
    .buffer_unordered(FILES_PER_CORE * ctx.state().config().target_partitions().max(1));
    let mut read_with_rejects = Vec::new();
    while let Some(done) = stream.next().await {
        let (i, entry, rejects, hashes) = done?;
        report.read_files += 1;
        report.read_rows += entry.rows;
        if rejects > 0 {
            read_with_rejects.push(entry.source.clone());
        }
        entries[i] = Some(entry);
        new_hashes.extend(hashes);
    }
    drop(stream);
    let any_reused = entries.iter().flatten().count() > report.read_files;
    let entries: Vec<Entry> = entries.into_iter().flatten().collect();
    report.read = entries
        .iter()
        .filter(|e| !reusable.contains_key(e.key.as_str()) || !existing.contains(&e.key))
        .map(|e| e.source.clone())
        .collect();
    report.read.sort();
    report.read.truncate(LISTED_READS);
    report.partial_rows = entries.iter().map(|e| e.partial_rows).sum();

    let urls: Vec<String> = entries
        .iter()
        .map(|e| store.root.url_of(&e.partial()))
        .collect();
    engine::replace_parquet_table(
        ctx,
        "session_partials",
        &urls,
        shape.partial_schema(),
        "the state",
    )?;
    let multi_schema = multi_schema();
    let hashes = match previous_multi {
        Some((old, rows)) if new_hashes.len() + rows as usize <= limit => {
            // A night: the new sessions may continue known ones; the known multi stay.
            engine::replace_parquet_table(
                ctx,
                "state_old_multi",
                &[store.root.url_of(&old)],
                Arc::clone(&multi_schema),
                "the state's multi keys",
            )?;
            let old = engine::collect(
                ctx,
                "SELECT hash FROM state_old_multi",
                "the state's multi keys",
            )
            .await?;
            for b in &old {
                let col = cast(b.column(0), &DataType::UInt64)
                    .map_err(|e| Error::engine("the state's multi keys", e.into()))?;
                new_hashes.extend(
                    col.as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
                        .values(),
                );
            }
            new_hashes
        }
        _ => {
            let mut all = if any_reused {
                let sql = format!(
                    "SELECT {key} AS hash FROM session_partials WHERE {key} IS NOT NULL",
                    key = quoted(KEY_HASH)
                );
                let batches = engine::collect(ctx, &sql, "reading the session key hashes").await?;
                let mut all = Vec::with_capacity(report.partial_rows as usize);
                for b in &batches {
                    let col = cast(b.column(0), &DataType::UInt64)
                        .map_err(|e| Error::engine("reading the session key hashes", e.into()))?;
                    all.extend(
                        col.as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
                            .values(),
                    );
                }
                all
            } else {
                new_hashes
            };
            all.sort_unstable();
            let repeated: Vec<u64> = all
                .windows(2)
                .filter(|w| w[0] == w[1])
                .map(|w| w[0])
                .collect();
            repeated
        }
    };
    let multi = register_multi(ctx, "state_multi", hashes).await?;
    let merge = shape.merge_split_sql("session_partials", "state_multi", cutoff);
    report.multi_keys = multi.num_rows() as u64;
    let rejects_table = if read_with_rejects.is_empty() {
        None
    } else {
        read_with_rejects.sort();
        inputs::register_event_files(ctx, "events_read", &read_with_rejects).await?;
        Some("events_read")
    };
    Ok(Rollup {
        sql: merge,
        report,
        index: Some(Index {
            format: STATE_FORMAT,
            shape: digest,
            files: entries,
            multi: None,
            multi_rows: multi.num_rows() as u64,
            base: None,
        }),
        rejects_table,
        multi: Some(multi),
        shape,
        changed: None,
    })
}

/// The schema of a set of session key hashes (`multi`): one UInt64 column `hash`.
fn multi_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "hash",
        DataType::UInt64,
        false,
    )]))
}

/// Registers `hashes`, sorted and each once, as table `name` of [`multi_schema`] (the
/// sessions a merge groups, [`Shape::merge_split_sql`]); returns its rows.
pub(crate) async fn register_multi(
    ctx: &SessionContext,
    name: &str,
    mut hashes: Vec<u64>,
) -> Result<RecordBatch> {
    hashes.sort_unstable();
    hashes.dedup();
    let multi = RecordBatch::try_new(
        multi_schema(),
        vec![Arc::new(UInt64Array::from(hashes)) as ArrayRef],
    )
    .map_err(|e| Error::engine(format!("the key hashes of {name}"), e.into()))?;
    engine::register_batches(ctx, name, multi_schema(), vec![multi.clone()], name).await?;
    Ok(multi)
}

/// The keys of the partials present under `_state/sessions/` (a partial named by an index
/// may have been removed by hand: then its file is read again).
async fn existing_partials(root: &StoreRef) -> Result<HashSet<String>> {
    let names: Vec<_> = root
        .store
        .list(Some(&root.key(PARTIALS_DIR)))
        .try_collect()
        .await
        .map_err(|e| Error::storage(format!("listing {}", root.url_of(PARTIALS_DIR)), e))?;
    Ok(names
        .iter()
        .filter_map(|m| m.location.filename())
        .filter_map(|f| f.strip_suffix(".parquet"))
        .map(str::to_string)
        .collect())
}

/// Rolls up one source file and writes its partial. Returns the partial's rows, the file's
/// rejected events (errors, not `anonymous`) before the cut-off (given in µs), the key
/// hashes of its sessions and its latest day (µs).
async fn compute_partial(
    ctx: &SessionContext,
    sql: &str,
    shape: &Shape,
    entry: &Entry,
    root: &StoreRef,
    cutoff_micros: i64,
) -> Result<(u64, u64, Vec<u64>, Option<i64>)> {
    // Each file's query uses every core, two files per core at a time (one partition per
    // file and more files at once was slower: 28.8 s against 21.0 s of features at 200,000).
    let sub = engine::sibling(ctx);
    inputs::register_event_files(&sub, "events_raw", std::slice::from_ref(&entry.source)).await?;
    let what = format!("queries/sessions.sql on {}", entry.source);
    let batches = engine::collect(&sub, sql, &what).await?;
    let schema = batches
        .first()
        .map(RecordBatch::schema)
        .unwrap_or_else(|| Arc::clone(&shape.schema));
    let batch = concat_batches(&schema, &batches)
        .map_err(|e| Error::engine(format!("collecting {what}"), e.into()))?;
    let rejects = rejects_before(&batch, cutoff_micros)?;
    let (parts, hashes) = shape.partial_of(&batch)?;
    crate::outputs::write_parquet_groups(root, &entry.partial(), &parts).await?;
    Ok((batch.num_rows() as u64, rejects, hashes, max_day(&batch)?))
}

/// The latest `day` of a rollup's rows (µs), if any row has one.
fn max_day(batch: &RecordBatch) -> Result<Option<i64>> {
    let day = batch
        .column_by_name("day")
        .ok_or_else(|| Error::config(None, "queries/sessions.sql must return `day`"))?;
    let day = cast(day, &DataType::Timestamp(TimeUnit::Microsecond, None))
        .map_err(|e| Error::engine("reading `day`", e.into()))?;
    Ok(datafusion::arrow::compute::max(
        day.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>(),
    ))
}

/// Events of reason rows that are errors, on days before the cut-off (or without a day).
fn rejects_before(batch: &RecordBatch, cutoff_micros: i64) -> Result<u64> {
    let col = |name: &str, ty: &DataType| -> Result<Arc<dyn Array>> {
        let c = batch.column_by_name(name).ok_or_else(|| {
            Error::config(None, format!("queries/sessions.sql must return `{name}`"))
        })?;
        cast(c, ty).map_err(|e| Error::engine(format!("reading `{name}`"), e.into()))
    };
    let reason = col("reason", &DataType::Utf8)?;
    let day = col("day", &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    let events = col("events", &DataType::Int64)?;
    let (reason, day, events) = (
        reason.as_string::<i32>(),
        day.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>(),
        events.as_primitive::<Int64Type>(),
    );
    Ok((0..batch.num_rows())
        .filter(|&i| reason.is_valid(i) && rules::is_error(reason.value(i)))
        .filter(|&i| day.is_null(i) || day.value(i) < cutoff_micros)
        .map(|i| events.value(i).max(0) as u64)
        .sum())
}

/// After this run published with index `now`: deletes the partials of `previous` that `now`
/// no longer uses (replaced or deleted source files, an edited query, a changed erasure list:
/// then the erased customers' rows leave the state too). Failures are logged; the next run
/// does not depend on them. Returns how many were removed.
pub async fn remove_superseded(root: &StoreRef, previous: &Index, now: &Index) -> usize {
    let keep: HashSet<&str> = now.files.iter().map(|e| e.key.as_str()).collect();
    let mut removed = 0;
    for e in previous
        .files
        .iter()
        .filter(|e| !keep.contains(e.key.as_str()))
    {
        match root.store.delete(&root.key(&e.partial())).await {
            Ok(()) => removed += 1,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(err) => tracing::warn!(
                partial = root.url_of(&e.partial()),
                error = %err,
                "could not remove a superseded partial of the state"
            ),
        }
    }
    removed
}

/// Reads the index a published run names (`state.index` in its manifest); `None` (logged)
/// when it is gone or unreadable: then every file is read again.
pub async fn read_index(root: &StoreRef, run_date: &str, name: &str) -> Result<Option<Previous>> {
    let Some(bytes) = crate::publish::read_object(root, name).await? else {
        tracing::warn!(
            index = root.url_of(name),
            "state index missing; reading every file"
        );
        return Ok(None);
    };
    match serde_json::from_slice::<Index>(&bytes) {
        Ok(index) => Ok(Some(Previous {
            run_date: run_date.to_string(),
            index,
        })),
        Err(e) => {
            tracing::warn!(index = root.url_of(name), error = %e, "state index unreadable; reading every file");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn shape(sql: &str) -> Result<Shape> {
        let ctx = SessionContext::new();
        ctx.sql(
            "CREATE TABLE events_raw (customer_id VARCHAR, session_id VARCHAR, \
             event_ts TIMESTAMP, event_type VARCHAR)",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
        Shape::of(&ctx, sql).await
    }

    const GOOD: &str = "SELECT CASE WHEN customer_id IS NULL THEN session_id END AS reason, \
        customer_id, session_id, date_trunc('day', event_ts) AS day, count(*) AS events, \
        min(event_ts) AS started, max(event_ts) AS ended, \
        count(*) FILTER (WHERE event_type = 'purchase') AS purchases \
        FROM events_raw GROUP BY customer_id, session_id, date_trunc('day', event_ts)";

    #[tokio::test]
    async fn the_shipped_rollup_is_mergeable() {
        let s = shape(GOOD).await.unwrap();
        let roles: Vec<_> = s
            .columns
            .iter()
            .map(|(n, r)| (n.as_str(), r.clone()))
            .collect();
        assert_eq!(
            roles,
            [
                ("reason", Role::Key),
                ("customer_id", Role::Key),
                ("session_id", Role::Key),
                ("day", Role::Day),
                ("events", Role::Merge("sum")),
                ("started", Role::Merge("min")),
                ("ended", Role::Merge("max")),
                ("purchases", Role::Merge("sum")),
            ]
        );
        let bounds = rules::Bounds {
            cutoff: String::new(),
            floor: "TIMESTAMP '1980-01-01 00:00:00'".into(),
        };
        let shipped = crate::config::DEFAULT_SESSIONS_SQL.replace(
            "{{event_reason}}",
            &rules::reason_sql_before_any_cutoff(rules::Input::Events, &bounds),
        );
        assert!(
            !rules::reason_sql_before_any_cutoff(rules::Input::Events, &bounds)
                .contains(rules::AFTER_CUTOFF)
        );
        shape(&shipped).await.unwrap();
    }

    #[tokio::test]
    async fn unmergeable_rollups_are_refused_with_the_column() {
        for (bad, named) in [
            (
                GOOD.replace("count(*) AS events", "count(DISTINCT event_ts) AS events"),
                "DISTINCT",
            ),
            (
                GOOD.replace("max(event_ts) AS ended", "avg(1) AS ended"),
                "avg",
            ),
            (
                GOOD.replace(
                    "min(event_ts) AS started",
                    "max(event_ts) - min(event_ts) AS started",
                ),
                "`started`",
            ),
            (
                GOOD.replace("date_trunc('day', event_ts) AS day, ", "")
                    .replace(", date_trunc('day', event_ts)", ""),
                "`day`",
            ),
        ] {
            let err = shape(&bad).await.unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
            assert!(err.to_string().contains(named), "{named}: {err}");
        }
    }

    #[tokio::test]
    async fn merging_days_equals_rolling_up_whole_sessions() {
        // Two files, a session across midnight in both, one event after the cut-off.
        let ctx = SessionContext::new();
        ctx.sql(
            "CREATE TABLE events_raw AS VALUES \
             ('c1', 's1', TIMESTAMP '2026-10-30 23:50:00', 'purchase'), \
             ('c1', 's1', TIMESTAMP '2026-10-31 00:10:00', 'page_view'), \
             ('c2', 's2', TIMESTAMP '2026-10-31 10:00:00', 'page_view'), \
             ('c2', 's3', TIMESTAMP '2026-11-01 00:00:00', 'page_view'), \
             (NULL, 's4', TIMESTAMP '2026-10-20 00:00:00', 'page_view')",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
        let sql = GOOD.replace(
            "FROM events_raw",
            "FROM (SELECT column1 AS customer_id, column2 AS session_id, column3 AS event_ts, \
             column4 AS event_type FROM events_raw)",
        );
        let s = Shape::of(&ctx, &sql).await.unwrap();
        let cutoff = Cutoff::for_run_date(chrono::NaiveDate::from_ymd_opt(2026, 10, 31).unwrap());
        engine::register_functions(&ctx);
        engine::collect(
            &ctx,
            &format!(
                "CREATE TABLE parts AS SELECT *, CASE WHEN reason IS NULL \
                 THEN key_hash(customer_id, session_id) END AS {KEY_HASH} FROM ({sql})"
            ),
            "partials",
        )
        .await
        .unwrap();
        engine::collect(
            &ctx,
            "CREATE TABLE mk AS SELECT key_hash(column1, column2) AS hash \
             FROM (VALUES ('c1', 's1'), ('c9', 's9'))",
            "multi keys",
        )
        .await
        .unwrap();
        // As a night splits its base's session rows (before the cut-off): those of sessions
        // not in `mk` pass as singles, the others stay with every other row.
        let before = engine::collect(
            &ctx,
            &format!(
                "SELECT * FROM ({sql}) WHERE reason IS NULL AND day < {}",
                cutoff.sql()
            ),
            "rows before the cut-off",
        )
        .await
        .unwrap();
        let multi: HashSet<u64> = engine::key_hashes(&[
            Arc::new(datafusion::arrow::array::StringArray::from(vec![
                "c1", "c9",
            ])) as ArrayRef,
            Arc::new(datafusion::arrow::array::StringArray::from(vec![
                "s1", "s9",
            ])) as ArrayRef,
        ])
        .unwrap()
        .into_iter()
        .collect();
        let (mut singles, mut multis) = (Vec::new(), Vec::new());
        for b in &before {
            let (single, multi) = s.split_by_key_hash(b, &multi).unwrap();
            singles.push(single);
            multis.extend(multi);
        }
        assert_eq!(singles.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
        assert_eq!(multis.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        engine::register_batches(&ctx, "singles", s.stored_schema(), singles, "singles")
            .await
            .unwrap();
        engine::register_batches(&ctx, "multis", s.partial_schema(), multis, "multis")
            .await
            .unwrap();
        engine::create_view(
            &ctx,
            "rest",
            &format!(
                "SELECT * FROM parts WHERE NOT (reason IS NULL AND day < {}) \
                 UNION ALL SELECT * FROM multis",
                cutoff.sql()
            ),
            "rest",
        )
        .await
        .unwrap();
        // The one-pass merge, the table merge, the split merge (only c1's session has two
        // rows; c9 has none) and the split merge given the singles apart give the same rows.
        for merged in [
            s.merge_sql(&format!("({sql})"), cutoff),
            s.merge_table_sql("parts", cutoff),
            s.merge_split_sql("parts", "mk", cutoff),
            s.merge_split_with_singles_sql("rest", "mk", Some("singles"), cutoff),
        ] {
            let rows = engine::collect(
                &ctx,
                &format!(
                    "SELECT reason, customer_id, session_id, events, purchases FROM ({merged}) \
                     ORDER BY reason NULLS FIRST, customer_id NULLS FIRST, session_id"
                ),
                "merge",
            )
            .await
            .unwrap();
            let text = datafusion::arrow::util::pretty::pretty_format_batches(&rows)
                .unwrap()
                .to_string();
            for line in [
                "|              | c1          | s1         | 2      | 1         |",
                "|              | c2          | s2         | 1      | 0         |",
                "| after_cutoff |             |            | 1      | 0         |",
                "| s4           |             | s4         | 1      | 0         |",
            ] {
                assert!(text.contains(line), "{line}\n{text}");
            }
            assert_eq!(
                rows.iter().map(|b| b.num_rows()).sum::<usize>(),
                4,
                "{text}"
            );
        }
    }
}
