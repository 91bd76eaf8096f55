//! Tallies: the orders' and customers' counting passes, kept with a base so that a night
//! counts the files added since instead of every row.
//!
//! Every run counts, for orders and for customers, the rows per reason at its cut-off, the
//! valid rows, and the distinct ids among them (an id with several valid rows is a
//! duplicate). The cut-off enters those counts through one rule alone, `after_cutoff`, which
//! only `null_timestamp` precedes, and cut-offs fall on midnight (UTC). So a row's verdict at
//! any cut-off follows from its day and its verdict without that rule, its *class* (None:
//! valid but for the cut-off). A [`Tally`] of a set of files holds the rows per (day, class)
//! and the 64-bit digests of the valid rows' ids: those dated before its cut-off as a sorted,
//! distinct set, the others with their day. [`Tally::combine`] adds the tally of the files
//! added since a base's to the base's own at a later cut-off, which is the tally of every file
//! at that cut-off: the same counts as one pass over them all.
//!
//! As many distinct digests as valid rows proves the ids distinct; fewer (a duplicate, or two
//! ids with one digest) are counted again exactly over every row by the caller, as a full pass
//! would be.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::buffer::{Buffer, ScalarBuffer};
use datafusion::arrow::datatypes::{Int32Type, UInt64Type};
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use crate::engine;
use crate::error::{Error, Result};
use crate::rules;

/// Version of a tally's file: part of its key.
const TALLY_FORMAT: u32 = 2;
/// The first bytes of a tally's file.
const MAGIC: &[u8; 8] = b"SGTALLY2";
/// Where the early digests begin in a tally's file (8-aligned: read in place).
const EARLY_AT: usize = 24;

/// Rows per (day, class), the valid rows' id digests (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// The cut-off, in days since 1970-01-01: rows dated from it on are `after_cutoff`.
    cut_day: i32,
    /// Rows per (day, class): day None is a row without a timestamp; class None a valid row.
    rows: BTreeMap<(Option<i32>, Option<String>), u64>,
    /// The distinct digests of the valid rows dated before `cut_day` (or undated), sorted:
    /// those of `early` (as read from a file, in place) and those of `more` (none in `early`),
    /// kept apart so that a night does not copy the base's millions.
    early: ScalarBuffer<u64>,
    more: Vec<u64>,
    /// The digests of the valid rows dated from `cut_day` on, with their day.
    late: Vec<(u64, i32)>,
}

/// A tally's counts at its cut-off.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Every row.
    pub rows: u64,
    /// Rows per reason, `after_cutoff` included; valid rows are not here.
    pub reasons: BTreeMap<String, u64>,
    /// Valid rows.
    pub valid: u64,
    /// Distinct digests among the valid rows' ids: a lower bound of their distinct ids.
    pub distinct: u64,
}

impl Tally {
    /// No rows, at cut-off day `cut_day`.
    pub fn empty(cut_day: i32) -> Tally {
        Tally {
            cut_day,
            ..Tally::default()
        }
    }

    /// The cut-off day it is at.
    pub fn cut_day(&self) -> i32 {
        self.cut_day
    }

