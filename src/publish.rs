//! Publishing one attempt at a run date: its file names, the lock, the manifest, the cleanup.
//!
//! Object stores have no multi-file commit, so a run publishes in order (as delta-rs commits):
//! ```text
//!   lease _runs/D/_lock (create-only; renewed while the run lives)
//!     → every file of the attempt, named with its run id:   (invisible to manifest readers)
//!         customer_segments/run_date=D/part-<run_id>.parquet, … exports, _rejected,
//!         _models/run_date=D/segment_model-<run_id>.json
//!     → _runs/D/manifest.json        (the commit: lists exactly this attempt's files)
//!     → delete other attempts' files at D   (readers of the manifest never saw them)
//!   → release the lease
//! ```
//! A run killed anywhere before the manifest leaves files no manifest names; the next attempt
//! at D ignores them and deletes them once it has published. Readers that start from the
//! manifest (and the next night's run, which finds the previous model through it) see exactly
//! one attempt. Plain directory readers can see a killed attempt's files next to the published
//! ones until the next successful run of that date cleans them (README, "Publishing").

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::clustering::SegmentModel;
use crate::config::RetentionParams;
use crate::error::{Error, Result};
use crate::outputs;
use crate::storage::StoreRef;
use datafusion::arrow::array::RecordBatch;

/// Version of the lock object's format (readers accept older ones: see [`Lease`]).
const LOCK_FORMAT: u32 = 1;

/// Version of the manifest's format. A build reads manifests of its own format and older
/// ones (older ones lack fields, which readers treat as absent); a newer manifest is not used
/// for the row-drop gate, the transitions or the warm start (logged), as it may mean
/// something this build does not know.
pub const MANIFEST_FORMAT: u32 = 1;

/// The published report's file name: the one file of a run-scoped directory without a run
/// id, kept by the cleanups.
const PUBLISHED_REPORT: &str = "index.html";

fn is_published_report(key: &str) -> bool {
    key.ends_with(&format!("/{PUBLISHED_REPORT}"))
}

/// How far before `retention.attempts_days` a run looks for lost attempts.
const ATTEMPTS_WINDOW_DAYS: u64 = 31;

/// The directories under which attempts leave files, one `run_date=D/` partition per date.
const SCOPED_DIRS: [&str; 8] = [
    "customer_segments",
    "segment_summary",
    "segment_transitions",
    "exports",
    "report",
    "_rejected",
    "_models",
    "_state",
];

/// Where a run's manifest is stored, relative to the output root; it exists once the run is
/// published.
pub fn manifest_name(run_date: &str) -> String {
    format!("_runs/{run_date}/manifest.json")
}

/// Where builds before run-scoped models kept a date's segment model (read when a published
/// manifest does not name its model).
pub fn legacy_model_name(run_date: &str) -> String {
    format!("_models/run_date={run_date}/segment_model.json")
}

/// The bytes of object `name` under the root; `None` when there is no such object.
pub async fn read_object(root: &StoreRef, name: &str) -> Result<Option<Bytes>> {
    let what = || format!("reading {}", root.url_of(name));
    match root.store.get(&root.key(name)).await {
        Ok(r) => Ok(Some(
            r.bytes().await.map_err(|e| Error::storage(what(), e))?,
        )),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(Error::storage(what(), e)),
    }
}

/// The dates that have a `_runs/D/` directory (a manifest, a lock, or both), unordered.
pub async fn run_dates(root: &StoreRef) -> Result<Vec<NaiveDate>> {
    let listing = root
        .store
        .list_with_delimiter(Some(&root.key("_runs")))
        .await
        .map_err(|e| Error::storage(format!("listing {}", root.url_of("_runs/")), e))?;
    Ok(listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename())
        .filter_map(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .collect())
}

/// One attempt at a run date: every file it writes carries its run id.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The logical date, `YYYY-MM-DD`.
    pub run_date: String,
    /// Unique id of this attempt.
    pub run_id: String,
}

