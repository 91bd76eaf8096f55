//! The query engine: one DataFusion session per run, configured from the pipeline, and the
//! one way the crate runs SQL (errors say which query failed).

use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, AsArray, Float64Array, RecordBatch};
use datafusion::arrow::compute::{filter_record_batch, is_not_null, is_null};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::{exec_err, DataFusionError};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use crate::config::{EngineKind, Pipeline};
use crate::error::{Error, Result};
use crate::models::design::id_hash;
use crate::storage::StoreRef;

/// A query engine configured for the pipeline: bounded memory (spilling to disk), parallelism,
/// and Parquet reading that keeps strings as Utf8 and lists files in subdirectories. With
/// `engine.kind = "ballista"`, its queries run on the cluster (src/cluster.rs) and the tables
/// this process holds in memory are written under the output root's scratch prefix first
/// ([`Scratch`]).
pub fn session(pipeline: &Pipeline) -> Result<SessionContext> {
    match &pipeline.engine_kind {
        EngineKind::Local => local_session(pipeline),
        #[cfg(feature = "ballista")]
        EngineKind::Ballista { scheduler, url } => {
            let scratch = Scratch::new(pipeline)?;
            let config = session_config(pipeline)?.with_extension(Arc::new(scratch));
            let ctx = crate::cluster::client(config, runtime(pipeline)?, scheduler, url)?;
            register_functions(&ctx);
            Ok(ctx)
        }
        #[cfg(not(feature = "ballista"))]
        EngineKind::Ballista { url, .. } => Err(Error::config(
            Some(&pipeline.source),
            format!(
                "`engine.url` = \"{url}\": this segmenter was built without Ballista; build it \
                 with `--features ballista`"
            ),
        )),
    }
}

/// A session that runs every query in this process, whatever `engine.kind` says: for reading
/// the published tables (`segmenter query`).
pub fn local_session(pipeline: &Pipeline) -> Result<SessionContext> {
    let ctx = SessionContext::new_with_config_rt(session_config(pipeline)?, runtime(pipeline)?);
    register_functions(&ctx);
    Ok(ctx)
}

/// The session settings every engine kind shares.
pub(crate) fn session_config(pipeline: &Pipeline) -> Result<SessionConfig> {
    // DATAFUSION_* environment variables (e.g. DATAFUSION_EXECUTION_BATCH_SIZE) tune the
    // engine as they do in datafusion-cli; the settings below take precedence.
    let mut config = SessionConfig::from_env()
        .map_err(|e| Error::engine("reading DATAFUSION_* settings from the environment", e))?
        .with_target_partitions(pipeline.target_partitions)
        .with_information_schema(false);
    let opts = config.options_mut();
    opts.execution.parquet.schema_force_view_types = false;
    opts.execution.parquet.pushdown_filters = true;
    opts.execution.listing_table_ignore_subdirectory = false;
    Ok(config)
}

/// The memory pool `engine.memory_limit` asks for.
fn runtime(pipeline: &Pipeline) -> Result<Arc<datafusion::execution::runtime_env::RuntimeEnv>> {
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(bytes) = pipeline.memory_limit_bytes {
        // Fair, not greedy: the session rollup's aggregations can spill, the joins cannot;
        // with a greedy pool the aggregations took the whole limit and a join then failed
        // (1,000,000 customers, 2 GiB). The fair pool leaves the joins what they need.
        use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
        let five = std::num::NonZeroUsize::new(5).unwrap_or(std::num::NonZeroUsize::MIN);
        runtime = runtime.with_memory_pool(Arc::new(TrackConsumersPool::new(
            FairSpillPool::new(bytes),
            five,
        )));
    }
    runtime
        .build_arc()
        .map_err(|e| Error::engine("starting the query engine", e))
}

/// A session with `ctx`'s settings and runtime that runs its queries in this process even when
/// `ctx`'s run on a cluster: for queries over what the driver holds in memory (the exports).
pub fn in_process(ctx: &SessionContext) -> SessionContext {
    let config = SessionConfig::from(ctx.state().config().options().as_ref().clone())
        .with_create_default_catalog_and_schema(true);
    let local = SessionContext::new_with_config_rt(config, ctx.runtime_env());
    register_functions(&local);
    local
}

