//! The pipeline file: parsed into [`RawPipeline`] (serde, unknown keys rejected), then checked
//! once into [`Pipeline`], the only form the rest of the program sees.
//!
//! Order of operations: TOML text → `toml::Value` → `--set` overrides → `${VAR}` expansion in
//! string values → `RawPipeline` → [`RawPipeline::validate`] (every problem reported at once).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::{Error, Result};

/// Built-in SQL: the order history of each customer at a cut-off (queries/order_history.sql).
pub const DEFAULT_ORDER_HISTORY_SQL: &str = include_str!("../queries/order_history.sql");
/// Built-in SQL: one row of features per known customer (queries/features.sql).
pub const DEFAULT_FEATURES_SQL: &str = include_str!("../queries/features.sql");
/// Built-in SQL: the clickstream's single pass, one row per session (queries/sessions.sql).
pub const DEFAULT_SESSIONS_SQL: &str = include_str!("../queries/sessions.sql");
/// Built-in SQL: engagement per customer and snapshot (queries/engagement.sql).
pub const DEFAULT_ENGAGEMENT_SQL: &str = include_str!("../queries/engagement.sql");

/// The pipeline file as written by the user.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    /// Where the raw Parquet lives.
    pub inputs: RawInputs,
    /// Where results are written.
    pub output: RawOutput,
    /// Which SQL files compute the features (defaults: the built-in queries/).
    #[serde(default)]
    pub queries: RawQueries,
    /// Churn and value scoring settings.
    #[serde(default)]
    pub model: ModelParams,
    /// k-means settings.
    #[serde(default)]
    pub clustering: ClusterParams,
    /// Lifecycle stage rules (SEEDS.md).
    #[serde(default)]
    pub lifecycle: LifecycleRules,
    /// Loyalty tier rules (SEEDS.md).
    #[serde(default)]
    pub loyalty: LoyaltyRules,
    /// Query engine resources.
    #[serde(default)]
    pub engine: EngineParams,
    /// Data quality gates.
    #[serde(default)]
    pub quality: QualityParams,
    /// Object-store retries and timeouts.
    #[serde(default)]
    pub storage: StorageParams,
    /// Time limits per stage and for the run.
    #[serde(default)]
    pub limits: LimitParams,
    /// How long to keep exports, rejected rows and unpublished attempts.
    #[serde(default)]
    pub retention: RetentionParams,
    /// Customers to forget.
    #[serde(default)]
    pub privacy: PrivacyParams,
    /// Thresholds of segment_summary's `recommended_action` rules.
    #[serde(default)]
    pub actions: ActionRules,
    /// Lists for marketing tools (`[[exports]]`); absent: [`ExportSpec::defaults`], an empty
    /// array (`exports = []`): none besides the per-segment CSVs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exports: Option<Vec<ExportSpec>>,
}

/// One `[[exports]]` entry: the customers of customer_segments for which `where` holds,
/// written to `exports/run_date=D/<name>-<run_id>.csv`.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    /// File name stem: lower-case letters, digits, `_` and `-`; unique.
    pub name: String,
    /// A SQL predicate over customer_segments' columns (and `email`, the opted-in address);
    /// every customer when absent.
    #[serde(rename = "where", default = "always")]
    pub predicate: String,
    /// `csv` (default) or `customer_match`.
    #[serde(default)]
    pub format: ExportFormat,
    /// For `csv`: the columns, in order (`customer_id` first is added when missing); default
    /// [`DEFAULT_EXPORT_COLUMNS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
}

fn always() -> String {
    "true".into()
}

/// The format of an export.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// UTF-8 CSV with a header, RFC 4180 quoting.
    #[default]
    Csv,
    /// The ad platforms' customer-list upload: one column `Email`, the SHA-256 hex of each
    /// opted-in address trimmed and lower-cased.
    CustomerMatch,
}

/// The per-segment CSVs are `exports/run_date=D/segment_<segment>-<run_id>.csv`; configured
/// exports may not take names with this prefix.
pub const SEGMENT_EXPORT_PREFIX: &str = "segment_";

/// Columns of a `csv` export without `columns`: the contract's columns and the e-mail.
pub const DEFAULT_EXPORT_COLUMNS: &[&str] = &[
    "customer_id",
    "email",
    "segment",
    "churn_risk",
    "churn_risk_score",
    "value_segment",
    "value_score",
    "lifecycle_stage",
    "loyalty_tier",
];

impl ExportSpec {
    /// The exports of a pipeline file without `[[exports]]`: `retention` (high churn risk ×
    /// high value: worth a win-back offer), `prospects` (never-buyers, the fifth with the
    /// lowest churn score: the likeliest to order; ties by customer id) and `customer_match`
    /// (every opted-in customer).
    pub fn defaults() -> Vec<ExportSpec> {
        let csv = |name: &str, predicate: &str| ExportSpec {
            name: name.into(),
            predicate: predicate.into(),
            format: ExportFormat::Csv,
            columns: None,
        };
        vec![
            csv(
                "retention",
                "churn_risk = 'high' AND value_segment = 'high'",
            ),
            csv(
                "prospects",
                "lifecycle_stage = 'potential' AND customer_id IN (\
                   SELECT customer_id FROM (\
                     SELECT customer_id, \
                       row_number() OVER (ORDER BY churn_risk_score, customer_id) AS position, \
                       count(*) OVER () AS never_buyers \
                     FROM customer_segments WHERE lifecycle_stage = 'potential') \
                   WHERE position * 5 <= never_buyers)",
            ),
            ExportSpec {
                name: "customer_match".into(),
                predicate: always(),
                format: ExportFormat::CustomerMatch,
                columns: None,
            },
        ]
    }

    /// The csv columns, `customer_id` first (erasure scrubs exports by their first column).
    pub fn csv_columns(&self) -> Vec<String> {
        let mut columns: Vec<String> = match &self.columns {
            Some(c) => c.clone(),
            None => DEFAULT_EXPORT_COLUMNS
                .iter()
                .map(|c| c.to_string())
                .collect(),
        };
        columns.retain(|c| c != "customer_id");
        columns.insert(0, "customer_id".into());
        columns
    }
}

/// Problems of the `[[exports]]` entries, pushed onto `problems`.
fn check_exports(exports: &[ExportSpec], problems: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, e) in exports.iter().enumerate() {
        let at = format!("`exports[{i}]` (name \"{}\")", e.name);
        let valid_name = !e.name.is_empty()
            && e.name.len() <= 100
            && e.name
                .starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && e.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid_name {
            problems.push(format!(
                "{at}: a name is 1 to 100 of a-z, 0-9, `_` and `-`, starting with a letter or digit"
            ));
        } else if e.name.starts_with(SEGMENT_EXPORT_PREFIX) {
            problems.push(format!(
                "{at}: names starting with `{SEGMENT_EXPORT_PREFIX}` are the per-segment CSVs'; choose another"
            ));
        }
        if !seen.insert(e.name.as_str()) {
            problems.push(format!("{at}: two exports have this name"));
        }
        if e.predicate.trim().is_empty() {
            problems.push(format!(
                "{at}: `where` is empty; leave it out to export everyone"
            ));
        }
        match (e.format, &e.columns) {
            (ExportFormat::CustomerMatch, Some(_)) => problems.push(format!(
                "{at}: a customer_match export has exactly one column, `Email`; remove `columns`"
            )),
            (ExportFormat::Csv, Some(c)) if c.is_empty() => {
                problems.push(format!("{at}: `columns` is empty"))
            }
            _ => {}
        }
    }
}

