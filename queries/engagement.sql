-- Clickstream engagement of every customer at every snapshot, from one GROUP BY customer over
-- the sessions (queries/sessions.sql): each snapshot's windows are conditional aggregates, so
-- the sessions are read once, not once per snapshot. One row per (snapshot, customer) with at
-- least one session that ended before that snapshot's cut-off; the earlier snapshots (the
-- models' training and backtest data) keep only the sampled customers.
--
-- Tables: snapshots (snapshot, cutoff, cutoff_epoch), sessions (one row per customer and session: customer_id, session_id, started, ended,
-- product_views, add_to_carts, checkouts, purchases).
-- Parameters:
--   a block "#each snapshot ... /each" (each tag in double braces, as below) repeats its text
--       once per snapshot, the copies joined by commas (with sep=" " in the opening tag: by a
--       space); inside it, snapshot is the snapshot's id (0 = the run's own cut-off), cutoff
--       its cut-off (SQL timestamp) and cutoff_epoch (seconds), each in double braces
--   in_sample (in double braces): true for the customers the models train on (a stable hash of customer_id)
--
-- A session counts for a snapshot only if it ended before that snapshot's cut-off, so nothing
-- after a cut-off leaks into its features; windows are by the session's start.
WITH wide AS (
  SELECT
    customer_id,
    {{#each snapshot}}
    count(*) FILTER (WHERE ended < {{cutoff}}) AS sessions_total_{{snapshot}},
    count(*) FILTER (WHERE ended < {{cutoff}} AND started >= {{cutoff}} - INTERVAL '30 days') AS sessions_30d_{{snapshot}},
    count(*) FILTER (WHERE ended < {{cutoff}} AND started >= {{cutoff}} - INTERVAL '90 days') AS sessions_90d_{{snapshot}},
    count(*) FILTER (WHERE ended < {{cutoff}} AND started >= {{cutoff}} - INTERVAL '180 days'
                       AND started < {{cutoff}} - INTERVAL '90 days') AS sessions_prev_90d_{{snapshot}},
    sum(product_views) FILTER (WHERE ended < {{cutoff}} AND started >= {{cutoff}} - INTERVAL '90 days') AS product_views_90d_{{snapshot}},
    sum(add_to_carts) FILTER (WHERE ended < {{cutoff}} AND started >= {{cutoff}} - INTERVAL '30 days') AS add_to_cart_30d_{{snapshot}},
    sum(add_to_carts) FILTER (WHERE ended < {{cutoff}} AND started >= {{cutoff}} - INTERVAL '90 days') AS add_to_cart_90d_{{snapshot}},
    count(*) FILTER (WHERE ended < {{cutoff}} AND started >= {{cutoff}} - INTERVAL '90 days'
                       AND checkouts > 0 AND purchases = 0) AS abandoned_checkouts_90d_{{snapshot}},
    max(ended) FILTER (WHERE ended < {{cutoff}}) AS last_ended_{{snapshot}},
    min(started) FILTER (WHERE ended < {{cutoff}}) AS first_started_{{snapshot}}
    {{/each}}
  FROM sessions
  GROUP BY customer_id
),
long AS (
  SELECT
    s.snapshot,
    w.customer_id,
    CASE s.snapshot {{#each snapshot sep=" "}}WHEN {{snapshot}} THEN sessions_total_{{snapshot}}{{/each}} END AS sessions_total,
    CASE s.snapshot {{#each snapshot sep=" "}}WHEN {{snapshot}} THEN sessions_30d_{{snapshot}}{{/each}} END AS sessions_30d,
    CASE s.snapshot {{#each snapshot sep=" "}}WHEN {{snapshot}} THEN sessions_90d_{{snapshot}}{{/each}} END AS sessions_90d,
    CASE s.snapshot {{#each snapshot sep=" "}}WHEN {{snapshot}} THEN sessions_prev_90d_{{snapshot}}{{/each}} END AS sessions_prev_90d,
    coalesce(CASE s.snapshot {{#each snapshot sep=" "}}WHEN {{snapshot}} THEN product_views_90d_{{snapshot}}{{/each}} END, 0)
      AS product_views_90d,
    coalesce(CASE s.snapshot {{#each snapshot sep=" "}}WHEN {{snapshot}} THEN add_to_cart_30d_{{snapshot}}{{/each}} END, 0)
      AS add_to_cart_30d,
    coalesce(CASE s.snapshot {{#each snapshot sep=" "}}WHEN {{snapshot}} THEN add_to_cart_90d_{{snapshot}}{{/each}} END, 0)
      AS add_to_cart_90d,
    CASE s.snapshot {{#each snapshot sep=" "}}WHEN {{snapshot}} THEN abandoned_checkouts_90d_{{snapshot}}{{/each}} END
      AS abandoned_checkouts_90d,
    (s.cutoff_epoch - date_part('epoch',
      CASE s.snapshot {{#each snapshot sep=" "}}WHEN {{snapshot}} THEN last_ended_{{snapshot}}{{/each}} END)) / 86400.0
      AS days_since_last_visit,
    (s.cutoff_epoch - date_part('epoch',
      CASE s.snapshot {{#each snapshot sep=" "}}WHEN {{snapshot}} THEN first_started_{{snapshot}}{{/each}} END)) / 86400.0
      AS first_visit_days
  FROM snapshots s
  CROSS JOIN wide w
)
SELECT *
FROM long
WHERE sessions_total > 0 AND (snapshot = 0 OR {{in_sample}})
