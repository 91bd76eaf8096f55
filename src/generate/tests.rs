use super::world::{DAY_US, EVENT_TYPES, FUTURE_DAYS, PRE_WINDOW_SIGNUP_DAYS, WINDOW_DAYS};
use super::write::ts_type;
use super::*;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef, TimestampMicrosecondType};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::{HashMap, HashSet};

fn options(dir: &Path, customers: usize, threads: usize) -> GenerateOptions {
    let mut o = GenerateOptions::new(dir, customers);
    o.threads = threads;
    o
}

/// All files under `root`, relative, sorted.
fn files_under(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn read(path: &Path) -> (SchemaRef, Vec<RecordBatch>) {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    let schema = builder.schema().clone();
    let batches = builder.build().unwrap().map(|b| b.unwrap()).collect();
    (schema, batches)
}

/// All batches of the Parquet files under `out/sub`, with their relative paths.
fn read_all(out: &Path, sub: &str) -> Vec<(PathBuf, SchemaRef, Vec<RecordBatch>)> {
    files_under(&out.join(sub))
        .into_iter()
        .map(|rel| {
            let (schema, batches) = read(&out.join(sub).join(&rel));
            (rel, schema, batches)
        })
        .collect()
}

fn fields(schema: &Schema) -> Vec<(String, DataType, bool)> {
    schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
        .collect()
}

fn strings(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let col = batch.column_by_name(name).unwrap().as_string::<i32>();
    (0..col.len())
        .map(|i| col.is_valid(i).then(|| col.value(i).to_string()))
        .collect()
}

fn times(batch: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    let col = batch
        .column_by_name(name)
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    (0..col.len())
        .map(|i| col.is_valid(i).then(|| col.value(i)))
        .collect()
}

fn floats(batch: &RecordBatch, name: &str) -> Vec<f64> {
    batch
        .column_by_name(name)
        .unwrap()
        .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
        .values()
        .to_vec()
}

fn end_us() -> i64 {
    NaiveDate::from_ymd_opt(2026, 11, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros()
}

#[test]
fn same_options_give_identical_bytes_whatever_the_threads() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let sa = generate_chunked(&options(a.path(), 700, 1), 250).unwrap();
    let sb = generate_chunked(&options(b.path(), 700, 2), 250).unwrap();
    assert_eq!(
        (
            sa.orders,
            sa.events,
            sa.anonymous_events,
            sa.future_orders,
            sa.files
        ),
        (
            sb.orders,
            sb.events,
            sb.anonymous_events,
            sb.future_orders,
            sb.files
        )
    );
    let files = files_under(a.path());
    assert_eq!(files, files_under(b.path()));
    assert_eq!(files.len(), sa.files);
    assert!(files.contains(&PathBuf::from("orders/part-00002.parquet")));
    for f in &files {
        let ba = fs::read(a.path().join(f)).unwrap();
        let bb = fs::read(b.path().join(f)).unwrap();
        assert!(ba == bb, "{} differs between 1 and 2 threads", f.display());
    }

    // Another seed gives other data.
    let mut other = options(c.path(), 700, 2);
    other.seed = 7;
    generate_chunked(&other, 250).unwrap();
    let f = Path::new("orders/part-00000.parquet");
    assert_ne!(
        fs::read(a.path().join(f)).unwrap(),
        fs::read(c.path().join(f)).unwrap()
    );

    // Regenerating into the same directory replaces the earlier output.
    fs::write(a.path().join("keep.txt"), "x").unwrap();
    generate_chunked(&options(a.path(), 300, 2), 250).unwrap();
    assert!(a.path().join("keep.txt").exists());
    assert!(!a.path().join("orders/part-00002.parquet").exists());
    assert!(a.path().join("orders/part-00001.parquet").exists());
}

#[test]
fn invalid_options_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = generate(&options(dir.path(), 0, 1)).unwrap_err();
    assert!(matches!(err, GenerateError::InvalidOptions(_)), "{err}");
}

#[test]
fn files_follow_the_contract_schemas_and_windows() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let opts = options(out, 500, 2);
    let summary = generate_chunked(&opts, 200).unwrap();
    let end = end_us();
    let start = end - WINDOW_DAYS * DAY_US;
    let future_end = end + FUTURE_DAYS * DAY_US;
    let ts = ts_type();
    let utf8 = DataType::Utf8;

    let order_fields = vec![
        ("order_id".to_string(), utf8.clone(), false),
        ("customer_id".to_string(), utf8.clone(), false),
        ("order_ts".to_string(), ts.clone(), false),
        ("amount".to_string(), DataType::Float64, false),
        ("status".to_string(), utf8.clone(), false),
        ("discount_amount".to_string(), DataType::Float64, false),
        ("channel".to_string(), utf8.clone(), false),
    ];
    let mut order_ids = HashSet::new();
    let mut n_orders = 0u64;
    let mut n_future = 0u64;
    for (sub, lo, hi) in [
        ("orders", start, end),
        ("truth/future_orders", end, future_end),
    ] {
        let files = read_all(out, sub);
        assert_eq!(files.len(), 3, "{sub}");
        for (rel, schema, batches) in files {
            assert_eq!(fields(&schema), order_fields, "{sub}/{}", rel.display());
            let mut last: Option<(String, i64)> = None;
            for b in &batches {
                let ids = strings(b, "order_id");
                let customers = strings(b, "customer_id");
                let t = times(b, "order_ts");
                let amount = floats(b, "amount");
                let discount = floats(b, "discount_amount");
                let status = strings(b, "status");
                let channel = strings(b, "channel");
                for i in 0..b.num_rows() {
                    assert!(
                        order_ids.insert(ids[i].clone().unwrap()),
                        "duplicate order id"
                    );
                    let t = t[i].unwrap();
                    assert!(
                        t >= lo && t < hi,
                        "{sub}: order_ts {t} outside [{lo}, {hi})"
                    );
                    assert!(amount[i] >= 0.0);
                    assert!(((amount[i] * 100.0).round() - amount[i] * 100.0).abs() < 1e-6);
                    assert!(discount[i] >= 0.0 && discount[i] <= amount[i] * 0.4 + 0.01);
                    let st = status[i].as_deref().unwrap();
                    assert!(["completed", "returned", "cancelled"].contains(&st));
                    let ch = channel[i].as_deref().unwrap();
                    assert!(ch == "web" || ch == "app");
                    let key = (customers[i].clone().unwrap(), t);
                    if let Some(prev) = &last {
                        assert!(*prev <= key, "orders not sorted by (customer_id, order_ts)");
                    }
                    last = Some(key);
                }
                if sub == "orders" {
                    n_orders += b.num_rows() as u64;
                } else {
                    n_future += b.num_rows() as u64;
                }
            }
        }
    }
    assert_eq!(
        (n_orders, n_future),
        (summary.orders, summary.future_orders)
    );
    assert!(n_orders > 0 && n_future > 0);

    let event_fields = vec![
        ("event_id".to_string(), utf8.clone(), false),
        ("customer_id".to_string(), utf8.clone(), true),
        ("session_id".to_string(), utf8.clone(), false),
        ("event_ts".to_string(), ts.clone(), false),
        ("event_type".to_string(), utf8.clone(), false),
    ];
    let mut event_ids = HashSet::new();
    let mut months = HashSet::new();
    let (mut n_events, mut n_anon) = (0u64, 0u64);
    for (rel, schema, batches) in read_all(out, "events") {
        assert_eq!(fields(&schema), event_fields, "{}", rel.display());
        let dt = rel.parent().unwrap().to_str().unwrap().to_string();
        assert!(dt.starts_with("dt=") && dt.len() == 10, "{dt}");
        months.insert(dt.clone());
        for b in &batches {
            let ids = strings(b, "event_id");
            let customers = strings(b, "customer_id");
            let t = times(b, "event_ts");
            let ty = strings(b, "event_type");
            for i in 0..b.num_rows() {
                assert!(
                    event_ids.insert(ids[i].clone().unwrap()),
                    "duplicate event id"
                );
                let t = t[i].unwrap();
                assert!(t >= start && t < end, "event_ts {t} outside the window");
                let month = chrono::DateTime::from_timestamp_micros(t)
                    .unwrap()
                    .format("dt=%Y-%m")
                    .to_string();
                assert_eq!(month, dt, "event in the wrong partition");
                assert!(EVENT_TYPES.contains(&ty[i].as_deref().unwrap()));
                if customers[i].is_none() {
                    n_anon += 1;
                }
            }
            n_events += b.num_rows() as u64;
        }
    }
    assert_eq!(months.len(), 24);
    assert_eq!(
        (n_events, n_anon),
        (summary.events, summary.anonymous_events)
    );

    let customer_fields = vec![
        ("customer_id".to_string(), utf8.clone(), false),
        ("email".to_string(), utf8.clone(), true),
        ("signup_ts".to_string(), ts.clone(), false),
        ("country".to_string(), utf8.clone(), false),
        ("marketing_opt_in".to_string(), DataType::Boolean, false),
    ];
    let mut customer_ids = Vec::new();
    for (_, schema, batches) in read_all(out, "customers") {
        assert_eq!(fields(&schema), customer_fields);
        for b in &batches {
            let signup = times(b, "signup_ts");
            for (id, s) in strings(b, "customer_id").into_iter().zip(signup) {
                customer_ids.push(id.unwrap());
                let s = s.unwrap();
                assert!(s < end && s >= start - (PRE_WINDOW_SIGNUP_DAYS + 1) * DAY_US);
            }
        }
    }
    let expected: Vec<String> = (1..=500).map(|i| format!("C{i:07}")).collect();
    assert_eq!(customer_ids, expected);

    let (schema, batches) = read(&out.join("truth/customers.parquet"));
    assert_eq!(
        fields(&schema),
        vec![
            ("customer_id".to_string(), utf8.clone(), false),
            ("planted_type".to_string(), utf8.clone(), false),
            ("alive_at_end".to_string(), DataType::Boolean, false),
            ("dropout_ts".to_string(), ts.clone(), true),
            (
                "purchase_rate_per_year".to_string(),
                DataType::Float64,
                false
            ),
        ]
    );
    let truth_ids: Vec<String> = batches
        .iter()
        .flat_map(|b| strings(b, "customer_id"))
        .map(Option::unwrap)
        .collect();
    assert_eq!(truth_ids, expected);
    for b in &batches {
        for t in strings(b, "planted_type") {
            assert!(PLANTED_TYPES.contains(&t.unwrap().as_str()));
        }
    }
    assert_eq!(summary.customers, 500);
    assert_eq!(summary.files, files_under(out).len());
}

