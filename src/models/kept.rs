//! Scores computed ahead: a run that has the base's features of the coming nights
//! (src/base.rs, `features-J`) and the models those nights will score with also scores those
//! features, so that a later night rescoring only its changed customers takes every other
//! customer's scores from here.
//!
//! Every scorer is a function of the customer's own features row (the classical outputs, the
//! trees, the calibration, the fallbacks), so scoring a customer alone or among a million gives
//! the same numbers, and a night that takes kept scores equals one that scores everyone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};

use super::{classical::Outputs, score_prepared, Prepared, Stored};
use crate::error::{Error, Result};
use crate::features::CustomerTable;

/// The columns of a kept scores file after `customer_id`: the classical outputs, then the
/// churn and value scores.
pub const COLUMNS: [&str; 9] = [
    "p_alive",
    "p_no_purchase_90d",
    "purchases_pv_365d",
    "spend",
    "clv",
    "purchases_365d",
    "next_purchase_days",
    "churn",
    "value",
];

/// The schema of a kept scores file.
pub fn schema() -> SchemaRef {
    let mut fields = vec![Field::new("customer_id", DataType::Utf8, false)];
    fields.extend(
        COLUMNS
            .iter()
            .map(|c| Field::new(*c, DataType::Float64, true)),
    );
    Arc::new(Schema::new(fields))
}

/// One customer's row of [`COLUMNS`].
pub type Row = [f64; 9];

/// Kept scores by customer id.
#[derive(Debug, Default)]
pub struct Kept {
    rows: HashMap<String, Row>,
}

impl Kept {
    /// From the batches of a kept scores file (any order).
    pub fn from_batches(batches: &[RecordBatch]) -> Result<Kept> {
        let what =
            |e: datafusion::arrow::error::ArrowError| Error::engine("the kept scores", e.into());
        let mut rows = HashMap::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
        for b in batches {
            let ids = cast(b.column(0), &DataType::Utf8).map_err(what)?;
            let ids = ids.as_string::<i32>();
            let columns = (1..=COLUMNS.len())
                .map(|c| cast(b.column(c), &DataType::Float64).map_err(what))
                .collect::<Result<Vec<_>>>()?;
            let columns: Vec<&Float64Array> = columns
                .iter()
                .map(|c| c.as_primitive::<Float64Type>())
                .collect();
            for i in 0..b.num_rows() {
                let mut row = [f64::NAN; 9];
                for (v, c) in row.iter_mut().zip(&columns) {
                    if c.is_valid(i) {
                        *v = c.value(i);
                    }
                }
                rows.insert(ids.value(i).to_string(), row);
            }
        }
        Ok(Kept { rows })
    }

    /// Customers held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// What a night takes from kept scores: the scores, and the customers they do not hold
/// because their data changed since.
pub struct Reuse<'a> {
    /// The scores computed ahead for tonight's cut-off.
    pub kept: &'a Kept,
    /// Customers whose features were computed tonight.
    pub changed: &'a HashSet<String>,
}

/// Every row's classical outputs and scores, part kept, part computed tonight.
pub(super) struct Merged {
    /// The customer ids, in the table's row order.
    pub ids: Vec<String>,
    /// The classical outputs.
    pub outputs: Outputs,
    /// Churn scores.
    pub churn: Vec<f64>,
    /// Value scores.
    pub value: Vec<f64>,
    /// Rows scored tonight (the others were kept).
    pub scored: usize,
}

/// Scores with `stored` the customers of `table` whose features are new tonight (changed,
/// or missing from the kept scores) and takes the others' from `reuse`, every row in
/// `table`'s order.
pub(super) fn score_with(
    stored: &Stored,
    table: &CustomerTable,
    rate: f64,
    reuse: &Reuse<'_>,
) -> Result<Merged> {
    let ids = table.ids()?;
    let kept: Vec<Option<&Row>> = ids
        .iter()
        .map(|id| {
            if reuse.changed.contains(id) {
                None
            } else {
                reuse.kept.rows.get(id)
            }
        })
        .collect();
    let new_rows: Vec<usize> = (0..ids.len()).filter(|&i| kept[i].is_none()).collect();
    let sub = table.take(&new_rows)?;
    let p = Prepared::with_classical(std::borrow::Cow::Owned(sub), stored.classical.clone(), rate)?;
    let (churn, value) = score_prepared(stored, &p, rate)?;
    let computed = rows_of(&p.outputs, &churn, &value);
    let mut columns: Vec<Vec<f64>> = vec![Vec::with_capacity(ids.len()); COLUMNS.len()];
    let mut next = computed.iter();
    for k in &kept {
        let row = match k {
            Some(row) => *row,
            None => next
                .next()
                .ok_or_else(|| Error::Model("kept scores: a row went missing".into()))?,
        };
        for (c, v) in columns.iter_mut().zip(row) {
            c.push(*v);
        }
    }
    let mut columns = columns.into_iter();
    let mut column = || columns.next().unwrap_or_default();
    let outputs = Outputs {
        p_alive: column(),
        p_no_purchase_90d: column(),
        purchases_pv_365d: column(),
        spend: column(),
        clv: column(),
        purchases_365d: column(),
        next_purchase_days: column(),
    };
    let (churn, value) = (column(), column());
    Ok(Merged {
        ids,
        outputs,
        churn,
        value,
        scored: new_rows.len(),
    })
}

/// Scores every customer of `table` (a base's features at a coming cut-off) with `stored`:
/// the batch to keep.
pub fn score_ahead(stored: &Stored, table: &CustomerTable, rate: f64) -> Result<RecordBatch> {
    let p = Prepared::with_classical(
        std::borrow::Cow::Borrowed(table),
        stored.classical.clone(),
        rate,
    )?;
    let (churn, value) = score_prepared(stored, &p, rate)?;
    let rows = rows_of(&p.outputs, &churn, &value);
    let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(p.ids.clone()))];
    for c in 0..COLUMNS.len() {
        columns.push(Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r[c]),
        )));
    }
    RecordBatch::try_new(schema(), columns)
        .map_err(|e| Error::engine("the scores computed ahead", e.into()))
}

/// The rows of [`COLUMNS`] of a prepared snapshot's outputs and scores.
fn rows_of(o: &Outputs, churn: &[f64], value: &[f64]) -> Vec<Row> {
    (0..churn.len())
        .map(|i| {
            [
                o.p_alive[i],
                o.p_no_purchase_90d[i],
                o.purchases_pv_365d[i],
                o.spend[i],
                o.clv[i],
                o.purchases_365d[i],
                o.next_purchase_days[i],
                churn[i],
                value[i],
            ]
        })
        .collect()
}
