-- Automatic top-ups: one row per reload, asked for by the debit that left the balance under the account's
-- autoreload threshold (in the same transaction, with its job in the outbox). At most one is pending per account.
-- Keep in step with ../sqlite/0009_autoreloads.sql.

CREATE TABLE autoreloads (
    id                   TEXT PRIMARY KEY,
    account_id           TEXT NOT NULL REFERENCES accounts (id),
    trigger_entry_id     TEXT NOT NULL UNIQUE,
    state                TEXT NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed', 'skipped')),
    packs                BIGINT,
    amount_usd_cents     BIGINT,
    payment_intent_id    TEXT,
    reason               TEXT,
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX autoreloads_one_pending ON autoreloads (account_id) WHERE state = 'pending';
CREATE INDEX autoreloads_by_account ON autoreloads (account_id, created_at);