impl Attempt {
    /// The attempt `run_id` at `run_date`.
    pub fn new(run_date: &str, run_id: &str) -> Attempt {
        Attempt {
            run_date: run_date.to_string(),
            run_id: run_id.to_string(),
        }
    }

    /// The Parquet file of `table` (Hive partition `run_date=D`).
    pub fn table_file(&self, table: &str) -> String {
        format!(
            "{table}/run_date={}/part-{}.parquet",
            self.run_date, self.run_id
        )
    }

    /// The CSV export named `name`.
    pub fn export_file(&self, name: &str) -> String {
        format!(
            "exports/run_date={}/{name}-{}.csv",
            self.run_date, self.run_id
        )
    }

    /// The attempt's report (`index-<run_id>.html`); once published it is also copied to
    /// [`Attempt::published_report`].
    pub fn report_file(&self) -> String {
        format!(
            "report/run_date={}/index-{}.html",
            self.run_date, self.run_id
        )
    }

    /// The published run's report under the name readers bookmark (`index.html`): written
    /// after the manifest, so an unpublished attempt never replaces it.
    pub fn published_report(&self) -> String {
        format!("report/run_date={}/{PUBLISHED_REPORT}", self.run_date)
    }

    /// The directory of the rejected rows (files named by [`crate::inputs::write_rejected`]
    /// with the run id).
    pub fn rejected_dir(&self) -> String {
        format!("_rejected/run_date={}/", self.run_date)
    }

    /// The segment model, read by the next run through the manifest.
    pub fn model_file(&self) -> String {
        format!(
            "_models/run_date={}/segment_model-{}.json",
            self.run_date, self.run_id
        )
    }

    /// The index of the incremental state this attempt used (src/state.rs).
    pub fn state_index_file(&self) -> String {
        format!(
            "_state/run_date={}/index-{}.json",
            self.run_date, self.run_id
        )
    }

    /// The session keys of the state that may have several rows (src/state.rs).
    pub fn state_multi_file(&self) -> String {
        format!(
            "_state/run_date={}/multi-{}.parquet",
            self.run_date, self.run_id
        )
    }

    /// Every directory where attempts at this date leave files.
    fn scoped_dirs(&self) -> Vec<String> {
        let d = &self.run_date;
        SCOPED_DIRS
            .iter()
            .map(|dir| format!("{dir}/run_date={d}/"))
            .collect()
    }
}

