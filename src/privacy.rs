//! Erasure (`privacy.erased_customers`): customers who asked to be forgotten are removed from
//! every output from the next run on, and from the exports still kept from earlier runs.
//!
//! The list is one or more Parquet files with a `customer_id` column. The run reads it first
//! and filters the three inputs where they enter the engine (`orders_raw`, `events_raw` and
//! `customers_raw` become views that leave those customers out), so nothing downstream sees
//! them: not the features, the models, the tables, the exports, the rejected rows, nor the
//! transitions (the previous run's customers are filtered too). Then the exports of earlier
//! dates that retention still keeps are rewritten without their rows. The manifest's `privacy`
//! counts what was removed; it never lists the ids.
//!
//! In local mode the filter is `is_erased(customer_id)`, a function over the ids this process
//! holds. A cluster's executors cannot call it: there the ids travel in the plan itself, as
//! `customer_id NOT IN ('…', …)` ([`OnCluster`]), which DataFusion evaluates with a hash set,
//! row by row where the input is read. (An anti-join with the list as a table would put a
//! join, shipped or shuffled, in front of every input scan, and under Ballista's default
//! sort-merge joins sort every input by customer.) Which erased ids the inputs held is then
//! one more query at the end of the run ([`count_found`]) over the files the run read.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray, BooleanArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde::Serialize;

use crate::config::Location;
use crate::engine;
use crate::error::{Error, Result};
use crate::storage::StoreRef;

/// The erased ids and which of them the inputs contained.
#[derive(Debug, Default)]
pub struct Erasure {
    ids: HashSet<String>,
    seen: Mutex<HashSet<String>>,
}

/// What the manifest says about erasure.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct ErasureReport {
    /// Distinct ids in the erasure list.
    pub erased_ids_listed: usize,
    /// Of those, the ones found in this run's inputs (and left out of it).
    pub customers_removed: usize,
    /// Rows removed from the exports of earlier dates still kept.
    pub export_rows_removed: usize,
    /// Export files rewritten without them.
    pub export_files_rewritten: usize,
    /// Customer-match lists of earlier dates deleted (hashed addresses cannot be matched to
    /// an erased customer id).
    pub customer_match_lists_deleted: usize,
}

impl Erasure {
    /// Reads the erasure list at `location` (Parquet files with a `customer_id` column).
    pub async fn load(ctx: &SessionContext, location: &Location) -> Result<Arc<Erasure>> {
        let what = || format!("reading the erasure list {}", location.as_str());
        let df = ctx
            .read_parquet(location.as_str(), ParquetReadOptions::default())
            .await
            .map_err(|e| Error::InputRejected(format!("{}: {e}; it must be Parquet files with a customer_id column (privacy.erased_customers)", what())))?;
        let batches = df
            .select_columns(&["customer_id"])
            .map_err(|e| {
                Error::InputRejected(format!(
                    "{}: {e} (privacy.erased_customers needs a customer_id column)",
                    what()
                ))
            })?
            .collect()
            .await
            .map_err(|e| Error::engine(what(), e))?;
        let mut ids = HashSet::new();
        for b in batches {
            let col =
                cast(b.column(0), &DataType::Utf8).map_err(|e| Error::engine(what(), e.into()))?;
            ids.extend(col.as_string::<i32>().iter().flatten().map(str::to_string));
        }
        tracing::info!(erased_ids = ids.len(), "erasure list read");
        Ok(Arc::new(Erasure {
            ids,
            seen: Mutex::default(),
        }))
    }

    /// Whether `id` is erased (and then remembered as found in the inputs).
    pub fn contains(&self, id: &str) -> bool {
        let erased = self.ids.contains(id);
        if erased {
            if let Ok(mut seen) = self.seen.lock() {
                seen.insert(id.to_string());
            }
        }
        erased
    }

