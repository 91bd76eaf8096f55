//! Mixed producers: order files written by different tools disagree on timestamp unit and
//! zone, on Decimal vs Float64 money and on string encodings, carry unknown columns and lack
//! optional ones. One run must read them all, convert every instant to UTC correctly, and
//! reject a file it cannot convert with a message naming the file and the column.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Decimal128Array, DictionaryArray, Float32Array,
    Float64Array, Int32Array, LargeStringArray, RecordBatch, StringArray, StringViewArray,
    TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
    TimestampSecondArray,
};
use datafusion::arrow::compute::{can_cast_types, cast};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int16Type, Int32Type};
use datafusion::parquet::arrow::ArrowWriter;

use crate::common::{describe, read_table, segmenter};

const DATE: &str = "2026-10-31";

/// The run's cut-off: 2026-11-01 00:00:00 UTC (exclusive).
fn cutoff() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(2026, 11, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
}

/// A UTC instant from text `YYYY-MM-DD HH:MM:SS`.
fn utc(text: &str) -> DateTime<Utc> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .and_utc()
}

/// One order as the test knows it: the instant is always UTC; each file encodes it its own way.
#[derive(Debug, Clone)]
struct Order {
    id: String,
    customer: String,
    at: DateTime<Utc>,
    cents: i64,
    status: &'static str,
    discount_cents: i64,
}

/// Which producer writes a customer's orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Producer {
    /// a.parquet: ms zone-less timestamps, Decimal128(12,2) amounts, all columns.
    A,
    /// b.parquet: µs "UTC" timestamps, Float64 amounts, an unknown extra column, no optional columns.
    B,
    /// c.parquet: ns "+02:00" timestamps, Dictionary / Utf8View / LargeUtf8 strings, Float32 discount.
    C,
    /// d.parquet: s "America/New_York" timestamps (a named zone), Decimal128(38,10) amounts,
    /// Utf8View ids, LargeUtf8 status, Int16-keyed dictionary order ids, no channel.
    D,
}

