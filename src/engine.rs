//! The query engine: one DataFusion session per run, configured from the pipeline, and the
//! one way the crate runs SQL (errors say which query failed).

use datafusion::arrow::array::RecordBatch;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::config::Pipeline;
use crate::error::{Error, Result};

/// A query engine configured for the pipeline: bounded memory (spilling to disk), parallelism,
/// and Parquet reading that keeps strings as Utf8 and lists files in subdirectories.
pub fn session(pipeline: &Pipeline) -> Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_target_partitions(pipeline.target_partitions)
        .with_information_schema(false);
    let opts = config.options_mut();
    opts.execution.parquet.schema_force_view_types = false;
    opts.execution.parquet.pushdown_filters = true;
    opts.execution.listing_table_ignore_subdirectory = false;
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(bytes) = pipeline.memory_limit_bytes {
        runtime = runtime.with_memory_limit(bytes, 1.0);
    }
    let runtime = runtime
        .build_arc()
        .map_err(|e| Error::engine("starting the query engine", e))?;
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

/// Runs `sql` and keeps the result in memory as table `name` (replacing any table of that
/// name); returns its row count. For small tables that several queries read.
pub async fn materialize(ctx: &SessionContext, name: &str, sql: &str, what: &str) -> Result<usize> {
    let df = ctx
        .sql(sql)
        .await
        .map_err(|e| Error::engine(format!("planning {what}"), e))?
        .cache()
        .await
        .map_err(|e| Error::engine(what, e))?;
    let rows = df
        .clone()
        .count()
        .await
        .map_err(|e| Error::engine(format!("counting {name}"), e))?;
    ctx.deregister_table(name)
        .map_err(|e| Error::engine(format!("registering {name}"), e))?;
    ctx.register_table(name, df.into_view())
        .map_err(|e| Error::engine(format!("registering {name}"), e))?;
    Ok(rows)
}

/// Runs `sql` to completion; `what` names the query in errors ("counting events").
/// With `SEGMENTER_EXPLAIN_ANALYZE=1` the query's `EXPLAIN ANALYZE` is logged first (it runs
/// the query twice: for tuning queries/*.sql, not for production).
pub async fn collect(ctx: &SessionContext, sql: &str, what: &str) -> Result<Vec<RecordBatch>> {
    if std::env::var_os("SEGMENTER_EXPLAIN_ANALYZE").is_some()
        && !sql.trim_start().starts_with("CREATE")
    {
        let plan = ctx
            .sql(&format!("EXPLAIN ANALYZE {sql}"))
            .await
            .map_err(|e| Error::engine(format!("explaining {what}"), e))?
            .collect()
            .await
            .map_err(|e| Error::engine(format!("explaining {what}"), e))?;
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
            .map(|t| t.to_string())
            .unwrap_or_default();
        tracing::info!(query = what, "EXPLAIN ANALYZE\n{text}");
    }
    ctx.sql(sql)
        .await
        .map_err(|e| Error::engine(format!("planning {what}"), e))?
        .collect()
        .await
        .map_err(|e| Error::engine(what, e))
}
