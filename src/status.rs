//! What has been published, for people (`segmenter status`) and for monitoring
//! (`segmenter run --metrics-file`, the Prometheus text format of node_exporter's textfile
//! collector). Both read only manifests: what a reader sees is what was published.

use std::fmt::Write as _;

use chrono::DateTime;
use datafusion::prelude::SessionContext;
use object_store::ObjectStoreExt;
use serde_json::Value;

use crate::config::Pipeline;
use crate::error::{Error, Result};
use crate::publish::{manifest_name, read_object, run_dates};
use crate::storage;

/// One published date, as `segmenter status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The run date.
    pub run_date: String,
    /// The attempt that published it.
    pub run_id: String,
    /// Customers scored.
    pub customers: u64,
    /// Segments.
    pub segments: u64,
    /// Wall time from start to finish, seconds.
    pub seconds: Option<f64>,
    /// How the segments were fitted (`first_fit`, `warm_start`, `refit`) and the churn
    /// model's training cut-off.
    pub models: String,
    /// Anything a data engineer should look at: rejected rows, skipped files, limits passed.
    pub warnings: Vec<String>,
}

impl Published {
    /// Reads the fields `status` shows from a manifest.
    pub fn from_manifest(m: &Value) -> Published {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let time = |k: &str| {
            m[k].as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        };
        let seconds = match (time("started_at"), time("finished_at")) {
            (Some(a), Some(b)) => Some((b - a).num_milliseconds() as f64 / 1000.0),
            _ => None,
        };
        let mut warnings = Vec::new();
        if let Some(inputs) = m["inputs"].as_object() {
            for (name, input) in inputs {
                let rejected: u64 = input["rejected"]
                    .as_object()
                    .map(|r| r.values().filter_map(Value::as_u64).sum())
                    .unwrap_or(0);
                if rejected > 0 {
                    warnings.push(format!("{name}: {rejected} rows left out"));
                }
                let skipped = input["skipped_files"].as_array().map_or(0, Vec::len);
                if skipped > 0 {
                    warnings.push(format!("{name}: {skipped} unreadable files skipped"));
                }
            }
        }
        for e in m["limits_exceeded"].as_array().into_iter().flatten() {
            warnings.push(format!(
                "{} past its {} s limit ({:.1} s)",
                text(&e["stage"]),
                e["limit_seconds"],
                e["seconds"].as_f64().unwrap_or(f64::NAN)
            ));
        }
        let training = m["models"]["churn"]["training_cutoff"]
            .as_str()
            .map(|c| format!(", churn trained to {}", c.get(..10).unwrap_or(c)))
            .unwrap_or_default();
        Published {
            run_date: text(&m["run_date"]),
            run_id: text(&m["run_id"]),
            customers: m["customers"].as_u64().unwrap_or(0),
            segments: m["clustering"]["k"].as_u64().unwrap_or(0),
            seconds,
            models: format!(
                "{}{training}",
                m["clustering"]["mode"].as_str().unwrap_or("?")
            ),
            warnings,
        }
    }
}

/// The newest `last` published dates under the pipeline's output root, newest first, and the
/// dates whose lock is present (a run in progress, or one that died: the next run takes its
/// lock over).
pub async fn published(pipeline: &Pipeline, last: usize) -> Result<(Vec<Published>, Vec<String>)> {
    let ctx = SessionContext::new();
    let root = storage::open(&ctx, &pipeline.output_root, &pipeline.storage)?;
    let mut dates = run_dates(&root).await?;
    dates.sort_unstable_by(|a, b| b.cmp(a));
    let mut out = Vec::new();
    let mut locked = Vec::new();
    for d in dates {
        let d = d.format("%Y-%m-%d").to_string();
        if root
            .store
            .head(&root.key(&format!("_runs/{d}/_lock")))
            .await
            .is_ok()
        {
            locked.push(d.clone());
        }
        if out.len() >= last {
            continue;
        }
        let name = manifest_name(&d);
        let Some(bytes) = read_object(&root, &name).await? else {
            continue;
        };
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(m) => out.push(Published::from_manifest(&m)),
            Err(e) => {
                tracing::warn!(manifest = root.url_of(&name), error = %e, "unreadable manifest")
            }
        }
    }
    Ok((out, locked))
}

/// `segmenter status` as a table.
pub fn table(published: &[Published], locked: &[String]) -> String {
    let mut s = format!(
        "{:<10}  {:>9}  {:>8}  {:>8}  {:<40}  warnings\n",
        "date", "customers", "segments", "seconds", "models"
    );
    for p in published {
        let secs = p.seconds.map_or("-".to_string(), |s| format!("{s:.1}"));
        let warnings = if p.warnings.is_empty() {
            "-".to_string()
        } else {
            p.warnings.join("; ")
        };
        writeln!(
            s,
            "{:<10}  {:>9}  {:>8}  {:>8}  {:<40}  {warnings}",
            p.run_date, p.customers, p.segments, secs, p.models
        )
        .ok();
    }
    if published.is_empty() {
        s += "(nothing published yet)\n";
    }
    for d in locked {
        writeln!(
            s,
            "{d}: locked (a run in progress, or one that died; the next run takes a dead run's lock over)"
        )
        .ok();
    }
    s
}

