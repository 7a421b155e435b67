-- The Stripe customer of each account, created once (by the first purchase) and reused by autoreload.
-- Keep in step with ../sqlite/0008_stripe_customers.sql.

CREATE TABLE stripe_customers (
    account_id  TEXT PRIMARY KEY REFERENCES accounts (id),
    customer_id TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL
);