#[test]
fn other_end_dates_shift_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), 150, 2);
    opts.end_date = NaiveDate::from_ymd_opt(2024, 3, 15).unwrap();
    let summary = generate(&opts).unwrap();
    let end = NaiveDate::from_ymd_opt(2024, 3, 16)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros();
    let start = end - WINDOW_DAYS * DAY_US;
    let events = read_all(dir.path(), "events");
    let months: HashSet<String> = events
        .iter()
        .map(|(rel, _, _)| rel.parent().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(months.len(), 25, "{months:?}");
    assert!(months.contains("dt=2022-03") && months.contains("dt=2024-03"));
    for (_, _, batches) in events {
        for b in &batches {
            assert!(times(b, "event_ts")
                .into_iter()
                .all(|t| (start..end).contains(&t.unwrap())));
        }
    }
    for (_, _, batches) in read_all(dir.path(), "orders") {
        for b in &batches {
            assert!(times(b, "order_ts")
                .into_iter()
                .all(|t| (start..end).contains(&t.unwrap())));
        }
    }
    assert!(summary.orders > 0);
}

/// Per-customer facts gathered from the files of one generation.
#[derive(Default, Clone)]
struct Facts {
    ptype: String,
    signup: i64,
    orders: u64,
    completed_past: u64,
    discounted: u64,
    amount: f64,
    completed_next_90d: u64,
    future_orders: u64,
    events: u64,
    sessions: HashMap<String, i64>,
}

fn gather(out: &Path) -> (BTreeMap<String, Facts>, u64) {
    let mut facts: BTreeMap<String, Facts> = BTreeMap::new();
    let (_, truth) = read(&out.join("truth/customers.parquet"));
    for b in &truth {
        for (id, t) in strings(b, "customer_id")
            .into_iter()
            .zip(strings(b, "planted_type"))
        {
            facts.insert(
                id.unwrap(),
                Facts {
                    ptype: t.unwrap(),
                    ..Facts::default()
                },
            );
        }
    }
    for (_, _, batches) in read_all(out, "customers") {
        for b in &batches {
            for (id, s) in strings(b, "customer_id")
                .into_iter()
                .zip(times(b, "signup_ts"))
            {
                facts.get_mut(&id.unwrap()).unwrap().signup = s.unwrap();
            }
        }
    }
    let end = end_us();
    for (sub, future) in [("orders", false), ("truth/future_orders", true)] {
        for (_, _, batches) in read_all(out, sub) {
            for b in &batches {
                let ids = strings(b, "customer_id");
                let t = times(b, "order_ts");
                let status = strings(b, "status");
                let amount = floats(b, "amount");
                let discount = floats(b, "discount_amount");
                for i in 0..b.num_rows() {
                    let f = facts.get_mut(ids[i].as_ref().unwrap()).unwrap();
                    let completed = status[i].as_deref() == Some("completed");
                    if future {
                        f.future_orders += 1;
                        if completed && t[i].unwrap() < end + 90 * DAY_US {
                            f.completed_next_90d += 1;
                        }
                    } else {
                        f.orders += 1;
                        f.completed_past += u64::from(completed);
                        f.discounted += u64::from(discount[i] > 0.0);
                        f.amount += amount[i];
                    }
                }
            }
        }
    }
    let mut anonymous = 0;
    for (_, _, batches) in read_all(out, "events") {
        for b in &batches {
            let ids = strings(b, "customer_id");
            let sessions = strings(b, "session_id");
            let t = times(b, "event_ts");
            for i in 0..b.num_rows() {
                match &ids[i] {
                    None => anonymous += 1,
                    Some(id) => {
                        let f = facts.get_mut(id).unwrap();
                        f.events += 1;
                        let start = f
                            .sessions
                            .entry(sessions[i].clone().unwrap())
                            .or_insert(i64::MAX);
                        *start = (*start).min(t[i].unwrap());
                    }
                }
            }
        }
    }
    (facts, anonymous)
}

