//! Dirty mode (`segmenter generate --dirty`): extra input files with planted defects at known
//! rates, and `truth/defects.json` with the exact planted counts.
//!
//! It runs after the clean shop is written and only ever adds files, so the clean files are
//! byte-identical to a clean generation's. It reads the clean orders back from their Parquet
//! files and has its own generator (seeded from the generate seed mixed with a constant), so
//! the dirty files are as deterministic as the clean ones.
//!
//! Every planted row breaks exactly one of the consumer's row rules, the one it is planted for,
//! and is rejected (or lies after the cut-off), or is an exact duplicate of a clean order: a
//! run on the dirty shop computes the same as a run on the clean one, plus the counts. Planted
//! rows use existing customer ids and new order, session and event ids (prefix `X-`).

use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use chrono::{Datelike, NaiveDate};
use datafusion::arrow::array::{
    ArrayRef, AsArray, Decimal128Array, DictionaryArray, Float64Array, LargeStringArray,
    RecordBatch, StringArray, StringViewArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int32Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use super::world::{partition_name, CHANNELS, DAY_US, EVENT_TYPES, STATUSES, WINDOW_DAYS};
use super::write::{events_schema, orders_schema};
use super::{io_context, GenerateError, GenerateOptions, GenerateSummary};

/// Exact duplicates of this share of the clean orders, from an "old producer".
pub(super) const LEGACY_DUPLICATE_RATE: f64 = 0.01;
/// Planted invalid orders of each kind, as a share of the clean orders.
pub(super) const ORDER_DEFECT_RATE: f64 = 0.002;
/// Planted invalid events of each kind, as a share of the clean identified events.
pub(super) const EVENT_DEFECT_RATE: f64 = 0.003;
/// The truncated upload keeps this many tenths of the bytes of the dirty orders file.
const TRUNCATED_TENTHS: usize = 6;
/// Mixed into the generate seed for the dirty generator.
const DIRTY_SEED: u64 = 0xD1A7_5EED_0BAD_C0DE;
/// Existing customer ids the planted rows draw from (a reservoir sample of the orders).
const CUSTOMER_POOL: usize = 4096;
/// Rows per record batch of the planted files.
const BATCH_ROWS: usize = 8192;

/// `orders/` file of exact duplicates written with an old producer's types.
pub const LEGACY_ORDERS_FILE: &str = "orders/part-legacy-00000.parquet";
/// `orders/` file of invalid orders (clean schema, nullable `customer_id`).
pub const DIRTY_ORDERS_FILE: &str = "orders/part-dirty-00000.parquet";
/// `orders/` file that is a truncated copy of [`DIRTY_ORDERS_FILE`] (no valid footer).
pub const TRUNCATED_ORDERS_FILE: &str = "orders/part-truncated-00000.parquet";
/// Name of the invalid events file, in the `events/dt=YYYY-MM/` partition of the end date
/// (`events/dt=YYYY-MM-DD/` in the daily layout).
pub const DIRTY_EVENTS_NAME: &str = "part-dirty-00000.parquet";
/// The planted counts ([`Defects`] as JSON).
pub const DEFECTS_FILE: &str = "truth/defects.json";

/// Rows before this instant (1980-01-01 00:00 UTC, segmenter's default
/// `quality.earliest_date`) are rejected as `before_floor`.
const FLOOR_US: i64 = 315_532_800_000_000;
/// 1970-01-01 00:00 UTC (the Unix epoch, a broken writer's favourite default): the year of the
/// planted `before_floor` rows.
const Y1970_US: i64 = 0;
const YEAR_US: i64 = 365 * DAY_US;

/// Planted order counts by the reason the consumer gives (its rules in this order; the first
/// that fails wins; `after_cutoff` is relative to a run with `--date` = the end date).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderDefects {
    /// Null `order_ts`.
    pub null_timestamp: u64,
    /// `order_ts` at or after the cut-off (clock skew; counted, not rejected).
    pub after_cutoff: u64,
    /// `order_ts` before 1980-01-01.
    pub before_floor: u64,
    /// Null `order_id`.
    pub null_order_id: u64,
    /// Null or empty `customer_id`.
    pub null_customer_id: u64,
    /// Negative, NaN, infinite or null `amount`.
    pub invalid_amount: u64,
    /// `status` not completed/returned/cancelled.
    pub unknown_status: u64,
    /// Valid rows whose `order_id` another valid row has (all but one counted).
    pub duplicate_order_id: u64,
}

