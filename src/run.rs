//! One run for one logical date: calls the stages in order, times them, publishes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::NaiveDate;
use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::clustering;
use crate::config::Pipeline;
use crate::engine;
use crate::error::{Error, Result};
use crate::exports;
use crate::features::{self, Cutoff, Snapshots};
use crate::inputs;
use crate::limits::Watchdog;
use crate::models::{self, Night};
use crate::outputs::Manifest;
use crate::previous::{self, Published};
use crate::privacy::Erasure;
use crate::publish::{self, Lock};
use crate::quality;
use crate::report;
use crate::schedule::{self, RefitRecord};
use crate::state::{self, StateStore};
use crate::storage;
use crate::tables;

/// What a finished run reports back (the demo prints it).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The run id carried by every file.
    pub run_id: String,
    /// Logical date.
    pub run_date: NaiveDate,
    /// Known customers.
    pub customers: usize,
    /// One line per segment.
    pub segments: Vec<SegmentLine>,
    /// The manifest's URL.
    pub manifest: String,
    /// Output root URL.
    pub output_root: String,
    /// The published manifest.
    pub manifest_json: serde_json::Value,
}

/// One segment in the run summary.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentLine {
    /// Segment id.
    pub segment_id: i32,
    /// Segment name.
    pub segment: String,
    /// Customers in it.
    pub customers: usize,
    /// Mean churn risk score.
    pub mean_churn: f64,
    /// Total predicted value.
    pub total_value: f64,
}

/// How a run goes about its work (the result is the same either way, except that `refit`
/// fits afresh what would otherwise be reused).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Fit the segments from scratch instead of warm-starting from the previous run's model.
    pub refit: bool,
    /// Ignore the incremental state: read every input file again (`--full`).
    pub full: bool,
}

