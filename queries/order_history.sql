-- Order history of every customer known at the cut-off, and what they did over the horizon
-- that follows it. The run evaluates this query several times:
--   * at the run's own cut-off (horizon zero)      -> the order features of every customer;
--   * 90 days earlier, with a 90-day horizon       -> training labels for the churn score;
--   * 365 days earlier, with a 365-day horizon     -> training labels for the value score
--     (future_orders_pv: completed orders over the horizon, each discounted to the cut-off).
-- Only rows before the run's cut-off are ever visible, so the labels are honest.
--
-- Parameters (substituted by segmenter):
--   {{cutoff}}                 SQL timestamp: the first instant *not* in the history
--   {{cutoff_epoch}}           the same, in seconds since 1970-01-01 UTC
--   {{horizon_end}}            SQL timestamp: end (exclusive) of the outcome window
--   {{monthly_discount_rate}}  discount rate per month (30.4375 days) for present values
-- Tables: orders (clean, one row per order_id), customers (one row per customer_id).
-- Money: net revenue = amount of `completed` orders (a `returned` order was refunded, a
-- `cancelled` one never paid). Money is summed as integers of 1/10000 of the currency unit:
-- floating-point sums in a parallel engine depend on thread timing, and reruns must give
-- byte-identical outputs.
WITH history AS (
  SELECT
    customer_id,
    count(*) FILTER (WHERE order_ts < {{cutoff}}) AS orders_placed,
    count(*) FILTER (WHERE order_ts < {{cutoff}} AND status = 'completed') AS frequency,
    count(*) FILTER (WHERE order_ts < {{cutoff}} AND status = 'returned') AS returns,
    count(*) FILTER (WHERE order_ts < {{cutoff}} AND status = 'cancelled') AS cancellations,
    count(*) FILTER (WHERE order_ts < {{cutoff}} AND status = 'completed'
                       AND order_ts >= {{cutoff}} - INTERVAL '365 days') AS frequency_365d,
    coalesce(sum(CAST(round(amount * 10000) AS BIGINT))
               FILTER (WHERE order_ts < {{cutoff}} AND status = 'completed'), 0) / 10000.0 AS monetary,
    coalesce(sum(CAST(round(amount * 10000) AS BIGINT))
               FILTER (WHERE order_ts < {{cutoff}} AND status = 'completed'
                         AND order_ts >= {{cutoff}} - INTERVAL '365 days'), 0) / 10000.0 AS monetary_365d,
    count(*) FILTER (WHERE order_ts < {{cutoff}} AND status IN ('completed', 'returned')
                       AND discount_amount > 0) AS discounted_orders,
    min(order_ts) FILTER (WHERE order_ts < {{cutoff}}) AS first_order_ts,
    max(order_ts) FILTER (WHERE order_ts < {{cutoff}} AND status = 'completed') AS last_completed_ts,
    count(*) FILTER (WHERE order_ts >= {{cutoff}} AND status = 'completed') AS future_orders,
    coalesce(sum(CAST(round(10000 * amount * power(1.0 + {{monthly_discount_rate}},
                     -((date_part('epoch', order_ts) - {{cutoff_epoch}}) / 86400.0 / 30.4375))) AS BIGINT))
    FILTER (WHERE order_ts >= {{cutoff}} AND status = 'completed'), 0) / 10000.0 AS future_value,
    coalesce(sum(CAST(round(10000 * power(1.0 + {{monthly_discount_rate}},
                     -((date_part('epoch', order_ts) - {{cutoff_epoch}}) / 86400.0 / 30.4375))) AS BIGINT))
    FILTER (WHERE order_ts >= {{cutoff}} AND status = 'completed'), 0) / 10000.0 AS future_orders_pv
  FROM orders
  WHERE order_ts < {{horizon_end}}
  GROUP BY customer_id
),
known AS (
  SELECT customer_id FROM history WHERE orders_placed > 0
  UNION
  SELECT customer_id FROM customers WHERE signup_ts < {{cutoff}} OR signup_ts IS NULL
)
SELECT
  k.customer_id,
  coalesce(h.orders_placed, 0) AS orders_placed,
  coalesce(h.frequency, 0) AS frequency,
  coalesce(h.frequency_365d, 0) AS frequency_365d,
  coalesce(h.monetary, 0.0) AS monetary,
  coalesce(h.monetary_365d, 0.0) AS monetary_365d,
  h.monetary / nullif(h.frequency, 0) AS avg_order_value,
  ({{cutoff_epoch}} - date_part('epoch', h.last_completed_ts)) / 86400.0 AS recency_days,
  ({{cutoff_epoch}} - date_part('epoch', least(h.first_order_ts, c.signup_ts))) / 86400.0 AS first_seen_days,
  CAST(h.returns AS DOUBLE) / nullif(h.frequency + h.returns, 0) AS return_rate,
  CAST(h.cancellations AS DOUBLE) / nullif(h.orders_placed, 0) AS cancel_rate,
  CAST(h.discounted_orders AS DOUBLE) / nullif(h.frequency + h.returns, 0) AS discount_share,
  coalesce(h.future_orders, 0) AS future_orders,
  coalesce(h.future_value, 0.0) AS future_value,
  coalesce(h.future_orders_pv, 0.0) AS future_orders_pv
FROM known k
LEFT JOIN history h ON h.customer_id = k.customer_id
LEFT JOIN customers c ON c.customer_id = k.customer_id
ORDER BY k.customer_id
