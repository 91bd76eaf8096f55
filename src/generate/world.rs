//! The simulation: constants, the planted types, the calendar, the [`World`] shared by the
//! chunks and the per-customer processes of one chunk ([`ChunkGen`]).

use std::path::PathBuf;

use chrono::{Datelike, NaiveDate};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;
use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution, Exp1, Gamma, Poisson, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::write::{customers_schema, events_schema, orders_schema, ChunkStats, DayRows};
use super::{GenerateError, GenerateOptions};

// ---------------------------------------------------------------------------------------------
// Constants of the simulation
// ---------------------------------------------------------------------------------------------

pub(super) const DAY_US: i64 = 86_400_000_000;
const SECOND_US: f64 = 1_000_000.0;
/// Length of the input window in days.
pub(super) const WINDOW_DAYS: i64 = 730;
/// Length of the truth window (future orders) in days.
pub(super) const FUTURE_DAYS: i64 = 365;
/// Signups reach this many days before the window start.
pub(super) const PRE_WINDOW_SIGNUP_DAYS: i64 = 180;
pub(super) const DAYS_PER_YEAR: f64 = 365.25;
/// Share of anonymous events among all events.
const ANON_SHARE: f64 = 0.10;
const MAX_ROW_GROUP_ROWS: usize = 1 << 20;

const PAGE_VIEW: u8 = 0;
const PRODUCT_VIEW: u8 = 1;
const SEARCH: u8 = 2;
const ADD_TO_CART: u8 = 3;
const REMOVE_FROM_CART: u8 = 4;
const CHECKOUT_START: u8 = 5;
const PURCHASE: u8 = 6;
/// Indexed by the event codes above; the contract's vocabulary, in the same order.
pub(super) use crate::inputs::EVENT_TYPES;

pub(super) const COMPLETED: u8 = 0;
pub(super) const RETURNED: u8 = 1;
pub(super) const CANCELLED: u8 = 2;
/// Indexed by the status codes above; the contract's vocabulary, in the same order.
pub(super) use crate::inputs::ORDER_STATUSES as STATUSES;
pub(super) const CHANNELS: [&str; 2] = ["web", "app"];

pub(super) const COUNTRIES: [&str; 10] =
    ["DE", "US", "GB", "FR", "NL", "AT", "CH", "PL", "ES", "IT"];
const COUNTRY_WEIGHTS: [f64; 10] = [0.30, 0.18, 0.14, 0.10, 0.07, 0.06, 0.05, 0.04, 0.03, 0.03];

/// Seasonality by month (January first) and weekday (Monday first), relative.
const MONTH_WEIGHTS: [f64; 12] = [
    0.92, 0.85, 0.95, 0.95, 0.97, 0.93, 0.92, 0.93, 0.98, 1.03, 1.30, 1.27,
];
const WEEKDAY_WEIGHTS: [f64; 7] = [0.97, 0.96, 0.96, 0.98, 1.0, 1.05, 1.08];
/// Activity by hour of day (UTC), relative.
const HOUR_WEIGHTS: [f64; 24] = [
    0.35, 0.20, 0.12, 0.08, 0.07, 0.10, 0.25, 0.50, 0.75, 0.90, 1.00, 1.05, 1.10, 1.05, 1.00, 1.00,
    1.05, 1.15, 1.30, 1.50, 1.60, 1.50, 1.10, 0.70,
];

/// Indices into [`PLANTED_TYPES`](super::PLANTED_TYPES) / `TYPES` of the types with special
/// handling.
const T_AT_RISK: u8 = 5;
const T_HIBERNATING: u8 = 6;
const T_ONE_TIME: u8 = 8;
const T_SIGNUP_ONLY: u8 = 9;
/// Index of `campaign_signup`, the customers of the sign-up campaign (see `campaign.rs`); not
/// in `TYPES`: regular customers never get it.
pub(super) const T_CAMPAIGN: u8 = 10;

/// Customers of the "alive" types are alive this many days before the end of the data (or at
/// their signup, if later) by construction (so that their type describes them), and from then
/// on drop out at their
/// natural hazard. Neither the last 180 days (the window segmenter's backtest labels) nor the
/// future window is conditioned on survival, so a model cannot profit from the construction.
const TYPE_ANCHOR_DAYS: f64 = 180.0;

/// Episodic demand. Real purchase rates are not constant: customers go through active spells
/// and lulls (a project finished, a season over, a competitor tried) and come back, and their
/// browsing shows it before their orders do: it thins out during a lull and picks up again
/// (research) in the weeks before they buy again. The orders alone cannot tell a lull from a
/// dropout; the clickstream can. This share of repeat buyers has such episodes.
const EPISODIC_SHARE: f64 = 0.7;
/// Range of the per-customer mean length of active spells and of lulls, in days.
const ACTIVE_SPELL_DAYS: (f64, f64) = (90.0, 360.0);
const LULL_DAYS: (f64, f64) = (60.0, 240.0);
/// Order and browse rates during a lull, relative to the active rate.
const LULL_ORDER_FACTOR: f64 = 0.03;
const LULL_BROWSE_FACTOR: f64 = 0.15;
/// Browsing rate, relative to the active rate, in the research weeks that end a lull.
const RESEARCH_BROWSE_FACTOR: f64 = 1.5;
const RESEARCH_DAYS: (f64, f64) = (14.0, 42.0);
/// Probability that an order is preceded by research sessions in the days before it, and
/// how far before.
pub(super) const PRE_ORDER_RESEARCH_P: f64 = 0.6;
pub(super) const PRE_ORDER_RESEARCH_DAYS: (f64, f64) = (0.5, 10.0);