    /// Its counts at its cut-off.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts {
            distinct: (self.early.len() + self.more.len()) as u64,
            ..Counts::default()
        };
        for ((day, class), &n) in &self.rows {
            counts.rows += n;
            let after = day.is_some_and(|d| d >= self.cut_day);
            match (after, class) {
                (true, _) => {
                    *counts
                        .reasons
                        .entry(rules::AFTER_CUTOFF.into())
                        .or_default() += n
                }
                (false, Some(reason)) => *counts.reasons.entry(reason.clone()).or_default() += n,
                (false, None) => counts.valid += n,
            }
        }
        counts
    }

    /// The tally of `self`'s files and `added`'s (other files, tallied at `added`'s cut-off)
    /// at `added`'s cut-off, which must not lie before `self`'s (None if it does).
    pub fn combine(self, added: Tally) -> Option<Tally> {
        let cut = added.cut_day;
        if cut < self.cut_day {
            return None;
        }
        let Tally {
            mut rows,
            early,
            more,
            late,
            ..
        } = self;
        for (key, n) in added.rows {
            *rows.entry(key).or_default() += n;
        }
        // The digests that become early: the base's late ones now before the cut-off, and
        // the added files' early ones, less those the base holds already.
        let (now_early, mut still_late): (Vec<_>, Vec<_>) =
            late.into_iter().partition(|&(_, d)| d < cut);
        let mut new: Vec<u64> = now_early.into_iter().map(|(h, _)| h).collect();
        new.extend_from_slice(&added.early);
        new.extend(added.more);
        new.sort_unstable();
        new.dedup();
        new.retain(|h| early.binary_search(h).is_err() && more.binary_search(h).is_err());
        still_late.extend(added.late);
        Some(Tally {
            cut_day: cut,
            rows,
            early,
            more: merge_sorted(&more, &new),
            late: still_late,
        })
    }

    /// Every early digest, sorted.
    fn early_digests(&self) -> Vec<u64> {
        merge_sorted(&self.early, &self.more)
    }

    /// Its file's bytes: the magic, the cut-off day, the early digests (at [`EARLY_AT`]),
    /// the late ones with their days, the rows per (day, class).
    pub fn to_bytes(&self) -> Vec<u8> {
        let early = self.early_digests();
        let mut out = Vec::with_capacity(64 + early.len() * 8 + self.late.len() * 12);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.cut_day.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(early.len() as u64).to_le_bytes());
        debug_assert_eq!(out.len(), EARLY_AT);
        for h in &early {
            out.extend_from_slice(&h.to_le_bytes());
        }
        out.extend_from_slice(&(self.late.len() as u64).to_le_bytes());
        for (h, d) in &self.late {
            out.extend_from_slice(&h.to_le_bytes());
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&(self.rows.len() as u64).to_le_bytes());
        for ((day, class), n) in &self.rows {
            out.extend_from_slice(&day.unwrap_or(i32::MIN).to_le_bytes());
            match class {
                Some(c) => {
                    out.extend_from_slice(&(c.len() as u32).to_le_bytes());
                    out.extend_from_slice(c.as_bytes());
                }
                None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
            }
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    /// A tally from its file's bytes, its early digests read in place when aligned; None if
    /// they are not one (damaged or foreign).
    pub fn from_bytes(bytes: bytes::Bytes) -> Option<Tally> {
        let mut r = Reader(&bytes);
        if r.take(MAGIC.len())? != MAGIC {
            return None;
        }
        let cut_day = r.i32()?;
        r.u32()?;
        let n = usize::try_from(r.u64()?).ok()?;
        let early_bytes = r.take(n.checked_mul(8)?)?;
        let early = if (early_bytes.as_ptr() as usize) % std::mem::align_of::<u64>() == 0 {
            ScalarBuffer::new(Buffer::from(bytes.clone()), EARLY_AT / 8, n)
        } else {
            early_bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        };
        let n = usize::try_from(r.u64()?).ok()?;
        let late = r
            .take(n.checked_mul(12)?)?
            .chunks_exact(12)
            .map(|c| {
                let (h, d) = c.split_at(8);
                (
                    u64::from_le_bytes(h.try_into().expect("8 bytes")),
                    i32::from_le_bytes(d.try_into().expect("4 bytes")),
                )
            })
            .collect();
        let mut rows = BTreeMap::new();
        for _ in 0..r.u64()? {
            let day = Some(r.i32()?).filter(|&d| d != i32::MIN);
            let class = match r.u32()? {
                u32::MAX => None,
                len => Some(String::from_utf8(r.take(len as usize)?.to_vec()).ok()?),
            };
            rows.insert((day, class), r.u64()?);
        }
        (r.0.is_empty() && early.windows(2).all(|w| w[0] < w[1])).then_some(Tally {
            cut_day,
            rows,
            early,
            more: Vec::new(),
            late,
        })
    }
}

