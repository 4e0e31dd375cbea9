-- @feature_view customer_profile
-- @entity customer
-- @timestamp updated_at
-- @owner crm-team
-- @tags profile
-- The customer's profile as of each change.
SELECT
    customer_id,
    updated_at,
    country,   -- ISO country code of the billing address
    segment,   -- consumer, smb or enterprise
    age        -- age in years at the time of the snapshot
FROM customers