#[test]
fn the_world_is_realistic() {
    let dir = tempfile::tempdir().unwrap();
    let n = 2000;
    let summary = generate(&options(dir.path(), n, 2)).unwrap();
    let speed = summary.events as f64 / summary.elapsed.as_secs_f64();
    println!(
        "{n} customers: {} orders, {} events ({} anonymous), {} future orders, {} files in \
         {:.2?} ({speed:.0} events/s, {} build)",
        summary.orders,
        summary.events,
        summary.anonymous_events,
        summary.future_orders,
        summary.files,
        summary.elapsed,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
    let (facts, anonymous) = gather(dir.path());
    assert_eq!(facts.len(), n);
    let end = end_us();

    println!(
        "{:<15} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "type", "n", "orders", "events", "sessions", "future", "aov", "disc%"
    );
    for t in PLANTED_TYPES {
        let group: Vec<&Facts> = facts.values().filter(|f| f.ptype == *t).collect();
        let k = group.len().max(1) as f64;
        let orders: u64 = group.iter().map(|f| f.orders).sum();
        println!(
            "{:<15} {:>5} {:>8.2} {:>8.1} {:>8.1} {:>8.2} {:>8.1} {:>8.2}",
            t,
            group.len(),
            orders as f64 / k,
            group.iter().map(|f| f.events).sum::<u64>() as f64 / k,
            group.iter().map(|f| f.sessions.len()).sum::<usize>() as f64 / k,
            group.iter().map(|f| f.future_orders).sum::<u64>() as f64 / k,
            group.iter().map(|f| f.amount).sum::<f64>() / orders.max(1) as f64,
            group.iter().map(|f| f.discounted).sum::<u64>() as f64 / orders.max(1) as f64,
        );
    }

    let orders_per_customer = summary.orders as f64 / n as f64;
    let identified = summary.events - summary.anonymous_events;
    let events_per_customer = identified as f64 / n as f64;
    let anon_share = anonymous as f64 / summary.events as f64;
    println!(
        "orders/customer {orders_per_customer:.2}, identified events/customer \
         {events_per_customer:.1}, anonymous share {anon_share:.3}"
    );
    assert_eq!(anonymous, summary.anonymous_events);

    // Window shoppers browse a lot and (mostly) never buy.
    let shoppers: Vec<&Facts> = facts
        .values()
        .filter(|f| f.ptype == "window_shopper")
        .collect();
    let never_bought = shoppers.iter().filter(|f| f.orders == 0).count();
    println!(
        "window shoppers without orders: {never_bought} of {}",
        shoppers.len()
    );
    // Some customers only have a customers row.
    assert!(facts
        .values()
        .any(|f| f.ptype == "signup_only" && f.orders == 0 && f.events == 0));

    // Churn labels are not degenerate.
    let buyers: Vec<&Facts> = facts.values().filter(|f| f.completed_past > 0).collect();
    let churned = buyers.iter().filter(|f| f.completed_next_90d == 0).count();
    let churn_rate = churned as f64 / buyers.len() as f64;
    println!(
        "churn base rate {churn_rate:.3} among {} past buyers",
        buyers.len()
    );

    // At-risk customers' engagement is falling at the end of the data.
    let (mut last30, mut before60) = (0usize, 0usize);
    for f in facts.values().filter(|f| f.ptype == "at_risk") {
        for &s in f.sessions.values() {
            if s >= end - 30 * DAY_US {
                last30 += 1;
            } else if s >= end - 90 * DAY_US {
                before60 += 1;
            }
        }
    }
    let (rate_last, rate_before) = (last30 as f64 / 30.0, before60 as f64 / 60.0);
    println!("at_risk sessions/day: last 30 days {rate_last:.2}, 60 days before {rate_before:.2}");

    assert!(
        (6.0..=10.0).contains(&orders_per_customer),
        "{orders_per_customer}"
    );
    assert!(
        (187.5..=312.5).contains(&events_per_customer),
        "{events_per_customer}"
    );
    assert!((0.05..=0.15).contains(&anon_share), "{anon_share}");
    assert!(never_bought > 0 && never_bought * 2 > shoppers.len());
    assert!((0.3..=0.7).contains(&churn_rate), "{churn_rate}");
    assert!(rate_last < rate_before);

    // The types differ the way their names say.
    let share = |t: &str, pred: &dyn Fn(&Facts) -> bool| {
        let g: Vec<&Facts> = facts.values().filter(|f| f.ptype == t).collect();
        g.iter().filter(|f| pred(f)).count() as f64 / g.len().max(1) as f64
    };
    let discount_rate = |t: &str| {
        let g = facts.values().filter(|f| f.ptype == t);
        let (d, o) = g.fold((0, 0), |(d, o), f| (d + f.discounted, o + f.orders));
        d as f64 / o.max(1) as f64
    };
    let aov = |t: &str| {
        let g = facts.values().filter(|f| f.ptype == t);
        let (a, o) = g.fold((0.0, 0), |(a, o), f| (a + f.amount, o + f.orders));
        a / o.max(1) as f64
    };
    assert!(discount_rate("bargain_hunter") > 0.6);
    assert!(discount_rate("champion") < 0.2);
    assert!(aov("big_spender") > 3.0 * aov("loyal_regular"));
    assert!(share("new_customer", &|f| f.signup >= end - 90 * DAY_US) == 1.0);
    assert!(share("hibernating", &|f| f.future_orders == 0) == 1.0);
    assert!(share("one_time_buyer", &|f| f.orders + f.future_orders <= 1) == 1.0);
    let new_signups = facts
        .values()
        .filter(|f| f.signup >= end - 90 * DAY_US)
        .count() as f64
        / n as f64;
    println!("signed up in the last 90 days: {new_signups:.3}");
    assert!((0.1..=0.3).contains(&new_signups), "{new_signups}");
}

// ---------------------------------------------------------------------------------------------
// Dirty mode
// ---------------------------------------------------------------------------------------------

fn dirty_options(dir: &Path, customers: usize, threads: usize) -> GenerateOptions {
    let mut o = options(dir, customers, threads);
    o.dirty = true;
    o
}

/// The files dirty mode adds for the default end date (2026-10-31).
fn dirty_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [
        LEGACY_ORDERS_FILE,
        DIRTY_ORDERS_FILE,
        TRUNCATED_ORDERS_FILE,
        DEFECTS_FILE,
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    files.push(Path::new("events/dt=2026-10").join(DIRTY_EVENTS_NAME));
    files.sort();
    files
}

#[test]
fn dirty_mode_only_adds_files_and_is_deterministic() {
    let clean = tempfile::tempdir().unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let sc = generate_chunked(&options(clean.path(), 700, 2), 250).unwrap();
    let sa = generate_chunked(&dirty_options(a.path(), 700, 1), 250).unwrap();
    let sb = generate_chunked(&dirty_options(b.path(), 700, 2), 250).unwrap();
    assert!(sc.dirty.is_none());
    let da = sa.dirty.clone().unwrap();
    assert_eq!(da.files, dirty_files().len());
    assert_eq!(
        (sa.orders, sa.events, sa.anonymous_events, sa.files),
        (sc.orders, sc.events, sc.anonymous_events, sc.files)
    );

    // (a) The clean files are byte-identical; dirty mode only adds files.
    let clean_files = files_under(clean.path());
    let files = files_under(a.path());
    let added: Vec<PathBuf> = files
        .iter()
        .filter(|f| !clean_files.contains(f))
        .cloned()
        .collect();
    assert_eq!(added, dirty_files());
    assert_eq!(files.len(), clean_files.len() + added.len());
    for f in &clean_files {
        let bc = fs::read(clean.path().join(f)).unwrap();
        let ba = fs::read(a.path().join(f)).unwrap();
        assert!(bc == ba, "{} differs with --dirty", f.display());
    }

    // (d) Same seed, same bytes (whatever the threads).
    assert_eq!(sa.dirty, sb.dirty);
    assert_eq!(files, files_under(b.path()));
    for f in &files {
        let ba = fs::read(a.path().join(f)).unwrap();
        let bb = fs::read(b.path().join(f)).unwrap();
        assert!(
            ba == bb,
            "{} differs between two dirty generations",
            f.display()
        );
    }

    // (c) The truncated upload is a prefix of the dirty orders file and is not Parquet.
    let dirty = fs::read(a.path().join(DIRTY_ORDERS_FILE)).unwrap();
    let truncated = fs::read(a.path().join(TRUNCATED_ORDERS_FILE)).unwrap();
    assert_eq!(truncated.len(), dirty.len() * 6 / 10);
    assert!(dirty.starts_with(&truncated));
    let file = File::open(a.path().join(TRUNCATED_ORDERS_FILE)).unwrap();
    assert!(ParquetRecordBatchReaderBuilder::try_new(file).is_err());
    read(&a.path().join(DIRTY_ORDERS_FILE));

    // Another seed plants other rows.
    let c = tempfile::tempdir().unwrap();
    let mut other = dirty_options(c.path(), 700, 2);
    other.seed = 7;
    generate_chunked(&other, 250).unwrap();
    assert_ne!(dirty, fs::read(c.path().join(DIRTY_ORDERS_FILE)).unwrap());

    // Dirty mode refuses an end date without valid timestamps, before writing anything.
    let d = tempfile::tempdir().unwrap();
    let mut early = dirty_options(d.path(), 10, 1);
    early.end_date = NaiveDate::from_ymd_opt(1979, 12, 31).unwrap();
    let err = generate(&early).unwrap_err();
    assert!(matches!(err, GenerateError::InvalidOptions(_)), "{err}");
    assert!(!d.path().join("orders").exists());
}

/// 1980-01-01 00:00 UTC: older rows are rejected as `before_floor`.
fn floor_us() -> i64 {
    NaiveDate::from_ymd_opt(1980, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros()
}

/// A column of `batch` cast to `to` (how a consumer unifies the producers' types).
fn cast_column(
    batch: &RecordBatch,
    name: &str,
    to: &DataType,
) -> datafusion::arrow::array::ArrayRef {
    datafusion::arrow::compute::cast(batch.column_by_name(name).unwrap(), to).unwrap()
}

fn cast_strings(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let col = cast_column(batch, name, &DataType::Utf8);
    let col = col.as_string::<i32>();
    (0..col.len())
        .map(|i| col.is_valid(i).then(|| col.value(i).to_string()))
        .collect()
}

fn cast_times(batch: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    let col = cast_column(batch, name, &ts_type());
    let col = col.as_primitive::<TimestampMicrosecondType>();
    (0..col.len())
        .map(|i| col.is_valid(i).then(|| col.value(i)))
        .collect()
}

fn cast_floats(batch: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    let col = cast_column(batch, name, &DataType::Float64);
    let col = col.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
    (0..col.len())
        .map(|i| col.is_valid(i).then(|| col.value(i)))
        .collect()
}

/// The readable Parquet files under `out/sub` and the relative paths of the unreadable ones.
fn read_or_skip(out: &Path, sub: &str) -> (Vec<(PathBuf, Vec<RecordBatch>)>, Vec<String>) {
    let (mut ok, mut skipped) = (Vec::new(), Vec::new());
    for rel in files_under(&out.join(sub)) {
        let rel = Path::new(sub).join(rel);
        let file = File::open(out.join(&rel)).unwrap();
        match ParquetRecordBatchReaderBuilder::try_new(file) {
            Ok(b) => ok.push((rel, b.build().unwrap().map(|b| b.unwrap()).collect())),
            Err(_) => skipped.push(rel.to_str().unwrap().to_string()),
        }
    }
    (ok, skipped)
}

/// One order with the consumer's types; `amount` and `discount` as bits for exact equality.
type OrderKey = (
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<u64>,
    Option<String>,
    Option<u64>,
    Option<String>,
);

const ORDER_REASONS: [&str; 8] = [
    "null_timestamp",
    "after_cutoff",
    "before_floor",
    "null_order_id",
    "null_customer_id",
    "invalid_amount",
    "unknown_status",
    "duplicate_order_id",
];
const EVENT_REASONS: [&str; 6] = [
    "null_timestamp",
    "after_cutoff",
    "before_floor",
    "anonymous",
    "null_session_id",
    "unknown_event_type",
];

fn blank(s: &Option<String>) -> bool {
    s.as_deref().is_none_or(str::is_empty)
}

/// Every row rule an order breaks, in the consumer's order (the first one is its reason).
fn order_rules(o: &OrderKey, cutoff: i64) -> Vec<&'static str> {
    let (order_id, customer_id, ts, amount, status, _, _) = o;
    let amount = amount.map(f64::from_bits);
    let status = status.as_deref().map(|s| s.trim().to_lowercase());
    [
        ("null_timestamp", ts.is_none()),
        ("after_cutoff", ts.is_some_and(|t| t >= cutoff)),
        ("before_floor", ts.is_some_and(|t| t < floor_us())),
        ("null_order_id", order_id.is_none()),
        ("null_customer_id", blank(customer_id)),
        (
            "invalid_amount",
            !amount.is_some_and(|a| a.is_finite() && a >= 0.0),
        ),
        (
            "unknown_status",
            !status.is_some_and(|s| ["completed", "returned", "cancelled"].contains(&s.as_str())),
        ),
    ]
    .into_iter()
    .filter_map(|(reason, broken)| broken.then_some(reason))
    .collect()
}

#[test]
fn planted_defects_match_an_independent_count() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let summary = generate(&dirty_options(out, 600, 2)).unwrap();
    let defects: Defects =
        serde_json::from_str(&fs::read_to_string(out.join(DEFECTS_FILE)).unwrap()).unwrap();
    assert_eq!(Some(&defects), summary.dirty.as_ref().map(|d| &d.defects));
    let cutoff = end_us();
    let as_map =
        |v: serde_json::Value| -> BTreeMap<String, u64> { serde_json::from_value(v).unwrap() };
    let planted_orders = as_map(serde_json::to_value(&defects.orders).unwrap());
    let planted_events = as_map(serde_json::to_value(&defects.events).unwrap());
    let names = |m: &BTreeMap<String, u64>| m.keys().cloned().collect::<HashSet<String>>();
    let set = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<HashSet<String>>();
    assert_eq!(names(&planted_orders), set(&ORDER_REASONS));
    assert_eq!(names(&planted_events), set(&EVENT_REASONS));

    // Orders, every file, the consumer's rules.
    let (files, skipped) = read_or_skip(out, "orders");
    assert_eq!(skipped, vec![TRUNCATED_ORDERS_FILE.to_string()]);
    assert_eq!(defects.skipped_files, skipped);
    let legacy = files
        .iter()
        .find(|(rel, _)| rel == Path::new(LEGACY_ORDERS_FILE))
        .unwrap();
    let (legacy_schema, _) = read(&out.join(LEGACY_ORDERS_FILE));
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    assert_eq!(
        legacy_schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect::<Vec<_>>(),
        vec![
            DataType::LargeUtf8,
            dict.clone(),
            DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Microsecond,
                Some("+02:00".into())
            ),
            DataType::Decimal128(18, 2),
            dict,
            DataType::Decimal128(18, 2),
            DataType::Utf8View,
        ]
    );
    assert!(legacy.1.iter().map(|b| b.num_rows()).sum::<usize>() > 0);

    let mut counted: BTreeMap<String, u64> =
        ORDER_REASONS.iter().map(|r| (r.to_string(), 0)).collect();
    let mut valid: BTreeMap<String, Vec<OrderKey>> = BTreeMap::new();
    let mut clean: BTreeMap<String, OrderKey> = BTreeMap::new();
    let mut rows = 0u64;
    for (rel, batches) in &files {
        let name = rel.file_name().unwrap().to_str().unwrap();
        let is_clean = name.len() == "part-00000.parquet".len();
        let is_invalid = rel == Path::new(DIRTY_ORDERS_FILE);
        for b in batches {
            let ids = cast_strings(b, "order_id");
            let customers = cast_strings(b, "customer_id");
            let ts = cast_times(b, "order_ts");
            let amount = cast_floats(b, "amount");
            let status = cast_strings(b, "status");
            let discount = cast_floats(b, "discount_amount");
            let channel = cast_strings(b, "channel");
            for i in 0..b.num_rows() {
                rows += 1;
                let o: OrderKey = (
                    ids[i].clone(),
                    customers[i].clone(),
                    ts[i],
                    amount[i].map(f64::to_bits),
                    status[i].clone(),
                    discount[i].map(f64::to_bits),
                    channel[i].clone(),
                );
                let broken = order_rules(&o, cutoff);
                // A planted invalid row breaks exactly one rule; a clean row or a duplicate none.
                assert!(
                    broken.len() == usize::from(is_invalid),
                    "{}: {o:?} breaks {broken:?}",
                    rel.display()
                );
                if is_clean {
                    clean.insert(o.0.clone().unwrap(), o.clone());
                } else {
                    assert!(is_invalid == o.0.as_deref().unwrap().starts_with("X-"));
                }
                match broken.first() {
                    Some(reason) => *counted.get_mut(*reason).unwrap() += 1,
                    None => valid.entry(o.0.clone().unwrap()).or_default().push(o),
                }
            }
        }
    }
    for (id, versions) in &valid {
        counted.insert(
            "duplicate_order_id".into(),
            counted["duplicate_order_id"] + versions.len() as u64 - 1,
        );
        // Duplicates are exact, so which one survives changes nothing.
        assert!(
            versions.iter().all(|v| *v == versions[0]),
            "{id}: {versions:?}"
        );
    }
    println!("orders: {rows} rows read, planted {planted_orders:?}");
    assert_eq!(counted, planted_orders);
    // What survives is exactly the clean orders.
    let survivors: BTreeMap<String, OrderKey> = valid
        .into_iter()
        .map(|(id, mut v)| (id, v.swap_remove(0)))
        .collect();
    assert_eq!(survivors, clean);
    assert_eq!(clean.len() as u64, summary.orders);
    let duplicate_share = counted["duplicate_order_id"] as f64 / summary.orders as f64;
    assert!(
        (0.005..0.015).contains(&duplicate_share),
        "{duplicate_share}"
    );
    for reason in ORDER_REASONS {
        if !["null_timestamp", "null_order_id"].contains(&reason) {
            assert!(counted[reason] > 0, "no {reason} planted");
        }
    }
    let rejected = rows - clean.len() as u64 - counted["after_cutoff"];
    assert!(
        (rejected as f64) < 0.05 * rows as f64 / 2.0,
        "{rejected} of {rows}"
    );

    // Events.
    let (files, skipped) = read_or_skip(out, "events");
    assert!(skipped.is_empty());
    let mut counted: BTreeMap<String, u64> =
        EVENT_REASONS.iter().map(|r| (r.to_string(), 0)).collect();
    let (mut rows, mut rejected, mut used) = (0u64, 0u64, 0u64);
    for (rel, batches) in &files {
        let planted = rel.file_name().unwrap().to_str().unwrap() == DIRTY_EVENTS_NAME;
        for b in batches {
            let customers = cast_strings(b, "customer_id");
            let sessions = cast_strings(b, "session_id");
            let ts = cast_times(b, "event_ts");
            let types = cast_strings(b, "event_type");
            for i in 0..b.num_rows() {
                rows += 1;
                let t = ts[i];
                let broken: Vec<&str> = [
                    ("null_timestamp", t.is_none()),
                    ("after_cutoff", t.is_some_and(|t| t >= cutoff)),
                    ("before_floor", t.is_some_and(|t| t < floor_us())),
                    ("anonymous", blank(&customers[i])),
                    ("null_session_id", sessions[i].is_none()),
                    (
                        "unknown_event_type",
                        !types[i]
                            .as_deref()
                            .is_some_and(|t| EVENT_TYPES.contains(&t)),
                    ),
                ]
                .into_iter()
                .filter_map(|(reason, broken)| broken.then_some(reason))
                .collect();
                assert!(
                    broken.len() <= 1,
                    "{}: row {i} breaks {broken:?}",
                    rel.display()
                );
                if planted {
                    assert!(broken.len() == 1 && broken[0] != "anonymous");
                    assert!(sessions[i].as_deref().is_none_or(|s| s.starts_with("X-")));
                } else {
                    assert!(broken.is_empty() || broken == ["anonymous"]);
                }
                match broken.first() {
                    Some(reason) => {
                        *counted.get_mut(*reason).unwrap() += 1;
                        rejected += u64::from(!["anonymous", "after_cutoff"].contains(reason));
                    }
                    None => used += 1,
                }
            }
        }
    }
    println!("events: {rows} rows read, planted {planted_events:?}");
    assert_eq!(counted, planted_events);
    assert_eq!(counted["anonymous"], summary.anonymous_events);
    assert_eq!(used, summary.events - summary.anonymous_events);
    for reason in EVENT_REASONS {
        if reason != "null_timestamp" {
            assert!(counted[reason] > 0, "no {reason} planted");
        }
    }
    assert!(
        (rejected as f64) < 0.05 * rows as f64 / 2.0,
        "{rejected} of {rows}"
    );
}

