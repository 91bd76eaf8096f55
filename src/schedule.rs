//! Fit on a schedule, score every night: which stored models a run scores with, or why it
//! refits.
//!
//! A refit (all five snapshots, the classical fits, the trees and their backtest) stores its
//! models with its outputs (`_models/run_date=R/scoring_models-<run_id>.json`) and its
//! manifest says so (`models.refit`). Every later run carries the same record forward, so
//! the run for D finds the models of the latest refit through the manifest of the latest
//! published run before D, as it finds the segment model. A run for D refits when:
//! - `--refit` is given;
//! - no published run before D names stored models (the first run; a build before stored
//!   models), or they cannot be read or are of another format;
//! - the refit is `model.refit_every_days` days old or more (no refit in [D − N + 1, D]),
//!   or older than `model.max_age_days`;
//! - and, found once tonight's features are known: the feature list differs from the refit's,
//!   or a feature's population stability index against the training snapshot exceeds
//!   `model.max_feature_psi` ([`crate::models::score_stored`]).
//!
//! Only refits dated before D are used (a rerun of D that was itself a refit refits again,
//! with the same result: fits are deterministic).

use chrono::NaiveDate;
use serde::Serialize;

use crate::config::ModelParams;
use crate::error::Result;
use crate::models::{Drift, Stored, STORED_FORMAT};
use crate::previous::Published;
use crate::publish::read_object;
use crate::storage::StoreRef;

/// What the run will score with.
pub struct Decision {
    /// Why it refits (None: it scores with `stored`).
    pub refit: Option<String>,
    /// The stored models and their file (relative to the output root).
    pub stored: Option<(Stored, String)>,
}

/// Where a refit stores its models.
pub fn models_file(run_date: &str, run_id: &str) -> String {
    format!("_models/run_date={run_date}/scoring_models-{run_id}.json")
}

/// Decides for the run of `date`, given the latest published run before it.
pub async fn decide(
    root: &StoreRef,
    params: &ModelParams,
    date: NaiveDate,
    previous: Option<(&str, &Published)>,
    forced: bool,
) -> Result<Decision> {
    let refit = |reason: String| Decision {
        refit: Some(reason),
        stored: None,
    };
    if forced {
        return Ok(refit("--refit".into()));
    }
    let Some((run_date, p)) = previous else {
        return Ok(refit("no published run before this date".into()));
    };
    let (Some(refit_date), Some(file)) = (&p.refit_date, &p.scoring_models) else {
        return Ok(refit(format!(
            "the run of {run_date} names no stored models (first run with stored models)"
        )));
    };
    let Ok(refit_day) = NaiveDate::parse_from_str(refit_date, "%Y-%m-%d") else {
        return Ok(refit(format!(
            "the run of {run_date} names a refit date `{refit_date}`"
        )));
    };
    let age = (date - refit_day).num_days();
    if age >= i64::from(params.refit_every_days) {
        return Ok(refit(format!(
            "scheduled: the last refit ({refit_date}) is {age} days old \
             (model.refit_every_days = {})",
            params.refit_every_days
        )));
    }
    if age > i64::from(params.max_age_days) {
        return Ok(refit(format!(
            "the last refit ({refit_date}) is {age} days old (model.max_age_days = {})",
            params.max_age_days
        )));
    }
    let Some(bytes) = read_object(root, file).await? else {
        return Ok(refit(format!(
            "the stored models {} are gone",
            root.url_of(file)
        )));
    };
    match serde_json::from_slice::<Stored>(&bytes) {
        Ok(stored) if stored.format == STORED_FORMAT => Ok(Decision {
            refit: None,
            stored: Some((stored, file.clone())),
        }),
        Ok(stored) => Ok(refit(format!(
            "the stored models {} are of format {} (this build: {STORED_FORMAT})",
            root.url_of(file),
            stored.format
        ))),
        Err(e) => Ok(refit(format!(
            "the stored models {} cannot be read: {e}",
            root.url_of(file)
        ))),
    }
}

/// `models.refit` in the manifest: which refit the scores come from, and why a refit happened.
#[derive(Debug, Clone, Serialize)]
pub struct RefitRecord {
    /// Whether this run refitted.
    pub refitted: bool,
    /// The run date of the refit whose models scored this run.
    pub date: String,
    /// Those models (relative to the output root).
    pub model: String,
    /// Why this run refitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The manifest's `models`: the refit's report (learners, backtest) with `refit` and `drift`.
pub fn manifest_record(
    report: &serde_json::Value,
    refit: &RefitRecord,
    drift: &Drift,
) -> serde_json::Value {
    let mut record = report.clone();
    if let Some(map) = record.as_object_mut() {
        map.insert(
            "refit".into(),
            serde_json::to_value(refit).unwrap_or_default(),
        );
        map.insert(
            "drift".into(),
            serde_json::to_value(drift).unwrap_or_default(),
        );
    }
    record
}
