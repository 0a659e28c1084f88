"""Every option of every `mgeo` command, in one typed place.

Each field is an environment variable `MGEO_<NAME>` and a CLI flag `--<name>` (kebab case);
`--help` shows the field's description, its value named by `cli_metavar`. Options are defined
once, in small groups (`_InputTopic`, `_Device`...), and each command class composes only the
groups it uses, so `mgeo produce --help` lists no consumer or worker option. Groups are listed
last-shown first in a class's bases (pydantic orders fields from the last base).

This module imports no torch: the producer side loads it on hosts without a GPU stack.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from types import UnionType
from typing import Literal, Union, get_args, get_origin

from pydantic import AliasChoices, Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, CliPositionalArg, SettingsConfigDict

ENV_PREFIX = "MGEO_"

# librdkafka properties whose values must never reach a log, an error message or a config dump.
_SECRET_KEY = re.compile(r"(password|secret|token|key\.pem|private|credential|jaas)", re.I)


def _split_commas(cls, v):
    """A list option given as one comma-separated string (from the environment or a flag)."""
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return v


def redact(config: dict[str, str]) -> dict[str, str]:
    """A copy of a librdkafka config fit for logs: secret-looking values replaced by `***`."""
    return {k: ("***" if _SECRET_KEY.search(k) else v) for k, v in config.items()}


def read_properties(path: Path) -> dict[str, str]:
    """Read a Java-style `.properties` file (`key=value` lines, `#` comments) into a dict."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read Kafka config file {path}: {exc.strerror}; "
                         "pass a readable file to --kafka-config-file") from None
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}:{n}: expected key=value, got {line[:40]!r}")
        out[key.strip()] = value.strip()
    return out


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

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log verbosity.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log line format: human-readable text, or one JSON object a line "
                            "(for log shippers).")


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

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated host:port.",
        json_schema_extra=_meta("HOST:PORT,..."))
    kafka_config: dict[str, str] = Field(
        default_factory=dict,
        description="Extra librdkafka properties for every client, as key=value (repeatable), "
                    "e.g. --kafka-config security.protocol=SASL_SSL. Secret values are never "
                    "logged.")
    kafka_config_file: Path | None = Field(
        None,
        description="A .properties file of librdkafka settings (key=value lines) read at start; "
                    "keeps credentials out of the environment and the command line.")

    def client_config(self, role: Literal["consumer", "producer", "admin"]) -> dict[str, str]:
        """The librdkafka config of one client: bootstrap, file, shared, then role-specific."""
        conf: dict[str, str] = {"bootstrap.servers": self.bootstrap_servers}
        if self.kafka_config_file is not None:
            conf.update(read_properties(self.kafka_config_file))
        conf.update(self.kafka_config)
        if role in ("consumer", "producer"):
            conf.update(getattr(self, f"{role}_config", None) or {})
        return conf

    def masked(self) -> dict:
        """This settings object as a dict fit for logs: secrets masked."""
        data = self.model_dump(mode="json")
        for key in ("kafka_config", "consumer_config", "producer_config"):
            if key in data:
                data[key] = redact(data[key])
        return data


class _InputTopic(Base):
    input_topic: str = Field("address-pairs", description="Topic of address-pair requests.",
                             json_schema_extra=_meta("TOPIC"))


class _OutputTopic(Base):
    output_topic: str = Field("address-scores", description="Topic the scores are written to.",
                              json_schema_extra=_meta("TOPIC"))


class _DlqTopic(Base):
    dlq_topic: str = Field(
        "address-pairs.dlq",
        description="Dead-letter topic for messages without a usable id (value kept unchanged).",
        json_schema_extra=_meta("TOPIC"))


class _ConsumerConfig(Base):
    consumer_config: dict[str, str] = Field(
        default_factory=dict, description="Extra librdkafka properties for consumers only.")


class _ProducerConfig(Base):
    producer_config: dict[str, str] = Field(
        default_factory=dict, description="Extra librdkafka properties for producers only.")


class KafkaSettings(_ProducerConfig, _ConsumerConfig, _DlqTopic, _OutputTopic, _InputTopic,
                    KafkaClientSettings):
    """Where the pairs and results live, and how to talk to the brokers (the worker's view)."""


# -- the model: each command declares only the options it uses ----------------------------------


class _ModelPath(Base):
    model: Path | None = Field(
        None,
        description="A local Hugging Face sequence-classification directory (a converted MGeo "
                    "checkpoint, see `mgeo convert`). Default: the bundled demonstration model.",
        json_schema_extra=_meta("DIR"))


class _Device(Base):
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs; auto picks cuda when a GPU is visible.")