/// Behaviour of one planted type. Times are days relative to the end of the data
/// (`end_date + 1` 00:00 UTC); negative is the past.
struct TypeParams {
    /// Share of customers of this type.
    weight: f64,
    /// Range of signup times (skewed towards the later end).
    signup: (f64, f64),
    /// Mean orders per year while alive (Gamma across customers).
    order_rate: f64,
    /// Gamma shape of the purchase rate across customers (smaller = more heterogeneous).
    order_rate_shape: f64,
    /// Probability of a first order within days of signup.
    first_order_prob: f64,
    /// Mean remaining lifetime in days after the end of the data ("alive" types).
    lifetime_days: f64,
    /// Mean order value across customers (Gamma).
    aov: f64,
    /// Gamma shape of the mean order value across customers.
    aov_shape: f64,
    /// Lognormal sigma of order values around the customer's mean.
    order_sigma: f64,
    /// Share of customers with a high return propensity.
    high_return_share: f64,
    /// Beta parameters of the per-customer probability of using a discount.
    discount_beta: (f64, f64),
    /// Mean browse sessions per year while fully engaged (Gamma across customers).
    browse_rate: f64,
    /// Share of customers who keep browsing a little after dropout.
    residual_share: f64,
}

const TYPES: [TypeParams; 10] = [
    // champion
    TypeParams {
        weight: 0.07,
        signup: (-910.0, -365.0),
        order_rate: 22.0,
        order_rate_shape: 4.0,
        first_order_prob: 0.95,
        lifetime_days: 2000.0,
        aov: 110.0,
        aov_shape: 4.0,
        order_sigma: 0.5,
        high_return_share: 0.05,
        discount_beta: (1.0, 9.0),
        browse_rate: 35.0,
        residual_share: 0.5,
    },
    // loyal_regular
    TypeParams {
        weight: 0.14,
        signup: (-910.0, -180.0),
        order_rate: 10.0,
        order_rate_shape: 4.0,
        first_order_prob: 0.95,
        lifetime_days: 1100.0,
        aov: 70.0,
        aov_shape: 4.0,
        order_sigma: 0.55,
        high_return_share: 0.10,
        discount_beta: (2.0, 8.0),
        browse_rate: 17.0,
        residual_share: 0.4,
    },
    // big_spender
    TypeParams {
        weight: 0.05,
        signup: (-910.0, -120.0),
        order_rate: 3.5,
        order_rate_shape: 3.0,
        first_order_prob: 0.95,
        lifetime_days: 900.0,
        aov: 600.0,
        aov_shape: 3.0,
        order_sigma: 0.7,
        high_return_share: 0.10,
        discount_beta: (1.0, 9.0),
        browse_rate: 15.0,
        residual_share: 0.4,
    },
    // bargain_hunter
    TypeParams {
        weight: 0.12,
        signup: (-910.0, -90.0),
        order_rate: 8.0,
        order_rate_shape: 3.0,
        first_order_prob: 0.95,
        lifetime_days: 450.0,
        aov: 40.0,
        aov_shape: 3.0,
        order_sigma: 0.6,
        high_return_share: 0.45,
        discount_beta: (8.0, 2.0),
        browse_rate: 22.0,
        residual_share: 0.4,
    },
    // new_customer
    TypeParams {
        weight: 0.12,
        signup: (-90.0, 0.0),
        order_rate: 7.0,
        order_rate_shape: 2.0,
        first_order_prob: 0.8,
        lifetime_days: 300.0,
        aov: 65.0,
        aov_shape: 3.0,
        order_sigma: 0.6,
        high_return_share: 0.15,
        discount_beta: (2.0, 6.0),
        browse_rate: 25.0,
        residual_share: 0.3,
    },
    // at_risk
    TypeParams {
        weight: 0.10,
        signup: (-910.0, -240.0),
        order_rate: 10.5,
        order_rate_shape: 3.0,
        first_order_prob: 0.95,
        lifetime_days: 0.0,
        aov: 80.0,
        aov_shape: 3.0,
        order_sigma: 0.6,
        high_return_share: 0.35,
        discount_beta: (2.0, 6.0),
        browse_rate: 20.0,
        residual_share: 0.4,
    },
    // hibernating
    TypeParams {
        weight: 0.12,
        signup: (-910.0, -272.0),
        order_rate: 6.0,
        order_rate_shape: 2.0,
        first_order_prob: 0.9,
        lifetime_days: 0.0,
        aov: 60.0,
        aov_shape: 3.0,
        order_sigma: 0.6,
        high_return_share: 0.25,
        discount_beta: (2.0, 6.0),
        browse_rate: 15.0,
        residual_share: 0.4,
    },
    // window_shopper
    TypeParams {
        weight: 0.12,
        signup: (-910.0, 0.0),
        order_rate: 0.15,
        order_rate_shape: 1.0,
        first_order_prob: 0.0,
        lifetime_days: 700.0,
        aov: 50.0,
        aov_shape: 3.0,
        order_sigma: 0.6,
        high_return_share: 0.10,
        discount_beta: (2.0, 6.0),
        browse_rate: 60.0,
        residual_share: 0.5,
    },
    // one_time_buyer
    TypeParams {
        weight: 0.13,
        signup: (-910.0, -30.0),
        order_rate: 0.0,
        order_rate_shape: 1.0,
        first_order_prob: 1.0,
        lifetime_days: 0.0,
        aov: 55.0,
        aov_shape: 3.0,
        order_sigma: 0.6,
        high_return_share: 0.20,
        discount_beta: (2.0, 6.0),
        browse_rate: 6.0,
        residual_share: 0.4,
    },
    // signup_only
    TypeParams {
        weight: 0.03,
        signup: (-910.0, 0.0),
        order_rate: 0.0,
        order_rate_shape: 1.0,
        first_order_prob: 0.0,
        lifetime_days: 0.0,
        aov: 0.0,
        aov_shape: 1.0,
        order_sigma: 0.0,
        high_return_share: 0.0,
        discount_beta: (1.0, 1.0),
        browse_rate: 0.0,
        residual_share: 0.0,
    },
];

