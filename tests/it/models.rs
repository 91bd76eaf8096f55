//! The models through the real binary: the CDNOW backtest against what customers really did,
//! the backtest in the manifest, and `segmenter evaluate`.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Float64Type, TimestampMicrosecondType};
use segmenter::models::bgnbd::{BgNbd, Rfm};
use segmenter::models::metrics::roc_auc;

use crate::common::{describe, pipeline, read_table, run_pipeline, segmenter, shop};

const CDNOW: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cdnow/orders");

fn f64_col(b: &datafusion::arrow::array::RecordBatch, name: &str) -> Vec<f64> {
    let c = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let c = datafusion::arrow::compute::cast(c, &datafusion::arrow::datatypes::DataType::Float64)
        .unwrap();
    let c = c.as_primitive::<Float64Type>();
    (0..c.len())
        .map(|i| if c.is_null(i) { f64::NAN } else { c.value(i) })
        .collect()
}

/// CDNOW, orders only, run for 1997-09-30: the published score's AUC on what customers really
/// did in the next 90 days (orders in the file after the date, never seen by the run) is at
/// least BG/NBD's.
#[test]
fn cdnow_chosen_churn_score_is_at_least_as_good_as_bgnbd() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = tmp.path().join("p.toml");
    std::fs::write(
        &p,
        format!(
            "[inputs]\norders = \"{CDNOW}/\"\n[output]\nroot = \"{}\"\n",
            out.display()
        ),
    )
    .unwrap();
    let run = run_pipeline(&p, "1997-09-30", &[]);
    assert!(run.status.success(), "{}", describe(&run));

    // What really happened: completed orders in [1997-10-01, 1997-12-30).
    let orders = read_table(std::path::Path::new(CDNOW));
    let ids = orders
        .column_by_name("customer_id")
        .unwrap()
        .as_string::<i32>();
    let ts = orders
        .column_by_name("order_ts")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    let from = chrono::NaiveDate::from_ymd_opt(1997, 10, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros();
    let to = from + 90 * 86_400_000_000;
    let mut bought: HashMap<String, bool> = HashMap::new();
    for i in 0..orders.num_rows() {
        let t = ts.value(i);
        if t >= from && t < to {
            bought.insert(ids.value(i).to_string(), true);
        }
    }

    let segs = read_table(&out.join("customer_segments/run_date=1997-09-30"));
    assert_eq!(segs.num_rows(), 2357);
    let seg_ids = segs
        .column_by_name("customer_id")
        .unwrap()
        .as_string::<i32>();
    let churned: Vec<f64> = (0..segs.num_rows())
        .map(|i| {
            if bought.contains_key(seg_ids.value(i)) {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    let chosen = f64_col(&segs, "churn_risk_score");

    // BG/NBD with the parameters the run fitted, on each customer's history in whole days
    // (each purchase day counted from its start, as the run fits and scores it).
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_runs/1997-09-30/manifest.json")).unwrap())
            .unwrap();
    let b = &manifest["models"]["classical"]["bgnbd"];
    let model = BgNbd {
        r: b["r"].as_f64().unwrap(),
        alpha: b["alpha"].as_f64().unwrap(),
        a: b["a"].as_f64().unwrap(),
        b: b["b"].as_f64().unwrap(),
    };
    let (pd, first, rec) = (
        f64_col(&segs, "purchase_days"),
        f64_col(&segs, "first_completed_days"),
        f64_col(&segs, "recency_days"),
    );
    let bgnbd: Vec<f64> = (0..segs.num_rows())
        .map(|i| {
            let (t, last) = (first[i].ceil(), rec[i].ceil());
            let c = Rfm {
                x: pd[i] - 1.0,
                t_x: t - last,
                t,
            };
            model.p_no_purchase(&c, 90.0)
        })
        .collect();
    let (auc_chosen, auc_bgnbd) = (roc_auc(&chosen, &churned), roc_auc(&bgnbd, &churned));
    eprintln!("CDNOW 90-day churn AUC: published score {auc_chosen:.4}, BG/NBD {auc_bgnbd:.4}");
    assert!(
        auc_bgnbd > 0.6,
        "BG/NBD should rank CDNOW customers: {auc_bgnbd}"
    );
    assert!(
        auc_chosen >= auc_bgnbd - 1e-9,
        "chosen {auc_chosen} < BG/NBD {auc_bgnbd}"
    );
}

#[test]
fn manifest_carries_the_backtest_and_evaluate_prints_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = pipeline(tmp.path(), shop(), &out, "");
    let run = run_pipeline(&p, "2026-10-31", &[]);
    assert!(run.status.success(), "{}", describe(&run));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_runs/2026-10-31/manifest.json")).unwrap())
            .unwrap();
    let b = &manifest["models"]["backtest"];
    assert_eq!(b["scored_at"], "2026-08-03T00:00:00Z");
    for scorer in ["churn_trees", "churn_bgnbd"] {
        let auc = b[scorer]["auc"]
            .as_f64()
            .unwrap_or_else(|| panic!("{scorer}: {b}"));
        assert!(auc > 0.6 && auc <= 1.0, "{scorer} AUC {auc}");
        assert_eq!(b[scorer]["calibration"].as_array().unwrap().len(), 10);
    }
    assert!(
        b["value_bgnbd_gg"]["spearman"].as_f64().unwrap() > 0.0,
        "{b}"
    );
    // Churn by group, each with the trees' and BG/NBD's figures on its own customers.
    let groups = b["groups"].as_array().unwrap_or_else(|| panic!("{b}"));
    let names: Vec<&str> = groups
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["buyers", "never_buyers", "new"], "{b}");
    let total = b["customers"].as_u64().unwrap();
    let split: u64 = groups[..2]
        .iter()
        .map(|g| g["customers"].as_u64().unwrap())
        .sum();
    assert_eq!(split, total, "buyers and never-buyers are everyone");
    for g in groups {
        let trees = &g["trees"];
        assert!(
            trees["auc"].as_f64().is_some() && trees["mean_score"].as_f64().is_some(),
            "{g}"
        );
        assert_eq!(trees["calibration"].as_array().unwrap().len(), 10, "{g}");
    }
    let method = manifest["models"]["churn"]["method"].as_str().unwrap();
    assert!(
        ["gradient_boosted_trees+calibration", "bgnbd"].contains(&method),
        "{method}"
    );

    let eval = segmenter(&[
        "evaluate",
        "--pipeline",
        p.to_str().unwrap(),
        "--date",
        "2026-10-31",
    ]);
    assert!(eval.status.success(), "{}", describe(&eval));
    let text = String::from_utf8_lossy(&eval.stdout);
    assert!(
        text.contains("BG/NBD") && text.contains("AUC") && text.contains(method),
        "{text}"
    );
    assert!(
        text.contains("churn by group") && text.contains("never_buyers"),
        "{text}"
    );
    // evaluate writes nothing
    let json = segmenter(&[
        "evaluate",
        "--pipeline",
        p.to_str().unwrap(),
        "--date",
        "2026-10-31",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        report["backtest"]["churn_bgnbd"]["auc"], b["churn_bgnbd"]["auc"],
        "same data, same backtest"
    );
}