/// `[privacy]`.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyParams {
    /// A location of Parquet files with a `customer_id` column: customers removed from every
    /// output from the next run on, and from the exports still kept (README, "Privacy").
    pub erased_customers: Option<String>,
}

/// `[retention]`: days to keep what a run writes besides its tables, counted back from the
/// run date (a backfill of old dates therefore never deletes newer ones); 0 keeps forever.
/// Applied after each run publishes.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionParams {
    /// `exports/run_date=X/` (e-mail addresses: keep them no longer than marketing needs).
    pub exports_days: u32,
    /// `_rejected/run_date=X/` (the rows the quality rules left out).
    pub rejected_days: u32,
    /// Files of attempts that were never published or were superseded (a killed run of a
    /// date that never ran again), in every run-scoped directory.
    pub attempts_days: u32,
}

impl Default for RetentionParams {
    fn default() -> Self {
        RetentionParams {
            exports_days: 90,
            rejected_days: 30,
            attempts_days: 7,
        }
    }
}

/// `[limits]`: wall-clock limits in seconds for the whole run and for each stage (the stage
/// names of the manifest's `timings`); absent means no limit. Past a limit the run logs a
/// warning and records it in the manifest (`on_exceeded = "warn"`, the default), or stops at
/// once with exit 6 and publishes nothing (`"fail"`).
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LimitParams {
    /// `warn` or `fail`.
    pub on_exceeded: OnExceeded,
    /// The whole run, lock to publish.
    pub run: Option<f64>,
    /// Listing and checking the inputs.
    pub inputs: Option<f64>,
    /// The clickstream pass and the features.
    pub features: Option<f64>,
    /// Fitting, backtesting and scoring the models.
    pub models: Option<f64>,
    /// k-means.
    pub clustering: Option<f64>,
    /// Segment tables and transitions.
    pub segments: Option<f64>,
    /// Writing the outputs and publishing.
    pub write: Option<f64>,
}

impl LimitParams {
    /// The limits that are set, by stage name (`run` for the whole run).
    pub fn set(&self) -> Vec<(&'static str, f64)> {
        [
            ("run", self.run),
            ("inputs", self.inputs),
            ("features", self.features),
            ("models", self.models),
            ("clustering", self.clustering),
            ("segments", self.segments),
            ("write", self.write),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

/// What a time limit does when it passes.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnExceeded {
    /// Log a warning and record it in the manifest.
    #[default]
    Warn,
    /// Stop the run at once: exit 6, nothing published.
    Fail,
}

/// `[storage]`: how hard to try against a cloud object store (S3, GCS, Azure) before a run
/// gives up with exit 4. Requests that fail with a transient error (5xx, 429, connection
/// reset, timeout) are retried with exponential backoff (object_store's retry policy).
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageParams {
    /// Retries of one request after its first try (0: none).
    pub max_retries: usize,
    /// No retry starts later than this many seconds after a request's first try.
    pub retry_timeout_seconds: u64,
    /// A request (including reading its response) that takes longer fails, and is retried.
    pub request_timeout_seconds: u64,
    /// Establishing a connection that takes longer fails, and is retried.
    pub connect_timeout_seconds: u64,
}

impl Default for StorageParams {
    /// object_store's own defaults.
    fn default() -> Self {
        StorageParams {
            max_retries: 10,
            retry_timeout_seconds: 180,
            request_timeout_seconds: 30,
            connect_timeout_seconds: 5,
        }
    }
}

/// `[quality]`: row rules and the gates that stop a run on bad input (README "Data quality").
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QualityParams {
    /// Above this share of rejected rows in any input the run fails (exit 3).
    pub max_rejected_share: f64,
    /// If an input's usable rows fall by more than this share against the previous
    /// published run, the run fails (exit 3).
    pub max_row_drop: f64,
    /// Rows with a timestamp before this date (UTC) are rejected (`before_floor`).
    pub earliest_date: String,
    /// A corrupt or truncated Parquet file: `"fail"` (exit 3) or `"skip"` (counted).
    pub on_corrupt_file: OnCorruptFile,
}

/// What to do with an unreadable input file.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnCorruptFile {
    /// Stop with exit 3, naming the file.
    Fail,
    /// Leave it out, count and list it in the manifest.
    Skip,
}

impl Default for QualityParams {
    fn default() -> Self {
        QualityParams {
            max_rejected_share: 0.05,
            max_row_drop: 0.5,
            earliest_date: "1980-01-01".into(),
            on_corrupt_file: OnCorruptFile::Fail,
        }
    }
}

/// `[inputs]`: prefixes or directories of Parquet files.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawInputs {
    /// Orders, one row per order (required).
    pub orders: String,
    /// Clickstream events, one row per event (optional).
    pub events: Option<String>,
    /// Customer master data (optional; needed for e-mail exports).
    pub customers: Option<String>,
}

/// `[output]`.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    /// Root under which every table, export and manifest is written.
    pub root: String,
    /// The run lock's lease in seconds: renewed every third of it while the run lives; a lock
    /// not renewed for this long (its holder crashed on another host) is taken over.
    #[serde(default = "default_lock_lease_seconds")]
    pub lock_lease_seconds: u64,
}

fn default_lock_lease_seconds() -> u64 {
    600
}

/// `[queries]`: SQL files, relative to the pipeline file. Absent means built-in.
#[derive(Debug, Deserialize, Serialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RawQueries {
    /// Per-customer order history at a cut-off, with the outcome over a horizon.
    pub order_history: Option<String>,
    /// Per-customer features at the run's cut-off.
    pub features: Option<String>,
    /// The clickstream's per-session rollup (with the rule counts).
    pub sessions: Option<String>,
    /// Engagement per customer and snapshot, from the sessions.
    pub engagement: Option<String>,
}

/// `[model]`: scoring settings.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelParams {
    /// Monthly discount rate for the present value of future revenue (0.01 = 1 % a month).
    pub monthly_discount_rate: f64,
    /// Churn score at or above which a customer is `medium` risk.
    pub churn_medium: f64,
    /// Churn score at or above which a customer is `high` risk.
    pub churn_high: f64,
    /// Quantile of positive value scores at or above which a customer is `high` value.
    pub value_high_quantile: f64,
    /// Quantile of positive value scores at or above which a customer is `medium` value.
    pub value_medium_quantile: f64,
    /// Customers kept (a stable sample by id) in each earlier snapshot the models train and
    /// backtest on; everyone is scored.
    pub training_sample: usize,
    /// The churn and value models are refitted when no published run of the last this many
    /// days (the run's date included) refitted them; the other nights load them and score.
    pub refit_every_days: u32,
    /// Stored models older than this many days are refitted, whatever the schedule.
    pub max_age_days: u32,
    /// Stored models are refitted when a feature's population stability index against the
    /// training snapshot exceeds this.
    pub max_feature_psi: f64,
}

