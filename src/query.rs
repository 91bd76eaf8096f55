//! `segmenter query`: SQL over the published tables of every date.
//!
//! `customer_segments`, `segment_summary` and `segment_transitions` are each one table over all
//! published dates, with `run_date` (DATE) as a column. Only what a manifest names is visible:
//! a date is published when `_runs/D/manifest.json` exists, and its table is the file that
//! manifest lists (an attempt in progress, a killed one, or a date that never finished is not
//! seen). A column added by a later release is null on older dates. The SQL may only read:
//! statements that create, change or write are refused.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::{col, lit, Expr};
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext};

use crate::config::Pipeline;
use crate::engine;
use crate::error::{Error, Result};
use crate::publish::{manifest_name, read_object, run_dates, MANIFEST_FORMAT};
use crate::storage;

/// The tables `query` offers.
pub const TABLES: [&str; 3] = [
    "customer_segments",
    "segment_summary",
    "segment_transitions",
];

/// How `query` prints or writes its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A text table (for a terminal).
    Table,
    /// CSV with a header.
    Csv,
    /// Newline-delimited JSON, one object per row.
    Json,
    /// Parquet (needs `--out`).
    Parquet,
}

/// Runs `sql` over the published tables of `pipeline`'s output root; returns the result's
/// schema and rows. No published date, SQL the engine rejects or a statement that is not a
/// query is a usage error (exit 2) with the engine's message.
pub async fn run(pipeline: &Pipeline, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    // The published tables are small: read in this process whatever `engine.kind` says.
    let ctx = engine::local_session(pipeline)?;
    let root = storage::open(&ctx, &pipeline.output_root, &pipeline.storage)?;
    let mut dates = run_dates(&root).await?;
    dates.sort_unstable();
    // (date, the manifest's file of each table)
    let mut published: Vec<(chrono::NaiveDate, [Option<String>; 3])> = Vec::new();
    for d in dates {
        let day = d.format("%Y-%m-%d").to_string();
        let Some(bytes) = read_object(&root, &manifest_name(&day)).await? else {
            continue;
        };
        let Ok(m) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            tracing::warn!(date = %day, "unreadable manifest; date left out of the query");
            continue;
        };
        if m["format"].as_u64().unwrap_or(0) > u64::from(MANIFEST_FORMAT) {
            tracing::warn!(date = %day, "manifest of a newer release; date left out of the query");
            continue;
        }
        let files = TABLES.map(|t| m["outputs"][t][0].as_str().map(str::to_string));
        published.push((d, files));
    }
    if published.is_empty() {
        return Err(Error::Usage(format!(
            "no published run under {}: run `segmenter run` first",
            pipeline.output_root.as_str()
        )));
    }
    for (t, table) in TABLES.iter().enumerate() {
        let parts: Vec<(chrono::NaiveDate, &str)> = published
            .iter()
            .filter_map(|(d, files)| files[t].as_deref().map(|f| (*d, f)))
            .collect();
        if let Some(df) = union_of_dates(&ctx, table, &parts).await? {
            ctx.register_table(*table, df.into_view())
                .map_err(|e| Error::engine(format!("registering {table}"), e))?;
        }
    }
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let usage = |e: datafusion::error::DataFusionError| Error::Usage(format!("query failed: {e}"));
    let df = ctx.sql_with_options(sql, options).await.map_err(usage)?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(usage)?;
    Ok((schema, batches))
}

/// One table over `parts` (each date's file), `run_date` appended; columns missing on a date
/// are null there. `None` without parts.
async fn union_of_dates(
    ctx: &SessionContext,
    table: &str,
    parts: &[(chrono::NaiveDate, &str)],
) -> Result<Option<DataFrame>> {
    let what = |d: &chrono::NaiveDate| format!("reading {table} of {d}");
    let mut frames = Vec::new();
    for (d, file) in parts {
        let df = ctx
            .read_parquet(*file, ParquetReadOptions::default())
            .await
            .map_err(|e| Error::engine(what(d), e))?;
        frames.push((*d, df));
    }
    let schemas: Vec<Schema> = frames
        .iter()
        .map(|(_, df)| df.schema().as_arrow().clone())
        .collect();
    let merged = Schema::try_merge(schemas).map_err(|e| {
        Error::engine(
            format!("combining the dates of {table} (a column changed type)"),
            e.into(),
        )
    })?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let mut out: Option<DataFrame> = None;
    for (d, df) in frames {
        let present = df.schema().as_arrow().clone();
        let mut exprs: Vec<Expr> = Vec::new();
        for field in merged.fields() {
            let name = field.name();
            let e = if present.field_with_name(name).is_ok() {
                col(format!("\"{}\"", name.replace('"', "\"\"")))
            } else {
                let null = ScalarValue::try_from(field.data_type())
                    .map_err(|e| Error::engine(format!("a null {name}"), e))?;
                lit(null).alias(name)
            };
            exprs.push(e);
        }
        let days = (d - epoch).num_days() as i32;
        exprs.push(lit(ScalarValue::Date32(Some(days))).alias("run_date"));
        let df = df.select(exprs).map_err(|e| Error::engine(what(&d), e))?;
        out = Some(match out {
            None => df,
            Some(all) => all.union(df).map_err(|e| Error::engine(what(&d), e))?,
        });
    }
    Ok(out)
}

/// `batches` in `format` as bytes (`Table`: arrow's text table).
pub fn render(format: Format, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let err =
        |e: datafusion::arrow::error::ArrowError| Error::engine("writing the result", e.into());
    let mut buf = Vec::new();
    match format {
        Format::Table => {
            let text =
                datafusion::arrow::util::pretty::pretty_format_batches(batches).map_err(err)?;
            buf.extend_from_slice(format!("{text}\n").as_bytes());
            if batches.iter().all(|b| b.num_rows() == 0) {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                buf = format!("(no rows; columns: {})\n", names.join(", ")).into_bytes();
            }
        }
        Format::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut buf);
            w.write(&RecordBatch::new_empty(Arc::clone(schema)))
                .map_err(err)?;
            for b in batches {
                w.write(b).map_err(err)?;
            }
        }
        Format::Json => {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
            for b in batches {
                w.write(b).map_err(err)?;
            }
            w.finish().map_err(err)?;
        }
        Format::Parquet => {
            let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(
                &mut buf,
                Arc::clone(schema),
                None,
            )
            .map_err(|e| Error::parquet("writing the result", e))?;
            for b in batches {
                w.write(b)
                    .map_err(|e| Error::parquet("writing the result", e))?;
            }
            w.close()
                .map_err(|e| Error::parquet("writing the result", e))?;
        }
    }
    Ok(buf)
}
