-- Order history of every customer known at each snapshot cut-off, and what they did next.
--
-- Tables:
--   snapshots  (snapshot INT, cutoff TIMESTAMP, cutoff_epoch DOUBLE): the as-of instants the run
--              needs: 0 is the run's own cut-off (the day after the run date, 00:00 UTC);
--              the others are earlier, for training and backtesting the models
--   orders     clean orders before the run's cut-off, one row per order_id
--   customers  one row per customer_id (may be empty)
-- Parameters (substituted by segmenter): {{monthly_discount_rate}}; {{in_sample}}: true for the
--   customers the models train on (snapshots other than 0 keep only those)
--
-- Columns named next_* are outcomes after the snapshot's cut-off (labels for the models); they
-- are only complete when the window ends before the run's cut-off, and segmenter only uses
-- them then. They are never written to customer_segments.
-- Money: net revenue = amount of `completed` orders (a `returned` order was refunded, a
-- `cancelled` one never paid). Money is summed as integers of 1/10000 of the currency unit:
-- floating-point sums in a parallel engine depend on thread timing, and reruns must give
-- byte-identical outputs.
WITH timed AS (
  SELECT
    s.snapshot,
    o.customer_id,
    o.order_ts,
    o.status,
    o.discount_amount,
    CAST(round(o.amount * 10000) AS BIGINT) AS amount_e4,
    (date_part('epoch', o.order_ts) - s.cutoff_epoch) / 86400.0 AS days_after
  FROM orders o
  JOIN snapshots s ON o.order_ts < s.cutoff + INTERVAL '365 days' AND (s.snapshot = 0 OR {{in_sample}})
),
history AS (
  SELECT
    snapshot,
    customer_id,
    count(*) FILTER (WHERE days_after < 0) AS orders_placed,
    count(*) FILTER (WHERE days_after < 0 AND status = 'completed') AS frequency,
    count(*) FILTER (WHERE days_after < 0 AND status = 'returned') AS returns,
    count(*) FILTER (WHERE days_after < 0 AND status = 'cancelled') AS cancellations,
    count(*) FILTER (WHERE days_after >= -365 AND days_after < 0 AND status = 'completed') AS frequency_365d,
    coalesce(sum(amount_e4) FILTER (WHERE days_after < 0 AND status = 'completed'), 0) / 10000.0 AS monetary,
    coalesce(sum(amount_e4) FILTER (WHERE days_after >= -365 AND days_after < 0 AND status = 'completed'), 0)
      / 10000.0 AS monetary_365d,
    count(*) FILTER (WHERE days_after < 0 AND status IN ('completed', 'returned') AND discount_amount > 0)
      AS discounted_orders,
    -max(days_after) FILTER (WHERE days_after < 0 AND status = 'completed') AS recency_days,
    -min(days_after) FILTER (WHERE days_after < 0) AS first_order_days,
    -min(days_after) FILTER (WHERE days_after < 0 AND status = 'completed') AS first_completed_days,
    -- outcomes
    count(*) FILTER (WHERE days_after >= 0 AND days_after < 90 AND status = 'completed') AS next_90d_orders,
    coalesce(sum(amount_e4) FILTER (WHERE days_after >= 0 AND days_after < 90 AND status = 'completed'), 0)
      / 10000.0 AS next_90d_revenue,
    coalesce(sum(CAST(round(amount_e4 * power(1.0 + {{monthly_discount_rate}}, -(days_after / 30.4375))) AS BIGINT))
      FILTER (WHERE days_after >= 0 AND days_after < 365 AND status = 'completed'), 0) / 10000.0 AS next_365d_value,
    coalesce(sum(CAST(round(10000 * power(1.0 + {{monthly_discount_rate}}, -(days_after / 30.4375))) AS BIGINT))
      FILTER (WHERE days_after >= 0 AND days_after < 365 AND status = 'completed'), 0) / 10000.0 AS next_365d_orders_pv
  FROM timed
  GROUP BY snapshot, customer_id
),
-- Distinct purchase days, the BG/NBD convention (several orders on one day are one purchase):
-- each customer's days with a completed order once, then counted per snapshot. Cut-offs are
-- midnight UTC, so a day lies wholly before or after each of them. (A count(DISTINCT ...) in
-- `history` costs a list of days per group, which made that aggregate spill.)
purchase_days AS (
  SELECT s.snapshot, d.customer_id, count(*) AS purchase_days
  FROM (SELECT DISTINCT customer_id, date_trunc('day', order_ts) AS day FROM orders WHERE status = 'completed') d
  JOIN snapshots s ON d.day < s.cutoff AND (s.snapshot = 0 OR {{in_sample}})
  GROUP BY s.snapshot, d.customer_id
),
-- Everyone with an order up to a year after the cut-off (so customers who are known at the
-- snapshot through the clickstream keep their outcomes), plus everyone signed up before it.
-- features.sql decides who is known at the snapshot. A customers row without a sign-up date
-- counts as signed up at the run's own cut-off (snapshot 0) only: at an earlier snapshot it is
-- known only through an order or a visit before that cut-off, or a customer who arrives later
-- would train the models as a zero-history row that did not churn.
known AS (
  SELECT snapshot, customer_id FROM history
  UNION
  SELECT s.snapshot, c.customer_id
  FROM customers c
  JOIN snapshots s ON (c.signup_ts < s.cutoff OR (c.signup_ts IS NULL AND s.snapshot = 0))
                  AND (s.snapshot = 0 OR {{in_sample}})
)
SELECT
  k.snapshot,
  k.customer_id,
  c.customer_id IS NOT NULL AND (c.signup_ts < s.cutoff OR (c.signup_ts IS NULL AND s.snapshot = 0)) AS signed_up,
  coalesce(h.orders_placed, 0) AS orders_placed,
  coalesce(h.frequency, 0) AS frequency,
  coalesce(h.frequency_365d, 0) AS frequency_365d,
  coalesce(h.monetary, 0.0) AS monetary,
  coalesce(h.monetary_365d, 0.0) AS monetary_365d,
  h.monetary / nullif(h.frequency, 0) AS avg_order_value,
  h.recency_days,
  coalesce(pd.purchase_days, 0) AS purchase_days,
  h.first_completed_days,
  greatest(h.first_order_days, (s.cutoff_epoch - date_part('epoch', c.signup_ts)) / 86400.0) AS first_seen_days,
  CAST(h.returns AS DOUBLE) / nullif(h.frequency + h.returns, 0) AS return_rate,
  CAST(h.cancellations AS DOUBLE) / nullif(h.orders_placed, 0) AS cancel_rate,
  -- complaints (returns and cancellations) per order placed: a churn signal
  CAST(h.returns + h.cancellations AS DOUBLE) / nullif(h.orders_placed, 0) AS complaint_rate,
  -- repeat purchase days per year since the first completed order (at least 30 days)
  CAST(pd.purchase_days - 1 AS DOUBLE) * 365.0 / greatest(h.first_completed_days, 30.0) AS repeat_purchase_rate,
  CAST(h.discounted_orders AS DOUBLE) / nullif(h.frequency + h.returns, 0) AS discount_share,
  coalesce(h.next_90d_orders, 0) AS next_90d_orders,
  coalesce(h.next_90d_revenue, 0.0) AS next_90d_revenue,
  coalesce(h.next_365d_value, 0.0) AS next_365d_value,
  coalesce(h.next_365d_orders_pv, 0.0) AS next_365d_orders_pv
FROM known k
JOIN snapshots s ON s.snapshot = k.snapshot
LEFT JOIN history h ON h.snapshot = k.snapshot AND h.customer_id = k.customer_id
LEFT JOIN purchase_days pd ON pd.snapshot = k.snapshot AND pd.customer_id = k.customer_id
LEFT JOIN customers c ON c.customer_id = k.customer_id