/// Where the tables this process holds in memory go when its queries run on a cluster, whose
/// executors cannot read this process's memory: Parquet files under
/// `output.root/_scratch/<uuid>/`, removed at the end of the run ([`remove_scratch`]).
#[derive(Debug)]
pub struct Scratch {
    root: StoreRef,
    dir: String,
    next: std::sync::atomic::AtomicUsize,
}

impl Scratch {
    /// A scratch prefix of its own under the pipeline's output root.
    #[cfg_attr(not(feature = "ballista"), allow(dead_code))]
    fn new(pipeline: &Pipeline) -> Result<Scratch> {
        Ok(Scratch {
            root: crate::storage::store(&pipeline.output_root, &pipeline.storage)?,
            dir: format!("{SCRATCH_DIR}/{}", uuid::Uuid::new_v4()),
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }
}

/// The prefix under `output.root` of the tables a cluster run writes for its executors.
pub const SCRATCH_DIR: &str = "_scratch";

/// Registers `batches` (of `schema`) as table `name`, replacing one of that name: held in
/// memory, or, when the session's queries run on a cluster, written under its [`Scratch`]
/// prefix first. `what` names the table in errors.
pub async fn register_batches(
    ctx: &SessionContext,
    name: &str,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    what: &str,
) -> Result<()> {
    let scratch = ctx.state().config().get_extension::<Scratch>();
    let Some(scratch) = scratch else {
        let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])
            .map_err(|e| Error::engine(format!("registering {what}"), e))?;
        return replace_table(ctx, name, Arc::new(table));
    };
    let n = scratch
        .next
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = format!("{}/{name}-{n}.parquet", scratch.dir);
    let url =
        crate::outputs::write_parquet_schema(&scratch.root, &file, Arc::clone(&schema), &batches)
            .await?;
    replace_parquet_table(ctx, name, &[url], schema, what)
}

/// Whether `ctx`'s queries run on a cluster (it has a [`Scratch`] prefix).
pub fn is_cluster(ctx: &SessionContext) -> bool {
    ctx.state().config().get_extension::<Scratch>().is_some()
}

/// Removes the run's [`Scratch`] files, if it wrote any (a failure is only logged: they are
/// never read again).
pub async fn remove_scratch(ctx: &SessionContext) {
    let Some(scratch) = ctx.state().config().get_extension::<Scratch>() else {
        return;
    };
    if scratch.next.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        return;
    }
    let prefix = scratch.root.key(&scratch.dir);
    let listed = scratch
        .root
        .store
        .list(Some(&prefix))
        .map_ok(|m| m.location)
        .boxed();
    let removed = scratch
        .root
        .store
        .delete_stream(listed)
        .try_collect::<Vec<_>>()
        .await;
    if let Err(e) = removed {
        tracing::warn!(
            prefix = %scratch.root.url_of(&scratch.dir),
            error = %e,
            "could not remove the run's scratch files"
        );
    }
}

/// Registers segmenter's SQL functions ([`functions`]) in `ctx`.
pub fn register_functions(ctx: &SessionContext) {
    for udf in functions() {
        ctx.register_udf(udf);
    }
}

/// segmenter's SQL functions: `sample_unit`, `key_hash`, `row_digest`.
pub fn functions() -> [ScalarUDF; 3] {
    [
        ScalarUDF::new_from_impl(SampleUnit::new()),
        ScalarUDF::new_from_impl(RowHash::key_hash()),
        ScalarUDF::new_from_impl(RowHash::row_digest()),
    ]
}

/// Registers `table` as `name` in `ctx`, replacing a table or view of that name.
pub fn replace_table(
    ctx: &SessionContext,
    name: &str,
    table: Arc<dyn datafusion::catalog::TableProvider>,
) -> Result<()> {
    let what = || format!("registering {name}");
    ctx.deregister_table(name)
        .map_err(|e| Error::engine(what(), e))?;
    ctx.register_table(name, table)
        .map_err(|e| Error::engine(what(), e))?;
    Ok(())
}