/// Planted (and, for `anonymous`, generated) event counts by reason, in rule order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventDefects {
    /// Null `event_ts`.
    pub null_timestamp: u64,
    /// `event_ts` at or after the cut-off.
    pub after_cutoff: u64,
    /// `event_ts` before 1980-01-01.
    pub before_floor: u64,
    /// Null or empty `customer_id` (counted, not an error): every anonymous event of the shop.
    pub anonymous: u64,
    /// Null `session_id`.
    pub null_session_id: u64,
    /// `event_type` outside the contract's vocabulary.
    pub unknown_event_type: u64,
}

/// The content of `truth/defects.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defects {
    /// Orders by reason.
    pub orders: OrderDefects,
    /// Events by reason.
    pub events: EventDefects,
    /// Files a reader must skip (relative to the output directory).
    pub skipped_files: Vec<String>,
}

/// What dirty mode added to a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtySummary {
    /// Rows of the legacy duplicates file.
    pub duplicate_orders: u64,
    /// Rows of the invalid orders file (the truncated copy not counted).
    pub invalid_orders: u64,
    /// Rows of the invalid events file.
    pub invalid_events: u64,
    /// Files added (Parquet, the truncated one included, and `truth/defects.json`).
    pub files: usize,
    /// The planted counts, as written to `truth/defects.json`.
    pub defects: Defects,
}

/// Fails early (before anything is written) if dirty mode cannot plant its rows: valid
/// timestamps must exist, i.e. the data must end on or after 1980-01-01.
pub(super) fn check(opts: &GenerateOptions) -> Result<(), GenerateError> {
    if opts.dirty && end_us(opts.end_date)? <= FLOOR_US {
        return Err(GenerateError::InvalidOptions(format!(
            "dirty mode needs an end date on or after 1980-01-01, got {}",
            opts.end_date
        )));
    }
    Ok(())
}

fn end_us(end_date: NaiveDate) -> Result<i64, GenerateError> {
    end_date
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_micros())
        .ok_or_else(|| {
            GenerateError::InvalidOptions(format!("end_date {end_date} is out of range"))
        })
}

/// SplitMix64 finaliser.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The number of planted rows of one kind: `rate` of `n`, rounded.
fn planted(rate: f64, n: u64) -> u64 {
    (rate * n as f64).round() as u64
}

/// Picks a kind with probability proportional to its remaining count and takes one from it,
/// so the kinds are interleaved at random and the counts are exact.
fn next_kind(rng: &mut Xoshiro256PlusPlus, remaining: &mut [u64]) -> usize {
    let total: u64 = remaining.iter().sum();
    let mut r = rng.gen_range(0..total);
    for (kind, n) in remaining.iter_mut().enumerate() {
        if r < *n {
            *n -= 1;
            return kind;
        }
        r -= *n;
    }
    unreachable!("r < total")
}

fn writer_props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build()
}

fn with_nullable(schema: &Schema, column: &str) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let f = f.as_ref().clone();
            if f.name() == column {
                f.with_nullable(true)
            } else {
                f
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
}

fn create_writer(path: &Path, schema: &SchemaRef) -> Result<ArrowWriter<File>, GenerateError> {
    let file = File::create(path).map_err(|e| io_context(path, "cannot create", e))?;
    Ok(ArrowWriter::try_new(
        file,
        schema.clone(),
        Some(writer_props()),
    )?)
}

/// One clean order, as read back.
struct Order {
    order_id: String,
    customer_id: String,
    ts: i64,
    amount: f64,
    status: String,
    discount: f64,
    channel: String,
}

/// What the clean orders give dirty mode.
struct CleanOrders {
    count: u64,
    /// Orders picked for duplication, in file order.
    picked: Vec<Order>,
    /// Existing customer ids (a reservoir sample over the orders), in a deterministic order.
    customers: Vec<String>,
}

