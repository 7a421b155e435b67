//! The storage test bodies. Each runs unchanged on every backend (see `storage_suite!`).

use std::sync::Arc;

use creditflow_domain::{AccountId, AccountStatus, EntryKind, Millicredits, Overdraft, PostingInvalid, PostingOutcome};
use creditflow_domain::{AccountSettings, Autoreload, Posting, RateCard, RateVersion, SpendCap, rollout_bucket};
use creditflow_store::{EMAILS_QUEUE, RateCardAdded, Rollout, StoreError};
use time::{Duration, OffsetDateTime};

pub(crate) use super::debits::{
    coalesced_debits_answer_as_if_posted_alone, debits_are_priced_with_the_card_in_force_and_replayed_by_key,
    debits_notice_what_another_process_changed, debits_respect_the_daily_cap_and_queue_the_low_balance_notice,
};
use super::helpers::{Db, adjustment, audit, purchase, usage};

pub(crate) async fn migrations_apply_twice(db: &Db) {
    db.store.migrate().await.expect("second migration run is a no-op");
    db.store.ping().await.expect("database answers");
    let id = db.account_with("acct_m", 1_000).await;
    db.store.migrate().await.expect("third run, with data");
    db.assert_balance(&id, 1_000).await;
}

pub(crate) async fn accounts_are_created_once(db: &Db) {
    let id = AccountId::new("acct_once").expect("valid");
    assert!(db.store.create_account(&id).await.expect("create"));
    assert!(!db.store.create_account(&id).await.expect("create again"));
    let account = db.store.account(&id).await.expect("read").expect("exists");
    assert_eq!(
        (account.status, account.balance, account.last_sequence),
        (AccountStatus::Active, Millicredits::ZERO, 0)
    );
    let missing = AccountId::new("acct_missing").expect("valid");
    assert_eq!(db.store.account(&missing).await.expect("read"), None);
}

pub(crate) async fn posting_creates_an_entry_and_moves_the_balance(db: &Db) {
    let id = db.account_with("acct_p", 0).await;
    let before = OffsetDateTime::now_utc() - Duration::seconds(1);
    let mut credit = purchase(&id, "pi_123", 5_000_000);
    credit.source_ref = Some("pi_123".into());
    let PostingOutcome::Created(entry) = db.store.post(&credit).await.expect("post") else { panic!("not created") };
    assert!(entry.id.starts_with("ent_"), "{}", entry.id);
    assert_eq!((entry.sequence, entry.kind, entry.amount.get()), (1, EntryKind::PurchaseCredit, 5_000_000));
    assert_eq!(entry.balance_after, Millicredits::new(5_000_000));
    assert_eq!(entry.source_ref.as_deref(), Some("pi_123"));
    assert_eq!(entry.correlation_id.as_deref(), Some("corr-pi_123"));
    assert!(entry.created_at > before);
    let PostingOutcome::Created(debit) = db.store.post(&usage(&id, "req-1", 1_800)).await.expect("post") else {
        panic!("not created")
    };
    assert_eq!((debit.sequence, debit.amount.get(), debit.balance_after.get()), (2, -1_800, 4_998_200));
    assert_eq!(debit.rate_version.as_ref().map(RateVersion::as_str), Some("v1"));
    let stored = db.store.entries(&id, 0, 10).await.expect("entries");
    assert_eq!(stored, vec![entry, debit], "entries read back exactly as written");
    db.assert_balance(&id, 4_998_200).await;
}

pub(crate) async fn posting_replays_the_first_answer_for_the_same_content(db: &Db) {
    let id = db.account_with("acct_r", 10_000).await;
    let debit = usage(&id, "req-A", 2_000);
    let PostingOutcome::Created(first) = db.store.post(&debit).await.expect("post") else { panic!("not created") };
    // A retry after the balance moved, and after a freeze, still gets the first answer.
    db.store.post(&purchase(&id, "later", 7)).await.expect("post");
    db.store.set_account_status(&id, AccountStatus::Frozen, &audit("account.freeze", "acct_r")).await.expect("freeze");
    let overdraft_retry = creditflow_domain::Posting { overdraft: Overdraft::Allow, ..debit.clone() };
    for retry in [&debit, &overdraft_retry] {
        assert_eq!(db.store.post(retry).await.expect("replay"), PostingOutcome::Exists(first.clone()));
    }
    db.assert_balance(&id, 8_007).await;
}

pub(crate) async fn posting_with_the_same_key_and_other_content_conflicts(db: &Db) {
    let id = db.account_with("acct_c", 10_000).await;
    let PostingOutcome::Created(first) = db.store.post(&usage(&id, "req-B", 2_000)).await.expect("post") else {
        panic!("not created")
    };
    let mut other_correlation = usage(&id, "req-B", 2_000);
    other_correlation.correlation_id = Some("another".into());
    for conflicting in [usage(&id, "req-B", 2_001), other_correlation, purchase(&id, "req-B", 2_000)] {
        let outcome = db.store.post(&conflicting).await.expect("post");
        assert_eq!(outcome, PostingOutcome::ExistsWithDifferentContent(first.clone()));
    }
    // The same key on another account is another posting.
    let other = db.account_with("acct_c2", 5_000).await;
    assert!(matches!(db.store.post(&usage(&other, "req-B", 2_000)).await.expect("post"), PostingOutcome::Created(_)));
    db.assert_balance(&id, 8_000).await;
    let all = db.store.ledger_totals(None).await.expect("totals");
    assert_eq!((all.balances.get(), all.entries.get(), all.entry_count), (11_000, 11_000, 4), "total liability");
}

