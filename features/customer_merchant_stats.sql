-- @feature_view customer_merchant_stats
-- @entity customer_merchant
-- @timestamp event_ts
-- @ttl 90d
-- @owner risk-team
-- @tags orders, merchants
-- How often and how much a customer buys from one merchant.
SELECT
    customer_id,
    merchant_id,
    order_ts AS event_ts,
    COUNT(*) OVER w   AS merchant_orders_90d,   -- orders at this merchant over the trailing 90 days
    AVG(amount) OVER w AS merchant_avg_amount_90d -- average order amount at this merchant over 90 days
FROM orders
WINDOW w AS (PARTITION BY customer_id, merchant_id ORDER BY order_ts
             RANGE BETWEEN INTERVAL 90 DAYS PRECEDING AND CURRENT ROW)
