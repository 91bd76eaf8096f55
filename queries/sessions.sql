-- The clickstream's single pass: one row per (customer, session) of the events that pass the
-- data quality rules, and one row per rule that rejected or left out events (customer_id and
-- session_id NULL, `reason` set), with how many events it took. Everything segmenter knows about
-- the clickstream comes from this query: reject counts, rows after the cut-off, and the
-- engagement features (queries/engagement.sql reads the session rows).
--
-- Table: events_raw (every event in the files: customer_id, session_id, event_ts, event_type).
-- Parameters: {{event_reason}}: the rules as one CASE expression naming the first rule an event
-- fails (NULL when it passes): null_timestamp, after_cutoff, before_floor, anonymous,
-- null_session_id, unknown_event_type (README, "Data quality").
--
-- Columns segmenter relies on: reason, customer_id, session_id, events, started, ended. Add
-- per-session counts here and use them in engagement.sql.
-- Engine note: this GROUP BY holds one entry per session; its keys are the cost of the whole
-- run (check EXPLAIN ANALYZE before changing them). Rejected rows collapse into one group per
-- reason, so rows after the cut-off (most of the files in a backfill) cost no memory.
SELECT
  CASE WHEN customer_id IS NULL THEN session_id END AS reason,
  customer_id,
  CASE WHEN customer_id IS NOT NULL THEN session_id END AS session_id,
  count(*) AS events,
  min(event_ts) AS started,
  max(event_ts) AS ended,
  count(*) FILTER (WHERE event_type = 'product_view') AS product_views,
  count(*) FILTER (WHERE event_type = 'add_to_cart') AS add_to_carts,
  count(*) FILTER (WHERE event_type = 'checkout_start') AS checkouts,
  count(*) FILTER (WHERE event_type = 'purchase') AS purchases
FROM (
  SELECT
    CASE WHEN reason IS NULL THEN customer_id END AS customer_id,
    coalesce(reason, session_id) AS session_id,
    event_ts,
    event_type
  FROM (SELECT {{event_reason}} AS reason, customer_id, session_id, event_ts, event_type FROM events_raw)
)
GROUP BY customer_id, session_id