class _Precision(Base):
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        "auto",
        description="Numeric precision: auto is fp16 on cuda (softmax in fp32) and fp32 on cpu; "
                    "int8 is dynamic quantization, cpu only; bf16 runs on Ampere+ GPUs and on "
                    "CPUs with native bf16 (AVX512-BF16/AMX: about 2.5x fp32 there), and is "
                    "refused on CPUs that would emulate it.")


class _MaxLength(Base):
    max_length: int = Field(
        128, ge=8, le=512, description="Token limit of a pair; longer pairs are truncated "
                                        "(MGeo's recipe uses 128).",
        json_schema_extra=_meta("TOKENS"))


class _Threads(Base):
    threads: int | None = Field(
        None, ge=1,
        description="CPU threads torch may use for the model (default: torch's choice, the "
                    "physical cores). Lower it when several workers share a host.")
    lanes: int | None = Field(
        None, ge=1,
        description="cpu: model batches run at once, each on its own thread with --threads / "
                    "--lanes torch threads. Independent batches do not wait for each other at "
                    "every operator as the threads of one batch do (on 2 cores, two lanes of "
                    "one thread scored the bundled model 1.1-1.6x faster than one lane of two). "
                    "Default: at least 2, with at most 4 threads each. cuda: 1.")


class _Batching(Base):
    batch_layout: Literal["auto", "packed", "padded"] = Field(
        "auto",
        description="How a batch reaches the model. packed: the pairs' tokens end to end with "
                    "no padding (only attention pads, per group of similar lengths), so a "
                    "small batch of mixed lengths costs what its tokens cost; BERT models only "
                    "(MGeo is one). padded: [pairs x longest pair] tensors through the "
                    "transformers call, any architecture. auto: packed on cpu where the model "
                    "allows it (1.5-2x the pairs/s of padded on small batches), padded on cuda, "
                    "where packed is not yet measured.")
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
    max_address_chars: int = Field(
        1000, ge=1,
        description="Addresses longer than this many characters get an error result instead "
                    "of a score.",
        json_schema_extra=_meta("CHARS"))


class EngineSettings(_Threads, _Batching, _MaxLength, _Precision, _Device, _ModelPath):
    """Which model runs where, and how the engine batches it (what `Engine.from_settings`
    reads)."""


class ModelSettings(_Threads, _MaxAddressChars, _Batching, _MaxLength, _Precision, _Device,
                    _ModelPath):
    """The engine's options and the request validation that goes with scoring."""


class WorkerSettings(KafkaSettings, ModelSettings):
    """`mgeo worker`: consume requests, score them, publish results, commit."""

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
        description="Seconds an idle poll waits for the first message. A poll returns as soon "
                    "as a message arrives, and answers are published by the inference thread "
                    "the moment their batch is scored, so this bounds neither latency nor "
                    "throughput; only how often an idle loop wakes to commit.",
        json_schema_extra=_meta("SECONDS"))
    fetch_wait_ms: int = Field(
        50, ge=0, le=10_000,
        description="librdkafka fetch.wait.max.ms of the consumer: how long the broker may "
                    "hold a fetch while it waits for data. A Kafka broker answers as soon as "
                    "data arrives, so there it only bounds how often an idle worker asks "
                    "(librdkafka's default is 500 ms). Tansu, the embedded broker of the tests "
                    "and benchmarks, holds a fetch for the whole wait, so there it adds up to "
                    "this much latency; shorter waits cost it CPU (on the 2-core CI machine, "
                    "10 ms took a third of a core from the worker). "
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
                    "with its own copy of the model on the same device. One Python process "
                    "uses about one core for its Kafka and result work; a GPU host has 8-16 "
                    "cores per GPU. Each process gets its own identity: the transactional id "
                    "<id>-<n> (exactly-once) and the static member id <id>-<n> (with "
                    "--group-instance-id); /metrics on --metrics-port covers all of them.")
    max_batch_pairs: int = Field(
        4096, ge=1, json_schema_extra=_meta("N"),
        description="Most pairs the inference stage takes into one batch. It takes whatever "
                    "is queued when the model is free (continuous batching: under light load a "
                    "batch is what has arrived, under load it grows to this); the messages of "
                    "one poll (--consume-batch) are never split.")
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
    liveness_timeout: float = Field(
        60.0, gt=0,
        description="/healthz fails once the Kafka loop has not ticked for this many seconds.",
        json_schema_extra=_meta("SECONDS"))
    stats_interval_ms: int = Field(
        5000, ge=0, description="librdkafka statistics interval feeding the consumer-lag "
                                "metric (0 turns it off).", json_schema_extra=_meta("MS"))

    def transactional_id_or_default(self) -> str:
        if self.transactional_id:
            return self.transactional_id
        import socket

        return f"{self.group_id}-{self.group_instance_id or socket.gethostname()}"


