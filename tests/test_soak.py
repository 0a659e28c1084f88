"""A smoke run of bench/soak.py: the soak itself (300,000 pairs) is a script, not a test.

A tiny model and small batches, so that the broker stall and the worker freeze land while the
worker still has most of its 2,000 pairs to answer.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _load_soak():
    spec = importlib.util.spec_from_file_location("mgeo_bench_soak", ROOT / "bench" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_soak_smoke_run(tiny_model, tmp_path):
    soak = _load_soak()
    out = tmp_path / "soak.json"
    rc = soak.main(["--pairs", "2000", "--distinct", "200", "--broker-stall", "7",
                    "--worker-freeze", "7", "--model", str(tiny_model),
                    "--set", "max_batch_pairs=4", "--set", "consume_batch=4",
                    "--max-inflight", "200", "--plot", str(tmp_path / "rss.png"),
                    "--json", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0, report["checks"]
    assert report["missing"] == 0 and report["exit_code"] == 0
    assert [f["kind"] for f in report["faults"]] == ["broker SIGSTOP", "worker SIGSTOP"]
    # The faults took the partitions away, and the worker read them again.
    assert report["worker_log"]["lost"] >= 1 and report["worker_log"]["assigned"] >= 2
    assert report["worker_log"]["tracebacks"] == 0
    assert report["rss_mb"]["peak"] >= report["rss_mb"]["end"] > 0
    assert (tmp_path / "rss.png").stat().st_size > 0
