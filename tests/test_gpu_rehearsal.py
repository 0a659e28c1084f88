"""The GPU machine, simulated: .ci/gpu-rehearsal builds (or takes from its cache) a Python 3.12
environment holding only the GPU image's packages, adds what bench/gpu-wheels carries, and runs
bench/gpu-run --cpu from a copy of this checkout without network; it fails unless every step
wrote its figures. Minutes: once cached, about as long as the run itself."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 2300


def _python312() -> str | None:
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))
    return os.environ.get("GPU_PYTHON") or (found[-1] if found else shutil.which("python3.12"))


@pytest.mark.slow
@pytest.mark.timeout(LIMIT_S + 100)
def test_gpu_run_as_the_gpu_machine_runs_it(tmp_path):
    if _python312() is None and not os.environ.get("CI"):
        pytest.skip("no Python 3.12 here (CI has one through pyenv)")
    done = subprocess.run([str(ROOT / ".ci" / "gpu-rehearsal"), str(tmp_path)],
                          capture_output=True, text=True, timeout=LIMIT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["check"]["python"].startswith("3.12")
    assert results["check"]["versions"]["torch"].startswith("2.11.0")
    assert all(s["status"] == "ok" for s in results["steps"].values())
    assert "every step wrote its figures" in output
