#!/usr/bin/env python3
"""What the embedded broker costs under the latency client's load, with no worker at all.

    python bench/broker_cost.py                      # 400 requests/s for 30 s, three setups
    python bench/broker_cost.py --rate 400 --seconds 30 --fetch-waits 50 200 --json out.json

A plain confluent-kafka producer sends what `bench/latency_client.py` sends (one request at a
time, keyed, `linger.ms` 1, served every ~2 ms) to a fresh topic of --partitions partitions of
a fresh `mgeo broker`; in each setup either nobody reads it (the control) or one plain consumer
reads it as a worker would (a consumer group, `fetch.wait.max.ms` as given). Every --window
seconds it prints the broker's CPU (cores, from /proc) and, from the consumer's librdkafka
statistics, the fetch requests it sent and their mean round trip. No project code runs but the
`mgeo broker` command that starts the broker.

Why: at a third of capacity the client's single-request batches are stored one by one, and the
embedded broker's cost of serving them to a reader grows with what the topic already holds
(see bench/RESULTS.md, 2026-12-08). This shows that growth without the model beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from latency_client import Broker, cpu_seconds  # beside this file: run as a script

VALUE = json.dumps({"addr1": "浙江省杭州市余杭区文一西路969号阿里巴巴西溪园区",
                    "addr2": "杭州市余杭区五常街道文一西路969号"}, ensure_ascii=False)


class Reader:
    """One consumer-group member reading the topic on a thread; keeps its fetch statistics."""

    def __init__(self, bootstrap: str, topic: str, fetch_wait_ms: int):
        self.fetches = 0
        self.rtt_ms = float("nan")
        self.read = 0
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"cost-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest", "fetch.wait.max.ms": fetch_wait_ms,
            "session.timeout.ms": 6000, "statistics.interval.ms": 1000,
            "stats_cb": self._stats})
        self.assigned = threading.Event()
        self.consumer.subscribe([topic], on_assign=lambda c, parts: self.assigned.set())
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _stats(self, raw: str) -> None:
        for b in json.loads(raw)["brokers"].values():
            if b["nodeid"] >= 0:
                self.fetches = b["req"].get("Fetch", 0)
                self.rtt_ms = b["rtt"]["avg"] / 1000

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.read += len(self.consumer.consume(1000, 0.2))
        self.consumer.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def setup(mgeo: list[str], args, fetch_wait_ms: int | None) -> list[dict]:
    broker = Broker(mgeo)
    try:
        topic = f"cost-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for f in admin.create_topics([NewTopic(topic, args.partitions, 1)]).values():
            f.result(30)
        reader = None if fetch_wait_ms is None else Reader(broker.bootstrap, topic,
                                                           fetch_wait_ms)
        if reader and not reader.assigned.wait(60):  # the load starts once it reads
            sys.exit("the reader was not given the topic's partitions within 60 s")
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 1})
        rows: list[dict] = []
        start = time.monotonic()
        last = {"t": 0.0, "cpu": cpu_seconds(broker.pids()), "fetches": 0}

        def row(now: float, sent: int) -> None:
            cpu, fetches = cpu_seconds(broker.pids()), reader.fetches if reader else 0
            span = now - last["t"]
            rows.append({"to_s": round(now, 1), "sent": sent,
                         "read": reader.read if reader else None,
                         "broker_cores": round((cpu - last["cpu"]) / span, 2),
                         "fetches_per_s": round((fetches - last["fetches"]) / span)
                         if reader else None,
                         "fetch_rtt_ms": round(reader.rtt_ms, 1) if reader else None})
            last.update(t=now, cpu=cpu, fetches=fetches)

        n = int(args.rate * args.seconds)
        for i in range(n):
            due = start + i / args.rate
            while (left := due - time.monotonic()) > 0:
                producer.poll(min(left, 0.002))
            producer.produce(topic, key=f"r{i}".encode(), value=VALUE.encode())
            if time.monotonic() - start - last["t"] >= args.window:
                row(time.monotonic() - start, i + 1)
        producer.flush(30)
        if time.monotonic() - start - last["t"] >= args.window / 2:
            row(time.monotonic() - start, n)
        if reader:
            reader.close()
        return rows
    finally:
        broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mgeo", default=f"{sys.executable} -m mgeo.tools.cli",
                    help="how to run the mgeo command (default: this Python's)")
    ap.add_argument("--rate", type=float, default=400.0, help="requests a second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--fetch-waits", type=int, nargs="*", default=[50, 200],
                    help="fetch.wait.max.ms of the reader, one setup each (after a setup "
                         "with no reader)")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args = ap.parse_args()
    mgeo = args.mgeo.split()
    out = {}
    for wait in [None, *args.fetch_waits]:
        name = "no reader" if wait is None else f"reader, fetch.wait.max.ms {wait}"
        print(f"{name}: {args.rate:.0f} requests/s for {args.seconds:.0f} s", flush=True)
        out[name] = rows = setup(mgeo, args, wait)
        for r in rows:
            extra = "" if r["read"] is None else (
                f", read {r['read']:6d}, {r['fetches_per_s']:3d} fetches/s, "
                f"round trip {r['fetch_rtt_ms']:5.1f} ms")
            print(f"  to {r['to_s']:5.1f} s: stored {r['sent']:6d}, broker "
                  f"{r['broker_cores']:.2f} cores{extra}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(vars(args) | {"json": str(args.json), "setups": out},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
