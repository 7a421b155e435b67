//! The report's computations over data frames, with polars: the day's totals by kind, totals per day for the
//! 30-day series, the usage mix per model, the top spenders, and purchases matched against Stripe's charges.
//!
//! Each takes the ledger's entries as a lazy frame with the columns [`entries_frame`] makes, so the same code runs
//! on the entries the store streams for a night's report and on a large extract read from a file (`bench/`).
//! Amounts stay integer millicredits; only shares and ratios, which are not money, are floating point.

use polars::prelude::*;

/// Entry kinds, as stored.
pub const PURCHASE_CREDIT: &str = "purchase_credit";
/// Autoreload credits.
pub const AUTORELOAD_CREDIT: &str = "autoreload_credit";
/// Usage debits.
pub const USAGE_DEBIT: &str = "usage_debit";

/// Builds the entries frame: `id`, `account_id`, `kind`, `amount` (i64 millicredits), `model`, `rate_version`,
/// `created_at_us` and `day`, the index in `day_starts` (Unix microseconds, ascending) of the day each entry falls
/// in (-1 before the first).
pub fn entries_frame(entries: creditflow_store::EntryColumns, day_starts: &[i64]) -> PolarsResult<DataFrame> {
    let days: Vec<i32> = entries
        .created_at_us
        .iter()
        .map(|at| {
            let index = day_starts.partition_point(|start| start <= at);
            i32::try_from(index).unwrap_or(i32::MAX) - 1
        })
        .collect();
    let height = entries.ids.len();
    DataFrame::new(
        height,
        vec![
            Column::new("id".into(), entries.ids),
            Column::new("account_id".into(), entries.accounts),
            Column::new("kind".into(), entries.kinds),
            Column::new("amount".into(), entries.amounts),
            Column::new("model".into(), entries.models),
            Column::new("rate_version".into(), entries.rate_versions),
            Column::new("created_at_us".into(), entries.created_at_us),
            Column::new("day".into(), days),
        ],
    )
}

fn is_kind(kind: &str) -> Expr {
    col("kind").eq(lit(kind))
}

fn positive_part(expr: Expr) -> Expr {
    when(expr.clone().gt(lit(0i64))).then(expr).otherwise(lit(0i64))
}

/// Totals per day: `day`, `entries` (u32 count), `purchased`, `granted`, `debited` (positive), `net`; one row per
/// day that has entries, by day.
pub fn day_totals(entries: LazyFrame) -> PolarsResult<DataFrame> {
    let bought = is_kind(PURCHASE_CREDIT).or(is_kind(AUTORELOAD_CREDIT));
    entries
        .group_by([col("day")])
        .agg([
            len().alias("entries"),
            when(bought).then(col("amount")).otherwise(lit(0i64)).sum().alias("purchased"),
            positive_part(col("amount")).sum().alias("granted"),
            positive_part(lit(0i64) - col("amount")).sum().alias("debited"),
            col("amount").sum().alias("net"),
        ])
        .sort(["day"], SortMultipleOptions::default())
        .collect()
}

/// The entries of day `day` per kind: `kind`, `entries`, `amount` (signed sum), by kind.
pub fn kind_totals(entries: LazyFrame, day: i32) -> PolarsResult<DataFrame> {
    entries
        .filter(col("day").eq(lit(day)))
        .group_by([col("kind")])
        .agg([len().alias("entries"), col("amount").sum().alias("amount")])
        .sort(["kind"], SortMultipleOptions::default())
        .collect()
}

/// Usage of day `day` per model: `model` (`unknown` when none was recorded), `debits`, `credits` (positive
/// millicredits); most credits first, then by model.
pub fn usage_by_model(entries: LazyFrame, day: i32) -> PolarsResult<DataFrame> {
    entries
        .filter(col("day").eq(lit(day)).and(is_kind(USAGE_DEBIT)))
        .with_column(col("model").fill_null(lit("unknown")))
        .group_by([col("model")])
        .agg([len().alias("debits"), (lit(0i64) - col("amount")).sum().alias("credits")])
        .sort(["credits", "model"], SortMultipleOptions::default().with_order_descending_multi([true, false]))
        .collect()
}