/// Reads `orders/` back (the clean files only exist at this point), picks the orders to
/// duplicate and samples customer ids.
fn read_clean_orders(
    out: &Path,
    rng: &mut Xoshiro256PlusPlus,
) -> Result<CleanOrders, GenerateError> {
    let dir = out.join("orders");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .map_err(|e| io_context(&dir, "cannot list", e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| io_context(&dir, "cannot list", e))?;
    files.retain(|p| p.extension().is_some_and(|e| e == "parquet"));
    files.sort();

    let mut clean = CleanOrders {
        count: 0,
        picked: Vec::new(),
        customers: Vec::with_capacity(CUSTOMER_POOL),
    };
    for path in files {
        let file = File::open(&path).map_err(|e| io_context(&path, "cannot open", e))?;
        for batch in ParquetRecordBatchReaderBuilder::try_new(file)?.build()? {
            let batch = batch?;
            let col = |name: &str| {
                batch.column_by_name(name).ok_or_else(|| {
                    GenerateError::InvalidOptions(format!("{}: no column {name}", path.display()))
                })
            };
            let order_id = col("order_id")?.as_string::<i32>();
            let customer_id = col("customer_id")?.as_string::<i32>();
            let ts = col("order_ts")?.as_primitive::<TimestampMicrosecondType>();
            let amount = col("amount")?.as_primitive::<Float64Type>();
            let status = col("status")?.as_string::<i32>();
            let discount = col("discount_amount")?.as_primitive::<Float64Type>();
            let channel = col("channel")?.as_string::<i32>();
            for i in 0..batch.num_rows() {
                clean.count += 1;
                if clean.customers.len() < CUSTOMER_POOL {
                    clean.customers.push(customer_id.value(i).to_string());
                } else {
                    let j = rng.gen_range(0..clean.count) as usize;
                    if j < CUSTOMER_POOL {
                        clean.customers[j] = customer_id.value(i).to_string();
                    }
                }
                if rng.gen::<f64>() < LEGACY_DUPLICATE_RATE {
                    clean.picked.push(Order {
                        order_id: order_id.value(i).to_string(),
                        customer_id: customer_id.value(i).to_string(),
                        ts: ts.value(i),
                        amount: amount.value(i),
                        status: status.value(i).to_string(),
                        discount: discount.value(i),
                        channel: channel.value(i).to_string(),
                    });
                }
            }
        }
    }
    Ok(clean)
}

/// The old producer's schema: other string encodings, Decimal amounts, a +02:00 zone.
fn legacy_schema() -> SchemaRef {
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::LargeUtf8, true),
        Field::new("customer_id", dict.clone(), true),
        Field::new(
            "order_ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("+02:00".into())),
            true,
        ),
        Field::new("amount", DataType::Decimal128(18, 2), true),
        Field::new("status", dict, true),
        Field::new("discount_amount", DataType::Decimal128(18, 2), true),
        Field::new("channel", DataType::Utf8View, true),
    ]))
}

fn cents(values: impl Iterator<Item = f64>) -> Result<ArrayRef, GenerateError> {
    let cents: Vec<i128> = values.map(|v| (v * 100.0).round() as i128).collect();
    Ok(Arc::new(
        Decimal128Array::from(cents).with_precision_and_scale(18, 2)?,
    ))
}

fn write_legacy(path: &Path, orders: &[Order]) -> Result<(), GenerateError> {
    let schema = legacy_schema();
    let mut writer = create_writer(path, &schema)?;
    for chunk in orders.chunks(BATCH_ROWS) {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(LargeStringArray::from_iter_values(
                chunk.iter().map(|o| &o.order_id),
            )),
            Arc::new(
                chunk
                    .iter()
                    .map(|o| o.customer_id.as_str())
                    .collect::<DictionaryArray<Int32Type>>(),
            ),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(chunk.iter().map(|o| o.ts))
                    .with_timezone("+02:00"),
            ),
            cents(chunk.iter().map(|o| o.amount))?,
            Arc::new(
                chunk
                    .iter()
                    .map(|o| o.status.as_str())
                    .collect::<DictionaryArray<Int32Type>>(),
            ),
            cents(chunk.iter().map(|o| o.discount))?,
            Arc::new(StringViewArray::from_iter_values(
                chunk.iter().map(|o| &o.channel),
            )),
        ];
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
    }
    writer.close()?;
    Ok(())
}

/// Planted order kinds, in the order of their counts.
const ORDER_KINDS: usize = 7;
const O_NULL_CUSTOMER: usize = 0;
const O_NEGATIVE: usize = 1;
const O_NAN: usize = 2;
const O_INFINITE: usize = 3;
const O_PENDING: usize = 4;
const O_AFTER_CUTOFF: usize = 5;
const O_BEFORE_FLOOR: usize = 6;

/// The shared time frame: cut-off, and where valid planted timestamps may lie.
struct Frame {
    end_us: i64,
    /// Valid planted orders lie in `[orders_from, end_us)`.
    orders_from: i64,
    /// Valid planted events lie in `[events_from, end_us)` (the end date's partition).
    events_from: i64,
}

fn after_cutoff(rng: &mut Xoshiro256PlusPlus, frame: &Frame) -> i64 {
    frame.end_us + rng.gen_range(DAY_US..=30 * DAY_US)
}