// ---------------------------------------------------------------------------------------------
// Calendar: seasonality used to thin the Poisson processes
// ---------------------------------------------------------------------------------------------

/// Relative activity by day (month × weekday) and hour, both normalised to mean 1.
pub(super) struct Calendar {
    /// Day (relative to the end of the data) of `day_weights[0]`.
    first_day: i64,
    day_weights: Vec<f64>,
    hour_weights: [f64; 24],
    /// Upper bound of `weight`.
    max_weight: f64,
}

impl Calendar {
    fn new(end_exclusive: NaiveDate) -> Self {
        let first_day = -(WINDOW_DAYS + PRE_WINDOW_SIGNUP_DAYS) - 2;
        let last_day = FUTURE_DAYS + 2;
        let mut day_weights: Vec<f64> = (first_day..last_day)
            .map(|d| {
                let date = end_exclusive + chrono::Duration::days(d);
                MONTH_WEIGHTS[date.month0() as usize]
                    * WEEKDAY_WEIGHTS[date.weekday().num_days_from_monday() as usize]
            })
            .collect();
        let mean = day_weights.iter().sum::<f64>() / day_weights.len() as f64;
        day_weights.iter_mut().for_each(|w| *w /= mean);
        let hour_mean = HOUR_WEIGHTS.iter().sum::<f64>() / 24.0;
        let mut hour_weights = HOUR_WEIGHTS;
        hour_weights.iter_mut().for_each(|w| *w /= hour_mean);
        let max_day = day_weights.iter().cloned().fold(1.0, f64::max);
        let max_hour = hour_weights.iter().cloned().fold(1.0, f64::max);
        Calendar {
            first_day,
            day_weights,
            hour_weights,
            max_weight: max_day * max_hour,
        }
    }

    /// Relative activity at time `t` (days relative to the end of the data).
    fn weight(&self, t: f64) -> f64 {
        let day = t.floor();
        let idx = day as i64 - self.first_day;
        let dw = if idx >= 0 && (idx as usize) < self.day_weights.len() {
            self.day_weights[idx as usize]
        } else {
            1.0
        };
        let hour = (((t - day) * 24.0) as usize).min(23);
        dw * self.hour_weights[hour]
    }