    /// Whether `id` is on the list (without counting it as found in the inputs).
    pub fn listed(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// A digest of the list (sorted ids): what the incremental state is keyed by, so that
    /// a changed list recomputes every file without the erased customers.
    pub fn digest(&self) -> String {
        let mut ids: Vec<&String> = self.ids.iter().collect();
        ids.sort_unstable();
        let joined: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
        crate::state::sha256_hex(joined.join("\n").as_bytes())
    }

    /// Whether the list is empty (then nothing is filtered).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The counts so far (the export counts are filled by [`Erasure::scrub_exports`]).
    pub fn report(&self) -> ErasureReport {
        ErasureReport {
            erased_ids_listed: self.ids.len(),
            customers_removed: self.seen.lock().map(|s| s.len()).unwrap_or(0),
            ..Default::default()
        }
    }

    /// `is_erased(customer_id)`: true for an erased id, false otherwise (also for NULL).
    pub fn udf(self: &Arc<Self>) -> ScalarUDF {
        let erasure = Arc::clone(self);
        #[allow(deprecated)]
        datafusion::logical_expr::create_udf(
            "is_erased",
            vec![DataType::Utf8],
            DataType::Boolean,
            Volatility::Volatile,
            Arc::new(move |args: &[ColumnarValue]| {
                let arrays = ColumnarValue::values_to_arrays(args)?;
                let ids = cast(&arrays[0], &DataType::Utf8)?;
                let ids = ids.as_string::<i32>();
                let out: BooleanArray = (0..ids.len())
                    .map(|i| Some(!ids.is_null(i) && erasure.contains(ids.value(i))))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }),
        )
    }

    /// Puts the filter in force in `ctx` for the inputs registered after it
    /// ([`filtered_view`]): `is_erased` in local mode, the ids in the plans on a cluster
    /// ([`OnCluster`]). Nothing when the list is empty.
    pub fn install(self: &Arc<Self>, ctx: &SessionContext) {
        if self.is_empty() {
            return;
        }
        if !engine::is_cluster(ctx) {
            ctx.register_udf(self.udf());
            return;
        }
        let mut ids: Vec<&str> = self.ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        let quoted: Vec<String> = ids
            .iter()
            .map(|id| format!("'{}'", id.replace('\'', "''")))
            .collect();
        let on_cluster = OnCluster {
            erasure: Arc::clone(self),
            in_list: format!("({})", quoted.join(",")),
            read: Mutex::default(),
        };
        let state = ctx.state_ref();
        let mut state = state.write();
        state.config_mut().set_extension(Arc::new(on_cluster));
    }

    /// The run's last erasure step, once its own files are written: the exports of earlier
    /// dates are scrubbed ([`Erasure::scrub_exports`]); returns the manifest's counts.
    pub async fn scrub(&self, root: &StoreRef, run_date: &str) -> Result<ErasureReport> {
        let (rows, files, lists) = self.scrub_exports(root, run_date).await?;
        let report = ErasureReport {
            export_rows_removed: rows,
            export_files_rewritten: files,
            customer_match_lists_deleted: lists,
            ..self.report()
        };
        tracing::info!(
            erased_ids_listed = report.erased_ids_listed,
            customers_removed = report.customers_removed,
            export_rows_removed = rows,
            export_files_rewritten = files,
            customer_match_lists_deleted = lists,
            "erased customers removed"
        );
        Ok(report)
    }

    /// Rewrites the CSV exports of dates before `run_date` without the erased customers' rows
    /// (the first column of every export is `customer_id`) and deletes their customer-match
    /// lists (hashed addresses, no ids). Returns (rows removed, files rewritten, lists deleted).
    pub async fn scrub_exports(
        &self,
        root: &StoreRef,
        run_date: &str,
    ) -> Result<(usize, usize, usize)> {
        let prefix = root.key("exports");
        let objects: Vec<_> = root
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| Error::storage(format!("listing {}", root.url_of("exports/")), e))?;
        let (mut rows, mut files, mut lists) = (0, 0, 0);
        for m in objects {
            let key = m.location.as_ref();
            let older = key
                .split('/')
                .find_map(|p| p.strip_prefix("run_date="))
                .is_some_and(|d| d < run_date);
            if !older || !key.ends_with(".csv") {
                continue;
            }
            let url = format!("{}", m.location);
            let data = root
                .store
                .get(&m.location)
                .await
                .map_err(|e| Error::storage(format!("reading {url}"), e))?
                .bytes()
                .await
                .map_err(|e| Error::storage(format!("reading {url}"), e))?;
            let text = String::from_utf8_lossy(&data);
            let records = csv_records(&text);
            if records.first().is_some_and(|h| h.trim_end() == "Email") {
                // A customer-match list holds hashed addresses only: an erased customer's row
                // cannot be found in it, so the kept lists of earlier dates go (the list of
                // this run, without the erased customers, replaces them).
                root.store
                    .delete(&m.location)
                    .await
                    .map_err(|e| Error::storage(format!("deleting {url}"), e))?;
                lists += 1;
                continue;
            }
            let kept: Vec<&str> = records
                .iter()
                .enumerate()
                .filter(|(i, r)| *i == 0 || !self.ids.contains(&first_field(r)))
                .map(|(_, r)| *r)
                .collect();
            let removed = records.len() - kept.len();
            if removed == 0 {
                continue;
            }
            let body = kept.concat();
            root.store
                .put(&m.location, PutPayload::from(Bytes::from(body)))
                .await
                .map_err(|e| Error::storage(format!("rewriting {url}"), e))?;
            rows += removed;
            files += 1;
        }
        Ok((rows, files, lists))
    }
}

