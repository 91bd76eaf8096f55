//! The `segmenter` command line: parse, call the library, map errors to exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Parser, Subcommand};
use segmenter::generate::{generate, GenerateOptions};
use segmenter::{Error, Pipeline, RunOptions, RunSummary};

#[global_allocator]
static ALLOCATOR: segmenter::alloc::HugePages = segmenter::alloc::HugePages;

/// Nightly customer segmentation from order and clickstream Parquet.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the pipeline for one date (default: yesterday, UTC) or a range of dates.
    Run {
        /// Pipeline file (TOML).
        #[arg(long)]
        pipeline: PathBuf,
        /// Logical date YYYY-MM-DD: sees rows before the next day 00:00 UTC.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        date: Option<NaiveDate>,
        /// First date of a backfill (inclusive).
        #[arg(long, requires = "to")]
        from: Option<NaiveDate>,
        /// Last date of a backfill (inclusive).
        #[arg(long, requires = "from")]
        to: Option<NaiveDate>,
        /// Override a pipeline key, e.g. --set output.root=s3://bucket/seg/ (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Refit the segments from scratch (transform, k, k-means) instead of warm-starting
        /// from the previous run's model; ids and names are still matched to it. With a
        /// range, only the first date refits.
        #[arg(long)]
        refit: bool,
        /// Ignore the incremental state: read every input file again (same result, slower);
        /// the state is written afresh.
        #[arg(long)]
        full: bool,
        /// With --from/--to: run dates that are already published too (by default a backfill
        /// skips them, so a stopped backfill resumes where it stopped).
        #[arg(long, requires = "from")]
        force: bool,
        /// Write the run's figures to this file in the Prometheus text format (for
        /// node_exporter's textfile collector), also when the run fails.
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
    },
    /// List the published dates: customers, segments, duration, models, warnings.
    Status {
        /// Pipeline file (TOML).
        #[arg(long)]
        pipeline: PathBuf,
        /// How many dates, newest first.
        #[arg(long, default_value_t = 10)]
        last: usize,
        /// Override a pipeline key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// SQL over the published tables (customer_segments, segment_summary, segment_transitions;
    /// every published date, `run_date` as a column), printed as a table or written as CSV,
    /// JSON lines or Parquet.
    Query {
        /// Pipeline file (TOML): where the outputs are.
        #[arg(long)]
        pipeline: PathBuf,
        /// Output format (parquet needs --out).
        #[arg(long, value_enum, default_value = "table")]
        format: segmenter::query::Format,
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// Override a pipeline key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// The query, e.g. "SELECT run_date, segment, count(*) FROM customer_segments GROUP BY 1, 2".
        sql: String,
    },
    /// Fit and backtest the models for a date and print the backtest (writes nothing).
    Evaluate {
        /// Pipeline file (TOML).
        #[arg(long)]
        pipeline: PathBuf,
        /// Logical date YYYY-MM-DD (default: yesterday, UTC).
        #[arg(long)]
        date: Option<NaiveDate>,
        /// Override a pipeline key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Generate a sample shop locally and run the demo pipeline on it.
    Demo {
        /// Working directory for the sample data and the outputs.
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
        /// Customers to generate.
        #[arg(long, default_value_t = 20_000)]
        customers: usize,
        /// Random seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Write a synthetic shop (orders, clickstream, customers, planted truth) as Parquet; with
    /// --until and --add-day, as it stood at the end of a day and then one night at a time.
    Generate {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Number of customers.
        #[arg(long)]
        customers: usize,
        /// Random seed (same seed, same bytes).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Last day of the data (the history covers the two years up to it).
        #[arg(long, default_value = "2026-10-31")]
        end_date: NaiveDate,
        /// Also write extra files with planted defects (duplicates from an old producer,
        /// invalid rows, a truncated file) and their exact counts in truth/defects.json; the
        /// clean files stay the same.
        #[arg(long, conflicts_with_all = ["until", "add_day"])]
        dirty: bool,
        /// Write only what exists by the end of day D (<= --end-date): orders and events before
        /// D+1 00:00 UTC, customers signed up before then. The world (same seed, customers and
        /// end date) and the truth are those of --end-date; D = --end-date writes the same bytes
        /// as without --until.
        #[arg(long, value_name = "D", conflicts_with = "add_day")]
        until: Option<NaiveDate>,
        /// Add the rows of day D (<= --end-date) to the shop already in --out as new files
        /// (orders/part-D.parquet, customers/part-D.parquet, events/dt=.../part-D.parquet; no
        /// truth); replaces nothing. Pass the same --customers, --seed, --end-date (and --daily)
        /// as the shop was generated with: --until D then --add-day D+1 gives the rows of
        /// --until D+1.
        #[arg(long, value_name = "D")]
        add_day: Option<NaiveDate>,
        /// Partition events by day (events/dt=YYYY-MM-DD/) instead of by month: one file per
        /// 10,000 customers per day, about 73,000 files for 1,000,000 customers (meant for tests
        /// and small shops).
        #[arg(long)]
        daily: bool,
        /// Plant a sign-up campaign: N extra customers (planted_type campaign_signup in the
        /// truth, numbered after --customers) who sign up uniformly over the --campaign-days
        /// days up to --end-date. Some browse, about a fifth orders before the end; whether a
        /// never-buyer orders in the 90 days after the end depends on their engagement
        /// (sessions and add to carts since the sign-up, recency of the last visit, age of the
        /// account): about 1 in 6 do, the more engaged half about three times as often as the
        /// other. A random stream of its own: the other customers' rows stay the same. 0 = no
        /// campaign. Pass the same value with --until and --add-day.
        #[arg(long, value_name = "N", default_value_t = 0)]
        campaign_signups: usize,
        /// Length of the sign-up campaign in days (1-365).
        #[arg(long, value_name = "D", default_value_t = segmenter::generate::DEFAULT_CAMPAIGN_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=365))]
        campaign_days: u32,
    },
    /// Serve as the scheduler of an Apache DataFusion Ballista cluster that runs segmenter's
    /// SQL (`engine.kind = "ballista"`); runs until stopped.
    #[cfg(feature = "ballista")]
    Scheduler {
        /// Address to listen on (drivers, executors, and the REST API at /api/...).
        #[arg(long, default_value = "0.0.0.0:50050")]
        bind: std::net::SocketAddr,
        /// Host name executors reach this scheduler at.
        #[arg(long, default_value = "localhost")]
        external_host: String,
        /// Seconds without a heartbeat before an executor is taken for dead and its tasks run
        /// on the others.
        #[arg(long, default_value_t = 180)]
        executor_timeout_seconds: u64,
    },
    /// Serve as an executor of a Ballista cluster (see `scheduler`); runs until stopped.
    #[cfg(feature = "ballista")]
    Executor {
        /// The scheduler, HOST:PORT.
        #[arg(long, default_value = "localhost:50050")]
        scheduler: String,
        /// Host to listen on.
        #[arg(long, default_value = "0.0.0.0")]
        bind_host: String,
        /// Host name the scheduler and drivers reach this executor at (default: the address
        /// the scheduler sees it connect from).
        #[arg(long)]
        external_host: Option<String>,
        /// Arrow Flight port: shuffle reads and query results.
        #[arg(long, default_value_t = 50051)]
        port: u16,
        /// gRPC port the scheduler sends tasks to.
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        /// Tasks at once (default: the number of cores).
        #[arg(long)]
        cores: Option<usize>,
        /// Memory the tasks may use before spilling, e.g. 8GiB (default: 70 % of the machine's).
        #[arg(long)]
        memory_limit: Option<String>,
        /// Directory for shuffle files and spills (default: a temporary directory).
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
}

/// The demo pipeline, also usable as `segmenter run --pipeline pipelines/demo.toml`.
const DEMO_PIPELINE: &str = include_str!("../pipelines/demo.toml");
/// The last day of the demo data.
const DEMO_END: &str = "2026-10-31";

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            e.print().ok();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(err) => match err.downcast_ref::<Error>() {
            // Our errors already carry their cause in the message; `{:#}` would repeat it.
            Some(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
            None => {
                eprintln!("error: {err:#}");
                ExitCode::from(4)
            }
        },
    }
}

/// Runs `dates` oldest first, skipping published ones unless `force`, stopping at the first
/// failure; prints a line per date and a summary, and exits with the failure's code.
fn backfill(
    rt: &tokio::runtime::Runtime,
    pipeline: &Pipeline,
    dates: &[NaiveDate],
    options: RunOptions,
    force: bool,
    metrics: &dyn Fn(NaiveDate, &segmenter::Result<RunSummary>) -> segmenter::Result<()>,
) -> anyhow::Result<ExitCode> {
    let (mut published, mut skipped) = (0, 0);
    let mut failed = None;
    let mut options = options;
    for &d in dates {
        if !force && rt.block_on(segmenter::run::is_published(pipeline, d))? {
            println!("skipped {d}: already published (--force runs it again)");
            skipped += 1;
            continue;
        }
        let result = rt.block_on(segmenter::run(pipeline, d, options));
        metrics(d, &result)?;
        match result {
            Ok(summary) => {
                println!(
                    "published {} ({} customers): {}",
                    d, summary.customers, summary.manifest
                );
                published += 1;
                options.refit = false;
            }
            Err(e) => {
                println!("failed {d}: {e}");
                failed = Some((d, e));
                break;
            }
        }
    }
    let not_run = dates.len() - published - skipped - usize::from(failed.is_some());
    println!(
        "backfill {}..{}: {published} published, {skipped} skipped, {} failed, {not_run} not run",
        dates[0],
        dates[dates.len() - 1],
        usize::from(failed.is_some()),
    );
    match failed {
        None => Ok(ExitCode::SUCCESS),
        Some((d, e)) => {
            eprintln!("error: {d}: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

/// Logs to stderr: human-readable by default, one JSON object per line with
/// `SEGMENTER_LOG_FORMAT=json` (for log shippers); the level from `RUST_LOG` (default info).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| segmenter::progress::LogWriter);
    if std::env::var("SEGMENTER_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The default logical date: yesterday in UTC.
fn yesterday() -> NaiveDate {
    chrono::Utc::now()
        .date_naive()
        .pred_opt()
        .unwrap_or_default()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Query plans are encoded, decoded and planned recursively (a Ballista scheduler
        // overflowed the default 2 MiB on the features query's plan); the stack is only
        // reserved, not used, until a deep plan needs it.
        .thread_stack_size(32 << 20)
        .build()
        .context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            pipeline,
            date,
            from,
            to,
            overrides,
            refit,
            full,
            force,
            metrics_file,
        } => {
            let options = RunOptions { refit, full };
            let pipeline = Pipeline::load(&pipeline, &overrides)?;
            let dates = match (date, from, to) {
                (Some(d), _, _) => vec![d],
                (None, Some(from), Some(to)) => {
                    if from > to {
                        return Err(Error::config(
                            None,
                            format!("--from {from} is after --to {to}"),
                        )
                        .into());
                    }
                    from.iter_days().take_while(|d| *d <= to).collect()
                }
                _ => vec![chrono::Utc::now()
                    .date_naive()
                    .pred_opt()
                    .unwrap_or_default()],
            };
            let rt = runtime()?;
            let metrics = |d: NaiveDate, result: &segmenter::Result<RunSummary>| {
                let Some(path) = &metrics_file else {
                    return Ok(());
                };
                let (code, manifest) = match result {
                    Ok(s) => (0, Some(&s.manifest_json)),
                    Err(e) => (e.exit_code(), None),
                };
                let text = segmenter::status::prometheus(&d.to_string(), code, manifest);
                segmenter::status::write_atomically(path, &text)
            };
            if from.is_none() {
                let result = rt.block_on(segmenter::run(&pipeline, dates[0], options));
                metrics(dates[0], &result)?;
                let summary = result?;
                println!(
                    "published {} ({} customers): {}",
                    dates[0], summary.customers, summary.manifest
                );
                return Ok(ExitCode::SUCCESS);
            }
            backfill(&rt, &pipeline, &dates, options, force, &metrics)
        }
        Command::Status {
            pipeline,
            last,
            overrides,
        } => {
            let pipeline = Pipeline::load(&pipeline, &overrides)?;
            let (published, locked) =
                runtime()?.block_on(segmenter::status::published(&pipeline, last))?;
            print!("{}", segmenter::status::table(&published, &locked));
            Ok(ExitCode::SUCCESS)
        }
        Command::Query {
            pipeline,
            format,
            out,
            overrides,
            sql,
        } => {
            if format == segmenter::query::Format::Parquet && out.is_none() {
                return Err(Error::Usage("--format parquet needs --out PATH".into()).into());
            }
            let pipeline = Pipeline::load(&pipeline, &overrides)?;
            let (schema, batches) = runtime()?.block_on(segmenter::query::run(&pipeline, &sql))?;
            let bytes = segmenter::query::render(format, &schema, &batches)?;
            match out {
                Some(path) => std::fs::write(&path, bytes).map_err(|e| Error::Io {
                    context: format!("writing {}", path.display()),
                    source: e,
                })?,
                None => {
                    use std::io::Write;
                    std::io::stdout().write_all(&bytes).map_err(|e| Error::Io {
                        context: "writing to standard output".into(),
                        source: e,
                    })?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Evaluate {
            pipeline,
            date,
            overrides,
            json,
        } => {
            let pipeline = Pipeline::load(&pipeline, &overrides)?;
            let date = date.unwrap_or_else(yesterday);
            let report = runtime()?.block_on(segmenter::run::evaluate(&pipeline, date))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", segmenter::models::report_table(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate {
            out,
            customers,
            seed,
            end_date,
            dirty,
            until,
            add_day,
            daily,
            campaign_signups,
            campaign_days,
        } => {
            let mut opts = GenerateOptions::new(out, customers);
            opts.seed = seed;
            opts.end_date = end_date;
            opts.dirty = dirty;
            opts.until = until;
            opts.add_day = add_day;
            opts.daily = daily;
            opts.campaign_signups = campaign_signups;
            opts.campaign_days = campaign_days;
            let s = generate(&opts).map_err(|e| Error::config(None, format!("generate: {e}")))?;
            if let Some(day) = add_day {
                println!(
                    "added {day}: {} new customers, {} orders, {} events ({} anonymous) in {} files under {} ({:.1}s)",
                    s.customers, s.orders, s.events, s.anonymous_events, s.files,
                    opts.out.display(), s.elapsed.as_secs_f64()
                );
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(day) = until {
                println!("data up to and including {day} (truth up to {end_date})");
            }
            if campaign_signups > 0 {
                println!(
                    "sign-up campaign: {campaign_signups} customers signing up over the {campaign_days} days up to {end_date} (planted_type campaign_signup)"
                );
            }
            println!(
                "generated {} customers, {} orders, {} events ({} anonymous), {} future orders in {} files under {} ({:.1}s)",
                s.customers, s.orders, s.events, s.anonymous_events, s.future_orders, s.files,
                opts.out.display(), s.elapsed.as_secs_f64()
            );
            if let Some(d) = &s.dirty {
                println!(
                    "dirty: added {} duplicate orders, {} invalid orders, {} invalid events and a truncated file; planted counts in {}",
                    d.duplicate_orders,
                    d.invalid_orders,
                    d.invalid_events,
                    opts.out.join(segmenter::generate::DEFECTS_FILE).display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "ballista")]
        Command::Scheduler {
            bind,
            external_host,
            executor_timeout_seconds,
        } => {
            let options = segmenter::cluster::SchedulerOptions {
                bind,
                external_host,
                executor_timeout_seconds,
            };
            runtime()?.block_on(segmenter::cluster::scheduler(options))?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "ballista")]
        Command::Executor {
            scheduler,
            bind_host,
            external_host,
            port,
            grpc_port,
            cores,
            memory_limit,
            work_dir,
        } => {
            let memory_limit = memory_limit
                .map(|text| {
                    segmenter::config::parse_memory(&text, segmenter::config::physical_memory())
                        .map(|b| b as u64)
                        .map_err(|e| Error::config(None, format!("--memory-limit {text}: {e}")))
                })
                .transpose()?;
            let options = segmenter::cluster::ExecutorOptions {
                scheduler,
                bind_host,
                external_host,
                port,
                grpc_port,
                cores,
                memory_limit,
                work_dir: work_dir.map(|d| d.display().to_string()),
            };
            runtime()?.block_on(segmenter::cluster::executor(options))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            dir,
            customers,
            seed,
        } => demo(&dir, customers, seed),
    }
}

fn demo(dir: &Path, customers: usize, seed: u64) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let data = dir.join("data");
    let end: NaiveDate = DEMO_END.parse().context("demo end date")?;
    let mut opts = GenerateOptions::new(&data, customers);
    opts.seed = seed;
    opts.end_date = end;
    println!(
        "generating {customers} customers into {} ...",
        data.display()
    );
    let g = generate(&opts).map_err(|e| Error::config(None, format!("generate: {e}")))?;
    println!(
        "  {} orders, {} clickstream events ({:.1}s)",
        g.orders,
        g.events,
        g.elapsed.as_secs_f64()
    );

    let d = data.display();
    let overrides = vec![
        format!("inputs.orders={d}/orders/"),
        format!("inputs.events={d}/events/"),
        format!("inputs.customers={d}/customers/"),
        format!("output.root={}/out/", dir.display()),
    ];
    let pipeline = Pipeline::from_toml(
        DEMO_PIPELINE,
        "pipelines/demo.toml",
        &dir,
        &overrides,
        &|k| std::env::var(k).ok(),
    )?;
    println!("running pipelines/demo.toml for {end} ...");
    let summary = runtime()?.block_on(segmenter::run(&pipeline, end, RunOptions::default()))?;
    print_summary(&summary);
    Ok(ExitCode::SUCCESS)
}

fn print_summary(s: &RunSummary) {
    println!(
        "\npublished run {} for {} ({} customers)",
        s.run_id, s.run_date, s.customers
    );
    println!("  outputs:  {}", s.output_root);
    println!("  manifest: {}", s.manifest);
    println!(
        "  report:   {}/report/run_date={}/index.html\n",
        s.output_root.trim_end_matches('/'),
        s.run_date
    );
    println!(
        "{:>3}  {:<20} {:>9} {:>11} {:>14}",
        "id", "segment", "customers", "mean churn", "total value"
    );
    for l in &s.segments {
        println!(
            "{:>3}  {:<20} {:>9} {:>11.3} {:>14.0}",
            l.segment_id, l.segment, l.customers, l.mean_churn, l.total_value
        );
    }
}