// ---------------------------------------------------------------------------------------------
// Simulating nights: until, add_day, the daily layout
// ---------------------------------------------------------------------------------------------

/// The three inputs a run reads.
const INPUTS: [(&str, &str); 3] = [
    ("orders", "order_ts"),
    ("events", "event_ts"),
    ("customers", "signup_ts"),
];

/// A small shop (300 customers in chunks of 100, so the day files gather three chunks).
fn night_options(dir: &Path, daily: bool) -> GenerateOptions {
    let mut o = options(dir, 300, 2);
    o.daily = daily;
    o
}

const NIGHT_CHUNK: usize = 100;

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn midnight(d: NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_micros()
}

/// The rows (all columns formatted, `|`-separated) of the Parquet files under `out/sub`, with
/// their `ts_col`; hidden files are skipped, as readers do.
fn timed_rows(out: &Path, sub: &str, ts_col: &str) -> Vec<(i64, String)> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut rows = Vec::new();
    if !out.join(sub).exists() {
        return rows;
    }
    let options = FormatOptions::default().with_null("<null>");
    for rel in files_under(&out.join(sub)) {
        if rel.file_name().unwrap().to_str().unwrap().starts_with('.') {
            continue;
        }
        let (_, batches) = read(&out.join(sub).join(&rel));
        for b in &batches {
            let formatters: Vec<ArrayFormatter> = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
                .collect();
            for (i, t) in times(b, ts_col).into_iter().enumerate() {
                let mut row = String::new();
                for f in &formatters {
                    row.push_str(&f.value(i).to_string());
                    row.push('|');
                }
                rows.push((t.unwrap(), row));
            }
        }
    }
    rows
}

