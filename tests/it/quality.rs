//! The data quality gate on dirty input: planted defects are counted exactly and written to
//! `_rejected/`, the clean part scores exactly as the clean data does, and each gate stops the
//! run with exit 3 and a message that says which rule tripped, with counts, and never a value
//! from the data.

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::parquet::arrow::ArrowWriter;

use crate::common::{
    describe, dirty_shop, parquet_files, pipeline, read_table, run_pipeline, shop,
};

const DATE: &str = "2026-10-31";
const SKIP: &str = "[quality]\non_corrupt_file = \"skip\"\n";

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Non-zero counts of an object of reason → count.
fn nonzero(v: &serde_json::Value) -> BTreeMap<String, u64> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[test]
fn planted_defects_are_counted_exactly_and_the_clean_part_scores_as_clean_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (dirty_out, clean_out) = (tmp.path().join("dirty"), tmp.path().join("clean"));
    std::fs::create_dir_all(tmp.path().join("a")).unwrap();
    std::fs::create_dir_all(tmp.path().join("b")).unwrap();
    let pd = pipeline(&tmp.path().join("a"), dirty_shop(), &dirty_out, SKIP);
    let pc = pipeline(&tmp.path().join("b"), shop(), &clean_out, SKIP);
    let run = run_pipeline(&pd, DATE, &["--set", "engine.target_partitions=2"]);
    assert!(run.status.success(), "{}", describe(&run));
    let clean = run_pipeline(&pc, DATE, &["--set", "engine.target_partitions=2"]);
    assert!(clean.status.success(), "{}", describe(&clean));

    let planted = json(&dirty_shop().join("truth/defects.json"));
    let m = json(&dirty_out.join(format!("_runs/{DATE}/manifest.json")));
    for input in ["orders", "events"] {
        let mut want = nonzero(&planted[input]);
        let after = want.remove("after_cutoff").unwrap_or(0);
        let got = nonzero(&m["inputs"][input]["rejected"]);
        assert_eq!(got, want, "{input}: rejected by reason");
        assert_eq!(
            m["inputs"][input]["rows_after_cutoff"].as_u64().unwrap(),
            after,
            "{input}"
        );
    }
    let skipped: Vec<String> = m["inputs"]["orders"]["skipped_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0].ends_with(planted["skipped_files"][0].as_str().unwrap()),
        "{skipped:?}"
    );

    // The rejected rows, with their reasons, are in _rejected/ (anonymous and future rows are
    // not rejects).
    for input in ["orders", "events"] {
        let b = read_table(&dirty_out.join(format!("_rejected/run_date={DATE}/{input}")));
        let reasons = b
            .column_by_name("reason")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let mut counted: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..b.num_rows() {
            *counted.entry(reasons.value(i).to_string()).or_default() += 1;
        }
        let mut want = nonzero(&planted[input]);
        want.remove("after_cutoff");
        want.remove("anonymous");
        assert_eq!(counted, want, "_rejected/{input}");
    }

    // Every defect rejected, nothing else touched: the tables are the clean run's, byte for byte.
    for table in ["customer_segments", "segment_summary"] {
        let a = parquet_files(&dirty_out.join(table));
        let b = parquet_files(&clean_out.join(table));
        assert_eq!((a.len(), b.len()), (1, 1));
        assert!(
            std::fs::read(&a[0]).unwrap() == std::fs::read(&b[0]).unwrap(),
            "{table} of the dirty run differs from the clean run's"
        );
    }

    // Privacy: no e-mail address (the customers input has them) in logs or the manifest.
    let logs = String::from_utf8_lossy(&run.stderr);
    assert!(!logs.contains('@'), "an e-mail address in the logs");
    let manifest =
        std::fs::read_to_string(dirty_out.join(format!("_runs/{DATE}/manifest.json"))).unwrap();
    assert!(!manifest.contains('@'), "an e-mail address in the manifest");
}

#[test]
fn a_truncated_file_stops_the_run_naming_it_unless_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = pipeline(tmp.path(), dirty_shop(), &out, "");
    let run = run_pipeline(&p, DATE, &[]);
    assert_eq!(run.status.code(), Some(3), "{}", describe(&run));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("part-truncated-00000.parquet") && err.contains("not a readable Parquet file"),
        "{err}"
    );
    assert!(err.contains("on_corrupt_file"), "says what to do: {err}");
    assert!(!out.join("_runs").join(DATE).join("manifest.json").exists());
}

#[test]
fn too_many_rejected_rows_stop_the_run_with_the_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = pipeline(tmp.path(), dirty_shop(), &out, SKIP);
    let run = run_pipeline(&p, DATE, &["--set", "quality.max_rejected_share=0.01"]);
    assert_eq!(run.status.code(), Some(3), "{}", describe(&run));
    let err = String::from_utf8_lossy(&run.stderr);
    let planted = json(&dirty_shop().join("truth/defects.json"));
    let o = &planted["orders"];
    let rejected: u64 = [
        "before_floor",
        "null_customer_id",
        "invalid_amount",
        "unknown_status",
        "duplicate_order_id",
    ]
    .iter()
    .map(|r| o[r].as_u64().unwrap())
    .sum();
    assert!(err.contains(&format!("orders: {rejected} of ")), "{err}");
    assert!(
        err.contains(&format!("invalid_amount {}", o["invalid_amount"])),
        "{err}"
    );
    assert!(err.contains("quality.max_rejected_share"), "{err}");
    assert!(!err.contains('@'));
    // Nothing published, but the evidence is there.
    assert!(!out.join(format!("_runs/{DATE}/manifest.json")).exists());
    assert!(!out.join("customer_segments").exists());
    assert!(!parquet_files(&out.join("_rejected")).is_empty());
}