/// The attempt's tables being written on a task of their own ([`spawn_tables`]); dropped
/// unfinished (the run failed meanwhile), the task is stopped.
pub struct TablesWriting(tokio::task::JoinHandle<Result<BTreeMap<&'static str, Vec<String>>>>);

impl Drop for TablesWriting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts writing each table as one Parquet file named with the run id, on a task of its
/// own: encoding a million customers' rows takes a core for about a second, which the
/// caller's exports (CSV formatting) run beside. [`write_attempt`] waits for it.
pub fn spawn_tables(
    root: &StoreRef,
    attempt: &Attempt,
    tables: Vec<(&'static str, RecordBatch)>,
) -> TablesWriting {
    let root = root.clone();
    let names: Vec<String> = tables.iter().map(|(t, _)| attempt.table_file(t)).collect();
    TablesWriting(tokio::spawn(async move {
        let mut files: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for ((table, batch), name) in tables.iter().zip(&names) {
            let url = outputs::write_parquet(&root, name, batch).await?;
            files.entry(table).or_default().push(url);
        }
        Ok(files)
    }))
}

/// Writes the attempt's files: waits for the tables ([`spawn_tables`]), then writes the
/// exports (name, CSV) and the segment model, each named with the run id. Returns their URLs
/// by table, for the manifest. The test hook pauses after the tables and exports (`write`)
/// and after the model (`model`).
pub async fn write_attempt(
    root: &StoreRef,
    attempt: &Attempt,
    mut tables: TablesWriting,
    exports: Vec<(String, Vec<u8>)>,
    model: &SegmentModel,
) -> Result<BTreeMap<&'static str, Vec<String>>> {
    let mut files = (&mut tables.0)
        .await
        .map_err(|e| Error::Model(format!("writing the tables: {e}")))??;
    for (name, csv) in exports {
        let url = outputs::write_bytes(root, &attempt.export_file(&name), csv).await?;
        files.entry("exports").or_default().push(url);
    }
    pause_point("write");
    let json = serde_json::to_vec_pretty(model)
        .map_err(|e| Error::Model(format!("serialising the segment model: {e}")))?;
    let url = outputs::write_bytes(root, &attempt.model_file(), json).await?;
    files.entry("segment_model").or_default().push(url);
    pause_point("model");
    Ok(files)
}

/// Publishes `attempt`: checks that it still holds `lock`, writes the manifest (the commit),
/// then deletes other attempts' files at its date. Returns the manifest's URL.
pub async fn publish(
    root: &StoreRef,
    attempt: &Attempt,
    lock: &Lock,
    manifest: Vec<u8>,
    retention: &RetentionParams,
) -> Result<String> {
    lock.ensure_held().await?;
    pause_point("manifest");
    let name = manifest_name(&attempt.run_date);
    let url = root.url_of(&name);
    root.store
        .put(&root.key(&name), PutPayload::from(Bytes::from(manifest)))
        .await
        .map_err(|e| Error::storage(format!("writing {url}"), e))?;
    tracing::info!(manifest = url, "published");
    for dir in attempt.scoped_dirs() {
        // The run is published: a failed cleanup is repeated by the next attempt at D.
        match remove_other_attempts(root, &dir, &attempt.run_id).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(dir, files = n, "removed files of other attempts"),
            Err(e) => tracing::warn!(dir, error = %e, "could not remove other attempts' files"),
        }
    }
    // Also after publishing: a failure is logged, and the next run tries again.
    match apply_retention(root, attempt, retention).await {
        Ok(removed) if removed.values().any(|&n| n > 0) => {
            tracing::info!(?removed, "retention: removed files past [retention]")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "retention could not be applied"),
    }
    Ok(url)
}

/// Deletes what `[retention]` no longer keeps, counted back from this attempt's date: exports
/// and rejected rows of old dates, and the files of unpublished or superseded attempts at old
/// dates (a date with neither a manifest nor a lock lost its only attempts; a published date
/// keeps only its manifest's run id). Returns the files removed, by kind.
pub async fn apply_retention(
    root: &StoreRef,
    attempt: &Attempt,
    retention: &RetentionParams,
) -> Result<BTreeMap<&'static str, usize>> {
    let today = NaiveDate::parse_from_str(&attempt.run_date, "%Y-%m-%d")
        .map_err(|e| Error::Model(format!("run date {}: {e}", attempt.run_date)))?;
    let older_than = |days: u32| (days > 0).then(|| today - chrono::Days::new(u64::from(days)));
    let mut removed = BTreeMap::new();
    for (kind, dir, days) in [
        ("exports", "exports", retention.exports_days),
        ("rejected", "_rejected", retention.rejected_days),
    ] {
        let Some(limit) = older_than(days) else {
            continue;
        };
        let mut n = 0;
        for (date, prefix) in partitions(root, dir).await? {
            if date < limit {
                n += delete_all(root, &prefix, |_| true).await?;
            }
        }
        removed.insert(kind, n);
    }
    if let Some(limit) = older_than(retention.attempts_days) {
        let mut n = 0;
        // Per date: (locked, published run id and model).
        let mut published: BTreeMap<NaiveDate, (bool, Option<PublishedIds>)> = BTreeMap::new();
        // Only the month before the limit: older dates were cleaned by the runs of their own
        // month, and every date looked at costs a manifest read on each nightly run.
        let window = limit - chrono::Days::new(ATTEMPTS_WINDOW_DAYS);
        for dir in SCOPED_DIRS {
            for (date, prefix) in partitions(root, dir).await? {
                if date >= limit || date < window {
                    continue;
                }
                let state = match published.entry(date) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        let d = date.format("%Y-%m-%d").to_string();
                        let run_id = published_run_id(root, &d).await?;
                        // A date with a lock and no manifest may be being written right now.
                        let locked = run_id.is_none()
                            && read_lock(root, &format!("_runs/{d}/_lock"))
                                .await?
                                .is_some();
                        e.insert((locked, run_id))
                    }
                };
                n += match state {
                    (true, _) => 0,
                    // Its own files carry its run id; a model from a build before run-scoped
                    // models is kept by the name its manifest gives.
                    (false, Some((run_id, model))) => {
                        let keep = |key: &str| {
                            key.contains(run_id.as_str())
                                || model.as_deref().is_some_and(|m| key.ends_with(m))
                                || is_published_report(key)
                        };
                        delete_all(root, &prefix, |key| !keep(key)).await?
                    }
                    (false, None) => delete_all(root, &prefix, |_| true).await?,
                };
            }
        }
        removed.insert("attempts", n);
    }
    Ok(removed)
}