pub(crate) async fn insufficient_funds_reports_the_shortfall_and_keeps_the_key_free(db: &Db) {
    let id = db.account_with("acct_s", 1_200).await;
    let debit = usage(&id, "req-C", 1_500);
    let outcome = db.store.post(&debit).await.expect("post");
    let expected =
        PostingOutcome::InsufficientFunds { balance: Millicredits::new(1_200), shortfall: Millicredits::new(300) };
    assert_eq!(outcome, expected);
    db.assert_balance(&id, 1_200).await;
    // A refused posting does not consume its key: after a top-up the same request goes through.
    db.store.post(&purchase(&id, "topup", 300)).await.expect("top up");
    assert!(matches!(db.store.post(&debit).await.expect("retry"), PostingOutcome::Created(_)));
    db.assert_balance(&id, 0).await;
}

pub(crate) async fn overdraft_may_take_the_balance_below_zero(db: &Db) {
    let id = db.account_with("acct_o", 1_000).await;
    let mut batch_usage = usage(&id, "evt-1", 2_500);
    batch_usage.overdraft = Overdraft::Allow;
    let PostingOutcome::Created(entry) = db.store.post(&batch_usage).await.expect("post") else { panic!() };
    assert_eq!(entry.balance_after, Millicredits::new(-1_500));
    // Without overdraft, a debit on a negative balance lacks the debt plus the debit.
    let outcome = db.store.post(&usage(&id, "req-D", 100)).await.expect("post");
    let expected =
        PostingOutcome::InsufficientFunds { balance: Millicredits::new(-1_500), shortfall: Millicredits::new(1_600) };
    assert_eq!(outcome, expected);
    db.assert_balance(&id, -1_500).await;
}

pub(crate) async fn frozen_accounts_refuse_usage_but_record_money_that_moved(db: &Db) {
    let id = db.account_with("acct_f", 10_000).await;
    let freeze = audit("account.freeze", "acct_f");
    assert!(db.store.set_account_status(&id, AccountStatus::Frozen, &freeze).await.expect("freeze"));
    assert!(!db.store.set_account_status(&id, AccountStatus::Frozen, &freeze).await.expect("freeze again"));
    assert_eq!(db.store.post(&usage(&id, "req-E", 10)).await.expect("post"), PostingOutcome::AccountFrozen);
    assert!(matches!(db.store.post(&purchase(&id, "pi_f", 500)).await.expect("post"), PostingOutcome::Created(_)));
    let unfreeze = audit("account.unfreeze", "acct_f");
    assert!(db.store.set_account_status(&id, AccountStatus::Active, &unfreeze).await.expect("unfreeze"));
    assert!(matches!(db.store.post(&usage(&id, "req-E", 10)).await.expect("post"), PostingOutcome::Created(_)));
    db.assert_balance(&id, 10_490).await;
    let log = db.store.audit_log(None, 10).await.expect("audit log");
    let actions: Vec<&str> = log.iter().map(|record| record.action.as_str()).collect();
    assert_eq!(actions, ["account.unfreeze", "account.freeze", "account.freeze"]);
    assert!(log.iter().all(|record| record.actor == "test-operator" && record.subject == "acct_f"));
    let missing = AccountId::new("acct_nobody").expect("valid");
    let error = db.store.set_account_status(&missing, AccountStatus::Frozen, &freeze).await.expect_err("missing");
    assert!(matches!(error, StoreError::AccountNotFound(_)), "{error:?}");
}

pub(crate) async fn postings_to_unknown_accounts_are_refused(db: &Db) {
    let missing = AccountId::new("acct_ghost").expect("valid");
    assert_eq!(db.store.post(&purchase(&missing, "k", 1)).await.expect("post"), PostingOutcome::AccountNotFound);
    assert_eq!(db.store.ledger_totals(None).await.expect("totals").entry_count, 0);
}

pub(crate) async fn overflowing_balances_are_refused(db: &Db) {
    let id = db.account_with("acct_big", i64::MAX).await;
    assert_eq!(db.store.post(&purchase(&id, "one-more", 1)).await.expect("post"), PostingOutcome::Overflow);
    let other = db.account_with("acct_low", 0).await;
    let mut huge_debit = adjustment(&other, "down", -1);
    huge_debit.overdraft = Overdraft::Allow;
    assert!(matches!(db.store.post(&huge_debit).await.expect("post"), PostingOutcome::Created(_)));
    huge_debit.amount = Millicredits::new(i64::MIN);
    huge_debit.idempotency_key = "further".into();
    assert_eq!(db.store.post(&huge_debit).await.expect("post"), PostingOutcome::Overflow);
    db.assert_balance(&id, i64::MAX).await;
    db.assert_balance(&other, -1).await;
}

pub(crate) async fn invalid_postings_fail_before_touching_storage(db: &Db) {
    let id = db.account_with("acct_i", 100).await;
    let mut unexplained = adjustment(&id, "adj", 5);
    unexplained.reason = None;
    let rows = [
        (purchase(&id, "neg", -5), PostingInvalid::AmountSign),
        (usage(&id, "", 5), PostingInvalid::IdempotencyKey),
        (unexplained, PostingInvalid::Reason),
    ];
    for (posting, expected) in rows {
        let error = db.store.post(&posting).await.expect_err("invalid");
        assert!(matches!(error, StoreError::InvalidPosting(e) if e == expected), "{posting:?}");
    }
    db.assert_balance(&id, 100).await;
}

