//! Outputs: the customer_segments and segment_summary tables (Parquet, Hive-partitioned by
//! run_date), one CSV per segment for marketing, and the manifest that publishes the run
//! (written by [`crate::publish`], which also says in which order files appear).
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::arrow_writer::{
    compute_leaves, ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn,
    ArrowRowGroupWriterFactory,
};
use datafusion::parquet::arrow::async_writer::AsyncArrowWriter;
use datafusion::parquet::arrow::ArrowWriter;
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

/// Rows of one row group at most.
const ROW_GROUP_ROWS: usize = 1 << 20;

/// The writer properties of every Parquet file segmenter writes.
fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build()
}

/// [`write_parquet_groups`] of `schema`, which may have no batch (a file with no rows).
/// Each row group's columns are encoded on every core (one `ArrowColumnWriter` per column,
/// as DataFusion's parallel Parquet sink does): the same bytes as `ArrowWriter`, which
/// encoded the 40 columns of a 1,000,000-row customer_segments on one core. Each finished
/// row group goes out before the next is encoded, so memory holds one encoded row group.
pub async fn write_parquet_schema(
    root: &StoreRef,
    name: &str,
    schema: datafusion::arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
) -> Result<String> {
    use tokio::io::AsyncWriteExt;
    let url = root.url_of(name);
    let parquet = |e| Error::parquet(format!("writing {url}"), e);
    let storage = |e: std::io::Error| Error::Model(format!("writing {url}: {e}"));
    let encoded = Encoded::default();
    let (mut file, factory) = ArrowWriter::try_new(
        encoded.clone(),
        Arc::clone(&schema),
        Some(writer_properties()),
    )
    .and_then(ArrowWriter::into_serialized_writer)
    .map_err(parquet)?;
    let mut out = BufWriter::new(Arc::clone(&root.store), root.key(name));
    let mut group = 0;
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        for offset in (0..batch.num_rows()).step_by(ROW_GROUP_ROWS) {
            let rows = batch.slice(offset, ROW_GROUP_ROWS.min(batch.num_rows() - offset));
            let chunks = encode_columns(&factory, group, &rows).map_err(parquet)?;
            let mut writer = file.next_row_group().map_err(parquet)?;
            for chunk in chunks {
                chunk.append_to_row_group(&mut writer).map_err(parquet)?;
            }
            writer.close().map_err(parquet)?;
            group += 1;
            out.write_all(&encoded.take()).await.map_err(storage)?;
        }
    }
    file.finish().map_err(parquet)?;
    out.write_all(&encoded.take()).await.map_err(storage)?;
    out.shutdown().await.map_err(storage)?;
    Ok(url)
}

/// The column chunks of row group `group` holding `rows`, in column order, encoded in
/// parallel: each core takes the next column not yet taken.
fn encode_columns(
    factory: &ArrowRowGroupWriterFactory,
    group: usize,
    rows: &RecordBatch,
) -> datafusion::parquet::errors::Result<Vec<ArrowColumnChunk>> {
    let writers = factory.create_column_writers(group)?;
    let schema = rows.schema();
    // A flat schema has one leaf per column: each core computes its columns' leaves (their
    // definition levels are a fresh buffer of a value each); nested ones are computed first.
    let flat = schema.fields().iter().all(|f| !f.data_type().is_nested());
    let leaves: Vec<Leaf> = if flat && writers.len() == rows.num_columns() {
        schema
            .fields()
            .iter()
            .zip(rows.columns())
            .map(|(f, c)| Leaf::Flat(f, c))
            .collect()
    } else {
        let mut leaves = Vec::new();
        for (field, column) in schema.fields().iter().zip(rows.columns()) {
            leaves.extend(
                compute_leaves(field, column)?
                    .into_iter()
                    .map(Leaf::Computed),
            );
        }
        leaves
    };
    let work: Vec<std::sync::Mutex<Option<(ArrowColumnWriter, Leaf)>>> = writers
        .into_iter()
        .zip(leaves)
        .map(|pair| std::sync::Mutex::new(Some(pair)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(work.len());
    type Chunks = datafusion::parquet::errors::Result<Vec<(usize, ArrowColumnChunk)>>;
    let encode = || -> Chunks {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(slot) = work.get(i) else {
                return Ok(done);
            };
            let taken = slot.lock().map(|mut s| s.take()).ok().flatten();
            if let Some((mut writer, leaf)) = taken {
                match leaf {
                    Leaf::Computed(leaf) => writer.write(&leaf)?,
                    Leaf::Flat(field, column) => {
                        for leaf in compute_leaves(field, column)? {
                            writer.write(&leaf)?;
                        }
                    }
                }
                done.push((i, writer.close()?));
            }
        }
    };
    let mut chunks = std::thread::scope(|scope| -> Chunks {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(encode)).collect();
        let mut all = encode()?;
        for h in helpers {
            all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?);
        }
        Ok(all)
    })?;
    chunks.sort_by_key(|(i, _)| *i);
    Ok(chunks.into_iter().map(|(_, c)| c).collect())
}