/// Usage per account over the days `first..=last`: `account_id`, `debits`, `spent` (positive millicredits); most
/// spent first, then by account, `limit` rows at most.
pub fn spend_by_account(entries: LazyFrame, first: i32, last: i32, limit: Option<u32>) -> PolarsResult<DataFrame> {
    let ranked = entries
        .filter(col("day").gt_eq(lit(first)).and(col("day").lt_eq(lit(last))).and(is_kind(USAGE_DEBIT)))
        .group_by([col("account_id")])
        .agg([len().alias("debits"), (lit(0i64) - col("amount")).sum().alias("spent")])
        .sort(["spent", "account_id"], SortMultipleOptions::default().with_order_descending_multi([true, false]));
    match limit {
        Some(limit) => ranked.limit(limit).collect(),
        None => ranked.collect(),
    }
}

/// The signed sum of `amount` (0 for no rows).
pub fn total(entries: LazyFrame) -> PolarsResult<i64> {
    let frame = entries.select([col("amount").sum()]).collect()?;
    Ok(frame.column("amount")?.i64()?.get(0).unwrap_or(0))
}

/// Our credited payments (`payment_intent`, `account_id`, `ours_cents`) against Stripe's paid charges (`charge_id`,
/// `payment_intent`, `stripe_cents`), matched by PaymentIntent (a charge without one is matched by nothing).
/// Adds `status`: `matched`, `amount_differs`, `missing_in_stripe` (credited here, no charge) or
/// `missing_in_ledger` (charged, not credited); unmatched rows first.
pub fn match_payments(ours: LazyFrame, stripe: LazyFrame) -> PolarsResult<DataFrame> {
    let stripe = stripe.with_column(col("payment_intent").fill_null(lit("none:") + col("charge_id")));
    let status = when(col("stripe_cents").is_null())
        .then(lit("missing_in_stripe"))
        .when(col("ours_cents").is_null())
        .then(lit("missing_in_ledger"))
        .when(col("ours_cents").eq(col("stripe_cents")))
        .then(lit("matched"))
        .otherwise(lit("amount_differs"));
    let args = JoinArgs::new(JoinType::Full).with_coalesce(JoinCoalesce::CoalesceColumns);
    ours.join(stripe, [col("payment_intent")], [col("payment_intent")], args)
        .with_column(status.alias("status"))
        .with_column(col("status").eq(lit("matched")).alias("is_matched"))
        .sort(["is_matched", "payment_intent"], SortMultipleOptions::default())
        .select([
            col("payment_intent"),
            col("charge_id"),
            col("account_id"),
            col("ours_cents"),
            col("stripe_cents"),
            col("status"),
        ])
        .collect()
}

/// Column `name` of `frame` as integers (nulls as `None`).
pub fn ints(frame: &DataFrame, name: &str) -> PolarsResult<Vec<Option<i64>>> {
    let column = frame.column(name)?.cast(&DataType::Int64)?;
    Ok(column.i64()?.iter().collect())
}

/// Column `name` of `frame` as text (nulls as `None`).
pub fn strings(frame: &DataFrame, name: &str) -> PolarsResult<Vec<Option<String>>> {
    Ok(frame.column(name)?.str()?.iter().map(|value| value.map(str::to_owned)).collect())
}