    /// The next point after `t` of a Poisson process with mean rate `rate_per_day`, modulated
    /// by the calendar (thinning). Infinite if the rate is zero.
    pub(super) fn next_point(
        &self,
        rng: &mut Xoshiro256PlusPlus,
        t: f64,
        rate_per_day: f64,
    ) -> f64 {
        if rate_per_day <= 0.0 {
            return f64::INFINITY;
        }
        let lambda = rate_per_day * self.max_weight;
        let mut t = t;
        loop {
            let e: f64 = rng.sample(Exp1);
            t += e / lambda;
            if rng.gen::<f64>() * self.max_weight < self.weight(t) {
                return t;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// World: everything shared by the chunks
// ---------------------------------------------------------------------------------------------

pub(super) struct World {
    pub(super) out: PathBuf,
    seed: u64,
    customers: usize,
    chunk_size: usize,
    /// Chunks of the regular customers; the campaign's chunks follow them.
    regular_chunks: usize,
    /// [`GenerateOptions::campaign_signups`] and [`GenerateOptions::campaign_days`].
    campaign_signups: usize,
    pub(super) campaign_days: f64,
    pub(super) calendar: Calendar,
    /// `end_date + 1` 00:00 UTC in microseconds since the epoch.
    pub(super) end_us: i64,
    /// Window start in microseconds.
    start_us: i64,
    /// Rows at or after this instant are not written (`until + 1` 00:00 UTC; `end_us` without
    /// [`GenerateOptions::until`]). The simulation itself always runs to the end.
    pub(super) cut_us: i64,
    /// The `dt=` value of every events partition of the window: `YYYY-MM` (monthly layout) or
    /// `YYYY-MM-DD` ([`GenerateOptions::daily`]).
    pub(super) partitions: Vec<String>,
    /// Partition index (into `partitions`) of every day of the window.
    partition_of_day: Vec<u16>,
    /// Digits of customer numbers.
    pub(super) id_width: usize,
    pub(super) props: WriterProperties,
    pub(super) orders_schema: SchemaRef,
    pub(super) events_schema: SchemaRef,
    pub(super) customers_schema: SchemaRef,
}

impl World {
    pub(super) fn new(opts: &GenerateOptions, chunk_size: usize) -> Result<Self, GenerateError> {
        let invalid =
            || GenerateError::InvalidOptions(format!("end_date {} is out of range", opts.end_date));
        let end_exclusive = opts.end_date.succ_opt().ok_or_else(invalid)?;
        let start_date = end_exclusive
            .checked_sub_days(chrono::Days::new(WINDOW_DAYS as u64))
            .ok_or_else(invalid)?;
        // Signups, the calendar and the future window must be representable too.
        end_exclusive
            .checked_add_days(chrono::Days::new((FUTURE_DAYS + 10) as u64))
            .ok_or_else(invalid)?;
        start_date
            .checked_sub_days(chrono::Days::new((PRE_WINDOW_SIGNUP_DAYS + 10) as u64))
            .ok_or_else(invalid)?;
        let end_us = end_exclusive
            .and_hms_opt(0, 0, 0)
            .ok_or_else(invalid)?
            .and_utc()
            .timestamp_micros();
        let start_us = end_us - WINDOW_DAYS * DAY_US;

        let mut partitions: Vec<String> = Vec::new();
        let mut partition_of_day = Vec::with_capacity(WINDOW_DAYS as usize);
        for d in 0..WINDOW_DAYS {
            let date = start_date + chrono::Duration::days(d);
            let name = partition_name(date, opts.daily);
            if partitions.last() != Some(&name) {
                partitions.push(name);
            }
            partition_of_day.push((partitions.len() - 1) as u16);
        }
        let cut_us = match opts.until {
            Some(until) if until < opts.end_date => {
                midnight_us(until.succ_opt().ok_or_else(invalid)?)
            }
            _ => end_us,
        };

        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(MAX_ROW_GROUP_ROWS))
            .set_column_dictionary_enabled(ColumnPath::from("event_id"), false)
            .set_column_dictionary_enabled(ColumnPath::from("order_id"), false)
            .set_column_dictionary_enabled(ColumnPath::from("email"), false)
            .set_column_statistics_enabled(ColumnPath::from("event_id"), EnabledStatistics::None)
            .build();

        Ok(World {
            out: opts.out.clone(),
            seed: opts.seed,
            customers: opts.customers,
            chunk_size,
            regular_chunks: opts.customers.div_ceil(chunk_size),
            campaign_signups: opts.campaign_signups,
            campaign_days: f64::from(opts.campaign_days),
            calendar: Calendar::new(end_exclusive),
            end_us,
            start_us,
            cut_us,
            partitions,
            partition_of_day,
            // The campaign's customers are numbered after the regular ones.
            id_width: (opts.customers + opts.campaign_signups)
                .to_string()
                .len()
                .max(7),
            props,
            orders_schema: orders_schema(),
            events_schema: events_schema(),
            customers_schema: customers_schema(),
        })
    }

    /// Days relative to the end of the data → microseconds since the epoch.
    pub(super) fn to_us(&self, t: f64) -> i64 {
        self.end_us + (t * DAY_US as f64).round() as i64
    }

    /// Number of chunks: the regular customers' and then the campaign's.
    pub(super) fn chunks(&self) -> usize {
        self.regular_chunks + self.campaign_signups.div_ceil(self.chunk_size)
    }

    /// Simulates one chunk of customers (the whole world up to the end of the future window).
    fn simulate(&self, chunk: usize) -> ChunkData {
        if chunk >= self.regular_chunks {
            return self.simulate_campaign(chunk - self.regular_chunks);
        }
        let first = chunk * self.chunk_size;
        let count = self.chunk_size.min(self.customers - first);
        let seed = chunk_seed(self.seed, chunk as u64);
        let mut gen = ChunkGen::new(self, chunk, first, count, seed);
        for local in 0..count {
            gen.customer(local as u32);
        }
        gen.anonymous_traffic(WINDOW_DAYS as f64);
        gen.finish()
    }

    /// Simulates chunk `c` of the campaign's customers (chunk `regular_chunks + c` of the
    /// shop) from its own generator, so that the regular chunks are the same with and without
    /// a campaign. Its anonymous traffic lies in the campaign's days (visitors of the
    /// campaign who did not sign up).
    fn simulate_campaign(&self, c: usize) -> ChunkData {
        let first = self.customers + c * self.chunk_size;
        let count = self
            .chunk_size
            .min(self.campaign_signups - c * self.chunk_size);
        let seed = chunk_seed(self.seed ^ CAMPAIGN_SEED, c as u64);
        let mut gen = ChunkGen::new(self, self.regular_chunks + c, first, count, seed);
        for local in 0..count {
            gen.campaign_customer(local as u32);
        }
        gen.anonymous_traffic(self.campaign_days);
        gen.finish()
    }

    /// Generates one chunk of customers, writes its files (only the rows before `cut_us`) and
    /// returns its truth batch.
    pub(super) fn run_chunk(
        &self,
        chunk: usize,
    ) -> Result<(ChunkStats, RecordBatch), GenerateError> {
        let mut data = self.simulate(chunk);
        if self.cut_us < self.end_us {
            let cut = self.cut_us;
            data.orders.retain(|o| o.ts < cut);
            for events in &mut data.partition_events {
                events.retain(|e| e.ts < cut);
            }
        }
        let stats = self.write_chunk(chunk, &data)?;
        let truth = self.truth_batch(&data)?;
        tracing::debug!(
            chunk,
            customers = stats.customers,
            orders = stats.orders,
            events = stats.events,
            "chunk written"
        );
        Ok((stats, truth))
    }

    /// The time range and events partition of `date` (see [`Day`]).
    pub(super) fn day(&self, date: NaiveDate) -> Result<Day, GenerateError> {
        let next = date.succ_opt().ok_or_else(|| {
            GenerateError::InvalidOptions(format!("add_day {date} is out of range"))
        })?;
        let from_us = midnight_us(date);
        let partition = (from_us >= self.start_us && from_us < self.end_us)
            .then(|| self.partition_of_day[((from_us - self.start_us) / DAY_US) as usize] as usize);
        Ok(Day {
            from_us,
            to_us: midnight_us(next),
            partition,
        })
    }

    /// Generates one chunk of customers and returns only the rows of `day` (writes nothing).
    pub(super) fn day_rows(&self, chunk: usize, day: &Day) -> Result<DayRows, GenerateError> {
        let data = self.simulate(chunk);
        self.day_batches(&data, day)
    }
}

/// One day of the data: rows with a timestamp in `[from_us, to_us)`.
pub(super) struct Day {
    pub(super) from_us: i64,
    pub(super) to_us: i64,
    /// Index of the day's events partition, `None` outside the window (no events there).
    pub(super) partition: Option<usize>,
}

/// The `dt=` value of the events partition of `date`: `YYYY-MM`, or `YYYY-MM-DD` if `daily`.
pub(super) fn partition_name(date: NaiveDate, daily: bool) -> String {
    if daily {
        format!("{:04}-{:02}-{:02}", date.year(), date.month(), date.day())
    } else {
        format!("{:04}-{:02}", date.year(), date.month())
    }
}

/// `date` 00:00 UTC in microseconds since the epoch.
fn midnight_us(date: NaiveDate) -> i64 {
    date.and_time(chrono::NaiveTime::MIN)
        .and_utc()
        .timestamp_micros()
}

/// Mixed into the generate seed for the campaign's chunks (a stream of their own).
const CAMPAIGN_SEED: u64 = 0xCA4D_A165_516E_0B05;

/// Mixes the seed and the chunk index into the seed of the chunk's generator (SplitMix64).
fn chunk_seed(seed: u64, chunk: u64) -> u64 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    splitmix(splitmix(seed) ^ splitmix(chunk.wrapping_add(0x005E_ED0F_C4A2)))
}

// ---------------------------------------------------------------------------------------------
// Per-chunk generation
// ---------------------------------------------------------------------------------------------

/// One order (in the window or in the future window).
#[derive(Clone, Copy)]
pub(super) struct OrderRec {
    pub(super) cust: u32,
    pub(super) seq: u32,
    pub(super) ts: i64,
    pub(super) amount: f64,
    pub(super) discount: f64,
    pub(super) status: u8,
    pub(super) channel: u8,
}

/// One clickstream event; `cust == ANON` for anonymous visitors.
#[derive(Clone, Copy)]
pub(super) struct Ev {
    pub(super) ts: i64,
    pub(super) cust: u32,
    pub(super) session: u32,
    pub(super) k: u16,
    pub(super) etype: u8,
}

pub(super) const ANON: u32 = u32::MAX;

pub(super) struct CustomerRow {
    pub(super) signup_us: i64,
    pub(super) country: u8,
    pub(super) email_null: bool,
    pub(super) opt_in: bool,
}

pub(super) struct TruthRow {
    pub(super) ptype: u8,
    pub(super) alive_at_end: bool,
    pub(super) dropout_us: Option<i64>,
    pub(super) rate: f64,
}

/// Everything one chunk produced.
pub(super) struct ChunkData {
    pub(super) chunk: usize,
    pub(super) first: usize,
    pub(super) customers: Vec<CustomerRow>,
    pub(super) truth: Vec<TruthRow>,
    pub(super) orders: Vec<OrderRec>,
    pub(super) future_orders: Vec<OrderRec>,
    /// Events by partition (index into [`World::partitions`]), each a customer's events in
    /// time order, customers in order, then the chunk's anonymous events in time order.
    pub(super) partition_events: Vec<Vec<Ev>>,
}

/// A session of the customer being generated: start time and its events in `tmp_events`.
struct SessionTmp {
    start: i64,
    from: u32,
    to: u32,
}

pub(super) struct ChunkGen<'w> {
    pub(super) world: &'w World,
    pub(super) rng: Xoshiro256PlusPlus,
    pub(super) data: ChunkData,
    type_cdf: [f64; 10],
    pub(super) country_cdf: [f64; 10],
    pub(super) browse_steps: Poisson<f64>,
    extra_items: Poisson<f64>,
    extra_views: Poisson<f64>,
    identified_events: u64,
    // Scratch buffers reused across customers.
    /// Orders of the current customer: (time, status, amount, discount, channel).
    pub(super) order_times: Vec<(i64, u8, f64, f64, u8)>,
    /// Lulls of the current customer: (start, research start, end) in days, in time order.
    lulls: Vec<(f64, f64, f64)>,
    /// Browse session start times of the current customer (days).
    pub(super) session_times: Vec<f64>,
    /// Events of the current customer's sessions: (time, event code).
    pub(super) tmp_events: Vec<(i64, u8)>,
    sessions: Vec<SessionTmp>,
    cust_events: Vec<Ev>,
}

fn cdf<const N: usize>(weights: [f64; N]) -> [f64; N] {
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    let mut out = [0.0; N];
    for (o, w) in out.iter_mut().zip(weights) {
        acc += w / total;
        *o = acc;
    }
    out[N - 1] = 1.0;
    out
}

pub(super) fn pick(rng: &mut Xoshiro256PlusPlus, cdf: &[f64]) -> usize {
    let u: f64 = rng.gen();
    cdf.iter().position(|&c| u < c).unwrap_or(cdf.len() - 1)
}

/// Whether `t` falls in one of `lulls`: `None` if not, `Some(true)` in its research weeks.
fn lull_at(lulls: &[(f64, f64, f64)], t: f64) -> Option<bool> {
    lulls
        .iter()
        .find(|&&(start, _, end)| t >= start && t < end)
        .map(|&(_, research, _)| t >= research)
}

pub(super) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl<'w> ChunkGen<'w> {
    fn new(world: &'w World, chunk: usize, first: usize, count: usize, seed: u64) -> Self {
        let mut weights = [0.0; 10];
        for (w, t) in weights.iter_mut().zip(TYPES.iter()) {
            *w = t.weight;
        }
        ChunkGen {
            world,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            data: ChunkData {
                chunk,
                first,
                customers: Vec::with_capacity(count),
                truth: Vec::with_capacity(count),
                orders: Vec::with_capacity(count * 9),
                future_orders: Vec::with_capacity(count * 4),
                partition_events: (0..world.partitions.len()).map(|_| Vec::new()).collect(),
            },
            type_cdf: cdf(weights),
            country_cdf: cdf(COUNTRY_WEIGHTS),
            browse_steps: Poisson::new(5.0).expect("valid lambda"),
            extra_items: Poisson::new(0.6).expect("valid lambda"),
            extra_views: Poisson::new(1.2).expect("valid lambda"),
            identified_events: 0,
            order_times: Vec::new(),
            lulls: Vec::new(),
            session_times: Vec::new(),
            tmp_events: Vec::new(),
            sessions: Vec::new(),
            cust_events: Vec::new(),
        }
    }

    pub(super) fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.rng.gen::<f64>()
    }

