//! Schemas and the Parquet writers of one chunk (and of the truth batch).

use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, StringBuilder, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;

use super::world::{
    ChunkData, Day, Ev, OrderRec, World, ANON, CHANNELS, COUNTRIES, EVENT_TYPES, STATUSES,
};
use super::{io_context, GenerateError, PLANTED_TYPES};

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
pub(super) struct ChunkStats {
    pub(super) customers: u64,
    pub(super) orders: u64,
    pub(super) future_orders: u64,
    pub(super) events: u64,
    pub(super) anonymous_events: u64,
    pub(super) files: usize,
}

/// The rows of one day of one chunk ([`World::day_rows`]); batches may be empty.
pub(super) struct DayRows {
    pub(super) customers: RecordBatch,
    pub(super) orders: RecordBatch,
    pub(super) events: RecordBatch,
    pub(super) anonymous_events: u64,
}

pub(super) fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

pub(super) fn orders_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("order_ts", ts_type(), false),
        Field::new("amount", DataType::Float64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("discount_amount", DataType::Float64, false),
        Field::new("channel", DataType::Utf8, false),
    ]))
}

pub(super) fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, true),
        Field::new("session_id", DataType::Utf8, false),
        Field::new("event_ts", ts_type(), false),
        Field::new("event_type", DataType::Utf8, false),
    ]))
}

pub(super) fn customers_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("email", DataType::Utf8, true),
        Field::new("signup_ts", ts_type(), false),
        Field::new("country", DataType::Utf8, false),
        Field::new("marketing_opt_in", DataType::Boolean, false),
    ]))
}

pub(super) fn truth_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("planted_type", DataType::Utf8, false),
        Field::new("alive_at_end", DataType::Boolean, false),
        Field::new("dropout_ts", ts_type(), true),
        Field::new("purchase_rate_per_year", DataType::Float64, false),
    ]))
}

/// Appends `n` in decimal, zero-padded to `width` digits.
fn push_num(buf: &mut String, n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for _ in (digits.len() - i)..width {
        buf.push('0');
    }
    for &d in &digits[i..] {
        buf.push(d as char);
    }
}