/// A small deterministic generator (no external crate, same data every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 52 customers, 2–6 orders each per producer, over the two years before the run date.
/// Customers 15–20 have orders in both A and B, 33–36 in both B and C, 45–46 in C and D.
/// A few customers get
/// hand-written orders whose expected features are worked out by hand in the tests.
fn orders() -> Vec<(Producer, Order)> {
    let mut rng = Lcg(20261031);
    let mut out = Vec::new();
    let mut seq = BTreeMap::<&str, usize>::new();
    let push = |out: &mut Vec<(Producer, Order)>, p: Producer, o: Order| out.push((p, o));
    let mut next_id = |p: Producer| {
        let tag = match p {
            Producer::A => "a",
            Producer::B => "b",
            Producer::C => "c",
            Producer::D => "d",
        };
        let n = seq.entry(tag).or_default();
        *n += 1;
        format!("{tag}-{n:05}")
    };
    let start = utc("2024-11-05 00:00:00");
    for c in 1..=52u32 {
        let customer = format!("cust-{c:02}");
        let mut producers = Vec::new();
        if c <= 20 {
            producers.push(Producer::A);
        }
        if (15..=36).contains(&c) {
            producers.push(Producer::B);
        }
        if (33..=48).contains(&c) {
            producers.push(Producer::C);
        }
        if c >= 45 {
            producers.push(Producer::D);
        }
        // Hand-written customers: their orders are fixed below.
        if [1, 30, 47, 48, 52].contains(&c) {
            continue;
        }
        // Some customers stopped buying a year ago, some are recent: varied features for k=3.
        let span_days: u64 = if c % 4 == 0 { 360 } else { 725 };
        for &p in &producers {
            let n = 2 + rng.below(5);
            for _ in 0..n {
                let day = rng.below(span_days) as i64;
                let secs = rng.below(86_400) as i64;
                let at = start + chrono::Duration::days(day) + chrono::Duration::seconds(secs);
                let status = match rng.below(10) {
                    0 => "returned",
                    1 => "cancelled",
                    _ => "completed",
                };
                let cents = 500 + rng.below(40_000) as i64;
                let discount_cents = if rng.below(3) == 0 { cents / 10 } else { 0 };
                let id = next_id(p);
                push(
                    &mut out,
                    p,
                    Order {
                        id,
                        customer: customer.clone(),
                        at,
                        cents,
                        status,
                        discount_cents,
                    },
                );
            }
        }
    }
    let fixed: [(Producer, &str, &str, i64, &'static str); 14] = [
        // cust-01, only in A (ms, zone-less, Decimal): completed 45.50 + 100.10 + 19.99;
        // the last completed order is 12 hours before the cut-off.
        (
            Producer::A,
            "cust-01",
            "2025-03-10 09:15:00",
            4550,
            "completed",
        ),
        (
            Producer::A,
            "cust-01",
            "2026-06-15 08:00:00",
            10010,
            "completed",
        ),
        (
            Producer::A,
            "cust-01",
            "2026-08-01 17:45:00",
            3000,
            "returned",
        ),
        (
            Producer::A,
            "cust-01",
            "2026-09-01 11:00:00",
            7000,
            "cancelled",
        ),
        (
            Producer::A,
            "cust-01",
            "2026-10-31 12:00:00",
            1999,
            "completed",
        ),
        // cust-30, only in B (µs, "UTC", Float64): last completed 30 hours before the cut-off.
        (
            Producer::B,
            "cust-30",
            "2025-12-24 10:00:00",
            25000,
            "completed",
        ),
        (
            Producer::B,
            "cust-30",
            "2026-10-30 18:00:00",
            1234,
            "completed",
        ),
        // cust-47, only in C (+02:00): 2026-11-01 01:30 local is 2026-10-31 23:30 UTC — before
        // the cut-off, 0.5 hours before it. Read as wall-clock time it would be after it.
        (
            Producer::C,
            "cust-47",
            "2026-02-02 02:02:00",
            9999,
            "completed",
        ),
        (
            Producer::C,
            "cust-47",
            "2026-10-31 23:30:00",
            4200,
            "completed",
        ),
        // cust-48, only in C: 2026-10-31 23:30 local (+02:00) is 21:30 UTC, 2.5 hours before.
        (
            Producer::C,
            "cust-48",
            "2026-01-10 10:00:00",
            8000,
            "completed",
        ),
        (
            Producer::C,
            "cust-48",
            "2026-10-31 21:30:00",
            1234,
            "completed",
        ),
        (
            Producer::C,
            "cust-48",
            "2026-10-31 22:00:00",
            5000,
            "cancelled",
        ),
        // cust-52, only in D (seconds, America/New_York, EDT = UTC-4 on that day):
        // 2026-10-31 19:00 local is 23:00 UTC, 1 hour before the cut-off; 33.33 + 7.77.
        (
            Producer::D,
            "cust-52",
            "2026-03-01 15:00:00",
            3333,
            "completed",
        ),
        (
            Producer::D,
            "cust-52",
            "2026-10-31 23:00:00",
            777,
            "completed",
        ),
    ];
    for (p, customer, at, cents, status) in fixed {
        let id = next_id(p);
        out.push((
            p,
            Order {
                id,
                customer: customer.into(),
                at: utc(at),
                cents,
                status,
                discount_cents: 0,
            },
        ));
    }
    out
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn col<A: Array + 'static>(a: A) -> ArrayRef {
    Arc::new(a)
}

/// Producer A: order_ts Timestamp(ms, None), amount Decimal128(12,2), every column.
fn batch_a(rows: &[&Order]) -> RecordBatch {
    RecordBatch::try_from_iter([
        (
            "order_id",
            col(StringArray::from_iter_values(
                rows.iter().map(|o| o.id.as_str()),
            )),
        ),
        (
            "customer_id",
            col(StringArray::from_iter_values(
                rows.iter().map(|o| o.customer.as_str()),
            )),
        ),
        (
            "order_ts",
            col(TimestampMillisecondArray::from_iter_values(
                rows.iter().map(|o| o.at.timestamp_millis()),
            )),
        ),
        (
            "amount",
            col(
                Decimal128Array::from_iter_values(rows.iter().map(|o| o.cents as i128))
                    .with_precision_and_scale(12, 2)
                    .unwrap(),
            ),
        ),
        (
            "status",
            col(StringArray::from_iter_values(rows.iter().map(|o| o.status))),
        ),
        (
            "discount_amount",
            col(Float64Array::from_iter_values(
                rows.iter().map(|o| o.discount_cents as f64 / 100.0),
            )),
        ),
        (
            "channel",
            col(StringArray::from_iter_values(rows.iter().map(|_| "web"))),
        ),
    ])
    .unwrap()
}

/// Producer B: order_ts Timestamp(µs, "UTC"), amount Float64, an extra column first, no
/// discount_amount / channel.
fn batch_b(rows: &[&Order]) -> RecordBatch {
    RecordBatch::try_from_iter([
        (
            "warehouse_code",
            col(Int32Array::from_iter_values(
                rows.iter().enumerate().map(|(i, _)| 7000 + i as i32),
            )),
        ),
        (
            "order_id",
            col(StringArray::from_iter_values(
                rows.iter().map(|o| o.id.as_str()),
            )),
        ),
        (
            "customer_id",
            col(StringArray::from_iter_values(
                rows.iter().map(|o| o.customer.as_str()),
            )),
        ),
        (
            "order_ts",
            col(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|o| micros(o.at)))
                    .with_timezone("UTC"),
            ),
        ),
        (
            "amount",
            col(Float64Array::from_iter_values(
                rows.iter().map(|o| o.cents as f64 / 100.0),
            )),
        ),
        (
            "status",
            col(StringArray::from_iter_values(rows.iter().map(|o| o.status))),
        ),
    ])
    .unwrap()
}