    pub(super) fn exp(&mut self) -> f64 {
        self.rng.sample(Exp1)
    }

    /// Gamma-distributed value with the given mean and shape.
    pub(super) fn gamma(&mut self, mean: f64, shape: f64) -> f64 {
        if mean <= 0.0 {
            return 0.0;
        }
        Gamma::new(shape, mean / shape)
            .expect("valid gamma")
            .sample(&mut self.rng)
    }

    /// A signup time in `[lo, hi]`, skewed towards `hi` (the shop grows).
    fn signup_time(&mut self, lo: f64, hi: f64) -> f64 {
        let u: f64 = self.rng.gen();
        lo + (hi - lo) * u.powf(0.75)
    }

    fn finish(self) -> ChunkData {
        self.data
    }

    /// Simulates customer `local` of the chunk: customers row, truth row, orders, sessions.
    fn customer(&mut self, local: u32) {
        let world = self.world;
        let ptype = pick(&mut self.rng, &self.type_cdf) as u8;
        let p = &TYPES[ptype as usize];

        let (signup, planted_dropout) = match ptype {
            T_HIBERNATING => {
                let d = self.uniform(-548.0, -182.0);
                (self.signup_time(p.signup.0, d - 90.0), Some(d))
            }
            T_AT_RISK => {
                let s = self.signup_time(p.signup.0, p.signup.1);
                (s, Some(self.uniform(-60.0, 90.0)))
            }
            _ => (self.signup_time(p.signup.0, p.signup.1), None),
        };
        let country = pick(&mut self.rng, &self.country_cdf) as u8;
        let email_null = self.rng.gen::<f64>() < 0.05;
        let opt_in = self.rng.gen::<f64>() < 0.6;
        self.data.customers.push(CustomerRow {
            signup_us: world.to_us(signup).min(world.end_us - 1),
            country,
            email_null,
            opt_in,
        });
        if ptype == T_SIGNUP_ONLY {
            self.data.truth.push(TruthRow {
                ptype,
                alive_at_end: false,
                dropout_us: None,
                rate: 0.0,
            });
            return;
        }

        // Customer-level heterogeneity.
        let rate_year = self.gamma(p.order_rate, p.order_rate_shape);
        let aov = self.gamma(p.aov, p.aov_shape);
        let return_p = if self.rng.gen::<f64>() < p.high_return_share {
            self.uniform(0.15, 0.40)
        } else {
            self.uniform(0.0, 0.06)
        };
        let cancel_p = self.uniform(0.005, 0.035);
        let discount_p = Beta::new(p.discount_beta.0, p.discount_beta.1)
            .expect("valid beta")
            .sample(&mut self.rng);
        let app_p: f64 = Beta::new(2.0, 3.0)
            .expect("valid beta")
            .sample(&mut self.rng);
        let engagement = if p.order_rate > 1.0 {
            (rate_year / p.order_rate)
                .max(1e-6)
                .powf(0.35)
                .clamp(0.5, 2.0)
        } else {
            1.0
        };
        let browse_year = self.gamma(p.browse_rate * engagement, 2.5);

        // Orders: a buy-till-you-defect process from signup to the end of the future window,
        // with lulls for the episodic share (see `EPISODIC_SHARE`).
        self.order_times.clear();
        let horizon = FUTURE_DAYS as f64;
        let single = ptype == T_ONE_TIME;
        self.lulls.clear();
        let mut active_share = 1.0;
        if p.order_rate > 0.0 && !single && self.rng.gen::<f64>() < EPISODIC_SHARE {
            let active_mean = self.uniform(ACTIVE_SPELL_DAYS.0, ACTIVE_SPELL_DAYS.1);
            let lull_mean = self.uniform(LULL_DAYS.0, LULL_DAYS.1);
            active_share = active_mean / (active_mean + lull_mean);
            let mut t = signup;
            loop {
                t += self.exp() * active_mean;
                if t >= horizon {
                    break;
                }
                let len = self.exp() * lull_mean;
                let research = self.uniform(RESEARCH_DAYS.0, RESEARCH_DAYS.1).min(len);
                self.lulls.push((t, t + len - research, t + len));
                t += len;
            }
        }
        // The active rate keeps the customer's long-run mean at `rate_year`.
        let rate_day =
            rate_year / DAYS_PER_YEAR / (active_share + (1.0 - active_share) * LULL_ORDER_FACTOR);
        let mut hazard = 1.0_f64;
        let mut dropout = planted_dropout.unwrap_or(f64::INFINITY);
        let mut dropout_drawn = planted_dropout.is_some();
        let mut t = signup;
        // Later signups are alive at their signup (and then drop out at the natural hazard).
        let anchor = (-TYPE_ANCHOR_DAYS).max(signup);
        let mut first = self.rng.gen::<f64>() < p.first_order_prob;
        loop {
            let cand = if first {
                first = false;
                // A first order within days of signup (accounts are created at checkout).
                world.calendar.next_point(&mut self.rng, t, 1.0 / 4.0)
            } else if single {
                break;
            } else {
                // Thinning: during a lull only `LULL_ORDER_FACTOR` of the points are orders.
                let mut c = t;
                loop {
                    c = world.calendar.next_point(&mut self.rng, c, rate_day);
                    if c.is_infinite()
                        || lull_at(&self.lulls, c).is_none()
                        || self.rng.gen::<f64>() < LULL_ORDER_FACTOR
                    {
                        break c;
                    }
                }
            };
            if single {
                dropout = cand + self.uniform(1.0, 60.0);
                dropout_drawn = true;
            }
            if cand >= horizon {
                break;
            }
            if !dropout_drawn && cand >= anchor {
                // Alive at the anchor by construction; memoryless remaining lifetime from there.
                dropout = anchor + self.exp() * p.lifetime_days / hazard;
                dropout_drawn = true;
            }
            if cand >= dropout {
                break;
            }
            t = cand;
            let u: f64 = self.rng.gen();
            let status = if u < cancel_p {
                CANCELLED
            } else if u < cancel_p + return_p {
                RETURNED
            } else {
                COMPLETED
            };
            let z: f64 = self.rng.sample(StandardNormal);
            let amount = round2(
                (aov * (p.order_sigma * z - 0.5 * p.order_sigma * p.order_sigma).exp()).max(1.0),
            );
            let discount = if self.rng.gen::<f64>() < discount_p {
                round2(amount * self.uniform(0.05, 0.40))
            } else {
                0.0
            };
            let channel = u8::from(self.rng.gen::<f64>() < app_p);
            self.order_times
                .push((world.to_us(t), status, amount, discount, channel));
            if status != COMPLETED {
                // Complaints raise the dropout hazard.
                hazard = (hazard * 1.35).min(4.0);
                if planted_dropout.is_none() && !single && t >= anchor {
                    dropout = t + self.exp() * p.lifetime_days / hazard;
                }
            }
        }
        if !dropout_drawn {
            dropout = anchor + self.exp() * p.lifetime_days / hazard;
        }

        self.push_orders(local);

        self.data.truth.push(TruthRow {
            ptype,
            alive_at_end: dropout > 0.0,
            dropout_us: Some(world.to_us(dropout.min(36_500.0))),
            rate: if single { 0.0 } else { rate_year },
        });

        // Clickstream inside the window.
        self.session_times.clear();
        let from = signup.max(-(WINDOW_DAYS as f64));
        let mut ramp = self.uniform(30.0, 90.0);
        if ptype == T_AT_RISK && dropout > 0.0 {
            // At-risk customers' engagement is already falling at the end of the data.
            ramp = ramp.max(dropout + self.uniform(15.0, 45.0));
        }
        let residual = if self.rng.gen::<f64>() < p.residual_share {
            self.uniform(1.0, 6.0) / DAYS_PER_YEAR
        } else {
            0.0
        };
        self.browse_times(
            from,
            dropout.min(0.0),
            browse_year / DAYS_PER_YEAR,
            dropout,
            ramp,
        );
        // Residual browsing after dropout has no episodes.
        self.lulls.clear();
        self.browse_times(dropout.max(from), 0.0, residual, f64::INFINITY, 1.0);

        self.push_sessions(local, from, None);
    }

