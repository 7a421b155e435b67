#!/usr/bin/env python3
"""The nightly report's computations in pandas or DuckDB, the references creditflow's polars code is timed against.

Reads the extract that `generate.py` writes, then computes what `reports/examples/report_bench.rs` computes with
creditflow's `frames` module, and prints one JSON object:
`{"engine", "threads", "rows", "load_seconds", "compute_seconds", "results": {...}}`.

Loading means reading the CSV into the engine's memory with explicit column types and deriving `day`, the index of
each entry's UTC day within the 30-day series that ends with `--day` (negative before it). Like creditflow's loader,
it keeps only the columns some query reads: `rate_version` is not loaded and `created_at_us` is dropped once `day`
is derived from it. Computing means every query of the report on that in-memory data. Peak memory is measured from
outside by the runner.

Every number in `results` is an exact integer: pandas sums int64 columns, DuckDB returns its (128-bit) sums as
Python integers, and both are converted to plain `int` before printing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

MICROS_PER_DAY = 86_400_000_000
SERIES_DAYS = 30
REPORT_DAY = SERIES_DAYS - 1
PRIOR_WEEK = (REPORT_DAY - 7, REPORT_DAY - 1)
TOP_SPENDERS = 10
LARGEST_BALANCES = 5
BOUGHT = ("purchase_credit", "autoreload_credit")
USAGE = "usage_debit"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["pandas", "duckdb"], required=True)
    parser.add_argument("--entries", type=Path, required=True, help="the extract's entries.csv")
    parser.add_argument("--day", type=dt.date.fromisoformat, required=True, help="report day, YYYY-MM-DD (UTC)")
    parser.add_argument("--threads", type=int, default=2, help="threads each engine may use (default 2)")
    return parser.parse_args(argv)


def series_start_us(day: dt.date) -> int:
    first = day - dt.timedelta(days=SERIES_DAYS - 1)
    return int(dt.datetime.combine(first, dt.time(), dt.timezone.utc).timestamp()) * 1_000_000


def rows_of(records, width: int) -> list[list]:
    """Plain lists of `str`/`int`, whatever scalar types the engine returned."""
    return [[value if isinstance(value, str) else int(value) for value in record[:width]] for record in records]


def usage_ids_of(count: int, smallest, largest) -> dict:
    """The report day's usage debits, from which the nightly job draws its re-pricing sample: how many, and the
    smallest and largest id (None when there are none), so that engines compare without listing every id."""
    present = count > 0
    return {"count": int(count), "smallest": smallest if present else None, "largest": largest if present else None}


def prior_week_rows(top: list[list], found: dict[str, tuple[int, int]]) -> list[list]:
    """The prior week's debits and spend of each top spender, in the top spenders' order (zero when none)."""
    return [[account, *found.get(account, (0, 0))] for account, _, _ in top]


class Pandas:
    """The report in pandas, written as a pandas user would: vectorised columns, `groupby`, `sort_values`."""

    def __init__(self, threads: int) -> None:
        import pyarrow

        # pandas itself computes on one thread; its pyarrow CSV reader gets the same budget as the other engines.
        pyarrow.set_cpu_count(threads)
        pyarrow.set_io_thread_count(threads)
        self.frame = None

    def load(self, path: Path, start_us: int) -> int:
        import pandas as pd

        types = {"id": "str", "account_id": "str", "kind": "str", "amount": "int64", "model": "str",
                 "created_at_us": "int64"}
        frame = pd.read_csv(path, engine="pyarrow", dtype=types, usecols=list(types))
        frame["day"] = ((frame["created_at_us"] - start_us) // MICROS_PER_DAY).astype("int32")
        del frame["created_at_us"]
        self.frame = frame
        return len(frame)

    def compute(self) -> dict:
        import pandas as pd

        entries = self.frame
        day = entries["day"]
        amount = entries["amount"]
        series = entries[(day >= 0) & (day <= REPORT_DAY)]
        series_amount = series["amount"]
        per_day = (
            pd.DataFrame({
                "day": series["day"],
                "purchased": series_amount.where(series["kind"].isin(BOUGHT), 0),
                "granted": series_amount.clip(lower=0),
                "debited": (-series_amount).clip(lower=0),
                "net": series_amount,
            })
            .groupby("day", sort=True)
            .agg(entries=("net", "size"), purchased=("purchased", "sum"), granted=("granted", "sum"),
                 debited=("debited", "sum"), net=("net", "sum"))
        )
        opening = int(amount[day < 0].sum())

        today = entries[day == REPORT_DAY]
        kinds = today.groupby("kind", sort=True)["amount"].agg(["size", "sum"])
        usage_today = today[today["kind"] == USAGE]
        usage_ids = usage_today["id"]
        models = (
            pd.DataFrame({"model": usage_today["model"].fillna("unknown"), "credits": -usage_today["amount"]})
            .groupby("model")["credits"].agg(debits="size", credits="sum")
            .reset_index()
            .sort_values(["credits", "model"], ascending=[False, True])
        )
        spenders = (
            usage_today.assign(spent=-usage_today["amount"])
            .groupby("account_id")["spent"].agg(debits="size", spent="sum")
            .reset_index()
            .sort_values(["spent", "account_id"], ascending=[False, True])
            .head(TOP_SPENDERS)
        )
        top = rows_of(spenders.itertuples(index=False), 3)
        week = entries[(day >= PRIOR_WEEK[0]) & (day <= PRIOR_WEEK[1]) & (entries["kind"] == USAGE)
                       & entries["account_id"].isin([account for account, _, _ in top])]
        week_spend = (-week["amount"]).groupby(week["account_id"]).agg(["size", "sum"])
        found = {account: (int(row["size"]), int(row["sum"])) for account, row in week_spend.iterrows()}

        balances = amount.groupby(entries["account_id"]).sum()
        largest = (
            balances.rename("balance").reset_index()
            .sort_values(["balance", "account_id"], ascending=[False, True])
            .head(LARGEST_BALANCES)
        )
        return {
            "day_totals": rows_of(per_day.reset_index().itertuples(index=False), 6),
            "opening_liability": opening,
            "kind_totals": rows_of(kinds.reset_index().itertuples(index=False), 3),
            "usage_by_model": rows_of(models.itertuples(index=False), 3),
            "usage_ids": usage_ids_of(len(usage_ids), usage_ids.min(), usage_ids.max()),
            "top_spenders": top,
            "top_spenders_prior_week": prior_week_rows(top, found),
            "balances": {
                "accounts": int(len(balances)),
                "total": int(balances.sum()),
                "largest": rows_of(largest.itertuples(index=False), 2),
            },
        }


class DuckDb:
    """The report in DuckDB SQL, on an in-memory table."""

    def __init__(self, threads: int) -> None:
        import duckdb

        self.connection = duckdb.connect(":memory:", config={"threads": threads})

    def load(self, path: Path, start_us: int) -> int:
        # `//` truncates toward zero in DuckDB: floor the day index exactly by subtracting the non-negative remainder.
        since = f"(created_at_us - {start_us})"
        remainder = f"(({since} % {MICROS_PER_DAY}) + {MICROS_PER_DAY}) % {MICROS_PER_DAY}"
        self.connection.execute(
            f"""
            CREATE TABLE entries AS
            SELECT id, account_id, kind, amount, model,
                   CAST(({since} - {remainder}) // {MICROS_PER_DAY} AS INTEGER) AS day
            FROM read_csv(?, header = true, columns = {{
                'id': 'VARCHAR', 'account_id': 'VARCHAR', 'kind': 'VARCHAR', 'amount': 'BIGINT',
                'model': 'VARCHAR', 'rate_version': 'VARCHAR', 'created_at_us': 'BIGINT'}})
            """,
            [str(path)],
        )
        return self.query("SELECT count(*) FROM entries")[0][0]

    def query(self, sql: str, parameters: list | None = None) -> list[tuple]:
        return self.connection.execute(sql, parameters or []).fetchall()

    def compute(self) -> dict:
        bought = ", ".join(f"'{kind}'" for kind in BOUGHT)
        per_day = self.query(f"""
            SELECT day, count(*), sum(CASE WHEN kind IN ({bought}) THEN amount ELSE 0 END),
                   sum(greatest(amount, 0)), sum(greatest(-amount, 0)), sum(amount)
            FROM entries WHERE day BETWEEN 0 AND {REPORT_DAY} GROUP BY day ORDER BY day""")
        opening = self.query("SELECT coalesce(sum(amount), 0) FROM entries WHERE day < 0")[0][0]
        kinds = self.query(f"""
            SELECT kind, count(*), sum(amount) FROM entries WHERE day = {REPORT_DAY} GROUP BY kind ORDER BY kind""")
        models = self.query(f"""
            SELECT coalesce(model, 'unknown') AS model, count(*), -sum(amount) AS credits
            FROM entries WHERE day = {REPORT_DAY} AND kind = '{USAGE}'
            GROUP BY 1 ORDER BY credits DESC, model""")
        usage_count, first_id, last_id = self.query(f"""
            SELECT count(*), min(id), max(id) FROM entries WHERE day = {REPORT_DAY} AND kind = '{USAGE}'""")[0]
        top = rows_of(self.query(f"""
            SELECT account_id, count(*), -sum(amount) AS spent
            FROM entries WHERE day = {REPORT_DAY} AND kind = '{USAGE}'
            GROUP BY account_id ORDER BY spent DESC, account_id LIMIT {TOP_SPENDERS}"""), 3)
        week = self.query(
            f"""
            SELECT account_id, count(*), -sum(amount)
            FROM entries
            WHERE day BETWEEN {PRIOR_WEEK[0]} AND {PRIOR_WEEK[1]} AND kind = '{USAGE}'
              AND list_contains(?, account_id)
            GROUP BY account_id""",
            [[account for account, _, _ in top]],
        )
        found = {account: (int(debits), int(spent)) for account, debits, spent in week}
        self.query("CREATE TEMP TABLE balances AS SELECT account_id, sum(amount) AS balance FROM entries GROUP BY 1")
        accounts, balance_total = self.query("SELECT count(*), coalesce(sum(balance), 0) FROM balances")[0]
        largest = self.query(
            f"SELECT account_id, balance FROM balances ORDER BY balance DESC, account_id LIMIT {LARGEST_BALANCES}")
        return {
            "day_totals": rows_of(per_day, 6),
            "opening_liability": int(opening),
            "kind_totals": rows_of(kinds, 3),
            "usage_by_model": rows_of(models, 3),
            "usage_ids": usage_ids_of(usage_count, first_id, last_id),
            "top_spenders": top,
            "top_spenders_prior_week": prior_week_rows(top, found),
            "balances": {"accounts": int(accounts), "total": int(balance_total), "largest": rows_of(largest, 2)},
        }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    engine = Pandas(args.threads) if args.engine == "pandas" else DuckDb(args.threads)
    started = time.perf_counter()
    rows = engine.load(args.entries, series_start_us(args.day))
    loaded = time.perf_counter()
    results = engine.compute()
    computed = time.perf_counter()
    report = {
        "engine": args.engine,
        "threads": args.threads,
        "rows": int(rows),
        "load_seconds": round(loaded - started, 4),
        "compute_seconds": round(computed - loaded, 4),
        "results": results,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
