-- @training_set churn
-- @timestamp label_ts
-- @owner growth-team
-- @features customer_spend.spend_30d, customer_spend.orders_30d, customer_value.avg_order_value_30d, customer_profile.*
-- Churn labels with spend, value and profile features as they were known at label time.
SELECT customer_id, label_ts, churned
FROM churn_labels
WHERE label_ts >= TIMESTAMP '2026-02-01'