/// Producer C: order_ts Timestamp(ns, "+02:00") (the stored value is the UTC instant, as
/// Arrow and Parquet define it), customer_id dictionary-encoded, status/channel Utf8View,
/// order_id LargeUtf8, amount Float64, discount Float32.
fn batch_c(rows: &[&Order]) -> RecordBatch {
    let customers: DictionaryArray<Int32Type> = rows.iter().map(|o| o.customer.as_str()).collect();
    RecordBatch::try_from_iter([
        (
            "order_id",
            col(LargeStringArray::from_iter_values(
                rows.iter().map(|o| o.id.as_str()),
            )),
        ),
        ("customer_id", col(customers)),
        (
            "order_ts",
            col(TimestampNanosecondArray::from_iter_values(
                rows.iter().map(|o| o.at.timestamp_nanos_opt().unwrap()),
            )
            .with_timezone("+02:00")),
        ),
        (
            "amount",
            col(Float64Array::from_iter_values(
                rows.iter().map(|o| o.cents as f64 / 100.0),
            )),
        ),
        (
            "status",
            col(StringViewArray::from_iter_values(
                rows.iter().map(|o| o.status),
            )),
        ),
        (
            "discount_amount",
            col(Float32Array::from_iter_values(
                rows.iter().map(|o| o.discount_cents as f32 / 100.0),
            )),
        ),
        (
            "channel",
            col(StringViewArray::from_iter_values(
                rows.iter().map(|_| "app"),
            )),
        ),
    ])
    .unwrap()
}

/// Producer D: order_ts Timestamp(s, "America/New_York"), amount Decimal128(38,10),
/// customer_id Utf8View, status LargeUtf8, order_id dictionary with Int16 keys, no channel.
fn batch_d(rows: &[&Order]) -> RecordBatch {
    let ids: DictionaryArray<Int16Type> = rows.iter().map(|o| o.id.as_str()).collect();
    RecordBatch::try_from_iter([
        ("order_id", col(ids)),
        (
            "customer_id",
            col(StringViewArray::from_iter_values(
                rows.iter().map(|o| o.customer.as_str()),
            )),
        ),
        (
            "order_ts",
            col(
                TimestampSecondArray::from_iter_values(rows.iter().map(|o| o.at.timestamp()))
                    .with_timezone("America/New_York"),
            ),
        ),
        (
            "amount",
            col(Decimal128Array::from_iter_values(
                rows.iter().map(|o| o.cents as i128 * 100_000_000),
            )
            .with_precision_and_scale(38, 10)
            .unwrap()),
        ),
        (
            "status",
            col(LargeStringArray::from_iter_values(
                rows.iter().map(|o| o.status),
            )),
        ),
        (
            "discount_amount",
            col(Float64Array::from_iter_values(
                rows.iter().map(|o| o.discount_cents as f64 / 100.0),
            )),
        ),
    ])
    .unwrap()
}

