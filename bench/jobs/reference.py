#!/usr/bin/env python3
"""No-op jobs through Dramatiq or RQ on Redis, the references creditflow's job queue is timed against.

Does what `workers/examples/queue_bench.rs` does for creditflow: push `--jobs` no-op jobs one at a time while
workers run `--concurrency` jobs at once (`--mode concurrent`, the default; `--mode backlog` pushes every job before
the workers start) until every job is done, timed from the first push to the last acknowledgement, and print one
JSON object on a line: `{"engine", "mode", "jobs", "concurrency", "seconds", "jobs_per_s", "enqueue_seconds", "ran",
"repeated", "acked", "setup", "version", "peak_rss_kib"}`.

The job marks that it ran with one Redis command, `SETBIT` at its index on a bitmap (and `INCR` of a counter if the
bit was already set), exactly as the creditflow job does, so `ran` (the bitmap's population) and `repeated` prove
each job ran exactly once. `acked` is what the engine itself reports as finished.

How each engine is run:
- Dramatiq: `RedisBroker` with its default middleware (retries, time limit...), workers started in-process with the
  `dramatiq.Worker` class: P processes x T threads, P*T = concurrency (`--dramatiq-processes`, default one per CPU
  when that divides the concurrency, as the `dramatiq` command starts one process per CPU). The clock stops when
  `broker.join` finds no message left unacknowledged.
- RQ: `--concurrency` worker processes, by default `SimpleWorker` (runs jobs in its own process) rather than RQ's
  default forking `Worker` (forks a child per job, several times slower; `--rq-worker fork`): the benchmark compares
  against the faster of the two. The clock stops when RQ's finished-job registry holds every job (checked every
  10 ms); the workers are then stopped. Per-job log lines are turned off (WARNING), as creditflow's run has none.

Worker processes are forked from this one (before the pushes, or after them in `backlog` mode); each reports its
peak RSS, and `peak_rss_kib` lists them with this process's own (a process's peak counts pages it shares with
others, so their sum is an upper bound on the memory in use at once). Every key lives under `--namespace` and is
deleted before and after the run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import time

import redis

# RQ's workers import this file as a module; leave no __pycache__ beside it in the repository.
sys.dont_write_bytecode = True
QUEUE = "noop"
# How RQ's workers import the job: this file's directory is first on their `sys.path`, as it is on this process's.
JOB_PATH = "reference.noop"
REDIS_URL_VARIABLE = "CREDITFLOW_BENCH_REDIS_URL"
NAMESPACE_VARIABLE = "CREDITFLOW_BENCH_NAMESPACE"
# Per-process Redis client of the job, made on first use after a fork: (pid, client, ran key, repeated key).
_job_state = None


def noop(index: int) -> None:
    """The benchmark's job: nothing to do but say that it ran. Reads where to say it from the environment, because
    RQ imports this module afresh in its workers (it refuses functions of `__main__`)."""
    global _job_state
    if _job_state is None or _job_state[0] != os.getpid():
        namespace = os.environ[NAMESPACE_VARIABLE]
        client = redis.Redis.from_url(os.environ[REDIS_URL_VARIABLE])
        _job_state = (os.getpid(), client, f"{namespace}:ran", f"{namespace}:repeated")
    _, client, ran_key, repeated_key = _job_state
    if client.setbit(ran_key, index, 1):
        client.incr(repeated_key)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["dramatiq", "rq"], required=True)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=8, help="jobs run at once in all (default 8)")
    parser.add_argument("--mode", choices=["concurrent", "backlog"], default="concurrent",
                        help="push while the workers run (default), or push everything before they start")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    parser.add_argument("--namespace", help="key prefix (default creditflow-bench-jobs:ENGINE)")
    parser.add_argument("--dramatiq-processes", type=int, help="Dramatiq worker processes (default: see above)")
    parser.add_argument("--rq-worker", choices=["simple", "fork"], default="simple")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.concurrency < 1:
        parser.error("--jobs and --concurrency must be positive")
    args.namespace = args.namespace or f"creditflow-bench-jobs:{args.engine}"
    if not args.namespace or not all(c.isascii() and (c.isalnum() or c in "-_.:") for c in args.namespace):
        parser.error("--namespace must be letters, digits, '-', '_', '.' or ':'")
    if args.engine == "dramatiq":
        cpus = os.cpu_count() or 1
        processes = args.dramatiq_processes or (cpus if args.concurrency % cpus == 0 else 1)
        if processes < 1 or args.concurrency % processes:
            parser.error("--dramatiq-processes must divide --concurrency")
        args.dramatiq_processes = processes
    return args


def clear(client: redis.Redis, namespace: str) -> None:
    """Deletes every key under `namespace`."""
    batch = []
    for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        batch.append(key)
        if len(batch) == 1000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


def own_peak_rss_kib(children: bool = False) -> int:
    """This process's peak RSS; with `children`, that of a child it forked and waited for if larger (the job
    processes of RQ's forking worker)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) if children else peak


def start(processes) -> None:
    for process in processes:
        process.start()


def collect(processes, peaks, deadline: float) -> list[int]:
    """Waits for the worker processes until `deadline` and returns their peak RSS; raises if one failed."""
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    failed = [process for process in processes if process.exitcode != 0]
    for process in failed:
        if process.exitcode is None:
            process.terminate()
            process.join()
    if failed:
        raise RuntimeError(f"{len(failed)} worker process(es) failed or timed out")
    return [peaks.get() for _ in processes]


