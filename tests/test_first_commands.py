"""The README's two commands, and `.ci/run`, which is the second of them.

`.ci/run` is run here for real, in a copy of itself, with every program it calls replaced by a
stand-in that records its arguments (apt-get, sudo, python3, the venv's pip and python) and a
PATH without the real promtool: what it installs, in what order, and what it says when it
cannot.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI_RUN = ROOT / ".ci" / "run"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def readme_commands() -> list[str]:
    block = (ROOT / "README.md").read_text(encoding="utf-8").split("```bash\n", 1)[1]
    block = block.split("```", 1)[0].replace("\\\n", " ")
    return [re.sub(r"\s+", " ", line).strip() for line in block.splitlines() if line.strip()]


def test_the_readme_opens_with_two_commands_and_the_second_is_ci_run():
    first, second = readme_commands()
    assert second == ".ci/run"
    assert first.endswith(".venv/bin/mgeo demo")
    assert os.access(CI_RUN, os.X_OK), ".ci/run must be executable: the README runs it"
    subprocess.run(["bash", "-n", str(CI_RUN)], check=True)


def _torch_install(text: str) -> str:
    (found,) = re.findall(r"pip install -q (torch==\S+ [^&\n\\]*?)\s*(?:&&|\\|\n)", text)
    return found.strip()


def test_both_commands_take_torchs_cpu_build_the_same_way():
    """Only torch is looked up on PyTorch's CPU index (its +cpu build ranks above PyPI's CUDA
    build of the same version); everything else comes from PyPI."""
    readme = _torch_install(" ".join(readme_commands()) + "\n")
    ci = _torch_install(CI_RUN.read_text(encoding="utf-8"))
    assert readme == ci
    assert ci.split() == ["torch==2.13.0", "--no-deps", "--extra-index-url", CPU_INDEX]


# ---- .ci/run with stand-ins ----------------------------------------------------------------

RECORDER = """#!/bin/bash
echo "{name} $*" >> "$CALLS"
{body}
"""


def _stand_in(directory: Path, name: str, body: str = "exit 0") -> None:
    path = directory / name
    path.write_text(RECORDER.format(name=name, body=body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def sandbox(tmp_path):
    """A copy of .ci/run in an empty checkout, and a bin directory that is all of PATH."""
    checkout = tmp_path / "checkout"
    (checkout / ".ci").mkdir(parents=True)
    shutil.copy(CI_RUN, checkout / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "env", "dirname", "id"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    venv_bin = checkout / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for name in ("pip", "python"):
        _stand_in(venv_bin, name)
    # apt-get installs stand-ins of what it was asked for (bash builtins and absolute paths
    # only: PATH holds nothing else).
    chmod = shutil.which("chmod")
    _stand_in(bin_dir, "apt-get", body=f"""
if [ "$1" = install ]; then
  for pkg in "$@"; do
    if [ "$pkg" = prometheus ]; then
      for tool in promtool prometheus; do
        printf '#!/bin/bash\\n' > {bin_dir}/$tool; {chmod} +x {bin_dir}/$tool
      done
    fi
    if [ "$pkg" = python3-venv ]; then : > {tmp_path}/venv-installed; fi
  done
fi""")
    # python3 -m venv works once python3-venv is there (or from the start, by default).
    _stand_in(bin_dir, "python3", body=f"""
if [ -e {tmp_path}/no-venv ] && [ ! -e {tmp_path}/venv-installed ]; then exit 1; fi""")

    class Sandbox:
        root, bin = tmp_path, bin_dir

        def run(self) -> tuple[subprocess.CompletedProcess, list[str]]:
            calls = tmp_path / "calls"
            calls.write_text("")
            env = {"PATH": str(bin_dir), "CALLS": str(calls), "HOME": str(tmp_path)}
            done = subprocess.run([str(bin_dir / "bash"), str(checkout / ".ci" / "run")],
                                  env=env, capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL)
            return done, calls.read_text().splitlines()

        def as_user(self, with_sudo: bool) -> None:
            (bin_dir / "id").unlink()
            _stand_in(bin_dir, "id", body="echo 1000")
            if with_sudo:
                _stand_in(bin_dir, "sudo", body='exec "$@"')

    return Sandbox()


FAST_LANE = "python -m pytest -q -m not slow -n 2"
SLOW_LANE = "python -m pytest -q -m slow -n 3 --durations=30"


def _installs(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("apt-get install")]


def test_without_promtool_it_installs_debians_prometheus_then_runs_the_suite(sandbox):
    done, calls = sandbox.run()
    assert done.returncode == 0, done.stderr
    assert calls.index("apt-get update -qq") < calls.index(
        "apt-get install -y -qq --no-install-recommends prometheus")
    assert calls[-5:] == [
        "python3 -m venv .venv",
        f"pip install -q torch==2.13.0 --no-deps --extra-index-url {CPU_INDEX}",
        "pip install -q -e .[all] -c deploy/requirements/worker.txt",
        FAST_LANE,
        SLOW_LANE]
    assert "installing promtool and prometheus" in done.stderr


def test_with_promtool_on_path_it_installs_nothing(sandbox):
    for tool in ("promtool", "prometheus"):
        _stand_in(sandbox.bin, tool)
    done, calls = sandbox.run()
    assert done.returncode == 0, done.stderr
    assert not [c for c in calls if c.startswith(("apt-get", "sudo"))]
    assert calls[-2:] == [FAST_LANE, SLOW_LANE]
    assert "fast lane (pytest -m 'not slow')" in done.stdout and "full suite" in done.stdout


def test_a_python_without_venv_gets_python3_venv(sandbox):
    for tool in ("promtool", "prometheus"):
        _stand_in(sandbox.bin, tool)
    (sandbox.root / "no-venv").touch()
    done, calls = sandbox.run()
    assert done.returncode == 0, done.stderr
    assert _installs(calls) == ["apt-get install -y -qq --no-install-recommends python3-venv"]
    assert calls.index("python3 -m venv --clear .venv") > calls.index(_installs(calls)[0])


def test_a_user_with_sudo_installs_through_sudo(sandbox):
    sandbox.as_user(with_sudo=True)
    done, calls = sandbox.run()
    assert done.returncode == 0, done.stderr
    assert "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq " \
           "--no-install-recommends prometheus" in calls


@pytest.mark.parametrize("case", ["a user without sudo", "no apt-get"])
def test_when_it_cannot_install_it_says_what_to_do_and_runs_nothing(sandbox, case):
    if case == "no apt-get":
        (sandbox.bin / "apt-get").unlink()
    else:
        sandbox.as_user(with_sudo=False)
    done, calls = sandbox.run()
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(".ci/run: cannot install promtool and prometheus (")
    assert "install promtool and prometheus yourself" in line
    assert not [c for c in calls if c.startswith(("pip", "python"))]


def test_a_failing_fast_lane_still_runs_the_slow_tests_and_fails_the_run(sandbox):
    for tool in ("promtool", "prometheus"):
        _stand_in(sandbox.bin, tool)
    _stand_in(sandbox.root / "checkout" / ".venv" / "bin", "python",
              body='[ "$5" = "not slow" ] && exit 1; exit 0')
    done, calls = sandbox.run()
    assert done.returncode == 1
    assert calls[-1] == SLOW_LANE
    assert done.stdout.strip().splitlines()[-1].endswith("FAILED (exit 1)")
