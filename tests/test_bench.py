"""`mgeo bench`: a fast smoke run on a tiny model, and the length-faithful pair generator."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from mgeo.tools.cli import main  # noqa: E402
from mgeo.tools.models import build_random_model  # noqa: E402

KEYS = {"device", "precision", "pairs", "baseline_pairs_per_s", "engine_pairs_per_s", "ratio",
        "max_abs_score_diff", "baseline_padding_efficiency", "engine_padding_efficiency",
        "token_budget", "pair_source", "token_length"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_random_model(tmp_path_factory.mktemp("tiny"), layers=2, hidden=64, heads=2,
                              intermediate=128)


def _bench(tiny, capsys, *extra):
    code = main(["bench", "--model", str(tiny), "--device", "cpu", "--pairs", "48", "--json",
                 *extra])
    assert code == 0
    return json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout


def test_bench_json_smoke(tiny, tmp_path, capsys):
    plot = tmp_path / "bench.png"
    report = _bench(tiny, capsys, "--plot", str(plot))
    assert KEYS <= report.keys()
    assert report["device"] == "cpu" and report["precision"] == "fp32"
    assert report["pairs"] == 48
    assert report["baseline_pairs_per_s"] > 0 and report["engine_pairs_per_s"] > 0
    assert report["max_abs_score_diff"] <= 1e-4  # same model, same precision: same scores
    assert report["label_agreement"] == 1.0
    # Sorting by length can only remove padding relative to input-order batches.
    assert report["engine_padding_efficiency"] >= report["baseline_padding_efficiency"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "profile" not in report  # only with --profile


def test_bench_int8_reports_its_accuracy_cost(tiny, capsys):
    report = _bench(tiny, capsys, "--precision", "int8", "--plot", "")
    assert report["precision"] == "int8" and report["reference_precision"] == "fp32"
    assert 0 < report["max_abs_score_diff"] < 0.05


def test_bench_bf16_on_cpu_is_measured_against_fp32(tiny, capsys, monkeypatch):
    import mgeo.worker.inference.device

    monkeypatch.setattr(mgeo.worker.inference.device, "cpu_has_native_bf16", lambda: True)
    report = _bench(tiny, capsys, "--precision", "bf16", "--plot", "")
    assert report["precision"] == "bf16" and report["reference_precision"] == "fp32"
    assert 0 < report["max_abs_score_diff"] < 0.05


def test_bench_rejects_fp16_on_cpu(tiny, capsys):
    assert main(["bench", "--model", str(tiny), "--device", "cpu", "--precision", "fp16",
                 "--pairs", "32", "--plot", ""]) == 2
    assert "cuda only" in capsys.readouterr().err


def test_bench_profile_writes_a_trace_and_says_what_limits_the_run(tiny, tmp_path, capsys):
    trace = tmp_path / "prof" / "trace.json"
    report = _bench(tiny, capsys, "--plot", "", "--profile", str(trace))
    p = report["profile"]
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert "mgeo.forward" in names and "aten::addmm" in names  # the engine's ranges, the ops
    assert p["pairs"] == 48 and p["wall_seconds"] > 0
    stages = p["stage_seconds"]
    assert stages["tokenize"] > 0 and stages["forward"] > 0  # the helper thread is counted too
    assert stages["forward"] <= p["wall_seconds"]
    ops = p["top_ops"]
    assert ops and all(op["seconds"] > 0 and op["calls"] >= 1 for op in ops)
    assert [op["seconds"] for op in ops] == sorted((op["seconds"] for op in ops), reverse=True)
    assert 0 < sum(op["share"] for op in ops) <= 1.0001
    assert p["limit"].startswith("CPU compute") and ops[0]["op"] in p["limit"]


@pytest.mark.slow
def test_bench_on_a_gpu_reports_fp16_against_fp32_and_peak_memory(tiny, capsys):
    """On a GPU (simulated here: the engine takes every GPU branch) the reference runs in
    fp16 as scripts do, and the same pairs also go through the model in fp32."""
    report = _bench(tiny, capsys, "--simulate-gpu", "--plot", "")
    assert (report["device"], report["precision"], report["reference_precision"]) == (
        "cuda", "fp16", "fp16")
    v = report["vs_fp32"]
    assert 0 < v["max_abs_score_diff"] < 1e-2 and 0.9 <= v["label_agreement"] <= 1
    assert v["label_disagreements"] == round((1 - v["label_agreement"]) * report["pairs"])
    assert report["peak_memory_bytes"] > 0
    assert report["batch_layout"] == "padded" and report["lanes"] == 1


def test_bench_in_fp32_has_nothing_to_compare_with_fp32(tiny, capsys):
    report = _bench(tiny, capsys, "--plot", "")
    assert "vs_fp32" not in report and report["peak_memory_bytes"] is None


@pytest.mark.slow
def test_memory_pressure_drill_shrinks_retries_and_regrows(tiny, capsys):
    code = main(["bench", "--memory-pressure", "--simulate-gpu", "--precision", "fp32",
                 "--model", str(tiny), "--pairs", "64", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"] and report["simulated"]
    pressed = report["pressed"]
    assert pressed["oom_retries"] >= 1 and pressed["complete"]
    assert pressed["label_agreement"] == 1.0
    assert report["oversized_budget"] == 4 * report["start_budget"]
    assert report["budget_min"] < report["start_budget"] and report["regrew"]
    assert all(p["complete"] for p in report["regrow"])


def test_memory_pressure_needs_a_gpu(tiny, capsys):
    assert main(["bench", "--memory-pressure", "--device", "cpu", "--model", str(tiny),
                 "--pairs", "64"]) == 2
    assert "--simulate-gpu" in capsys.readouterr().err
