//! The report's computations over data frames, with polars: the day's totals by kind, totals per day for the
//! 30-day series, the usage mix per model, the top spenders, the day's usage debits for the re-pricing sample, and
//! purchases matched against Stripe's charges.
//!
//! Each takes the ledger's entries as the frame [`entries_frame`] makes, so the same code runs on the entries the
//! store streams for a night's report and on a large extract read from a file (`bench/`). Two choices of that frame
//! keep the computations cheap on millions of entries (measured in `bench/README.md`):
//! - accounts, kinds and models are categorical: a group-by or a comparison works on 32-bit codes rather than
//!   strings, and a row holds 4 bytes per column rather than a string;
//! - rows are in day order with `day` marked sorted, so a day or a range of days is a slice found by binary search
//!   ([`days`]) rather than a filter over every row.
//!
//! The group-bys run on polars' streaming engine ([`collect`]). Amounts stay integer millicredits; only shares and
//! ratios, which are not money, are floating point.

use polars::prelude::*;
use polars::series::IsSorted;

/// Entry kinds, as stored.
pub const PURCHASE_CREDIT: &str = "purchase_credit";
/// Autoreload credits.
pub const AUTORELOAD_CREDIT: &str = "autoreload_credit";
/// Usage debits.
pub const USAGE_DEBIT: &str = "usage_debit";

/// The type of the entries' text columns with few distinct values (accounts, kinds, models): categorical, with
/// polars' global categories so that frames built apart (blocks of a file) can be stacked.
pub fn categorical() -> DataType {
    DataType::from_categories(Categories::global())
}

/// The columns of the entries frame before `day`, with their types: `id` (text), `account_id`, `kind`
/// (categorical), `amount` (i64 millicredits) and `model` (categorical, null when none was recorded). The rate card
/// version and the timestamp are not kept: no computation reads them.
pub fn entry_schema() -> Schema {
    Schema::from_iter([
        Field::new("id".into(), DataType::String),
        Field::new("account_id".into(), categorical()),
        Field::new("kind".into(), categorical()),
        Field::new("amount".into(), DataType::Int64),
        Field::new("model".into(), categorical()),
    ])
}

/// Builds the entries frame: the columns of [`entry_schema`] and `day`, the index in `day_starts` (Unix
/// microseconds, ascending) of the day each entry falls in (-1 before the first); in day order ([`in_day_order`]).
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
    let frame = DataFrame::new(
        height,
        vec![
            Column::new("id".into(), entries.ids),
            Column::new("account_id".into(), entries.accounts).cast(&categorical())?,
            Column::new("kind".into(), entries.kinds).cast(&categorical())?,
            Column::new("amount".into(), entries.amounts),
            Column::new("model".into(), entries.models).cast(&categorical())?,
            Column::new("day".into(), days),
        ],
    )?;
    in_day_order(frame)
}

/// `frame` with its rows in day order and `day` marked sorted, which [`days`] relies on to slice instead of filter.
/// Rows already in order (entries read in time order) are kept as they are; otherwise they are sorted, keeping the
/// order of entries within a day. Every entry must have a day.
pub fn in_day_order(mut frame: DataFrame) -> PolarsResult<DataFrame> {
    let day = frame.column("day")?.i32()?.rechunk().into_owned();
    polars_ensure!(day.null_count() == 0, ComputeError: "every entry needs a day");
    let mut day = if day.cont_slice()?.is_sorted() {
        day
    } else {
        frame = frame.sort(["day"], SortMultipleOptions::default().with_maintain_order(true))?;
        frame.column("day")?.i32()?.rechunk().into_owned()
    };
    day.set_sorted_flag(IsSorted::Ascending);
    frame.with_column(day.into_column())?;
    Ok(frame)
}

/// The entries of days `first..=last`: a slice of `entries` (no copy) when it is in day order ([`in_day_order`]),
/// a filter otherwise.
pub fn days(entries: &DataFrame, first: i32, last: i32) -> PolarsResult<DataFrame> {
    let day = entries.column("day")?;
    if day.is_sorted_flag() == IsSorted::Ascending
        && let Ok(values) = day.i32()?.cont_slice()
    {
        let from = values.partition_point(|day| *day < first);
        let to = values.partition_point(|day| *day <= last).max(from);
        let offset = i64::try_from(from).map_err(|_| polars_err!(ComputeError: "too many entries"))?;
        return Ok(entries.slice(offset, to - from));
    }
    entries.clone().lazy().filter(col("day").gt_eq(lit(first)).and(col("day").lt_eq(lit(last)))).collect()
}

/// Runs `query` on polars' streaming engine, as the report's computations do: it aggregates into hash tables as
/// rows stream by, where the in-memory engine first gathers the row indices of every group (2 to 3 times slower on
/// the report's group-bys over millions of entries).
pub fn collect(query: LazyFrame) -> PolarsResult<DataFrame> {
    // One query (not `collect_all`) always gives one frame.
    Ok(query.collect_with_engine(Engine::Streaming)?.unwrap_single())
}