pub(crate) async fn database_refuses_update_and_delete_of_entries(db: &Db) {
    let id = db.account_with("acct_imm", 5_000).await;
    db.store.post(&adjustment(&id, "adj-1", -100)).await.expect("adjust");
    let card_toml = "version = \"v1\"\nrounding = \"ceil\"\n[models.m]\nx = 1\n";
    let card = RateCard::from_toml(card_toml).expect("card");
    db.store.add_rate_card(&card, card_toml).await.expect("add card");
    db.store.append_audit(&audit("ledger.adjust", "acct_imm")).await.expect("audit row");
    let statements = [
        "UPDATE ledger_entries SET amount_millicredits = 1",
        "UPDATE ledger_entries SET reason = 'changed' WHERE sequence = 2",
        "DELETE FROM ledger_entries",
        "DELETE FROM ledger_entries WHERE sequence = 2",
        "UPDATE audit_log SET actor = 'someone else'",
        "DELETE FROM audit_log",
        "UPDATE rate_cards SET document = 'x'",
        "DELETE FROM rate_cards",
    ];
    for sql in statements {
        let error = db.raw_execute(sql).await.expect_err(sql);
        assert!(error.contains("append-only"), "{sql}: {error}");
    }
    if db.database.url.starts_with("postgres") {
        let error = db.raw_execute("TRUNCATE ledger_entries CASCADE").await.expect_err("truncate");
        assert!(error.contains("append-only"), "{error}");
    }
    db.assert_balance(&id, 4_900).await;
}

pub(crate) async fn database_refuses_an_entry_that_breaks_the_chain(db: &Db) {
    let id = db.account_with("acct_chain", 1_000).await;
    let insert = |sequence: i64, amount: i64, balance_after: i64| {
        format!(
            "INSERT INTO ledger_entries (id, account_id, sequence, kind, amount_millicredits, \
             balance_after_millicredits, idempotency_key, created_at) VALUES ('ent_forged{sequence}{balance_after}', \
             'acct_chain', {sequence}, 'adjustment', {amount}, {balance_after}, 'forged{sequence}{balance_after}', \
             '2026-01-01T00:00:00.000000Z')"
        )
    };
    // A wrong balance, a skipped sequence, and a duplicate sequence are all refused.
    let values = |insert: String| insert.split_once(" VALUES ").map(|(_, row)| row.to_owned()).unwrap_or_default();
    // Several rows in one statement: checked as a chain among themselves too (the second breaks it here).
    let two_rows = format!("{}, {}", insert(2, 500, 1_500), values(insert(3, 500, 2_000)));
    let broken_second = format!("{}, {}", insert(2, 500, 1_500), values(insert(3, 500, 9_999)));
    for sql in [insert(2, 500, 9_999), insert(3, 500, 1_500), insert(1, 500, 500), broken_second] {
        let error = db.raw_execute(&sql).await.expect_err(&sql);
        assert!(error.contains("chain") || error.contains("unique") || error.contains("UNIQUE"), "{sql}: {error}");
    }
    db.assert_balance(&id, 1_000).await;
    // A statement whose rows continue the chain is accepted whole (the balance column is the store's to move).
    assert_eq!(db.raw_execute(&two_rows).await, Ok(2), "{two_rows}");
}

pub(crate) async fn database_refuses_entries_for_missing_accounts_and_keeps_accounts(db: &Db) {
    let id = db.account_with("acct_kept", 1_000).await;
    db.account_with("acct_empty", 0).await;
    let insert = |account: &str, sequence: i64, balance_after: i64| {
        format!(
            "INSERT INTO ledger_entries (id, account_id, sequence, kind, amount_millicredits, \
             balance_after_millicredits, idempotency_key, created_at) VALUES ('ent_{account}{sequence}', \
             '{account}', {sequence}, 'adjustment', 500, {balance_after}, 'k{account}{sequence}', \
             '2026-01-01T00:00:00.000000Z')"
        )
    };
    // An entry opening the chain of an account that does not exist, alone or beside a valid entry, is refused; so is
    // one that would continue such a chain.
    let beside_valid = format!(
        "{}, {}",
        insert("acct_kept", 2, 1_500),
        insert("acct_ghost", 1, 500).split_once(" VALUES ").map(|(_, row)| row.to_owned()).unwrap_or_default()
    );
    for sql in [insert("acct_ghost", 1, 500), beside_valid, insert("acct_ghost", 2, 1_000)] {
        let error = db.raw_execute(&sql).await.expect_err(&sql);
        let refused = ["does not exist", "FOREIGN KEY", "skips", "chain"].iter().any(|why| error.contains(why));
        assert!(refused, "{sql}: {error}");
    }
    // Accounts are never deleted or renamed, with entries or without; other changes to them stay allowed.
    let statements = [
        "DELETE FROM accounts WHERE id = 'acct_kept'",
        "DELETE FROM accounts WHERE id = 'acct_empty'",
        "DELETE FROM accounts",
        "UPDATE accounts SET id = 'acct_moved' WHERE id = 'acct_kept'",
        "UPDATE accounts SET id = 'acct_moved' WHERE id = 'acct_empty'",
    ];
    for sql in statements {
        let error = db.raw_execute(sql).await.expect_err(sql);
        assert!(error.contains("never removed or renamed"), "{sql}: {error}");
    }
    if db.database.url.starts_with("postgres") {
        let error = db.raw_execute("TRUNCATE accounts CASCADE").await.expect_err("truncate");
        assert!(error.contains("never removed or renamed"), "{error}");
    }
    assert_eq!(db.raw_execute("UPDATE accounts SET id = id WHERE id = 'acct_kept'").await, Ok(1));
    assert_eq!(db.raw_execute("UPDATE accounts SET status = 'frozen' WHERE id = 'acct_empty'").await, Ok(1));
    db.assert_balance(&id, 1_000).await;
    // A chain that opens on an existing account is accepted, in the same statement as its continuation.
    let opening = format!(
        "{}, {}",
        insert("acct_empty", 1, 500),
        insert("acct_empty", 2, 1_000).split_once(" VALUES ").map(|(_, row)| row.to_owned()).unwrap_or_default()
    );
    assert_eq!(db.raw_execute(&opening).await, Ok(2), "{opening}");
}