fn timestamps(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

impl World {
    /// Customer number (1-based, global) of customer `local` of a chunk.
    fn customer_number(&self, data: &ChunkData, local: u32) -> u64 {
        (data.first + local as usize + 1) as u64
    }

    fn push_customer_id(&self, buf: &mut String, number: u64) {
        buf.push('C');
        push_num(buf, number, self.id_width);
    }

    fn write_file(
        &self,
        path: &Path,
        schema: &SchemaRef,
        columns: Vec<ArrayRef>,
    ) -> Result<(), GenerateError> {
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let file = File::create(path).map_err(|e| io_context(path, "cannot create", e))?;
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(self.props.clone()))?;
        writer.write(&batch)?;
        writer.close()?;
        Ok(())
    }

    pub(super) fn write_chunk(
        &self,
        chunk: usize,
        data: &ChunkData,
    ) -> Result<ChunkStats, GenerateError> {
        let part = format!("part-{chunk:05}.parquet");
        let mut stats = ChunkStats::default();

        let ids = self.chunk_ids(data);

        // customers/ (those who signed up before the cut)
        {
            let cut = self.cut_us;
            let columns = self.customer_columns(data, &ids, |signup| signup < cut);
            stats.customers = columns[0].len() as u64;
            let path = self.out.join("customers").join(&part);
            self.write_file(&path, &self.customers_schema, columns)?;
            stats.files += 1;
        }

        // orders/ and truth/future_orders/
        for (orders, dir) in [
            (&data.orders, self.out.join("orders")),
            (
                &data.future_orders,
                self.out.join("truth").join("future_orders"),
            ),
        ] {
            let columns = self.order_columns(data, &ids, orders);
            self.write_file(&dir.join(&part), &self.orders_schema, columns)?;
            stats.files += 1;
        }
        stats.orders = data.orders.len() as u64;
        stats.future_orders = data.future_orders.len() as u64;

        // events/dt=YYYY-MM/ or events/dt=YYYY-MM-DD/
        for (partition, events) in data.partition_events.iter().enumerate() {
            if events.is_empty() {
                continue;
            }
            let dir = self
                .out
                .join("events")
                .join(format!("dt={}", self.partitions[partition]));
            fs::create_dir_all(&dir).map_err(|e| io_context(&dir, "cannot create", e))?;
            let columns = self.event_columns(data, &ids, events);
            self.write_file(&dir.join(&part), &self.events_schema, columns)?;
            stats.files += 1;
            stats.events += events.len() as u64;
            stats.anonymous_events += events.iter().filter(|e| e.cust == ANON).count() as u64;
        }
        Ok(stats)
    }

    /// The customer ids of a chunk, formatted once.
    fn chunk_ids(&self, data: &ChunkData) -> Vec<String> {
        (0..data.customers.len() as u32)
            .map(|local| {
                let mut s = String::with_capacity(self.id_width + 1);
                self.push_customer_id(&mut s, self.customer_number(data, local));
                s
            })
            .collect()
    }

    /// The rows of `day` of a chunk: its signups, orders and events, as record batches.
    pub(super) fn day_batches(
        &self,
        data: &ChunkData,
        day: &Day,
    ) -> Result<DayRows, GenerateError> {
        let ids = self.chunk_ids(data);
        let on_day = |ts: i64| ts >= day.from_us && ts < day.to_us;
        let customers = RecordBatch::try_new(
            self.customers_schema.clone(),
            self.customer_columns(data, &ids, on_day),
        )?;
        let orders: Vec<OrderRec> = data
            .orders
            .iter()
            .filter(|o| on_day(o.ts))
            .copied()
            .collect();
        let orders = RecordBatch::try_new(
            self.orders_schema.clone(),
            self.order_columns(data, &ids, &orders),
        )?;
        let events: Vec<Ev> = match day.partition {
            Some(p) => data.partition_events[p]
                .iter()
                .filter(|e| on_day(e.ts))
                .copied()
                .collect(),
            None => Vec::new(),
        };
        let anonymous_events = events.iter().filter(|e| e.cust == ANON).count() as u64;
        let events = RecordBatch::try_new(
            self.events_schema.clone(),
            self.event_columns(data, &ids, &events),
        )?;
        Ok(DayRows {
            customers,
            orders,
            events,
            anonymous_events,
        })
    }

    /// The columns of the customers rows of a chunk whose `signup_ts` passes `keep`.
    fn customer_columns(
        &self,
        data: &ChunkData,
        ids: &[String],
        keep: impl Fn(i64) -> bool,
    ) -> Vec<ArrayRef> {
        let rows: Vec<usize> = (0..data.customers.len())
            .filter(|&local| keep(data.customers[local].signup_us))
            .collect();
        let n = rows.len();
        let mut id_b = StringBuilder::with_capacity(n, n * (self.id_width + 1));
        let mut email_b = StringBuilder::with_capacity(n, n * (self.id_width + 13));
        let mut country_b = StringBuilder::with_capacity(n, n * 2);
        let mut buf = String::new();
        for &local in &rows {
            let row = &data.customers[local];
            id_b.append_value(&ids[local]);
            if row.email_null {
                email_b.append_null();
            } else {
                buf.clear();
                buf.push('c');
                push_num(
                    &mut buf,
                    self.customer_number(data, local as u32),
                    self.id_width,
                );
                buf.push_str("@example.com");
                email_b.append_value(&buf);
            }
            country_b.append_value(COUNTRIES[row.country as usize]);
        }
        vec![
            Arc::new(id_b.finish()),
            Arc::new(email_b.finish()),
            timestamps(rows.iter().map(|&l| data.customers[l].signup_us).collect()),
            Arc::new(country_b.finish()),
            Arc::new(BooleanArray::from(
                rows.iter()
                    .map(|&l| data.customers[l].opt_in)
                    .collect::<Vec<_>>(),
            )),
        ]
    }

    fn order_columns(
        &self,
        data: &ChunkData,
        ids: &[String],
        orders: &[OrderRec],
    ) -> Vec<ArrayRef> {
        let n = orders.len();
        let mut order_id = StringBuilder::with_capacity(n, n * (self.id_width + 6));
        let mut customer_id = StringBuilder::with_capacity(n, n * (self.id_width + 1));
        let mut status = StringBuilder::with_capacity(n, n * 9);
        let mut channel = StringBuilder::with_capacity(n, n * 3);
        let mut buf = String::new();
        for o in orders {
            buf.clear();
            buf.push('O');
            push_num(&mut buf, self.customer_number(data, o.cust), self.id_width);
            buf.push('-');
            push_num(&mut buf, o.seq as u64, 4);
            order_id.append_value(&buf);
            customer_id.append_value(&ids[o.cust as usize]);
            status.append_value(STATUSES[o.status as usize]);
            channel.append_value(CHANNELS[o.channel as usize]);
        }
        vec![
            Arc::new(order_id.finish()),
            Arc::new(customer_id.finish()),
            timestamps(orders.iter().map(|o| o.ts).collect()),
            Arc::new(Float64Array::from(
                orders.iter().map(|o| o.amount).collect::<Vec<_>>(),
            )),
            Arc::new(status.finish()),
            Arc::new(Float64Array::from(
                orders.iter().map(|o| o.discount).collect::<Vec<_>>(),
            )),
            Arc::new(channel.finish()),
        ]
    }

    fn event_columns(&self, data: &ChunkData, ids: &[String], events: &[Ev]) -> Vec<ArrayRef> {
        let n = events.len();
        let w = self.id_width;
        let mut event_id = StringBuilder::with_capacity(n, n * (w + 10));
        let mut customer_id = StringBuilder::with_capacity(n, n * (w + 1));
        let mut session_id = StringBuilder::with_capacity(n, n * (w + 7));
        let mut event_type = StringBuilder::with_capacity(n, n * 12);
        let mut buf = String::with_capacity(32);
        for e in events {
            // session id: S<customer>-<n> or A<chunk>-<n>; event id: E<session id rest>-<k>.
            buf.clear();
            if e.cust == ANON {
                buf.push('A');
                push_num(&mut buf, data.chunk as u64, 5);
                buf.push('-');
                push_num(&mut buf, e.session as u64, 6);
                customer_id.append_null();
            } else {
                buf.push('S');
                push_num(&mut buf, self.customer_number(data, e.cust), w);
                buf.push('-');
                push_num(&mut buf, e.session as u64, 4);
                customer_id.append_value(&ids[e.cust as usize]);
            }
            session_id.append_value(&buf);
            if e.cust != ANON {
                buf.replace_range(0..1, "E");
            } else {
                buf.insert(0, 'E');
            }
            buf.push('-');
            push_num(&mut buf, e.k as u64, 2);
            event_id.append_value(&buf);
            event_type.append_value(EVENT_TYPES[e.etype as usize]);
        }
        vec![
            Arc::new(event_id.finish()),
            Arc::new(customer_id.finish()),
            Arc::new(session_id.finish()),
            timestamps(events.iter().map(|e| e.ts).collect()),
            Arc::new(event_type.finish()),
        ]
    }

    pub(super) fn truth_batch(&self, data: &ChunkData) -> Result<RecordBatch, GenerateError> {
        let n = data.truth.len();
        let mut id_b = StringBuilder::with_capacity(n, n * (self.id_width + 1));
        let mut type_b = StringBuilder::with_capacity(n, n * 12);
        let mut buf = String::new();
        for (local, row) in data.truth.iter().enumerate() {
            buf.clear();
            self.push_customer_id(&mut buf, self.customer_number(data, local as u32));
            id_b.append_value(&buf);
            type_b.append_value(PLANTED_TYPES[row.ptype as usize]);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(id_b.finish()),
            Arc::new(type_b.finish()),
            Arc::new(BooleanArray::from(
                data.truth
                    .iter()
                    .map(|r| r.alive_at_end)
                    .collect::<Vec<_>>(),
            )),
            Arc::new(
                TimestampMicrosecondArray::from(
                    data.truth.iter().map(|r| r.dropout_us).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from(
                data.truth.iter().map(|r| r.rate).collect::<Vec<_>>(),
            )),
        ];
        Ok(RecordBatch::try_new(truth_schema(), columns)?)
    }
}
