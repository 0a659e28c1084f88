"""The options of the `mgeo` commands, typed, and how every settings class reads them.

The settings of the commands that are no business of the base install (the bench, training)
live beside their code and compose the mixins here: `mgeo bench`'s in tools/bench_settings.py, `mgeo synth`'s and `mgeo
train`'s in training/settings.py (mgeo.tools.cli's COMMANDS names each command's class). Each
field is an environment variable `MGEO_<NAME>`, a CLI flag `--<name>` (kebab case) and a
key `<name>` of the config file `--config` names (TOML, or YAML); a flag beats its variable, a
variable beats the file. `--help` shows the field's description, default and variable, its
value named by `cli_metavar`, under the group its class names (`option_group`). Options are
defined once, in small mixins (`_InputTopic`, `_Device`...), and each command class composes
only those it uses, so `mgeo produce --help` lists no consumer or worker option. Mixins are
listed last-shown first in a class's bases (pydantic orders fields from the last base).

This module imports no torch: the producer side loads it on hosts without a GPU stack.
"""

from __future__ import annotations

import difflib
import inspect
import ipaddress
import json
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import javaproperties
from pydantic import AliasChoices, Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (BaseSettings, CliPositionalArg, InitSettingsSource, NoDecode,
                               PydanticBaseSettingsSource, SettingsConfigDict, SettingsError,
                               TomlConfigSettingsSource, YamlConfigSettingsSource)

ENV_PREFIX = "MGEO_"

# Properties whose values must never reach a log, an error message or a config dump, by the
# last parts of their names: every librdkafka property that holds a credential (passwords,
# passphrases, client secrets, private keys, ssl_key, the OAUTHBEARER config string with its
# tokens and extensions; tests/data/librdkafka-properties.txt lists them all), and those of
# files written for the Java client (sasl.jaas.config...), which librdkafka refuses but an
# error or a dump may show on the way.
_SECRET_SUFFIXES = ("password", "passphrase", "secret", "key.pem", "ssl_key",
                    "oauthbearer.config", "jaas.config", "keystore.key", "user.info")


def _split_commas(cls, v):
    """A list option given as one comma-separated string (from the environment or a flag)."""
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return v


def is_secret(key: str) -> bool:
    """Whether the value of property `key` is a credential (see `_SECRET_SUFFIXES`)."""
    k = key.strip().lower()
    return any(k == s or k.endswith("." + s) for s in _SECRET_SUFFIXES)


def redact(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a librdkafka config fit for logs: the values of secret properties are `***`."""
    return {k: ("***" if is_secret(k) else v) for k, v in config.items()}


_EOL = re.compile(r"\r\n|\r|\n")


def read_properties(path: Path) -> dict[str, str]:
    """Read a Java `.properties` file, the format of Kafka's client.properties: `=`, `:` or
    whitespace between key and value, `#` and `!` comments, a backslash at the end of a line
    continuing it, backslash escapes. javaproperties parses it (the format has corners: a
    hand-written split at `=` rejected `key: value`). Errors name the file and line only:
    the values are credentials."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text; save the file as UTF-8") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}; give a readable .properties "
                         "file") from None
    out: dict[str, str] = {}
    line = 1  # where the next entry starts
    entries = javaproperties.parse(text)
    while True:
        try:
            entry = next(entries, None)
        except javaproperties.InvalidUEscapeError:
            raise ValueError(f"{path}:{line}: invalid \\u escape (it takes four hex digits; "
                             "write \\\\ for a backslash)") from None
        if entry is None:
            return out
        if isinstance(entry, javaproperties.KeyValue):
            if not entry.key.strip():
                raise ValueError(f"{path}:{line}: a value without a property name before it")
            out[entry.key] = entry.value
        line += len(_EOL.findall(entry.source))


def _property(text: str, where: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"{where} is not KEY=VALUE (it has no '=')")
    if not key.strip():
        raise ValueError(f"{where} has no property name before its '='")
    return key.strip(), value


def _properties(cls, v: Any) -> Any:
    """librdkafka properties from a dict, or from the text of the environment variable (a
    JSON object, or KEY=VALUE lines) or of the flags (a JSON list of KEY=VALUE strings, one a
    flag: mgeo.tools.cli passes them so). Errors say where, never what: values are secrets."""
    if not isinstance(v, str):
        return v
    text = v.strip()
    if not text.startswith(("{", "[")):
        pairs = [_property(ln.strip(), f"line {n}") for n, ln in enumerate(text.splitlines(), 1)
                 if ln.strip() and not ln.lstrip().startswith("#")]
        return {k: val.strip() for k, val in pairs}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                         "give a JSON object or KEY=VALUE lines") from None
    if isinstance(data, list):
        if not all(isinstance(item, str) for item in data):
            raise ValueError("a JSON list must hold KEY=VALUE strings")
        return dict(_property(item, f"value {n}") for n, item in enumerate(data, 1))
    out = {}
    for key, value in data.items():
        if not key.strip():
            raise ValueError("a property without a name")
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (int, float)):
            value = str(value)
        elif not isinstance(value, str):
            raise ValueError(f"the value of {key!r} is not text, a number or true/false")
        out[key] = value
    return out