pub(crate) async fn concurrent_debits_never_overdraw(db: &Db) {
    // 64 tasks each debit 1,000 from 10,500: exactly ten fit.
    let id = db.account_with("acct_race", 10_500).await;
    let store = Arc::new(db.store.clone());
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move { store.post(&usage(&id, &format!("race-{task}"), 1_000)).await })
        })
        .collect();
    let (mut created, mut refused) = (0, 0);
    for task in tasks {
        match task.await.expect("task ran").expect("posting answered") {
            PostingOutcome::Created(entry) => {
                assert!(!entry.balance_after.is_negative(), "{entry:?}");
                created += 1;
            }
            PostingOutcome::InsufficientFunds { balance, shortfall } => {
                assert_eq!(balance.checked_add(shortfall).expect("small"), Millicredits::new(1_000));
                refused += 1;
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((created, refused), (10, 54));
    db.assert_balance(&id, 500).await;
    let entries = db.store.entries(&id, 0, 100).await.expect("entries");
    let sequences: Vec<i64> = entries.iter().map(|entry| entry.sequence).collect();
    assert_eq!(sequences, (1..=11).collect::<Vec<_>>(), "no gaps, no duplicates");
}

pub(crate) async fn concurrent_retries_of_one_key_create_one_entry(db: &Db) {
    let id = db.account_with("acct_dup", 100_000).await;
    let store = Arc::new(db.store.clone());
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move { store.post(&usage(&id, "same-request", 1_000)).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task ran").expect("posting answered"));
    }
    let created: Vec<_> = outcomes.iter().filter(|o| matches!(o, PostingOutcome::Created(_))).collect();
    assert_eq!(created.len(), 1, "{outcomes:?}");
    let PostingOutcome::Created(entry) = created[0] else { unreachable!() };
    assert!(outcomes.iter().all(|o| o == created[0] || *o == PostingOutcome::Exists(entry.clone())));
    db.assert_balance(&id, 99_000).await;
}

pub(crate) async fn adjustments_write_entry_and_audit_together(db: &Db) {
    let id = db.account_with("acct_adj", 1_000).await;
    let record = audit("ledger.adjust", "acct_adj");
    let posting = adjustment(&id, "adj-42", 250);
    let outcome = db.store.post_with_audit(&posting, Some(&record)).await.expect("adjust");
    assert!(matches!(outcome, PostingOutcome::Created(_)));
    // A replay creates nothing and so logs nothing.
    let replay = db.store.post_with_audit(&posting, Some(&record)).await.expect("replay");
    assert!(matches!(replay, PostingOutcome::Exists(_)));
    let log = db.store.audit_log(None, 10).await.expect("log");
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].action.as_str(), log[0].reason.as_deref()), ("ledger.adjust", Some("testing")));
    db.assert_balance(&id, 1_250).await;
}

pub(crate) async fn entries_page_in_sequence_order(db: &Db) {
    let id = db.account_with("acct_page", 0).await;
    for n in 1..=25 {
        db.store.post(&purchase(&id, &format!("k{n}"), n)).await.expect("post");
    }
    let mut seen = Vec::new();
    let mut cursor = 0;
    loop {
        let page = db.store.entries(&id, cursor, 10).await.expect("page");
        let Some(last) = page.last() else { break };
        cursor = last.sequence;
        seen.extend(page.iter().map(|entry| entry.amount.get()));
    }
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    let mut newest_first = Vec::new();
    let mut before = None;
    loop {
        let page = db.store.entries_newest_first(&id, before, 10).await.expect("page");
        let Some(last) = page.last() else { break };
        before = Some(last.sequence);
        newest_first.extend(page.iter().map(|entry| entry.amount.get()));
    }
    assert_eq!(newest_first, (1..=25).rev().collect::<Vec<_>>());
    db.assert_balance(&id, (1..=25).sum()).await;
}