/// The Parquet files (or directories) at `urls` as one table of `schema` (each file's columns
/// cast to it); `what` names it in errors.
pub fn parquet_table(
    urls: &[String],
    schema: SchemaRef,
    what: &str,
) -> Result<Arc<datafusion::datasource::listing::ListingTable>> {
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::{
        ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
    };
    let err = |e| Error::engine(format!("registering {what}"), e);
    let urls = urls
        .iter()
        .map(ListingTableUrl::parse)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(err)?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    Ok(Arc::new(ListingTable::try_new(config).map_err(err)?))
}

/// Registers the Parquet files at `urls` as table `name` of `schema` ([`parquet_table`]),
/// replacing a table or view of that name.
pub fn replace_parquet_table(
    ctx: &SessionContext,
    name: &str,
    urls: &[String],
    schema: SchemaRef,
    what: &str,
) -> Result<()> {
    replace_table(ctx, name, parquet_table(urls, schema, what)?)
}

/// A session with `ctx`'s settings, memory pool, object stores and functions but its own
/// tables: for queries that bind a table name (`events_raw`) to something else, side by side
/// with `ctx`.
pub fn sibling(ctx: &SessionContext) -> SessionContext {
    use datafusion::catalog::MemoryCatalogProviderList;
    use datafusion::execution::SessionStateBuilder;
    // Everything of `ctx`'s state (settings and their extensions, runtime, functions, the
    // query planner that sends queries to a cluster) but a catalog of its own.
    let mut builder = SessionStateBuilder::new_from_existing(ctx.state())
        .with_catalog_list(Arc::new(MemoryCatalogProviderList::new()));
    let config = builder.config().take().unwrap_or_default();
    *builder.config() = Some(config.with_create_default_catalog_and_schema(true));
    SessionContext::new_with_state(builder.build())
}

/// `sample_unit(customer_id)`: a number in [0, 1) fixed for each customer id (the high bits of
/// its FNV-1a hash), so `sample_unit(customer_id) < 0.1` keeps the same tenth of the customers
/// in every query, snapshot and run. NULL for a NULL id.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SampleUnit {
    signature: Signature,
}

impl SampleUnit {
    fn new() -> Self {
        SampleUnit {
            signature: Signature::uniform(
                1,
                vec![DataType::Utf8, DataType::Utf8View, DataType::LargeUtf8],
                Volatility::Immutable,
            ),
        }
    }
}

/// The unit interval value of an id (53 high bits of the hash).
pub fn sample_unit(id: &str) -> f64 {
    (id_hash(id) >> 11) as f64 / (1u64 << 53) as f64
}