def _ip_address(cls, v: str) -> str:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        raise ValueError("not an IP address; give one of this host's addresses, e.g. "
                         "127.0.0.1, or 0.0.0.0 for all of them") from None
    return v


# -- --help groups -----------------------------------------------------------------------------
# An option is shown under the group named by the class that defines it: the group whose
# `cli_groups` entry lists the field, else the class's own `cli_group`; a class naming none
# leaves its fields to the command's own `cli_group`. So a field keeps its group in every
# command that composes its class, and wherever the class moves (see `option_group`).

IO = "Input and output"
KAFKA = "Kafka connection"
TOPICS = "Kafka topics"
CONSUMER_GROUP = "Consumer group"
MODEL = "Model"
BATCHING = "Batching"
BAD_REQUESTS = "Bad requests"
DELIVERY = "Delivery"
OPERATIONS = "Operations"
WORKER = "Worker"
BROKER = "Broker"
DEMO = "Demo"
BENCHMARK = "Benchmark"
SYNTH = "Synthetic pairs"
TRAINING = "Training"
FRESH_MODEL = "Fresh model (without --model)"
GENERAL = "General"
# Every group, in the order --help shows them.
GROUPS = (IO, KAFKA, TOPICS, CONSUMER_GROUP, MODEL, BATCHING, BAD_REQUESTS, DELIVERY, OPERATIONS,
          WORKER, BROKER, DEMO, BENCHMARK, SYNTH, TRAINING, FRESH_MODEL, GENERAL)
# Where an option of a class that names no group, in a command that names none, would land;
# not in GROUPS, so tests/test_cli.py sees it.
UNGROUPED = "Other options"


def option_group(cls: type[BaseSettings], name: str) -> str:
    """The --help group of field `name` of settings class `cls` (see GROUPS)."""
    for klass in cls.__mro__:
        if name in inspect.get_annotations(klass):  # the class that defines (or redefines) it
            own = vars(klass)
            listed = [g for g, names in own.get("cli_groups", {}).items() if name in names]
            group = listed[0] if listed else own.get("cli_group")
            if group:
                return group
            break
    return vars(cls).get("cli_group") or UNGROUPED


def _aliases(cls: type[BaseSettings], name: str) -> list[str]:
    choices = getattr(cls.model_fields[name].validation_alias, "choices", None) or []
    return [c for c in choices if isinstance(c, str)]


def env_name(cls: type[BaseSettings], name: str) -> str:
    """The environment variable of field `name`: MGEO_<NAME>, or the MGEO_ alias it declares
    (ScoreSettings.input is MGEO_IN)."""
    prefixed = [a for a in _aliases(cls, name) if a.upper().startswith(ENV_PREFIX)]
    return (prefixed[0] if prefixed else ENV_PREFIX + name).upper()


def config_key(cls: type[BaseSettings], name: str) -> str:
    """The key of field `name` in a config file: its variable without MGEO_, in lower case."""
    return env_name(cls, name)[len(ENV_PREFIX):].lower()


def option_flag(cls: type[BaseSettings], name: str) -> str:
    """The flag of field `name`: --<name>, or its first alias (ScoreSettings.input is --in); a
    positional argument's name (SRC)."""
    if any(m in CliPositionalArg.__metadata__ for m in cls.model_fields[name].metadata):
        return name.upper()
    plain = [a for a in _aliases(cls, name) if not a.upper().startswith(ENV_PREFIX)]
    return "--" + (plain[0] if plain else name).replace("_", "-")


# -- config files ------------------------------------------------------------------------------


class ConfigFileError(SettingsError):
    """A config file that cannot be used; `reason` says why in a few words, never quoting a
    value (it may be a password)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _settings_classes() -> list[type[Base]]:
    out, todo = [], [Base]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def config_keys(cls: type[BaseSettings]) -> set[str]:
    """The keys a config file may give for `cls`: its options' variables without MGEO_."""
    return {config_key(cls, name) for name in cls.model_fields} - {"config"}


def _unknown_key(key: str, known: set[str]) -> str:
    """Why `key` is no key of any command, with the key the user likely meant."""
    guess = key.strip().lower().replace("-", "_").removeprefix(ENV_PREFIX.lower())
    if guess not in known:
        close = difflib.get_close_matches(guess, known, n=1)
        guess = close[0] if close else ""
    hint = f"; did you mean {guess}?" if guess else ""
    return (f"unknown key {key!r}{hint} (keys are the options' MGEO_ variables without MGEO_, "
            "in lower case)")


