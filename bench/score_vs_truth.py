#!/usr/bin/env python3
"""Score outputs against the generator's planted truth (what really happened next).

usage: score_vs_truth.py [--json] DATA_DIR END_DATE NAME=SCORES.parquet [NAME=SCORES.parquet ...]

DATA_DIR is a `segmenter generate` directory (it holds truth/customers.parquet and
truth/future_orders/); END_DATE the run date (the generator's --end-date). Each SCORES file
has customer_id, churn_risk_score, value_score, segment (segmenter's customer_segments
partition or the peer's output). For each it prints:
  churn AUC   : ROC AUC of churn_risk_score vs "no completed order in the 90 days after END"
  churn Brier : mean squared error of the score as a probability (and the base-rate Brier)
  value rho   : Spearman of value_score vs realised net revenue in the 365 days after END
  top20 cap   : share of realised revenue held by the top 20% by value_score
  ARI         : adjusted Rand index of `segment` vs the planted customer types
Only customers present in the scores file are scored. No fitting happens here.
With --json the figures are printed as one JSON object keyed by NAME instead of a table.
"""
import json
import sys
from datetime import date, timedelta

import duckdb
import numpy as np
from sklearn.metrics import adjusted_rand_score, roc_auc_score
from scipy.stats import spearmanr


def main():
    args = [a for a in sys.argv[1:] if a != "--json"]
    as_json = len(args) < len(sys.argv) - 1
    if len(args) < 3:
        sys.exit(__doc__)
    data, end = args[0], date.fromisoformat(args[1])
    cut = end + timedelta(days=1)
    con = duckdb.connect()
    truth = con.sql(f"""
        SELECT t.customer_id, t.planted_type,
               coalesce(f.orders_90d, 0) AS orders_90d, coalesce(f.revenue_365d, 0) AS revenue_365d
        FROM read_parquet('{data}/truth/customers.parquet') t
        LEFT JOIN (
          SELECT customer_id,
                 count(*) FILTER (WHERE status = 'completed'
                                   AND order_ts < TIMESTAMPTZ '{cut}' + INTERVAL 90 DAY) AS orders_90d,
                 sum(amount) FILTER (WHERE status = 'completed') AS revenue_365d
          FROM read_parquet('{data}/truth/future_orders/*.parquet') GROUP BY customer_id
        ) f USING (customer_id)""").df()
    results = {}
    for spec in args[2:]:
        name, path = spec.split("=", 1)
        s = con.sql(f"SELECT customer_id, churn_risk_score, value_score, CAST(segment AS VARCHAR) AS segment "
                    f"FROM read_parquet('{path}')").df()
        m = s.merge(truth, on="customer_id", how="inner")
        churned = (m.orders_90d == 0).astype(float).to_numpy()
        p = m.churn_risk_score.to_numpy(float)
        auc = roc_auc_score(churned, p)
        brier = float(np.mean((p - churned) ** 2))
        base = float(np.mean((churned.mean() - churned) ** 2))
        v, r = m.value_score.to_numpy(float), m.revenue_365d.to_numpy(float)
        rho = spearmanr(v, r).correlation
        top = np.argsort(-v, kind="stable")[: max(1, len(v) // 5)]
        cap = r[top].sum() / r.sum() if r.sum() > 0 else float("nan")
        ari = adjusted_rand_score(m.planted_type, m.segment)
        results[name] = {"n": len(m), "churn_auc": auc, "brier": brier, "base_brier": base,
                         "value_rho": rho, "top20_cap": cap, "ari": ari}
    if as_json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'scores':<12} {'n':>8} {'churn AUC':>10} {'Brier':>8} {'base Brier':>10} "
          f"{'value rho':>10} {'top20 cap':>10} {'ARI':>7}")
    for name, r in results.items():
        print(f"{name:<12} {r['n']:>8} {r['churn_auc']:>10.4f} {r['brier']:>8.4f} "
              f"{r['base_brier']:>10.4f} {r['value_rho']:>10.4f} {r['top20_cap']:>10.4f} "
              f"{r['ari']:>7.4f}")


if __name__ == "__main__":
    main()
