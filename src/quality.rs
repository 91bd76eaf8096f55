//! The data quality gates, checked once the inputs are counted (the clickstream's counts come
//! from its single pass, with the features) and before the models, segments or any output:
//! too many rejected rows in an input, an input with no usable rows, or an input that shrank
//! too much since the previous published run stop the run (exit 3) and nothing is published.
//! Every tripped gate is reported at once, with its counts. Messages carry counts and reasons,
//! never values from the data.

use crate::config::QualityParams;
use crate::error::{Error, Result};
use crate::inputs::{InputReport, Inputs};

/// Usable rows per input of a previous published run (from its manifest's `inputs`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreviousRows {
    /// The previous run's date.
    pub run_date: String,
    /// `(input, rows_used)`.
    pub rows_used: Vec<(String, u64)>,
}

impl PreviousRows {
    /// From the `inputs` object of a manifest.
    pub fn from_manifest(run_date: &str, inputs: &serde_json::Value) -> PreviousRows {
        let rows_used = ["orders", "events", "customers"]
            .iter()
            .filter_map(|name| {
                inputs
                    .get(name)
                    .and_then(|r| r.get("rows_used"))
                    .and_then(serde_json::Value::as_u64)
                    .map(|n| (name.to_string(), n))
            })
            .collect();
        PreviousRows {
            run_date: run_date.to_string(),
            rows_used,
        }
    }
}

fn percent(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// The problems of one input, appended to `problems`.
fn check_input(
    name: &str,
    r: &InputReport,
    q: &QualityParams,
    previous: Option<&PreviousRows>,
    problems: &mut Vec<String>,
) {
    let seen = r.rows_before_cutoff();
    if r.rows_used == 0 {
        problems.push(format!(
            "{name}: no usable rows ({} rows in {} files, {} at or after the cut-off, {} rejected) at {}",
            r.rows_in_files,
            r.files,
            r.rows_after_cutoff,
            r.rows_rejected(),
            r.location
        ));
        return;
    }
    let rejected = r.rows_rejected();
    let share = rejected as f64 / seen.max(1) as f64;
    if share > q.max_rejected_share {
        let reasons: Vec<String> = r
            .rejected
            .iter()
            .filter(|(reason, n)| crate::rules::is_error(reason) && **n > 0)
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        problems.push(format!(
            "{name}: {rejected} of {seen} rows rejected ({}, above quality.max_rejected_share = {}): {}; \
             the rows are in _rejected/",
            percent(share),
            percent(q.max_rejected_share),
            reasons.join(", ")
        ));
    }
    if let Some(p) = previous {
        if let Some((_, before)) = p.rows_used.iter().find(|(n, _)| n == name) {
            let floor = (*before as f64) * (1.0 - q.max_row_drop);
            if (r.rows_used as f64) < floor {
                problems.push(format!(
                    "{name}: {} usable rows, down from {before} in the run of {} (−{}, above \
                     quality.max_row_drop = {}); check that the export is complete",
                    r.rows_used,
                    p.run_date,
                    percent(1.0 - r.rows_used as f64 / (*before).max(1) as f64),
                    percent(q.max_row_drop)
                ));
            }
        }
    }
}

/// Checks every gate; `Err(InputRejected)` lists each one that tripped.
pub fn check(inputs: &Inputs, q: &QualityParams, previous: Option<&PreviousRows>) -> Result<()> {
    let mut problems = Vec::new();
    check_input("orders", &inputs.orders, q, previous, &mut problems);
    if let Some(e) = &inputs.events {
        check_input("events", e, q, previous, &mut problems);
    }
    if let Some(c) = &inputs.customers {
        check_input("customers", c, q, previous, &mut problems);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::InputRejected(format!(
            "data quality gate failed, nothing was published:\n  - {}",
            problems.join("\n  - ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rows: u64, after: u64, used: u64, rejected: &[(&str, u64)]) -> InputReport {
        InputReport {
            location: "file:///x/".into(),
            files: 1,
            rows_in_files: rows,
            rows_after_cutoff: after,
            rows_used: used,
            rejected: rejected.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
            ..Default::default()
        }
    }

    fn inputs(orders: InputReport, events: Option<InputReport>) -> Inputs {
        Inputs {
            orders,
            events,
            customers: None,
            ..Default::default()
        }
    }

    #[test]
    fn passes_under_the_limits_and_ignores_anonymous_events() {
        let i = inputs(
            report(1000, 100, 860, &[("invalid_amount", 40)]),
            Some(report(
                1000,
                0,
                500,
                &[("anonymous", 480), ("unknown_event_type", 20)],
            )),
        );
        check(&i, &QualityParams::default(), None).unwrap();
    }

    #[test]
    fn too_many_rejects_name_the_input_reasons_and_counts() {
        let i = inputs(
            report(
                1000,
                0,
                900,
                &[("invalid_amount", 70), ("duplicate_order_id", 30)],
            ),
            None,
        );
        let e = check(&i, &QualityParams::default(), None).unwrap_err();
        assert_eq!(e.exit_code(), 3);
        let m = e.to_string();
        assert!(
            m.contains("orders: 100 of 1000 rows rejected (10.00%"),
            "{m}"
        );
        assert!(
            m.contains("duplicate_order_id 30, invalid_amount 70"),
            "{m}"
        );
    }

    #[test]
    fn empty_inputs_and_drops_are_reported_together() {
        let i = inputs(report(10, 10, 0, &[]), Some(report(100, 0, 100, &[])));
        let prev = PreviousRows {
            run_date: "2026-01-01".into(),
            rows_used: vec![("orders".into(), 5), ("events".into(), 1000)],
        };
        let m = check(&i, &QualityParams::default(), Some(&prev))
            .unwrap_err()
            .to_string();
        assert!(m.contains("orders: no usable rows"), "{m}");
        assert!(
            m.contains("events: 100 usable rows, down from 1000 in the run of 2026-01-01 (−90.00%"),
            "{m}"
        );
    }

    #[test]
    fn previous_rows_from_a_manifest() {
        let v = serde_json::json!({"orders": {"rows_used": 7}, "events": null});
        let p = PreviousRows::from_manifest("d", &v);
        assert_eq!(p.rows_used, vec![("orders".to_string(), 7)]);
    }
}