/// Every order with the producer that writes it.
type Orders = Vec<(Producer, Order)>;

/// Writes orders/a.parquet, b.parquet, c.parquet, d.parquet under `data`; returns every order
/// and the number of rows per file.
fn write_mixed_shop(data: &Path) -> (Orders, Vec<(PathBuf, usize)>) {
    let all = orders();
    let mut files = Vec::new();
    for (p, name, make) in [
        (
            Producer::A,
            "a.parquet",
            batch_a as fn(&[&Order]) -> RecordBatch,
        ),
        (Producer::B, "b.parquet", batch_b),
        (Producer::C, "c.parquet", batch_c),
        (Producer::D, "d.parquet", batch_d),
    ] {
        let rows: Vec<&Order> = all
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| o)
            .collect();
        let batch = make(&rows);
        let path = data.join("orders").join(name);
        write_parquet(&path, &batch);
        files.push((path, rows.len()));
    }
    (all, files)
}

/// A pipeline with orders only (events and customers are optional and omitted).
fn orders_only_pipeline(dir: &Path, orders: &Path, out: &Path) -> PathBuf {
    let p = dir.join("pipeline.toml");
    std::fs::write(
        &p,
        format!(
            "[inputs]\norders = \"{}/\"\n\n[output]\nroot = \"{}/\"\n",
            orders.display(),
            out.display()
        ),
    )
    .unwrap();
    p
}

fn run_k3(pipeline: &Path) -> std::process::Output {
    segmenter(&[
        "run",
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--date",
        DATE,
        "--set",
        "clustering.k=3",
    ])
}

/// Expected order features per customer, computed here from the orders as written.
#[derive(Debug, Default, Clone, Copy)]
struct Expected {
    frequency: i64,
    monetary: f64,
    last_completed: Option<DateTime<Utc>>,
}

fn expected(all: &[(Producer, Order)]) -> BTreeMap<String, Expected> {
    let mut out: BTreeMap<String, Expected> = BTreeMap::new();
    for (_, o) in all {
        let e = out.entry(o.customer.clone()).or_default();
        assert!(
            o.at < cutoff(),
            "test data must lie before the cut-off: {o:?}"
        );
        if o.status == "completed" {
            e.frequency += 1;
            e.monetary += o.cents as f64 / 100.0;
            e.last_completed = e.last_completed.max(Some(o.at));
        }
    }
    out
}

fn recency_days(last: DateTime<Utc>) -> f64 {
    (cutoff() - last).num_milliseconds() as f64 / 86_400_000.0
}

