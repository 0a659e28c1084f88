"""The command line: every option documented, every option an env var, errors that help."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mgeo import settings as settings_mod
from mgeo.tools.cli import COMMANDS, main, parse


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_documents_every_option(command, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(command, ["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    cls = getattr(settings_mod, COMMANDS[command][0])
    for name, field in cls.model_fields.items():
        aliases = getattr(field.validation_alias, "choices", None) or [name]
        flag = _flag(aliases[0] if isinstance(aliases[0], str) else name)
        shown = flag in text or name.upper() in text
        assert shown, f"mgeo {command} --help does not show {flag}"
        assert field.description, f"{cls.__name__}.{name} has no description"


def test_top_level_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS) and "MGEO_" in out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_is_an_env_var(command, monkeypatch):
    cls = getattr(settings_mod, COMMANDS[command][0])
    required = {"input": "x.csv", "out": "y.csv", "src": "a", "dst": "b", "data": "d.csv"}
    for name in cls.model_fields:
        if name in required:
            monkeypatch.setenv(f"MGEO_{name.upper()}", required[name])
    args = ["a", "b"] if command == "convert" else []  # positional arguments, not options
    s = parse(command, args)
    monkeypatch.setenv("MGEO_LOG_LEVEL", "debug")
    assert parse(command, args).log_level == "debug" and s.log_level == "info"
    assert parse(command, args + ["--log-level", "error"]).log_level == "error"


def test_worker_options_from_env_and_flags(monkeypatch):
    monkeypatch.setenv("MGEO_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("MGEO_KAFKA_CONFIG", '{"security.protocol": "SASL_SSL"}')
    s = parse("worker", ["--group-id", "g", "--consumer-config", "fetch.min.bytes=1000",
                         "--positive-labels", "exact_match,partial_match"])
    conf = s.client_config("consumer")
    assert conf["bootstrap.servers"] == "k1:9092,k2:9092"
    assert conf["security.protocol"] == "SASL_SSL" and conf["fetch.min.bytes"] == "1000"
    assert "fetch.min.bytes" not in s.client_config("producer")
    assert s.group_id == "g" and s.positive_labels == ["exact_match", "partial_match"]


def test_secrets_are_masked_and_files_are_read(tmp_path):
    props = tmp_path / "kafka.properties"
    props.write_text("# creds\nsasl.username=svc\nsasl.password=hunter2\n")
    s = parse("worker", ["--kafka-config-file", str(props),
                         "--producer-config", "ssl.key.password=pw"])
    assert s.client_config("producer")["sasl.password"] == "hunter2"
    assert s.masked()["producer_config"] == {"ssl.key.password": "***"}
    assert "hunter2" not in str(s.masked())


def test_credentials_pass_through_and_are_never_echoed():
    env = {**os.environ, "MGEO_KAFKA_CONFIG": '{"sasl.password": "hunter2"}',
           "MGEO_PRODUCER_CONFIG": '{"ssl.key.password": "hunter3"}'}
    shown = subprocess.run([sys.executable, "-m", "mgeo.tools.cli", "worker", "--help"], env=env,
                           capture_output=True, text=True)
    assert shown.returncode == 0 and "--kafka-config" in shown.stdout
    assert "hunter" not in shown.stdout + shown.stderr
    # Both clients get the credentials; what the worker logs of its configs is redacted.
    from mgeo.settings import redact
    from mgeo.worker.stream.clients import consumer_config, producer_config

    s = parse("worker", ["--kafka-config", "sasl.password=hunter2",
                         "--producer-config", "ssl.key.password=hunter3"])
    cconf, pconf = consumer_config(s), producer_config(s)
    assert cconf["sasl.password"] == pconf["sasl.password"] == "hunter2"
    assert pconf["ssl.key.password"] == "hunter3" and "ssl.key.password" not in cconf
    assert "hunter" not in str(redact({k: str(v) for k, v in {**cconf, **pconf}.items()}))


def test_bad_value_says_what_to_do():
    proc = subprocess.run([sys.executable, "-m", "mgeo.tools.cli", "worker", "--device", "gpu"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--device (MGEO_DEVICE)" in proc.stderr and "mgeo worker --help" in proc.stderr


def test_unknown_command():
    assert main(["frobnicate"]) == 2


def test_producer_side_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "import mgeo.tools.cli, mgeo.wire, mgeo.settings, mgeo.kafka\n"
            "import mgeo.readers, mgeo.writers\n"
            "import mgeo.producer.publish, mgeo.producer.collect\n"
            "sys.argv = ['mgeo', 'produce', '--help']; mgeo.tools.cli.main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "usage: mgeo produce" in proc.stdout and "--bootstrap-servers" in proc.stdout
