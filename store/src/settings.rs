//! Account settings storage: one row per account, replaced as a whole.

use creditflow_domain::{AccountId, AccountSettings, Autoreload, Millicredits};

use crate::{Store, StoreError, Timestamp, on_backend};

#[derive(sqlx::FromRow)]
struct SettingsRow {
    email: Option<String>,
    low_balance_threshold_millicredits: Option<i64>,
    autoreload_enabled: bool,
    autoreload_threshold_millicredits: Option<i64>,
    autoreload_pack: Option<String>,
    autoreload_monthly_cap_usd_cents: Option<i64>,
    daily_spend_cap_millicredits: Option<i64>,
}

impl Store {
    /// The account's settings; defaults (nothing set) when it never saved any.
    pub async fn settings(&self, account_id: &AccountId) -> Result<AccountSettings, StoreError> {
        let sql = "SELECT email, low_balance_threshold_millicredits, autoreload_enabled, \
                   autoreload_threshold_millicredits, autoreload_pack, autoreload_monthly_cap_usd_cents, \
                   daily_spend_cap_millicredits FROM account_settings WHERE account_id = $1";
        let row: Option<SettingsRow> = on_backend!(self, |pool, _dialect| sqlx::query_as(sql)
            .bind(account_id.as_str())
            .fetch_optional(pool)
            .await?);
        Ok(row.map_or_else(AccountSettings::default, |row| AccountSettings {
            email: row.email,
            low_balance_threshold: row.low_balance_threshold_millicredits.map(Millicredits::new),
            autoreload: Autoreload {
                enabled: row.autoreload_enabled,
                threshold: row.autoreload_threshold_millicredits.map(Millicredits::new),
                pack: row.autoreload_pack,
                monthly_cap_usd_cents: row.autoreload_monthly_cap_usd_cents,
            },
            daily_spend_cap: row.daily_spend_cap_millicredits.map(Millicredits::new),
        }))
    }

    /// Replaces the account's settings (the account must exist; validate them first).
    pub async fn put_settings(&self, account_id: &AccountId, settings: &AccountSettings) -> Result<(), StoreError> {
        let sql = "INSERT INTO account_settings (account_id, email, low_balance_threshold_millicredits, \
                   autoreload_enabled, autoreload_threshold_millicredits, autoreload_pack, \
                   autoreload_monthly_cap_usd_cents, daily_spend_cap_millicredits, updated_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (account_id) DO UPDATE SET \
                   email = excluded.email, \
                   low_balance_threshold_millicredits = excluded.low_balance_threshold_millicredits, \
                   autoreload_enabled = excluded.autoreload_enabled, \
                   autoreload_threshold_millicredits = excluded.autoreload_threshold_millicredits, \
                   autoreload_pack = excluded.autoreload_pack, \
                   autoreload_monthly_cap_usd_cents = excluded.autoreload_monthly_cap_usd_cents, \
                   daily_spend_cap_millicredits = excluded.daily_spend_cap_millicredits, \
                   updated_at = excluded.updated_at";
        let reload = &settings.autoreload;
        on_backend!(self, |pool, _dialect| {
            sqlx::query(sql)
                .bind(account_id.as_str())
                .bind(settings.email.as_deref())
                .bind(settings.low_balance_threshold.map(Millicredits::get))
                .bind(reload.enabled)
                .bind(reload.threshold.map(Millicredits::get))
                .bind(reload.pack.as_deref())
                .bind(reload.monthly_cap_usd_cents)
                .bind(settings.daily_spend_cap.map(Millicredits::get))
                .bind(Timestamp::now())
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}
