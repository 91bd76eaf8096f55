//! Integration tests: drive the real `segmenter` binary on data generated inside each test.

#[cfg(feature = "ballista")]
mod ballista;
mod cli;
mod cloud;
mod common;
mod deploy;
mod exports;
mod incremental;
mod interop;
mod memory;
mod models;
mod producers;
mod publish;
mod quality;
mod query;
mod report;
mod run;
mod s3;
mod segments;
