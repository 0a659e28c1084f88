"""bench/gpu-run cannot waste the GPU window: a failed step fails the run and is named, a machine
that is not ready stops it at once, a run killed mid-way leaves valid results, and the report
renders the real JSON of every step with the issue's goals marked (tiny sizes here; the GPU
sizes only change numbers). The whole run, as the GPU machine runs it, is
tests/test_gpu_rehearsal.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mgeo.tools.cli import main

ROOT = Path(__file__).resolve().parents[1]
WAIT = 240  # a bound on a gpu-run of one or two quick steps, never a duration asserted


def _report_module():
    spec = importlib.util.spec_from_file_location("gpu_report", ROOT / "bench" / "gpu_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _names(path: Path) -> dict[str, str | None]:
    """Canonical package names in a requirements-like list, with their pinned version if any."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[re.sub(r"[-_.]+", "-", name).lower()] = version or None
    return out


def test_the_carried_wheels_are_all_the_gpu_image_lacks():
    """Every package mgeo's worker, bench and broker import on the GPU machine is either in its
    image or carried, at the version the tests run with; what is carried needs nothing else the
    image lacks. (A dependency added to pyproject.toml but not carried broke the GPU run once.)"""
    import importlib.metadata as md
    import tomllib

    from packaging.requirements import Requirement

    image = _names(ROOT / ".ci" / "gpu-image-packages.txt")
    carried = _names(ROOT / "bench" / "gpu-wheels.txt")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}

    def needed(requirements):
        for text in requirements or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                yield re.sub(r"[-_.]+", "-", req.name).lower()

    wanted = set(needed(project["project"]["dependencies"]))
    for extra in ("worker", "broker", "plot"):
        wanted |= set(needed(extras[extra]))
    for name in list(carried):
        wanted |= set(needed(md.requires(name)))
    wanted.discard("mgeo-stream")
    missing = sorted(wanted - set(image) - set(carried))
    assert not missing, f"the GPU image lacks {missing}: add them to bench/gpu-wheels.txt"
    for name, version in carried.items():
        assert version == md.version(name), \
            f"bench/gpu-wheels.txt carries {name}=={version}, the tests run {md.version(name)}"


def test_the_scripts_parse():
    for script in ("bench/gpu-run", "bench/gpu-wheels", ".ci/gpu-rehearsal"):
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)


def _gpu_run(out: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(ROOT / "bench" / "gpu-run"), *args, str(out)],
                            env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _results(out: Path) -> tuple[dict, str]:
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


@pytest.mark.slow
def test_a_machine_that_is_not_ready_stops_the_run_at_once(tmp_path):
    """Here, without a GPU, the cuda run's check fails: nothing else runs."""
    run = _gpu_run(tmp_path)
    output, _ = run.communicate(timeout=WAIT)
    assert run.returncode == 3, output
    results, md = _results(tmp_path)
    assert "sees no GPU" in results["check"]["error"]
    assert [s for s in results["steps"]] == ["check"]
    assert all(results[s] is None for s in ("engine", "fp16", "e2e", "memory"))
    assert "| check | **failed**:" in md and "| engine | not run |" in md
    assert "FAILED steps: check" in output.splitlines()[-1]


@pytest.mark.slow
def test_a_failed_step_fails_the_run_and_is_named(tmp_path):
    run = _gpu_run(tmp_path, "--cpu", GPU_RUN_STEPS="check fp16", MGEO_REF_BATCH="0")
    output, _ = run.communicate(timeout=WAIT)
    assert run.returncode == 1, output
    assert output.splitlines()[-1].endswith("FAILED steps: fp16")
    results, md = _results(tmp_path)
    assert results["check"]["ok"] and "error" not in results["check"]
    assert results["fp16"]["error"].startswith("exit 2 after")
    assert "MGEO_REF_BATCH" in results["fp16"]["error"]  # what the step itself said
    assert "| fp16 | **failed**: exit 2" in md


@pytest.mark.slow
def test_a_run_killed_mid_way_leaves_valid_results(tmp_path):
    run = _gpu_run(tmp_path, "--cpu", GPU_RUN_STEPS="check fp16")
    try:
        for line in run.stdout:  # the run's own log: kill it as soon as fp16 has started
            if "step fp16 (at most" in line:
                os.killpg(run.pid, signal.SIGKILL)
                break
        run.wait(WAIT)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == -signal.SIGKILL
    results, md = _results(tmp_path)
    assert results["check"]["ok"]
    assert results["fp16"] == {"error": "did not finish: the run stopped during this step"}
    assert "| fp16 | **failed**: did not finish" in md and "| e2e | not run |" in md
    assert len(list(tmp_path.iterdir())) <= 8  # what the device tool brings back