/// Writes `batch` as `dir/name`.
fn write(dir: &Path, name: &str, batch: &RecordBatch) {
    std::fs::create_dir_all(dir).unwrap();
    let f = std::fs::File::create(dir.join(name)).unwrap();
    let mut w = ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

#[test]
fn an_empty_input_stops_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let orders = read_table(&shop().join("orders"));
    let data = tmp.path().join("data");
    write(&data.join("orders"), "empty.parquet", &orders.slice(0, 0));
    let out = tmp.path().join("out");
    let p = tmp.path().join("p.toml");
    std::fs::write(
        &p,
        format!(
            "[inputs]\norders = \"{}/orders/\"\n[output]\nroot = \"{}\"\n",
            data.display(),
            out.display()
        ),
    )
    .unwrap();
    let run = run_pipeline(&p, DATE, &[]);
    assert_eq!(run.status.code(), Some(3), "{}", describe(&run));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("orders: no usable rows (0 rows in 1 files"),
        "{err}"
    );
}

#[test]
fn a_shrunken_input_against_the_previous_run_stops_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = pipeline(tmp.path(), shop(), &out, "");
    let first = run_pipeline(&p, "2026-10-30", &[]);
    assert!(first.status.success(), "{}", describe(&first));

    // The next day's export lost every order from before 2026: about half the rows.
    let orders = read_table(&shop().join("orders"));
    let ts = datafusion::arrow::compute::cast(
        orders.column_by_name("order_ts").unwrap(),
        &datafusion::arrow::datatypes::DataType::Int64,
    )
    .unwrap();
    // 2026-01-01 00:00 UTC in microseconds.
    let cut = datafusion::arrow::array::Int64Array::new_scalar(1_767_225_600_000_000);
    let keep = datafusion::arrow::compute::kernels::cmp::gt_eq(&ts, &cut).unwrap();
    let part = datafusion::arrow::compute::filter_record_batch(&orders, &keep).unwrap();
    let data = tmp.path().join("data");
    write(&data.join("orders"), "part-0.parquet", &part);
    let p2 = tmp.path().join("p2.toml");
    std::fs::write(
        &p2,
        format!(
            "[inputs]\norders = \"{}/orders/\"\n[output]\nroot = \"{}\"\n",
            data.display(),
            out.display()
        ),
    )
    .unwrap();
    let run = run_pipeline(&p2, DATE, &["--set", "quality.max_row_drop=0.2"]);
    assert_eq!(run.status.code(), Some(3), "{}", describe(&run));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains(&format!(
            "orders: {} usable rows, down from ",
            part.num_rows()
        )),
        "{err}"
    );
    assert!(err.contains("in the run of 2026-10-30"), "{err}");
    assert!(err.contains("quality.max_row_drop"), "{err}");
    assert!(part.num_rows() > 0 && (part.num_rows() as f64) < 0.8 * orders.num_rows() as f64);
}

#[test]
fn config_errors_name_the_file_line_and_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let base = format!(
        "[inputs]\norders = \"{}/orders/\"\n[output]\nroot = \"out/\"\n",
        shop().display()
    );
    for (extra, says) in [
        (
            "[clustering]\nk = true\n",
            "line 6, column 5: invalid type: boolean `true`",
        ),
        (
            "[quality]\nearliest_date = \"yesterday\"\n",
            "`quality.earliest_date` = \"yesterday\" is not a date; write YYYY-MM-DD",
        ),
        ("[quality]\non_corrupt_file = \"ignore\"\n", "line 6"),
        (
            "[quality]\nmax_rejected_share = 5\n",
            "`quality.max_rejected_share` = 5 must be between 0 and 1",
        ),
        ("[queries]\nfeatures = \"missing.sql\"\n", "missing.sql"),
        ("[inputs\n", "line 5, column 8"),
    ] {
        let p = tmp.path().join("p.toml");
        std::fs::write(&p, format!("{base}{extra}")).unwrap();
        let run = run_pipeline(&p, DATE, &[]);
        assert_eq!(run.status.code(), Some(2), "{extra}: {}", describe(&run));
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains(p.to_str().unwrap()), "names the file: {err}");
        assert!(err.contains(says), "{extra}: {err}");
    }
    let p = tmp.path().join("p.toml");
    std::fs::write(&p, &base).unwrap();
    let run = run_pipeline(
        &p,
        DATE,
        &[
            "--set",
            "model.churn_high=0.8",
            "--set",
            "clustering.seed=abc",
        ],
    );
    assert_eq!(run.status.code(), Some(2), "{}", describe(&run));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("(from --set clustering.seed=abc)"),
        "names the override: {err}"
    );
    let run = run_pipeline(&p, DATE, &["--set", "output.root=ftp://host/x/"]);
    assert_eq!(run.status.code(), Some(2), "{}", describe(&run));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("`output.root` = \"ftp://host/x/\": URL scheme `ftp` is not supported"),
        "{err}"
    );
}
