//! The CSV files for marketing tools under `exports/run_date=D/`: one per segment
//! (`segment_<segment>-<run_id>.csv`, always written) and the `[[exports]]` of the pipeline
//! file (`<name>-<run_id>.csv`: a SQL predicate over customer_segments, as `csv` or as an ad
//! platform's `customer_match` list).
//!
//! Consent always applies: an e-mail address leaves the run only for a customer whose
//! customers row has `marketing_opt_in = true`. Every CSV starts with `customer_id`, except a
//! customer-match list (hashed addresses only), so an erasure can scrub kept files.

use std::collections::HashMap;

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Schema};
use datafusion::prelude::SessionContext;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::clustering::Segmentation;
use crate::config::{ExportFormat, ExportSpec, SEGMENT_EXPORT_PREFIX};
use crate::engine;
use crate::error::{Error, Result};
use crate::outputs::{csv_field, slug};

/// The opted-in addresses, as the exports see them: one row per customer, e-mail not empty.
const CONSENTED: &str = "SELECT customer_id, email FROM customers \
     WHERE marketing_opt_in AND email IS NOT NULL AND trim(email) <> ''";

/// What one configured export wrote, for the manifest.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExportRecord {
    /// `[[exports]].name`.
    pub name: String,
    /// `csv` or `customer_match`.
    pub format: ExportFormat,
    /// The file, relative to `output.root`.
    pub file: String,
    /// Data rows written (the header not counted).
    pub rows: usize,
    /// Customers the predicate selected but a customer-match list left out: no opted-in
    /// address (absent for csv, which keeps them with an empty `email`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_out_without_consent: Option<usize>,
    /// Why the export is empty or has no addresses, when it is so for a reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One CSV per segment: ids, scores and bands; the e-mail only for customers who opted in.
/// Returns (file stem, bytes).
pub fn per_segment(
    segs: &RecordBatch,
    c: &Segmentation,
    contacts: &Contacts,
) -> Result<Vec<(String, Vec<u8>)>> {
    let names = c.names();
    let index: HashMap<i32, usize> = c
        .model
        .segments
        .iter()
        .enumerate()
        .map(|(j, s)| (s.id, j))
        .collect();
    let col = |name: &str| -> Result<ArrayRef> {
        segs.column_by_name(name)
            .cloned()
            .ok_or_else(|| Error::Model(format!("customer_segments lacks {name}")))
    };
    let ids = col("customer_id")?;
    let ids = ids.as_string::<i32>();
    let seg_id = col("segment_id")?;
    let seg_id = seg_id.as_primitive::<Int32Type>();
    let mut text = Vec::new();
    for name in [
        "churn_risk",
        "value_segment",
        "lifecycle_stage",
        "loyalty_tier",
    ] {
        text.push(col(name)?);
    }
    let churn = col("churn_risk_score")?;
    let churn = churn.as_primitive::<Float64Type>();
    let value = col("value_score")?;
    let value = value.as_primitive::<Float64Type>();

    let text: Vec<&StringArray> = text.iter().map(|t| t.as_string::<i32>()).collect();
    // Rows in contiguous chunks, one per core, each into its own file bodies, joined in row
    // order: the same bytes as one pass.
    let chunks = crate::models::parallel::map_row_chunks(segs.num_rows(), |rows| {
        let mut files: Vec<Vec<u8>> = names.iter().map(|_| Vec::new()).collect();
        for i in rows {
            let Some(&seg) = index.get(&seg_id.value(i)) else {
                return vec![Err(Error::Model(format!(
                    "unknown segment id {}",
                    seg_id.value(i)
                )))];
            };
            let id = ids.value(i);
            let email = contacts.get(id).map(String::as_str).unwrap_or("");
            let out = &mut files[seg];
            for (k, field) in [id, email, names[seg].as_str()].into_iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(csv_field(field).as_bytes());
            }
            for t in &text {
                out.push(b',');
                out.extend_from_slice(t.value(i).as_bytes());
            }
            // Writing into a Vec<u8> cannot fail.
            std::io::Write::write_fmt(
                out,
                format_args!(",{:.6},{:.2}\n", churn.value(i), value.value(i)),
            )
            .unwrap_or_default();
        }
        vec![Ok(files)]
    });
    let header = "customer_id,email,segment,churn_risk,value_segment,lifecycle_stage,loyalty_tier,churn_risk_score,value_score\n";
    let mut files: Vec<Vec<u8>> = names.iter().map(|_| header.as_bytes().to_vec()).collect();
    for chunk in chunks {
        for (file, part) in files.iter_mut().zip(chunk?) {
            file.extend_from_slice(&part);
        }
    }
    Ok(names
        .iter()
        .map(|n| format!("{SEGMENT_EXPORT_PREFIX}{}", slug(n)))
        .zip(files)
        .collect())
}