def _load(cls: type[BaseSettings], path: Path) -> Any:
    """The data of config file `path`, through pydantic-settings' own TOML or YAML source."""
    if path.suffix.lower() == ".toml":
        try:
            return TomlConfigSettingsSource(cls, toml_file=path).toml_data
        except UnicodeDecodeError:
            raise
        except ValueError as exc:  # tomllib.TOMLDecodeError: what and where, never a value
            raise ConfigFileError(path, f"not valid TOML: {exc}") from None
    try:
        import yaml
    except ImportError:
        raise ConfigFileError(path, "reading YAML needs PyYAML: pip install pyyaml, or write "
                                    "the file in TOML") from None
    try:
        return YamlConfigSettingsSource(cls, yaml_file=path).yaml_data
    except (AttributeError, TypeError, ValueError):  # a list or a scalar, not a mapping
        return None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        what = getattr(exc, "problem", None) or "cannot parse it"
        raise ConfigFileError(path, f"not valid YAML{where}: {what}") from None


def read_config_file(cls: type[BaseSettings], path: Path) -> dict[str, Any]:
    """The options file `path` gives for `cls`.

    Keys of options other commands have are left to them (as the environment's variables are):
    one file may serve the worker, the producer and the collector. Any other key is an error:
    a misspelt option would otherwise do nothing."""
    if path.suffix.lower() not in (".toml", ".yaml", ".yml"):
        raise ConfigFileError(path, "give a .toml file, or .yaml/.yml")
    if not path.is_file():
        raise ConfigFileError(path, "no such file" if not path.exists() else "not a file")
    try:
        data = _load(cls, path)
    except OSError as exc:
        raise ConfigFileError(path, f"cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(path, "not UTF-8 text; save it as UTF-8") from None
    if not isinstance(data, dict):
        raise ConfigFileError(path, "the file must be a mapping of keys to values")
    known = set().union(*(config_keys(c) for c in _settings_classes()))
    unknown = [str(k) for k in data if k not in known]
    if unknown:
        raise ConfigFileError(path, _unknown_key(unknown[0], known))
    ours = config_keys(cls)
    return {k: v for k, v in data.items() if k in ours}


class _ConfigFileSource(PydanticBaseSettingsSource):
    """The file that `config` names, as the sources before this one (flags, environment) set
    it: below them, above the defaults."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole file

    def __call__(self) -> dict[str, Any]:
        path = self.current_state.get("config")
        if not path:
            return {}
        data = read_config_file(self.settings_cls, Path(path).expanduser())
        return InitSettingsSource(self.settings_cls, data)()


class Base(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_enforce_required=False,
        cli_avoid_json=True,
        extra="ignore",
        validate_default=True,
        populate_by_name=True,
        frozen=True,
    )
    cli_group: ClassVar[str] = GENERAL

    config: Path | None = Field(
        None,
        description="A TOML file (.toml) of options, or YAML (.yaml, .yml; needs PyYAML). Its "
                    "keys are the options' variables without MGEO_, in lower case: "
                    "bootstrap_servers = \"k1:9092\". A flag beats its variable, a variable "
                    "beats the file. Keys of other mgeo commands' options are ignored; any "
                    "other key is an error.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log verbosity.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log line format: human-readable text, or one JSON object a line "
                            "(for log shippers).")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):
        """Flags (put first by pydantic-settings), then arguments, the environment, the config
        file, defaults."""
        return (init_settings, env_settings, _ConfigFileSource(settings_cls), dotenv_settings,
                file_secret_settings)


def _meta(metavar: str) -> dict:
    """How an option's value is named in --help (see `cli_metavar`)."""
    return {"metavar": metavar}


def cli_metavar(field: FieldInfo) -> str | None:
    """The placeholder --help shows for a field's value: the field's own (`_meta`), else one
    named for its type (FILE, N, KEY=VALUE...); None keeps pydantic-settings' (choices)."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "metavar" in extra:
        return str(extra["metavar"])
    ann = field.annotation
    args = [a for a in get_args(ann) if a is not type(None)]
    if args and get_origin(ann) in (Union, UnionType):
        ann = args[0] if len(args) == 1 else ann
    origin = get_origin(ann)
    if origin is Literal or ann is bool:
        return None
    if origin is dict:
        return "KEY=VALUE"
    if origin is list:
        return "A,B,..."
    return {Path: "FILE", int: "N", float: "NUMBER", str: "TEXT"}.get(ann)


# -- Kafka: each command declares only the options it uses -------------------------------------


class KafkaClientSettings(Base):
    """How to reach the brokers: what every Kafka command shares."""

    cli_group: ClassVar[str] = KAFKA

    # A rejected value is never shown back, here or in a ValidationError's text: it may be a
    # password.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated host:port.",
        json_schema_extra=_meta("HOST:PORT,..."))
    kafka_config: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Extra librdkafka properties for every client: one KEY=VALUE a flag, "
                    "the value taken whole, commas and '=' included (--kafka-config "
                    "security.protocol=SASL_SSL --kafka-config debug=cgrp,fetch). The "
                    "variable holds a JSON object, or KEY=VALUE lines. Secret values are never "
                    "logged.")
    kafka_config_file: Path | None = Field(
        None,
        description="A .properties file of librdkafka settings (the format of Kafka's "
                    "client.properties), checked before the command starts: it keeps "
                    "credentials out of the environment and the command line. --kafka-config "
                    "and the consumer and producer options override it.")

    _read_kafka_config = field_validator("kafka_config", mode="before")(_properties)

    def client_config(self, role: Literal["consumer", "producer", "admin"]) -> dict[str, str]:
        """The librdkafka config of one client: bootstrap, file, shared, then role-specific."""
        conf: dict[str, str] = {"bootstrap.servers": self.bootstrap_servers}
        if self.kafka_config_file is not None:
            conf.update(read_properties(self.kafka_config_file))
        conf.update(self.kafka_config)
        if role in ("consumer", "producer"):
            conf.update(getattr(self, f"{role}_config", None) or {})
        return conf

    def option_of(self, key: str, role: Literal["consumer", "producer", "admin"]) -> str | None:
        """The field whose value gives property `key` of `client_config(role)` (the last one
        that sets it); None for a property mgeo sets itself."""
        if key in (getattr(self, f"{role}_config", None) or {}):
            return f"{role}_config"
        if key in self.kafka_config:
            return "kafka_config"
        if self.kafka_config_file is not None and key in read_properties(self.kafka_config_file):
            return "kafka_config_file"
        return "bootstrap_servers" if key == "bootstrap.servers" else None

    def masked(self) -> dict:
        """This settings object as a dict fit for logs: secrets masked."""
        data = self.model_dump(mode="json")
        for key in ("kafka_config", "consumer_config", "producer_config"):
            if key in data:
                data[key] = redact(data[key])
        return data


class _InputTopic(Base):
    cli_group: ClassVar[str] = TOPICS
    input_topic: str = Field("address-pairs", description="Topic of address-pair requests.",
                             json_schema_extra=_meta("TOPIC"))


class _OutputTopic(Base):
    cli_group: ClassVar[str] = TOPICS
    output_topic: str = Field("address-scores", description="Topic the scores are written to.",
                              json_schema_extra=_meta("TOPIC"))


class _DlqTopic(Base):
    cli_group: ClassVar[str] = TOPICS
    dlq_topic: str = Field(
        "address-pairs.dlq",
        description="Dead-letter topic for messages without a usable id (value kept unchanged).",
        json_schema_extra=_meta("TOPIC"))


class _ConsumerConfig(Base):
    cli_group: ClassVar[str] = KAFKA
    consumer_config: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Extra librdkafka properties for consumers only, given as "
                    "--kafka-config's are.")

    _read_consumer_config = field_validator("consumer_config", mode="before")(_properties)


class _ProducerConfig(Base):
    cli_group: ClassVar[str] = KAFKA
    producer_config: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Extra librdkafka properties for producers only, given as "
                    "--kafka-config's are.")

    _read_producer_config = field_validator("producer_config", mode="before")(_properties)


class KafkaSettings(_ProducerConfig, _ConsumerConfig, _DlqTopic, _OutputTopic, _InputTopic,
                    KafkaClientSettings):
    """Where the pairs and results live, and how to talk to the brokers (the worker's view)."""


# -- the model: each command declares only the options it uses ----------------------------------


class _ModelPath(Base):
    cli_group: ClassVar[str] = MODEL
    model: Path | None = Field(
        None,
        description="A local Hugging Face sequence-classification directory (a converted MGeo "
                    "checkpoint, see `mgeo convert`). Default: the bundled demonstration model.",
        json_schema_extra=_meta("DIR"))


class _Device(Base):
    cli_group: ClassVar[str] = MODEL
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs; auto picks cuda when a GPU is visible.")


class _Precision(Base):
    cli_group: ClassVar[str] = MODEL
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        "auto",
        description="Numeric precision: auto is fp16 on cuda (softmax in fp32) and fp32 on cpu; "
                    "int8 is dynamic quantization, cpu only; bf16 runs on Ampere+ GPUs and on "
                    "CPUs with native bf16 (AVX512-BF16, AMX), and is refused on CPUs that "
                    "would emulate it.")


class _MaxLength(Base):
    cli_group: ClassVar[str] = MODEL
    max_length: int = Field(
        128, ge=8, le=512, description="Token limit of a pair; longer pairs are truncated "
                                        "(MGeo's recipe uses 128).",
        json_schema_extra=_meta("TOKENS"))


class _Threads(Base):
    cli_group: ClassVar[str] = MODEL
    threads: int | None = Field(
        None, ge=1,
        description="CPU threads torch may use for the model (default: torch's choice, the "
                    "physical cores). Lower it when several workers share a host.")
    lanes: int | None = Field(
        None, ge=1,
        description="cpu: model batches run at once, each on its own thread with --threads / "
                    "--lanes torch threads, so that independent batches do not wait for each "
                    "other at every operator. Default: at least 2, with at most 4 threads "
                    "each; cuda: 1.")


class _Batching(Base):
    cli_group: ClassVar[str] = BATCHING
    cli_groups: ClassVar[dict[str, tuple[str, ...]]] = {MODEL: ("positive_labels",)}
    batch_layout: Literal["auto", "packed", "padded"] = Field(
        "auto",
        description="How a batch reaches the model. packed: the pairs' tokens end to end, "
                    "without padding, so a batch of mixed lengths costs what its tokens cost; "
                    "BERT models only (MGeo is one). padded: [pairs x longest pair] tensors, "
                    "any architecture. auto: packed on cpu where the model allows it, padded "
                    "on cuda.")
    token_budget: int | None = Field(
        None, ge=64,
        description="Tokens per model batch: padded tokens, or real ones with the packed "
                    "layout. Default: found at start-up from free GPU memory on cuda, 8192 on "
                    "cpu.",
        json_schema_extra=_meta("TOKENS"))
    memory_fraction: float = Field(
        0.8, gt=0.05, le=0.98,
        description="Share of free GPU memory the adaptive token budget may use.",
        json_schema_extra=_meta("FRACTION"))
    cache_size: int = Field(
        0, ge=0, description="Entries of an LRU cache of recently scored pairs (0 turns it off).")
    positive_labels: list[str] | None = Field(
        None,
        description="Labels whose probabilities sum to `score`. Default: exact_match when the "
                    "model has it, else the label of id 1.",
        json_schema_extra=_meta("LABEL,..."))

    _split_labels = field_validator("positive_labels", mode="before")(_split_commas)


class _MaxAddressChars(Base):
    cli_group: ClassVar[str] = BAD_REQUESTS
    max_address_chars: int = Field(
        1000, ge=1,
        description="Addresses longer than this many characters get an error result instead "
                    "of a score.",
        json_schema_extra=_meta("CHARS"))


def _key_values(cls, v):
    """A NAME=VALUE,... option (a flag, repeated or not, or an environment variable) as a
    dict; a JSON object too (what `mgeo worker --processes N` hands its children)."""
    if isinstance(v, str) and v.lstrip().startswith("{"):
        try:
            v = json.loads(v)
        except ValueError as e:
            raise ValueError(f"expected NAME=VALUE,... or a JSON object; got {v!r} ({e})") from None
        if not isinstance(v, dict):
            raise ValueError("expected a JSON object of NAME: VALUE")
        return {str(k): str(val) for k, val in v.items()}
    if isinstance(v, str):
        out = {}
        for part in v.split(","):
            if part.strip():
                key, sep, value = part.partition("=")
                if not sep or not key.strip():
                    raise ValueError(f"expected NAME=VALUE,...; got {part.strip()!r}")
                out[key.strip()] = value.strip()
        return out
    return v


class _LabelMap(Base):
    cli_group: ClassVar[str] = MODEL

    label_map: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Names for the model's labels when its config.json does not use MGeo's "
                    "(exact_match, partial_match, not_match), e.g. --label-map "
                    "LABEL_0=not_match,LABEL_1=partial_match,LABEL_2=exact_match. A model whose "
                    "labels are not MGeo's three, after this, is refused at load.",
        json_schema_extra=_meta("NAME=LABEL,..."))

    _split_label_map = field_validator("label_map", mode="before")(_key_values)