impl ScalarUDFImpl for SampleUnit {
    fn name(&self) -> &str {
        "sample_unit"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let ids = &arrays[0];
        let out: Float64Array = match ids.data_type() {
            DataType::Utf8 => ids
                .as_string::<i32>()
                .iter()
                .map(|v| v.map(sample_unit))
                .collect(),
            DataType::LargeUtf8 => ids
                .as_string::<i64>()
                .iter()
                .map(|v| v.map(sample_unit))
                .collect(),
            DataType::Utf8View => ids
                .as_string_view()
                .iter()
                .map(|v| v.map(sample_unit))
                .collect(),
            other => return exec_err!("sample_unit takes a string, got {other}"),
        };
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// A variadic SQL function giving one 64-bit hash per row of its arguments:
///
/// - `key_hash(a, b, …)`: a stable FNV-1a hash of the values (text; NULL has its own marker),
///   the same in SQL and in Rust ([`key_hashes`]). The incremental state names the sessions
///   that may have several rows by it (src/state.rs): two keys sharing a hash are both
///   grouped, which is only slower, so collisions cannot change a result.
/// - `row_digest(a, b, …)`: DataFusion's vectorised row hash with a fixed seed ([`row_digests`]:
///   the same within one build, not across releases). The base compares each customer's rows
///   by `bit_xor` and `count` of it (src/base.rs).
#[derive(Debug)]
struct RowHash {
    name: &'static str,
    hash: fn(&[datafusion::arrow::array::ArrayRef]) -> Result<Vec<u64>>,
    signature: Signature,
}

impl RowHash {
    fn key_hash() -> Self {
        Self::new("key_hash", key_hashes)
    }

    fn row_digest() -> Self {
        Self::new("row_digest", row_digests)
    }

    fn new(
        name: &'static str,
        hash: fn(&[datafusion::arrow::array::ArrayRef]) -> Result<Vec<u64>>,
    ) -> Self {
        RowHash {
            name,
            hash,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

// A function is its name (the hash follows from it).
impl PartialEq for RowHash {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for RowHash {}

impl std::hash::Hash for RowHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

/// The `key_hash` of every row of `columns` (cast to text).
pub fn key_hashes(columns: &[datafusion::arrow::array::ArrayRef]) -> Result<Vec<u64>> {
    let rows = columns.first().map_or(0, |c| c.len());
    let mut hashes = vec![0xcbf2_9ce4_8422_2325_u64; rows];
    for column in columns {
        let text = datafusion::arrow::compute::cast(column, &DataType::Utf8)
            .map_err(|e| Error::engine("hashing keys", e.into()))?;
        let text = text.as_string::<i32>();
        for (i, h) in hashes.iter_mut().enumerate() {
            let bytes: &[u8] = if text.is_null(i) {
                &[0xfe]
            } else {
                text.value(i).as_bytes()
            };
            for b in bytes.iter().chain(std::iter::once(&0xff)) {
                *h ^= u64::from(*b);
                *h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    Ok(hashes)
}

/// The `row_digest` of every row of `columns`.
fn row_digests(columns: &[datafusion::arrow::array::ArrayRef]) -> Result<Vec<u64>> {
    let rows = columns.first().map_or(0, |c| c.len());
    let mut hashes = vec![0u64; rows];
    datafusion::common::hash_utils::create_hashes(
        columns,
        &datafusion::common::hash_utils::HLL_RANDOM_STATE,
        &mut hashes,
    )
    .map_err(|e| Error::engine("digesting rows", e))?;
    Ok(hashes)
}

impl ScalarUDFImpl for RowHash {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::UInt64)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let hashes = (self.hash)(&arrays).map_err(|e| DataFusionError::Execution(e.to_string()))?;
        Ok(ColumnarValue::Array(Arc::new(
            datafusion::arrow::array::UInt64Array::from(hashes),
        )))
    }
}

/// One query's result split in two as it streams: rows whose `side` column is NULL are served
/// to later queries as table `table` (read once, while they are produced: never held whole),
/// the others are kept (they must be few). How the clickstream is read once: session rows go
/// on to the features, the rows counting rejected events are kept.
pub struct Tee {
    table: String,
    pumps: Vec<tokio::task::JoinHandle<Result<Vec<RecordBatch>>>>,
    /// The table's partitions, to close those no query read.
    partitions: Vec<Arc<ChannelPartition>>,
    /// The plan, for its metrics.
    running: Option<Running>,
    /// On a cluster, which cannot read this process's channels: the table is a view of the
    /// main rows, and this query reads the side rows when the table's readers are done.
    side_query: Option<(String, String)>,
}

/// Starts `sql` and registers its main rows as table `table` (see [`Tee`]).
pub async fn tee(
    ctx: &SessionContext,
    sql: &str,
    what: &str,
    table: &str,
    side: &str,
) -> Result<Tee> {
    if ctx.state().config().get_extension::<Scratch>().is_some() {
        let view = format!("SELECT * FROM ({sql}) WHERE {side} IS NULL");
        create_view(ctx, table, &view, what).await?;
        return Ok(Tee {
            table: table.to_string(),
            pumps: Vec::new(),
            partitions: Vec::new(),
            running: None,
            side_query: Some((
                format!("SELECT * FROM ({sql}) WHERE {side} IS NOT NULL"),
                what.to_string(),
            )),
        });
    }
    let plan = physical_plan(ctx, sql, what).await?;
    let schema: SchemaRef = plan.schema();
    let side_index = schema
        .index_of(side)
        .map_err(|e| Error::config(None, format!("{what} must return a column `{side}`: {e}")))?;
    let streams =
        datafusion::physical_plan::execute_stream_partitioned(Arc::clone(&plan), ctx.task_ctx())
            .map_err(|e| Error::engine(what, e))?;
    let mut partitions = Vec::new();
    let mut pumps = Vec::new();
    for stream in streams {
        // A few batches in flight per partition: the producer waits for the consumer.
        let (tx, rx) = mpsc::channel(4);
        partitions.push(Arc::new(ChannelPartition {
            schema: Arc::clone(&schema),
            rx: Mutex::new(Some(rx)),
        }));
        pumps.push(tokio::spawn(pump(stream, tx, side_index, what.to_string())));
    }
    let streams: Vec<Arc<dyn PartitionStream>> = partitions
        .iter()
        .map(|p| Arc::clone(p) as Arc<dyn PartitionStream>)
        .collect();
    let provider = StreamingTable::try_new(Arc::clone(&schema), streams)
        .map_err(|e| Error::engine(format!("registering {table}"), e))?;
    replace_table(ctx, table, Arc::new(provider))?;
    Ok(Tee {
        table: table.to_string(),
        pumps,
        partitions,
        running: Some(Running {
            plan,
            what: what.to_string(),
            started: std::time::Instant::now(),
            stream: Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&schema),
                futures::stream::empty(),
            )),
        }),
        side_query: None,
    })
}

impl Tee {
    /// Waits for the query to finish (reading the rest if no query read the table) and
    /// returns the side rows.
    /// Call it once the queries that read the table are finished or dropped.
    pub async fn finish(self, ctx: &SessionContext) -> Result<Vec<RecordBatch>> {
        ctx.deregister_table(&self.table)
            .map_err(|e| Error::engine(format!("releasing {}", self.table), e))?;
        if let Some((sql, what)) = &self.side_query {
            return collect(ctx, sql, what).await;
        }
        // A partition no query read (a view may still hold the table) would block its pump
        // forever: dropping its receiver makes the pump read on for the side rows only.
        for p in &self.partitions {
            if let Ok(mut rx) = p.rx.lock() {
                rx.take();
            }
        }
        let mut side = Vec::new();
        for pump in self.pumps {
            let rows = pump
                .await
                .map_err(|e| Error::Model(format!("reading {}: {e}", self.table)))??;
            side.extend(rows);
        }
        if let Some(running) = self.running {
            running.done();
        }
        Ok(side)
    }
}

async fn pump(
    mut stream: SendableRecordBatchStream,
    tx: mpsc::Sender<datafusion::common::Result<RecordBatch>>,
    side: usize,
    what: String,
) -> Result<Vec<RecordBatch>> {
    let mut kept = Vec::new();
    let mut forward = true;
    while let Some(batch) = stream.next().await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                if forward {
                    // The consumer fails too; the caller reports this, the original error.
                    let copy = DataFusionError::Execution(format!("{what}: {e}"));
                    // If the consumer is gone it has failed already; nothing more to tell.
                    tx.send(Err(copy)).await.ok();
                }
                return Err(Error::engine(what, e));
            }
        };
        let column = batch.column(side);
        if column.null_count() < batch.num_rows() {
            let mask = is_not_null(column.as_ref()).map_err(|e| Error::engine(&what, e.into()))?;
            let rows =
                filter_record_batch(&batch, &mask).map_err(|e| Error::engine(&what, e.into()))?;
            kept.push(rows);
        }
        if forward {
            let main = if column.null_count() == batch.num_rows() {
                batch
            } else {
                let mask = is_null(column.as_ref()).map_err(|e| Error::engine(&what, e.into()))?;
                filter_record_batch(&batch, &mask).map_err(|e| Error::engine(&what, e.into()))?
            };
            // The consumer is gone (or never came): keep reading for the side rows.
            forward = tx.send(Ok(main)).await.is_ok();
        }
    }
    Ok(kept)
}

/// One partition of a [`Tee`]'s table: the receiving end of its pump.
#[derive(Debug)]
struct ChannelPartition {
    schema: SchemaRef,
    rx: Mutex<Option<mpsc::Receiver<datafusion::common::Result<RecordBatch>>>>,
}

impl PartitionStream for ChannelPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rx = self.rx.lock().ok().and_then(|mut r| r.take());
        let schema = Arc::clone(&self.schema);
        match rx {
            Some(rx) => {
                let stream = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                });
                Box::pin(RecordBatchStreamAdapter::new(schema, stream))
            }
            None => Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::once(async {
                    Err(DataFusionError::Execution(
                        "a streamed table (sessions) can be read only once per run: \
                         refer to it once in the query"
                            .into(),
                    ))
                }),
            )),
        }
    }
}

