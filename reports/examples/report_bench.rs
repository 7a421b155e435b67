//! Times the nightly report's polars computations on a large ledger extract, for the benchmark in `bench/report`.
//!
//! It reads the extract's `entries.csv` with polars, adds the `day` column the report works with, then runs the
//! report's own functions from [`creditflow_reports::frames`] on it, so what is timed is the code the nightly job
//! runs. Balances per account have no function in `frames` (the job takes them from the store), so that part is
//! written here with polars directly. It prints one JSON object, the same shape `bench/report/reference.py` prints
//! for `pandas` and `DuckDB`: `{"engine", "threads", "rows", "load_seconds", "compute_seconds", "results"}`.
//!
//! Run it with `POLARS_MAX_THREADS` set (the benchmark sets 2):
//! `cargo run --release -p creditflow-reports --example report_bench -- --entries DIR/entries.csv --day YYYY-MM-DD`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use chrono::{Days, NaiveDate};
use creditflow_reports::{day::parse_date, frames};
use polars::prelude::*;
use serde_json::{Value, json};

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// The report's series is the 30 days ending with the report day; day indexes run 0..=29.
const SERIES_DAYS: i32 = 30;
const REPORT_DAY: i32 = SERIES_DAYS - 1;
/// The week before the report day, as day indexes.
const PRIOR_WEEK: (i32, i32) = (REPORT_DAY - 7, REPORT_DAY - 1);
const TOP_SPENDERS: u32 = 10;
const LARGEST_BALANCES: u32 = 5;

const USAGE_TEXT: &str = "usage: report_bench --entries PATH/entries.csv --day YYYY-MM-DD";

struct Args {
    entries: PathBuf,
    day: NaiveDate,
}

fn parse_args() -> Result<Args, String> {
    let mut entries = None;
    let mut day = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--entries" => entries = Some(PathBuf::from(value)),
            "--day" => day = Some(parse_date(&value).map_err(|error| error.to_string())?),
            _ => return Err(format!("unknown argument `{flag}`")),
        }
    }
    Ok(Args { entries: entries.ok_or("--entries is required")?, day: day.ok_or("--day is required")? })
}

/// The first microsecond (UTC) of the series that ends with `day`.
fn series_start_us(day: NaiveDate) -> Result<i64, String> {
    let first = day.checked_sub_days(Days::new(u64::from(SERIES_DAYS.unsigned_abs() - 1))).ok_or("day out of range")?;
    Ok(first.and_hms_opt(0, 0, 0).ok_or("day out of range")?.and_utc().timestamp_micros())
}

/// Reads the extract with explicit column types (no inference pass) and adds `day`, the index of each entry's UTC
/// day in the series (negative before it), as the report's `entries_frame` does for entries from the store.
fn load(path: PathBuf, start_us: i64) -> PolarsResult<DataFrame> {
    let schema = Schema::from_iter([
        Field::new("id".into(), DataType::String),
        Field::new("account_id".into(), DataType::String),
        Field::new("kind".into(), DataType::String),
        Field::new("amount".into(), DataType::Int64),
        Field::new("model".into(), DataType::String),
        Field::new("rate_version".into(), DataType::String),
        Field::new("created_at_us".into(), DataType::Int64),
    ]);
    let entries = CsvReadOptions::default()
        .with_has_header(true)
        .with_schema(Some(Arc::new(schema)))
        .with_rechunk(true)
        .try_into_reader_with_file_path(Some(path))?
        .finish()?;
    // Floor division, in Rust: polars' `floor_div` needs a feature the report itself does not use.
    let created = entries.column("created_at_us")?.i64()?;
    let day: Int32Chunked = created
        .iter()
        .map(|at| at.and_then(|at| i32::try_from((at - start_us).div_euclid(MICROS_PER_DAY)).ok()))
        .collect();
    let mut entries = entries;
    entries.with_column(day.into_series().with_name("day".into()).into_column())?;
    Ok(entries)
}

/// How to print a result column.
#[derive(Clone, Copy)]
enum Cell {
    Text,
    Integer,
}

/// The rows of `frame` as JSON arrays of the named columns, integers exact.
fn rows(frame: &DataFrame, columns: &[(&str, Cell)]) -> PolarsResult<Vec<Value>> {
    let mut values: Vec<Vec<Value>> = vec![Vec::with_capacity(columns.len()); frame.height()];
    for &(name, cell) in columns {
        let column: Vec<Value> = match cell {
            Cell::Text => frames::strings(frame, name)?.into_iter().map(Value::from).collect(),
            Cell::Integer => frames::ints(frame, name)?.into_iter().map(Value::from).collect(),
        };
        for (row, value) in values.iter_mut().zip(column) {
            row.push(value);
        }
    }
    Ok(values.into_iter().map(Value::Array).collect())
}

