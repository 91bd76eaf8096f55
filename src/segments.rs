//! Segments: readable names for clusters, lifecycle stage and loyalty tier per customer
//! (SEEDS.md), and the churn / value bands. Pure functions over features and scores.

use crate::config::{ActionRules, LifecycleRules, LoyaltyRules, ModelParams};

/// The z-score of a feature in one centroid.
type Z<'a> = &'a dyn Fn(&str) -> f64;

/// A candidate name and how well a centroid fits it (a weighted sum of centroid z-scores).
struct NameRule {
    name: &'static str,
    score: fn(Z) -> f64,
}

/// Candidate names, each scored from the centroid profile (z-scores of the transformed
/// features: positive = above the customer average).
const NAME_RULES: &[NameRule] = &[
    NameRule {
        name: "Champions",
        score: |z| z("frequency") + z("monetary") - z("recency_days") + 0.5 * z("sessions_90d"),
    },
    NameRule {
        name: "Loyal regulars",
        score: |z| {
            z("frequency") - z("recency_days")
                + 0.5 * z("tenure_days")
                + 0.5 * z("repeat_purchase_rate")
                - 0.5 * z("avg_order_value").abs()
        },
    },
    NameRule {
        name: "Big spenders",
        score: |z| 1.5 * z("avg_order_value") + 0.5 * z("monetary") - 0.5 * z("frequency"),
    },
    NameRule {
        name: "Bargain hunters",
        score: |z| 1.5 * z("discount_share") + 0.3 * z("frequency"),
    },
    NameRule {
        name: "Frequent returners",
        score: |z| 1.5 * (z("complaint_rate") + z("return_rate")),
    },
    NameRule {
        name: "New customers",
        score: |z| -1.5 * z("tenure_days") + 0.3 * z("sessions_90d"),
    },
    NameRule {
        name: "At risk",
        score: |z| {
            0.5 * z("recency_days") + 0.5 * z("frequency")
                - z("engagement_trend")
                - 0.5 * z("sessions_90d")
        },
    },
    NameRule {
        name: "Hibernating",
        // Bought before (frequency), but long ago, and no longer visits.
        score: |z| {
            z("recency_days") + z("days_since_last_visit") - z("sessions_90d") + z("frequency")
        },
    },
    NameRule {
        name: "Window shoppers",
        score: |z| z("sessions_90d") + z("add_to_cart_90d") - 1.5 * z("frequency"),
    },
    NameRule {
        name: "One-time buyers",
        score: |z| -z("frequency") + 0.5 * z("recency_days") - 0.5 * z("sessions_90d") + 0.5,
    },
    NameRule {
        name: "Prospects",
        // No order yet and little activity: signed up, or browsed once.
        score: |z| -1.5 * z("frequency") - z("sessions_90d") - z("add_to_cart_90d"),
    },
];

/// One unique name per cluster. `fixed[c]` keeps cluster `c`'s name (a segment carried over
/// from the previous run); the others take the best-fitting free names, greedily, highest
/// score first (`z(c, feature)` is the centroid's z-score); clusters left over (more clusters
/// than names) get "Group N".
pub fn names(k: usize, z: &dyn Fn(usize, &str) -> f64, fixed: &[Option<String>]) -> Vec<String> {
    let mut out: Vec<Option<String>> = (0..k).map(|c| fixed.get(c).cloned().flatten()).collect();
    let taken = |out: &[Option<String>], name: &str| out.iter().flatten().any(|n| n == name);
    let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
    for c in (0..k).filter(|&c| out[c].is_none()) {
        let zc = |f: &str| z(c, f);
        for (r, rule) in NAME_RULES.iter().enumerate() {
            pairs.push(((rule.score)(&zc), c, r));
        }
    }
    // Highest score first; ties by cluster then rule so the result is deterministic.
    pairs.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
    });
    for (_, c, r) in pairs {
        if out[c].is_none() && !taken(&out, NAME_RULES[r].name) {
            out[c] = Some(NAME_RULES[r].name.to_string());
        }
    }
    let mut group = 0;
    for c in 0..k {
        while out[c].is_none() {
            group += 1;
            let name = format!("Group {group}");
            if !taken(&out, &name) {
                out[c] = Some(name);
            }
        }
    }
    out.into_iter().flatten().collect()
}

