//! Table tests of the posting rules: one row per rule, in precedence order.

use super::*;

fn account() -> AccountId {
    AccountId::new("acct_1").expect("valid id")
}

fn posting(kind: EntryKind, amount: i64) -> Posting {
    Posting {
        account_id: account(),
        kind,
        amount: Millicredits::new(amount),
        idempotency_key: "key-1".into(),
        correlation_id: Some("req-1".into()),
        rate_version: (kind == EntryKind::UsageDebit).then(|| RateVersion::new("v1").expect("valid")),
        source_ref: None,
        reason: (kind == EntryKind::Adjustment).then(|| "goodwill".to_owned()),
        overdraft: Overdraft::Forbid,
        spend_cap: None,
        usage: None,
    }
}

#[expect(clippy::unnecessary_wraps, reason = "rows take the Option that `decide` takes")]
fn state(balance: i64, status: AccountStatus) -> Option<AccountState> {
    Some(AccountState { balance: Millicredits::new(balance), status, last_sequence: 4 })
}

fn entry_for(posting: &Posting) -> Entry {
    Entry {
        usage: posting.usage.clone(),
        id: "ent_1".into(),
        account_id: posting.account_id.clone(),
        sequence: 1,
        kind: posting.kind,
        amount: posting.amount,
        balance_after: Millicredits::new(0),
        idempotency_key: posting.idempotency_key.clone(),
        correlation_id: posting.correlation_id.clone(),
        rate_version: posting.rate_version.clone(),
        source_ref: posting.source_ref.clone(),
        reason: posting.reason.clone(),
        created_at: OffsetDateTime::UNIX_EPOCH,
    }
}

/// (rule, posting, account, entry holding the key, decision)
type Row<'a> = (&'a str, &'a Posting, Option<AccountState>, Option<Entry>, Decision);

const ACTIVE: AccountStatus = AccountStatus::Active;
const FROZEN: AccountStatus = AccountStatus::Frozen;

#[test]
fn decision_table() {
    let debit = posting(EntryKind::UsageDebit, -1_500);
    let mut different = entry_for(&debit);
    different.amount = Millicredits::new(-1_400);
    let overdraft = Posting { overdraft: Overdraft::Allow, ..debit.clone() };
    let append = |balance_after: i64| Decision::Append { sequence: 5, balance_after: Millicredits::new(balance_after) };
    let short = |balance: i64, shortfall: i64| {
        Decision::Refuse(PostingOutcome::InsufficientFunds {
            balance: Millicredits::new(balance),
            shortfall: Millicredits::new(shortfall),
        })
    };
    // (rule, posting, account, entry holding the key, decision)
    let purchase = |amount: i64| posting(EntryKind::PurchaseCredit, amount);
    let (purchase_5000, purchase_1, purchase_100) = (purchase(5_000), purchase(1), purchase(100));
    let huge_adjustment = posting(EntryKind::Adjustment, i64::MIN);
    let rows: Vec<Row<'_>> = vec![
        ("1 missing account", &debit, None, None, Decision::Refuse(PostingOutcome::AccountNotFound)),
        (
            "2 same key same content",
            &debit,
            state(0, FROZEN),
            Some(entry_for(&debit)),
            Decision::Refuse(PostingOutcome::Exists(entry_for(&debit))),
        ),
        (
            "2 same key other content",
            &debit,
            state(9_000, ACTIVE),
            Some(different.clone()),
            Decision::Refuse(PostingOutcome::ExistsWithDifferentContent(different)),
        ),
        ("3 frozen refuses usage", &debit, state(9_000, FROZEN), None, Decision::Refuse(PostingOutcome::AccountFrozen)),
        ("3 frozen still takes purchases", &purchase_5000, state(0, FROZEN), None, append(5_000)),
        ("4 credit overflow", &purchase_1, state(i64::MAX, ACTIVE), None, Decision::Refuse(PostingOutcome::Overflow)),
        ("4 debit overflow", &huge_adjustment, state(-1, ACTIVE), None, Decision::Refuse(PostingOutcome::Overflow)),
        ("5 short by 300", &debit, state(1_200, ACTIVE), None, short(1_200, 300)),
        ("5 already negative", &debit, state(-500, ACTIVE), None, short(-500, 2_000)),
        ("5 overdraft allowed", &overdraft, state(1_200, ACTIVE), None, append(-300)),
        ("6 exact balance", &debit, state(1_500, ACTIVE), None, append(0)),
        ("6 credit on negative balance", &purchase_100, state(-500, ACTIVE), None, append(-400)),
    ];
    for (rule, posting, account, existing, expected) in rows {
        assert_eq!(decide(posting, account, existing, Millicredits::ZERO), expected, "{rule}");
    }
}