class EngineSettings(_Threads, _Batching, _MaxLength, _Precision, _Device, _LabelMap,
                     _ModelPath):
    """Which model runs where, and how the engine batches it (what `Engine.from_settings`
    reads)."""


class ModelSettings(_Threads, _MaxAddressChars, _Batching, _MaxLength, _Precision, _Device,
                    _LabelMap, _ModelPath):
    """The engine's options and the request validation that goes with scoring."""


class WorkerSettings(KafkaSettings, ModelSettings):
    """`mgeo worker`: consume requests, score them, publish results, commit."""

    cli_group: ClassVar[str] = WORKER
    cli_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        CONSUMER_GROUP: ("group_id", "group_instance_id", "group_protocol", "session_timeout_ms",
                         "max_poll_interval_ms"),
        BATCHING: ("consume_batch", "poll_timeout", "fetch_wait_ms", "linger_ms",
                   "max_batch_pairs", "max_inflight"),
        DELIVERY: ("delivery", "transactional_id", "transaction_timeout_ms", "commit_interval"),
        BAD_REQUESTS: ("max_request_bytes", "max_dead_letter_ratio", "dead_letter_window"),
        OPERATIONS: ("processes", "shutdown_timeout", "max_messages", "metrics_port",
                     "metrics_host", "liveness_timeout", "stats_interval_ms"),
    }

    group_id: str = Field("mgeo-workers", description="Consumer group of the worker fleet.",
                          json_schema_extra=_meta("GROUP"))
    group_instance_id: str | None = Field(
        None, description="Static membership (group.instance.id), e.g. the pod name of a "
                          "StatefulSet: a restart within the session timeout keeps its "
                          "partitions without a rebalance.", json_schema_extra=_meta("ID"))
    group_protocol: Literal["classic", "consumer"] = Field(
        "classic", description="Consumer group protocol: classic (cooperative-sticky) or "
                               "consumer (KIP-848, where the broker supports it).")
    max_dead_letter_ratio: float = Field(
        0.5, gt=0, le=1,
        description="Stop the worker when more than this share of the last "
                    "--dead-letter-window messages had no usable id (a wrong topic or a broken "
                    "producer), rather than draining a topic into the dead-letter queue.",
        json_schema_extra=_meta("FRACTION"))
    dead_letter_window: int = Field(
        1000, ge=10, description="Messages over which the dead-letter share is judged.")
    delivery: Literal["at-least-once", "exactly-once"] = Field(
        "at-least-once",
        description="at-least-once commits offsets after results are delivered; exactly-once "
                    "writes results and offsets in one Kafka transaction (readers must use "
                    "isolation.level=read_committed, as `mgeo collect` does).")
    transactional_id: str | None = Field(
        None,
        description="exactly-once: this worker's transactional.id; unique per worker and stable "
                    "across its restarts (a restart then aborts what the crashed run left "
                    "open). Default: <group-id>-<hostname>, right for one worker per pod or "
                    "container; set it when several workers share a host.",
        json_schema_extra=_meta("ID"))
    transaction_timeout_ms: int = Field(
        60_000, ge=1000,
        description="exactly-once: the broker aborts a transaction left open this long by a "
                    "worker that died and did not come back.", json_schema_extra=_meta("MS"))
    consume_batch: int = Field(
        1000, ge=1, le=100_000, description="Most messages taken from the consumer per poll.")
    poll_timeout: float = Field(
        0.2, gt=0, le=10,
        description="Seconds an idle poll waits for a message. A poll returns as soon as one "
                    "arrives, so this bounds neither latency nor throughput, only how often "
                    "an idle worker wakes to commit.",
        json_schema_extra=_meta("SECONDS"))
    fetch_wait_ms: int = Field(
        50, ge=0, le=10_000,
        description="librdkafka fetch.wait.max.ms of the consumer: how long the broker may "
                    "hold a fetch while it waits for data. A Kafka broker answers as soon as "
                    "data arrives, so this only bounds how often an idle worker asks; a broker "
                    "that holds an empty fetch for the whole wait (`mgeo broker` does) adds up "
                    "to this much latency to a request that reaches an idle worker. "
                    "--consumer-config fetch.wait.max.ms=... overrides it.",
        json_schema_extra=_meta("MS"))
    linger_ms: float = Field(
        1.0, ge=0, le=1000,
        description="librdkafka linger.ms of the answer producer: how long an answer may wait "
                    "to share a produce request with others. A scored batch is produced at "
                    "once, so batches form by themselves under load; a short linger keeps a "
                    "lone answer from waiting. --producer-config linger.ms=... overrides it.",
        json_schema_extra=_meta("MS"))
    processes: int = Field(
        1, ge=1, le=64,
        description="Worker processes in this container, each a member of the consumer group "
                    "with its own copy of the model on the same device: more than one where "
                    "one process's Kafka and result work cannot keep the device busy. Each "
                    "has its own transactional id and static member id, <id>-<n>; /metrics on "
                    "--metrics-port covers them all.")
    max_batch_pairs: int = Field(
        4096, ge=1, json_schema_extra=_meta("N"),
        description="Most pairs the inference stage takes into one batch: whatever is "
                    "queued when the model is free, up to this (the messages of one poll are "
                    "never split).")
    max_inflight: int = Field(
        20_000, ge=1,
        description="Most requests read but not yet answered; beyond it the worker pauses its "
                    "partitions (and keeps polling, so it stays in the group).")
    commit_interval: float = Field(
        1.0, gt=0, le=60, description="Seconds between offset commits.",
        json_schema_extra=_meta("SECONDS"))
    session_timeout_ms: int = Field(
        10_000, ge=1000, description="Consumer group session timeout (librdkafka "
                                     "session.timeout.ms).", json_schema_extra=_meta("MS"))
    max_poll_interval_ms: int = Field(
        300_000, ge=1000, description="librdkafka max.poll.interval.ms.",
        json_schema_extra=_meta("MS"))
    max_request_bytes: int = Field(
        65_536, ge=64,
        description="Requests larger than this get an error result (or a dead letter when no id "
                    "can be read).", json_schema_extra=_meta("BYTES"))
    shutdown_timeout: float = Field(
        60.0, gt=0, description="Seconds a SIGTERM drain may take before giving up on "
                                "in-flight work (it is then redelivered, not lost).",
        json_schema_extra=_meta("SECONDS"))
    max_messages: int | None = Field(
        None, ge=1, description="Stop after answering this many messages (for tests and demos).")
    metrics_port: int | None = Field(
        None, ge=0, le=65535,
        description="Serve Prometheus /metrics and /healthz, /readyz on this port (0 picks a "
                    "free one).", json_schema_extra=_meta("PORT"))
    metrics_host: str = Field(
        "0.0.0.0",
        description="Address --metrics-port listens on: 0.0.0.0, every IPv4 interface (what "
                    "Kubernetes probes and a Prometheus scraping the pod need); 127.0.0.1, "
                    "this host only; ::, every IPv6 interface.",
        json_schema_extra=_meta("ADDRESS"))

    _host_is_an_address = field_validator("metrics_host")(_ip_address)

    liveness_timeout: float = Field(
        60.0, gt=0,
        description="/healthz fails once the Kafka loop has not ticked for this many seconds, "
                    "or holds partitions with messages to read (by the broker) that it has not "
                    "read for this long though not paused by back-pressure (a stuck consumer).",
        json_schema_extra=_meta("SECONDS"))
    stats_interval_ms: int = Field(
        5000, ge=0, description="librdkafka statistics interval feeding the consumer-lag "
                                "metric (0 turns it off).", json_schema_extra=_meta("MS"))

    def transactional_id_or_default(self) -> str:
        if self.transactional_id:
            return self.transactional_id
        import socket

        return f"{self.group_id}-{self.group_instance_id or socket.gethostname()}"


