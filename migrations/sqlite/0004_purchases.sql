-- Purchases: one row per Stripe PaymentIntent, following its state; the ledger credit is separate and exactly once.
-- Keep in step with ../postgres/0004_purchases.sql.

CREATE TABLE purchases (
    payment_intent_id TEXT PRIMARY KEY NOT NULL,
    account_id        TEXT NOT NULL REFERENCES accounts (id),
    pack_id           TEXT NOT NULL,
    amount_usd_cents  INTEGER NOT NULL,
    currency          TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    ledger_entry_id   TEXT REFERENCES ledger_entries (id),
    last_error        TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
) STRICT;
CREATE INDEX purchases_account ON purchases (account_id, created_at);
