//! `segmenter query`: SQL over the published tables of every date, and nothing unpublished.

use std::path::Path;

use crate::common::{describe, parquet_files, pipeline, read_table, run_pipeline, segmenter, shop};

fn query(p: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["query", "--pipeline", p.to_str().unwrap()];
    all.extend_from_slice(args);
    segmenter(&all)
}

fn customers(out: &Path, date: &str) -> u64 {
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join(format!("_runs/{date}/manifest.json"))).unwrap(),
    )
    .unwrap();
    m["customers"].as_u64().unwrap()
}

#[test]
fn query_sees_every_published_date_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = pipeline(tmp.path(), shop(), &out, "");
    for date in ["2026-10-30", "2026-10-31"] {
        let run = run_pipeline(&p, date, &[]);
        assert!(run.status.success(), "{}", describe(&run));
    }
    // Files no manifest names: an attempt at a date that never published, and a stray
    // attempt's file beside a published one.
    let published = parquet_files(&out.join("customer_segments/run_date=2026-10-30"));
    assert_eq!(published.len(), 1);
    let unpublished = out.join("customer_segments/run_date=2026-11-01");
    std::fs::create_dir_all(&unpublished).unwrap();
    std::fs::copy(&published[0], unpublished.join("part-attempt.parquet")).unwrap();
    std::fs::create_dir_all(out.join("_runs/2026-11-01")).unwrap();
    std::fs::copy(
        &published[0],
        out.join("customer_segments/run_date=2026-10-31/part-stray.parquet"),
    )
    .unwrap();

    let sql = "SELECT CAST(run_date AS VARCHAR) AS run_date, count(*) AS customers \
               FROM customer_segments GROUP BY run_date ORDER BY run_date";
    let csv = query(&p, &["--format", "csv", sql]);
    assert!(csv.status.success(), "{}", describe(&csv));
    assert_eq!(
        String::from_utf8_lossy(&csv.stdout),
        format!(
            "run_date,customers\n2026-10-30,{}\n2026-10-31,{}\n",
            customers(&out, "2026-10-30"),
            customers(&out, "2026-10-31")
        )
    );

    // The terminal table, JSON lines, and Parquet into a file.
    let table = query(&p, &[sql]);
    assert!(table.status.success(), "{}", describe(&table));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("| run_date   | customers |"), "{text}");
    assert!(!text.contains("2026-11-01"), "{text}");
    let json = query(
        &p,
        &[
            "--format",
            "json",
            "SELECT segment, recommended_action, run_date FROM segment_summary \
             WHERE run_date = DATE '2026-10-31' ORDER BY segment_id",
        ],
    );
    assert!(json.status.success(), "{}", describe(&json));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary = read_table(&out.join("segment_summary/run_date=2026-10-31"));
    assert_eq!(rows.len(), summary.num_rows());
    assert!(rows
        .iter()
        .all(|r| r["run_date"] == "2026-10-31" && r["recommended_action"].is_string()));
    std::fs::create_dir_all(tmp.path().join("moves")).unwrap();
    let file = tmp.path().join("moves/part.parquet");
    let pq = query(
        &p,
        &[
            "--format",
            "parquet",
            "--out",
            file.to_str().unwrap(),
            "SELECT * FROM segment_transitions",
        ],
    );
    assert!(pq.status.success(), "{}", describe(&pq));
    let moves = read_table(&tmp.path().join("moves"));
    let transitions = read_table(&out.join("segment_transitions/run_date=2026-10-31"));
    assert_eq!(moves.num_rows(), transitions.num_rows());
    assert!(moves.column_by_name("run_date").is_some());

    // Bad SQL: exit 2 with the engine's message; so is anything but a query.
    let bad = query(&p, &["SELECT no_such_column FROM customer_segments"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no_such_column"),
        "{}",
        describe(&bad)
    );
    let write = query(&p, &["CREATE TABLE t AS SELECT 1"]);
    assert_eq!(write.status.code(), Some(2), "{}", describe(&write));
    let parquet_to_terminal = query(&p, &["--format", "parquet", sql]);
    assert_eq!(parquet_to_terminal.status.code(), Some(2));
}