class ProduceSettings(_ProducerConfig, _InputTopic, KafkaClientSettings):
    """`mgeo produce FILE|-`: publish address pairs from CSV or JSONL."""

    input: CliPositionalArg[str] = Field(
        "-", description="CSV (header id,addr1,addr2; other columns go to meta) or JSONL file; "
                         "- reads stdin.")
    format: Literal["auto", "csv", "jsonl"] = Field(
        "auto", description="Input format; auto goes by the file extension (stdin: sniffed).")
    progress: bool = Field(True, description="Show a progress bar when stderr is a terminal.")


class CollectSettings(_ConsumerConfig, _OutputTopic, KafkaClientSettings):
    """`mgeo collect`: read the results topic into a CSV or JSONL file."""

    out: Path = Field(Path("results.csv"),
                      description="Output file; .csv or .jsonl picks the format.")
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
    """`mgeo broker`: a Kafka-compatible broker (Tansu, in memory) on loopback."""

    port: int = Field(9092, ge=0, le=65535, description="Port to listen on (0 picks a free one).",
                      json_schema_extra=_meta("PORT"))
    host: str = Field("127.0.0.1", description="Address to listen on.",
                      json_schema_extra=_meta("ADDRESS"))


class DemoSettings(_Precision, _Device, _ModelPath):
    """`mgeo demo`: broker, topics, worker, producer and collector, end to end, on this machine."""

    out: Path = Field(Path("mgeo-demo-results.csv"), description="Where the results CSV goes.")
    input: Path | None = Field(
        None, description="Pairs to publish (CSV/JSONL). Default: the bundled sample.")
    partitions: int = Field(4, ge=1, description="Partitions of the demo topics.")
    timeout: float = Field(600.0, gt=0, description="Give up after this many seconds.",
                           json_schema_extra=_meta("SECONDS"))


class ScoreSettings(ModelSettings):
    """`mgeo score`: score a CSV/JSONL file offline with the same engine, no Kafka."""

    input: Path = Field(..., validation_alias=AliasChoices("in", "mgeo_in"),
                        description="CSV (id,addr1,addr2) or JSONL file of pairs.")
    out: Path = Field(..., description="Output file; .csv or .jsonl picks the format.")
    progress: bool = Field(True, description="Show a progress bar when stderr is a terminal.")
    chunk_pairs: int = Field(
        4096, ge=1,
        description="Rows read and handed to the engine at once (its length-sorting window); "
                    "bounds memory on big files.")


# `--json` is the flag people expect; the field it needs shadows BaseModel.json (deprecated).
warnings.filterwarnings("ignore", message='Field name "json"', category=UserWarning)


class BenchSettings(EngineSettings):
    """`mgeo bench`: the reference loop against the engine, same pairs, same model."""

    pairs: int = Field(2000, ge=32, description="Pairs to score in each configuration.")
    seed: int = Field(0, description="Seed of the synthetic pairs and random model.")
    pairs_from: Literal["traffic", "synth"] = Field(
        "traffic",
        description="Where the pairs come from: traffic, unlabelled pairs with real traffic's "
                    "lengths that every install ships (mgeo.traffic); synth, the labelled "
                    "training generator (needs the training extra).")
    json: bool = Field(False, description="Print one JSON object instead of a table.")
    plot: Path | None = Field(
        Path("bench.png"), description="Where the PNG plot goes (empty to skip).")
    ref_batch: int = Field(32, ge=1, description="Batch size of the reference loop.")
    rounds: int = Field(
        1, ge=1, le=20,
        description="Timed passes of each configuration; the fastest counts (a shared machine "
                    "only ever slows a pass down).")
    profile: Path | None = Field(
        None,
        description="Also run the engine once more under torch.profiler: write a Chrome/Perfetto "
                    "trace to this file (open it at ui.perfetto.dev) and add to the report what "
                    "limits the run: device busy share, time per stage, top operators.")
    host_path: bool = Field(
        False,
        description="Instead, measure the host path: with a nearly free model (or --model), the "
                    "raw Rust tokenizer, the transformers call, the engine alone, and `mgeo "
                    "worker` end to end through the embedded broker (pre-filled topic, rate "
                    "from the answers' record timestamps) with 1 and more processes.")
    latency: bool = Field(
        False,
        description="Instead, measure latency: capacity from a drained backlog, then a steady "
                    "producer at 1/10, 1/3 and 2/3 of it; p50/p90/p99 from the client and from "
                    "the worker's own histogram (default model, or --model).")
    processes_list: list[int] | None = Field(
        None, json_schema_extra=_meta("N,..."),
        description="--host-path: worker process counts to run end to end (default: 1, 2 and "
                    "4, as far as the cores go).")
    e2e_pairs: int | None = Field(
        None, ge=100, json_schema_extra=_meta("N"),
        description="--host-path: pairs through each end-to-end worker run; --latency: the "
                    "backlog that measures capacity (default: --pairs).")
    phase_seconds: float = Field(
        20.0, gt=0, json_schema_extra=_meta("SECONDS"),
        description="--latency: how long each steady-load phase runs.")
    max_batch_pairs: int = Field(
        4096, ge=1, json_schema_extra=_meta("N"),
        description="--host-path: pairs per engine call, as the worker hands them over.")
    memory_pressure: bool = Field(
        False,
        description="Instead, drill the adaptive token budget on real GPU memory: start from an "
                    "oversized budget (--token-budget, default 4x the start-up one) with the "
                    "GPU nearly full, so that batches run out of memory; every pair must still "
                    "be scored as without pressure, the budget must shrink, then regrow once "
                    "the memory is back.")
    simulate_gpu: bool = Field(
        False,
        description="Run on a GPU simulated on the CPU (CUDA's rules, fp16, 256 MiB of memory "
                    "with the caching allocator's bookkeeping) instead of --device: what "
                    "bench/gpu-run --cpu uses to rehearse the GPU steps. Slow: fp16 on a CPU.")

    _split_processes = field_validator("processes_list", mode="before")(_split_commas)