/// The `run_date=X/` partitions under `dir`, with their dates.
async fn partitions(
    root: &StoreRef,
    dir: &str,
) -> Result<Vec<(NaiveDate, object_store::path::Path)>> {
    let listing = root
        .store
        .list_with_delimiter(Some(&root.key(dir)))
        .await
        .map_err(|e| Error::storage(format!("listing {}", root.url_of(dir)), e))?;
    Ok(listing
        .common_prefixes
        .into_iter()
        .filter_map(|p| {
            let date = p.filename()?.strip_prefix("run_date=")?;
            Some((NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?, p.clone()))
        })
        .collect())
}

/// Deletes the objects under `prefix` whose key passes `select`; returns how many.
async fn delete_all(
    root: &StoreRef,
    prefix: &object_store::path::Path,
    select: impl Fn(&str) -> bool,
) -> Result<usize> {
    let objects: Vec<_> = root
        .store
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(|e| Error::storage(format!("listing {prefix}"), e))?;
    let mut n = 0;
    for m in objects.iter().filter(|m| select(m.location.as_ref())) {
        root.store
            .delete(&m.location)
            .await
            .map_err(|e| Error::storage(format!("removing {}", m.location), e))?;
        n += 1;
    }
    Ok(n)
}

/// A published run's id and the segment model its manifest names.
type PublishedIds = (String, Option<String>);