fn is_kind(kind: &str) -> Expr {
    col("kind").eq(lit(kind))
}

/// Descending by `value`, then ascending by the text column `key`.
fn ranked(query: LazyFrame, value: &str, key: &str) -> LazyFrame {
    query.sort([value, key], SortMultipleOptions::default().with_order_descending_multi([true, false]))
}

/// Totals per day of days `first..=last`: `day`, `entries` (u32 count), `purchased`, `granted`, `debited`
/// (positive), `net`; one row per day that has entries, by day.
pub fn day_totals(entries: &DataFrame, first: i32, last: i32) -> PolarsResult<DataFrame> {
    let bought = is_kind(PURCHASE_CREDIT).or(is_kind(AUTORELOAD_CREDIT));
    let amount = col("amount");
    let totals = days(entries, first, last)?
        .lazy()
        .group_by([col("day")])
        .agg([
            len().alias("entries"),
            when(bought).then(amount.clone()).otherwise(lit(0i64)).sum().alias("purchased"),
            when(amount.clone().gt(lit(0i64))).then(amount.clone()).otherwise(lit(0i64)).sum().alias("granted"),
            amount.sum().alias("net"),
        ])
        // What was debited is what was granted less the net: one conditional sum over every row fewer.
        .select([
            col("day"),
            col("entries"),
            col("purchased"),
            col("granted"),
            (col("granted") - col("net")).alias("debited"),
            col("net"),
        ])
        .sort(["day"], SortMultipleOptions::default());
    collect(totals)
}

/// The entries of day `day` per kind: `kind`, `entries`, `amount` (signed sum), by kind.
pub fn kind_totals(entries: &DataFrame, day: i32) -> PolarsResult<DataFrame> {
    let kinds = days(entries, day, day)?
        .lazy()
        .group_by([col("kind")])
        .agg([len().alias("entries"), col("amount").sum().alias("amount")])
        .with_column(col("kind").cast(DataType::String))
        .sort(["kind"], SortMultipleOptions::default());
    collect(kinds)
}

/// Usage of day `day` per model: `model` (`unknown` when none was recorded), `debits`, `credits` (positive
/// millicredits); most credits first, then by model.
pub fn usage_by_model(entries: &DataFrame, day: i32) -> PolarsResult<DataFrame> {
    let models = days(entries, day, day)?
        .lazy()
        .filter(is_kind(USAGE_DEBIT))
        .with_column(col("model").fill_null(lit("unknown")))
        .group_by([col("model")])
        .agg([len().alias("debits"), (lit(0i64) - col("amount")).sum().alias("credits")])
        .with_column(col("model").cast(DataType::String));
    collect(ranked(models, "credits", "model"))
}

/// Usage per account over the days `first..=last`: `account_id`, `debits`, `spent` (positive millicredits); most
/// spent first, then by account, `limit` rows at most.
pub fn spend_by_account(entries: &DataFrame, first: i32, last: i32, limit: Option<u32>) -> PolarsResult<DataFrame> {
    let spend = days(entries, first, last)?
        .lazy()
        .filter(is_kind(USAGE_DEBIT))
        .group_by([col("account_id")])
        .agg([len().alias("debits"), (lit(0i64) - col("amount")).sum().alias("spent")])
        .with_column(col("account_id").cast(DataType::String));
    let spend = ranked(spend, "spent", "account_id");
    collect(match limit {
        Some(limit) => spend.limit(limit),
        None => spend,
    })
}

