//! `[[exports]]`: csv with chosen columns and RFC 4180 quoting, customer-match lists of hashed
//! addresses, consent, predicates, the manifest's counts, the defaults, and bad SQL.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::Float64Type;

use crate::common::{describe, read_table, run_pipeline, shop};

const DATE: &str = "2026-10-31";

/// The shop's customers plus two whose ids and addresses need care: `C,"1"` opted in with an
/// address in odd case and spacing, `C,2` not opted in.
fn customers_with_odd_ones(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, f) in crate::common::parquet_files(&shop().join("customers"))
        .iter()
        .enumerate()
    {
        std::fs::copy(f, dir.join(format!("shop-{i}.parquet"))).unwrap();
    }
    let signup = chrono::NaiveDate::from_ymd_opt(2026, 9, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros();
    let batch = RecordBatch::try_from_iter([
        (
            "customer_id",
            Arc::new(StringArray::from(vec!["C,\"1\"", "C,2"])) as ArrayRef,
        ),
        (
            "email",
            Arc::new(StringArray::from(vec![
                "  Quote.Person@Example.COM ",
                "no-consent@example.com",
            ])),
        ),
        (
            "signup_ts",
            Arc::new(TimestampMicrosecondArray::from(vec![signup, signup]).with_timezone("UTC")),
        ),
        ("country", Arc::new(StringArray::from(vec!["DE", "FR"]))),
        (
            "marketing_opt_in",
            Arc::new(BooleanArray::from(vec![true, false])),
        ),
    ])
    .unwrap();
    let file = std::fs::File::create(dir.join("odd.parquet")).unwrap();
    let mut w =
        datafusion::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn write_pipeline(
    dir: &Path,
    customers: Option<&Path>,
    out: &Path,
    extra: &str,
) -> std::path::PathBuf {
    let p = dir.join("pipeline.toml");
    let d = shop().display();
    let customers = customers
        .map(|c| format!("customers = \"{}/\"\n", c.display()))
        .unwrap_or_default();
    std::fs::write(
        &p,
        format!(
            "[inputs]\norders = \"{d}/orders/\"\nevents = \"{d}/events/\"\n{customers}\
             [output]\nroot = \"{}\"\n{extra}\n",
            out.display()
        ),
    )
    .unwrap();
    p
}

fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join(format!("_runs/{DATE}/manifest.json"))).unwrap())
        .unwrap()
}

/// The export named `name` of the run at DATE.
fn export(out: &Path, name: &str) -> String {
    let dir = out.join(format!("exports/run_date={DATE}"));
    let found: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy().to_string();
            f.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with("-2"))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} in {}: {found:?}", dir.display());
    std::fs::read_to_string(&found[0]).unwrap()
}