class ConvertSettings(Base):
    """`mgeo convert SRC DST`: a ModelScope MGeo checkpoint to a Hugging Face directory."""

    src: CliPositionalArg[Path] = Field(..., description="ModelScope MGeo checkpoint directory.")
    dst: CliPositionalArg[Path] = Field(
        ..., description="Where the Hugging Face directory is written (new or empty).")
    labels: list[str] | None = Field(
        None,
        description="Label names in id order, comma-separated, for checkpoints whose config "
                    "names none. Default then: not_match,partial_match,exact_match (with a "
                    "warning).", json_schema_extra=_meta("LABEL,..."))

    _split_labels = field_validator("labels", mode="before")(_split_commas)


class SynthSettings(Base):
    """`mgeo synth`: labelled synthetic Chinese address pairs for training and tests."""

    out: Path = Field(Path("pairs.csv"), description="Output CSV or JSONL file.")
    pairs: int = Field(20_000, ge=1, description="Number of pairs.")
    seed: int = Field(0, description="Random seed; the same seed gives the same file.")


class TrainSettings(_MaxLength, _Device, _ModelPath):
    """`mgeo train`: fine-tune a sequence-classification model on labelled pairs."""

    data: Path | None = Field(
        None, description="CSV/JSONL of labelled pairs (id,addr1,addr2,label); or use --synth.")
    synth: int | None = Field(
        None, ge=10, description="Train on this many pairs from `mgeo synth` (made with --seed) "
                                 "instead of --data.")
    out: Path = Field(..., description="Directory the trained model is saved to.",
                      json_schema_extra=_meta("DIR"))
    model: Path | None = Field(
        None,
        description="Checkpoint to start from (a local Hugging Face directory: a converted "
                    "MGeo or an earlier `mgeo train` output), fine-tuned at --lr. Default: a "
                    "fresh small BERT (--layers, --hidden, --heads).",
        json_schema_extra=_meta("DIR"))
    base: Path | None = Field(
        None, description="Deprecated alias of --model; will be removed.",
        json_schema_extra=_meta("DIR"))
    epochs: float = Field(3.0, gt=0, description="Passes over the training split.")
    batch_size: int = Field(64, ge=1, description="Pairs per optimizer step.")
    lr: float | None = Field(
        None, gt=0, description="Peak learning rate (linear warm-up and decay). Default: 5e-4 "
                                "for a fresh model, 3e-5 when fine-tuning --model.",
        json_schema_extra=_meta("RATE"))
    warmup: float = Field(0.06, ge=0, lt=1, description="Share of the steps spent warming up.",
                          json_schema_extra=_meta("FRACTION"))
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases "
                                                         "and LayerNorm).")
    eval_fraction: float = Field(0.1, gt=0, lt=0.9, description="Share held out for evaluation.",
                                 json_schema_extra=_meta("FRACTION"))
    evals: int = Field(10, ge=1, description="Evaluations on the held-out split during "
                                             "training (points of the training curve).")
    seed: int = Field(0, description="Seed of the split, the initialisation and the data order.")
    layers: int = Field(4, ge=1, description="Layers of a fresh model.")
    hidden: int = Field(128, ge=32, description="Hidden size of a fresh model.")
    heads: int = Field(4, ge=1, description="Attention heads of a fresh model.")
    intermediate: int | None = Field(
        None, ge=32, description="Feed-forward size of a fresh model (default: 4 x hidden).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout of a fresh model.",
                           json_schema_extra=_meta("FRACTION"))
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: all).")
    plot: bool = Field(True, description="Write training_curve.png beside the model "
                                         "(needs matplotlib).")