/// The rows of [`timed_rows`] with a timestamp in `[lo, hi)`, sorted.
fn between(rows: &[(i64, String)], lo: i64, hi: i64) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .filter(|(t, _)| *t >= lo && *t < hi)
        .map(|(_, r)| r.clone())
        .collect();
    out.sort_unstable();
    out
}

/// All rows of the Parquet files under `out/sub`, formatted and sorted.
fn all_rows(out: &Path, sub: &str, ts_col: &str) -> Vec<String> {
    between(&timed_rows(out, sub, ts_col), i64::MIN, i64::MAX)
}

/// The bytes of every file under `root`.
/// Generates, with the options `make` gives for a directory, `until` the day before `day` and
/// then `add_day` `day` into one directory, and `until` `day` into another, and asserts the
/// invariant: both hold the same rows, input by input. Returns the grown directory, its files
/// before `add_day`, and `add_day`'s summary.
fn grow_one_day(
    make: impl Fn(&Path) -> GenerateOptions,
    day: NaiveDate,
    what: &str,
) -> (
    tempfile::TempDir,
    BTreeMap<PathBuf, Vec<u8>>,
    GenerateSummary,
) {
    let grown = tempfile::tempdir().unwrap();
    let direct = tempfile::tempdir().unwrap();
    let mut opts = make(grown.path());
    opts.until = Some(day.pred_opt().unwrap());
    generate_chunked(&opts, NIGHT_CHUNK).unwrap();
    let old = snapshot(grown.path());
    let mut opts = make(grown.path());
    opts.add_day = Some(day);
    let summary = generate_chunked(&opts, NIGHT_CHUNK).unwrap();
    let mut opts = make(direct.path());
    opts.until = Some(day);
    generate_chunked(&opts, NIGHT_CHUNK).unwrap();
    for (sub, ts_col) in INPUTS {
        assert_eq!(
            all_rows(grown.path(), sub, ts_col),
            all_rows(direct.path(), sub, ts_col),
            "{what}: {sub}"
        );
    }
    (grown, old, summary)
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files_under(root)
        .into_iter()
        .map(|f| {
            let bytes = fs::read(root.join(&f)).unwrap();
            (f, bytes)
        })
        .collect()
}