/// Plain-language label of a feature for descriptions.
fn label(feature: &str) -> &str {
    match feature {
        "recency_days" => "days since the last order",
        "frequency" => "orders",
        "monetary" => "spend",
        "avg_order_value" => "order value",
        "tenure_days" => "tenure",
        "repeat_purchase_rate" => "repeat purchases a year",
        "complaint_rate" => "returns and cancellations",
        "return_rate" => "returns",
        "discount_share" => "discounted orders",
        "sessions_90d" => "visits in the last 90 days",
        "add_to_cart_90d" => "cart adds in the last 90 days",
        "days_since_last_visit" => "days since the last visit",
        "engagement_trend" => "engagement trend",
        other => other,
    }
}

/// The features that set a segment apart: the largest centroid z-scores by magnitude, at
/// most `n`, those under 0.5σ left out; e.g. `"high discounted orders (+1.9σ)"`.
pub fn distinguishing(profile: &[(String, f64)], n: usize) -> Vec<String> {
    let mut z: Vec<&(String, f64)> = profile.iter().filter(|(_, v)| v.abs() >= 0.5).collect();
    z.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
    z.into_iter()
        .take(n)
        .map(|(f, v)| {
            let dir = if *v > 0.0 { "high" } else { "low" };
            format!("{dir} {} ({v:+.1}σ)", label(f))
        })
        .collect()
}

/// Median figures of a segment in original units, for its description.
#[derive(Debug, Clone, Copy, Default)]
pub struct Medians {
    /// Completed orders.
    pub orders: f64,
    /// Days since the last completed order (NaN: none).
    pub recency_days: f64,
    /// Net revenue.
    pub spend: f64,
    /// Visits in the last 90 days.
    pub sessions_90d: f64,
}

/// One sentence a marketer can read: who is in the segment, what they do, what stands out.
pub fn describe(
    name: &str,
    customers: usize,
    share: f64,
    m: Medians,
    mean_churn: f64,
    standout: &[String],
) -> String {
    let orders = if m.orders.is_nan() || m.orders < 1.0 {
        "have not bought yet".to_string()
    } else {
        let last = if m.recency_days.is_nan() {
            String::new()
        } else {
            format!(", the last {:.0} days ago", m.recency_days)
        };
        format!(
            "typically placed {:.0} order{}{last} and spent {:.0} in total",
            m.orders,
            if m.orders.round() == 1.0 { "" } else { "s" },
            m.spend
        )
    };
    let visits = if m.sessions_90d.is_nan() || m.sessions_90d.round() == 0.0 {
        "no visits".to_string()
    } else if m.sessions_90d.round() == 1.0 {
        "1 visit".to_string()
    } else {
        format!("{:.0} visits", m.sessions_90d)
    };
    let mut s = format!(
        "{name}: {customers} customers ({:.1}%) who {orders}, with {visits} in the last 90 days and a {:.0}% chance of not ordering in the next 90",
        100.0 * share,
        100.0 * mean_churn
    );
    if !standout.is_empty() {
        s.push_str("; marked by ");
        s.push_str(&standout.join(", "));
    }
    s.push('.');
    s
}

/// The lifecycle stages of SEEDS.md, in order.
pub const LIFECYCLE_STAGES: [&str; 6] = [
    "potential",
    "development",
    "growth",
    "maturity",
    "decline",
    "termination",
];

/// Lifecycle stage of one customer (rules in README "Lifecycle stage").
pub fn lifecycle_stage(
    rules: &LifecycleRules,
    frequency: f64,
    recency_days: f64,
    tenure_days: f64,
    churn: f64,
    churn_high: f64,
) -> &'static str {
    // NaN (unknown) counts as no order.
    if frequency.is_nan() || frequency < 1.0 {
        "potential"
    } else if recency_days >= rules.termination_days {
        "termination"
    } else if recency_days >= rules.decline_days || churn >= churn_high {
        "decline"
    } else if tenure_days <= rules.new_customer_days || frequency < 2.0 {
        "development"
    } else if frequency >= rules.mature_orders && tenure_days >= rules.mature_tenure_days {
        "maturity"
    } else {
        "growth"
    }
}

/// The loyalty tiers of SEEDS.md, lowest first.
pub const LOYALTY_TIERS: [&str; 4] = ["none", "habitual", "preference", "committed"];