/// Runs the pipeline for logical date `date` and publishes the outputs.
pub async fn run(pipeline: &Pipeline, date: NaiveDate, options: RunOptions) -> Result<RunSummary> {
    let started_at = chrono::Utc::now();
    let run_date = date.format("%Y-%m-%d").to_string();
    let run_id = format!(
        "{}-{}",
        started_at.format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let cutoff = Cutoff::for_run_date(date);
    let mut timings = BTreeMap::new();
    let ctx = engine::session(pipeline)?;
    let root = storage::open(&ctx, &pipeline.output_root, &pipeline.storage)?;
    tracing::info!(
        run_date,
        run_id,
        output = root.location.as_str(),
        "run started"
    );

    let lock = Lock::acquire(&root, &run_date, &run_id, pipeline.lock_lease).await?;
    let watchdog = Watchdog::start(&pipeline.limits, lock.releaser());
    let result = run_locked(
        pipeline,
        &ctx,
        &root,
        &lock,
        &watchdog,
        Attempt {
            files: publish::Attempt::new(&run_date, &run_id),
            date,
            cutoff,
            started_at,
            options,
        },
        &mut timings,
    )
    .await;
    drop(watchdog);
    crate::progress::finish();
    engine::remove_scratch(&ctx).await;
    lock.release().await;
    result
}

/// What identifies one attempt at a run.
struct Attempt {
    /// Its date, run id and file names.
    files: publish::Attempt,
    date: NaiveDate,
    cutoff: Cutoff,
    started_at: chrono::DateTime<chrono::Utc>,
    options: RunOptions,
}

async fn run_locked(
    pipeline: &Pipeline,
    ctx: &SessionContext,
    root: &storage::StoreRef,
    lock: &Lock,
    watchdog: &Watchdog,
    attempt: Attempt,
    timings: &mut BTreeMap<&'static str, f64>,
) -> Result<RunSummary> {
    let Attempt {
        files: names,
        date,
        cutoff,
        started_at,
        options,
    } = attempt;
    let (run_date, run_id) = (names.run_date.as_str(), names.run_id.as_str());
    let mut clock = Instant::now();
    let mut cpu = cpu_seconds();
    let mut peak_rss = BTreeMap::new();
    crate::progress::stage(run_date, crate::limits::STAGES[0]);
    let mut lap = |name: &'static str, timings: &mut BTreeMap<&'static str, f64>| {
        let secs = clock.elapsed().as_secs_f64();
        watchdog.done(name, secs);
        let next = crate::limits::next_stage(name);
        crate::progress::stage(run_date, next.unwrap_or("publishing"));
        timings.insert(name, (secs * 1000.0).round() / 1000.0);
        let peak = peak_rss_mib();
        if let Some(mib) = peak {
            peak_rss.insert(name, mib);
        }
        let now = cpu_seconds();
        let spent = |i: usize| match (now, cpu) {
            (Some(n), Some(c)) => Some(n[i] - c[i]),
            _ => None,
        };
        tracing::info!(
            stage = name,
            seconds = secs,
            user_seconds = spent(0),
            system_seconds = spent(1),
            peak_rss_mib = peak,
            "stage done"
        );
        clock = Instant::now();
        cpu = now;
    };

    let erasure = erasure(ctx, pipeline).await?;
    let salt = erasure.as_ref().map(|e| e.digest()).unwrap_or_default();
    let previous_run = previous::find(root, date).await?;
    let published = match &previous_run {
        Some(d) => previous::published(root, d).await?,
        None => None,
    };
    let previous_state = match (&previous_run, &published) {
        (
            Some(d),
            Some(Published {
                state: Some(index), ..
            }),
        ) => state::read_index(root, d, index).await?,
        _ => None,
    };
    // The previous base's tallies count the orders and customers of its files.
    let kept_tallies = previous_state
        .as_ref()
        .and_then(|p| p.index.base.as_ref())
        .filter(|_| !options.full)
        .and_then(|base| {
            Some(inputs::KeptTallies {
                root: root.clone(),
                dir: base.dir.clone(),
                key: base.tallies.clone()?,
                orders: base.inputs.as_ref()?.orders.clone(),
                customers: base.inputs.as_ref()?.customers.clone(),
            })
        });
    let mut inputs = inputs::register(ctx, pipeline, cutoff, kept_tallies, &salt).await?;
    lap("inputs", timings);

    let decision = schedule::decide(
        root,
        &pipeline.model,
        date,
        previous_run.as_deref().zip(published.as_ref()),
        options.refit,
    )
    .await?;
    let mut refit_reason = decision.refit.clone();
    // Scoring nights need the run's own snapshot only; refits all of them.
    let snapshots = if refit_reason.is_some() {
        models::snapshots(cutoff)
    } else {
        Snapshots::new(cutoff, &[])
    };
    let superseded = previous_state.as_ref().map(|p| p.index.clone());
    // The previous base's scores for tonight, read beside the features in case the night
    // uses that base (it usually does).
    let prefetched = match (&refit_reason, &decision.stored, &previous_state) {
        (None, Some((_, file)), Some(p)) if !options.full => {
            p.index.base.as_ref().and_then(|base| {
                let key = crate::base::models_key(file);
                let days = (cutoff.0.and_utc().timestamp_micros() - base.cutoff)
                    .div_euclid(86_400_000_000);
                let kept = base.scores.as_deref() == Some(key.as_str());
                (kept && (1..base.days).contains(&days)).then(|| {
                    let (ctx, root, base) = (ctx.clone(), root.clone(), base.clone());
                    let dir = base.dir.clone();
                    let read = tokio::spawn(async move {
                        crate::base::kept_scores(&ctx, &root, &base, days, &key).await
                    });
                    (dir, days, AbortOnDrop(read))
                })
            })
        }
        _ => None,
    };
    let store = StateStore {
        root,
        previous: previous_state,
        full: options.full,
        salt: salt.clone(),
    };
    let (mut all, mut rollup) =
        features::customer_features(ctx, pipeline, &snapshots, &mut inputs, Some(store)).await?;
    log_inputs(&inputs);
    let mut state_report = std::mem::take(&mut rollup.report);
    publish::pause_point("state");
    if let (Some(index), Some(multi)) = (&mut rollup.index, &rollup.multi) {
        let name = names.state_multi_file();
        crate::outputs::write_parquet(root, &name, multi).await?;
        index.multi = Some(name);
    }
    tracing::info!(
        mode = state_report.mode,
        reused_files = state_report.reused_files,
        read_files = state_report.read_files,
        dropped_files = state_report.dropped_files,
        why = state_report.why.as_deref(),
        "clickstream state"
    );
    // Rejected rows are written before the gates, so that a run stopped by them leaves the
    // evidence; they are not a published table.
    let rejected_files = inputs::write_rejected(
        ctx,
        root,
        &names.rejected_dir(),
        run_id,
        &inputs,
        rollup.rejects_table,
    )
    .await?;
    quality::check(
        &inputs,
        &pipeline.quality,
        published.as_ref().map(|p| &p.rows),
    )?;
    tracing::info!(customers = all.current()?.len(), "features computed");
    lap("features", timings);

    // The models are scored on one core; beside them, on the other, the clustering (it needs
    // the features alone) and the previous run's customers for the transitions.
    let previous_model = match (&previous_run, &published) {
        (Some(d), Some(p)) => previous::model(root, d, p).await?,
        _ => None,
    };
    let clustering = {
        let (table, params, model) = (
            all.current()?.clone(),
            pipeline.clustering.clone(),
            previous_model.clone(),
        );
        let (refit, date) = (options.refit, run_date.to_string());
        tokio::task::spawn_blocking(move || {
            clustering::segment(&table, &params, model.as_ref(), refit, &date)
        })
    };
    let before = match (&previous_run, &published) {
        (Some(d), Some(p)) => {
            let (root, d, id) = (root.clone(), d.clone(), p.run_id.clone());
            Some(tokio::spawn(async move {
                previous::customers(&root, &d, &id).await
            }))
        }
        _ => None,
    };
    let mut features_again = false;

    let mut scored = None;
    if let (None, Some((stored, file))) = (&refit_reason, &decision.stored) {
        let kept = kept_scores(ctx, root, &rollup, &state_report, file, prefetched).await?;
        let reuse = kept
            .as_ref()
            .map(|(kept, changed)| models::kept::Reuse { kept, changed });
        match models::score_stored(pipeline, stored, &all, reuse.as_ref())? {
            Night::Scored(scores, drift) => {
                let record = RefitRecord {
                    refitted: false,
                    date: stored.refit_date.clone(),
                    model: file.clone(),
                    reason: None,
                };
                scored = Some((scores, drift, record, None));
            }
            Night::Refit(reason) => {
                tracing::info!(reason, "the stored models do not fit tonight's features");
                refit_reason = Some(reason);
            }
        }
    }
    let (scores, drift, refit_record, to_store) = match scored {
        Some(scored) => scored,
        None => {
            let every = models::snapshots(cutoff);
            if snapshots != every {
                // Found out after the features: compute the training snapshots too (the
                // clickstream's partials were just written: none is read again).
                let again = StateStore {
                    root,
                    previous: rollup.index.clone().map(|index| state::Previous {
                        run_date: run_date.to_string(),
                        index,
                    }),
                    full: false,
                    salt: salt.clone(),
                };
                all = features::customer_features(ctx, pipeline, &every, &mut inputs, Some(again))
                    .await?
                    .0;
                features_again = true;
            }
            let fit = models::fit(pipeline, &every, &all, run_date)?;
            let record = RefitRecord {
                refitted: true,
                date: run_date.to_string(),
                model: schedule::models_file(run_date, run_id),
                reason: refit_reason.clone(),
            };
            (fit.scores, fit.drift, record, Some(fit.stored))
        }
    };
    if let Some(base) = state_report.base.as_mut() {
        base.scores_kept = scores.kept as u64;
    }
    log_models(&scores.report, &refit_record);
    let features = all.current()?;
    // The coming nights' scores of the customers whose data will not change (src/base.rs).
    let scoring = to_store
        .as_ref()
        .or(decision.stored.as_ref().map(|(stored, _)| stored));
    if let (Some(index), Some(report), Some(stored)) =
        (rollup.index.as_mut(), state_report.base.as_ref(), scoring)
    {
        if let Some(base) = index.base.as_mut() {
            let key = crate::base::models_key(&refit_record.model);
            crate::base::score_ahead(
                ctx,
                root,
                base,
                report.days_after,
                stored,
                &key,
                pipeline.model.monthly_discount_rate,
            )
            .await?;
        }
    }
    if let Some(index) = &rollup.index {
        let name = names.state_index_file();
        let json = serde_json::to_vec(index)
            .map_err(|e| Error::Model(format!("serialising the state index: {e}")))?;
        crate::outputs::write_bytes(root, &name, json).await?;
        state_report.index = Some(name);
    }
    lap("models", timings);

    let segmentation = clustering
        .await
        .map_err(|e| Error::Model(format!("clustering: {e}")))?;
    // Features computed again (a refit found out after them) are clustered again: the same
    // rows, but the segments must come from the table the scores do.
    let segmentation = if features_again {
        clustering::segment(
            features,
            &pipeline.clustering,
            previous_model.as_ref(),
            options.refit,
            run_date,
        )?
    } else {
        segmentation?
    };
    tracing::info!(
        mode = segmentation.lineage.mode,
        reason = segmentation.lineage.reason,
        k = segmentation.k(),
        new = segmentation.lineage.new_segments.len(),
        retired = segmentation.lineage.retired.len(),
        "segments fitted"
    );
    lap("clustering", timings);

    // The consented contacts for the exports, read beside the segment tables.
    let contacts = {
        let ctx = ctx.clone();
        tokio::spawn(async move { exports::contacts(&ctx).await })
    };
    let assigned = tables::assign(pipeline, features, &scores, &segmentation)?;
    let segments_batch =
        tables::customer_segments(features, &scores, &segmentation, &assigned, cutoff.0.date())?;
    let transitions = match (&previous_run, before) {
        (Some(d), Some(before)) => {
            let mut before = before.await.map_err(|e| {
                Error::Model(format!("reading the previous run's customers: {e}"))
            })??;
            if let Some(e) = &erasure {
                before.retain(|(id, _)| !e.listed(id));
            }
            let now = previous::by_id(previous::states(&segments_batch)?);
            Some(previous::transitions(d, &before, &now)?)
        }
        _ => None,
    };
    if let Some(t) = &transitions {
        tracing::info!(
            previous_run = previous_run.as_deref(),
            changed = t.batch.num_rows(),
            kept_segment_share = t.kept_segment_share,
            "transitions since the previous run"
        );
    }
    let summary_batch = tables::segment_summary(
        features,
        &scores,
        &segmentation,
        &assigned,
        transitions.as_ref(),
        &pipeline.actions,
    )?;
    let transitions_batch = match &transitions {
        Some(t) => t.batch.clone(),
        None => previous::no_transitions()?,
    };
    lap("segments", timings);

    let tables = publish::spawn_tables(
        root,
        &names,
        vec![
            ("customer_segments", segments_batch.clone()),
            ("segment_summary", summary_batch.clone()),
            ("segment_transitions", transitions_batch),
        ],
    );
    let contacts = contacts
        .await
        .map_err(|e| Error::Model(format!("reading contacts: {e}")))??;
    let mut exports = exports::per_segment(&segments_batch, &segmentation, &contacts)?;
    let configured = exports::configured(
        ctx,
        &segments_batch,
        &contacts,
        &pipeline.exports,
        pipeline.customers.is_some(),
        &pipeline.source,
    )
    .await?;
    let mut export_records = Vec::new();
    for w in configured {
        let mut record = w.record;
        record.file = names.export_file(&w.name);
        export_records.push(record);
        exports.push((w.name, w.bytes));
    }
    let mut files =
        publish::write_attempt(root, &names, tables, exports, &segmentation.model).await?;
    if let Some(stored) = &to_store {
        let json = serde_json::to_vec(stored)
            .map_err(|e| Error::Model(format!("serialising the scoring models: {e}")))?;
        let url = crate::outputs::write_bytes(root, &refit_record.model, json).await?;
        files.insert("scoring_models", vec![url]);
    }
    if !rejected_files.is_empty() {
        files.insert("_rejected", rejected_files);
    }
    let privacy = match &erasure {
        Some(e) => {
            crate::privacy::count_found(ctx).await?;
            Some(e.scrub(root, run_date).await?)
        }
        None => None,
    };
    lap("write", timings);

    let segment_lines = tables::summary_lines(&segmentation, &scores);
    let mut manifest = Manifest {
        format: publish::MANIFEST_FORMAT,
        run_id,
        run_date,
        cutoff: cutoff.0.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        software: BTreeMap::from([
            ("name", env!("CARGO_PKG_NAME")),
            ("version", env!("CARGO_PKG_VERSION")),
        ]),
        started_at: started_at.to_rfc3339(),
        finished_at: chrono::Utc::now().to_rfc3339(),
        inputs: &inputs,
        customers: features.len(),
        models: schedule::manifest_record(&scores.report, &refit_record, &drift),
        clustering: segmentation.manifest_record(
            previous_run.as_deref(),
            pipeline.clustering.seed,
            transitions
                .as_ref()
                .map(|t| (t.kept_segment_share, &t.matrix)),
            &names.model_file(),
        ),
        pipeline: &pipeline.effective,
        outputs: files,
        timings: timings.clone(),
        peak_rss_mib: peak_rss,
        limits_exceeded: watchdog.exceeded(),
        privacy,
        state: &state_report,
        exports: export_records,
    };
    // The report is drawn from what the manifest says so far, and listed in it.
    let so_far = serde_json::to_value(&manifest)
        .map_err(|e| Error::Model(format!("serialising the manifest: {e}")))?;
    let html = report::render(&so_far, &segments_batch, &summary_batch)?;
    let report_url =
        crate::outputs::write_bytes(root, &names.report_file(), html.clone().into_bytes()).await?;
    manifest.outputs.insert("report", vec![report_url]);
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Model(format!("serialising the manifest: {e}")))?;
    let manifest_json = serde_json::from_slice(&json).unwrap_or_default();
    let manifest_url = publish::publish(root, &names, lock, json, &pipeline.retention).await?;
    // Published: the report under the name people bookmark. A failure is logged; the run's
    // own copy is listed in the manifest.
    if let Err(e) =
        crate::outputs::write_bytes(root, &names.published_report(), html.into_bytes()).await
    {
        tracing::warn!(error = %e, "could not write report/run_date=D/index.html");
    }
    if let (Some(before), Some(now)) = (&superseded, &rollup.index) {
        crate::base::remove_superseded(root, before.base.as_ref(), now.base.as_ref()).await;
        let removed = state::remove_superseded(root, before, now).await;
        if removed > 0 {
            tracing::info!(removed, "removed the state's superseded per-file rows");
        }
    }

    Ok(RunSummary {
        run_id: run_id.to_string(),
        run_date: NaiveDate::parse_from_str(run_date, "%Y-%m-%d").unwrap_or_default(),
        customers: features.len(),
        segments: segment_lines,
        manifest: manifest_url,
        output_root: root.location.as_str().to_string(),
        manifest_json,
    })
}

