-- @feature_view customer_spend
-- @entity customer
-- @timestamp event_ts
-- @created loaded_at
-- @ttl 30d
-- @owner growth-team
-- @tags orders, finance
-- Trailing spend statistics per customer, one row per order.
SELECT
    customer_id,
    order_ts  AS event_ts,
    loaded_at,
    SUM(amount) OVER w AS spend_30d,   -- total spend over the trailing {{ var('spend_window_days') }} days
    COUNT(*)    OVER w AS orders_30d   -- number of orders over the trailing {{ var('spend_window_days') }} days
FROM orders
WINDOW w AS (PARTITION BY customer_id ORDER BY order_ts
             RANGE BETWEEN INTERVAL {{ var('spend_window_days') }} DAYS PRECEDING AND CURRENT ROW)