class _PairInput(Base):
    """How a file of pairs is read (see docs/inputs.md)."""

    cli_group: ClassVar[str] = IO

    format: Literal["auto", "csv", "tsv", "jsonl", "xlsx"] = Field(
        "auto", description="Input format; auto goes by the file's extension (.csv, .tsv, "
                            ".jsonl, .xlsx; stdin is sniffed).")
    encoding: str = Field(
        "auto", description="Text encoding of the input; auto reads UTF-8 (with or without a "
                            "BOM) and GB18030/GBK, what Chinese Excel and database exports "
                            "write. A codec name forces one (big5, utf-16...).",
        json_schema_extra=_meta("NAME"))
    columns: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Which columns hold the id and the two addresses, where the header's names "
                    "are not among those recognised (docs/inputs.md), e.g. --columns "
                    "id=编号,addr1=原地址,addr2=新地址. Other columns go to meta.",
        json_schema_extra=_meta("ROLE=COLUMN,..."))
    id_from_row: bool = Field(
        False, description="Use row numbers as ids (row-N: line N of the file, row N of the "
                           "sheet), for a table without an id column.")

    _split_columns = field_validator("columns", mode="before")(_key_values)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        from mgeo.readers import check_encoding

        return check_encoding(v)

    @field_validator("columns")
    @classmethod
    def _known_roles(cls, v: dict[str, str]) -> dict[str, str]:
        from mgeo.readers import parse_columns

        return parse_columns(v)