impl Default for ModelParams {
    fn default() -> Self {
        ModelParams {
            monthly_discount_rate: 0.01,
            churn_medium: 0.4,
            churn_high: 0.7,
            value_high_quantile: 0.8,
            value_medium_quantile: 0.5,
            training_sample: 100_000,
            refit_every_days: 7,
            max_age_days: 28,
            max_feature_psi: 0.25,
        }
    }
}

/// `[clustering]`: features, transform, k-means and segment matching settings (README
/// "Segments").
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterParams {
    /// Number of segments: a number, or `"auto"` for the best silhouette in `k_min..=k_max`.
    pub k: KSetting,
    /// Smallest k tried by `k = "auto"`.
    pub k_min: usize,
    /// Largest k tried by `k = "auto"`.
    pub k_max: usize,
    /// Customers the silhouette of each k is computed on (`k = "auto"`).
    pub silhouette_sample: usize,
    /// Independent k-means++ runs; the best (lowest inertia) wins.
    pub n_runs: usize,
    /// Iteration cap per run.
    pub max_iterations: u64,
    /// Convergence tolerance on centroid movement.
    pub tolerance: f64,
    /// Random seed: same input and seed give the same segments.
    pub seed: u64,
    /// Customers sampled for fitting (all customers are assigned).
    pub sample_size: usize,
    /// Quantiles at which each transformed feature is clipped before standardising.
    pub winsorize: [f64; 2],
    /// A cluster farther than this (Euclidean, in the standardised, weighted space) from every
    /// segment of the previous model is a new segment; the segment it would have replaced is
    /// retired.
    pub max_match_distance: f64,
    /// The features k-means sees (replaces the default list when given).
    pub features: BTreeMap<String, FeatureSpec>,
}

/// `clustering.k`: fixed, or chosen by silhouette.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KSetting {
    /// Exactly this many segments.
    Fixed(usize),
    /// The best silhouette in `k_min..=k_max`.
    Auto,
}

impl Serialize for KSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            KSetting::Fixed(k) => s.serialize_u64(*k as u64),
            KSetting::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for KSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = KSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of segments or \"auto\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<KSetting, E> {
                usize::try_from(v).map(KSetting::Fixed).map_err(|_| {
                    E::custom("`clustering.k` must be a number of segments or \"auto\"")
                })
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<KSetting, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<KSetting, E> {
                if v == "auto" {
                    Ok(KSetting::Auto)
                } else {
                    Err(E::custom(
                        "`clustering.k` must be a number of segments or \"auto\"",
                    ))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// How one clustering feature is transformed before standardising.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TransformKind {
    /// ln(1 + max(x, 0)): counts, money, days.
    Log1p,
    /// As is: shares, rates, trends.
    None,
}

/// `[clustering.features]` entry: `name = { transform = "log1p", weight = 1.0, missing = 0 }`.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureSpec {
    /// `log1p` or `none`.
    pub transform: TransformKind,
    /// Multiplies the standardised feature: 2 counts it twice as much in the distance.
    pub weight: f64,
    /// Value used for NULL (e.g. no order yet: a long recency), or `"median"`: the median of
    /// the known values, fitted with the transform.
    pub missing: Missing,
}

/// `missing` of a clustering feature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Missing {
    /// This value.
    Value(f64),
    /// The median of the known values.
    Median,
}

impl Serialize for Missing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Missing::Value(v) => s.serialize_f64(*v),
            Missing::Median => s.serialize_str("median"),
        }
    }
}