    /// The orders of `order_times` into the chunk's orders (inside the window) and future
    /// orders (the future window), numbered in time order.
    pub(super) fn push_orders(&mut self, local: u32) {
        let world = self.world;
        for (seq, &(ts, status, amount, discount, channel)) in self.order_times.iter().enumerate() {
            let rec = OrderRec {
                cust: local,
                seq: seq as u32 + 1,
                ts,
                amount,
                discount,
                status,
                channel,
            };
            if ts >= world.start_us && ts < world.end_us {
                self.data.orders.push(rec);
            } else if ts >= world.end_us && ts < world.end_us + FUTURE_DAYS * DAY_US {
                self.data.future_orders.push(rec);
            }
        }
    }

    /// The sessions of customer `local` into the chunk's events: the browse sessions of
    /// `session_times`, research sessions before its orders (none before `from`) and the
    /// funnel sessions of its orders in the window. Browse sessions are
    /// [`ChunkGen::browse_session`]s, with `cart_p` as their share of add-to-cart steps.
    pub(super) fn push_sessions(&mut self, local: u32, from: f64, cart_p: Option<f64>) {
        let world = self.world;
        // Research before orders, also before the first orders of the future window.
        for i in 0..self.order_times.len() {
            let order_t = (self.order_times[i].0 - world.end_us) as f64 / DAY_US as f64;
            if order_t < from || order_t - PRE_ORDER_RESEARCH_DAYS.0 >= 0.0 {
                continue;
            }
            if self.rng.gen::<f64>() < PRE_ORDER_RESEARCH_P {
                let n = 1 + usize::from(self.rng.gen::<f64>() < 0.4);
                for _ in 0..n {
                    let before = self.uniform(PRE_ORDER_RESEARCH_DAYS.0, PRE_ORDER_RESEARCH_DAYS.1);
                    if order_t - before < 0.0 && order_t - before >= from {
                        self.session_times.push(order_t - before);
                    }
                }
            }
        }

        self.tmp_events.clear();
        self.sessions.clear();
        for i in 0..self.session_times.len() {
            let start = world.to_us(self.session_times[i]);
            let from = self.tmp_events.len() as u32;
            self.browse_session(start, cart_p);
            let to = self.tmp_events.len() as u32;
            self.sessions.push(SessionTmp { start, from, to });
        }
        for i in 0..self.order_times.len() {
            let ts = self.order_times[i].0;
            if ts < world.start_us || ts >= world.end_us {
                continue;
            }
            let from = self.tmp_events.len() as u32;
            self.order_session(ts);
            let to = self.tmp_events.len() as u32;
            let start = self.tmp_events[from as usize].0;
            self.sessions.push(SessionTmp { start, from, to });
        }
        // Number sessions in time order; order events by time.
        self.sessions.sort_by_key(|s| s.start);
        self.cust_events.clear();
        for (n, s) in self.sessions.iter().enumerate() {
            for (k, &(ts, etype)) in self.tmp_events[s.from as usize..s.to as usize]
                .iter()
                .enumerate()
            {
                if ts >= world.start_us && ts < world.end_us {
                    self.cust_events.push(Ev {
                        ts,
                        cust: local,
                        session: n as u32 + 1,
                        k: k as u16 + 1,
                        etype,
                    });
                }
            }
        }
        self.cust_events
            .sort_unstable_by_key(|e| (e.ts, e.session, e.k));
        self.identified_events += self.cust_events.len() as u64;
        for ev in self.cust_events.drain(..) {
            let day = ((ev.ts - world.start_us) / DAY_US) as usize;
            let partition = world.partition_of_day[day] as usize;
            self.data.partition_events[partition].push(ev);
        }
    }