/// The run id of the published run of `run_date` and the model its manifest names, if its
/// manifest exists and names a run id.
async fn published_run_id(root: &StoreRef, run_date: &str) -> Result<Option<PublishedIds>> {
    let Some(bytes) = read_object(root, &manifest_name(run_date)).await? else {
        return Ok(None);
    };
    let Ok(m) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Ok(None);
    };
    let model = m["clustering"]["model"].as_str().map(str::to_string);
    Ok(m["run_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .map(|id| (id.to_string(), model)))
}

/// Deletes every object under `dir` whose name does not contain `run_id`.
async fn remove_other_attempts(root: &StoreRef, dir: &str, run_id: &str) -> Result<usize> {
    let prefix = root.key(dir);
    let stale: Vec<_> = root
        .store
        .list(Some(&prefix))
        .try_filter(|m| {
            let key = m.location.as_ref();
            futures::future::ready(!key.contains(run_id) && !is_published_report(key))
        })
        .try_collect()
        .await
        .map_err(|e| Error::storage(format!("listing {}", root.url_of(dir)), e))?;
    for m in &stale {
        root.store
            .delete(&m.location)
            .await
            .map_err(|e| Error::storage(format!("removing {}", m.location), e))?;
    }
    Ok(stale.len())
}

/// Test hook: with `SEGMENTER_TEST_PAUSE=<point>` in the environment, the run prints
/// `paused at <point>` on stderr and sleeps there until it is killed (the crash tests kill it
/// with SIGKILL at a known step). Points: `state` (the clickstream's partials written, the
/// state's index not yet), `write` (tables written, model not yet),
/// `model` (model written), `manifest` (just before the manifest).
pub fn pause_point(point: &str) {
    if std::env::var("SEGMENTER_TEST_PAUSE").is_ok_and(|p| p == point) {
        eprintln!("segmenter: paused at {point} (SEGMENTER_TEST_PAUSE)");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// The lock object's content. Builds before leases wrote only `run_id` and `started_at`; such
/// a lock expires one lease after its start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Lease {
    #[serde(default)]
    format: u32,
    run_id: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    started_at: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

impl Lease {
    fn new(run_id: &str, started_at: DateTime<Utc>, ttl: Duration) -> Lease {
        Lease {
            format: LOCK_FORMAT,
            run_id: run_id.to_string(),
            host: Some(host_name()),
            pid: Some(std::process::id()),
            started_at: Some(started_at.to_rfc3339()),
            expires_at: Some(expiry(ttl).to_rfc3339()),
        }
    }

    fn body(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    fn parse(bytes: &[u8]) -> Option<Lease> {
        serde_json::from_slice(bytes).ok()
    }

    fn expires(&self, ttl: Duration) -> Option<DateTime<Utc>> {
        let parse = |s: &Option<String>| {
            s.as_deref()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        parse(&self.expires_at).or_else(|| {
            parse(&self.started_at).map(|s| s + chrono::Duration::from_std(ttl).unwrap_or_default())
        })
    }

    /// Why this lease no longer protects a live run, if it does not: its process is gone
    /// (same host), or it expired.
    fn stale_reason(&self, ttl: Duration) -> Option<String> {
        if let (Some(host), Some(pid)) = (&self.host, self.pid) {
            if *host == host_name() && pid != std::process::id() && !process_alive(pid) {
                return Some(format!("its process {pid} on {host} no longer exists"));
            }
        }
        match self.expires(ttl) {
            Some(e) if Utc::now() > e => Some(format!("its lease expired at {}", e.to_rfc3339())),
            _ => None,
        }
    }

    /// Who holds it, since and until when, for messages.
    fn describe(&self, ttl: Duration) -> String {
        let mut s = format!("run {}", self.run_id);
        if let (Some(host), Some(pid)) = (&self.host, self.pid) {
            s += &format!(" (host {host}, pid {pid})");
        }
        if let Some(start) = &self.started_at {
            s += &format!(", since {start}");
        }
        match self.expires(ttl) {
            Some(e) => s += &format!(", lease until {} unless renewed", e.to_rfc3339()),
            None => s += ", no expiry recorded",
        }
        s
    }
}

fn expiry(ttl: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default()
}

/// This machine's host name (Linux: the kernel's; else `$HOSTNAME`), `unknown` if neither.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Whether process `pid` of this host is running (a zombie is not). Where /proc is missing
/// (not Linux), every process is assumed alive and only the lease's expiry frees a lock.
fn process_alive(pid: u32) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: "123 (name) S ..."
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z') | Some('X')
        ),
        Err(_) => false,
    }
}

/// The run lock for one date: a lease the holder renews while it runs (see the module docs).
#[derive(Debug)]
pub struct Lock {
    root: StoreRef,
    name: String,
    lease: Lease,
    ttl: Duration,
    /// Set by the renewal task when the lock turned out to be another run's (who holds it):
    /// the attempt must not publish.
    lost: Arc<Mutex<Option<String>>>,
    renewal: Option<tokio::task::JoinHandle<()>>,
}

/// Whether the lock object `raw` carries `run_id`.
fn carries(raw: &[u8], run_id: &str) -> bool {
    Lease::parse(raw).is_some_and(|l| l.run_id == run_id)
}

/// Deletes the lock `name` if it still carries `run_id`.
async fn delete_if_ours(root: &StoreRef, name: &str, run_id: &str) -> Result<()> {
    if let Some((raw, _)) = read_lock(root, name).await? {
        if carries(&raw, run_id) {
            root.store
                .delete(&root.key(name))
                .await
                .map_err(|e| Error::storage(format!("removing {}", root.url_of(name)), e))?;
        }
    }
    Ok(())
}

/// The lock object, its raw bytes and its version, if it exists.
async fn read_lock(root: &StoreRef, name: &str) -> Result<Option<(Bytes, UpdateVersion)>> {
    let url = root.url_of(name);
    match root.store.get(&root.key(name)).await {
        Ok(r) => {
            let version = UpdateVersion {
                e_tag: r.meta.e_tag.clone(),
                version: r.meta.version.clone(),
            };
            let bytes = r
                .bytes()
                .await
                .map_err(|e| Error::storage(format!("reading {url}"), e))?;
            Ok(Some((bytes, version)))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(Error::storage(format!("reading {url}"), e)),
    }
}

impl Lock {
    /// Takes the lock `_runs/D/_lock` for `run_id` with a lease of `ttl`, renewed every third
    /// of it. A lock held by a live run fails with [`Error::Locked`] (exit 5); a stale one (its
    /// process gone from this host, or its lease expired) is taken over with a conditional
    /// write; a lock that already carries `run_id` (a retried create whose reply was lost) is
    /// ours.
    pub async fn acquire(
        root: &StoreRef,
        run_date: &str,
        run_id: &str,
        ttl: Duration,
    ) -> Result<Lock> {
        let name = format!("_runs/{run_date}/_lock");
        let url = root.url_of(&name);
        let lease = Lease::new(run_id, Utc::now(), ttl);
        let mut enforced = true;
        let mut acquired = false;
        for _ in 0..5 {
            let create = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match root
                .store
                .put_opts(&root.key(&name), PutPayload::from(lease.body()), create)
                .await
            {
                Ok(_) => {
                    acquired = true;
                    break;
                }
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {}
                // Stores without conditional writes: proceed; the scheduler must not overlap runs.
                Err(object_store::Error::NotImplemented { .. })
                | Err(object_store::Error::NotSupported { .. }) => {
                    tracing::warn!(
                        lock = url,
                        "store cannot create-only; run lock not enforced"
                    );
                    enforced = false;
                    acquired = true;
                    break;
                }
                Err(e) => return Err(Error::storage(format!("taking the lock {url}"), e)),
            }
            let Some((raw, current)) = read_lock(root, &name).await? else {
                continue; // released meanwhile: create again
            };
            if carries(&raw, run_id) {
                acquired = true;
                break;
            }
            let existing = Lease::parse(&raw);
            let stale = existing.as_ref().and_then(|l| l.stale_reason(ttl));
            let Some(why) = stale else {
                let holder = match &existing {
                    Some(l) => l.describe(ttl),
                    None => format!("an unreadable lock ({})", String::from_utf8_lossy(&raw)),
                };
                return Err(Error::Locked { lock: url, holder });
            };
            tracing::warn!(lock = url, reason = why, "taking over a stale run lock");
            if take_over(root, &name, &raw, current, &lease, run_id).await? {
                acquired = true;
                break;
            }
        }
        if !acquired {
            return Err(Error::Locked {
                lock: url,
                holder: "other runs contending for it (gave up after 5 tries)".into(),
            });
        }
        let mut lock = Lock {
            root: root.clone(),
            name,
            lease,
            ttl,
            lost: Arc::default(),
            renewal: None,
        };
        if enforced {
            lock.renewal = Some(lock.spawn_renewal());
        }
        Ok(lock)
    }

    fn spawn_renewal(&self) -> tokio::task::JoinHandle<()> {
        let (root, name, ttl) = (self.root.clone(), self.name.clone(), self.ttl);
        let (mut lease, lost) = (self.lease.clone(), Arc::clone(&self.lost));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                lease.expires_at = Some(expiry(ttl).to_rfc3339());
                match renew(&root, &name, &lease, ttl, &lost).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    // A transient failure: the lease still has two thirds of its time.
                    Err(e) => {
                        tracing::warn!(lock = root.url_of(&name), error = %e, "could not renew the run lock")
                    }
                }
            }
        })
    }

    /// Fails with [`Error::Locked`] unless the lock object still carries this run's id.
    pub async fn ensure_held(&self) -> Result<()> {
        let url = self.root.url_of(&self.name);
        let lost = self.lost.lock().map(|l| l.clone()).unwrap_or(None);
        if let Some(holder) = lost {
            return Err(Error::Locked { lock: url, holder });
        }
        match read_lock(&self.root, &self.name).await? {
            Some((raw, _)) if carries(&raw, &self.lease.run_id) => Ok(()),
            Some((raw, _)) => match Lease::parse(&raw) {
                Some(l) => Err(Error::Locked {
                    lock: url,
                    holder: format!(
                        "{}, which took it over from this run; nothing was published",
                        l.describe(self.ttl)
                    ),
                }),
                None => Err(Error::Locked {
                    lock: url,
                    holder: "an unreadable lock that replaced this run's; nothing was published"
                        .into(),
                }),
            },
            // Stores without create-only writes may not have it.
            None => Ok(()),
        }
    }

    /// A function that deletes the lock if it is still this run's, from any thread, without
    /// the run's async runtime (for a process about to exit: see [`crate::limits`]).
    pub fn releaser(&self) -> impl FnOnce() + Send + 'static {
        let (root, name, run_id) = (
            self.root.clone(),
            self.name.clone(),
            self.lease.run_id.clone(),
        );
        move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let release = delete_if_ours(&root, &name, &run_id);
                tokio::time::timeout(Duration::from_secs(10), release)
                    .await
                    .ok();
            });
        }
    }

    /// Stops renewing and deletes the lock if it is still this run's (best effort: a leftover
    /// lock expires, or is taken over once its process is gone).
    pub async fn release(mut self) {
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
        if let Err(e) = delete_if_ours(&self.root, &self.name, &self.lease.run_id).await {
            tracing::warn!(lock = %self.root.url_of(&self.name), error = %e, "could not remove the run lock");
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
    }
}

