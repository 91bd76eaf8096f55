//! segmenter: a nightly batch job that turns raw order and clickstream Parquet in object
//! storage into customer segments marketing can act on and analysts can query.
//!
//! ```text
//!  pipeline.toml ─► config ─► inputs ─► features ─► models ─► clustering ─► segments ─► outputs
//!  (--set, ${ENV})  (checked)  (listing   (queries/   (churn,    (k-means,     (names,      (Parquet,
//!                              tables,    *.sql in    value,     linfa)        lifecycle,   CSV, then
//!                              as-of cut, DataFusion) point-in-              loyalty,     manifest
//!                              cleaning)              time)                  bands)       = publish)
//! ```
//! Each stage is a module with one entry point taking the previous stage's output; [`run`]
//! calls them in order. Errors map to the exit codes of CONTRACT.md in [`Error::exit_code`].
#![deny(missing_docs)]

pub mod alloc;
pub mod base;
#[cfg(feature = "ballista")]
pub mod cluster;
pub mod clustering;
pub mod config;
pub mod engine;
pub mod error;
pub mod exports;
pub mod features;
pub mod generate;
pub mod inputs;
pub mod limits;
pub mod models;
pub mod outputs;
pub mod previous;
pub mod privacy;
pub mod progress;
pub mod publish;
pub mod quality;
pub mod query;
pub mod report;
pub mod rules;
pub mod run;
pub mod schedule;
pub mod segments;
pub mod state;
pub mod status;
pub mod storage;
pub mod tables;
pub mod tally;

pub use config::Pipeline;
pub use error::{Error, Result};
pub use run::{run, RunOptions, RunSummary};