/// Registers `sql` as view `name` (replacing one of that name): planned now, run by the
/// queries that read it, never held in memory. `what` names the query in errors.
pub async fn create_view(ctx: &SessionContext, name: &str, sql: &str, what: &str) -> Result<()> {
    collect(
        ctx,
        &format!("CREATE OR REPLACE VIEW {name} AS {sql}"),
        what,
    )
    .await?;
    Ok(())
}

/// Runs `sql` to completion; `what` names the query in errors ("counting events").
/// With `SEGMENTER_EXPLAIN_ANALYZE=1` the query's `EXPLAIN ANALYZE` is logged first (it runs
/// the query twice: for tuning queries/*.sql, not for production).
pub async fn collect(ctx: &SessionContext, sql: &str, what: &str) -> Result<Vec<RecordBatch>> {
    explain_if_asked(ctx, sql, what).await?;
    let started = std::time::Instant::now();
    let rows = ctx
        .sql(sql)
        .await
        .map_err(|e| Error::engine(format!("planning {what}"), e))?
        .collect()
        .await
        .map_err(|e| Error::engine(what, e))?;
    log_query(what, &rows, started);
    Ok(rows)
}

/// Logs (at debug) how long a query took and how many rows it returned.
fn log_query(what: &str, rows: &[RecordBatch], started: std::time::Instant) {
    tracing::debug!(
        query = what,
        rows = rows.iter().map(RecordBatch::num_rows).sum::<usize>(),
        seconds = started.elapsed().as_secs_f64(),
        "query done"
    );
}