/// Replaces the stale lock `raw` (at version `current`) by `lease`. Returns whether it did;
/// false when the lock is not this run's yet (another run changed it first, or it was removed
/// for the caller to create its own): the caller looks again.
///
/// With a conditional update (S3, GCS, Azure, memory) this is one compare-and-swap. object_store's
/// local filesystem has no conditional update, so there the stale lock is renamed aside (an
/// atomic rename: of two contenders only one succeeds), checked to be the one judged stale,
/// and removed; the caller then creates its own (create-new). If the holder renewed it in
/// between, it is put back (a hard link, which fails if a new lock already exists).
async fn take_over(
    root: &StoreRef,
    name: &str,
    raw: &Bytes,
    current: UpdateVersion,
    lease: &Lease,
    run_id: &str,
) -> Result<bool> {
    let url = root.url_of(name);
    match put_if_unchanged(root, name, current, lease).await {
        Ok(_) => return Ok(true),
        Err(object_store::Error::Precondition { .. }) => return Ok(false),
        Err(object_store::Error::NotImplemented { .. })
        | Err(object_store::Error::NotSupported { .. }) => {}
        Err(e) => return Err(Error::storage(format!("taking over the lock {url}"), e)),
    }
    let Some(path) = root.local_path(name) else {
        // No conditional update and no filesystem: delete, then create-only (a narrow race).
        root.store
            .delete(&root.key(name))
            .await
            .map_err(|e| Error::storage(format!("removing the stale lock {url}"), e))?;
        return Ok(false);
    };
    let aside = path.with_file_name(format!("_lock.stale-{run_id}"));
    let io = |what: &str, e: std::io::Error| Error::Io {
        context: format!("{what} {}", path.display()),
        source: e,
    };
    match std::fs::rename(&path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io("moving aside the stale lock", e)),
    }
    let moved = std::fs::read(&aside).map_err(|e| io("reading the stale lock", e))?;
    if moved != raw.as_ref() {
        // Fails if a new lock exists meanwhile; then that one stands.
        std::fs::hard_link(&aside, &path).ok();
    }
    std::fs::remove_file(&aside).map_err(|e| io("removing the stale lock", e))?;
    Ok(false)
}

