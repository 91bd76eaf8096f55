//! Apache DataFusion Ballista (feature `ballista`): the run's SQL on a cluster, and the
//! scheduler and executor roles served by this same binary (`segmenter scheduler`,
//! `segmenter executor`), so that the cluster runs this build's DataFusion, functions and
//! object stores.
//!
//! The driver (`segmenter run` with `engine.kind = "ballista"`) plans each query and sends it
//! to the scheduler, which splits it into stages for the executors; results come back over
//! Arrow Flight as a stream. Whatever the driver holds in memory and a query reads is written
//! under the output root's scratch prefix first (`engine::Scratch`). Models, clustering,
//! the manifest, the lock, the state and the exports stay with the driver, as in local mode.
//!
//! Object stores: the scheduler and the executors build the store of any `file://`, `s3://`,
//! `gs://` or `az://` URL a query names from their own environment (`AWS_*`, `GOOGLE_*`,
//! `AZURE_*`), as the driver does ([`StoresOnDemand`]); `file://` paths must be on a
//! filesystem they all share.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use ballista::prelude::SessionConfigExt;
use ballista_core::extension::SessionStateExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::config::StorageParams;
use crate::error::{Error, Result};
use crate::storage::StoresOnDemand;

/// How often an executor tells the scheduler it is alive.
pub const HEARTBEAT_SECONDS: u64 = 5;

/// How long the driver waits for the scheduler's port before giving up (exit 4).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A session whose queries run on the cluster of the scheduler at `scheduler` (`host:port`;
/// `url` as the pipeline file wrote it, for messages). `config` and `runtime` are the local
/// session's: its settings travel with every query; the runtime's stores serve this process's
/// own reads (schemas, file listings). Fails (exit 4) when the scheduler's port does not answer.
pub fn client(
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    scheduler: &str,
    url: &str,
) -> Result<SessionContext> {
    reachable(scheduler, url)?;
    // Ballista's own defaults for a cluster (no dynamic filters, no round-robin repartitions, …)
    // first; then this pipeline's settings, which take precedence, and hash joins (below).
    let mut cluster = SessionConfig::new_with_ballista();
    for entry in config.options().entries() {
        if let Some(value) = entry.value {
            if is_kept_setting(&entry.key) {
                cluster = cluster.set_str(&entry.key, &value);
            }
        }
    }
    let mut cluster = cluster
        .with_target_partitions(config.target_partitions())
        .with_information_schema(false)
        .with_ballista_job_name("segmenter")
        // Ballista 55's adaptive planner re-planned the features query's stages without end
        // (stage ids past 1,700 on 600 customers); the static planner runs it as planned.
        .with_ballista_adaptive_query_planner(false)
        .set_bool("datafusion.optimizer.prefer_hash_join", prefer_hash_join());
    if let Some(scratch) = config.get_extension::<crate::engine::Scratch>() {
        cluster = cluster.with_extension(scratch);
    }
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(cluster)
        .with_runtime_env(runtime)
        .build()
        .upgrade_for_ballista(format!("http://{scheduler}"))
        .map_err(|e| Error::engine(format!("connecting to the Ballista scheduler at {url}"), e))?;
    // datafusion-proto sends an EmptyRelation without its columns, so a plan in which the
    // optimizer replaced an always-false filter by one (the merged sessions' `after_cutoff`
    // arm under `reason IS NULL`) fails to decode on the scheduler ("No field named …"). The
    // rules that make them are left out: the filter stays, and is as cheap.
    let rules: Vec<_> = state
        .optimizers()
        .iter()
        .filter(|r| !MAKE_EMPTY_RELATIONS.contains(&r.name()))
        .cloned()
        .collect();
    let state = SessionStateBuilder::new_from_existing(state)
        .with_optimizer_rules(rules)
        .build();
    Ok(SessionContext::new_with_state(state))
}

/// Whether the cluster's joins are hash joins (segmenter's default) rather than Ballista's
/// sort-merge joins: `DATAFUSION_OPTIMIZER_PREFER_HASH_JOIN=false` goes back to those.
///
/// Ballista prefers sort-merge joins because DataFusion's hash join cannot spill. Segmenter's
/// joins are per customer, each task building a share of one side (a partition of the
/// customers); sorting both sides of every join cost more than the run saved: 200,000
/// customers on one executor of 2 cores took 121.1 s with sort-merge joins and 79.5 s with
/// hash joins (67.0 s locally; the features query 30.8 s against 16.0 s, merging the state
/// into the base 16.6 s against 6.1 s), with the same published bytes.
fn prefer_hash_join() -> bool {
    std::env::var("DATAFUSION_OPTIMIZER_PREFER_HASH_JOIN")
        .map(|v| !v.trim().eq_ignore_ascii_case("false"))
        .unwrap_or(true)
}