/// Runs `sql` and registers its rows, held in memory, as table `name` (planned once; the
/// table keeps the query's schema when no row comes back).
pub async fn collect_into_table(
    ctx: &SessionContext,
    name: &str,
    sql: &str,
    what: &str,
) -> Result<()> {
    explain_if_asked(ctx, sql, what).await?;
    let started = std::time::Instant::now();
    let df = ctx
        .sql(sql)
        .await
        .map_err(|e| Error::engine(format!("planning {what}"), e))?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let rows = df.collect().await.map_err(|e| Error::engine(what, e))?;
    log_query(what, &rows, started);
    register_batches(ctx, name, schema, rows, what).await
}

/// A query running as a stream of batches, consumed by the caller as they come.
pub struct Running {
    plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    what: String,
    started: std::time::Instant,
    /// The batches.
    pub stream: SendableRecordBatchStream,
}

/// Plans `sql` down to the physical plan that will run.
async fn physical_plan(
    ctx: &SessionContext,
    sql: &str,
    what: &str,
) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    ctx.sql(sql)
        .await
        .map_err(|e| Error::engine(format!("planning {what}"), e))?
        .create_physical_plan()
        .await
        .map_err(|e| Error::engine(format!("planning {what}"), e))
}

/// Starts `sql` as a stream. With `SEGMENTER_EXPLAIN_ANALYZE` set, [`Running::done`] logs
/// the plan with the metrics of this very execution (the query runs once).
pub async fn stream(ctx: &SessionContext, sql: &str, what: &str) -> Result<Running> {
    let started = std::time::Instant::now();
    let plan = physical_plan(ctx, sql, what).await?;
    let stream = datafusion::physical_plan::execute_stream(Arc::clone(&plan), ctx.task_ctx())
        .map_err(|e| Error::engine(what, e))?;
    Ok(Running {
        plan,
        what: what.to_string(),
        started,
        stream,
    })
}

impl Running {
    /// Call when the stream is finished: logs (at debug) how long it ran, and the executed
    /// plan's metrics if asked.
    pub fn done(self) {
        tracing::debug!(
            query = self.what,
            seconds = self.started.elapsed().as_secs_f64(),
            "query streamed"
        );
        if std::env::var_os("SEGMENTER_EXPLAIN_ANALYZE").is_some() {
            let text = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
                self.plan.as_ref(),
            )
            .indent(true)
            .to_string();
            tracing::info!(query = self.what, "executed plan with metrics\n{text}");
        }
    }
}

