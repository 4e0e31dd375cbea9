-- @feature_view order_amount_usd
-- @entity customer
-- @timestamp event_ts
-- @ttl 30d
-- @owner finance-team
-- @tags orders, finance, fx
-- Each order's amount converted at the exchange rate in force when it was placed.
SELECT
    o.customer_id,
    o.order_ts AS event_ts,
    o.amount * r.rate_to_usd AS amount_usd,   -- order amount in USD
    o.currency                                 -- currency the order was paid in
FROM orders AS o
ASOF LEFT JOIN fx_rates AS r
    ON o.currency = r.currency AND o.order_ts >= r.rate_ts