/// Reads `privacy.erased_customers`, if set, and puts its filter in force for the inputs
/// (src/privacy.rs).
async fn erasure(ctx: &SessionContext, pipeline: &Pipeline) -> Result<Option<Arc<Erasure>>> {
    let Some(location) = &pipeline.erased_customers else {
        return Ok(None);
    };
    storage::open(ctx, location, &pipeline.storage)?;
    let erasure = Erasure::load(ctx, location).await?;
    erasure.install(ctx);
    Ok(Some(erasure))
}

/// Whether `date` has a published run (a readable manifest) under the pipeline's output root.
pub async fn is_published(pipeline: &Pipeline, date: NaiveDate) -> Result<bool> {
    let ctx = SessionContext::new();
    let root = storage::open(&ctx, &pipeline.output_root, &pipeline.storage)?;
    let run_date = date.format("%Y-%m-%d").to_string();
    Ok(previous::published(&root, &run_date).await?.is_some())
}

/// The process's peak resident memory so far (Linux: `VmHWM` of /proc/self/status), in MiB;
/// None where that is not available.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// The process's CPU time so far, [user, system] seconds (Linux: `utime` and `stime` of
/// /proc/self/stat, in the kernel's 100 ticks a second); None where that is not available.
fn cpu_seconds() -> Option<[f64; 2]> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces: state is field 3, utime 14.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let mut ticks = || fields.next()?.parse::<f64>().ok();
    Some([ticks()? / 100.0, ticks()? / 100.0])
}