    /// Browse session start times in `[from, to)`: a calendar-modulated Poisson process with
    /// `rate` per day, ramping down linearly to 10% over the `ramp` days before `dropout`.
    fn browse_times(&mut self, from: f64, to: f64, rate: f64, dropout: f64, ramp: f64) {
        if rate <= 0.0 || from >= to {
            return;
        }
        // Lulls thin the process out and their research weeks raise it: thinning from the
        // highest rate.
        let top = if self.lulls.is_empty() {
            1.0
        } else {
            RESEARCH_BROWSE_FACTOR
        };
        let mut t = from;
        loop {
            t = self.world.calendar.next_point(&mut self.rng, t, rate * top);
            if t >= to {
                break;
            }
            let ramp_factor = if t < dropout - ramp {
                1.0
            } else {
                (0.1 + 0.9 * (dropout - t) / ramp).clamp(0.1, 1.0)
            };
            let lull_factor = match lull_at(&self.lulls, t) {
                None => 1.0,
                Some(false) => LULL_BROWSE_FACTOR,
                Some(true) => RESEARCH_BROWSE_FACTOR,
            };
            let m = ramp_factor * lull_factor / top;
            if m >= 1.0 || self.rng.gen::<f64>() < m {
                self.session_times.push(t);
            }
        }
    }

