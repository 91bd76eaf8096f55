#!/usr/bin/env python3
"""How well can anyone rank 90-day churn on a `segmenter generate` shop? An upper bound.

usage: churn_ceiling.py DATA_DIR END_DATE [SCORES.parquet]

The generator's truth/customers.parquet says, for every customer, whether they are still
alive at the end of the data and their true purchase rate. Two oracles use it:
  fair oracle : P(churn) = 1 if dropped out, else exp(-rate * 90 / 365): what a model that
                knew each customer's hidden state exactly (but not the future) would say;
  cell oracle : the observed churn rate of the customer's (planted type, alive, rate
                vigintile) cell, computed on the outcome itself: optimistic on purpose.
Neither can be built from the shop's data; no model of the observable history should be
expected to beat them. Printed overall, for buyers (a completed order before the end)
and never-buyers. With SCORES (customer_segments) the same groups are printed for its
churn_risk_score, with calibration (mean score, observed rate, ECE) per planted cohort of
customers first seen in the last 90 days.
"""
import sys
from datetime import date, timedelta

import duckdb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score


def ece(p, y, bins=10):
    idx = np.minimum((p * bins).astype(int), bins - 1)
    return sum((idx == b).sum() / len(p) * abs(p[idx == b].mean() - y[idx == b].mean())
               for b in range(bins) if (idx == b).any())


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    data, end = sys.argv[1], date.fromisoformat(sys.argv[2])
    cut = end + timedelta(days=1)
    con = duckdb.connect()
    df = con.sql(f"""
        SELECT t.customer_id, t.planted_type, t.alive_at_end, coalesce(t.purchase_rate_per_year, 0) AS rate,
               coalesce(f.n90, 0) = 0 AS churned, coalesce(h.n, 0) > 0 AS buyer
        FROM read_parquet('{data}/truth/customers.parquet') t
        LEFT JOIN (SELECT customer_id, count(*) FILTER (WHERE status = 'completed'
                     AND order_ts < TIMESTAMPTZ '{cut}' + INTERVAL 90 DAY) AS n90
                   FROM read_parquet('{data}/truth/future_orders/*.parquet') GROUP BY 1) f USING (customer_id)
        LEFT JOIN (SELECT customer_id, count(*) FILTER (WHERE status = 'completed') AS n
                   FROM read_parquet('{data}/orders/**/*.parquet') GROUP BY 1) h USING (customer_id)
    """).df()
    y = df.churned.to_numpy(float)
    df["fair"] = np.where(df.alive_at_end, np.exp(-df.rate * 90 / 365), 1.0)
    df["rate_bin"] = pd.qcut(df.rate.rank(method="first"), 20, labels=False)
    df["cell"] = df.groupby(["planted_type", "alive_at_end", "rate_bin"]).churned.transform("mean")
    groups = {"all": np.ones(len(df), bool), "buyers": df.buyer.to_numpy(), "never_buyers": ~df.buyer.to_numpy()}
    print(f"{'group':14} {'n':>8} {'churn':>6} {'fair oracle AUC':>16} {'cell oracle AUC':>16}")
    for g, m in groups.items():
        print(f"{g:14} {m.sum():8d} {y[m].mean():6.3f} {roc_auc_score(y[m], df.fair[m]):16.4f} "
              f"{roc_auc_score(y[m], df.cell[m]):16.4f}")
    if len(sys.argv) == 4:
        s = con.sql(f"SELECT customer_id, churn_risk_score AS p, tenure_days FROM read_parquet('{sys.argv[3]}')").df()
        m = s.merge(df, on="customer_id", how="inner")
        yy = m.churned.to_numpy(float)
        print(f"\nscores: {sys.argv[3]}")
        new = (m.tenure_days <= 90).to_numpy()
        for g, mask in {"all": np.ones(len(m), bool), "buyers": m.buyer.to_numpy(),
                        "never_buyers": ~m.buyer.to_numpy(), "new": new}.items():
            p = m.p.to_numpy()[mask]
            print(f"{g:14} n={mask.sum():7d} AUC={roc_auc_score(yy[mask], p):.4f} mean={p.mean():.3f} "
                  f"observed={yy[mask].mean():.3f} ECE={ece(p, yy[mask]):.4f}")
        print("new customers (first seen in the last 90 days) by planted cohort:")
        for t, d in m[new].groupby("planted_type"):
            p, o = d.p.to_numpy(), d.churned.to_numpy(float)
            print(f"  {t:16} n={len(d):6d} mean={p.mean():.3f} observed={o.mean():.3f} ECE={ece(p, o):.4f}")


if __name__ == "__main__":
    main()