/// Reads little-endian numbers off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// The union of two sorted, distinct, disjoint lists, sorted.
fn merge_sorted(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] < b[j] {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// The key of the tallies a base keeps: what shapes a row's class (the rules but the
/// cut-off, the floor among them, and the erasure list, whose customers the inputs leave
/// out) and the file format.
pub fn key(orders_classes_sql: &str, customers_classes_sql: &str, salt: &str) -> String {
    crate::state::sha256_hex(
        format!(
            "tally {TALLY_FORMAT}\n{orders_classes_sql}\n{customers_classes_sql}\nerasure {salt}"
        )
        .as_bytes(),
    )
}

/// Tallies the rows of `sql`, whose columns are the row's class (Utf8, None: valid but for
/// the cut-off), its day (Int32, days since 1970-01-01; None: no timestamp) and its id's
/// digest (UInt64), at cut-off day `cut_day`. One pass; the valid rows' digests are sorted in
/// buckets by their top byte, shared among the cores.
pub async fn pass(ctx: &SessionContext, sql: &str, what: &str, cut_day: i32) -> Result<Tally> {
    let mut running = engine::stream(ctx, sql, what).await?;
    let mut rows: BTreeMap<(Option<i32>, Option<String>), u64> = BTreeMap::new();
    let mut early: Vec<u64> = Vec::new();
    let mut late = Vec::new();
    // The valid rows' days come in runs (files are written in time order): counted per run.
    let mut run: (Option<i32>, u64) = (None, 0);
    while let Some(batch) = running.stream.next().await {
        let batch = batch.map_err(|e| Error::engine(what, e))?;
        let classes = batch.column(0).as_string::<i32>();
        let days = batch.column(1).as_primitive::<Int32Type>();
        let digests = batch.column(2).as_primitive::<UInt64Type>().values();
        for (i, &h) in digests.iter().enumerate() {
            let day = days.is_valid(i).then(|| days.value(i));
            if classes.is_valid(i) {
                let key = (day, Some(classes.value(i).to_string()));
                *rows.entry(key).or_default() += 1;
                continue;
            }
            if day != run.0 {
                if run.1 > 0 {
                    *rows.entry((run.0, None)).or_default() += run.1;
                }
                run = (day, 0);
            }
            run.1 += 1;
            match day {
                Some(d) if d >= cut_day => late.push((h, d)),
                _ => early.push(h),
            }
        }
    }
    running.done();
    if run.1 > 0 {
        *rows.entry((run.0, None)).or_default() += run.1;
    }
    Ok(Tally {
        cut_day,
        rows,
        early: sorted_distinct(early).into(),
        more: Vec::new(),
        late,
    })
}

/// `digests` sorted, each once: bucketed by their top byte (digests are uniform), each bucket
/// sorted on its own, the buckets shared among the cores. One sort of them all was 13% of the
/// inputs stage's CPU at 200,000 customers (`perf record`), on one core.
fn sorted_distinct(digests: Vec<u64>) -> Vec<u64> {
    let total = digests.len();
    let mut buckets: Vec<Vec<u64>> = (0..256).map(|_| Vec::with_capacity(total / 200)).collect();
    for h in digests {
        buckets[(h >> 56) as usize].push(h);
    }
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per_thread = buckets.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for chunk in buckets.chunks_mut(per_thread) {
            scope.spawn(move || {
                for b in chunk {
                    b.sort_unstable();
                    b.dedup();
                }
            });
        }
    });
    let mut out = Vec::with_capacity(buckets.iter().map(Vec::len).sum());
    for b in buckets {
        out.extend_from_slice(&b);
    }
    out
}