/// The optimizer rules that replace a plan by an EmptyRelation.
const MAKE_EMPTY_RELATIONS: [&str; 3] = [
    "eliminate_filter",
    "propagate_empty_relation",
    "eliminate_limit",
];

/// The local session's settings a cluster session takes over: segmenter's own (Parquet
/// reading, listing) and any `DATAFUSION_*` the user set, but not the optimizer and join
/// settings Ballista restricts for distributed plans.
fn is_kept_setting(key: &str) -> bool {
    key.starts_with("datafusion.execution.parquet.")
        || key == "datafusion.execution.listing_table_ignore_subdirectory"
        || key == "datafusion.execution.batch_size"
}

/// Checks that something listens at the scheduler's address, so that a wrong `engine.url`
/// fails at once with its URL rather than at the first query.
fn reachable(scheduler: &str, url: &str) -> Result<()> {
    let unreachable = |why: String| {
        Error::Cluster(format!(
            "cannot reach the Ballista scheduler at {url} (engine.url): {why}; check that \
             `segmenter scheduler` runs there and that this machine can reach its port"
        ))
    };
    let addrs: Vec<SocketAddr> = scheduler
        .to_socket_addrs()
        .map_err(|e| unreachable(e.to_string()))?
        .collect();
    let mut last = String::from("the host name resolves to no address");
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(unreachable(last))
}

/// The session of a query on the scheduler or an executor: Ballista's defaults, segmenter's
/// functions, and object stores built from this process's environment.
fn cluster_state(config: SessionConfig, runtime: Arc<RuntimeEnv>) -> Result<SessionState> {
    let state = ballista_core::utils::default_session_builder(config)
        .map_err(|e| Error::engine("starting a Ballista session", e))?;
    let mut state = SessionStateBuilder::new_from_existing(state)
        .with_runtime_env(runtime)
        .build();
    for udf in crate::engine::functions() {
        datafusion::execution::FunctionRegistry::register_udf(&mut state, Arc::new(udf))
            .map_err(|e| Error::engine("registering segmenter's functions", e))?;
    }
    Ok(state)
}

/// A runtime whose object stores are built on demand ([`StoresOnDemand`]), spilling under
/// `work_dir` when given, and which lists a directory again for every query.
///
/// DataFusion 55 keeps each directory's listing for the life of the runtime by default; a
/// scheduler outlives the runs, so the night after a refit planned its queries over the
/// listing of the refit night's day: the day's new customers file was not read, and the
/// sign-ups with neither orders nor sessions were missing from customer_segments (350 of
/// 200,000 in `bench/cluster.sh`; the integration test runs that night on one scheduler).
fn runtime_on_demand(work_dir: Option<&str>) -> Result<Arc<RuntimeEnv>> {
    let mut builder = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(StoresOnDemand::new(StorageParams::default())))
        .with_cache_manager(
            datafusion::execution::cache::cache_manager::CacheManagerConfig::default()
                .with_list_files_cache_limit(0),
        );
    if let Some(dir) = work_dir {
        builder = builder.with_temp_file_path(dir);
    }
    builder
        .build_arc()
        .map_err(|e| Error::engine("starting the query engine", e))
}

/// `segmenter scheduler`'s settings.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Address to listen on (gRPC for drivers and executors, and the REST API).
    pub bind: SocketAddr,
    /// Host name executors and drivers reach this scheduler at.
    pub external_host: String,
    /// Seconds without a heartbeat after which an executor is taken for dead and its tasks
    /// run elsewhere.
    pub executor_timeout_seconds: u64,
}

/// Runs a Ballista scheduler until the process is stopped.
pub async fn scheduler(options: SchedulerOptions) -> Result<()> {
    if options.executor_timeout_seconds <= 2 * HEARTBEAT_SECONDS {
        return Err(Error::config(
            None,
            format!(
                "--executor-timeout-seconds {}: must exceed two heartbeats ({} s)",
                options.executor_timeout_seconds,
                2 * HEARTBEAT_SECONDS
            ),
        ));
    }
    let runtime = runtime_on_demand(None)?;
    let config = SchedulerConfig {
        bind_host: options.bind.ip().to_string(),
        bind_port: options.bind.port(),
        external_host: options.external_host.clone(),
        executor_timeout_seconds: options.executor_timeout_seconds,
        expire_dead_executor_interval_seconds: (options.executor_timeout_seconds / 3).clamp(1, 15),
        no_executors_grace_period_seconds: options.executor_timeout_seconds,
        ..SchedulerConfig::default()
    }
    .with_override_config_producer(Arc::new(SessionConfig::new_with_ballista))
    .with_override_session_builder(Arc::new(move |config: SessionConfig| {
        cluster_state(config, Arc::clone(&runtime))
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
    }));
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| Error::Cluster(format!("starting the Ballista scheduler: {e}")))?;
    tracing::info!(bind = %options.bind, "Ballista scheduler listening (REST API at /api/jobs)");
    ballista_scheduler::scheduler_process::start_server(cluster, options.bind, Arc::new(config))
        .await
        .map_err(|e| Error::Cluster(format!("the Ballista scheduler stopped: {e}")))
}

