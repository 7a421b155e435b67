//! creditflow's storage test suite: the same tests against SQLite and PostgreSQL (one test binary).
//!
//! Each test body in `storage/suite.rs` takes a fresh, migrated [`Store`]; `storage_suite!` instantiates every body
//! once per backend, so `sqlite::posting_replays` and `postgres::posting_replays` are the same test on two drivers.

mod storage {
    pub(crate) mod debits;
    pub(crate) mod helpers;
    pub(crate) mod property;
    pub(crate) mod suite;
}

use creditflow_testkit::TestBackend;

macro_rules! storage_suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let db = crate::storage::helpers::Db::new(crate::TestBackend::Sqlite).await;
                    crate::storage::suite::$test(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let db = crate::storage::helpers::Db::new(crate::TestBackend::Postgres).await;
                    crate::storage::suite::$test(&db).await;
                }
            )*
        }
    };
}

storage_suite!(
    migrations_apply_twice,
    accounts_are_created_once,
    posting_creates_an_entry_and_moves_the_balance,
    posting_replays_the_first_answer_for_the_same_content,
    posting_with_the_same_key_and_other_content_conflicts,
    insufficient_funds_reports_the_shortfall_and_keeps_the_key_free,
    overdraft_may_take_the_balance_below_zero,
    frozen_accounts_refuse_usage_but_record_money_that_moved,
    postings_to_unknown_accounts_are_refused,
    overflowing_balances_are_refused,
    invalid_postings_fail_before_touching_storage,
    database_refuses_update_and_delete_of_entries,
    database_refuses_an_entry_that_breaks_the_chain,
    database_refuses_entries_for_missing_accounts_and_keeps_accounts,
    concurrent_debits_never_overdraw,
    concurrent_retries_of_one_key_create_one_entry,
    adjustments_write_entry_and_audit_together,
    entries_page_in_sequence_order,
    rate_cards_are_immutable_and_activate_by_time,
    random_postings_match_the_reference_model,
    concurrent_debits_never_pass_a_spend_cap,
    settings_are_stored_whole,
    rollouts_give_each_account_one_version,
    a_low_balance_notice_is_queued_once_per_crossing,
    grouped_postings_match_the_reference_model,
    large_groups_post_in_order_and_cross_the_threshold_once,
    stalled_jobs_are_queued_again_once,
    debits_are_priced_with_the_card_in_force_and_replayed_by_key,
    debits_respect_the_daily_cap_and_queue_the_low_balance_notice,
    coalesced_debits_answer_as_if_posted_alone,
    debits_notice_what_another_process_changed,
    many_accounts_post_in_one_transaction_without_deadlock,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_match_across_backends() {
    let sqlite = storage::helpers::Db::new(TestBackend::Sqlite).await;
    let postgres = storage::helpers::Db::new(TestBackend::Postgres).await;
    let sqlite_columns = storage::helpers::columns(&sqlite).await;
    let postgres_columns = storage::helpers::columns(&postgres).await;
    assert!(sqlite_columns.len() > 20, "the schema was read: {sqlite_columns:?}");
    assert_eq!(sqlite_columns, postgres_columns, "both backends must have the same tables and columns");
}

#[tokio::test]
async fn urls_that_cannot_hold_a_ledger_are_refused() {
    for url in ["sqlite::memory:", "sqlite://file.db?mode=memory", "mysql://db/x", "creditflow.db"] {
        let error = creditflow_store::Store::connect(url, 1).await.expect_err(url);
        assert!(matches!(error, creditflow_store::StoreError::UnsupportedUrl(_)), "{url}: {error:?}");
    }
}