class ProduceSettings(_PairInput, _ProducerConfig, _InputTopic, KafkaClientSettings):
    """`mgeo produce FILE|-`: publish address pairs from CSV, TSV, JSONL or Excel."""

    cli_group: ClassVar[str] = IO

    input: CliPositionalArg[str] = Field(
        "-", description="CSV, TSV or Excel .xlsx file (a header naming the id and address "
                         "columns; other columns go to meta), or JSONL; - reads stdin.")
    start_line: int = Field(
        1, ge=1, description="Publish the rows from this line of the input on (the header is "
                             "still read): to resume from the line a failed or interrupted run "
                             "names.", json_schema_extra=_meta("LINE"))
    progress: bool = Field(True, description="Show a progress bar when stderr is a terminal.")


class CollectSettings(_ConsumerConfig, _OutputTopic, KafkaClientSettings):
    """`mgeo collect`: read the results topic into a CSV or JSONL file."""

    cli_group: ClassVar[str] = IO
    cli_groups: ClassVar[dict[str, tuple[str, ...]]] = {CONSUMER_GROUP: ("collect_group_id",)}

    out: Path = Field(Path("results.csv"),
                      description="Output file; its extension picks the format: .csv, .tsv, "
                                  ".jsonl or .xlsx.")
    expect: int | None = Field(
        None, ge=1, description="Stop after this many distinct ids.")
    timeout: float = Field(
        30.0, gt=0, description="Stop after this many seconds without a new result.",
        json_schema_extra=_meta("SECONDS"))
    collect_group_id: str | None = Field(
        None, description="Consumer group to read with, committing what was written (default: "
                          "none; every partition is read from the start). Not the workers' "
                          "group: sharing MGEO_GROUP_ID would steal their partitions.",
        json_schema_extra=_meta("GROUP"))
    from_beginning: bool = Field(True, description="Start from the earliest result.")
    progress: bool = Field(True, description="Show a progress bar when stderr is a terminal.")