impl<'de> Deserialize<'de> for Missing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        const WHAT: &str =
            "`missing` of a `clustering.features` entry must be a number or \"median\"";
        impl serde::de::Visitor<'_> for V {
            type Value = Missing;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or \"median\"")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Missing, E> {
                Ok(Missing::Value(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Missing, E> {
                Ok(Missing::Value(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Missing, E> {
                Ok(Missing::Value(v as f64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Missing, E> {
                if v == "median" {
                    Ok(Missing::Median)
                } else {
                    Err(E::custom(WHAT))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Default for FeatureSpec {
    fn default() -> Self {
        FeatureSpec {
            transform: TransformKind::None,
            weight: 1.0,
            missing: Missing::Value(0.0),
        }
    }
}

/// The default clustering features (README "Segments"). Money, counts and days on a log
/// scale; two measures of one behaviour (visits and cart adds; orders and repeat rate) are not
/// both at full weight, so no behaviour dominates the distance; zero-heavy rates at half
/// weight, so a handful of extreme customers does not take a segment of their own.
pub fn default_cluster_features() -> BTreeMap<String, FeatureSpec> {
    let log = |weight: f64, missing: Missing| FeatureSpec {
        transform: TransformKind::Log1p,
        weight,
        missing,
    };
    let plain = |weight: f64| FeatureSpec {
        transform: TransformKind::None,
        weight,
        missing: Missing::Value(0.0),
    };
    let zero = Missing::Value(0.0);
    let never = Missing::Value(1000.0);
    [
        ("recency_days", log(1.0, never)),
        ("frequency", log(1.0, zero)),
        ("monetary", log(1.0, zero)),
        ("avg_order_value", log(1.0, Missing::Median)),
        ("tenure_days", log(1.0, zero)),
        ("repeat_purchase_rate", log(0.5, zero)),
        ("complaint_rate", plain(0.5)),
        ("discount_share", plain(1.0)),
        ("sessions_90d", log(1.0, zero)),
        ("days_since_last_visit", log(1.0, never)),
        ("engagement_trend", plain(0.5)),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect()
}

impl Default for ClusterParams {
    fn default() -> Self {
        ClusterParams {
            k: KSetting::Fixed(8),
            k_min: 4,
            k_max: 12,
            silhouette_sample: 4_000,
            n_runs: 4,
            max_iterations: 200,
            tolerance: 1e-4,
            seed: 42,
            sample_size: 50_000,
            winsorize: [0.01, 0.99],
            max_match_distance: 1.5,
            features: default_cluster_features(),
        }
    }
}

impl ClusterParams {
    /// The largest k this configuration can produce.
    pub fn max_k(&self) -> usize {
        match self.k {
            KSetting::Fixed(k) => k,
            KSetting::Auto => self.k_max,
        }
    }
}

/// `[lifecycle]`: thresholds for the six lifecycle stages (see README "Lifecycle stage").
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleRules {
    /// A first order at most this many days ago makes a customer `development`.
    pub new_customer_days: f64,
    /// At least this many completed orders (and `mature_tenure_days`) makes `maturity`.
    pub mature_orders: f64,
    /// Tenure needed for `maturity`.
    pub mature_tenure_days: f64,
    /// Days since the last order after which an active customer is in `decline`.
    pub decline_days: f64,
    /// Days since the last order after which a customer is `termination` (lost).
    pub termination_days: f64,
}

impl Default for LifecycleRules {
    fn default() -> Self {
        LifecycleRules {
            new_customer_days: 90.0,
            mature_orders: 5.0,
            mature_tenure_days: 365.0,
            decline_days: 120.0,
            termination_days: 365.0,
        }
    }
}

/// `[loyalty]`: thresholds for the four loyalty tiers (see README "Loyalty tier").
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoyaltyRules {
    /// Completed orders in the last 365 days for `habitual`.
    pub habitual_orders: f64,
    /// Completed orders in the last 365 days for `preference`.
    pub preference_orders: f64,
    /// Completed orders in the last 365 days for `committed`.
    pub committed_orders: f64,
    /// Above this share of discounted orders a customer is price-loyal: at most `habitual`.
    pub max_discount_share: f64,
    /// Above this return rate a customer is at most `habitual` (complaint signal).
    pub max_return_rate: f64,
    /// Churn score above which a customer is at most `habitual`.
    pub max_churn_score: f64,
}

impl Default for LoyaltyRules {
    fn default() -> Self {
        LoyaltyRules {
            habitual_orders: 2.0,
            preference_orders: 4.0,
            committed_orders: 8.0,
            max_discount_share: 0.5,
            max_return_rate: 0.2,
            max_churn_score: 0.5,
        }
    }
}

/// `[actions]`: thresholds of the rules that give each segment its `recommended_action`
/// (README, "Recommended actions").
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ActionRules {
    /// A segment whose mean churn score is at least this is slipping away.
    pub high_churn: f64,
    /// A segment whose mean value score is at least this many times the run's mean is
    /// valuable.
    pub high_value_ratio: f64,
    /// A segment whose median share of discounted orders is at least this is price-driven.
    pub price_driven_discount_share: f64,
}

impl Default for ActionRules {
    fn default() -> Self {
        ActionRules {
            high_churn: 0.6,
            high_value_ratio: 1.5,
            price_driven_discount_share: 0.5,
        }
    }
}

/// `[engine]`: DataFusion resources.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EngineParams {
    /// Memory the engine may use before spilling, e.g. `"8GiB"`, `"512MiB"` or `"60%"` of RAM.
    /// Default: [`DEFAULT_MEMORY_LIMIT`] (at most 60 % of physical memory).
    pub memory_limit: Option<String>,
    /// Parallelism; default: the number of cores.
    pub target_partitions: Option<usize>,
    /// `"local"` (default): the SQL runs in this process; `"ballista"`: on the Apache
    /// DataFusion Ballista cluster whose scheduler is at `url` (needs the `ballista` feature).
    pub kind: Option<String>,
    /// The Ballista scheduler, `df://HOST:PORT` (port 50050 when left out).
    pub url: Option<String>,
}

/// Where the SQL runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineKind {
    /// In this process.
    Local,
    /// On a Ballista cluster: the scheduler's `host:port` and the URL as written.
    Ballista {
        /// `host:port` of the scheduler's gRPC endpoint.
        scheduler: String,
        /// `engine.url` as written, for messages.
        url: String,
    },
}

/// A checked storage location: always a URL (plain paths become absolute `file://` URLs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location(Url);

impl Location {
    /// The URL.
    pub fn url(&self) -> &Url {
        &self.0
    }

    /// The URL as a string, for messages (credentials never appear in our URLs).
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Parses a URL or a path; relative paths are resolved against `base_dir`. The result is
    /// treated as a directory (trailing `/`).
    pub fn parse(text: &str, base_dir: &Path) -> std::result::Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("is empty".into());
        }
        let url = match Url::parse(text) {
            // A Windows drive letter or a bare word is not a URL scheme we serve.
            Ok(url) if url.scheme().len() > 1 => url,
            _ => {
                let path = Path::new(text);
                let abs = if path.is_absolute() {
                    path.to_path_buf()
                } else {
                    base_dir.join(path)
                };
                let abs = normalize_path(&abs);
                Url::from_directory_path(&abs)
                    .map_err(|_| format!("`{text}` is not a valid path"))?
            }
        };
        match url.scheme() {
            "file" | "s3" | "gs" | "az" | "abfs" | "abfss" | "memory" => {}
            other => {
                return Err(format!(
                    "URL scheme `{other}` is not supported (use file://, s3://, gs://, az://, memory:// or a path)"
                ))
            }
        }
        if url.scheme() != "file" && url.host_str().is_none_or(str::is_empty) {
            return Err(format!("`{text}` has no bucket/container name"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("credentials must not be written in URLs; use the AWS_*/GOOGLE_*/AZURE_* environment variables".into());
        }
        let mut url = url;
        if !url.path().ends_with('/') {
            let p = format!("{}/", url.path());
            url.set_path(&p);
        }
        Ok(Location(url))
    }

    /// A child location (`name` relative, may contain `/`).
    pub fn join(&self, name: &str) -> Location {
        // Joining a relative path to a directory URL cannot fail.
        let url = self.0.join(name).unwrap_or_else(|_| self.0.clone());
        Location(url)
    }
}

/// Removes `.` and `..` components without touching the file system.
fn normalize_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The validated pipeline: every URL parsed, SQL loaded, thresholds checked.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The file it came from (for messages), or `<built-in>`.
    pub source: String,
    /// Orders location.
    pub orders: Location,
    /// Events location, if configured.
    pub events: Option<Location>,
    /// Customers location, if configured.
    pub customers: Option<Location>,
    /// Output root.
    pub output_root: Location,
    /// The run lock's lease (`output.lock_lease_seconds`).
    pub lock_lease: std::time::Duration,
    /// Object-store retries and timeouts.
    pub storage: StorageParams,
    /// Time limits.
    pub limits: LimitParams,
    /// Retention of exports, rejected rows and unpublished attempts.
    pub retention: RetentionParams,
    /// `privacy.erased_customers`, if set.
    pub erased_customers: Option<Location>,
    /// SQL text of the order history query.
    pub order_history_sql: String,
    /// SQL text of the features query.
    pub features_sql: String,
    /// SQL text of the sessions query.
    pub sessions_sql: String,
    /// SQL text of the engagement query.
    pub engagement_sql: String,
    /// Scoring settings.
    pub model: ModelParams,
    /// k-means settings.
    pub clustering: ClusterParams,
    /// Lifecycle rules.
    pub lifecycle: LifecycleRules,
    /// Loyalty rules.
    pub loyalty: LoyaltyRules,
    /// `recommended_action` thresholds.
    pub actions: ActionRules,
    /// The exports besides the per-segment CSVs (the defaults when the file has none).
    pub exports: Vec<ExportSpec>,
    /// Engine settings, with the memory limit resolved to bytes (None: unbounded).
    pub memory_limit_bytes: Option<usize>,
    /// Parallelism.
    pub target_partitions: usize,
    /// Where the SQL runs (`engine.kind`, `engine.url`).
    pub engine_kind: EngineKind,
    /// Quality gates.
    pub quality: QualityParams,
    /// `quality.earliest_date`, parsed.
    pub earliest_date: chrono::NaiveDate,
    /// The effective settings, for the manifest (no secrets: only URLs and numbers).
    pub effective: RawPipeline,
}

impl Pipeline {
    /// Reads, overrides, expands and validates a pipeline file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Pipeline> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(
                Some(&source),
                format!("cannot read the pipeline file: {e}; check the --pipeline path"),
            )
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base_dir = std::env::current_dir()
            .map(|cwd| cwd.join(&base_dir))
            .unwrap_or(base_dir);
        Self::from_toml(&text, &source, &base_dir, overrides, &|k| {
            std::env::var(k).ok()
        })
    }

    /// Parses pipeline text; `env` resolves `${VAR}` (injected so tests need no process env).
    pub fn from_toml(
        text: &str,
        source: &str,
        base_dir: &Path,
        overrides: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Pipeline> {
        let mut value: toml::Table = toml::from_str(text).map_err(|e| {
            Error::config(
                Some(source),
                format!("not valid TOML: {}", e.to_string().trim()),
            )
        })?;
        let mut problems = Vec::new();
        for ov in overrides {
            if let Err(p) = apply_override(&mut value, ov) {
                problems.push(p);
            }
        }
        expand_env(&mut value, "", env, &mut problems);
        if !problems.is_empty() {
            return Err(Error::Config {
                file: Some(source.into()),
                problems,
            });
        }
        let raw: RawPipeline =
            toml::Value::Table(value)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    // The converted value has no positions; the file itself has, if the problem is in
                    // the file (and not in a --set override or an ${VAR} value).
                    match toml::from_str::<RawPipeline>(text) {
                        Err(in_file) => Error::config(Some(source), explain_serde(&in_file)),
                        Ok(_) => {
                            let culprit = failing_override(text, overrides);
                            let from = match culprit {
                                Some(ov) => format!("from --set {ov}"),
                                None => "from an ${VAR} value".to_string(),
                            };
                            Error::config(Some(source), format!("{} ({from})", explain_serde(&e)))
                        }
                    }
                })?;
        raw.validate(source, base_dir)
    }
}

/// The first override that makes a valid file fail to deserialize (overrides applied in
/// order, without `${VAR}` expansion), if any.
fn failing_override<'a>(text: &str, overrides: &'a [String]) -> Option<&'a str> {
    let mut table: toml::Table = toml::from_str(text).ok()?;
    for ov in overrides {
        apply_override(&mut table, ov).ok()?;
        if toml::Value::Table(table.clone())
            .try_into::<RawPipeline>()
            .is_err()
        {
            return Some(ov);
        }
    }
    None
}

/// Makes serde's message actionable (it already names unknown fields and the expected ones).
fn explain_serde(e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    let msg = if msg.starts_with("unknown field") {
        format!("{msg} (see README \"Pipeline file\" for the keys)")
    } else if msg.starts_with("missing field") {
        format!("{msg}: this key is required")
    } else if msg.starts_with("invalid type") {
        format!("{msg}; see README \"Pipeline file\" for the key's type")
    } else {
        msg
    };
    // "TOML parse error at line 7, column 5" when the error has a position in the file.
    let first = e.to_string().lines().next().unwrap_or_default().to_string();
    match first.strip_prefix("TOML parse error at ") {
        Some(at) if e.span().is_some() => format!("{}: {msg}", at.trim()),
        _ => msg,
    }
}

/// Applies one `--set key.path=value`; the value is read as TOML (number, bool, string…),
/// falling back to a plain string.
fn apply_override(table: &mut toml::Table, spec: &str) -> std::result::Result<(), String> {
    let (path, raw_value) = spec
        .split_once('=')
        .ok_or_else(|| format!("--set `{spec}`: expected key.path=value"))?;
    let keys: Vec<&str> = path.trim().split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(format!("--set `{spec}`: empty key in `{path}`"));
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw_value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw_value.to_string()));
    let (last, parents) = keys.split_last().ok_or("empty key")?;
    let mut cur = table;
    for k in parents {
        let entry = cur
            .entry(k.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("--set `{spec}`: `{k}` is not a table"))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

/// Expands `${VAR}` in every string value (`$${` is a literal `${`). Unknown variables are
/// reported by key, never by value.
fn expand_env(
    value: &mut toml::Table,
    prefix: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) {
    for (k, v) in value.iter_mut() {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::String(s) => match expand_str(s, env) {
                Ok(new) => *s = new,
                Err(var) => problems.push(format!(
                    "`{key}` uses ${{{var}}} but the environment variable {var} is not set"
                )),
            },
            toml::Value::Table(t) => expand_env(t, &key, env, problems),
            _ => {}
        }
    }
}

fn expand_str(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| "(unterminated ${)".to_string())?;
            let name = &tail[..end];
            out.push_str(&env(name).ok_or_else(|| name.to_string())?);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

impl RawPipeline {
    /// `engine.kind` and `engine.url`, checked; the problem as a message.
    fn engine_kind(&self) -> std::result::Result<EngineKind, String> {
        match (self.engine.kind.as_deref().unwrap_or("local"), &self.engine.url) {
            ("local", None) => Ok(EngineKind::Local),
            ("local", Some(_)) => Err(
                "`engine.url` is set but `engine.kind` is \"local\"; set `engine.kind = \"ballista\"` \
                 to run on that cluster, or remove `engine.url`"
                    .into(),
            ),
            ("ballista", None) => Err(
                "`engine.kind` = \"ballista\" needs `engine.url`, the scheduler (e.g. \"df://scheduler:50050\")"
                    .into(),
            ),
            ("ballista", Some(text)) => {
                let bad = |why: &str| {
                    format!("`engine.url` = \"{text}\": {why}; write df://HOST:PORT (e.g. df://scheduler:50050)")
                };
                let url = Url::parse(text).map_err(|e| bad(&e.to_string()))?;
                if url.scheme() != "df" {
                    return Err(bad("the scheme must be df://"));
                }
                let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| bad("no host"))?;
                let port = url.port().unwrap_or(50050);
                if !cfg!(feature = "ballista") {
                    return Err("`engine.kind` = \"ballista\": this segmenter was built without Ballista; \
                         build it with `cargo build --release --features ballista`"
                        .into());
                }
                Ok(EngineKind::Ballista {
                    scheduler: format!("{host}:{port}"),
                    url: text.clone(),
                })
            }
            (other, _) => Err(format!(
                "`engine.kind` = \"{other}\" is not known; use \"local\" or \"ballista\""
            )),
        }
    }

    /// Checks everything and resolves paths; reports all problems at once.
    pub fn validate(self, source: &str, base_dir: &Path) -> Result<Pipeline> {
        let mut problems = Vec::new();
        let mut loc = |key: &str, text: &str| match Location::parse(text, base_dir) {
            Ok(l) => Some(l),
            Err(e) => {
                problems.push(format!("`{key}` = \"{text}\": {e}"));
                None
            }
        };
        let orders = loc("inputs.orders", &self.inputs.orders);
        let events = self
            .inputs
            .events
            .as_deref()
            .map(|t| loc("inputs.events", t));
        let customers = self
            .inputs
            .customers
            .as_deref()
            .map(|t| loc("inputs.customers", t));
        let output_root = loc("output.root", &self.output.root);
        let erased_customers = self
            .privacy
            .erased_customers
            .as_deref()
            .map(|t| loc("privacy.erased_customers", t));
        for (key, value) in [
            (
                "storage.retry_timeout_seconds",
                self.storage.retry_timeout_seconds,
            ),
            (
                "storage.request_timeout_seconds",
                self.storage.request_timeout_seconds,
            ),
            (
                "storage.connect_timeout_seconds",
                self.storage.connect_timeout_seconds,
            ),
        ] {
            if value == 0 {
                problems.push(format!("`{key}` = 0: must be at least 1 second"));
            }
        }
        for (key, value) in self.limits.set() {
            if !(value > 0.0 && value.is_finite()) {
                problems.push(format!(
                    "`limits.{key}` = {value}: must be a positive number of seconds"
                ));
            }
        }
        if self.output.lock_lease_seconds < 30 {
            problems.push(format!(
                "`output.lock_lease_seconds` = {}: must be at least 30 (the lease is renewed every third of it)",
                self.output.lock_lease_seconds
            ));
        }

        let mut sql = |key: &str, path: &Option<String>, default: &str| match path {
            None => default.to_string(),
            Some(p) => {
                let full = base_dir.join(p);
                std::fs::read_to_string(&full).unwrap_or_else(|e| {
                    problems.push(format!(
                        "`{key}` = \"{p}\": cannot read {} ({e}); paths are relative to the pipeline file",
                        full.display()
                    ));
                    String::new()
                })
            }
        };
        let order_history_sql = sql(
            "queries.order_history",
            &self.queries.order_history,
            DEFAULT_ORDER_HISTORY_SQL,
        );
        let features_sql = sql(
            "queries.features",
            &self.queries.features,
            DEFAULT_FEATURES_SQL,
        );
        let sessions_sql = sql(
            "queries.sessions",
            &self.queries.sessions,
            DEFAULT_SESSIONS_SQL,
        );
        let engagement_sql = sql(
            "queries.engagement",
            &self.queries.engagement,
            DEFAULT_ENGAGEMENT_SQL,
        );

        check_model(&self.model, &mut problems);
        check_clustering(&self.clustering, &mut problems);
        check_lifecycle(&self.lifecycle, &mut problems);
        let exports = self.exports.clone().unwrap_or_else(ExportSpec::defaults);
        check_exports(&exports, &mut problems);
        check_loyalty(&self.loyalty, &mut problems);
        check_unit("actions.high_churn", self.actions.high_churn, &mut problems);
        check_unit(
            "actions.price_driven_discount_share",
            self.actions.price_driven_discount_share,
            &mut problems,
        );
        check_positive(
            "actions.high_value_ratio",
            self.actions.high_value_ratio,
            &mut problems,
        );
        check_unit(
            "quality.max_rejected_share",
            self.quality.max_rejected_share,
            &mut problems,
        );
        check_unit(
            "quality.max_row_drop",
            self.quality.max_row_drop,
            &mut problems,
        );
        let earliest_date =
            match chrono::NaiveDate::parse_from_str(&self.quality.earliest_date, "%Y-%m-%d") {
                Ok(d) => d,
                Err(_) => {
                    problems.push(format!(
                        "`quality.earliest_date` = \"{}\" is not a date; write YYYY-MM-DD",
                        self.quality.earliest_date
                    ));
                    chrono::NaiveDate::default()
                }
            };
        let memory_limit_bytes = match &self.engine.memory_limit {
            None => Some(physical_memory().map_or(DEFAULT_MEMORY_LIMIT, |m| {
                (m / 10 * 6).min(DEFAULT_MEMORY_LIMIT)
            })),
            Some(text) => match parse_memory(text, physical_memory()) {
                Ok(b) => Some(b),
                Err(e) => {
                    problems.push(format!("`engine.memory_limit` = \"{text}\": {e}"));
                    None
                }
            },
        };
        let target_partitions = match self.engine.target_partitions {
            Some(0) => {
                problems.push("`engine.target_partitions` must be at least 1".into());
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(2, |n| n.get()),
        };
        let engine_kind = match self.engine_kind() {
            Ok(kind) => kind,
            Err(problem) => {
                problems.push(problem);
                EngineKind::Local
            }
        };
        if engine_kind != EngineKind::Local {
            let locations = [
                ("inputs.orders", orders.as_ref()),
                ("inputs.events", events.as_ref().and_then(Option::as_ref)),
                (
                    "inputs.customers",
                    customers.as_ref().and_then(Option::as_ref),
                ),
                ("output.root", output_root.as_ref()),
            ];
            for (key, loc) in locations {
                if let Some(loc) = loc.filter(|l| l.url().scheme() == "memory") {
                    problems.push(format!(
                        "`{key}` = \"{}\": a Ballista cluster cannot read this process's memory; \
                         use a location its executors can read (s3://, gs://, az://, or a path \
                         on a filesystem they share)",
                        loc.as_str()
                    ));
                }
            }
        }

        if !problems.is_empty() {
            return Err(Error::Config {
                file: Some(source.into()),
                problems,
            });
        }
        let (Some(orders), Some(output_root)) = (orders, output_root) else {
            unreachable!("location problems were reported above")
        };
        Ok(Pipeline {
            source: source.into(),
            orders,
            events: events.flatten(),
            customers: customers.flatten(),
            output_root,
            lock_lease: std::time::Duration::from_secs(self.output.lock_lease_seconds),
            storage: self.storage.clone(),
            limits: self.limits.clone(),
            retention: self.retention.clone(),
            erased_customers: erased_customers.flatten(),
            order_history_sql,
            features_sql,
            sessions_sql,
            engagement_sql,
            model: self.model.clone(),
            clustering: self.clustering.clone(),
            lifecycle: self.lifecycle.clone(),
            loyalty: self.loyalty.clone(),
            actions: self.actions.clone(),
            exports,
            memory_limit_bytes,
            target_partitions,
            engine_kind,
            quality: self.quality.clone(),
            earliest_date,
            effective: self,
        })
    }
}

fn check_unit(key: &str, v: f64, problems: &mut Vec<String>) {
    if !(0.0..=1.0).contains(&v) {
        problems.push(format!("`{key}` = {v} must be between 0 and 1"));
    }
}

fn check_positive(key: &str, v: f64, problems: &mut Vec<String>) {
    if !(v.is_finite() && v > 0.0) {
        problems.push(format!("`{key}` = {v} must be a positive number"));
    }
}

fn check_model(m: &ModelParams, problems: &mut Vec<String>) {
    if !(0.0..0.5).contains(&m.monthly_discount_rate) {
        problems.push(format!(
            "`model.monthly_discount_rate` = {} must be in [0, 0.5) (0.01 = 1 % a month)",
            m.monthly_discount_rate
        ));
    }
    check_unit("model.churn_medium", m.churn_medium, problems);
    check_unit("model.churn_high", m.churn_high, problems);
    if m.churn_medium > m.churn_high {
        problems.push("`model.churn_medium` must not exceed `model.churn_high`".into());
    }
    check_unit("model.value_high_quantile", m.value_high_quantile, problems);
    check_unit(
        "model.value_medium_quantile",
        m.value_medium_quantile,
        problems,
    );
    if m.value_medium_quantile > m.value_high_quantile {
        problems.push(
            "`model.value_medium_quantile` must not exceed `model.value_high_quantile`".into(),
        );
    }
    if m.training_sample < 1000 {
        problems.push(format!(
            "`model.training_sample` = {} must be at least 1000 customers",
            m.training_sample
        ));
    }
    for (key, days) in [
        ("model.refit_every_days", m.refit_every_days),
        ("model.max_age_days", m.max_age_days),
    ] {
        if days == 0 {
            problems.push(format!(
                "`{key}` must be at least 1 day (1: refit every night)"
            ));
        }
    }
    if m.max_feature_psi.is_nan() || m.max_feature_psi <= 0.0 {
        problems.push(format!(
            "`model.max_feature_psi` = {} must be positive (0.25 is the usual \"large shift\")",
            m.max_feature_psi
        ));
    }
}

fn check_clustering(c: &ClusterParams, problems: &mut Vec<String>) {
    match c.k {
        KSetting::Fixed(k) if !(2..=50).contains(&k) => {
            problems.push(format!(
                "`clustering.k` = {k} must be between 2 and 50, or \"auto\""
            ));
        }
        KSetting::Auto if !(2 <= c.k_min && c.k_min <= c.k_max && c.k_max <= 50) => {
            problems.push(format!(
                "`clustering.k_min` = {} and `clustering.k_max` = {} must satisfy 2 ≤ k_min ≤ k_max ≤ 50",
                c.k_min, c.k_max
            ));
        }
        _ => {}
    }
    if c.n_runs == 0 {
        problems.push("`clustering.n_runs` must be at least 1".into());
    }
    if c.max_iterations == 0 {
        problems.push("`clustering.max_iterations` must be at least 1".into());
    }
    check_positive("clustering.tolerance", c.tolerance, problems);
    check_positive(
        "clustering.max_match_distance",
        c.max_match_distance,
        problems,
    );
    if c.sample_size < c.max_k().max(2).saturating_mul(10) {
        problems.push(format!(
            "`clustering.sample_size` = {} is too small for k = {} (need ≥ 10·k)",
            c.sample_size,
            c.max_k()
        ));
    }
    if matches!(c.k, KSetting::Auto) && c.silhouette_sample < c.k_max.saturating_mul(10) {
        problems.push(format!(
            "`clustering.silhouette_sample` = {} is too small for k_max = {} (need ≥ 10·k_max)",
            c.silhouette_sample, c.k_max
        ));
    }
    let [lo, hi] = c.winsorize;
    if !(0.0 <= lo && lo < hi && hi <= 1.0) {
        problems.push(format!(
            "`clustering.winsorize` = [{lo}, {hi}] must be two quantiles with 0 ≤ low < high ≤ 1"
        ));
    }
    if c.features.is_empty() {
        problems.push("`clustering.features` must name at least one feature".into());
    }
    for (name, f) in &c.features {
        if !(f.weight.is_finite() && f.weight > 0.0) {
            problems.push(format!(
                "`clustering.features.{name}.weight` = {} must be a positive number",
                f.weight
            ));
        }
        if matches!(f.missing, Missing::Value(v) if !v.is_finite()) {
            problems.push(format!(
                "`clustering.features.{name}.missing` must be a finite number"
            ));
        }
    }
}

fn check_lifecycle(l: &LifecycleRules, problems: &mut Vec<String>) {
    check_positive("lifecycle.new_customer_days", l.new_customer_days, problems);
    check_positive("lifecycle.mature_orders", l.mature_orders, problems);
    check_positive(
        "lifecycle.mature_tenure_days",
        l.mature_tenure_days,
        problems,
    );
    check_positive("lifecycle.decline_days", l.decline_days, problems);
    check_positive("lifecycle.termination_days", l.termination_days, problems);
    if l.decline_days >= l.termination_days {
        problems
            .push("`lifecycle.decline_days` must be less than `lifecycle.termination_days`".into());
    }
}

fn check_loyalty(l: &LoyaltyRules, problems: &mut Vec<String>) {
    check_positive("loyalty.habitual_orders", l.habitual_orders, problems);
    if !(l.habitual_orders <= l.preference_orders && l.preference_orders <= l.committed_orders) {
        problems.push(
            "loyalty thresholds must satisfy habitual_orders ≤ preference_orders ≤ committed_orders"
                .into(),
        );
    }
    check_unit("loyalty.max_discount_share", l.max_discount_share, problems);
    check_unit("loyalty.max_return_rate", l.max_return_rate, problems);
    check_unit("loyalty.max_churn_score", l.max_churn_score, problems);
}

/// Physical memory in bytes (Linux `/proc/meminfo`), if known.
#[doc(hidden)]
pub fn physical_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The engine's memory pool when `engine.memory_limit` is not set: 2 GiB (less on a machine
/// with under 3.4 GiB of RAM: 60 % of it). Measured with bench/compare.sh: at 1,000,000
/// customers a 2 GiB pool ran faster (97.6 s against 107 s) and in about half the memory
/// (2.6 against 4.6 GiB peak RSS) than a pool of 60 % of 24 GiB; at 200,000, 25.7 s and 1.4 GiB
/// against 24.2 s and 2.0 GiB. Beyond the pool the aggregations spill to disk.
pub const DEFAULT_MEMORY_LIMIT: usize = 2 << 30;

/// Parses `"8GiB"`, `"512MiB"`, `"2GB"`, `"60%"` (of `physical`) into bytes.
#[doc(hidden)]
pub fn parse_memory(text: &str, physical: Option<usize>) -> std::result::Result<usize, String> {
    let t = text.trim();
    if let Some(p) = t.strip_suffix('%') {
        let pct: f64 = p
            .trim()
            .parse()
            .map_err(|_| "not a percentage".to_string())?;
        if !(1.0..=100.0).contains(&pct) {
            return Err("percentage must be between 1 and 100".into());
        }
        let phys =
            physical.ok_or("physical memory unknown on this system; give bytes, e.g. 8GiB")?;
        return Ok((phys as f64 * pct / 100.0) as usize);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| "expected e.g. 8GiB, 512MiB or 60%".to_string())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0_f64.powi(4),
        other => return Err(format!("unknown unit `{other}` (use KiB, MiB, GiB or %)")),
    };
    let bytes = num * mult;
    if bytes < 64.0 * 1024.0 * 1024.0 {
        return Err("at least 64MiB is needed".into());
    }
    Ok(bytes as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "BUCKET" => Some("shop-raw".into()),
            _ => None,
        }
    }

    fn load(text: &str, overrides: &[&str]) -> Result<Pipeline> {
        let ov: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Pipeline::from_toml(text, "p.toml", Path::new("/base/pipelines"), &ov, &env)
    }

    const MINIMAL: &str = r#"
[inputs]
orders = "s3://${BUCKET}/orders/"
[output]
root = "out"
"#;

    #[test]
    fn minimal_file_runs_with_defaults() {
        let p = load(MINIMAL, &[]).unwrap();
        assert_eq!(p.orders.as_str(), "s3://shop-raw/orders/");
        assert_eq!(p.output_root.as_str(), "file:///base/pipelines/out/");
        assert!(p.events.is_none());
        assert_eq!(p.clustering, ClusterParams::default());
        assert!(p.features_sql.contains("customer_id"));
    }

    /// Found by the property test below: a huge `clustering.k` overflowed the sample-size
    /// check.
    #[test]
    fn huge_numbers_are_problems_not_panics() {
        for set in [
            "clustering.k_max=9223372036854775807",
            "clustering.k=9223372036854775807",
        ] {
            let err = load(MINIMAL, &["clustering.k=auto", set]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{set}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Keys and values that reach deep into the parser: every section and key, odd values.
        fn key() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "inputs.orders",
                "inputs.events",
                "output.root",
                "model.churn_high",
                "model.monthly_discount_rate",
                "clustering.k",
                "clustering.k_min",
                "clustering.winsorize",
                "clustering.features.monetary.weight",
                "clustering.features.x.missing",
                "quality.max_rejected_share",
                "quality.earliest_date",
                "quality.on_corrupt_file",
                "engine.memory_limit",
                "lifecycle.decline_days",
                "queries.features",
                "nope.nothing",
                "clustering",
            ])
            .prop_map(str::to_string)
        }

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|v| v.to_string()),
                Just(i64::MAX.to_string()),
                any::<f64>().prop_map(|v| v.to_string()),
                Just("auto".to_string()),
                Just("median".to_string()),
                Just("[0.5, 0.1]".to_string()),
                Just("{ weight = -1 }".to_string()),
                Just("true".to_string()),
                Just("s3://".to_string()),
                Just("${NOPE}".to_string()),
                "\\PC{0,12}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Arbitrary text as a pipeline file: an error or a pipeline, never a panic.
            #[test]
            fn any_text_is_handled(text in "\\PC{0,200}") {
                if let Ok(p) = load(&text, &[]) {
                    prop_assert!(p.output_root.as_str().ends_with('/'));
                }
            }

            /// Arbitrary overrides on a valid file: an error or a pipeline, never a panic; and
            /// an accepted pipeline always passed its checks.
            #[test]
            fn any_overrides_are_handled(sets in prop::collection::vec((key(), value()), 0..4)) {
                // Huge numbers too (they once overflowed a check).
                let sets: Vec<String> = sets.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let refs: Vec<&str> = sets.iter().map(String::as_str).collect();
                if let Ok(p) = load(MINIMAL, &refs) {
                    prop_assert!((0.0..=1.0).contains(&p.quality.max_rejected_share));
                    prop_assert!(p.clustering.features.values().all(|f| f.weight > 0.0));
                }
            }
        }
    }

    /// pipelines/nightly.toml says its values are the defaults: it must parse and agree.
    #[test]
    fn the_nightly_template_shows_the_defaults() {
        let text = include_str!("../pipelines/nightly.toml");
        let vars = |k: &str| match k {
            "SHOP_RAW_BUCKET" | "SHOP_MARTS_BUCKET" => Some("b".to_string()),
            _ => None,
        };
        let p = Pipeline::from_toml(text, "nightly.toml", Path::new("/p"), &[], &vars).unwrap();
        assert_eq!(p.clustering, ClusterParams::default());
        assert_eq!(p.lifecycle, LifecycleRules::default());
        assert_eq!(p.loyalty, LoyaltyRules::default());
        assert_eq!(p.model, ModelParams::default());
        assert_eq!(p.quality, QualityParams::default());
        // And the auto k and feature table forms parse.
        let p = load(
            &format!(
                "{MINIMAL}\n[clustering]\nk = \"auto\"\n[clustering.features]\n\
                 monetary = {{ transform = \"log1p\", missing = \"median\" }}\n"
            ),
            &[],
        )
        .unwrap();
        assert_eq!(p.clustering.k, KSetting::Auto);
        assert_eq!(p.clustering.features["monetary"].missing, Missing::Median);
        assert_eq!(p.clustering.features["monetary"].weight, 1.0);
    }

    #[test]
    fn overrides_set_nested_keys_with_types() {
        let p = load(
            MINIMAL,
            &[
                "output.root=s3://b/seg/",
                "clustering.k=5",
                "model.churn_high=0.8",
            ],
        )
        .unwrap();
        assert_eq!(p.output_root.as_str(), "s3://b/seg/");
        assert_eq!(p.clustering.k, KSetting::Fixed(5));
        assert_eq!(p.model.churn_high, 0.8);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load(&format!("{MINIMAL}\n[clustering]\nkay = 3\n"), &[]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("kay"), "{err}");
    }

    #[test]
    fn missing_env_var_is_named_without_value() {
        let err = load(
            "[inputs]\norders = \"${NOPE}/o\"\n[output]\nroot = \"x\"\n",
            &[],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("NOPE") && text.contains("inputs.orders"),
            "{text}"
        );
    }

    #[test]
    fn all_problems_reported_at_once() {
        let err = load(
            MINIMAL,
            &[
                "clustering.k=1",
                "model.churn_medium=2",
                "inputs.events=ftp://x/",
            ],
        )
        .unwrap_err();
        let Error::Config { problems, .. } = err else {
            panic!("expected config error")
        };
        // k, churn_medium out of range, churn_medium > churn_high, the ftp URL
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn missing_required_key() {
        let err = load("[inputs]\n[output]\nroot = \"x\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("orders"), "{err}");
    }

    #[test]
    fn env_expansion_escapes() {
        assert_eq!(expand_str("a$${b}c", &env).unwrap(), "a${b}c");
        assert_eq!(expand_str("$5 ${BUCKET}", &env).unwrap(), "$5 shop-raw");
        assert!(expand_str("${BUCKET", &env).is_err());
    }

    #[test]
    fn locations() {
        let base = Path::new("/w/p");
        assert_eq!(
            Location::parse("../data/orders", base).unwrap().as_str(),
            "file:///w/data/orders/"
        );
        assert_eq!(
            Location::parse("memory://t/x", base).unwrap().as_str(),
            "memory://t/x/"
        );
        assert!(Location::parse("s3://", base).is_err());
        assert!(Location::parse("s3://key:secret@bucket/x", base).is_err());
        assert!(Location::parse("http://x/y", base).is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("1GiB", None).unwrap(), 1 << 30);
        assert_eq!(parse_memory("50%", Some(1 << 31)).unwrap(), 1 << 30);
        assert!(parse_memory("1KiB", None).is_err());
        assert!(parse_memory("lots", None).is_err());
    }
}
