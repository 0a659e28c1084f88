"""Soak: one worker, many pairs, a frozen broker and a frozen worker on the way; nothing lost.

    python bench/soak.py            # 300,000 pairs, a 30 s broker stall, a 15 s worker freeze

A smoke run (tests/test_soak.py runs one with a tiny model; small batches keep the worker busy
long enough for the faults to land in the middle of the work):

    python bench/soak.py --pairs 2000 --broker-stall 7 --worker-freeze 7 --set max_batch_pairs=8

What it does, on this machine:
1. starts the embedded broker (Tansu) and pre-fills an input topic with --pairs requests (the
   texts of --distinct generated pairs with real traffic's lengths, reused under new ids; the
   worker's cache is off, so every one runs the model);
2. starts one `mgeo worker` (the bundled default model unless --model, CPU unless --device),
   which reads the backlog under back-pressure (--max-inflight) the whole time;
3. once a third of the answers are in, freezes the broker (SIGSTOP) for --broker-stall seconds,
   longer than the worker's session (6 s): the worker loses its partitions and must read them
   again when the broker is back; once two thirds are in, freezes the worker itself for
   --worker-freeze seconds, with the same effect from the other side;
4. waits for an answer to every id (answers are read from the results topic, read_committed),
   samples the worker's resident memory (VmRSS) every second throughout, and ends the worker
   with SIGTERM.

It checks: every id answered; exit code 0 after SIGTERM; memory flat: the resident memory once
every id is answered within --max-growth of what it was once a tenth of the answers were in
(model loaded, buffers warm). It prints the figures (and --json writes them), plots the memory over time with
the faults marked (--plot, when matplotlib is installed), and exits 1 when a check fails.
Timings depend on the machine; on a shared one, note that beside any figure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from mgeo.tools.bench import make_pairs
from mgeo.tools.broker import EmbeddedBroker
from mgeo.tools.harness import Answers, Topics, Worker, prefill

SESSION_S = 6.0  # the worker's session timeout (tools/harness.Worker): faults outlast it


class RssSampler:
    """The resident memory of a process, every `every` seconds, on a thread (Linux /proc)."""

    def __init__(self, pid: int, every: float = 1.0):
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []  # (seconds since start, bytes)
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def now(self) -> float:
        return time.monotonic() - self._start

    def _run(self) -> None:
        while not self._stop.wait(self.every):  # a sampling period, not a wait for an event
            rss = rss_bytes(self.pid)
            if rss is None:
                return
            self.samples.append((self.now(), rss))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def at(self, t: float) -> int | None:
        """The first sample taken at or after `t` seconds."""
        return next((rss for s, rss in self.samples if s >= t), None)


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def frozen(pid: int, seconds: float) -> None:
    """SIGSTOP `pid` for `seconds` (the fault's length is the point), SIGCONT whatever
    happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def soak(a: argparse.Namespace) -> dict:
    from mgeo.worker.inference.model import default_model_dir

    model = a.model or default_model_dir()
    rows, source = make_pairs(min(a.distinct, a.pairs), a.seed)
    texts = itertools.cycle([(r["addr1"], r["addr2"]) for r in rows])
    pairs = [next(texts) for _ in range(a.pairs)]
    n = len(pairs)
    report: dict = {"pairs": n, "distinct_texts": len(rows), "pair_source": source,
                    "model": str(model), "device": a.device, "partitions": a.partitions,
                    "worker_settings": {"max_inflight": a.max_inflight, **dict(a.set)},
                    "broker_stall_s": a.broker_stall,
                    "worker_freeze_s": a.worker_freeze, "faults": []}
    with EmbeddedBroker() as broker:
        topics = Topics.fresh(broker.bootstrap, a.partitions, "soak")
        started = time.monotonic()
        prefill(broker.bootstrap, topics.input, pairs, prefix="s")
        report["prefill_s"] = round(time.monotonic() - started, 1)
        settings = {"max_inflight": a.max_inflight, "cache_size": 0, **dict(a.set)}
        worker = Worker(broker.bootstrap, topics, model, device=a.device, log_path=a.log,
                        **settings)
        rss = RssSampler(worker.proc.pid).start()
        answers = Answers(broker.bootstrap, topics.output, a.partitions)
        marks: dict[str, float] = {}
        try:
            worker.wait_assigned()
            marks["assigned"] = rss.now()
            begun = time.monotonic()

            def until(share: float, what: str) -> None:
                got = answers.read(int(n * share), timeout=a.patience)
                marks[what] = rss.now()
                print(f"{rss.now():7.1f}s  {len(got):>8,} answered ({what})", flush=True)

            until(0.1, "warm")
            until(1 / 3, "broker stall")
            broker.pause()
            try:
                time.sleep(a.broker_stall)  # the fault: the broker frozen this long
            finally:
                broker.resume()
            report["faults"].append({"kind": "broker SIGSTOP", "at_s": marks["broker stall"],
                                     "seconds": a.broker_stall})
            until(2 / 3, "worker freeze")
            frozen(worker.proc.pid, a.worker_freeze)
            report["faults"].append({"kind": "worker SIGSTOP", "at_s": marks["worker freeze"],
                                     "seconds": a.worker_freeze})
            until(1.0, "all")
            report["answer_s"] = round(time.monotonic() - begun, 1)
            answers.read(n + 1, timeout=3)  # late duplicates, if any, arrive meanwhile
        finally:
            stamps = answers.stamps
            answers.close()
            report["exit_code"] = worker.stop(timeout=a.shutdown_wait)
            rss.stop()
    ids = {f"s{i}".encode() for i in range(n)}
    report["answered"] = len(ids & stamps.keys())
    report["missing"] = n - report["answered"]
    log = "\n".join(worker.lines)
    report["worker_log"] = {
        "lost": len(re.findall(r"lost \d+ partitions", log)),
        "assigned": len(re.findall(r"assigned [1-9]\d* partitions", log)),
        "stalled": log.count("has read none of them"),
        "tracebacks": log.count("Traceback")}
    report["rss_mb"] = memory(rss, marks)
    report["rss_samples"] = [(round(t, 1), round(b / 2**20, 1)) for t, b in rss.samples]
    report["marks_s"] = {k: round(v, 1) for k, v in marks.items()}
    growth = report["rss_mb"]["growth_after_warmup"]
    report["checks"] = {"every_id_answered": report["missing"] == 0,
                        "exit_0_on_sigterm": report["exit_code"] == 0,
                        "memory_flat": growth is not None and growth <= a.max_growth}
    return report


def memory(rss: RssSampler, marks: dict[str, float]) -> dict:
    """Resident memory (MiB) at the start, once warm, at its peak and at the end, the end being
    when every id was answered (before SIGTERM: a stopping worker gives memory back)."""
    end = marks.get("all", float("inf"))
    mb = [b / 2**20 for t, b in rss.samples if t <= end]
    if not mb:
        return {"start": None, "warm": None, "peak": None, "end": None,
                "growth_after_warmup": None}
    warm = rss.at(marks.get("warm", 0.0))
    warm_mb = warm / 2**20 if warm else mb[0]
    return {"start": round(mb[0], 1), "warm": round(warm_mb, 1), "peak": round(max(mb), 1),
            "end": round(mb[-1], 1), "growth_after_warmup": round(mb[-1] / warm_mb - 1, 3)}


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t, mb = zip(*report["rss_samples"])
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot(t, mb, lw=1.2, color="tab:blue", label="worker RSS")
    for fault, color in zip(report["faults"], ("tab:red", "tab:orange")):
        ax.axvspan(fault["at_s"], fault["at_s"] + fault["seconds"], color=color, alpha=0.2,
                   label=fault["kind"])
    ax.set_xlabel("seconds since the worker started")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Soak: {report['pairs']:,} pairs, one worker ({report['device']})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip().replace("-", "_"), value.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=300_000, help="requests to answer")
    ap.add_argument("--distinct", type=int, default=10_000,
                    help="distinct generated pairs, reused under new ids")
    ap.add_argument("--broker-stall", type=float, default=30.0,
                    help="seconds the broker is frozen (SIGSTOP), once a third is answered")
    ap.add_argument("--worker-freeze", type=float, default=15.0,
                    help="seconds the worker is frozen (SIGSTOP), once two thirds are answered")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--max-inflight", type=int, default=20_000,
                    help="the worker's --max-inflight (it reads the backlog paused and resumed)")
    ap.add_argument("--set", action="append", default=[], type=_setting, metavar="NAME=VALUE",
                    help="another worker setting, e.g. max_batch_pairs=8 (repeatable)")
    ap.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patience", type=float, default=300.0,
                    help="give up after this many seconds without a new answer")
    ap.add_argument("--shutdown-wait", type=float, default=120.0,
                    help="seconds the worker may take to exit after SIGTERM")
    ap.add_argument("--max-growth", type=float, default=0.25,
                    help="memory flat: end RSS at most this much above the warm RSS")
    ap.add_argument("--plot", default="bench/soak-rss.png",
                    help="where the memory plot goes ('' to skip)")
    ap.add_argument("--json", type=Path, default=None, help="write the report here")
    ap.add_argument("--log", type=Path, default=None, help="write the worker's log here")
    a = ap.parse_args(argv)
    for fault in (a.broker_stall, a.worker_freeze):
        if fault <= SESSION_S:
            ap.error(f"faults must outlast the worker's {SESSION_S:g} s session to take its "
                     "partitions away")
    report = soak(a)
    if a.plot and report["rss_samples"] and plot(report, Path(a.plot)):
        report["plot"] = a.plot
    if a.json:
        a.json.write_text(json.dumps(report, indent=2) + "\n")
    m = report["rss_mb"]
    print(f"pairs {report['pairs']:,}: answered {report['answered']:,}, missing "
          f"{report['missing']:,}, in {report.get('answer_s', '?')} s after the worker joined")
    faults = ", ".join(f"{f['kind']} {f['seconds']:g} s" for f in report["faults"])
    print(f"faults: {faults}; worker log: {report['worker_log']}")
    print(f"worker RSS MiB: start {m['start']}, warm {m['warm']}, peak {m['peak']}, end "
          f"{m['end']} (growth after warm-up {m['growth_after_warmup']})")
    print(f"exit code after SIGTERM: {report['exit_code']}")
    failed = [name for name, ok in report["checks"].items() if not ok]
    print("checks: " + ("all passed" if not failed else "FAILED " + ", ".join(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
