//! Incremental nights: the clickstream's state and the stored models change how much a night
//! reads and fits, never what it publishes. Each night is compared byte for byte with a
//! `--full` run of the same date on a copy of the output root.

use std::path::{Path, PathBuf};

use crate::common::{
    describe, manifest, parquet_files, pipeline, published, run_pipeline, segmenter,
};

pub(crate) const D: &str = "2026-10-30";
pub(crate) const D1: &str = "2026-10-31";

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("segmenter-it-incr-{tag}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A 600-customer shop with daily clickstream partitions as it stood at the end of `D`
/// (the world ends at `D1`, so `--add-day D1` adds the next night).
pub(crate) fn shop_until_d(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let out = segmenter(&[
        "generate",
        "--out",
        data.to_str().unwrap(),
        "--customers",
        "600",
        "--seed",
        "7",
        "--end-date",
        D1,
        "--until",
        D,
        "--daily",
    ]);
    assert!(out.status.success(), "generate: {}", describe(&out));
    data
}

pub(crate) fn add_day(data: &Path, day: &str) {
    let out = segmenter(&[
        "generate",
        "--out",
        data.to_str().unwrap(),
        "--customers",
        "600",
        "--seed",
        "7",
        "--end-date",
        D1,
        "--add-day",
        day,
        "--daily",
    ]);
    assert!(
        out.status.success(),
        "generate --add-day: {}",
        describe(&out)
    );
}

/// Two output roots under `dir` (`a`: incremental, `b`: `--full`) and a pipeline file for
/// each reading `data`, with `extra` settings.
fn two_roots(dir: &Path, data: &Path, extra: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let (a, b) = (dir.join("a"), dir.join("b"));
    let mut files = Vec::new();
    for (sub, root) in [("pa", &a), ("pb", &b)] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        files.push(pipeline(&dir.join(sub), data, root, extra));
    }
    let pb = files.pop().unwrap();
    let pa = files.pop().unwrap();
    (a, b, pa, pb)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn ok(out: &std::process::Output) {
    assert!(out.status.success(), "{}", describe(out));
}

/// `run_pipeline` with the base's features built in buckets of at most 500 rows (customers ×
/// cut-offs), so that the tests build every base in several queries, as large shops do.
fn run_bucketed(pipeline: &Path, date: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_segmenter"))
        .args([
            "run",
            "--pipeline",
            pipeline.to_str().unwrap(),
            "--date",
            date,
        ])
        .env("RUST_LOG", "warn")
        .env("SEGMENTER_BASE_BUCKET_ROWS", "500")
        .output()
        .expect("run segmenter")
}

/// Runs `D1` incrementally on `a` and with `--full` on `b`; asserts equal outputs and returns
/// the incremental run's manifest.
fn night_equals_full(pa: &Path, pb: &Path, a: &Path, b: &Path, what: &str) -> serde_json::Value {
    ok(&run_bucketed(pa, D1));
    ok(&run_pipeline(pb, D1, &["--full"]));
    let (x, y) = (published(a, D1), published(b, D1));
    assert_eq!(x.len(), y.len(), "{what}");
    for ((nx, bx), (ny, by)) in x.iter().zip(&y) {
        assert_eq!(nx, ny, "{what}");
        assert!(
            bx == by,
            "{what}: {nx} differs between the incremental and the full run"
        );
    }
    let m = manifest(a, D1);
    // The same counts of every input, whether counted from the base's tallies or not.
    let counts = |m: &serde_json::Value| {
        let mut inputs = m["inputs"].clone();
        for input in ["orders", "events", "customers"] {
            if let Some(o) = inputs[input].as_object_mut() {
                o.remove("files_kept");
            }
        }
        inputs
    };
    assert_eq!(counts(&m), counts(&manifest(b, D1)), "{what}");
    assert_eq!(
        m["models"]["refit"]["refitted"], false,
        "{what}: the night must score with the stored models: {}",
        m["models"]["refit"]
    );
    assert_eq!(manifest(b, D1)["state"]["mode"], "full", "{what}");
    m
}

fn state(m: &serde_json::Value) -> (u64, u64, Vec<String>) {
    let s = &m["state"];
    let read: Vec<String> = s["read"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    (
        s["reused_files"].as_u64().unwrap(),
        s["read_files"].as_u64().unwrap(),
        read,
    )
}

fn events_file(data: &Path, day: &str) -> PathBuf {
    let dir = data.join(format!("events/dt={day}"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.remove(0)
}

/// Marks the first `n` orders of the first orders file as returned, rewriting the file in
/// place as an export rewritten after returns would be.
fn return_orders(data: &Path, n: usize) {
    use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::DataType;
    let file = &parquet_files(&data.join("orders"))[0];
    let mut batches = read_batches(file);
    let first = &batches[0];
    let at = first.schema().index_of("status").unwrap();
    let status = cast(first.column(at), &DataType::Utf8).unwrap();
    let status: StringArray = (0..status.len())
        .map(|i| {
            if i < n {
                Some("returned")
            } else {
                status
                    .is_valid(i)
                    .then(|| status.as_string::<i32>().value(i))
            }
        })
        .collect();
    let mut columns = first.columns().to_vec();
    columns[at] = cast(&status, first.schema().field(at).data_type()).unwrap();
    batches[0] = RecordBatch::try_new(first.schema(), columns).unwrap();
    write_batches(file, &batches);
}

/// Every batch of the Parquet file `file`.
fn read_batches(file: &Path) -> Vec<datafusion::arrow::array::RecordBatch> {
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// Writes `batches` (one schema) as the Parquet file `file`, replacing it if it exists.
fn write_batches(file: &Path, batches: &[datafusion::arrow::array::RecordBatch]) {
    use datafusion::parquet::arrow::ArrowWriter;
    let file = std::fs::File::create(file).unwrap();
    let mut w = ArrowWriter::try_new(file, batches[0].schema(), None).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

/// Writes a new customers file holding the first customer of the first customers file again,
/// with another email (which the earliest-sign-up rule then picks by its order): a duplicate id.
fn sign_up_again(data: &Path) -> String {
    use datafusion::arrow::array::{AsArray, RecordBatch, StringArray};
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::DataType;
    let first = read_batches(&parquet_files(&data.join("customers"))[0])[0].slice(0, 1);
    let schema = first.schema();
    let id = cast(
        first.column(schema.index_of("customer_id").unwrap()),
        &DataType::Utf8,
    )
    .unwrap()
    .as_string::<i32>()
    .value(0)
    .to_string();
    let at = schema.index_of("email").unwrap();
    let email = StringArray::from(vec!["0-again@example.com"]);
    let mut columns = first.columns().to_vec();
    columns[at] = cast(&email, schema.field(at).data_type()).unwrap();
    let again = RecordBatch::try_new(schema, columns).unwrap();
    write_batches(&data.join("customers/part-zz-again.parquet"), &[again]);
    id
}

#[test]
fn incremental_nights_equal_full_runs_through_late_replaced_deleted_files_and_an_edited_rollup() {
    let dir = tempdir("equal");
    let data = shop_until_d(&dir);
    let (a, b, pa, pb) = two_roots(&dir, &data, "");

    ok(&run_bucketed(&pa, D));
    let first = manifest(&a, D);
    let files = first["state"]["read_files"].as_u64().unwrap();
    assert!(files > 100, "daily partitions: {}", first["state"]);
    assert_eq!(first["models"]["refit"]["refitted"], true);
    copy_tree(&a, &b);

    // The next night: one more day of orders and clickstream.
    add_day(&data, D1);
    let m = night_equals_full(&pa, &pb, &a, &b, "the next night");
    let (reused, read, names) = state(&m);
    assert_eq!(reused, files, "{}", m["state"]);
    assert_eq!(read, 1, "only the new day is read: {}", m["state"]);
    assert!(names[0].contains(&format!("dt={D1}")), "{names:?}");
    // The sessions and engagement of D's base, the changed customers' computed again.
    let base = &m["state"]["base"];
    assert_eq!(base["built"], false, "{base}");
    assert_eq!(base["run_date"], D, "{base}");
    assert_eq!(base["days_after"], 1, "{base}");
    assert_eq!(base["features_kept"], true, "{base}");
    let changed = base["changed_customers"].as_u64().unwrap();
    let customers = m["customers"].as_u64().unwrap();
    assert!(
        changed > 0 && changed * 5 < customers,
        "one day's visitors are a few of the customers: {changed} of {customers}"
    );
    // D scored the base's coming cut-offs ahead: only the changed customers were scored.
    assert_eq!(
        base["scores_kept"].as_u64().unwrap() + changed,
        customers,
        "{base}"
    );
    // The orders and customers files only gained the new day's: the changed customers come
    // from those files, not from every row's digest.
    assert_eq!(base["inputs_compared_by"], "added files", "{base}");
    // Their rows were counted from the base's tallies and the added files alone.
    let kept = first["inputs"]["orders"]["files"].as_u64().unwrap();
    assert_eq!(m["inputs"]["orders"]["files_kept"], kept, "{}", m["inputs"]);
    assert!(m["inputs"]["customers"]["files_kept"].as_u64().unwrap() > 0);

    // A customer signs up again in a new customers file: still only files added, and the
    // changed customers' rows (the base's and the new file's) keep the earliest sign-up, as
    // the full run's do over every row.
    let again = sign_up_again(&data);
    let m = night_equals_full(&pa, &pb, &a, &b, "a customer signing up again");
    let base = &m["state"]["base"];
    assert_eq!(base["built"], false, "{base}");
    assert_eq!(base["inputs_compared_by"], "added files", "{base}");
    assert_eq!(
        m["inputs"]["customers"]["rejected"]["duplicate_customer_id"], 1,
        "{again}: {}",
        m["inputs"]
    );

    // Returns rewrite an old orders file: its customers are found by their rows' digests,
    // and the base (whose clickstream is unchanged) still serves.
    return_orders(&data, 25);
    let m = night_equals_full(&pa, &pb, &a, &b, "returns in an old orders file");
    let base = &m["state"]["base"];
    assert_eq!(base["built"], false, "{base}");
    assert_eq!(base["inputs_compared_by"], "row digests", "{base}");
    assert!(
        base["changed_customers"].as_u64().unwrap() > changed,
        "the returning customers are changed too: {base}"
    );

    // A late file for an old day.
    let late = data.join("events/dt=2026-09-15/part-late.parquet");
    std::fs::create_dir_all(late.parent().unwrap()).unwrap();
    std::fs::copy(events_file(&data, "2026-10-01"), &late).unwrap();
    let m = night_equals_full(&pa, &pb, &a, &b, "a late file");
    let (_, read, names) = state(&m);
    assert_eq!(read, 2, "{}", m["state"]);
    assert!(
        names.iter().any(|n| n.ends_with("part-late.parquet")),
        "{names:?}"
    );
    // The late file's customers are changed customers; the base still serves.
    assert_eq!(m["state"]["base"]["built"], false, "{}", m["state"]);
    assert!(
        m["state"]["base"]["changed_customers"].as_u64().unwrap() > changed,
        "{}",
        m["state"]
    );

    // A replaced file (another day's rows under an old name).
    let replaced = events_file(&data, "2026-10-02");
    std::fs::copy(events_file(&data, "2026-10-03"), &replaced).unwrap();
    let m = night_equals_full(&pa, &pb, &a, &b, "a replaced file");
    let (_, read, names) = state(&m);
    assert_eq!(read, 3, "{}", m["state"]);
    let replaced_name = replaced.to_str().unwrap().to_string();
    assert!(
        names.iter().any(|n| n.ends_with(&replaced_name)),
        "{names:?}"
    );
    // A file the base merged changed: a new base, from every partial, and everyone scored.
    let base = &m["state"]["base"];
    assert_eq!(base["built"], true, "{base}");
    assert_eq!(base["scores_kept"], 0, "{base}");
    assert!(
        base["why"].as_str().unwrap().contains("no longer in use"),
        "{base}"
    );

    // A deleted file.
    std::fs::remove_file(events_file(&data, "2026-10-04")).unwrap();
    let m = night_equals_full(&pa, &pb, &a, &b, "a deleted file");
    assert_eq!(m["state"]["dropped_files"], 1, "{}", m["state"]);
    assert_eq!(m["state"]["read_files"], 3, "{}", m["state"]);

    // An edited engagement query: the kept engagement cannot serve.
    let engagement = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("queries/engagement.sql"),
    )
    .unwrap()
        + "\n-- edited\n";
    let sql = dir.join("engagement.sql");
    std::fs::write(&sql, engagement).unwrap();
    let extra = format!("[queries]\nengagement = \"{}\"\n", sql.display());
    let (_, _, pe, pf) = two_roots(&dir, &data, &extra);
    let m = night_equals_full(&pe, &pf, &a, &b, "an edited engagement query");
    let base = &m["state"]["base"];
    assert_eq!(base["built"], true, "{base}");
    assert!(
        base["why"].as_str().unwrap().contains("engagement.sql"),
        "{base}"
    );

    // An edited rollup query: every partial is computed again.
    let sessions =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("queries/sessions.sql"))
            .unwrap()
            .replace(
                "count(*) AS events,",
                "count(*) AS events, count(*) FILTER (WHERE event_type = 'search') AS searches,",
            );
    let sql = dir.join("sessions.sql");
    std::fs::write(&sql, sessions).unwrap();
    let extra = format!("[queries]\nsessions = \"{}\"\n", sql.display());
    let (_, _, pa, pb) = two_roots(&dir, &data, &extra);
    let m = night_equals_full(&pa, &pb, &a, &b, "an edited rollup");
    let (reused, read, _) = state(&m);
    assert_eq!(reused, 0, "{}", m["state"]);
    // The files of D, the new day and the late file, less the deleted one.
    assert_eq!(read, files + 1, "{}", m["state"]);
    assert!(
        m["state"]["why"]
            .as_str()
            .unwrap()
            .contains("another rollup query"),
        "{}",
        m["state"]
    );
}

#[test]
fn a_run_killed_while_writing_state_leaves_the_previous_state_usable() {
    let dir = tempdir("killed");
    let data = shop_until_d(&dir);
    let (a, b, pa, pb) = two_roots(&dir, &data, "");
    ok(&run_pipeline(&pa, D, &[]));
    copy_tree(&a, &b);
    add_day(&data, D1);
    // Killed with the new day's partial written and no index yet.
    crate::publish::run_and_kill_at(&pa, D1, "state");
    assert!(!a.join(format!("_runs/{D1}/manifest.json")).exists());
    // The rerun takes the dead run's lock over at once and reuses D's state.
    ok(&run_pipeline(&pa, D1, &[]));
    ok(&run_pipeline(&pb, D1, &[]));
    assert_eq!(published(&a, D1), published(&b, D1));
    let m = manifest(&a, D1);
    assert_eq!(m["state"]["read_files"], 1, "{}", m["state"]);
    assert_eq!(m["state"]["from_run_date"], D, "{}", m["state"]);
    // Deleting the state only costs time.
    std::fs::remove_dir_all(a.join("_state")).unwrap();
    ok(&run_pipeline(&pa, D1, &[]));
    assert_eq!(published(&a, D1), published(&b, D1));
    let m = manifest(&a, D1);
    assert_eq!(m["state"]["reused_files"], 0, "{}", m["state"]);
}

#[test]
fn a_rollup_that_cannot_be_merged_is_refused() {
    let dir = tempdir("unmergeable");
    let sessions =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("queries/sessions.sql"))
            .unwrap()
            .replace("count(*) AS events,", "count(DISTINCT event_ts) AS events,");
    let sql = dir.join("sessions.sql");
    std::fs::write(&sql, sessions).unwrap();
    let p = pipeline(
        &dir,
        crate::common::shop(),
        &dir.join("out"),
        &format!("[queries]\nsessions = \"{}\"\n", sql.display()),
    );
    let out = run_pipeline(&p, "2026-10-31", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DISTINCT") && err.contains("`events`"),
        "{err}"
    );
}

#[test]
fn models_are_refitted_on_schedule_on_request_and_when_the_features_change() {
    let dir = tempdir("refit");
    let data = shop_until_d(&dir);
    add_day(&data, D1);
    let root = dir.join("out");
    let p = pipeline(&dir, &data, &root, "[model]\nrefit_every_days = 3\n");
    let refit = |date: &str, extra: &[&str]| -> serde_json::Value {
        ok(&run_pipeline(&p, date, extra));
        manifest(&root, date)["models"]["refit"].clone()
    };
    let first = refit("2026-10-28", &[]);
    assert_eq!(first["refitted"], true, "{first}");
    let model = first["model"].as_str().unwrap().to_string();
    assert!(root.join(&model).exists(), "{model}");
    // The nights between refits load the stored models.
    for date in ["2026-10-29", "2026-10-30"] {
        let r = refit(date, &[]);
        assert_eq!(r["refitted"], false, "{date}: {r}");
        assert_eq!(r["date"], "2026-10-28", "{date}: {r}");
        assert_eq!(r["model"], model.as_str(), "{date}: {r}");
        let m = manifest(&root, date);
        assert!(
            m["models"]["backtest"]["churn_trees"]["auc"]
                .as_f64()
                .is_some(),
            "the manifest carries the refit's backtest: {}",
            m["models"]["backtest"]
        );
        assert!(m["models"]["drift"]["max_psi"].as_f64().is_some());
    }
    // Three days on: scheduled.
    let r = refit("2026-10-31", &[]);
    assert_eq!(r["refitted"], true, "{r}");
    assert!(r["reason"].as_str().unwrap().contains("scheduled"), "{r}");
    // On request.
    let r = refit("2026-11-01", &["--refit"]);
    assert_eq!(r["reason"], "--refit", "{r}");
    // A changed feature list.
    let features =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("queries/features.sql"))
            .unwrap()
            .replace(
                "  h.recency_days,",
                "  h.recency_days,\n  coalesce(h.frequency, 0) * 2 AS frequency_doubled,",
            );
    let sql = dir.join("features.sql");
    std::fs::write(&sql, features).unwrap();
    let p = pipeline(
        &dir,
        &data,
        &root,
        &format!(
            "[model]\nrefit_every_days = 3\n[queries]\nfeatures = \"{}\"\n",
            sql.display()
        ),
    );
    ok(&run_pipeline(&p, "2026-11-02", &[]));
    let r = manifest(&root, "2026-11-02")["models"]["refit"].clone();
    assert_eq!(r["refitted"], true, "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("frequency_doubled"),
        "{r}"
    );
}