/// The ids of day `day`'s usage debits (`id`), from which the re-pricing sample is drawn; in no particular order.
pub fn usage_ids(entries: &DataFrame, day: i32) -> PolarsResult<DataFrame> {
    collect(days(entries, day, day)?.lazy().filter(is_kind(USAGE_DEBIT)).select([col("id")]))
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

/// Column `name` of `frame` as text (nulls as `None`; a categorical column gives its categories' text).
pub fn strings(frame: &DataFrame, name: &str) -> PolarsResult<Vec<Option<String>>> {
    let column = frame.column(name)?.cast(&DataType::String)?;
    Ok(column.str()?.iter().map(|value| value.map(str::to_owned)).collect())
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

    /// Days start at 0, 100 and 200.
    const DAY_STARTS: [i64; 3] = [0, 100, 200];

    fn columns() -> EntryColumns {
        EntryColumns {
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
            // The first entry is before the first day.
            created_at_us: vec![-5, 10, 20, 110, 120, 130, 250],
        }
    }

    fn entries() -> DataFrame {
        entries_frame(columns(), &DAY_STARTS).expect("frame")
    }

    /// The same entries, last first, as the store may return them.
    fn entries_reversed() -> DataFrame {
        let mut columns = columns();
        columns.ids.reverse();
        columns.accounts.reverse();
        columns.kinds.reverse();
        columns.amounts.reverse();
        columns.models.reverse();
        columns.rate_versions.reverse();
        columns.created_at_us.reverse();
        entries_frame(columns, &DAY_STARTS).expect("frame")
    }

    fn i64s(frame: &DataFrame, name: &str) -> Vec<i64> {
        ints(frame, name).expect(name).into_iter().map(|value| value.expect("no null")).collect()
    }

    fn texts(frame: &DataFrame, name: &str) -> Vec<String> {
        strings(frame, name).expect(name).into_iter().map(|value| value.expect("no null")).collect()
    }

    #[test]
    fn totals_per_day_split_grants_from_debits() {
        let days = day_totals(&entries(), i32::MIN, i32::MAX).expect("totals");
        assert_eq!(i64s(&days, "day"), [-1, 0, 1, 2]);
        assert_eq!(i64s(&days, "entries"), [1, 2, 3, 1]);
        assert_eq!(i64s(&days, "purchased"), [5_000_000, 7_000_000, 0, 0]);
        assert_eq!(i64s(&days, "granted"), [5_000_000, 7_000_000, 0, 0]);
        assert_eq!(i64s(&days, "debited"), [0, 1_500, 3_000, 1_000_000]);
        assert_eq!(i64s(&days, "net"), [5_000_000, 6_998_500, -3_000, -1_000_000]);
        let series = day_totals(&entries(), 0, 1).expect("totals");
        assert_eq!(i64s(&series, "day"), [0, 1]);
    }

    #[test]
    fn usage_and_spenders_are_ranked() {
        let models = usage_by_model(&entries(), 1).expect("models");
        assert_eq!(texts(&models, "model"), ["m2", "unknown"]);
        assert_eq!(i64s(&models, "credits"), [2_000, 700]);
        let spenders = spend_by_account(&entries(), 0, 1, Some(1)).expect("spenders");
        assert_eq!(texts(&spenders, "account_id"), ["a"]);
        assert_eq!(i64s(&spenders, "spent"), [2_200]);
        let kinds = kind_totals(&entries(), 1).expect("kinds");
        assert_eq!(texts(&kinds, "kind"), ["adjustment", USAGE_DEBIT]);
        assert_eq!(i64s(&kinds, "amount"), [-300, -2_700]);
        let mut ids = texts(&usage_ids(&entries(), 1).expect("ids"), "id");
        ids.sort();
        assert_eq!(ids, ["e4", "e6"]);
        assert_eq!(total(days(&entries(), i32::MIN, -1).expect("days").lazy()).expect("total"), 5_000_000);
    }

    #[test]
    fn entries_are_kept_in_day_order_whatever_order_they_come_in() {
        let reversed = entries_reversed();
        assert_eq!(i64s(&reversed, "day"), [-1, 0, 0, 1, 1, 1, 2]);
        // Entries of one day keep the order they came in.
        assert_eq!(texts(&reversed, "id"), ["e1", "e3", "e2", "e6", "e5", "e4", "e7"]);
        assert_eq!(texts(&days(&reversed, 0, 0).expect("day 0"), "id"), ["e3", "e2"]);
        assert_eq!(days(&reversed, 3, 9).expect("no day").height(), 0);
        for (ordered, shuffled) in [
            (day_totals(&entries(), 0, 2), day_totals(&reversed, 0, 2)),
            (kind_totals(&entries(), 1), kind_totals(&reversed, 1)),
            (usage_by_model(&entries(), 1), usage_by_model(&reversed, 1)),
            (spend_by_account(&entries(), 0, 2, None), spend_by_account(&reversed, 0, 2, None)),
        ] {
            assert!(ordered.expect("ordered").equals(&shuffled.expect("shuffled")));
        }
    }

    #[test]
    fn a_night_without_entries_gives_empty_results() {
        let empty = entries_frame(EntryColumns::default(), &DAY_STARTS).expect("frame");
        assert_eq!(day_totals(&empty, 0, 2).expect("totals").height(), 0);
        assert_eq!(kind_totals(&empty, 1).expect("kinds").height(), 0);
        assert_eq!(usage_by_model(&empty, 1).expect("models").height(), 0);
        assert_eq!(spend_by_account(&empty, 0, 2, Some(10)).expect("spenders").height(), 0);
        assert_eq!(usage_ids(&empty, 1).expect("ids").height(), 0);
        assert_eq!(total(days(&empty, 1, 1).expect("day").lazy()).expect("total"), 0);
    }

    #[test]
    fn days_filters_a_frame_not_known_to_be_in_day_order() {
        let mut frame = entries();
        let mut day = frame.column("day").expect("day").clone();
        day.set_sorted_flag(IsSorted::Not);
        frame.with_column(day).expect("day");
        let filtered = days(&frame, 1, 2).expect("days");
        // `equals_missing`: the two frames have the same null models.
        assert!(filtered.equals_missing(&days(&entries(), 1, 2).expect("days")));
        assert_eq!(texts(&filtered, "id"), ["e4", "e5", "e6", "e7"]);
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