#[test]
fn mixed_producers_are_read_as_one_table_in_utc() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("out");
    let (all, files) = write_mixed_shop(&data);
    let total_rows: usize = files.iter().map(|(_, n)| n).sum();
    let p = orders_only_pipeline(tmp.path(), &data.join("orders"), &out);

    let run = run_k3(&p);
    let ctx = describe(&run);
    assert!(run.status.success(), "{ctx}");

    // The manifest counts every row of every producer.
    let manifest_path = out.join(format!("_runs/{DATE}/manifest.json"));
    let text = std::fs::read_to_string(&manifest_path)
        .unwrap_or_else(|e| panic!("{}: {e}\n{ctx}", manifest_path.display()));
    let manifest: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("manifest: {e}\n{text}"));
    let orders = &manifest["inputs"]["orders"];
    assert_eq!(
        orders["files"].as_u64(),
        Some(files.len() as u64),
        "inputs.orders.files\n{orders:#}\n{ctx}"
    );
    assert_eq!(
        orders["rows_in_files"].as_u64(),
        Some(total_rows as u64),
        "inputs.orders.rows_in_files\n{orders:#}\n{ctx}"
    );
    assert_eq!(
        orders["rows_after_cutoff"].as_u64(),
        Some(0),
        "no row is after the cut-off in UTC\n{orders:#}\n{ctx}"
    );
    assert_eq!(
        orders["rows_used"].as_u64(),
        Some(total_rows as u64),
        "inputs.orders.rows_used\n{orders:#}\n{ctx}"
    );
    assert_eq!(
        orders["rejected"],
        serde_json::json!({}),
        "nothing rejected\n{orders:#}\n{ctx}"
    );
    assert!(
        manifest["inputs"]["events"].is_null(),
        "events not configured: {:#}\n{ctx}",
        manifest["inputs"]
    );
    assert_eq!(
        manifest["clustering"]["k"].as_u64(),
        Some(3),
        "--set clustering.k=3\n{ctx}"
    );

    // One row per distinct customer across all files.
    let expect = expected(&all);
    let segs = read_table(&out.join(format!("customer_segments/run_date={DATE}")));
    let ids = segs
        .column_by_name("customer_id")
        .expect("customer_id")
        .as_string::<i32>();
    let got_ids: BTreeSet<String> = ids
        .iter()
        .map(|v| v.expect("null customer_id").to_string())
        .collect();
    assert_eq!(
        got_ids.len(),
        segs.num_rows(),
        "duplicate customer rows\n{ctx}"
    );
    assert_eq!(
        got_ids,
        expect.keys().cloned().collect::<BTreeSet<_>>(),
        "customers\n{ctx}"
    );
    assert_eq!(segs.num_rows(), 52, "customers\n{ctx}");
    assert_eq!(
        manifest["customers"].as_u64(),
        Some(52),
        "manifest customers\n{ctx}"
    );

    let f64_col = |name: &str| -> Vec<Option<f64>> {
        let c = cast(
            segs.column_by_name(name)
                .unwrap_or_else(|| panic!("column {name}")),
            &DataType::Float64,
        )
        .unwrap();
        c.as_primitive::<Float64Type>().iter().collect()
    };
    let (monetary, recency, frequency) = (
        f64_col("monetary"),
        f64_col("recency_days"),
        f64_col("frequency"),
    );
    let by_id: BTreeMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, v)| (v.unwrap(), i))
        .collect();
    let row = |id: &str| by_id[id];

    // Hand-computed values first (these do not depend on this file's own arithmetic).
    let close = |a: Option<f64>, b: f64, what: &str| {
        let a = a.unwrap_or_else(|| panic!("{what} is null\n{ctx}"));
        assert!((a - b).abs() < 1e-6, "{what}: got {a}, expected {b}\n{ctx}");
    };
    // cust-01, file a (ms, zone-less = UTC, Decimal128): 45.50 + 100.10 + 19.99; last
    // completed order 2026-10-31 12:00 → 0.5 days before 2026-11-01 00:00 UTC.
    close(
        monetary[row("cust-01")],
        165.59,
        "cust-01 monetary (Decimal amounts)",
    );
    close(
        recency[row("cust-01")],
        0.5,
        "cust-01 recency_days (ms, zone-less)",
    );
    close(frequency[row("cust-01")], 3.0, "cust-01 frequency");
    // cust-30, file b (µs, UTC, Float64): 250.00 + 12.34; last 2026-10-30 18:00 UTC → 1.25 days.
    close(
        monetary[row("cust-30")],
        262.34,
        "cust-30 monetary (Float64 amounts)",
    );
    close(
        recency[row("cust-30")],
        1.25,
        "cust-30 recency_days (µs, UTC)",
    );
    // cust-48, file c: 2026-10-31T23:30:00+02:00 = 21:30 UTC → 2.5/24 days.
    close(
        recency[row("cust-48")],
        2.5 / 24.0,
        "cust-48 recency_days (ns, +02:00)",
    );
    close(monetary[row("cust-48")], 92.34, "cust-48 monetary");
    // cust-52, file d: 2026-10-31T19:00:00-04:00 (America/New_York) = 23:00 UTC → 1/24 days;
    // Decimal128(38,10) amounts 33.33 + 7.77.
    close(
        recency[row("cust-52")],
        1.0 / 24.0,
        "cust-52 recency_days (s, America/New_York)",
    );
    close(
        monetary[row("cust-52")],
        41.10,
        "cust-52 monetary (Decimal128(38,10))",
    );
    // cust-47, file c: 2026-11-01T01:30:00+02:00 = 2026-10-31 23:30 UTC: seen, 0.5/24 days.
    close(
        recency[row("cust-47")],
        0.5 / 24.0,
        "cust-47 recency_days (local date after the cut-off, UTC before)",
    );
    close(monetary[row("cust-47")], 141.99, "cust-47 monetary");
    close(frequency[row("cust-47")], 2.0, "cust-47 frequency");

    // Then every customer against the orders as written (customers 15–20 and 33–36 have
    // orders from two producers each).
    for (id, e) in &expect {
        let i = row(id);
        close(monetary[i], e.monetary, &format!("{id} monetary"));
        close(frequency[i], e.frequency as f64, &format!("{id} frequency"));
        match e.last_completed {
            Some(t) => close(recency[i], recency_days(t), &format!("{id} recency_days")),
            None => assert!(
                recency[i].is_none_or(f64::is_nan),
                "{id}: no completed order, recency {:?}\n{ctx}",
                recency[i]
            ),
        }
    }
}