/// A column's leaf for its writer: computed, or the column itself (its only leaf).
enum Leaf<'a> {
    Computed(ArrowLeafColumn),
    Flat(&'a datafusion::arrow::datatypes::FieldRef, &'a ArrayRef),
}

/// Where a Parquet file's bytes gather between row groups (shared with the writer).
#[derive(Clone, Default)]
struct Encoded(Arc<std::sync::Mutex<Vec<u8>>>);

impl Encoded {
    /// The bytes written since the last call.
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default()
    }
}

impl std::io::Write for Encoded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("a Parquet encoder panicked"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
        Self::open_with(root, name, schema, writer_properties())
    }

    /// [`ParquetSink::open`] for a file a later run reads back by row ranges rather than a
    /// table users query: the base's sessions (src/base.rs), of which a night reads the
    /// changed customers' rows, on nearly every page. The nearly `unique` columns take no
    /// dictionary.
    ///
    /// On a local root (which a night maps, src/base.rs) nothing is compressed and the unique
    /// columns are stored plain: a mapped page is then decoded in place, and the rows the
    /// selection skips cost nothing to skip (compressed, every page read was decompressed into
    /// fresh memory; delta-encoded, every skipped value was decoded). For the 1,000,000-
    /// customer base's 33.6 M sessions the file takes 1.19 GB instead of 485 MB, and a night's
    /// features stage 2.93 s of user time instead of 3.34 (five alternated runs).
    /// Elsewhere a night fetches the pages it reads, so they stay small: Snappy, numbers and
    /// timestamps `DELTA_BINARY_PACKED`, text `DELTA_BYTE_ARRAY` (ids sharing prefixes).
    pub fn open_compact(
        root: &StoreRef,
        name: &str,
        schema: SchemaRef,
        unique: &[&str],
    ) -> Result<ParquetSink> {
        use datafusion::parquet::basic::Encoding;
        use datafusion::parquet::schema::types::ColumnPath;
        let local = root.local_path(name).is_some();
        let compression = if local {
            Compression::UNCOMPRESSED
        } else {
            Compression::SNAPPY
        };
        let mut props = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
        for field in schema.fields() {
            if !unique.contains(&field.name().as_str()) {
                continue;
            }
            let encoding = match field.data_type() {
                _ if local => Encoding::PLAIN,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary => {
                    Encoding::DELTA_BYTE_ARRAY
                }
                DataType::Timestamp(_, _)
                | DataType::Int32
                | DataType::Int64
                | DataType::Date32 => Encoding::DELTA_BINARY_PACKED,
                _ => continue,
            };
            let path = ColumnPath::from(field.name().as_str());
            props = props
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, encoding);
        }
        Self::open_with(root, name, schema, props.build())
    }

    fn open_with(
        root: &StoreRef,
        name: &str,
        schema: SchemaRef,
        props: WriterProperties,
    ) -> Result<ParquetSink> {
        let url = root.url_of(name);
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

    /// What `ArrowWriter` writes of `batches`, each starting a row group (the writer this
    /// module's parallel one replaced).
    fn arrow_writer_bytes(schema: SchemaRef, batches: &[RecordBatch]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, schema, Some(writer_properties())).unwrap();
        for b in batches.iter().filter(|b| b.num_rows() > 0) {
            w.write(b).unwrap();
            w.flush().unwrap();
        }
        w.close().unwrap();
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn columns_encoded_in_parallel_are_the_bytes_arrow_writer_writes() {
        use datafusion::arrow::array::{Float64Array, StringArray};
        let ctx = datafusion::prelude::SessionContext::new();
        let root = crate::storage::open(
            &ctx,
            &crate::config::Location::parse("memory://outputs-test/", std::path::Path::new("/"))
                .unwrap(),
            &crate::config::StorageParams::default(),
        )
        .unwrap();
        // More rows than one row group holds, nulls, repeated and distinct strings.
        let n = ROW_GROUP_ROWS + 1000;
        let batch = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("c{i:08}")),
                )) as ArrayRef,
            ),
            (
                "segment",
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 7 != 0).then(|| ["a", "b", "c"][i % 3])),
                )),
            ),
            (
                "score",
                Arc::new(Float64Array::from_iter_values(
                    (0..n).map(|i| i as f64 / 3.0),
                )),
            ),
        ])
        .unwrap();
        // The same with a struct column: two leaves for one column, computed before encoding
        // (the flat batch's leaves are computed by the encoding threads).
        let nested = {
            use datafusion::arrow::array::StructArray;
            use datafusion::arrow::datatypes::Fields;
            let parts = batch.project(&[1, 2]).unwrap();
            let fields: Fields = parts.schema().fields().clone();
            let inner = StructArray::new(fields, parts.columns().to_vec(), None);
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(inner));
            let mut fields = batch.schema().fields().to_vec();
            fields.push(Arc::new(Field::new(
                "both",
                columns[3].data_type().clone(),
                true,
            )));
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
        };
        for batch in [batch, nested] {
            check_parallel_bytes(&root, &batch, n).await;
        }
    }

    /// The base's sessions: uncompressed and plain where a night maps them, small elsewhere;
    /// the same rows either way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compact_files_are_plain_on_a_local_root_and_small_elsewhere() {
        use datafusion::arrow::array::{StringArray, TimestampMicrosecondArray};
        use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        use datafusion::parquet::basic::Encoding;
        let n = 5000;
        let batch = RecordBatch::try_from_iter([
            (
                "customer_id",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("C{:07}", i / 10)),
                )) as ArrayRef,
            ),
            (
                "session_id",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("S{:07}-{:04}", i / 10, i % 10)),
                )),
            ),
            (
                "started",
                Arc::new(TimestampMicrosecondArray::from_iter_values(
                    (0..n).map(|i| 1_700_000_000_000_000 + i as i64 * 7_919_000_003),
                )),
            ),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        let local =
            crate::config::Location::parse(&format!("{}/", dir.path().display()), dir.path())
                .unwrap();
        let memory =
            crate::config::Location::parse("memory://compact-test/", std::path::Path::new("/"))
                .unwrap();
        for (location, mapped) in [(local, true), (memory, false)] {
            let params = crate::config::StorageParams::default();
            let root = crate::storage::open(&ctx, &location, &params).unwrap();
            let mut sink = ParquetSink::open_compact(
                &root,
                "sessions.parquet",
                batch.schema(),
                &["session_id", "started"],
            )
            .unwrap();
            sink.write(&batch).await.unwrap();
            sink.close().await.unwrap();
            let bytes = root
                .store
                .get(&root.key("sessions.parquet"))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
            let group = reader.metadata().row_group(0).clone();
            let read: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
            assert_eq!(
                datafusion::arrow::compute::concat_batches(&batch.schema(), &read).unwrap(),
                batch,
                "mapped: {mapped}"
            );
            for (c, unique) in [(0, false), (1, true), (2, true)] {
                let column = group.column(c);
                let compressed = column.compression() != Compression::UNCOMPRESSED;
                assert_eq!(compressed, !mapped, "column {c}, mapped: {mapped}");
                let encodings: Vec<Encoding> = column.encodings().collect();
                let dictionary = encodings.contains(&Encoding::RLE_DICTIONARY);
                assert_eq!(dictionary, !unique, "column {c}: {encodings:?}");
                if unique {
                    let plain = encodings.contains(&Encoding::PLAIN);
                    assert_eq!(plain, mapped, "column {c}: {encodings:?}");
                }
            }
        }
    }

    async fn check_parallel_bytes(root: &StoreRef, batch: &RecordBatch, n: usize) {
        use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let schema = batch.schema();
        let empty = RecordBatch::new_empty(Arc::clone(&schema));
        for batches in [
            vec![batch.clone()],
            vec![batch.slice(0, 10), empty.clone(), batch.slice(10, 5)],
            vec![empty.clone()],
            vec![],
        ] {
            write_parquet_schema(root, "t.parquet", Arc::clone(&schema), &batches)
                .await
                .unwrap();
            let written = root
                .store
                .get(&root.key("t.parquet"))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let want = arrow_writer_bytes(Arc::clone(&schema), &batches);
            assert!(
                written == want,
                "{} batches: different bytes",
                batches.len()
            );
            let reader = ParquetRecordBatchReaderBuilder::try_new(written).unwrap();
            let groups = reader.metadata().num_row_groups();
            let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
            assert_eq!(rows, batches.iter().map(|b| b.num_rows()).sum::<usize>());
            if batches.len() == 1 && rows == n {
                assert_eq!(groups, 2);
            }
        }
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