fn assert_same_files(a: &Path, b: &Path, what: &str) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    assert_eq!(
        sa.keys().collect::<Vec<_>>(),
        sb.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (f, bytes) in &sa {
        assert!(bytes == &sb[f], "{what}: {} differs", f.display());
    }
}

#[test]
fn until_end_date_writes_the_same_bytes_as_a_full_generation() {
    for daily in [false, true] {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let sa = generate_chunked(&night_options(a.path(), daily), NIGHT_CHUNK).unwrap();
        let mut until = night_options(b.path(), daily);
        until.until = Some(until.end_date);
        let sb = generate_chunked(&until, NIGHT_CHUNK).unwrap();
        assert_same_files(a.path(), b.path(), &format!("daily={daily}"));
        assert_eq!(
            (
                sa.customers,
                sa.orders,
                sa.events,
                sa.anonymous_events,
                sa.files
            ),
            (
                sb.customers,
                sb.orders,
                sb.events,
                sb.anonymous_events,
                sb.files
            )
        );
        assert_eq!(sa.customers, 300);
    }
}

#[test]
fn until_writes_only_what_exists_by_the_end_of_the_day() {
    let full = tempfile::tempdir().unwrap();
    let part = tempfile::tempdir().unwrap();
    generate_chunked(&night_options(full.path(), false), NIGHT_CHUNK).unwrap();
    let until = date(2026, 6, 14);
    let cut = midnight(date(2026, 6, 15));
    let mut opts = night_options(part.path(), false);
    opts.until = Some(until);
    let summary = generate_chunked(&opts, NIGHT_CHUNK).unwrap();

    // Exactly the rows of the full shop before the cut, for every input.
    let mut written = HashMap::new();
    for (sub, ts_col) in INPUTS {
        let rows = timed_rows(full.path(), sub, ts_col);
        let expected = between(&rows, i64::MIN, cut);
        assert!(!expected.is_empty() && expected.len() < rows.len(), "{sub}");
        assert_eq!(all_rows(part.path(), sub, ts_col), expected, "{sub}");
        written.insert(sub, expected);
    }
    assert_eq!(summary.customers, written["customers"].len());
    assert!(summary.customers < 300);
    assert_eq!(summary.orders as usize, written["orders"].len());
    assert_eq!(summary.events as usize, written["events"].len());
    let anonymous = written["events"]
        .iter()
        .filter(|r| r.contains("|<null>|"))
        .count();
    assert!(anonymous > 0);
    assert_eq!(summary.anonymous_events as usize, anonymous);

    // No partition after the day; the files of every chunk are there; the truth is the full
    // shop's.
    let files = files_under(part.path());
    assert_eq!(files.len(), summary.files);
    assert!(files.contains(&PathBuf::from("events/dt=2026-06/part-00002.parquet")));
    assert!(!files.iter().any(|f| f.starts_with("events/dt=2026-07")));
    for sub in ["orders", "customers"] {
        for chunk in 0..3 {
            assert!(files.contains(&PathBuf::from(format!("{sub}/part-{chunk:05}.parquet"))));
        }
    }
    assert_same_files(
        &full.path().join("truth"),
        &part.path().join("truth"),
        "truth",
    );
}

/// The days that appear in `sub` of the full shop, by number of rows.
fn rows_per_day(out: &Path, sub: &str, ts_col: &str) -> BTreeMap<NaiveDate, usize> {
    let mut days = BTreeMap::new();
    for (_, _, batches) in read_all(out, sub) {
        for b in &batches {
            for t in times(b, ts_col) {
                let d = chrono::DateTime::from_timestamp_micros(t.unwrap())
                    .unwrap()
                    .date_naive();
                *days.entry(d).or_insert(0) += 1;
            }
        }
    }
    days
}

#[test]
fn until_then_add_day_equals_until_the_next_day() {
    let full = tempfile::tempdir().unwrap();
    generate_chunked(&night_options(full.path(), false), NIGHT_CHUNK).unwrap();
    let signups = rows_per_day(full.path(), "customers", "signup_ts");
    let orders = rows_per_day(full.path(), "orders", "order_ts");
    let events = rows_per_day(full.path(), "events", "event_ts");
    // A day with signups, orders and events; a day without signups; the first of a month (a
    // new monthly partition) and the end date. The daily layout (thousands of small files,
    // slow in a debug build) only with the first two.
    let busy = *signups
        .keys()
        .rev()
        .find(|d| **d < date(2026, 10, 25) && orders.contains_key(d) && events.contains_key(d))
        .unwrap();
    let quiet = (0..)
        .map(|n| date(2026, 10, 31) - chrono::Duration::days(n))
        .find(|d| !signups.contains_key(d) && orders.contains_key(d))
        .unwrap();
    let days = [busy, quiet, date(2026, 10, 1), date(2026, 10, 31)];
    println!("days: {days:?}");

    for daily in [false, true] {
        for &day in &days[..if daily { 2 } else { 4 }] {
            let what = format!("add_day {day}, daily={daily}");
            let (grown, old, summary) = grow_one_day(|dir| night_options(dir, daily), day, &what);

            // Nothing was rewritten; the new files are the day's, and only non-empty ones.
            let new = snapshot(grown.path());
            for (f, bytes) in &old {
                assert!(new.get(f) == Some(bytes), "{what}: {} changed", f.display());
            }
            let added: Vec<PathBuf> = new
                .keys()
                .filter(|f| !old.contains_key(*f))
                .cloned()
                .collect();
            let partition = if daily {
                day.format("dt=%Y-%m-%d").to_string()
            } else {
                day.format("dt=%Y-%m").to_string()
            };
            let name = format!("part-{day}.parquet");
            let mut expected = Vec::new();
            let count = |m: &BTreeMap<NaiveDate, usize>| m.get(&day).copied().unwrap_or(0);
            if count(&signups) > 0 {
                expected.push(Path::new("customers").join(&name));
            }
            if count(&events) > 0 {
                expected.push(Path::new("events").join(&partition).join(&name));
            }
            if count(&orders) > 0 {
                expected.push(Path::new("orders").join(&name));
            }
            assert_eq!(added, expected, "{what}");
            assert_eq!(summary.files, expected.len(), "{what}");
            assert_eq!(
                (
                    summary.customers,
                    summary.orders as usize,
                    summary.events as usize
                ),
                (count(&signups), count(&orders), count(&events)),
                "{what}"
            );
            assert_eq!(summary.future_orders, 0);
            if day == busy {
                assert_eq!(expected.len(), 3, "{what}");
            }
            if day == quiet {
                assert!(!added.iter().any(|f| f.starts_with("customers")), "{what}");
            }
        }
    }
}