def dramatiq_worker(redis_url: str, namespace: str, threads: int, stop, peaks) -> None:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    # A broker of its own per process, as separately started Dramatiq processes have (each has its own id in Redis).
    broker = RedisBroker(url=redis_url, namespace=namespace)
    dramatiq.set_broker(broker)
    dramatiq.actor(noop, broker=broker, queue_name=QUEUE)
    worker = dramatiq.Worker(broker, worker_threads=threads)
    worker.start()
    stop.wait()
    worker.stop()
    peaks.put(own_peak_rss_kib())


def run_dramatiq(args: argparse.Namespace, bound_seconds: float) -> dict:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=args.redis_url, namespace=args.namespace)
    dramatiq.set_broker(broker)
    actor = dramatiq.actor(noop, broker=broker, queue_name=QUEUE)
    processes, threads = args.dramatiq_processes, args.concurrency // args.dramatiq_processes
    context = multiprocessing.get_context("fork")
    stop, peaks = context.Event(), context.SimpleQueue()

    # Daemons: should this process fail, they end with it rather than keep it waiting.
    workers = [context.Process(target=dramatiq_worker, args=(args.redis_url, args.namespace, threads, stop, peaks),
                               daemon=True) for _ in range(processes)]
    started = time.perf_counter()
    if args.mode == "concurrent":
        start(workers)
    for index in range(args.jobs):
        actor.send(index)
    enqueue_seconds = time.perf_counter() - started
    if args.mode == "backlog":
        start(workers)
    try:
        broker.join(QUEUE, interval=10, timeout=int(bound_seconds * 1000))
        seconds = time.perf_counter() - started
        left = broker.do_qsize(QUEUE)
    finally:
        stop.set()
    worker_peaks = collect(workers, peaks, time.monotonic() + 60)
    return {
        "seconds": seconds,
        "enqueue_seconds": enqueue_seconds,
        "acked": args.jobs - left,
        "setup": f"{processes} process(es) x {threads} threads, RedisBroker, default middleware",
        "version": f"dramatiq {dramatiq.__version__}",
        "worker_peaks": worker_peaks,
    }


def rq_worker(redis_url: str, kind: str, peaks) -> None:
    from rq import Queue, SimpleWorker, Worker

    connection = redis.Redis.from_url(redis_url)
    worker_class = SimpleWorker if kind == "simple" else Worker
    # Runs until SIGTERM, which RQ takes as "finish the job in hand, then stop".
    worker_class([Queue(QUEUE, connection=connection)], connection=connection).work(logging_level="WARNING")
    peaks.put(own_peak_rss_kib(children=True))


def run_rq(args: argparse.Namespace, bound_seconds: float) -> dict:
    # RQ reads its key prefix once, when imported.
    os.environ["RQ_KEY_PREFIX"] = args.namespace
    import rq
    from rq import Queue

    connection = redis.Redis.from_url(args.redis_url)
    queue = Queue(QUEUE, connection=connection)
    context = multiprocessing.get_context("fork")
    peaks = context.SimpleQueue()

    workers = [context.Process(target=rq_worker, args=(args.redis_url, args.rq_worker, peaks), daemon=True)
               for _ in range(args.concurrency)]
    finished, failed = queue.finished_job_registry, queue.failed_job_registry
    started = time.perf_counter()
    if args.mode == "concurrent":
        start(workers)
    for index in range(args.jobs):
        queue.enqueue(JOB_PATH, index)
    enqueue_seconds = time.perf_counter() - started
    if args.mode == "backlog":
        start(workers)
    deadline = time.monotonic() + bound_seconds
    try:
        while finished.count + failed.count < args.jobs and time.monotonic() < deadline:
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        acked = finished.count
    finally:
        for worker in workers:
            if worker.pid is not None:
                worker.terminate()
    worker_peaks = collect(workers, peaks, time.monotonic() + 60)
    if failed.count:
        print(f"reference.py: RQ reports {failed.count} failed job(s)", file=sys.stderr)
    return {
        "seconds": seconds,
        "enqueue_seconds": enqueue_seconds,
        "acked": acked,
        "setup": f"{args.concurrency} {'SimpleWorker' if args.rq_worker == 'simple' else 'forking Worker'} "
                 "processes",
        "version": f"rq {rq.__version__}",
        "worker_peaks": worker_peaks,
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Read by the job in every process, including those RQ starts its job in.
    os.environ[REDIS_URL_VARIABLE] = args.redis_url
    os.environ[NAMESPACE_VARIABLE] = args.namespace
    client = redis.Redis.from_url(args.redis_url)
    clear(client, args.namespace)
    # The run must not hang if jobs go missing: a generous bound, far above any expected run.
    bound_seconds = 600 + args.jobs / 100
    try:
        measured = (run_dramatiq if args.engine == "dramatiq" else run_rq)(args, bound_seconds)
        ran = client.bitcount(f"{args.namespace}:ran")
        repeated = int(client.get(f"{args.namespace}:repeated") or 0)
    finally:
        clear(client, args.namespace)
    print(json.dumps({
        "engine": args.engine,
        "mode": args.mode,
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "seconds": measured["seconds"],
        "jobs_per_s": args.jobs / measured["seconds"],
        "enqueue_seconds": measured["enqueue_seconds"],
        "ran": ran,
        "repeated": repeated,
        "acked": measured["acked"],
        "setup": measured["setup"],
        "version": f"{measured['version']}, redis-py {redis.__version__}",
        "peak_rss_kib": {"driver": own_peak_rss_kib(), "workers": measured["worker_peaks"]},
    }))
    if ran != args.jobs or repeated or measured["acked"] != args.jobs:
        print(f"reference.py: {args.jobs} jobs pushed, {ran} ran, {repeated} ran more than once, "
              f"{measured['acked']} acknowledged", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