fn in_1970(rng: &mut Xoshiro256PlusPlus) -> i64 {
    rng.gen_range(Y1970_US..Y1970_US + YEAR_US)
}

fn pick_customer<'a>(rng: &mut Xoshiro256PlusPlus, customers: &'a [String]) -> &'a str {
    &customers[rng.gen_range(0..customers.len())]
}

/// Writes the invalid orders; returns the planted counts by kind.
fn write_invalid_orders(
    path: &Path,
    rng: &mut Xoshiro256PlusPlus,
    frame: &Frame,
    clean: &CleanOrders,
) -> Result<[u64; ORDER_KINDS], GenerateError> {
    let per_kind = if clean.customers.is_empty() {
        0
    } else {
        planted(ORDER_DEFECT_RATE, clean.count)
    };
    let counts = [per_kind; ORDER_KINDS];
    let mut remaining = counts;
    let total: u64 = counts.iter().sum();
    let schema = with_nullable(&orders_schema(), "customer_id");
    let mut writer = create_writer(path, &schema)?;
    let mut written = 0u64;
    while written < total {
        let n = BATCH_ROWS.min((total - written) as usize);
        let mut order_id = Vec::with_capacity(n);
        let mut customer_id = Vec::with_capacity(n);
        let mut ts = Vec::with_capacity(n);
        let mut amount = Vec::with_capacity(n);
        let mut status = Vec::with_capacity(n);
        let mut discount = Vec::with_capacity(n);
        let mut channel = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = next_kind(rng, &mut remaining);
            written += 1;
            order_id.push(format!("X-O{written:09}"));
            let customer = pick_customer(rng, &clean.customers);
            customer_id.push((kind != O_NULL_CUSTOMER).then_some(customer));
            ts.push(match kind {
                O_AFTER_CUTOFF => after_cutoff(rng, frame),
                O_BEFORE_FLOOR => in_1970(rng),
                _ => rng.gen_range(frame.orders_from..frame.end_us),
            });
            let value = round2(rng.gen_range(5.0..250.0));
            let (a, d) = match kind {
                O_NEGATIVE => (-value, 0.0),
                O_NAN => (f64::NAN, 0.0),
                O_INFINITE => (f64::INFINITY, 0.0),
                _ if rng.gen::<f64>() < 0.2 => (value, round2(value * 0.1)),
                _ => (value, 0.0),
            };
            amount.push(a);
            discount.push(d);
            status.push(match kind {
                O_PENDING => "pending",
                _ => STATUSES[usize::from(rng.gen::<f64>() >= 0.85)],
            });
            channel.push(CHANNELS[rng.gen_range(0..CHANNELS.len())]);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(order_id)),
            Arc::new(StringArray::from(customer_id)),
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
            Arc::new(Float64Array::from(amount)),
            Arc::new(StringArray::from(status)),
            Arc::new(Float64Array::from(discount)),
            Arc::new(StringArray::from(channel)),
        ];
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
    }
    writer.close()?;
    Ok(counts)
}

/// Planted event kinds, in the order of their counts.
const EVENT_KINDS: usize = 4;
const E_UNKNOWN_TYPE: usize = 0;
const E_NULL_SESSION: usize = 1;
const E_BEFORE_FLOOR: usize = 2;
const E_AFTER_CUTOFF: usize = 3;

/// Writes the invalid events; returns the planted counts by kind.
fn write_invalid_events(
    path: &Path,
    rng: &mut Xoshiro256PlusPlus,
    frame: &Frame,
    identified_events: u64,
    customers: &[String],
) -> Result<[u64; EVENT_KINDS], GenerateError> {
    let per_kind = if customers.is_empty() {
        0
    } else {
        planted(EVENT_DEFECT_RATE, identified_events)
    };
    let counts = [per_kind; EVENT_KINDS];
    let mut remaining = counts;
    let total: u64 = counts.iter().sum();
    let schema = with_nullable(&events_schema(), "session_id");
    let mut writer = create_writer(path, &schema)?;
    let mut written = 0u64;
    while written < total {
        let n = BATCH_ROWS.min((total - written) as usize);
        let mut event_id = Vec::with_capacity(n);
        let mut customer_id = Vec::with_capacity(n);
        let mut session_id = Vec::with_capacity(n);
        let mut ts = Vec::with_capacity(n);
        let mut event_type = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = next_kind(rng, &mut remaining);
            written += 1;
            event_id.push(format!("X-E{written:010}"));
            customer_id.push(Some(pick_customer(rng, customers)));
            session_id.push((kind != E_NULL_SESSION).then(|| format!("X-S{written:010}")));
            ts.push(match kind {
                E_AFTER_CUTOFF => after_cutoff(rng, frame),
                E_BEFORE_FLOOR => in_1970(rng),
                _ => rng.gen_range(frame.events_from..frame.end_us),
            });
            event_type.push(match kind {
                E_UNKNOWN_TYPE => "video_play",
                _ => EVENT_TYPES[rng.gen_range(0..EVENT_TYPES.len())],
            });
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(event_id)),
            Arc::new(StringArray::from(customer_id)),
            Arc::new(StringArray::from(session_id)),
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
            Arc::new(StringArray::from(event_type)),
        ];
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
    }
    writer.close()?;
    Ok(counts)
}

