//! Scores computed ahead: a run that has the base's features of the coming nights
//! (src/base.rs, `features-J`) and the models those nights will score with also scores those
//! features, so that a later night rescoring only its changed customers takes every other
//! customer's scores from here.
//!
//! Every scorer is a function of the customer's own features row (the classical outputs, the
//! trees, the calibration, the fallbacks), so scoring a customer alone or among a million gives
//! the same numbers, and a night that takes kept scores equals one that scores everyone.

use std::collections::HashSet;
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

/// Kept scores: a scores file's customer ids and columns, in its row order, and that order
/// sorted by id (the file is written in the base's features order, usually the ids' own).
#[derive(Debug)]
pub struct Kept {
    ids: StringArray,
    columns: Vec<Float64Array>,
    /// Row indices in ascending order of id; None when the rows already are.
    order: Option<Vec<u32>>,
}

impl Default for Kept {
    fn default() -> Self {
        Kept {
            ids: StringArray::from(Vec::<&str>::new()),
            columns: vec![Float64Array::from(Vec::<f64>::new()); COLUMNS.len()],
            order: None,
        }
    }
}

impl Kept {
    /// From the batches of a kept scores file (any order).
    pub fn from_batches(batches: &[RecordBatch]) -> Result<Kept> {
        let what =
            |e: datafusion::arrow::error::ArrowError| Error::engine("the kept scores", e.into());
        if batches.is_empty() {
            return Ok(Kept::default());
        }
        let column = |c: usize, to: &DataType| -> Result<ArrayRef> {
            let parts = batches
                .iter()
                .map(|b| cast(b.column(c), to).map_err(what))
                .collect::<Result<Vec<_>>>()?;
            let parts: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            datafusion::arrow::compute::concat(&parts).map_err(what)
        };
        let ids = column(0, &DataType::Utf8)?.as_string::<i32>().clone();
        let columns = (1..=COLUMNS.len())
            .map(|c| {
                Ok(column(c, &DataType::Float64)?
                    .as_primitive::<Float64Type>()
                    .clone())
            })
            .collect::<Result<Vec<_>>>()?;
        let order = (!ids.iter().is_sorted()).then(|| sorted_order(&ids));
        Ok(Kept {
            ids,
            columns,
            order,
        })
    }

    /// Customers held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The kept row of the `k`-th customer in order of id.
    fn row_at(&self, k: usize) -> usize {
        self.order.as_ref().map_or(k, |o| o[k] as usize)
    }

    /// Value `c` ([`COLUMNS`]) of row `row`; NaN where the file has none.
    fn value(&self, c: usize, row: usize) -> f64 {
        let col = &self.columns[c];
        if col.is_valid(row) {
            col.value(row)
        } else {
            f64::NAN
        }
    }
}

/// The row indices of `ids` in ascending order of id (nulls first).
fn sorted_order(ids: &StringArray) -> Vec<u32> {
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by(|&a, &b| {
        let id = |i: u32| ids.is_valid(i as usize).then(|| ids.value(i as usize));
        id(a).cmp(&id(b))
    });
    order
}

/// For each of `ids`: the row of `kept` with the same id, unless the customer is `changed`
/// or not kept (None: scored tonight). One merge of the three in order of id; `ids` are
/// sorted here only when they are not already.
fn kept_rows(ids: &StringArray, kept: &Kept, changed: &HashSet<String>) -> Vec<Option<usize>> {
    let id = |i: usize| ids.is_valid(i).then(|| ids.value(i));
    let order = (!ids.iter().is_sorted()).then(|| sorted_order(ids));
    let mut changed: Vec<&str> = changed.iter().map(String::as_str).collect();
    changed.sort_unstable();
    let mut pick = vec![None; ids.len()];
    let (mut k, mut g) = (0, 0);
    for n in 0..ids.len() {
        let i = order.as_ref().map_or(n, |o| o[n] as usize);
        // A customer without an id is scored tonight.
        let Some(id) = id(i) else { continue };
        while g < changed.len() && changed[g] < id {
            g += 1;
        }
        if changed.get(g) == Some(&id) {
            continue;
        }
        while k < kept.len() && kept_id(kept, k).is_none_or(|x| x < id) {
            k += 1;
        }
        if k < kept.len() && kept_id(kept, k) == Some(id) {
            pick[i] = Some(kept.row_at(k));
        }
    }
    pick
}

/// The id of the `k`-th kept customer in order of id.
fn kept_id(kept: &Kept, k: usize) -> Option<&str> {
    let row = kept.row_at(k);
    kept.ids.is_valid(row).then(|| kept.ids.value(row))
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
    let ids = table.id_array()?;
    let kept = kept_rows(&ids, reuse.kept, reuse.changed);
    let new_rows: Vec<usize> = (0..ids.len()).filter(|&i| kept[i].is_none()).collect();
    let sub = table.take(&new_rows)?;
    let p = Prepared::with_classical(std::borrow::Cow::Owned(sub), stored.classical.clone(), rate)?;
    let (churn, value) = score_prepared(stored, &p, rate)?;
    let computed = rows_of(&p.outputs, &churn, &value);
    let columns: Vec<Vec<f64>> = (0..COLUMNS.len())
        .map(|c| {
            let mut next = computed.iter();
            kept.iter()
                .map(|k| match k {
                    Some(row) => Ok(reuse.kept.value(c, *row)),
                    None => next
                        .next()
                        .map(|r| r[c])
                        .ok_or_else(|| Error::Model("kept scores: a row went missing".into())),
                })
                .collect::<Result<Vec<f64>>>()
        })
        .collect::<Result<_>>()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(ids: &[&str]) -> Kept {
        let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(ids.to_vec()))];
        for c in 0..COLUMNS.len() {
            columns.push(Arc::new(Float64Array::from_iter(
                (0..ids.len()).map(|i| (c != 1 || i != 0).then_some((10 * i + c) as f64)),
            )));
        }
        let batch = RecordBatch::try_new(schema(), columns).unwrap();
        // Two batches, as a file read in parts comes.
        Kept::from_batches(&[batch.slice(0, 2), batch.slice(2, ids.len() - 2)]).unwrap()
    }

    #[test]
    fn kept_rows_match_by_id_in_any_order_and_leave_out_the_changed() {
        for ids in [["a", "b", "c", "d"], ["c", "a", "d", "b"]] {
            let k = kept(&ids);
            assert_eq!(k.len(), 4);
            let row = |id: &str| ids.iter().position(|x| *x == id);
            let changed: HashSet<String> = ["b".to_string(), "zz".to_string()].into();
            for night in [
                vec!["a", "b", "c", "e"],
                vec!["e", "c", "b", "a"],
                vec!["0", "d"],
            ] {
                let pick = kept_rows(&StringArray::from(night.clone()), &k, &changed);
                let want: Vec<Option<usize>> = night
                    .iter()
                    .map(|id| if *id == "b" { None } else { row(id) })
                    .collect();
                assert_eq!(pick, want, "kept {ids:?}, night {night:?}");
            }
            // A missing value reads as NaN.
            let first = row("a").unwrap();
            assert!(k.value(1, first).is_nan() == (first == 0));
            assert_eq!(k.value(2, first), (10 * first + 2) as f64);
        }
    }
}
