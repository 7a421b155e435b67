#!/usr/bin/env python3
"""creditflow's API benchmarks beside their references, in one run on one machine (see bench/README.md).

Cases (--only picks some):
  reconcile  POST /api/usage/reconcile over many accounts vs pgbench tpcb-like at scale 50, same client count
  hot        the same on one account vs pgbench tpcb-like at scale 1 (every client on one branch row)
  sqlite     reconcile on the embedded SQLite ledger (no reference: the ratio to the PostgreSQL figure)
  webhook    Stripe webhook intake (verify + store + enqueue + 2xx) vs a single-row INSERT commit (pgbench script),
             then webhook -> credited at a steady rate, from the database's own timestamps
  batches    usage batches of 10,000 events priced and debited end to end vs COPY of the same rows into the same table

Rounds alternate creditflow and its reference; the figures are medians. Beside every throughput: the CPU seconds the
client, the server process and the whole machine spent in the measured window, and peak resident memory.
Standard library only. Run through bench/api/run, which builds the release binaries first.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TICK = os.sysconf("SC_CLK_TCK")
ISSUER, AUDIENCE = "https://issuer.bench/", "creditflow-bench"
SECRET = "whsec_bench"
# A production database needs a key to verify tokens beside it (dev mode never runs on PostgreSQL).
AUTH = {
    "CREDITFLOW_AUTH__PUBLIC_KEY_FILE": os.path.join(REPO, "api/tests/fixtures/rsa-1.pub"),
    "CREDITFLOW_AUTH__ISSUER": ISSUER,
    "CREDITFLOW_AUTH__AUDIENCE": AUDIENCE,
}


def log(message):
    print(f"== {message}", file=sys.stderr, flush=True)


def machine_busy():
    """Seconds of CPU the whole machine has spent busy since boot (all cores)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICK


def process_cpu(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_measured(command, env=None):
    """Runs a client to completion and returns its standard output; its CPU shows in os.times()'s children."""
    process = subprocess.run(command, capture_output=True, env=env, text=True, check=False)
    if process.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({process.returncode}): {process.stderr.strip()[-2000:]}")
    return process.stdout


class Measured:
    """CPU and memory of one window: the client (rusage of children), a server process and the whole machine."""

    def __init__(self, server_pid=None):
        self.server_pid = server_pid

    def __enter__(self):
        self.children = os.times()
        self.machine = machine_busy()
        self.server = process_cpu(self.server_pid) if self.server_pid else 0.0
        return self

    def __exit__(self, *exc):
        after = os.times()
        self.client_cpu = (after.children_user - self.children.children_user) + (
            after.children_system - self.children.children_system)
        self.machine_cpu = machine_busy() - self.machine
        self.server_cpu = (process_cpu(self.server_pid) - self.server) if self.server_pid else None
        self.server_rss = peak_rss_mib(self.server_pid) if self.server_pid else None
        return False


def loadgen(args, *rest):
    out = run_measured([args.loadgen, *rest])
    return json.loads(out.strip().splitlines()[-1])


def psql(url, sql, db="postgres"):
    return subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", f"{url}/{db}", "-c", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


def recreate_db(url, name):
    psql(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    psql(url, f"CREATE DATABASE {name}")


class Creditflow:
    """A creditflow process (`api`, `worker` or `serve`) with the benchmark's settings."""

    def __init__(self, args, role, database_url, workdir, extra=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITFLOW_")}
        env.pop("DATABASE_URL", None)
        env.pop("REDIS_URL", None)
        env.update({
            "DATABASE_URL": database_url,
            "CREDITFLOW_LISTEN": f"127.0.0.1:{self.port}",
            "CREDITFLOW_LOG_FORMAT": "json",
            "CREDITFLOW_LOG_FILTER": "warn",
            **AUTH,
            "CREDITFLOW_RATE_LIMIT_PER_MINUTE": "1000000000",
            "CREDITFLOW_STRIPE__WEBHOOK_SECRET": SECRET,
            "CREDITFLOW_REPORT__ENABLED": "false",
            "CREDITFLOW_DATABASE_MAX_CONNECTIONS": str(args.pool),
        })
        env.update(extra or {})
        self.log = open(os.path.join(workdir, f"{role}-{self.port}.log"), "w")
        self.process = subprocess.Popen([args.creditflow, role], cwd=workdir, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        if role != "worker":
            self.wait_ready()
        else:
            time.sleep(1.0)
            if self.process.poll() is not None:
                raise SystemExit(f"creditflow worker exited at start; see {self.log.name}")

    def wait_ready(self):
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"creditflow exited at start; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"creditflow not ready in 60 s; see {self.log.name}")

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def pgbench(args, db, extra, clients, seconds, logdir):
    """Runs pgbench for warmup + seconds with a per-transaction log; returns TPS and latency of the measured window."""
    for name in os.listdir(logdir):
        os.remove(os.path.join(logdir, name))
    prefix = os.path.join(logdir, "pgbench")
    command = ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-T",
               str(int(args.warmup + seconds)), "-l", "--log-prefix", prefix, *extra, f"{args.pg_url}/{db}"]
    start = time.time()
    with Measured() as m:
        run_measured(command)
    latencies = []
    window_start = start + args.warmup
    for name in os.listdir(logdir):
        with open(os.path.join(logdir, name)) as f:
            for line in f:
                fields = line.split()
                # client_id transaction_no latency_us script_no epoch_s epoch_us
                done = int(fields[4]) + int(fields[5]) / 1e6
                if window_start <= done < window_start + seconds:
                    latencies.append(int(fields[2]))
    return summarize(latencies, seconds, m)


def summarize(latencies_us, seconds, m):
    latencies_us.sort()
    n = len(latencies_us)

    def pct(p):
        return latencies_us[max(1, min(n, -(-p * n // 100))) - 1] / 1000 if n else 0.0

    return {"per_s": n / seconds, "p50_ms": pct(50), "p99_ms": pct(99), "count": n,
            "client_cpu": m.client_cpu, "machine_cpu": m.machine_cpu}


def with_usage(result, m, per_s_key):
    return {"per_s": result[per_s_key], "p50_ms": result.get("p50_ms"), "p99_ms": result.get("p99_ms"),
            "statuses": result.get("statuses"), "client_cpu": m.client_cpu, "machine_cpu": m.machine_cpu,
            "server_cpu": m.server_cpu, "server_rss": m.server_rss}


def token(args, roles, sub="bench"):
    rest = ["mint", "--key", os.path.join(REPO, "api/tests/fixtures/rsa-1.key"), "--sub", sub,
            "--issuer", ISSUER, "--audience", AUDIENCE]
    for role in roles:
        rest += ["--role", role]
    return run_measured([args.loadgen, *rest]).strip()


def load_args(args, run_id, extra=()):
    return ["--clients", str(args.clients), "--duration", str(args.duration), "--warmup", str(args.warmup),
            "--run-id", run_id, *extra]


def reconcile_rounds(args, server, service, prefix, accounts, label, rounds, first=0):
    results = []
    for r in range(first, first + rounds):
        with Measured(server.pid) as m:
            out = loadgen(args, "reconcile", "--url", server.url, "--token", service, "--prefix", prefix,
                          "--accounts", str(accounts), *load_args(args, f"{label}{r}x{time.time_ns()}"))
        results.append(with_usage(out, m, "ok_per_s"))
        log(f"{label} round {r + 1}: {out['ok_per_s']:.0f}/s p99 {out['p99_ms']:.1f} ms {out['statuses']}")
    return results


def case_reconcile(args, state, hot):
    db, scale = ("creditflow_pgbench_hot", 1) if hot else ("creditflow_pgbench", args.scale)
    log(f"pgbench -i -s {scale} ({db})")
    recreate_db(args.pg_url, db)
    subprocess.run(["pgbench", "-i", "-q", "-s", str(scale), f"{args.pg_url}/{db}"], check=True,
                   capture_output=True)
    psql(args.pg_url, "CHECKPOINT")
    server = state["api"]
    prefix, accounts = ("hot-", 1) if hot else ("acct-", args.accounts)
    ours, theirs = [], []
    for r in range(args.repeat):
        theirs.append(pgbench(args, db, ["-b", "tpcb-like"], args.clients, args.duration, state["logdir"]))
        log(f"pgbench {'scale 1' if hot else f'scale {scale}'} round {r + 1}: {theirs[-1]['per_s']:.0f} TPS "
            f"p99 {theirs[-1]['p99_ms']:.1f} ms")
        ours += reconcile_rounds(args, server, state["service"], prefix, accounts, "hot" if hot else "many", 1, r)
    return {"ours": ours, "reference": theirs}


def case_sqlite(args, state):
    workdir = tempfile.mkdtemp(prefix="sqlite-", dir=state["workdir"])
    server = Creditflow(args, "api", f"sqlite://{workdir}/creditflow.db", workdir,
                        {"CREDITFLOW_QUEUE_URL": f"sqlite://{workdir}/creditflow-queue.db"})
    try:
        loadgen(args, "fund", "--url", server.url, "--token", state["admin"], "--prefix", "acct-", "--accounts",
                str(args.accounts))
        ours = reconcile_rounds(args, server, state["service"], "acct-", args.accounts, "sqlite", args.repeat)
    finally:
        server.stop()
    return {"ours": ours}


def case_webhook(args, state):
    db = "creditflow_pgbench_insert"
    recreate_db(args.pg_url, db)
    psql(args.pg_url, "CREATE TABLE events (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                      "type TEXT NOT NULL, payload TEXT NOT NULL, received_at TIMESTAMPTZ NOT NULL)", db)
    script = os.path.join(state["workdir"], "insert.sql")
    with open(script, "w") as f:
        # One row the size of a Stripe event, committed alone: what storing a webhook costs at the least.
        f.write("INSERT INTO events (type, payload, received_at) "
                "VALUES ('payment_intent.succeeded', repeat('x', 900), now());\n")
    server = state["api"]
    ours, theirs = [], []
    if args.webhook_worker == "stopped":
        # The intake path alone (verify, store, outbox, 2xx), as the INSERT runs alone: the worker is stopped, as if
        # it ran on other machines, and the payments wait in the outbox until a new one starts after the rounds.
        state["worker"].stop()
    for r in range(args.repeat):
        theirs.append(pgbench(args, db, ["-f", script], args.clients, args.webhook_duration, state["logdir"]))
        log(f"single-row INSERT round {r + 1}: {theirs[-1]['per_s']:.0f}/s p99 {theirs[-1]['p99_ms']:.2f} ms")
        with Measured(server.pid) as m:
            out = loadgen(args, "webhook", "--url", server.url, "--secret", SECRET, "--prefix", "wh-",
                          "--accounts", str(args.accounts), "--clients", str(args.clients), "--duration",
                          str(args.webhook_duration), "--warmup", "1", "--run-id", f"in{r}x{time.time_ns()}x")
        ours.append(with_usage(out, m, "ok_per_s"))
        log(f"webhook intake round {r + 1}: {out['ok_per_s']:.0f}/s p99 {out['p99_ms']:.2f} ms {out['statuses']}")
    if args.webhook_worker == "stopped":
        state["worker"] = Creditflow(args, "worker", state["database_url"], state["workdir"], state["queue"])
    # The payments taken in are credited now (or were meanwhile); the latency below is measured on an idle pipeline.
    started = time.time()
    drained = wait_credited(args, state, "evt_in")
    log(f"the intake rounds' {drained} payments credited {time.time() - started:.0f} s after the last round")
    # Webhook -> credited at a steady rate the workers keep up with.
    run_id = f"cr{time.time_ns()}x"
    log(f"webhook -> credited at {args.webhook_rate}/s for {args.duration} s")
    loadgen(args, "webhook", "--url", server.url, "--secret", SECRET, "--prefix", "wh-", "--accounts",
            str(args.accounts), "--rate", str(args.webhook_rate), "--clients", str(args.clients), "--duration",
            str(args.duration), "--warmup", "0", "--run-id", run_id)
    count = wait_credited(args, state, f"evt_{run_id}")
    row = psql(args.pg_url, f"""
        SELECT count(*),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms),
               max(ms)
        FROM (SELECT extract(epoch FROM l.created_at - e.received_at) * 1000 AS ms
              FROM stripe_events e
              JOIN ledger_entries l ON l.idempotency_key = 'payment:pi_' || substr(e.id, 5)
              WHERE e.id LIKE 'evt_{run_id}%') t""", state["db"])
    n, p50, p99, worst = row.split("|")
    credited = {"count": int(n), "sent": count, "p50_ms": float(p50), "p99_ms": float(p99), "max_ms": float(worst)}
    log(f"webhook -> credited: p50 {credited['p50_ms']:.1f} ms, p99 {credited['p99_ms']:.1f} ms ({n} payments)")
    return {"ours": ours, "reference": theirs, "credited": credited}


def wait_credited(args, state, like):
    """Waits until every stored event of a run is credited and the outbox is empty (each credit also records a
    `purchase.succeeded` announcement to relay); returns how many events there were."""
    deadline = time.time() + 600
    while True:
        row = psql(args.pg_url, f"""
            SELECT (SELECT count(*) FROM stripe_events WHERE id LIKE '{like}%'),
                   (SELECT count(*) FROM purchases WHERE payment_intent_id LIKE 'pi_{like[4:]}%'
                      AND ledger_entry_id IS NOT NULL),
                   (SELECT count(*) FROM outbox WHERE relayed_at IS NULL)""", state["db"])
        stored, credited, unrelayed = (int(x) for x in row.split("|"))
        if stored == credited and unrelayed == 0:
            return stored
        if time.time() > deadline:
            raise SystemExit(f"only {credited} of {stored} payments credited in 10 minutes")
        time.sleep(0.5)


def case_batches(args, state):
    server = state["api"]
    ours = []
    for r in range(args.repeat):
        run_id = f"b{r}x{time.time_ns()}"
        with Measured(state["worker"].pid) as m:
            out = loadgen(args, "batches", "--url", server.url, "--token", state["service"], "--prefix", "acct-",
                          "--accounts", str(args.accounts), "--batches", str(args.batches), "--events", "10000",
                          "--concurrency", "2", "--run-id", run_id)
        if out["debited"] != args.batches * 10000:
            raise SystemExit(f"batches debited {out['debited']} of {args.batches * 10000} events: {out}")
        ours.append(with_usage(out, m, "events_per_s"))
        log(f"batches round {r + 1}: {out['events_per_s']:.0f} events/s, worker CPU {m.server_cpu:.1f} s")
    # The reference: every entry of the benchmark's accounts (their funding and every batch's debits), written out
    # in chain order and COPYed into the same table of a freshly migrated database, its triggers included.
    entries = os.path.join(state["workdir"], "entries.copy")
    accounts = os.path.join(state["workdir"], "accounts.copy")
    source = f"{args.pg_url}/{state['db']}"
    copy_out(source, "SELECT * FROM accounts WHERE id LIKE 'acct-%'", accounts)
    copy_out(source, "SELECT * FROM ledger_entries WHERE account_id LIKE 'acct-%' ORDER BY account_id, sequence",
             entries)
    with open(entries) as f:
        rows = sum(1 for _ in f)
    theirs, bare = [], []
    for r in range(args.repeat):
        db = "creditflow_bench_copy"
        recreate_db(args.pg_url, db)
        subprocess.run([args.creditflow, "migrate"], check=True, capture_output=True,
                       env={**os.environ, **AUTH, "DATABASE_URL": f"{args.pg_url}/{db}"})
        copy_in(f"{args.pg_url}/{db}", "accounts", accounts)
        # What one row per event costs at the least: the same columns with no index, constraint or trigger.
        psql(args.pg_url, "CREATE TABLE ledger_entries_bare (LIKE ledger_entries)", db)
        for table, into in (("ledger_entries", theirs), ("ledger_entries_bare", bare)):
            psql(args.pg_url, "CHECKPOINT")
            start = time.perf_counter()
            with Measured() as m:
                copy_in(f"{args.pg_url}/{db}", table, entries)
            seconds = time.perf_counter() - start
            into.append({"per_s": rows / seconds, "client_cpu": m.client_cpu, "machine_cpu": m.machine_cpu})
            log(f"COPY round {r + 1} into {table}: {rows} rows in {seconds:.2f} s, {rows / seconds:.0f} rows/s")
    return {"ours": ours, "reference": theirs, "bare": bare}


def copy_out(url, query, path):
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", f"\\copy ({query}) TO '{path}'"],
                   check=True, capture_output=True)


def copy_in(url, table, path):
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", f"\\copy {table} FROM '{path}'"],
                   check=True, capture_output=True)


def median_of(results, key):
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=0):
    return "-" if value is None else f"{value:,.{digits}f}"


def verdict(ok):
    return "met" if ok else "MISSED"


def report(args, results):
    """Prints the markdown table of medians, ratios and targets; returns the lines of targets."""
    print(f"\n{args.clients} clients, {args.duration:g} s measured after {args.warmup:g} s warm-up (webhook intake: "
          f"{args.webhook_duration:g} s after 1 s), median of {args.repeat} alternating rounds. CPU: seconds over each "
          f"client's whole run, warm-up included (machine = both cores, everything running: PostgreSQL, Redis, the "
          f"worker, the client); RSS = the server's peak resident memory.\n")
    print("| case | engine | per s | p50 ms | p99 ms | vs reference | client CPU | server CPU | machine CPU | "
          "server peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    targets = []
    names = {"reconcile": ("reconcile, many accounts", "pgbench tpcb-like scale %d" % args.scale),
             "hot": ("reconcile, one hot account", "pgbench tpcb-like scale 1"),
             "sqlite": ("reconcile, embedded SQLite", None),
             "webhook": ("Stripe webhook intake", "single-row INSERT commit"),
             "batches": ("usage batches (events)", "COPY of the same rows")}
    for case, result in results.items():
        label, reference = names[case]
        ours, theirs = result["ours"], result.get("reference") or []
        per_s = median_of(ours, "per_s")
        ref_per_s = median_of(theirs, "per_s") if theirs else None
        ratio = per_s / ref_per_s if ref_per_s else None
        if case == "sqlite" and "reconcile" in results:
            ratio = per_s / median_of(results["reconcile"]["ours"], "per_s")
        print(f"| {label} | creditflow | {fmt(per_s)} | {fmt(median_of(ours, 'p50_ms'), 2)} | "
              f"{fmt(median_of(ours, 'p99_ms'), 2)} | {fmt(ratio, 2)}x | {fmt(median_of(ours, 'client_cpu'), 1)} | "
              f"{fmt(median_of(ours, 'server_cpu'), 1)} | {fmt(median_of(ours, 'machine_cpu'), 1)} | "
              f"{fmt(max((r['server_rss'] or 0) for r in ours))} |")
        if theirs:
            print(f"| {label} | {reference} | {fmt(ref_per_s)} | {fmt(median_of(theirs, 'p50_ms'), 2)} | "
                  f"{fmt(median_of(theirs, 'p99_ms'), 2)} | 1.00x | {fmt(median_of(theirs, 'client_cpu'), 1)} | - | "
                  f"{fmt(median_of(theirs, 'machine_cpu'), 1)} | - |")
        bare = result.get("bare") or []
        if bare:
            print(f"| {label} | COPY of the same rows into the bare columns (no index, constraint or trigger) | "
                  f"{fmt(median_of(bare, 'per_s'))} | - | - | {fmt(median_of(bare, 'per_s') / ref_per_s, 2)}x | "
                  f"{fmt(median_of(bare, 'client_cpu'), 1)} | - | {fmt(median_of(bare, 'machine_cpu'), 1)} | - |")
        p99 = median_of(ours, "p99_ms")
        if case == "reconcile":
            targets.append(f"reconcile, many accounts: {ratio:.2f}x pgbench (target >= 0.8x, "
                           f"{verdict(ratio >= 0.8)}); p99 {p99:.1f} ms (target < 20 ms, {verdict(p99 < 20)})")
        elif case == "hot":
            targets.append(f"reconcile, hot account: {ratio:.2f}x pgbench scale 1 (target >= 1.0x, "
                           f"{verdict(ratio >= 1.0)})")
        elif case == "sqlite" and ratio is not None:
            targets.append(f"embedded SQLite reconcile: {ratio:.2f}x the PostgreSQL figure (no target)")
        elif case == "webhook":
            ref_p99 = median_of(theirs, "p99_ms")
            credited = result["credited"]
            targets.append(f"webhook intake p99 {p99:.2f} ms = {p99 / ref_p99:.1f}x the single-row INSERT's "
                           f"{ref_p99:.2f} ms (target <= 3x, {verdict(p99 <= 3 * ref_p99)})")
            targets.append(f"webhook -> credited at {args.webhook_rate:g}/s: p50 {credited['p50_ms']:.0f} ms, p99 "
                           f"{credited['p99_ms']:.0f} ms over {credited['count']} payments (target < 200 ms, "
                           f"{verdict(credited['p99_ms'] < 200)})")
        elif case == "batches":
            targets.append(f"usage batches: {per_s:,.0f} events/s = {ratio:.2f}x COPY (targets >= 0.5x, "
                           f"{verdict(ratio >= 0.5)}; >= 100,000 events/s, {verdict(per_s >= 100_000)}); COPY writes "
                           f"{ref_per_s:,.0f} rows/s into ledger_entries, "
                           f"{median_of(result.get('bare') or theirs, 'per_s'):,.0f} into its bare columns")
    print()
    for line in targets:
        print(f"- {line}")
    return targets


def run(args, cases):
    unknown = set(cases) - {"reconcile", "hot", "sqlite", "webhook", "batches"}
    if unknown:
        raise SystemExit(f"unknown case(s): {', '.join(sorted(unknown))}")
    workdir = tempfile.mkdtemp(prefix="creditflow-bench-api-")
    logdir = os.path.join(workdir, "pgbench-log")
    os.mkdir(logdir)
    namespace = f"creditflow-bench-{os.getpid()}"
    db = "creditflow_bench"
    log(f"working in {workdir}; database {db}; queue namespace {namespace}")
    recreate_db(args.pg_url, db)
    database_url = f"{args.pg_url}/{db}"
    queue = {"CREDITFLOW_QUEUE_URL": args.redis_url, "CREDITFLOW_QUEUE_NAMESPACE": namespace,
             "CREDITFLOW_REDIS_URL": args.redis_url}
    api = Creditflow(args, "api", database_url, workdir, queue)
    worker = None
    state = {"workdir": workdir, "logdir": logdir, "db": db, "api": api, "database_url": database_url, "queue": queue}
    results = {}
    try:
        worker = Creditflow(args, "worker", database_url, workdir, queue)
        state["worker"] = worker
        state["admin"] = token(args, ["admin"], "bench-admin")
        state["service"] = token(args, ["service"], "bench-service")
        log(f"funding {args.accounts} accounts and the hot one")
        loadgen(args, "fund", "--url", api.url, "--token", state["admin"], "--prefix", "acct-", "--accounts",
                str(args.accounts))
        loadgen(args, "fund", "--url", api.url, "--token", state["admin"], "--prefix", "hot-", "--accounts", "1")
        for case in ["reconcile", "hot", "sqlite", "webhook", "batches"]:
            if case not in cases:
                continue
            log(f"case {case}")
            if case in ("reconcile", "hot"):
                results[case] = case_reconcile(args, state, hot=case == "hot")
            elif case == "sqlite":
                results[case] = case_sqlite(args, state)
            elif case == "webhook":
                results[case] = case_webhook(args, state)
            else:
                results[case] = case_batches(args, state)
        balances = psql(args.pg_url, "SELECT (SELECT COALESCE(SUM(balance_millicredits), 0) FROM accounts) = "
                                     "(SELECT COALESCE(SUM(amount_millicredits), 0) FROM ledger_entries)", db)
        if balances != "t":
            raise SystemExit("after the benchmark the balances do not equal the sum of the entries")
        log("balances equal the sum of the entries")
    finally:
        for process in (state.get("worker"), api):
            if process is not None and process.process.poll() is None:
                process.stop()
        subprocess.run(["sh", "-c", f"redis-cli -u {args.redis_url} --scan --pattern '{namespace}:*' | "
                                    f"xargs -r redis-cli -u {args.redis_url} del"], capture_output=True, check=False)
    report(args, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()}, "results": results}, f, indent=2)
    if args.keep_workdir:
        log(f"kept {workdir} (server logs, pgbench logs)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="reconcile,hot,sqlite,webhook,batches")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=16)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--webhook-rate", type=float, default=100.0)
    parser.add_argument("--webhook-worker", choices=["stopped", "running"], default="stopped",
                        help="during the intake rounds, the worker is stopped (the intake path alone, the default) or "
                             "running (crediting the rounds' payments meanwhile, on the same two cores)")
    parser.add_argument("--webhook-duration", type=float, default=5.0,
                        help="seconds measured per intake round (every event becomes a payment the worker credits)")
    parser.add_argument("--pg-url", default=os.environ.get("CREDITFLOW_BENCH_POSTGRES_URL",
                                                          "postgres://postgres@127.0.0.1:5432"))
    parser.add_argument("--redis-url", default=os.environ.get("CREDITFLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379"))
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--json", help="also write every round's figures to this file")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the servers' logs")
    args = parser.parse_args()
    args.creditflow = os.path.join(args.bin_dir, "creditflow")
    args.loadgen = os.path.join(args.bin_dir, "creditflow-loadgen")
    cases = args.only.split(",")
    raise SystemExit(run(args, cases))


if __name__ == "__main__":
    main()