pub(crate) async fn rate_cards_are_immutable_and_activate_by_time(db: &Db) {
    let now = OffsetDateTime::now_utc();
    assert_eq!(db.store.active_rate_card(now).await.expect("read"), None);
    let v1_toml = "version = \"v1\"\nrounding = \"ceil\"\n[models.m]\nx = \"0.5\"\n";
    let v2_toml = "version = \"v2\"\nrounding = \"precise\"\n[models.m]\nx = \"0.25\"\n";
    let (v1, v2) = (RateCard::from_toml(v1_toml).expect("v1"), RateCard::from_toml(v2_toml).expect("v2"));
    assert_eq!(db.store.add_rate_card(&v1, v1_toml).await.expect("add"), RateCardAdded::Created);
    assert_eq!(db.store.add_rate_card(&v1, v1_toml).await.expect("add"), RateCardAdded::Exists);
    let edited = "version = \"v1\"\nrounding = \"ceil\"\n[models.m]\nx = \"0.6\"\n";
    let edited_card = RateCard::from_toml(edited).expect("edited");
    assert_eq!(db.store.add_rate_card(&edited_card, edited).await.expect("add"), RateCardAdded::Conflict);
    db.store.add_rate_card(&v2, v2_toml).await.expect("add");
    let activate = audit("rate_card.activate", "v1");
    db.store.activate_rate_card(v1.version(), now - Duration::hours(1), &activate).await.expect("activate v1");
    db.store.activate_rate_card(v2.version(), now + Duration::hours(1), &activate).await.expect("schedule v2");
    let active_now = db.store.active_rate_card(now).await.expect("read").expect("v1 active");
    assert_eq!((active_now.card.as_ref(), active_now.document.as_str()), (&v1, v1_toml));
    let later = db.store.active_rate_card(now + Duration::hours(2)).await.expect("read").expect("v2 active");
    assert_eq!(*later.card, v2);
    let missing = RateVersion::new("v9").expect("valid");
    let error = db.store.activate_rate_card(&missing, now, &activate).await.expect_err("missing version");
    assert!(matches!(error, StoreError::RateCardNotFound(_)), "{error:?}");
    assert_eq!(db.store.audit_log(None, 10).await.expect("log").len(), 2);
}

pub(crate) async fn random_postings_match_the_reference_model(db: &Db) {
    super::property::check_against_reference_model(db);
}

