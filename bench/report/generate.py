#!/usr/bin/env python3
"""Writes a synthetic, deterministic extract of creditflow's ledger for the nightly report benchmark.

The extract is `entries.csv` with the columns the report reads
(`id,account_id,kind,amount,model,rate_version,created_at_us`) and `meta.json`, which records how it was made and
its last day, the default report day. The same `--rows` and `--seed` always give the same bytes.

What makes it realistic enough for the report's group-bys:
- entries span 60 UTC days ending on a fixed date, with more traffic during working hours and a slow growth trend;
- about 5,000 accounts whose activity follows a Zipf-like law (a few accounts make most of the traffic);
- about 95% usage debits spread over six models with different weights and prices, and a rate card version that
  changes once during the period; a few usage debits (0.05%) have no model, as entries recorded before models were
  tracked do, so the report's `unknown` bucket is exercised;
- purchases and autoreloads of pack-sized amounts (5,000, 20,000 or 100,000 credits), a few refunds of a pack and
  small signed adjustments.

Amounts are signed i64 millicredits: credits positive, debits negative. `model` and `rate_version` are empty (null)
except on usage debits. Entries are drawn independently, so an account's balance over the period may be negative
(the report only sums it; no posting rule is checked). Rows are written in time order, one day at a time, so
memory stays small whatever `--rows`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

COLUMNS = ["id", "account_id", "kind", "amount", "model", "rate_version", "created_at_us"]
LAST_DAY = dt.date(2026, 3, 31)
DAYS = 60
ACCOUNTS = 5_000
# Exponent of the Zipf-like law of account activity: the busiest 50 accounts make about 60% of the entries.
ACCOUNT_SKEW = 1.1
MICROS_PER_DAY = 86_400_000_000
MICROS_PER_HOUR = 3_600_000_000

KINDS = ["usage_debit", "purchase_credit", "autoreload_credit", "refund_debit", "adjustment"]
KIND_WEIGHTS = [0.950, 0.020, 0.025, 0.003, 0.002]
PACKS_MILLICREDITS = np.array([5_000_000, 20_000_000, 100_000_000], dtype=np.int64)
PURCHASE_PACK_WEIGHTS = [0.6, 0.3, 0.1]
# Autoreload tops up with the account's configured pack, mostly the small ones.
AUTORELOAD_PACK_WEIGHTS = [0.7, 0.3, 0.0]

# name, share of usage debits, median price of one debit in millicredits. Prices are chosen so that, over all
# accounts, usage consumes most of what is bought.
MODELS = [
    ("atlas-large", 0.08, 1_200_000),
    ("atlas-small", 0.35, 150_000),
    ("beacon-1", 0.12, 600_000),
    ("beacon-1-mini", 0.30, 80_000),
    ("cirrus-embed", 0.10, 20_000),
    ("cirrus-vision", 0.05, 900_000),
]
MODEL_MISSING_SHARE = 0.0005
# The rate card changes on this day of the period (0-based); usage before it was priced by the old version.
RATE_VERSIONS = ("rc_2026_01", "rc_2026_03")
RATE_CHANGE_DAY = 40
# Relative traffic per UTC hour: quiet nights, busy European and American working hours.
HOURLY_WEIGHTS = np.array(
    [3, 2, 2, 2, 2, 3, 4, 6, 8, 10, 11, 11, 11, 12, 13, 14, 14, 13, 11, 9, 8, 6, 5, 4], dtype=np.float64
)
DAILY_GROWTH = 1.01

HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="number of entries (default 10,000,000)")
    parser.add_argument("--out", type=Path, required=True, help="directory to write entries.csv and meta.json in")
    parser.add_argument("--seed", type=int, default=20_260_331, help="random seed (default 20260331)")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    return args


def hex_digits(values: np.ndarray, width: int) -> np.ndarray:
    """The lowest `width` hex digits of each unsigned value, most significant first, as ASCII codes."""
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64) * np.uint64(4)
    return HEX[(values[:, None] >> shifts) & np.uint64(0xF)]


def text_column(parts: list[np.ndarray | bytes], rows: int) -> pa.Array:
    """Concatenates fixed-width ASCII pieces (arrays of shape (rows, k) or constant bytes) into one string column."""
    blocks = []
    for part in parts:
        if isinstance(part, bytes):
            blocks.append(np.broadcast_to(np.frombuffer(part, dtype=np.uint8), (rows, len(part))))
        else:
            blocks.append(part)
    matrix = np.ascontiguousarray(np.concatenate(blocks, axis=1))
    fixed = matrix.view(f"S{matrix.shape[1]}").reshape(rows)
    return pa.array(fixed, type=pa.binary()).cast(pa.string())


def entry_ids(created_at_us: np.ndarray, rng: np.random.Generator) -> pa.Array:
    """`ent_` and a time-ordered (version 7 layout) UUID: the millisecond time, then random bits."""
    rows = len(created_at_us)
    millis = (created_at_us // 1_000).astype(np.uint64)
    random_a = rng.integers(0, 1 << 12, size=rows, dtype=np.uint64)
    random_b = rng.integers(0, 1 << 14, size=rows, dtype=np.uint64) | np.uint64(0x8000)
    random_c = rng.integers(0, 1 << 48, size=rows, dtype=np.uint64)
    time_digits = hex_digits(millis, 12)
    parts = [
        b"ent_",
        time_digits[:, :8],
        b"-",
        time_digits[:, 8:],
        b"-7",
        hex_digits(random_a, 3),
        b"-",
        hex_digits(random_b, 4),
        b"-",
        hex_digits(random_c, 12),
    ]
    return text_column(parts, rows)


def account_ids(rng: np.random.Generator) -> np.ndarray:
    """5,000 distinct ids such as `acct_3f9a0c1d2e4b5a69`; the first is the busiest account."""
    values = rng.integers(0, 1 << 64, size=ACCOUNTS, dtype=np.uint64)
    # 5,000 draws of 64 bits collide with a probability near 1e-12; the seed is fixed, so this either always holds.
    assert len(np.unique(values)) == ACCOUNTS
    matrix = np.concatenate(
        [np.broadcast_to(np.frombuffer(b"acct_", dtype=np.uint8), (ACCOUNTS, 5)), hex_digits(values, 16)], axis=1
    )
    return np.array([bytes(row).decode() for row in matrix], dtype=object)


def rows_per_day(rows: int, rng: np.random.Generator) -> np.ndarray:
    weights = DAILY_GROWTH ** np.arange(DAYS)
    return rng.multinomial(rows, weights / weights.sum())


def day_batch(day: int, rows: int, context: dict, rng: np.random.Generator) -> pa.RecordBatch:
    """The entries of one day, in time order."""
    day_start_us = context["first_day_us"] + day * MICROS_PER_DAY
    hours = rng.choice(24, size=rows, p=HOURLY_WEIGHTS / HOURLY_WEIGHTS.sum())
    created_at_us = np.sort(day_start_us + hours * MICROS_PER_HOUR + rng.integers(0, MICROS_PER_HOUR, size=rows))

    accounts = rng.choice(ACCOUNTS, size=rows, p=context["account_weights"])
    kinds = rng.choice(len(KINDS), size=rows, p=KIND_WEIGHTS)
    usage = kinds == 0
    amount = np.zeros(rows, dtype=np.int64)

    models = rng.choice(len(MODELS), size=rows, p=[share for _, share, _ in MODELS])
    median_price = np.array([price for _, _, price in MODELS], dtype=np.float64)[models]
    usage_price = np.maximum(1, np.rint(median_price * rng.lognormal(0.0, 1.0, size=rows))).astype(np.int64)
    amount[usage] = -usage_price[usage]
    purchase_pack = PACKS_MILLICREDITS[rng.choice(3, size=rows, p=PURCHASE_PACK_WEIGHTS)]
    autoreload_pack = PACKS_MILLICREDITS[rng.choice(3, size=rows, p=AUTORELOAD_PACK_WEIGHTS)]
    amount[kinds == 1] = purchase_pack[kinds == 1]
    amount[kinds == 2] = autoreload_pack[kinds == 2]
    amount[kinds == 3] = -purchase_pack[kinds == 3]
    # Adjustments: mostly goodwill credits, sometimes corrections the other way; never zero.
    adjustment = rng.integers(1_000, 2_000_000, size=rows) * np.where(rng.random(rows) < 0.7, 1, -1)
    amount[kinds == 4] = adjustment[kinds == 4]

    model_names = np.array([name for name, _, _ in MODELS], dtype=object)[models]
    has_model = usage & (rng.random(rows) >= MODEL_MISSING_SHARE)
    model = pa.array(model_names, type=pa.string(), mask=~has_model)
    rate_version = RATE_VERSIONS[0] if day < RATE_CHANGE_DAY else RATE_VERSIONS[1]
    rate_versions = pa.array(np.full(rows, rate_version, dtype=object), type=pa.string(), mask=~usage)

    return pa.RecordBatch.from_arrays(
        [
            entry_ids(created_at_us, rng),
            pa.array(context["account_ids"][accounts], type=pa.string()),
            pa.array(np.array(KINDS, dtype=object)[kinds], type=pa.string()),
            pa.array(amount, type=pa.int64()),
            model,
            rate_versions,
            pa.array(created_at_us, type=pa.int64()),
        ],
        names=COLUMNS,
    )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    rng = np.random.default_rng(args.seed)
    first_day = LAST_DAY - dt.timedelta(days=DAYS - 1)
    first_day_us = int(dt.datetime.combine(first_day, dt.time(), dt.timezone.utc).timestamp()) * 1_000_000
    ranks = np.arange(1, ACCOUNTS + 1, dtype=np.float64)
    weights = ranks**-ACCOUNT_SKEW
    context = {
        "first_day_us": first_day_us,
        "account_ids": account_ids(rng),
        "account_weights": weights / weights.sum(),
    }

    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "entries.csv.partial"
    schema = pa.schema([(name, pa.int64() if name in ("amount", "created_at_us") else pa.string()) for name in COLUMNS])
    # No value contains a separator, a quote or a line break (pyarrow refuses to write one unquoted), and quoting
    # every string would only make the file bigger. pyarrow quotes header names whatever the style: write our own.
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with open(partial, "wb") as sink:
        sink.write((",".join(COLUMNS) + "\n").encode())
        with pacsv.CSVWriter(sink, schema, write_options=options) as writer:
            for day, rows in enumerate(rows_per_day(args.rows, rng)):
                writer.write_batch(day_batch(day, int(rows), context, rng))
    os.replace(partial, args.out / "entries.csv")

    meta = {
        "rows": args.rows,
        "seed": args.seed,
        "first_day": first_day.isoformat(),
        "last_day": LAST_DAY.isoformat(),
        "accounts": ACCOUNTS,
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.rows:,} entries to {args.out / 'entries.csv'} in {time.monotonic() - started:.1f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