const SPEND: [(&str, Cell); 3] = [("account_id", Cell::Text), ("debits", Cell::Integer), ("spent", Cell::Integer)];

/// The top spenders of the report day, and what each spent in the week before (zero when nothing), in that order.
fn spenders(entries: &DataFrame) -> PolarsResult<(Vec<Value>, Vec<Value>)> {
    let top = frames::spend_by_account(entries.clone().lazy(), REPORT_DAY, REPORT_DAY, Some(TOP_SPENDERS))?;
    let accounts: Vec<String> = frames::strings(&top, "account_id")?.into_iter().flatten().collect();
    if accounts.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    // Every account's spend over the week (one grouping of a week of rows), then the top ones picked from it: cheaper
    // than filtering ten million rows by ten account ids first.
    let week = frames::spend_by_account(entries.clone().lazy(), PRIOR_WEEK.0, PRIOR_WEEK.1, None)?;
    let found: Vec<(Option<String>, Value)> =
        frames::strings(&week, "account_id")?.into_iter().zip(rows(&week, &SPEND)?).collect();
    let prior_week = accounts
        .iter()
        .map(|account| {
            found
                .iter()
                .find(|(id, _)| id.as_deref() == Some(account.as_str()))
                .map_or_else(|| json!([account, 0, 0]), |(_, row)| row.clone())
        })
        .collect();
    Ok((rows(&top, &SPEND)?, prior_week))
}

/// Balances from entries: the signed sum per account over all entries, summarised as the number of accounts, their
/// total and the largest few. Not in `frames`, so written here with polars.
fn balances(entries: &DataFrame) -> PolarsResult<Value> {
    let per_account =
        entries.clone().lazy().group_by([col("account_id")]).agg([col("amount").sum().alias("balance")]).collect()?;
    let total = frames::total(per_account.clone().lazy().select([col("balance").alias("amount")]))?;
    let largest = per_account
        .clone()
        .lazy()
        .sort(["balance", "account_id"], SortMultipleOptions::default().with_order_descending_multi([true, false]))
        .limit(LARGEST_BALANCES)
        .collect()?;
    Ok(json!({
        "accounts": per_account.height(),
        "total": total,
        "largest": rows(&largest, &[("account_id", Cell::Text), ("balance", Cell::Integer)])?,
    }))
}

/// Every computation of the report, on the loaded entries.
fn compute(entries: &DataFrame) -> PolarsResult<Value> {
    let in_series = col("day").gt_eq(lit(0)).and(col("day").lt_eq(lit(REPORT_DAY)));
    let per_day = frames::day_totals(entries.clone().lazy().filter(in_series))?;
    let opening = frames::total(entries.clone().lazy().filter(col("day").lt(lit(0))))?;
    let kinds = frames::kind_totals(entries.clone().lazy(), REPORT_DAY)?;
    let models = frames::usage_by_model(entries.clone().lazy(), REPORT_DAY)?;
    let (top, prior_week) = spenders(entries)?;
    let day_columns = ["day", "entries", "purchased", "granted", "debited", "net"].map(|name| (name, Cell::Integer));
    Ok(json!({
        "day_totals": rows(&per_day, &day_columns)?,
        "opening_liability": opening,
        "kind_totals": rows(&kinds, &[("kind", Cell::Text), ("entries", Cell::Integer), ("amount", Cell::Integer)])?,
        "usage_by_model":
            rows(&models, &[("model", Cell::Text), ("debits", Cell::Integer), ("credits", Cell::Integer)])?,
        "top_spenders": top,
        "top_spenders_prior_week": prior_week,
        "balances": balances(entries)?,
    }))
}

fn run(args: Args) -> Result<Value, String> {
    let threads = std::env::var("POLARS_MAX_THREADS").ok().and_then(|value| value.parse::<usize>().ok());
    if threads.is_none() {
        eprintln!("POLARS_MAX_THREADS is not set: polars uses every core");
    }
    let start_us = series_start_us(args.day)?;
    let started = Instant::now();
    let entries = load(args.entries, start_us).map_err(|error| format!("loading the entries: {error}"))?;
    let loaded = Instant::now();
    let results = compute(&entries).map_err(|error| format!("computing the report: {error}"))?;
    let computed = Instant::now();
    Ok(json!({
        "engine": "polars",
        "threads": threads,
        "rows": entries.height(),
        "load_seconds": (loaded - started).as_secs_f64(),
        "compute_seconds": (computed - loaded).as_secs_f64(),
        "results": results,
    }))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("{error}\n{USAGE_TEXT}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("report_bench: {error}");
            ExitCode::FAILURE
        }
    }
}
