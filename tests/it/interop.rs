//! Outputs readable by other tools: DuckDB, pyarrow and pandas read every table with Hive
//! partitioning and no options (scripts/check_outputs.py). Needs SEGMENTER_PYTHON pointing at
//! a Python with those packages (`scripts/setup-python.sh` prints one); CI always sets it.

use crate::common::{describe, pipeline, shop};

#[test]
fn duckdb_pyarrow_and_pandas_read_every_table() {
    let Some(python) = crate::common::python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = pipeline(tmp.path(), shop(), &out, "");
    let run = crate::common::run_pipeline(&p, "2026-10-31", &[]);
    assert!(run.status.success(), "{}", describe(&run));
    let check = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/check_outputs.py"
        ))
        .arg(&out)
        .arg("2026-10-31")
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", describe(&check));
}

/// Tables only gain columns at the end; a reader of several dates whose columns differ uses
/// DuckDB's `union_by_name` (README, "Outputs"). The older date is modelled by rewriting its
/// customer_segments without the last column, as a release before that column wrote it.
#[test]
fn duckdb_reads_dates_whose_columns_differ_with_union_by_name() {
    let Some(python) = crate::common::python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = pipeline(tmp.path(), shop(), &out, "");
    for date in ["2026-10-30", "2026-10-31"] {
        let run = crate::common::run_pipeline(&p, date, &[]);
        assert!(run.status.success(), "{}", describe(&run));
    }
    let script = r#"
import glob, sys
import duckdb, pyarrow.parquet as pq
out = sys.argv[1]
[old] = glob.glob(f"{out}/customer_segments/run_date=2026-10-30/*.parquet")
table = pq.read_table(old)
last = table.schema.names[-1]
pq.write_table(table.drop_columns([last]), old)
rows = duckdb.sql(f"""
    SELECT CAST(run_date AS VARCHAR) AS d, count(*) AS n, count("{last}") AS with_last
    FROM read_parquet('{out}/customer_segments/*/*.parquet', hive_partitioning = true, union_by_name = true)
    GROUP BY 1 ORDER BY 1""").fetchall()
print(last, rows)
assert len(rows) == 2, rows
(d0, n0, l0), (d1, n1, l1) = rows
assert d0 == "2026-10-30" and l0 == 0 and n0 > 0, rows
assert d1 == "2026-10-31" and l1 == n1 > 0, rows
"#;
    let check = std::process::Command::new(python)
        .args(["-c", script])
        .arg(&out)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", describe(&check));
}