/// A good file next to a bad one: the error must name the bad file and the column.
fn rejected_run(bad_name: &str, bad: RecordBatch, column: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("out");
    let all = orders();
    let good: Vec<&Order> = all
        .iter()
        .filter(|(p, _)| *p == Producer::A)
        .map(|(_, o)| o)
        .collect();
    write_parquet(&data.join("orders/good.parquet"), &batch_a(&good));
    let bad_path = data.join("orders").join(bad_name);
    write_parquet(&bad_path, &bad);
    let p = orders_only_pipeline(tmp.path(), &data.join("orders"), &out);

    let run = run_k3(&p);
    let ctx = describe(&run);
    assert_eq!(
        run.status.code(),
        Some(3),
        "input rejected must exit 3\n{ctx}"
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&bad_path.display().to_string()),
        "stderr must name {}\n{ctx}",
        bad_path.display()
    );
    assert!(
        !stderr.contains("good.parquet"),
        "stderr must not blame the good file\n{ctx}"
    );
    assert!(
        stderr.contains(&format!("`{column}`")),
        "stderr must name the column `{column}`\n{ctx}"
    );
    assert!(
        !out.join(format!("_runs/{DATE}/manifest.json")).exists(),
        "a rejected run must not publish a manifest\n{ctx}"
    );
}