/// Renews the lease; false once the lock turned out to be another run's (recorded in `lost`).
async fn renew(
    root: &StoreRef,
    name: &str,
    lease: &Lease,
    ttl: Duration,
    lost_to: &Mutex<Option<String>>,
) -> Result<bool> {
    let url = root.url_of(name);
    let lost = |holder: String| {
        tracing::error!(
            lock = url,
            holder,
            "the run lock was taken over; this run will not publish"
        );
        if let Ok(mut l) = lost_to.lock() {
            *l = Some(holder);
        }
        Ok(false)
    };
    let current = match read_lock(root, name).await? {
        Some((raw, v)) => match Lease::parse(&raw) {
            Some(l) if l.run_id == lease.run_id => v,
            Some(l) => return lost(l.describe(ttl)),
            None => return lost("an unreadable lock".into()),
        },
        None => return lost("nobody: the lock was deleted".into()),
    };
    match put_if_unchanged(root, name, current, lease).await {
        Ok(_) => {}
        Err(object_store::Error::Precondition { .. }) => {
            return lost("a run that changed it while this one renewed".into())
        }
        // Local filesystem: a plain put replaces the file atomically (temporary file + rename).
        Err(object_store::Error::NotImplemented { .. })
        | Err(object_store::Error::NotSupported { .. }) => {
            root.store
                .put(&root.key(name), PutPayload::from(lease.body()))
                .await
                .map_err(|e| Error::storage(format!("renewing {url}"), e))?;
        }
        Err(e) => return Err(Error::storage(format!("renewing {url}"), e)),
    }
    Ok(true)
}