def test_goals_are_marked_met_not_met_or_not_measured():
    report = _report_module()
    r = {"engine": {"engine_vs_model_only": 0.95, "engine_pairs_per_s": 950.0,
                    "model_only_pairs_per_s": 1000.0},
         "fp16": {"pairs": 20000, "vs_fp32": {"label_agreement": 0.9985,
                                              "label_disagreements": 30}},
         "e2e": {"workers": [{"processes": 1, "pairs_per_s": 31000.0, "complete": False,
                              "answers": 5}]}}
    met = [m for _, _, m in report.goals(r)]
    assert met == [False, True, False]  # an incomplete run never meets the goal
    r["e2e"]["workers"][0].update(complete=True, answers=200000)
    assert [m for _, _, m in report.goals(r)] == [True, True, False]
    assert [m for _, _, m in report.goals({})] == [None, None, None]


# How each recorded step was made: `mgeo bench --json --plot '' --model TINY <args>`.
STEP_ARGS = {
    "engine": ("--device", "cpu", "--pairs", "64", "--batch-layout", "padded"),
    "fp16": ("--simulate-gpu", "--pairs", "32"),
    "memory": ("--memory-pressure", "--simulate-gpu", "--precision", "fp32", "--pairs", "64"),
    "packed": ("--device", "cpu", "--pairs", "64", "--batch-layout", "packed"),
    "host": ("--host-path", "--device", "cpu", "--pairs", "2000", "--processes-list", "1"),
    "latency": ("--latency", "--device", "cpu", "--e2e-pairs", "600", "--phase-seconds", "1.5"),
}


def _fields(data, prefix=""):
    """Every key path of a JSON document (list items by their first element)."""
    out = set()
    if isinstance(data, dict):
        for key, value in data.items():
            out.add(prefix + key)
            out |= _fields(value, f"{prefix}{key}.")
    elif isinstance(data, list) and data:
        out |= _fields(data[0], prefix + "0.")
    return out


@pytest.mark.parametrize("step", ["engine", "fp16", "memory", "packed"])
def test_the_recorded_steps_have_the_fields_bench_writes_today(step, tiny_model, capsys):
    recorded = json.loads((STEPS / f"{step}.json").read_text(encoding="utf-8"))
    today = _bench_json(capsys, "--model", str(tiny_model), *STEP_ARGS[step])
    assert _fields(recorded) == _fields(today), \
        f"mgeo bench's {step} JSON changed: regenerate tests/data/gpu-steps/{step}.json"


def _bench_json(capsys, *args: str) -> dict:
    code = main(["bench", "--json", "--plot", "", *args])
    data = json.loads(capsys.readouterr().out)
    assert code == 0, data
    return data


STEPS = ROOT / "tests" / "data" / "gpu-steps"


def test_the_report_renders_every_step(tmp_path):
    """bench/gpu_report.py over every step's JSON, one of them failed. The JSON files are what
    `mgeo bench --json` wrote for each step with the tiny test model (regenerate them with the
    commands in _STEP_COMMANDS); that today's bench still writes them so, in every step, is what
    tests/test_gpu_rehearsal.py checks, running gpu-run and its report for real."""
    for path in STEPS.glob("*.json"):
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"))
    (tmp_path / "steps.tsv").write_text("check\t3\tok\ne2e\t110\tfailed (exit 124)\n")
    assert _report_module().main(tmp_path, tmp_path) == 0
    md = (tmp_path / "results.md").read_text()
    assert "## 1. Engine vs the common loop" in md and "model only" in md
    assert "| engine, --batch-layout packed |" in md
    assert "fp16 against fp32 (random weights" not in md  # the engine ran in fp32
    assert "## 2. fp16 against fp32 on the same real-length pairs\n\n" in md
    assert "label agreement" in md.split("## 2.")[1].split("## 3.")[0]
    assert "## 3. One worker end to end, BERT-base\n\nfailed: timed out" in md
    assert "| pressed |" in md and "Shrank on a real out-of-memory error: True" in md
    assert "| worker, 1 process(es), 2,000 pairs |" in md
    assert md.count("| 10% |") == 1 and "| 67% |" in md
    assert "| e2e | **failed**: timed out after 110 s | 110 s |" in md
    assert "| one worker end to end, BERT-base fp16 >= 30,000 pairs/s | not measured |" in md
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["host"]["workers"][0]["complete"] is True
    assert merged["memory"]["ok"] and merged["fp16"]["vs_fp32"]["label_agreement"] > 0.9
    assert [g["met"] for g in merged["goals"]][0] is None