/// Writes the dirty files and `truth/defects.json` after the clean shop under `opts.out`.
pub(super) fn write_dirty(
    opts: &GenerateOptions,
    clean: &GenerateSummary,
) -> Result<DirtySummary, GenerateError> {
    let out = &opts.out;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(splitmix(splitmix(opts.seed) ^ DIRTY_SEED));
    let end_us = end_us(opts.end_date)?;
    let window_start = end_us - WINDOW_DAYS * DAY_US;
    // The events partition of the end date: its month, or the day itself in the daily layout.
    let partition_start = if opts.daily {
        opts.end_date
    } else {
        NaiveDate::from_ymd_opt(opts.end_date.year(), opts.end_date.month(), 1)
            .expect("first of a valid month")
    };
    let partition_us = partition_start
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        .timestamp_micros();
    let frame = Frame {
        end_us,
        orders_from: window_start.max(FLOOR_US),
        events_from: partition_us.max(window_start).max(FLOOR_US),
    };

    let orders = read_clean_orders(out, &mut rng)?;
    write_legacy(&out.join(LEGACY_ORDERS_FILE), &orders.picked)?;
    let dirty_path = out.join(DIRTY_ORDERS_FILE);
    let o = write_invalid_orders(&dirty_path, &mut rng, &frame, &orders)?;

    let bytes = fs::read(&dirty_path).map_err(|e| io_context(&dirty_path, "cannot read", e))?;
    let truncated = out.join(TRUNCATED_ORDERS_FILE);
    fs::write(&truncated, &bytes[..bytes.len() * TRUNCATED_TENTHS / 10])
        .map_err(|e| io_context(&truncated, "cannot write", e))?;

    let events_dir = out
        .join("events")
        .join(format!("dt={}", partition_name(opts.end_date, opts.daily)));
    fs::create_dir_all(&events_dir).map_err(|e| io_context(&events_dir, "cannot create", e))?;
    let identified = clean.events - clean.anonymous_events;
    let e = write_invalid_events(
        &events_dir.join(DIRTY_EVENTS_NAME),
        &mut rng,
        &frame,
        identified,
        &orders.customers,
    )?;

    let defects = Defects {
        orders: OrderDefects {
            after_cutoff: o[O_AFTER_CUTOFF],
            before_floor: o[O_BEFORE_FLOOR],
            null_customer_id: o[O_NULL_CUSTOMER],
            invalid_amount: o[O_NEGATIVE] + o[O_NAN] + o[O_INFINITE],
            unknown_status: o[O_PENDING],
            duplicate_order_id: orders.picked.len() as u64,
            ..OrderDefects::default()
        },
        events: EventDefects {
            after_cutoff: e[E_AFTER_CUTOFF],
            before_floor: e[E_BEFORE_FLOOR],
            // The planted events all have a customer; the clean generator counted the rest.
            anonymous: clean.anonymous_events,
            null_session_id: e[E_NULL_SESSION],
            unknown_event_type: e[E_UNKNOWN_TYPE],
            ..EventDefects::default()
        },
        skipped_files: vec![TRUNCATED_ORDERS_FILE.to_string()],
    };
    let json = serde_json::to_string_pretty(&defects)
        .map_err(|e| GenerateError::Io(std::io::Error::other(e)))?;
    let defects_path = out.join(DEFECTS_FILE);
    fs::write(&defects_path, json + "\n")
        .map_err(|e| io_context(&defects_path, "cannot write", e))?;

    let summary = DirtySummary {
        duplicate_orders: orders.picked.len() as u64,
        invalid_orders: o.iter().sum(),
        invalid_events: e.iter().sum(),
        files: 5,
        defects,
    };
    tracing::info!(
        duplicate_orders = summary.duplicate_orders,
        invalid_orders = summary.invalid_orders,
        invalid_events = summary.invalid_events,
        "dirty files written"
    );
    Ok(summary)
}
