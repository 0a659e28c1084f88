"""The command line: every option documented, every option an env var, errors that help."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from mgeo import settings as settings_mod
from mgeo.tools.cli import COMMANDS, main, parse, settings_class


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_documents_every_option(command, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(command, ["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    cls = settings_class(command)
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
    cls = settings_class(command)
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


# -- --help: grouped by purpose, each option with its variable and default (issue 22) ------------

# What no option's help may say: the names of the test machinery and benchmark figures belong in
# docs/, not in the reference of an option.
INTERNAL = re.compile(r"Tansu|\bCI\b|\d-core|\bon \d+ cores|faster|slower|pairs/s|speed-?up"
                      r"|\d(\.\d+)?x (fp|bf|int)\d", re.IGNORECASE)


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        parse(command, ["--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def _entries(text: str) -> dict[str, tuple[str, str]]:
    """Each entry of --help, by its first flag (or a positional's name): (its section, its
    text)."""
    entries, section, name = {}, "", None
    for line in text.splitlines():
        title = re.fullmatch(r"(\S.*):", line)
        if title and not line.startswith("usage:"):
            section, name = title.group(1), None
        elif re.match(r"  \S", line):
            name = line.split()[0].rstrip(",")
            entries[name] = (section, line.strip())
        elif name and line.startswith("   "):
            entries[name] = (section, entries[name][1] + " " + line.strip())
        else:
            name = None
    return entries


def _shown_as(cls, name: str) -> str:
    """How field `name` is named in --help: its flag, or a positional's metavar."""
    field = cls.model_fields[name]
    if any(getattr(m, "__name__", "") == "_CliPositionalArg" for m in field.metadata):
        return name.upper()
    choices = getattr(field.validation_alias, "choices", None) or [name]
    return _flag(choices[0])


def _usage(text: str) -> str:
    return " ".join(text.split("\n\n")[0].split())


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_is_in_a_named_group_with_its_variable_and_default(command, capsys):
    cls = settings_class(command)
    entries = _entries(_help(command, capsys))
    assert entries["-h"][0] == entries["--version"][0] == settings_mod.GENERAL
    for name, field in cls.model_fields.items():
        section, text = entries[_shown_as(cls, name)]
        assert section in settings_mod.GROUPS, f"mgeo {command}: {name} is under {section!r}"
        assert settings_mod.env_name(cls, name) in text, f"mgeo {command}: {name}: {text}"
        # "(default: 128", "(required", or the default said in words ("Default: the bundled
        # demonstration model")
        assert re.search(r"\bdefault\b|\(required", text, re.I), f"mgeo {command}: {text}"


def test_worker_help_is_grouped_by_purpose(capsys):
    sections = {s for s, _ in _entries(_help("worker", capsys)).values()}
    assert {"Kafka connection", "Kafka topics", "Consumer group", "Model", "Batching",
            "Delivery", "Operations", "General"} <= sections


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_names_no_internal_machinery_or_figures(command, capsys):
    text = _help(command, capsys)
    found = INTERNAL.findall(text)
    assert not INTERNAL.search(text), f"mgeo {command} --help says {found}"
    assert not INTERNAL.search(_usage_text()), _usage_text()


def _usage_text() -> str:
    from mgeo.tools.cli import _usage as top_level_usage

    return top_level_usage()


@pytest.mark.parametrize("command,required", [("score", ["--in FILE", "--out FILE"]),
                                              ("train", ["--out DIR"])])
def test_required_options_are_shown_as_required(command, required, capsys):
    text = _help(command, capsys)
    usage = _usage(text)
    entries = _entries(text)
    for flag in required:
        assert flag in usage and f"[{flag}" not in usage, usage
        assert "(required" in entries[flag.split()[0]][1]


def test_a_missing_required_option_is_one_line_naming_flag_and_variable(capsys, monkeypatch):
    monkeypatch.delenv("MGEO_IN", raising=False)
    monkeypatch.setenv("MGEO_OUT", "y.csv")
    assert main(["score"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--in (MGEO_IN)" in err and "required" in err, err


def test_an_unknown_flag_is_one_line(capsys):
    assert main(["worker", "--no-such-flag"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--no-such-flag" in err and "mgeo worker --help" in err, err


# -- --version ------------------------------------------------------------------------------------


def test_version_names_the_package_and_its_stack(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"mgeo-stream {version('mgeo-stream')}"
    assert "librdkafka" in out and "torch" in out
    with pytest.raises(SystemExit) as exc:
        parse("worker", ["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == out


def test_version_works_without_torch_and_never_imports_it():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from mgeo.tools.cli import main\n"
            "assert main(['--version']) == 0\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    code = ("import sys\nfrom mgeo.tools.cli import main\nmain(['--version'])\n"
            "assert 'torch' not in sys.modules, 'imported torch'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_version_says_what_is_not_installed(capsys, monkeypatch):
    from importlib import metadata

    real = metadata.version

    def version(name):
        if name in ("torch", "transformers"):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", version)
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^torch: not installed", out, re.MULTILINE), out


def test_each_group_table_names_options_its_class_defines():
    """A renamed or moved option must not leave a stale entry behind in `cli_groups`."""
    import inspect

    for cls in settings_mod._settings_classes():
        for group, names in vars(cls).get("cli_groups", {}).items():
            assert group in settings_mod.GROUPS, f"{cls.__name__}: unknown group {group!r}"
            stale = set(names) - set(inspect.get_annotations(cls))
            assert not stale, f"{cls.__name__}.cli_groups names {stale}, not fields it defines"


def test_an_option_keeps_its_group_in_any_class_that_composes_it():
    """As if a command's settings moved to another module and gained an option."""
    from typing import ClassVar

    from pydantic import Field

    class Elsewhere(settings_mod._Device, settings_mod.Base):
        cli_group: ClassVar[str] = settings_mod.BENCHMARK
        knob: int = Field(1, description="A new option.")

    group = settings_mod.option_group
    assert group(Elsewhere, "device") == settings_mod.MODEL
    assert group(Elsewhere, "knob") == settings_mod.BENCHMARK
    assert group(Elsewhere, "log_level") == settings_mod.GENERAL