/// Loyalty tier of one customer (rules in README "Loyalty tier"): repeat purchasing in the
/// last year, capped at `habitual` for price-driven, complaining or leaving customers.
pub fn loyalty_tier(
    rules: &LoyaltyRules,
    frequency_365d: f64,
    discount_share: f64,
    return_rate: f64,
    churn: f64,
) -> &'static str {
    if frequency_365d.is_nan() || frequency_365d < rules.habitual_orders {
        return "none";
    }
    let capped = discount_share > rules.max_discount_share
        || return_rate > rules.max_return_rate
        || churn > rules.max_churn_score;
    if capped || frequency_365d < rules.preference_orders {
        "habitual"
    } else if frequency_365d >= rules.committed_orders {
        "committed"
    } else {
        "preference"
    }
}

/// `low` / `medium` / `high` churn risk from the configured probability cut-offs.
pub fn churn_band(m: &ModelParams, score: f64) -> &'static str {
    if score >= m.churn_high {
        "high"
    } else if score >= m.churn_medium {
        "medium"
    } else {
        "low"
    }
}

/// Value band cut-offs: the configured quantiles of the positive value scores.
pub fn value_cutoffs(m: &ModelParams, values: &[f64]) -> (f64, f64) {
    let mut pos: Vec<f64> = values.iter().copied().filter(|v| *v > 0.0).collect();
    if pos.is_empty() {
        return (f64::INFINITY, f64::INFINITY);
    }
    pos.sort_by(f64::total_cmp);
    let q = |p: f64| pos[((pos.len() - 1) as f64 * p).round() as usize];
    (q(m.value_medium_quantile), q(m.value_high_quantile))
}

/// `high` / `medium` / `low` value from the cut-offs of [`value_cutoffs`].
pub fn value_band((medium, high): (f64, f64), value: f64) -> &'static str {
    if value > 0.0 && value >= high {
        "high"
    } else if value > 0.0 && value >= medium {
        "medium"
    } else {
        "low"
    }
}

/// What a segment's `recommended_action` is derived from.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionProfile<'a> {
    /// Mean churn score.
    pub mean_churn: f64,
    /// Mean value score ÷ the run's mean value score.
    pub value_ratio: f64,
    /// Median share of discounted orders.
    pub median_discount_share: f64,
    /// The most common lifecycle stage.
    pub lifecycle_stage: &'a str,
    /// The most common loyalty tier.
    pub loyalty_tier: &'a str,
}

/// The play for a segment: the first rule that holds, in this order (README, "Recommended
/// actions"): never-buyers → convert; slipping away and valuable → win back; mostly gone →
/// sunset; slipping away → low-cost reactivation; price-driven but staying → no discount;
/// committed or preferring → loyalty reward; new → onboarding; else nurture.
pub fn recommended_action(p: &ActionProfile, rules: &ActionRules) -> &'static str {
    let slipping = p.mean_churn >= rules.high_churn;
    if p.lifecycle_stage == "potential" {
        "Convert: a first-order incentive and recommendations from what they browsed"
    } else if slipping && p.value_ratio >= rules.high_value_ratio {
        "Win back: a personal, time-limited offer; they are valuable and slipping away"
    } else if p.lifecycle_stage == "termination" {
        "Sunset: one last-chance e-mail, then leave them out of paid campaigns"
    } else if slipping {
        "Reactivate cheaply: an automated reminder e-mail, no paid media or discounts"
    } else if p.median_discount_share >= rules.price_driven_discount_share {
        "No discount: they buy anyway; show new arrivals at full price"
    } else if matches!(p.loyalty_tier, "committed" | "preference") {
        "Reward loyalty: early access and thank-you perks instead of discounts"
    } else if p.lifecycle_stage == "development" {
        "Onboard: a welcome series that leads to the second order"
    } else {
        "Nurture: the regular newsletter with personal recommendations"
    }
}

