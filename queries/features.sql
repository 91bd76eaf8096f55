-- One row per known customer (an order, an identified event or a customers row before the
-- cut-off): order history plus clickstream engagement. Every column is written to
-- customer_segments; the clustering and the models read the columns they need by name.
--
-- Parameters: {{cutoff}} (SQL timestamp, first instant not seen), {{cutoff_epoch}} (seconds).
-- Tables: order_history (queries/order_history.sql at the run's cut-off), events (identified
-- events before the cut-off).
--
-- Engine note: events are first reduced to one row per (customer, session) and only then per
-- customer; DataFusion runs this several times faster, and in a fraction of the memory, than
-- count(DISTINCT session_id) per customer. Check EXPLAIN ANALYZE before changing its shape.
WITH sessions AS (
  SELECT
    customer_id,
    session_id,
    min(event_ts) AS started,
    max(event_ts) AS ended,
    count(*) FILTER (WHERE event_type = 'product_view') AS product_views,
    count(*) FILTER (WHERE event_type = 'add_to_cart') AS add_to_carts,
    count(*) FILTER (WHERE event_type = 'checkout_start') AS checkouts,
    count(*) FILTER (WHERE event_type = 'purchase') AS purchases
  FROM events
  GROUP BY customer_id, session_id
),
engagement AS (
  SELECT
    customer_id,
    count(*) AS sessions_total,
    count(*) FILTER (WHERE started >= {{cutoff}} - INTERVAL '30 days') AS sessions_30d,
    count(*) FILTER (WHERE started >= {{cutoff}} - INTERVAL '90 days') AS sessions_90d,
    count(*) FILTER (WHERE started >= {{cutoff}} - INTERVAL '180 days'
                       AND started < {{cutoff}} - INTERVAL '90 days') AS sessions_prev_90d,
    coalesce(sum(product_views) FILTER (WHERE started >= {{cutoff}} - INTERVAL '90 days'), 0) AS product_views_90d,
    coalesce(sum(add_to_carts) FILTER (WHERE started >= {{cutoff}} - INTERVAL '90 days'), 0) AS add_to_cart_90d,
    count(*) FILTER (WHERE started >= {{cutoff}} - INTERVAL '90 days'
                       AND checkouts > 0 AND purchases = 0) AS abandoned_checkouts_90d,
    ({{cutoff_epoch}} - date_part('epoch', max(ended))) / 86400.0 AS days_since_last_visit,
    ({{cutoff_epoch}} - date_part('epoch', min(started))) / 86400.0 AS first_visit_days
  FROM sessions
  GROUP BY customer_id
)
SELECT
  coalesce(h.customer_id, e.customer_id) AS customer_id,
  h.recency_days,
  coalesce(h.frequency, 0) AS frequency,
  coalesce(h.monetary, 0.0) AS monetary,
  coalesce(h.frequency_365d, 0) AS frequency_365d,
  coalesce(h.monetary_365d, 0.0) AS monetary_365d,
  coalesce(greatest(h.first_seen_days, e.first_visit_days), h.first_seen_days, e.first_visit_days, 0.0) AS tenure_days,
  h.avg_order_value,
  coalesce(h.return_rate, 0.0) AS return_rate,
  coalesce(h.cancel_rate, 0.0) AS cancel_rate,
  coalesce(h.discount_share, 0.0) AS discount_share,
  coalesce(h.orders_placed, 0) AS orders_placed,
  coalesce(e.sessions_total, 0) AS sessions_total,
  coalesce(e.sessions_30d, 0) AS sessions_30d,
  coalesce(e.sessions_90d, 0) AS sessions_90d,
  coalesce(e.sessions_prev_90d, 0) AS sessions_prev_90d,
  coalesce(e.product_views_90d, 0) AS product_views_90d,
  coalesce(e.add_to_cart_90d, 0) AS add_to_cart_90d,
  coalesce(e.abandoned_checkouts_90d, 0) AS abandoned_checkouts_90d,
  e.days_since_last_visit,
  -- -1: all recent sessions were in the older quarter; +1: all in the latest; 0: flat or none
  coalesce(CAST(coalesce(e.sessions_90d, 0) - coalesce(e.sessions_prev_90d, 0) AS DOUBLE)
           / nullif(coalesce(e.sessions_90d, 0) + coalesce(e.sessions_prev_90d, 0), 0), 0.0) AS engagement_trend
FROM order_history h
FULL OUTER JOIN engagement e ON e.customer_id = h.customer_id
ORDER BY customer_id
