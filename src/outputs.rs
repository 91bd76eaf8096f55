//! Outputs: the customer_segments and segment_summary tables (Parquet, Hive-partitioned by
//! run_date), one CSV per segment for marketing, and the manifest that publishes the run
//! (written by [`crate::publish`], which also says in which order files appear).
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::async_writer::AsyncArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use object_store::buffered::BufWriter;
use object_store::{ObjectStoreExt, PutPayload};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::storage::StoreRef;

/// Every string column as Utf8, every integer as Int64, every float as Float64, timestamps as
/// µs UTC: types every reader (DuckDB, Spark, pandas) handles without options.
pub fn portable(batch: &RecordBatch) -> Result<RecordBatch> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        let target = match field.data_type() {
            DataType::Utf8View | DataType::LargeUtf8 | DataType::Dictionary(_, _) => DataType::Utf8,
            DataType::Int8
            | DataType::Int16
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64 => DataType::Int64,
            DataType::Float16 | DataType::Float32 | DataType::Decimal128(_, _) => DataType::Float64,
            DataType::Timestamp(_, _) => DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Microsecond,
                Some("UTC".into()),
            ),
            other => other.clone(),
        };
        let col = if &target == field.data_type() {
            Arc::clone(col)
        } else {
            cast(col, &target)
                .map_err(|e| Error::engine(format!("converting {}", field.name()), e.into()))?
        };
        fields.push(Field::new(field.name(), target, field.is_nullable()));
        columns.push(col);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::engine("assembling output", e.into()))
}

/// Writes `batch` as one Parquet file at `name` under `root`; returns its URL.
pub async fn write_parquet(root: &StoreRef, name: &str, batch: &RecordBatch) -> Result<String> {
    write_parquet_groups(root, name, std::slice::from_ref(batch)).await
}

/// [`write_parquet`] of several batches of one schema, each starting a row group of its own
/// (so a reader prunes the groups a filter excludes by their statistics); empty batches are
/// left out, and a file of none has the first batch's schema and no rows.
pub async fn write_parquet_groups(
    root: &StoreRef,
    name: &str,
    batches: &[RecordBatch],
) -> Result<String> {
    let Some(first) = batches.first() else {
        return Err(Error::Model(format!(
            "nothing to write at {}",
            root.url_of(name)
        )));
    };
    write_parquet_schema(root, name, first.schema(), batches).await
}

/// [`write_parquet_groups`] of `schema`, which may have no batch (a file with no rows).
pub async fn write_parquet_schema(
    root: &StoreRef,
    name: &str,
    schema: datafusion::arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
) -> Result<String> {
    let key = root.key(name);
    let url = root.url_of(name);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(1 << 20))
        .build();
    let writer = BufWriter::new(Arc::clone(&root.store), key);
    let mut w = AsyncArrowWriter::try_new(writer, schema, Some(props))
        .map_err(|e| Error::parquet(format!("opening {url}"), e))?;
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        w.write(batch)
            .await
            .map_err(|e| Error::parquet(format!("writing {url}"), e))?;
        w.flush()
            .await
            .map_err(|e| Error::parquet(format!("writing {url}"), e))?;
    }
    w.close()
        .await
        .map_err(|e| Error::parquet(format!("closing {url}"), e))?;
    Ok(url)
}

/// A Parquet file written as its batches come (multipart on object stores), for tables too
/// large to hold whole (the base's sessions).
pub struct ParquetSink {
    writer: AsyncArrowWriter<BufWriter>,
    url: String,
    rows: u64,
}