    /// Gap between two events of a session, in microseconds.
    pub(super) fn gap(&mut self) -> i64 {
        ((3.0 + 40.0 * self.exp()) * SECOND_US) as i64
    }

    /// A browse session starting at `start` into `tmp_events`; `cart_p`: the share of its
    /// steps that add to the cart (default 0.12; a campaign customer's own).
    fn browse_session(&mut self, start: i64, cart_p: Option<f64>) {
        let cart_below = cart_p.map_or(0.94, |p| 0.82 + p);
        let mut t = start;
        self.tmp_events.push((t, PAGE_VIEW));
        let steps = 2 + (self.browse_steps.sample(&mut self.rng) as usize).min(30);
        let mut cart = 0u32;
        for _ in 0..steps {
            t += self.gap();
            let r: f64 = self.rng.gen();
            let e = if r < 0.42 {
                PRODUCT_VIEW
            } else if r < 0.62 {
                PAGE_VIEW
            } else if r < 0.82 {
                SEARCH
            } else if r < cart_below {
                cart += 1;
                ADD_TO_CART
            } else if cart > 0 {
                cart -= 1;
                REMOVE_FROM_CART
            } else {
                PRODUCT_VIEW
            };
            self.tmp_events.push((t, e));
        }
        if cart > 0 && self.rng.gen::<f64>() < 0.1 {
            // Abandoned checkout.
            t += self.gap();
            self.tmp_events.push((t, CHECKOUT_START));
        }
    }

    /// The funnel session of an order: its `purchase` event is at `order_ts`.
    fn order_session(&mut self, order_ts: i64) {
        let base = self.tmp_events.len();
        let mut t: i64 = 0;
        self.tmp_events.push((t, PAGE_VIEW));
        if self.rng.gen::<f64>() < 0.5 {
            t += self.gap();
            self.tmp_events.push((t, SEARCH));
        }
        let items = 1 + (self.extra_items.sample(&mut self.rng) as usize).min(6);
        for _ in 0..items {
            let views = 1 + (self.extra_views.sample(&mut self.rng) as usize).min(8);
            for _ in 0..views {
                t += self.gap();
                self.tmp_events.push((t, PRODUCT_VIEW));
            }
            if self.rng.gen::<f64>() < 0.2 {
                t += self.gap();
                self.tmp_events.push((t, SEARCH));
            }
            t += self.gap();
            self.tmp_events.push((t, ADD_TO_CART));
        }
        if self.rng.gen::<f64>() < 0.15 {
            t += self.gap();
            self.tmp_events.push((t, REMOVE_FROM_CART));
        }
        t += self.gap();
        self.tmp_events.push((t, CHECKOUT_START));
        t += ((30.0 + 90.0 * self.exp()) * SECOND_US) as i64;
        self.tmp_events.push((t, PURCHASE));
        let shift = order_ts - t;
        for e in &mut self.tmp_events[base..] {
            e.0 += shift;
        }
    }

    /// Anonymous sessions, about `ANON_SHARE` of all events of the chunk, uniform over the
    /// last `window` days (calendar-modulated). Appended to each partition after the
    /// identified events.
    fn anonymous_traffic(&mut self, window: f64) {
        let world = self.world;
        let target =
            (self.identified_events as f64 * ANON_SHARE / (1.0 - ANON_SHARE)).round() as u64;
        let mut anon: Vec<Ev> = Vec::with_capacity(target as usize + 64);
        let mut session = 0u32;
        while (anon.len() as u64) < target {
            let t = loop {
                let t = -window + window * self.rng.gen::<f64>();
                if self.rng.gen::<f64>() * world.calendar.max_weight < world.calendar.weight(t) {
                    break t;
                }
            };
            session += 1;
            self.tmp_events.clear();
            self.browse_session(world.to_us(t), None);
            for (k, &(ts, etype)) in self.tmp_events.iter().enumerate() {
                if ts >= world.start_us && ts < world.end_us {
                    anon.push(Ev {
                        ts,
                        cust: ANON,
                        session,
                        k: k as u16 + 1,
                        etype,
                    });
                }
            }
        }
        anon.sort_unstable_by_key(|e| (e.ts, e.session, e.k));
        for ev in anon {
            let day = ((ev.ts - world.start_us) / DAY_US) as usize;
            let partition = world.partition_of_day[day] as usize;
            self.data.partition_events[partition].push(ev);
        }
    }
}