/// Opted-in e-mail addresses by customer id.
pub type Contacts = HashMap<String, String>;

/// E-mail addresses of customers who opted in to marketing (only these are exported), read
/// once for every export of the run.
pub async fn contacts(ctx: &SessionContext) -> Result<Contacts> {
    let batches = engine::collect(ctx, CONSENTED, "reading contacts").await?;
    let mut out = HashMap::new();
    for b in batches {
        let ids =
            cast(b.column(0), &DataType::Utf8).map_err(|e| Error::engine("contacts", e.into()))?;
        let emails =
            cast(b.column(1), &DataType::Utf8).map_err(|e| Error::engine("contacts", e.into()))?;
        let (ids, emails) = (ids.as_string::<i32>(), emails.as_string::<i32>());
        for i in 0..b.num_rows() {
            out.insert(ids.value(i).to_string(), emails.value(i).to_string());
        }
    }
    Ok(out)
}

/// The ad platforms' normalisation and hash of an address: SHA-256 of the trimmed,
/// lower-cased text, as lower-case hex.
pub fn hashed_email(email: &str) -> String {
    hex(&email_digest(email))
}

/// SHA-256 of the trimmed, lower-cased address.
fn email_digest(email: &str) -> [u8; 32] {
    Sha256::digest(email.trim().to_lowercase().as_bytes()).into()
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// A configured export: its file stem and bytes, and its manifest record (whose `file` the
/// caller fills in).
pub struct Written {
    /// File stem (`name`).
    pub name: String,
    /// The CSV.
    pub bytes: Vec<u8>,
    /// For the manifest.
    pub record: ExportRecord,
}

/// Runs the `[[exports]]` over `segs` (customer_segments) joined with the opted-in addresses.
/// `has_customers`: whether the pipeline has a customers input (without one, there are no
/// addresses and the manifest says so). A predicate or column the engine rejects is an error
/// of the pipeline file `source` (exit 2) with the engine's message.
pub async fn configured(
    ctx: &SessionContext,
    segs: &RecordBatch,
    contacts: &Contacts,
    specs: &[ExportSpec],
    has_customers: bool,
    source: &str,
) -> Result<Vec<Written>> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    // Over what this process holds: in process even when the run's SQL runs on a cluster.
    let ctx = &crate::engine::in_process(ctx);
    // customer_segments as it is in memory, and beside it the same columns (shared, not
    // copied) plus `email`, looked up once: every export reads these two tables.
    let what = "registering customer_segments for the exports";
    let ids = segs
        .column_by_name("customer_id")
        .ok_or_else(|| Error::Model("customer_segments lacks customer_id".into()))?
        .as_string::<i32>();
    let email: StringArray = ids
        .iter()
        .map(|id| id.and_then(|id| contacts.get(id)).map(String::as_str))
        .collect();
    let mut fields: Vec<_> = segs.schema().fields().iter().cloned().collect();
    fields.push(std::sync::Arc::new(Field::new(
        "email",
        DataType::Utf8,
        true,
    )));
    let mut columns = segs.columns().to_vec();
    columns.push(std::sync::Arc::new(email));
    let with_email = RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::engine(what, e.into()))?;
    for (name, batch) in [
        ("customer_segments", segs.clone()),
        ("export_source", with_email),
    ] {
        ctx.deregister_table(name)
            .map_err(|e| Error::engine(what, e))?;
        ctx.register_batch(name, batch)
            .map_err(|e| Error::engine(what, e))?;
    }
    // Each export on its own task: their queries and CSVs share the cores.
    let running: Vec<_> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let (ctx, spec, source) = (ctx.clone(), spec.clone(), source.to_string());
            tokio::spawn(async move { export(&ctx, i, &spec, has_customers, &source).await })
        })
        .collect();
    let mut out = Vec::new();
    for written in futures::future::join_all(running).await {
        out.push(written.map_err(|e| Error::Model(format!("writing an export: {e}")))??);
    }
    Ok(out)
}

