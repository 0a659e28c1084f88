#!/usr/bin/env python3
"""Latency as a plain Kafka client sees it: no project code on the client side.

    python bench/latency_client.py                      # embedded broker, 3 runs
    python bench/latency_client.py --runs 1 --seconds 30 --json out.json

What it does, per run (issue 23's method):

1. capacity: fresh topics of --partitions partitions, a backlog of --backlog realistic pairs
   written first, then one `mgeo worker` (default settings) drains it; the rate comes from the
   results' record timestamps with the first 10% left out;
2. latency: fresh topics and a fresh worker; a probe request is answered first (the worker has
   joined and warmed up); then this client produces one request at a time, keyed by its id,
   with linger.ms 1, at a steady --share of that capacity for --seconds, serving its producer
   every ~2 ms between sends; a pair's latency is its result's record timestamp minus the
   moment this client called produce() (both on this machine's clock).

Each run also reports the load cut in slices of --window seconds (by send time): the latency
percentiles of the requests sent in each slice and the CPU (cores) the broker, the worker and
this client used meanwhile, with what the hypervisor took from the machine ("stolen"), read
from /proc where there is one. They show where a run goes wrong: on the embedded broker, the
cost of reading the stored requests grows with every one stored (bench/broker_cost.py).

The worker and the broker are started through the `mgeo` command line, as a user would; the
client side (producing, reading results, timing) is confluent-kafka and the standard library.
The worker's own `mgeo_end_to_end_seconds` histogram is scraped before and after the load so
the two views can be compared.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

def load_pairs(paths) -> list[tuple[str, str]]:
    """Distinct pairs, in file order: a repeated pair would be scored once by the worker (it
    deduplicates within a batch) and flatter both capacity and latency."""
    pairs = []
    for path in paths:
        with open(path, encoding="utf-8", newline="") as f:
            pairs += [(r["addr1"], r["addr2"]) for r in csv.DictReader(f)]
    pairs = list(dict.fromkeys(pairs))
    if not pairs:
        sys.exit("no pairs read from " + ", ".join(map(str, paths)))
    return pairs


def synth_pairs(mgeo: list[str], n: int, workdir: Path) -> Path:
    """`mgeo synth`: n labelled synthetic pairs whose lengths follow real traffic's (mean 36.8
    tokens, p99 67, against CCKS 2021's 36.5 and 67), made once and kept in workdir."""
    path = workdir / f"synth-{n}.csv"
    if not path.exists():
        tmp = path.with_suffix(".part.csv")
        subprocess.run([*mgeo, "synth", "--pairs", str(n), "--out", str(tmp)], check=True,
                       stdout=subprocess.DEVNULL)
        tmp.replace(path)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(rid: str, a: str, b: str) -> bytes:
    return json.dumps({"id": rid, "addr1": a, "addr2": b}, ensure_ascii=False).encode()


def percentile(values, q: float) -> float:
    v = sorted(values)
    if not v:
        return math.nan
    k = (len(v) - 1) * q
    lo = int(k)
    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (k - lo)