/// Writes `lease` to the lock `name` only if it is still at version `current` (stores without
/// conditional updates answer NotImplemented or NotSupported; callers decide what then).
async fn put_if_unchanged(
    root: &StoreRef,
    name: &str,
    current: UpdateVersion,
    lease: &Lease,
) -> object_store::Result<object_store::PutResult> {
    let update = PutOptions {
        mode: PutMode::Update(current),
        ..Default::default()
    };
    root.store
        .put_opts(&root.key(name), PutPayload::from(lease.body()), update)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttl() -> Duration {
        Duration::from_secs(600)
    }

    #[test]
    fn attempt_files_carry_the_run_id() {
        let a = Attempt::new("2026-10-31", "R1");
        assert_eq!(
            a.table_file("customer_segments"),
            "customer_segments/run_date=2026-10-31/part-R1.parquet"
        );
        assert_eq!(
            a.model_file(),
            "_models/run_date=2026-10-31/segment_model-R1.json"
        );
        assert_eq!(
            a.export_file("loyal"),
            "exports/run_date=2026-10-31/loyal-R1.csv"
        );
        assert!(a
            .scoped_dirs()
            .iter()
            .all(|d| d.ends_with("run_date=2026-10-31/")));
    }

    #[test]
    fn leases_expire_and_dead_processes_free_them() {
        let live = Lease::new("a", Utc::now(), ttl());
        assert_eq!(
            live.stale_reason(ttl()),
            None,
            "our own process, not expired"
        );
        let expired = Lease {
            expires_at: Some((Utc::now() - chrono::Duration::seconds(1)).to_rfc3339()),
            host: Some("another-host".into()),
            ..live.clone()
        };
        assert!(expired.stale_reason(ttl()).unwrap().contains("expired"));
        // A process id that cannot exist on Linux (above pid_max's ceiling of 2^22).
        let dead = Lease {
            pid: Some(u32::MAX - 1),
            ..live.clone()
        };
        if std::path::Path::new("/proc/self").exists() {
            assert!(dead
                .stale_reason(ttl())
                .unwrap()
                .contains("no longer exists"));
        }
        // A lock from a build before leases: run id and start only.
        let legacy =
            Lease::parse(br#"{"run_id":"old","started_at":"2020-01-01T00:00:00+00:00"}"#).unwrap();
        assert!(legacy.stale_reason(ttl()).unwrap().contains("expired"));
        let bare = Lease::parse(br#"{"run_id":"other"}"#).unwrap();
        assert_eq!(bare.stale_reason(ttl()), None, "no expiry recorded: held");
        assert!(live.describe(ttl()).contains("lease until"));
    }
}