/// The erasure list of a run on a cluster, kept in its session's settings (so that the
/// sessions made from it find it too): the ids as an SQL list, and the input files the run
/// filtered, by schema, for [`count_found`].
#[derive(Debug)]
pub struct OnCluster {
    erasure: Arc<Erasure>,
    /// `('id1','id2',…)`, sorted, quotes doubled.
    in_list: String,
    read: Mutex<Vec<(SchemaRef, BTreeSet<String>)>>,
}

impl OnCluster {
    /// Notes that the run reads `urls` (of `schema`).
    fn note(&self, schema: &SchemaRef, urls: &[String]) {
        let Ok(mut read) = self.read.lock() else {
            return;
        };
        match read.iter_mut().find(|(s, _)| s == schema) {
            Some((_, set)) => set.extend(urls.iter().cloned()),
            None => read.push((Arc::clone(schema), urls.iter().cloned().collect())),
        }
    }
}

/// With an erasure list in force in `ctx`, the SQL of a view of `files` (an input of
/// `schema`, read from `urls`) that leaves the erased customers out; None without one.
/// Rows without a customer id are kept (the quality gate rejects them later, and counts them).
pub fn filtered_view(
    ctx: &SessionContext,
    files: &str,
    schema: &SchemaRef,
    urls: &[String],
) -> Option<String> {
    let on_cluster = ctx.state_ref().read().config().get_extension::<OnCluster>();
    if let Some(on) = on_cluster {
        on.note(schema, urls);
        return Some(format!(
            "SELECT * FROM {files} WHERE customer_id IS NULL OR customer_id NOT IN {}",
            on.in_list
        ));
    }
    if datafusion::execution::FunctionRegistry::udf(ctx, "is_erased").is_ok() {
        return Some(format!(
            "SELECT * FROM {files} WHERE customer_id IS NULL OR NOT is_erased(customer_id)"
        ));
    }
    None
}

/// On a cluster, finds which erased ids the files the run read hold (one query over their
/// `customer_id` columns) and counts them as removed; nothing in local mode, where
/// `is_erased` counted them as it filtered.
pub async fn count_found(ctx: &SessionContext) -> Result<()> {
    let on_cluster = ctx.state_ref().read().config().get_extension::<OnCluster>();
    let Some(on) = on_cluster else {
        return Ok(());
    };
    let read = on.read.lock().map(|r| r.clone()).unwrap_or_default();
    if read.is_empty() {
        return Ok(());
    }
    let sub = engine::sibling(ctx);
    let mut arms = Vec::new();
    for (i, (schema, urls)) in read.into_iter().enumerate() {
        let name = format!("read_{i}");
        let urls: Vec<String> = urls.into_iter().collect();
        engine::replace_parquet_table(&sub, &name, &urls, schema, "the inputs read")?;
        arms.push(format!(
            "SELECT customer_id FROM {name} WHERE customer_id IN {}",
            on.in_list
        ));
    }
    let sql = format!(
        "SELECT DISTINCT customer_id FROM ({}) found",
        arms.join(" UNION ALL ")
    );
    let batches = engine::collect(&sub, &sql, "finding the erased customers in the inputs").await?;
    for b in &batches {
        let ids = cast(b.column(0), &DataType::Utf8)
            .map_err(|e| Error::engine("finding the erased customers", e.into()))?;
        for id in ids.as_string::<i32>().iter().flatten() {
            on.erasure.contains(id);
        }
    }
    Ok(())
}

/// The records of an RFC 4180 text, each with its line ending (a quoted field may hold one).
fn csv_records(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '\n' if !quoted => {
                out.push(&text[start..=i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// The first field of a CSV record, unquoted.
fn first_field(record: &str) -> String {
    let record = record.trim_end_matches(['\n', '\r']);
    if let Some(rest) = record.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    out.push('"');
                    chars.next();
                } else {
                    break;
                }
            } else {
                out.push(c);
            }
        }
        out
    } else {
        record.split(',').next().unwrap_or_default().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_records_keep_quoted_line_breaks_and_first_fields_unquote() {
        let text = "customer_id,email\nC1,a@x\n\"C,2\",\"multi\nline\"\nC3,\n";
        let records = csv_records(text);
        assert_eq!(records.len(), 4, "{records:?}");
        assert_eq!(first_field(records[2]), "C,2");
        assert_eq!(first_field(records[1]), "C1");
        assert_eq!(first_field("\"a\"\"b\",x\n"), "a\"b");
    }
}
