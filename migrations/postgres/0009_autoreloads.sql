-- Automatic top-ups: one row per reload, asked for by the usage debit that took the balance under the account's
-- autoreload threshold (in the same transaction, with its job in the outbox). At most one is in flight (pending or
-- charging) per account. A job claims a reload (pending -> charging) before charging, so two copies of one job never
-- charge at once; each attempt has its own number, from which the Stripe idempotency key derives.
-- Keep in step with ../sqlite/0009_autoreloads.sql.

CREATE TABLE autoreloads (
    id                   TEXT PRIMARY KEY,
    account_id           TEXT NOT NULL REFERENCES accounts (id),
    trigger_entry_id     TEXT NOT NULL UNIQUE,
    state                TEXT NOT NULL CHECK (state IN ('pending', 'charging', 'succeeded', 'failed', 'skipped')),
    attempts             BIGINT NOT NULL DEFAULT 0,
    claimed_at           TIMESTAMPTZ,
    packs                BIGINT,
    amount_usd_cents     BIGINT,
    payment_intent_id    TEXT,
    reason               TEXT,
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX autoreloads_one_in_flight ON autoreloads (account_id) WHERE state IN ('pending', 'charging');
CREATE INDEX autoreloads_by_account ON autoreloads (account_id, created_at);
