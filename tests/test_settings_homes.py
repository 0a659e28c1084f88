"""Settings that live beside their component (`mgeo bench`'s in tools/, `mgeo synth`'s and `mgeo
train`'s in training/) work as those in mgeo.settings do: their config-file keys are known,
their options keep their --help groups, and the base install's settings carry none of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mgeo import settings as settings_mod
from mgeo.tools.cli import COMMANDS, main, parse, settings_class

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for key in [k for k in os.environ if k.startswith("MGEO_")]:
        monkeypatch.delenv(key)


def _file(tmp_path, text: str) -> Path:
    path = tmp_path / "mgeo.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_bench_and_train_take_their_own_keys_from_a_config_file(tmp_path):
    bench = parse("bench", ["--config", str(_file(tmp_path, "pairs = 64\nrounds = 3\n"
                                                             "simulate_gpu = true\n"))])
    assert (bench.pairs, bench.rounds, bench.simulate_gpu) == (64, 3, True)
    train = parse("train", ["--config", str(_file(tmp_path, 'out = "m"\nepochs = 2.5\n'
                                                             "layers = 2\n"))])
    assert (str(train.out), train.epochs, train.layers) == ("m", 2.5, 2)
    synth = parse("synth", ["--config", str(_file(tmp_path, "pairs = 10\nseed = 4\n"))])
    assert (synth.pairs, synth.seed) == (10, 4)


def test_a_misspelt_bench_key_is_still_an_error(tmp_path, capsys):
    assert main(["bench", "--config", str(_file(tmp_path, "roundz = 3\n"))]) == 2
    err = capsys.readouterr().err
    assert "'roundz'" in err and "did you mean rounds?" in err, err


def test_one_file_serves_the_worker_and_the_bench_in_a_fresh_process(tmp_path):
    """A process that runs `mgeo worker` imports no bench or training code, and its config
    file may still hold keys only those commands have."""
    cfg = _file(tmp_path, 'group_id = "g"\nphase_seconds = 5.0\nepochs = 2.0\n')
    code = ("import sys; from mgeo.tools.cli import parse; "
            f"s = parse('worker', ['--config', {str(cfg)!r}]); print(s.group_id); "
            "print('torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGEO_")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["g", "False"]


@pytest.mark.parametrize("command,field,group", [
    ("bench", "rounds", settings_mod.BENCHMARK), ("bench", "device", settings_mod.MODEL),
    ("bench", "token_budget", settings_mod.BATCHING), ("train", "epochs", settings_mod.TRAINING),
    ("train", "data", settings_mod.IO), ("train", "layers", settings_mod.FRESH_MODEL),
    ("train", "max_length", settings_mod.MODEL), ("synth", "pairs", settings_mod.SYNTH),
    ("synth", "out", settings_mod.IO)])
def test_moved_options_keep_their_help_groups(command, field, group):
    assert settings_mod.option_group(settings_class(command), field) == group


def test_the_base_settings_hold_no_command_that_lives_elsewhere():
    homes = {name: target.split(":")[0] for name, (target, _, _) in COMMANDS.items()}
    assert homes["bench"] == "mgeo.tools.bench_settings"
    assert homes["synth"] == homes["train"] == "mgeo.training.settings"
    for name in ("BenchSettings", "SynthSettings", "TrainSettings"):
        assert not hasattr(settings_mod, name), name
