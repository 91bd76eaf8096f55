#!/usr/bin/env python3
"""The benchmark peer: the customer segmentation a data scientist would write with DuckDB and
scikit-learn instead of segmenter.

usage: peer_duckdb.py DATA_DIR OUT.parquet [--as-of YYYY-MM-DD] [--threads N]

DATA_DIR has the input layout of `segmenter generate`: orders/*.parquet, events/dt=YYYY-MM/
*.parquet (Hive partitions) and customers/*.parquet. Only rows strictly before --as-of (midnight
UTC) are read, so `--as-of D+1` sees what `segmenter run --date D` sees.

1. Features, in DuckDB SQL, one row per customer: recency, frequency and monetary value of the
   completed orders, tenure, return rate and share of discounted orders, visits (distinct
   sessions) in the last 30 and 90 days, add-to-cart events in the last 90 days, days since
   the last visit.
2. Segments: log1p of the counts and amounts, standard scaling, scikit-learn k-means (k=8).
3. Churn risk: recency measured in the customer's own mean gap between completed orders,
   1 - exp(-recency / gap). The gap is tenure / orders, the inverse of the purchase rate's
   maximum-likelihood estimate, so the open interval since the last order counts too; a prior
   gap for customers with fewer than two orders, and a fixed 0.9 for customers who never
   ordered. Tiers: high >= 0.7, medium >= 0.4.
4. Value: the yearly spend run-rate, completed revenue / max(tenure, 30 days) * 365. Tiers:
   high from the 80th percentile of the positive run-rates, medium from their median.

Writes one Parquet file (customer_id, churn_risk_score, churn_risk, value_score, value_segment,
segment) and prints one line of stage timings for bench/report.py:
    peer: features Xs  kmeans Xs  write Xs  total Xs  rows N
`--threads` bounds both DuckDB and scikit-learn's native thread pools.
"""
import argparse
import time
from datetime import date

import duckdb
import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

K = 8
KMEANS_RESTARTS = 3
SEED = 0
# Recency and days since the last visit are capped here (a customer with no order or no visit
# gets NO_HISTORY_DAYS before the cap), so one long-gone customer does not stretch the scale.
DAYS_CAP = 1000.0
NO_HISTORY_DAYS = 9999
# Mean gap between orders assumed for customers with fewer than two completed orders.
PRIOR_GAP_DAYS = 180.0
NEVER_ORDERED_CHURN = 0.9
CHURN_TIERS = ((0.7, "high"), (0.4, "medium"))
VALUE_TIER_QUANTILES = ((0.8, "high"), (0.5, "medium"))

FEATURES_SQL = """
WITH orders AS (
    -- one row per order id (the same order may be exported twice)
    SELECT DISTINCT ON (order_id)
           order_id, customer_id, CAST(order_ts AS TIMESTAMPTZ) AS ts,
           CAST(amount AS DOUBLE) AS amount, discount_amount, status
    FROM read_parquet({orders}, union_by_name = true)
    WHERE customer_id IS NOT NULL
      AND amount >= 0
      AND CAST(order_ts AS TIMESTAMPTZ) < {as_of}
),
order_stats AS (
    SELECT customer_id,
           count(*) FILTER (WHERE status = 'completed') AS frequency,
           coalesce(sum(amount) FILTER (WHERE status = 'completed'), 0) AS monetary,
           date_diff('day', max(ts) FILTER (WHERE status = 'completed'), {as_of}) AS recency_days,
           date_diff('day', min(ts), {as_of}) AS tenure_days,
           avg(CASE WHEN status = 'returned' THEN 1.0 ELSE 0.0 END) AS return_rate,
           avg(CASE WHEN discount_amount > 0 THEN 1.0 ELSE 0.0 END) AS discount_share
    FROM orders
    GROUP BY customer_id
),
visit_stats AS (
    SELECT customer_id,
           count(DISTINCT session_id) FILTER (WHERE event_ts >= {as_of} - INTERVAL 30 DAY) AS sessions_30d,
           count(DISTINCT session_id) FILTER (WHERE event_ts >= {as_of} - INTERVAL 90 DAY) AS sessions_90d,
           count(*) FILTER (WHERE event_type = 'add_to_cart'
                              AND event_ts >= {as_of} - INTERVAL 90 DAY) AS add_to_cart_90d,
           date_diff('day', max(event_ts), {as_of}) AS days_since_visit
    FROM read_parquet({events}, hive_partitioning = true)
    WHERE customer_id IS NOT NULL AND event_ts < {as_of}
    GROUP BY customer_id
)
SELECT c.customer_id,
       coalesce(o.recency_days, {no_history}) AS recency_days,
       coalesce(o.frequency, 0) AS frequency,
       coalesce(o.monetary, 0) AS monetary,
       coalesce(o.tenure_days, 0) AS tenure_days,
       coalesce(o.return_rate, 0) AS return_rate,
       coalesce(o.discount_share, 0) AS discount_share,
       coalesce(v.sessions_30d, 0) AS sessions_30d,
       coalesce(v.sessions_90d, 0) AS sessions_90d,
       coalesce(v.add_to_cart_90d, 0) AS add_to_cart_90d,
       coalesce(v.days_since_visit, {no_history}) AS days_since_visit
FROM read_parquet({customers}) AS c
LEFT JOIN order_stats AS o USING (customer_id)
LEFT JOIN visit_stats AS v USING (customer_id)
-- a fixed row order: k-means' seeded initialisation picks rows by position, and hash joins do
-- not keep the input order, so without it two runs on the same data could give other segments
ORDER BY c.customer_id
"""