class Broker:
    """`mgeo broker --port 0`: its first line is the bootstrap address."""

    def __init__(self, mgeo: list[str]):
        self.proc = subprocess.Popen([*mgeo, "broker", "--port", "0"], stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.bootstrap = self.proc.stdout.readline().strip()
        if not self.bootstrap:
            sys.exit("the broker did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)

    def pids(self) -> list[int]:
        """`mgeo broker` and the broker it started (its children)."""
        return [self.proc.pid, *children(self.proc.pid)]


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def stolen_seconds() -> float | None:
    """CPU seconds the hypervisor took from this machine so far (steal in /proc/stat): on a
    shared VM they are cores the processes here waited for."""
    try:
        with open("/proc/stat") as f:
            return int(f.readline().split()[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_seconds(pids) -> float | None:
    """User + system CPU seconds of these processes so far (Linux /proc), None elsewhere."""
    if not pids:
        return None
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def create_topics(bootstrap: str, partitions: int) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    names = {"input": f"lat-{tag}-pairs", "output": f"lat-{tag}-scores",
             "dlq": f"lat-{tag}-dlq", "group": f"lat-{tag}-workers"}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(names["input"], partitions, 1),
                                   NewTopic(names["output"], partitions, 1),
                                   NewTopic(names["dlq"], 1, 1)])
    for f in futures.values():
        f.result(30)
    return names


class Worker:
    def __init__(self, mgeo: list[str], bootstrap: str, topics: dict, metrics_port: int,
                 log_path: Path):
        env = dict(os.environ, MGEO_BOOTSTRAP_SERVERS=bootstrap,
                   MGEO_INPUT_TOPIC=topics["input"], MGEO_OUTPUT_TOPIC=topics["output"],
                   MGEO_DLQ_TOPIC=topics["dlq"], MGEO_GROUP_ID=topics["group"],
                   MGEO_METRICS_PORT=str(metrics_port), MGEO_LOG_LEVEL="info")
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([*mgeo, "worker"], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
        finally:
            self.log.close()


class Results:
    """Reads the results topic from the start on a thread: each id's record timestamp (ms)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        self.consumer = Consumer({"bootstrap.servers": bootstrap,
                                  "group.id": f"client-{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                              for p in range(partitions)])
        self.stamps: dict[str, int] = {}
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            msgs = self.consumer.consume(1000, 0.2)
            fresh = [m for m in msgs if m.error() is None]
            if not fresh:
                continue
            with self.cond:
                for m in fresh:
                    rid = json.loads(m.value())["id"]
                    self.stamps.setdefault(rid, m.timestamp()[1])
                self.cond.notify_all()

    def wait_for(self, ids, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(i in self.stamps for i in ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def wait_count(self, n: int, idle_timeout: float) -> int:
        """Until n answers, or idle_timeout seconds without a new one."""
        with self.cond:
            while len(self.stamps) < n:
                before = len(self.stamps)
                self.cond.wait(idle_timeout)
                if len(self.stamps) == before:
                    break
            return len(self.stamps)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.consumer.close()


def steady_rate(stamps_ms, warmup: float = 0.1) -> float:
    """Answers a second after the first `warmup` share: only those answered after that moment
    count (a batch's answers share one millisecond). NaN when fewer than half are left."""
    ts = sorted(stamps_ms)
    start = ts[int(len(ts) * warmup)]
    after = sum(1 for t in ts if t > start)
    span = (ts[-1] - start) / 1000
    return after / span if span > 0 and after >= len(ts) // 2 else math.nan


def windows(sent: dict[str, float], stamps: dict[str, float], rate: float, marks) -> list:
    """The load cut at `marks` (seconds into it, by send time): for each slice, the
    latency percentiles of the requests sent in it and the CPU (cores) each process used."""
    rows = []
    ids = list(sent)  # in send order; request i was due at i / rate
    for (t0, c0), (t1, c1) in zip(marks, marks[1:]):
        part = ids[round(t0 * rate):round(t1 * rate)]
        w = [(stamps[r] - sent[r]) / 1000 for r in part if r in stamps]
        span = max(t1 - t0, 1e-9)
        rows.append({"from_s": round(t0, 1), "to_s": round(t1, 1), "answered": len(w),
                     "p50": round(percentile(w, 0.5) * 1000, 1),
                     "p99": round(percentile(w, 0.99) * 1000, 1),
                     "cores": {k: None if c0[k] is None or c1[k] is None
                               else round((c1[k] - c0[k]) / span, 2) for k in c0}})
    return rows


def scrape_histogram(port: int) -> list[tuple[float, float]]:
    """Cumulative (le, count) buckets of mgeo_end_to_end_seconds from the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    buckets = []
    for line in text.splitlines():
        if line.startswith("mgeo_end_to_end_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    return sorted(buckets)


def histogram_quantile(buckets, q: float) -> float:
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return math.nan
    rank, prev_b, prev_c = q * total, 0.0, 0.0
    for b, c in buckets:
        if c >= rank:
            if math.isinf(b):
                return prev_b
            return prev_b + (b - prev_b) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0)
        prev_b, prev_c = b, c
    return prev_b


def fast_fill(bootstrap: str, topic: str, pairs, prefix: str) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i, (a, b) in enumerate(pairs):
        rid = f"{prefix}{i}"
        while True:
            try:
                p.produce(topic, key=rid.encode(), value=request(rid, a, b))
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    if p.flush(120):
        sys.exit("could not write the backlog")


def capacity(args, mgeo, bootstrap, pairs, workdir: Path) -> float:
    topics = create_topics(bootstrap, args.partitions)
    backlog = pairs[:args.backlog]
    fast_fill(bootstrap, topics["input"], backlog, "b")
    results = Results(bootstrap, topics["output"], args.partitions)
    worker = Worker(mgeo, bootstrap, topics, free_port(), workdir / "capacity-worker.log")
    try:
        got = results.wait_count(len(backlog), idle_timeout=120)
    finally:
        worker.stop()
        results.close()
    if got < len(backlog):
        sys.exit(f"capacity run: only {got} of {len(backlog)} answered "
                 f"(see {workdir / 'capacity-worker.log'})")
    rate = steady_rate(results.stamps.values())
    if math.isnan(rate):
        sys.exit(f"capacity run: {len(backlog)} pairs were answered in too few batches to time "
                 "a steady rate; give a larger --backlog")
    return rate


def latency(args, mgeo, bootstrap, pairs, rate: float, workdir: Path,
            broker_pids: list[int]) -> dict:
    topics = create_topics(bootstrap, args.partitions)
    results = Results(bootstrap, topics["output"], args.partitions)
    port = free_port()
    worker = Worker(mgeo, bootstrap, topics, port, workdir / "latency-worker.log")
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    try:
        producer.produce(topics["input"], key=b"probe", value=request("probe", *pairs[0]))
        producer.flush(30)
        if not results.wait_for(["probe"], 180):
            sys.exit(f"the probe was not answered (see {workdir / 'latency-worker.log'})")
        before = scrape_histogram(port)
        n = int(rate * args.seconds)
        order = list(range(len(pairs)))  # each pair once, in a shuffled order
        random.Random(args.seed).shuffle(order)
        if n > len(order):
            print(f"note: {n} requests but {len(pairs)} distinct pairs; some repeat", flush=True)
        sent: dict[str, float] = {}
        procs = {"broker": broker_pids, "worker": [worker.proc.pid], "client": [os.getpid()]}
        marks = []  # (seconds into the load, CPU seconds of each process so far)

        def mark(at: float) -> None:
            marks.append((at, {k: cpu_seconds(v) for k, v in procs.items()}
                          | {"stolen": stolen_seconds()}))

        start = time.monotonic()
        mark(0.0)
        for i in range(n):
            due = start + i / rate
            if i and i % max(1, round(rate * args.window)) == 0:
                mark(time.monotonic() - start)
            while True:  # serve the producer every ~2 ms until this request is due
                left = due - time.monotonic()
                if left <= 0:
                    break
                producer.poll(min(left, 0.002))
            rid = f"r{i}"
            a, b = pairs[order[i % len(order)]]
            sent[rid] = time.time() * 1000
            producer.produce(topics["input"], key=rid.encode(), value=request(rid, a, b))
        producer.flush(30)
        elapsed = time.monotonic() - start
        if len(marks) > 1 and elapsed - marks[-1][0] < args.window / 2:
            marks.pop()  # a short tail joins the slice before it
        mark(elapsed)
        results.wait_for(list(sent), 60)
        after = scrape_histogram(port)
    finally:
        code = worker.stop()
        results.close()
    waits = [(results.stamps[rid] - t) / 1000 for rid, t in sent.items() if rid in results.stamps]
    delta = [(b, a - c) for (b, a), (_, c) in zip(after, before)]
    return {"rate_pairs_per_s": round(rate, 1), "sent": len(sent),
            "windows": windows(sent, results.stamps, rate, marks),
            "offered_rate": round(len(sent) / elapsed, 1), "answered": len(waits),
            "client": {f"p{q}": round(percentile(waits, q / 100) * 1000, 1)
                       for q in (50, 90, 99)} | {"max": round(max(waits) * 1000, 1)},
            "worker_histogram": {f"p{q}": round(histogram_quantile(delta, q / 100) * 1000, 1)
                                 for q in (50, 90, 99)},
            "worker_exit_code": code}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", help="a running broker (default: start `mgeo broker`)")
    ap.add_argument("--mgeo", default=f"{sys.executable} -m mgeo.tools.cli",
                    help="how to run the mgeo command (default: this Python's)")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--backlog", type=int, default=20_000)
    ap.add_argument("--share", type=float, default=1 / 3, help="load, share of capacity")
    ap.add_argument("--rate", type=float,
                    help="skip the capacity run: load at this many pairs/s (for experiments)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", type=Path, nargs="*",
                    help="CSV files with addr1,addr2 columns (default: 60,000 distinct pairs "
                         "from `mgeo synth`, whose lengths follow real traffic's)")
    ap.add_argument("--window", type=float, default=5.0,
                    help="also report latency and each process's CPU per slice of this many "
                         "seconds of the load")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mgeo-latency-client"))
    args = ap.parse_args()
    mgeo = args.mgeo.split()
    args.workdir.mkdir(parents=True, exist_ok=True)
    pairs = load_pairs(args.pairs or [synth_pairs(mgeo, 60_000, args.workdir)])
    if len(pairs) < args.backlog:
        sys.exit(f"{len(pairs)} distinct pairs, fewer than --backlog {args.backlog}")
    broker = None if args.bootstrap else Broker(mgeo)
    bootstrap = args.bootstrap or broker.bootstrap
    runs = []
    try:
        for k in range(args.runs):
            if args.rate:  # an experiment at a given load: no capacity measured
                cap, rate, said = None, args.rate, "capacity not measured (--rate)"
            else:
                cap = capacity(args, mgeo, bootstrap, pairs, args.workdir)
                rate, said = args.share * cap, f"capacity {cap:,.0f} pairs/s"
            r = latency(args, mgeo, bootstrap, pairs, rate, args.workdir,
                        broker.pids() if broker is not None else [])
            r["capacity_pairs_per_s"] = None if cap is None else round(cap, 1)
            runs.append(r)
            c, w = r["client"], r["worker_histogram"]
            print(f"run {k + 1}: {said}; load {r['rate_pairs_per_s']:,.0f}/s"
                  f" ({r['answered']}/{r['sent']} answered); client p50 {c['p50']:.0f} ms, "
                  f"p90 {c['p90']:.0f}, p99 {c['p99']:.0f}, max {c['max']:.0f}; worker "
                  f"histogram p50 {w['p50']:.0f}, p90 {w['p90']:.0f}, p99 {w['p99']:.0f}",
                  flush=True)
            for row in r["windows"]:
                cores = ", ".join(f"{k} {v:.2f}" for k, v in row["cores"].items()
                                  if v is not None)
                print(f"  {row['from_s']:5.1f}-{row['to_s']:5.1f} s: p50 {row['p50']:6.0f} ms,"
                      f" p99 {row['p99']:6.0f}; cores: {cores}", flush=True)
    finally:
        if broker is not None:
            broker.stop()
    if args.json:
        args.json.write_text(json.dumps({"partitions": args.partitions, "backlog": args.backlog,
                                         "share": args.share, "seconds": args.seconds,
                                         "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
