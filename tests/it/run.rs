//! End-to-end runs on a generated shop: contract columns, one row per known customer,
//! determinism, the as-of cut.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int32Type};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::common::{
    describe, parquet_files, pipeline, read_table, run_pipeline, shop, CONTRACT_COLUMNS,
};

const DATE: &str = "2026-10-31";

fn run(pipeline: &Path, extra: &[&str]) {
    let out = run_pipeline(pipeline, DATE, extra);
    assert!(out.status.success(), "{}", describe(&out));
}

/// Customers with an order, an identified event or a customers row before the cut-off,
/// counted independently of segmenter with a plain DataFusion query over the raw files.
async fn known_customers(data: &Path) -> usize {
    let ctx = SessionContext::new();
    for t in ["orders", "events", "customers"] {
        let dir = data.join(t);
        ctx.register_parquet(t, dir.to_str().unwrap(), ParquetReadOptions::default())
            .await
            .unwrap();
    }
    let cut = "TIMESTAMP '2026-11-01 00:00:00+00:00'";
    let sql = format!(
        "SELECT count(*) AS n FROM ( \
           SELECT customer_id FROM orders WHERE order_ts < {cut} \
           UNION SELECT customer_id FROM events WHERE customer_id IS NOT NULL AND event_ts < {cut} \
           UNION SELECT customer_id FROM customers WHERE signup_ts < {cut})"
    );
    let b = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    b[0].column(0)
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
        .value(0) as usize
}

#[test]
fn run_writes_every_table_with_contract_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = pipeline(tmp.path(), shop(), &out, "");
    run(&p, &[]);

    let segs = read_table(&out.join(format!("customer_segments/run_date={DATE}")));
    let features: &[(&str, DataType)] = &[
        ("recency_days", DataType::Float64),
        ("frequency", DataType::Int64),
        ("monetary", DataType::Float64),
        ("sessions_90d", DataType::Int64),
    ];
    for (name, ty) in CONTRACT_COLUMNS.iter().chain(features) {
        let field = segs
            .schema()
            .field_with_name(name)
            .cloned()
            .unwrap_or_else(|_| panic!("missing column {name}"));
        assert_eq!(field.data_type(), ty, "column {name}");
    }
    let ids = segs
        .column_by_name("customer_id")
        .unwrap()
        .as_string::<i32>()
        .clone();
    let distinct: HashSet<&str> = ids.iter().flatten().collect();
    assert_eq!(distinct.len(), segs.num_rows(), "one row per customer");
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        segs.num_rows(),
        rt.block_on(known_customers(shop())),
        "every known customer"
    );

    let churn = segs
        .column_by_name("churn_risk_score")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert!(churn.iter().flatten().all(|p| (0.0..=1.0).contains(&p)));
    let value = segs
        .column_by_name("value_score")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert!(value.iter().flatten().all(|v| v.is_finite() && v >= 0.0));
    for &(col, allowed) in crate::common::CONTRACT_VOCABULARIES {
        let a = segs.column_by_name(col).unwrap().as_string::<i32>();
        assert_eq!(a.null_count(), 0, "{col}");
        assert!(a.iter().flatten().all(|v| allowed.contains(&v)), "{col}");
    }
    // segment names and ids correspond one to one
    let names = segs.column_by_name("segment").unwrap().as_string::<i32>();
    let sids = segs
        .column_by_name("segment_id")
        .unwrap()
        .as_primitive::<Int32Type>();
    let pairs: HashSet<(&str, i32)> = (0..segs.num_rows())
        .map(|i| (names.value(i), sids.value(i)))
        .collect();
    let k = pairs.iter().map(|p| p.1).collect::<HashSet<_>>().len();
    assert_eq!(pairs.len(), k);
    assert_eq!(pairs.iter().map(|p| p.0).collect::<HashSet<_>>().len(), k);

    let summary = read_table(&out.join(format!("segment_summary/run_date={DATE}")));
    assert_eq!(summary.num_rows(), k);
    for col in [
        "segment_id",
        "segment",
        "customers",
        "share",
        "mean_churn_risk_score",
        "total_value",
        "revenue_at_risk",
    ] {
        assert!(
            summary.column_by_name(col).is_some(),
            "segment_summary.{col}"
        );
    }
    // Every segment has a play, one of the documented ones (README, "Recommended actions").
    let plays = summary
        .column_by_name("recommended_action")
        .expect("segment_summary.recommended_action");
    let plays = datafusion::arrow::array::AsArray::as_string::<i32>(plays.as_ref());
    let known = [
        "Convert:",
        "Win back:",
        "Sunset:",
        "Reactivate cheaply:",
        "No discount:",
        "Reward loyalty:",
        "Onboard:",
        "Nurture:",
    ];
    for play in plays.iter() {
        let play = play.expect("no null play");
        assert!(known.iter().any(|k| play.starts_with(k)), "{play}");
    }
    let sizes = summary
        .column_by_name("customers")
        .unwrap()
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
    assert_eq!(
        sizes.iter().flatten().sum::<i64>() as usize,
        segs.num_rows()
    );

    let exports: Vec<_> = std::fs::read_dir(out.join(format!("exports/run_date={DATE}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("segment_")
        })
        .collect();
    assert_eq!(exports.len(), k, "one CSV per segment");
    let mut exported = 0;
    for e in exports {
        let text = std::fs::read_to_string(e).unwrap();
        assert!(text.starts_with("customer_id,email,segment,"));
        exported += text.lines().count() - 1;
    }
    assert_eq!(exported, segs.num_rows());

    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join(format!("_runs/{DATE}/manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["run_date"], DATE);
    assert_eq!(manifest["customers"], segs.num_rows());
    assert!(manifest["inputs"]["orders"]["rows_used"].as_u64().unwrap() > 0);
    assert!(
        manifest["inputs"]["events"]["rejected"]["anonymous"]
            .as_u64()
            .unwrap()
            > 0
    );
    for stage in ["inputs", "features", "models", "clustering", "write"] {
        assert!(manifest["timings"][stage].is_number(), "timing {stage}");
    }
    assert!(
        !out.join(format!("_runs/{DATE}/_lock")).exists(),
        "lock released"
    );
}

#[test]
fn same_inputs_and_seed_give_identical_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let pa = pipeline(&tmp.path().join("pa").tap_mkdir(), shop(), &a, "");
    let pb = pipeline(&tmp.path().join("pb").tap_mkdir(), shop(), &b, "");
    run(&pa, &[]);
    run(&pb, &[]);
    for table in ["customer_segments", "segment_summary"] {
        let fa = parquet_files(&a.join(table));
        let fb = parquet_files(&b.join(table));
        assert_eq!(fa.len(), 1);
        let (ba, bb) = (
            std::fs::read(&fa[0]).unwrap(),
            std::fs::read(&fb[0]).unwrap(),
        );
        assert!(ba == bb, "{table} files differ byte for byte");
    }
}

#[test]
fn rerun_of_a_date_replaces_the_previous_attempt() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = pipeline(tmp.path(), shop(), &out, "");
    run(&p, &[]);
    run(&p, &[]);
    let files = parquet_files(&out.join("customer_segments"));
    assert_eq!(files.len(), 1, "earlier attempt's files removed: {files:?}");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join(format!("_runs/{DATE}/manifest.json"))).unwrap(),
    )
    .unwrap();
    let listed = manifest["outputs"]["customer_segments"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        listed.ends_with(files[0].file_name().unwrap().to_str().unwrap()),
        "{listed}"
    );
}