pub(crate) async fn concurrent_debits_never_pass_a_spend_cap(db: &Db) {
    // Plenty of funds, a cap of 7.5 credits a day, 30 concurrent debits of 1 credit: exactly seven fit.
    let id = db.account_with("acct_cap", 1_000_000).await;
    let window_start = OffsetDateTime::now_utc() - Duration::hours(1);
    let cap = SpendCap { limit: Millicredits::new(7_500), window_start };
    let store = Arc::new(db.store.clone());
    let tasks: Vec<_> = (0..30)
        .map(|task| {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move {
                let posting = Posting { spend_cap: Some(cap), ..usage(&id, &format!("cap-{task}"), 1_000) };
                store.post(&posting).await
            })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.expect("task ran").expect("answered") {
            PostingOutcome::Created(_) => created += 1,
            PostingOutcome::SpendCapExceeded { limit, spent } => {
                assert_eq!(limit, Millicredits::new(7_500));
                assert_eq!(spent, Millicredits::new(7_000), "refusals see all seven debits");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created, 7);
    // Usage before the window does not count; credits never do.
    let later =
        SpendCap { limit: Millicredits::new(7_500), window_start: OffsetDateTime::now_utc() + Duration::seconds(1) };
    let posting = Posting { spend_cap: Some(later), ..usage(&id, "tomorrow", 1_000) };
    assert!(matches!(db.store.post(&posting).await.expect("post"), PostingOutcome::Created(_)));
    db.assert_balance(&id, 1_000_000 - 8_000).await;
}

pub(crate) async fn settings_are_stored_whole(db: &Db) {
    let id = db.account_with("acct_set", 0).await;
    assert_eq!(db.store.settings(&id).await.expect("read"), AccountSettings::default());
    let settings = AccountSettings {
        email: Some("ada@example.com".into()),
        low_balance_threshold: Some(Millicredits::new(1_000)),
        autoreload: Autoreload {
            enabled: true,
            threshold: Some(Millicredits::new(2_000)),
            pack: Some("starter".into()),
            monthly_cap_usd_cents: Some(5_000),
        },
        daily_spend_cap: Some(Millicredits::new(50_000)),
    };
    db.store.put_settings(&id, &settings).await.expect("save");
    assert_eq!(db.store.settings(&id).await.expect("read"), settings);
    db.store.put_settings(&id, &AccountSettings::default()).await.expect("clear");
    assert_eq!(db.store.settings(&id).await.expect("read"), AccountSettings::default());
}

pub(crate) async fn rollouts_give_each_account_one_version(db: &Db) {
    let now = OffsetDateTime::now_utc();
    let document = |version: &str| format!("version = \"{version}\"\nrounding = \"ceil\"\n[models.m]\nx = 1\n");
    for version in ["v1", "v2", "v3"] {
        let text = document(version);
        db.store.add_rate_card(&RateCard::from_toml(&text).expect("card"), &text).await.expect("add");
    }
    let version = |name: &str| RateVersion::new(name).expect("valid");
    let record = audit("rate_card.rollout", "v2");
    db.store.activate_rate_card(&version("v1"), now - Duration::hours(2), &record).await.expect("v1 for all");
    let accounts: Vec<AccountId> = (0..200).map(|n| AccountId::new(format!("acct_r{n}")).expect("valid")).collect();
    let vip = AccountId::new("vip").expect("valid");
    let rollout = Rollout { percentage: 25, allowlist: vec![vip.clone()] };
    db.store.roll_out_rate_card(&version("v2"), now - Duration::hours(1), &rollout, &record).await.expect("v2 to 25%");
    // v3 is scheduled for everyone tomorrow: not in force yet.
    db.store.activate_rate_card(&version("v3"), now + Duration::days(1), &record).await.expect("v3 later");
    let seen = |card: Option<std::sync::Arc<RateCard>>| card.expect("a card").version().to_string();
    let mut on_v2 = 0;
    for account in &accounts {
        let first = seen(db.store.rate_card_for(account, now).await.expect("read"));
        let again = seen(db.store.rate_card_for(account, now).await.expect("read"));
        assert_eq!(first, again, "one version per account");
        let expected = if rollout_bucket(&version("v2"), account) < 25 { "v2" } else { "v1" };
        assert_eq!(first, expected, "{account}");
        on_v2 += usize::from(first == "v2");
        assert_eq!(seen(db.store.rate_card_for(account, now + Duration::days(2)).await.expect("read")), "v3");
    }
    assert!((25..=75).contains(&on_v2), "about a quarter of 200 accounts: {on_v2}");
    assert_eq!(seen(db.store.rate_card_for(&vip, now).await.expect("read")), "v2", "the allowlist is covered");
    // Read for many accounts at once (a usage batch): the same answers.
    let mut everyone: Vec<&AccountId> = accounts.iter().collect();
    everyone.push(&vip);
    let at_once = db.store.rate_cards_for(&everyone, now).await.expect("read");
    assert_eq!(at_once.len(), everyone.len());
    for account in everyone {
        let alone = seen(db.store.rate_card_for(account, now).await.expect("read"));
        assert_eq!(seen(at_once[account].clone()), alone, "{account}");
    }
    let global = db.store.active_rate_card(now).await.expect("read").expect("a global card");
    assert_eq!(global.card.version().as_str(), "v1", "the global card is unchanged");
    let listing = db.store.rate_cards().await.expect("list");
    let v2 = listing.iter().find(|summary| summary.version == "v2").expect("v2 listed");
    assert_eq!((v2.activations[0].1, v2.activations[0].2.clone()), (25, vec!["vip".to_owned()]));
}

pub(crate) async fn a_low_balance_notice_is_queued_once_per_crossing(db: &Db) {
    let id = db.account_with("acct_low_bal", 10_000).await;
    let settings =
        AccountSettings { low_balance_threshold: Some(Millicredits::new(5_000)), ..AccountSettings::default() };
    db.store.put_settings(&id, &settings).await.expect("settings");
    let notices = || async {
        let outbox = db.store.unrelayed_outbox(100).await.expect("outbox");
        outbox.into_iter().filter(|m| m.queue == EMAILS_QUEUE).map(|m| m.payload).collect::<Vec<_>>()
    };
    db.store.post(&usage(&id, "d1", 3_000)).await.expect("post");
    assert!(notices().await.is_empty(), "7,000 is still above the threshold");
    db.store.post(&usage(&id, "d2", 3_000)).await.expect("post");
    let first = notices().await;
    assert_eq!(first.len(), 1, "crossing to 4,000 queues one notice");
    let notice: serde_json::Value = serde_json::from_str(&first[0]).expect("json");
    assert_eq!(
        (notice["kind"].as_str(), notice["accountId"].as_str()),
        (Some("low_balance_email"), Some("acct_low_bal"))
    );
    assert_eq!(
        (notice["balanceMillicredits"].as_i64(), notice["thresholdMillicredits"].as_i64()),
        (Some(4_000), Some(5_000))
    );
    db.store.post(&usage(&id, "d3", 1_000)).await.expect("post");
    assert_eq!(notices().await.len(), 1, "staying below does not notify again");
    db.store.post(&purchase(&id, "top-up", 5_000)).await.expect("post");
    db.store.post(&usage(&id, "d4", 4_000)).await.expect("post");
    assert_eq!(notices().await.len(), 2, "after a top-up the next crossing notifies again");
    // Many concurrent debits that cross together still cross once.
    let other = db.account_with("acct_low_bal2", 10_000).await;
    db.store.put_settings(&other, &settings).await.expect("settings");
    let store = Arc::new(db.store.clone());
    let tasks: Vec<_> = (0..20)
        .map(|n| {
            let (store, other) = (store.clone(), other.clone());
            tokio::spawn(async move { store.post(&usage(&other, &format!("c{n}"), 400)).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("ran").expect("posted");
    }
    let outbox = db.store.unrelayed_outbox(100).await.expect("outbox");
    let for_other = outbox.iter().filter(|m| m.queue == EMAILS_QUEUE && m.payload.contains("acct_low_bal2")).count();
    assert_eq!(for_other, 1);
}

pub(crate) async fn grouped_postings_match_the_reference_model(db: &Db) {
    super::property::check_groups_against_reference_model(db);
}

pub(crate) async fn large_groups_post_in_order_and_cross_the_threshold_once(db: &Db) {
    let id = db.account_with("acct_many", 12_000).await;
    let settings =
        AccountSettings { low_balance_threshold: Some(Millicredits::new(5_000)), ..AccountSettings::default() };
    db.store.put_settings(&id, &settings).await.expect("settings");
    // 12,000 one-millicredit debits (more than one transaction's group and many INSERT statements), a repeated
    // key in the middle, and one over-balance debit at the end.
    let mut postings: Vec<Posting> = (0..12_000).map(|n| usage(&id, &format!("u{n}"), 1)).collect();
    postings.insert(6_000, usage(&id, "u17", 1));
    postings.push(usage(&id, "too-much", 5));
    let outcomes = db.store.post_many(&postings).await.expect("posted");
    assert_eq!(outcomes.len(), postings.len());
    let created = outcomes.iter().filter(|o| matches!(o, PostingOutcome::Created(_))).count();
    assert_eq!(created, 12_000);
    match &outcomes[6_000] {
        PostingOutcome::Exists(entry) => assert_eq!(entry.sequence, 19, "answered with the first use of u17"),
        other => panic!("a repeated key is answered with its first entry: {other:?}"),
    }
    match outcomes.last() {
        Some(PostingOutcome::InsufficientFunds { shortfall, .. }) => assert_eq!(shortfall.get(), 5),
        other => panic!("the last debit finds the balance at zero: {other:?}"),
    }
    db.assert_balance(&id, 0).await;
    let entries = db.store.entries(&id, 0, i64::MAX).await.expect("entries");
    assert_eq!(entries.len(), 12_001, "the seed credit and every debit");
    assert!(entries.iter().zip(1..).all(|(entry, n)| entry.sequence == n), "sequences without gaps");
    let outbox = db.store.unrelayed_outbox(100).await.expect("outbox");
    assert_eq!(outbox.iter().filter(|m| m.queue == EMAILS_QUEUE).count(), 1, "one crossing, one notice");
    // Replaying the whole group changes nothing.
    let again = db.store.post_many(&postings).await.expect("posted");
    assert!(again.iter().take(12_001).all(|o| matches!(o, PostingOutcome::Exists(_))));
    db.assert_balance(&id, 0).await;
    // Postings to two accounts in one call are refused before anything is written.
    let other = db.account_with("acct_many_2", 10).await;
    let mixed = [usage(&id, "m1", 1), usage(&other, "m2", 1)];
    let error = db.store.post_many(&mixed).await.expect_err("mixed accounts");
    assert!(matches!(error, StoreError::InvalidPosting(PostingInvalid::AccountId)), "{error:?}");
    db.assert_balance(&other, 10).await;
}

pub(crate) async fn stalled_jobs_are_queued_again_once(db: &Db) {
    use creditflow_store::{AttemptEnd, QueuedJob};
    let job = |n: u32| QueuedJob {
        id: format!("stripe_events:evt_stall_{n}"),
        queue: "stripe_events".to_owned(),
        payload: format!(r#"{{"eventId":"evt_stall_{n}"}}"#),
    };
    // Four jobs relayed (pending); one runs and ends done, one is running: done is the only state left alone.
    for n in 0..4 {
        db.store.enqueue_once("stripe_events", &job(n).payload, &format!("stall-{n}")).await.expect("outbox");
    }
    let relayed = db.store.unrelayed_outbox(10).await.expect("outbox");
    for (message, n) in relayed.iter().zip(0..) {
        db.store.mark_outbox_relayed_as(message.id, &[job(n)]).await.expect("relayed");
    }
    assert!(db.store.unrelayed_outbox(10).await.expect("outbox").is_empty());
    let Ok(creditflow_store::Attempt::Run(attempt)) = db.store.start_job_attempt(&job(0)).await else { panic!() };
    db.store.end_job_attempt(&job(0).id, attempt, AttemptEnd::Done).await.expect("done");
    db.store.start_job_attempt(&job(1)).await.expect("running");

    let recorded = time::OffsetDateTime::now_utc();
    assert!(db.store.requeue_stalled_jobs(recorded - time::Duration::minutes(5), 100).await.expect("sweep").is_empty());
    // A second later, everything not final and unchanged since counts as stalled.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let cutoff = time::OffsetDateTime::now_utc() - time::Duration::milliseconds(50);
    let (first, second) =
        tokio::join!(db.store.requeue_stalled_jobs(cutoff, 100), db.store.requeue_stalled_jobs(cutoff, 100));
    let mut requeued: Vec<String> =
        first.expect("sweep").into_iter().chain(second.expect("sweep")).map(|job| job.id).collect();
    requeued.sort();
    let expected: Vec<String> = (1..4).map(|n| job(n).id).collect();
    assert_eq!(requeued, expected, "concurrent sweeps requeue each stalled job once; the done one never");
    let outbox = db.store.unrelayed_outbox(10).await.expect("outbox");
    let mut payloads: Vec<&str> = outbox.iter().map(|m| m.payload.as_str()).collect();
    payloads.sort_unstable();
    let wanted: Vec<String> = (1..4).map(|n| job(n).payload).collect();
    assert_eq!(payloads, wanted.iter().map(String::as_str).collect::<Vec<_>>(), "back in the outbox as queued");
    assert!(outbox.iter().all(|m| m.queue == "stripe_events"));
    // A sweep right after finds nothing: the records were moved to now.
    assert!(db.store.requeue_stalled_jobs(cutoff, 100).await.expect("sweep").is_empty());
    // The limit holds.
    let ahead = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    assert_eq!(db.store.requeue_stalled_jobs(ahead, 2).await.expect("sweep").len(), 2);
}

pub(crate) async fn many_accounts_post_in_one_transaction_without_deadlock(db: &Db) {
    let names = ["acct_m3", "acct_m1", "acct_m2"];
    let mut ids = Vec::new();
    for name in names {
        ids.push(db.account_with(name, 10_000).await);
    }
    // Groups in any order come back in that order, each answered as `post_many` would answer it.
    let groups: Vec<Vec<Posting>> = ids
        .iter()
        .map(|id| vec![usage(id, "a", 4_000), usage(id, "b", 4_000), usage(id, "a", 4_000), usage(id, "c", 4_000)])
        .collect();
    let outcomes = db.store.post_many_accounts(&groups).await.expect("posted");
    assert_eq!(outcomes.len(), 3);
    for (id, outcomes) in ids.iter().zip(&outcomes) {
        assert!(outcomes.iter().all(|o| match o {
            PostingOutcome::Created(entry) | PostingOutcome::Exists(entry) => entry.account_id == *id,
            PostingOutcome::InsufficientFunds { .. } => true,
            _ => false,
        }));
        assert!(matches!(outcomes[0], PostingOutcome::Created(_)));
        assert!(matches!(outcomes[1], PostingOutcome::Created(_)));
        assert!(matches!(outcomes[2], PostingOutcome::Exists(_)), "{:?}", outcomes[2]);
        assert!(matches!(outcomes[3], PostingOutcome::InsufficientFunds { .. }), "{:?}", outcomes[3]);
        db.assert_balance(id, 2_000).await;
    }
    // An account in two groups is a caller's error, before anything is written.
    let twice = vec![vec![usage(&ids[0], "d", 1)], vec![usage(&ids[0], "e", 1)]];
    assert!(db.store.post_many_accounts(&twice).await.is_err());
    // Concurrent transactions naming the same accounts in opposite orders never deadlock: locks go in id order.
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let (store, mut ids) = (db.store.clone(), ids.clone());
            if task % 2 == 1 {
                ids.reverse();
            }
            tokio::spawn(async move {
                let groups: Vec<Vec<Posting>> = ids.iter().map(|id| vec![usage(id, &format!("t{task}"), 10)]).collect();
                store.post_many_accounts(&groups).await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task ran").expect("posted");
    }
    for id in &ids {
        db.assert_balance(id, 2_000 - 80).await;
    }
    // One transaction over accounts whose byte order differs from a linguistic one ('-' < 'M' < '_' < 'm' in bytes),
    // an account nobody created, and a debit that crosses a low-balance threshold: each group answers as `post_many`
    // would, and the crossing's notice is written with the entries.
    let crossing = db.account_with("acct_Mx", 1_000).await;
    let dashed = db.account_with("acct-mx", 1_000).await;
    let settings =
        AccountSettings { low_balance_threshold: Some(Millicredits::new(600)), ..AccountSettings::default() };
    db.store.put_settings(&crossing, &settings).await.expect("settings");
    let nobody = creditflow_domain::AccountId::new("acct_mx_nobody").expect("valid");
    let groups = vec![
        vec![usage(&nobody, "n", 10)],
        vec![usage(&crossing, "x1", 300), usage(&crossing, "x2", 300)],
        vec![usage(&ids[0], "y", 20), usage(&ids[0], "y", 20)],
        vec![usage(&dashed, "z", 5_000)],
    ];
    let outcomes = db.store.post_many_accounts(&groups).await.expect("posted");
    assert_eq!(outcomes[0], vec![PostingOutcome::AccountNotFound]);
    assert!(outcomes[1].iter().all(|outcome| matches!(outcome, PostingOutcome::Created(_))));
    assert!(matches!(outcomes[2][..], [PostingOutcome::Created(_), PostingOutcome::Exists(_)]), "{:?}", outcomes[2]);
    assert!(matches!(outcomes[3][..], [PostingOutcome::InsufficientFunds { .. }]), "{:?}", outcomes[3]);
    db.assert_balance(&crossing, 400).await;
    db.assert_balance(&ids[0], 2_000 - 80 - 20).await;
    db.assert_balance(&dashed, 1_000).await;
    let outbox = db.store.unrelayed_outbox(100).await.expect("outbox");
    let notices: Vec<serde_json::Value> = outbox
        .iter()
        .filter(|message| message.queue == EMAILS_QUEUE)
        .map(|message| serde_json::from_str(&message.payload).expect("json"))
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(
        (notices[0]["accountId"].as_str(), notices[0]["balanceMillicredits"].as_i64()),
        (Some("acct_Mx"), Some(400))
    );
    // A transaction that meets keys taken by earlier ones (a usage batch run again) answers them as replays beside
    // the new postings it writes: PostgreSQL first writes as if every key were new, then looks them up and tries again.
    let again: Vec<Vec<Posting>> = ids
        .iter()
        .map(|id| vec![usage(id, "a", 4_000), usage(id, "fresh", 10), usage(id, "b", 4_000), usage(id, "t3", 10)])
        .collect();
    let outcomes = db.store.post_many_accounts(&again).await.expect("posted");
    for (id, outcomes) in ids.iter().zip(&outcomes) {
        assert!(
            matches!(
                outcomes[..],
                [
                    PostingOutcome::Exists(_),
                    PostingOutcome::Created(_),
                    PostingOutcome::Exists(_),
                    PostingOutcome::Exists(_)
                ]
            ),
            "{outcomes:?}"
        );
        let spent_before = if *id == ids[0] { 80 + 20 } else { 80 };
        db.assert_balance(id, 2_000 - spent_before - 10).await;
    }
    let replayed = db.store.post_many_accounts(&again).await.expect("posted");
    assert!(replayed.iter().flatten().all(|outcome| matches!(outcome, PostingOutcome::Exists(_))), "{replayed:?}");
}
