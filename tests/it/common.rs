//! Shared helpers: the binary, generated shops, reading outputs back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The customer_segments columns CONTRACT.md promises, with their types.
pub const CONTRACT_COLUMNS: &[(&str, datafusion::arrow::datatypes::DataType)] = {
    use datafusion::arrow::datatypes::DataType::{Float64, Int32, Utf8};
    &[
        ("customer_id", Utf8),
        ("segment", Utf8),
        ("segment_id", Int32),
        ("churn_risk_score", Float64),
        ("churn_risk", Utf8),
        ("value_score", Float64),
        ("value_segment", Utf8),
        ("lifecycle_stage", Utf8),
        ("loyalty_tier", Utf8),
    ]
};

/// The values CONTRACT.md allows in each banded column of customer_segments.
pub const CONTRACT_VOCABULARIES: &[(&str, &[&str])] = &[
    ("churn_risk", &["low", "medium", "high"]),
    ("value_segment", &["high", "medium", "low"]),
    (
        "lifecycle_stage",
        &[
            "potential",
            "development",
            "growth",
            "maturity",
            "decline",
            "termination",
        ],
    ),
    (
        "loyalty_tier",
        &["none", "habitual", "preference", "committed"],
    ),
];

/// The Python with DuckDB, pyarrow, pandas and PyYAML (`SEGMENTER_PYTHON`, printed by
/// scripts/setup-python.sh), or None after saying the test is skipped. CI must set it.
pub fn python() -> Option<std::ffi::OsString> {
    installed("SEGMENTER_PYTHON", "scripts/setup-python.sh")
}

/// The value of `var`, which `script` prints, or None after saying the test is skipped; CI
/// (`CI` set) must set it.
pub fn installed(var: &str, script: &str) -> Option<std::ffi::OsString> {
    let value = std::env::var_os(var);
    if value.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set {var} ({script})"
        );
        eprintln!("SKIPPED: set {var}=$({script}) to run it");
    }
    value
}

/// The segmenter binary built by cargo for this test run.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_segmenter"))
}

/// Runs the binary, returning its output (stdout, stderr, status).
pub fn segmenter(args: &[&str]) -> Output {
    bin()
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run segmenter")
}

/// `segmenter run --pipeline P --date D [extra…]`.
pub fn run_pipeline(pipeline: &Path, date: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--date",
        date,
    ];
    args.extend_from_slice(extra);
    segmenter(&args)
}

/// Exit code, stdout and stderr as text, for assertions with context.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A small generated shop (600 customers, seed 7), made once per test process and reused
/// read-only by every test.
pub fn shop() -> &'static Path {
    static SHOP: OnceLock<PathBuf> = OnceLock::new();
    SHOP.get_or_init(|| generate_shop("shop", &[]))
}

/// The same shop generated with `--dirty`: the same clean files plus the planted defects.
pub fn dirty_shop() -> &'static Path {
    static SHOP: OnceLock<PathBuf> = OnceLock::new();
    SHOP.get_or_init(|| generate_shop("dirty", &["--dirty"]))
}

/// `segmenter generate` of 600 customers, seed 7 (plus `extra` options) into a temporary
/// directory named by `tag`.
fn generate_shop(tag: &str, extra: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("segmenter-it-{tag}-{}", std::process::id()));
    let mut args = vec![
        "generate",
        "--out",
        dir.to_str().unwrap(),
        "--customers",
        "600",
        "--seed",
        "7",
    ];
    args.extend_from_slice(extra);
    let out = segmenter(&args);
    assert!(out.status.success(), "generate failed: {}", describe(&out));
    dir
}

/// Writes a pipeline file reading `data` and writing to `out`; returns its path.
pub fn pipeline(dir: &Path, data: &Path, out: &Path, extra: &str) -> PathBuf {
    let p = dir.join("pipeline.toml");
    let text = format!(
        "[inputs]\norders = \"{d}/orders/\"\nevents = \"{d}/events/\"\ncustomers = \"{d}/customers/\"\n\
         [output]\nroot = \"{o}\"\n{extra}\n",
        d = data.display(),
        o = out.display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// Every Parquet file under `dir`, sorted.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Reads every Parquet file under `dir` into one batch.
pub fn read_table(dir: &Path) -> RecordBatch {
    let mut batches = Vec::new();
    for f in parquet_files(dir) {
        let file = std::fs::File::open(&f).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            batches.push(b.unwrap());
        }
    }
    assert!(!batches.is_empty(), "no rows under {}", dir.display());
    concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// The published manifest of `date` under the output root `root`.
pub fn manifest(root: &Path, date: &str) -> serde_json::Value {
    let text = std::fs::read(root.join(format!("_runs/{date}/manifest.json"))).unwrap();
    serde_json::from_slice(&text).unwrap()
}

/// The published files of `date` that must be identical, by name without the run id.
pub fn published(root: &Path, date: &str) -> Vec<(String, Vec<u8>)> {
    let m = manifest(root, date);
    let run_id = m["run_id"].as_str().unwrap().to_string();
    let mut files = Vec::new();
    for table in [
        "customer_segments",
        "segment_summary",
        "segment_transitions",
        "exports",
    ] {
        for url in m["outputs"][table].as_array().unwrap() {
            let path = url.as_str().unwrap().trim_start_matches("file://");
            let name = path.rsplit('/').next().unwrap().replace(&run_id, "RUN");
            files.push((format!("{table}/{name}"), std::fs::read(path).unwrap()));
        }
    }
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
}

/// Writes a Parquet file with one `customer_id` column.
pub fn write_ids(path: &Path, ids: &[String]) {
    use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let col: ArrayRef = std::sync::Arc::new(StringArray::from(ids.to_vec()));
    let batch = RecordBatch::try_from_iter([("customer_id", col)]).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w =
        datafusion::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}