class BrokerSettings(Base):
    """`mgeo broker`: an embedded Kafka-compatible broker, in memory, on loopback."""

    cli_group: ClassVar[str] = BROKER

    port: int = Field(9092, ge=0, le=65535, description="Port to listen on (0 picks a free one).",
                      json_schema_extra=_meta("PORT"))
    host: str = Field("127.0.0.1", description="Address to listen on.",
                      json_schema_extra=_meta("ADDRESS"))


class TopicsSettings(_DlqTopic, _OutputTopic, _InputTopic, KafkaClientSettings):
    """`mgeo topics create`: make the input, results and dead-letter topics of a fleet."""

    cli_group: ClassVar[str] = TOPICS

    action: CliPositionalArg[Literal["create"]] = Field(
        "create", description="create: make the topics that do not exist yet (existing ones "
                              "are left as they are).")
    partitions: int = Field(
        4, ge=1, description="Partitions of the input and results topics (the dead-letter "
                             "topic gets 1): the most workers of one group that get work.")
    replication_factor: int = Field(
        1, ge=1, description="Copies of each partition: 1 for a one-broker Kafka, usually 3 "
                             "on a cluster.")


class DemoSettings(_PairInput, _Precision, _Device, _LabelMap, _ModelPath):
    """`mgeo demo`: broker, topics, worker, producer and collector, end to end, on this machine."""

    cli_group: ClassVar[str] = DEMO
    cli_groups: ClassVar[dict[str, tuple[str, ...]]] = {IO: ("out", "input")}

    out: Path = Field(Path("mgeo-demo-results.csv"),
                      description="Where the results go; .csv, .tsv, .jsonl or .xlsx.")
    input: Path | None = Field(
        None, description="Pairs to publish (CSV, TSV, JSONL or .xlsx). Default: the bundled "
                          "sample.")
    partitions: int = Field(4, ge=1, description="Partitions of the demo topics.")
    timeout: float = Field(600.0, gt=0, description="Give up after this many seconds.",
                           json_schema_extra=_meta("SECONDS"))