/// Writes `frame` as CSV with a header row.
pub fn to_csv(frame: &mut DataFrame) -> PolarsResult<Vec<u8>> {
    let mut bytes = Vec::new();
    CsvWriter::new(&mut bytes).include_header(true).finish(frame)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use creditflow_store::EntryColumns;

    fn entries() -> DataFrame {
        let columns = EntryColumns {
            ids: (1..=7).map(|n| format!("e{n}")).collect(),
            accounts: ["a", "a", "b", "b", "c", "a", "c"].map(String::from).to_vec(),
            kinds: [
                PURCHASE_CREDIT,
                USAGE_DEBIT,
                AUTORELOAD_CREDIT,
                USAGE_DEBIT,
                "adjustment",
                USAGE_DEBIT,
                "refund_debit",
            ]
            .map(String::from)
            .to_vec(),
            amounts: vec![5_000_000, -1_500, 7_000_000, -2_000, -300, -700, -1_000_000],
            models: vec![None, Some("m1".into()), None, Some("m2".into()), None, None, None],
            rate_versions: vec![None, Some("v1".into()), None, Some("v1".into()), None, Some("v1".into()), None],
            // Days start at 0, 100 and 200; the first entry is before them.
            created_at_us: vec![-5, 10, 20, 110, 120, 130, 250],
        };
        entries_frame(columns, &[0, 100, 200]).expect("frame")
    }

    fn i64s(frame: &DataFrame, name: &str) -> Vec<i64> {
        ints(frame, name).expect(name).into_iter().map(|value| value.expect("no null")).collect()
    }

    fn texts(frame: &DataFrame, name: &str) -> Vec<String> {
        strings(frame, name).expect(name).into_iter().map(|value| value.expect("no null")).collect()
    }

    #[test]
    fn totals_per_day_split_grants_from_debits() {
        let days = day_totals(entries().lazy()).expect("totals");
        assert_eq!(i64s(&days, "day"), [-1, 0, 1, 2]);
        assert_eq!(i64s(&days, "entries"), [1, 2, 3, 1]);
        assert_eq!(i64s(&days, "purchased"), [5_000_000, 7_000_000, 0, 0]);
        assert_eq!(i64s(&days, "granted"), [5_000_000, 7_000_000, 0, 0]);
        assert_eq!(i64s(&days, "debited"), [0, 1_500, 3_000, 1_000_000]);
        assert_eq!(i64s(&days, "net"), [5_000_000, 6_998_500, -3_000, -1_000_000]);
    }

    #[test]
    fn usage_and_spenders_are_ranked() {
        let models = usage_by_model(entries().lazy(), 1).expect("models");
        assert_eq!(texts(&models, "model"), ["m2", "unknown"]);
        assert_eq!(i64s(&models, "credits"), [2_000, 700]);
        let spenders = spend_by_account(entries().lazy(), 0, 1, Some(1)).expect("spenders");
        assert_eq!(i64s(&spenders, "spent"), [2_200]);
        assert_eq!(total(entries().lazy().filter(col("day").lt(lit(0)))).expect("total"), 5_000_000);
    }

    #[test]
    fn payments_are_matched_by_payment_intent() {
        let ours = df!(
            "payment_intent" => ["pi_1", "pi_2", "pi_3"],
            "account_id" => ["a", "b", "c"],
            "ours_cents" => [500i64, 1_000, 700],
        )
        .expect("ours");
        let stripe = df!(
            "charge_id" => ["ch_1", "ch_2", "ch_4", "ch_5"],
            "payment_intent" => [Some("pi_1"), Some("pi_2"), Some("pi_4"), None],
            "stripe_cents" => [500i64, 900, 300, 100],
        )
        .expect("stripe");
        let matched = match_payments(ours.lazy(), stripe.lazy()).expect("matched");
        let rows: Vec<(String, String)> =
            texts(&matched, "payment_intent").into_iter().zip(texts(&matched, "status")).collect();
        let expected = [
            ("none:ch_5", "missing_in_ledger"),
            ("pi_2", "amount_differs"),
            ("pi_3", "missing_in_stripe"),
            ("pi_4", "missing_in_ledger"),
            ("pi_1", "matched"),
        ];
        assert_eq!(rows, expected.map(|(a, b)| (a.to_owned(), b.to_owned())));
        let csv = String::from_utf8(to_csv(&mut matched.clone()).expect("csv")).expect("utf-8");
        assert!(csv.starts_with("payment_intent,charge_id,account_id,ours_cents,stripe_cents,status\n"), "{csv}");
    }
}