/// The distinct ids among the valid rows `counts` tallies: the valid rows when as many distinct
/// digests prove them distinct, otherwise `exact_sql` (`SELECT count(DISTINCT …)`, one row
/// and one count) counts them exactly (a duplicate id, or a collision).
pub async fn distinct_ids(
    ctx: &SessionContext,
    counts: &Counts,
    exact_sql: &str,
    what: &str,
) -> Result<u64> {
    if counts.distinct >= counts.valid {
        return Ok(counts.valid);
    }
    let batches = engine::collect(ctx, exact_sql, what).await?;
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| Error::Model(format!("{what}: no result row")))?;
    let count = batch
        .column(0)
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
    Ok(count.value(0).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tally built by hand: rows (day, class, digest), as [`pass`] builds one.
    fn tally(cut_day: i32, rows: &[(Option<i32>, Option<&str>, u64)]) -> Tally {
        let mut t = Tally::empty(cut_day);
        let mut early = Vec::new();
        for &(day, class, h) in rows {
            *t.rows.entry((day, class.map(String::from))).or_default() += 1;
            if class.is_none() {
                match day {
                    Some(d) if d >= cut_day => t.late.push((h, d)),
                    _ => early.push(h),
                }
            }
        }
        t.early = sorted_distinct(early).into();
        t
    }

    #[test]
    fn counts_apply_the_cutoff_by_day() {
        let t = tally(
            10,
            &[
                (Some(1), None, 1),
                (Some(9), None, 2),
                (Some(9), None, 2),
                (Some(10), None, 3),
                (None, Some("null_timestamp"), 4),
                (Some(11), Some("invalid_amount"), 5),
                (Some(3), Some("invalid_amount"), 6),
                (None, None, 7),
            ],
        );
        let c = t.counts();
        assert_eq!(c.rows, 8);
        assert_eq!(c.valid, 4);
        assert_eq!(c.distinct, 3);
        let want: BTreeMap<String, u64> = [
            ("after_cutoff".to_string(), 2),
            ("invalid_amount".to_string(), 1),
            ("null_timestamp".to_string(), 1),
        ]
        .into();
        assert_eq!(c.reasons, want);
    }

    #[test]
    fn a_base_and_the_files_added_since_count_as_one_pass_over_all() {
        // The base's files, tallied at day 10; files added since; all at day 12.
        let base_rows = [
            (Some(5), None, 1),
            (Some(10), None, 2),
            (Some(13), None, 3),
            (Some(11), Some("invalid_amount"), 9),
        ];
        let added_rows = [
            (Some(11), None, 4),
            (Some(11), None, 2),
            (Some(12), None, 5),
            (Some(6), None, 1),
            (None, Some("null_timestamp"), 8),
        ];
        let all: Vec<_> = base_rows.iter().chain(&added_rows).copied().collect();
        let combined = tally(10, &base_rows)
            .combine(tally(12, &added_rows))
            .expect("a later cut-off");
        assert_eq!(combined.to_bytes(), tally(12, &all).to_bytes());
        assert_eq!(combined.counts().distinct, 3);
        assert_eq!(combined.counts().valid, 5);
        // Never backwards.
        assert!(tally(12, &base_rows)
            .combine(tally(10, &added_rows))
            .is_none());
    }

    #[test]
    fn a_tally_survives_its_file_and_damage_is_refused() {
        let t = tally(
            20_000,
            &[
                (Some(1), None, 11),
                (Some(20_001), None, 12),
                (None, Some("null_customer_id"), 13),
            ],
        );
        let bytes = bytes::Bytes::from(t.to_bytes());
        let read = Tally::from_bytes(bytes.clone()).expect("a tally");
        assert_eq!(read.to_bytes(), bytes);
        assert_eq!(read.counts(), t.counts());
        // Read in place or copied, the same tally.
        let unaligned = bytes::Bytes::from([&[0u8][..], &bytes].concat()).slice(1..);
        assert_eq!(
            Tally::from_bytes(unaligned).expect("a tally").to_bytes(),
            bytes
        );
        assert!(Tally::from_bytes(bytes.slice(..bytes.len() - 1)).is_none());
        assert!(Tally::from_bytes(bytes::Bytes::from_static(b"not a tally")).is_none());
    }

    #[test]
    fn sorted_distinct_sorts_and_drops_repeats() {
        assert!(sorted_distinct(Vec::new()).is_empty());
        let v = vec![u64::MAX, 3, 1 << 60, 3, 0, 1 << 60];
        assert_eq!(sorted_distinct(v), vec![0, 3, 1 << 60, u64::MAX]);
        let mut v: Vec<u64> = (0..10_000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        v.extend_from_within(..777);
        let mut want = v.clone();
        want.sort_unstable();
        want.dedup();
        assert_eq!(want.len(), 10_000);
        assert_eq!(sorted_distinct(v), want);
    }
}