class ScoreSettings(_PairInput, ModelSettings):
    """`mgeo score`: score a file of pairs offline with the same engine, no Kafka."""

    cli_group: ClassVar[str] = IO
    cli_groups: ClassVar[dict[str, tuple[str, ...]]] = {BATCHING: ("chunk_pairs",)}

    input: Path = Field(..., validation_alias=AliasChoices("in", "mgeo_in"),
                        description="CSV, TSV or Excel .xlsx file of pairs (a header naming the "
                                    "id and address columns), or JSONL; - reads stdin.")
    out: Path = Field(..., description="Output file; its extension picks the format: .csv, "
                                       ".tsv, .jsonl or .xlsx.")
    progress: bool = Field(True, description="Show a progress bar when stderr is a terminal.")
    chunk_pairs: int = Field(
        4096, ge=1,
        description="Rows read and handed to the engine at once (its length-sorting window); "
                    "bounds memory on big files.")


class ConvertSettings(Base):
    """`mgeo convert SRC DST`: a ModelScope MGeo checkpoint to a Hugging Face directory."""

    cli_group: ClassVar[str] = IO
    cli_groups: ClassVar[dict[str, tuple[str, ...]]] = {MODEL: ("labels",)}

    src: CliPositionalArg[Path] = Field(..., description="ModelScope MGeo checkpoint directory.")
    dst: CliPositionalArg[Path] = Field(
        ..., description="Where the Hugging Face directory is written (new or empty).")
    labels: list[str] | None = Field(
        None,
        description="Label names in id order, comma-separated, for checkpoints whose config "
                    "names none. Default then: not_match,partial_match,exact_match (with a "
                    "warning).", json_schema_extra=_meta("LABEL,..."))

    _split_labels = field_validator("labels", mode="before")(_split_commas)


# -- for the settings that live beside their component -----------------------------------------
# training/settings.py (`mgeo synth`, `mgeo train`) and tools/bench_settings.py (`mgeo bench`)
# compose these option mixins and helpers, by these names.
ModelPathOption, DeviceOption, MaxLengthOption = _ModelPath, _Device, _MaxLength
metavar, split_commas = _meta, _split_commas
