//! The design matrix: every numeric feature column of a snapshot table (everything features.sql
//! returns except ids, `snapshot` and the `next_*` outcomes), plus the classical models'
//! outputs, as columns of f64 with NaN for missing.

use datafusion::arrow::datatypes::DataType;

use crate::error::Result;
use crate::features::CustomerTable;

/// Column-major features of one snapshot's customers.
#[derive(Debug, Clone)]
pub struct Design {
    /// Feature names, in column order.
    pub names: Vec<String>,
    /// `columns[j][i]`: feature j of customer i.
    pub columns: Vec<Vec<f64>>,
}

/// Whether a column of features.sql is a model feature.
fn is_feature(name: &str, ty: &DataType) -> bool {
    let numeric = ty.is_numeric() || matches!(ty, DataType::Boolean);
    numeric && name != "snapshot" && name != "customer_id" && !name.starts_with("next_")
}

/// The feature columns of `table`, in its column order: a design's first columns.
pub fn table_features(table: &CustomerTable) -> Vec<String> {
    table
        .batch()
        .schema()
        .fields()
        .iter()
        .filter(|f| is_feature(f.name(), f.data_type()))
        .map(|f| f.name().clone())
        .collect()
}

impl Design {
    /// The feature columns of `table`, with `extra` columns appended (same row order).
    pub fn new(table: &CustomerTable, extra: &[(&str, Vec<f64>)]) -> Result<Design> {
        let mut names = table_features(table);
        // One column per task, on every core.
        let mut columns = super::parallel::map_rows(names.len(), |j| table.f64(&names[j]))
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        for (name, col) in extra {
            names.push(name.to_string());
            columns.push(col.clone());
        }
        Ok(Design { names, columns })
    }

    /// The same features for `other`, in this design's column order (features missing from
    /// `other` are NaN), so a model fitted on one snapshot applies to another.
    pub fn align(&self, other: &Design) -> Vec<Vec<f64>> {
        other.columns_for(&self.names)
    }

    /// The columns named `names`, in that order; a name this design lacks gives a column of
    /// NaN (what a stored model, which keeps only its feature names, predicts from).
    pub fn columns_for(&self, names: &[String]) -> Vec<Vec<f64>> {
        let rows = self.rows();
        names
            .iter()
            .map(|n| match self.column(n) {
                Some(c) => c.to_vec(),
                None => vec![f64::NAN; rows],
            })
            .collect()
    }

    /// The column named `name` (the first, should two share it), if any.
    pub fn column(&self, name: &str) -> Option<&[f64]> {
        let j = self.names.iter().position(|o| o == name)?;
        self.columns.get(j).map(Vec::as_slice)
    }

    /// Number of rows (customers): the length of the first column, 0 without columns.
    pub fn rows(&self) -> usize {
        self.columns.first().map_or(0, Vec::len)
    }

    /// Only the rows in `rows` (a deterministic subset), for training on a sample.
    pub fn select(&self, rows: &[usize]) -> Vec<Vec<f64>> {
        self.columns
            .iter()
            .map(|c| rows.iter().map(|&i| c[i]).collect())
            .collect()
    }
}

/// A stable 64-bit hash of a customer id (FNV-1a): the same id always lands in the same
/// training / calibration part and sample, whatever the row order.
pub fn id_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Row indices whose id hash falls in `[from, to)` out of `parts` buckets, at most `cap` of
/// them (evenly spaced), in row order.
pub fn rows_in_part(ids: &[String], parts: u64, from: u64, to: u64, cap: usize) -> Vec<usize> {
    let rows: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|(_, id)| (from..to).contains(&(id_hash(id) % parts)))
        .map(|(i, _)| i)
        .collect();
    if rows.len() <= cap {
        return rows;
    }
    (0..cap).map(|k| rows[k * rows.len() / cap]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_parts_partition() {
        assert_eq!(id_hash("C0000001"), id_hash("C0000001"));
        let ids: Vec<String> = (0..1000).map(|i| format!("C{i:07}")).collect();
        let a = rows_in_part(&ids, 4, 0, 3, usize::MAX);
        let b = rows_in_part(&ids, 4, 3, 4, usize::MAX);
        assert_eq!(a.len() + b.len(), 1000);
        assert!(a.iter().all(|i| !b.contains(i)));
        assert!(b.len() > 200 && b.len() < 300, "{}", b.len());
        assert_eq!(rows_in_part(&ids, 4, 0, 4, 100).len(), 100);
    }
}
