//! The report in a real headless Chromium: it loads with no console error and no request
//! leaving the file, fits 1280 px, and every chart has drawn marks; for a first run (no moves
//! between segments yet) and the run after it. The screenshots are left in cargo's target
//! temporary directory (printed) for a person to look at.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{describe, pipeline, run_pipeline, shop};

/// The directory `scripts/setup-browser.sh` printed (`SEGMENTER_BROWSER`), or None after
/// saying the test is skipped. CI must set it.
fn browser() -> Option<PathBuf> {
    crate::common::installed("SEGMENTER_BROWSER", "scripts/setup-browser.sh").map(PathBuf::from)
}

/// scripts/check_report.js on `page`: its JSON.
fn check_in_chromium(browser: &Path, page: &Path, shot: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_report.js");
    let out = Command::new("node")
        .arg(&script)
        .arg(page)
        .arg(shot)
        .env("NODE_PATH", browser.join("node_modules"))
        .output()
        .expect("run node");
    assert!(out.status.success(), "{}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)))
}

#[test]
fn report_renders_in_chromium_for_a_first_and_a_second_run() {
    let Some(browser) = browser() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = pipeline(tmp.path(), shop(), &out, "");
    for (date, charts) in [("2026-10-30", 7), ("2026-10-31", 8)] {
        let run = run_pipeline(&p, date, &[]);
        assert!(run.status.success(), "{}", describe(&run));
        let page = out.join(format!("report/run_date={date}/index.html"));
        let html = std::fs::read_to_string(&page).unwrap();
        // Self-contained: no scripts, nothing fetched (the SVGs' xmlns is a name, not a
        // request; the browser's request log below checks the same thing).
        for needle in [
            "<script", "<link", "<img", "src=", "href=", "url(", "@import",
        ] {
            assert!(!html.contains(needle), "{date}: the report has {needle}");
        }
        // The manifest lists the run's own copy, the same bytes.
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join(format!("_runs/{date}/manifest.json"))).unwrap(),
        )
        .unwrap();
        let listed = m["outputs"]["report"][0].as_str().unwrap();
        let run_id = m["run_id"].as_str().unwrap();
        assert!(
            listed.ends_with(&format!("index-{run_id}.html")),
            "{listed}"
        );
        let own = out.join(format!("report/run_date={date}/index-{run_id}.html"));
        assert_eq!(std::fs::read_to_string(own).unwrap(), html);

        let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("report-{date}.png"));
        let r = check_in_chromium(&browser, &page, &shot);
        eprintln!("{date}: screenshot {}", shot.display());
        assert_eq!(r["errors"], serde_json::json!([]), "{date}: {r}");
        assert_eq!(r["requests"], serde_json::json!([]), "{date}: {r}");
        assert!(r["scrollWidth"].as_u64().unwrap() <= 1280, "{date}: {r}");
        let drawn = r["charts"].as_array().unwrap();
        assert_eq!(drawn.len(), charts, "{date}: {r}");
        for c in drawn {
            assert!(c["marks"].as_u64().unwrap() > 0, "{date}: no marks in {c}");
            assert!(c["right"].as_f64().unwrap() <= 1280.0, "{date}: {c}");
        }
        let titles: Vec<&str> = drawn.iter().map(|c| c["title"].as_str().unwrap()).collect();
        assert!(
            titles.contains(&"Backtest: churn calibration"),
            "{titles:?}"
        );
        assert_eq!(
            titles.contains(&"Moves between segments"),
            charts == 8,
            "moves only after a previous run: {titles:?}"
        );
        assert!(
            std::fs::metadata(&shot).unwrap().len() > 10_000,
            "a real screenshot"
        );
        // Each segment with its play, as in segment_summary.
        let summary =
            crate::common::read_table(&out.join(format!("segment_summary/run_date={date}")));
        let plays = summary.column_by_name("recommended_action").unwrap();
        let plays = datafusion::arrow::array::AsArray::as_string::<i32>(plays.as_ref());
        for play in plays.iter().flatten() {
            assert!(html.contains(play), "{date}: the report lacks {play}");
        }
    }
}
