-- The clickstream's rollup: one row per (customer, session, UTC day) of the events that pass
-- the data quality rules, and one row per (rule, day) that rejected or left out events
-- (customer_id and session_id NULL, `reason` set), with how many events it took. Everything
-- segmenter knows about the clickstream comes from this query: reject counts, rows after the
-- cut-off, and the engagement features (queries/engagement.sql reads the session rows).
--
-- Incremental: segmenter runs this query once per input file and keeps each file's rows under
-- `output.root/_state/` (README, "Incremental runs"); each night it reads only new or changed
-- files and merges the per-day rows of all files into one row per session, leaving out the
-- days at or after the run's cut-off (counted as `after_cutoff`). So the query must stay
-- mergeable: every column is either a GROUP BY column (or an expression of them) or one of
-- count(…), sum(…), min(…), max(…) (FILTER allowed); count(DISTINCT …), avg(…) and the like
-- are refused with a message (exit 2), as is a missing `day`.
--
-- Table: events_raw (the events of one file: customer_id, session_id, event_ts, event_type).
-- Parameters: {{event_reason}}: the rules as one CASE expression naming the first rule an event
-- fails (NULL when it passes): null_timestamp, before_floor, anonymous, null_session_id,
-- unknown_event_type (README, "Data quality"); after_cutoff is applied when the days merge.
--
-- Columns segmenter relies on: reason, customer_id, session_id, day, events, started, ended.
-- Add per-session counts here and use them in engagement.sql.
-- Engine note: this GROUP BY holds one entry per session and day; its keys are the cost of the
-- whole run (check EXPLAIN ANALYZE before changing them). Rejected rows collapse into one
-- group per reason and day.
SELECT
  CASE WHEN customer_id IS NULL THEN session_id END AS reason,
  customer_id,
  CASE WHEN customer_id IS NOT NULL THEN session_id END AS session_id,
  day,
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
    date_trunc('day', event_ts) AS day,
    event_ts,
    event_type
  FROM (SELECT {{event_reason}} AS reason, customer_id, session_id, event_ts, event_type FROM events_raw)
)
GROUP BY customer_id, session_id, day
