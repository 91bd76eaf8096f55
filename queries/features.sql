-- One row per (snapshot, known customer): order history plus clickstream engagement, as of each
-- snapshot's cut-off. A customer is known at a snapshot with an order, a finished session or a
-- customers row before its cut-off. The rows of snapshot 0 (the run's cut-off) become
-- customer_segments; the earlier snapshots train and backtest the models on the same features.
-- Every numeric column except snapshot and next_* is a model feature: add a column here and
-- the models use it.
--
-- Tables: order_history (queries/order_history.sql) and engagement (queries/engagement.sql),
-- one row per snapshot and customer each; the earlier snapshots hold only the sampled customers.
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