/// The run's figures in the Prometheus text exposition format: success, exit code, and for a
/// published run its duration, stages, customers, segment sizes, input rows and rejects, and
/// limits passed. All gauges, labelled with the run date.
pub fn prometheus(run_date: &str, exit_code: u8, manifest: Option<&Value>) -> String {
    let mut s = String::new();
    let label = |extra: &str| {
        if extra.is_empty() {
            format!("{{run_date=\"{run_date}\"}}")
        } else {
            format!("{{run_date=\"{run_date}\",{extra}}}")
        }
    };
    let mut gauge = |name: &str, help: &str, rows: Vec<(String, f64)>| {
        writeln!(s, "# HELP segmenter_{name} {help}").ok();
        writeln!(s, "# TYPE segmenter_{name} gauge").ok();
        for (labels, v) in rows {
            writeln!(s, "segmenter_{name}{} {v}", label(&labels)).ok();
        }
    };
    gauge(
        "run_success",
        "1 if the run published, 0 if it failed.",
        vec![(String::new(), f64::from(u8::from(exit_code == 0)))],
    );
    gauge(
        "run_exit_code",
        "The run's exit code (CONTRACT: 0 ok, 3 input rejected, 4 storage or engine, 5 locked, 6 time limit).",
        vec![(String::new(), f64::from(exit_code))],
    );
    let Some(m) = manifest else { return s };
    let escape = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    let p = Published::from_manifest(m);
    if let Some(secs) = p.seconds {
        gauge(
            "run_duration_seconds",
            "Wall time of the run.",
            vec![(String::new(), secs)],
        );
    }
    if let Some(t) = m["finished_at"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    {
        gauge(
            "run_finished_timestamp_seconds",
            "When the run published (Unix time).",
            vec![(String::new(), t.timestamp() as f64)],
        );
    }
    let stages = m["timings"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((format!("stage=\"{}\"", escape(k)), v.as_f64()?)))
        .collect();
    gauge("stage_seconds", "Wall time of each stage.", stages);
    gauge(
        "customers",
        "Customers scored.",
        vec![(String::new(), p.customers as f64)],
    );
    let sizes = m["clustering"]["segments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|seg| {
            Some((
                format!(
                    "segment=\"{}\",segment_id=\"{}\"",
                    escape(seg["name"].as_str()?),
                    seg["id"]
                ),
                seg["customers"].as_f64()?,
            ))
        })
        .collect();
    gauge("segment_customers", "Customers per segment.", sizes);
    let mut used = Vec::new();
    let mut rejected = Vec::new();
    for (input, r) in m["inputs"].as_object().into_iter().flatten() {
        if let Some(v) = r["rows_used"].as_f64() {
            used.push((format!("input=\"{}\"", escape(input)), v));
        }
        for (reason, n) in r["rejected"].as_object().into_iter().flatten() {
            if let Some(n) = n.as_f64() {
                rejected.push((
                    format!("input=\"{}\",reason=\"{}\"", escape(input), escape(reason)),
                    n,
                ));
            }
        }
    }
    gauge("input_rows_used", "Input rows the run used.", used);
    gauge(
        "input_rows_rejected",
        "Input rows left out, by data-quality rule.",
        rejected,
    );
    let exceeded = m["limits_exceeded"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                format!("stage=\"{}\"", escape(e["stage"].as_str()?)),
                e["seconds"].as_f64()?,
            ))
        })
        .collect();
    gauge(
        "limit_exceeded_seconds",
        "Stages (or the run) past their [limits], with their time.",
        exceeded,
    );
    s
}

/// Writes `text` to `path` atomically (a temporary file beside it, then a rename), as the
/// textfile collector requires.
pub fn write_atomically(path: &std::path::Path, text: &str) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let io = |e: std::io::Error| Error::Io {
        context: format!("writing the metrics file {}", path.display()),
        source: e,
    };
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Value {
        serde_json::json!({
            "run_id": "R", "run_date": "2026-10-31", "customers": 600,
            "started_at": "2026-11-01T02:00:00+00:00", "finished_at": "2026-11-01T02:00:12.5+00:00",
            "inputs": {"events": {"rows_used": 10, "rejected": {"anonymous": 3}, "skipped_files": []}},
            "models": {"churn": {"training_cutoff": "2026-08-02T00:00:00Z"}},
            "clustering": {"k": 2, "mode": "warm_start", "segments": [
                {"id": 1, "name": "Champions", "customers": 400}, {"id": 2, "name": "At \"risk\"", "customers": 200}]},
            "timings": {"features": 1.5, "write": 0.25},
            "limits_exceeded": [{"stage": "features", "limit_seconds": 1.0, "seconds": 1.5}]
        })
    }

    #[test]
    fn status_reads_what_matters_from_a_manifest() {
        let p = Published::from_manifest(&manifest());
        assert_eq!(p.seconds, Some(12.5));
        assert_eq!((p.customers, p.segments), (600, 2));
        assert_eq!(p.models, "warm_start, churn trained to 2026-08-02");
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert!(table(&[p], &["2026-11-01".into()]).contains("2026-11-01: locked"));
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let text = prometheus("2026-10-31", 0, Some(&manifest()));
        for line in [
            "segmenter_run_success{run_date=\"2026-10-31\"} 1",
            "segmenter_run_duration_seconds{run_date=\"2026-10-31\"} 12.5",
            "segmenter_stage_seconds{run_date=\"2026-10-31\",stage=\"features\"} 1.5",
            "segmenter_segment_customers{run_date=\"2026-10-31\",segment=\"At \\\"risk\\\"\",segment_id=\"2\"} 200",
            "segmenter_input_rows_rejected{run_date=\"2026-10-31\",input=\"events\",reason=\"anonymous\"} 3",
            "segmenter_limit_exceeded_seconds{run_date=\"2026-10-31\",stage=\"features\"} 1.5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        // Every sample line is `name{labels} value`, every family has HELP and TYPE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = l.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
        let failed = prometheus("2026-10-31", 4, None);
        assert!(failed.contains("segmenter_run_success{run_date=\"2026-10-31\"} 0"));
        assert!(failed.contains("segmenter_run_exit_code{run_date=\"2026-10-31\"} 4"));
    }
}