/// With `SEGMENTER_EXPLAIN_ANALYZE=1`, logs the query's `EXPLAIN ANALYZE` (it runs the
/// query twice: for tuning queries/*.sql, not for production).
async fn explain_if_asked(ctx: &SessionContext, sql: &str, what: &str) -> Result<()> {
    if std::env::var_os("SEGMENTER_EXPLAIN_ANALYZE").is_none()
        || sql.trim_start().starts_with("CREATE")
    {
        return Ok(());
    }
    let verb = "EXPLAIN ANALYZE";
    {
        let plan = ctx
            .sql(&format!("{verb} {sql}"))
            .await
            .map_err(|e| Error::engine(format!("explaining {what}"), e))?
            .collect()
            .await
            .map_err(|e| Error::engine(format!("explaining {what}"), e))?;
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
            .map(|t| t.to_string())
            .unwrap_or_default();
        tracing::info!(query = what, "{verb}\n{text}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::datasource::MemTable;

    /// 12 batches of 100 rows; every 10th row has a `reason` (a side row).
    fn context() -> SessionContext {
        let batches: Vec<RecordBatch> = (0..12)
            .map(|b| {
                let n: Vec<i64> = (0..100).map(|i| b * 100 + i).collect();
                let reason: Vec<Option<&str>> =
                    (0..100).map(|i| (i % 10 == 0).then_some("r")).collect();
                RecordBatch::try_from_iter([
                    ("n", Arc::new(Int64Array::from(n)) as _),
                    ("reason", Arc::new(StringArray::from(reason)) as _),
                ])
                .unwrap()
            })
            .collect();
        let ctx = SessionContext::new();
        let table = MemTable::try_new(batches[0].schema(), vec![batches]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    fn rows(batches: &[RecordBatch]) -> usize {
        batches.iter().map(RecordBatch::num_rows).sum()
    }

    #[tokio::test]
    async fn tee_serves_the_main_rows_and_keeps_the_side_rows() {
        let ctx = context();
        let tee = tee(&ctx, "SELECT n, reason FROM t", "test", "main", "reason")
            .await
            .unwrap();
        let main = collect(&ctx, "SELECT count(*) AS c, sum(n) AS s FROM main", "read")
            .await
            .unwrap();
        let side = tee.finish(&ctx).await.unwrap();
        let c = main[0]
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        assert_eq!(c.value(0), 1080);
        assert_eq!(rows(&side), 120);
    }

    #[tokio::test]
    async fn tee_finishes_when_no_query_reads_the_table() {
        let ctx = context();
        let tee = tee(&ctx, "SELECT n, reason FROM t", "test", "main", "reason")
            .await
            .unwrap();
        // A view holds the table, so deregistering it alone would not close the channels.
        collect(&ctx, "CREATE VIEW v AS SELECT * FROM main", "view")
            .await
            .unwrap();
        let side = tokio::time::timeout(std::time::Duration::from_secs(20), tee.finish(&ctx))
            .await
            .expect("the tee must not wait for a reader that never comes")
            .unwrap();
        assert_eq!(rows(&side), 120);
    }

    #[tokio::test]
    async fn key_hash_is_the_same_in_sql_and_in_rust() {
        let ctx = SessionContext::new();
        register_functions(&ctx);
        let rows = collect(
            &ctx,
            "SELECT key_hash('C1', 'S1') AS a, key_hash('C1S', '1') AS b, \
             key_hash('C1', CAST(NULL AS VARCHAR)) AS c",
            "hash",
        )
        .await
        .unwrap();
        let got: Vec<u64> = (0..3)
            .map(|i| {
                rows[0]
                    .column(i)
                    .as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
                    .value(0)
            })
            .collect();
        let col = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v)) as _;
        let rust = key_hashes(&[
            col(vec![Some("C1"), Some("C1S"), Some("C1")]),
            col(vec![Some("S1"), Some("1"), None]),
        ])
        .unwrap();
        assert_eq!(got, rust);
        assert_ne!(
            got[0], got[1],
            "the separator keeps ('C1','S1') and ('C1S','1') apart"
        );
    }

    #[test]
    fn sample_unit_is_stable_and_in_the_unit_interval() {
        assert_eq!(sample_unit("C0000001"), sample_unit("C0000001"));
        let u: Vec<f64> = (0..10_000)
            .map(|i| sample_unit(&format!("C{i:07}")))
            .collect();
        assert!(u.iter().all(|x| (0.0..1.0).contains(x)));
        let below = u.iter().filter(|x| **x < 0.1).count();
        assert!((800..1200).contains(&below), "{below} of 10,000 below 0.1");
    }
}
