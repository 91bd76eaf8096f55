//! Segments: readable names for clusters, lifecycle stage and loyalty tier per customer
//! (SEEDS.md), and the churn / value bands. Pure functions over features and scores.

use crate::clustering::Clustering;
use crate::config::{LifecycleRules, LoyaltyRules, ModelParams};

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
            z("frequency") - z("recency_days") + 0.5 * z("tenure_days")
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
        score: |z| 1.5 * z("return_rate"),
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
        score: |z| z("recency_days") + z("days_since_last_visit") - z("sessions_90d"),
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
        score: |z| -z("sessions_90d") - z("frequency") - z("add_to_cart_90d") - z("tenure_days"),
    },
];

/// One unique name per cluster: the best-fitting (cluster, name) pairs are taken greedily,
/// highest score first; clusters left over (k above the number of names) get "Group N".
pub fn names(clustering: &Clustering) -> Vec<String> {
    let k = clustering.centroids.len();
    let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
    for c in 0..k {
        let z = |f: &str| clustering.z(c, f);
        for (r, rule) in NAME_RULES.iter().enumerate() {
            pairs.push(((rule.score)(&z), c, r));
        }
    }
    // Highest score first; ties by cluster then rule so the result is deterministic.
    pairs.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
    });
    let mut out: Vec<Option<String>> = vec![None; k];
    let mut used = vec![false; NAME_RULES.len()];
    for (_, c, r) in pairs {
        if out[c].is_none() && !used[r] {
            out[c] = Some(NAME_RULES[r].name.to_string());
            used[r] = true;
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(c, n)| n.unwrap_or_else(|| format!("Group {}", c + 1)))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn clustering(profiles: &[&[(&str, f64)]]) -> Clustering {
        let features: Vec<String> = crate::clustering::FEATURES
            .iter()
            .map(|(f, _)| f.to_string())
            .collect();
        let centroids = profiles
            .iter()
            .map(|p| {
                features
                    .iter()
                    .map(|f| p.iter().find(|(n, _)| n == f).map_or(0.0, |(_, v)| *v))
                    .collect()
            })
            .collect();
        Clustering {
            mean: vec![0.0; features.len()],
            std: vec![1.0; features.len()],
            features,
            centroids,
            assignment: vec![],
            sizes: vec![],
            sample_size: 0,
            mean_squared_distance: 0.0,
        }
    }

    #[test]
    fn names_follow_profiles_and_are_unique() {
        let c = clustering(&[
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
        ]);
        let n = names(&c);
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
        let n = names(&clustering(&refs));
        let mut u = n.clone();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), 14, "{n:?}");
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