#[test]
fn configured_exports_quote_hash_respect_consent_and_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, customers) = (tmp.path().join("out"), tmp.path().join("customers"));
    customers_with_odd_ones(&customers);
    let p = write_pipeline(
        tmp.path(),
        Some(&customers),
        &out,
        r#"
[[exports]]
name = "odd"
where = "customer_id LIKE 'C,%'"
columns = ["customer_id", "email", "segment", "lifecycle_stage"]

[[exports]]
name = "odd_match"
format = "customer_match"
where = "customer_id LIKE 'C,%'"

[[exports]]
name = "decliners"
where = "lifecycle_stage = 'decline' AND churn_risk_score > 0.5"
columns = ["churn_risk_score", "lifecycle_stage"]
"#,
    );
    let run = run_pipeline(&p, DATE, &[]);
    assert!(run.status.success(), "{}", describe(&run));

    // csv: header as configured, RFC 4180 quoting, the address only with consent.
    let odd = export(&out, "odd");
    let lines: Vec<&str> = odd.lines().collect();
    assert_eq!(
        lines[0], "customer_id,email,segment,lifecycle_stage",
        "{odd}"
    );
    assert_eq!(lines.len(), 3, "{odd}");
    assert!(
        lines[1].starts_with(r#""C,""1""",  Quote.Person@Example.COM ,"#),
        "{odd}"
    );
    assert!(lines[1].ends_with(",potential"), "{odd}");
    assert!(
        lines[2].starts_with(r#""C,2",,"#),
        "no consent, no address: {odd}"
    );

    // customer_match: one column, SHA-256 of the trimmed, lower-cased address
    // (`printf %s quote.person@example.com | sha256sum`); the customer without consent is
    // left out and counted.
    assert_eq!(
        export(&out, "odd_match"),
        "Email\n546fdc9920c9a91e424755af4e3e226bf90f09ae87e9fa4247a0afcb8d648489\n"
    );

    // The predicate over customer_segments holds for exactly the rows written;
    // customer_id comes first although the columns left it out.
    let segs = read_table(&out.join(format!("customer_segments/run_date={DATE}")));
    let (ids, stage, churn) = (
        segs.column_by_name("customer_id")
            .unwrap()
            .as_string::<i32>(),
        segs.column_by_name("lifecycle_stage")
            .unwrap()
            .as_string::<i32>(),
        segs.column_by_name("churn_risk_score")
            .unwrap()
            .as_primitive::<Float64Type>(),
    );
    let mut want: Vec<String> = (0..segs.num_rows())
        .filter(|&i| stage.value(i) == "decline" && churn.value(i) > 0.5)
        .map(|i| ids.value(i).to_string())
        .collect();
    want.sort();
    assert!(!want.is_empty(), "the shop has decliners");
    let decliners = export(&out, "decliners");
    let mut rows = decliners.lines();
    assert_eq!(
        rows.next(),
        Some("customer_id,churn_risk_score,lifecycle_stage")
    );
    let got: Vec<String> = rows
        .map(|l| {
            assert!(l.ends_with(",decline"), "{l}");
            l.split(',').next().unwrap().to_string()
        })
        .collect();
    assert_eq!(got, want);

    // The manifest counts what was written; configured exports replace the defaults.
    let m = manifest(&out);
    let records = m["exports"].as_array().unwrap();
    let by_name = |n: &str| records.iter().find(|r| r["name"] == n).unwrap().clone();
    assert_eq!(records.len(), 3, "{:#}", m["exports"]);
    assert_eq!(by_name("odd")["rows"], 2);
    assert_eq!(by_name("odd_match")["rows"], 1);
    assert_eq!(by_name("odd_match")["left_out_without_consent"], 1);
    assert_eq!(by_name("decliners")["rows"], want.len());
    for r in records {
        let text = export(&out, r["name"].as_str().unwrap());
        assert_eq!(r["rows"], text.lines().count() - 1, "{r}");
        assert!(r["file"]
            .as_str()
            .unwrap()
            .starts_with(&format!("exports/run_date={DATE}/")));
    }
}

#[test]
fn default_exports_and_their_limits() {
    let tmp = tempfile::tempdir().unwrap();
    // Without a customers input the default customer-match list is empty, and says why.
    let out = tmp.path().join("out");
    let p = write_pipeline(tmp.path(), None, &out, "");
    let run = run_pipeline(&p, DATE, &[]);
    assert!(run.status.success(), "{}", describe(&run));
    let m = manifest(&out);
    let names: Vec<&str> = m["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["retention", "prospects", "customer_match"]);
    let matched = &m["exports"][2];
    assert_eq!(matched["rows"], 0);
    assert!(
        matched["note"]
            .as_str()
            .unwrap()
            .contains("no customers input"),
        "{matched}"
    );
    assert_eq!(export(&out, "customer_match"), "Email\n");

    // retention: high churn risk and high value; prospects: the fifth of the never-buyers
    // with the lowest churn scores.
    let segs = read_table(&out.join(format!("customer_segments/run_date={DATE}")));
    let col = |n: &str| segs.column_by_name(n).unwrap().as_string::<i32>().clone();
    let (ids, risk, value, stage) = (
        col("customer_id"),
        col("churn_risk"),
        col("value_segment"),
        col("lifecycle_stage"),
    );
    let retention = (0..segs.num_rows())
        .filter(|&i| risk.value(i) == "high" && value.value(i) == "high")
        .count();
    assert_eq!(m["exports"][0]["rows"], retention);
    let churn = segs
        .column_by_name("churn_risk_score")
        .unwrap()
        .as_primitive::<Float64Type>();
    let mut never: Vec<(f64, &str)> = (0..segs.num_rows())
        .filter(|&i| stage.value(i) == "potential")
        .map(|i| (churn.value(i), ids.value(i)))
        .collect();
    never.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
    let mut want: Vec<&str> = never[..never.len() / 5].iter().map(|p| p.1).collect();
    want.sort();
    assert!(!want.is_empty());
    let prospects = export(&out, "prospects");
    let got: Vec<&str> = prospects
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(got, want);

    // A predicate the engine rejects: exit 2 with its message, nothing published.
    let bad_out = tmp.path().join("bad");
    let p = write_pipeline(
        tmp.path(),
        None,
        &bad_out,
        "[[exports]]\nname = \"broken\"\nwhere = \"no_such_column > 1\"\n",
    );
    let run = run_pipeline(&p, DATE, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{}", describe(&run));
    assert!(
        stderr.contains("exports[0]") && stderr.contains("no_such_column"),
        "{stderr}"
    );
    assert!(!bad_out.join(format!("_runs/{DATE}/manifest.json")).exists());

    // Names are checked when the file is read.
    let p = write_pipeline(
        tmp.path(),
        None,
        &bad_out,
        "[[exports]]\nname = \"segment_x\"\n[[exports]]\nname = \"Bad Name\"\n",
    );
    let run = run_pipeline(&p, DATE, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{}", describe(&run));
    assert!(
        stderr.contains("segment_x") && stderr.contains("Bad Name"),
        "{stderr}"
    );
}