#[test]
fn add_day_files_are_deterministic_and_never_replace_anything() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let day = date(2026, 10, 20);
    for (dir, threads) in [(a.path(), 1), (b.path(), 3)] {
        let mut opts = night_options(dir, false);
        opts.until = Some(day.pred_opt().unwrap());
        generate_chunked(&opts, NIGHT_CHUNK).unwrap();
        let mut opts = night_options(dir, false);
        opts.add_day = Some(day);
        opts.threads = threads;
        generate_chunked(&opts, NIGHT_CHUNK).unwrap();
    }
    assert_same_files(a.path(), b.path(), "1 and 3 threads");
    assert!(a.path().join("orders/part-2026-10-20.parquet").exists());
    assert!(a
        .path()
        .join("events/dt=2026-10/part-2026-10-20.parquet")
        .exists());

    // Adding the day again fails and leaves everything as it was (no temporary files either).
    let before = snapshot(a.path());
    let mut again = night_options(a.path(), false);
    again.add_day = Some(day);
    let err = generate_chunked(&again, NIGHT_CHUNK).unwrap_err();
    assert!(matches!(err, GenerateError::Exists(_)), "{err}");
    assert!(err.to_string().contains("part-2026-10-20.parquet"), "{err}");
    assert_eq!(snapshot(a.path()), before);

    // The other events layout is refused.
    let mut daily = night_options(a.path(), true);
    daily.add_day = Some(day.succ_opt().unwrap());
    let err = generate_chunked(&daily, NIGHT_CHUNK).unwrap_err();
    assert!(
        matches!(&err, GenerateError::InvalidOptions(m) if m.contains("monthly")),
        "{err}"
    );
    assert_eq!(snapshot(a.path()), before);

    // Without an existing shop there is nothing to add to.
    let empty = tempfile::tempdir().unwrap();
    let mut opts = night_options(empty.path(), false);
    opts.add_day = Some(day);
    let err = generate_chunked(&opts, NIGHT_CHUNK).unwrap_err();
    assert!(
        matches!(&err, GenerateError::InvalidOptions(m) if m.contains("orders")),
        "{err}"
    );
    assert!(files_under(empty.path()).is_empty());
}

#[test]
fn daily_layout_partitions_the_same_events_by_day() {
    let monthly = tempfile::tempdir().unwrap();
    let daily = tempfile::tempdir().unwrap();
    generate_chunked(&night_options(monthly.path(), false), NIGHT_CHUNK).unwrap();
    let summary = generate_chunked(&night_options(daily.path(), true), NIGHT_CHUNK).unwrap();

    // Only the events differ, and only in their layout.
    for sub in ["orders", "customers", "truth"] {
        assert_same_files(&monthly.path().join(sub), &daily.path().join(sub), sub);
    }
    assert_eq!(
        all_rows(monthly.path(), "events", "event_ts"),
        all_rows(daily.path(), "events", "event_ts")
    );
    let files = files_under(daily.path());
    assert_eq!(files.len(), summary.files);
    let mut days = HashSet::new();
    for (rel, _, batches) in read_all(daily.path(), "events") {
        let dt = rel.parent().unwrap().to_str().unwrap().to_string();
        let name = rel.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            name.starts_with("part-000") && name.ends_with(".parquet"),
            "{name}"
        );
        let day = NaiveDate::parse_from_str(&dt, "dt=%Y-%m-%d").unwrap();
        days.insert(day);
        let (lo, hi) = (midnight(day), midnight(day.succ_opt().unwrap()));
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert!(rows > 0, "{}", rel.display());
        for b in &batches {
            assert!(times(b, "event_ts")
                .into_iter()
                .all(|t| (lo..hi).contains(&t.unwrap())));
        }
    }
    assert_eq!(
        days.len(),
        rows_per_day(monthly.path(), "events", "event_ts").len()
    );

    // Dirty mode puts its events into the end date's daily partition.
    let dirty = tempfile::tempdir().unwrap();
    let mut opts = dirty_options(dirty.path(), 300, 2);
    opts.daily = true;
    generate_chunked(&opts, NIGHT_CHUNK).unwrap();
    assert!(dirty
        .path()
        .join("events/dt=2026-10-31")
        .join(DIRTY_EVENTS_NAME)
        .exists());
    for f in files_under(&dirty.path().join("events")) {
        let dt = f.parent().unwrap().to_str().unwrap();
        assert!(
            NaiveDate::parse_from_str(dt, "dt=%Y-%m-%d").is_ok(),
            "{}",
            f.display()
        );
    }
}

#[test]
fn night_options_are_checked_before_anything_is_written() {
    let end = date(2026, 10, 31);
    let after = date(2026, 11, 1);
    let dir = tempfile::tempdir().unwrap();
    let with = |until, add_day, dirty| {
        let mut o = night_options(dir.path(), false);
        (o.until, o.add_day, o.dirty) = (until, add_day, dirty);
        o
    };
    for (what, opts) in [
        ("until after the end", with(Some(after), None, false)),
        ("add_day after the end", with(None, Some(after), false)),
        ("until and add_day", with(Some(end), Some(end), false)),
        ("dirty with until", with(Some(end), None, true)),
        ("dirty with add_day", with(None, Some(end), true)),
    ] {
        let err = generate(&opts).unwrap_err();
        assert!(
            matches!(err, GenerateError::InvalidOptions(_)),
            "{what}: {err}"
        );
        assert!(files_under(dir.path()).is_empty(), "{what}");
    }
}

// ---------------------------------------------------------------------------------------------
// The sign-up campaign
// ---------------------------------------------------------------------------------------------

fn campaign_options(dir: &Path, customers: usize, signups: usize) -> GenerateOptions {
    let mut o = options(dir, customers, 2);
    o.campaign_signups = signups;
    o
}

/// The customer number of a customer id (`C0000042` → 42).
fn number(id: &str) -> usize {
    id[1..].parse().unwrap()
}

/// Sessions of a customer that began at or after their signup.
fn sessions_after_signup(f: &Facts) -> usize {
    f.sessions.values().filter(|&&s| s >= f.signup).count()
}

