-- creditflow ledger schema (SQLite). Keep in step with ../postgres/0001_ledger.sql.
-- Timestamps are RFC 3339 text in UTC; money is INTEGER millicredits (64-bit).

CREATE TABLE accounts (
    id                   TEXT PRIMARY KEY NOT NULL,
    status               TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'frozen')),
    balance_millicredits INTEGER NOT NULL DEFAULT 0,
    last_sequence        INTEGER NOT NULL DEFAULT 0 CHECK (last_sequence >= 0),
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL
) STRICT;

CREATE TABLE ledger_entries (
    id                         TEXT PRIMARY KEY NOT NULL,
    account_id                 TEXT NOT NULL REFERENCES accounts (id),
    sequence                   INTEGER NOT NULL CHECK (sequence >= 1),
    kind                       TEXT NOT NULL CHECK (kind IN
                                   ('purchase_credit', 'autoreload_credit', 'usage_debit', 'refund_debit', 'adjustment')),
    amount_millicredits        INTEGER NOT NULL CHECK (amount_millicredits <> 0),
    balance_after_millicredits INTEGER NOT NULL,
    idempotency_key            TEXT NOT NULL,
    correlation_id             TEXT,
    rate_version               TEXT,
    source_ref                 TEXT,
    reason                     TEXT,
    created_at                 TEXT NOT NULL,
    UNIQUE (account_id, sequence),
    UNIQUE (account_id, idempotency_key)
) STRICT;
CREATE INDEX ledger_entries_created_at ON ledger_entries (created_at);

CREATE TABLE rate_cards (
    version    TEXT PRIMARY KEY NOT NULL,
    rounding   TEXT NOT NULL CHECK (rounding IN ('ceil', 'precise')),
    document   TEXT NOT NULL,
    created_at TEXT NOT NULL
) STRICT;

CREATE TABLE rate_card_activations (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    version      TEXT NOT NULL REFERENCES rate_cards (version),
    effective_at TEXT NOT NULL,
    actor        TEXT NOT NULL,
    created_at   TEXT NOT NULL
) STRICT;
CREATE INDEX rate_card_activations_effective_at ON rate_card_activations (effective_at);

CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    reason     TEXT,
    details    TEXT NOT NULL DEFAULT '{}'
) STRICT;

-- Append-only tables: the database refuses to change or remove a row, whoever asks.
CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'creditflow: ledger_entries is append-only; UPDATE is not allowed'); END;
CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'creditflow: ledger_entries is append-only; DELETE is not allowed'); END;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'creditflow: audit_log is append-only; UPDATE is not allowed'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'creditflow: audit_log is append-only; DELETE is not allowed'); END;
CREATE TRIGGER rate_cards_no_update BEFORE UPDATE ON rate_cards
BEGIN SELECT RAISE(ABORT, 'creditflow: rate_cards is append-only; UPDATE is not allowed'); END;
CREATE TRIGGER rate_cards_no_delete BEFORE DELETE ON rate_cards
BEGIN SELECT RAISE(ABORT, 'creditflow: rate_cards is append-only; DELETE is not allowed'); END;
CREATE TRIGGER rate_card_activations_no_update BEFORE UPDATE ON rate_card_activations
BEGIN SELECT RAISE(ABORT, 'creditflow: rate_card_activations is append-only; UPDATE is not allowed'); END;
CREATE TRIGGER rate_card_activations_no_delete BEFORE DELETE ON rate_card_activations
BEGIN SELECT RAISE(ABORT, 'creditflow: rate_card_activations is append-only; DELETE is not allowed'); END;

-- Every entry continues its account's chain: next sequence, previous balance plus its amount.
CREATE TRIGGER ledger_entries_chain BEFORE INSERT ON ledger_entries
WHEN NEW.balance_after_millicredits IS NOT
     COALESCE((SELECT balance_after_millicredits FROM ledger_entries
               WHERE account_id = NEW.account_id AND sequence = NEW.sequence - 1),
              CASE WHEN NEW.sequence = 1 THEN 0 END) + NEW.amount_millicredits
BEGIN SELECT RAISE(ABORT, 'creditflow: ledger entry breaks its account''s sequence or balance chain'); END;
