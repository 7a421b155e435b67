-- Account settings, and rate card rollouts to part of the accounts. Keep in step with ../sqlite/0002_settings_and_rollouts.sql.

CREATE TABLE account_settings (
    account_id                         TEXT PRIMARY KEY REFERENCES accounts (id),
    email                              TEXT,
    low_balance_threshold_millicredits BIGINT CHECK (low_balance_threshold_millicredits >= 0),
    autoreload_enabled                 BOOLEAN NOT NULL DEFAULT FALSE,
    autoreload_threshold_millicredits  BIGINT CHECK (autoreload_threshold_millicredits >= 0),
    autoreload_pack                    TEXT,
    autoreload_monthly_cap_usd_cents   BIGINT CHECK (autoreload_monthly_cap_usd_cents > 0),
    daily_spend_cap_millicredits       BIGINT CHECK (daily_spend_cap_millicredits > 0),
    updated_at                         TIMESTAMPTZ NOT NULL
);

-- A daily spend cap sums the account's usage debits since midnight UTC.
CREATE INDEX ledger_entries_account_created_at ON ledger_entries (account_id, created_at);

-- An activation covers every account (percentage 100, no allowlist) or a rollout's share: the accounts listed in
-- allowlist (a JSON array of account ids) and those whose stable bucket (0-99) is below percentage.
ALTER TABLE rate_card_activations ADD COLUMN percentage INTEGER NOT NULL DEFAULT 100
    CHECK (percentage BETWEEN 0 AND 100);
ALTER TABLE rate_card_activations ADD COLUMN allowlist TEXT;
