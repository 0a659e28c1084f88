"""bench/gpu-run's parts on a CPU: the script parses, and the report it writes renders the real
JSON of each benchmark (tiny sizes here; the GPU sizes only change numbers)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mgeo.tools.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _report_module():
    spec = importlib.util.spec_from_file_location("gpu_report", ROOT / "bench" / "gpu_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu-run")], check=True)
    subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu-wheels")], check=True)


def _bench_json(capsys, *args: str) -> dict:
    assert main(["bench", "--json", "--plot", "", "--device", "cpu", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.broker
@pytest.mark.slow
def test_the_report_renders_every_step(tiny_model, tmp_path, capsys):
    steps = {
        "versions": {"device": "cpu", "device_name": "test", "cpu": "test", "cores": 2,
                     "python": sys.version.split()[0], "torch": "x", "cuda": None,
                     "transformers": "x", "tokenizers": "x", "librdkafka": "x"},
        "engine": _bench_json(capsys, "--model", str(tiny_model), "--pairs", "64",
                              "--batch-layout", "padded"),
        "packed": _bench_json(capsys, "--model", str(tiny_model), "--pairs", "64",
                              "--batch-layout", "packed"),
        "host": _bench_json(capsys, "--host-path", "--model", str(tiny_model), "--pairs", "2000",
                            "--processes-list", "1"),
        "latency": _bench_json(capsys, "--latency", "--model", str(tiny_model),
                               "--e2e-pairs", "600", "--phase-seconds", "1.5"),
        "e2e": {"error": "exit code 124 after 110 s (timeout 110 s)"},  # a step that failed
    }
    for name, data in steps.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    assert _report_module().main(tmp_path) == 0
    md = (tmp_path / "results.md").read_text()
    assert "## 1. Engine vs the common loop" in md and "model only" in md
    assert "| engine, --batch-layout packed (packed, max score diff" in md
    assert "| worker, 1 process(es), 2000 pairs |" in md
    assert "## 3. One worker end to end, BERT-base\n\nfailed: exit code 124" in md
    assert md.count("| 10% |") == 1 and "| 67% |" in md
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["host"]["workers"][0]["complete"] is True
    assert merged["latency"]["capacity_pairs_per_s"] > 0