/// The most common of `values` (ties: the first in `order`).
pub fn most_common<'a>(values: impl IntoIterator<Item = &'a str>, order: &[&'a str]) -> &'a str {
    let mut counts = vec![0usize; order.len()];
    for v in values {
        if let Some(i) = order.iter().position(|o| *o == v) {
            counts[i] += 1;
        }
    }
    let best = (0..order.len())
        .max_by(|&a, &b| counts[a].cmp(&counts[b]).then(b.cmp(&a)))
        .unwrap_or(0);
    order.get(best).copied().unwrap_or("")
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_play_has_its_profile() {
        let rules = ActionRules::default();
        let base = ActionProfile {
            mean_churn: 0.3,
            value_ratio: 1.0,
            median_discount_share: 0.1,
            lifecycle_stage: "growth",
            loyalty_tier: "habitual",
        };
        let play = |p: ActionProfile| recommended_action(&p, &rules).split(':').next().unwrap();
        assert_eq!(play(base.clone()), "Nurture");
        assert_eq!(
            play(ActionProfile {
                lifecycle_stage: "potential",
                mean_churn: 0.9,
                ..base.clone()
            }),
            "Convert"
        );
        assert_eq!(
            play(ActionProfile {
                mean_churn: 0.7,
                value_ratio: 2.0,
                lifecycle_stage: "decline",
                ..base.clone()
            }),
            "Win back"
        );
        assert_eq!(
            play(ActionProfile {
                mean_churn: 0.95,
                lifecycle_stage: "termination",
                ..base.clone()
            }),
            "Sunset"
        );
        assert_eq!(
            play(ActionProfile {
                mean_churn: 0.7,
                ..base.clone()
            }),
            "Reactivate cheaply"
        );
        assert_eq!(
            play(ActionProfile {
                median_discount_share: 0.8,
                loyalty_tier: "committed",
                ..base.clone()
            }),
            "No discount"
        );
        assert_eq!(
            play(ActionProfile {
                loyalty_tier: "committed",
                ..base.clone()
            }),
            "Reward loyalty"
        );
        assert_eq!(
            play(ActionProfile {
                lifecycle_stage: "development",
                ..base.clone()
            }),
            "Onboard"
        );
        // The thresholds come from the pipeline file.
        let strict = ActionRules {
            high_churn: 0.2,
            ..rules.clone()
        };
        assert!(recommended_action(&base, &strict).starts_with("Reactivate cheaply"));
    }

    #[test]
    fn most_common_breaks_ties_by_order() {
        let order = ["a", "b", "c"];
        assert_eq!(most_common(["b", "c", "c", "b"], &order), "b");
        assert_eq!(most_common(["c", "c", "a"], &order), "c");
        assert_eq!(most_common([], &order), "a");
    }

    use super::*;

    /// Names for clusters with these profiles (z-scores; absent features are 0).
    fn named(profiles: &[&[(&str, f64)]], fixed: &[Option<String>]) -> Vec<String> {
        let z = |c: usize, f: &str| {
            profiles[c]
                .iter()
                .find(|(n, _)| *n == f)
                .map_or(0.0, |(_, v)| *v)
        };
        names(profiles.len(), &z, fixed)
    }

    #[test]
    fn names_follow_profiles_and_are_unique() {
        let profiles: [&[(&str, f64)]; 4] = [
            &[
                ("frequency", 2.0),
                ("monetary", 2.0),
                ("recency_days", -1.5),
                ("sessions_90d", 1.0),
            ],
            &[("discount_share", 2.5)],
            &[
                ("sessions_90d", 1.5),
                ("add_to_cart_90d", 1.5),
                ("frequency", -1.5),
            ],
            &[
                ("recency_days", 2.0),
                ("days_since_last_visit", 2.0),
                ("sessions_90d", -1.5),
            ],
        ];
        let n = named(&profiles, &[]);
        assert_eq!(
            n,
            vec![
                "Champions",
                "Bargain hunters",
                "Window shoppers",
                "Hibernating"
            ]
        );
    }

    #[test]
    fn more_clusters_than_names_still_unique() {
        let profiles: Vec<Vec<(&str, f64)>> =
            (0..14).map(|i| vec![("frequency", i as f64)]).collect();
        let refs: Vec<&[(&str, f64)]> = profiles.iter().map(|p| p.as_slice()).collect();
        let n = named(&refs, &[]);
        let mut u = n.clone();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), 14, "{n:?}");
    }

    #[test]
    fn kept_names_stay_and_new_clusters_avoid_them() {
        let profiles: [&[(&str, f64)]; 2] =
            [&[("discount_share", 3.0)], &[("discount_share", 2.9)]];
        // Cluster 1 keeps "Bargain hunters" from the previous run; cluster 0 may not take it.
        let n = named(&profiles, &[None, Some("Bargain hunters".into())]);
        assert_eq!(n[1], "Bargain hunters");
        assert_ne!(n[0], "Bargain hunters");
        // A kept "Group 1" pushes a new overflow group to "Group 2".
        let many: Vec<Vec<(&str, f64)>> = (0..13).map(|i| vec![("frequency", i as f64)]).collect();
        let refs: Vec<&[(&str, f64)]> = many.iter().map(|p| p.as_slice()).collect();
        let mut fixed = vec![None; 13];
        fixed[0] = Some("Group 1".to_string());
        let n = named(&refs, &fixed);
        let mut u = n.clone();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), 13, "{n:?}");
    }

    #[test]
    fn descriptions_read_as_sentences() {
        let standout = distinguishing(
            &[
                ("discount_share".into(), 1.94),
                ("frequency".into(), -0.2),
                ("sessions_90d".into(), -0.8),
            ],
            3,
        );
        assert_eq!(
            standout,
            vec![
                "high discounted orders (+1.9σ)",
                "low visits in the last 90 days (-0.8σ)"
            ]
        );
        let m = Medians {
            orders: 4.0,
            recency_days: 21.4,
            spend: 180.0,
            sessions_90d: 3.0,
        };
        let d = describe("Bargain hunters", 1200, 0.12, m, 0.31, &standout);
        assert_eq!(
            d,
            "Bargain hunters: 1200 customers (12.0%) who typically placed 4 orders, the last 21 days ago and spent 180 in total, with 3 visits in the last 90 days and a 31% chance of not ordering in the next 90; marked by high discounted orders (+1.9σ), low visits in the last 90 days (-0.8σ)."
        );
        let none = Medians {
            orders: 0.0,
            recency_days: f64::NAN,
            spend: 0.0,
            sessions_90d: 5.0,
        };
        let d = describe("Window shoppers", 10, 0.01, none, 0.97, &[]);
        assert!(d.contains("have not bought yet, with 5 visits in"), "{d}");
        let one = Medians {
            sessions_90d: 1.0,
            ..none
        };
        let d = describe("Prospects", 10, 0.01, one, 0.97, &[]);
        assert!(d.contains("with 1 visit in"), "{d}");
    }

    #[test]
    fn lifecycle_rules() {
        let r = LifecycleRules::default();
        assert_eq!(
            lifecycle_stage(&r, 0.0, f64::NAN, 50.0, 0.9, 0.7),
            "potential"
        );
        assert_eq!(
            lifecycle_stage(&r, 3.0, 400.0, 700.0, 0.9, 0.7),
            "termination"
        );
        assert_eq!(lifecycle_stage(&r, 3.0, 150.0, 700.0, 0.5, 0.7), "decline");
        assert_eq!(lifecycle_stage(&r, 3.0, 10.0, 700.0, 0.8, 0.7), "decline");
        assert_eq!(
            lifecycle_stage(&r, 1.0, 10.0, 30.0, 0.3, 0.7),
            "development"
        );
        assert_eq!(lifecycle_stage(&r, 8.0, 10.0, 500.0, 0.1, 0.7), "maturity");
        assert_eq!(lifecycle_stage(&r, 3.0, 10.0, 200.0, 0.1, 0.7), "growth");
    }

    #[test]
    fn loyalty_rules() {
        let r = LoyaltyRules::default();
        assert_eq!(loyalty_tier(&r, 1.0, 0.0, 0.0, 0.1), "none");
        assert_eq!(loyalty_tier(&r, 3.0, 0.0, 0.0, 0.1), "habitual");
        assert_eq!(loyalty_tier(&r, 5.0, 0.0, 0.0, 0.1), "preference");
        assert_eq!(loyalty_tier(&r, 9.0, 0.0, 0.0, 0.1), "committed");
        assert_eq!(
            loyalty_tier(&r, 9.0, 0.8, 0.0, 0.1),
            "habitual",
            "price-loyal"
        );
        assert_eq!(loyalty_tier(&r, 9.0, 0.0, 0.5, 0.1), "habitual", "returns");
    }

    #[test]
    fn bands() {
        let m = ModelParams::default();
        assert_eq!(churn_band(&m, 0.1), "low");
        assert_eq!(churn_band(&m, 0.5), "medium");
        assert_eq!(churn_band(&m, 0.7), "high");
        let values: Vec<f64> = (0..=100).map(f64::from).collect();
        let cut = value_cutoffs(&m, &values);
        // positives are 1..=100: medians at index round(99 × 0.5) = 50 → 51, round(99 × 0.8) = 79 → 80
        assert_eq!(cut, (51.0, 80.0));
        assert_eq!(value_band(cut, 0.0), "low");
        assert_eq!(value_band(cut, 60.0), "medium");
        assert_eq!(value_band(cut, 95.0), "high");
    }
}