/// Fits and backtests the models for `date` without writing anything (`segmenter evaluate`).
pub async fn evaluate(pipeline: &Pipeline, date: NaiveDate) -> Result<models::ModelReport> {
    let cutoff = Cutoff::for_run_date(date);
    let ctx = engine::session(pipeline)?;
    let salt = erasure(&ctx, pipeline)
        .await?
        .map(|e| e.digest())
        .unwrap_or_default();
    let mut inputs = inputs::register(&ctx, pipeline, cutoff, None, &salt).await?;
    let snapshots = models::snapshots(cutoff);
    let features = features::customer_features(&ctx, pipeline, &snapshots, &mut inputs, None).await;
    engine::remove_scratch(&ctx).await;
    let (all, _) = features?;
    log_inputs(&inputs);
    let fit = models::fit(
        pipeline,
        &snapshots,
        &all,
        &date.format("%Y-%m-%d").to_string(),
    )?;
    Ok(fit.report)
}

fn log_models(report: &serde_json::Value, refit: &RefitRecord) {
    tracing::info!(
        churn = report.pointer("/churn/method").and_then(|v| v.as_str()),
        value = report.pointer("/value/method").and_then(|v| v.as_str()),
        backtest_auc = report
            .pointer("/backtest/churn_trees/auc")
            .and_then(|v| v.as_f64()),
        backtest_auc_bgnbd = report
            .pointer("/backtest/churn_bgnbd/auc")
            .and_then(|v| v.as_f64()),
        refitted = refit.refitted,
        refit_date = refit.date,
        reason = refit.reason.as_deref(),
        "models"
    );
}