def sql_string(text):
    """`text` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def load_features(con, data_dir, as_of):
    """One row per customer of customers/, with the features of FEATURES_SQL, as a DataFrame."""
    base = data_dir.rstrip("/")
    sql = FEATURES_SQL.format(
        orders=sql_string(f"{base}/orders/**/*.parquet"),
        events=sql_string(f"{base}/events/**/*.parquet"),
        customers=sql_string(f"{base}/customers/**/*.parquet"),
        as_of=f"TIMESTAMPTZ {sql_string(as_of.isoformat())}",
        no_history=NO_HISTORY_DAYS,
    )
    return con.sql(sql).df()


def clustering_matrix(features):
    """The k-means inputs: log1p of counts, amounts and day spans (heavy right tails), rates as
    they are, every column standardised."""
    def col(name):
        return features[name].to_numpy(float)

    columns = [
        np.log1p(np.minimum(col("recency_days"), DAYS_CAP)),
        np.log1p(col("frequency")),
        np.log1p(col("monetary")),
        np.log1p(col("tenure_days")),
        col("return_rate"),
        col("discount_share"),
        np.log1p(col("sessions_30d")),
        np.log1p(col("sessions_90d")),
        np.log1p(col("add_to_cart_90d")),
        np.log1p(np.minimum(col("days_since_visit"), DAYS_CAP)),
    ]
    return StandardScaler().fit_transform(np.column_stack(columns))


def segments(features):
    """k-means cluster of each customer, as a string label."""
    model = KMeans(n_clusters=K, n_init=KMEANS_RESTARTS, random_state=SEED)
    return model.fit_predict(clustering_matrix(features)).astype(str)


def churn_risk_scores(features):
    """How overdue each customer's next order is: 1 - exp(-recency / mean gap between orders)."""
    frequency = features["frequency"].to_numpy(float)
    recency = np.minimum(features["recency_days"].to_numpy(float), DAYS_CAP)
    tenure = features["tenure_days"].to_numpy(float)
    gap = np.where(frequency >= 2, tenure / np.maximum(frequency, 1), PRIOR_GAP_DAYS)
    score = 1.0 - np.exp(-recency / np.maximum(gap, 1.0))
    return np.where(frequency == 0, NEVER_ORDERED_CHURN, score)


def value_scores(features):
    """Yearly spend run-rate: completed revenue per day of tenure (at least 30 days) * 365."""
    monetary = features["monetary"].to_numpy(float)
    tenure = features["tenure_days"].to_numpy(float)
    return monetary / np.maximum(tenure, 30.0) * 365.0


def tiers(values, thresholds, default="low"):
    """Label each value with the first (threshold, label) it reaches, else `default`."""
    return np.select([values >= t for t, _ in thresholds], [label for _, label in thresholds],
                     default)


def value_tiers(value):
    """Value tiers at quantiles of the positive run-rates (everyone is low if none is positive)."""
    positive = value[value > 0]
    if positive.size == 0:
        return np.full(value.shape, "low", dtype=object)
    cuts = [(np.quantile(positive, q), label) for q, label in VALUE_TIER_QUANTILES]
    return tiers(value, cuts)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", help="input directory (orders/, events/, customers/)")
    ap.add_argument("out", help="output Parquet file")
    ap.add_argument("--as-of", type=date.fromisoformat, default=date(2026, 10, 31),
                    help="exclusive bound: only rows before this date (UTC) are read")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB and scikit-learn threads")
    return ap.parse_args()


def main():
    args = parse_args()
    with threadpool_limits(limits=args.threads):
        t0 = time.perf_counter()
        con = duckdb.connect()
        con.execute(f"SET threads = {int(args.threads)}")
        con.execute("SET TimeZone = 'UTC'")  # day boundaries and the as-of bound in UTC
        features = load_features(con, args.data_dir, args.as_of)
        t1 = time.perf_counter()
        segment = segments(features)
        t2 = time.perf_counter()
        churn = churn_risk_scores(features)
        value = value_scores(features)
        out = pd.DataFrame({
            "customer_id": features["customer_id"],
            "churn_risk_score": churn,
            "churn_risk": tiers(churn, CHURN_TIERS),
            "value_score": value,
            "value_segment": value_tiers(value),
            "segment": segment,
        })
        con.from_df(out).write_parquet(args.out)
        t3 = time.perf_counter()
    print(f"peer: features {t1 - t0:.2f}s  kmeans {t2 - t1:.2f}s  write {t3 - t2:.2f}s  "
          f"total {t3 - t0:.2f}s  rows {len(out)}")


if __name__ == "__main__":
    main()