#[test]
fn campaign_signups_are_added_without_changing_the_other_customers() {
    let plain = tempfile::tempdir().unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (regular, signups) = (300, 250);
    generate_chunked(&options(plain.path(), regular, 2), NIGHT_CHUNK).unwrap();
    let mut opts = campaign_options(a.path(), regular, signups);
    opts.threads = 1;
    let summary = generate_chunked(&opts, NIGHT_CHUNK).unwrap();
    generate_chunked(&campaign_options(b.path(), regular, signups), NIGHT_CHUNK).unwrap();

    // Same options, same bytes (whatever the threads).
    assert_same_files(a.path(), b.path(), "1 and 2 threads");

    // (1) N more customers rows, numbered after the regular ones, signed up in the last 60
    // days.
    let end = end_us();
    let campaign_start = end - i64::from(DEFAULT_CAMPAIGN_DAYS) * DAY_US;
    assert_eq!(summary.customers, regular + signups);
    let mut ids = Vec::new();
    for (_, _, batches) in read_all(a.path(), "customers") {
        for b in &batches {
            for (id, s) in strings(b, "customer_id")
                .into_iter()
                .zip(times(b, "signup_ts"))
            {
                let (id, s) = (id.unwrap(), s.unwrap());
                if number(&id) > regular {
                    assert!((campaign_start..end).contains(&s), "{id}: signup {s}");
                }
                ids.push(id);
            }
        }
    }
    let expected: Vec<String> = (1..=regular + signups)
        .map(|i| format!("C{i:07}"))
        .collect();
    assert_eq!(ids, expected);

    // (2) The truth marks them, and only them, campaign_signup.
    let (facts, _) = gather(a.path());
    assert_eq!(facts.len(), regular + signups);
    for (id, f) in &facts {
        assert_eq!(
            f.ptype == "campaign_signup",
            number(id) > regular,
            "{id}: {}",
            f.ptype
        );
    }

    // The regular customers' files are byte-identical to a generation without the campaign
    // (its own random stream), as are their truth rows; the campaign's chunks (3 to 5) come in
    // files of their own, with the campaign's anonymous visitors in its two months.
    let (old, new) = (snapshot(plain.path()), snapshot(a.path()));
    for (f, bytes) in &old {
        if f != Path::new("truth/customers.parquet") {
            assert!(new.get(f) == Some(bytes), "{} changed", f.display());
        }
    }
    let added: Vec<&PathBuf> = new.keys().filter(|f| !old.contains_key(*f)).collect();
    for f in &added {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            [
                "part-00003.parquet",
                "part-00004.parquet",
                "part-00005.parquet"
            ]
            .contains(&name),
            "{}",
            f.display()
        );
        if f.starts_with("events") {
            assert!(
                f.starts_with("events/dt=2026-09") || f.starts_with("events/dt=2026-10"),
                "{}",
                f.display()
            );
        }
    }
    assert!(added.contains(&&PathBuf::from("truth/future_orders/part-00005.parquet")));
    let truth = |out: &Path| {
        let (schema, batches) = read(&out.join("truth/customers.parquet"));
        datafusion::arrow::compute::concat_batches(&schema, &batches).unwrap()
    };
    let (plain_truth, truth) = (truth(plain.path()), truth(a.path()));
    assert_eq!(truth.num_rows(), regular + signups);
    assert_eq!(truth.slice(0, regular), plain_truth);

    // Some browse, a minority orders before the end, and their future orders are in the
    // truth; their events lie after the campaign's start.
    let campaign: Vec<&Facts> = facts
        .values()
        .filter(|f| f.ptype == "campaign_signup")
        .collect();
    let share = |pred: &dyn Fn(&Facts) -> bool| {
        campaign.iter().filter(|f| pred(f)).count() as f64 / campaign.len() as f64
    };
    let browsed = share(&|f| sessions_after_signup(f) > 0);
    let ordered = share(&|f| f.orders > 0);
    let future = share(&|f| f.future_orders > 0);
    println!("campaign: browsed {browsed:.3}, ordered before the end {ordered:.3}, future orders {future:.3}");
    assert!((0.3..0.9).contains(&browsed), "{browsed}");
    assert!((0.05..0.45).contains(&ordered), "{ordered}");
    assert!(future > 0.05, "{future}");
    for f in &campaign {
        assert!(f.sessions.values().all(|&s| s >= campaign_start - DAY_US));
    }
}

#[test]
fn campaign_never_buyers_convert_by_engagement() {
    let dir = tempfile::tempdir().unwrap();
    let signups = 4000;
    generate_chunked(&campaign_options(dir.path(), 50, signups), 1000).unwrap();
    let (facts, _) = gather(dir.path());
    let campaign: Vec<&Facts> = facts
        .values()
        .filter(|f| f.ptype == "campaign_signup")
        .collect();
    assert_eq!(campaign.len(), signups);

    // (3) About 1 in 6 of the campaign's never-buyers completes an order in the 90 days after
    // the end, the engaged half (by sessions after signup) more often than the other half.
    let mut never: Vec<(usize, bool)> = campaign
        .iter()
        .filter(|f| f.completed_past == 0)
        .map(|f| (sessions_after_signup(f), f.completed_next_90d > 0))
        .collect();
    let rate = |g: &[(usize, bool)]| g.iter().filter(|c| c.1).count() as f64 / g.len() as f64;
    let converted = rate(&never);
    // Stable sort: ties keep the customer order.
    never.sort_by_key(|c| c.0);
    let (less, more) = never.split_at(never.len() / 2);
    let (rate_less, rate_more) = (rate(less), rate(more));
    let top = rate(&never[never.len() * 9 / 10..]);
    let no_sessions = never.iter().filter(|c| c.0 == 0).count() as f64 / never.len() as f64;
    println!(
        "campaign: {} of {signups} without a completed order before the end; {converted:.3} of \
         them complete one in the next 90 days: less engaged half {rate_less:.3}, more engaged \
         half {rate_more:.3}, top tenth {top:.3}; {no_sessions:.3} without sessions",
        never.len()
    );
    assert!(never.len() * 2 > signups);
    assert!((0.08..=0.3).contains(&converted), "{converted}");
    assert!(rate_more > 1.5 * rate_less, "{rate_more} vs {rate_less}");
    assert!(top > rate_more);
}

#[test]
fn campaign_grows_night_by_night() {
    let campaign = |dir: &Path| {
        let mut o = night_options(dir, false);
        o.campaign_signups = 200;
        o
    };
    let full = tempfile::tempdir().unwrap();
    generate_chunked(&campaign(full.path()), NIGHT_CHUNK).unwrap();
    // The last day before 2026-10-25 with a campaign signup, orders and events.
    let mut campaign_days = HashSet::new();
    for (_, _, batches) in read_all(full.path(), "customers") {
        for b in &batches {
            for (id, s) in strings(b, "customer_id")
                .into_iter()
                .zip(times(b, "signup_ts"))
            {
                if number(&id.unwrap()) > 300 {
                    let d = chrono::DateTime::from_timestamp_micros(s.unwrap()).unwrap();
                    campaign_days.insert(d.date_naive());
                }
            }
        }
    }
    let orders = rows_per_day(full.path(), "orders", "order_ts");
    let events = rows_per_day(full.path(), "events", "event_ts");
    let day = *campaign_days
        .iter()
        .filter(|d| **d < date(2026, 10, 25) && orders.contains_key(d) && events.contains_key(d))
        .max()
        .unwrap();

    // until D, then add_day D+1, gives the rows of until D+1.
    let (grown, _, summary) = grow_one_day(campaign, day, "campaign");
    assert!(summary.customers > 0);
    let (_, added) = read(&grown.path().join(format!("customers/part-{day}.parquet")));
    assert!(added
        .iter()
        .flat_map(|b| strings(b, "customer_id"))
        .any(|id| number(&id.unwrap()) > 300));

    // Before the campaign, none of its customers exist yet; the truth is the full shop's.
    let early = tempfile::tempdir().unwrap();
    let mut opts = campaign(early.path());
    opts.until = Some(date(2026, 8, 1));
    generate_chunked(&opts, NIGHT_CHUNK).unwrap();
    for row in all_rows(early.path(), "customers", "signup_ts") {
        assert!(number(&row[..8]) <= 300, "{row}");
    }
    assert_same_files(
        &full.path().join("truth"),
        &early.path().join("truth"),
        "truth",
    );

    // The campaign's length is checked before anything is written.
    let bad = tempfile::tempdir().unwrap();
    for days in [0, 366] {
        let mut opts = campaign(bad.path());
        opts.campaign_days = days;
        let err = generate(&opts).unwrap_err();
        assert!(
            matches!(&err, GenerateError::InvalidOptions(m) if m.contains("campaign_days")),
            "{err}"
        );
        assert!(files_under(bad.path()).is_empty());
    }
}
