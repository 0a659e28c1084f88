"""The `mgeo` command: one subcommand per job, each configured by its settings class.

Subcommands are imported lazily, so `mgeo produce` and `mgeo collect` run on hosts without torch.
"""

from __future__ import annotations

import importlib
import sys

from pydantic import ValidationError
from pydantic_settings import CliApp

# name -> (settings class in mgeo.settings, "module:function" that runs it, one-line summary)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("DemoSettings", "mgeo.demo:run",
             "Run the whole pipeline on this machine: broker, worker, producer, collector."),
    "worker": ("WorkerSettings", "worker.app:run",
               "Consume address pairs, score them, publish results, commit offsets."),
    "produce": ("ProduceSettings", "producer.publish:run",
                "Publish address pairs from a CSV/JSONL file or stdin."),
    "collect": ("CollectSettings", "producer.collect:run",
                "Read the results topic into a CSV or JSONL file."),
    "broker": ("BrokerSettings", "mgeo.broker:run",
               "Run a Kafka-compatible broker (Tansu, in memory) on loopback."),
    "score": ("ScoreSettings", "worker.score_file:run",
              "Score a CSV/JSONL file offline with the engine (no Kafka)."),
    "bench": ("BenchSettings", "worker.bench:run",
              "Benchmark the engine against the common reference loop."),
    "convert": ("ConvertSettings", "worker.convert:run",
                "Convert a ModelScope MGeo checkpoint to a Hugging Face directory."),
    "synth": ("SynthSettings", "mgeo.synth:run",
              "Generate labelled synthetic Chinese address pairs."),
    "train": ("TrainSettings", "worker.train:run",
              "Fine-tune a sequence-classification model on labelled pairs."),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: mgeo COMMAND [options]", "",
             "Score Chinese address pairs with MGeo over Kafka.", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, _, summary) in COMMANDS.items()]
    lines += ["", "Every option is also an environment variable MGEO_<NAME> "
                  "(e.g. --bootstrap-servers is MGEO_BOOTSTRAP_SERVERS).",
              "Run 'mgeo COMMAND --help' for the options of a command."]
    return "\n".join(lines)


def _explain(exc: ValidationError, command: str) -> str:
    lines = [f"mgeo {command}: invalid settings:"]
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "?"
        flag = "--" + name.split(".")[0].replace("_", "-")
        env = "MGEO_" + name.split(".")[0].upper()
        lines.append(f"  {flag} ({env}): {err['msg']}")
    lines.append(f"Run 'mgeo {command} --help' for what each option takes.")
    return "\n".join(lines)


def parse(command: str, argv: list[str]):
    """Build the settings of `command` from argv and the environment."""
    from mgeo import settings as settings_mod

    cls = getattr(settings_mod, COMMANDS[command][0])
    cls.model_config["cli_prog_name"] = f"mgeo {command}"
    return CliApp.run(cls, cli_args=argv, cli_exit_on_error=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"mgeo: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        settings = parse(command, rest)
    except ValidationError as exc:
        print(_explain(exc, command), file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[command][1].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = exc.name or str(exc)
        print(f"mgeo {command}: needs {missing!r}, which is not installed. "
              "Install the model stack with: pip install 'mgeo-stream[worker]'", file=sys.stderr)
        return 2
    from mgeo.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    try:
        return int(getattr(module, func_name)(settings) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
