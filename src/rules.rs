//! The row rules of the data quality gate: one table for orders and events, evaluated one
//! way. Each input's rules become one SQL `CASE` that names the first rule a row fails (NULL
//! when it passes); rows are counted by grouping on that reason, for orders in their own small
//! query and for events inside the clickstream's single pass (queries/sessions.sql).
//!
//! Two reasons are not errors: `after_cutoff` (the run's future) and `anonymous` (an event
//! without a customer: counted, kept out of segments).

use crate::inputs::{EVENT_TYPES, ORDER_STATUSES};

/// Which input a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The orders input.
    Orders,
    /// The events (clickstream) input.
    Events,
}

/// One rule: the reason it gives, and the condition (SQL) under which a row fails it.
/// `{ts}` stands for the input's timestamp column, `{cutoff}` and `{floor}` for the bounds.
struct Rule {
    reason: &'static str,
    orders: bool,
    events: bool,
    condition: &'static str,
}

/// In order: the first rule a row fails is its reason.
const RULES: &[Rule] = &[
    Rule {
        reason: "null_timestamp",
        orders: true,
        events: true,
        condition: "{ts} IS NULL",
    },
    Rule {
        reason: AFTER_CUTOFF,
        orders: true,
        events: true,
        condition: "{ts} >= {cutoff}",
    },
    Rule {
        reason: "before_floor",
        orders: true,
        events: true,
        condition: "{ts} < {floor}",
    },
    Rule {
        reason: "null_order_id",
        orders: true,
        events: false,
        condition: "order_id IS NULL OR order_id = ''",
    },
    Rule {
        reason: "null_customer_id",
        orders: true,
        events: false,
        condition: "customer_id IS NULL OR customer_id = ''",
    },
    Rule {
        reason: ANONYMOUS,
        orders: false,
        events: true,
        condition: "customer_id IS NULL OR customer_id = ''",
    },
    Rule {
        reason: "invalid_amount",
        orders: true,
        events: false,
        condition: "amount IS NULL OR NOT (amount >= 0 AND amount < 1e15)",
    },
    Rule {
        reason: "unknown_status",
        orders: true,
        events: false,
        condition: "status IS NULL OR lower(trim(status)) NOT IN ({statuses})",
    },
    Rule {
        reason: "null_session_id",
        orders: false,
        events: true,
        condition: "session_id IS NULL OR session_id = ''",
    },
    Rule {
        reason: "unknown_event_type",
        orders: false,
        events: true,
        condition: "event_type IS NULL OR event_type NOT IN ({event_types})",
    },
];

/// Rows at or after the cut-off: this run's future, counted, not an error.
pub const AFTER_CUTOFF: &str = "after_cutoff";
/// Events without a customer: counted, not an error.
pub const ANONYMOUS: &str = "anonymous";
/// Extra versions of an order id (found after the row rules, by the orders query).
pub const DUPLICATE_ORDER_ID: &str = "duplicate_order_id";

/// Whether a reason is a rejection (an error in the data) rather than a row left out by design.
pub fn is_error(reason: &str) -> bool {
    reason != AFTER_CUTOFF && reason != ANONYMOUS
}

/// The bounds the rules need, as SQL timestamp literals.
#[derive(Debug, Clone, Default)]
pub struct Bounds {
    /// First instant the run must not see.
    pub cutoff: String,
    /// First instant a row may have; earlier rows are rejected.
    pub floor: String,
}

fn quoted(values: &[&str]) -> String {
    values
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The reason a row of `input` fails the rules, as an SQL expression (NULL when it passes).
pub fn reason_sql(input: Input, b: &Bounds) -> String {
    reason_sql_without(input, b, None)
}

/// The rules without `after_cutoff`: what the clickstream's per-day partials apply, so that
/// they do not depend on the run's cut-off (src/state.rs applies it when merging the days).
pub fn reason_sql_before_any_cutoff(input: Input, b: &Bounds) -> String {
    reason_sql_without(input, b, Some(AFTER_CUTOFF))
}

fn reason_sql_without(input: Input, b: &Bounds, left_out: Option<&str>) -> String {
    let ts = match input {
        Input::Orders => "order_ts",
        Input::Events => "event_ts",
    };
    let whens: Vec<String> = RULES
        .iter()
        .filter(|r| match input {
            Input::Orders => r.orders,
            Input::Events => r.events,
        })
        .filter(|r| Some(r.reason) != left_out)
        .map(|r| {
            let cond = r
                .condition
                .replace("{ts}", ts)
                .replace("{cutoff}", &b.cutoff)
                .replace("{floor}", &b.floor)
                .replace("{statuses}", &quoted(&ORDER_STATUSES))
                .replace("{event_types}", &quoted(&EVENT_TYPES));
            format!("WHEN {cond} THEN '{}'", r.reason)
        })
        .collect();
    format!("CASE {} END", whens.join(" "))
}

/// Every reason `input` can give, in rule order.
pub fn reasons(input: Input) -> Vec<&'static str> {
    RULES
        .iter()
        .filter(|r| match input {
            Input::Orders => r.orders,
            Input::Events => r.events,
        })
        .map(|r| r.reason)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> Bounds {
        Bounds {
            cutoff: "TIMESTAMP '2026-11-01 00:00:00'".into(),
            floor: "TIMESTAMP '1980-01-01 00:00:00'".into(),
        }
    }

    #[test]
    fn each_input_gets_its_rules_in_order() {
        assert_eq!(
            reasons(Input::Orders),
            [
                "null_timestamp",
                "after_cutoff",
                "before_floor",
                "null_order_id",
                "null_customer_id",
                "invalid_amount",
                "unknown_status"
            ]
        );
        assert_eq!(
            reasons(Input::Events),
            [
                "null_timestamp",
                "after_cutoff",
                "before_floor",
                "anonymous",
                "null_session_id",
                "unknown_event_type"
            ]
        );
    }

    #[test]
    fn reason_sql_substitutes_every_placeholder() {
        for input in [Input::Orders, Input::Events] {
            let sql = reason_sql(input, &bounds());
            assert!(!sql.contains('{'), "{sql}");
            assert!(
                sql.starts_with("CASE WHEN ") && sql.ends_with(" END"),
                "{sql}"
            );
        }
        let events = reason_sql(Input::Events, &bounds());
        assert!(
            events.contains("WHEN event_ts >= TIMESTAMP '2026-11-01 00:00:00' THEN 'after_cutoff'")
        );
        assert!(events.contains("'checkout_start'"));
        let orders = reason_sql(Input::Orders, &bounds());
        assert!(orders.contains("'cancelled'") && !orders.contains("anonymous"));
    }

    #[test]
    fn errors_exclude_future_and_anonymous_rows() {
        assert!(!is_error(AFTER_CUTOFF) && !is_error(ANONYMOUS));
        assert!(is_error("invalid_amount") && is_error(DUPLICATE_ORDER_ID));
    }
}