#[test]
fn amount_of_an_uncastable_type_exits_3_naming_file_and_column() {
    let rows = [
        ("x-1", "cust-01", "2026-05-01 10:00:00", b"12.50".as_slice()),
        ("x-2", "cust-02", "2026-06-01 10:00:00", b"\x00\x01"),
    ];
    assert!(
        !can_cast_types(&DataType::Binary, &DataType::Float64),
        "precondition: Binary cannot be cast to Float64"
    );
    let bad = RecordBatch::try_from_iter([
        (
            "order_id",
            col(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
        ),
        (
            "customer_id",
            col(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
        ),
        (
            "order_ts",
            col(TimestampMicrosecondArray::from_iter_values(
                rows.iter().map(|r| micros(utc(r.2))),
            )),
        ),
        (
            "amount",
            col(BinaryArray::from_iter_values(rows.iter().map(|r| r.3))),
        ),
        (
            "status",
            col(StringArray::from_iter_values(
                rows.iter().map(|_| "completed"),
            )),
        ),
    ])
    .unwrap();
    rejected_run("zz_binary_amount.parquet", bad, "amount");
}

#[test]
fn file_without_order_ts_exits_3_naming_file_and_column() {
    let bad = RecordBatch::try_from_iter([
        ("order_id", col(StringArray::from(vec!["y-1", "y-2"]))),
        (
            "customer_id",
            col(StringArray::from(vec!["cust-03", "cust-04"])),
        ),
        // A differently named timestamp must not be taken for order_ts.
        (
            "order_time",
            col(TimestampMicrosecondArray::from(vec![
                micros(utc(
                    "2026-05-01 10:00:00"
                ));
                2
            ])),
        ),
        ("amount", col(Float64Array::from(vec![10.0, 20.0]))),
        (
            "status",
            col(StringArray::from(vec!["completed", "completed"])),
        ),
    ])
    .unwrap();
    rejected_run("zz_no_order_ts.parquet", bad, "order_ts");
}

/// Events from two producers: ms zone-less (UTC) and ns "+02:00" with a dictionary-encoded
/// event_type, in a Hive `dt=` directory. The cut-off applies to the UTC instant in both.
#[test]
fn mixed_event_producers_are_cut_at_the_utc_instant() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("out");
    let all = orders();
    let rows_a: Vec<&Order> = all
        .iter()
        .filter(|(p, _)| *p == Producer::A)
        .map(|(_, o)| o)
        .collect();
    write_parquet(&data.join("orders/a.parquet"), &batch_a(&rows_a));

    // (customer, session, UTC instant, type)
    type Ev = (
        Option<&'static str>,
        &'static str,
        &'static str,
        &'static str,
    );
    let zoneless: &[Ev] = &[
        (Some("cust-02"), "s-2a", "2026-10-20 09:00:00", "page_view"),
        (
            Some("cust-02"),
            "s-2b",
            "2026-10-31 11:50:00",
            "product_view",
        ),
        (
            Some("cust-02"),
            "s-2b",
            "2026-10-31 12:00:00",
            "add_to_cart",
        ),
        // Exactly at the cut-off: not seen.
        (Some("cust-02"), "s-2c", "2026-11-01 00:00:00", "page_view"),
        (None, "s-anon", "2026-10-30 08:00:00", "page_view"),
    ];
    let plus_two: &[Ev] = &[
        // 2026-10-31 22:30 local = 20:30 UTC.
        (Some("cust-01"), "s-1a", "2026-10-31 20:30:00", "page_view"),
        // 2026-11-01 01:30 local = 2026-10-31 23:30 UTC: seen, 0.5 h before the cut-off.
        (
            Some("cust-01"),
            "s-1a",
            "2026-10-31 23:30:00",
            "add_to_cart",
        ),
        // 2026-11-01 02:30 local = 00:30 UTC: after the cut-off.
        (Some("cust-01"), "s-1b", "2026-11-01 00:30:00", "page_view"),
        // An identified visitor without orders is a known customer.
        (Some("visitor-9"), "s-9", "2026-09-15 10:00:00", "search"),
    ];
    let zoneless_batch = RecordBatch::try_from_iter([
        (
            "event_id",
            col(StringArray::from_iter_values(
                (0..zoneless.len()).map(|i| format!("e-z{i}")),
            )),
        ),
        (
            "customer_id",
            col(StringArray::from_iter(zoneless.iter().map(|e| e.0))),
        ),
        (
            "session_id",
            col(StringArray::from_iter_values(zoneless.iter().map(|e| e.1))),
        ),
        (
            "event_ts",
            col(TimestampMillisecondArray::from_iter_values(
                zoneless.iter().map(|e| utc(e.2).timestamp_millis()),
            )),
        ),
        (
            "event_type",
            col(StringArray::from_iter_values(zoneless.iter().map(|e| e.3))),
        ),
    ])
    .unwrap();
    let types: DictionaryArray<Int32Type> = plus_two.iter().map(|e| e.3).collect();
    let plus_two_batch = RecordBatch::try_from_iter([
        (
            "customer_id",
            col(StringViewArray::from_iter(plus_two.iter().map(|e| e.0))),
        ),
        (
            "session_id",
            col(StringArray::from_iter_values(plus_two.iter().map(|e| e.1))),
        ),
        (
            "event_ts",
            col(TimestampNanosecondArray::from_iter_values(
                plus_two
                    .iter()
                    .map(|e| utc(e.2).timestamp_nanos_opt().unwrap()),
            )
            .with_timezone("+02:00")),
        ),
        ("event_type", col(types)),
    ])
    .unwrap();
    write_parquet(
        &data.join("events/dt=2026-10/zoneless.parquet"),
        &zoneless_batch,
    );
    write_parquet(
        &data.join("events/dt=2026-11/plus_two.parquet"),
        &plus_two_batch,
    );

    let p = tmp.path().join("pipeline.toml");
    std::fs::write(
        &p,
        format!(
            "[inputs]\norders = \"{}/\"\nevents = \"{}/\"\n\n[output]\nroot = \"{}/\"\n",
            data.join("orders").display(),
            data.join("events").display(),
            out.display()
        ),
    )
    .unwrap();
    let run = run_k3(&p);
    let ctx = describe(&run);
    assert!(run.status.success(), "{ctx}");

    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join(format!("_runs/{DATE}/manifest.json"))).unwrap(),
    )
    .unwrap();
    let events = &manifest["inputs"]["events"];
    let total = (zoneless.len() + plus_two.len()) as u64;
    assert_eq!(events["files"].as_u64(), Some(2), "{events:#}\n{ctx}");
    assert_eq!(
        events["rows_in_files"].as_u64(),
        Some(total),
        "{events:#}\n{ctx}"
    );
    assert_eq!(
        events["rows_after_cutoff"].as_u64(),
        Some(2),
        "one event per file is at/after 2026-11-01 00:00 UTC\n{events:#}\n{ctx}"
    );
    assert_eq!(
        events["rejected"],
        serde_json::json!({"anonymous": 1}),
        "{events:#}\n{ctx}"
    );
    assert_eq!(
        events["rows_used"].as_u64(),
        Some(total - 3),
        "{events:#}\n{ctx}"
    );

    let segs = read_table(&out.join(format!("customer_segments/run_date={DATE}")));
    let ids = segs
        .column_by_name("customer_id")
        .unwrap()
        .as_string::<i32>();
    let by_id: BTreeMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, v)| (v.unwrap(), i))
        .collect();
    let customers_a: BTreeSet<&str> = rows_a.iter().map(|o| o.customer.as_str()).collect();
    assert_eq!(
        segs.num_rows(),
        customers_a.len() + 1,
        "order customers plus the identified visitor\n{ctx}"
    );
    assert!(
        by_id.contains_key("visitor-9"),
        "visitor-9 is known through its events\n{ctx}"
    );
    let num = |name: &str, id: &str| -> f64 {
        let c = cast(segs.column_by_name(name).unwrap(), &DataType::Float64).unwrap();
        let c = c.as_primitive::<Float64Type>();
        let i = by_id[id];
        assert!(!c.is_null(i), "{name} of {id} is null\n{ctx}");
        c.value(i)
    };
    let close = |got: f64, want: f64, what: &str| {
        assert!(
            (got - want).abs() < 1e-6,
            "{what}: got {got}, expected {want}\n{ctx}"
        );
    };
    // Last event before the cut-off: 23:30 UTC (01:30 local, +02:00).
    close(
        num("days_since_last_visit", "cust-01"),
        0.5 / 24.0,
        "cust-01 days_since_last_visit",
    );
    close(
        num("sessions_total", "cust-01"),
        1.0,
        "cust-01 sessions (s-1b is after the cut-off)",
    );
    close(
        num("add_to_cart_90d", "cust-01"),
        1.0,
        "cust-01 add_to_cart_90d",
    );
    // Zone-less: last event 2026-10-31 12:00 = 0.5 days; s-2c is at the cut-off, not seen.
    close(
        num("days_since_last_visit", "cust-02"),
        0.5,
        "cust-02 days_since_last_visit",
    );
    close(num("sessions_total", "cust-02"), 2.0, "cust-02 sessions");
    close(
        num("days_since_last_visit", "visitor-9"),
        47.0 - 10.0 / 24.0,
        "visitor-9 days_since_last_visit",
    );
    close(
        num("frequency", "visitor-9"),
        0.0,
        "visitor-9 has no orders",
    );
}