fn log_inputs(inputs: &inputs::Inputs) {
    let each = [
        ("orders", Some(&inputs.orders)),
        ("events", inputs.events.as_ref()),
        ("customers", inputs.customers.as_ref()),
    ];
    for (name, report) in each {
        if let Some(r) = report {
            tracing::info!(
                input = name,
                files = r.files,
                rows = r.rows_in_files,
                used = r.rows_used,
                after_cutoff = r.rows_after_cutoff,
                rejected = ?r.rejected,
                "input read"
            );
        }
    }
}

/// A read of the kept scores started before the features: the base's directory, the days
/// after its cut-off, the read.
type Prefetched = (String, i64, AbortOnDrop<Result<Option<models::kept::Kept>>>);

/// A spawned task stopped when its handle is dropped unawaited (a prefetch the run did not
/// use).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The scores computed ahead for tonight, and the customers they do not hold: only on a
/// night whose other customers' features came from a base built before it, which kept scores
/// by the models tonight scores with. `prefetched`, when it read the base the night used,
/// is awaited instead of reading again.
async fn kept_scores(
    ctx: &SessionContext,
    root: &storage::StoreRef,
    rollup: &state::Rollup,
    report: &state::Report,
    models_file: &str,
    prefetched: Option<Prefetched>,
) -> Result<Option<(models::kept::Kept, Arc<std::collections::HashSet<String>>)>> {
    let (Some(base), Some(night)) = (
        rollup.index.as_ref().and_then(|i| i.base.as_ref()),
        report.base.as_ref(),
    ) else {
        return Ok(None);
    };
    if !night.features_kept || night.built {
        return Ok(None);
    }
    let key = crate::base::models_key(models_file);
    let kept = match prefetched {
        Some((dir, days, mut read)) if dir == base.dir && days == night.days_after => (&mut read.0)
            .await
            .map_err(|e| Error::Model(format!("reading the kept scores: {e}")))??,
        _ => crate::base::kept_scores(ctx, root, base, night.days_after, &key).await?,
    };
    let (Some(kept), Some(changed)) = (kept, rollup.changed.clone()) else {
        return Ok(None);
    };
    Ok(Some((kept, changed)))
}
