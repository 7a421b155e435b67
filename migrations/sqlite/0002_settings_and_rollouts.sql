-- Account settings, and rate card rollouts to part of the accounts. Keep in step with ../postgres/0002_settings_and_rollouts.sql.

CREATE TABLE account_settings (
    account_id                         TEXT PRIMARY KEY NOT NULL REFERENCES accounts (id),
    email                              TEXT,
    low_balance_threshold_millicredits INTEGER CHECK (low_balance_threshold_millicredits >= 0),
    autoreload_enabled                 INTEGER NOT NULL DEFAULT 0 CHECK (autoreload_enabled IN (0, 1)),
    autoreload_threshold_millicredits  INTEGER CHECK (autoreload_threshold_millicredits >= 0),
    autoreload_pack                    TEXT,
    autoreload_monthly_cap_usd_cents   INTEGER CHECK (autoreload_monthly_cap_usd_cents > 0),
    daily_spend_cap_millicredits       INTEGER CHECK (daily_spend_cap_millicredits > 0),
    updated_at                         TEXT NOT NULL
) STRICT;

-- A daily spend cap sums the account's usage debits since midnight UTC.
CREATE INDEX ledger_entries_account_created_at ON ledger_entries (account_id, created_at);

-- An activation covers every account (percentage 100, no allowlist) or a rollout's share: the accounts listed in
-- allowlist (a JSON array of account ids) and those whose stable bucket (0-99) is below percentage.
ALTER TABLE rate_card_activations ADD COLUMN percentage INTEGER NOT NULL DEFAULT 100
    CHECK (percentage BETWEEN 0 AND 100);
ALTER TABLE rate_card_activations ADD COLUMN allowlist TEXT;
