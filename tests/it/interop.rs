//! Outputs readable by other tools: DuckDB, pyarrow and pandas read every table with Hive
//! partitioning and no options (scripts/check_outputs.py). Needs SEGMENTER_PYTHON pointing at
//! a Python with those packages (`scripts/setup-python.sh` prints one); CI always sets it.

use crate::common::{describe, pipeline, shop};

#[test]
fn duckdb_pyarrow_and_pandas_read_every_table() {
    let Some(python) = std::env::var_os("SEGMENTER_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set SEGMENTER_PYTHON (scripts/setup-python.sh)"
        );
        eprintln!(
            "SKIPPED interop check: set SEGMENTER_PYTHON=$(scripts/setup-python.sh) to run it"
        );
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
