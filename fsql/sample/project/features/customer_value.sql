-- @feature_view customer_value
-- @entity customer
-- @timestamp event_ts
-- @created loaded_at
-- @ttl 30d
-- @owner growth-team
-- @tags orders, finance
-- Derived from customer_spend: the average order value over the trailing 30 days.
SELECT
    customer_id,
    event_ts,
    loaded_at,
    spend_30d / orders_30d AS avg_order_value_30d,   -- average order value over the trailing 30 days
    spend_30d >= 500 AS high_spender                  -- spent at least 500 over the trailing 30 days
FROM customer_spend