impl ParquetSink {
    /// Opens `name` under `root` for batches of `schema`.
    pub fn open(root: &StoreRef, name: &str, schema: SchemaRef) -> Result<ParquetSink> {
        let url = root.url_of(name);
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(1 << 20))
            .build();
        let writer = BufWriter::new(Arc::clone(&root.store), root.key(name));
        let writer = AsyncArrowWriter::try_new(writer, schema, Some(props))
            .map_err(|e| Error::parquet(format!("opening {url}"), e))?;
        Ok(ParquetSink {
            writer,
            url,
            rows: 0,
        })
    }

    /// Appends `batch`.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows() as u64;
        self.writer
            .write(batch)
            .await
            .map_err(|e| Error::parquet(format!("writing {}", self.url), e))
    }

    /// Finishes the file; returns its rows.
    pub async fn close(self) -> Result<u64> {
        self.writer
            .close()
            .await
            .map_err(|e| Error::parquet(format!("closing {}", self.url), e))?;
        Ok(self.rows)
    }
}

/// Writes raw bytes (CSV, JSON) at `name` under `root`; returns its URL.
pub async fn write_bytes(root: &StoreRef, name: &str, data: Vec<u8>) -> Result<String> {
    let url = root.url_of(name);
    root.store
        .put(&root.key(name), PutPayload::from(Bytes::from(data)))
        .await
        .map_err(|e| Error::storage(format!("writing {url}"), e))?;
    Ok(url)
}

/// Quotes a CSV field when needed (RFC 4180).
pub fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        std::borrow::Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// A file-name-safe slug of a segment name: `At risk` → `at_risk`.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

/// The manifest: what was read, how it was modelled, what was written, how long it took.
#[derive(Debug, Serialize)]
pub struct Manifest<'a, I: Serialize, M: Serialize, C: Serialize, P: Serialize> {
    /// Version of this file's format ([`crate::publish::MANIFEST_FORMAT`]); absent in
    /// manifests of builds before it (read as 0).
    pub format: u32,
    /// Unique id of this attempt; every data file of the run carries it in its name.
    pub run_id: &'a str,
    /// Logical date (`--date`).
    pub run_date: &'a str,
    /// First instant the run did not see (UTC).
    pub cutoff: String,
    /// `segmenter` and its version.
    pub software: BTreeMap<&'static str, &'static str>,
    /// Wall-clock start and end (UTC, RFC 3339).
    pub started_at: String,
    /// See `started_at`.
    pub finished_at: String,
    /// Inputs read, with row counts and rejects by reason.
    pub inputs: I,
    /// Known customers scored.
    pub customers: usize,
    /// Model reports.
    pub models: M,
    /// Clustering and segment names.
    pub clustering: C,
    /// The effective pipeline settings (URLs and numbers only).
    pub pipeline: P,
    /// Files written, by table.
    pub outputs: BTreeMap<&'static str, Vec<String>>,
    /// Seconds per stage.
    pub timings: BTreeMap<&'static str, f64>,
    /// The process's peak resident memory at the end of each stage, in MiB (the high-water
    /// mark so far: a stage that raised it is where the memory went). Empty off Linux.
    pub peak_rss_mib: BTreeMap<&'static str, u64>,
    /// Time limits (`[limits]`) that passed, with `on_exceeded = "warn"`.
    pub limits_exceeded: Vec<crate::limits::Exceeded>,
    /// What erasure removed (`privacy.erased_customers`; absent when none is configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privacy: Option<crate::privacy::ErasureReport>,
    /// The clickstream's incremental state: files and rows reused and read, its index.
    pub state: &'a crate::state::Report,
    /// The configured exports (`[[exports]]`): file, rows, customers left out for want of
    /// consent, and why an export is empty.
    pub exports: Vec<crate::exports::ExportRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, StringViewArray};

    #[test]
    fn slugs_and_csv() {
        assert_eq!(slug("At risk"), "at_risk");
        assert_eq!(slug("One-time buyers"), "one_time_buyers");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }

    #[test]
    fn portable_types() {
        let b = RecordBatch::try_from_iter([
            ("s", Arc::new(StringViewArray::from(vec!["x"])) as ArrayRef),
            ("i", Arc::new(Int32Array::from(vec![1])) as ArrayRef),
        ])
        .unwrap();
        let p = portable(&b).unwrap();
        assert_eq!(p.schema().field(0).data_type(), &DataType::Utf8);
        assert_eq!(p.schema().field(1).data_type(), &DataType::Int32);
    }
}