#[test]
fn orders_after_the_date_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // A copy of the shop's orders plus one file of orders dated after D: one for an existing
    // customer (at exactly D+1 00:00, the first excluded instant) and one for a new customer.
    let orders = tmp.path().join("late/orders");
    std::fs::create_dir_all(&orders).unwrap();
    for f in parquet_files(&shop().join("orders")) {
        std::fs::copy(&f, orders.join(f.file_name().unwrap())).unwrap();
    }
    let some_customer = {
        let t = read_table(&shop().join("orders"));
        t.column_by_name("customer_id")
            .unwrap()
            .as_string::<i32>()
            .value(0)
            .to_string()
    };
    let ts = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_micros()
    };
    let late = RecordBatch::try_from_iter([
        (
            "order_id",
            Arc::new(StringArray::from(vec!["late-1", "late-2"])) as Arc<dyn Array>,
        ),
        (
            "customer_id",
            Arc::new(StringArray::from(vec![some_customer.as_str(), "BRAND-NEW"])) as _,
        ),
        (
            "order_ts",
            Arc::new(
                TimestampMicrosecondArray::from(vec![
                    ts("2026-11-01T00:00:00Z"),
                    ts("2026-12-24T10:00:00Z"),
                ])
                .with_timezone("UTC"),
            ) as _,
        ),
        (
            "amount",
            Arc::new(Float64Array::from(vec![5000.0, 10.0])) as _,
        ),
        (
            "status",
            Arc::new(StringArray::from(vec!["completed", "completed"])) as _,
        ),
    ])
    .unwrap();
    let file = std::fs::File::create(orders.join("late.parquet")).unwrap();
    let mut w = ArrowWriter::try_new(file, late.schema(), None).unwrap();
    w.write(&late).unwrap();
    w.close().unwrap();

    let base_out = tmp.path().join("base");
    let late_out = tmp.path().join("with-late");
    let p_base = pipeline(&tmp.path().join("p1").tap_mkdir(), shop(), &base_out, "");
    let text = std::fs::read_to_string(pipeline(
        &tmp.path().join("p2").tap_mkdir(),
        shop(),
        &late_out,
        "",
    ))
    .unwrap()
    .replace(
        &format!("{}/orders/", shop().display()),
        &format!("{}/", orders.display()),
    );
    let p_late = tmp.path().join("p2/pipeline.toml");
    std::fs::write(&p_late, text).unwrap();
    run(&p_base, &[]);
    run(&p_late, &[]);

    let a = std::fs::read(&parquet_files(&base_out.join("customer_segments"))[0]).unwrap();
    let b = std::fs::read(&parquet_files(&late_out.join("customer_segments"))[0]).unwrap();
    assert!(
        a == b,
        "customer_segments changed because of orders after the date"
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(late_out.join(format!("_runs/{DATE}/manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["inputs"]["orders"]["rows_after_cutoff"], 2);
}

/// `path.tap_mkdir()` creates the directory and returns it.
trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