/// Runs export `spec` (`[[exports]]` number `i` of pipeline file `source`) over table
/// `export_source`.
async fn export(
    ctx: &SessionContext,
    i: usize,
    spec: &ExportSpec,
    has_customers: bool,
    source: &str,
) -> Result<Written> {
    let bad = |e: datafusion::error::DataFusionError| Error::Config {
        file: Some(source.to_string()),
        problems: vec![format!(
            "`exports[{i}]` (name \"{}\"): the query over customer_segments failed: {e}",
            spec.name
        )],
    };
    let predicate = &spec.predicate;
    let started = std::time::Instant::now();
    let (bytes, rows, left_out) = match spec.format {
        ExportFormat::Csv => {
            let columns: Vec<String> = spec
                .csv_columns()
                .iter()
                .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
                .collect();
            let sql = format!(
                "SELECT {} FROM export_source WHERE ({predicate}) ORDER BY customer_id",
                columns.join(", ")
            );
            let df = ctx.sql(&sql).await.map_err(bad)?;
            let schema = df.schema().as_arrow().clone();
            let batches = df.collect().await.map_err(bad)?;
            let rows = batches.iter().map(RecordBatch::num_rows).sum();
            (csv_bytes(&schema, &batches)?, rows, None)
        }
        ExportFormat::CustomerMatch => {
            let sql = format!("SELECT email FROM export_source WHERE ({predicate})");
            let batches = ctx
                .sql(&sql)
                .await
                .map_err(bad)?
                .collect()
                .await
                .map_err(bad)?;
            let mut emails = Vec::new();
            for b in &batches {
                emails.push(
                    cast(b.column(0), &DataType::Utf8)
                        .map_err(|e| Error::engine("hashing e-mails", e.into()))?,
                );
            }
            let emails: Vec<Option<&str>> = emails
                .iter()
                .flat_map(|e| e.as_string::<i32>().iter())
                .collect();
            let left_out = emails.iter().filter(|e| e.is_none()).count();
            let mut hashes: Vec<[u8; 32]> =
                crate::models::parallel::map_row_chunks(emails.len(), |rows| {
                    emails[rows]
                        .iter()
                        .flatten()
                        .map(|e| email_digest(e))
                        .collect()
                });
            // Sorted as their hex is (byte order), each once.
            hashes.sort_unstable();
            hashes.dedup();
            let mut bytes = Vec::with_capacity(6 + 65 * hashes.len());
            bytes.extend_from_slice(b"Email\n");
            for h in &hashes {
                bytes.extend_from_slice(hex(h).as_bytes());
                bytes.push(b'\n');
            }
            (bytes, hashes.len(), Some(left_out))
        }
    };
    tracing::debug!(
        export = spec.name,
        rows,
        seconds = started.elapsed().as_secs_f64(),
        "export written"
    );
    let needs_email = spec.format == ExportFormat::CustomerMatch
        || spec.csv_columns().iter().any(|c| c == "email");
    let note = if !has_customers && needs_email {
        Some(
            "no customers input (inputs.customers): there are no e-mail addresses, so \
             none is exported"
                .to_string(),
        )
    } else if rows == 0 {
        Some("no customer matches `where`".to_string())
    } else {
        None
    };
    Ok(Written {
        name: spec.name.clone(),
        bytes,
        record: ExportRecord {
            name: spec.name.clone(),
            format: spec.format,
            file: String::new(),
            rows,
            left_out_without_consent: left_out,
            note,
        },
    })
}

/// `batches` as UTF-8 CSV with a header (arrow's writer: RFC 4180 quoting), the header even
/// when there are no rows.
fn csv_bytes(
    schema: &datafusion::arrow::datatypes::Schema,
    batches: &[RecordBatch],
) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    {
        let mut w = datafusion::arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut buf);
        let empty = RecordBatch::new_empty(std::sync::Arc::new(schema.clone()));
        for b in std::iter::once(&empty).chain(batches) {
            w.write(b)
                .map_err(|e| Error::engine("writing an export", e.into()))?;
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised_then_hashed() {
        // sha256("test@example.com"), as `printf %s test@example.com | sha256sum` gives it.
        let want = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b";
        assert_eq!(hashed_email("test@example.com"), want);
        assert_eq!(hashed_email("  Test@Example.COM\t"), want);
        // sha256("") is never produced for a real address but checks the hex encoding.
        assert_eq!(
            hashed_email(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
