-- One row per (snapshot, known customer): order history plus clickstream engagement, as of each
-- snapshot's cut-off. A customer is known at a snapshot with an order, a finished session or a
-- customers row before its cut-off. The rows of snapshot 0 (the run's cut-off) become
-- customer_segments; the earlier snapshots train and backtest the models on the same features.
-- Every numeric column except snapshot and next_* is a model feature: add a column here and
-- the models use it.
--
-- Tables: snapshots (snapshot, cutoff, cutoff_epoch), order_history (queries/order_history.sql,
-- one row per snapshot and customer), events (identified events before the run's cut-off).
--
-- A session counts for a snapshot only if it ended before that snapshot's cut-off, so nothing
-- after a cut-off can leak into its features.
-- Engine note: events are first reduced to one row per (customer, session), once, and only then
-- per snapshot and customer; DataFusion runs this several times faster, and in a fraction of the
-- memory, than count(DISTINCT session_id) per customer. Check EXPLAIN ANALYZE before changing it.
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
timed AS (
  SELECT
    s.snapshot,
    s.cutoff_epoch,
    x.customer_id,
    (s.cutoff_epoch - date_part('epoch', x.started)) / 86400.0 AS started_days_ago,
    (s.cutoff_epoch - date_part('epoch', x.ended)) / 86400.0 AS ended_days_ago,
    x.product_views,
    x.add_to_carts,
    x.checkouts,
    x.purchases
  FROM sessions x
  JOIN snapshots s ON x.ended < s.cutoff
),
engagement AS (
  SELECT
    snapshot,
    customer_id,
    count(*) AS sessions_total,
    count(*) FILTER (WHERE started_days_ago <= 30) AS sessions_30d,
    count(*) FILTER (WHERE started_days_ago <= 90) AS sessions_90d,
    count(*) FILTER (WHERE started_days_ago > 90 AND started_days_ago <= 180) AS sessions_prev_90d,
    coalesce(sum(product_views) FILTER (WHERE started_days_ago <= 90), 0) AS product_views_90d,
    coalesce(sum(add_to_carts) FILTER (WHERE started_days_ago <= 30), 0) AS add_to_cart_30d,
    coalesce(sum(add_to_carts) FILTER (WHERE started_days_ago <= 90), 0) AS add_to_cart_90d,
    count(*) FILTER (WHERE started_days_ago <= 90 AND checkouts > 0 AND purchases = 0) AS abandoned_checkouts_90d,
    min(ended_days_ago) AS days_since_last_visit,
    max(started_days_ago) AS first_visit_days
  FROM timed
  GROUP BY snapshot, customer_id
)
SELECT
  coalesce(h.snapshot, e.snapshot) AS snapshot,
  coalesce(h.customer_id, e.customer_id) AS customer_id,
  h.recency_days,
  coalesce(h.frequency, 0) AS frequency,
  coalesce(h.monetary, 0.0) AS monetary,
  coalesce(h.frequency_365d, 0) AS frequency_365d,
  coalesce(h.monetary_365d, 0.0) AS monetary_365d,
  coalesce(greatest(h.first_seen_days, e.first_visit_days), 0.0) AS tenure_days,
  h.avg_order_value,
  coalesce(h.return_rate, 0.0) AS return_rate,
  coalesce(h.cancel_rate, 0.0) AS cancel_rate,
  coalesce(h.complaint_rate, 0.0) AS complaint_rate,
  coalesce(h.repeat_purchase_rate, 0.0) AS repeat_purchase_rate,
  coalesce(h.discount_share, 0.0) AS discount_share,
  coalesce(h.orders_placed, 0) AS orders_placed,
  coalesce(h.purchase_days, 0) AS purchase_days,
  h.first_completed_days,
  coalesce(e.sessions_total, 0) AS sessions_total,
  coalesce(e.sessions_30d, 0) AS sessions_30d,
  coalesce(e.sessions_90d, 0) AS sessions_90d,
  coalesce(e.sessions_prev_90d, 0) AS sessions_prev_90d,
  coalesce(e.product_views_90d, 0) AS product_views_90d,
  coalesce(e.add_to_cart_30d, 0) AS add_to_cart_30d,
  coalesce(e.add_to_cart_90d, 0) AS add_to_cart_90d,
  coalesce(e.abandoned_checkouts_90d, 0) AS abandoned_checkouts_90d,
  e.days_since_last_visit,
  -- -1: all recent sessions were in the older quarter; +1: all in the latest; 0: flat or none
  coalesce(CAST(coalesce(e.sessions_90d, 0) - coalesce(e.sessions_prev_90d, 0) AS DOUBLE)
           / nullif(coalesce(e.sessions_90d, 0) + coalesce(e.sessions_prev_90d, 0), 0), 0.0) AS engagement_trend,
  coalesce(h.next_90d_orders, 0) AS next_90d_orders,
  coalesce(h.next_90d_revenue, 0.0) AS next_90d_revenue,
  coalesce(h.next_365d_value, 0.0) AS next_365d_value,
  coalesce(h.next_365d_orders_pv, 0.0) AS next_365d_orders_pv
FROM order_history h
FULL OUTER JOIN engagement e ON e.snapshot = h.snapshot AND e.customer_id = h.customer_id
WHERE coalesce(h.orders_placed, 0) > 0 OR coalesce(h.signed_up, false) OR e.customer_id IS NOT NULL
ORDER BY snapshot, customer_id
