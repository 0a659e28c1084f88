"""`mgeo demo`: the whole pipeline on one machine, started and cleaned up by one command.

Embedded broker -> topics -> a real `mgeo worker` process -> `publish_pairs` of the bundled sample
-> `Collector` -> a CSV and a summary. Whatever it started is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from mgeo.kafka import create_topics
from mgeo.tools.broker import BrokerError, EmbeddedBroker
from mgeo.readers import InputError, PairReader
from mgeo.settings import DemoSettings
from mgeo.producer.collect import Collector
from mgeo.producer.publish import Publisher
from mgeo.writers import check_output, write_results

TOPICS = {"input": "address-pairs", "output": "address-scores", "dlq": "address-pairs.dlq"}


def sample_path() -> Path:
    return Path(str(importlib.resources.files("mgeo.tools") / "data" / "sample_pairs.csv"))


def _say(step: str) -> None:
    print(step, flush=True)


def _wait_for_line(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until the worker's log holds `text` (it logs its partition assignment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(encoding="utf-8", errors="replace"):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)  # a log file offers no event to wait on
    return False


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run(s: DemoSettings) -> int:
    source = s.input or sample_path()
    try:
        with PairReader(source, s.format, s.encoding, s.columns, s.id_from_row) as reader:
            rows = list(reader)
        check_output(s.out, refuse=[source])
    except InputError as exc:
        print(f"mgeo demo: {exc}", file=sys.stderr)
        return 2
    pairs = [r.obj for r in rows if r.obj is not None]
    if not pairs:
        print(f"mgeo demo: no pairs in {source}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="mgeo-demo-"))
    worker_log = workdir / "worker.log"
    worker: subprocess.Popen | None = None
    started = time.monotonic()
    try:
        with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
            _say(f"[1/5] broker (Tansu, in memory) at {broker.bootstrap}")
            conf = {"bootstrap.servers": broker.bootstrap}
            create_topics(conf, {TOPICS["input"]: s.partitions, TOPICS["output"]: s.partitions,
                                 TOPICS["dlq"]: 1})
            env = dict(os.environ)
            env.update({
                "MGEO_BOOTSTRAP_SERVERS": broker.bootstrap, "MGEO_INPUT_TOPIC": TOPICS["input"],
                "MGEO_OUTPUT_TOPIC": TOPICS["output"], "MGEO_DLQ_TOPIC": TOPICS["dlq"],
                "MGEO_GROUP_ID": "mgeo-demo", "MGEO_DEVICE": s.device,
                "MGEO_PRECISION": s.precision, "MGEO_SESSION_TIMEOUT_MS": "6000",
                "MGEO_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1"})
            if s.model is not None:
                env["MGEO_MODEL"] = str(s.model)
            if s.label_map:
                env["MGEO_LABEL_MAP"] = ",".join(f"{k}={v}" for k, v in s.label_map.items())
            _say(f"[2/5] starting a worker (log: {worker_log})")
            with open(worker_log, "wb") as logf:
                worker = subprocess.Popen([sys.executable, "-m", "mgeo.tools.cli", "worker"],
                                          env=env, stdout=logf, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
            if not _wait_for_line(worker_log, "assigned", worker, min(s.timeout, 300)):
                tail = worker_log.read_text(encoding="utf-8", errors="replace")[-3000:]
                print(f"mgeo demo: the worker did not start:\n{tail}", file=sys.stderr)
                return 1
            model_line = next((ln for ln in worker_log.read_text("utf-8", "replace").splitlines()
                               if "loaded on" in ln), "")
            _say(f"[3/5] worker ready: {model_line.split(': ', 1)[-1]}")
            t0 = time.monotonic()
            pub = Publisher({**conf, "enable.idempotence": True, "linger.ms": 5},
                            TOPICS["input"])
            for pair in pairs:
                pub.send_pair(pair)
            report = pub.close(60)
            _say(f"[4/5] published {report.delivered} pairs from {source}")
            if not report.ok:
                print("mgeo demo: " + "; ".join(report.errors), file=sys.stderr)
            collector = Collector(conf, TOPICS["output"])
            with tqdm(total=report.sent, desc="[5/5] results", unit=" pairs",
                      disable=not sys.stderr.isatty()) as bar:
                collector.collect(report.sent, timeout=s.timeout, on_new=bar.update,
                                  deadline=started + s.timeout)
            elapsed = time.monotonic() - t0
            collector.close()
            _stop(worker)
            in_order = [collector.results[p["id"]] for p in pairs if p["id"] in collector.results]
            n = write_results(s.out, in_order, collector.labels, refuse=[source])
    except BrokerError as exc:
        print(f"mgeo demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nmgeo demo: interrupted; stopped the worker and the broker", file=sys.stderr)
        return 130
    finally:
        _stop(worker)
    score = re.search(r"score = ([^,]+)", model_line)
    _summary(pairs, collector.results, n, elapsed, s.out, score.group(1) if score else None,
             sample=s.input is None, model_dir=s.model)
    return 0 if n == len(pairs) else 1


def model_record(model_dir: Path | None) -> dict | None:
    """training_metrics.json of the model the demo runs (the bundled one by default), or None
    when that model has no such record."""
    import json

    if model_dir is None:
        model_dir = Path(str(importlib.resources.files("mgeo.worker.inference")
                             / "default_model"))
    try:
        record = json.loads((Path(model_dir) / "training_metrics.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    from mgeo.training.card import measured_elsewhere

    record["elsewhere"] = measured_elsewhere(Path(model_dir))
    return record


def _scores_lines(record: dict | None) -> list[str]:
    """What the model scored where it was measured: held-out pairs of its training data and
    the hand-written development set."""
    if not record or "metrics" not in record:
        return ["model scores       not recorded for this model (no training_metrics.json)"]
    m = record["metrics"]
    synthetic = "synth" in str(record.get("source", ""))
    held = "held-out synthetic pairs" if synthetic else "held-out pairs of its training data"
    lines = [f"model scores       {held}: macro-F1 {m['macro_f1']:.3f} ({m['n']:,} pairs)"]
    dev = record.get("dev")
    if dev:
        d = dev["metrics"]
        per = ", ".join(f"{k.split('_')[0]} {d['per_label'][k]['f1']:.2f}"
                        for k in ("exact_match", "partial_match", "not_match")
                        if k in d["per_label"])
        lines.append(f"                   hand-written realistic pairs ({dev['path']}): macro-F1 "
                     f"{d['macro_f1']:.3f} ({d['n']} pairs; F1 {per})")
    for e in record.get("elsewhere", ()):
        f1 = ", ".join(f"{k.split('_')[0]} {e['f1'][k]:.2f}" for k in e["f1"])
        lines.append(f"                   real labelled pairs ({e['short']}, measured by "
                     f"{e['by']}): macro-F1 {e['macro_f1']:.2f} ({e['n']:,} pairs; F1 {f1}): "
                     f"{e['finding']}")
    if synthetic:
        lines.append("                   trained on synthetic pairs only (`mgeo synth`); "
                     + ("for real traffic convert MGeo (`mgeo convert`) or fine-tune on your "
                        "labelled pairs (`mgeo train`)" if record.get("elsewhere") else
                        "not measured on real traffic, expect less there"))
    return lines


def _summary(pairs: list[dict], results: dict, n: int, elapsed: float, out: Path,
             score_is: str | None = None, sample: bool = False,
             model_dir: Path | None = None) -> None:
    errors = sum(1 for r in results.values() if "error" in r)
    print()
    if sample:
        print(f"sample             SYNTHETIC: {len(pairs)} pairs made by `mgeo synth` (the first "
              "3 are MGeo's published examples), not real traffic")
    print(f"pairs published    {len(pairs)}")
    print(f"results collected  {n}  ({errors} error results)")
    print(f"end to end         {elapsed:.1f} s, {n / max(elapsed, 1e-9):.0f} pairs/s "
          "(publish to last result, one CPU worker)")
    truth = {p["id"]: _label(p) for p in pairs}
    judged = [(truth[i], r.get("label")) for i, r in results.items() if truth.get(i)]
    if judged:
        agree = sum(a == b for a, b in judged) / len(judged)
        per = {}
        for want, got in judged:
            hit, total = per.get(want, (0, 0))
            per[want] = (hit + (want == got), total + 1)
        print(f"label agreement    {agree:.1%} with the "
              + ("synthetic sample's" if sample else "input's") + " label column ("
              + ", ".join(f"{k} {h}/{t}" for k, (h, t) in sorted(per.items())) + ")")
    for line in _scores_lines(model_record(model_dir)):
        print(line)
    shown = _examples(pairs)
    if shown:
        print("examples" + (f"           score = {score_is}" if score_is else ""))
        print(f"  {'sample label':<14} {'model label':<14} {'score':>5}  addr1  |  addr2")
    for p in shown:
        r = results.get(p["id"], {})
        if "error" in r:
            verdict = f"{'error':<14} {r['error']['code']}"
        else:
            verdict = f"{r.get('label', '?'):<14} {r.get('score', float('nan')):>5.3f}"
        print(f"  {_label(p) or '-':<14} {verdict}  {_oneline(p['addr1'])}  |  "
              f"{_oneline(p['addr2'])}")
    print(f"results file       {out.resolve()}")


def _label(pair: dict) -> str | None:
    label = (pair.get("meta") or {}).get("label")
    return str(label) if label else None


def _oneline(text) -> str:
    return " ".join(str(text).split())


def _examples(pairs: list[dict], limit: int = 6) -> list[dict]:
    """Rows a reader can judge: the reference pairs (ids ref-*), then one pair of each label.

    Without a label column, simply the first rows."""
    if not any(_label(p) for p in pairs):
        return pairs[:limit]
    shown = [p for p in pairs if str(p["id"]).startswith("ref-")][:limit]
    for label in ("exact_match", "partial_match", "not_match"):
        pick = next((p for p in pairs if _label(p) == label and p not in shown), None)
        if pick is not None and len(shown) < limit:
            shown.append(pick)
    return shown
