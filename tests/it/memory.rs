//! Bounded memory at scale: 1,000,000 customers with `engine.memory_limit = "2GiB"` must finish
//! with a peak RSS under 3 GiB. Ignored by default (minutes, and ~15 GB of generated data); the
//! benchmark runs it (bench/memory.sh) with the release binary:
//!
//! ```sh
//! SEGMENTER_BIN=target/release/segmenter cargo test --test it memory -- --ignored --nocapture
//! ```
//!
//! `SEGMENTER_MEMORY_DATA` points at an existing generated shop (e.g. bench/work/1000000/data)
//! instead of generating one; `SEGMENTER_MEMORY_CUSTOMERS` (1000000) and
//! `SEGMENTER_MEMORY_LIMIT` ("2GiB") and `SEGMENTER_MEMORY_MAX_RSS_MIB` (3072) change the case.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{describe, pipeline};

/// The binary under test: `SEGMENTER_BIN` (a release build, for a test at this scale) or the
/// one cargo built for the tests.
fn binary() -> PathBuf {
    std::env::var_os("SEGMENTER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_segmenter")))
}

/// Runs `segmenter ARGS` under GNU time; returns (output, peak RSS in KiB).
fn run_measured(args: &[&str]) -> (std::process::Output, u64) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg("-o")
        .arg(report.path())
        .arg(binary())
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("GNU time at /usr/bin/time (apt-get install time)");
    let text = std::fs::read_to_string(report.path()).unwrap();
    let kib = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in GNU time's report:\n{text}"));
    (out, kib)
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[test]
#[ignore = "minutes and ~15 GB of data: run by bench/memory.sh with a release build"]
fn a_million_customers_run_within_a_2gib_memory_limit() {
    let customers = env_or("SEGMENTER_MEMORY_CUSTOMERS", "1000000");
    let limit = env_or("SEGMENTER_MEMORY_LIMIT", "2GiB");
    let max_rss_mib: u64 = env_or("SEGMENTER_MEMORY_MAX_RSS_MIB", "3072")
        .parse()
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let data = match std::env::var_os("SEGMENTER_MEMORY_DATA") {
        Some(d) => PathBuf::from(d),
        None => {
            let d = work.path().join("data");
            let (out, _) = run_measured(&[
                "generate",
                "--out",
                d.to_str().unwrap(),
                "--customers",
                &customers,
                "--seed",
                "42",
                "--end-date",
                "2026-10-31",
            ]);
            assert!(out.status.success(), "generate: {}", describe(&out));
            d
        }
    };
    let out_dir = work.path().join("out");
    let p = pipeline(
        work.path(),
        &data,
        &out_dir,
        &format!("[engine]\nmemory_limit = \"{limit}\""),
    );
    let (out, kib) = run_measured(&[
        "run",
        "--pipeline",
        p.to_str().unwrap(),
        "--date",
        "2026-10-31",
    ]);
    assert!(out.status.success(), "run: {}", describe(&out));
    let mib = kib / 1024;
    eprintln!(
        "peak RSS {mib} MiB with engine.memory_limit = {limit} ({} customers)",
        customers
    );
    assert!(
        mib < max_rss_mib,
        "peak RSS {mib} MiB is not under {max_rss_mib} MiB with memory_limit = {limit}"
    );
    assert!(
        Path::new(&out_dir)
            .join("_runs/2026-10-31/manifest.json")
            .exists(),
        "published"
    );
}