#[test]
fn spend_cap_table() {
    let cap = |limit: i64| SpendCap { limit: Millicredits::new(limit), window_start: OffsetDateTime::UNIX_EPOCH };
    let capped =
        |amount: i64, limit: i64| Posting { spend_cap: Some(cap(limit)), ..posting(EntryKind::UsageDebit, amount) };
    let exceeded = |limit: i64, spent: i64| {
        Decision::Refuse(PostingOutcome::SpendCapExceeded {
            limit: Millicredits::new(limit),
            spent: Millicredits::new(spent),
        })
    };
    let append = |balance_after: i64| Decision::Append { sequence: 5, balance_after: Millicredits::new(balance_after) };
    let retried = capped(-1_500, 5_000);
    // (rule, posting, spent in the window, decision)
    let rows: Vec<(&str, Posting, i64, Decision)> = vec![
        ("under the cap", capped(-1_500, 5_000), 3_000, append(8_500)),
        ("exactly at the cap", capped(-1_500, 5_000), 3_500, append(8_500)),
        ("one millicredit over", capped(-1_500, 5_000), 3_501, exceeded(5_000, 3_501)),
        ("cap before funds", capped(-20_000, 5_000), 0, exceeded(5_000, 0)),
        (
            "credits ignore caps",
            Posting { spend_cap: Some(cap(1)), ..posting(EntryKind::PurchaseCredit, 9) },
            7,
            append(10_009),
        ),
    ];
    for (rule, posting, spent, expected) in rows {
        assert_eq!(decide(&posting, state(10_000, ACTIVE), None, Millicredits::new(spent)), expected, "{rule}");
    }
    // A replay is answered before the cap is looked at.
    let first = entry_for(&retried);
    let replay = decide(&retried, state(10_000, ACTIVE), Some(first.clone()), Millicredits::new(9_999));
    assert_eq!(replay, Decision::Refuse(PostingOutcome::Exists(first)));
}

#[test]
fn validation_table() {
    let mut long_key = posting(EntryKind::PurchaseCredit, 1);
    long_key.idempotency_key = "k".repeat(256);
    let mut spaced_key = posting(EntryKind::PurchaseCredit, 1);
    spaced_key.idempotency_key = "a key".into();
    let mut unpriced = posting(EntryKind::UsageDebit, -1);
    unpriced.rate_version = None;
    let mut unexplained = posting(EntryKind::Adjustment, 1);
    unexplained.reason = Some("  ".into());
    let mut long_reference = posting(EntryKind::RefundDebit, -1);
    long_reference.source_ref = Some("r".repeat(256));
    // (posting, expected)
    let rows = [
        (posting(EntryKind::PurchaseCredit, 5_000), Ok(())),
        (posting(EntryKind::PurchaseCredit, 0), Err(PostingInvalid::AmountSign)),
        (posting(EntryKind::AutoreloadCredit, -1), Err(PostingInvalid::AmountSign)),
        (posting(EntryKind::UsageDebit, 1), Err(PostingInvalid::AmountSign)),
        (posting(EntryKind::RefundDebit, 1), Err(PostingInvalid::AmountSign)),
        (posting(EntryKind::Adjustment, 0), Err(PostingInvalid::AmountSign)),
        (posting(EntryKind::Adjustment, -7), Ok(())),
        (long_key, Err(PostingInvalid::IdempotencyKey)),
        (spaced_key, Err(PostingInvalid::IdempotencyKey)),
        (unpriced, Err(PostingInvalid::MissingRateVersion)),
        (unexplained, Err(PostingInvalid::Reason)),
        (long_reference, Err(PostingInvalid::ReferenceTooLong)),
    ];
    for (posting, expected) in rows {
        assert_eq!(posting.validate(), expected, "{posting:?}");
    }
}

#[test]
fn names_round_trip() {
    for kind in EntryKind::ALL {
        assert_eq!(EntryKind::parse(kind.as_str()), Some(kind));
    }
    for status in [AccountStatus::Active, AccountStatus::Frozen] {
        assert_eq!(AccountStatus::parse(status.as_str()), Some(status));
    }
    assert!(AccountId::new("acct_01J-x").is_ok());
    assert!(AccountId::new("").is_err());
    assert!(AccountId::new("a b").is_err());
    assert!(AccountId::new("a".repeat(65)).is_err());
}