/// `segmenter executor`'s settings.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `host:port`.
    pub scheduler: String,
    /// Host to listen on.
    pub bind_host: String,
    /// Host name the scheduler and drivers reach this executor at (default: the address the
    /// scheduler sees it connect from).
    pub external_host: Option<String>,
    /// Arrow Flight port (shuffle reads and results).
    pub port: u16,
    /// gRPC port the scheduler pushes tasks to.
    pub grpc_port: u16,
    /// Tasks run at once (default: the number of cores).
    pub cores: Option<usize>,
    /// Memory the tasks may use before spilling, bytes (default: 70 % of the machine's).
    pub memory_limit: Option<u64>,
    /// Directory for shuffle files and spills (default: a temporary directory).
    pub work_dir: Option<String>,
}

/// Runs a Ballista executor until the process is stopped (SIGINT or SIGTERM).
pub async fn executor(options: ExecutorOptions) -> Result<()> {
    let (host, port) = split_host_port(&options.scheduler)?;
    let runtime = runtime_on_demand(options.work_dir.as_deref())?;
    let functions = cluster_state(SessionConfig::new_with_ballista(), Arc::clone(&runtime))?;
    let mut config = ExecutorProcessConfig {
        bind_host: options.bind_host.clone(),
        external_host: options.external_host.clone(),
        port: options.port,
        grpc_port: options.grpc_port,
        scheduler_host: host,
        scheduler_port: port,
        // The scheduler may still be starting (both started by one script).
        scheduler_connect_timeout_seconds: 60,
        work_dir: options.work_dir.clone(),
        // Ballista's default (60 s) is for its scheduler's 180 s timeout; every 5 s lets a
        // scheduler take a dead executor for dead sooner (`--executor-timeout-seconds`).
        executor_heartbeat_interval_seconds: HEARTBEAT_SECONDS,
        memory_pool_size: options.memory_limit,
        override_config_producer: Some(Arc::new(SessionConfig::new_with_ballista)),
        override_runtime_producer: Some(Arc::new(move |_: &SessionConfig| {
            Ok(Arc::clone(&runtime))
        })),
        override_function_registry: Some(Arc::new(BallistaFunctionRegistry::from(&functions))),
        ..ExecutorProcessConfig::default()
    };
    if let Some(cores) = options.cores {
        config.vcores = cores;
    }
    tracing::info!(
        scheduler = %options.scheduler,
        flight_port = options.port,
        grpc_port = options.grpc_port,
        "Ballista executor starting"
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| Error::Cluster(format!("the Ballista executor stopped: {e}")))
}

/// `host:port` split; the port defaults to 50050.
fn split_host_port(text: &str) -> Result<(String, u16)> {
    let text = text.trim_start_matches("df://").trim_end_matches('/');
    match text.rsplit_once(':') {
        Some((host, port)) => port
            .parse()
            .map(|p| (host.to_string(), p))
            .map_err(|_| Error::config(None, format!("`{text}`: the port is not a number"))),
        None => Ok((text.to_string(), 50050)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_address_with_and_without_port() {
        assert_eq!(
            split_host_port("df://sched:6000").unwrap(),
            ("sched".into(), 6000)
        );
        assert_eq!(split_host_port("sched").unwrap(), ("sched".into(), 50050));
        assert!(split_host_port("sched:x").is_err());
    }

    #[test]
    fn unreachable_scheduler_is_named() {
        // Port 9 (discard) on loopback: nothing listens there on a test machine.
        let Err(err) = client(
            SessionConfig::new(),
            Arc::new(RuntimeEnv::default()),
            "127.0.0.1:9",
            "df://127.0.0.1:9",
        ) else {
            panic!("nothing listens on port 9, yet the scheduler was reached");
        };
        assert_eq!(err.exit_code(), 4);
        assert!(err.to_string().contains("df://127.0.0.1:9"), "{err}");
    }
}
